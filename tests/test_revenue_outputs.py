"""Policy reconciliation, export files and charts."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from workbench.revenue import charts
from workbench.revenue.adapters import history_frame, insert_history
from workbench.revenue.diff import diff_policies, diff_summary, policy_steps
from workbench.revenue.engine import account_month_mrr
from workbench.revenue.export import export
from workbench.revenue.metrics import cohort_retention, monthly_bridge, mrr_by_segment
from workbench.revenue.policies import get_policy
from workbench.revenue.synthetic import generate_warehouse
from workbench.schema import create_all


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    create_all(con)
    rows = [
        # a: forever coupon (both policies) + once coupon on a second subscription
        dict(subscription_id="a1", account_id="a", unit_amount=10_000, valid_from="2024-01-05",
             discount_percent_off=10.0, discount_duration="forever"),
        dict(subscription_id="a2", account_id="a", unit_amount=2_000, valid_from="2024-01-05",
             discount_percent_off=50.0, discount_duration="once", discount_start="2024-01-05"),
        # b: schedules cancellation on 10 Feb, ends 5 March
        dict(subscription_id="b", account_id="b", unit_amount=3_000, valid_from="2024-01-05", valid_to="2024-02-10"),
        dict(subscription_id="b", account_id="b", unit_amount=3_000, valid_from="2024-02-10", valid_to="2024-03-05",
             cancel_at_period_end=True, canceled_at="2024-02-10"),
        dict(subscription_id="b", account_id="b", unit_amount=3_000, status="canceled", valid_from="2024-03-05",
             canceled_at="2024-02-10", ended_at="2024-03-05"),
    ]  # fmt: skip
    insert_history(con, history_frame(rows))
    return con


def test_diff_explains_every_difference(con: duckdb.DuckDBPyConnection) -> None:
    d = diff_policies(con, "stripe", "chartmogul", end="2024-03-01").set_index(
        ["account_id", "month"]
    )
    jan_a = d.loc[("a", pd.Timestamp("2024-01-01"))]
    assert jan_a["mrr_a"] == 9_000 + 2_000 and jan_a["mrr_b"] == 9_000 + 1_000
    assert jan_a["diff_discount_durations"] == -1_000
    assert "discount_durations: {forever} -> {forever,once,repeating} (-1000)" in jan_a["reason"]
    # b: Stripe churns at the request (February), ChartMogul when it ends (March)
    feb_b = d.loc[("b", pd.Timestamp("2024-02-01"))]
    assert feb_b["mrr_diff"] == 3_000 and feb_b["diff_churn_recognition"] == 3_000
    assert "churn_recognition: cancel_request -> ended" in feb_b["reason"]
    mar_b = d.loc[("b", pd.Timestamp("2024-03-01"))]
    assert (
        mar_b["mrr_diff"] == 0
        and mar_b["churn_mrr_diff"] == -3_000
        and "reclassified" in mar_b["reason"]
    )
    # per-rule parts add up to the total difference
    parts = d[[c for c in d.columns if c.startswith("diff_")]].sum(axis=1)
    assert (parts == d["mrr_diff"]).all()
    s = diff_summary(d.reset_index())
    assert set(s["rule"]) == {"discount_durations", "churn_recognition", "free_is_churn"}


def test_policy_steps_group_rules_that_must_move_together() -> None:
    steps = policy_steps(get_policy("stripe"), get_policy("dbt_playbook"))
    switched = [fields for fields, _ in steps]
    # event -> snapshot timing and month_end -> month_start can only move together
    flat = [f for fields in switched for f in fields]
    assert set(flat) == set(get_policy("stripe").differences(get_policy("dbt_playbook")))
    assert steps[-1][1].differences(get_policy("dbt_playbook")) == []


def test_export_csv_and_parquet(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    paths = export(con, policy="chartmogul", out=tmp_path / "mrr.csv", end="2024-03-01")
    assert paths["bridge"] == tmp_path / "mrr_bridge.csv"
    am = pd.read_csv(paths["account_month"])
    bridge = pd.read_csv(paths["bridge"])
    assert set(am["policy"]) == {"chartmogul"} and am["account_id"].nunique() == 2
    assert bridge["closing_mrr"].tolist() == am.groupby("month")["mrr"].sum().tolist()
    folder = export(con, policy="stripe", out=tmp_path / "out", end="2024-03-01", by=["plan"])
    pq = pd.read_parquet(folder["account_month"])
    assert folder["account_month"].name == "mrr_account_month.parquet"
    assert len(pq) == len(account_month_mrr(con, policy="stripe", end="2024-03-01"))
    assert "plan" in pd.read_parquet(folder["bridge"]).columns
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_charts_build_and_carry_the_numbers() -> None:
    con = duckdb.connect()
    generate_warehouse(con, accounts=120, months=12, seed=3)
    am = account_month_mrr(con, policy="stripe", end="2022-12-01")
    bridge = monthly_bridge(am)
    wf = charts.waterfall_frame(bridge, start="2022-03-01", end="2022-06-01")
    assert wf["step"].iloc[0] == "Opening" and wf["step"].iloc[-1] == "Closing"
    assert wf["finish"].iloc[-2] == wf["amount"].iloc[-1]  # the steps land on closing MRR
    specs = {
        "trend": charts.mrr_trend_chart(bridge),
        "trend_by": charts.mrr_trend_chart(monthly_bridge(am, by=["region"]), color="region"),
        "movements": charts.movements_chart(bridge),
        "waterfall": charts.bridge_waterfall_chart(bridge),
        "segments": charts.segment_chart(mrr_by_segment(am, by="plan")),
        "cohorts": charts.cohort_heatmap(cohort_retention(am, kind="revenue")),
        "policies": charts.policy_comparison_chart(
            {
                "stripe": bridge,
                "baremetrics": monthly_bridge(
                    account_month_mrr(con, policy="baremetrics", end="2022-12-01")
                ),
            }
        ),
    }
    for name, chart in specs.items():
        spec = chart.to_dict()
        assert "$schema" in spec, name
    trend = specs["trend"].to_dict()
    values = trend["datasets"][next(iter(trend["datasets"]))]
    assert values[-1]["MRR"] == pytest.approx(bridge["closing_mrr"].iloc[-1] / 100)
    wf_spec = specs["waterfall"].to_dict()
    wf_values = wf_spec["datasets"][next(iter(wf_spec["datasets"]))]
    assert [v["step"] for v in wf_values][:3] == ["Opening", "New", "Expansion"]
