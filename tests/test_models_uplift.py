"""Uplift learners on a synthetic randomized experiment with known effects; Qini by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.models import uplift
from workbench.models.linear import log_odds_mean


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


def assert_round_trips_and_adds_up(
    model: uplift.UpliftModel, data: pd.DataFrame, path
) -> pd.DataFrame:  # noqa: ANN001
    """Saved and loaded, ``model`` predicts the same; its contributions on 40 rows have one
    column per input plus ``bias`` and add up to the uplift. Returns them."""
    model.save(path)
    again = uplift.UpliftModel.load(path)
    np.testing.assert_allclose(again.predict(data), model.predict(data), atol=1e-12)
    contrib = model.contributions(data.head(40))
    assert list(contrib.columns) == [*model.features, "bias"]
    np.testing.assert_allclose(
        contrib.sum(axis=1).to_numpy(), model.predict(data.head(40)), atol=1e-12
    )
    return contrib


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


@pytest.mark.parametrize("learner", ["t", "x", "s"])
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
    # repeated over splits: the mean of each split's out-of-fold scores, the first split's
    # folds; one split is the split of the seed alone (learner s: its fit has no seed of
    # its own, so a split's scores are those of cross_fit with the split's seed)
    kw = dict(outcome="churn_90d", features=FEATURES, folds=3, learner="s")
    oof = uplift.cross_fit(data, **kw)
    again = uplift.cross_fit(data, repeats=3, **kw)
    splits = [uplift.cross_fit(data, seed=s, **kw) for s in uplift.partition_seeds(0, 3)]
    pd.testing.assert_frame_equal(splits[0], oof)
    np.testing.assert_allclose(
        again["uplift"], np.mean([s["uplift"] for s in splits], axis=0), rtol=1e-12
    )
    assert again["fold"].equals(oof["fold"]) and not np.allclose(again["uplift"], oof["uplift"])


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
    with pytest.raises(ValueError, match="learner 'd' learns from the warehouse"):
        uplift.train_uplift(None, data, dataset=data, track=False, register=False)
    res = uplift.train_uplift(
        None,
        data[["account_id", "as_of", "treatment"]],
        dataset=data,
        learner="s",
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


def test_s_learner_round_trips_and_its_contributions_add_up(tmp_path) -> None:
    data = experiment(2000, seed=5)
    model = uplift.fit_uplift(data, outcome="churn_90d", features=FEATURES, learner="s")
    assert model.boosters == {} and model.linear is not None
    parts = model.predict_components(data)
    assert (parts["p_control"].between(0, 1) & parts["p_treated"].between(0, 1)).all()
    np.testing.assert_allclose(parts["uplift"], parts["p_control"] - parts["p_treated"])
    # self-serve and small accounts respond most in this experiment: the model sees it
    by = parts.assign(channel=data["channel"]).groupby("channel")["uplift"].mean()
    assert by["self-serve"] > by["sales"] + 0.05
    assert_round_trips_and_adds_up(model, data, tmp_path / "s")
    # effect modification penalised without limit: the relative effect is common to all
    flat = uplift.fit_uplift(
        data, outcome="churn_90d", features=FEATURES, learner="s",
        params={"interaction_penalty": 1e9},
    )  # fmt: skip
    k = len(flat.linear["main_index"]) + 1
    assert np.abs(flat.linear["coef"][k:]).max() < 1e-3


def test_voluntary_risk_label_leaves_out_exits_after_failed_payments() -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE invoices (invoice_id VARCHAR, account_id VARCHAR, "
        "marked_uncollectible_at TIMESTAMPTZ)"
    )
    con.execute(
        "INSERT INTO invoices VALUES ('in_1', 'a', '2024-02-10 00:00:00+00'), "
        "('in_2', 'b', '2024-06-10 00:00:00+00'), ('in_3', 'c', NULL)"
    )
    t = pd.Timestamp("2024-02-01", tz="UTC")
    frame = pd.DataFrame(
        {"account_id": ["a", "b", "c", "a"], "as_of": [t, t, t, t + pd.Timedelta(days=8)]}
    )
    # a: uncollectible 9 days later (inside 90 days), also from a day before it; b: 130
    # days later; c: never
    exits = uplift.failed_payment_exits(con, frame, horizon_days=90)
    assert exits.tolist() == [True, False, False, True]
    # the window is (as_of, as_of + 90 days]: not at or after the exit itself
    at = frame.assign(as_of=t + pd.Timedelta(days=9))
    assert not uplift.failed_payment_exits(con, at, horizon_days=90).any()
    # the risk model's label: such exits count as retained
    rng = np.random.default_rng(0)
    n = 3000
    churn = pd.DataFrame(
        {
            "account_id": [f"cus_{i}" for i in range(n)],
            "as_of": pd.to_datetime("2024-01-01", utc=True)
            + pd.to_timedelta(rng.integers(0, 300, n), unit="D"),
            "health_score": rng.normal(50, 15, n),
            "failed_payments_30d": rng.integers(0, 3, n),
        }
    )
    voluntary = rng.random(n) < 1 / (1 + np.exp((churn["health_score"] - 35) / 5))
    involuntary = rng.random(n) < 0.05 + 0.3 * churn["failed_payments_30d"].to_numpy()
    churn["churn_90d"] = (voluntary | involuntary).astype("Int8")
    everything = uplift.fit_risk_model(churn, target="churn_90d")
    only_voluntary = uplift.fit_risk_model(
        churn, target="churn_90d", involuntary=involuntary & ~voluntary
    )
    both = churn.assign(failed_payments_30d=2, health_score=70.0).head(200)
    assert everything.predict(both).mean() > 0.4  # failed payments drive all churn here
    assert only_voluntary.predict(both).mean() < 0.1  # but not the decision to cancel
    # embargo: it is fitted only on rows whose 90 days closed before the calibration months
    months = np.sort(churn["as_of"].unique())
    cut = months[int(len(months) * 0.8)]
    closed = churn["as_of"] + pd.Timedelta(days=90) <= cut
    assert everything.meta["train_rows"] == int(closed.sum()) < int((churn["as_of"] < cut).sum())
    assert everything.meta["valid_rows"] == int((churn["as_of"] >= cut).sum())
    with pytest.raises(ValueError, match="more months of history"):
        uplift.fit_risk_model(churn.assign(as_of=churn["as_of"].min()).head(50), target="churn_90d")
    with pytest.raises(ValueError, match="not a churn_<h>d label"):
        uplift.fit_risk_model(churn.rename(columns={"churn_90d": "left"}), target="left")


# --------------------------------------------------------------------------- learner d

SHARES = {"month": 0.25, "year": 0.1}


def billing_experiment(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """A randomized offer acting on a monthly decision hazard, with billing mechanics: a
    decision ends the subscription at once (25% monthly, 10% yearly) or at the period end;
    the offer cuts the hazard by a share set by channel and size; 3% leave for other
    reasons whatever the offer."""
    from workbench.models.cancellation import billing_weights, ended_by

    frame = experiment(n, seed)
    rng = np.random.default_rng(seed + 100)
    yearly = rng.random(n) < 0.3
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    frame = frame.assign(
        as_of=t0,
        billing_interval_months=np.where(yearly, 12.0, 1.0),
        days_to_period_end=np.where(yearly, rng.uniform(0, 365, n), rng.uniform(0, 30, n)),
        cancel_at_period_end=0,
    )
    health = (frame["health_score"].to_numpy() - 50) / 15
    hazard = 1 / (1 + np.exp(-(-2.6 - 0.9 * health)))
    tau = (
        0.1 + 0.5 * (frame["channel"] == "self-serve") + 0.3 * (frame["size"] == "small")
    ).to_numpy()
    W = billing_weights(frame, horizon_days=90, immediate=SHARES)
    base = hazard[:, None] * np.ones(W.shape[1])
    p0 = 1 - 0.97 * (1 - ended_by(base, W))
    p1 = 1 - 0.97 * (1 - ended_by(base * (1 - tau)[:, None], W))
    treated = frame["treatment"].to_numpy() == 1
    frame["churn_90d"] = (rng.random(n) < np.where(treated, p1, p0)).astype(np.int8)
    frame["true_uplift"] = p0 - p1
    frame["true_hazard"] = hazard
    return frame


class KnownHazard:
    """Stands in for a decision model: the experiment's true monthly hazard, slightly noisy."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        noise = np.random.default_rng(7).normal(0, 0.15, len(frame))
        return frame["true_hazard"].to_numpy() * np.exp(noise)


