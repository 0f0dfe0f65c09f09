"""MLflow tracking and registry, promotion through the approvals queue, model cards, scores.

One embedded MLflow store (SQLite + artifact folder) is shared by the whole file: its
first use runs migrations, which takes seconds.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench import approvals
from workbench.approvals import Identity, Role
from workbench.config import load_settings
from workbench.models import registry, scoring, training

ANN = Identity(user="ann", role=Role.ANALYST)
BOB = Identity(user="bob", role=Role.APPROVER)


def synthetic(n_accounts: int = 300, months: int = 14, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    as_of = pd.date_range("2024-01-01", periods=months, freq="MS", tz="UTC").astype(
        "datetime64[us, UTC]"
    )
    n = n_accounts * months
    health = rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "account_id": np.repeat([f"cus_{i:04d}" for i in range(n_accounts)], months),
            "as_of": np.tile(as_of, n_accounts),
            "health_score": 50 + 15 * health + rng.normal(0, 5, n),
            "failed_payments_30d": rng.poisson(np.exp(-0.5 - 0.6 * health)).astype(np.int64),
            "tenure_days": rng.uniform(30, 900, n),
            "plan_tier": rng.choice(["prod_a", "prod_b"], n),
            "region": rng.choice(["NA", "EU"], n),
            "channel": rng.choice(["self-serve", "sales"], n),
            "mrr": rng.uniform(1000, 9000, n),
        }
    )
    p = 1 / (1 + np.exp(-(-2.2 - 1.2 * health)))
    frame["churn_30d"] = pd.array((rng.uniform(0, 1, n) < p).astype(np.int8), dtype="Int8")
    frame["plan"] = frame["plan_tier"]
    return frame


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """The repository's settings (its default policy) with the data folder in a temp dir."""
    root = tmp_path_factory.mktemp("models-registry")
    return load_settings(REPO, overrides={"data_dir": str(root / "data")})


@pytest.fixture(scope="module")
def trained(settings):
    data = synthetic()
    import mlflow  # noqa: F401 - configures its loggers on import: attach to them after

    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("mlflow").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = training.train_churn(
                None, horizons=(30,), dataset=data, settings=settings, test_months=3, valid_months=3
            )
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    mlflow_advice = [
        m
        for m in [str(w.message) for w in caught] + logged
        if "type hint" in m.lower() or "CloudPickle" in m or "signature" in m
    ]
    return res.runs["churn_30d"], data, mlflow_advice


def test_training_run_is_tracked_and_registered_as_challenger(trained, settings) -> None:
    run, _, mlflow_advice = trained
    # the wrapper is logged as code with a typed predict: MLflow neither pickles an object,
    # nor asks for type hints, nor says it has no signature (all three reached the notebooks)
    assert mlflow_advice == []
    assert run.version == "1" and run.run_id
    models = registry.list_models(settings=settings)
    row = models[models["model"] == "churn_30d"].iloc[0]
    assert row["aliases"] == "challenger"
    assert row["feature_set_version"] == run.model.feature_set_version
    assert row["test_roc_auc"] == pytest.approx(run.metrics["test_roc_auc"], rel=1e-5)
    c = registry.client(settings)
    logged = c.get_run(run.run_id)
    assert logged.data.params["feature_set_version"] == run.model.feature_set_version
    assert logged.data.params["calibration"] == "isotonic"
    assert logged.data.metrics["test_ece"] == pytest.approx(run.metrics["test_ece"])
    assert "baseline_roc_auc" in logged.data.metrics
    files = {a.path for a in c.list_artifacts(run.run_id, "report")}
    for name in (
        "report/calibration.html",
        "report/shap_summary.html",
        "report/card.json",
        "report/model_card.md",
        "report/lift.html",
    ):
        assert name in files, name
    artifacts_dir = settings.data_dir / "mlflow" / "artifacts" / "churn"
    assert artifacts_dir.is_dir() and any(artifacts_dir.rglob("booster.txt"))


def test_registered_model_loads_and_scores_like_the_trained_one(trained, settings) -> None:
    run, data, _ = trained
    model, info = registry.load_model("churn_30d", "challenger", settings=settings)
    rows = data.tail(200)
    np.testing.assert_allclose(model.predict(rows), run.model.predict(rows), atol=1e-12)
    assert info == {
        "name": "churn_30d",
        "version": "1",
        "run_id": run.run_id,
        "feature_set_version": run.model.feature_set_version,
    }
    import mlflow.pyfunc

    registry.use_tracking(settings)
    pyfunc = mlflow.pyfunc.load_model(f"models:/churn_30d/{info['version']}")
    np.testing.assert_allclose(
        np.asarray(pyfunc.predict(rows[run.model.features])), run.model.predict(rows), atol=1e-12
    )
    with pytest.raises(registry.RegistryError):
        registry.load_model("churn_30d", "champion", settings=settings)


def test_promotion_goes_through_the_approvals_queue(trained, settings) -> None:
    out = registry.request_promotion(
        "churn_30d", 1, who=ANN, reason="better than nothing", settings=settings
    )
    assert out.code == "queued"
    denied = approvals.approve(
        settings,
        out.item_id,
        who=Identity(user="ann", role=Role.APPROVER),
        current_state=registry.current_state,
    )
    assert denied.code == "denied"  # maker-checker: the requester cannot approve
    assert registry.alias_version("churn_30d", "champion", settings=settings) is None
    done = approvals.approve(settings, out.item_id, who=BOB, current_state=registry.current_state)
    assert done.code == "executed", done.message
    assert registry.alias_version("churn_30d", "champion", settings=settings) == "1"
    assert registry.alias_version("churn_30d", "challenger", settings=settings) is None
    row = (
        registry.list_models(settings=settings)
        .set_index(["model", "version"])
        .loc[("churn_30d", "1")]
    )
    assert row["promoted_by"] == "bob"
    hist = registry.champion_history("churn_30d", settings=settings)
    assert hist.iloc[-1]["via"] == f"approvals:{out.item_id}" and hist.iloc[-1]["previous"] is None


