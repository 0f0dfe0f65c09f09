"""KPIs on top of the account-month table: bridge, retention, cohorts, segments.

The monthly bridge is one SQL definition that runs on a warehouse table (scale) or
on a pandas frame (dashboards, tests) through DuckDB, so both give the same numbers.
The other functions are small pure functions over tidy frames.

Conventions: money in integer minor units of the reporting currency; contraction and
churn are negative; rates are floats (they are ratios, not money).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import duckdb
import numpy as np
import pandas as pd

from .engine import (
    RATE_SCALE,
    THREE_DECIMAL,
    ZERO_DECIMAL,
    Connection,
    _conv,
    _ident,
    currency_exponent,
)

MOVEMENT_COLUMNS = (
    "new_mrr",
    "expansion_mrr",
    "contraction_mrr",
    "churn_mrr",
    "reactivation_mrr",
    "fx_mrr",
)
SEGMENTS = (
    "plan",
    "region",
    "channel",
    "currency",
    "account_currency",
    "industry",
    "size",
    "country",
    "cohort_month",
)
#: Movements also summed over only the accounts paying at the start of the month
#: (``existing_*`` bridge columns): retention is about the opening customers.
EXISTING_MOVEMENTS = ("expansion_mrr", "contraction_mrr", "churn_mrr")
BRIDGE_COLUMNS = (
    "opening_mrr",
    *MOVEMENT_COLUMNS,
    "transfer_in_mrr",
    "transfer_out_mrr",
    "closing_mrr",
)


def _bridge_sql(src: str, by: Sequence[str]) -> str:
    for col in by:
        _ident(col)
    segs = ", ".join(by)
    prev = ",\n    ".join(
        f"CASE WHEN LAG(month) OVER w = month - INTERVAL 1 MONTH THEN LAG({c}) OVER w ELSE {c} END AS prev_{c}"
        for c in by
    )
    changed = " OR ".join(f"prev_{c} IS DISTINCT FROM {c}" for c in by) or "FALSE"
    prev_segs = ", ".join(f"prev_{c} AS {c}" for c in by)
    key = ["month", *by]
    on = " AND ".join(f"o.{k} IS NOT DISTINCT FROM c.{k}" for k in key)
    sel_key = ", ".join(f"coalesce(c.{k}, o.{k}) AS {k}" for k in key)
    group_close = ", ".join(key)
    group_open = ", ".join(["month", *(f"prev_{c}" for c in by)])
    moves = ",\n    ".join(f"sum({m}) AS {m}" for m in MOVEMENT_COLUMNS)
    moves_out = ",\n  ".join(f"coalesce(c.{m}, 0) AS {m}" for m in MOVEMENT_COLUMNS)
    prev_block = f",\n    {prev}" if by else ""
    existing = ",\n    ".join(
        [
            *(
                f"sum(CASE WHEN opening_mrr > 0 THEN {m} ELSE 0 END) AS existing_{m}"
                for m in EXISTING_MOVEMENTS
            ),
            "count(*) FILTER (WHERE opening_mrr > 0 AND churned_logo) AS existing_churned_logos",
        ]
    )
    existing_out = ",\n  ".join(
        [
            *(
                f"CAST(coalesce(o.existing_{m}, 0) AS BIGINT) AS existing_{m}"
                for m in EXISTING_MOVEMENTS
            ),
            "coalesce(o.existing_churned_logos, 0) AS existing_churned_logos",
        ]
    )
    window = "WINDOW w AS (PARTITION BY account_id ORDER BY month)" if by else ""
    return f"""
