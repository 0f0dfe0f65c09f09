"""Load received files into the warehouse: lake first, then one transaction per batch.

For every file of a batch, in arrival order:

1. read it and redact card numbers (the only change ever made to received bytes);
2. keep it in the raw lake (content-addressed, so a re-delivered file is the same object);
3. split it into records and stage them in DuckDB; reject what is malformed or breaks a
   contract into ``quarantine`` with the file, line, event id, column, rule and a redacted
   value; recognise duplicates (same event id, same payload) and conflicts (same id,
   different payload: quarantined, the first one stands);
4. store accepted events and their object versions.

Then the current-state tables are refreshed for the objects the batch touched, one
``loads`` row per file records ``received = accepted + quarantined + duplicates`` (a
violation aborts the batch), and everything commits at once. A crash at any point leaves
the previous state (lake objects written before the crash are simply reused by the
rerun). After the commit the load's receipt is written to the lake for ``rebuild``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from workbench import event_types
from workbench.config import Settings, load_settings
from workbench.engines import Engine
from workbench.ingest import contracts, derive, stripe_events
from workbench.ingest.lake import FileReceipt, Lake, LakeObject, LoadReceipt
from workbench.ingest.records import Records, read_records, redact_cards
from workbench.ingest.tables import INTERNAL, VERSION_OF, create_internal
from workbench.redact import redact_pan
from workbench.schema import TABLES

log = logging.getLogger(__name__)

JSON_SOURCES = ("stripe", "webhook")
CSV_SOURCES = ("stripe-csv", "csv")
SOURCES = JSON_SOURCES + CSV_SOURCES
#: Files are staged together until their bytes reach this size.
CHUNK_BYTES = 512 * 2**20
_JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
_MAX_VALUE = 200


class ConservationError(RuntimeError):
    """A file's counts do not add up: received != accepted + quarantined + duplicates."""


class IngestError(ValueError):
    """The request cannot be carried out (unknown source, no files, missing mapping)."""


@dataclass
class FileReport:
    """What happened to one file."""

    path: str
    source: str
    lake_path: str | None = None
    sha256: str | None = None
    status: str = "ok"  # ok | failed | skipped
    message: str | None = None
    received: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    handled: int = 0
    ignored: int = 0
    unknown: int = 0
    unknown_types: dict[str, int] = field(default_factory=dict)
    redactions: int = 0
    bytes: int = 0

    @property
    def balanced(self) -> bool:
        return self.received == self.accepted + self.quarantined + self.duplicates


