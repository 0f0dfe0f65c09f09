"""Bottom-up MRR forecast from accounts: current MRR x survival x expected expansion.

The top-down forecast (:mod:`workbench.forecast`) extrapolates the MRR series. This module
builds the installed base's expected MRR from the accounts instead:

* each paying account's **current MRR** (the latest month of the MRR engine's
  account-month table);
* its **survival curve** from the churn models: ``churn_30d``, ``churn_90d`` and
  ``churn_180d`` give the probability of churning within 30, 90 and 180 days, i.e.
  survival at those three points. Between them the hazard is taken as piecewise
  constant (exponential survival within each interval) and the last interval's hazard
  continues beyond 180 days, so ``S(t)`` is defined for every month of the horizon;
* **expected expansion**: the historical net expansion rate of surviving accounts
  (expansion plus contraction over opening MRR, among accounts paying at both ends of a
  month), compounded monthly.

Expected MRR ``k`` months ahead is ``sum_i mrr_i * S_i(k) * (1 + g) ** k``. It covers the
accounts paying today only: new business is not in it, so the gap to the top-down
forecast is the new (and reactivated) MRR the top-down forecast implies. The interval
reflects churn randomness alone (independent accounts, normal approximation of a sum of
Bernoulli-weighted MRR), not uncertainty in the churn model or the expansion rate.

Typical use (notebook ``05_churn``)::

    accounts = bu.account_inputs(account_months, scores)
    bottom_up = bu.bottom_up_forecast(accounts, start=first_month, h=12,
                                      expansion_rate=bu.net_expansion_rate(account_months))
    table = bu.compare(top_down, bottom_up)
    bu.comparison_chart(table)
    bu.store_bottom_up(bottom_up, table, run_id=run_id, top_down_run_id=top_down.attrs["run_id"])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from workbench.config import Settings

logger = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12
CHURN_MODELS: Mapping[int, str] = {30: "churn_30d", 90: "churn_90d", 180: "churn_180d"}
TABLE = "forecasts_bottom_up"  # warehouse table of the stored forecasts, per run
_Z90 = 1.6448536269514722


# ---------------------------------------------------------------------------
# Survival curves
# ---------------------------------------------------------------------------


def survival_curve(
    churn_probs: np.ndarray | pd.DataFrame,
    *,
    horizons_days: Sequence[float] = (30, 90, 180),
    months: int,
    days_per_month: float = DAYS_PER_MONTH,
) -> np.ndarray:
    """Monthly survival from churn probabilities at a few horizons (piecewise constant hazard).

    Args:
        churn_probs: ``(n_accounts, len(horizons_days))`` probabilities of churning within
            each horizon (e.g. the churn_30d, churn_90d and churn_180d scores). They are
            made monotone (a later horizon never churns less) and clipped to [0, 1).
        horizons_days: The horizons in days, increasing.
        months: Months ahead to return.
        days_per_month: Length of a month in days.

    Returns:
        ``(n_accounts, months)``: survival probability at the end of month 1..``months``.
    """
    p = np.asarray(churn_probs, dtype="float64")
    if p.ndim != 2 or p.shape[1] != len(horizons_days):
        raise ValueError(
            f"churn_probs must be (n_accounts, {len(horizons_days)}); got shape {p.shape}"
        )
    knots = np.asarray(horizons_days, dtype="float64")
    if np.any(np.diff(knots) <= 0) or knots[0] <= 0:
        raise ValueError("horizons_days must be positive and increasing")
    if np.isnan(p).any():
        raise ValueError("churn probabilities have missing values; fill them first")
    p = np.maximum.accumulate(np.clip(p, 0.0, 1.0 - 1e-12), axis=1)
    cum_hazard = -np.log1p(-p)  # H(t_j) = -ln S(t_j), non-decreasing
    starts = np.r_[0.0, knots[:-1]]
    widths = knots - starts
    rates = np.diff(np.c_[np.zeros(len(p)), cum_hazard], axis=1) / widths  # per day
    t = np.arange(1, months + 1, dtype="float64") * days_per_month
    # Cumulative hazard at t: full intervals before t plus the part of t's interval.
    seg = np.minimum(np.searchsorted(knots, t, side="left"), len(knots) - 1)
    h_before = np.c_[np.zeros(len(p)), cum_hazard][:, seg]  # H at the start of t's interval
    elapsed = t - starts[seg]
    return np.exp(-(h_before + rates[:, seg] * elapsed))


def churn_probabilities(
    scores: pd.DataFrame,
    *,
    models: Mapping[int, str] = CHURN_MODELS,
) -> pd.DataFrame:
    """Account x horizon churn probabilities from the long ``scores`` table.

    Args:
        scores: Rows of :func:`workbench.models.scoring.score_accounts` (``entity_id`` or
            ``account_id``, ``model_name``, ``score``, optionally ``as_of``); the latest
            ``as_of`` per account and model wins.
        models: Horizon in days to registered model name. Horizons without scores are
            left out (the survival curve uses the ones present).

    Returns:
        ``account_id`` and one column ``p_<days>d`` per horizon scored, shortest first
        (accounts scored by every one of those models only).
    """
    key = "account_id" if "account_id" in scores.columns else "entity_id"
    rows = scores[scores["model_name"].isin(list(models.values()))]
    if "as_of" in rows.columns:
        rows = rows.sort_values("as_of", kind="stable")
    rows = rows.drop_duplicates([key, "model_name"], keep="last")
    present = [d for d in sorted(models) if models[d] in set(rows["model_name"])]
    if not present:
        raise ValueError(
            f"no scores from any of {sorted(models.values())}; train and score the churn "
            "models first (notebook 05_churn, horizons 30,90,180)"
        )
    wide = rows.pivot(index=key, columns="model_name", values="score")
    wide = wide[[models[d] for d in present]].dropna()
    wide.columns = [f"p_{d}d" for d in present]
    return wide.rename_axis("account_id").reset_index()


def _horizons(columns: Sequence[str]) -> list[int]:
    """Horizons in days of the ``p_<days>d`` columns, increasing."""
    found = sorted(int(c[2:-1]) for c in columns if re.fullmatch(r"p_\d+d", c))
    if not found:
        raise ValueError("no churn probability columns (p_30d, p_90d, ...); see account_inputs")
    return found


# ---------------------------------------------------------------------------
# Inputs from the MRR engine
# ---------------------------------------------------------------------------


def net_expansion_rate(
    account_months: pd.DataFrame,
    *,
    months: int = 12,
) -> float:
    """Monthly net expansion rate of surviving accounts over the last ``months`` months.

    Among account-months paying at the start and at the end of the month
    (``opening_mrr > 0`` and ``mrr > 0``): ``sum(mrr - opening_mrr - fx_mrr) /
    sum(opening_mrr)``, i.e. expansion plus contraction (FX moves excluded) per unit of
    opening MRR, pooled over the window.

    Args:
        account_months: The MRR engine's table (``month``, ``opening_mrr``, ``mrr`` and,
            if present, ``fx_mrr``).
        months: Trailing window; the latest month counts.

    Returns:
        The rate (e.g. 0.004 = +0.4 % per month); 0.0 if no account survived a month.
    """
    df = account_months
    month = pd.to_datetime(df["month"])
    recent = month >= month.max() - pd.DateOffset(months=months - 1)
    surv = recent & (df["opening_mrr"] > 0) & (df["mrr"] > 0)
    opening = df.loc[surv, "opening_mrr"].astype("float64").sum()
    if opening <= 0:
        return 0.0
    change = df.loc[surv, "mrr"].astype("float64") - df.loc[surv, "opening_mrr"]
    if "fx_mrr" in df.columns:
        change = change - df.loc[surv, "fx_mrr"].astype("float64")
    return float(change.sum() / opening)


def minor_per_major(account_months: pd.DataFrame) -> float:
    """Minor units per major unit of the table's reporting currency (100 for USD, 1 for
    JPY, 1000 for KWD); 100 when the table does not say which currency it is in."""
    from workbench.revenue.engine import currency_exponent

    col = account_months.get("reporting_currency")
    if col is None or not len(col.dropna()):
        return 100.0
    return float(10 ** currency_exponent(str(col.dropna().iloc[0])))


def current_mrr(account_months: pd.DataFrame, *, scale: float | None = None) -> pd.DataFrame:
    """MRR of the accounts paying in the latest month, in major units.

    Args:
        account_months: The MRR engine's table (``month``, ``account_id``, ``mrr`` in
            minor units of the reporting currency).
        scale: Divide by this (default: :func:`minor_per_major` of the table's reporting
            currency, as the top-down forecast does).

    Returns:
        ``account_id``, ``mrr`` (float, > 0) with ``attrs["month"]`` the month used.
    """
    scale = minor_per_major(account_months) if scale is None else scale
    month = pd.to_datetime(account_months["month"])
    last = month.max()
    rows = account_months[(month == last) & (account_months["mrr"] > 0)]
    out = (
        rows.groupby("account_id", as_index=False)["mrr"]
        .sum()
        .assign(mrr=lambda d: d["mrr"].astype("float64") / scale)
    )
    out.attrs["month"] = last
    return out


def account_inputs(
    account_months: pd.DataFrame,
    scores: pd.DataFrame,
    *,
    models: Mapping[int, str] = CHURN_MODELS,
    scale: float | None = None,
) -> pd.DataFrame:
    """Join current MRR with churn probabilities; unscored paying accounts get the mean.

    Accounts paying in the latest month without a score (e.g. signed up after the
    scoring time) get the MRR-weighted mean probabilities of the scored accounts, and
    are counted in ``attrs["unscored"]``.

    Returns:
        ``account_id``, ``mrr`` and ``p_<days>d`` columns; ``attrs["month"]`` is the
        month whose MRR is used, ``attrs["unscored"]`` the number of filled accounts.
    """
    mrr = current_mrr(account_months, scale=scale)
    probs = churn_probabilities(scores, models=models)
    out = mrr.merge(probs, on="account_id", how="left")
    cols = [c for c in out.columns if c.startswith("p_")]
    scored = out[cols[0]].notna()
    if not scored.any():
        raise ValueError(
            "none of the paying accounts has churn scores; score them first "
            "(workbench.models.scoring.score_accounts)"
        )
    weights = out.loc[scored, "mrr"]
    for col in cols:
        out[col] = out[col].fillna(float(np.average(out.loc[scored, col], weights=weights)))
    out.attrs["month"] = mrr.attrs["month"]
    out.attrs["unscored"] = int((~scored).sum())
    return out


# ---------------------------------------------------------------------------
# The forecast
# ---------------------------------------------------------------------------


def bottom_up_forecast(
    accounts: pd.DataFrame,
    *,
    start: pd.Timestamp | str,
    h: int,
    expansion_rate: float = 0.0,
) -> pd.DataFrame:
    """Expected MRR of today's paying accounts for each of the next ``h`` months.

    Args:
        accounts: ``mrr`` and ``p_<days>d`` churn probability columns (e.g. ``p_30d``,
            ``p_90d``, ``p_180d`` from :func:`account_inputs`).
        start: The first forecast month (month 1 ahead, e.g. the top-down's first ``ds``).
        h: Months ahead.
        expansion_rate: Monthly net expansion of surviving accounts
            (:func:`net_expansion_rate`), compounded.

    Returns:
        One row per month: ``ds``, ``step``, ``expected_accounts``, ``bottom_up``
        (expected MRR with expansion), ``bottom_up_churn_only`` (without expansion) and
        ``bottom_up-lo-90``/``bottom_up-hi-90`` (churn randomness only).
    """
    if h < 1:
        raise ValueError("h must be at least 1")
    if "mrr" not in accounts.columns:
        raise ValueError("accounts is missing column 'mrr'; see account_inputs")
    horizons_days = _horizons(accounts.columns)
    cols = [f"p_{d}d" for d in horizons_days]
    surv = survival_curve(accounts[cols].to_numpy(), horizons_days=horizons_days, months=h)
    mrr = accounts["mrr"].to_numpy(dtype="float64")
    growth = (1.0 + expansion_rate) ** np.arange(1, h + 1)
    churn_only = mrr @ surv
    expected = churn_only * growth
    sd = np.sqrt((mrr**2) @ (surv * (1.0 - surv))) * growth
    ds = pd.date_range(pd.Timestamp(start), periods=h, freq="MS")
    return pd.DataFrame(
        {
            "ds": ds,
            "step": np.arange(1, h + 1),
            "expected_accounts": surv.sum(axis=0),
            "bottom_up": expected,
            "bottom_up_churn_only": churn_only,
            "bottom_up-lo-90": np.maximum(expected - _Z90 * sd, 0.0),
            "bottom_up-hi-90": expected + _Z90 * sd,
        }
    )


def forecast_from_accounts(
    account_months: pd.DataFrame,
    scores: pd.DataFrame,
    *,
    h: int,
    expansion_months: int = 12,
    scale: float | None = None,
) -> pd.DataFrame:
    """The bottom-up forecast from the MRR engine's table and the churn scores, in one call.

    Month 1 is the month after the latest month of ``account_months`` (the top-down
    forecast's first month too).

    Args:
        account_months: The MRR engine's account-month table (the ``finance`` snapshot's
            ``account_months``).
        scores: Churn scores (``score_accounts`` rows of churn_30d/90d/180d).
        h: Months ahead.
        expansion_months: Trailing months for :func:`net_expansion_rate`.
        scale: Minor to major units (default: the reporting currency's).

    Returns:
        :func:`bottom_up_forecast`'s frame plus ``expansion_rate``; ``attrs`` hold
        ``accounts``, ``unscored`` and ``mrr_month``.
    """
    accounts = account_inputs(account_months, scores, scale=scale)
    rate = net_expansion_rate(account_months, months=expansion_months)
    start = pd.Timestamp(accounts.attrs["month"]) + pd.DateOffset(months=1)
    out = bottom_up_forecast(accounts, start=start, h=h, expansion_rate=rate)
    out["expansion_rate"] = rate
    out.attrs.update(accounts=len(accounts), unscored=accounts.attrs["unscored"], mrr_month=start)
    return out


def total_mrr(account_months: pd.DataFrame, *, scale: float | None = None) -> pd.DataFrame:
    """Actual total MRR per month (``ds``, ``y`` in major units), for charts."""
    scale = minor_per_major(account_months) if scale is None else scale
    out = account_months.groupby("month", as_index=False)["mrr"].sum()
    return pd.DataFrame(
        {"ds": pd.to_datetime(out["month"]), "y": out["mrr"].astype("float64") / scale}
    )


def compare(
    top_down: pd.DataFrame,
    bottom_up: pd.DataFrame,
    *,
    model: str = "Forecast",
    level: int = 80,
) -> pd.DataFrame:
    """Top-down vs bottom-up, month by month.

    Args:
        top_down: One series of the top-down forecast (``ds``, ``model`` and, if present,
            its ``-lo-<level>``/``-hi-<level>`` columns), e.g. ``unique_id == "total"``.
        bottom_up: From :func:`bottom_up_forecast`.
        model: The top-down point column.
        level: The top-down interval to show.

    Returns:
        ``ds``, ``top_down`` (and its interval), ``bottom_up``, ``bottom_up_churn_only``,
        ``gap`` (top-down minus bottom-up: the new and reactivated MRR the top-down
        forecast implies) and ``gap_pct`` (of the top-down).
    """
    td = top_down.copy()
    td["ds"] = _naive_month(td["ds"])
    keep = {model: "top_down"}
    for side in ("lo", "hi"):
        col = f"{model}-{side}-{level}"
        if col in td.columns:
            keep[col] = f"top_down-{side}-{level}"
    td = td[["ds", *keep]].rename(columns=keep)
    bu = bottom_up.assign(ds=_naive_month(bottom_up["ds"]))
    bu = bu[["ds", "bottom_up", "bottom_up_churn_only", "bottom_up-lo-90", "bottom_up-hi-90"]]
    out = td.merge(bu, on="ds", how="inner", validate="one_to_one")
    if out.empty:
        raise ValueError(
            "top-down and bottom-up forecasts share no month; build the bottom-up from the "
            "top-down's first ds (start=top_down['ds'].min())"
        )
    out["gap"] = out["top_down"] - out["bottom_up"]
    out["gap_pct"] = 100.0 * out["gap"] / out["top_down"].where(out["top_down"] != 0)
    return out.sort_values("ds").reset_index(drop=True)


def _naive_month(ds: pd.Series) -> pd.Series:
    s = pd.to_datetime(ds)
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.astype("datetime64[ns]")


def comparison_chart(
    table: pd.DataFrame,
    *,
    history: pd.DataFrame | None = None,
    y_title: str = "MRR",
    width: int = 560,
    height: int = 260,
) -> Any:
    """Altair chart: top-down (line and band) against bottom-up (line and band).

    Args:
        table: From :func:`compare`.
        history: Optional ``ds``, ``y`` of the actual total MRR, drawn in grey.
        y_title: Axis title (e.g. ``MRR (USD)``).
        width: Chart width in pixels.
        height: Chart height in pixels.

    Returns:
        An ``alt.LayerChart``.
    """
    import altair as alt

    series = []
    bands = []
    lo_td = [c for c in table.columns if c.startswith("top_down-lo-")]
    for name, col, lo, hi in (
        ("top-down", "top_down", lo_td[0] if lo_td else None, None),
        ("bottom-up (today's accounts)", "bottom_up", "bottom_up-lo-90", "bottom_up-hi-90"),
        ("bottom-up, churn only", "bottom_up_churn_only", None, None),
    ):
        series.append(pd.DataFrame({"ds": table["ds"], "value": table[col], "forecast": name}))
        if lo is not None:
            hi = hi or lo.replace("-lo-", "-hi-")
            bands.append(
                pd.DataFrame(
                    {"ds": table["ds"], "lo": table[lo], "hi": table[hi], "forecast": name}
                )
            )
    if history is not None:
        hist = pd.DataFrame(
            {"ds": _naive_month(history["ds"]), "value": history["y"], "forecast": "actual"}
        )
        series.insert(0, hist)
    lines_df = pd.concat(series, ignore_index=True)
    domain = list(dict.fromkeys(lines_df["forecast"]))
    palette = {
        "actual": "#7f7f7f",
        "top-down": "#1f77b4",
        "bottom-up (today's accounts)": "#d62728",
        "bottom-up, churn only": "#ff9896",
    }
    color = alt.Color(
        "forecast:N", scale=alt.Scale(domain=domain, range=[palette[d] for d in domain])
    )
    base = alt.Chart(lines_df).encode(
        x=alt.X("ds:T", title="month"), y=alt.Y("value:Q", title=y_title), color=color
    )
    layers = []
    if bands:
        band_df = pd.concat(bands, ignore_index=True)
        layers.append(
            alt.Chart(band_df)
            .mark_area(opacity=0.15)
            .encode(x="ds:T", y="lo:Q", y2="hi:Q", color=color)
        )
    layers.append(base.mark_line(point=True))
    return alt.layer(*layers).properties(
        width=width, height=height, title="Top-down vs bottom-up MRR forecast"
    )


def top_down_total(
    con: Any, *, run_id: str, unique_id: str = "total", table: str = "forecasts"
) -> pd.DataFrame:
    """The stored top-down forecast of one series for a run (warehouse table ``forecasts``).

    Falls back to the latest run in the table (run ids sort by time) when ``run_id`` has no
    rows, e.g. when 05 is run by hand after a pipeline run; ``attrs["run_id"]`` says which.

    Raises:
        LookupError: The table is missing or holds no forecast of ``unique_id``.
    """
    try:
        rows = con.execute(
            f"SELECT * FROM {table} WHERE unique_id = ? AND run_id = ? ORDER BY ds",
            [unique_id, run_id],
        ).df()
        used = run_id
        if rows.empty:
            latest = con.execute(
                f"SELECT max(run_id) FROM {table} WHERE unique_id = ?", [unique_id]
            ).fetchone()[0]
            rows = con.execute(
                f"SELECT * FROM {table} WHERE unique_id = ? AND run_id = ? ORDER BY ds",
                [unique_id, latest],
            ).df()
            used = latest
    except Exception as exc:  # noqa: BLE001 - duckdb CatalogException
        raise LookupError(
            f"no '{table}' table in the warehouse; run notebooks/04_forecast.ipynb first"
        ) from exc
    if rows.empty:
        raise LookupError(f"'{table}' holds no forecast of {unique_id!r}; run 04_forecast first")
    if used != run_id:
        logger.warning("no top-down forecast for run %s; using run %s", run_id, used)
    rows.attrs["run_id"] = used
    return rows


def stored_rows(
    bottom_up: pd.DataFrame,
    comparison: pd.DataFrame,
    *,
    run_id: str,
    top_down_run_id: str,
    unique_id: str = "total",
) -> pd.DataFrame:
    """The rows of table :data:`TABLE` for one run.

    Args:
        bottom_up: From :func:`forecast_from_accounts` (or :func:`bottom_up_forecast`).
        comparison: From :func:`compare` of it with the top-down forecast.
        run_id: The pipeline run storing them.
        top_down_run_id: The run whose top-down forecast was compared
            (:func:`top_down_total`'s ``attrs["run_id"]``).
        unique_id: The series (``total``: company MRR).

    Returns:
        Every month of ``bottom_up`` (its columns) with the comparison's ``top_down`` and
        ``gap`` (missing for a month the top-down forecast does not cover), ``unique_id``,
        ``run_id`` and ``top_down_run_id``.
    """
    rows = bottom_up.merge(comparison[["ds", "top_down", "gap"]], on="ds", how="left")
    return rows.assign(unique_id=unique_id, run_id=run_id, top_down_run_id=top_down_run_id)


def store_bottom_up(
    bottom_up: pd.DataFrame,
    comparison: pd.DataFrame,
    *,
    run_id: str,
    top_down_run_id: str,
    settings: Settings | None = None,
) -> int:
    """Store a run's bottom-up forecast in the warehouse table :data:`TABLE`.

    The rows of :func:`stored_rows` replace the run's earlier rows (other runs are kept).
    Opens the warehouse for writing: call it outside any other warehouse block.

    Args:
        settings: Where the warehouse is (default: loaded).

    Returns:
        Rows stored (one per forecast month).
    """
    from workbench.publishing import store_frame

    rows = stored_rows(bottom_up, comparison, run_id=run_id, top_down_run_id=top_down_run_id)
    return store_frame(rows, table=TABLE, settings=settings, replace_where={"run_id": run_id})


__all__: Sequence[str] = [
    "CHURN_MODELS",
    "TABLE",
    "account_inputs",
    "bottom_up_forecast",
    "churn_probabilities",
    "compare",
    "comparison_chart",
    "current_mrr",
    "forecast_from_accounts",
    "net_expansion_rate",
    "store_bottom_up",
    "stored_rows",
    "survival_curve",
    "top_down_total",
    "total_mrr",
]
