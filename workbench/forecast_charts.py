"""Altair charts for revenue forecasts: the fan chart."""

from __future__ import annotations

import re
from collections.abc import Sequence

import altair as alt
import pandas as pd

from workbench.forecast import DS, FORECAST, ID, Y


def interval_levels(forecast: pd.DataFrame, *, model: str = FORECAST) -> list[float]:
    """The interval levels a forecast carries for ``model`` (its ``M-lo-L`` and ``M-hi-L``
    column pairs), e.g. ``[80.0, 95.0]``: what a fan chart of a stored forecast can shade."""
    pattern = re.compile(rf"{re.escape(model)}-lo-(\d+(?:\.\d+)?)")
    found = (float(m.group(1)) for c in forecast.columns if (m := pattern.fullmatch(str(c))))
    return sorted(lv for lv in found if f"{model}-hi-{lv:g}" in forecast.columns)


def fan_chart(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    unique_id: str | None = None,
    model: str = FORECAST,
    levels: Sequence[float] = (80, 95),
    title: str | None = None,
    y_title: str = "MRR",
    width: int = 640,
    height: int = 280,
) -> alt.LayerChart:
    """History line, median forecast and shaded interval bands for one series.

    Args:
        history: ``unique_id``, ``ds``, ``y``.
        forecast: From ``RevenueForecaster.predict``: ``unique_id``, ``ds``, ``model``
            and its ``-lo-L``/``-hi-L`` columns for every level in ``levels``.
        unique_id: Series to draw; may be omitted when the frames hold one series.
        model: Point-forecast column (its median for symmetric conformal intervals).
        levels: Bands to shade, widest drawn lightest.
        title: Chart title; defaults to the series id.
        y_title: Y axis title.
        width: Chart width in pixels.
        height: Chart height in pixels.

    Returns:
        A layered chart: one area per band, the history line and the forecast line.
    """
    ids = pd.unique(pd.concat([history[ID], forecast[ID]]))
    if unique_id is None:
        if len(ids) != 1:
            raise ValueError(f"{len(ids)} series in the frames; pass unique_id")
        unique_id = str(ids[0])
    hist = history.loc[history[ID] == unique_id, [DS, Y]]
    fc = forecast.loc[forecast[ID] == unique_id]
    if hist.empty and fc.empty:
        raise ValueError(f"no rows for series {unique_id!r}")
    needed = [model] + [f"{model}-{side}-{lv:g}" for lv in levels for side in ("lo", "hi")]
    missing = [c for c in needed if c not in fc.columns]
    if missing:
        raise ValueError(f"forecast lacks columns {missing}")

    x = alt.X(f"{DS}:T", title=None)
    bands = []
    for i, level in enumerate(sorted(levels, reverse=True)):
        lo, hi = f"{model}-lo-{level:g}", f"{model}-hi-{level:g}"
        band = fc[[DS, lo, hi]].rename(columns={lo: "lo", hi: "hi"}).assign(band=f"{level:g}%")
        bands.append(
            alt.Chart(band)
            .mark_area(opacity=0.18 + 0.17 * i, color="#4c78a8")
            .encode(
                x=x,
                y=alt.Y("lo:Q", title=y_title),
                y2="hi:Q",
                tooltip=[
                    alt.Tooltip(f"{DS}:T", title="month"),
                    alt.Tooltip("band:N", title="interval"),
                    alt.Tooltip("lo:Q", format=",.0f"),
                    alt.Tooltip("hi:Q", format=",.0f"),
                ],
            )
        )
    history_line = (
        alt.Chart(hist.assign(series="history"))
        .mark_line(color="#333333")
        .encode(x=x, y=alt.Y(f"{Y}:Q", title=y_title), tooltip=[f"{DS}:T", f"{Y}:Q"])
    )
    median = fc[[DS, model]].rename(columns={model: "median"})
    median_line = (
        alt.Chart(median)
        .mark_line(color="#1f4e79", strokeDash=[5, 3])
        .encode(x=x, y="median:Q", tooltip=[f"{DS}:T", alt.Tooltip("median:Q", format=",.0f")])
    )
    return alt.layer(*bands, history_line, median_line).properties(
        title=title or str(unique_id), width=width, height=height
    )