@dataclass
class IngestReport:
    """The outcome of one load (one call of :func:`ingest`)."""

    load_id: str
    received_at: datetime
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no file failed as a whole."""
        return all(f.status != "failed" for f in self.files)

    def totals(self) -> dict[str, int]:
        """Summed counts over the files."""
        keys = (
            "received",
            "accepted",
            "quarantined",
            "duplicates",
            "handled",
            "ignored",
            "unknown",
            "redactions",
            "bytes",
        )
        return {k: sum(getattr(f, k) for f in self.files) for k in keys}

    def frame(self) -> pd.DataFrame:
        """One row per file (unknown types as ``type: n`` text)."""
        rows = []
        for f in self.files:
            row = asdict(f)
            row["unknown_types"] = ", ".join(
                f"{k}: {v}" for k, v in sorted(f.unknown_types.items())
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        t = self.totals()
        failed = sum(f.status == "failed" for f in self.files)
        return (
            f"load {self.load_id}: {len(self.files)} files ({failed} failed), {t['received']} received = "
            f"{t['accepted']} accepted + {t['quarantined']} quarantined + {t['duplicates']} duplicates; "
            f"{t['unknown']} of unknown type, {t['redactions']} card numbers redacted, {self.seconds:.1f} s"
        )


@dataclass
class _Input:
    """One file of a batch, redacted and in the lake."""

    display: str
    source: str
    data: bytes
    lake: LakeObject
    redactions: int
    mapping: Any = None  # csv_mapping.Mapping
    mapping_lake: str | None = None
    mapping_name: str | None = None
    # the mapping as given, before its lookup files were pinned (loads made before lookups
    # were kept in the lake stored this one)
    unpinned_mapping_lake: str | None = None
    remap_by: str | None = None  # who asked to re-map an already loaded CSV file
    replay: bool = False  # a load replayed from its receipt (rebuild): the mapping as stored
    report: FileReport | None = None
    records: Records | None = None


# ----------------------------------------------------------------------------- helpers

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PERSONAL_KEY = re.compile(
    r'("(?:name|email|phone|customer_name|customer_email|customer_phone|receipt_email)"\s*:\s*)"[^"]*(?:"|$)'
)


def redact_value(value: Any) -> str | None:
    """A quarantine value: text, card numbers and e-mail addresses masked, at most 200 chars."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value)
    text = _PERSONAL_KEY.sub(r'\1"[personal data]"', text)
    text = _EMAIL.sub("[email]", redact_pan(text))
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def quarantine_id(
    source_file: str, line: Any, event_id: Any, table: Any, column: Any, rule: str
) -> str:
    """Stable id of a quarantine row."""
    key = "|".join(
        "" if _missing(v) else str(v) for v in (source_file, line, event_id, table, column, rule)
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _missing(v: Any) -> bool:
    """None, NaN, NaT or pandas' NA (whose comparisons raise when asked for a bool)."""
    try:
        return v is None or bool(v != v)
    except (TypeError, ValueError):
        return True


def new_load_id(now: datetime) -> str:
    """A sortable, unique load id: receipt time then random, joined by ``_``.

    Not by ``-``: the time's last twelve digits and the leading digits of the random part,
    joined by a dash, read as a chain of digit groups such as a card number is typed in
    (:mod:`workbench.redact`), and one id in about ten passed the Luhn check, so a quarantine
    message naming a load failed ``verify``'s card-number check. With ``_`` the longest run
    is the time's twelve digits, too short for a card number. (Loads stored with a dash keep
    their ids; both sort by time; ``verify`` takes the warehouse's own load ids out of
    quarantine text before looking for card numbers.)"""
    return f"{now:%Y%m%dT%H%M%S%f}_{uuid.uuid4().hex[:8]}"


def _semantic(text: str) -> Any:
    """The part of a record that identifies its payload: everything but delivery counters."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "pending_webhooks"}
        if str(value.get("id", "")).startswith("snap_"):
            value.pop("created", None)
    return value


def _files(path: str | Path | Sequence[str | Path], source: str) -> list[Path]:
    paths = [path] if isinstance(path, str | Path) else list(path)
    out: list[Path] = []
    suffixes = (".csv",) if source in CSV_SOURCES else _JSON_SUFFIXES
    skip = set()
    if source == "webhook":  # the receiver's rejection log, in folders from before it moved out
        from workbench.webhooks import REJECTED_LOG

        skip.add(REJECTED_LOG)
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in suffixes
                and not f.name.startswith(".")
                and f.name not in skip
            )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise IngestError(f"{p} does not exist")
    return out


# ----------------------------------------------------------------------------- the batch


class _Batch:
    """One load: every file staged, checked and written inside one transaction."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | Engine,
        *,
        load_id: str,
        received_at: datetime,
        lake: Lake,
        finished_at: datetime | None = None,
    ) -> None:
        self.con = con
        self.load_id = load_id
        self.received_at = received_at
        self.finished_at = finished_at  # set when replaying a load (rebuild)
        self.epoch = int(received_at.timestamp())
        self.lake = lake
        self.inputs: list[_Input] = []
        self._pending: list[_Input] = []
        self._pending_bytes = 0
        self._lake_cache: dict[str, tuple[Records, dict[int, int]]] = {}
        self._seen: set[str] = set()
        self.timings: Counter[str] = Counter()
        derive.create_touched(con)

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] += time.perf_counter() - start

    # ------------------------------------------------------------------ entry
    def add(self, inp: _Input) -> None:
        inp.report = FileReport(
            path=inp.display,
            source=inp.source,
            lake_path=inp.lake.path,
            sha256=inp.lake.sha256,
            redactions=inp.redactions,
            bytes=len(inp.data),
        )
        self.inputs.append(inp)
        if inp.lake.path in self._seen:
            inp.report.status = "skipped"
            inp.report.message = f"same content as another file of this load ({inp.lake.path})"
            return
        self._seen.add(inp.lake.path)
        if inp.source in JSON_SOURCES and inp.lake.existed and self._loaded_before(inp):
            return
        if inp.source in JSON_SOURCES:
            self._pending.append(inp)
            self._pending_bytes += len(inp.data)
            if self._pending_bytes >= CHUNK_BYTES:
                self.flush()
        else:
            self.flush()
            from workbench.ingest.csv_files import load_csv

            load_csv(self, inp)

    def _loaded_before(self, inp: _Input) -> bool:
        """A file whose exact bytes an earlier load already took: every record is a duplicate
        (the same events, or records already quarantined), so it is not parsed again."""
        prior = self.con.execute(
            "SELECT received FROM loads WHERE source_file = ? AND status = 'ok' "
            "ORDER BY finished_at LIMIT 1",
            [inp.lake.path],
        ).fetchall()
        if not prior:
            return False
        inp.report.received = inp.report.duplicates = int(prior[0][0])
        inp.data = b""
        return True

    def flush(self) -> None:
        if self._pending:
            self._json_chunk(self._pending)
        self._pending, self._pending_bytes = [], 0

    def finish(self) -> None:
        """Refresh current state, write the loads rows, check conservation."""
        self.flush()
        with self._timed("derive"):
            derive.refresh(self.con)
        # Files of one load finish a microsecond apart, in arrival order.
        self.finished_at = self.finished_at or datetime.now(UTC)
        rows = []
        for seq, inp in enumerate(i for i in self.inputs if i.report.status != "skipped"):
            r = inp.report
            if not r.balanced:
                raise ConservationError(
                    f"{r.path}: received {r.received} != accepted {r.accepted} + quarantined "
                    f"{r.quarantined} + duplicates {r.duplicates}"
                )
            rows.append(
                {
                    "load_id": self.load_id,
                    "source": r.source,
                    "source_file": r.lake_path,
                    "file_sha256": r.sha256,
                    "received": r.received,
                    "accepted": r.accepted,
                    "quarantined": r.quarantined,
                    "duplicates": r.duplicates,
                    "status": r.status,
                    "message": r.message,
                    "started_at": self.received_at,
                    "finished_at": self.finished_at + timedelta(microseconds=seq),
                    "redactions": r.redactions,
                    "original_path": r.path,
                    "mapping": inp.mapping_lake,
                }
            )
        if rows:
            frame = pd.DataFrame(rows)
            self.con.register("wb_loads_rows", frame)
            self.con.execute("INSERT INTO loads BY NAME SELECT * FROM wb_loads_rows")
            self.con.unregister("wb_loads_rows")

    # ------------------------------------------------------------------ JSON
    def _json_chunk(self, inputs: list[_Input]) -> None:
        con = self.con
        tables = []
        for idx, inp in enumerate(inputs):
            if inp.records is None:
                with self._timed("split"):
                    inp.records = read_records(inp.data, received_at=self.epoch)
            t = inp.records.table
            tables.append(
                t.append_column("file_idx", pa.array(np.full(t.num_rows, idx, dtype=np.int32)))
            )
        raw = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        con.register("wb_raw", raw)
        files = pd.DataFrame(
            {
                "file_idx": np.arange(len(inputs), dtype=np.int32),
                "source_file": [i.lake.path for i in inputs],
                "source": [i.source for i in inputs],
            }
        )
        con.register("wb_files", files)
        with self._timed("parse"):
            stripe_events.stage(con, received_epoch=self.epoch)
        with self._timed("dedupe"):
            self._statuses(inputs)
        types = self._types()
        con.register("wb_types_df", types)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE wb_types AS SELECT type::VARCHAR AS type, "
            "disposition::VARCHAR AS disposition, expected_object::VARCHAR AS expected_object "
            "FROM wb_types_df"
        )
        con.execute(
            """
            UPDATE wb_stage SET keep = true FROM wb_types ty
            WHERE wb_stage.type = ty.type AND wb_stage.status = 'new'
              AND ty.disposition = 'handled' AND wb_stage.o.object = ty.expected_object
            """
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW wb_new AS {stripe_events.new_records_sql()}")
        with self._timed("project"):
            versions = stripe_events.project(con)
        with self._timed("validate"):
            problems = self._record_problems(versions)
        failed = pd.DataFrame({"event_id": problems["event_id"].dropna().unique()})
        con.register("wb_failed_df", failed)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE wb_failed AS SELECT event_id::VARCHAR AS event_id FROM wb_failed_df"
        )
        quarantine = self._quarantine_rows(inputs, problems)
        with self._timed("store"):
            self._write_json(inputs, versions, quarantine)
        for name in ("wb_raw", "wb_files", "wb_types_df", "wb_failed_df"):
            con.unregister(name)
        con.execute("DROP VIEW IF EXISTS wb_new")
        con.execute("DROP TABLE IF EXISTS wb_stage")
        for inp in inputs:  # the bytes are in the lake now; free them for the next chunk
            inp.data, inp.records = b"", None
        for temp in versions.values():
            con.execute(f"DROP TABLE IF EXISTS {temp}")

    def _statuses(self, inputs: list[_Input]) -> None:
        """``wb_status``: new, duplicate or conflict for every usable record."""
        con = self.con
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE wb_status AS
            WITH ok AS (SELECT file_idx, line, sha, event_id FROM wb_stage WHERE rule IS NULL),
            multi AS (SELECT event_id FROM ok GROUP BY event_id HAVING count(*) > 1),
            ranked AS (
                SELECT ok.*, 1::BIGINT AS occ, NULL::VARCHAR AS first_sha,
                       NULL::INTEGER AS first_file, NULL::BIGINT AS first_line
                FROM ok ANTI JOIN multi USING (event_id)
                UNION ALL
                SELECT ok.*, row_number() OVER w, first_value(sha) OVER w,
                       first_value(file_idx) OVER w, first_value(line) OVER w
                FROM ok SEMI JOIN multi USING (event_id)
                WINDOW w AS (PARTITION BY event_id ORDER BY file_idx, line)
            )
            SELECT r.*, e.payload_hash AS prior_hash, e.source_file AS prior_file,
                   e.line AS prior_line,
                   CASE WHEN e.event_id IS NOT NULL
                             THEN CASE WHEN e.payload_hash = r.sha THEN 'duplicate' ELSE 'check_prior' END
                        WHEN r.occ = 1 THEN 'new'
                        WHEN r.sha = r.first_sha THEN 'duplicate'
                        ELSE 'check_first' END AS status,
                   NULL::VARCHAR AS detail
            FROM ranked r LEFT JOIN events e USING (event_id)
            """
        )
        checks = con.execute(
            "SELECT file_idx, line, event_id, status, prior_file, prior_line, first_file, first_line "
            "FROM wb_status WHERE status LIKE 'check%'"
        ).fetchall()
        if checks:
            self._resolve(inputs, checks)
        con.execute(
            "UPDATE wb_stage SET status = t.status FROM wb_status t "
            "WHERE wb_stage.file_idx = t.file_idx AND wb_stage.line = t.line"
        )

    def _resolve(self, inputs: list[_Input], checks: list[tuple]) -> None:
        """Same event id, different bytes: a duplicate if the payloads agree, else a conflict."""
        con = self.con
        out = []
        for (
            file_idx,
            line,
            _event_id,
            status,
            prior_file,
            prior_line,
            first_file,
            first_line,
        ) in checks:
            text = self._chunk_text(inputs, file_idx, line)
            if status == "check_prior":
                other = self._lake_text(prior_file, prior_line)
                where = f"{prior_file} line {prior_line}"
            else:
                other = self._chunk_text(inputs, first_file, first_line)
                where = f"{inputs[first_file].lake.path} line {first_line}"
            same = other is not None and _semantic(text) == _semantic(other)
            out.append((file_idx, line, "duplicate" if same else "conflict", where))
        frame = pd.DataFrame(out, columns=["file_idx", "line", "status", "detail"])
        con.register("wb_checked", frame)
        con.execute(
            """
            UPDATE wb_status SET status = c.status, detail = c.detail FROM wb_checked c
            WHERE wb_status.file_idx = c.file_idx AND wb_status.line = c.line
            """
        )
        con.unregister("wb_checked")

    @staticmethod
    def _record_index(records: Records) -> dict[int, int]:
        lines = records.table.column("line").to_numpy()
        return {int(line): i for i, line in enumerate(lines)}

    def _chunk_text(self, inputs: list[_Input], file_idx: int, line: int) -> str | None:
        records = inputs[file_idx].records
        if records.layout == "lines" and records.table.num_rows >= line:
            row = line - 1
        else:
            row = self._record_index(records).get(line)
            if row is None:
                return None
        return records.text_of(row)

    def _lake_text(self, lake_path: str, line: int) -> str | None:
        if lake_path not in self._lake_cache:
            try:
                data = self.lake.read(lake_path)
            except OSError:
                log.warning(
                    "lake object %s is missing; treating a changed payload as a conflict", lake_path
                )
                return None
            records = read_records(data, received_at=self.epoch)
            self._lake_cache[lake_path] = (records, self._record_index(records))
        records, index = self._lake_cache[lake_path]
        row = index.get(int(line))
        return None if row is None else records.text_of(row)

    def _types(self) -> pd.DataFrame:
        present = [
            r[0]
            for r in self.con.execute(
                "SELECT DISTINCT type FROM wb_stage WHERE status = 'new'"
            ).fetchall()
        ]
        return pd.DataFrame(
            {
                "type": pd.Series(present, dtype=object),
                "disposition": pd.Series(
                    [event_types.disposition(t) for t in present], dtype=object
                ),
                "expected_object": pd.Series(
                    [event_types.expected_object(t) for t in present], dtype=object
                ),
            }
        )

    def _record_problems(self, versions: dict[str, str]) -> pd.DataFrame:
        """Every reason to reject a new record that parsed: wrong object, wrong types,
        missing fields, broken contracts. Columns: event_id, table_name, column_name,
        rule, message, value."""
        con = self.con
        frames = []
        wrong = con.execute(
            """
            SELECT s.event_id, NULL AS table_name, 'data.object.object' AS column_name,
                   'wrong_object' AS rule,
                   s.type || ' must carry a ' || ty.expected_object || ' object, not '
                       || coalesce(s.o.object, 'nothing') AS message,
                   s.o.object AS value
            FROM wb_stage s JOIN wb_types ty ON ty.type = s.type
            WHERE s.status = 'new' AND ty.disposition = 'handled'
              AND s.o.object IS DISTINCT FROM ty.expected_object
            """
        ).df()
        frames.append(wrong)
        types = stripe_events.type_problems(con, versions)
        if len(types):
            types["message"] = [
                _problem_message(t, c, r, v)
                for t, c, r, v in zip(
                    types["table_name"],
                    types["column_name"],
                    types["rule"],
                    types["value"],
                    strict=True,
                )
            ]
            frames.append(types)
        for version_table, temp in versions.items():
            canonical, _ = VERSION_OF[version_table]
            have = set(INTERNAL[version_table].column_names)
            cols = [c for c in contracts.checked_columns(canonical) if c in have]
            # Deletion stubs (only an id and "deleted": true) are not held to the contract.
            stub = (
                "WHERE NOT (coalesce(deleted, false) AND created IS NULL)"
                if "deleted" in INTERNAL[version_table].column_names
                else ""
            )
            frame = (
                con.sql(f"SELECT event_id, {', '.join(cols)} FROM {temp} {stub}")
                .to_arrow_table()
                .to_pandas(types_mapper=pd.ArrowDtype)
                .set_index("event_id")
            )
            fails = contracts.validate(frame, canonical)
            if len(fails):
                fails = fails.rename(columns={"row": "event_id"})
                fails["table_name"] = canonical
                frames.append(fails)
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(
                columns=["event_id", "table_name", "column_name", "rule", "message", "value"]
            )
        out = pd.concat(frames, ignore_index=True)
        out = self._share_line_problems(out)
        # A value of the wrong type is also null once typed: report the cause only.
        typed = {
            k
            for k, r in zip(
                zip(out["event_id"], out["column_name"], strict=True), out["rule"], strict=True
            )
            if r in ("wrong_type", "out_of_range")
        }
        consequence = [
            r == "missing_required" and (e, c) in typed
            for e, c, r in zip(out["event_id"], out["column_name"], out["rule"], strict=True)
        ]
        return out[~pd.Series(consequence, index=out.index)].reset_index(drop=True)

    def _share_line_problems(self, problems: pd.DataFrame) -> pd.DataFrame:
        """A problem in a set of invoice lines (parsed once, for its first event) belongs to
        every event of this chunk that carries the same lines."""
        lines = problems[problems["table_name"] == "invoice_lines"]
        if lines.empty:
            return problems
        self.con.register("wb_line_carriers", pd.DataFrame({"carrier": lines["event_id"].unique()}))
        sharers = self.con.execute(
            """
            SELECT c.event_id AS carrier, m.event_id FROM wb_lines_map c
            JOIN wb_lines_map m USING (invoice_id, lines_hash)
            WHERE c.event_id IN (SELECT carrier FROM wb_line_carriers) AND m.event_id <> c.event_id
            """
        ).df()
        self.con.unregister("wb_line_carriers")
        extra = lines.merge(sharers, left_on="event_id", right_on="carrier", suffixes=("_c", ""))
        extra = extra.drop(columns=["event_id_c", "carrier"])[problems.columns]
        return pd.concat([problems, extra], ignore_index=True)

    def _quarantine_rows(self, inputs: list[_Input], problems: pd.DataFrame) -> pd.DataFrame:
        """All quarantine rows of the chunk, with file_idx and line."""
        con = self.con
        envelope = con.execute(
            """
            SELECT file_idx, line, event_id, NULL AS table_name, column_name, rule, value
            FROM wb_stage WHERE rule IS NOT NULL
            """
        ).df()
        whole = envelope["rule"].isin(["malformed_json", "invalid_utf8", "not_an_event"])
        for k in envelope.index[envelope["rule"] == "malformed_json"]:
            records = inputs[int(envelope.at[k, "file_idx"])].records
            raw = (
                records.raw_line(int(envelope.at[k, "line"]) - 1)
                if records.layout == "lines"
                else None
            )
            if raw is not None:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    envelope.at[k, "rule"] = "invalid_utf8"
        if whole.any():
            envelope.loc[whole, "value"] = [
                (self._chunk_text(inputs, int(f), int(ln)) or "").strip()[:300]
                for f, ln in zip(
                    envelope.loc[whole, "file_idx"], envelope.loc[whole, "line"], strict=True
                )
            ]
        envelope["message"] = [
            _envelope_message(rule, col, value, self.received_at)
            for rule, col, value in zip(
                envelope["rule"], envelope["column_name"], envelope["value"], strict=True
            )
        ]
        conflicts = con.execute(
            """
            SELECT file_idx, line, event_id, NULL AS table_name, NULL AS column_name,
                   'conflict' AS rule,
                   'sha256 ' || left(sha, 12) || ' differs from the accepted '
                       || left(coalesce(prior_hash, first_sha), 12) AS value,
                   'event ' || event_id || ' was already received with a different payload ('
                       || detail || '); the first one stands' AS message
            FROM wb_status WHERE status = 'conflict'
            """
        ).df()
        parts = [envelope, conflicts]
        if len(problems):
            where = con.execute(
                "SELECT file_idx, line, event_id FROM wb_status WHERE status = 'new'"
            ).df()
            located = problems.merge(where, on="event_id", how="inner")
            parts.append(located)
        parts = [p for p in parts if len(p)]
        columns = [
            "file_idx",
            "line",
            "event_id",
            "table_name",
            "column_name",
            "rule",
            "message",
            "value",
        ]
        if not parts:
            return pd.DataFrame(columns=columns)
        rows = pd.concat(parts, ignore_index=True)[columns]
        source_file = [inputs[int(i)].lake.path for i in rows["file_idx"]]
        rows["source_file"] = source_file
        rows["source"] = [inputs[int(i)].source for i in rows["file_idx"]]
        rows["quarantine_id"] = [
            quarantine_id(f, ln, e, t, c, r)
            for f, ln, e, t, c, r in zip(
                rows["source_file"],
                rows["line"],
                rows["event_id"],
                rows["table_name"],
                rows["column_name"],
                rows["rule"],
                strict=True,
            )
        ]
        rows["value_redacted"] = rows["value"].map(redact_value)
        return rows.drop_duplicates("quarantine_id", ignore_index=True)

    def _write_json(
        self, inputs: list[_Input], versions: dict[str, str], quarantine: pd.DataFrame
    ) -> None:
        con = self.con
        # Records quarantined by an earlier load of the same lake file are duplicates now.
        already = con.execute(
            "SELECT DISTINCT source_file, line FROM quarantine WHERE source_file IN "
            "(SELECT source_file FROM wb_files)"
        ).df()
        seen = set(zip(already["source_file"], already["line"].astype("Int64"), strict=True))
        if len(quarantine) and seen:
            repeat = [
                (f, int(ln)) in seen if ln == ln else False
                for f, ln in zip(quarantine["source_file"], quarantine["line"], strict=True)
            ]
            mask = pd.Series(repeat, index=quarantine.index)
        else:
            mask = pd.Series(False, index=quarantine.index)
        repeated = quarantine[mask]
        fresh = quarantine[~mask]
        if len(fresh):
            q = fresh.assign(load_id=self.load_id, received_at=self.received_at)
            cols = TABLES["quarantine"].column_names
            con.register("wb_q", q[cols])
            con.execute("INSERT INTO quarantine BY NAME SELECT * FROM wb_q ON CONFLICT DO NOTHING")
            con.unregister("wb_q")
        con.execute(
            f"""
            INSERT INTO events BY NAME
            SELECT s.event_id, s.type, s.o.object AS object_type, s.o.id AS object_id,
                   to_timestamp(wb_int(s.created_raw)) AS created, s.api_version, f.source,
                   f.source_file, s.line, s.sha AS payload_hash, ty.disposition,
                   '{self.load_id}' AS load_id
            FROM wb_stage s
            JOIN wb_types ty ON ty.type = s.type
            JOIN wb_files f ON f.file_idx = s.file_idx
            WHERE s.status = 'new' AND s.event_id NOT IN (SELECT event_id FROM wb_failed)
            """
        )
        ok = "event_id NOT IN (SELECT event_id FROM wb_failed)"
        for version_table, temp in versions.items():
            have = {r[0] for r in con.execute(f"DESCRIBE {temp}").fetchall()}
            cols = ", ".join(c for c in INTERNAL[version_table].column_names if c in have)
            if version_table == "invoice_line_versions":
                # a line set is kept once, under the first accepted event that carried it
                con.execute(
                    f"""
                    INSERT INTO invoice_line_versions BY NAME
                    SELECT a.event_id, v.* EXCLUDE (event_id, version_at, _problems) FROM {temp} v
                    JOIN (SELECT invoice_id, lines_hash, min(event_id) AS event_id FROM wb_lines_map
                          WHERE {ok} GROUP BY ALL) a USING (invoice_id, lines_hash)
                    """
                )
                continue
            con.execute(f"INSERT INTO {version_table} BY NAME SELECT {cols} FROM {temp} WHERE {ok}")
        touched = {
            "accounts": ("account_versions", "account_id"),
            "prices": ("price_versions", "price_id"),
            "subscriptions": ("subscription_versions", "subscription_id"),
            "invoices": ("invoice_versions", "invoice_id"),
        }
        for name, (version_table, key) in touched.items():
            con.execute(
                f"INSERT INTO wb_t_{name} SELECT DISTINCT {key} FROM {versions[version_table]} WHERE {ok}"
            )
        con.execute(
            f"""
            INSERT INTO wb_t_payments SELECT '*' WHERE EXISTS (
                SELECT 1 FROM {versions["charge_versions"]} WHERE {ok}
                UNION ALL SELECT 1 FROM {versions["refund_versions"]} WHERE {ok}
                UNION ALL SELECT 1 FROM {versions["dispute_versions"]} WHERE {ok})
            """
        )
        con.execute(f"INSERT INTO wb_personal_acc SELECT * FROM wb_personal WHERE {ok}")
        # Counts per file.
        counts = con.execute(
            """
            WITH s AS (
                SELECT s.file_idx, s.status, ty.disposition,
                       s.status = 'new' AND f.event_id IS NULL AS accepted
                FROM wb_stage s
                LEFT JOIN wb_types ty ON ty.type = s.type
                LEFT JOIN wb_failed f ON f.event_id = s.event_id AND s.status = 'new'
            )
            SELECT file_idx,
                   count(*) AS received,
                   count(*) FILTER (WHERE status = 'duplicate') AS duplicates,
                   count(*) FILTER (WHERE accepted) AS accepted,
                   count(*) FILTER (WHERE accepted AND disposition = 'handled') AS handled,
                   count(*) FILTER (WHERE accepted AND disposition = 'ignored') AS ignored,
                   count(*) FILTER (WHERE accepted AND disposition = 'unknown') AS unknown
            FROM s GROUP BY file_idx
            """
        ).df()
        unknown = con.execute(
            """
            SELECT s.file_idx, s.type, count(*) AS n FROM wb_stage s
            JOIN wb_types ty ON ty.type = s.type
            WHERE s.status = 'new' AND ty.disposition = 'unknown' GROUP BY ALL
            """
        ).fetchall()
        q_records = (
            Counter(fresh.drop_duplicates(["file_idx", "line"])["file_idx"].astype(int).tolist())
            if len(fresh)
            else Counter()
        )
        repeat_records = (
            Counter(repeated.drop_duplicates(["file_idx", "line"])["file_idx"].astype(int).tolist())
            if len(repeated)
            else Counter()
        )
        for row in counts.itertuples():
            r = inputs[int(row.file_idx)].report
            r.received = int(row.received)
            r.accepted = int(row.accepted)
            r.duplicates = int(row.duplicates) + repeat_records.get(int(row.file_idx), 0)
            r.quarantined = q_records.get(int(row.file_idx), 0)
            r.handled = int(row.handled)
            r.ignored = int(row.ignored)
            r.unknown = int(row.unknown)
        for file_idx, type_, n in unknown:
            inputs[int(file_idx)].report.unknown_types[type_] = int(n)


def _problem_message(table: str, column: str, rule: str, value: Any) -> str:
    if rule == "missing_required":
        return f"{table}.{column} is required but missing"
    if rule == "out_of_range":
        return f"{table}.{column} is not a plausible time (non-negative unix seconds of at most 10 digits)"
    return f"{table}.{column} must be an integer (minor units, a count or unix seconds), got {redact_value(value)}"


def _envelope_message(rule: str, column: Any, value: Any, received_at: datetime) -> str:
    if rule == "malformed_json":
        return "not valid JSON (cut off or corrupted); re-export or re-deliver the event"
    if rule == "invalid_utf8":
        return "not valid UTF-8 text"
    if rule == "not_an_event":
        return "not a Stripe event or object: it has no id, type or data.object"
    if rule == "missing_required":
        return f"the event has no {column}"
    if rule == "wrong_type":
        return f"{column} must be integer unix seconds, got {redact_value(value)}"
    if rule == "out_of_range":
        return f"{column} must fall between 2000-01-01 and a day after receipt ({received_at:%Y-%m-%d})"
    return rule


# ----------------------------------------------------------------------------- public API


def _prepare(
    path: Path,
    *,
    source: str,
    lake: Lake,
    received_at: datetime,
    mapping: Any,
    mapping_lake: str | None,
    mapping_name: str | None,
    remap_by: str | None = None,
    writer: ThreadPoolExecutor | None = None,
    pending: list[Future] | None = None,
) -> _Input:
    """Read, redact and place one file in the lake (the write may run in ``writer``)."""
    raw = path.read_bytes()
    data, redactions = redact_cards(raw)
    del raw
    ext = path.suffix.lower().lstrip(".") or ("csv" if source in CSV_SOURCES else "json")
    obj = lake.locate(data, source=source, received_at=received_at, ext=ext)
    records = None
    if source in JSON_SOURCES and not obj.existed:
        records = read_records(data, received_at=int(received_at.timestamp()))
    if not obj.existed:
        if writer is not None and pending is not None and source in JSON_SOURCES:
            pending.append(writer.submit(lake.write_object, obj.path, data))
        else:
            lake.write_object(obj.path, data)
    return _Input(
        display=str(path),
        source=source,
        data=data,
        lake=obj,
        redactions=redactions,
        mapping=mapping,
        mapping_lake=mapping_lake,
        mapping_name=mapping_name,
        remap_by=remap_by,
        records=records,
    )


def _prefetched(items: Iterator[_Input], depth: int = 2) -> Iterator[_Input]:
    """Produce ``items`` in a thread, up to ``depth`` ahead of the consumer.

    Reading, redacting, hashing and splitting the next files runs while DuckDB (which
    releases the GIL) works on the current chunk.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, name="ingest-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def _open(settings: Settings) -> tuple[Any, Lake]:
    """The warehouse the settings choose (DuckDB, or Parquet tables on Spark) and the lake."""
    from workbench.lakehouse import open_warehouse

    return open_warehouse(settings), Lake(Path(settings.data_dir) / "lake")


