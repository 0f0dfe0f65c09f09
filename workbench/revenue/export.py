"""Write the account-month MRR table and the monthly bridge for other tools.

``workbench revenue --policy NAME --out PATH`` calls :func:`export`. Files are
written by DuckDB (``COPY``; on Spark the rows are collected and written with Arrow) to a
temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import duckdb

from ..engines import Engine
from .engine import build_account_months
from .metrics import _bridge_sql
from .policies import Policy

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".parquet": "parquet"}


def _targets(out: Path, fmt: str | None) -> tuple[Path, Path, str]:
    suffix = out.suffix.lower()
    if suffix in FORMATS:
        kind = fmt or FORMATS[suffix]
        return out, out.with_name(f"{out.stem}_bridge{out.suffix}"), kind
    kind = fmt or "parquet"
    ext = "csv" if kind == "csv" else "parquet"
    return out / f"mrr_account_month.{ext}", out / f"mrr_bridge.{ext}", kind


def _copy(con: duckdb.DuckDBPyConnection | Engine, query: str, path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(con, duckdb.DuckDBPyConnection):
        opts = "FORMAT csv, HEADER true" if kind == "csv" else "FORMAT parquet, COMPRESSION zstd"
        escaped = str(tmp).replace("'", "''")
        con.execute(f"COPY ({query}) TO '{escaped}' ({opts})")
    else:  # another engine (Spark): the rows come to this machine and Arrow writes them
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        table = con.execute(query).to_arrow_table()
        if kind == "csv":
            pa_csv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def export(
    con: duckdb.DuckDBPyConnection | Engine,
    *,
    policy: str | Policy,
    out: str | Path,
    fmt: str | None = None,
    reporting_currency: str = "usd",
    start: date | str | None = None,
    end: date | str | None = None,
    fx_rate_date: str | None = None,
    by: Sequence[str] = (),
) -> dict[str, Path]:
    """Compute one policy and write its account-month table and monthly bridge.

    Args:
        con: warehouse connection holding the canonical tables, or an engine (on Spark the
            account-months and the bridge are computed there and written here with Arrow).
        policy: policy name, ``name@version`` or :class:`Policy`.
        out: a file ending in ``.csv``/``.parquet`` (the bridge goes beside it as
            ``<stem>_bridge<suffix>``) or a folder (``mrr_account_month.<ext>`` and
            ``mrr_bridge.<ext>`` inside it).
        fmt: ``csv`` or ``parquet``; default from the suffix, else parquet.
        reporting_currency, start, end, fx_rate_date: passed to the engine.
        by: segment columns for the bridge (default: company total).

    Returns:
        ``{"account_month": path, "bridge": path}``.
    """
    if fmt is not None and fmt not in ("csv", "parquet"):
        raise ValueError("fmt must be 'csv' or 'parquet'")
    am_path, bridge_path, kind = _targets(Path(out), fmt)
    run = build_account_months(
        con,
        policy=policy,
        reporting_currency=reporting_currency,
        start=start,
        end=end,
        fx_rate_date=fx_rate_date,
        into="_rev_export_am",
    )
    try:
        _copy(con, f"SELECT * FROM {run.table} ORDER BY month, account_id", am_path, kind)
        bridge = _bridge_sql(run.table, list(by)).strip()
        labelled = (
            f"SELECT b.*, '{run.policy.name}' AS policy, '{run.policy.version}' AS policy_version, "
            f"'{run.reporting_currency}' AS reporting_currency FROM ({bridge}) b"
        )
        _copy(con, labelled, bridge_path, kind)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {run.table}")
    log.info("exported %s to %s and %s", run.policy.key, am_path, bridge_path)
    return {"account_month": am_path, "bridge": bridge_path}
