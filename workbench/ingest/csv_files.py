"""Persist CSV exports (Stripe Dashboard and any other system) mapped by :mod:`workbench.csv_mapping`.

The mapping turns a file into canonical frames, row-level rejects and, when the file's
shape no longer fits (a required column gone, a column of the wrong type), a whole-file
error. Here the result goes through the same lake, quarantine and conservation path as
Stripe events:

* rejected rows become quarantine rows (file, line, column, rule, masked value);
* a whole-file error fails that file (``loads.status = 'failed'`` with the message, every
  row counted as quarantined, one quarantine row for the file); the batch goes on;
* frames are checked against the table contracts; a failing row is quarantined;
* rows for tables that are derived from versions (accounts, prices, subscriptions and
  their items, invoices and their lines, payment attempts, refunds, disputes) are stored
  as versions at the time the file was received, so a later export of the same object
  supersedes an earlier one and Stripe events and CSV rows about the same object are
  ordered the same way; ``subscription_history`` rows given by a mapping are kept as
  given; the other tables (usage, CRM signals, support tickets, FX rates) are upserted by
  primary key;
* the same file received again (same content) changes nothing: its rows are duplicates.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench import csv_mapping
from workbench.ingest import contracts
from workbench.ingest.lake import Lake
from workbench.ingest.tables import INTERNAL
from workbench.schema import TABLES

if TYPE_CHECKING:
    from workbench.ingest.loader import _Batch, _Input

log = logging.getLogger(__name__)

#: Canonical table -> (version table, key column, column naming the version's object).
VERSIONED: dict[str, tuple[str, str, str]] = {
    "accounts": ("account_versions", "account_id", "account_id"),
    "prices": ("price_versions", "price_id", "price_id"),
    "subscriptions": ("subscription_versions", "subscription_id", "subscription_id"),
    "subscription_items": ("subscription_item_versions", "item_id", "subscription_id"),
    "invoices": ("invoice_versions", "invoice_id", "invoice_id"),
    "invoice_lines": ("invoice_line_versions", "line_id", "invoice_id"),
    "payment_attempts": ("charge_versions", "attempt_id", "attempt_id"),
    "refunds": ("refund_versions", "refund_id", "refund_id"),
    "disputes": ("dispute_versions", "dispute_id", "dispute_id"),
}
_TOUCHES = {
    "accounts": "accounts",
    "prices": "prices",
    "subscriptions": "subscriptions",
    "subscription_items": "subscriptions",
    "invoices": "invoices",
    "invoice_lines": "invoices",
    "payment_attempts": "payments",
    "refunds": "payments",
    "disputes": "payments",
}


def resolve_mapping(mapping: str | Path | None, lake: Lake) -> tuple[Any, str | None, str | None]:
    """Load a mapping and keep its YAML in the lake (so a rebuild maps the same way).

    Returns:
        ``(Mapping or None, lake path of its YAML, its name)``; ``None`` mapping means
        "detect per file".
    """
    if mapping is None:
        return None, None, None
    obj = csv_mapping.load_mapping(mapping)
    rel = lake.put_mapping(Path(obj.path).read_bytes()) if obj.path else None
    return obj, rel, obj.name


def _mapping_for(batch: _Batch, inp: _Input, path: Path) -> Any:
    if inp.mapping is not None:
        return inp.mapping
    name = csv_mapping.detect_mapping(path)
    if name is None:
        return None
    obj = csv_mapping.load_mapping(name)
    inp.mapping_lake = batch.lake.put_mapping(Path(obj.path).read_bytes()) if obj.path else None
    inp.mapping_name = name
    return obj


def _lookups(mapping: Any, original: Path) -> dict[str, Path] | None:
    if not getattr(mapping, "lookups", None):
        return None
    return {
        name: original.parent / lk.file
        for name, lk in mapping.lookups.items()
        if (original.parent / lk.file).exists()
    } or None


def load_csv(batch: _Batch, inp: _Input) -> None:
    """Map one CSV file and write its rows, rejects and counts into the batch."""
    con, report = batch.con, inp.report
    path = batch.lake.path(inp.lake.path)
    mapping = _mapping_for(batch, inp, Path(inp.display))
    if mapping is None:
        _fail(
            batch,
            inp,
            received=_count_rows(inp.data),
            message="no mapping given and none of the bundled mappings fits this file's header",
        )
        return
    mapped = csv_mapping.map_csv(path, mapping, lookups=_lookups(mapping, Path(inp.display)))
    if mapped.error:
        _fail(batch, inp, received=mapped.received, message=mapped.error)
        return
    earlier = con.execute(
        "SELECT mapping FROM loads WHERE source_file = ? AND status = 'ok' "
        "ORDER BY finished_at DESC LIMIT 1",
        [inp.lake.path],
    ).fetchall()
    report.received = mapped.received
    if earlier:
        report.duplicates = mapped.received
        if earlier[0][0] != inp.mapping_lake:
            # Say so rather than look like a no-op: the rows stay as the first mapping made them.
            report.message = (
                f"already loaded with another mapping ({earlier[0][0] or 'auto-detected'}); "
                "it was not mapped again: loading a file again under a changed mapping is not "
                "supported yet (docs/runbooks.md, 'upstream schema change')"
            )
            log.warning("%s: %s", inp.display, report.message)
        return
    rows = []
    for r in mapped.rejects.itertuples(index=False):
        rows.append(
            _qrow(
                batch,
                inp,
                line=r.line,
                table=None,
                column=r.column_name,
                rule=r.rule,
                message=r.message,
                value=r.value,
            )
        )
    dropped: set[int] = set()  # file lines a table contract rejected
    for table, frame in mapped.tables.items():
        if frame.empty:
            continue
        frame = frame.reset_index(drop=True)
        lines = mapped.table_lines.get(table)
        fails = contracts.validate(frame, table)
        if len(fails):
            key = TABLES[table].primary_key
            for f in fails.itertuples(index=False):
                ident = (
                    ", ".join(f"{k}={frame.at[f.row, k]}" for k in key) if key else f"row {f.row}"
                )
                line = None if lines is None else int(lines[f.row])
                rows.append(
                    _qrow(
                        batch,
                        inp,
                        line=line,
                        table=table,
                        column=f.column_name,
                        rule=f.rule,
                        message=f"{f.message} ({ident})",
                        value=f.value,
                    )
                )
            bad = sorted(set(fails["row"].tolist()))
            dropped.update(int(lines[r]) if lines is not None else -1 - r for r in bad)
            frame = frame.drop(index=bad)
        _write_table(batch, inp, table, frame)
    report.quarantined = mapped.rejected + len(dropped)
    report.duplicates = mapped.duplicates
    report.accepted = mapped.received - report.quarantined - report.duplicates
    report.handled = report.accepted
    _insert_quarantine(batch, rows)


def _count_rows(data: bytes) -> int:
    lines = [ln for ln in data.splitlines() if ln.strip()]
    return max(0, len(lines) - 1)


def _qrow(
    batch: _Batch,
    inp: _Input,
    *,
    line: Any,
    table: Any,
    column: Any,
    rule: str,
    message: str,
    value: Any,
) -> dict[str, Any]:
    from workbench.ingest.loader import quarantine_id, redact_value

    line = None if line is None or line != line else int(line)
    return {
        "quarantine_id": quarantine_id(inp.lake.path, line, None, table, column, rule),
        "load_id": batch.load_id,
        "source": inp.source,
        "source_file": inp.lake.path,
        "line": line,
        "event_id": None,
        "table_name": table,
        "column_name": None if column is None or column != column else str(column),
        "rule": str(rule),
        "message": str(message),
        "value_redacted": redact_value(value),
        "received_at": batch.received_at,
    }


def _insert_quarantine(batch: _Batch, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=TABLES["quarantine"].column_names).drop_duplicates(
        "quarantine_id"
    )
    batch.con.register("wb_q_csv", frame)
    batch.con.execute(
        "INSERT INTO quarantine BY NAME SELECT * FROM wb_q_csv ON CONFLICT DO NOTHING"
    )
    batch.con.unregister("wb_q_csv")


def _fail(batch: _Batch, inp: _Input, *, received: int, message: str) -> None:
    report = inp.report
    report.status, report.message = "failed", message
    report.received = received
    repeat = batch.con.execute(
        "SELECT count(*) FROM quarantine WHERE source_file = ? AND rule = 'file_rejected'",
        [inp.lake.path],
    ).fetchall()[0][0]
    if repeat:
        report.duplicates = received
        return
    report.quarantined = received
    _insert_quarantine(
        batch,
        [
            _qrow(
                batch,
                inp,
                line=None,
                table=None,
                column=None,
                rule="file_rejected",
                message=message,
                value=None,
            )
        ],
    )
    log.warning("%s failed: %s", inp.display, message)


def _write_table(batch: _Batch, inp: _Input, table: str, frame: pd.DataFrame) -> None:
    con = batch.con
    if frame.empty:
        return
    spec = TABLES[table]
    if spec.primary_key:
        frame = frame.drop_duplicates(list(spec.primary_key), keep="first")
    if table in VERSIONED:
        version_table, _, entity = VERSIONED[table]
        target = INTERNAL[version_table].column_names
        out = frame[[c for c in target if c in frame.columns]].copy()
        if "version_at" in target:
            out.insert(0, "version_at", batch.received_at)
        out.insert(0, "event_id", [f"csv:{inp.lake.sha256[:16]}:{v}" for v in frame[entity]])
        if "lines_hash" in target:  # an invoice version and its lines from one CSV row
            out["lines_hash"] = out["event_id"]
        if table == "accounts":
            personal = pd.DataFrame(
                {
                    "event_id": out["event_id"],
                    "version_at": batch.received_at,
                    "account_id": frame["account_id"],
                    "name": frame.get("name"),
                    "email": frame.get("email"),
                }
            )
            con.register("wb_csv_personal", personal)
            con.execute("INSERT INTO wb_personal_acc BY NAME SELECT * FROM wb_csv_personal")
            con.unregister("wb_csv_personal")
        con.register("wb_csv_rows", out)
        con.execute(f"INSERT INTO {version_table} BY NAME SELECT * FROM wb_csv_rows")
        touched = _TOUCHES[table]
        key = "'*'" if touched == "payments" else entity
        con.execute(f"INSERT INTO wb_t_{touched} SELECT DISTINCT {key} FROM wb_csv_rows")
        con.unregister("wb_csv_rows")
    elif table == "subscription_history":
        out = frame.assign(load_id=batch.load_id)
        con.register("wb_csv_rows", out)
        con.execute(
            "INSERT OR REPLACE INTO subscription_history_csv BY NAME SELECT * FROM wb_csv_rows"
        )
        con.execute(
            "INSERT INTO wb_t_subscriptions SELECT DISTINCT subscription_id FROM wb_csv_rows"
        )
        con.unregister("wb_csv_rows")
    else:
        con.register("wb_csv_rows", frame)
        con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM wb_csv_rows")
        con.unregister("wb_csv_rows")
