"""The MRR engine: subscription history in, account-month MRR and movements out.

Everything here is set-based SQL generated from a :class:`~.policies.Policy` and run
on the warehouse engine (DuckDB by default). No Python loops over accounts.

How it works, one temp table per stage (names prefixed, dropped at the end):

1. ``ver``  one row per subscription version: items summed to a gross monthly value.
2. ``seg``  each version cut where its value can change without a new version (trial
   end, discount start/end, past-due grace deadline, end of a paid period, ended_at),
   and the policy evaluated at the start of each piece: value and "counting" flag.
3. ``chg``  change points per (account, currency, plan): +value at a piece's start,
   -value at its end, summed per instant, running total = MRR after the change.
4. ``acm``  a dense (account, currency, month) grid from the first paid month to the
   month after the last one, with the MRR at the policy's snapshot instant.
5. ``ev``   (event timing) every account-level change classified when it happens
   (new / reactivation / expansion / contraction / churn) and summed per month.
6. the account-month table: rounding, FX, movements, segments.

Money is exact: values are carried as HUGEINT in units of ``1 / SCALE`` minor units,
``SCALE = 12 * 27720 * 10**6``. Monthly normalisation (amount * 12 / (12 * count),
/ (12 * count), * 52 / (12 * count), * 365 / (12 * count) for month, year, week, day)
and percent discounts (ppm) are then exact integers for every interval_count that
divides 27720 (1-12, 14, 15, 18, 20, 21, 22, 24, 28, 30, 33, 35, 36 ...); other counts
round half-even at 1 / SCALE of a minor unit. Each account-month's MRR is rounded
half-even to integer minor units of its currency once, converted to the reporting
currency with integer arithmetic (half-even again), and every movement is derived
from those integers, so the bridge is exact on the rounded numbers.

The SQL is DuckDB's dialect, written so that :mod:`workbench.engines` can transpile it
to Spark SQL with the same integers (no ``range()`` table function, no ``EXCLUDE``, no
correlated subqueries with inequalities, ordered ``row_number()``, quoted ``"interval"``):
pass a :class:`~workbench.engines.SparkEngine` as ``con`` to run it on Spark.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import date

import duckdb
import pandas as pd

from ..engines import Engine
from .policies import Policy, get_policy

log = logging.getLogger(__name__)

L_COUNTS = 27720  # lcm(1..12)
PPM = 1_000_000
SCALE = 12 * L_COUNTS * PPM  # exact-value units per minor unit
INF = "TIMESTAMP '9999-12-31 00:00:00'"
NEG_INF = "TIMESTAMP '0001-01-01 00:00:00'"
RATE_SCALE = 1_000_000_000  # fx_rates.rate_to_usd is DECIMAL(18, 9)

# ISO 4217 minor-unit exponents that are not 2 (Stripe's zero- and three-decimal lists)
ZERO_DECIMAL = (
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
    "vuv", "xaf", "xof", "xpf",
)  # fmt: skip
THREE_DECIMAL = ("bhd", "jod", "kwd", "omr", "tnd")

MOVEMENTS = ("new", "expansion", "contraction", "churn", "reactivation", "fx")
ACCOUNT_MONTH_COLUMNS = (
    "month", "account_id", "currency", "mrr_native", "opening_mrr", "new_mrr",
    "expansion_mrr", "contraction_mrr", "churn_mrr", "reactivation_mrr", "fx_mrr", "mrr",
    "movement", "new_logo", "churned_logo", "reactivated_logo", "is_paying", "is_customer",
    "cohort_month", "plan", "region", "channel", "industry", "size", "country",
    "account_currency", "reporting_currency", "rate_date", "policy", "policy_version",
)  # fmt: skip

#: a DuckDB connection or any :class:`~workbench.engines.Engine` (e.g. Spark)
Connection = duckdb.DuckDBPyConnection | Engine

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class RevenueError(RuntimeError):
    """The engine cannot produce a trustworthy number (e.g. a missing FX rate)."""


def currency_exponent(currency: str) -> int:
    """Number of decimals of a currency's minor unit (``usd`` 2, ``jpy`` 0, ``kwd`` 3)."""
    c = currency.lower()
    return 0 if c in ZERO_DECIMAL else 3 if c in THREE_DECIMAL else 2


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def hdiv(n: str, d: str) -> str:
    """SQL for ``n / d`` rounded half-even to an integer (HUGEINT; ``d`` > 0, ``n`` any sign).

    Uses ``q = (2|n| + d) // 2d`` (half-up) and steps back on an exact tie with odd ``q``.
    ``n`` and ``d`` should be column names or small expressions: they are repeated.
    """
    a = f"(2 * abs({n}) + ({d}))"
    dd = f"(2 * ({d}))"
    return (
        f"(sign({n}) * ({a} // {dd} - CASE WHEN {a} % {dd} = 0 AND ({a} // {dd}) % 2 = 1 "
        f"THEN 1 ELSE 0 END))"
    )


def hdiv_fast(n: str, d: str, *, limit: str = "4000000000000000000") -> str:
    """Like :func:`hdiv` but in BIGINT when ``|n|`` and ``d`` are below ``limit`` (4e18).

    DuckDB divides HUGEINTs bit by bit; the BIGINT path is an order of magnitude faster
    and gives the same integer. ``d`` must be a BIGINT-sized expression.
    """
    small = hdiv(f"CAST({n} AS BIGINT)", f"CAST({d} AS BIGINT)")
    return (
        f"CASE WHEN abs({n}) < {limit} AND ({d}) < {limit} THEN CAST({small} AS HUGEINT) "
        f"ELSE {hdiv(n, d)} END"
    )


def _k(interval_col: str) -> str:
    """Factor k such that monthly = amount * k / (12 * interval_count)."""
    return (
        f"CASE {interval_col} WHEN 'month' THEN 12 WHEN 'year' THEN 1 "
        f"WHEN 'week' THEN 52 WHEN 'day' THEN 365 ELSE 0 END"
    )


def _normalized(amount: str, interval: str, count: str) -> str:
    """SQL: exact monthly value (in 1/SCALE minor units) of ``amount`` billed every count x interval."""
    c = f"greatest(coalesce({count}, 1), 1)"
    exact = f"(CAST({amount} AS HUGEINT) * (CAST({_k(interval)} AS BIGINT) * ({L_COUNTS} // {c}) * {PPM}))"
    num = f"(CAST({amount} AS HUGEINT) * ({_k(interval)}) * {L_COUNTS * PPM})"
    return (
        f"CASE WHEN {L_COUNTS} % {c} = 0 THEN {exact} ELSE {hdiv(num, f'CAST({c} AS HUGEINT)')} END"
    )


