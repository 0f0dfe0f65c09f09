"""Every worked example in shared/data/external/mrr/published_examples.json, under the
policy of the vendor that published it, plus the dbt MRR playbook's golden files."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from workbench.revenue.adapters import (
    dbt_customer_month,
    dbt_monthly_summary,
    history_frame,
    insert_history,
    periods_to_history,
)
from workbench.revenue.engine import account_month_mrr
from workbench.revenue.metrics import monthly_bridge, net_revenue_churn_rate
from workbench.schema import create_all

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
MRR_DIR = EXTERNAL / "mrr"


@pytest.fixture(scope="module")
def examples() -> dict:
    return json.loads((MRR_DIR / "published_examples.json").read_text())


def warehouse(rows: list[dict], refunds: list[dict] | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    create_all(con)
    insert_history(con, history_frame(rows))
    for r in refunds or []:
        con.execute(
            "INSERT INTO refunds (refund_id, account_id, amount, currency, created) VALUES (?, ?, ?, ?, ?)",
            [r["refund_id"], r["account_id"], r["amount"], "usd", r["created"]],
        )
    return con


def mrr_at(am: pd.DataFrame, month: str) -> int:
    return int(am.loc[am["month"] == pd.Timestamp(month), "mrr"].sum())


def account_mrr(am: pd.DataFrame, account: str, month: str) -> int:
    sel = am[(am["account_id"] == account) & (am["month"] == pd.Timestamp(month))]
    return int(sel["mrr"].sum())


# ---------------------------------------------------------------- Stripe


def test_stripe_glossary_plan_mix(examples: dict) -> None:
    case = examples["stripe_glossary"]
    rows = [
        dict(
            subscription_id=f"a{i}", account_id=f"a{i}", unit_amount=10_000, valid_from="2024-01-03"
        )
        for i in range(100)
    ] + [
        dict(
            subscription_id=f"b{i}",
            account_id=f"b{i}",
            unit_amount=60_000,
            interval="year",
            valid_from="2024-01-03",
        )
        for i in range(50)
    ]
    am = account_month_mrr(warehouse(rows), policy="stripe")
    assert mrr_at(am, "2024-01-01") == case["expected_mrr"] * 100
    assert am["is_paying"].sum() == 150


def test_stripe_glossary_rules() -> None:
    """active and past_due count; trialing, free, metered don't; canceled/unpaid churn."""
    rows = [
        dict(
            subscription_id="s_pd",
            account_id="pd",
            unit_amount=5_000,
            status="past_due",
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="s_trial",
            account_id="trial",
            unit_amount=5_000,
            status="trialing",
            trial_start="2024-01-02",
            trial_end="2024-02-15",
            valid_from="2024-01-02",
        ),
        dict(subscription_id="s_free", account_id="free", unit_amount=0, valid_from="2024-01-02"),
        # a licensed item and a metered item on one subscription
        dict(
            subscription_id="s_mix",
            account_id="mix",
            item_id="lic",
            unit_amount=2_000,
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="s_mix",
            account_id="mix",
            item_id="met",
            unit_amount=7,
            usage_type="metered",
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="s_unp",
            account_id="unp",
            unit_amount=3_000,
            valid_from="2024-01-02",
            valid_to="2024-03-10",
        ),
        dict(
            subscription_id="s_unp",
            account_id="unp",
            unit_amount=3_000,
            status="unpaid",
            valid_from="2024-03-10",
        ),
    ]
    am = account_month_mrr(warehouse(rows), policy="stripe", end="2024-03-01")
    assert account_mrr(am, "pd", "2024-01-01") == 5_000
    assert account_mrr(am, "trial", "2024-01-01") == 0
    assert account_mrr(am, "trial", "2024-02-01") == 5_000  # converts when the trial ends
    feb_trial = am[(am["account_id"] == "trial") & (am["month"] == pd.Timestamp("2024-02-01"))]
    assert feb_trial["new_mrr"].item() == 5_000
    assert "free" not in set(am["account_id"])
    assert account_mrr(am, "mix", "2024-01-01") == 2_000
    unp = am[(am["account_id"] == "unp") & (am["month"] == pd.Timestamp("2024-03-01"))]
    assert unp["churn_mrr"].item() == -3_000 and bool(unp["churned_logo"].item())