WITH a AS (
  SELECT month, account_id, opening_mrr, mrr, {", ".join(MOVEMENT_COLUMNS)},
    new_logo, churned_logo, reactivated_logo, is_paying{", " + segs if by else ""}{prev_block}
  FROM {src}
  {window}
),
b AS (SELECT *, ({changed}) AS seg_changed FROM a),
o AS (
  SELECT month{", " + prev_segs if by else ""},
    sum(opening_mrr) AS opening_mrr,
    count(*) FILTER (WHERE opening_mrr > 0) AS paying_open,
    -sum(CASE WHEN seg_changed THEN opening_mrr ELSE 0 END) AS transfer_out_mrr,
    {existing}
  FROM b GROUP BY {group_open}
),
c AS (
  SELECT {group_close},
    {moves},
    sum(CASE WHEN seg_changed THEN opening_mrr ELSE 0 END) AS transfer_in_mrr,
    sum(mrr) AS closing_mrr,
    count(*) FILTER (WHERE is_paying) AS paying_close,
    count(*) FILTER (WHERE new_logo) AS new_logos,
    count(*) FILTER (WHERE churned_logo) AS churned_logos,
    count(*) FILTER (WHERE reactivated_logo) AS reactivated_logos
  FROM b GROUP BY {group_close}
)
SELECT {sel_key},
  CAST(coalesce(o.opening_mrr, 0) AS BIGINT) AS opening_mrr,
  {moves_out},
  CAST(coalesce(c.transfer_in_mrr, 0) AS BIGINT) AS transfer_in_mrr,
  CAST(coalesce(o.transfer_out_mrr, 0) AS BIGINT) AS transfer_out_mrr,
  CAST(coalesce(c.closing_mrr, 0) AS BIGINT) AS closing_mrr,
  coalesce(o.paying_open, 0) AS paying_open, coalesce(c.paying_close, 0) AS paying_close,
  coalesce(c.new_logos, 0) AS new_logos, coalesce(c.churned_logos, 0) AS churned_logos,
  coalesce(c.reactivated_logos, 0) AS reactivated_logos,
  {existing_out}
FROM c FULL OUTER JOIN o ON {on}
ORDER BY {", ".join(key)}
"""


def monthly_bridge(
    account_months: pd.DataFrame | str,
    *,
    by: Sequence[str] = (),
    con: Connection | None = None,
) -> pd.DataFrame:
    """MRR bridge per month (and segment): opening + movements + transfers = closing.

    Args:
        account_months: the engine's account-month frame, or the name of its table in
            ``con``. Needs ``month, account_id, opening_mrr, mrr``, the movement
            columns, the logo flags, ``is_paying`` and the ``by`` columns.
        by: segment columns (e.g. ``["region"]`` or ``["plan"]``). An account whose
            segment changes between months moves its opening MRR with it:
            ``transfer_out_mrr`` in the old segment, ``transfer_in_mrr`` in the new one
            (they cancel out in the total).
        con: the connection holding the table (required when a name is given).

    Returns:
        ``month, *by, opening_mrr, new_mrr, expansion_mrr, contraction_mrr, churn_mrr,
        reactivation_mrr, fx_mrr, transfer_in_mrr, transfer_out_mrr, closing_mrr,
        paying_open, paying_close, new_logos, churned_logos, reactivated_logos``, and
        ``existing_expansion_mrr, existing_contraction_mrr, existing_churn_mrr,
        existing_churned_logos``: the same movements of only the accounts paying at the
        start of the month (grouped by their segment then), which retention is made of.
    """
    by = list(by)
    if isinstance(account_months, str):
        if con is None:
            raise ValueError("monthly_bridge needs con= when given a table name")
        return con.execute(_bridge_sql(_ident(account_months), by)).df()
    local = duckdb.connect()
    try:
        local.register("am", account_months)
        out = local.execute(_bridge_sql("am", by)).df()
    finally:
        local.close()
    return out


def bridge_gap(bridge: pd.DataFrame) -> int:
    """Largest ``|opening + movements + transfers - closing|`` over a bridge's rows (0 when it holds)."""
    if bridge.empty:
        return 0
    level = bridge[list(BRIDGE_COLUMNS[:-1])].sum(axis=1)
    return int((level - bridge["closing_mrr"]).abs().max())


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    den = den.astype(float)
    return (num.astype(float) / den).where(den != 0)