def test_a_request_goes_stale_when_the_champion_changed(trained, settings) -> None:
    run, _, _ = trained
    v2 = registry.register_run(run, settings=settings)
    assert v2 == "2" and registry.alias_version("churn_30d", "challenger", settings=settings) == "2"
    out = registry.request_promotion("churn_30d", v2, who=ANN, settings=settings)
    registry.promote(
        "churn_30d", v2, who="carol", reason="hotfix", settings=settings
    )  # direct, recorded
    # the approvals dashboard's default state (approvals.CurrentState) asks the registry
    res = approvals.approve(
        settings, out.item_id, who=BOB, current_state=approvals.CurrentState(settings)
    )
    assert res.code == "stale"
    assert registry.alias_version("churn_30d", "champion", settings=settings) == "2"
    back = registry.rollback_champion(
        "churn_30d", who="bob", reason="v2 misbehaves", settings=settings
    )
    assert back["version"] == "1" and back["previous_champion"] == "2"
    assert registry.alias_version("churn_30d", "champion", settings=settings) == "1"
    # a rollback request goes through the queue like a promotion (maker-checker included)
    registry.promote("churn_30d", v2, who="carol", reason="retry v2", settings=settings)
    req = registry.request_rollback("churn_30d", who=ANN, reason="drift", settings=settings)
    assert req.code == "queued"
    assert approvals.get_item(settings, req.item_id).payload["version"] == "1"
    mine = approvals.approve(
        settings, req.item_id, who=Identity(user="ann", role=Role.APPROVER),
        current_state=registry.current_state,
    )  # fmt: skip
    assert mine.code == "denied"
    done = approvals.approve(settings, req.item_id, who=BOB, current_state=registry.current_state)
    assert done.code == "executed", done.message
    assert registry.alias_version("churn_30d", "champion", settings=settings) == "1"
    with pytest.raises(ValueError):
        registry.promote("churn_30d", 1, who=" ", settings=settings)


def test_a_new_version_cannot_be_registered_as_champion(trained, settings) -> None:
    run, _, _ = trained
    before = registry.alias_version("churn_30d", "champion", settings=settings)
    with pytest.raises(registry.RegistryError, match="request a promotion"):
        registry.register_run(run, settings=settings, alias="champion")
    assert registry.alias_version("churn_30d", "champion", settings=settings) == before


def test_model_card_has_every_section(trained, settings) -> None:
    card = registry.model_card("churn_30d", "1", settings=settings)
    for heading in (
        "# Model card: churn_30d v1",
        "## Intended use",
        "## Does it score people's ability to pay?",
        "## Training window and data",
        "## Features",
        "## Metrics",
        "### By cohort",
        "## Calibration",
        "## Limitations",
    ):
        assert heading in card, heading
    assert "**No.**" in card
    assert "fs-" in card and "health_score" in card
    assert "| lightgbm |" in card and "| logistic |" in card
    assert "Promoted to champion**: by bob" in card


def test_scores_are_stored_with_model_version_and_reasons(trained, settings) -> None:
    run, data, _ = trained
    model, info = registry.load_model("churn_30d", "champion", settings=settings)
    rows = data[data["as_of"] == data["as_of"].max()].head(50)
    scores = scoring.score_frame(
        model, rows, info=info, entity_type="account", entity_col="account_id", alias="champion"
    )
    assert list(scores.columns) == scoring.SCORE_COLUMNS
    assert (scores["model_version"] == "1").all() and (
        scores["feature_set_version"] == model.feature_set_version
    ).all()
    np.testing.assert_allclose(scores["score"], model.predict(rows))
    assert scores["reason_1"].notna().all()
    top = scores.sort_values("score").iloc[-1]
    assert top["reason_features"].split(";")[0] in model.features
    con = duckdb.connect()
    assert scoring.read_scores(con).empty
    assert scoring.write_scores(con, scores) == 50
    scoring.write_scores(con, scores)  # the same key again replaces, never duplicates
    stored = scoring.read_scores(con, model_name="churn_30d")
    assert len(stored) == 50
    one = scoring.read_scores(con, entity_id=rows["account_id"].iloc[0])
    assert len(one) == 1 and one.loc[0, "run_id"] == run.run_id


def test_a_model_is_not_scored_after_its_features_changed_definition(
    trained, settings, monkeypatch
) -> None:
    import dataclasses

    from workbench.features import definitions

    model, info = registry.load_model("churn_30d", "champion", settings=settings)
    rows = trained[1].head(5)
    old = definitions.REGISTRY["failed_payments_30d"]
    assert "failed_payments_30d" in model.features
    monkeypatch.setitem(
        definitions.REGISTRY,
        "failed_payments_30d",
        dataclasses.replace(old, window_days=365, version=old.version + 1),
    )
    with pytest.raises(training.FeatureSetChanged, match="retrain it"):
        scoring.score_frame(model, rows, info=info, entity_type="account", entity_col="account_id")
