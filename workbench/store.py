"""The warehouse and its one-writer rule, and published snapshots for readers.

DuckDB allows one writing process per file, and a read-only open fails while a
writer holds it. So:

* pipeline steps open the live warehouse only through :meth:`Warehouse.write`
  (or :meth:`Warehouse.read`), which first take an exclusive lock beside the
  file; a second writer waits up to ``lock_timeout_s`` and then fails with a
  message naming the holder (pid, command, since when);
* dashboards never open the live file: they read *published snapshots*, sets of
  Parquet files written to a fresh folder, fsynced, and swapped in by atomically
  replacing a small pointer file. A reader always sees one complete version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
from filelock import FileLock, Timeout

from workbench.config import Settings, load_settings
from workbench.schema import create_all

log = logging.getLogger(__name__)


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse's writer lock."""


class SnapshotMissing(FileNotFoundError):
    """No snapshot of that name has been published yet."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def fsynced_temp(path: Path, data: bytes) -> Iterator[Path]:
    """``data`` in a hidden temporary file beside ``path``, written and fsynced, for the
    caller to move into place (rename or link); removed afterwards if it is still there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def fsync_dir(path: Path) -> None:
    """Make a rename or link in folder ``path`` survive a power cut (where the platform
    allows: errors are ignored)."""
    with contextlib.suppress(OSError):
        _fsync_dir(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half of one."""
    with fsynced_temp(path, data) as tmp:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class LockHolder:
    """Who holds the writer lock."""

    pid: int
    host: str
    command: str
    step: str
    since: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.step}: {self.command}) since {self.since}"


class WriterLock:
    """An exclusive, cross-process lock for one warehouse file, recording its holder."""

    def __init__(self, target: Path, *, timeout_s: float) -> None:
        self.target = Path(target)
        self.lock_path = self.target.with_name(self.target.name + ".lock")
        self.holder_path = self.target.with_name(self.target.name + ".holder.json")
        self.timeout_s = timeout_s
        self._lock = FileLock(str(self.lock_path))

    def holder(self) -> LockHolder | None:
        """The recorded holder, if any (stale after a crash; the OS lock is the truth)."""
        try:
            return LockHolder(**json.loads(self.holder_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @contextlib.contextmanager
    def hold(self, *, step: str = "write") -> Iterator[None]:
        """Hold the lock for the duration of the block.

        Raises:
            WarehouseBusy: The lock was not free within ``timeout_s``.
        """
        self.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=self.timeout_s)
        except Timeout:
            holder = self.holder()
            who = str(holder) if holder else "another process"
            raise WarehouseBusy(
                f"The warehouse {self.target} is being written by {who}. "
                f"Waited {self.timeout_s:.0f} s. Wait for that step to finish, or stop it, then retry "
                "(raise WORKBENCH_LOCK_TIMEOUT_S to wait longer)."
            ) from None
        try:
            info = LockHolder(
                pid=os.getpid(),
                host=socket.gethostname(),
                command=" ".join(sys.argv)[:200] or sys.executable,
                step=step,
                since=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            atomic_write_bytes(self.holder_path, json.dumps(info.__dict__).encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
            self._lock.release()


class Warehouse:
    """The embedded DuckDB warehouse, opened only under its writer lock.

    Example:
        >>> wh = Warehouse(load_settings())
        >>> with wh.write(step="ingest") as con:
        ...     con.execute("INSERT INTO fx_rates VALUES ('2024-01-01', 'eur', 1.1)")
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.path = Path(self.settings.warehouse_path)
        self.lock = WriterLock(self.path, timeout_s=self.settings.lock_timeout_s)

    @contextlib.contextmanager
    def write(
        self, *, step: str = "write", transaction: bool = True
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the warehouse for writing, under the lock, with the canonical tables created.

        With ``transaction=True`` (the default) the block runs in one transaction: it commits
        at the end and rolls back on any exception, so a crash leaves the previous state.
        """
        with self.lock.hold(step=step):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(self.path))
            try:
                create_all(con)
                if not transaction:
                    yield con
                    return
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    @contextlib.contextmanager
    def read(self, *, step: str = "read") -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the live warehouse read-only, under the lock (pipeline steps only; dashboards
        read snapshots)."""
        if not self.path.exists():
            raise FileNotFoundError(
                f"No warehouse at {self.path} yet. Run `workbench simulate` and `workbench ingest` "
                "(or `make demo`) first."
            )
        with self.lock.hold(step=step):
            con = duckdb.connect(str(self.path), read_only=True)
            try:
                yield con
            finally:
                con.close()


# --------------------------------------------------------------------------- snapshots


def _snapshot_root(settings: Settings) -> Path:
    return Path(settings.snapshot_dir)


def publish_snapshot(
    name: str,
    tables: Mapping[str, pd.DataFrame],
    *,
    settings: Settings | None = None,
    metadata: Mapping[str, object] | None = None,
    keep: int = 3,
) -> Path:
    """Publish a consistent set of tables for readers, atomically.

    Each table is written as Parquet into a new version folder, every file is fsynced,
    then the pointer ``<snapshot_dir>/<name>.json`` is replaced atomically. Readers that
    follow the pointer see the previous version complete until the swap, then the new one.

    Args:
        name: Snapshot name, e.g. ``"finance"``.
        tables: Table name to frame.
        settings: Where the snapshot folder is.
        metadata: Extra JSON-able facts stored in the pointer (run id, as-of time).
        keep: Old versions to keep for readers still holding them.

    Returns:
        The new version's folder.
    """
    settings = settings or load_settings()
    root = _snapshot_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    tmp = root / f".{name}.{version}.tmp"
    final = root / f"{name}.{version}"
    tmp.mkdir()
    for table, frame in tables.items():
        path = tmp / f"{table}.parquet"
        frame.to_parquet(path, index=False)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = {
        "name": name,
        "version": version,
        "folder": final.name,
        "tables": sorted(tables),
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metadata": dict(metadata or {}),
    }
    atomic_write_bytes(root / f"{name}.json", json.dumps(pointer, indent=2, default=str).encode())
    _prune(root, name, keep=keep, current=final.name)
    log.info("published snapshot %s version %s (%d tables)", name, version, len(tables))
    return final


def _prune(root: Path, name: str, *, keep: int, current: str, grace_s: float = 120.0) -> None:
    """Delete old versions beyond the newest ``keep``, but only once they are ``grace_s`` old,
    so that a reader that has just followed an older pointer can still open its files."""
    versions = sorted(p for p in root.glob(f"{name}.*") if p.is_dir() and p.name != current)
    now = time.time()
    for old in versions[: max(0, len(versions) - (keep - 1))]:
        if now - old.stat().st_mtime > grace_s:
            shutil.rmtree(old, ignore_errors=True)


def snapshot_info(name: str, *, settings: Settings | None = None) -> dict:
    """The pointer of the current version of snapshot ``name``.

    Raises:
        SnapshotMissing: Nothing has been published under that name.
    """
    settings = settings or load_settings()
    pointer = _snapshot_root(settings) / f"{name}.json"
    try:
        return json.loads(pointer.read_text())
    except FileNotFoundError:
        raise SnapshotMissing(
            f"No '{name}' snapshot has been published yet. Run the pipeline (`workbench run` or "
            "`make demo`) to publish one."
        ) from None


def read_snapshot(name: str, *, settings: Settings | None = None) -> dict[str, pd.DataFrame]:
    """Read every table of the current version of snapshot ``name``.

    All tables come from one version: if a version disappears while being read (it was
    pruned after a newer one was published), the read starts again from the new pointer.
    """
    settings = settings or load_settings()
    for attempt in range(5):
        info = snapshot_info(name, settings=settings)
        folder = _snapshot_root(settings) / info["folder"]
        try:
            return {table: pd.read_parquet(folder / f"{table}.parquet") for table in info["tables"]}
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")
