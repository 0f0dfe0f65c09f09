"""Churn, recovery and retention-uplift models: training, evaluation, explanations, registry.

Modules: ``training`` (datasets, time splits, calibrated LightGBM, logistic baseline),
``evaluation`` (metrics, reliability, lift, cohorts), ``oracle`` (the simulator's true
probabilities), ``explain`` (SHAP via ``pred_contrib``, plain-words reasons), ``uplift``
(T/X-learners, Qini, AUUC), ``registry`` (the MLflow adapter: tracking, registration,
aliases, promotion, cards), ``cards`` (model card markdown), ``scoring`` (the ``scores``
table), ``charts`` (Altair).

Typical use (a notebook)::

    from workbench.models import train_churn, evaluate_against_oracle, promote
    with open_warehouse(settings).read() as con:      # DuckDB, or Spark (engine = "spark")
        result = train_churn(con, horizons=(30, 90, 180), settings=settings)
        evaluate_against_oracle(result, con=con, truth_dir=settings.data_dir / "truth")
    result.summary()
"""

from workbench.models.oracle import evaluate_against_oracle, experiment_from_truth
from workbench.models.registry import (
    list_models,
    load_model,
    model_card,
    promote,
    request_promotion,
    request_rollback,
    rollback_champion,
)
from workbench.models.registry import register_run as register
from workbench.models.scoring import read_scores, score_accounts, score_invoices
from workbench.models.training import (
    TrainingResult,
    churn_dataset,
    recovery_dataset,
    train_churn,
    train_recovery,
)
from workbench.models.uplift import UpliftResult, train_uplift, uplift_dataset

__all__ = [
    "TrainingResult",
    "UpliftResult",
    "churn_dataset",
    "evaluate_against_oracle",
    "experiment_from_truth",
    "list_models",
    "load_model",
    "model_card",
    "promote",
    "read_scores",
    "recovery_dataset",
    "register",
    "request_promotion",
    "request_rollback",
    "rollback_champion",
    "score_accounts",
    "score_invoices",
    "train_churn",
    "train_recovery",
    "train_uplift",
    "uplift_dataset",
]