def prepare_connection(con: duckdb.DuckDBPyConnection) -> None:
    """Create the internal tables and SQL helpers on a warehouse connection."""
    create_internal(con)
    stripe_events.install_macros(con)


def sync_receipts(con: duckdb.DuckDBPyConnection, lake: Lake) -> int:
    """Write the receipt of any committed load that lacks one (a crash right after a commit).

    Returns:
        How many receipts were written.
    """
    have = lake.receipt_ids()
    rows = con.execute(
        "SELECT load_id, started_at, finished_at, source, source_file, file_sha256, redactions, "
        "original_path, mapping, message FROM loads ORDER BY load_id, finished_at, source_file"
    ).fetchall()  # flat rows, grouped here: the same on every engine
    by_load: dict[str, list[tuple]] = {}
    for row in rows:
        if row[0] not in have:
            by_load.setdefault(row[0], []).append(row)
    written = 0
    for load_id, files in by_load.items():
        receipt = LoadReceipt(
            load_id=load_id,
            received_at=min(f[1] for f in files).astimezone(UTC).isoformat(timespec="microseconds"),
            finished_at=min(f[2] for f in files).astimezone(UTC).isoformat(timespec="microseconds"),
            files=[
                FileReceipt(
                    source=f[3],
                    lake_path=f[4],
                    sha256=f[5],
                    original_path=f[7] or "",
                    redactions=f[6] or 0,
                    mapping=f[8],
                    remap_by=_remap_by(f[9]),
                )
                for f in files
            ],
        )
        lake.write_receipt(receipt)
        written += 1
    if written:
        log.warning(
            "wrote %d missing load receipt(s) (a previous run stopped right after its commit)",
            written,
        )
    return written