def _add_interval(ts: str, interval: str, count: str) -> str:
    c = f"coalesce({count}, 1)"
    return (
        f"CASE {interval} WHEN 'month' THEN {ts} + to_months({c}) "
        f"WHEN 'year' THEN {ts} + to_years({c}) WHEN 'week' THEN {ts} + to_days(7 * {c}) "
        f"WHEN 'day' THEN {ts} + to_days({c}) ELSE {ts} + to_months(1) END"
    )


def _bucket(ts: str, snapshot: str) -> str:
    """SQL: the month whose snapshot is the first to see a change made at ``ts``."""
    if snapshot == "month_end":
        return f"CAST(date_trunc('month', {ts}) AS DATE)"
    return (
        f"CAST(CASE WHEN {ts} = date_trunc('month', {ts}) THEN date_trunc('month', {ts}) "
        f"ELSE date_trunc('month', {ts}) + INTERVAL 1 MONTH END AS DATE)"
    )


def _utc(col: str) -> str:
    return f"timezone('UTC', {col})"


def _month(value: date | str | None) -> date | None:
    if value is None:
        return None
    d = date.fromisoformat(value) if isinstance(value, str) else value
    return date(d.year, d.month, 1)


@dataclass(frozen=True)
class MrrRun:
    """What :func:`build_account_months` made: where the table is and how it was made."""

    table: str
    policy: Policy
    reporting_currency: str
    start: date
    end: date
    fx_rate_date: str
    rows: int


def build_account_months(
    con: Connection,
    *,
    policy: str | Policy = "stripe",
    reporting_currency: str = "usd",
    start: date | str | None = None,
    end: date | str | None = None,
    fx_rate_date: str | None = None,
    history_table: str = "subscription_history",
    into: str = "mrr_account_month",
) -> MrrRun:
    """Compute MRR and movements per account-month into a TEMP table.

    Reads ``history_table`` (the canonical ``subscription_history``), ``prices``
    (plan names), ``accounts`` (segments) and ``fx_rates``. The table has the columns
    of :data:`ACCOUNT_MONTH_COLUMNS`: one row per account and month from the
    account's first paid month to the month after its last (gap months included,
    with zero MRR). Money columns are integer minor units of ``reporting_currency``;
    contraction and churn are negative. Per row:
    ``opening_mrr + new + expansion + contraction + churn + reactivation + fx = mrr``
    and ``opening_mrr`` equals the previous month's ``mrr``.

    Args:
        con: a DuckDB connection holding the canonical tables.
        policy: a policy name, ``name@version`` or :class:`Policy`.
        reporting_currency: ISO code, lower case.
        start: first month to keep (earlier months still feed opening balances).
        end: last month; default the month of the latest change in the history.
        fx_rate_date: overrides the policy's rate date (``month_end`` or an ISO date).
        history_table: table or view with the ``subscription_history`` columns.
        into: name of the TEMP table to (re)create.

    Returns:
        An :class:`MrrRun` naming the table and the parameters used.
    """
    pol = get_policy(policy)
    if fx_rate_date is not None:
        pol = pol.replace(fx_rate_date=fx_rate_date)
    rep = reporting_currency.lower()
    hist = _ident(history_table)
    out = _ident(into)
    p = f"_rev_{uuid.uuid4().hex[:10]}"
    end_m = _month(end)
    if end_m is None:
        end_m = _default_end(con, hist, pol)
    tiered = con.execute(
        f'SELECT count(*) FROM {hist} WHERE unit_amount IS NULL AND "interval" IS NOT NULL '
        "AND coalesce(usage_type, 'licensed') <> 'metered' AND price_id IN "
        "(SELECT price_id FROM prices WHERE unit_amount IS NULL)"
    ).fetchone()[0]
    if tiered:
        log.warning("revenue: %d history rows have licensed prices without unit_amount "
                    "(tiered); they contribute 0 MRR", tiered)  # fmt: skip
    stages, acm_sql = _stage_sql(pol, hist=hist, p=p, end_m=end_m, rep=rep)
    try:
        for name, sql in stages:
            log.debug("revenue stage %s", name)
            con.execute(sql)
        first = con.execute(f"SELECT min(first_m) FROM {p}_ext").fetchone()[0]
        first_m = first if first is not None else end_m
        start_m = _month(start) or first_m
        _build_rates(con, p=p, pol=pol, rep=rep, first_m=first_m, end_m=end_m)
        con.execute(
            _final_sql(pol, p=p, rep=rep, out=out, start_m=start_m, end_m=end_m, acm_sql=acm_sql)
        )
    finally:
        for name in ("ids", "sids", "ver", "seg", "chg", "ext", "acm_iv", "ev", "rates", "months"):
            con.execute(f"DROP TABLE IF EXISTS {p}_{name}")
    rows = con.execute(f"SELECT count(*) FROM {out}").fetchone()[0]
    log.info("revenue: %s rows of %s into %s (%s .. %s)", rows, pol.key, out, start_m, end_m)
    return MrrRun(
        table=out,
        policy=pol,
        reporting_currency=rep,
        start=start_m,
        end=end_m,
        fx_rate_date=pol.fx_rate_date,
        rows=rows,
    )


def account_month_mrr(
    con: Connection,
    *,
    policy: str | Policy = "stripe",
    reporting_currency: str = "usd",
    start: date | str | None = None,
    end: date | str | None = None,
    fx_rate_date: str | None = None,
    history_table: str = "subscription_history",
) -> pd.DataFrame:
    """Like :func:`build_account_months` but return the table as a pandas frame.

    Returns:
        Columns of :data:`ACCOUNT_MONTH_COLUMNS`, sorted by account and month.
    """
    run = build_account_months(
        con,
        policy=policy,
        reporting_currency=reporting_currency,
        start=start,
        end=end,
        fx_rate_date=fx_rate_date,
        history_table=history_table,
        into=f"_rev_df_{uuid.uuid4().hex[:8]}",
    )
    try:
        return con.execute(f"SELECT * FROM {run.table} ORDER BY account_id, month").df()
    finally:
        con.execute(f"DROP TABLE IF EXISTS {run.table}")


def _default_end(con: Connection, hist: str, pol: Policy) -> date:
    row = con.execute(
        f"SELECT max(greatest({_utc('valid_from')}, coalesce({_utc('valid_to')}, {_utc('valid_from')}))) "
        f"FROM {hist}"
    ).fetchone()
    if row is None or row[0] is None:
        return _month(date.today())  # type: ignore[return-value]
    ts = pd.Timestamp(row[0])
    first = date(ts.year, ts.month, 1)
    if pol.snapshot == "month_start" and ts != pd.Timestamp(first):
        # a change inside the month is first seen by the next month's snapshot
        return (pd.Timestamp(first) + pd.DateOffset(months=1)).date()
    return first


