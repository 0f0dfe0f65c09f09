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
