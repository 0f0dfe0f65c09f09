"""Persist CSV exports (Stripe Dashboard and any other system) mapped by :mod:`workbench.csv_mapping`.

The mapping turns a file into canonical frames, row-level rejects and, when the file's
shape no longer fits (a required column gone, a column of the wrong type), a whole-file
error. Here the result goes through the same lake, quarantine and conservation path as
Stripe events:

* rejected rows become quarantine rows (file, line, column, rule, masked value);
* a whole-file error fails that file (``loads.status = 'failed'`` with the message, every
  row counted as quarantined, one quarantine row for the file); the batch goes on; when a
  later load maps the file (a fixed mapping), the failed loads become ``superseded`` and
  the quarantine row is kept, marked resolved (:func:`_resolve_rejections`);
* frames are checked against the table contracts; a failing row is quarantined;
* rows for tables that are derived from versions (accounts, prices, subscriptions and
  their items, invoices and their lines, payment attempts, refunds, disputes) are stored
  as versions at the time the file was received, so a later export of the same object
  supersedes an earlier one and Stripe events and CSV rows about the same object are
  ordered the same way; ``subscription_history`` rows given by a mapping are kept as
  given; the other tables (usage, CRM signals, support tickets, FX rates) are upserted by
  primary key;
* the same file received again (same content) changes nothing: its rows are duplicates,
  also under another mapping (the message says so);
* unless a re-map is asked for (``ingest(..., remap=True)``, ``workbench ingest --remap``):
  then, in the load's transaction, what the file's earlier loads wrote (versions, upserted
  rows, quarantine rows) is taken out (:func:`_unload`), the file is mapped with the new
  mapping as if first received then (same ``version_at``), and the earlier loads rows are
  kept with ``status = 'superseded'``. ``rebuild`` replays the receipts in order, the
  re-map included, so it ends with the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench import csv_mapping
from workbench.ingest import contracts
from workbench.ingest.lake import Lake, sha256_file
from workbench.ingest.records import redact_cards
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


#: Tables a CSV file writes by primary key (``INSERT OR REPLACE``), without versions.
UPSERTED = ("usage", "crm_signals", "support_tickets", "fx_rates")
#: How the ``loads`` message of a file loaded with ``remap`` begins (``sync_receipts`` reads
#: who asked back from it).
REMAP_PREFIX = "remap asked by "
#: How the ``loads`` message of a failed load begins once a later load of the same file
#: mapped it (the failed load is then ``superseded``; :func:`_unload` leaves it out of the
#: file's receipt time, as it mapped nothing).
FAILED_THEN_LOADED = "failed; the file loaded later, in load "


@dataclass(frozen=True)
class PriorLoad:
    """An earlier ``ok`` load of a file (a ``loads`` row)."""

    load_id: str
    mapping: str | None
    started_at: datetime
    file_sha256: str
    original_path: str | None


def prior_loads(con: Any, source_file: str) -> list[PriorLoad]:
    """The ``ok`` (not superseded) loads of a lake file, oldest first.

    The first one is the load whose mapping is in force: it mapped the file; later ones
    found the file already loaded (duplicates).
    """
    got = con.execute(
        "SELECT load_id, mapping, started_at, file_sha256, original_path FROM loads "
        "WHERE source_file = ? AND status = 'ok' ORDER BY finished_at, load_id",
        [source_file],
    ).fetchall()
    return [PriorLoad(*row) for row in got]


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


def _pin_lookups(batch: _Batch, inp: _Input, mapping: Any) -> Any:
    """The mapping ``inp`` is mapped with, its lookup files kept in the lake.

    A mapping as given reads its lookup files beside the CSV file (or at absolute paths).
    Here each file's bytes (card numbers redacted, as in every lake file) are kept as
    ``_mappings/lookups/<sha256>.<ext>`` and the mapping is stored pinned to those copies
    (:func:`workbench.csv_mapping.pin_lookups`); that stored mapping is the load's
    (``inp.mapping_lake``, in ``loads`` and the receipt). So a rebuild, a re-map and an
    erasure map with the copies this load read, whatever became of the files, and the same
    file loaded again beside an edited lookup file counts as loaded under another mapping
    (a file loaded before lookup files were kept, whose load stored the mapping unpinned,
    counts as loaded under this one: ``inp.unpinned_mapping_lake``). A lookup file that is
    not there is recorded as missing (``missing: true``): the file
    fails, naming where it was looked for, and a rebuild fails it the same way.

    A replayed load (``inp.replay``) keeps the mapping its receipt names.
    """
    lookups = getattr(mapping, "lookups", None)
    if inp.replay or not lookups or inp.mapping_lake is None:
        return mapping
    todo = {n: lk for n, lk in lookups.items() if lk.sha256 is None and not lk.missing}
    if not todo:  # a mapping already pinned (e.g. one taken from a lake)
        return mapping
    lake, base = batch.lake, Path(inp.display).parent
    pinned: dict[str, tuple[str, str] | None] = {}
    for name, lk in todo.items():
        path = base / lk.file
        if not path.is_file():
            pinned[name] = None
            continue
        data, _ = redact_cards(path.read_bytes())
        rel = lake.put_lookup(data, ext=path.suffix.lower().lstrip(".") or "csv")
        pinned[name] = (posixpath.relpath(rel, "_mappings"), hashlib.sha256(data).hexdigest())
    text = csv_mapping.pin_lookups(
        lake.read(inp.mapping_lake), pinned, name=mapping.name, origin=inp.mapping_lake
    )
    inp.unpinned_mapping_lake, inp.mapping_lake = inp.mapping_lake, lake.put_mapping(text)
    return csv_mapping.load_mapping(lake.path(inp.mapping_lake))


def _lookups(batch: _Batch, inp: _Input, mapping: Any) -> dict[str, Path] | None:
    """Where the lookups not kept in the lake are read: beside the CSV file as received.

    Only loads made before lookup files were kept in the lake have such lookups (and a
    mapping whose lookup file was missing, which fails as it did). Replaying one of those
    loads needs the file where it was: without it the file would fail, or map differently
    than it did, so the replay stops with an error saying what to put back.

    A replayed load's lookup copies in the lake are checked first: one that is missing or
    changed would also fail the file or map it differently, so the replay stops too. A copy
    that ``workbench erase`` rewrote must have the hash the erasure log recorded for it
    (:func:`_lookup_hashes`); one whose rewrite was logged but not made (an erasure stopped
    in between) stops the replay too, saying to run the erasure again.

    Raises:
        IngestError: A replayed load's lookup file (or its lake copy) is not there, or the
            copy changed.
    """
    if not getattr(mapping, "lookups", None):
        return None
    from workbench.ingest.loader import IngestError

    out = {}
    hashes = _lookup_hashes(batch.lake, mapping) or {}
    for name, lk in mapping.lookups.items():
        if lk.sha256 is not None:
            copy = Path(mapping.path).parent / lk.file
            want = hashes.get(name, lk.sha256)
            have = sha256_file(copy) if inp.replay and copy.is_file() else None
            if inp.replay and have != want:
                unfinished = want != lk.sha256 and have == lk.sha256
                raise IngestError(
                    f"the lake's copy of lookup {name!r} ({copy}, sha256 {want}), which "
                    f"load {batch.load_id} used to map {inp.display}, is "
                    + (
                        "as it was before an erasure that logged a rewrite of it (the erasure "
                        "was stopped before it rewrote the copy): run that `workbench erase` "
                        "again to finish it (the lake's _erasures.jsonl names the customer)"
                        if unfinished
                        else f"{'changed' if have else 'missing'}: the lake is damaged "
                        "(`workbench verify` lists what). Restore it from a backup of the lake "
                        "and run this again"
                    )
                    + "; the warehouse was left as it was."
                )
            continue
        path = Path(inp.display).parent / lk.file
        if inp.replay and not lk.missing and not path.is_file():
            raise IngestError(
                f"the lookup file {path} is missing: load {batch.load_id} mapped {inp.display} "
                f"with mapping {inp.mapping_lake}, whose lookup {name!r} reads it from beside the "
                "CSV file (the load was made before lookup files were kept in the lake, so the "
                "lake has no copy). Put the file back at that path (from a backup, as it was "
                "when loaded) and run this again; the warehouse was left as it was."
            )
        out[name] = path
    return out or None


def _lookup_hashes(lake: Lake, mapping: Any) -> dict[str, str] | None:
    """Lookup name -> the hash its pinned copy must have now, for the copies of ``lake`` that
    ``workbench erase`` rewrote (in place: the copy keeps its name and the mapping its pin;
    the erasure log records the new hash)."""
    out = {
        name: lake.current_sha(Path(mapping.path).parent / lk.file, lk.sha256)
        for name, lk in getattr(mapping, "lookups", {}).items()
        if lk.sha256 is not None and mapping.path is not None
    }
    return {name: sha for name, sha in out.items() if sha != mapping.lookups[name].sha256} or None


def load_csv(batch: _Batch, inp: _Input) -> None:
    """Map one CSV file and write its rows, rejects and counts into the batch.

    A file already loaded (an earlier ``ok`` load of the same lake object) is not mapped
    again: its rows are duplicates. When the mapping differs from the one in force and the
    input asks for a re-map (``inp.remap_by``), the rows and quarantine rows of the file's
    earlier loads are replaced by what this mapping makes (see :func:`_unload`).
    """
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
    mapping = _pin_lookups(batch, inp, mapping)
    mapped = csv_mapping.map_csv(
        path,
        mapping,
        lookups=_lookups(batch, inp, mapping),
        lookup_hashes=_lookup_hashes(batch.lake, mapping),
    )
    if mapped.error:
        _fail(batch, inp, received=mapped.received, message=mapped.error)
        return
    prior = prior_loads(con, inp.lake.path)
    report.received = mapped.received
    version_at = batch.received_at
    if prior:
        in_force = prior[0]
        # A load made before lookup files were kept in the lake stored the mapping unpinned:
        # the same mapping, so the same file is a duplicate (as it was then), not a re-map.
        if in_force.mapping in (inp.mapping_lake, inp.unpinned_mapping_lake):
            report.duplicates = mapped.received
            if inp.remap_by is not None:
                report.message = (
                    f"{REMAP_PREFIX}{inp.remap_by}: nothing to do, load {in_force.load_id} "
                    "already mapped this file with this mapping"
                )
            return
        if inp.remap_by is None:
            # Say so rather than look like a no-op: the rows stay as the first mapping made them.
            return _not_mapped(
                inp,
                mapped.received,
                f"already loaded with another mapping ({in_force.mapping or 'auto-detected'}); "
                "it was not mapped again: its rows stay as that mapping made them. To replace "
                "them with what this mapping makes, ingest it again with --remap (Python: "
                "remap=True; docs/runbooks.md, 'upstream schema change')",
            )
        twins = con.execute(
            "SELECT DISTINCT source_file FROM loads WHERE file_sha256 = ? AND source_file <> ? "
            "AND status = 'ok' ORDER BY 1",
            [inp.lake.sha256, inp.lake.path],
        ).fetchall()
        if twins:  # versions are keyed by the file's hash: the twin's rows look the same
            return _not_mapped(
                inp,
                mapped.received,
                f"not re-mapped: the same bytes were also loaded as {twins[0][0]}, and a "
                "re-map would take out that load's rows too; nothing changed",
            )
        if _provenance_missing(con):
            return _not_mapped(
                inp,
                mapped.received,
                "not re-mapped: this warehouse does not yet record which file wrote each "
                "usage, CRM, ticket or FX row (it was built before re-mapping existed); run "
                "`workbench rebuild` (it records them), then re-map; nothing changed",
            )
        version_at = _unload(batch, inp, prior)
        report.message = (
            f"{REMAP_PREFIX}{inp.remap_by}: replaces load {in_force.load_id} "
            f"(mapping {in_force.mapping or 'auto-detected'})"
        )
        log.warning("%s: %s", inp.display, report.message)
    tables, rows, dropped = _checked_tables(batch, inp, mapped)
    for table, frame in tables.items():
        _write_table(batch, inp, table, frame, version_at=version_at)
    rows = [
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
        for r in mapped.rejects.itertuples(index=False)
    ] + rows
    report.quarantined = mapped.rejected + len(dropped)
    report.duplicates = mapped.duplicates
    report.accepted = mapped.received - report.quarantined - report.duplicates
    report.handled = report.accepted
    _insert_quarantine(batch, rows)
    if not prior:
        _resolve_rejections(batch, inp)


def _resolve_rejections(batch: _Batch, inp: _Input) -> None:
    """The file failed as a whole before and maps now: its rejection no longer stands.

    In the load's transaction, the earlier ``failed`` loads of the file are marked
    ``superseded`` by this load (as a re-map marks the load it replaces) and their
    ``file_rejected`` quarantine rows are kept, their message saying which load resolved
    them. Rebuild replays the same loads, so it ends the same way.
    """
    con = batch.con
    by = f"{batch.load_id} (mapping {inp.mapping_lake or 'auto-detected'})"
    con.execute(
        "UPDATE quarantine SET message = ? || message WHERE source_file = ? "
        "AND rule = 'file_rejected' AND load_id IN "
        "(SELECT load_id FROM loads WHERE source_file = ? AND status = 'failed')",
        [
            f"resolved: the file loaded later, in load {by}. The rejection was: ",
            inp.lake.path,
            inp.lake.path,
        ],
    )
    con.execute(
        "UPDATE loads SET status = 'superseded', message = ? || coalesce(message, '') "
        "WHERE source_file = ? AND status = 'failed'",
        [f"{FAILED_THEN_LOADED}{by}. This load's error: ", inp.lake.path],
    )


def _not_mapped(inp: _Input, received: int, message: str) -> None:
    """The file is not mapped again: its rows count as duplicates, and the message says why."""
    inp.report.duplicates = received
    inp.report.message = message
    log.warning("%s: %s", inp.display, message)


def _checked_tables(
    batch: _Batch, inp: _Input, mapped: Any
) -> tuple[dict[str, pd.DataFrame], list[dict[str, Any]], set[int]]:
    """The mapped frames without the rows a table contract rejects.

    Returns:
        ``(table -> accepted frame, quarantine rows of the contract failures, file lines
        dropped)``; empty frames are left out.
    """
    out: dict[str, pd.DataFrame] = {}
    rows: list[dict[str, Any]] = []
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
        out[table] = frame
    return out, rows, dropped


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
    from workbench.ingest.loader import _missing, quarantine_id, redact_value

    line = None if _missing(line) else int(line)
    column = None if _missing(column) else str(column)  # pandas' NA (a malformed row)
    return {
        "quarantine_id": quarantine_id(inp.lake.path, line, None, table, column, rule),
        "load_id": batch.load_id,
        "source": inp.source,
        "source_file": inp.lake.path,
        "line": line,
        "event_id": None,
        "table_name": table,
        "column_name": column,
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
    prior = prior_loads(batch.con, inp.lake.path)
    if prior:  # a re-map whose mapping fails: the file stays as the load in force mapped it
        report.duplicates = received
        report.message = (
            f"{message}; nothing changed: the file stays as load {prior[0].load_id} mapped it"
        )
        log.warning("%s: %s", inp.display, report.message)
        return
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


def _write_table(
    batch: _Batch, inp: _Input, table: str, frame: pd.DataFrame, *, version_at: datetime
) -> None:
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
            out.insert(0, "version_at", version_at)
        out.insert(0, "event_id", [f"csv:{inp.lake.sha256[:16]}:{v}" for v in frame[entity]])
        if "lines_hash" in target:  # an invoice version and its lines from one CSV row
            out["lines_hash"] = out["event_id"]
        if table == "accounts":
            personal = pd.DataFrame(
                {
                    "event_id": out["event_id"],
                    "version_at": version_at,
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
        _upsert(batch, inp, table, frame, version_at=version_at)


def _row_key(table: str, alias: str) -> str:
    """SQL text of a row's primary key as one string (``upsert_sources.row_key``)."""
    parts = [f"CAST({alias}.{k} AS VARCHAR)" for k in TABLES[table].primary_key]
    return " || '|' || ".join(parts)