def test_stripe_support_cases(examples: dict) -> None:
    cases = examples["stripe_support_billing_analytics"]["cases"]
    rows = [
        dict(
            subscription_id="annual",
            account_id="annual",
            unit_amount=cases[0]["annual_price"] * 100,
            interval="year",
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="forever",
            account_id="forever",
            unit_amount=cases[1]["monthly_price"] * 100,
            valid_from="2024-01-02",
            coupon_id="HALF",
            discount_percent_off=50.0,
            discount_duration="forever",
            discount_start="2024-01-02",
        ),
        dict(
            subscription_id="once",
            account_id="once",
            unit_amount=10_000,
            valid_from="2024-01-02",
            coupon_id="HALF1",
            discount_percent_off=50.0,
            discount_duration="once",
            discount_start="2024-01-02",
        ),
        dict(
            subscription_id="repeating",
            account_id="repeating",
            unit_amount=10_000,
            valid_from="2024-01-02",
            coupon_id="HALF3",
            discount_percent_off=50.0,
            discount_duration="repeating",
            discount_duration_in_months=3,
            discount_start="2024-01-02",
        ),
        dict(
            subscription_id="trialing",
            account_id="trialing",
            unit_amount=10_000,
            status="trialing",
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="unpaid",
            account_id="unpaid",
            unit_amount=10_000,
            status="unpaid",
            valid_from="2024-01-02",
        ),
    ]
    am = account_month_mrr(warehouse(rows), policy="stripe", end="2024-01-01")
    assert account_mrr(am, "annual", "2024-01-01") == cases[0]["expected_mrr"] * 100
    assert account_mrr(am, "forever", "2024-01-01") == cases[1]["expected_mrr"] * 100
    assert account_mrr(am, "once", "2024-01-01") == cases[2]["expected_mrr"] * 100
    assert account_mrr(am, "repeating", "2024-01-01") == cases[2]["expected_mrr"] * 100
    assert account_mrr(am, "trialing", "2024-01-01") == cases[3]["expected_mrr"] * 100
    assert account_mrr(am, "unpaid", "2024-01-01") == cases[4]["expected_mrr"] * 100


def test_finite_coupons_differ_by_policy() -> None:
    """The same once/repeating coupons: Stripe ignores them, ChartMogul/ProfitWell deduct
    them while they apply (once = the first billing period), Baremetrics deducts repeating."""
    rows = [
        dict(
            subscription_id="once",
            account_id="once",
            unit_amount=10_000,
            valid_from="2024-01-10",
            discount_percent_off=50.0,
            discount_duration="once",
            discount_start="2024-01-10",
        ),
        dict(
            subscription_id="rep",
            account_id="rep",
            unit_amount=10_000,
            valid_from="2024-01-10",
            discount_amount_off=2_500,
            discount_duration="repeating",
            discount_duration_in_months=2,
            discount_start="2024-01-10",
        ),
    ]
    con = warehouse(rows)
    expect = {
        "stripe": {"once": (10_000, 10_000), "rep": (10_000, 10_000, 10_000)},
        "chartmogul": {"once": (5_000, 10_000), "rep": (7_500, 7_500, 10_000)},
        "profitwell": {"once": (5_000, 10_000), "rep": (7_500, 7_500, 10_000)},
        "baremetrics": {"once": (10_000, 10_000), "rep": (7_500, 7_500, 10_000)},
    }
    for policy, accounts in expect.items():
        am = account_month_mrr(con, policy=policy, end="2024-03-01")
        for account, values in accounts.items():
            got = tuple(
                account_mrr(am, account, m)
                for m in ("2024-01-01", "2024-02-01", "2024-03-01")[: len(values)]
            )
            assert got == values, (policy, account, got)
        # the end of a discount is an expansion, never new business
        rep = am[am["account_id"] == "rep"].set_index("month")
        if policy != "stripe":
            assert rep.loc[pd.Timestamp("2024-03-01"), "expansion_mrr"] == 2_500


