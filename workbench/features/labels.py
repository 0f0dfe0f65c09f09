"""Labels for training sets: what happens in ``(t, t + horizon]`` after a spine row's time.

Churn (accounts): an account paying at ``t`` (a subscription item version in force at
``t`` satisfies :data:`~workbench.features.definitions.PAYING_FILTER`, the rule the
``mrr`` feature sums) *churns within h days* when it is not paying at ``t + h days``:
its last paying subscription ended (cancellation, unpaid after dunning, downgrade to
free) inside the window and it did not come back by the window's end. Accounts that
were not paying at ``t`` get no label.

Recovery (failed invoices): the invoice is *recovered within h days* when it is paid in
``(t, t + h days]``; its payment time is the earlier of ``invoices.paid_at`` and its first
succeeded payment attempt (the ``invoice_payments`` source). A voided or written-off
invoice is not recovered.

Labels are only given where the whole window has been observed:
``t + h <= observed_until`` (default :func:`~workbench.features.offline.data_horizon`);
otherwise they are missing (``pd.NA``), never a guessed 0.

Both functions take a DuckDB connection or an engine: on Spark the same SQL runs
transpiled (:mod:`workbench.engines`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.engines import Engine, as_engine
from workbench.features.definitions import PAYING_FILTER, SOURCES
from workbench.features.offline import (
    AS_OF,
    DAY_US,
    data_horizon,
    to_us,
    to_utc,
    with_optional_tables,
)

CHURN_HORIZONS: tuple[int, ...] = (30, 90, 180)
RECOVERY_HORIZONS: tuple[int, ...] = (7, 14, 30)


def _observed_until_us(con: duckdb.DuckDBPyConnection | Engine, observed_until) -> int | None:
    t = data_horizon(con) if observed_until is None else to_utc([observed_until]).iloc[0]
    return None if t is None else int(to_us(pd.Series([t]))[0])


def _nullable(flags: np.ndarray, defined: np.ndarray) -> pd.Series:
    out = pd.array(flags.astype(np.int8), dtype="Int8")
    out[~defined] = pd.NA
    return pd.Series(out)


def churn_labels(
    con: duckdb.DuckDBPyConnection | Engine,
    spine: pd.DataFrame,
    *,
    horizons: Sequence[int] = CHURN_HORIZONS,
    observed_until=None,
    relations: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Add ``churn_<h>d`` labels (Int8: 1, 0 or missing) to an account spine.

    Args:
        con: Warehouse connection or engine.
        spine: Needs ``account_id`` and ``as_of``.
        horizons: Window lengths in days.
        observed_until: Last time the data covers; default the warehouse's data horizon.
        relations: Table overrides (as for ``build_features``).

    Returns:
        The spine plus ``paying_at_as_of`` (bool) and one ``churn_<h>d`` column per horizon.
    """
    n = len(spine)
    as_of_us = to_us(spine[AS_OF]) if n else np.zeros(0, dtype=np.int64)
    times = {"t0": as_of_us} | {f"h{h}": as_of_us + h * DAY_US for h in horizons}
    keys = spine["account_id"].astype("string").to_numpy(na_value=None)
    rows = np.tile(np.arange(n, dtype=np.int64), len(times))
    tags = np.repeat(np.arange(len(times), dtype=np.int64), n)
    t_us = np.concatenate(list(times.values())) if n else np.zeros(0, dtype=np.int64)
    probe = pa.table(
        {
            "_row": pa.array(rows),
            "_tag": pa.array(tags),
            "t_us": pa.array(t_us),
            "account_id": pa.array(np.tile(keys, len(times)), type=pa.string()),
        }
    )
    name = f"_wb_probe_{uuid.uuid4().hex[:12]}"
    src = SOURCES["subscription_items"].render(relations)
    engine = as_engine(con)
    engine.register(name, probe)
    try:
        hit = engine.execute(
            f"SELECT DISTINCT p._row, p._tag FROM {name} p JOIN ({src}) e "
            f"ON e.account_id = p.account_id AND e.ts_us <= p.t_us "
            f"AND (e.valid_to_us IS NULL OR e.valid_to_us > p.t_us) WHERE {PAYING_FILTER}"
        ).fetchnumpy()
    finally:
        engine.unregister(name)
    paying = np.zeros((len(times), n), dtype=bool)
    paying[hit["_tag"].astype(np.int64), hit["_row"].astype(np.int64)] = True
    limit = _observed_until_us(con, observed_until)
    out = spine.reset_index(drop=True).copy()
    out["paying_at_as_of"] = paying[0]
    for i, h in enumerate(horizons, start=1):
        elapsed = np.zeros(n, dtype=bool) if limit is None else as_of_us + h * DAY_US <= limit
        out[f"churn_{h}d"] = _nullable(~paying[i], paying[0] & elapsed)
    return out


def recovery_labels(
    con: duckdb.DuckDBPyConnection | Engine,
    spine: pd.DataFrame,
    *,
    horizons: Sequence[int] = RECOVERY_HORIZONS,
    observed_until=None,
    relations: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Add ``recovered_<h>d`` labels (Int8) to a failed-invoice spine.

    Args:
        con: Warehouse connection or engine.
        spine: Needs ``invoice_id`` and ``as_of`` (e.g. from ``recovery_spine``).
        horizons: Window lengths in days.
        observed_until: Last time the data covers; default the warehouse's data horizon.
        relations: Table overrides.

    Returns:
        The spine plus ``paid_at_effective`` (payment time or NaT) and one
        ``recovered_<h>d`` column per horizon (missing where the window has not elapsed, and
        for rows already paid at ``as_of``).
    """
    n = len(spine)
    as_of_us = to_us(spine[AS_OF]) if n else np.zeros(0, dtype=np.int64)
    ids = pa.array(spine["invoice_id"].astype("string").to_numpy(na_value=None), type=pa.string())
    name = f"_wb_probe_{uuid.uuid4().hex[:12]}"
    engine = as_engine(con)
    src = SOURCES["invoice_payments"].render(
        with_optional_tables(engine, relations, {"charge_versions"})
    )
    engine.register(
        name, pa.table({"_row": pa.array(np.arange(n, dtype=np.int64)), "invoice_id": ids})
    )
    try:
        got = engine.execute(
            f"SELECT p._row, e.ts_us FROM {name} p JOIN ({src}) e ON e.invoice_id = p.invoice_id"
        ).fetchnumpy()
    finally:
        engine.unregister(name)
    paid_us = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    paid_us[got["_row"].astype(np.int64)] = got["ts_us"].astype(np.int64)
    known = paid_us != np.iinfo(np.int64).max
    limit = _observed_until_us(con, observed_until)
    out = spine.reset_index(drop=True).copy()
    paid = pd.to_datetime(np.where(known, paid_us, 0), unit="us", utc=True)
    out["paid_at_effective"] = pd.Series(paid).where(known).astype("datetime64[us, UTC]")
    open_at_t = paid_us > as_of_us
    for h in horizons:
        end = as_of_us + h * DAY_US
        elapsed = np.zeros(n, dtype=bool) if limit is None else end <= limit
        out[f"recovered_{h}d"] = _nullable(paid_us <= end, open_at_t & elapsed)
    return out


def label_columns(frame: pd.DataFrame) -> list[str]:
    """The label columns (``churn_*d``, ``recovered_*d``) of a frame, in order."""
    return [
        c
        for c in frame.columns
        if (c.startswith("churn_") or c.startswith("recovered_")) and c.endswith("d")
    ]