EFFECTS = ["channel", "size", "region", "industry"]


def test_learner_d_recovers_who_responds_and_when_it_counts() -> None:
    train, test = billing_experiment(4000, seed=0), billing_experiment(3000, seed=1)
    model = uplift.fit_uplift(
        train, outcome="churn_90d", features=EFFECTS, learner="d", risk=KnownHazard(),
        params={"immediate": SHARES},
    )  # fmt: skip
    lin = model.linear
    assert set(lin["cv_log_loss"]) == {f"{p:g}" for p in uplift.D_PENALTIES}
    assert lin["penalty"] == min(uplift.D_PENALTIES, key=lambda p: lin["cv_log_loss"][f"{p:g}"])
    assert lin["other_exit"] == pytest.approx(0.03, abs=0.02)
    assert lin["hazard_scale"] == pytest.approx(1.0, abs=0.25)
    parts = model.predict_components(test)
    np.testing.assert_allclose(parts["uplift"], parts["p_control"] - parts["p_treated"])
    pred = parts["uplift"].to_numpy()
    ratio = uplift.expected_qini(test["true_uplift"], pred) / uplift.expected_qini(
        test["true_uplift"], test["true_uplift"]
    )
    assert ratio > 0.9
    assert pred.mean() == pytest.approx(test["true_uplift"].mean(), abs=0.01)
    # yearly plans renewing after the horizon: a decision now rarely ends them in time
    late = (test["billing_interval_months"] == 12) & (test["days_to_period_end"] > 120)
    assert pred[late].mean() < pred[~late].mean() / 2
    by = parts.assign(channel=test["channel"]).groupby("channel")["uplift"].mean()
    assert by["self-serve"] > 2 * by["sales"]


