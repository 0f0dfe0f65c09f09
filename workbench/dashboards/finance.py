"""The finance dashboard: MRR, its movements, segments, cohorts and the forecast.

It reads the ``finance`` snapshot that ``02_revenue`` (and ``04_forecast``) publish:
``account_months`` (the MRR engine's account-month table) and, once forecasting has
run, ``forecast`` (total MRR quantiles) and ``forecast_history``. Every number shown
comes from :func:`finance_view`, a pure function the tests call with the same
filters the widgets set.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import pandas as pd
from IPython.display import display

from workbench.dashboards.base import Dashboard, tile_html
from workbench.display import money
from workbench.revenue import charts, metrics
from workbench.revenue.engine import currency_exponent

SEGMENTS = ("region", "channel", "plan", "account_currency")
ALL = "All"


@dataclass(frozen=True)
class FinanceView:
    """Everything the dashboard shows for one choice of filters."""

    account_months: pd.DataFrame
    bridge: pd.DataFrame
    tiles: dict[str, Any]
    cohorts: pd.DataFrame
    movers: pd.DataFrame


def segment_options(account_months: pd.DataFrame) -> dict[str, list[str]]:
    """The values each segment filter offers (``All`` first)."""
    return {
        seg: [ALL, *sorted(str(v) for v in account_months[seg].dropna().unique())]
        for seg in SEGMENTS
        if seg in account_months.columns
    }


def finance_view(
    account_months: pd.DataFrame,
    *,
    segments: Mapping[str, str] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
) -> FinanceView:
    """Filter the account-month MRR table and compute what the dashboard shows.

    Args:
        account_months: The MRR engine's account-month table (``month``, ``account_id``,
            ``mrr`` and movement columns, segment columns).
        segments: Segment column -> value; ``All`` or missing means no filter.
        start: First month shown (inclusive).
        end: Last month shown (inclusive); the KPI tiles describe this month.

    Returns:
        The filtered rows, the monthly bridge, KPI tiles, the logo cohort table and the
        top movers of the last month.
    """
    chosen = {k: [v] for k, v in (segments or {}).items() if v not in (None, ALL)}
    filtered = metrics.filter_account_months(
        account_months, segments=chosen or None, start=start, end=end
    )
    if filtered.empty:
        empty = pd.DataFrame()
        return FinanceView(filtered, empty, {}, empty, empty)
    bridge = metrics.monthly_bridge(filtered)
    last = filtered["month"].max()
    tiles = metrics.kpi_tiles(filtered, month=last, bridge=bridge)
    cohorts = metrics.cohort_retention(filtered, kind="revenue", max_age=12)
    movers = metrics.top_movers(filtered, month=last, n=10)
    return FinanceView(filtered, bridge, tiles, cohorts, movers)


def csv_link(frame: pd.DataFrame, *, filename: str, label: str) -> str:
    """An HTML download link carrying ``frame`` as CSV (no server round trip)."""
    payload = base64.b64encode(frame.to_csv(index=False).encode()).decode()
    return (
        f'<a class="wb-download" download="{html.escape(filename)}" '
        f'href="data:text/csv;base64,{payload}">{html.escape(label)}</a>'
    )


def _pct(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.1f}%"


class FinanceDashboard(Dashboard):
    """MRR trend, movements waterfall, segment and period filters, cohorts, top movers,
    KPI tiles, CSV download and (after forecasting) the fan chart with its P95 downside."""

    title = "Finance: MRR and its movements"
    snapshot = "finance"
    build_before_visit = True  # all it shows comes from the snapshot

    def build(self) -> None:
        am = self.tables["account_months"]
        if not pd.api.types.is_datetime64_any_dtype(am["month"]):  # Parquet keeps datetimes
            am["month"] = pd.to_datetime(am["month"])
        self.currency = str(am["reporting_currency"].iloc[0]) if len(am) else "usd"
        # format the ~40 distinct months, not every row's date (0.1-0.2 s at the demo size)
        months = list(pd.DatetimeIndex(am["month"].unique()).sort_values().strftime("%Y-%m"))
        self.filters = {
            seg: widgets.Dropdown(options=opts, value=ALL, description=seg.replace("account_", ""))
            for seg, opts in segment_options(am).items()
        }
        for seg, dd in self.filters.items():
            dd.add_class(f"wb-filter-{seg}")
        self.period = widgets.SelectionRangeSlider(
            options=months,
            index=(max(0, len(months) - 24), len(months) - 1),
            description="months",
            layout=widgets.Layout(width="520px"),
        )
        self.tiles = widgets.HTML()
        self.charts = widgets.Output()
        self.download = widgets.HTML()
        # The account-months CSV is megabytes at the demo size: built on request, so the first
        # render does not ship it to the browser.
        self.prepare = widgets.Button(description="Account-months CSV", icon="download")
        self.prepare.add_class("wb-prepare-csv")
        self.prepare.on_click(self.guarded(self.prepare_csv))
        self.download_rows = widgets.HTML()
        self.forecast = widgets.Output()
        for w in (*self.filters.values(), self.period):
            w.observe(self.guarded(self.refresh), names="value")
        meta = self.info.get("metadata", {})
        caption = widgets.HTML(
            f"<small>Policy <b>{html.escape(str(meta.get('policy', '?')))}</b>, reporting currency "
            f"{html.escape(self.currency.upper())}, run {html.escape(str(meta.get('run_id', '?')))}, "
            f"published {html.escape(str(self.info.get('published_at', '?')))}</small>"
        )
        self.content.children = [
            caption,
            widgets.HBox(list(self.filters.values())),
            self.period,
            self.tiles,
            widgets.HBox([self.download, self.prepare, self.download_rows]),
            self.charts,
            self.forecast,
        ]
        self.refresh()
        self.draw_forecast()

    def current_view(self) -> FinanceView:
        start, end = self.period.value
        return finance_view(
            self.tables["account_months"],
            segments={seg: dd.value for seg, dd in self.filters.items()},
            start=f"{start}-01",
            end=f"{end}-01",
        )

    def prepare_csv(self, _button: object = None) -> None:
        """Put the account-months behind the current filters into a download link."""
        view = self.current_view()
        self.download_rows.value = csv_link(
            view.account_months,
            filename="mrr_account_months.csv",
            label=f"Download {len(view.account_months):,} account-months (CSV)",
        )

    def refresh(self, _change: object = None) -> None:
        view = self.current_view()
        self.charts.clear_output(wait=True)
        if view.account_months.empty:
            self.tiles.value = (
                '<div class="wb-empty" data-state="empty">No accounts match these filters.</div>'
            )
            self.download.value = self.download_rows.value = ""
            return
        t = view.tiles
        cur = self.currency
        self.tiles.value = (
            '<div style="display:flex;flex-wrap:wrap">'
            + "".join(
                [
                    tile_html(f"MRR {t['month']:%b %Y}", money(t["mrr"], cur), key="mrr"),
                    tile_html("ARR", money(t["arr"], cur), key="arr"),
                    tile_html(
                        "Paying accounts", f"{t['paying_accounts']:,}", key="paying_accounts"
                    ),
                    tile_html("ARPA", money(t["arpa"], cur), key="arpa"),
                    tile_html(
                        "Net revenue retention", _pct(t.get("net_revenue_retention")), key="nrr"
                    ),
                    tile_html(
                        "Gross revenue retention", _pct(t.get("gross_revenue_retention")), key="grr"
                    ),
                    tile_html(
                        "Logo churn (month)", _pct(t.get("logo_churn_rate")), key="logo_churn"
                    ),
                    tile_html(
                        "Quick ratio",
                        "–"
                        if t.get("quick_ratio") is None or pd.isna(t.get("quick_ratio"))
                        else f"{t['quick_ratio']:.2f}",
                        key="quick_ratio",
                    ),
                ]
            )
            + "</div>"
        )
        self.download.value = csv_link(
            view.bridge, filename="mrr_bridge.csv", label="Download the bridge (CSV)"
        )
        self.download_rows.value = ""  # a filter changed: the prepared file is stale
        with self.charts:
            display(charts.mrr_trend_chart(view.bridge, currency=cur))
            display(charts.bridge_waterfall_chart(view.bridge, currency=cur))
            if not view.cohorts.empty:
                display(charts.cohort_heatmap(view.cohorts, title="Revenue retention by cohort"))
            display(
                widgets.HTML(
                    "<h4>Top movers this month</h4>"
                    + movers_table(view.movers, cur).to_html(index=False, classes="wb-movers")
                )
            )

    def draw_forecast(self) -> None:
        with self.forecast:
            if "forecast" not in self.tables:
                display(
                    widgets.HTML(
                        '<div class="wb-empty" data-state="no-forecast">The revenue forecast appears here '
                        "once <code>04_forecast</code> has run.</div>"
                    )
                )
                return
            from workbench.forecast import downside
            from workbench.forecast_charts import fan_chart, interval_levels

            fc, hist = self.tables["forecast"], self.tables.get("forecast_history", pd.DataFrame())
            last = downside(fc).sort_values("ds").iloc[-1]
            display(
                widgets.HTML(
                    tile_html(
                        f"P95 downside MRR {pd.Timestamp(last['ds']):%b %Y}",
                        money(
                            round(float(last["downside"]) * 10 ** currency_exponent(self.currency)),
                            self.currency,
                        ),
                        key="p95_downside",
                    )
                )
            )
            levels = interval_levels(fc)  # those 04_forecast was run with
            display(fan_chart(hist, fc, levels=levels, y_title=f"MRR ({self.currency.upper()})"))


def movers_table(movers: pd.DataFrame, currency: str) -> pd.DataFrame:
    """:func:`workbench.revenue.metrics.top_movers` for people: the amounts (minor units
    of the reporting currency) in major units, the currency in the column names; the
    account's own billing currency stays as ``billing currency``."""
    exp = currency_exponent(currency)
    amounts = {"opening_mrr": "opening MRR", "mrr": "MRR", "change": "change", "fx_mrr": "FX"}
    out = movers.copy()
    for col in amounts:
        if col in out:
            out[col] = out[col].map(lambda v: "–" if pd.isna(v) else f"{v / 10**exp:,.{exp}f}")
    return out.rename(
        columns={**{c: f"{lab} ({currency.upper()})" for c, lab in amounts.items()},
                 "currency": "billing currency"}
    )  # fmt: skip


def show() -> None:
    """Build and display the finance dashboard (what the Voila notebook calls)."""
    FinanceDashboard().show()


__all__: Sequence[str] = (
    "FinanceDashboard",
    "FinanceView",
    "finance_view",
    "segment_options",
    "show",
)
