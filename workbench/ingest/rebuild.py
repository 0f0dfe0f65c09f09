"""Recreate the warehouse from the raw lake alone.

Every committed load left a receipt in the lake (its id, receipt time and files in
arrival order, with the mapping of CSV files). A rebuild replays the receipts in order,
with the same load ids and times, through the same code as ``ingest``, into a new
database file, then swaps it in atomically. So the rebuilt warehouse has the same rows
as the one built by the original loads (same "first one stands" outcomes, same
quarantine, same load counts), and a crash during a rebuild leaves the old warehouse.

A CSV file re-mapped (``ingest(..., remap=True)``) has two receipts: the first load with
its old mapping and the re-map with the new one (``FileReceipt.remap_by`` set). Both are
replayed in order, so the file ends mapped with the mapping now in force and the earlier
load is ``superseded`` in ``loads``, exactly as in the warehouse that was re-mapped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import duckdb

from workbench import csv_mapping
from workbench.config import Settings, load_settings
from workbench.engines import Engine
from workbench.ingest.lake import Lake, LakeObject
from workbench.ingest.loader import _Input, prepare_connection, run_batch
from workbench.schema import create_all
from workbench.store import Warehouse

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    """What a rebuild replayed."""

    loads: int
    files: int
    events: int
    seconds: float

    def __str__(self) -> str:
        return f"rebuilt the warehouse from {self.loads} loads ({self.files} files, {self.events} events) in {self.seconds:.1f} s"


def _inputs(lake: Lake, receipt) -> list[_Input]:  # noqa: ANN001 - a LoadReceipt
    out = []
    for f in receipt.files:
        data = lake.read(f.lake_path)
        mapping = csv_mapping.load_mapping(lake.path(f.mapping)) if f.mapping else None
        out.append(
            _Input(
                display=f.original_path,
                source=f.source,
                data=data,
                lake=LakeObject(path=f.lake_path, sha256=f.sha256, size=len(data), existed=True),
                redactions=f.redactions,
                mapping=mapping,
                mapping_lake=f.mapping,
                mapping_name=f.mapping_name,
                remap_by=f.remap_by,
                replay=True,
            )
        )
    return out


def replay(
    con: duckdb.DuckDBPyConnection | Engine,
    lake: Lake,
    *,
    sources: tuple[str, ...] | None = None,
) -> tuple[int, int]:
    """Replay every receipt of ``lake`` into an open, empty warehouse connection.

    Args:
        con: the warehouse connection (or an engine, see :func:`build_on_engine`).
        lake: the raw lake.
        sources: replay only the files of these sources (default: all).

    Returns:
        (loads, files) replayed.
    """
    loads = files = 0
    for receipt in lake.receipts():
        if sources is not None:
            receipt = replace(receipt, files=[f for f in receipt.files if f.source in sources])
            if not receipt.files:
                continue
        inputs = _inputs(lake, receipt)
        finished = datetime.fromisoformat(receipt.finished_at) if receipt.finished_at else None
        run_batch(
            con,
            inputs,
            load_id=receipt.load_id,
            received_at=datetime.fromisoformat(receipt.received_at),
            lake=lake,
            finished_at=finished,
        )
        loads += 1
        files += len(inputs)
    return loads, files


def build_on_engine(
    engine: Engine, lake: Lake, *, sources: tuple[str, ...] | None = None
) -> RebuildReport:
    """Build the warehouse from the raw lake on ``engine`` (Spark).

    The lake's receipts are replayed in order, with their load ids and times, through the
    loader's own code (:func:`workbench.ingest.loader.run_batch`: staging and projection
    in :mod:`~workbench.ingest.stripe_events`, duplicates and conflicts, the type registry,
    contracts, quarantine, events, version tables, :mod:`~workbench.ingest.derive`), with
    the engine in place of the DuckDB connection. Every canonical and internal table is
    first created empty as a temp table of the engine; afterwards the version tables, the
    current-state tables, ``events``, ``quarantine`` and ``loads`` are temp tables of the
    engine (write them out to keep them).

    Every file is replayed: Stripe events and webhooks, and CSV exports (mapped by
    :mod:`workbench.csv_mapping` with pandas on the driver, as on DuckDB; their rows, rejects
    and counts go to the engine through :mod:`~workbench.ingest.csv_files`). ``sources``
    replays only the files of these sources (e.g. ``JSON_SOURCES``); loads with no such file
    are skipped.

    Returns:
        How many loads, files and events were replayed.
    """
    from workbench.ingest import stripe_events
    from workbench.ingest.tables import INTERNAL
    from workbench.schema import TABLES

    started = time.perf_counter()
    for table in (*TABLES.values(), *INTERNAL.values()):
        cols = ", ".join(f"{c.name} {c.type}" for c in table.columns)
        engine.execute(f"CREATE OR REPLACE TEMP TABLE {table.name} ({cols})")
    stripe_events.install_macros(engine)
    load_erasures(engine, lake)  # first: erased customers' personal data stays empty
    loads, files = replay(engine, lake, sources=sources)
    events = engine.execute("SELECT count(*) FROM events").fetchone()[0]
    report = RebuildReport(
        loads=loads, files=files, events=int(events), seconds=time.perf_counter() - started
    )
    log.info("on %s: %s", engine.name, report)
    return report


def load_erasures(con: duckdb.DuckDBPyConnection | Engine, lake: Lake) -> None:
    """Copy the lake's erasure log into the ``erasures`` table (its lake rewrites and
    summaries; the rewrites of ``data/landing/`` files are in the log only)."""
    con.execute("DELETE FROM erasures")
    for e in lake.erasures():
        if e.get("landing_file"):
            continue
        con.execute(
            "INSERT INTO erasures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                e["erasure_id"],
                e["customer_id"],
                e["who"],
                e["why"],
                e["erased_at"],
                e.get("lake_file"),
                e.get("old_sha256"),
                e.get("new_sha256"),
                e.get("values_erased"),
            ],
        )


def rebuild_locked(settings: Settings, lake: Lake) -> RebuildReport:
    """Rebuild while the caller already holds the warehouse's writer lock."""
    started = time.perf_counter()
    target = Path(settings.warehouse_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.rebuild-{uuid.uuid4().hex[:8]}")
    con = duckdb.connect(str(tmp))
    try:
        create_all(con)
        prepare_connection(con)
        con.execute("BEGIN TRANSACTION")
        load_erasures(con, lake)  # first: erased customers' personal data stays empty
        loads, files = replay(con, lake)
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    except BaseException:
        con.close()
        for p in (tmp, tmp.with_name(tmp.name + ".wal")):
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    con.close()
    # The old file's write-ahead log must not be applied to the new file.
    with contextlib.suppress(OSError):
        target.with_name(target.name + ".wal").unlink()
    os.replace(tmp, target)
    report = RebuildReport(
        loads=loads, files=files, events=int(events), seconds=time.perf_counter() - started
    )
    log.info("%s", report)
    return report


def rebuild(settings: Settings | None = None) -> RebuildReport:
    """Recreate the warehouse from the raw lake (``workbench rebuild``).

    Args:
        settings: Where the data directory and the warehouse are.

    Returns:
        How many loads, files and events were replayed.

    Raises:
        WarehouseBusy: Another process is writing the warehouse.
    """
    settings = settings or load_settings()
    if settings.engine == "spark":
        from workbench.lakehouse import SparkWarehouse

        return SparkWarehouse(settings).rebuild()
    wh = Warehouse(settings)
    lake = Lake(Path(settings.data_dir) / "lake")
    with wh.lock.hold(step="rebuild"):
        if wh.path.exists():
            # Receipts of loads committed just before a crash are written first.
            from workbench.ingest.loader import sync_receipts

            con = duckdb.connect(str(wh.path))
            try:
                create_all(con)
                prepare_connection(con)
                sync_receipts(con, lake)
            finally:
                con.close()
        return rebuild_locked(replace(settings), lake)
