"""Display settings shared by notebooks and dashboards.

Altair's default renderer loads vega from a CDN, which fails on a machine without
internet and leaves HTML reports blank. The ``svg`` renderer draws charts in-process
with vl-convert (a PyPI wheel, no browser or network), so executed reports and Voila
dashboards show every chart offline.
"""

from __future__ import annotations

import altair as alt
import pandas as pd


def setup_notebook(*, max_rows: int = 30) -> None:
    """Render Altair charts as inline SVG and keep tables short; call once per notebook."""
    alt.renderers.enable("svg")
    alt.data_transformers.disable_max_rows()
    pd.set_option("display.max_rows", max_rows)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)


def money(minor: float | int | None, currency: str = "usd", *, exponent: int | None = None) -> str:
    """Format minor units as a short amount, e.g. ``12345678, "usd"`` → ``USD 123,456.78``
    (``exponent``: the currency's minor-unit digits by default, ``jpy`` 0, ``kwd`` 3)."""
    if minor is None or pd.isna(minor):
        return "–"
    if exponent is None:
        from workbench.revenue.engine import currency_exponent

        exponent = currency_exponent(currency)
    return f"{currency.upper()} {minor / 10**exponent:,.{exponent}f}"