# ---------------------------------------------------------------- ChartMogul

GOLD = dict(unit_amount=50_000, interval="year")
SILVER = dict(unit_amount=3_000, interval="month")


def chartmogul_timeline_rows() -> list[dict]:
    return [
        dict(
            subscription_id="gold",
            account_id="c1",
            quantity=4,
            valid_from="2024-01-05",
            valid_to="2024-12-20",
            **GOLD,
        ),
        dict(
            subscription_id="gold",
            account_id="c1",
            quantity=4,
            valid_from="2024-12-20",
            valid_to="2025-01-05",
            cancel_at_period_end=True,
            canceled_at="2024-12-20",
            current_period_end="2025-01-05",
            **GOLD,
        ),
        dict(
            subscription_id="gold",
            account_id="c1",
            quantity=4,
            valid_from="2025-01-05",
            status="canceled",
            canceled_at="2024-12-20",
            ended_at="2025-01-05",
            current_period_end="2025-01-05",
            **GOLD,
        ),
        dict(
            subscription_id="silver",
            account_id="c1",
            quantity=2,
            valid_from="2024-01-09",
            valid_to="2024-01-23",
            **SILVER,
        ),
        dict(
            subscription_id="silver",
            account_id="c1",
            quantity=2,
            valid_from="2024-01-23",
            valid_to="2024-02-09",
            cancel_at_period_end=True,
            canceled_at="2024-01-23",
            current_period_end="2024-02-09",
            **SILVER,
        ),
        dict(
            subscription_id="silver",
            account_id="c1",
            quantity=2,
            valid_from="2024-02-09",
            status="canceled",
            canceled_at="2024-01-23",
            ended_at="2024-02-09",
            current_period_end="2024-02-09",
            **SILVER,
        ),
        dict(
            subscription_id="gold2",
            account_id="c1",
            quantity=3,
            valid_from="2025-03-10",
            unit_amount=5_000,
            interval="month",
        ),
    ]


def test_chartmogul_movement_timeline(examples: dict) -> None:
    timeline = examples["chartmogul_mrr_movements"]["timeline"]
    am = account_month_mrr(warehouse(chartmogul_timeline_rows()), policy="chartmogul").set_index(
        "month"
    )
    column = {
        "new_business": "new_mrr",
        "expansion": "expansion_mrr",
        "contraction": "contraction_mrr",
        "churn": "churn_mrr",
        "reactivation": "reactivation_mrr",
    }
    # when each event's movement is recognised under ChartMogul's default settings
    when = ["2024-01-01", "2024-01-01", "2024-02-01", "2025-01-01", "2025-03-01"]
    for step, month in zip(timeline, when, strict=True):
        got = am.loc[pd.Timestamp(month), column[step["movement"]]]
        assert got == round(step["mrr_delta"] * 100), (step["event"], got)
    # nothing else moved
    moves = am[
        ["new_mrr", "expansion_mrr", "contraction_mrr", "churn_mrr", "reactivation_mrr", "fx_mrr"]
    ]
    assert int(moves.abs().to_numpy().sum()) == sum(
        round(abs(s["mrr_delta"]) * 100) for s in timeline
    )
    assert am.loc[pd.Timestamp("2025-01-01"), "churned_logo"]


def test_chartmogul_mrr_metric_cases(examples: dict) -> None:
    spec = examples["chartmogul_mrr_metric"]
    rows = [
        dict(
            subscription_id=f"five{i}",
            account_id=f"five{i}",
            unit_amount=500,
            valid_from="2024-01-04",
        )
        for i in range(5)
    ]
    con = warehouse(rows)
    assert (
        mrr_at(account_month_mrr(con, policy="chartmogul"), "2024-01-01")
        == spec["cases"][0]["expected_mrr"] * 100
    )
    insert_history(
        con,
        history_frame(
            [
                dict(
                    subscription_id=f"thirty{i}",
                    account_id=f"thirty{i}",
                    unit_amount=3_000,
                    valid_from="2024-01-04",
                    event_id=f"e30_{i}",
                )
                for i in range(2)
            ]
        ),
    )
    assert (
        mrr_at(account_month_mrr(con, policy="chartmogul"), "2024-01-01")
        == spec["cases"][1]["expected_mrr"] * 100
    )


