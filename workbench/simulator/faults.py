"""Fault injection into the landing files, for ingestion tests.

:func:`inject_faults` rewrites ``landing/stripe/events-*.jsonl`` and
``landing/csv/support_tickets.csv`` in place (atomically) and writes
``landing/faults_manifest.json`` listing every fault exactly once with its kind, file
(relative to ``landing/``), 1-based line number in the final file and event id.

Kinds (all counts are in the manifest's ``counts``):

- ``duplicate_delivery``: an event line delivered again, byte for byte, later in the file
  (the manifest line is the second copy's; ``original_line`` is the first's).
- ``out_of_order``: an event moved later in the file, after events created after it.
- ``malformed_json``: a line cut in the middle (the event is lost).
- ``missing_required_field``: an event without one field the workbench needs
  (``field`` gives the dotted path).
- ``unknown_event_type``: an extra event whose type Stripe does not define.
- ``card_number_in_text``: a Luhn-valid test card number typed into a free-text field
  (customer / invoice / charge ``description`` in events, ticket ``body`` in the CSV);
  the manifest gives only the field, last four digits and format, never the number.
- ``schema_change``: an invoice or subscription event rewritten in a newer API shape
  (``api_version`` ``2025-03-31.basil``: invoice ``subscription``/``charge``/
  ``payment_intent``/``tax`` moved or dropped, subscription periods moved onto items).

Faults never overlap on one source line, and the same seed gives the same faults.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from workbench.simulator import output
from workbench.simulator import stripe_objects as so

#: Faults per event line, per kind (at least one of each kind per file).
RATES = {
    "duplicate_delivery": 0.002,
    "out_of_order": 0.001,
    "malformed_json": 0.0005,
    "missing_required_field": 0.0005,
    "unknown_event_type": 0.0003,
    "card_number_in_text": 0.0003,
    "schema_change": 0.0005,
}
TICKET_CARD_RATE = 0.002
UNKNOWN_TYPES = ("invoice.reconciled", "customer.segment_changed", "subscription_item.usage_alert")
#: Stripe's published test card numbers (Luhn-valid) and the ways people type them.
TEST_CARDS = (
    "4242424242424242",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "4000056655665556",
)
CARD_FORMATS = ("plain", "spaces", "dashes")
NEW_API_VERSION = "2025-03-31.basil"
_REQUIRED = (
    "id",
    "type",
    "created",
    "data.object.id",
    "data.object.customer",
    "data.object.currency",
    "data.object.amount",
    "data.object.total",
    "data.object.status",
)


def _format_card(number: str, fmt: str) -> str:
    if fmt == "plain":
        return number
    sep = " " if fmt == "spaces" else "-"
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


def _has(obj: dict[str, Any], path: str) -> bool:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def _delete(obj: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur[part]
    del cur[parts[-1]]


def _basil(event: dict[str, Any]) -> str:
    """Rewrite an invoice or subscription event in the 2025-03-31 (basil) shape in place."""
    event["api_version"] = NEW_API_VERSION
    obj = event["data"]["object"]
    if obj["object"] == "invoice":
        sub = obj.pop("subscription", None)
        obj.pop("charge", None)
        obj.pop("payment_intent", None)
        obj.pop("paid", None)
        tax = obj.pop("tax", None)
        obj["parent"] = {
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub} if sub else None,
            "type": "subscription_details" if sub else None,
        }
        obj["total_taxes"] = [
            {"amount": tax or 0, "tax_behavior": "exclusive", "type": "tax_rate_details"}
        ]
        for line in obj["lines"]["data"]:
            price = line.pop("price", None)
            line.pop("proration", None)
            line["pricing"] = {
                "price_details": {
                    "price": price["id"] if price else None,
                    "product": price["product"] if price else None,
                },
                "type": "price_details",
                "unit_amount_decimal": price["unit_amount_decimal"] if price else None,
            }
        return "invoice_basil"
    start = obj.pop("current_period_start", None)
    end = obj.pop("current_period_end", None)
    for item in obj["items"]["data"]:
        item["current_period_start"] = start
        item["current_period_end"] = end
    return "subscription_basil"


def _events_file_faults(
    path: Path, rng: np.random.Generator, landing: Path
) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    n = len(lines)
    if n < 20:
        return []
    rel = str(path.relative_to(landing))
    counts = {kind: max(1, int(round(n * rate))) for kind, rate in RATES.items()}
    # schema changes and card numbers need suitable events; pick them by type
    types = [line[line.rfind('"type":"') + 8 : -2] for line in lines]
    candidates = {
        "schema_change": [
            i for i, t in enumerate(types) if t.startswith(("invoice.", "customer.subscription."))
        ],
        "card_number_in_text": [
            i
            for i, t in enumerate(types)
            if t.startswith(("customer.", "invoice.", "charge.s", "charge.f"))
        ],
    }
    taken: set[int] = set()
    chosen: dict[str, list[int]] = {}
    for kind in RATES:
        pool = np.asarray(candidates.get(kind, range(n - 1)))
        pool = pool[~np.isin(pool, list(taken))] if taken else pool
        k = min(counts[kind], len(pool))
        picks = sorted(int(i) for i in rng.choice(pool, size=k, replace=False)) if k else []
        chosen[kind] = picks
        taken.update(picks)

    # out[i] = (text, fault or None); extra lines are inserted after original positions
    before: dict[int, list[tuple[str, dict[str, Any] | None]]] = {}
    records: list[tuple[str, dict[str, Any] | None]] = []
    faults: list[dict[str, Any]] = []
    kind_of = {i: kind for kind, picks in chosen.items() for i in picks}
    for i, line in enumerate(lines):
        kind = kind_of.get(i)
        event_id = line[7 : line.index('"', 7)]
        if kind is None:
            records.append((line, None))
        elif kind == "duplicate_delivery":
            fault = {"kind": kind, "file": rel, "event_id": event_id}
            orig = {"kind": "_original", "ref": fault}
            records.append((line, orig))
            target = min(n, i + 1 + int(rng.integers(1, 1000)))
            before.setdefault(target, []).append((line, fault))
        elif kind == "out_of_order":
            fault = {"kind": kind, "file": rel, "event_id": event_id}
            target = min(n, i + 1 + int(rng.integers(5, 500)))
            before.setdefault(target, []).append((line, fault))
        elif kind == "malformed_json":
            cut = int(rng.integers(len(line) // 4, 3 * len(line) // 4))
            records.append((line[:cut], {"kind": kind, "file": rel, "event_id": event_id}))
        elif kind == "missing_required_field":
            event = json.loads(line)
            options = [p for p in _REQUIRED if _has(event, p)]
            field = options[int(rng.integers(len(options)))]
            _delete(event, field)
            records.append(
                (
                    so.encode(event),
                    {"kind": kind, "file": rel, "event_id": event_id, "field": field},
                )
            )
        elif kind == "unknown_event_type":
            records.append((line, None))
            event = json.loads(line)
            new_id = "evt_X" + event_id[5:]
            unknown = so.event(
                event_id=new_id,
                type_=UNKNOWN_TYPES[int(rng.integers(len(UNKNOWN_TYPES)))],
                obj={
                    "id": event["data"]["object"]["id"],
                    "object": "unknown_object",
                    "note": "injected",
                },
                created=event["created"],
            )
            records.append(
                (
                    so.encode(unknown),
                    {"kind": kind, "file": rel, "event_id": new_id, "type": unknown["type"]},
                )
            )
        elif kind == "card_number_in_text":
            event = json.loads(line)
            obj = event["data"]["object"]
            number = TEST_CARDS[int(rng.integers(len(TEST_CARDS)))]
            fmt = CARD_FORMATS[int(rng.integers(len(CARD_FORMATS)))]
            text = f"Please charge my other card {_format_card(number, fmt)} instead"
            obj["description"] = f"{obj.get('description') or ''} {text}".strip()
            records.append(
                (
                    so.encode(event),
                    {
                        "kind": kind,
                        "file": rel,
                        "event_id": event_id,
                        "field": "data.object.description",
                        "last4": number[-4:],
                        "digits": len(number),
                        "format": fmt,
                    },
                )
            )
        elif kind == "schema_change":
            event = json.loads(line)
            change = _basil(event)
            records.append(
                (
                    so.encode(event),
                    {"kind": kind, "file": rel, "event_id": event_id, "change": change},
                )
            )
        # lines moved or duplicated to "before original position j" are emitted after line j-1
        for item in before.pop(i + 1, []):
            records.append(item)
    for items in before.values():  # targets beyond the end
        records.extend(items)

    out_lines = []
    for number, (text, fault) in enumerate(records, start=1):
        out_lines.append(text)
        if fault is None:
            continue
        if fault["kind"] == "_original":
            fault["ref"]["original_line"] = number
        else:
            fault["line"] = number
            faults.append(fault)
    output.write_events(path, out_lines)
    return faults


def _ticket_faults(path: Path, rng: np.random.Generator, landing: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = len(lines) - 1
    if rows < 1:
        return []
    k = min(rows, max(1, int(round(rows * TICKET_CARD_RATE))))
    picks = sorted(int(i) for i in rng.choice(np.arange(1, rows + 1), size=k, replace=False))
    header = next(csv.reader([lines[0]]))
    body_col = header.index("body")
    faults = []
    for i in picks:
        row = next(csv.reader([lines[i]]))
        number = TEST_CARDS[int(rng.integers(len(TEST_CARDS)))]
        fmt = CARD_FORMATS[int(rng.integers(len(CARD_FORMATS)))]
        row[body_col] = f"{row[body_col]} My card is {_format_card(number, fmt)}, exp 12/29."
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        lines[i] = buf.getvalue()
        faults.append(
            {
                "kind": "card_number_in_text",
                "file": str(path.relative_to(landing)),
                "line": i + 1,
                "ticket_id": row[0],
                "field": "body",
                "last4": number[-4:],
                "digits": len(number),
                "format": fmt,
            }
        )
    output.write_text(path, "\n".join(lines) + "\n")
    return faults


def inject_faults(out: Path, *, seed: int) -> dict[str, Any]:
    """Inject faults into the landing files under ``out`` and write the manifest.

    Args:
        out: the data directory a :func:`~workbench.simulator.simulate` run wrote.
        seed: the simulation seed (faults use their own generator derived from it).

    Returns:
        The manifest: ``{"seed", "faults": [...], "counts": {kind: n}}``.
    """
    landing = Path(out) / "landing"
    faults: list[dict[str, Any]] = []
    files = sorted((landing / "stripe").glob("events-*.jsonl"))
    for i, path in enumerate(files):
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(2, i)))
        faults.extend(_events_file_faults(path, rng, landing))
    tickets = landing / "csv" / "support_tickets.csv"
    if tickets.exists():
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(3, 0)))
        faults.extend(_ticket_faults(tickets, rng, landing))
    counts: dict[str, int] = {}
    for f in faults:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    manifest = {"seed": seed, "faults": faults, "counts": dict(sorted(counts.items()))}
    output.write_json(landing / "faults_manifest.json", manifest)
    return manifest