def kpis(bridge: pd.DataFrame, *, by: Sequence[str] = ()) -> pd.DataFrame:
    """Monthly KPIs from a bridge (see :func:`monthly_bridge`).

    Returns:
        ``month, *by, mrr, arr, paying_accounts, arpa, mrr_growth, new_mrr ... fx_mrr,
        logo_churn_rate, gross_revenue_retention, net_revenue_retention, quick_ratio,
        net_revenue_churn_rate``. ARPA is minor units rounded half-even; rates are
        monthly fractions (``net_revenue_churn_rate`` in percent, Baremetrics' form).
        Retention and quick ratio exclude FX and transfers (constant currency). Gross
        and net revenue retention and the logo churn rate count only the accounts paying
        at the start of the month: one that starts and leaves (or grows) within the month
        is in new MRR and churn, not in retention.
    """
    b = bridge.copy()
    out = b[["month", *by]].copy()
    out["mrr"] = b["closing_mrr"]
    out["arr"] = b["closing_mrr"] * 12
    out["paying_accounts"] = b["paying_close"]
    arpa = _ratio(b["closing_mrr"], b["paying_close"])
    out["arpa"] = np.rint(arpa).astype("Int64")
    out["mrr_growth"] = b["closing_mrr"] - b["opening_mrr"]
    for col in MOVEMENT_COLUMNS:
        out[col] = b[col]
    out["new_logos"] = b["new_logos"]
    out["churned_logos"] = b["churned_logos"]
    out["logo_churn_rate"] = _ratio(b["existing_churned_logos"], b["paying_open"])
    kept = b["opening_mrr"] + b["existing_contraction_mrr"] + b["existing_churn_mrr"]
    out["gross_revenue_retention"] = _ratio(kept, b["opening_mrr"])
    out["net_revenue_retention"] = _ratio(kept + b["existing_expansion_mrr"], b["opening_mrr"])
    lost = b["contraction_mrr"] + b["churn_mrr"]
    gained = b["new_mrr"] + b["expansion_mrr"] + b["reactivation_mrr"]
    out["quick_ratio"] = _ratio(gained, -lost)
    out["net_revenue_churn_rate"] = 100 * _ratio(
        -b["churn_mrr"] - b["expansion_mrr"], b["opening_mrr"]
    )
    return out.reset_index(drop=True)


def net_revenue_churn_rate(bridge: pd.DataFrame) -> pd.DataFrame:
    """Baremetrics' net revenue churn: (churned MRR - expansion MRR) / starting MRR x 100.

    Returns:
        ``month, net_revenue_churn_rate`` (percent; NaN when starting MRR is 0).
    """
    k = kpis(bridge)
    return (
        k[["month", "net_revenue_churn_rate"]]
        .set_index("month")["net_revenue_churn_rate"]
        .reset_index()
    )


def trailing_retention(account_months: pd.DataFrame, *, window: int = 12) -> pd.DataFrame:
    """Gross and net revenue retention over ``window`` months, per month.

    For month m: the accounts paying at m - window; NRR = their MRR at m / their MRR
    then; GRR caps each account at its starting MRR. Needs ``month, account_id, mrr``.

    Returns:
        ``month, starting_mrr, retained_mrr, gross_revenue_retention,
        net_revenue_retention, logo_retention``.
    """
    am = account_months[["month", "account_id", "mrr"]].copy()
    am["month"] = pd.to_datetime(am["month"])
    start = am[am["mrr"] > 0].copy()
    start["month"] = start["month"] + pd.DateOffset(months=window)
    j = start.merge(am, on=["month", "account_id"], how="left", suffixes=("_start", "_now"))
    j["mrr_now"] = j["mrr_now"].fillna(0).astype("int64")
    g = j.groupby("month")
    out = pd.DataFrame(
        {
            "starting_mrr": g["mrr_start"].sum(),
            "retained_mrr": g["mrr_now"].sum(),
            "gross_mrr": g.apply(
                lambda d: int(np.minimum(d["mrr_now"], d["mrr_start"]).sum()), include_groups=False
            ),
            "logos_start": g.size(),
            "logos_kept": g["mrr_now"].apply(lambda s: int((s > 0).sum())),
        }
    )
    last = am["month"].max()
    out = out[out.index <= last]
    out["net_revenue_retention"] = out["retained_mrr"] / out["starting_mrr"]
    out["gross_revenue_retention"] = out["gross_mrr"] / out["starting_mrr"]
    out["logo_retention"] = out["logos_kept"] / out["logos_start"]
    return out.reset_index()[
        [
            "month",
            "starting_mrr",
            "retained_mrr",
            "gross_revenue_retention",
            "net_revenue_retention",
            "logo_retention",
        ]
    ]


