"""Append-only, hash-chained audit log.

Every entry stores the hash of the entry before it, and its own hash covers its
sequence number, time, actor, event, item, details and that previous hash. So:

- editing any field of an entry changes its hash (detected at that entry);
- deleting an entry leaves a gap and a broken link (detected at the next one);
- reordering entries breaks the links (detected at the first moved one);
- cutting entries off the end leaves a valid but shorter chain, which is detected
  against a head (sequence number + hash) exported earlier with :func:`export_head`
  and kept somewhere else (a ticket, another machine, the CI log).

The database also refuses UPDATE and DELETE on the table (triggers), so tampering
needs someone who bypasses the application; the chain is what catches them.

Entries are appended inside the caller's transaction (:func:`append`), so a state
change and its audit entry commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from workbench.timeutil import utc_time_or_now

if TYPE_CHECKING:
    from workbench.config import Settings

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_PAGE = 5_000


class Tx(Protocol):
    """What an audit append needs from a transaction (see ``approvals.ApprovalStore``)."""

    dialect: str

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int: ...

    def fetchone(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None: ...

    def fetchall(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]: ...


class Store(Protocol):
    """Anything with transactions over the audit table (``approvals.ApprovalStore``)."""

    def transaction(self, *, write: bool = True) -> Any: ...


def utc_text(ts: datetime | pd.Timestamp | None = None) -> str:
    """A UTC time as fixed-width ISO text with microseconds (sortable, portable)."""
    return utc_time_or_now(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def jsonable(value: Any) -> Any:
    """Plain JSON values from numpy/pandas scalars, timestamps, NaN (-> None), tuples."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, pd.Timestamp | datetime):
        return None if pd.isna(value) else utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, int | float):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) of :func:`jsonable` ``value``."""
    return json.dumps(
        jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    *, seq: int, at: str, actor: str, event: str, item_id: str | None, details: str, prev_hash: str
) -> str:
    """SHA-256 over an entry's fields (``details`` as its stored JSON text) and the previous hash."""
    body = json.dumps(
        [seq, at, actor, event, item_id, details, prev_hash],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry as stored."""

    seq: int
    at: str
    actor: str
    event: str
    item_id: str | None
    details: str  # canonical JSON text
    prev_hash: str
    hash: str

    @property
    def data(self) -> dict[str, Any]:
        """The details, parsed."""
        return json.loads(self.details)


@dataclass(frozen=True)
class AuditHead:
    """The last entry's sequence number and hash: keep it elsewhere to detect truncation."""

    seq: int
    hash: str

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**asdict(self), "exported_at": utc_text()}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> AuditHead:
        data = json.loads(Path(path).read_text())
        return cls(seq=int(data["seq"]), hash=str(data["hash"]))


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a chain check. ``first_bad_seq`` is the first entry that fails, if any."""

    ok: bool
    entries: int
    head: AuditHead | None
    first_bad_seq: int | None = None
    problem: str = ""

    def summary(self) -> str:
        if self.ok:
            head = f"head {self.head.seq} {self.head.hash[:16]}" if self.head else "empty log"
            return f"audit log OK: {self.entries} entries, {head}"
        return f"audit log BROKEN at entry {self.first_bad_seq}: {self.problem}"


def append(
    tx: Tx,
    *,
    actor: str,
    event: str,
    item_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    at: datetime | pd.Timestamp | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's (write) transaction.

    The caller's transaction must hold the write lock (SQLite ``BEGIN IMMEDIATE``); on
    PostgreSQL the table is locked here so concurrent appenders queue up in order.
    """
    if tx.dialect == "postgresql":
        tx.execute("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
    last = tx.fetchone("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq = 1 if last is None else int(last["seq"]) + 1
    prev = GENESIS_HASH if last is None else str(last["hash"])
    text_at = utc_text(at)
    body = canonical_json(details or {})
    digest = entry_hash(
        seq=seq, at=text_at, actor=actor, event=event, item_id=item_id, details=body, prev_hash=prev
    )
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, event, item_id, details, prev_hash, hash) "
        "VALUES (:seq, :at, :actor, :event, :item_id, :details, :prev_hash, :hash)",
        {"seq": seq, "at": text_at, "actor": actor, "event": event, "item_id": item_id,
         "details": body, "prev_hash": prev, "hash": digest},
    )  # fmt: skip
    return AuditEntry(seq, text_at, actor, event, item_id, body, prev, digest)


def _row_entry(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        seq=int(row["seq"]), at=str(row["at"]), actor=str(row["actor"]), event=str(row["event"]),
        item_id=None if row["item_id"] is None else str(row["item_id"]), details=str(row["details"]),
        prev_hash=str(row["prev_hash"]), hash=str(row["hash"]),
    )  # fmt: skip


