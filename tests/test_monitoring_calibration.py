"""Calibration by period, reliability tables and charts, expected performance."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from workbench.monitoring.calibration import (
    calibration_by_period,
    calibration_chart,
    expected_auc,
    expected_calibration_error,
    expected_performance,
    reliability_chart,
    reliability_table,
)


def scored_months(seed: int = 0, per_month: int = 4000) -> pd.DataFrame:
    """Six months of calibrated scores; in 2024-04 the true rate is 1.8× the score;
    labels of 2024-06 have not matured (null) and half of 2024-05's have."""
    rng = np.random.default_rng(seed)
    parts = []
    for month in pd.date_range("2024-01-01", periods=6, freq="MS", tz="UTC"):
        p = rng.beta(2, 8, per_month)
        truth = np.clip(p * (1.8 if month.month == 4 else 1.0), 0, 1)
        y = (rng.random(per_month) < truth).astype(float)
        if month.month == 6:
            y[:] = np.nan
        if month.month == 5:
            y[: per_month // 2] = np.nan
        at = month + pd.to_timedelta(rng.integers(0, 27 * 24, per_month), unit="h")
        parts.append(pd.DataFrame({"as_of": at, "p": p, "y": pd.array(y, dtype="Float64")}))
    return pd.concat(parts, ignore_index=True)


def test_calibration_by_period_finds_the_miscalibrated_month():
    frame = scored_months()
    table = calibration_by_period(frame)
    assert list(table.columns) == [
        "period",
        "n",
        "labelled",
        "mean_p",
        "rate",
        "brier",
        "ece",
        "log_loss",
    ]
    assert len(table) == 6
    assert table["period"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert (table["n"] == 4000).all()
    assert table["labelled"].tolist() == [4000, 4000, 4000, 4000, 2000, 0]
    by = table.set_index(table["period"].dt.month)
    worst = by.loc[[1, 2, 3, 4, 5], "ece"].idxmax()
    assert worst == 4
    assert by.loc[4, "ece"] > 3 * by.loc[[1, 2, 3, 5], "ece"].max()
    assert by.loc[4, "rate"] > 1.5 * by.loc[4, "mean_p"]
    assert abs(by.loc[1, "rate"] - by.loc[1, "mean_p"]) < 0.02
    # Unlabelled month: counts and mean score, but NaN label metrics.
    assert by.loc[6, ["rate", "brier", "ece", "log_loss"]].isna().all()
    assert by.loc[6, "mean_p"] == pytest.approx(0.2, abs=0.01)


def test_metrics_match_scikit_learn():
    frame = scored_months(seed=1, per_month=1500)
    table = calibration_by_period(frame).set_index("period")
    month = frame[(frame["as_of"] < "2024-02-01")]
    y = month["y"].astype(float).to_numpy()
    assert table.iloc[0]["brier"] == pytest.approx(brier_score_loss(y, month["p"]))
    assert table.iloc[0]["log_loss"] == pytest.approx(log_loss(y, month["p"]))


def test_ece_by_hand():
    p = np.array([0.05, 0.05, 0.15, 0.95])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    # bins: [0, .1): mean p .05, rate .5 -> 2/4 * .45; [.1, .2): .15 vs 0 -> 1/4 * .15;
    # [.9, 1]: .95 vs 1 -> 1/4 * .05
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(
        0.5 * 0.45 + 0.25 * 0.15 + 0.25 * 0.05
    )


def test_weekly_periods_and_naive_timestamps():
    frame = pd.DataFrame(
        {
            "when": pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-09"]),
            "score": [0.2, 0.4, 0.9],
            "label": [0, 1, None],
        }
    )
    table = calibration_by_period(frame, period="week", prob="score", label="label", at="when")
    assert table["period"].tolist() == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-08")]
    assert table["labelled"].tolist() == [2, 0]
    assert table.loc[0, "brier"] == pytest.approx((0.2**2 + 0.6**2) / 2)


def test_bad_inputs_are_clear():
    frame = pd.DataFrame({"as_of": pd.to_datetime(["2024-01-01"]), "p": [1.3], "y": [1]})
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        calibration_by_period(frame)
    with pytest.raises(ValueError, match="must be 0/1"):
        calibration_by_period(frame.assign(p=0.3, y=2))
    with pytest.raises(ValueError, match=r"\['score'\] are not in the frame"):
        calibration_by_period(frame, prob="score")
    with pytest.raises(ValueError, match="unknown period"):
        calibration_by_period(frame.assign(p=0.3), period="fortnight")


def test_reliability_table_and_charts():
    frame = scored_months(seed=2, per_month=1000)
    table = reliability_table(frame, bins=5)
    assert list(table.columns) == ["bin", "lo", "hi", "mean_p", "rate", "n"]
    labelled = frame["y"].notna().sum()
    assert table["n"].sum() == labelled
    assert ((table["mean_p"] >= table["lo"]) & (table["mean_p"] <= table["hi"])).all()
    chart = reliability_chart(frame, period="month", bins=5)
    assert isinstance(chart, alt.FacetChart)
    spec = chart.to_dict()
    assert len(spec["spec"]["layer"]) == 3  # diagonal, curve, points
    periods = {row["period"] for row in spec["datasets"][next(iter(spec["datasets"]))]}
    assert len(periods) == 5  # the unlabelled month has nothing to draw
    assert isinstance(reliability_chart(frame), alt.LayerChart)
    trend = calibration_chart(calibration_by_period(frame))
    assert trend.to_dict()["mark"]["type"] == "line"
    with pytest.raises(ValueError, match="not have matured"):
        reliability_chart(frame.assign(y=pd.NA))


def monte_carlo(p: np.ndarray, draws: int, seed: int) -> dict[str, np.ndarray]:
    """Metrics of ``draws`` label vectors drawn Bernoulli(p), scored by p.

    The AUC is the Mann-Whitney statistic from p's average ranks (ties count half),
    vectorised over draws; the first draw is checked against scikit-learn.
    """
    rng = np.random.default_rng(seed)
    y = (rng.random((draws, len(p))) < p).astype(float)
    ranks = rankdata(p)
    n_pos = y.sum(axis=1)
    n_neg = len(p) - n_pos
    auc = (y @ ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert auc[0] == pytest.approx(roc_auc_score(y[0], p))
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return {
        "auc": auc,
        "brier": ((p - y) ** 2).mean(axis=1),
        "log_loss": -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(axis=1),
        "rate": y.mean(axis=1),
    }


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("beta", lambda rng: rng.beta(1.5, 6, 3000)),
        ("ties", lambda rng: rng.choice([0.05, 0.2, 0.2, 0.5, 0.9], 3000)),
        ("wide", lambda rng: rng.uniform(0, 1, 3000)),
    ],
)
def test_expected_performance_matches_monte_carlo(name, make):
    p = make(np.random.default_rng(11))
    expected = expected_performance(p)
    sims = monte_carlo(p, draws=2000, seed=12)
    for key, sim_key in (
        ("auc", "auc"),
        ("brier", "brier"),
        ("log_loss", "log_loss"),
        ("positive_rate", "rate"),
    ):
        mean, se = sims[sim_key].mean(), sims[sim_key].std(ddof=1) / np.sqrt(len(sims[sim_key]))
        assert abs(expected[key] - mean) < 4 * se + 1e-4, (name, key, expected[key], mean, se)
    assert expected["n"] == 3000


def test_expected_auc_exact_cases():
    # Two rows: the pair (positive=high, negative=low) has weight .9*.9, reversed .1*.1.
    assert expected_auc([0.1, 0.9]) == pytest.approx(0.81 / (0.81 + 0.01))
    assert expected_auc([0.3, 0.3, 0.3]) == pytest.approx(0.5)  # all tied
    assert np.isnan(expected_auc([0.0, 0.0]))  # no positive can occur
    assert np.isnan(expected_auc([0.4]))
    # Brute force over all pairs on a small sample with ties.
    rng = np.random.default_rng(3)
    p = np.round(rng.random(60), 1)
    pos, neg = p[:, None], 1 - p[None, :]
    weight = pos * neg
    np.fill_diagonal(weight, 0)
    win = (p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :])
    assert expected_auc(p) == pytest.approx((weight * win).sum() / weight.sum())


def test_expected_performance_ignores_nan_and_checks_range():
    out = expected_performance([0.2, np.nan, 0.4])
    assert out["n"] == 2 and out["positive_rate"] == pytest.approx(0.3)
    assert out["brier"] == pytest.approx((0.16 + 0.24) / 2)
    assert expected_performance([])["n"] == 0
    with pytest.raises(ValueError, match="probabilities"):
        expected_performance([0.2, 1.5])