def _stage_sql(
    pol: Policy, *, hist: str, p: str, end_m: date, rep: str
) -> tuple[list[tuple[str, str]], str]:
    """The staged CREATE TEMP TABLE statements, and the SELECT of dense account-months."""
    grace = (
        INF
        if pol.past_due_grace_days is None
        else f"pd_since + to_days({int(pol.past_due_grace_days)})"
    )
    durations = ", ".join(f"'{d}'" for d in sorted(pol.discount_durations)) or "NULL"
    trial_counts = "TRUE" if pol.trial_counts else "FALSE"
    paid_through = pol.churn_recognition == "paid_through"
    cancel_request = pol.churn_recognition == "cancel_request"
    track_active = not pol.free_is_churn
    bucket = _bucket("ts", pol.snapshot)

    ids = f"""
CREATE TEMP TABLE {p}_ids AS
SELECT account_id, CAST(row_number() OVER (ORDER BY account_id) AS BIGINT) AS akey
FROM (SELECT DISTINCT account_id FROM {hist})
"""
    sids = f"""
CREATE TEMP TABLE {p}_sids AS
SELECT subscription_id, CAST(row_number() OVER (ORDER BY subscription_id) AS BIGINT) AS skey
FROM (SELECT DISTINCT subscription_id FROM {hist})
"""
    ver = f"""
CREATE TEMP TABLE {p}_ver AS
WITH h AS (
  SELECT sk.skey, ak.akey,
    {_utc("h.valid_from")} AS vf,
    coalesce({_utc("h.valid_to")}, {INF}) AS vt,
    h.status,
    lower(coalesce(h.currency, pr.currency)) AS currency,
    coalesce(h."interval", pr."interval") AS "interval",
    coalesce(h.interval_count, pr.interval_count, 1) AS interval_count,
    coalesce(h.usage_type, pr.usage_type) AS usage_type,
    coalesce(h.unit_amount, pr.unit_amount) AS unit_amount,
    coalesce(h.quantity, 1) AS quantity,
    coalesce(pr.nickname, pr.product_id, h.price_id, '(none)') AS plan,
    {_utc("h.trial_start")} AS trial_start, {_utc("h.trial_end")} AS trial_end,
    {_utc("h.current_period_end")} AS current_period_end,
    {_utc("h.canceled_at")} AS canceled_at, {_utc("h.ended_at")} AS ended_at,
    coalesce(h.cancel_at_period_end, FALSE) AS cancel_at_period_end,
    h.discount_percent_off, h.discount_amount_off, h.discount_duration,
    h.discount_duration_in_months,
    {_utc("h.discount_start")} AS discount_start, {_utc("h.discount_end")} AS discount_end
  FROM {hist} h LEFT JOIN prices pr ON pr.price_id = h.price_id
  JOIN {p}_ids ak ON ak.account_id = h.account_id
  JOIN {p}_sids sk ON sk.subscription_id = h.subscription_id
),
items AS (
  SELECT *,
    CASE WHEN usage_type = 'metered' OR "interval" IS NULL OR unit_amount IS NULL
              OR "interval" NOT IN ('day', 'week', 'month', 'year') THEN CAST(0 AS HUGEINT)
         ELSE {_normalized("unit_amount * quantity", '"interval"', "interval_count")} END AS item_g
  FROM h WHERE vt > vf
)
SELECT skey, vf,
  any_value(akey) AS akey, any_value(vt) AS vt,
  any_value(status) AS status,
  coalesce(max(currency) FILTER (WHERE item_g > 0), max(currency)) AS currency,
  coalesce(max({{'g': item_g, 'p': plan}}).p, '(none)') AS plan,
  sum(item_g) AS gross_g,
  coalesce(max("interval") FILTER (WHERE usage_type IS DISTINCT FROM 'metered'), 'month') AS sub_interval,
  coalesce(max(interval_count) FILTER (WHERE usage_type IS DISTINCT FROM 'metered'), 1) AS sub_count,
  any_value(trial_start) AS trial_start, any_value(trial_end) AS trial_end,
  any_value(current_period_end) AS current_period_end,
  any_value(canceled_at) AS canceled_at, any_value(ended_at) AS ended_at,
  bool_or(cancel_at_period_end) AS cancel_at_period_end,
  any_value(discount_percent_off) AS discount_percent_off,
  any_value(discount_amount_off) AS discount_amount_off,
  any_value(discount_duration) AS discount_duration,
  any_value(discount_duration_in_months) AS discount_duration_in_months,
  any_value(discount_start) AS discount_start, any_value(discount_end) AS discount_end
FROM items GROUP BY skey, vf
"""

    once_end = _add_interval("coalesce(discount_start, vf)", "sub_interval", "sub_count")
    paid_until = (
        "CASE WHEN status = 'canceled' AND prev_status IN ('active', 'past_due') "
        "AND current_period_end > vf THEN current_period_end END"
        if paid_through
        else "CAST(NULL AS TIMESTAMP)"
    )
    cancel_clause = (
        "AND NOT (cancel_at_period_end OR canceled_at IS NOT NULL)" if cancel_request else ""
    )
    seg = f"""
CREATE TEMP TABLE {p}_seg AS
WITH v AS (
  SELECT *,
    LAG(status) OVER (PARTITION BY skey ORDER BY vf) AS prev_status,
    SUM(CASE WHEN status <> 'past_due' THEN 1 ELSE 0 END) OVER (
      PARTITION BY skey ORDER BY vf ROWS UNBOUNDED PRECEDING) AS pd_grp
  FROM {p}_ver
),
v2 AS (
  SELECT *,
    MIN(CASE WHEN status = 'past_due' THEN vf END) OVER (PARTITION BY skey, pd_grp) AS pd_since,
    (discount_percent_off IS NOT NULL OR discount_amount_off IS NOT NULL)
      AND coalesce(discount_duration, 'forever') IN ({durations}) AS disc_on,
    coalesce(discount_start, {NEG_INF}) AS d_from,
    CASE coalesce(discount_duration, 'forever')
      WHEN 'forever' THEN coalesce(discount_end, {INF})
      WHEN 'repeating' THEN coalesce(discount_end,
           discount_start + to_months(discount_duration_in_months), {INF})
      ELSE {once_end} END AS d_to,
    CAST(round(coalesce(discount_percent_off, 0) * 10000) AS HUGEINT) AS ppm,
    CASE WHEN discount_amount_off IS NULL THEN CAST(0 AS HUGEINT)
         ELSE {_normalized("discount_amount_off", "sub_interval", "sub_count")} END AS off_g
  FROM v
),
v3 AS (
  SELECT *, {grace} AS grace_until, {paid_until} AS paid_until FROM v2
),
cuts AS (
  SELECT skey, vf, vf AS t FROM v3
  UNION ALL SELECT skey, vf, trial_start FROM v3 WHERE trial_start > vf AND trial_start < vt
  UNION ALL SELECT skey, vf, trial_end FROM v3 WHERE trial_end > vf AND trial_end < vt
  UNION ALL SELECT skey, vf, d_from FROM v3 WHERE disc_on AND d_from > vf AND d_from < vt
  UNION ALL SELECT skey, vf, d_to FROM v3 WHERE disc_on AND d_to > vf AND d_to < vt
  UNION ALL SELECT skey, vf, grace_until FROM v3
        WHERE status = 'past_due' AND grace_until > vf AND grace_until < vt
  UNION ALL SELECT skey, vf, paid_until FROM v3 WHERE paid_until > vf AND paid_until < vt
  UNION ALL SELECT skey, vf, ended_at FROM v3 WHERE ended_at > vf AND ended_at < vt
),
pieces AS (
  SELECT c.t,
    coalesce(LEAD(c.t) OVER (PARTITION BY c.skey, c.vf ORDER BY c.t), v3.vt) AS t_end,
    v3.*
  FROM cuts c JOIN v3 USING (skey, vf)
),
evald AS (
  SELECT *,
    (trial_end IS NOT NULL AND t < trial_end AND (trial_start IS NULL OR t >= trial_start))
      OR (status = 'trialing' AND trial_end IS NULL) AS in_trial
  FROM pieces WHERE t_end > t
),
counted AS (
  SELECT *,
    (CASE
      WHEN paid_until IS NOT NULL AND t < paid_until THEN TRUE
      WHEN ended_at IS NOT NULL AND t >= ended_at THEN FALSE
      WHEN in_trial THEN {trial_counts}
      WHEN status IN ('active', 'trialing') THEN TRUE
      WHEN status = 'past_due' THEN t < grace_until
      ELSE FALSE END) {cancel_clause} AS counting,
    disc_on AND t >= d_from AND t < d_to AS disc_active
  FROM evald
),
valued AS (
  SELECT akey, currency, plan, t, t_end, counting,
    CASE WHEN NOT counting THEN CAST(0 AS HUGEINT)
         WHEN disc_active AND discount_percent_off IS NOT NULL
           THEN {hdiv("(gross_g * (1000000 - ppm))", "1000000")}
         WHEN disc_active AND discount_amount_off IS NOT NULL
           THEN greatest(gross_g - off_g, CAST(0 AS HUGEINT))
         ELSE gross_g END AS value_g
  FROM counted
)
SELECT akey, currency, plan, t, t_end, value_g,
  {"CASE WHEN counting THEN 1 ELSE 0 END" if track_active else "0"} AS act
FROM valued
WHERE value_g <> 0 {"OR counting" if track_active else ""}
"""

    chg = f"""
CREATE TEMP TABLE {p}_chg AS
WITH d AS (
  SELECT akey, currency, plan, t AS ts, value_g AS dv, act AS da FROM {p}_seg
  UNION ALL
  SELECT akey, currency, plan, t_end, -value_g, -act FROM {p}_seg WHERE t_end < {INF}
),
g AS (
  SELECT akey, currency, plan, ts, sum(dv) AS dv, CAST(sum(da) AS BIGINT) AS da
  FROM d GROUP BY akey, currency, plan, ts
  HAVING sum(dv) <> 0 OR sum(da) <> 0
)
SELECT *,
  sum(dv) OVER w AS val,
  CAST(sum(da) OVER w AS BIGINT) AS nact,
  {bucket} AS bucket
FROM g
WINDOW w AS (PARTITION BY akey, currency, plan ORDER BY ts ROWS UNBOUNDED PRECEDING)
"""

    hs = pol.history_start
    hs_sql = f"DATE '{_month(hs).isoformat()}'" if hs else "DATE '0001-01-01'"
    end_sql = f"DATE '{end_m.isoformat()}'"
    alive = "val > 0" + (" OR nact > 0" if track_active else "")
    first_pos = "min(bucket) FILTER (WHERE val > 0)"
    ext = f"""
CREATE TEMP TABLE {p}_ext AS
WITH km AS (
  SELECT akey, currency, plan, bucket,
    arg_max(val, ts) AS val, arg_max(nact, ts) AS nact
  FROM {p}_chg GROUP BY akey, currency, plan, bucket
),
lastk AS (
  SELECT akey, currency, plan, arg_max(val, ts) AS val, arg_max(nact, ts) AS nact
  FROM {p}_chg GROUP BY akey, currency, plan
),
e1 AS (
  SELECT akey, currency,
    {first_pos if pol.movement_timing == "event" else "NULL"} AS first_ev,
    max(bucket) AS last_change
  FROM {p}_chg GROUP BY akey, currency
),
e2 AS (
  SELECT akey, currency, min(bucket) FILTER (WHERE val > 0) AS first_snap
  FROM km GROUP BY akey, currency
),
e3 AS (
  SELECT akey, currency, bool_or({alive}) AS alive FROM lastk GROUP BY akey, currency
),
e4 AS (
  SELECT e1.akey, e1.currency,
    greatest(coalesce(e1.first_ev, e2.first_snap), {hs_sql}) AS first_m,
    least(CASE WHEN e3.alive THEN {end_sql} ELSE e1.last_change END, {end_sql}) AS last_m
  FROM e1 JOIN e2 USING (akey, currency) JOIN e3 USING (akey, currency)
  WHERE coalesce(e1.first_ev, e2.first_snap) IS NOT NULL
)
SELECT e4.*, ids.account_id,
  min(e4.first_m) OVER (PARTITION BY e4.akey) AS cohort_month,
  count(*) OVER (PARTITION BY e4.akey) AS n_cur,
  ac.region, ac.channel, ac.industry, ac.size, ac.country, lower(ac.currency) AS account_currency
FROM e4 JOIN {p}_ids ids ON ids.akey = e4.akey
LEFT JOIN accounts ac ON ac.account_id = ids.account_id
WHERE e4.first_m <= e4.last_m
"""

    months = f"""
CREATE TEMP TABLE {p}_months AS
SELECT CAST(m AS DATE) AS month
FROM (SELECT unnest(generate_series(
  CAST((SELECT coalesce(min(first_m), {end_sql}) FROM {p}_ext) - INTERVAL 1 MONTH AS TIMESTAMP),
  CAST({end_sql} AS TIMESTAMP), INTERVAL 1 MONTH)) AS m) r
"""

    first = "m.month = e.first_m"

    cats = ("new", "expansion", "contraction", "churn", "reactivation")
    if pol.movement_timing == "event":
        iv_ev_cols = ", ".join(
            [
                *(
                    f"CASE WHEN coalesce(ev.{c}_g, 0) = 0 THEN CAST(0 AS BIGINT) "
                    f"ELSE CAST({hdiv_fast(f'ev.{c}_g', str(SCALE))} AS BIGINT) END AS {c}_n"
                    for c in cats
                ),
                "coalesce(ev.n_new, 0) AS n_new",
                "coalesce(ev.n_churn, 0) AS n_churn",
                "coalesce(ev.n_react, 0) AS n_react",
            ]
        )
        iv_ev_join = f"LEFT JOIN {p}_ev ev ON ev.akey = ivp.akey AND ev.currency = ivp.currency AND ev.month = ivp.bucket"
    else:
        iv_ev_cols = ", ".join(
            [
                *(f"CAST(0 AS BIGINT) AS {c}_n" for c in cats),
                "0 AS n_new",
                "0 AS n_churn",
                "0 AS n_react",
            ]
        )
        iv_ev_join = ""
    ev_dense = ", ".join(
        f"CASE WHEN m.month = iv.bucket THEN iv.{c} ELSE 0 END AS {c}"
        for c in (*(f"{c}_n" for c in cats), "n_new", "n_churn", "n_react")
    )
    acm = f"""
CREATE TEMP TABLE {p}_acm_iv AS
WITH pk AS (
  SELECT akey, currency, plan, bucket, arg_max(val, ts) AS val
  FROM {p}_chg GROUP BY akey, currency, plan, bucket
),
pk2 AS (
  SELECT *, LEAD(bucket) OVER (PARTITION BY akey, currency, plan ORDER BY bucket) AS next_bucket
  FROM pk
),
ac AS (
  SELECT akey, currency, ts, bucket, sum(dv) AS dv, sum(da) AS da
  FROM {p}_chg GROUP BY akey, currency, ts, bucket
),
ac2 AS (
  SELECT akey, currency, ts, bucket,
    sum(dv) OVER w AS val, CAST(sum(da) OVER w AS BIGINT) AS nact
  FROM ac WINDOW w AS (PARTITION BY akey, currency ORDER BY ts ROWS UNBOUNDED PRECEDING)
),
km AS (
  SELECT akey, currency, bucket, arg_max(val, ts) AS val, arg_max(nact, ts) AS nact
  FROM ac2 GROUP BY akey, currency, bucket
),
iv AS (
  SELECT akey, currency, bucket,
    LEAD(bucket) OVER w AS next_bucket,
    close_n, val > 0 AS close_pos, nact,
    coalesce(LAG(close_n) OVER w, 0) AS prev_n,
    coalesce(LAG(val > 0) OVER w, FALSE) AS prev_pos,
    coalesce(LAG(nact) OVER w, 0) AS prev_nact
  FROM (SELECT *, CAST({hdiv_fast("val", str(SCALE))} AS BIGINT) AS close_n FROM km) km
  WINDOW w AS (PARTITION BY akey, currency ORDER BY bucket)
),
pl AS (
  SELECT iv.akey, iv.currency, iv.bucket, max({{'g': pk2.val, 'p': pk2.plan}}).p AS plan
  FROM iv JOIN pk2 ON pk2.akey = iv.akey AND pk2.currency = iv.currency AND pk2.val > 0
    AND pk2.bucket <= iv.bucket AND iv.bucket < coalesce(pk2.next_bucket, DATE '9999-01-01')
  GROUP BY iv.akey, iv.currency, iv.bucket
),
ivp AS (
  SELECT iv.*, pl.plan
  FROM iv LEFT JOIN pl ON pl.akey = iv.akey AND pl.currency = iv.currency AND pl.bucket = iv.bucket
)
SELECT ivp.*, {iv_ev_cols} FROM ivp {iv_ev_join}
"""
    return_acm = f"""
SELECT iv.akey, iv.currency, m.month, iv.plan, iv.nact,
  e.account_id, e.cohort_month, e.n_cur, e.region, e.channel, e.industry, e.size, e.country,
  e.account_currency,
  iv.close_n, iv.close_pos,
  CASE WHEN {first} THEN 0 WHEN m.month = iv.bucket THEN iv.prev_n ELSE iv.close_n END AS open_n,
  CASE WHEN {first} THEN FALSE WHEN m.month = iv.bucket THEN iv.prev_pos ELSE iv.close_pos END AS open_pos,
  CASE WHEN {first} THEN 0 WHEN m.month = iv.bucket THEN iv.prev_nact ELSE iv.nact END AS open_nact,
  {ev_dense}
FROM {p}_acm_iv iv
JOIN {p}_ext e ON e.akey = iv.akey AND e.currency = iv.currency
CROSS JOIN LATERAL (
  SELECT CAST(unnest(generate_series(
    CAST(greatest(iv.bucket, e.first_m) AS TIMESTAMP),
    CAST(least(coalesce(iv.next_bucket - INTERVAL 1 MONTH, e.last_m), e.last_m) AS TIMESTAMP),
    INTERVAL 1 MONTH)) AS DATE) AS month
) m
"""
    stages = [
        ("ids", ids),
        ("sids", sids),
        ("ver", ver),
        ("seg", seg),
        ("chg", chg),
        ("ext", ext),
        ("months", months),
    ]

    if pol.movement_timing == "event":
        if pol.free_is_churn:
            new_branch = "CASE WHEN paid_before = 0 THEN 'new' ELSE 'reactivation' END"
            churn_branch = "'churn'"
        else:
            new_branch = (
                "CASE WHEN paid_before = 0 THEN 'new' WHEN before_a > 0 THEN 'expansion' "
                "ELSE 'reactivation' END"
            )
            churn_branch = "CASE WHEN after_a > 0 THEN 'contraction' ELSE 'churn' END"
        # A change that swaps one currency for another at the same instant (a customer
        # moving from EUR to USD billing) is an expansion or a contraction by its value in
        # one unit: its parts are compared in USD at the month's rate (the rate date of the
        # policy); without a rate, or in one currency, the native amounts are compared.
        exp_c = _exponent_case("c.currency")
        ev = f"""
CREATE TEMP TABLE {p}_ev AS
WITH xm AS (
  SELECT DISTINCT currency, CAST(date_trunc('month', ts) AS DATE) AS month FROM {p}_chg
),
xr AS (
  SELECT m.currency, m.month,
    CASE WHEN m.currency = 'usd' THEN 1.0
         ELSE CAST(arg_max(f.rate_to_usd, f.date) AS DOUBLE) END AS r
  FROM xm m LEFT JOIN fx_rates f
    ON lower(f.currency) = m.currency AND f.date <= {_rate_date_sql(pol, "m.month")}
  GROUP BY m.currency, m.month
),
a AS (
  SELECT c.akey, c.ts, sum(c.dv) AS dv, sum(c.da) AS da,
    count(DISTINCT c.currency) AS n_cur,
    sum(CAST(c.dv AS DOUBLE) * x.r / ({exp_c})) AS dv_usd
  FROM {p}_chg c LEFT JOIN xr x
    ON x.currency = c.currency AND x.month = CAST(date_trunc('month', c.ts) AS DATE)
  GROUP BY c.akey, c.ts
),
a2 AS (
  SELECT *, sum(dv) OVER w AS after_v, sum(da) OVER w AS after_a
  FROM a WINDOW w AS (PARTITION BY akey ORDER BY ts ROWS UNBOUNDED PRECEDING)
),
a3 AS (
  SELECT *, after_v - dv AS before_v, after_a - da AS before_a,
    coalesce(max(CASE WHEN after_v > 0 THEN 1 ELSE 0 END) OVER (
      PARTITION BY akey ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS paid_before
  FROM a2
),
cls AS (
  SELECT akey, ts,
    CASE WHEN before_v = 0 AND after_v > 0 THEN {new_branch}
         WHEN before_v > 0 AND after_v = 0 THEN {churn_branch}
         WHEN dv_cmp > 0 THEN 'expansion' WHEN dv_cmp < 0 THEN 'contraction' END AS cat
  FROM (SELECT *, CASE WHEN n_cur > 1 AND dv_usd IS NOT NULL THEN dv_usd ELSE dv END AS dv_cmp
        FROM a3) a4
)
SELECT c.akey, c.currency, CAST(date_trunc('month', c.ts) AS DATE) AS month,
  coalesce(sum(c.dv) FILTER (WHERE k.cat = 'new'), 0) AS new_g,
  coalesce(sum(c.dv) FILTER (WHERE k.cat = 'expansion'), 0) AS expansion_g,
  coalesce(sum(c.dv) FILTER (WHERE k.cat = 'contraction'), 0) AS contraction_g,
  coalesce(sum(c.dv) FILTER (WHERE k.cat = 'churn'), 0) AS churn_g,
  coalesce(sum(c.dv) FILTER (WHERE k.cat = 'reactivation'), 0) AS reactivation_g,
  count(DISTINCT c.ts) FILTER (WHERE k.cat = 'new') AS n_new,
  count(DISTINCT c.ts) FILTER (WHERE k.cat = 'churn') AS n_churn,
  count(DISTINCT c.ts) FILTER (WHERE k.cat = 'reactivation') AS n_react
FROM {p}_chg c JOIN cls k ON k.akey = c.akey AND k.ts = c.ts
WHERE c.dv <> 0
GROUP BY c.akey, c.currency, CAST(date_trunc('month', c.ts) AS DATE)
"""
        stages.append(("ev", ev))
    stages.append(("acm_iv", acm))
    return stages, return_acm