def mrr_by_segment(account_months: pd.DataFrame, *, by: str = "plan") -> pd.DataFrame:
    """MRR, paying accounts and share of total per month and segment value.

    Needs ``month, mrr, is_paying`` and the ``by`` column (plan, region, channel,
    currency, account_currency, industry, size, country or cohort_month).

    Returns:
        ``month, segment, mrr, paying_accounts, share`` (share of the month's MRR).
    """
    df = account_months.copy()
    df["segment"] = df[by].astype("string").fillna("(unknown)")
    g = df.groupby(["month", "segment"], observed=True)
    out = g.agg(mrr=("mrr", "sum"), paying_accounts=("is_paying", "sum")).reset_index()
    total = out.groupby("month")["mrr"].transform("sum")
    out["share"] = (out["mrr"] / total).where(total != 0)
    return out


def cohort_retention(
    account_months: pd.DataFrame, *, kind: str = "logo", max_age: int | None = None
) -> pd.DataFrame:
    """Cohort retention in long form; the cohort is the first paid month.

    Args:
        account_months: needs ``month, account_id, mrr, is_paying, cohort_month``.
        kind: ``logo`` (paying accounts / cohort size) or ``revenue`` (MRR / the
            cohort's MRR in its first month; above 1 means net expansion).
        max_age: keep ages 0..max_age months.

    Returns:
        ``cohort_month, age, cohort_size, cohort_mrr, value, retention`` where value is
        the paying count (logo) or MRR (revenue) at that age.
    """
    if kind not in ("logo", "revenue"):
        raise ValueError("kind must be 'logo' or 'revenue'")
    df = account_months[account_months["cohort_month"].notna()].copy()
    df["month"] = pd.to_datetime(df["month"])
    df["cohort_month"] = pd.to_datetime(df["cohort_month"])
    df["age"] = (df["month"].dt.year - df["cohort_month"].dt.year) * 12 + (
        df["month"].dt.month - df["cohort_month"].dt.month
    )
    df = df[df["age"] >= 0]
    first = (
        df[df["age"] == 0]
        .groupby("cohort_month")
        .agg(cohort_size=("account_id", "nunique"), cohort_mrr=("mrr", "sum"))
    )
    g = df.groupby(["cohort_month", "age"])
    value = g["is_paying"].sum() if kind == "logo" else g["mrr"].sum()
    out = value.rename("value").reset_index().merge(first.reset_index(), on="cohort_month")
    base = out["cohort_size"] if kind == "logo" else out["cohort_mrr"]
    out["retention"] = (out["value"] / base).where(base != 0)
    if max_age is not None:
        out = out[out["age"] <= max_age]
    # ages that are in the future for a cohort are absent, not zero
    last = df["month"].max()
    limit = (last.year - out["cohort_month"].dt.year) * 12 + (
        last.month - out["cohort_month"].dt.month
    )
    out = out[out["age"] <= limit]
    cols = ["cohort_month", "age", "cohort_size", "cohort_mrr", "value", "retention"]
    return out[cols].sort_values(["cohort_month", "age"]).reset_index(drop=True)


def cohort_table(
    account_months: pd.DataFrame, *, kind: str = "logo", max_age: int = 24
) -> pd.DataFrame:
    """Wide cohort table for display: one row per cohort, one column per age (0..max_age).

    Returns:
        Index ``cohort_month``; columns ``cohort_size`` then ages 0..max_age holding
        retention fractions (NaN where the age is still in the future).
    """
    long = cohort_retention(account_months, kind=kind, max_age=max_age)
    wide = long.pivot(index="cohort_month", columns="age", values="retention")
    sizes = long.groupby("cohort_month")["cohort_size"].first()
    wide.insert(0, "cohort_size", sizes)
    return wide