def test_chartmogul_rules_quarterly_onetime_refunds() -> None:
    rows = [
        dict(
            subscription_id="q",
            account_id="q",
            item_id="q1",
            unit_amount=9_000,
            interval="month",
            interval_count=3,
            valid_from="2024-01-04",
        ),
        dict(
            subscription_id="q",
            account_id="q",
            item_id="setup",
            unit_amount=50_000,
            interval=None,
            usage_type=None,
            valid_from="2024-01-04",
        ),
        dict(
            subscription_id="q",
            account_id="q",
            item_id="calls",
            unit_amount=3,
            usage_type="metered",
            valid_from="2024-01-04",
        ),
    ]
    before = account_month_mrr(warehouse(rows), policy="chartmogul", end="2024-03-01")
    refunded = warehouse(
        rows,
        refunds=[
            {"refund_id": "re_1", "account_id": "q", "amount": 9_000, "created": "2024-02-10"}
        ],
    )
    after = account_month_mrr(refunded, policy="chartmogul", end="2024-03-01")
    assert account_mrr(before, "q", "2024-01-01") == 3_000
    pd.testing.assert_frame_equal(before, after)  # refunds do not change MRR


# ---------------------------------------------------------------- Baremetrics


def test_baremetrics_cases(examples: dict) -> None:
    cases = examples["baremetrics"]["cases"]
    rows = [
        dict(
            subscription_id=f"ten{i}",
            account_id=f"ten{i}",
            unit_amount=1_000,
            valid_from="2024-01-04",
        )
        for i in range(10)
    ]
    assert (
        mrr_at(account_month_mrr(warehouse(rows), policy="baremetrics"), "2024-01-01")
        == cases[0]["expected_mrr"] * 100
    )
    rows = [
        dict(
            subscription_id="annual",
            account_id="annual",
            unit_amount=12_000,
            interval="year",
            valid_from="2024-01-04",
        ),
        dict(
            subscription_id="life",
            account_id="life",
            unit_amount=1_000,
            valid_from="2024-01-04",
            discount_percent_off=50.0,
            discount_duration="forever",
        ),
    ]
    am = account_month_mrr(warehouse(rows), policy="baremetrics")
    assert account_mrr(am, "annual", "2024-01-01") == cases[1]["expected_mrr"] * 100
    assert account_mrr(am, "life", "2024-01-01") == cases[2]["expected_mrr"] * 100


