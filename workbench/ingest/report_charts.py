"""Altair charts for the ingestion report (``01_ingest``): what arrived, what was kept,
what was quarantined and why, and how fresh each source is."""

from __future__ import annotations

import altair as alt
import pandas as pd


def arrivals_chart(arrivals: pd.DataFrame, *, top_types: int = 12) -> alt.Chart:
    """Events accepted per day (from ``ingest_health()["arrivals"]``), coloured by source, and
    the most frequent event types beside it."""
    if arrivals.empty:
        return (
            alt.Chart(pd.DataFrame({"note": ["nothing ingested yet"]}))
            .mark_text()
            .encode(text="note")
        )
    df = arrivals.copy()
    df["day"] = pd.to_datetime(df["day"]).dt.tz_localize(None)
    daily = df.groupby([pd.Grouper(key="day", freq="W"), "source"], as_index=False)["events"].sum()
    by_day = (
        alt.Chart(daily, title="Events by week and source")
        .mark_area()
        .encode(
            x=alt.X("day:T", title="Week"),
            y=alt.Y("events:Q", title="Events", stack=True),
            color=alt.Color("source:N", title="Source"),
            tooltip=["day:T", "source:N", "events:Q"],
        )
        .properties(width=420, height=220)
    )
    types = df.groupby(["type", "disposition"], as_index=False)["events"].sum()
    keep = types.groupby("type")["events"].sum().nlargest(top_types).index
    by_type = (
        alt.Chart(types[types["type"].isin(keep)], title=f"Top {top_types} event types")
        .mark_bar()
        .encode(
            x=alt.X("events:Q", title="Events"),
            y=alt.Y("type:N", sort="-x", title=None),
            color=alt.Color("disposition:N", title="Disposition"),
            tooltip=["type:N", "disposition:N", "events:Q"],
        )
        .properties(width=320, height=220)
    )
    return alt.hconcat(by_day, by_type).resolve_scale(color="independent")


def quarantine_chart(reasons: pd.DataFrame) -> alt.Chart:
    """Quarantined rows by rule and table (from ``ingest_health()["quarantine_reasons"]``)."""
    if reasons.empty:
        return (
            alt.Chart(pd.DataFrame({"note": ["nothing quarantined"]}), title="Quarantine")
            .mark_text()
            .encode(text="note")
        )
    df = reasons.assign(
        where=reasons["table_name"].fillna("(file)") + "." + reasons["column_name"].fillna("*")
    )
    return (
        alt.Chart(df, title="Quarantined rows by rule")
        .mark_bar()
        .encode(
            x=alt.X("rows:Q", title="Rows"),
            y=alt.Y("rule:N", sort="-x", title=None),
            color=alt.Color("source:N"),
            tooltip=["source:N", "rule:N", "where:N", "rows:Q"],
        )
        .properties(width=420, height=max(60, 24 * df["rule"].nunique()))
    )


def conservation_chart(conservation: pd.DataFrame) -> alt.Chart:
    """Received = accepted + quarantined + duplicates, per source, as stacked bars."""
    if conservation.empty:
        return alt.Chart(pd.DataFrame({"note": ["no loads yet"]})).mark_text().encode(text="note")
    totals = conservation.groupby("source", as_index=False)[
        ["accepted", "quarantined", "duplicates"]
    ].sum()
    long = totals.melt(id_vars="source", var_name="outcome", value_name="rows")
    return (
        alt.Chart(long, title="Where every received record went")
        .mark_bar()
        .encode(
            x=alt.X("rows:Q", title="Records", stack="normalize", axis=alt.Axis(format="%")),
            y=alt.Y("source:N", title=None),
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(
                    domain=["accepted", "duplicates", "quarantined"],
                    range=["#4c78a8", "#bab0ac", "#e45756"],
                ),
            ),
            tooltip=["source:N", "outcome:N", "rows:Q"],
        )
        .properties(width=420, height=30 * totals["source"].nunique() + 20)
    )