def iter_entries(store: Store, *, page: int = _PAGE) -> Iterator[AuditEntry]:
    """All entries in sequence order, read page by page."""
    after = -1
    while True:
        with store.transaction(write=False) as tx:
            rows = tx.fetchall(
                "SELECT seq, at, actor, event, item_id, details, prev_hash, hash FROM audit_log "
                f"WHERE seq > :after ORDER BY seq LIMIT {int(page)}",
                {"after": after},
            )
        if not rows:
            return
        for row in rows:
            yield _row_entry(row)
        after = int(rows[-1]["seq"])


def verify_entries(
    entries: Iterable[AuditEntry], *, expected_head: AuditHead | None = None
) -> VerifyResult:
    """Recompute the chain over entries in stored order; report the first bad one.

    Args:
        entries: Entries ordered by ``seq`` as stored.
        expected_head: A head exported earlier; the log must still contain that entry
            with that hash (catches truncation and rewritten history).
    """
    prev_hash = GENESIS_HASH
    expected_seq = 1
    count = 0
    seen_head = False
    last: AuditEntry | None = None
    for entry in entries:
        count += 1
        if entry.seq != expected_seq:
            return VerifyResult(
                False, count, None, entry.seq,
                f"sequence gap: expected entry {expected_seq}, found {entry.seq} (entries deleted or renumbered)",
            )  # fmt: skip
        if entry.prev_hash != prev_hash:
            return VerifyResult(
                False, count, None, entry.seq,
                "link broken: previous-hash does not match the entry before it (entries deleted, reordered or edited)",
            )  # fmt: skip
        recomputed = entry_hash(
            seq=entry.seq, at=entry.at, actor=entry.actor, event=entry.event,
            item_id=entry.item_id, details=entry.details, prev_hash=entry.prev_hash,
        )  # fmt: skip
        if recomputed != entry.hash:
            return VerifyResult(
                False,
                count,
                None,
                entry.seq,
                "content edited: stored hash does not match the entry's fields",
            )
        if expected_head is not None and entry.seq == expected_head.seq:
            if entry.hash != expected_head.hash:
                return VerifyResult(
                    False, count, None, entry.seq,
                    "history rewritten: entry at the exported head has a different hash than was exported",
                )  # fmt: skip
            seen_head = True
        prev_hash = entry.hash
        expected_seq += 1
        last = entry
    head = AuditHead(last.seq, last.hash) if last else None
    if expected_head is not None and not seen_head:
        return VerifyResult(
            False, count, head, (last.seq + 1) if last else 1,
            f"log truncated: exported head is entry {expected_head.seq} but the log ends at "
            f"{last.seq if last else 0}",
        )  # fmt: skip
    return VerifyResult(True, count, head)


def verify(store: Store, *, expected_head: AuditHead | None = None) -> VerifyResult:
    """Recompute the stored chain (see :func:`verify_entries`)."""
    return verify_entries(iter_entries(store), expected_head=expected_head)


def head(store: Store) -> AuditHead | None:
    """The current last entry (``None`` for an empty log)."""
    with store.transaction(write=False) as tx:
        row = tx.fetchone("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    return None if row is None else AuditHead(int(row["seq"]), str(row["hash"]))


def audit_frame(
    store: Store,
    *,
    limit: int | None = 200,
    item_id: str | None = None,
    event_prefix: str | None = None,
) -> pd.DataFrame:
    """Recent entries, newest first.

    Returns:
        Columns ``seq, at, actor, event, item_id, details, hash``.
    """
    where, params = [], {}
    if item_id is not None:
        where.append("item_id = :item_id")
        params["item_id"] = item_id
    if event_prefix is not None:
        where.append("event LIKE :prefix")
        params["prefix"] = event_prefix + "%"
    sql = "SELECT seq, at, actor, event, item_id, details, hash FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with store.transaction(write=False) as tx:
        rows = tx.fetchall(sql, params)
    return pd.DataFrame(rows, columns=["seq", "at", "actor", "event", "item_id", "details", "hash"])


# --------------------------------------------------------------------------- CLI-facing


def verify_audit(settings: Settings, *, head_file: Path | str | None = None) -> VerifyResult:
    """``workbench audit verify``: check the configured store's chain.

    Args:
        settings: Names the approvals store (``approvals_url``).
        head_file: A head exported earlier with :func:`export_audit_head`; detects truncation.
    """
    from workbench.approvals import open_store

    expected = AuditHead.load(head_file) if head_file else None
    result = verify(open_store(settings), expected_head=expected)
    (log.info if result.ok else log.error)("%s", result.summary())
    return result


def export_audit_head(settings: Settings, path: Path | str) -> AuditHead | None:
    """``workbench audit export-head``: write the current head to ``path`` (JSON) after
    checking the chain; keep that file outside the store."""
    from workbench.approvals import open_store

    store = open_store(settings)
    result = verify(store)
    if not result.ok:
        raise RuntimeError(f"refusing to export the head of a broken log: {result.summary()}")
    if result.head is not None:
        result.head.save(path)
    return result.head