def _remap_by(message: str | None) -> str | None:
    """Who asked for a re-map, from a ``loads`` message (see ``csv_files.REMAP_PREFIX``)."""
    from workbench.ingest.csv_files import REMAP_PREFIX

    if not message or not message.startswith(REMAP_PREFIX):
        return None
    return message[len(REMAP_PREFIX) :].split(": ", 1)[0]


def run_batch(
    con: duckdb.DuckDBPyConnection | Engine,
    inputs: Iterable[_Input],
    *,
    load_id: str,
    received_at: datetime,
    lake: Lake,
    progress: bool = False,
    total: int | None = None,
    finished_at: datetime | None = None,
) -> _Batch:
    """Load prepared inputs as one batch on an open connection (inside a transaction).

    ``con`` may also be an engine whose tables are temp views (a ``SparkEngine``: see
    :func:`workbench.ingest.rebuild.build_on_engine`), for event and CSV files alike.

    Returns:
        The batch: ``inputs`` (with their reports) and ``timings`` per step.
    """
    batch = _Batch(
        con, load_id=load_id, received_at=received_at, lake=lake, finished_at=finished_at
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="file", desc="ingest", leave=False)
    for inp in inputs:
        batch.add(inp)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    batch.finish()
    return batch


def _receipt(
    load_id: str, received_at: datetime, finished_at: datetime, inputs: list[_Input]
) -> LoadReceipt:
    return LoadReceipt(
        load_id=load_id,
        received_at=received_at.isoformat(timespec="microseconds"),
        finished_at=finished_at.isoformat(timespec="microseconds"),
        files=[
            FileReceipt(
                source=i.report.source,
                lake_path=i.report.lake_path,
                sha256=i.report.sha256,
                original_path=i.report.path,
                redactions=i.report.redactions,
                mapping=i.mapping_lake,
                mapping_name=i.mapping_name,
                remap_by=i.remap_by,
            )
            for i in inputs
            if i.report.status != "skipped"
        ],
    )


