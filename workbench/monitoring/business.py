"""Business monitoring: tie model and pipeline health to money.

Pure reads of the warehouse (a read-only connection is enough):

- :func:`forecast_vs_realized`: every past forecast (table ``forecasts``, one set of rows per
  run) against the MRR realized since (``mrr_account_months``, newest run), per month.
- :func:`failed_payment_rates`: first-charge failure rate per month and spikes against the
  trailing median.
- :func:`recovery_by_cohort`: share of failed invoices paid within N days of their first
  failure, by the month of that failure (only matured cohorts count).
- :func:`replay_write_off_proposals` and :func:`write_off_false_positives`: write-offs the
  dunning policy proposed (replayed day by day, or taken from ``dunning_decisions``) and how
  many of those invoices were paid afterwards.
- :func:`feature_freshness`: age of the newest offline and online feature values.

:func:`business_metrics` condenses them into the metric names the alert rules watch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from workbench.config import Settings
from workbench.timeutil import utc_time, utc_time_or_now

log = logging.getLogger(__name__)


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    from workbench.engines import table_names

    return table.lower() in table_names(con)


def newest_event_time(con: duckdb.DuckDBPyConnection) -> pd.Timestamp | None:
    """The newest event time in the warehouse, UTC (None when there are no events).

    Only ``events`` counts: :func:`workbench.features.offline.data_horizon` is the newest
    time of any table (invoices, payments, subscription changes too).
    """
    if not _has_table(con, "events"):
        return None
    value = con.execute("SELECT max(created) FROM events").fetchall()[0][0]
    return None if value is None else utc_time(value)


# --------------------------------------------------------------------------- MRR forecasts


GAP_COLUMNS = [
    "run_id", "unique_id", "ds", "predicted", "realized", "gap", "gap_pct", "breach",
]  # fmt: skip


def realized_mrr(con: duckdb.DuckDBPyConnection, *, scale: float = 100.0) -> pd.DataFrame:
    """Total MRR per month (major units) from the newest run of ``mrr_account_months``.

    The newest month is left out when the data ends inside it (a partial month).
    """
    if not _has_table(con, "mrr_account_months"):
        return pd.DataFrame(columns=["ds", "realized"])
    frame = con.execute(
        """
        WITH newest AS (SELECT run_id FROM mrr_account_months
                        ORDER BY month DESC, run_id DESC LIMIT 1)
        SELECT CAST(month AS TIMESTAMP) AS ds, sum(mrr) / ? AS realized
        FROM mrr_account_months WHERE run_id = (SELECT run_id FROM newest)
        GROUP BY 1 ORDER BY 1
        """,
        [scale],
    ).df()
    horizon = newest_event_time(con)
    if horizon is not None and len(frame):
        month_start = horizon.tz_localize(None).to_period("M").to_timestamp()
        if horizon.tz_localize(None) < month_start + pd.offsets.MonthEnd(0):
            frame = frame[frame["ds"] < month_start]
    return frame.reset_index(drop=True)


def forecast_vs_realized(
    con: duckdb.DuckDBPyConnection,
    *,
    model: str = "Forecast",
    unique_id: str = "total",
    threshold: float = 0.05,
    scale: float = 100.0,
) -> pd.DataFrame:
    """Predicted vs realized MRR for every forecast run and every month that has happened.

    Args:
        model: The forecast column (``Forecast``: the selected, reconciled point forecast).
        unique_id: The series (``total``: company MRR).
        threshold: ``breach`` when ``|gap_pct|`` exceeds it (0.05 = 5%).
        scale: Minor to major units (forecasts are in major units).

    Returns:
        :data:`GAP_COLUMNS`, one row per (run, month) with a realized value; empty when no
        forecast month has happened yet.
    """
    if not _has_table(con, "forecasts"):
        return pd.DataFrame(columns=GAP_COLUMNS)
    cols = {r[0] for r in con.execute("DESCRIBE forecasts").fetchall()}
    if model not in cols:
        raise ValueError(f"forecasts has no column {model!r}; columns: {sorted(cols)}")
    pred = con.execute(
        f'SELECT run_id, unique_id, CAST(ds AS TIMESTAMP) AS ds, "{model}" AS predicted '
        "FROM forecasts WHERE unique_id = ?",
        [unique_id],
    ).df()
    real = realized_mrr(con, scale=scale)
    if pred.empty or real.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    pred["ds"] = pd.to_datetime(pred["ds"]).dt.tz_localize(None)
    real["ds"] = pd.to_datetime(real["ds"]).dt.tz_localize(None)
    out = pred.merge(real, on="ds", how="inner")
    out["gap"] = out["predicted"] - out["realized"]
    out["gap_pct"] = out["gap"] / out["realized"].where(out["realized"] != 0)
    out["breach"] = out["gap_pct"].abs() > threshold
    return out[GAP_COLUMNS].sort_values(["run_id", "ds"]).reset_index(drop=True)


# --------------------------------------------------------------------------- payments


def failed_payment_rates(
    con: duckdb.DuckDBPyConnection,
    *,
    window: int = 6,
    spike_ratio: float = 1.5,
    min_failed: int = 5,
) -> pd.DataFrame:
    """First-charge failure rate per month, with a spike flag.

    A month spikes when its rate is at least ``spike_ratio`` times the median of the
    ``window`` months before it and at least ``min_failed`` charges failed (a few failures
    in a small month are noise, not an outage).

    Returns:
        ``month, attempts, failed, rate, trailing_median, ratio, spike``.
    """
    cols = ["month", "attempts", "failed", "rate", "trailing_median", "ratio", "spike"]
    if not _has_table(con, "payment_attempts"):
        return pd.DataFrame(columns=cols)
    frame = con.execute(
        """
        WITH firsts AS (
            SELECT invoice_id, arg_min(status, created) AS status, min(created) AS created
            FROM payment_attempts WHERE invoice_id IS NOT NULL GROUP BY invoice_id
        )
        SELECT CAST(date_trunc('month', created) AS TIMESTAMP) AS month, count(*) AS attempts,
               count(*) FILTER (WHERE status = 'failed') AS failed
        FROM firsts GROUP BY 1 ORDER BY 1
        """
    ).df()
    frame["rate"] = frame["failed"] / frame["attempts"]
    frame["trailing_median"] = (
        frame["rate"].shift(1).rolling(window, min_periods=max(2, window // 2)).median()
    )
    frame["ratio"] = frame["rate"] / frame["trailing_median"].where(frame["trailing_median"] > 0)
    frame["spike"] = (frame["ratio"] >= spike_ratio) & (frame["failed"] >= min_failed)
    return frame[cols]


def recovery_by_cohort(
    con: duckdb.DuckDBPyConnection,
    *,
    days: int = 30,
    as_of=None,  # noqa: ANN001
) -> pd.DataFrame:
    """Dunning recovery: share of failed invoices paid within ``days`` of the first failure,
    by the month of the first failure.

    Returns:
        ``cohort, failed_invoices, recovered, recovery_rate, matured`` (a cohort is matured
        when its last member's window has closed by ``as_of``, default the newest event).
    """
    cols = ["cohort", "failed_invoices", "recovered", "recovery_rate", "matured"]
    if not (_has_table(con, "payment_attempts") and _has_table(con, "invoices")):
        return pd.DataFrame(columns=cols)
    as_of = utc_time(as_of, what="as_of") if as_of is not None else newest_event_time(con)
    frame = con.execute(
        """
        WITH first_fail AS (
            SELECT invoice_id, min(created) AS failed_at FROM payment_attempts
            WHERE status = 'failed' AND invoice_id IS NOT NULL GROUP BY invoice_id
        )
        SELECT CAST(date_trunc('month', f.failed_at) AS TIMESTAMP) AS cohort,
               count(*) AS failed_invoices,
               count(*) FILTER (WHERE i.paid_at IS NOT NULL
                                AND i.paid_at <= f.failed_at + to_days(CAST(? AS INTEGER)))
                   AS recovered,
               max(f.failed_at) AS last_failure
        FROM first_fail f JOIN invoices i USING (invoice_id)
        GROUP BY 1 ORDER BY 1
        """,
        [days],
    ).df()
    frame["recovery_rate"] = frame["recovered"] / frame["failed_invoices"]
    last = pd.to_datetime(frame["last_failure"], utc=True)
    cohort_end = pd.to_datetime(frame["cohort"]).dt.tz_localize("UTC") + pd.offsets.MonthEnd(1)
    frame["matured"] = (
        (cohort_end + pd.Timedelta(days=days) <= as_of) if as_of is not None else False
    ) & last.notna()
    return frame[cols]


# --------------------------------------------------------------------------- write-offs


def replay_write_off_proposals(
    con: duckdb.DuckDBPyConnection,
    *,
    policy,  # noqa: ANN001 - workbench.policy.Policy
    days: Sequence,
    reporting_currency: str = "usd",
) -> pd.DataFrame:
    """Write-offs the dunning policy would have proposed on each of ``days``: a replay
    (:func:`workbench.dunning.decide_daily`) narrowed to ``propose_write_off``.

    Returns:
        ``invoice_id, account_id, as_of, amount_due_reporting`` (the first proposal per
        invoice).
    """
    from workbench.dunning import decide_daily
    from workbench.failed_invoices import open_failed_invoices_on

    cols = ["invoice_id", "account_id", "as_of", "amount_due_reporting"]
    days = sorted({utc_time(day, what="day") for day in days})  # a day given twice: once
    history = open_failed_invoices_on(con, days=days, reporting_currency=reporting_currency)
    decided = decide_daily(history, policy=policy)
    if decided.empty:
        return pd.DataFrame(columns=cols)
    hit = decided[decided["action"] == "propose_write_off"]  # in day order
    return hit.drop_duplicates("invoice_id", keep="first")[cols].reset_index(drop=True)


def stored_write_off_proposals(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Write-off proposals recorded by the dunning notebook (``dunning_decisions``)."""
    cols = ["invoice_id", "account_id", "as_of", "amount_due_reporting"]
    if not _has_table(con, "dunning_decisions"):
        return pd.DataFrame(columns=cols)
    have = {r[0] for r in con.execute("DESCRIBE dunning_decisions").fetchall()}
    if not {"invoice_id", "account_id", "as_of", "action", "amount_due_reporting"} <= have:
        log.warning("dunning_decisions lacks the expected columns: stored proposals skipped")
        return pd.DataFrame(columns=cols)
    frame = con.execute(
        "SELECT invoice_id, account_id, min(CAST(as_of AS TIMESTAMPTZ)) AS as_of, "
        "any_value(CAST(amount_due_reporting AS BIGINT)) AS amount_due_reporting "
        "FROM dunning_decisions "
        "WHERE action = 'propose_write_off' GROUP BY 1, 2"
    ).df()
    return frame[cols]


def write_off_false_positives(
    con: duckdb.DuckDBPyConnection,
    proposals: pd.DataFrame,
    *,
    maturity_days: int = 30,
    as_of=None,  # noqa: ANN001
) -> pd.DataFrame:
    """Which proposed write-offs were paid later (false positives).

    Only proposals at least ``maturity_days`` old at ``as_of`` (default: the newest event)
    are judged; younger ones are ``matured = False`` and left out of the rate.

    Returns:
        ``proposals`` plus ``paid_at``, ``paid_later``, ``matured``.
    """
    as_of = utc_time(as_of, what="as_of") if as_of is not None else newest_event_time(con)
    out = proposals.copy()
    if out.empty:
        return out.assign(paid_at=pd.Series(dtype="datetime64[ns, UTC]"), paid_later=False,
                          matured=False)  # fmt: skip
    ids = con.execute("SELECT invoice_id, paid_at FROM invoices").df()
    out = out.merge(ids, on="invoice_id", how="left")
    out["as_of"] = pd.to_datetime(out["as_of"], utc=True)
    out["paid_at"] = pd.to_datetime(out["paid_at"], utc=True)
    out["paid_later"] = out["paid_at"].notna() & (out["paid_at"] > out["as_of"])
    out["matured"] = out["as_of"] + pd.Timedelta(days=maturity_days) <= as_of
    return out


def false_positive_rate(outcomes: pd.DataFrame) -> float:
    """Share of matured write-off proposals that were paid later (NaN when none matured)."""
    matured = outcomes[outcomes["matured"]] if len(outcomes) else outcomes
    return float(matured["paid_later"].mean()) if len(matured) else float("nan")


# --------------------------------------------------------------------------- features


def feature_freshness(
    settings: Settings, *, horizon: pd.Timestamp | None = None, sample: int = 20,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Newest offline (serving Parquet) and online (Feast) feature time per entity.

    Returns:
        ``entity, store, newest, age_hours`` (vs ``now``), ``lag_hours`` (vs ``horizon``,
        the warehouse's newest data) and ``rows``. Missing stores give NaT and NaN.
    """
    from workbench.features import serving

    now = utc_time_or_now(now)
    repo = serving.feature_repo(settings)
    rows = []
    for entity in serving.ENTITIES:
        path = Path(repo.parquet_dir) / f"{entity}.parquet"
        offline_newest, online_newest, n = pd.NaT, pd.NaT, 0
        if path.is_file():
            table = pq.read_table(path, columns=[entity, serving.EVENT_TS])
            n = table.num_rows
            if n:
                newest = pd.Series(table.column(serving.EVENT_TS).to_pandas())
                offline_newest = pd.to_datetime(newest, utc=True).max()  # NaT: no times
                ids = [str(x) for x in table.column(entity).to_pylist()[:sample]]
                online_newest = _online_newest(settings, entity, ids, now)
        for store, newest in (("offline", offline_newest), ("online", online_newest)):
            rows.append({"entity": entity, "store": store, "newest": newest, "rows": n})
    out = pd.DataFrame(rows)
    out["newest"] = pd.to_datetime(out["newest"], utc=True)
    out["age_hours"] = (now - out["newest"]).dt.total_seconds() / 3600
    out["lag_hours"] = (
        (horizon - out["newest"]).dt.total_seconds() / 3600 if horizon is not None else np.nan
    )
    return out[["entity", "store", "newest", "age_hours", "lag_hours", "rows"]]


def _online_newest(settings: Settings, entity: str, ids: list[str], now: pd.Timestamp):  # noqa: ANN202
    from workbench.features import serving
    from workbench.features.definitions import get_features

    feats = [f.name for f in get_features(entity=entity)][:3]
    if not ids or not feats:
        return pd.NaT
    try:
        got = serving.online(ids, feats, settings=settings, now=now)
    except Exception as exc:  # noqa: BLE001 - a missing/broken online store is "not fresh"
        log.warning("online store for %s unreadable: %s", entity, exc)
        return pd.NaT
    return got.freshness[serving.EVENT_TS].max()


# --------------------------------------------------------------------------- metrics


def business_metrics(
    *,
    gaps: pd.DataFrame | None = None,
    payments: pd.DataFrame | None = None,
    recovery: pd.DataFrame | None = None,
    write_offs: pd.DataFrame | None = None,
    freshness: pd.DataFrame | None = None,
    min_failed: int = 5,
    min_cohort: int = 10,
) -> dict[str, float]:
    """The metric values the alert rules watch (missing inputs are left out).

    Months with fewer than ``min_failed`` failed charges and dunning cohorts with fewer
    than ``min_cohort`` invoices are too small to judge and are skipped.

    ``mrr_forecast_gap``: largest ``|gap_pct|`` of the newest forecast run (latest first
    forecast month) with realized months; ``failed_payment_rate_ratio``: the latest month's ratio to its trailing median;
    ``dunning_recovery_rate``: the newest matured cohort's rate;
    ``write_off_false_positive_rate``; ``feature_lag_hours``: the online store's largest lag.
    """
    out: dict[str, float] = {}
    if gaps is not None and len(gaps):
        starts = gaps.groupby("run_id")["ds"].min().reset_index()
        latest = starts.sort_values(["ds", "run_id"])["run_id"].iloc[-1]  # the newest forecast
        newest = gaps[gaps["run_id"] == latest]
        out["mrr_forecast_gap"] = float(newest["gap_pct"].abs().max())
    if payments is not None:
        last = payments.tail(1)
        if len(last) and pd.notna(last["ratio"].iloc[0]) and last["failed"].iloc[0] >= min_failed:
            out["failed_payment_rate_ratio"] = float(last["ratio"].iloc[0])
    if recovery is not None:
        ripe = recovery[recovery["matured"] & (recovery["failed_invoices"] >= min_cohort)]
        if len(ripe):
            out["dunning_recovery_rate"] = float(ripe["recovery_rate"].iloc[-1])
    if write_offs is not None and len(write_offs):
        rate = false_positive_rate(write_offs)
        if not np.isnan(rate):
            out["write_off_false_positive_rate"] = rate
    if freshness is not None and len(freshness):
        online = freshness[freshness["store"] == "online"]
        lag = online["lag_hours"]
        if online["newest"].isna().any() and online["rows"].gt(0).any():
            out["feature_lag_hours"] = float("inf")
        elif lag.notna().any():
            out["feature_lag_hours"] = float(lag.max())
    return out