def test_learner_d_likelihood_gradient_is_exact() -> None:
    """The fit uses the analytic gradient: it agrees with finite differences, in both
    arms, with the hazard's scale clipped for some rows."""
    from workbench.models.cancellation import billing_weights

    frame = billing_experiment(600, seed=2)
    W = billing_weights(frame, horizon_days=90, immediate=SHARES)
    A = np.random.default_rng(0).normal(size=(len(frame), 4))
    hazard = frame["true_hazard"].to_numpy() * np.where(np.arange(len(frame)) < 5, 20.0, 1.0)
    t, y = frame["treatment"].to_numpy(), frame["churn_90d"].to_numpy()

    def loss_at(theta: np.ndarray) -> float:
        return uplift._d_log_loss(theta, hazard, W, A, t, y)

    for theta in (np.array([0.1, -0.4, -3.0, 0.3, -0.2, 0.5, 0.1]), np.zeros(7)):
        loss, grad = uplift._d_loss_grad(theta, hazard, W, A, t, y)
        p0, p1, _ = uplift._d_probs(theta, hazard, W, A)
        p = np.where(t == 1, p1, p0)
        assert loss == pytest.approx(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
        step = 1e-6 * np.eye(len(theta))
        numeric = [
            (loss_at(theta + e) - loss_at(theta - e)) / 2e-6 for e in step
        ]  # central differences
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)


