"""Altair charts of MRR: trend, bridge waterfall, movements, segments, cohorts, policies.

Every function takes the tidy frames of ``metrics.py`` / ``diff.py`` and returns an
``alt.Chart`` (or layered chart) without displaying or saving it. Money is shown in
major units of the reporting currency (minor units / 10^exponent).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import altair as alt
import pandas as pd

from .engine import currency_exponent

MOVEMENT_LABELS = {
    "new_mrr": "New",
    "expansion_mrr": "Expansion",
    "reactivation_mrr": "Reactivation",
    "contraction_mrr": "Contraction",
    "churn_mrr": "Churn",
    "fx_mrr": "FX",
    "transfer_in_mrr": "Transfer in",
    "transfer_out_mrr": "Transfer out",
}
MOVEMENT_COLORS = {
    "New": "#2ca02c",
    "Expansion": "#98df8a",
    "Reactivation": "#17becf",
    "Contraction": "#ff9896",
    "Churn": "#d62728",
    "FX": "#9467bd",
    "Transfer in": "#c7c7c7",
    "Transfer out": "#7f7f7f",
}


def _major(values: pd.Series, currency: str) -> pd.Series:
    return values.astype(float) / 10 ** currency_exponent(currency)


def mrr_trend_chart(
    bridge: pd.DataFrame, *, currency: str = "usd", color: str | None = None, title: str = "MRR"
) -> alt.Chart:
    """Closing MRR per month as a line (one line per ``color`` segment if given).

    Needs ``month, closing_mrr`` (and the ``color`` column).
    """
    df = bridge.copy()
    df["month"] = pd.to_datetime(df["month"])
    df["MRR"] = _major(df["closing_mrr"], currency)
    enc = {
        "x": alt.X("month:T", title="Month"),
        "y": alt.Y("MRR:Q", title=f"MRR ({currency.upper()})"),
        "tooltip": ["month:T", alt.Tooltip("MRR:Q", format=",.2f")],
    }
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
        df = df.groupby(["month", color], as_index=False)["MRR"].sum()
    else:
        df = df.groupby("month", as_index=False)["MRR"].sum()
    return alt.Chart(df, title=title).mark_line(point=True).encode(**enc)


def movements_chart(bridge: pd.DataFrame, *, currency: str = "usd") -> alt.LayerChart:
    """Stacked monthly movements (gains up, losses down) with the net change as a line.

    Needs ``month`` and the movement columns of a bridge (segments are summed).
    """
    df = bridge.copy()
    df["month"] = pd.to_datetime(df["month"])
    cols = [c for c in MOVEMENT_LABELS if c in df.columns and not c.startswith("transfer")]
    long = (
        df.groupby("month", as_index=False)[cols]
        .sum()
        .melt(id_vars="month", value_vars=cols, var_name="movement", value_name="minor")
    )
    long["movement"] = long["movement"].map(MOVEMENT_LABELS)
    long["amount"] = _major(long["minor"], currency)
    net = long.groupby("month", as_index=False)["amount"].sum()
    scale = alt.Scale(domain=list(MOVEMENT_COLORS)[:6], range=list(MOVEMENT_COLORS.values())[:6])
    bars = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("yearmonth(month):O", title="Month"),
            y=alt.Y("amount:Q", stack="zero", title=f"MRR movement ({currency.upper()})"),
            color=alt.Color("movement:N", scale=scale, title="Movement"),
            tooltip=["month:T", "movement:N", alt.Tooltip("amount:Q", format=",.2f")],
        )
    )
    line = (
        alt.Chart(net)
        .mark_line(color="black", point=True)
        .encode(x="yearmonth(month):O", y="amount:Q", tooltip=["month:T", "amount:Q"])
    )
    return alt.layer(bars, line, title="MRR movements")


def waterfall_frame(
    bridge: pd.DataFrame,
    *,
    start: date | str | None = None,
    end: date | str | None = None,
) -> pd.DataFrame:
    """The bars of a bridge waterfall over ``[start, end]`` (default: the whole frame).

    Returns:
        ``step, kind, amount, begin, finish`` in minor units, from the opening MRR of
        the first month through each movement to the closing MRR of the last month.
    """
    df = bridge.copy()
    df["month"] = pd.to_datetime(df["month"])
    if start is not None:
        df = df[df["month"] >= pd.Timestamp(start)]
    if end is not None:
        df = df[df["month"] <= pd.Timestamp(end)]
    if df.empty:
        raise ValueError("no bridge months in the requested period")
    first, last = df["month"].min(), df["month"].max()
    opening = int(df.loc[df["month"] == first, "opening_mrr"].sum())
    closing = int(df.loc[df["month"] == last, "closing_mrr"].sum())
    rows = [{"step": "Opening", "kind": "total", "amount": opening, "begin": 0, "finish": opening}]
    level = opening
    for col in (
        "new_mrr",
        "expansion_mrr",
        "reactivation_mrr",
        "contraction_mrr",
        "churn_mrr",
        "fx_mrr",
    ):
        amount = int(df[col].sum()) if col in df else 0
        rows.append(
            {
                "step": MOVEMENT_LABELS[col],
                "kind": "gain" if amount >= 0 else "loss",
                "amount": amount,
                "begin": level,
                "finish": level + amount,
            }
        )
        level += amount
    transfers = sum(int(df[c].sum()) for c in ("transfer_in_mrr", "transfer_out_mrr") if c in df)
    if transfers:
        rows.append(
            {"step": "Transfers", "kind": "gain" if transfers >= 0 else "loss", "amount": transfers,
             "begin": level, "finish": level + transfers}
        )  # fmt: skip
        level += transfers
    if level != closing:
        raise ValueError(
            f"bridge does not hold: opening + movements = {level}, closing = {closing}"
        )
    rows.append(
        {"step": "Closing", "kind": "total", "amount": closing, "begin": 0, "finish": closing}
    )
    return pd.DataFrame(rows)


def bridge_waterfall_chart(
    bridge: pd.DataFrame,
    *,
    start: date | str | None = None,
    end: date | str | None = None,
    currency: str = "usd",
) -> alt.Chart:
    """Waterfall from opening MRR through new, expansion, reactivation, contraction,
    churn and FX to closing MRR over a period (needs a bridge frame)."""
    wf = waterfall_frame(bridge, start=start, end=end)
    for c in ("amount", "begin", "finish"):
        wf[c] = _major(wf[c], currency)
    order = list(wf["step"])
    return (
        alt.Chart(wf, title="MRR bridge")
        .mark_bar()
        .encode(
            x=alt.X("step:N", sort=order, title=None),
            y=alt.Y("begin:Q", title=f"MRR ({currency.upper()})"),
            y2="finish:Q",
            color=alt.Color(
                "kind:N",
                scale=alt.Scale(
                    domain=["total", "gain", "loss"], range=["#4c78a8", "#2ca02c", "#d62728"]
                ),
                legend=None,
            ),
            tooltip=["step:N", alt.Tooltip("amount:Q", format=",.2f")],
        )
    )


def segment_chart(
    by_segment: pd.DataFrame, *, currency: str = "usd", title: str = "MRR by segment"
) -> alt.Chart:
    """Stacked area of MRR per segment value (needs ``month, segment, mrr`` as from
    :func:`~.metrics.mrr_by_segment`)."""
    df = by_segment.copy()
    df["month"] = pd.to_datetime(df["month"])
    df["MRR"] = _major(df["mrr"], currency)
    return (
        alt.Chart(df, title=title)
        .mark_area()
        .encode(
            x=alt.X("month:T", title="Month"),
            y=alt.Y("MRR:Q", stack="zero", title=f"MRR ({currency.upper()})"),
            color=alt.Color("segment:N", title="Segment"),
            tooltip=["month:T", "segment:N", alt.Tooltip("MRR:Q", format=",.2f")],
        )
    )


def cohort_heatmap(cohorts: pd.DataFrame, *, title: str = "Cohort retention") -> alt.Chart:
    """Heatmap of retention by cohort (rows) and age in months (columns); needs the long
    frame of :func:`~.metrics.cohort_retention`."""
    df = cohorts.copy()
    df["cohort"] = pd.to_datetime(df["cohort_month"]).dt.strftime("%Y-%m")
    base = alt.Chart(df, title=title).encode(
        x=alt.X("age:O", title="Months since first payment"),
        y=alt.Y("cohort:O", title="Cohort"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("retention:Q", scale=alt.Scale(scheme="blues"), title="Retention"),
        tooltip=["cohort:O", "age:O", alt.Tooltip("retention:Q", format=".1%"), "cohort_size:Q"],
    )
    return rect


def policy_comparison_chart(
    bridges: Mapping[str, pd.DataFrame], *, currency: str = "usd", title: str = "MRR by policy"
) -> alt.Chart:
    """Closing MRR per month, one line per policy (``{policy name: bridge frame}``)."""
    parts = []
    for name, b in bridges.items():
        d = b.groupby("month", as_index=False)["closing_mrr"].sum()
        d["policy"] = name
        parts.append(d)
    df = pd.concat(parts, ignore_index=True)
    df["month"] = pd.to_datetime(df["month"])
    df["MRR"] = _major(df["closing_mrr"], currency)
    return (
        alt.Chart(df, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("month:T", title="Month"),
            y=alt.Y("MRR:Q", title=f"MRR ({currency.upper()})"),
            color=alt.Color("policy:N", title="Policy"),
            tooltip=["policy:N", "month:T", alt.Tooltip("MRR:Q", format=",.2f")],
        )
    )


def diff_chart(summary: pd.DataFrame, *, currency: str = "usd") -> alt.Chart:
    """Stacked bars: how much each rule moves MRR between two policies per month
    (needs :func:`~.diff.diff_summary` output)."""
    df = summary.copy()
    df["month"] = pd.to_datetime(df["month"])
    df["amount"] = _major(df["mrr_diff"], currency)
    return (
        alt.Chart(df, title="Why the policies disagree")
        .mark_bar()
        .encode(
            x=alt.X("yearmonth(month):O", title="Month"),
            y=alt.Y("amount:Q", stack="zero", title=f"MRR difference ({currency.upper()})"),
            color=alt.Color("rule:N", title="Rule"),
            tooltip=["month:T", "rule:N", alt.Tooltip("amount:Q", format=",.2f"), "accounts:Q"],
        )
    )
