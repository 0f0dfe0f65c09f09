"""Metrics of probability scores: hand-computed values on tiny arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.models import evaluation as ev


def test_auc_and_pr_auc_match_hand_computation() -> None:
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3 of 4
    assert ev.roc_auc(y, p) == pytest.approx(0.75)
    # ranking: 0.8 (pos, precision 1), 0.4 (neg), 0.35 (pos, precision 2/3)
    assert ev.pr_auc(y, p) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(ev.roc_auc([1, 1], [0.2, 0.3]))


def test_brier_and_log_loss() -> None:
    y = np.array([1, 0, 1])
    p = np.array([0.9, 0.2, 0.6])
    assert ev.brier_score(y, p) == pytest.approx(((0.1**2) + (0.2**2) + (0.4**2)) / 3)
    assert ev.log_loss(y, p) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.6)) / 3)


def test_missing_rows_are_dropped_and_bad_inputs_rejected() -> None:
    y = pd.array([1, pd.NA, 0, 1], dtype="Int8")
    p = [0.9, 0.5, np.nan, 0.7]
    assert ev.binary_metrics(y, p)["rows"] == 2
    with pytest.raises(ValueError):
        ev.brier_score([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        ev.brier_score([0, 1], [0.1, 1.2])


def test_ece_is_the_row_weighted_gap_per_bin() -> None:
    # bin [0.1, 0.2): 4 rows predicted 0.15, 1 positive -> gap 0.10
    # bin [0.8, 0.9): 6 rows predicted 0.85, 6 positives -> gap 0.15
    y = [1, 0, 0, 0] + [1] * 6
    p = [0.15] * 4 + [0.85] * 6
    table = ev.reliability_table(y, p)
    assert list(table["rows"]) == [4, 6]
    assert table["observed_rate"].tolist() == pytest.approx([0.25, 1.0])
    assert ev.expected_calibration_error(y, p) == pytest.approx(0.4 * 0.10 + 0.6 * 0.15)


def test_ece_of_true_probabilities_is_small_and_of_shifted_ones_is_not() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert ev.expected_calibration_error(y, p) < 0.005
    assert ev.expected_calibration_error(y, np.clip(p + 0.1, 0, 1)) > 0.08
    assert ev.expected_calibration_error(y, p, strategy="quantile") < 0.01


def test_lift_table_ranks_deciles_by_score() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 10_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    lift = ev.lift_table(y, p)
    assert list(lift["decile"]) == list(range(1, 11))
    assert lift["rows"].sum() == 10_000
    assert lift["rate"].is_monotonic_decreasing
    assert lift["cumulative_capture"].iloc[-1] == pytest.approx(1.0)
    assert lift["lift"].iloc[0] == pytest.approx(lift["rate"].iloc[0] / y.mean())


def test_metrics_by_cohort_and_oracle_comparison_use_the_same_rows() -> None:
    frame = pd.DataFrame(
        {
            "y": [1, 0, 1, 0, 1, 0, 0, 1],
            "p": [0.9, 0.1, 0.8, 0.3, 0.4, 0.6, 0.2, 0.7],
            "oracle": [0.95, 0.05, np.nan, 0.2, 0.6, 0.5, 0.1, 0.8],
            "region": ["EU", "EU", "EU", "EU", "NA", "NA", "NA", None],
        }
    )
    cohorts = ev.metrics_by_cohort(frame, y="y", p="p", cohorts=["region"], min_rows=3)
    assert set(cohorts["value"]) == {"EU", "NA", "(none)"}
    eu = cohorts[cohorts["value"] == "EU"].iloc[0]
    assert eu["roc_auc"] == pytest.approx(1.0)
    assert np.isnan(cohorts[cohorts["value"] == "(none)"].iloc[0].get("roc_auc", np.nan))
    cmp = ev.oracle_comparison(frame["y"], frame["p"], frame["oracle"])
    assert cmp["rows"] == 7  # the row without an oracle is dropped from both
    keep = frame["oracle"].notna()
    assert cmp["model_auc"] == pytest.approx(ev.roc_auc(frame.loc[keep, "y"], frame.loc[keep, "p"]))
    assert cmp["auc_gap"] == pytest.approx(cmp["oracle_auc"] - cmp["model_auc"])


def test_evaluate_scores_reports_every_score_and_the_oracle() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    truth = rng.uniform(0, 0.5, n)
    frame = pd.DataFrame(
        {
            "y": (rng.uniform(0, 1, n) < truth).astype(int),
            "good": np.clip(truth + rng.normal(0, 0.05, n), 0, 1),
            "noise": rng.uniform(0, 0.5, n),
            "truth": truth,
            "plan": rng.choice(["a", "b"], n),
        }
    )
    out = ev.evaluate_scores(
        frame, y="y", scores={"good": "good", "noise": "noise"}, cohorts=["plan"], oracle="truth"
    )
    m = out["metrics"].set_index("model")
    assert list(m.index) == ["good", "noise", "oracle"]
    assert m.loc["good", "roc_auc"] > m.loc["noise", "roc_auc"] + 0.1
    assert m.loc["oracle", "brier"] < m.loc["noise", "brier"]
    assert set(out["reliability"]["model"]) == {"good", "noise", "oracle"}
    assert out["oracle"]["rows"] == n


def test_charts_encode_the_tables() -> None:
    from workbench.models import charts

    rng = np.random.default_rng(4)
    p = rng.uniform(0, 1, 500)
    y = (rng.uniform(0, 1, 500) < p).astype(int)
    rel = charts.reliability_chart(ev.reliability_table(y, p)).to_dict()
    assert rel["layer"][1]["encoding"]["x"]["field"] == "mean_predicted"
    assert rel["layer"][1]["encoding"]["y"]["field"] == "observed_rate"
    lift = charts.lift_chart(ev.lift_table(y, p)).to_dict()
    assert lift["encoding"]["y"]["field"] == "lift"
    contrib = pd.DataFrame({"a": rng.normal(0, 1, 500), "b": rng.normal(0, 0.1, 500), "bias": 0.0})
    values = pd.DataFrame({"a": rng.normal(0, 1, 500), "b": rng.normal(0, 1, 500)})
    shap_chart = charts.shap_summary_chart(contrib, values, max_points=100).to_dict()
    assert shap_chart["encoding"]["y"]["sort"] == ["a", "b"]  # most important first
    name = next(iter(shap_chart["datasets"]))
    assert len(shap_chart["datasets"][name]) == 200  # 100 rows x 2 features


def test_auc_gap_interval_covers_the_gap_and_shrinks_with_rows() -> None:
    rng = np.random.default_rng(7)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        truth = rng.uniform(0, 0.6, n)
        y = (rng.uniform(0, 1, n) < truth).astype(int)
        model = np.clip(truth + rng.normal(0, 0.15, n), 0, 1)
        groups = np.repeat(np.arange(n // 4), 4)  # four rows per "account"
        return y, model, truth, groups

    y, model, truth, groups = sample(800)
    gap = ev.roc_auc(y, truth) - ev.roc_auc(y, model)
    low, high = ev.auc_gap_interval(y, model, truth, groups=groups, n_boot=300)
    assert low < gap < high and gap > 0
    y2, model2, truth2, groups2 = sample(8000)
    low2, high2 = ev.auc_gap_interval(y2, model2, truth2, groups=groups2, n_boot=200)
    assert high2 - low2 < (high - low) * 0.6  # ten times the rows: about a third as wide
    # identical scores: no gap in any resample
    assert ev.auc_gap_interval(y, truth, truth, n_boot=50) == (0.0, 0.0)
    cmp = ev.oracle_comparison(y, model, truth, groups=groups, n_boot=100)
    assert cmp["auc_gap_low"] < cmp["auc_gap"] < cmp["auc_gap_high"]


def test_ece_noise_floor_of_true_probabilities() -> None:
    rng = np.random.default_rng(8)
    p = rng.uniform(0.05, 0.6, 700)
    mean, p95 = ev.ece_noise_floor(p, n_sim=300)
    # even the true probabilities show an ECE of a few points on 700 rows...
    sims = [
        ev.expected_calibration_error((rng.uniform(0, 1, 700) < p).astype(int), p)
        for _ in range(200)
    ]
    assert mean == pytest.approx(np.mean(sims), rel=0.15)
    assert 0.015 < mean < p95 < 0.06
    # ...and far less on 70,000
    big = rng.uniform(0.05, 0.6, 70_000)
    assert ev.ece_noise_floor(big, n_sim=50)[0] < mean / 5


def test_calibration_error_vs_truth_sees_through_outcome_noise() -> None:
    rng = np.random.default_rng(9)
    n = 700
    model = rng.uniform(0.05, 0.6, n)
    groups = np.repeat(np.arange(n // 2), 2)
    # calibrated: the truth scatters around the prediction with mean zero in every bin
    truth = np.clip(model + rng.normal(0, 0.05, n), 0, 1)
    # miscalibrated by 0.03 everywhere
    shifted = np.clip(model + 0.03, 0, 1)
    calibrated = ev.calibration_error_vs_truth(truth, model)
    off = ev.calibration_error_vs_truth(shifted, model)
    assert calibrated < 0.01
    assert off == pytest.approx(0.03, abs=0.002)
    assert ev.calibration_error_vs_truth(model, model) == 0.0
    # the outcome ECE of the calibrated model cannot tell the two apart on 700 rows...
    outcome_eces = [
        ev.expected_calibration_error((rng.uniform(0, 1, n) < truth).astype(int), model)
        for _ in range(100)
    ]
    assert np.median(outcome_eces) > off
    # ...while on many rows the outcome ECE converges to the error against the truth
    big = rng.uniform(0.05, 0.6, 400_000)
    y_big = (rng.uniform(0, 1, big.size) < big + 0.03).astype(int)
    assert ev.expected_calibration_error(y_big, big) == pytest.approx(
        ev.calibration_error_vs_truth(big + 0.03, big), abs=0.003
    )
    # the comparison reports it with a paired bootstrap interval by cluster
    y = (rng.uniform(0, 1, n) < shifted).astype(int)
    cmp = ev.oracle_comparison(y, model, shifted, groups=groups, n_boot=200)
    assert cmp["model_ece_vs_truth"] == pytest.approx(off)
    assert 0.02 < cmp["model_ece_vs_truth_low"] <= off <= cmp["model_ece_vs_truth_high"]
    cmp = ev.oracle_comparison(y, model, truth, groups=groups, n_boot=200)
    assert cmp["model_ece_vs_truth_high"] < 0.02
    with pytest.raises(ValueError, match="length"):
        ev.calibration_error_vs_truth(truth[:5], model)


def test_oracle_self_check_tells_the_generating_probability_from_an_incomplete_one() -> None:
    rng = np.random.default_rng(10)
    truth = rng.uniform(0.02, 0.3, 20_000)
    other_exits = 0.04  # something the "oracle" leaves out, as the churn oracle does
    y = (rng.uniform(0, 1, truth.size) < truth + other_exits).astype(int)
    complete = ev.oracle_self_check(y, truth + other_exits)
    incomplete = ev.oracle_self_check(y, truth)
    assert complete["calibrated"] == 1.0 and complete["oracle_ece"] <= complete["ece_floor_p95"]
    assert incomplete["calibrated"] == 0.0
    assert incomplete["mean_outcome"] - incomplete["mean_oracle"] == pytest.approx(0.04, abs=0.01)
    assert abs(complete["mean_z"]) < 3 < incomplete["mean_z"]
    # the mean outcome against the mean oracle, in standard errors
    few = ev.oracle_self_check(y[:2_000], truth[:2_000] + 0.01)
    se = np.sqrt(np.sum((truth[:2_000] + 0.01) * (0.99 - truth[:2_000]))) / 2_000
    assert few["mean_z"] == pytest.approx((few["mean_outcome"] - few["mean_oracle"]) / se)
    assert few["mean_z"] > 2 and few["calibrated"] == 0.0
    assert complete["rows"] == 20_000
    assert ev.oracle_self_check([], [])["calibrated"] == 0.0
    # rows of one group share their outcome: one row per group is checked
    groups = np.repeat(np.arange(5_000), 4)
    shared = ev.oracle_self_check(
        y[:5_000].repeat(4), truth[:5_000].repeat(4) + 0.04, groups=groups
    )
    assert shared["rows"] == 5_000
    assert shared["oracle_ece"] == pytest.approx(
        ev.oracle_self_check(y[:5_000], truth[:5_000] + 0.04)["oracle_ece"]
    )
