"""The logistic regression stored as numbers scores exactly like the scikit-learn pipeline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.models import training
from workbench.models.linear import LogisticModel, log_odds_mean
from workbench.models.training import FeatureSpec


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    usage = rng.lognormal(3, 1, n)
    usage[rng.random(n) < 0.1] = np.nan  # missing values get an indicator
    plan = rng.choice(["basic", "pro", "enterprise", "legacy"], n, p=[0.5, 0.3, 0.195, 0.005])
    region = rng.choice(["EU", "NA", None], n, p=[0.5, 0.4, 0.1])
    tickets = rng.poisson(1.0, n).astype(float)
    z = -2 + 0.4 * np.log1p(np.nan_to_num(usage)) - 0.5 * (plan == "enterprise") + 0.3 * tickets
    return pd.DataFrame(
        {
            "usage": usage,
            "tickets": tickets,
            "constant": np.full(n, np.nan),  # never seen: kept, imputed, no variance
            "plan": plan,
            "region": region,
            "y": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8),
        }
    )


def test_logistic_model_scores_like_the_pipeline_and_survives_json() -> None:
    train = _frame(3000, 1)
    spec = FeatureSpec.infer(train, ["usage", "tickets", "constant", "plan", "region"])
    pipe = training.fit_logistic_baseline(train, target="y", spec=spec)
    model = LogisticModel.from_pipeline(pipe, spec)
    assert model.onehot["plan"][-1] == ("legacy",)  # rare level (< 20 rows) pooled
    assert model.indicators == (0, 2)  # usage and the empty column had missing values
    new = _frame(500, 2)
    new.loc[:5, "plan"] = "brand-new"  # unknown to the spec: treated as missing
    expected = training.predict_baseline(pipe, spec, new)
    assert np.abs(model.predict(new) - expected).max() < 1e-12
    again = LogisticModel.from_json(json.loads(json.dumps(model.to_json())))
    assert np.array_equal(again.predict(new), model.predict(new))
    # fitted directly, the same numbers
    assert LogisticModel.fit(train, target="y", spec=spec).coef == model.coef


def test_log_odds_mean() -> None:
    p = log_odds_mean([np.array([0.2, 0.5]), np.array([0.8, 0.5])])
    assert p == pytest.approx([0.5, 0.5])
    assert log_odds_mean([np.array([0.1])])[0] == pytest.approx(0.1)
