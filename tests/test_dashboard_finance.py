"""The finance dashboard: its pure view, then the real thing in Voila and headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from browser import chromium_page, voila_server

from workbench.config import load_settings
from workbench.dashboards.finance import ALL, csv_link, finance_view, segment_options
from workbench.publishing import publish_tables
from workbench.revenue import account_month_mrr
from workbench.revenue.synthetic import generate_warehouse
from workbench.schema import create_all

REPO = Path(__file__).resolve().parents[1]


def _rows() -> pd.DataFrame:
    months = pd.to_datetime(["2024-01-01", "2024-01-01", "2024-02-01", "2024-02-01"])
    return pd.DataFrame(
        {
            "month": months,
            "account_id": ["a", "b", "a", "b"],
            "mrr": [1000, 500, 1500, 0],
            "opening_mrr": [0, 0, 1000, 500],
            "new_mrr": [1000, 500, 0, 0],
            "expansion_mrr": [0, 0, 500, 0],
            "contraction_mrr": [0, 0, 0, 0],
            "churn_mrr": [0, 0, 0, -500],
            "reactivation_mrr": [0, 0, 0, 0],
            "fx_mrr": [0, 0, 0, 0],
            "is_paying": [True, True, True, False],
            "new_logo": [True, True, False, False],
            "churned_logo": [False, False, False, True],
            "reactivated_logo": [False, False, False, False],
            "is_customer": [True, True, True, False],
            "cohort_month": pd.to_datetime(["2024-01-01"] * 4),
            "region": ["EU", "NA", "EU", "NA"],
            "channel": ["sales"] * 4,
            "plan": ["pro", "team", "pro", "team"],
            "account_currency": ["eur", "usd", "eur", "usd"],
            "reporting_currency": ["usd"] * 4,
            "movement": ["new", "new", "expansion", "churn"],
        }
    )


def test_view_filters_segments_and_period() -> None:
    am = _rows()
    everything = finance_view(am)
    assert everything.tiles["mrr"] == 1500 and everything.tiles["paying_accounts"] == 1
    assert list(everything.bridge["closing_mrr"]) == [1500, 1500]
    eu = finance_view(am, segments={"region": "EU", "plan": ALL})
    assert eu.tiles["mrr"] == 1500 and eu.tiles["expansion_mrr"] == 500
    na = finance_view(am, segments={"region": "NA"})
    assert na.tiles["mrr"] == 0 and na.tiles["churn_mrr"] == -500
    january = finance_view(am, end="2024-01-01")
    assert january.tiles["mrr"] == 1500 and january.tiles["new_mrr"] == 1500
    assert finance_view(am, segments={"region": "APAC"}).account_months.empty
    assert segment_options(am)["region"] == [ALL, "EU", "NA"]
    assert "base64," in csv_link(am, filename="x.csv", label="x")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    data = tmp_path_factory.mktemp("finance") / "data"
    con = duckdb.connect()
    create_all(con)
    generate_warehouse(con, accounts=300, months=14, seed=5)
    am = account_month_mrr(con, policy="stripe")
    settings = load_settings(REPO, overrides={"data_dir": data})
    publish_tables(
        "finance",
        {"account_months": am},
        settings=settings,
        metadata={"run_id": "test-run", "policy": "stripe"},
        merge=False,
    )
    return data, am


def _tile(page, key: str) -> str:
    return page.locator(f'[data-kpi="{key}"]').first.inner_text()


def _money(text: str) -> int:
    return round(float(re.sub(r"[^0-9.\-]", "", text)) * 100)


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_renders_and_filters_match_the_engine(published) -> None:
    data, am = published
    notebook = REPO / "notebooks" / "dashboards" / "finance.ipynb"
    with (
        voila_server(notebook, env={"WORKBENCH_DATA_DIR": str(data)}, cwd=REPO) as url,
        chromium_page() as page,
    ):
        page.goto(url, timeout=120_000)
        page.wait_for_selector('[data-kpi="mrr"]', timeout=120_000)
        months = sorted(pd.to_datetime(am["month"]).dt.strftime("%Y-%m").unique())
        start = months[max(0, len(months) - 24)]
        expected = finance_view(am, start=f"{start}-01")
        assert _money(_tile(page, "mrr")) == expected.tiles["mrr"]
        charts = page.locator("img[src^='data:image/svg'], .jp-RenderedSVG svg")
        charts.nth(1).wait_for(timeout=60_000)  # trend and waterfall drawn (offline SVG)
        page.screenshot(path=str(data / "finance_dashboard.png"), full_page=True)
        assert page.locator('[data-state="no-forecast"]').count() == 1
        # change the region filter the way a person does: pick from the drop-down
        region = segment_options(am)["region"][1]
        page.locator(".wb-filter-region select").select_option(region)
        want = finance_view(am, segments={"region": region}, start=f"{start}-01").tiles["mrr"]
        page.wait_for_function(
            "([want]) => { const e = document.querySelector('[data-kpi=\"mrr\"]');"
            " return e && Math.round(parseFloat(e.innerText.replace(/[^0-9.\\-]/g, '')) * 100) === want; }",
            arg=[want],
            timeout=60_000,
        )
        assert _money(_tile(page, "mrr")) == want != expected.tiles["mrr"]
        # the account-months CSV is built on request, for the filters shown
        rows = len(
            finance_view(am, segments={"region": region}, start=f"{start}-01").account_months
        )
        assert page.locator("a[download='mrr_account_months.csv']").count() == 0
        page.locator(".wb-prepare-csv").click()
        link = page.locator("a[download='mrr_account_months.csv']")
        link.wait_for(timeout=60_000)
        assert f"Download {rows:,} account-months" in link.inner_text()


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_without_data_says_what_to_run(tmp_path: Path) -> None:
    notebook = REPO / "notebooks" / "dashboards" / "finance.ipynb"
    with (
        voila_server(notebook, env={"WORKBENCH_DATA_DIR": str(tmp_path / "none")}, cwd=REPO) as url,
        chromium_page() as page,
    ):
        page.goto(url, timeout=120_000)
        page.wait_for_selector('[data-state="empty"]', timeout=120_000)
        assert "make demo" in page.locator('[data-state="empty"]').inner_text()


@pytest.mark.parametrize(("cur", "mrr_tile"), [("usd", "USD 15,000.00"), ("jpy", "JPY 1,500,000"),
                                               ("kwd", "KWD 1,500.000")])  # fmt: skip
def test_tiles_and_movers_use_the_reporting_currencys_minor_units(tmp_path, cur, mrr_tile) -> None:
    """1,500,000 minor units is 15,000 dollars, 1,500,000 yen and 1,500 dinars, as the
    charts beside the tiles already plot them."""
    from workbench.dashboards.finance import FinanceDashboard, movers_table

    am = _rows().assign(reporting_currency=cur)
    for col in [c for c in am.columns if c.endswith("_mrr")] + ["mrr"]:
        am[col] = am[col] * 1000  # February's MRR: 1,500,000 minor units
    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data")})
    dash = FinanceDashboard(settings)
    dash.tables, dash.info = {"account_months": am}, {}
    dash.currency = cur
    dash.build()
    assert re.search(r'data-kpi="mrr">([^<]*)<', dash.tiles.value).group(1) == mrr_tile
    movers = movers_table(finance_view(am).movers, cur)
    assert f"MRR ({cur.upper()})" in movers.columns
    assert mrr_tile.split(" ", 1)[1] in set(movers[f"MRR ({cur.upper()})"])