def _rate_date_sql(pol: Policy, month: str) -> str:
    """The policy's rate date for the month column ``month``, as SQL."""
    if pol.fx_rate_date == "month_end":
        return f"CAST({month} + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE)"
    return f"DATE '{date.fromisoformat(pol.fx_rate_date).isoformat()}'"


def _exponent_case(currency: str) -> str:
    """SQL: 10 ** (the currency's minor-unit exponent) for the currency column."""
    return (
        f"CASE WHEN {currency} IN ("
        + ", ".join(f"'{c}'" for c in ZERO_DECIMAL)
        + f") THEN 1 WHEN {currency} IN ("
        + ", ".join(f"'{c}'" for c in THREE_DECIMAL)
        + ") THEN 1000 ELSE 100 END"
    )


def _build_rates(
    con: Connection, *, p: str, pol: Policy, rep: str, first_m: date, end_m: date
) -> None:
    """(month, currency) -> integer rate (rate_to_usd * 1e9) at the policy's rate date."""
    rate_date = _rate_date_sql(pol, "m.month")
    con.execute(f"""
CREATE TEMP TABLE {p}_rates AS
WITH cur AS (
  SELECT DISTINCT currency FROM {p}_ext UNION SELECT '{rep}'
),
want AS (
  SELECT m.month, c.currency, {rate_date} AS rate_date FROM {p}_months m CROSS JOIN cur c
)
SELECT w.month, w.currency, w.rate_date,
  CASE WHEN w.currency = 'usd' THEN CAST({RATE_SCALE} AS BIGINT)
       ELSE CAST(CAST(arg_max(f.rate_to_usd, f.date) AS DECIMAL(38, 9)) * {RATE_SCALE} AS BIGINT) END AS rate_int,
  max(f.date) AS rate_found
FROM want w LEFT JOIN fx_rates f
  ON lower(f.currency) = w.currency AND f.date <= w.rate_date
GROUP BY w.month, w.currency, w.rate_date
""")
    missing = con.execute(f"""
SELECT r.currency, min(r.month) AS first_month, count(*) AS months
FROM {p}_rates r
WHERE r.rate_int IS NULL AND r.currency <> '{rep}'
  AND r.month >= DATE '{first_m.isoformat()}'
  AND EXISTS (SELECT 1 FROM {p}_ext e WHERE e.currency = r.currency)
GROUP BY r.currency
""").fetchall()
    rep_missing = con.execute(
        f"SELECT count(*) FROM {p}_rates WHERE currency = '{rep}' AND rate_int IS NULL "
        f"AND month >= DATE '{first_m.isoformat()}' "
        f"AND EXISTS (SELECT 1 FROM {p}_ext WHERE currency <> '{rep}')"
    ).fetchone()[0]
    if missing or rep_missing:
        detail = ", ".join(f"{c} from {m} ({n} months)" for c, m, n in missing)
        raise RevenueError(
            f"fx_rates has no rate on or before the rate date ({pol.fx_rate_date}) for: "
            f"{detail or ''}{' reporting currency ' + rep if rep_missing else ''}. "
            "Load rates into fx_rates (1 unit = rate_to_usd USD) or report in the native currency."
        )


