"""SHAP from LightGBM's pred_contrib (checked against shap.TreeExplainer) and plain-words reasons."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from workbench.models import explain, training

FEATURES = [
    "failed_payments_30d",
    "usage_drop_pct_30d_vs_prior_60d",
    "health_score",
    "days_since_last_usage",
]


@pytest.fixture(scope="module")
def model_and_rows() -> tuple[training.BinaryModel, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 6000
    frame = pd.DataFrame(
        {
            "failed_payments_30d": rng.poisson(0.5, n).astype(float),
            "usage_drop_pct_30d_vs_prior_60d": rng.uniform(-0.5, 0.9, n),
            "health_score": rng.normal(50, 15, n),
            "days_since_last_usage": np.where(
                rng.uniform(0, 1, n) < 0.1, np.nan, rng.exponential(3, n)
            ),
        }
    )
    logit = (
        -2
        + 0.9 * frame["failed_payments_30d"]
        + 2.0 * frame["usage_drop_pct_30d_vs_prior_60d"]
        - 0.03 * (frame["health_score"] - 50)
    )
    frame["y"] = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    model = training.fit_binary_model(
        frame.iloc[:4000],
        frame.iloc[4000:5000],
        target="y",
        features=FEATURES,
        seed=0,
        params={"num_leaves": 7},
    )
    return model, frame.iloc[5000:]


def test_contributions_add_up_to_the_raw_score(model_and_rows) -> None:
    model, rows = model_and_rows
    contrib = explain.contributions(model, rows)
    assert list(contrib.columns) == [*FEATURES, "bias"]
    margin = model.booster.predict(
        model.matrix(rows), num_iteration=model.best_iteration, raw_score=True
    )
    np.testing.assert_allclose(contrib.sum(axis=1).to_numpy(), margin, atol=1e-9)


def test_contributions_equal_shap_tree_explainer(model_and_rows) -> None:
    shap = pytest.importorskip("shap")
    model, rows = model_and_rows
    X = model.matrix(rows).iloc[:300]
    ours = explain.contributions(model, rows.iloc[:300]).drop(columns="bias").to_numpy()
    booster = lgb.Booster(
        model_str=model.booster.model_to_string(num_iteration=model.best_iteration)
    )
    theirs = shap.TreeExplainer(booster).shap_values(X)
    theirs = theirs[1] if isinstance(theirs, list) else theirs
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_global_importance_ranks_the_strong_features_first(model_and_rows) -> None:
    model, rows = model_and_rows
    imp = explain.global_importance(explain.contributions(model, rows))
    assert set(imp["feature"].head(2)) == {"failed_payments_30d", "usage_drop_pct_30d_vs_prior_60d"}
    assert imp["share"].sum() == pytest.approx(1.0)


def test_top_reasons_pick_the_largest_pushes_and_say_them_in_words() -> None:
    frame = pd.DataFrame(
        {
            "failed_payments_30d": [3.0, 0.0],
            "usage_drop_pct_30d_vs_prior_60d": [0.4, -0.25],
            "health_score": [31.0, 80.0],
            "days_since_last_usage": [np.nan, 2.0],
        },
        index=[10, 11],
    )
    contrib = pd.DataFrame(
        {
            "failed_payments_30d": [0.9, -0.2],
            "usage_drop_pct_30d_vs_prior_60d": [0.5, -0.6],
            "health_score": [0.7, -0.1],
            "days_since_last_usage": [-0.3, 0.05],
            "bias": [-2.0, -2.0],
        },
        index=[10, 11],
    )
    up = explain.top_reasons(frame, contrib, direction="up")
    assert up.loc[10, "reason_1"] == "3 failed payments in the last 30 days"
    assert up.loc[10, "reason_2"] == "health score 31"
    assert up.loc[10, "reason_3"] == "usage down 40% (last 30 days vs the 60 before)"
    # only one feature pushes row 11 up: the strongest pushing down follow, marked
    assert up.loc[11, "reason_1"] == "last used 2 days ago"
    assert up.loc[11, "reason_2"] == "usage up 25% (last 30 days vs the 60 before) (lowers)"
    assert up.loc[11, "reason_3"] == "0 failed payments in the last 30 days (lowers)"
    assert (
        up.loc[10, "reason_features"]
        == "failed_payments_30d;health_score;usage_drop_pct_30d_vs_prior_60d"
    )
    both = explain.top_reasons(frame, contrib, direction="abs", k=2)
    assert both.loc[11, "reason_1"] == "usage up 25% (last 30 days vs the 60 before) (lowers)"
    assert both.loc[10, "reason_1"].endswith("(raises)")
    down = explain.top_reasons(frame, contrib, direction="down", k=1)
    assert down.loc[10, "reason_1"] == "no usage recorded"
    zero = explain.top_reasons(frame, contrib * 0, k=2)
    assert zero["reason_1"].isna().all() and (zero["reason_features"] == "").all()


def test_phrases_fall_back_to_the_description() -> None:
    assert explain.phrase("failed_payments_7d", 1.0) == "1 failed payment in the last 7 days"
    assert explain.phrase("is_past_due", 1) == "subscription past due"
    assert explain.phrase("card_days_until_expiry", -12.0) == "card expired 12 days ago"
    assert explain.phrase(
        "some_new_feature", 2.5, descriptions={"some_new_feature": "Widgets per day."}
    ) == ("Widgets per day: 2.50")
    assert explain.phrase("some_new_feature", None) == "some new feature: unknown"


@pytest.mark.parametrize(
    "params",
    [
        {"num_leaves": 15},
        {"num_leaves": 31, "zero_as_missing": True},
        {"num_leaves": 4, "bagging_fraction": 0.7, "bagging_freq": 1},
    ],
)
def test_table_treeshap_equals_pred_contrib(params: dict) -> None:
    from workbench.models.treeshap import TreeShap

    rng = np.random.default_rng(5)
    n = 4000
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": pd.Categorical(rng.choice(list("wxyz"), n), categories=list("wxyz")),
            "c": np.where(rng.uniform(size=n) < 0.2, np.nan, rng.normal(size=n)),
            "d": np.where(rng.uniform(size=n) < 0.3, 0.0, rng.normal(size=n)),
            "e": rng.integers(0, 5, n).astype(float),
        }
    )
    X.loc[rng.uniform(size=n) < 0.05, "b"] = np.nan
    y = (
        X.a + (X.b == "x") + np.nan_to_num(X.c) - X.d + 0.3 * X.e + rng.normal(size=n) > 0.8
    ).astype(int)
    base = {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1.0}
    booster = lgb.train({**base, **params}, lgb.Dataset(X, y), 60)
    ts = TreeShap(booster)
    assert ts.fast
    ours = ts.contributions(X)
    np.testing.assert_allclose(ours, booster.predict(X, pred_contrib=True), rtol=0, atol=1e-9)
    # the first 40 trees only
    part = TreeShap(booster, num_iteration=40).contributions(X.head(100))
    ref = booster.predict(X.head(100), num_iteration=40, pred_contrib=True)
    np.testing.assert_allclose(part, ref, atol=1e-9)


def test_treeshap_falls_back_to_pred_contrib(monkeypatch) -> None:
    from workbench.models import treeshap

    rng = np.random.default_rng(6)
    X = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 8},
        lgb.Dataset(X, (X.a + X.b > 0).astype(int)),
        10,
    )
    monkeypatch.setattr(treeshap, "MAX_PATH_FEATURES", 1)
    ts = treeshap.TreeShap(booster)
    assert not ts.fast and "distinct features" in ts.reason
    np.testing.assert_array_equal(ts.contributions(X), booster.predict(X, pred_contrib=True))


def test_treeshap_handles_a_model_that_cannot_split() -> None:
    from workbench.models.treeshap import TreeShap

    rng = np.random.default_rng(7)
    X = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    # too few rows for a leaf of 25: LightGBM keeps one single-leaf tree (the uplift
    # learners meet this on tiny experiments)
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 25},
        lgb.Dataset(X, X.a),
        5,
    )
    assert "split_feature" not in booster.dump_model()["tree_info"][0]["tree_structure"]
    out = TreeShap(booster).contributions(X)
    np.testing.assert_allclose(out, booster.predict(X, pred_contrib=True), atol=1e-12)
    assert (out[:, :2] == 0).all()
