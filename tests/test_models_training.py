"""Time splits, calibrated LightGBM and the baseline on a synthetic known-logistic truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.models import evaluation, training


def synthetic_churn(n_accounts: int = 700, months: int = 24, seed: int = 0) -> pd.DataFrame:
    """Monthly rows per account with real feature names and a known logistic truth ``p_true``."""
    rng = np.random.default_rng(seed)
    as_of = pd.date_range("2023-01-01", periods=months, freq="MS", tz="UTC").astype(
        "datetime64[us, UTC]"
    )
    acct = np.repeat([f"cus_{i:04d}" for i in range(n_accounts)], months)
    t = np.tile(as_of, n_accounts)
    n = len(acct)
    health = rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "account_id": acct,
            "as_of": t,
            "health_score": 50 + 15 * health + rng.normal(0, 5, n),
            "failed_payments_30d": rng.poisson(np.exp(-0.5 + -0.6 * health)),
            "usage_drop_pct_30d_vs_prior_60d": np.clip(rng.normal(0.1 - 0.2 * health, 0.2), -1, 1),
            "tenure_days": rng.uniform(30, 900, n),
            "plan_tier": rng.choice(["prod_a", "prod_b", "prod_c"], n),
            "region": rng.choice(["NA", "EU", "APAC"], n),
        }
    )
    logit = (
        -3.0
        - 1.1 * health
        + 0.3 * (frame["plan_tier"] == "prod_a")
        + 0.4 * (frame["tenure_days"] < 120)
    )
    frame["p_true"] = 1 / (1 + np.exp(-logit))
    frame["churn_30d"] = pd.array(
        (rng.uniform(0, 1, n) < frame["p_true"]).astype(np.int8), dtype="Int8"
    )
    # the last month's window has not elapsed: unlabelled
    frame.loc[frame["as_of"] == as_of[-1], "churn_30d"] = pd.NA
    frame["plan"] = frame["plan_tier"].str.replace("prod_", "")
    frame["channel"] = rng.choice(["self-serve", "sales"], n)
    return frame


FEATURES = [
    "health_score",
    "failed_payments_30d",
    "usage_drop_pct_30d_vs_prior_60d",
    "tenure_days",
    "plan_tier",
    "region",
]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return synthetic_churn()


def test_time_split_is_by_month_with_an_embargo(data: pd.DataFrame) -> None:
    masks, split = training.time_split(
        data, target="churn_30d", horizon_days=45, test_months=3, valid_months=4
    )
    train, valid, test = (data[masks[k]] for k in ("train", "valid", "test"))
    assert (
        not (masks["train"] & masks["valid"]).any() and not (masks["valid"] & masks["test"]).any()
    )
    assert train["churn_30d"].notna().all() and test["churn_30d"].notna().all()
    # test: the last 3 labelled months (the last month has no labels)
    assert sorted(test["as_of"].unique()) == sorted(data["as_of"].unique())[-4:-1]
    # nothing fitted on has a label window reaching into a later part
    assert (train["as_of"] + pd.Timedelta(days=45)).max() <= split.valid_start
    assert (valid["as_of"] + pd.Timedelta(days=45)).max() <= split.test_start
    assert train["as_of"].max() < valid["as_of"].min() < test["as_of"].min()
    # with a 45-day window the month right before each part is embargoed
    assert (split.test_start - valid["as_of"].max()).days > 31
    no_embargo, _ = training.time_split(
        data, target="churn_30d", horizon_days=45, test_months=3, valid_months=4, embargo=False
    )
    assert no_embargo["train"].sum() > masks["train"].sum()
    with pytest.raises(ValueError, match="labelled months"):
        training.time_split(
            data, target="churn_30d", horizon_days=30, test_months=12, valid_months=12
        )


def test_calibrated_lightgbm_approaches_the_truth(data: pd.DataFrame) -> None:
    masks, _ = training.time_split(
        data, target="churn_30d", horizon_days=30, test_months=4, valid_months=6
    )
    train, valid, test = (data[masks[k]] for k in ("train", "valid", "test"))
    model = training.fit_binary_model(train, valid, target="churn_30d", features=FEATURES, seed=0)
    p = model.predict(test)
    y = test["churn_30d"].astype(int)
    truth_auc = evaluation.roc_auc(y, test["p_true"])
    assert evaluation.roc_auc(y, p) > truth_auc - 0.03
    assert evaluation.expected_calibration_error(y, p) < 0.02
    assert (
        evaluation.brier_score(y, p) < evaluation.brier_score(y, np.full(len(y), y.mean())) - 0.003
    )
    baseline = training.fit_logistic_baseline(train, target="churn_30d", spec=model.spec)
    pb = training.predict_baseline(baseline, model.spec, test)
    assert evaluation.roc_auc(y, pb) > 0.7
    assert model.best_iteration > 10
    assert model.feature_set_version.startswith("fs-")


def test_centered_isotonic_calibrates_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(3)
    p_true = rng.uniform(0.01, 0.6, 20_000)
    y = (rng.uniform(0, 1, p_true.size) < p_true).astype(int)
    raw = p_true**0.5  # over-confident scores, same ranking
    cal = training.fit_calibrator(raw, y, method="isotonic")
    out = cal.apply(raw)
    assert np.all(np.diff(cal.x) > 0) and np.all(np.diff(cal.y) >= 0)
    assert (
        evaluation.expected_calibration_error(y, out)
        < 0.01
        < evaluation.expected_calibration_error(y, raw)
    )
    inside = (raw > cal.x[0]) & (raw < cal.x[-1])
    order = np.argsort(raw[inside])
    assert np.all(np.diff(out[inside][order]) >= 0)
    # ties only where isotonic blocks share a value, far fewer than a step function makes
    assert len(np.unique(out)) > 0.9 * len(np.unique(raw))
    platt = training.fit_calibrator(raw, y, method="platt")
    assert evaluation.expected_calibration_error(
        y, platt.apply(raw)
    ) < evaluation.expected_calibration_error(y, raw)
    with pytest.raises(ValueError):
        training.fit_calibrator(raw, y, method="beta")


def test_model_round_trips_through_plain_files(data: pd.DataFrame, tmp_path) -> None:
    masks, _ = training.time_split(
        data, target="churn_30d", horizon_days=30, test_months=4, valid_months=6
    )
    train, valid, test = (data[masks[k]] for k in ("train", "valid", "test"))
    model = training.fit_binary_model(train, valid, target="churn_30d", features=FEATURES, seed=0)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["booster.txt", "model.json"]
    again = training.BinaryModel.load(tmp_path / "m")
    np.testing.assert_allclose(again.predict(test), model.predict(test), rtol=0, atol=1e-12)
    assert again.spec == model.spec and again.feature_set_version == model.feature_set_version
    # an unseen category is missing, not an error; a missing column is an error
    odd = test.head(5).assign(plan_tier="prod_new")
    assert np.isfinite(model.predict(odd)).all()
    with pytest.raises(KeyError):
        model.predict(test.drop(columns=["health_score"]))


def test_feature_set_version_tracks_the_set_not_its_order() -> None:
    a = training.feature_set_version(["health_score", "region", "tenure_days"])
    assert a == training.feature_set_version(["tenure_days", "health_score", "region"])
    assert a != training.feature_set_version(["health_score", "region"])
    assert a.startswith("fs-") and len(a) == 15


def test_train_churn_on_a_prepared_dataset(data: pd.DataFrame) -> None:
    res = training.train_churn(
        None,
        horizons=(30,),
        dataset=data.drop(columns=["p_true"]),
        test_months=4,
        valid_months=6,
        track=False,
        register=False,
    )
    run = res.runs["churn_30d"]
    m = run.metrics
    for key in (
        "test_roc_auc",
        "test_pr_auc",
        "test_brier",
        "test_log_loss",
        "test_ece",
        "baseline_roc_auc",
        "uncalibrated_ece",
    ):
        assert np.isfinite(m[key]), key
    assert set(run.model.features) == {*FEATURES, "channel"}  # attributes are features too
    assert {"p_model", "p_raw", "p_baseline", "churn_30d", "plan", "region", "channel"} <= set(
        run.test.columns
    )
    assert run.card["assesses_ability_to_pay"] is False
    assert {r["cohort"] for r in run.card["by_cohort"]} == {"plan", "region", "channel"}
    assert run.importance["feature"].iloc[0] == "health_score"
    summary = res.summary()
    assert summary.loc[0, "model"] == "churn_30d" and summary.loc[0, "roc_auc"] == pytest.approx(
        m["test_roc_auc"]
    )