def months_around_eligibility() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three months (before, at and after eligibility) of an account outside the experiment
    (``out``), a control (``ctl``) and a treated one (``trt``), and the experiment."""
    t = pd.Timestamp("2024-05-01", tz="UTC")
    months = [t - pd.DateOffset(months=1), t, t + pd.DateOffset(months=1)]
    frame = pd.DataFrame(
        {
            "account_id": [a for a in ("out", "ctl", "trt") for _ in months],
            "as_of": months * 3,
        }
    )
    experiment = pd.DataFrame({"account_id": ["ctl", "trt"], "as_of": [t, t], "treatment": [0, 1]})
    return frame, experiment


def test_decision_pool_adds_the_control_arm_from_eligibility_on() -> None:
    frame, experiment = months_around_eligibility()
    keep = uplift.decision_pool(frame, experiment)
    # outside the experiment: every month; control: from eligibility on (not the month it
    # survived to reach eligibility); treated: never
    assert keep.tolist() == [True, True, True, False, True, True, False, False, False]


def test_out_of_fold_hazards_never_see_their_own_accounts_outcomes() -> None:
    data = billing_experiment(3000, seed=4)
    pool = data.assign(
        as_of=pd.Timestamp("2023-01-01", tz="UTC")
        + pd.to_timedelta(np.arange(len(data)) % 300, unit="D"),
        account_id=[f"cus_{i % 1000}" for i in range(len(data))],  # three rows per account
    )
    rng = np.random.default_rng(3)
    pool[uplift.DECISION] = (rng.random(len(pool)) < pool["true_hazard"]).astype("Int8")
    accounts = [f"cus_{i}" for i in range(300)]
    rows = pool.drop_duplicates("account_id").head(300)
    base, full = uplift.out_of_fold_hazards(pool, accounts, rows, folds=3)
    assert np.isfinite(base).all()
    assert base.std() > 0 and np.corrcoef(base, rows["true_hazard"])[0, 1] > 0.5
    # one scored account's own labels inverted: its hazard comes from a model that never
    # saw them, so it stays exactly the same
    first = rows["account_id"].iloc[0]
    flipped = pool.copy()
    own = flipped["account_id"] == first
    flipped.loc[own, uplift.DECISION] = 1 - flipped.loc[own, uplift.DECISION]
    again, _ = uplift.out_of_fold_hazards(flipped, accounts, rows, folds=3)
    assert again[0] == base[0]
    # the same change reaches the hazards of the accounts in the other folds
    assert not np.allclose(again, base)
    # repeated over three splits of the accounts: still never its own outcomes, and the
    # log-odds mean of each split's hazards
    rep, _ = uplift.out_of_fold_hazards(pool, accounts, rows, folds=3, repeats=3)
    rep_flipped, _ = uplift.out_of_fold_hazards(flipped, accounts, rows, folds=3, repeats=3)
    assert rep_flipped[0] == rep[0] and not np.allclose(rep, base)
    each = []
    for split in uplift.partition_seeds(0, 3):
        fold, groups = uplift._account_folds(accounts, rows, folds=3, seed=split)
        models = [uplift._fit_decision(pool, exclude_accounts=g) for g in groups]
        each.append(uplift._score_folds(models, rows, fold))
    np.testing.assert_allclose(rep, uplift.log_odds_mean(each), rtol=1e-12)
    # the folds' models are fitted side by side: each equals the same fit made alone
    fold, groups = uplift._account_folds(accounts, rows, folds=3, seed=0)
    alone = uplift._fit_decision(pool, exclude_accounts=groups[1])
    np.testing.assert_array_equal(base[fold == 1], alone.predict(rows[fold == 1]))
    # and the model for new accounts saw every row of the pool
    assert full.meta["refit_rows"] == len(pool)
    with pytest.raises(ValueError, match="must belong"):
        uplift.out_of_fold_hazards(pool, accounts[:10], rows, folds=3)


def test_learner_d_round_trips_explains_and_asks_for_its_inputs(tmp_path) -> None:
    data = billing_experiment(2000, seed=5)
    churn = data.assign(
        as_of=pd.Timestamp("2023-01-01", tz="UTC")
        + pd.to_timedelta(np.arange(len(data)) % 300, unit="D")
    )
    decided = np.random.default_rng(3).random(len(churn)) < churn["true_hazard"]
    risk = uplift.fit_risk_model(
        churn.assign(decided=decided.astype(np.int8)).drop(columns=["churn_90d"]),
        target="decided",
        window=pd.DateOffset(months=1),
    )
    model = uplift.fit_uplift(
        data, outcome="churn_90d", features=EFFECTS, learner="d", risk=risk,
        params={"immediate": SHARES, "penalty": 10.0},
    )  # fmt: skip
    assert model.linear["cv_log_loss"] == {} and model.params["penalty"] == 10.0
    assert uplift.HAZARD in model.features and "days_to_period_end" in model.features
    contrib = assert_round_trips_and_adds_up(model, data, tmp_path / "d")
    assert contrib[uplift.HAZARD].abs().mean() > 0
    with pytest.raises(ValueError, match="needs risk="):
        uplift.fit_uplift(data, outcome="churn_90d", features=EFFECTS, learner="d", risk=risk)
    oof = uplift.cross_fit(
        data, outcome="churn_90d", features=EFFECTS, learner="d", risk=risk, folds=3,
        params={"immediate": SHARES, "penalty": 10.0},
    )  # fmt: skip
    assert oof.index.equals(data.index) and oof["uplift"].notna().all()
    # the decision model learner d trains by default: trees and a logistic regression,
    # averaged on the log-odds scale; it is saved with the uplift model and scores the same
    pool = churn.assign(
        **{uplift.DECISION: decided.astype("Int8")},
        account_id=[f"cus_{i % 500}" for i in range(len(churn))],
    ).drop(columns=["churn_90d"])
    combined = uplift._fit_decision(pool)
    parts = [combined.trees.predict(data), combined.linear.predict(data)]
    np.testing.assert_allclose(combined.predict(data), log_odds_mean(parts))
    assert np.corrcoef(combined.predict(data), data["true_hazard"])[0, 1] > 0.5
    model = uplift.fit_uplift(
        data, outcome="churn_90d", features=EFFECTS, learner="d", risk=combined,
        params={"immediate": SHARES, "penalty": 10.0},
    )  # fmt: skip
    assert_round_trips_and_adds_up(model, data, tmp_path / "d_combined")
    again = uplift.UpliftModel.load(tmp_path / "d_combined")
    assert isinstance(again.risk, uplift.DecisionHazardModel)
    assert again.risk.linear == combined.linear
