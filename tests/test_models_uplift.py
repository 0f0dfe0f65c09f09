"""Uplift learners on a synthetic randomized experiment with known effects; Qini by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.models import uplift


def experiment(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """A randomized offer: baseline churn from health; the offer cuts it by a share that
    depends on channel and size (self-serve and small respond most)."""
    rng = np.random.default_rng(seed)
    health = rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "account_id": [f"cus_{i}" for i in range(n)],
            "health_score": 50 + 15 * health + rng.normal(0, 4, n),
            "tenure_days": rng.uniform(60, 700, n),
            "channel": rng.choice(["self-serve", "sales"], n),
            "size": rng.choice(["small", "medium", "large"], n),
            "region": rng.choice(["NA", "EU"], n),
            "industry": rng.choice(["software", "media"], n),
            "treatment": rng.integers(0, 2, n).astype(np.int8),
        }
    )
    p0 = 1 / (1 + np.exp(-(-1.2 - 1.0 * health)))
    tau = (
        0.1 + 0.45 * (frame["channel"] == "self-serve") + 0.3 * (frame["size"] == "small")
    ).to_numpy()
    p = np.where(frame["treatment"] == 1, p0 * (1 - tau), p0)
    frame["churn_90d"] = (rng.uniform(0, 1, n) < p).astype(np.int8)
    frame["true_uplift"] = p0 * tau
    return frame


FEATURES = ["health_score", "tenure_days", "channel", "size", "region", "industry"]


def test_qini_curve_matches_a_hand_computation() -> None:
    # ranked by score: rows 0..5; treatment and churn given
    y = np.array([0, 1, 0, 1, 1, 0])
    t = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    c = uplift.qini_curve(y, t, s)
    # Q(k) = control churners * treated / control - treated churners, over the top k:
    # k=2: T 1 (0 churned), C 1 (1): 1 * 1/1 - 0 = 1;  k=3: T 2 (0), C 1 (1): 1 * 2/1 - 0 = 2
    # k=4: T 2 (0), C 2 (2): 2;  k=5: T 3 (1), C 2 (2): 2 * 3/2 - 1 = 2;  k=6: T 3 (1), C 3 (2): 1
    assert c["qini"].tolist() == pytest.approx([0, 0, 1, 2, 2, 2, 1])
    assert c["random"].iloc[-1] == pytest.approx(1.0)
    expected = np.mean([0 - 1 / 6, 1 - 2 / 6, 2 - 3 / 6, 2 - 4 / 6, 2 - 5 / 6, 1 - 1]) / 6
    assert uplift.qini_coefficient(y, t, s) == pytest.approx(expected)
    # reversing the ranking cannot beat it here
    assert uplift.qini_coefficient(y, t, -s) < uplift.qini_coefficient(y, t, s)


def test_expected_qini_is_largest_for_the_true_ranking() -> None:
    rng = np.random.default_rng(1)
    tau = rng.uniform(0, 0.2, 1000)
    best = uplift.expected_qini(tau, tau)
    assert best > uplift.expected_qini(tau, tau + rng.normal(0, 0.05, 1000)) > 0
    assert abs(uplift.expected_qini(tau, rng.uniform(0, 1, 1000))) < best / 4


@pytest.mark.parametrize("learner", ["t", "x"])
def test_learners_recover_who_responds(learner: str) -> None:
    train, test = experiment(4000, seed=0), experiment(3000, seed=1)
    model = uplift.fit_uplift(
        train, outcome="churn_90d", features=FEATURES, learner=learner, rounds=150
    )
    pred = model.predict(test)
    assert np.corrcoef(pred, test["true_uplift"])[0, 1] > 0.5
    ratio = uplift.expected_qini(test["true_uplift"], pred) / uplift.expected_qini(
        test["true_uplift"], test["true_uplift"]
    )
    assert ratio > 0.6
    # the average effect is about right
    assert pred.mean() == pytest.approx(test["true_uplift"].mean(), abs=0.03)


def test_cross_fit_gives_every_row_one_out_of_fold_score() -> None:
    data = experiment(1500, seed=2)
    oof = uplift.cross_fit(data, outcome="churn_90d", features=FEATURES, folds=3, rounds=60)
    assert oof.index.equals(data.index)
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    assert oof["uplift"].notna().all()


def test_uplift_model_round_trips_and_explains_additively(tmp_path) -> None:
    data = experiment(2000, seed=3)
    model = uplift.fit_uplift(data, outcome="churn_90d", features=FEATURES, learner="x", rounds=80)
    model.save(tmp_path / "u")
    again = uplift.UpliftModel.load(tmp_path / "u")
    np.testing.assert_allclose(again.predict(data), model.predict(data), atol=1e-12)
    contrib = model.contributions(data.head(50))
    np.testing.assert_allclose(
        contrib.sum(axis=1).to_numpy(), model.predict(data.head(50)), atol=1e-9
    )
    with pytest.raises(ValueError):
        uplift.fit_uplift(data.assign(treatment=1), outcome="churn_90d", features=FEATURES)


def test_train_uplift_without_a_warehouse_and_its_card() -> None:
    from workbench.models.cards import render_card

    data = experiment(1200, seed=4).assign(as_of=pd.Timestamp("2024-03-01", tz="UTC"))
    res = uplift.train_uplift(
        None,
        data[["account_id", "as_of", "treatment"]],
        dataset=data,
        risk=False,
        folds=3,
        rounds=60,
        track=False,
        register=False,
    )
    assert len(res.scored) == 1200 and res.scored["uplift"].notna().all()
    assert res.metrics["ate_observed"] == pytest.approx(
        data.loc[data.treatment == 0, "churn_90d"].mean()
        - data.loc[data.treatment == 1, "churn_90d"].mean()
    )
    assert set(res.model.features) == set(FEATURES)  # without a risk model: every feature
    card = render_card(res.card)
    assert "# Model card: retention_uplift" in card and "**No.**" in card
    assert "qini" in card and "cross-fitting" in card.lower()