def ingest(
    path: str | Path | Sequence[str | Path],
    *,
    source: str = "stripe",
    mapping: str | Path | None = None,
    remap: bool = False,
    who: str | None = None,
    settings: Settings | None = None,
    progress: bool = True,
) -> IngestReport:
    """Ingest a file, a folder of files or a list of them into the warehouse.

    Args:
        path: File(s) or folder(s). Folders are read recursively in name order (JSON
            sources: ``*.json``, ``*.jsonl``, ``*.ndjson``; CSV sources: ``*.csv``).
        source: ``stripe`` (event JSON lines or documents, object exports), ``webhook``
            (webhook bodies, one per file), ``stripe-csv`` (Stripe Dashboard exports) or
            ``csv`` (any CSV export).
        mapping: For CSV sources: a bundled mapping's name or a YAML path (see
            :mod:`workbench.csv_mapping`); when omitted, the bundled mapping that fits each
            file's header is used.
        remap: For CSV sources: a file already loaded under another mapping is mapped again
            with ``mapping``: in this load's transaction, the rows and quarantine rows its
            earlier loads wrote are replaced by what ``mapping`` makes, and those loads are
            marked ``superseded`` (kept in ``loads``). Without it such a file is counted as
            duplicates and its message says so. Files not loaded before load as usual; a
            file already mapped with ``mapping`` is a no-op.
        who: Who asks for the re-map, recorded in ``loads`` (default: the local user, as
            :func:`workbench.approvals.local_user`).
        settings: Where the data directory and the warehouse are.
        progress: Show a progress bar over files.

    Returns:
        Per-file counts (received = accepted + quarantined + duplicates), failures with
        their messages, unknown event types, card numbers redacted and step timings.

    Raises:
        IngestError: Unknown source or no input files.
        ConservationError: Counts did not add up (the load was rolled back).
        WarehouseBusy: Another process is writing the warehouse.
    """
    if source not in SOURCES:
        raise IngestError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if remap and source not in CSV_SOURCES:
        raise IngestError("remap applies to CSV sources only (stripe-csv, csv)")
    remap_by = None
    if remap:
        from workbench.approvals import local_user

        remap_by = who or local_user()
    files = _files(path, source)
    if not files:
        raise IngestError(f"no {'CSV' if source in CSV_SOURCES else 'JSON'} files found at {path}")
    settings = settings or load_settings()
    wh, lake = _open(settings)
    mapping_obj = mapping_lake = mapping_name = None
    if source in CSV_SOURCES:
        from workbench.ingest.csv_files import resolve_mapping

        mapping_obj, mapping_lake, mapping_name = resolve_mapping(mapping, lake)
    started = time.perf_counter()
    received_at = datetime.now(UTC)
    load_id = new_load_id(received_at)
    timings: Counter[str] = Counter()
    pending: list[Future] = []
    with wh.write(step="ingest", transaction=False) as con, ThreadPoolExecutor(1) as writer:
        prepare_connection(con)
        sync_receipts(con, lake)

        def inputs() -> Iterator[_Input]:
            for p in files:
                t0 = time.perf_counter()
                inp = _prepare(
                    p,
                    source=source,
                    lake=lake,
                    received_at=received_at,
                    mapping=mapping_obj,
                    mapping_lake=mapping_lake,
                    mapping_name=mapping_name,
                    remap_by=remap_by,
                    writer=writer,
                    pending=pending,
                )
                timings["read"] += time.perf_counter() - t0
                yield inp

        on_duckdb = isinstance(con, duckdb.DuckDBPyConnection)
        if on_duckdb:  # a Spark warehouse commits the block's changed tables as one unit
            con.execute("BEGIN TRANSACTION")
        try:
            batch = run_batch(
                con,
                _prefetched(inputs()),
                load_id=load_id,
                received_at=received_at,
                lake=lake,
                progress=progress,
                total=len(files),
            )
            t0 = time.perf_counter()
            for future in pending:  # the lake holds every file before the warehouse commits
                future.result()
            timings["lake"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if on_duckdb:
                con.execute("COMMIT")
            else:
                wh.commit(con, step="ingest")
            timings["commit"] += time.perf_counter() - t0
        except BaseException:
            if on_duckdb:
                con.execute("ROLLBACK")
            raise
        reports = [i.report for i in batch.inputs]
        lake.write_receipt(_receipt(load_id, received_at, batch.finished_at, batch.inputs))
    timings.update(batch.timings)
    report = IngestReport(
        load_id=load_id,
        received_at=received_at,
        files=reports,
        seconds=time.perf_counter() - started,
        timings=dict(timings),
    )
    log.info("%s", report)
    return report
