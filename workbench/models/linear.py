"""A logistic regression on the model features, stored as plain numbers (no pickle).

Fitted by scikit-learn with the preprocessing of the churn models' logistic baseline
(:func:`workbench.models.training.fit_logistic_baseline`: signed log, median imputation
with missing-value indicators, standardisation; one-hot categories with rare levels pooled),
then kept as the fitted numbers only: the medians, which columns carry an indicator, the
scaler's means and scales, the one-hot columns, the coefficients and the intercept. Scoring
rebuilds the same design matrix with numpy (tested equal to the scikit-learn pipeline), so a
saved model is a JSON file that any version of scikit-learn, or none, can score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workbench.models import training
from workbench.models.training import FeatureSpec

MISSING = "(missing)"


@dataclass(frozen=True)
class LogisticModel:
    """A fitted logistic regression and the numbers of its preprocessing.

    ``onehot`` maps each categorical feature to its output columns in order: each a tuple
    of the levels that set it (one level, or every pooled rare level for the last column).
    """

    spec: FeatureSpec
    medians: tuple[float, ...]
    indicators: tuple[int, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    onehot: Mapping[str, tuple[tuple[str, ...], ...]]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, *, target: str, spec: FeatureSpec, C: float = 0.5
    ) -> LogisticModel:
        """Fit on ``frame`` (0/1 ``target``) with the logistic baseline's preprocessing."""
        pipe = training.fit_logistic_baseline(frame, target=target, spec=spec, C=C)
        return cls.from_pipeline(pipe, spec)

    @classmethod
    def from_pipeline(cls, pipe: Any, spec: FeatureSpec) -> LogisticModel:
        """The numbers of a pipeline from :func:`~workbench.models.training.fit_logistic_baseline`."""
        prep = pipe.named_steps["prep"]
        lr = pipe.named_steps["lr"]
        onehot: dict[str, tuple[tuple[str, ...], ...]] = {}
        mean, scale = (), ()
        medians: tuple[float, ...] = ()
        indicators: tuple[int, ...] = ()
        if spec.numeric:
            num = prep.named_transformers_["num"]
            imputer, scaler = num.named_steps["impute"], num.named_steps["scale"]
            medians = tuple(float(v) for v in imputer.statistics_)
            if imputer.indicator_ is not None:
                indicators = tuple(int(i) for i in imputer.indicator_.features_)
            mean, scale = tuple(map(float, scaler.mean_)), tuple(map(float, scaler.scale_))
        if spec.categorical:
            enc = prep.named_transformers_["cat"].named_steps["onehot"]
            rare = getattr(enc, "infrequent_categories_", [None] * len(enc.categories_))
            for name, levels, pooled in zip(spec.categorical, enc.categories_, rare, strict=True):
                pooled = set() if pooled is None else {str(v) for v in pooled}
                columns = [(str(v),) for v in levels if str(v) not in pooled]
                if pooled:
                    columns.append(tuple(sorted(pooled)))
                onehot[name] = tuple(columns)
        return cls(
            spec=spec,
            medians=medians,
            indicators=indicators,
            mean=mean,
            scale=scale,
            onehot=onehot,
            coef=tuple(float(v) for v in lr.coef_[0]),
            intercept=float(lr.intercept_[0]),
        )

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        """The standardised numerics, their indicators and the one-hot columns."""
        X = self.spec.matrix(frame)
        parts = []
        if self.spec.numeric:
            raw = X[list(self.spec.numeric)].to_numpy(dtype=np.float64)
            raw = training.signed_log(raw)
            missing = np.isnan(raw)
            filled = np.where(missing, np.asarray(self.medians), raw)
            num = np.hstack([filled, missing[:, list(self.indicators)].astype(np.float64)])
            parts.append((num - np.asarray(self.mean)) / np.asarray(self.scale))
        for name, columns in self.onehot.items():
            values = X[name].astype(object).where(X[name].notna(), MISSING).astype(str)
            parts.append(
                np.column_stack([values.isin(levels).to_numpy(np.float64) for levels in columns])
                if columns
                else np.empty((len(X), 0))
            )
        return np.hstack(parts) if parts else np.empty((len(X), 0))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The probability of the target for each row."""
        z = self.design(frame) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic",
            "spec": self.spec.to_json(),
            "medians": list(self.medians),
            "indicators": list(self.indicators),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "onehot": {k: [list(c) for c in v] for k, v in self.onehot.items()},
            "coef": list(self.coef),
            "intercept": self.intercept,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogisticModel:
        onehot: dict[str, tuple[tuple[str, ...], ...]] = {
            k: tuple(tuple(c) for c in v) for k, v in data["onehot"].items()
        }
        return cls(
            spec=FeatureSpec.from_json(data["spec"]),
            medians=tuple(data["medians"]),
            indicators=tuple(data["indicators"]),
            mean=tuple(data["mean"]),
            scale=tuple(data["scale"]),
            onehot=onehot,
            coef=tuple(data["coef"]),
            intercept=float(data["intercept"]),
        )


def log_odds_mean(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The probability whose log-odds is the mean of the given probabilities' log-odds."""
    z = np.mean([training._logit(np.asarray(p, dtype=np.float64)) for p in probabilities], axis=0)
    return 1.0 / (1.0 + np.exp(-z))
