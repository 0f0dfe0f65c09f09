"""Erase one customer's personal data everywhere, the raw lake included.

``workbench erase --customer cus_…`` is the one sanctioned rewrite of the lake:

1. Every lake file that mentions the customer is rewritten without their personal data:
   in JSON records that concern the customer (the customer object itself, and invoices,
   charges, payment intents, subscriptions whose ``customer`` is them) the fields that
   hold a name, e-mail, phone, address or free text about them are set to null, and any
   remaining occurrence of the name or e-mail they had is replaced by ``[erased]``; in CSV
   files the same values are blanked on the rows that mention the customer, and so are the
   columns that the file's mappings (every mapping it was loaded with, from the receipts)
   read as a name or e-mail on the rows that hold the customer's id as a value (``[erased]``
   where the mapping requires a value, so the row still loads), so rows that never reached
   ``accounts`` (quarantined ones, a file that failed) are covered too.
   The lake's copies of CSV mapping lookup files (``_mappings/lookups/``) are rewritten the
   same way: on the rows holding the customer's id (their key, usually) or keyed by a key
   the customer's rows in the CSV files look the lookup up with (a lookup keyed by
   subscription id; a key others' rows use too is not theirs), the value column of
   a lookup that a mapping reads as a name or e-mail becomes ``[erased]`` (a blank value would
   be no entry, and the rows looking it up would be rejected), and known names and e-mails
   elsewhere on those rows are blanked.
   Lines that do not mention the customer keep their bytes.
2. Each rewrite is appended to ``lake/_erasures.jsonl`` first (who, why, when, file, old
   and new SHA-256, how many values), then the file is replaced atomically. A rewritten file
   keeps its path, named by the hash it was stored with, and so do the receipts, ``loads``
   rows and pinned mappings naming it; ``verify``, ``rebuild`` and a re-map take the hash it
   must have now from the log. An erasure stopped between the two is finished by a rerun
   (until then ``verify`` reports the file changed, and a rebuild reading a lookup copy left
   so stops, saying to rerun the erasure).
3. The landing zone (``data/landing/``: webhook bodies kept by ``workbench receive``, Stripe
   and CSV exports) is the inbox ``ingest_landing`` reads again on every run, so its files
   stay after they are loaded. Every JSON or CSV file there that mentions the customer is
   rewritten too, after the lake, each rewrite logged first (``landing_file``, old and new
   SHA-256) and then made atomically: a copy of a file already loaded gets its erased lake
   object's bytes (so the next ingest finds it as the same lake object and counts its
   records as duplicates: nothing new is stored); a file not loaded yet is scrubbed like a
   lake file (a CSV file with the bundled mapping its header fits), so it loads without
   what was erased. Webhook bodies can be rewritten: their signature was checked when they
   arrived and is never checked again (the header is not kept, and the body was already
   stored with card numbers redacted). The receiver answers a re-delivery of an erased
   body as a duplicate and keeps nothing of it.
4. The warehouse is rebuilt from the lake, so ``accounts`` and every other table agree with
   the rewritten lake and ``verify`` still passes (the lake hashes are checked against the
   erasure log). Quarantine rows are rebuilt from the rewritten files, so their values and
   messages no longer hold what was erased.

Rerunning an interrupted erasure finishes it; rerunning a finished one changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from workbench import csv_mapping
from workbench.config import Settings, load_settings
from workbench.ingest.lake import LOOKUPS, Lake
from workbench.ingest.rebuild import RebuildReport, rebuild_locked
from workbench.ingest.records import redact_cards
from workbench.lakehouse import open_warehouse
from workbench.store import atomic_write_bytes

log = logging.getLogger(__name__)

ERASED = "[erased]"
#: Keys of a customer object that describe the person.
CUSTOMER_KEYS = ("name", "email", "phone", "address", "shipping", "description", "individual_name")
#: Keys of objects that belong to a customer and copy their details.
COPIED_KEYS = (
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_address",
    "customer_shipping",
    "receipt_email",
    "billing_details",
    "shipping",
    "description",
)


@dataclass
class ErasureReport:
    """What an erasure changed."""

    erasure_id: str
    customer_id: str
    files_rewritten: int
    values_erased: int
    rebuild: RebuildReport | None
    seconds: float
    landing_files_rewritten: int = 0

    def __str__(self) -> str:
        return (
            f"erased {self.customer_id}: {self.values_erased} values in {self.files_rewritten} lake files "
            f"and {self.landing_files_rewritten} landing files (erasure {self.erasure_id}), "
            f"warehouse rebuilt in {self.seconds:.1f} s"
        )


def _ref(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


class _Scrubber:
    """Remove one customer's personal data from parsed JSON values."""

    def __init__(self, customer_id: str, known: set[str]) -> None:
        self.customer_id = customer_id
        self.known = {k for k in known if k and len(k) >= 3}
        self.count = 0

    def _null(self, obj: dict, keys: tuple[str, ...]) -> None:
        for key in keys:
            if obj.get(key) not in (None, "", {}, []):
                value = obj[key]
                if isinstance(value, str) and len(value) >= 3:
                    self.known.add(value)
                obj[key] = None
                self.count += 1

    def walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("object") == "customer" and value.get("id") == self.customer_id:
                self._null(value, CUSTOMER_KEYS)
            elif _ref(value.get("customer")) == self.customer_id:
                self._null(value, COPIED_KEYS)
            for key, item in value.items():
                value[key] = self.walk(item)
            return value
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, str) and self.known:
            new = self.text(value)
            return new
        return value

    def text(self, text: str) -> str:
        """``text`` with every known name or e-mail of the customer replaced."""
        for known in sorted(self.known, key=len, reverse=True):
            if len(known) >= 5 and known in text:
                self.count += text.count(known)
                text = text.replace(known, ERASED)
        return text

    def personal(self, value: str, *, required: bool) -> str:
        """A CSV field a mapping reads as the customer's name or e-mail: blanked, and learnt
        (``[erased]`` where the mapping requires a value, so the row still loads)."""
        if not value.strip() or value == ERASED:
            return value
        if len(value) >= 3:
            self.known.add(value)
        self.count += 1
        return ERASED if required else ""

    def field(self, value: str) -> str:
        """A CSV field: erased when it is a known value or holds a known e-mail."""
        if value in self.known:
            self.count += 1
            return ""
        for known in self.known:
            if "@" in known and known in value:
                self.count += 1
                value = value.replace(known, ERASED)
        return value


