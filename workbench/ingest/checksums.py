"""Order-independent checksums of warehouse tables, to prove that two warehouses agree.

A table's checksum is computed over its rows sorted by every column, so it does not
depend on the physical row order. Columns that record *when* or *in which load* a row
was written (``load_id``, ``received_at``, ``started_at``, ``finished_at``) can be left
out, to compare a warehouse with one built by different loads from the same input.
"""

from __future__ import annotations

import duckdb

from workbench.config import Settings, load_settings
from workbench.ingest.tables import INTERNAL
from workbench.schema import TABLES
from workbench.store import Warehouse

#: Columns that say when or by which load a row was written.
LOAD_COLUMNS = ("load_id", "received_at", "started_at", "finished_at")


def checksums(
    con: duckdb.DuckDBPyConnection,
    *,
    tables: list[str] | None = None,
    ignore_load_columns: bool = False,
    internal: bool = True,
) -> dict[str, str]:
    """Checksum every table on an open connection.

    Args:
        con: A warehouse connection.
        tables: Which tables (default: every canonical table, and the internal ones).
        ignore_load_columns: Leave out ``load_id`` and the load timestamps.
        internal: Include ingestion's internal tables (versions, erasures).

    Returns:
        Table name -> ``"<rows>:<hash>"``.
    """
    names = tables or [*TABLES, *(INTERNAL if internal else [])]
    out = {}
    for name in names:
        spec = TABLES.get(name) or INTERNAL[name]
        cols = [c for c in spec.column_names if not (ignore_load_columns and c in LOAD_COLUMNS)]
        if name == "loads" and ignore_load_columns:
            cols = [c for c in cols if c != "original_path"]
        col_list = ", ".join(cols)
        row = con.execute(
            f"SELECT count(*), md5(string_agg(md5(r::VARCHAR), '' ORDER BY md5(r::VARCHAR))) "
            f"FROM (SELECT ({col_list}) AS r FROM {name})"
        ).fetchall()[0]
        out[name] = f"{row[0]}:{row[1]}"
    return out


def table_checksums(settings: Settings | None = None, **kwargs) -> dict[str, str]:  # noqa: ANN003
    """Checksum every warehouse table (see :func:`checksums` for the options)."""
    settings = settings or load_settings()
    with Warehouse(settings).read(step="checksums") as con:
        return checksums(con, **kwargs)