def _conv(x: str, rate_c: str, rate_r: str, e_c: str, e_r: str) -> str:
    """SQL: integer minor units ``x`` of currency c into minor units of the reporting currency.

    ``x * rate_c * 10^e_r / (rate_r * 10^e_c)`` rounded half-even; BIGINT when the
    product provably fits (checked in DOUBLE with a wide margin), HUGEINT otherwise.
    """
    big = hdiv(f"(CAST({x} AS HUGEINT) * {rate_c} * {e_r})", f"(CAST({rate_r} AS HUGEINT) * {e_c})")
    small = hdiv(f"(CAST({x} AS BIGINT) * {rate_c} * {e_r})", f"(CAST({rate_r} AS BIGINT) * {e_c})")
    return (
        f"CASE WHEN abs(CAST({x} AS DOUBLE)) * CAST({rate_c} AS DOUBLE) * {e_r} < 1e18 "
        f"AND CAST({rate_r} AS DOUBLE) * {e_c} < 1e18 THEN {small} ELSE CAST({big} AS BIGINT) END"
    )


def _final_sql(
    pol: Policy, *, p: str, rep: str, out: str, start_m: date, end_m: date, acm_sql: str
) -> str:
    e_rep = 10 ** currency_exponent(rep)
    LIMIT = 2_000_000_000_000_000_000  # noqa: N806 - |x * a| stays below it: 2n + d fits BIGINT
    exp_case = _exponent_case("a.currency")
    event = pol.movement_timing == "event"
    cats = ("new", "expansion", "contraction", "churn", "reactivation")

    # conversion in two projections: (1) the numerator x * a in BIGINT when it provably
    # fits (|x| < lim, per month and currency), (2) a half-even divide of plain columns;
    # rows that do not fit take the HUGEINT path. Same integers either way.
    def conv_pre(x: str, when: str, name: str) -> str:
        return (
            f"CASE WHEN currency <> '{rep}' AND {x} <> 0 AND abs({x}) < lim_{when} "
            f"THEN {x} * a_{when} END AS nc_{name}"
        )

    def conv_post(x: str, when: str, name: str) -> str:
        big = hdiv(f"(CAST({x} AS HUGEINT) * ah_{when})", f"CAST(b_{when} AS HUGEINT)")
        return (
            f"CASE WHEN currency = '{rep}' OR {x} = 0 THEN CAST({x} AS BIGINT) "
            f"WHEN nc_{name} IS NOT NULL THEN {hdiv(f'nc_{name}', f'b_{when}')} "
            f"ELSE CAST({big} AS BIGINT) END"
        )

    if event:
        cat_pre = ",\n    ".join(conv_pre(f"{c}_n", "c", c) for c in cats)
        cat_conv = ",\n    ".join(f"{conv_post(f'{c}_n', 'c', c)} AS {c}_r" for c in cats)
    else:
        cat_pre = "NULL AS nc_none"
        cat_conv = ", ".join(f"CAST(0 AS BIGINT) AS {c}_r" for c in cats)

    sum_cols = {
        "close_n": "BIGINT", "close_r": "BIGINT", "open_r": "BIGINT", "open_now_r": "BIGINT",
        **{f"{c}_r": "BIGINT" for c in cats}, "nact": "BIGINT", "open_nact": "BIGINT",
        "n_new": "BIGINT", "n_churn": "BIGINT", "n_react": "BIGINT",
    }  # fmt: skip
    single_cols = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in sum_cols.items())
    multi_cols = ", ".join(f"CAST(sum({c}) AS {t}) AS {c}" for c, t in sum_cols.items())

    segs = (
        "account_id",
        "cohort_month",
        "region",
        "channel",
        "industry",
        "size",
        "country",
        "account_currency",
    )
    seg_cols = ", ".join(segs)
    seg_any = ", ".join(f"any_value({c}) AS {c}" for c in segs)
    free_is_churn = pol.free_is_churn
    if event:
        ignore = pol.same_month_new_and_churn == "ignore"
        keep = "NOT (NOT open_pos AND NOT close_pos)" if ignore else "TRUE"
        big = (
            "CASE greatest(abs(n0), abs(r0), abs(e0), abs(c0), abs(h0)) "
            "WHEN abs(n0) THEN 'new' WHEN abs(r0) THEN 'reactivation' "
            "WHEN abs(e0) THEN 'expansion' WHEN abs(c0) THEN 'contraction' ELSE 'churn' END"
        )
        movement_sql = f"""
, m0 AS (
  SELECT *,
    CASE WHEN {keep} THEN new_r ELSE 0 END AS n0,
    CASE WHEN {keep} THEN reactivation_r ELSE 0 END AS r0,
    CASE WHEN {keep} THEN expansion_r ELSE 0 END AS e0,
    CASE WHEN {keep} THEN contraction_r ELSE 0 END AS c0,
    CASE WHEN {keep} THEN churn_r ELSE 0 END AS h0,
    ({keep}) AS kept
  FROM acct
),
m1 AS (
  SELECT *, biz - (n0 + r0 + e0 + c0 + h0) AS resid,
    CASE WHEN n0 = 0 AND r0 = 0 AND e0 = 0 AND c0 = 0 AND h0 = 0
         THEN CASE WHEN biz >= 0 THEN 'expansion' ELSE 'contraction' END
         ELSE {big} END AS big
  FROM m0
),
mv AS (
  SELECT *,
    n0 + CASE WHEN big = 'new' THEN resid ELSE 0 END AS new_mrr,
    e0 + CASE WHEN big = 'expansion' THEN resid ELSE 0 END AS expansion_mrr,
    c0 + CASE WHEN big = 'contraction' THEN resid ELSE 0 END AS contraction_mrr,
    h0 + CASE WHEN big = 'churn' THEN resid ELSE 0 END AS churn_mrr,
    r0 + CASE WHEN big = 'reactivation' THEN resid ELSE 0 END AS reactivation_mrr,
    kept AND n_new > 0 AS new_logo,
    kept AND n_churn > 0 AS churned_logo,
    kept AND n_react > 0 AS reactivated_logo
  FROM m1
)"""
    else:
        new_label = (
            "CASE WHEN month = cohort_month THEN 'new' ELSE 'reactivation' END"
            if free_is_churn
            else "CASE WHEN month = cohort_month THEN 'new' WHEN open_nact > 0 THEN 'expansion' "
            "ELSE 'reactivation' END"
        )
        churn_label = (
            "'churn'" if free_is_churn else "CASE WHEN nact > 0 THEN 'contraction' ELSE 'churn' END"
        )
        movement_sql = f"""
, m1 AS (
  SELECT *,
    CASE WHEN NOT open_pos AND close_pos THEN {new_label}
         WHEN open_pos AND NOT close_pos THEN {churn_label}
         WHEN biz > 0 THEN 'expansion' WHEN biz < 0 THEN 'contraction' END AS lbl
  FROM acct
),
mv AS (
  SELECT *,
    CASE WHEN lbl = 'new' THEN biz ELSE 0 END AS new_mrr,
    CASE WHEN lbl = 'expansion' THEN biz ELSE 0 END AS expansion_mrr,
    CASE WHEN lbl = 'contraction' THEN biz ELSE 0 END AS contraction_mrr,
    CASE WHEN lbl = 'churn' THEN biz ELSE 0 END AS churn_mrr,
    CASE WHEN lbl = 'reactivation' THEN biz ELSE 0 END AS reactivation_mrr,
    coalesce(lbl = 'new', FALSE) AS new_logo, coalesce(lbl = 'churn', FALSE) AS churned_logo,
    coalesce(lbl = 'reactivation', FALSE) AS reactivated_logo
  FROM m1
)"""
    customer_expr = (
        "close_pos" if free_is_churn else "(close_pos OR (nact > 0 AND month >= cohort_month))"
    )
    return f"""
CREATE OR REPLACE TEMP TABLE {out} AS
WITH rp0 AS (
  SELECT rc.month, rc.currency, rc.rate_date,
    CAST(rc.rate_int AS HUGEINT) * {e_rep} AS ah_c,
    CAST(rr.rate_int AS HUGEINT) * ({exp_case.replace("a.currency", "rc.currency")}) AS b_c,
    CAST(coalesce(rp0.rate_int, rc.rate_int) AS HUGEINT) * {e_rep} AS ah_p,
    CAST(coalesce(rpr.rate_int, rr.rate_int) AS HUGEINT) * ({exp_case.replace("a.currency", "rc.currency")}) AS b_p
  FROM {p}_rates rc
  JOIN {p}_rates rr ON rr.month = rc.month AND rr.currency = '{rep}'
  LEFT JOIN {p}_rates rp0 ON rp0.month = CAST(rc.month - INTERVAL 1 MONTH AS DATE) AND rp0.currency = rc.currency
  LEFT JOIN {p}_rates rpr ON rpr.month = CAST(rc.month - INTERVAL 1 MONTH AS DATE) AND rpr.currency = '{rep}'
),
rp AS (
  SELECT month, currency, rate_date, ah_c, ah_p,
    CASE WHEN ah_c < {LIMIT} THEN CAST(ah_c AS BIGINT) END AS a_c,
    CASE WHEN ah_p < {LIMIT} THEN CAST(ah_p AS BIGINT) END AS a_p,
    CASE WHEN b_c < {LIMIT} THEN CAST(b_c AS BIGINT) END AS b_c,
    CASE WHEN b_p < {LIMIT} THEN CAST(b_p AS BIGINT) END AS b_p,
    CASE WHEN ah_c < {LIMIT} AND b_c < {LIMIT} THEN CAST({LIMIT} // ah_c AS BIGINT) ELSE 0 END AS lim_c,
    CASE WHEN ah_p < {LIMIT} AND b_p < {LIMIT} THEN CAST({LIMIT} // ah_p AS BIGINT) ELSE 0 END AS lim_p
  FROM rp0
),
x AS (
  SELECT a.*, rp.rate_date, rp.ah_c, rp.ah_p, rp.a_c, rp.a_p, rp.b_c, rp.b_p, rp.lim_c, rp.lim_p
  FROM ({acm_sql}) a
  JOIN rp ON rp.month = a.month AND rp.currency = a.currency
  WHERE a.month <= DATE '{end_m.isoformat()}'
),
x1 AS (
  SELECT x.*,
    {conv_pre("close_n", "c", "close")},
    {conv_pre("open_n", "p", "open")},
    {conv_pre("open_n", "c", "open_now")},
    {cat_pre}
  FROM x
),
y AS (
  SELECT x1.*,
    {conv_post("close_n", "c", "close")} AS close_r,
    {conv_post("open_n", "p", "open")} AS open_r,
    {conv_post("open_n", "c", "open_now")} AS open_now_r,
    {cat_conv}
  FROM x1
),
acct0 AS (
  SELECT akey, month, currency, {single_cols}, open_pos, close_pos, plan, rate_date, {seg_cols}
  FROM y WHERE n_cur = 1
  UNION ALL
  SELECT akey, month, 'mixed' AS currency, {multi_cols}, bool_or(open_pos), bool_or(close_pos),
    max({{'g': close_n, 'p': plan}}).p, max(rate_date), {seg_any}
  FROM y WHERE n_cur > 1
  GROUP BY akey, month
),
acct AS (
  SELECT acct0.*, close_r AS mrr, open_r AS opening_mrr, open_now_r - open_r AS fx_mrr,
    close_r - open_now_r AS biz
  FROM acct0
)
{movement_sql}
SELECT mv.month, mv.account_id, mv.currency,
  CASE WHEN mv.currency = 'mixed' THEN NULL ELSE mv.close_n END AS mrr_native,
  mv.opening_mrr,
  CAST(new_mrr AS BIGINT) AS new_mrr, CAST(expansion_mrr AS BIGINT) AS expansion_mrr,
  CAST(contraction_mrr AS BIGINT) AS contraction_mrr, CAST(churn_mrr AS BIGINT) AS churn_mrr,
  CAST(reactivation_mrr AS BIGINT) AS reactivation_mrr, CAST(mv.fx_mrr AS BIGINT) AS fx_mrr, mv.mrr,
  CASE greatest(abs(new_mrr), abs(expansion_mrr), abs(contraction_mrr), abs(churn_mrr), abs(reactivation_mrr))
    WHEN 0 THEN NULL
    WHEN abs(new_mrr) THEN 'new' WHEN abs(reactivation_mrr) THEN 'reactivation'
    WHEN abs(churn_mrr) THEN 'churn' WHEN abs(expansion_mrr) THEN 'expansion'
    ELSE 'contraction' END AS movement,
  new_logo, churned_logo, reactivated_logo,
  close_pos AS is_paying, {customer_expr} AS is_customer,
  cohort_month, coalesce(mv.plan, '(none)') AS plan,
  mv.region, mv.channel, mv.industry, mv.size, mv.country, mv.account_currency,
  '{rep}' AS reporting_currency, mv.rate_date,
  '{pol.name}' AS policy, '{pol.version}' AS policy_version
FROM mv
WHERE mv.month >= DATE '{start_m.isoformat()}' AND mv.month <= DATE '{end_m.isoformat()}'
"""