def test_baremetrics_free_delinquent_and_free_transitions() -> None:
    rows = [
        # 100% off from the start: a free user, never a paying customer
        dict(
            subscription_id="f",
            account_id="free",
            unit_amount=2_000,
            valid_from="2024-01-04",
            discount_percent_off=100.0,
            discount_duration="forever",
        ),
        # 100% off applied to a paying customer: churn
        dict(
            subscription_id="p",
            account_id="paying",
            unit_amount=2_000,
            valid_from="2024-01-04",
            valid_to="2024-03-15",
        ),
        dict(
            subscription_id="p",
            account_id="paying",
            unit_amount=2_000,
            valid_from="2024-03-15",
            discount_percent_off=100.0,
            discount_duration="forever",
            discount_start="2024-03-15",
        ),
        # past_due from 10 March: churned once delinquent for more than 30 days
        dict(
            subscription_id="d",
            account_id="delinquent",
            unit_amount=4_000,
            valid_from="2024-01-04",
            valid_to="2024-03-10",
        ),
        dict(
            subscription_id="d",
            account_id="delinquent",
            unit_amount=4_000,
            status="past_due",
            valid_from="2024-03-10",
        ),
        # upgrade from free = new customer
        dict(
            subscription_id="u",
            account_id="upgrader",
            unit_amount=0,
            valid_from="2024-01-04",
            valid_to="2024-02-20",
        ),
        dict(
            subscription_id="u", account_id="upgrader", unit_amount=3_000, valid_from="2024-02-20"
        ),
    ]
    con = warehouse(rows)
    am = account_month_mrr(con, policy="baremetrics", end="2024-05-01").set_index(
        ["account_id", "month"]
    )
    assert "free" not in am.index.get_level_values(0)
    assert am.loc[("paying", pd.Timestamp("2024-03-01")), "churn_mrr"] == -2_000
    assert am.loc[("paying", pd.Timestamp("2024-03-01")), "churned_logo"]
    assert am.loc[("delinquent", pd.Timestamp("2024-03-01")), "mrr"] == 4_000  # within 30 days
    assert am.loc[("delinquent", pd.Timestamp("2024-04-01")), "churn_mrr"] == -4_000  # 9 April
    assert am.loc[("upgrader", pd.Timestamp("2024-02-01")), "new_mrr"] == 3_000
    assert am.loc[("upgrader", pd.Timestamp("2024-02-01")), "new_logo"]
    # Stripe keeps past_due in MRR until unpaid/canceled
    stripe = account_month_mrr(con, policy="stripe", end="2024-05-01").set_index(
        ["account_id", "month"]
    )
    assert stripe.loc[("delinquent", pd.Timestamp("2024-05-01")), "mrr"] == 4_000
    # ChartMogul keeps a paying customer moved to 100% off as an active customer: contraction
    cm = account_month_mrr(con, policy="chartmogul", end="2024-05-01").set_index(
        ["account_id", "month"]
    )
    row = cm.loc[("paying", pd.Timestamp("2024-03-01"))]
    assert row["contraction_mrr"] == -2_000 and not row["churned_logo"] and row["is_customer"]


def test_baremetrics_net_revenue_churn(examples: dict) -> None:
    assert "Starting MRR" in examples["baremetrics"]["net_revenue_churn"]
    rows = [
        dict(
            subscription_id="a",
            account_id="a",
            unit_amount=10_000,
            valid_from="2024-01-04",
            valid_to="2024-02-10",
        ),
        dict(
            subscription_id="a",
            account_id="a",
            unit_amount=10_000,
            status="canceled",
            ended_at="2024-02-10",
            valid_from="2024-02-10",
        ),
        dict(
            subscription_id="b",
            account_id="b",
            unit_amount=10_000,
            valid_from="2024-01-04",
            valid_to="2024-02-12",
        ),
        dict(subscription_id="b", account_id="b", unit_amount=12_500, valid_from="2024-02-12"),
    ]
    bridge = monthly_bridge(account_month_mrr(warehouse(rows), policy="baremetrics"))
    feb = bridge.set_index("month").loc[pd.Timestamp("2024-02-01")]
    # (churned 100 - expansion 25) / starting 200 = 37.5 %
    rate = net_revenue_churn_rate(bridge).set_index("month")["net_revenue_churn_rate"]
    assert rate.loc[pd.Timestamp("2024-02-01")] == pytest.approx(37.5)
    assert feb["opening_mrr"] == 20_000


# ---------------------------------------------------------------- dbt playbook


def test_dbt_playbook_golden_files() -> None:
    folder = MRR_DIR / "dbt_mrr_playbook"
    con = duckdb.connect()
    create_all(con)
    insert_history(con, periods_to_history(pd.read_csv(folder / "subscription_periods.csv")))
    am = account_month_mrr(con, policy="dbt_playbook")
    golden = pd.read_csv(folder / "golden_mrr_by_customer_month.csv")
    ours = dbt_customer_month(am)
    key = ["customer_id", "date_month"]
    golden = golden.sort_values(key).reset_index(drop=True)
    ours = ours.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, golden[ours.columns], check_dtype=False)
    summary = pd.read_csv(folder / "golden_mrr_monthly_summary.csv")
    pd.testing.assert_frame_equal(dbt_monthly_summary(am), summary, check_dtype=False)
