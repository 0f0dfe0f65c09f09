"""Health outlook: next month's CRM health score, predicted from an account's features.

Learner ``d`` of the retention-offer uplift model ranks accounts by their monthly hazard of
deciding to cancel (:mod:`workbench.models.uplift`), learned from cancellation requests: a
few hundred a year on the default company. A model that learned that hazard from its true
values, on the same rows and features, would rank the experiment far better (on a
development company: Spearman 0.91 with the true hazard against 0.78), so the features hold
the information and the sparse label is what limits. The CRM health score is the customer
success team's reading of the same health, recorded for every account every month: next
month's score is a dense, observable target. This module fits it (a LightGBM regression on
the features at ``as_of``), and its prediction, ``health_score_outlook``, is one more input
of the decision hazard's trees and, with who the account is (tenure, billing interval, plan
and attributes: :data:`workbench.models.uplift.REGRESSION_INPUTS`), the whole input of its
regression; :func:`workbench.models.uplift.decision_hazards` fits it on the rows no offer
touched, out-of-fold by account like the hazard. On both development companies the outlook
lifted the hazard's rank correlation with the true hazard by 0.03-0.05 and the uplift's
expected-Qini ratio by 0.015-0.021, and narrowing the regression to it lifted them by
another 0.03-0.04 and 0.002-0.017 (docs/model-quality.md, "Uplift").

The label looks past ``as_of`` (the first CRM row dated in ``[as_of, as_of + 1 month)``; a
daily row is known at the end of its day), so it is used only to fit; the prediction uses
the features at ``as_of`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from workbench.features.offline import registered_rows
from workbench.models import training

#: The column the outlook adds to a frame.
OUTLOOK = "health_score_outlook"

#: LightGBM parameters of the outlook regression (no row or feature sampling: the fit does
#: not depend on the seed; threads by :func:`~workbench.models.training.lgb_threads`).
PARAMS: dict[str, Any] = {
    "objective": "regression",
    "num_leaves": 15,
    "learning_rate": 0.05,
    "min_data_in_leaf": 50,
    "verbose": -1,
    "deterministic": True,
    "force_col_wise": True,
}
ROUNDS = 400


def next_health_scores(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> np.ndarray:
    """Per row (``account_id``, ``as_of``): the health score of the account's first CRM row
    dated in ``[as_of, as_of + 1 month)`` (the day of ``as_of`` included: its row is known
    only at the end of that day), NaN where there is none (the account left, or the month
    has not been observed)."""
    with registered_rows(con, frame) as name:
        got = con.execute(
            f"""
            WITH p AS (SELECT _row, account_id, make_timestamp(t_us) AS t FROM {name})
            SELECT p._row, arg_min(c.health_score, c.date) AS score
            FROM p JOIN crm_signals c ON c.account_id = p.account_id
            WHERE c.health_score IS NOT NULL
              AND c.date >= CAST(p.t AS DATE)
              AND c.date < CAST(p.t + INTERVAL 1 MONTH AS DATE)
            GROUP BY p._row
            """
        ).fetchnumpy()
    out = np.full(len(frame), np.nan)
    out[np.asarray(got["_row"], dtype=np.int64)] = np.asarray(got["score"], dtype=np.float64)
    return out


@dataclass
class HealthOutlook:
    """A fitted regression of next month's CRM health score (:func:`next_health_scores`)."""

    booster: lgb.Booster
    spec: training.FeatureSpec
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        scores: np.ndarray,
        *,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> HealthOutlook:
        """Fit on the rows of ``frame`` (a churn modelling frame) that have a score."""
        scores = np.asarray(scores, dtype=np.float64)
        rows = np.isfinite(scores)
        if not rows.any():
            raise ValueError(
                "no row has a CRM health score in the month after it: the health outlook "
                "needs crm_signals (ingest the CRM export)"
            )
        features = [c for c in training.model_features(frame) if c != OUTLOOK]
        spec = training.FeatureSpec.infer(frame, features)
        p = {
            **PARAMS,
            "num_threads": training.lgb_threads(int(rows.sum())),
            "seed": int(seed),
            **dict(params or {}),
        }
        rounds = int(p.pop("rounds", ROUNDS))
        data = training.lgb_dataset(spec.matrix(frame[rows]), scores[rows])
        booster = lgb.train(p, data, num_boost_round=rounds)
        meta = {"rows": int(rows.sum()), "rounds": rounds, "score_mean": float(scores[rows].mean())}
        return cls(booster=booster, spec=spec, meta=meta)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The expected health score next month, per row."""
        return self.booster.predict(self.spec.matrix(frame))

    def with_outlook(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with :data:`OUTLOOK` (computed again, also when present)."""
        return frame.assign(**{OUTLOOK: self.predict(frame)})

    def save(self, path: Path) -> Path:
        """``booster.txt`` and ``outlook.json`` in the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / "booster.txt"))
        (path / "outlook.json").write_text(
            json.dumps({"spec": self.spec.to_json(), "meta": self.meta}, indent=1)
        )
        return path

    @classmethod
    def load(cls, path: Path) -> HealthOutlook:
        path = Path(path)
        saved = json.loads((path / "outlook.json").read_text())
        return cls(
            booster=lgb.Booster(model_file=str(path / "booster.txt")),
            spec=training.FeatureSpec.from_json(saved["spec"]),
            meta=saved.get("meta", {}),
        )
