"""KPIs, cohorts, segments, dashboard helpers and warehouse-side revenue metrics."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from workbench.revenue.adapters import history_frame, insert_history
from workbench.revenue.engine import account_month_mrr
from workbench.revenue.metrics import (
    bridge_gap,
    cohort_retention,
    cohort_table,
    filter_account_months,
    kpi_tiles,
    kpis,
    monthly_bridge,
    mrr_by_segment,
    refunds_by_month,
    top_movers,
    trailing_retention,
    trial_conversion,
    usage_revenue,
)
from workbench.schema import create_all

ACCOUNTS = [
    ("a", "EU", "sales"),
    ("b", "EU", "self-serve"),
    ("c", "NA", "self-serve"),
    ("d", "NA", "sales"),
]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    create_all(con)
    for acct, region, channel in ACCOUNTS:
        con.execute(
            "INSERT INTO accounts (account_id, region, channel) VALUES (?, ?, ?)",
            [acct, region, channel],
        )
    con.execute("INSERT INTO prices (price_id, nickname, currency, unit_amount, interval, interval_count, usage_type) VALUES "
                "('p_basic', 'Basic', 'usd', 1000, 'month', 1, 'licensed'), "
                "('p_pro', 'Pro', 'usd', 4000, 'month', 1, 'licensed'), "
                "('p_calls', 'Calls', 'usd', 2, 'month', 1, 'metered'), "
                "('p_setup', 'Setup', 'usd', 5000, NULL, NULL, NULL)")  # fmt: skip
    rows = [
        # a: Basic from Jan, upgrades to Pro in March
        dict(subscription_id="sa", account_id="a", price_id="p_basic", unit_amount=1_000, valid_from="2024-01-05", valid_to="2024-03-10"),
        dict(subscription_id="sa", account_id="a", price_id="p_pro", unit_amount=4_000, valid_from="2024-03-10"),
        # b: Basic from Jan, churns in February
        dict(subscription_id="sb", account_id="b", price_id="p_basic", unit_amount=1_000, valid_from="2024-01-07", valid_to="2024-02-15"),
        dict(subscription_id="sb", account_id="b", price_id="p_basic", unit_amount=1_000, status="canceled", valid_from="2024-02-15", ended_at="2024-02-15"),
        # c: trial in February, converts in March (Pro)
        dict(subscription_id="sc", account_id="c", price_id="p_pro", unit_amount=4_000, status="trialing", trial_start="2024-02-01",
             trial_end="2024-03-01", valid_from="2024-02-01", valid_to="2024-03-01"),
        dict(subscription_id="sc", account_id="c", price_id="p_pro", unit_amount=4_000, trial_start="2024-02-01", trial_end="2024-03-01",
             valid_from="2024-03-01"),
        # d: trial that never converts
        dict(subscription_id="sd", account_id="d", price_id="p_pro", unit_amount=4_000, status="trialing", trial_start="2024-02-03",
             trial_end="2024-03-03", valid_from="2024-02-03", valid_to="2024-03-03"),
        dict(subscription_id="sd", account_id="d", price_id="p_pro", unit_amount=4_000, status="canceled", valid_from="2024-03-03",
             ended_at="2024-03-03"),
    ]  # fmt: skip
    insert_history(con, history_frame(rows))
    con.execute("INSERT INTO invoices (invoice_id, account_id, status, currency, created) VALUES "
                "('in_1', 'a', 'paid', 'usd', TIMESTAMPTZ '2024-02-05 00:00:00+00'), "
                "('in_2', 'a', 'void', 'usd', TIMESTAMPTZ '2024-02-06 00:00:00+00')")  # fmt: skip
    con.execute("INSERT INTO invoice_lines (line_id, invoice_id, price_id, type, amount, currency, period_start) VALUES "
                "('l1', 'in_1', 'p_calls', 'subscription', 740, 'usd', TIMESTAMPTZ '2024-01-05 00:00:00+00'), "
                "('l2', 'in_1', 'p_basic', 'subscription', 1000, 'usd', TIMESTAMPTZ '2024-02-05 00:00:00+00'), "
                "('l3', 'in_1', NULL, 'invoiceitem', 5000, 'usd', NULL), "
                "('l4', 'in_2', 'p_calls', 'subscription', 999, 'usd', TIMESTAMPTZ '2024-01-05 00:00:00+00')")  # fmt: skip
    con.execute(
        "INSERT INTO refunds (refund_id, account_id, amount, currency, created, status) VALUES "
        "('re_1', 'a', 300, 'usd', TIMESTAMPTZ '2024-02-20 00:00:00+00', 'succeeded')"
    )
    return con


@pytest.fixture(scope="module")
def am(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return account_month_mrr(con, policy="stripe", end="2024-04-01")


def test_kpis(am: pd.DataFrame) -> None:
    k = kpis(monthly_bridge(am)).set_index("month")
    jan, feb, mar = (k.loc[pd.Timestamp(m)] for m in ("2024-01-01", "2024-02-01", "2024-03-01"))
    assert (
        jan["mrr"] == 2_000
        and jan["arr"] == 24_000
        and jan["paying_accounts"] == 2
        and jan["arpa"] == 1_000
    )
    # February: b churns -> logo churn 1/2, GRR = NRR = 1000/2000
    assert feb["logo_churn_rate"] == 0.5
    assert feb["gross_revenue_retention"] == 0.5 and feb["net_revenue_retention"] == 0.5
    # March: a expands 1000 -> 4000, c new 4000
    assert mar["mrr"] == 8_000 and mar["expansion_mrr"] == 3_000 and mar["new_mrr"] == 4_000
    assert mar["net_revenue_retention"] == 4.0 and mar["gross_revenue_retention"] == 1.0
    assert pd.isna(mar["quick_ratio"])  # nothing lost
    assert feb["quick_ratio"] == 0.0


def test_retention_counts_only_accounts_paying_at_the_start_of_the_month() -> None:
    # "o" pays 1,000 all January; "n" starts at 5,000 on Jan 5 and ends on Jan 20; "u" starts
    # at 100 on Jan 3 and upgrades to 300 on Jan 25. Under the stripe policy n and u show
    # new MRR, churn and expansion in January, but neither was paying when it began.
    con = duckdb.connect()
    create_all(con)
    rows = [
        dict(subscription_id="so", account_id="o", unit_amount=100_000, valid_from="2023-12-01"),
        dict(subscription_id="sn", account_id="n", unit_amount=500_000, valid_from="2024-01-05", valid_to="2024-01-20"),
        dict(subscription_id="sn", account_id="n", unit_amount=500_000, status="canceled", valid_from="2024-01-20",
             ended_at="2024-01-20", canceled_at="2024-01-20"),
        dict(subscription_id="su", account_id="u", unit_amount=10_000, valid_from="2024-01-03", valid_to="2024-01-25"),
        dict(subscription_id="su", account_id="u", unit_amount=30_000, valid_from="2024-01-25"),
    ]  # fmt: skip
    insert_history(con, history_frame(rows))
    am = account_month_mrr(con, policy="stripe", end="2024-01-01")
    bridge = monthly_bridge(am).set_index("month")
    jan = bridge.loc[pd.Timestamp("2024-01-01")]
    # the bridge still carries every movement ...
    assert jan["churn_mrr"] == -500_000 and jan["expansion_mrr"] == 20_000
    assert jan["churned_logos"] == 1
    # ... and, apart, those of the opening customers (none here)
    assert (
        jan[["existing_churn_mrr", "existing_expansion_mrr", "existing_churned_logos"]].eq(0).all()
    )
    # the existing_* columns are a breakdown, not more movements: the bridge still holds
    assert bridge_gap(bridge.reset_index()) == 0
    assert bridge_gap(bridge.reset_index().assign(closing_mrr=lambda b: b["closing_mrr"] + 7)) == 7
    k = kpis(bridge.reset_index()).set_index("month").loc[pd.Timestamp("2024-01-01")]
    assert k["gross_revenue_retention"] == 1.0 and k["net_revenue_retention"] == 1.0
    assert k["logo_churn_rate"] == 0.0


def test_segments_and_cohorts(am: pd.DataFrame) -> None:
    seg = mrr_by_segment(am, by="plan").set_index(["month", "segment"])
    assert seg.loc[(pd.Timestamp("2024-03-01"), "Pro"), "mrr"] == 8_000
    assert seg.loc[(pd.Timestamp("2024-01-01"), "Basic"), "share"] == 1.0
    region = mrr_by_segment(am, by="region").set_index(["month", "segment"])
    assert region.loc[(pd.Timestamp("2024-03-01"), "NA"), "mrr"] == 4_000
    logo = cohort_retention(am, kind="logo").set_index(["cohort_month", "age"])
    jan = pd.Timestamp("2024-01-01")
    assert logo.loc[(jan, 0), "cohort_size"] == 2
    assert logo.loc[(jan, 1), "retention"] == 0.5 and logo.loc[(jan, 3), "retention"] == 0.5
    revenue = cohort_retention(am, kind="revenue").set_index(["cohort_month", "age"])
    assert revenue.loc[(jan, 2), "retention"] == 2.0  # 4000 / 2000: net expansion
    wide = cohort_table(am, kind="logo", max_age=3)
    assert wide.loc[pd.Timestamp("2024-03-01"), "cohort_size"] == 1
    assert pd.isna(wide.loc[pd.Timestamp("2024-03-01"), 2])  # in the future


def test_dashboard_helpers(am: pd.DataFrame) -> None:
    eu = filter_account_months(am, segments={"region": ["EU"]}, start="2024-02-01")
    assert set(eu["account_id"]) == {"a", "b"} and eu["month"].min() == pd.Timestamp("2024-02-01")
    tiles = kpi_tiles(am, month="2024-03-01")
    assert tiles["mrr"] == 8_000 and tiles["mrr_change"] == 7_000 and tiles["paying_accounts"] == 2
    assert tiles["reporting_currency"] == "usd"
    assert kpi_tiles(am)["month"].isoformat() == "2024-04-01"
    # a bridge the caller already has is used as given (not recomputed)
    bridge = monthly_bridge(am)
    assert kpi_tiles(am, month="2024-03-01", bridge=bridge) == tiles
    doubled = bridge.assign(closing_mrr=bridge["closing_mrr"] * 2)
    assert kpi_tiles(am, month="2024-03-01", bridge=doubled)["mrr"] == 16_000
    movers = top_movers(am, month="2024-03-01", n=5)
    assert movers["account_id"].tolist() == ["c", "a"] and movers["change"].tolist() == [
        4_000,
        3_000,
    ]
    churned = top_movers(am, month="2024-02-01", movement="churn")
    assert churned["account_id"].tolist() == ["b"]


def test_trailing_retention(am: pd.DataFrame) -> None:
    r = trailing_retention(am, window=2).set_index("month")
    mar = r.loc[pd.Timestamp("2024-03-01")]  # accounts paying in January: a (1000), b (1000)
    assert mar["starting_mrr"] == 2_000 and mar["retained_mrr"] == 4_000
    assert mar["net_revenue_retention"] == 2.0 and mar["gross_revenue_retention"] == 0.5
    assert mar["logo_retention"] == 0.5


def test_trial_conversion(con: duckdb.DuckDBPyConnection) -> None:
    t = trial_conversion(con).set_index("month")
    feb = t.loc[pd.Timestamp("2024-02-01")]
    assert feb["trials"] == 2 and feb["converted"] == 1 and feb["conversion_rate"] == 0.5


def test_usage_and_refunds_outside_mrr(con: duckdb.DuckDBPyConnection, am: pd.DataFrame) -> None:
    usage = usage_revenue(con, kinds=("metered", "one_time"))
    got = {(r.kind, r.month.strftime("%Y-%m")): r.amount for r in usage.itertuples()}
    assert got == {
        ("metered", "2024-01"): 740,
        ("one_time", "2024-02"): 5_000,
    }  # void invoice ignored
    refunds = refunds_by_month(con)
    assert refunds["amount"].tolist() == [300]
    # neither changes MRR: a's February MRR is its price
    assert (
        am[(am["account_id"] == "a") & (am["month"] == pd.Timestamp("2024-02-01"))]["mrr"].item()
        == 1_000
    )
