"""MRR per day: the dashboard trend and per-account drill-down.

Month-end is the primary grain (``engine.py``); these functions reuse the engine's
first stages (policy evaluation and change points) and then read the MRR in force at
the end of each day. Each account's value is rounded half-even to minor units at each
change (as at month-end). Conversion to the reporting currency happens per day and
currency on the day's totals at the latest rate on or before that day (or at the
policy's fixed rate date), so a daily total on a month's last day can differ by a few
minor units from the sum of the account-month table, which converts per account.

The SQL is DuckDB's dialect, written (like the engine's) so that :mod:`workbench.engines`
transpiles it to Spark SQL with the same integers: pass a
:class:`~workbench.engines.SparkEngine` as ``con`` to run it on Spark.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date

import pandas as pd
import pyarrow as pa

from .engine import (
    RATE_SCALE,
    SCALE,
    THREE_DECIMAL,
    ZERO_DECIMAL,
    Connection,
    _conv,
    _default_end,
    _ident,
    _stage_sql,
    currency_exponent,
    hdiv_fast,
)
from .policies import Policy, get_policy

_STATIC_SEGMENTS = ("region", "channel", "industry", "size", "country")


def _pow_case(col: str) -> str:
    zero = ", ".join(f"'{c}'" for c in ZERO_DECIMAL)
    three = ", ".join(f"'{c}'" for c in THREE_DECIMAL)
    return f"CASE WHEN {col} IN ({zero}) THEN 1 WHEN {col} IN ({three}) THEN 1000 ELSE 100 END"


def _prepare(con: Connection, pol: Policy, hist: str, p: str, rep: str) -> None:
    end_m = _default_end(con, hist, pol)
    stages, _ = _stage_sql(pol, hist=hist, p=p, end_m=end_m, rep=rep)
    for name, sql in stages:
        if name in ("ids", "sids", "ver", "seg", "chg"):
            con.execute(sql)
    con.execute(f"""
CREATE TEMP TABLE {p}_dv AS
WITH ac AS (
  SELECT akey, currency, ts, sum(dv) AS dv FROM {p}_chg GROUP BY akey, currency, ts
),
cum AS (
  SELECT akey, currency, ts, sum(dv) OVER (PARTITION BY akey, currency ORDER BY ts ROWS UNBOUNDED PRECEDING) AS val
  FROM ac
),
rounded AS (
  SELECT akey, currency, CAST(ts AS DATE) AS day, arg_max(val, ts) AS val
  FROM cum GROUP BY akey, currency, CAST(ts AS DATE)
)
SELECT akey, currency, day, CAST({hdiv_fast("val", str(SCALE))} AS BIGINT) AS close_n, val > 0 AS paying
FROM rounded
""")


def _days_sql(start: date | str, end: date | str) -> str:
    """SQL: one row per day (column ``day``) from ``start`` to ``end``, both included."""
    first, last = pd.Timestamp(start).date(), pd.Timestamp(end).date()
    return (
        f"SELECT CAST(r AS DATE) AS day FROM (SELECT unnest(generate_series("
        f"CAST(DATE '{first}' AS TIMESTAMP), CAST(DATE '{last}' AS TIMESTAMP), "
        f"INTERVAL 1 DAY)) AS r) t"
    )


def _cleanup(con: Connection, p: str) -> None:
    for name in ("ids", "sids", "ver", "seg", "chg", "dv"):
        con.execute(f"DROP TABLE IF EXISTS {p}_{name}")


def _rate_cte(pol: Policy, rep: str, days_table: str) -> str:
    rate_day = "d.day" if pol.fx_rate_date == "month_end" else f"DATE '{pol.fx_rate_date}'"
    return f"""
rates AS (
  SELECT d.day, c.currency,
    CASE WHEN c.currency = 'usd' THEN CAST({RATE_SCALE} AS BIGINT)
         ELSE CAST(CAST(arg_max(f.rate_to_usd, f.date) AS DECIMAL(38, 9)) * {RATE_SCALE} AS BIGINT) END AS rate_int
  FROM {days_table} d CROSS JOIN (SELECT DISTINCT currency FROM series UNION SELECT '{rep}') c
  LEFT JOIN fx_rates f ON lower(f.currency) = c.currency AND f.date <= {rate_day}
  GROUP BY d.day, c.currency
)"""


def daily_mrr(
    con: Connection,
    *,
    policy: str | Policy = "stripe",
    reporting_currency: str = "usd",
    start: date | str,
    end: date | str,
    by: Sequence[str] = (),
    history_table: str = "subscription_history",
) -> pd.DataFrame:
    """Total MRR at the end of every day in ``[start, end]``, optionally by segment.

    Args:
        con: a DuckDB connection or an engine (:class:`~workbench.engines.SparkEngine`)
            holding the canonical tables (see :func:`~.engine.build_account_months`).
        by: static account segments from ``accounts`` (region, channel, industry, size,
            country); the native currency is always a key of the result.

    Returns:
        ``day, *by, currency, mrr_native, mrr, paying_accounts`` (one row per day,
        segment value and currency; ``mrr`` in reporting minor units).
    """
    pol = get_policy(policy)
    rep = reporting_currency.lower()
    by = list(by)
    bad = [c for c in by if c not in _STATIC_SEGMENTS]
    if bad:
        raise ValueError(f"daily_mrr segments must be among {_STATIC_SEGMENTS}, not {bad}")
    hist = _ident(history_table)
    p = f"_rev_d_{uuid.uuid4().hex[:10]}"
    seg_sel = ", ".join(f"ac.{c}" for c in by)
    seg_key = ", ".join(by)
    e_rep = 10 ** currency_exponent(rep)
    conv = _conv("s.mrr_native", "rc.rate_int", "rr.rate_int", "s.pow_c", str(e_rep))
    try:
        _prepare(con, pol, hist, p, rep)
        sql = f"""
