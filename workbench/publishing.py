"""Results leave a pipeline step in two ways: as warehouse tables (for later steps, under
the writer lock) and as published snapshots (for dashboards, swapped in atomically)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping

import pandas as pd

from workbench.config import Settings, load_settings
from workbench.lakehouse import open_warehouse
from workbench.store import SnapshotMissing, publish_snapshot, read_snapshot

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def store_frame(
    frame: pd.DataFrame,
    *,
    table: str,
    settings: Settings | None = None,
    replace_where: Mapping[str, object] | None = None,
) -> int:
    """Write a result frame into the warehouse, idempotently.

    With ``replace_where`` (e.g. ``{"run_id": "..."}``) the rows matching it are replaced
    and others kept (a history of runs); without it the table is replaced whole.

    Returns:
        Rows written.
    """
    if not _NAME.match(table):
        raise ValueError(f"not a table name: {table!r}")
    settings = settings or load_settings()
    view = f"_wb_frame_{uuid.uuid4().hex[:10]}"
    with open_warehouse(settings).write(step=f"store {table}") as con:
        con.register(view, frame)
        try:
            if replace_where is None:
                con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {view}")
            else:
                for col in replace_where:
                    if not _NAME.match(col):
                        raise ValueError(f"not a column name: {col!r}")
                con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM {view} LIMIT 0")
                cond = " AND ".join(f"{col} = ?" for col in replace_where)
                con.execute(f"DELETE FROM {table} WHERE {cond}", list(replace_where.values()))
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view}")
        finally:
            con.unregister(view)
    log.info("stored %d rows in %s", len(frame), table)
    return len(frame)


def publish_tables(
    name: str,
    tables: Mapping[str, pd.DataFrame],
    *,
    settings: Settings | None = None,
    metadata: Mapping[str, object] | None = None,
    merge: bool = True,
) -> None:
    """Publish tables into snapshot ``name``; with ``merge`` the tables already published
    under that name and not given here are carried over (e.g. the forecast step adds its
    tables to the finance snapshot without recomputing MRR)."""
    settings = settings or load_settings()
    combined: dict[str, pd.DataFrame] = {}
    meta: dict[str, object] = {}
    if merge:
        try:
            combined = read_snapshot(name, settings=settings)
            from workbench.store import snapshot_info

            meta = dict(snapshot_info(name, settings=settings).get("metadata", {}))
        except SnapshotMissing:
            pass
    combined.update(tables)
    meta.update(metadata or {})
    publish_snapshot(name, combined, settings=settings, metadata=meta)
