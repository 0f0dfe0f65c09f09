"""The raw lake: every received file, byte-exact after card-number redaction, immutable.

Layout under ``<data_dir>/lake/``::

    <source>/<yyyy-mm-dd of receipt>/<sha256 of content>.<ext>   the received files
    _receipts/<load_id>.json       one per committed load: its files in arrival order
    _mappings/<sha256>.yaml        the CSV mappings loads used (so a rebuild maps the same way)
    _mappings/lookups/<sha256>.<ext>   the lookup files those mappings read (card numbers
                                   redacted); a mapping with lookups is stored pinned to them
                                   (``file: lookups/<sha256>.<ext>``, ``sha256:``), see
                                   :func:`workbench.csv_mapping.pin_lookups`
    _erasures.jsonl                the one sanctioned rewrite: who, why, which file, old/new hash
                                   (also of the copies in ``data/landing/`` it rewrote)

An erasure rewrites a received file or a lookup copy in place: it keeps its path, so its name
(and the receipts, ``loads`` rows and pinned mappings naming it) keep the hash it was stored
with, and the erasure log says which hash its bytes must have now (:meth:`Lake.expected_sha`).

Files are content-addressed: a file received again with the same bytes is the same
lake object (wherever and whenever it was first received), so re-delivery and a rerun
after a crash write nothing new. Objects are written atomically and made read-only.
Only :mod:`workbench.ingest.erase` rewrites one, and records it in ``_erasures.jsonl``.

The receipts are what ``rebuild`` replays: with the lake alone, the warehouse comes
back with the same load ids, the same arrival order (so the same "first one stands"
outcomes) and the same receipt times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench.store import atomic_write_bytes

log = logging.getLogger(__name__)

#: Where lookup files of CSV mappings are kept, relative to the lake root.
LOOKUPS = "_mappings/lookups"

#: What the erasure log says: (erased object hash -> lake path, lake path -> hash now).
_LogIndex = tuple[dict[str, str], dict[str, str]]


@dataclass(frozen=True)
class LakeObject:
    """One stored file: its path relative to the lake root and its content hash."""

    path: str
    sha256: str
    size: int
    existed: bool = False


@dataclass
class FileReceipt:
    """One file of a load, as the receipt records it."""

    source: str
    lake_path: str
    sha256: str
    original_path: str
    redactions: int = 0
    mapping: str | None = None  # lake path of the mapping YAML (CSV sources)
    mapping_name: str | None = None
    remap_by: str | None = None  # CSV sources: who asked to re-map the file (see ``ingest``)


@dataclass
class LoadReceipt:
    """A committed load: its id, receipt time and files in arrival order."""

    load_id: str
    received_at: str  # ISO-8601 UTC with microseconds
    files: list[FileReceipt] = field(default_factory=list)
    finished_at: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LoadReceipt:
        raw = json.loads(data)
        return cls(
            load_id=raw["load_id"],
            received_at=raw["received_at"],
            files=[FileReceipt(**f) for f in raw["files"]],
            finished_at=raw.get("finished_at"),
        )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Lake:
    """The raw lake under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._erased_cache: tuple[tuple[int, int], _LogIndex] | None = None

    # ------------------------------------------------------------------ objects
    def path(self, rel: str) -> Path:
        """Absolute path of a lake object."""
        return self.root / rel

    def find(self, source: str, sha256: str) -> str | None:
        """The lake path of an object of ``source`` with this content hash, if stored.

        An object keeps the name of the hash it was received with; after an erasure rewrote
        it, the hashes it had since (from the erasure log) find it too, so a copy of the
        file that was erased the same way (e.g. in ``data/landing/``) is the same object.
        """
        base = self.root / source
        if not base.is_dir():
            return None
        for match in sorted(base.glob(f"*/{sha256}.*")):
            return str(match.relative_to(self.root))
        rel = self.erased_hashes().get(sha256)
        return rel if rel is not None and rel.startswith(f"{source}/") else None

    def put(self, data: bytes, *, source: str, received_at: datetime, ext: str) -> LakeObject:
        """Store ``data`` (already redacted) unless an identical object of ``source`` exists.

        Args:
            data: The bytes to keep.
            source: Partition, e.g. ``stripe``, ``webhook``, ``csv``.
            received_at: Receipt time (UTC); its date names the day partition.
            ext: File extension without the dot, e.g. ``jsonl``.

        Returns:
            The stored (or already stored) object.
        """
        obj = self.locate(data, source=source, received_at=received_at, ext=ext)
        if not obj.existed:
            self.write_object(obj.path, data)
        return obj

    def locate(self, data: bytes, *, source: str, received_at: datetime, ext: str) -> LakeObject:
        """Where ``data`` is or goes in the lake (``existed`` tells which); writes nothing."""
        sha = hashlib.sha256(data).hexdigest()
        existing = self.find(source, sha)
        if existing is not None:
            return LakeObject(path=existing, sha256=sha, size=len(data), existed=True)
        return LakeObject(
            path=f"{source}/{received_at:%Y-%m-%d}/{sha}.{ext}", sha256=sha, size=len(data)
        )

    def write_object(self, rel: str, data: bytes) -> None:
        """Write a new object atomically and make it read-only (a no-op if it exists)."""
        target = self.root / rel
        if target.exists():
            return
        atomic_write_bytes(target, data)
        _read_only(target)

    def read(self, rel: str) -> bytes:
        """The bytes of a lake object."""
        return (self.root / rel).read_bytes()

    def objects(self) -> list[str]:
        """Every stored object's lake path (receipts, mappings and logs excluded)."""
        out = []
        for p in sorted(self.root.glob("*/*/*")):
            rel = p.relative_to(self.root)
            if not rel.parts[0].startswith("_") and p.is_file() and not p.name.startswith("."):
                out.append(str(rel))
        return out

    def replace(self, rel: str, data: bytes) -> None:
        """Rewrite a lake object in place (for erasure only; the caller logs it)."""
        target = self.root / rel
        atomic_write_bytes(target, data)
        _read_only(target)

    # ------------------------------------------------------------------ mappings
    def put_mapping(self, text: bytes) -> str:
        """Keep a mapping file's bytes; returns its lake path."""
        sha = hashlib.sha256(text).hexdigest()
        rel = f"_mappings/{sha}.yaml"
        target = self.root / rel
        if not target.exists():
            atomic_write_bytes(target, text)
            _read_only(target)
        return rel

    def put_lookup(self, data: bytes, *, ext: str) -> str:
        """Keep a lookup file's bytes (content-addressed, beside the mappings); returns its
        lake path (``_mappings/lookups/<sha256>.<ext>``)."""
        rel = f"{LOOKUPS}/{hashlib.sha256(data).hexdigest()}.{ext}"
        self.write_object(rel, data)
        return rel

    # ------------------------------------------------------------------ receipts
    def receipt_path(self, load_id: str) -> Path:
        return self.root / "_receipts" / f"{load_id}.json"

    def write_receipt(self, receipt: LoadReceipt) -> None:
        """Write (or rewrite identically) a load's receipt, atomically."""
        atomic_write_bytes(self.receipt_path(receipt.load_id), receipt.to_json())

    def receipts(self) -> list[LoadReceipt]:
        """Every receipt, in the order the loads happened (receipt time, then load id)."""
        folder = self.root / "_receipts"
        if not folder.is_dir():
            return []
        out = [LoadReceipt.from_json(p.read_bytes()) for p in folder.glob("*.json")]
        return sorted(out, key=lambda r: (r.received_at, r.load_id))

    def receipt_ids(self) -> set[str]:
        folder = self.root / "_receipts"
        return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()

    # ------------------------------------------------------------------ erasure log
    @property
    def erasure_log(self) -> Path:
        return self.root / "_erasures.jsonl"

    def log_erasure(self, entry: dict[str, Any]) -> None:
        """Append one entry to the erasure log and make it durable."""
        self.erasure_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.erasure_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def erasures(self) -> list[dict[str, Any]]:
        """Every erasure log entry, oldest first (a torn last line is skipped)."""
        if not self.erasure_log.exists():
            return []
        out = []
        for line in self.erasure_log.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("skipping a torn line in %s", self.erasure_log)
        return out

    def erased_hashes(self) -> dict[str, str]:
        """Every hash an erased object had before or after a rewrite -> its lake path (received
        files only, as :meth:`objects` lists them: not the lookup copies under ``_mappings/``,
        which no received file is found as)."""
        return self._log_index()[0]

    def expected_sha(self) -> dict[str, str]:
        """Lake path -> the hash its content must have now (after any erasures), for every
        file an erasure rewrote (received files and lookup copies)."""
        return dict(self._log_index()[1])

    def _log_index(self) -> _LogIndex:
        """(:meth:`erased_hashes`, :meth:`expected_sha`), read again when the log changed."""
        try:
            st = self.erasure_log.stat()
        except FileNotFoundError:
            return {}, {}
        key = (st.st_mtime_ns, st.st_size)
        if self._erased_cache is None or self._erased_cache[0] != key:
            erased: dict[str, str] = {}
            expected: dict[str, str] = {}
            for entry in self.erasures():
                rel = entry.get("lake_file")
                if not rel:
                    continue
                if entry.get("new_sha256"):
                    expected[rel] = entry["new_sha256"]
                if not rel.startswith("_"):
                    for sha in (entry.get("old_sha256"), entry.get("new_sha256")):
                        if sha:
                            erased[sha] = rel
            self._erased_cache = (key, (erased, expected))
        return self._erased_cache[1]

    def current_sha(self, path: Path, stored: str) -> str:
        """The hash the file at ``path`` must have now: the last one the erasure log recorded
        for it, else ``stored`` (the hash it was stored with; also for a file outside this
        lake, e.g. a lookup copy beside a mapping taken from another lake)."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return stored
        return self._log_index()[1].get(rel, stored)


def _read_only(path: Path) -> None:
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