# ------------------------------------------------------------------ dashboard helpers


def filter_account_months(
    account_months: pd.DataFrame,
    *,
    segments: Mapping[str, Sequence[object]] | None = None,
    start: date | str | None = None,
    end: date | str | None = None,
) -> pd.DataFrame:
    """Rows of the chosen segment values and period (inclusive months); input untouched.

    Args:
        segments: e.g. ``{"region": ["EU"], "plan": ["Pro", "Team"]}``; empty or missing
            lists mean "all".
    """
    df = account_months
    mask = pd.Series(True, index=df.index)
    for col, values in (segments or {}).items():
        if values:
            mask &= df[col].isin(list(values))
    months = pd.to_datetime(df["month"])
    if start is not None:
        mask &= months >= pd.Timestamp(start)
    if end is not None:
        mask &= months <= pd.Timestamp(end)
    return df[mask].copy()


def kpi_tiles(
    account_months: pd.DataFrame,
    *,
    month: date | str | None = None,
    bridge: pd.DataFrame | None = None,
) -> dict[str, object]:
    """The headline numbers for one month (default: the latest) of a filtered frame.

    ``bridge``: :func:`monthly_bridge` of ``account_months``, when the caller has it
    already (else it is computed here).

    Returns:
        A dict: ``month, mrr, arr, mrr_change, mrr_change_pct, paying_accounts, arpa,
        new_mrr, expansion_mrr, contraction_mrr, churn_mrr, reactivation_mrr, fx_mrr,
        logo_churn_rate, gross_revenue_retention, net_revenue_retention, quick_ratio,
        reporting_currency`` (money in minor units, ``None`` where undefined).
    """
    k = kpis(monthly_bridge(account_months) if bridge is None else bridge)
    if k.empty:
        return {"month": None, "mrr": 0, "arr": 0, "paying_accounts": 0}
    k["month"] = pd.to_datetime(k["month"])
    target = pd.Timestamp(month) if month is not None else k["month"].max()
    row = k[k["month"] == target]
    if row.empty:
        raise ValueError(f"no data for month {target.date()}")
    r = row.iloc[0]

    def clean(v: object) -> object:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return None
        return v.item() if hasattr(v, "item") else v

    opening = int(r["mrr"] - r["mrr_growth"])
    tiles: dict[str, object] = {"month": target.date()}
    for col in (
        "mrr", "arr", "paying_accounts", "arpa", *MOVEMENT_COLUMNS, "logo_churn_rate",
        "gross_revenue_retention", "net_revenue_retention", "quick_ratio",
    ):  # fmt: skip
        tiles[col] = clean(r[col])
    tiles["mrr_change"] = int(r["mrr_growth"])
    tiles["mrr_change_pct"] = (r["mrr_growth"] / opening) if opening else None
    cur = (
        account_months["reporting_currency"].dropna().unique()
        if "reporting_currency" in account_months
        else []
    )
    tiles["reporting_currency"] = cur[0] if len(cur) == 1 else None
    return tiles


def top_movers(
    account_months: pd.DataFrame,
    *,
    month: date | str,
    n: int = 10,
    movement: str | None = None,
) -> pd.DataFrame:
    """Accounts whose MRR moved most in a month (by absolute change, FX excluded).

    Args:
        movement: keep only one kind (``new``, ``expansion``, ``contraction``, ``churn``,
            ``reactivation``).

    Returns:
        ``account_id, movement, opening_mrr, mrr, change, fx_mrr, plan`` plus the
        segment columns present, largest first.
    """
    df = account_months[pd.to_datetime(account_months["month"]) == pd.Timestamp(month)].copy()
    if movement is not None:
        df = df[df["movement"] == movement]
    df["change"] = df["mrr"] - df["opening_mrr"] - df["fx_mrr"]
    df = df[df["change"] != 0]
    df = df.reindex(df["change"].abs().sort_values(ascending=False, kind="stable").index)
    cols = ["account_id", "movement", "opening_mrr", "mrr", "change", "fx_mrr"]
    cols += [c for c in ("plan", "region", "channel", "currency") if c in df.columns]
    return df[cols].head(n).reset_index(drop=True)