def _scrub_json(data: bytes, scrubber: _Scrubber) -> bytes:
    cid = scrubber.customer_id.encode()
    if cid not in data:
        return data
    text = data.decode("utf-8", errors="surrogateescape")
    stripped = text.lstrip()
    if stripped.startswith("[") or (
        stripped.startswith("{")
        and "\n" in stripped.rstrip()
        and not _is_json_line(stripped.split("\n", 1)[0])
    ):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if doc is not None:
            out = json.dumps(scrubber.walk(doc), indent=2, ensure_ascii=False)
            return (out + "\n").encode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if scrubber.customer_id not in line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            lines[i] = scrubber.text(line)
            continue
        lines[i] = json.dumps(scrubber.walk(value), ensure_ascii=False)
    return "\n".join(lines).encode("utf-8", errors="surrogateescape")


def _is_json_line(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _csv_records(lines: list[str], delimiter: str) -> Iterator[tuple[int, int, list[str]]]:
    """The CSV records of ``lines`` (a file split at ``\\n``) as ``csv`` reads them, each with
    the physical lines it spans (``[start, end)``): a quoted field may hold a line break,
    so a record is not always one line (the mappings read the file with ``csv`` too)."""
    pos = 0

    def feed() -> Iterator[str]:
        nonlocal pos
        while pos < len(lines):
            pos += 1
            yield lines[pos - 1] + "\n"

    start = 0
    for row in csv.reader(feed(), delimiter=delimiter):
        yield start, pos, row
        start = pos


#: (mapping's lake path, lookup name) -> the keys a customer's rows look it up with, and the
#: keys other rows do (:class:`LookupKeys`).
LookupKey = tuple[str, str]


@dataclass
class LookupKeys:
    """The keys that the CSV files' rows look up a name or e-mail with (e.g. subscription
    ids), per lookup: those on the customer's rows and those on anyone else's. A lookup copy's
    row keyed by one of the customer's keys is theirs even without their id
    (:func:`_scrub_lookup`); a key others' rows use too is not taken as theirs."""

    theirs: dict[LookupKey, set[str]] = field(default_factory=dict)
    others: dict[LookupKey, set[str]] = field(default_factory=dict)

    def of(self, key: LookupKey) -> set[str]:
        return self.theirs.get(key, set()) - self.others.get(key, set())


def _scrub_csv(
    data: bytes,
    scrubber: _Scrubber,
    mappings: list[Any] | None = None,
    keys: LookupKeys | None = None,
) -> bytes:
    """Blank the customer's values in a CSV file; ``mappings``: those it was loaded with.
    With ``keys``, the keys its rows look up a name or e-mail with are noted there."""
    mappings = mappings or []

    def personal(header: list[str]) -> dict[int, bool]:
        return _merged(csv_mapping.personal_positions(m, header) for m in mappings)

    def noting(header: list[str]) -> Callable[[list[str], bool], None] | None:
        where = [
            ((str(m.path), lookup), sorted(positions))
            for m in mappings
            for lookup, positions in csv_mapping.personal_lookup_keys(m, header).items()
            if positions
        ]
        if keys is None or not where:
            return None

        def note(row: list[str], theirs: bool) -> None:
            book = keys.theirs if theirs else keys.others
            for key, positions in where:
                found = {row[j].strip() for j in positions if j < len(row) and row[j].strip()}
                book.setdefault(key, set()).update(found)

        return note

    delimiter = mappings[0].delimiter if mappings else ","
    if keys is None or not any(csv_mapping.reads_personal_lookups(m) for m in mappings):
        return _scrub_records(data, scrubber, delimiter, personal)  # not parsed unless theirs
    return _scrub_records(data, scrubber, delimiter, personal, noting=noting)


def _scrub_lookup(
    data: bytes,
    scrubber: _Scrubber,
    reads: list[tuple[Any, str]],
    keys: LookupKeys | None = None,
) -> bytes:
    """Erase the customer's values in the lake's copy of a lookup file; ``reads``: the
    (mapping, lookup name) pairs of the loads' mappings pinned to it. The value column of a
    lookup a mapping reads as a name or e-mail is set to ``[erased]`` on the rows holding the
    customer's id, or keyed by a key their rows look it up with (``keys``, noted while the
    CSV files were scrubbed: a lookup keyed by subscription id holds no customer id), not
    blanked: a blank value is no entry, and the rows looking it up would be rejected on a
    rebuild."""

    def personal(header: list[str]) -> dict[int, bool]:
        return _merged(csv_mapping.personal_lookup_positions(m, name, header) for m, name in reads)

    def keyed(header: list[str]) -> Callable[[list[str]], bool] | None:
        where = []
        for m, name in reads:
            j = csv_mapping.lookup_key_position(m, name, header)
            theirs = keys.of((str(m.path), name)) if keys is not None else set()
            if j is not None and theirs:
                where.append((j, theirs))
        if not where:
            return None
        return lambda row: any(j < len(row) and row[j].strip() in ks for j, ks in where)

    delimiter = reads[0][0].delimiter if reads else ","
    return _scrub_records(data, scrubber, delimiter, personal, keyed=keyed)


def _merged(positions: Iterable[dict[int, bool]]) -> dict[int, bool]:
    """Position -> whether any mapping requires a value there."""
    out: dict[int, bool] = {}
    for found in positions:
        for j, required in found.items():
            out[j] = out.get(j, False) or required
    return out


def _scrub_records(
    data: bytes,
    scrubber: _Scrubber,
    delimiter: str,
    personal_positions: Callable[[list[str]], dict[int, bool]],
    *,
    keyed: Callable[[list[str]], Callable[[list[str]], bool] | None] | None = None,
    noting: Callable[[list[str]], Callable[[list[str], bool], None] | None] | None = None,
) -> bytes:
    """Blank the customer's values in CSV text: on the records holding the customer's id as a
    field, the ``personal_positions`` of the header (``[erased]`` where a value is required),
    and elsewhere on the records mentioning them the known names and e-mails. Records that do
    not mention the customer keep their bytes.

    ``keyed`` (given the header) tells which other records are the customer's too (a lookup
    row keyed by one of their subscription ids); ``noting`` (given the header) is told of
    every record, with whether it holds the customer's id (the keys their rows look
    lookups up with are read so)."""
    cid = scrubber.customer_id
    if cid.encode() not in data and keyed is None and noting is None:
        return data
    text = data.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    found = _csv_records(lines, delimiter)
    first = next(found, None)
    header = first[2] if first else []
    also = keyed(header) if keyed is not None else None
    note = noting(header) if noting is not None else None
    if cid.encode() not in data and also is None and note is None:
        return data
    records = [first, *found] if first else []
    personal = personal_positions(header)  # position -> a mapping requires a value there
    out: list[str] = []
    for start, end, row in records:
        mentions = cid in "\n".join(lines[start:end])
        theirs = start > 0 and (
            (mentions and cid in (f.strip() for f in row)) or (also is not None and also(row))
        )
        if note is not None and start > 0:
            note(row, theirs)
        if not (mentions or theirs):
            out.extend(lines[start:end])
            continue
        new = [
            scrubber.personal(f, required=personal[j])
            if theirs and j in personal
            else scrubber.field(f)
            for j, f in enumerate(row)
        ]
        if new == row:
            out.extend(lines[start:end])
            continue
        buf = io.StringIO()
        # "\r\n" as the terminator: a field holding either is quoted (stripped after)
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(new)
        out.append(buf.getvalue()[:-2] + ("\r" if lines[end - 1].endswith("\r") else ""))
    return "\n".join(out).encode("utf-8", errors="surrogateescape")


def _csv_mappings(lake: Lake) -> dict[str, list[Any]]:
    """Per CSV lake file, every mapping it was loaded with (from the load receipts)."""
    used: dict[str, dict[str, Any]] = {}  # lake file -> mapping's lake path -> mapping
    parsed: dict[str, Any] = {}
    for receipt in lake.receipts():
        for f in receipt.files:
            if f.mapping and f.mapping not in parsed:
                parsed[f.mapping] = csv_mapping.load_mapping(lake.path(f.mapping))
            if f.mapping:
                used.setdefault(f.lake_path, {})[f.mapping] = parsed[f.mapping]
    return {rel: list(by_path.values()) for rel, by_path in used.items()}


#: Files of the landing zone that can hold a payload (what ``ingest`` reads there).
LANDING_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")


def _lookup_copies(lake: Lake, mappings: dict[str, list[Any]]) -> dict[str, list[tuple[Any, str]]]:
    """Every lookup copy in the lake (``_mappings/lookups/``) -> the (mapping, lookup name)
    pairs of the loads' mappings (``mappings``, from the receipts) pinned to it; a copy no
    load's mapping names (its load never committed) has none and is scrubbed as a plain CSV."""
    folder = lake.path(LOOKUPS)
    out: dict[str, list[tuple[Any, str]]] = {
        f"{LOOKUPS}/{p.name}": []
        for p in (sorted(folder.iterdir()) if folder.is_dir() else [])
        if p.is_file() and not p.name.startswith(".")
    }
    seen: set[str] = set()
    for m in (m for found in mappings.values() for m in found):
        if m.path is None or str(m.path) in seen:
            continue
        seen.add(str(m.path))
        for name, lk in m.lookups.items():
            if lk.sha256 is None or lk.missing:
                continue
            copy = os.path.relpath(os.path.abspath(Path(m.path).parent / lk.file), lake.root)
            if Path(copy).as_posix() in out:
                out[Path(copy).as_posix()].append((m, name))
    return out


def _scrub(
    name: str,
    data: bytes,
    scrubber: _Scrubber,
    mappings: list[Any] | None,
    keys: LookupKeys | None = None,
) -> bytes:
    if name.lower().endswith(".csv"):
        return _scrub_csv(data, scrubber, mappings, keys)
    return _scrub_json(data, scrubber)


def _landing_files(landing: Path) -> list[Path]:
    """The landing zone's JSON and CSV files, as ingest finds them (files whose name starts
    with a dot, such as the temporary file of a write in progress, left out; files in a
    hidden folder are read by ingest, so they are included)."""
    if not landing.is_dir():
        return []
    return [
        p
        for p in sorted(landing.rglob("*"))
        if p.is_file()
        and p.suffix.lower() in LANDING_SUFFIXES
        and not p.name.startswith(".")  # as ingest reads them
    ]


def _lake_copies(lake: Lake) -> dict[str, str]:
    """Content hash -> lake object, for every hash an object has had: the one it was
    received with (its name) and those the erasure log recorded."""
    out = {Path(rel).name.split(".", 1)[0]: rel for rel in lake.objects()}
    out.update(lake.erased_hashes())
    return out


def _detected_mappings(path: Path) -> list[Any]:
    """The bundled mapping a CSV file's header fits (as ``ingest`` picks it), if any."""
    name = csv_mapping.detect_mapping(path) if path.suffix.lower() == ".csv" else None
    return [csv_mapping.load_mapping(name)] if name else []


def _landing_rewrite(
    path: Path,
    old: bytes,
    scrubber: _Scrubber,
    lake: Lake,
    copies: dict[str, str],
    mappings: dict[str, list[Any]],
) -> tuple[bytes, str | None]:
    """The bytes a landing file gets, and the lake object it is a copy of (None: a file not
    loaded yet).

    A copy of a loaded file (its bytes, card numbers redacted as ingest does, are a lake
    object's, now or before an erasure) gets that object's bytes as they are now, so the next
    ingest finds it as the same object; while the object is as the copy was, the copy keeps
    its bytes. Any other file is scrubbed like a lake file.
    """
    kept, _ = redact_cards(old)
    rel = copies.get(_sha(kept))
    if rel is None:
        return _scrub(path.name, old, scrubber, _detected_mappings(path)), None
    _scrub(rel, kept, scrubber, mappings.get(rel))  # learns and counts what the copy held
    current = lake.read(rel)
    return (old if current == kept else current), rel


def _known_values(wh: Any, customer_id: str) -> set[str]:
    """The customer's names and e-mails in the warehouse (the caller holds its lock)."""
    from workbench.lakehouse import SparkWarehouse

    query = "SELECT name, email FROM accounts WHERE account_id = ?"
    if isinstance(wh, SparkWarehouse):
        if not wh.exists():
            return set()
        with wh.read_locked() as engine:
            rows = engine.execute(query, [customer_id]).fetchall()
    else:
        if not wh.path.exists():
            return set()
        con = duckdb.connect(str(wh.path), read_only=True)
        try:
            rows = con.execute(query, [customer_id]).fetchall()
        finally:
            con.close()
    return {v for row in rows for v in row if v}


def erase_customer(
    customer_id: str, *, who: str, why: str, settings: Settings | None = None
) -> ErasureReport:
    """Remove a customer's personal data from the lake, the landing zone and the warehouse.

    Args:
        customer_id: The account id (e.g. ``cus_…``).
        who: The person or system asking (recorded).
        why: The reason, e.g. a ticket number or "GDPR art. 17 request" (recorded).
        settings: Where the data directory and the warehouse are.

    Returns:
        How many lake files, values and landing files were changed.

    Raises:
        ValueError: ``who`` or ``why`` is empty.
        WarehouseBusy: Another process is writing the warehouse.
    """
    if not who.strip() or not why.strip():
        raise ValueError("an erasure must record who asked for it and why")
    settings = settings or load_settings()
    started = time.perf_counter()
    wh = open_warehouse(settings)  # DuckDB, or the Spark warehouse (engine = "spark")
    lake = Lake(Path(settings.data_dir) / "lake")
    erasure_id = f"er_{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:8]}"
    landing = Path(settings.data_dir) / "landing"
    with wh.lock.hold(step="erase"):
        known = _known_values(wh, customer_id)
        objects = lake.objects()
        mappings = _csv_mappings(lake)
        lookups = _lookup_copies(lake, mappings)
        # The landing files that mention the customer first teach what they hold (a file not
        # loaded yet may carry a name or e-mail the lake never saw); nothing is written here.
        landing_files = []
        copies = _lake_copies(lake)
        for path in _landing_files(landing):
            data = path.read_bytes()
            if customer_id.encode() not in data:
                continue  # as in the lake: a file that does not name them is not theirs
            landing_files.append(path)
            scrubber = _Scrubber(customer_id, known)
            _landing_rewrite(path, data, scrubber, lake, copies, mappings)
            known |= scrubber.known

        def logged() -> dict[str, Any]:  # what every entry of this erasure says
            return {"erasure_id": erasure_id, "customer_id": customer_id, "who": who,
                    "why": why, "erased_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip

        # Two passes: the first learns every name/e-mail the customer ever had from the
        # customer objects, the second also replaces those values in free text elsewhere.
        # The lookup copies of the mappings are rewritten like the received files: in place,
        # keeping their name, which the pinned mappings name (readers take the hash they must
        # have now from the log).
        # The received CSV files come before the lookup copies: their rows tell the keys the
        # customer's rows look a name or e-mail up with (a lookup keyed by subscription id).
        files_rewritten = values = 0
        keys = LookupKeys()
        for _ in range(2):
            for rel in [*objects, *lookups]:
                scrubber = _Scrubber(customer_id, known)
                old = lake.read(rel)
                new = (
                    _scrub_lookup(old, scrubber, lookups[rel], keys)
                    if rel in lookups
                    else _scrub(rel, old, scrubber, mappings.get(rel), keys)
                )
                known |= scrubber.known
                if new == old:
                    continue
                entry = {
                    **logged(),
                    "lake_file": rel,
                    "old_sha256": _sha(old),
                    "new_sha256": _sha(new),
                    "values_erased": scrubber.count,
                }
                lake.log_erasure(entry)
                lake.replace(rel, new)
                files_rewritten += 1
                values += scrubber.count
        # Then the landing zone, now that the lake objects its files are copies of are erased.
        landing_rewritten = 0
        copies = _lake_copies(lake)
        for path in landing_files:
            scrubber = _Scrubber(customer_id, known)
            old = path.read_bytes()
            new, copy_of = _landing_rewrite(path, old, scrubber, lake, copies, mappings)
            if new == old:
                continue
            lake.log_erasure(
                {
                    **logged(),
                    "lake_file": None,
                    "landing_file": str(path.relative_to(Path(settings.data_dir))),
                    "copy_of": copy_of,
                    "old_sha256": _sha(old),
                    "new_sha256": _sha(new),
                    "values_erased": scrubber.count,
                }
            )
            mode = stat.S_IMODE(path.stat().st_mode)
            atomic_write_bytes(path, new)
            path.chmod(mode)
            landing_rewritten += 1
        lake.log_erasure(
            {
                **logged(),
                "lake_file": None,
                "old_sha256": None,
                "new_sha256": None,
                "values_erased": values,
                "landing_files_rewritten": landing_rewritten,
            }
        )
        rebuilt = (
            rebuild_locked(settings, lake)
            if settings.engine != "spark"
            else wh.rebuild_locked(lake)
        )
    report = ErasureReport(
        erasure_id=erasure_id,
        customer_id=customer_id,
        files_rewritten=files_rewritten,
        values_erased=values,
        rebuild=rebuilt,
        seconds=time.perf_counter() - started,
        landing_files_rewritten=landing_rewritten,
    )
    log.info("%s", report)
    return report


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
