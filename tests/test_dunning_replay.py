"""Replay of dunning strategies on the simulator's truth; the control group and its lift CI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.config import load_settings
from workbench.dunning import decide_with_control, in_control_group
from workbench.dunning_replay import (
    ReplayConfig,
    ReplayResult,
    common_random_numbers,
    comparison_chart,
    control_lift,
    decisions_per_day_chart,
    lift_comparison,
    load_replay_invoices,
    replay,
    true_success,
)
from workbench.ingest import ingest
from workbench.policy import Policy, PolicyError, parse_policy
from workbench.simulator import simulate
from workbench.store import Warehouse

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def company(tmp_path_factory):
    data = tmp_path_factory.mktemp("replay") / "data"
    simulate(accounts=400, months=18, seed=5, out=data, progress=False)
    settings = load_settings(REPO, overrides={"data_dir": str(data)})
    ingest(data / "landing" / "stripe", source="stripe", settings=settings, progress=False)
    ingest(
        data / "landing" / "csv" / "fx_rates.csv", source="csv", settings=settings, progress=False
    )
    with Warehouse(settings).read(step="test") as con:
        invoices, history = load_replay_invoices(con, data / "truth")
    return invoices, history


@pytest.fixture(scope="module")
def result(company):
    invoices, history = company
    return replay(invoices, history, policy=Policy(), config=ReplayConfig(seed=1))


# --------------------------------------------------------------------------- replay


def test_common_random_numbers_depend_on_seed_and_id_only() -> None:
    a = common_random_numbers(["in_a", "in_b"], 3)
    b = common_random_numbers(["in_b", "in_a"], 3)
    np.testing.assert_array_equal(a[0], b[1])
    assert not np.array_equal(a, common_random_numbers(["in_a", "in_b"], 4))
    assert a.min() >= 0 and a.max() < 1


def test_inputs_join_warehouse_and_truth(company) -> None:
    invoices, history = company
    assert len(invoices) > 30 and invoices["invoice_id"].is_unique
    # what the business sees agrees with the truth it cannot see
    assert (invoices["decline_code"] == invoices["true_decline"]).mean() > 0.95
    assert invoices["amount_reporting"].notna().all()
    assert history["attempt"].min() >= 2


def test_replay_is_deterministic_by_seed(company, result) -> None:
    invoices, history = company
    again = replay(invoices, history, policy=Policy(), config=ReplayConfig(seed=1))
    pd.testing.assert_frame_equal(again.summary, result.summary)
    other = replay(invoices, history, policy=Policy(), config=ReplayConfig(seed=2))
    assert not other.outcomes["recovered"].equals(result.outcomes["recovered"])


def test_schedules_follow_the_common_draws(company, result) -> None:
    """Recompute the fixed schedule by hand from the same draws and the truth."""
    invoices, _ = company
    u = common_random_numbers(invoices["invoice_id"].tolist(), 1)
    fixed = result.outcomes[result.outcomes["strategy"] == "fixed_schedule"].set_index("invoice_id")
    for i, inv in enumerate(invoices.itertuples(index=False)):
        t0 = inv.first_failed_at.timestamp()
        got = 0
        for j in range(8):
            when = t0 + (j + 1) * 42 * 3600.0
            if u[i, j] < true_success(inv, j + 2, when):
                got = j + 2
                break
        assert fixed.at[inv.invoice_id, "recovered_at_attempt"] == got
    nothing = result.outcomes[result.outcomes["strategy"] == "no_retries"]
    assert not nothing["recovered"].any() and nothing["retries"].sum() == 0


def test_recovered_revenue_is_within_the_truths_bounds(company, result) -> None:
    """The fixed schedule's recovered revenue lies within 4 standard deviations of its
    expectation under the true per-attempt probabilities."""
    invoices, _ = company
    mean = var = 0.0
    for inv in invoices.itertuples(index=False):
        t0 = inv.first_failed_at.timestamp()
        miss = 1.0
        for j in range(8):
            miss *= 1.0 - true_success(inv, j + 2, t0 + (j + 1) * 42 * 3600.0)
        p = 1.0 - miss
        mean += inv.amount_reporting * p
        var += inv.amount_reporting**2 * p * (1 - p)
    got = result.summary.set_index("strategy").at["fixed_schedule", "recovered_revenue"]
    assert abs(got - mean) <= 4 * np.sqrt(var)


def test_policy_keeps_its_guardrails_in_the_replay(company, result) -> None:
    invoices, _ = company
    pol = result.outcomes[result.outcomes["strategy"] == "policy"].merge(
        invoices[["invoice_id", "decline_code"]], on="invoice_id"
    )
    hard = pol["decline_code"].isin(Policy().retries.no_retry_decline_codes)
    assert (pol.loc[hard, "retries"] == 0).all()
    assert pol["retries"].max() <= Policy().retries.max_auto_retries
    everything = result.outcomes[result.outcomes["strategy"] == "retry_everything"]
    assert everything["retries"].sum() >= pol["retries"].sum()
    s = result.summary.set_index("strategy")
    assert (s["recovered_revenue"] <= s["amount_due"]).all()
    assert (s["involuntary_churn"] + s["recovered_invoices"] == s["invoices"]).all()
    assert set(result.vs_fixed) == {"recovered_ratio", "retries_ratio", "goal_met"}
    assert comparison_chart(result.summary).to_dict()["hconcat"]


def test_lower_threshold_retries_more(company, result) -> None:
    invoices, history = company
    loose = parse_policy({"retries": {"min_recovery_probability": 0.0}})
    res = replay(
        invoices, history, policy=loose, config=ReplayConfig(seed=1), strategies=("policy",)
    )
    assert (
        res.summary["retries"].iloc[0]
        >= result.summary.set_index("strategy").at["policy", "retries"]
    )


# --------------------------------------------------------------------------- control group


def test_control_group_share_is_deterministic_and_salted() -> None:
    ids = [f"in_{i}" for i in range(20_000)]
    policy = Policy()
    ctrl = in_control_group(ids, policy)
    assert abs(ctrl.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(ctrl, in_control_group(ids, policy))
    other = in_control_group(ids, parse_policy({"control": {"salt": "another"}}))
    assert abs(other.mean() - 0.1) < 0.01 and (other != ctrl).mean() > 0.1
    assert not in_control_group(ids, parse_policy({"control": {"share": 0}})).any()


def test_control_policy_keys_are_validated_with_clear_errors() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"control": {"share": 0.8, "salt": "", "baseline_retries": 0, "sharre": 1}})
    text = str(err.value)
    assert "control.share: must be between 0.0 and 0.5" in text
    assert "control.salt: must be non-empty text" in text
    assert "control.baseline_retries: must be >= 1" in text
    assert "control.sharre: unknown key (did you mean 'share'?)" in text


def test_control_invoices_stay_on_the_baseline_within_guardrails() -> None:
    policy = parse_policy({"control": {"share": 0.5}})
    ids = [f"in_{i}" for i in range(40)]
    frame = pd.DataFrame({
        "invoice_id": ids, "account_id": "acct", "amount_due": 5_000, "currency": "usd",
        "amount_due_reporting": pd.array([5_000] * 40, dtype="Int64"), "attempt_count": 1,
        "last_attempt_at": pd.Timestamp("2024-02-01", tz="UTC"),
        "decline_code": ["stolen_card" if i % 4 == 0 else "insufficient_funds" for i in range(40)],
        "recovery_probability": 0.1, "uplift": 0.5, "model_versions": "m",
    })  # fmt: skip
    out = decide_with_control(frame, as_of=pd.Timestamp("2024-03-01", tz="UTC"), policy=policy)
    assert list(out["invoice_id"]) == ids
    ctrl = out["control_group"].to_numpy()
    assert ctrl.any() and (~ctrl).any()
    assert (out["policy_version"] == policy.version).all()
    soft = frame["decline_code"] == "insufficient_funds"
    # control: a low score does not stop the baseline retry; a hard decline still does
    assert (out.loc[ctrl & soft, "action"] == "retry_now").all()
    assert (out.loc[ctrl & ~soft, "action"] != "retry_now").all()
    assert out.loc[ctrl, "reason"].str.startswith("control group").all()
    assert (out.loc[ctrl, "offer_cost_minor"] == 0).all()
    # treated: the score is below the threshold, so no retry
    assert not out.loc[~ctrl, "action"].isin(["retry_now", "retry_at"]).any()


def _synthetic(rng, n_p: int, n_c: int, p_pol: float, p_ctl: float) -> pd.DataFrame:
    amount = rng.integers(1_000, 50_000, n_p + n_c).astype(float)
    p = np.r_[np.full(n_p, p_pol), np.full(n_c, p_ctl)]
    rec = rng.random(n_p + n_c) < p
    return pd.DataFrame({
        "group": ["policy"] * n_p + ["control"] * n_c, "amount_due": amount,
        "recovered_amount": np.where(rec, amount, 0.0),
    })  # fmt: skip


def test_control_lift_point_estimate_and_ci_coverage() -> None:
    exact = pd.DataFrame({
        "group": ["policy", "policy", "control", "control"],
        "amount_due": [100.0, 300.0, 100.0, 100.0], "recovered_amount": [100.0, 300.0, 100.0, 0.0],
    })  # fmt: skip
    lift = control_lift(exact, n_boot=200)
    assert lift["lift"] == pytest.approx(0.5) and lift["rate_control"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    covered = covered_normal = 0
    trials = 150
    for k in range(trials):
        res = control_lift(_synthetic(rng, 300, 100, 0.45, 0.30), n_boot=400, seed=k)
        covered += res["ci_low"] <= 0.15 <= res["ci_high"]
        covered_normal += res["normal_ci_low"] <= 0.15 <= res["normal_ci_high"]
        assert res["ci_low"] < res["lift"] < res["ci_high"]
    assert 0.88 <= covered / trials <= 0.995
    assert 0.88 <= covered_normal / trials <= 0.995
    empty = control_lift(_synthetic(rng, 10, 0, 0.5, 0.5))
    assert empty["n_control"] == 0 and np.isnan(empty["lift"])


# --------------------------------------------------------------------------- notebook tables and charts


def test_lift_comparison_has_a_replay_row_and_a_live_row() -> None:
    rng = np.random.default_rng(1)
    live = _synthetic(rng, 60, 40, 0.5, 0.3)
    replayed = ReplayResult(
        summary=pd.DataFrame(), outcomes=pd.DataFrame(), vs_fixed={},
        lift=control_lift(_synthetic(rng, 300, 100, 0.45, 0.30), n_boot=200),
        true_lift={"lift": 0.15},
    )  # fmt: skip
    table = lift_comparison(replayed, live)
    assert table["source"].tolist() == ["replay", "live (warehouse)"]
    assert list(table.columns) == ["source", *replayed.lift, "true_lift"]
    assert table.loc[0, "lift"] == replayed.lift["lift"]
    assert table.loc[0, "true_lift"] == 0.15 and np.isnan(table.loc[1, "true_lift"])
    expected = control_lift(live)  # the live row is the live outcomes' lift, same seed
    for key in ("n_policy", "n_control", "lift", "ci_low", "ci_high"):
        assert table.loc[1, key] == pytest.approx(expected[key])
    # no replay, or a replay without a lift: the live row alone, and no true lift
    for none in (None, dataclasses.replace(replayed, lift={})):
        alone = lift_comparison(none, live)
        assert alone["source"].tolist() == ["live (warehouse)"]
        assert "true_lift" not in alone.columns


def test_decisions_per_day_chart_counts_invoices_per_day_and_action() -> None:
    day1, day2 = pd.Timestamp("2024-03-01", tz="UTC"), pd.Timestamp("2024-03-02", tz="UTC")
    decisions = pd.DataFrame({
        "invoice_id": ["a", "b", "c", "a"], "as_of": [day1, day1, day1, day2],
        "action": ["wait", "retry_now", "wait", "wait"],
    })  # fmt: skip
    chart = decisions_per_day_chart(decisions, width=300)
    spec = chart.to_dict()
    assert spec["title"] == "Decisions per day by action" and spec["width"] == 300
    assert spec["mark"] in ("bar", {"type": "bar"})
    enc = spec["encoding"]
    assert (enc["x"]["field"], enc["x"]["type"], enc["x"]["title"]) == ("as_of", "temporal", "Day")
    assert (enc["y"]["field"], enc["y"]["type"]) == ("invoices", "quantitative")
    assert (enc["color"]["field"], enc["color"]["type"]) == ("action", "nominal")
    counts = chart.data.sort_values(["as_of", "action"]).reset_index(drop=True)
    assert counts.values.tolist() == [[day1, "retry_now", 1], [day1, "wait", 2], [day2, "wait", 1]]