def _upsert(
    batch: _Batch, inp: _Input, table: str, frame: pd.DataFrame, *, version_at: datetime
) -> None:
    """Upsert rows by primary key and record this load as each key's writer.

    Keys a file received *after* this one last wrote are skipped: nothing changes for a
    normal load (it is the latest), and a re-map (which keeps its file's first receipt time)
    does not overwrite a later file's rows.
    """
    con = batch.con
    spec = TABLES[table]
    columns = ", ".join(f"{c.name} {c.type}" for c in spec.columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE wb_csv_up ({columns})")
    con.register("wb_csv_rows", frame)
    con.execute("INSERT INTO wb_csv_up BY NAME SELECT * FROM wb_csv_rows")
    con.unregister("wb_csv_rows")
    key = _row_key(table, "wb_csv_up")
    if version_at < batch.received_at:  # a re-map: only it can predate rows already written
        con.execute(
            f"DELETE FROM wb_csv_up WHERE {key} IN (SELECT row_key FROM upsert_sources "
            "WHERE table_name = ? AND version_at > ?)",
            [table, version_at],
        )
    con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM wb_csv_up")
    con.execute(
        f"INSERT OR REPLACE INTO upsert_sources SELECT ?, {key}, ?, ?, ? FROM wb_csv_up",
        [table, inp.lake.path, batch.load_id, version_at],
    )
    con.execute("DROP TABLE IF EXISTS wb_csv_up")


# ----------------------------------------------------------------------------- re-mapping


def _unload(batch: _Batch, inp: _Input, prior: list[PriorLoad]) -> datetime:
    """Take out what the file's earlier loads wrote, inside the batch's transaction.

    What a CSV file wrote is found by its provenance:

    * version tables: the versions' ``event_id`` is ``csv:<first 16 hex of the file's
      sha256>:<object id>``, so versions from Stripe events or from other files (other ids)
      are not touched; the objects are marked touched, so the current-state tables
      (``accounts``, ``invoices`` ...) are derived again from what remains plus the new rows;
    * ``account_personal_source`` rows pointing at those versions (so the old mapping's
      name and e-mail are not carried over);
    * ``subscription_history_csv``: the rows whose ``load_id`` is one of those loads;
    * the upserted tables (usage, CRM signals, support tickets, FX rates): the keys this
      file still owns in ``upsert_sources`` (a key a later file wrote is that file's);
    * quarantine rows of this file from those loads.

    The loads rows are kept, marked ``superseded`` with who re-mapped it and by which load.

    Returns:
        The time the file was first received: the new versions keep it as ``version_at``,
        so they order against other sources exactly as the old ones did.
    """
    con = batch.con
    in_force = prior[0]
    ids = [p.load_id for p in prior]
    marks = ", ".join("?" for _ in ids)
    received = con.execute(
        "SELECT min(started_at) FROM loads WHERE source_file = ? "
        "AND status IN ('ok', 'superseded') AND coalesce(message, '') NOT LIKE ?",
        [inp.lake.path, FAILED_THEN_LOADED + "%"],
    ).fetchall()[0][0]
    pattern = f"csv:{in_force.file_sha256[:16]}:%"
    for table, (version_table, _, entity) in VERSIONED.items():
        touched = _TOUCHES[table]
        key = "'*'" if touched == "payments" else entity
        con.execute(
            f"INSERT INTO wb_t_{touched} SELECT DISTINCT {key} FROM {version_table} "
            "WHERE event_id LIKE ?",
            [pattern],
        )
        con.execute(f"DELETE FROM {version_table} WHERE event_id LIKE ?", [pattern])
    con.execute("DELETE FROM account_personal_source WHERE event_id LIKE ?", [pattern])
    con.execute(
        "INSERT INTO wb_t_subscriptions SELECT DISTINCT subscription_id "
        f"FROM subscription_history_csv WHERE load_id IN ({marks})",
        ids,
    )
    con.execute(f"DELETE FROM subscription_history_csv WHERE load_id IN ({marks})", ids)
    _delete_upserted(batch, inp)
    con.execute(
        f"DELETE FROM quarantine WHERE source_file = ? AND load_id IN ({marks})",
        [inp.lake.path, *ids],
    )
    con.execute(
        f"UPDATE loads SET status = 'superseded', message = ? "
        f"WHERE source_file = ? AND load_id IN ({marks})",
        [
            f"superseded by load {batch.load_id}: re-mapped by {inp.remap_by} with mapping "
            f"{inp.mapping_lake or 'auto-detected'}",
            inp.lake.path,
            *ids,
        ],
    )
    return received


def _delete_upserted(batch: _Batch, inp: _Input) -> None:
    """Delete the upserted-table rows this file's loads still own (``upsert_sources``):
    a key another file wrote since belongs to that file and stays."""
    con = batch.con
    for table in UPSERTED:
        key = _row_key(table, table)
        con.execute(
            f"DELETE FROM {table} WHERE {key} IN (SELECT row_key FROM upsert_sources "
            "WHERE table_name = ? AND source_file = ?)",
            [table, inp.lake.path],
        )
    con.execute("DELETE FROM upsert_sources WHERE source_file = ?", [inp.lake.path])


def _provenance_missing(con: Any) -> bool:
    """True for a warehouse whose upserted rows predate ``upsert_sources`` (rows in the
    upserted tables, none recorded): which file wrote them is unknown until a rebuild."""
    if con.execute("SELECT count(*) FROM upsert_sources").fetchall()[0][0]:
        return False
    return any(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] for table in UPSERTED)