WITH deltas AS (
  SELECT d.day, d.currency{", " + seg_sel if by else ""},
    d.close_n - coalesce(LAG(d.close_n) OVER w, 0) AS dn,
    CAST(d.paying AS INTEGER) - coalesce(CAST(LAG(d.paying) OVER w AS INTEGER), 0) AS dp
  FROM {p}_dv d JOIN {p}_ids i ON i.akey = d.akey LEFT JOIN accounts ac ON ac.account_id = i.account_id
  WINDOW w AS (PARTITION BY d.akey, d.currency ORDER BY d.day)
),
per_day AS (
  SELECT day, currency{", " + seg_key if by else ""}, sum(dn) AS dn, sum(dp) AS dp
  FROM deltas GROUP BY ALL
),
keys AS (SELECT DISTINCT currency{", " + seg_key if by else ""} FROM per_day),
days AS ({_days_sql(start, end)}),
before AS (
  SELECT currency{", " + seg_key if by else ""}, sum(dn) AS n0, sum(dp) AS p0
  FROM per_day WHERE day < DATE '{pd.Timestamp(start).date()}' GROUP BY ALL
),
grid AS (
  SELECT days.day, keys.* FROM days CROSS JOIN keys
),
series AS (
  SELECT g.day, g.currency{", " + ", ".join("g." + c for c in by) if by else ""},
    coalesce(b.n0, 0) + sum(coalesce(pdy.dn, 0)) OVER w AS mrr_native,
    coalesce(b.p0, 0) + sum(coalesce(pdy.dp, 0)) OVER w AS paying_accounts
  FROM grid g
  LEFT JOIN per_day pdy ON pdy.day = g.day AND pdy.currency = g.currency
    {" ".join(f"AND pdy.{c} IS NOT DISTINCT FROM g.{c}" for c in by)}
  LEFT JOIN before b ON b.currency = g.currency {" ".join(f"AND b.{c} IS NOT DISTINCT FROM g.{c}" for c in by)}
  WINDOW w AS (PARTITION BY g.currency{", " + ", ".join("g." + c for c in by) if by else ""} ORDER BY g.day)
),
{_rate_cte(pol, rep, "days")}
SELECT s.day{", " + ", ".join("s." + c for c in by) if by else ""}, s.currency,
  CAST(s.mrr_native AS BIGINT) AS mrr_native,
  CAST(CASE WHEN s.currency = '{rep}' THEN CAST(s.mrr_native AS BIGINT) ELSE {conv} END
    AS BIGINT) AS mrr,
  CAST(s.paying_accounts AS BIGINT) AS paying_accounts
FROM (SELECT *, {_pow_case("currency")} AS pow_c FROM series) s
JOIN rates rc ON rc.day = s.day AND rc.currency = s.currency
JOIN rates rr ON rr.day = s.day AND rr.currency = '{rep}'
WHERE s.mrr_native <> 0 OR s.paying_accounts <> 0
ORDER BY s.day{", " + ", ".join("s." + c for c in by) if by else ""}, s.currency
"""
        out = con.execute(sql).df()
    finally:
        _cleanup(con, p)
    if out["mrr"].isna().any():
        missing = sorted(out.loc[out["mrr"].isna(), "currency"].unique())
        raise ValueError(f"fx_rates lacks rates for {missing} in the requested days")
    return out


def account_day_mrr(
    con: Connection,
    *,
    account_ids: Sequence[str],
    policy: str | Policy = "stripe",
    start: date | str,
    end: date | str,
    history_table: str = "subscription_history",
) -> pd.DataFrame:
    """MRR at the end of every day for a few accounts (drill-down), native currency.

    Args:
        con: a DuckDB connection or an engine holding the canonical tables.
        account_ids: the accounts to show.

    Returns:
        ``day, account_id, currency, mrr_native`` for each day in ``[start, end]`` on
        which the account has a value (zero days after a churn are included until the
        account's next change or the end of the range).
    """
    pol = get_policy(policy)
    hist = _ident(history_table)
    p = f"_rev_d_{uuid.uuid4().hex[:10]}"
    ids = pa.table({"account_id": pa.array(list(account_ids), pa.string())})
    try:
        _prepare(con, pol, hist, p, "usd")
        con.register(f"{p}_want", ids)
        out = con.execute(f"""
WITH iv AS (
  SELECT d.akey, d.currency, d.day, d.close_n,
    LEAD(d.day) OVER (PARTITION BY d.akey, d.currency ORDER BY d.day) AS next_day
  FROM {p}_dv d JOIN {p}_ids i ON i.akey = d.akey JOIN {p}_want w ON w.account_id = i.account_id
),
days AS ({_days_sql(start, end)})
SELECT days.day, i.account_id, iv.currency, iv.close_n AS mrr_native
FROM iv JOIN {p}_ids i ON i.akey = iv.akey
JOIN days ON days.day >= iv.day AND days.day < coalesce(iv.next_day, DATE '9999-01-01')
ORDER BY i.account_id, days.day
""").df()
    finally:
        con.unregister(f"{p}_want")
        _cleanup(con, p)
    return out