# ------------------------------------------------------------------ warehouse-side metrics


def _rate_join(rep: str, date_expr: str, cur_expr: str, alias: str) -> str:
    """LEFT JOIN giving ``{alias}.rate_int`` = rate_to_usd * 1e9 on or before the date.

    ``date_expr`` and ``cur_expr`` are written against ``agg`` (``agg.month``,
    ``agg.currency`` or a literal). The latest rate per (month, currency) is looked up
    once in a grouped subquery rather than a correlated LATERAL join, so the SQL also
    runs on Spark (which cannot decorrelate an inequality inside an aggregate).
    """
    k_date = date_expr.replace("agg.", "k.")
    k_cur = cur_expr.replace("agg.", "k.")
    return (
        f"LEFT JOIN (SELECT k.month, k.cur, CASE WHEN k.cur = 'usd' "
        f"THEN CAST({RATE_SCALE} AS BIGINT) "
        f"ELSE CAST(CAST(arg_max(f.rate_to_usd, f.date) AS DECIMAL(38, 9)) * {RATE_SCALE} AS BIGINT) "
        f"END AS rate_int FROM (SELECT DISTINCT k.month, {k_cur} AS cur FROM agg k) k "
        f"LEFT JOIN fx_rates f ON lower(f.currency) = k.cur AND f.date <= {k_date} "
        f"GROUP BY k.month, k.cur) {alias} ON {alias}.month = agg.month AND {alias}.cur = {cur_expr}"
    )


def _convert_sql(amount: str, cur: str, month: str, rep: str) -> str:
    """SQL converting ``amount`` (minor units of ``cur``) with the engine's exact integer
    conversion (half-even), at the rates joined as ``rc`` (currency) and ``rr`` (reporting)."""
    e_rep = 10 ** currency_exponent(rep)
    zero = ", ".join(f"'{c}'" for c in ZERO_DECIMAL)
    three = ", ".join(f"'{c}'" for c in THREE_DECIMAL)
    pow_c = f"(CASE WHEN {cur} IN ({zero}) THEN 1 WHEN {cur} IN ({three}) THEN 1000 ELSE 100 END)"
    return (
        f"CASE WHEN {cur} = '{rep}' THEN CAST({amount} AS BIGINT) "
        f"ELSE CAST({_conv(amount, 'rc.rate_int', 'rr.rate_int', pow_c, str(e_rep))} AS BIGINT) END"
    )


def usage_revenue(
    con: Connection,
    *,
    reporting_currency: str = "usd",
    kinds: Sequence[str] = ("metered",),
) -> pd.DataFrame:
    """Revenue outside MRR, from invoice lines: metered usage and one-time charges.

    Reads ``invoice_lines`` joined to ``invoices`` (void and draft invoices excluded)
    and ``prices``. A line is ``metered`` when its price is metered, ``one_time`` when
    it has no recurring price (invoice items). Lines are dated by their period start
    (else the invoice's creation) and converted at the month-end rate (integer
    arithmetic, half-even, as in the engine).

    Returns:
        ``month, account_id, kind, currency, amount_native, amount`` (reporting minor
        units), one row per account, month, kind and currency.
    """
    rep = reporting_currency.lower()
    kind_list = ", ".join(f"'{k}'" for k in kinds if k in ("metered", "one_time"))
    conv = _convert_sql("amount_native", "currency", "month", rep)
    sql = f"""
WITH lines AS (
  SELECT i.account_id, lower(l.currency) AS currency, l.amount,
    CAST(date_trunc('month', timezone('UTC', coalesce(l.period_start, i.created))) AS DATE) AS month,
    CASE WHEN p.usage_type = 'metered' THEN 'metered'
         WHEN p.price_id IS NULL OR p.interval IS NULL THEN 'one_time' END AS kind
  FROM invoice_lines l JOIN invoices i ON i.invoice_id = l.invoice_id
  LEFT JOIN prices p ON p.price_id = l.price_id
  WHERE coalesce(i.status, 'open') NOT IN ('void', 'draft')
),
agg AS (
  SELECT month, account_id, kind, currency, sum(amount) AS amount_native
  FROM lines WHERE kind IN ({kind_list or "NULL"})
  GROUP BY month, account_id, kind, currency
)
SELECT agg.month, agg.account_id, agg.kind, agg.currency, CAST(agg.amount_native AS BIGINT) AS amount_native,
  {conv} AS amount
FROM agg
{_rate_join(rep, "CAST(agg.month + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE)", "agg.currency", "rc")}
{_rate_join(rep, "CAST(agg.month + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE)", f"'{rep}'", "rr")}
ORDER BY agg.month, agg.account_id, agg.kind
"""
    return con.execute(sql).df()


