"""End to end on a tiny simulated company: simulate -> ingest -> features -> train -> oracle -> score.

No MLflow here (``track=False``); the registry has its own test file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.config import load_settings
from workbench.ingest import ingest_landing
from workbench.models import evaluation, explain, oracle, scoring, training, uplift
from workbench.simulator import simulate
from workbench.store import Warehouse

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def company(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-e2e")
    data = root / "data"
    simulate(accounts=160, months=16, seed=7, out=data, progress=False)
    settings = load_settings(REPO, overrides={"data_dir": str(data)})
    ingest_landing(settings, progress=False)
    return settings, data / "truth"


def test_churn_models_train_on_the_warehouse_and_face_the_oracle(company) -> None:
    settings, truth = company
    with Warehouse(settings).read(step="test") as con:
        data = training.churn_dataset(con, horizons=(30,))
        res = training.train_churn(
            con,
            horizons=(30,),
            dataset=data,
            test_months=3,
            valid_months=3,
            track=False,
            register=False,
        )
        cmp = oracle.evaluate_against_oracle(res, con=con, truth_dir=truth, log_to_mlflow=False)
        scores_frame = data[data["as_of"] == data["as_of"].max()]
    run = res.runs["churn_30d"]
    # the spine is paying accounts at month starts; labels exist except in the last month
    assert data["paying_at_as_of"].all()
    assert data.loc[data["as_of"] == data["as_of"].max(), "churn_30d"].isna().all()
    assert {"region", "channel", "size", "industry", "plan"} <= set(data.columns)
    row = cmp.iloc[0]
    assert row["coverage"] > 0.95  # the truth knows (almost) every test account
    assert 0 < row["oracle_auc"] <= 1 and np.isfinite(row["model_auc"])
    assert row["rows"] == pytest.approx(len(run.test), abs=len(run.test) * 0.05)
    # the oracle's probabilities are probabilities and its mean is in the range of the churn rate
    o = run.test["oracle"].dropna()
    assert o.between(0, 1).all()
    assert abs(o.mean() - run.test["churn_30d"].mean()) < 0.05
    # plain-words reasons for the scored accounts
    contrib = explain.contributions(run.model, scores_frame)
    reasons = explain.top_reasons(scores_frame, contrib)
    assert reasons["reason_1"].notna().mean() > 0.9
    info = {"name": run.name, "version": "0", "run_id": None}
    scores = scoring.score_frame(
        run.model, scores_frame, info=info, entity_type="account", entity_col="account_id"
    )
    assert scores["score"].between(0, 1).all() and len(scores) == len(scores_frame)


def test_recovery_oracle_matches_the_truth_at_first_failures(company) -> None:
    settings, truth = company
    with Warehouse(settings).read(step="test") as con:
        data = training.recovery_dataset(con, horizons=(14,), each_attempt=True)
    assert data["first_failure"].any() and (~data["first_failure"]).any()
    assert {"invoice_last_decline_code", "invoice_attempt_number", "invoice_amount_due"} <= set(
        data.columns
    )
    o = oracle.recovery_oracle(data[["invoice_id", "as_of"]], truth_dir=truth, horizons=(14,))
    # our first failures are the simulator's first failures
    known = o["oracle_recovered_14d"].notna()
    assert known.mean() > 0.8
    assert (o.loc[known & data["first_failure"], "oracle_first_failure"]).all()
    # the product formula at a first failure reproduces the simulator's own number
    rec = oracle.read_truth(truth, "recovery")
    first = rec[rec["attempt"] == 1].set_index("invoice_id")
    inv = data.loc[known & data["first_failure"], "invoice_id"].iloc[0]
    retries = rec[(rec["invoice_id"] == inv) & (rec["attempt"] > 1)]
    t0 = first.loc[inv, "attempt_at"]
    inside = retries[retries["attempt_at"] <= t0 + pd.Timedelta(days=14)]
    assert 1 - np.prod(1 - inside["p_success"]) == pytest.approx(first.loc[inv, "p_recovered_14d"])
    labelled = data["recovered_14d"].notna() & known
    y, p = data.loc[labelled, "recovered_14d"], o.loc[labelled, "oracle_recovered_14d"]
    assert evaluation.roc_auc(y, p) > 0.6


def test_experiment_and_uplift_oracle_from_the_truth(company) -> None:
    settings, truth = company
    exp = oracle.experiment_from_truth(truth)
    assert set(exp.columns) == {"account_id", "as_of", "treatment"}
    assert set(exp["treatment"].unique()) <= {0, 1} and len(exp) > 10
    assert (exp["as_of"].dt.day == 1).all()
    tau = oracle.uplift_oracle(exp, truth_dir=truth, months=3)
    assert tau.between(0, 1).all()
    with Warehouse(settings).read(step="test") as con:
        frame = uplift.uplift_dataset(con, exp, horizon_days=90)
    assert len(frame) == len(exp) and frame["treatment"].tolist() == exp["treatment"].tolist()
    assert frame["churn_90d"].notna().sum() > 0


def test_cancellation_requests_match_the_simulators_decisions(company) -> None:
    from workbench.models import cancellation

    settings, truth = company
    hz = oracle.read_truth(truth, "churn_hazard")
    frame = hz[["account_id", "month"]].rename(columns={"month": "as_of"})
    with Warehouse(settings).read(step="test") as con:
        got = cancellation.decision_labels(con, frame)
        shares = cancellation.immediate_shares(con)
    kind = hz["churn_type"].fillna("none").to_numpy()
    # a decision to cancel made in the month (the truth's voluntary churn) is seen in the
    # warehouse as a request in (month start, next month start]; exits after dunning are not
    assert (kind == "voluntary").sum() > 20
    assert got[kind == "voluntary"].mean() > 0.95
    assert not got[kind == "involuntary"].any()
    assert got[kind == "none"].mean() < 0.01
    # the simulator ends 25% of monthly and 10% of yearly decisions at once
    assert 0.1 < shares["month"] < 0.45 and 0 <= shares["year"] < shares["month"]


def test_uplift_decision_learner_trains_on_the_warehouse_and_scores_with_reasons(company) -> None:
    from workbench.models import cancellation

    settings, truth = company
    exp = oracle.experiment_from_truth(truth)
    with Warehouse(settings).read(step="test") as con:
        res = uplift.train_uplift(con, exp, folds=3, track=False, register=False)
        shares = cancellation.immediate_shares(con)
        frame = uplift.uplift_dataset(con, exp.head(5), horizon_days=90)
    model = res.model
    assert model.learner == "d" and model.risk.target == uplift.DECISION
    assert res.card["risk_model"]["label"] == "monthly decision to cancel"
    assert isinstance(model.risk, uplift.DecisionHazardModel)
    card_model = res.card["risk_model"]["model"]
    assert card_model.startswith("LightGBM and logistic regression, log-odds mean")
    # the health outlook (next month's CRM score) is an input, learned from the company's CRM
    assert "health_score_outlook" in card_model and "health_score_outlook" in model.risk.features
    assert model.risk.outlook is not None
    assert res.card["risk_model"]["outlook_rows"] == model.risk.outlook.meta["rows"] > 100
    # the regression half reads the outlook and who the account is; the hazards of the
    # experiment's rows are averaged over uplift.D_REPEATS splits of the accounts
    assert "the regression reads only health_score_outlook, tenure_days" in card_model
    assert res.card["risk_model"]["hazard_repeats"] == uplift.D_REPEATS == 3
    assert f"averaged over {uplift.D_REPEATS} splits" in res.card["risk_model"]["trained_on"]
    assert res.scored["uplift"].notna().all() and res.scored[uplift.HAZARD].between(0, 1).all()
    # the billing mechanics come from the warehouse's own cancellations
    assert model.linear["immediate"] == shares and model.linear["penalty"] in uplift.D_PENALTIES
    info = {"name": "retention_uplift", "version": "1", "run_id": "r", "feature_set_version": "fs"}
    scores = scoring.score_frame(
        model, frame, info=info, entity_type="account", entity_col="account_id"
    )
    assert len(scores) == 5 and scores["score"].notna().all()
    assert scores["reason_1"].notna().all()
    # the reasons speak of the inputs: the decision hazard or billing or the attributes
    assert scores["reason_features"].str.len().gt(0).all()
    # where the model falls short of the oracle, one part swapped for the truth at a time
    with Warehouse(settings).read(step="test") as con:
        gap = oracle.uplift_gap(res, con=con, truth_dir=truth)
        cmp = oracle.evaluate_against_oracle(res, con=con, truth_dir=truth, log_to_mlflow=False)
    ratios = gap.set_index(["hazard", "effect"])["expected_qini_ratio"]
    assert len(ratios) == 6 and gap.attrs["rows"] == int(cmp["rows"].iloc[0])
    # ranking by the true effect gives at most the oracle's gain, and all of it with the
    # true parts (the billing weights differ a little from the truth's)
    assert (ratios <= 1 + 1e-9).all() and ratios[("true", "true")] > 0.97
    own = ratios[("model", "fitted (cross-fitted scores)")]
    assert own == pytest.approx(cmp["expected_qini_ratio"].iloc[0], abs=1e-12)
    assert -1 <= gap.attrs["hazard_spearman"] <= 1 and 0 < gap.attrs["effect_mean_fitted"] < 1