def refunds_by_month(con: Connection, *, reporting_currency: str = "usd") -> pd.DataFrame:
    """Refunds per month (they never change MRR under any policy; reported here instead).

    Returns:
        ``month, currency, refunds, amount_native, amount`` (reporting minor units).
    """
    rep = reporting_currency.lower()
    conv = _convert_sql("amount_native", "currency", "month", rep)
    sql = f"""
WITH agg AS (
  SELECT CAST(date_trunc('month', timezone('UTC', created)) AS DATE) AS month, lower(currency) AS currency,
    count(*) AS refunds, sum(amount) AS amount_native
  FROM refunds WHERE coalesce(status, 'succeeded') NOT IN ('failed', 'canceled')
  GROUP BY 1, 2
)
SELECT agg.month, agg.currency, agg.refunds, CAST(agg.amount_native AS BIGINT) AS amount_native, {conv} AS amount
FROM agg
{_rate_join(rep, "CAST(agg.month + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE)", "agg.currency", "rc")}
{_rate_join(rep, "CAST(agg.month + INTERVAL 1 MONTH - INTERVAL 1 DAY AS DATE)", f"'{rep}'", "rr")}
ORDER BY agg.month, agg.currency
"""
    return con.execute(sql).df()


def trial_conversion(
    con: Connection,
    *,
    history_table: str = "subscription_history",
    within_days: int | None = None,
) -> pd.DataFrame:
    """Trials started per month and how many converted to a paid state.

    A trial is a subscription with a ``trialing`` version or a ``trial_end``; it
    converted if a later version is ``active`` or ``past_due`` at or after the trial
    end with a non-zero price (within ``within_days`` of the trial end, if given).

    Returns:
        ``month, trials, converted, conversion_rate`` by trial start month.
    """
    hist = _ident(history_table)
    limit = (
        f"AND c.first_paid <= t.trial_end + to_days({int(within_days)})"
        if within_days is not None
        else ""
    )
    sql = f"""
WITH t AS (
  SELECT subscription_id,
    min(coalesce(timezone('UTC', trial_start), timezone('UTC', valid_from))) AS trial_start,
    max(timezone('UTC', trial_end)) AS trial_end
  FROM {hist}
  WHERE status = 'trialing' OR trial_end IS NOT NULL
  GROUP BY subscription_id
),
c AS (
  SELECT h.subscription_id, min(timezone('UTC', h.valid_from)) AS first_paid
  FROM {hist} h JOIN t USING (subscription_id)
  WHERE h.status IN ('active', 'past_due') AND coalesce(h.unit_amount, 0) > 0
    AND (t.trial_end IS NULL OR timezone('UTC', h.valid_from) >= t.trial_end
         OR coalesce(timezone('UTC', h.valid_to), TIMESTAMP '9999-12-31') > t.trial_end)
  GROUP BY h.subscription_id
)
SELECT CAST(date_trunc('month', t.trial_start) AS DATE) AS month,
  count(*) AS trials,
  count(c.subscription_id) FILTER (WHERE c.first_paid IS NOT NULL {limit}) AS converted
FROM t LEFT JOIN c USING (subscription_id)
GROUP BY 1 ORDER BY 1
"""
    out = con.execute(sql).df()
    out["conversion_rate"] = _ratio(out["converted"], out["trials"])
    return out
