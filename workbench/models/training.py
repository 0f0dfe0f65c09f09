"""Training sets, time-based splits, calibrated LightGBM and the logistic baseline.

The churn and recovery models are trained here:

* :func:`churn_dataset` / :func:`recovery_dataset` build the modelling frame from the
  feature store (spine -> point-in-time features -> labels) and add the account's
  static attributes (region, channel, industry, size) and its plan name for cohorts;
* :func:`time_split` splits by ``as_of`` month only: train on the earliest months,
  validate (early stopping and calibration) on later ones, test on the latest. With
  ``embargo=True`` a row may only be fitted on when its label window has closed
  before the next part starts (``as_of + horizon <= start``), as when the model is
  retrained in production: no outcome seen in training or calibration happens inside
  the test period;
* :func:`fit_binary_model` fits LightGBM with early stopping on the validation part and
  calibrates its probabilities on that same held-out period (isotonic or Platt);
* :func:`fit_logistic_baseline` is the baseline reported beside it;
* :func:`train_churn` and :func:`train_recovery` run all of that per horizon, evaluate
  on the test period, explain, and (optionally) track and register the runs in MLflow
  through :mod:`workbench.models.registry`.

A model is a :class:`BinaryModel`: the booster as LightGBM's text format, the feature
specification (numeric columns and the category levels of string columns) and the
calibrator, saved as plain files (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from workbench.config import Settings
from workbench.features import labels as flabels
from workbench.features import offline
from workbench.features.definitions import REGISTRY, fingerprint
from workbench.models import evaluation

log = logging.getLogger(__name__)

#: Static account attributes used as features and cohorts (from ``accounts``).
ATTRIBUTES: tuple[str, ...] = ("region", "channel", "industry", "size")
#: Columns that identify a row or carry outcomes: never features.
NON_FEATURES: frozenset[str] = frozenset(
    {
        "account_id",
        "invoice_id",
        "subscription_id",
        "as_of",
        "paying_at_as_of",
        "paid_at_effective",
        "plan",
    }
)
CHURN_HORIZONS: tuple[int, ...] = (30, 90, 180)
RECOVERY_HORIZONS: tuple[int, ...] = (7, 14, 30)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 80,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "max_bin": 255,
    "cat_smooth": 20.0,
    "min_data_per_group": 50,
    "verbose": -1,
    "deterministic": True,
    "force_col_wise": True,
}
#: Recovery data are small (one row per failed attempt, ~1,500 training rows on the default
#: company): small trees, slow learning, and a focused feature set (below).
RECOVERY_PARAMS: dict[str, Any] = {"num_leaves": 8, "min_data_in_leaf": 20, "learning_rate": 0.02}
#: Default inputs of the recovery models: what drives a retry's success (decline code,
#: attempt number, time since the first failure, the failure's day against paydays, amount,
#: the account's history of failed invoices) and the best proxies of the account's health
#: (CRM score, usage per licensed seat and the plan, which sets usage per seat). With a
#: few hundred failed invoices to learn from, the ~90 account features add more noise than
#: signal: on the default company this set raised the 30-day test AUC from 0.79 to 0.83.
RECOVERY_FEATURES: tuple[str, ...] = (
    "invoice_last_decline_code",
    "invoice_attempt_number",
    "invoice_hours_since_first_failure",
    "invoice_failure_day_of_month",
    "invoice_failure_days_to_payday",
    "invoice_hours_to_next_attempt",
    "invoice_amount_due",
    "invoice_currency",
    "failed_invoices_total",
    "health_score",
    "usage_per_seat_7d",
    "usage_per_seat_30d",
    "plan_tier",
)
#: Rows from which LightGBM uses every core; below it one thread is faster (and immune to
#: OpenMP oversubscription on a busy machine). At 10,000 the uplift's decision models
#: (~25,000 rows) and health outlooks use both cores of the reference machine: learner
#: ``d``'s training on the default company 59 s -> 40 s (bench_model_quality), with the
#: same values to the last bit (the parameters build histograms column-wise and
#: deterministically, so the thread count does not change a sum's order; tested in
#: tests/test_models_outlook.py).
MULTITHREAD_ROWS = 10_000


def lgb_threads(rows: int) -> int:
    """Threads for LightGBM on ``rows`` training rows."""
    return max(1, min(os.cpu_count() or 1, 8)) if rows >= MULTITHREAD_ROWS else 1


# --------------------------------------------------------------------------- datasets


def account_attributes(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Static account attributes: ``account_id`` plus :data:`ATTRIBUTES` (strings or None).

    These are set when the account is created (Stripe customer metadata) and do not
    change in the simulator; a source where they change later would leak, see the
    model card's limitations.
    """
    cols = ", ".join(ATTRIBUTES)
    df = con.execute(f"SELECT account_id, {cols} FROM accounts").df()
    for c in ATTRIBUTES:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def plan_names(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Product id -> plan name (the first word of its prices' most common nickname)."""
    rows = con.execute(
        "SELECT product_id, mode(split_part(nickname, ' ', 1)) FROM prices "
        "WHERE product_id IS NOT NULL AND nickname IS NOT NULL GROUP BY 1"
    ).fetchall()
    return {p: n for p, n in rows}


def _decorate(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> pd.DataFrame:
    attrs = account_attributes(con)
    out = frame.merge(attrs, on="account_id", how="left", validate="many_to_one")
    if "plan_tier" in out.columns:
        names = plan_names(con)
        out["plan"] = out["plan_tier"].map(names).where(out["plan_tier"].notna(), None)
        out["plan"] = out["plan"].fillna(out["plan_tier"])
    return out


def default_window(con: duckdb.DuckDBPyConnection) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first month start after the data begins and the data horizon."""
    first = con.execute("SELECT min(valid_from) FROM subscription_history").fetchone()[0]
    end = offline.data_horizon(con)
    if first is None or end is None:
        raise ValueError("the warehouse has no subscriptions yet: nothing to train on")
    first = pd.Timestamp(first).tz_convert("UTC")
    start = pd.Timestamp(
        year=first.year, month=first.month, day=1, tz="UTC"
    ) + pd.offsets.MonthBegin(1)
    return start, end


def churn_dataset(
    con: duckdb.DuckDBPyConnection,
    *,
    start=None,
    end=None,
    horizons: Sequence[int] = CHURN_HORIZONS,
    observed_until=None,
) -> pd.DataFrame:
    """The churn modelling frame: paying accounts at each month start, features, labels.

    Args:
        con: Warehouse connection (read only is fine).
        start, end: ``as_of`` range of the monthly spine (default: :func:`default_window`).
        horizons: Label horizons in days (``churn_<h>d``).
        observed_until: Passed to the labels (default: the warehouse's data horizon).

    Returns:
        ``account_id``, ``as_of``, every account feature, ``paying_at_as_of``,
        ``churn_<h>d`` (Int8, missing where the window has not elapsed), the attributes
        :data:`ATTRIBUTES` and ``plan`` (plan name, for cohorts).
    """
    d_start, d_end = default_window(con)
    spine = offline.churn_spine(con, start=start or d_start, end=end or d_end, freq="month")
    feats = offline.build_features(con, spine)
    lab = flabels.churn_labels(con, spine, horizons=horizons, observed_until=observed_until)
    for c in lab.columns:
        if c not in feats.columns:
            feats[c] = lab[c].to_numpy()
    return _decorate(con, feats)


def recovery_dataset(
    con: duckdb.DuckDBPyConnection,
    *,
    start=None,
    end=None,
    horizons: Sequence[int] = RECOVERY_HORIZONS,
    each_attempt: bool = True,
    observed_until=None,
) -> pd.DataFrame:
    """The recovery modelling frame: failed invoices at each failure, features, labels.

    Args:
        each_attempt: One row per failed attempt (``True``: the model can score an invoice
            at any point in dunning) or only at the first failure.

    Returns:
        ``invoice_id``, ``account_id``, ``subscription_id``, ``as_of``, the invoice,
        subscription and account features, ``paid_at_effective``, ``recovered_<h>d``,
        :data:`ATTRIBUTES`, ``plan`` and ``first_failure`` (bool: the invoice's first
        failed attempt).
    """
    spine = offline.recovery_spine(con, start=start, end=end, each_attempt=each_attempt)
    feats = offline.build_features(con, spine)
    lab = flabels.recovery_labels(con, spine, horizons=horizons, observed_until=observed_until)
    for c in lab.columns:
        if c not in feats.columns:
            feats[c] = lab[c].to_numpy()
    first = feats.groupby("invoice_id")["as_of"].transform("min")
    feats["first_failure"] = (feats["as_of"] == first).to_numpy()
    return _decorate(con, feats)


def model_features(frame: pd.DataFrame) -> list[str]:
    """Feature columns of a modelling frame: declared features present plus attributes."""
    names = [c for c in frame.columns if c in REGISTRY and c not in NON_FEATURES]
    return names + [c for c in ATTRIBUTES if c in frame.columns]


class FeatureSetChanged(RuntimeError):
    """A model's features are no longer defined as they were when it was trained."""


def check_feature_set(model: Any, *, name: str = "") -> None:
    """Refuse a model whose features changed definition since it was trained.

    Its inputs would be computed with the new meaning while it learned the old one, and
    every score would record the training-time feature set.

    Raises:
        FeatureSetChanged: Saying what to do (retrain, or restore the definitions).
    """
    now = feature_set_version(model.features)
    if now != model.feature_set_version:
        raise FeatureSetChanged(
            f"{name or model.name}: trained on feature set {model.feature_set_version}, but its "
            f"features are now defined as {now} (a definition changed since training); retrain "
            "it (05_churn / 06_recovery) and promote the new version, or restore the definitions"
        )


def feature_set_version(features: Iterable[str]) -> str:
    """A content version of a feature set: ``fs-`` and 12 hex digits.

    Hashes each declared feature's name, version and fingerprint (which covers its
    source SQL) and the names of the attributes, in sorted order; any change to the
    set or to a definition changes it.
    """
    parts = []
    for name in sorted(set(features)):
        f = REGISTRY.get(name)
        parts.append(f"{name}:{f.version}:{fingerprint(f)}" if f else f"{name}:attribute")
    return "fs-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def feature_descriptions(features: Iterable[str]) -> dict[str, str]:
    """Feature name -> description (declared ones from the registry)."""
    attrs = {
        "region": "Account region (NA, EU, APAC), from customer metadata.",
        "channel": "How the account was acquired (self-serve or sales).",
        "industry": "Account industry, from customer metadata.",
        "size": "Account size (small, medium, large), from customer metadata.",
    }
    out = {}
    for n in features:
        f = REGISTRY.get(n)
        out[n] = f.description if f else attrs.get(n, n)
    return out


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class TimeSplit:
    """Month boundaries of a time-based split (``[start, end)`` on ``as_of``)."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    valid_start: pd.Timestamp
    valid_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    horizon_days: int
    embargo: bool

    def describe(self) -> dict[str, str]:
        """The boundaries as ISO dates (for parameters and cards)."""
        return {
            k: (v.date().isoformat() if isinstance(v, pd.Timestamp) else str(v))
            for k, v in asdict(self).items()
        }


def _month(ts: pd.Series) -> pd.Series:
    return (
        ts.dt.tz_convert("UTC")
        .dt.tz_localize(None)
        .dt.to_period("M")
        .dt.to_timestamp()
        .dt.tz_localize("UTC")
    )


def time_split(
    frame: pd.DataFrame,
    *,
    target: str,
    horizon_days: int,
    test_months: int = 6,
    valid_months: int = 6,
    embargo: bool = True,
) -> tuple[dict[str, np.ndarray], TimeSplit]:
    """Split labelled rows by ``as_of`` month into train, validation and test.

    The test part is the last ``test_months`` months that have labels; validation the
    ``valid_months`` months before it; training everything earlier. With ``embargo``,
    rows whose label window ``(as_of, as_of + horizon]`` reaches past the start of a
    later part are dropped from the earlier part, so nothing fitted on has seen an
    outcome inside the later period.

    Args:
        frame: Needs ``as_of`` and the label column ``target`` (missing = unlabelled).

    Returns:
        Boolean masks ``train``, ``valid``, ``test`` over the frame's rows and the
        :class:`TimeSplit` boundaries.

    Raises:
        ValueError: Too few labelled months for the requested parts.
    """
    labelled = frame[target].notna().to_numpy()
    months = _month(frame["as_of"])
    avail = np.sort(months[labelled].unique())
    if len(avail) < test_months + valid_months + 1:
        raise ValueError(
            f"{target}: {len(avail)} labelled months; need at least {test_months + valid_months + 1} "
            f"for {test_months} test and {valid_months} validation months plus training"
        )
    test_start = pd.Timestamp(avail[-test_months])
    test_end = pd.Timestamp(avail[-1]) + pd.offsets.MonthBegin(1)
    as_of = frame["as_of"]
    reach = as_of + pd.Timedelta(days=horizon_days)
    fit_ok = labelled & (
        (reach <= test_start).to_numpy() if embargo else (as_of < test_start).to_numpy()
    )
    fit_months = np.sort(months[fit_ok].unique())
    if len(fit_months) < valid_months + 1:
        raise ValueError(
            f"{target}: too few months before the test period for validation and training"
        )
    valid_start = pd.Timestamp(fit_months[-valid_months])
    valid_end = pd.Timestamp(fit_months[-1]) + pd.offsets.MonthBegin(1)
    test = labelled & (as_of >= test_start).to_numpy() & (as_of < test_end).to_numpy()
    valid = fit_ok & (as_of >= valid_start).to_numpy()
    train_ok = labelled & (
        (reach <= valid_start).to_numpy() if embargo else (as_of < valid_start).to_numpy()
    )
    train = train_ok & (as_of < valid_start).to_numpy()
    if not train.any():
        raise ValueError(
            f"{target}: no training rows left before {valid_start.date()} (try embargo=False or fewer months)"
        )
    train_months = months[train]
    split = TimeSplit(
        train_start=pd.Timestamp(train_months.min()),
        train_end=pd.Timestamp(train_months.max()) + pd.offsets.MonthBegin(1),
        valid_start=valid_start,
        valid_end=valid_end,
        test_start=test_start,
        test_end=test_end,
        horizon_days=int(horizon_days),
        embargo=embargo,
    )
    return {"train": train, "valid": valid, "test": test}, split


# --------------------------------------------------------------------------- matrices


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs: numeric columns and string columns with fixed category levels."""

    numeric: tuple[str, ...]
    categorical: dict[str, tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @classmethod
    def infer(cls, frame: pd.DataFrame, features: Sequence[str]) -> FeatureSpec:
        """Numeric columns stay numeric; others become categories with the levels seen."""
        numeric, cats = [], {}
        for c in features:
            col = frame[c]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                numeric.append(c)
            else:
                levels = sorted({str(v) for v in col.dropna().unique()})
                cats[c] = tuple(levels)
        return cls(tuple(numeric), cats)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The design matrix: float64 numerics and pandas categoricals with fixed levels.

        Unknown category values become missing; missing columns raise ``KeyError``.
        """
        cols: dict[str, Any] = {}
        for c in self.numeric:
            cols[c] = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        for c, levels in self.categorical.items():
            values = frame[c].astype(object).where(frame[c].notna(), None)
            values = values.map(lambda v: None if v is None else str(v))
            cols[c] = pd.Categorical(values, categories=list(levels))
        return pd.DataFrame(cols, index=frame.index)

    def to_json(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(tuple(data["numeric"]), {k: tuple(v) for k, v in data["categorical"].items()})


# --------------------------------------------------------------------------- calibration


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


@dataclass(frozen=True)
class Calibrator:
    """Maps raw model probabilities to calibrated ones.

    ``isotonic``: monotone, piecewise linear through knots ``x`` -> ``y`` (clipped at the
    ends). ``platt``: ``sigmoid(a * logit(p) + b)``.
    ``none``: identity.
    """

    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.a * _logit(p) + self.b)))
        return p


def _centered_isotonic(p_raw: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression, then one knot per block at the block's mean raw probability.

    Plain isotonic regression is a step function: every row in a block gets the same
    probability, which throws away the ranking inside blocks (and AUC with it).
    Interpolating linearly between block centres (centred isotonic regression, Oron and
    Flournoy 2017) keeps the fit monotone and calibrated while keeping the order of
    scores between the first and the last centre.
    """
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_raw, y)
    fitted = iso.predict(p_raw)
    frame = pd.DataFrame({"p": p_raw, "f": fitted})
    blocks = frame.groupby("f", sort=True)["p"].mean()
    x = blocks.to_numpy(dtype=np.float64)
    v = blocks.index.to_numpy(dtype=np.float64)
    order = np.argsort(x, kind="stable")
    x, v = x[order], v[order]
    keep = np.concatenate([[True], np.diff(x) > 0])  # np.interp needs increasing knots
    return x[keep], v[keep]


def fit_calibrator(p_raw: np.ndarray, y: np.ndarray, *, method: str = "isotonic") -> Calibrator:
    """Fit a calibrator on held-out raw probabilities and outcomes.

    Args:
        method: ``isotonic`` (centred isotonic regression, see :func:`_centered_isotonic`),
            ``platt`` or ``none``.
    """
    p_raw = np.asarray(p_raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method == "none":
        return Calibrator("none")
    if method == "isotonic":
        x, v = _centered_isotonic(p_raw, y)
        return Calibrator("isotonic", x=tuple(map(float, x)), y=tuple(map(float, v)))
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p_raw).reshape(-1, 1), y)
        return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    raise ValueError(f"calibration must be 'isotonic', 'platt' or 'none', not {method!r}")


# --------------------------------------------------------------------------- the model


@dataclass
class BinaryModel:
    """A calibrated LightGBM classifier and everything needed to score new rows."""

    name: str
    target: str
    spec: FeatureSpec
    booster: lgb.Booster
    calibrator: Calibrator
    params: dict[str, Any]
    best_iteration: int
    feature_set_version: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return self.spec.names

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.spec.matrix(frame)

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """Uncalibrated probabilities."""
        return self.booster.predict(self.matrix(frame), num_iteration=self.best_iteration)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities for rows carrying the model's feature columns."""
        return self.calibrator.apply(self.predict_raw(frame))

    def save(self, path: Path) -> Path:
        """Write ``booster.txt`` and ``model.json`` into the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / "booster.txt"), num_iteration=self.best_iteration)
        meta = {
            "kind": "binary",
            "name": self.name,
            "target": self.target,
            "spec": self.spec.to_json(),
            "calibrator": asdict(self.calibrator),
            "params": self.params,
            "best_iteration": self.best_iteration,
            "feature_set_version": self.feature_set_version,
            "meta": self.meta,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: Path) -> BinaryModel:
        """Read a folder written by :meth:`save`."""
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        booster = lgb.Booster(model_file=str(path / "booster.txt"))
        cal = meta["calibrator"]
        return cls(
            name=meta["name"],
            target=meta["target"],
            spec=FeatureSpec.from_json(meta["spec"]),
            booster=booster,
            calibrator=Calibrator(
                cal["method"], tuple(cal["x"]), tuple(cal["y"]), cal["a"], cal["b"]
            ),
            params=meta["params"],
            best_iteration=int(meta["best_iteration"]),
            feature_set_version=meta["feature_set_version"],
            meta=meta.get("meta", {}),
        )


def lgb_dataset(
    X: pd.DataFrame, y: np.ndarray, *, reference: lgb.Dataset | None = None
) -> lgb.Dataset:
    """A LightGBM dataset from a design matrix (categoricals detected from the dtypes)."""
    return lgb.Dataset(
        X,
        label=np.asarray(y, dtype=np.float64),
        reference=reference,
        categorical_feature="auto",
        free_raw_data=True,
    )


def fit_binary_model(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    target: str,
    features: Sequence[str],
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    num_boost_round: int = 2000,
    early_stopping_rounds: int = 100,
    calibration: str = "isotonic",
    seed: int = 0,
    spec: FeatureSpec | None = None,
) -> BinaryModel:
    """Fit LightGBM on ``train``, stop early and calibrate on ``valid``.

    Args:
        train, valid: Rows with the ``features`` and a 0/1 ``target`` (no missing labels).
        params: LightGBM parameters over :data:`DEFAULT_PARAMS`.
        calibration: ``isotonic``, ``platt`` or ``none`` (fitted on ``valid``).
        spec: The feature specification (default: inferred from ``train``).

    Returns:
        The fitted :class:`BinaryModel` (``meta`` holds the validation metrics).
    """
    spec = spec or FeatureSpec.infer(train, features)
    p = {
        **DEFAULT_PARAMS,
        "num_threads": lgb_threads(len(train)),
        **dict(params or {}),
        "seed": seed,
    }
    y_train = train[target].to_numpy(dtype=np.float64)
    y_valid = valid[target].to_numpy(dtype=np.float64)
    d_train = lgb_dataset(spec.matrix(train), y_train)
    X_valid = spec.matrix(valid)
    d_valid = lgb_dataset(X_valid, y_valid, reference=d_train)
    booster = lgb.train(
        p,
        d_train,
        num_boost_round=num_boost_round,
        valid_sets=[d_valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    raw_valid = booster.predict(X_valid, num_iteration=best)
    cal = fit_calibrator(raw_valid, y_valid, method=calibration)
    meta = {
        "valid_auc_raw": evaluation.roc_auc(y_valid, raw_valid),
        "valid_rows": int(len(valid)),
        "train_rows": int(len(train)),
        "train_positives": int(y_train.sum()),
        "valid_positives": int(y_valid.sum()),
    }
    return BinaryModel(
        name=name or target,
        target=target,
        spec=spec,
        booster=booster,
        calibrator=cal,
        params=p,
        best_iteration=best,
        feature_set_version=feature_set_version(spec.names),
        meta=meta,
    )


def signed_log(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)``: the logistic baseline's transform of every numeric
    feature (:func:`fit_logistic_baseline`; :class:`workbench.models.linear.LogisticModel`
    applies the same one when it scores)."""
    return np.sign(x) * np.log1p(np.abs(x))


def fit_logistic_baseline(train: pd.DataFrame, *, target: str, spec: FeatureSpec, C: float = 0.5):
    """Logistic regression on the same features: signed-log, impute (with indicators),
    standardize numerics; one-hot encode categories.

    Returns:
        A fitted scikit-learn pipeline; ``predict_proba(spec.matrix(frame))[:, 1]`` scores.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = Pipeline(
        [
            ("log", FunctionTransformer(signed_log, feature_names_out="one-to-one")),
            (
                "impute",
                SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            ),
            ("scale", StandardScaler()),
        ]
    )
    parts = [("num", numeric, list(spec.numeric))]
    if spec.categorical:
        cats = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=20)),
            ]
        )
        parts.append(("cat", cats, list(spec.categorical)))
    pipe = Pipeline(
        [
            ("prep", ColumnTransformer(parts)),
            ("lr", LogisticRegression(C=C, max_iter=2000)),
        ]
    )
    X = _baseline_matrix(spec, train)
    pipe.fit(X, train[target].to_numpy(dtype=np.int64))
    return pipe


def _baseline_matrix(spec: FeatureSpec, frame: pd.DataFrame) -> pd.DataFrame:
    X = spec.matrix(frame)
    for c in spec.categorical:
        X[c] = X[c].astype(object).where(X[c].notna(), "(missing)")
    return X


def predict_baseline(pipe, spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities of a pipeline from :func:`fit_logistic_baseline`."""
    return pipe.predict_proba(_baseline_matrix(spec, frame))[:, 1]


# --------------------------------------------------------------------------- training runs


@dataclass
class ModelRun:
    """One trained model (one target), its evaluation and where it was tracked.

    ``test`` holds the test rows: ids, ``as_of``, the label, ``p_model`` (calibrated),
    ``p_raw`` (uncalibrated), ``p_baseline`` (logistic) and the cohort columns; the oracle
    column is added by :func:`workbench.models.oracle.evaluate_against_oracle`.
    """

    name: str
    task: str  # churn | recovery
    target: str
    horizon_days: int
    model: BinaryModel
    baseline: Any
    split: TimeSplit
    test: pd.DataFrame
    evaluation: dict[str, Any]
    importance: pd.DataFrame
    card: dict[str, Any]
    train_seconds: float
    test_features: pd.DataFrame | None = None
    run_id: str | None = None
    version: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """Flat test metrics of the model (``test_*``), the baseline (``baseline_*``) and,
        once compared, the oracle (``oracle_*``)."""
        m = self.evaluation["metrics"].set_index("model")
        out = {f"test_{k}": float(v) for k, v in m.loc["lightgbm"].items()}
        out |= {f"baseline_{k}": float(v) for k, v in m.loc["logistic"].items() if k != "rows"}
        out |= {
            f"uncalibrated_{k}": float(m.loc["uncalibrated", k])
            for k in ("ece", "brier", "roc_auc")
        }
        out |= {f"oracle_{k}": float(v) for k, v in self.evaluation.get("oracle", {}).items()}
        return out


@dataclass
class TrainingResult:
    """What :func:`train_churn` / :func:`train_recovery` produced: one run per target."""

    task: str
    runs: dict[str, ModelRun]
    dataset: pd.DataFrame
    feature_set_version: str

    def summary(self) -> pd.DataFrame:
        """One row per model: name, version, test AUC/PR-AUC/Brier/ECE, baseline AUC, oracle."""
        rows = []
        for r in self.runs.values():
            m = r.metrics
            rows.append(
                {
                    "model": r.name,
                    "version": r.version,
                    "run_id": r.run_id,
                    "test_rows": int(m["test_rows"]),
                    "test_positives": int(m["test_positives"]),
                    "roc_auc": m["test_roc_auc"],
                    "pr_auc": m["test_pr_auc"],
                    "brier": m["test_brier"],
                    "log_loss": m["test_log_loss"],
                    "ece": m["test_ece"],
                    "baseline_roc_auc": m["baseline_roc_auc"],
                    "baseline_brier": m["baseline_brier"],
                    "oracle_auc": m.get("oracle_oracle_auc"),
                    "oracle_brier": m.get("oracle_oracle_brier"),
                }
            )
        return pd.DataFrame(rows)


CARD_TEXT: dict[str, dict[str, str]] = {
    "churn": {
        "intended_use": (
            "Ranks paying accounts by the probability that they stop paying (no paying "
            "subscription left) within {h} days of the scoring date, so customer success can "
            "prioritise outreach and retention offers. Scores inform people; any action on an "
            "account goes through the dunning policy and the approvals queue."
        ),
        "ability_to_pay": (
            "No. It estimates the likelihood of cancellation, not creditworthiness. Payment "
            "failures are among its inputs (involuntary churn after failed payments counts as "
            "churn), so it must not be used to decide access to credit or essential services."
        ),
    },
    "recovery": {
        "intended_use": (
            "Estimates, for a failed invoice at the time of a failed payment attempt, the "
            "probability that it is paid within {h} days, to choose retry timing and escalation "
            "in dunning. Decisions are made by the dunning policy within its guardrails; "
            "write-offs and escalations go through human approval."
        ),
        "ability_to_pay": (
            "Yes. It estimates whether a customer will pay a failed invoice, which reflects "
            "their ability (and willingness) to pay. Where customers are natural persons "
            "(consumers, sole traders) this is close to the EU AI Act's high-risk use "
            "'evaluate the creditworthiness of natural persons' (Annex III, point 5(b)): keep "
            "human oversight, log decisions (scores are stored with model version and "
            "reasons), monitor by cohort, and do not use it to refuse service."
        ),
    },
}
LIMITATIONS = [
    "Trained and tested on one company's history; performance shifts when prices, the "
    "payment processor or the customer mix change (monitor calibration and drift).",
    "Time-based test on the latest labelled months only; rare cohorts have few rows and "
    "wide uncertainty.",
    "Account attributes (region, channel, industry, size) are taken as static from the "
    "current customer record; if a source updates them over time they would leak.",
    "SHAP reasons explain the model's log-odds before calibration; they describe "
    "association in the data, not causes.",
]


def _train_one(
    data: pd.DataFrame,
    *,
    task: str,
    target: str,
    horizon: int,
    features: Sequence[str],
    params: Mapping[str, Any] | None,
    seed: int,
    test_months: int,
    valid_months: int,
    embargo: bool,
    calibration: str,
    id_cols: Sequence[str],
    reasons_sample: int,
    fit_model: Callable[..., Any] | None = None,
) -> ModelRun:
    """Split, fit, evaluate and explain one target.

    ``fit_model`` (default: :func:`fit_binary_model`) is called with ``data``, ``train``,
    ``valid``, ``split``, ``name``, ``target``, ``features``, ``params``, ``calibration``
    and ``seed``, and returns a model that scores like a :class:`BinaryModel`.
    """
    from workbench.models import explain

    t0 = time.perf_counter()
    masks, split = time_split(
        data,
        target=target,
        horizon_days=horizon,
        test_months=test_months,
        valid_months=valid_months,
        embargo=embargo,
    )
    train, valid, test = data[masks["train"]], data[masks["valid"]], data[masks["test"]]
    for part, rows in (("train", train), ("valid", valid), ("test", test)):
        y = rows[target].astype("float64")
        if y.nunique() < 2:
            raise ValueError(f"{target}: the {part} part has only one class ({len(rows)} rows)")
    name = target.replace("recovered_", "recovery_")
    if fit_model is None:
        model = fit_binary_model(
            train.assign(**{target: train[target].astype(np.int8)}),
            valid.assign(**{target: valid[target].astype(np.int8)}),
            target=target,
            features=features,
            name=name,
            params=params,
            calibration=calibration,
            seed=seed,
        )
    else:
        model = fit_model(
            data=data,
            train=train,
            valid=valid,
            split=split,
            name=name,
            target=target,
            features=features,
            params=params,
            calibration=calibration,
            seed=seed,
        )
    baseline = fit_logistic_baseline(
        train.assign(**{target: train[target].astype(np.int8)}), target=target, spec=model.spec
    )
    train_seconds = time.perf_counter() - t0
    keep = [
        c
        for c in (*id_cols, "as_of", "plan", *evaluation.COHORTS, "first_failure")
        if c in test.columns
    ]
    keep = list(dict.fromkeys(keep))
    out = test[keep].copy()
    out[target] = test[target].astype("float64").to_numpy()
    raw = model.predict_raw(test)
    out["p_raw"] = raw
    out["p_model"] = model.calibrator.apply(raw)
    out["p_baseline"] = predict_baseline(baseline, model.spec, test)
    cohorts = ["plan", "region", "channel"]
    ev = evaluation.evaluate_scores(
        out,
        y=target,
        scores={"lightgbm": "p_model", "uncalibrated": "p_raw", "logistic": "p_baseline"},
        cohorts=cohorts,
    )
    sample = test.sample(n=min(reasons_sample, len(test)), random_state=seed) if len(test) else test
    contrib = explain.contributions(model, sample)
    importance = explain.global_importance(contrib)
    card = {
        "name": name,
        "task": task,
        "target": target,
        "horizon_days": horizon,
        "intended_use": CARD_TEXT[task]["intended_use"].format(h=horizon),
        "ability_to_pay": CARD_TEXT[task]["ability_to_pay"],
        "assesses_ability_to_pay": task == "recovery",
        "limitations": LIMITATIONS,
        "split": split.describe(),
        "rows": {"train": int(len(train)), "valid": int(len(valid)), "test": int(len(test))},
        "positives": {
            "train": int(train[target].astype(float).sum()),
            "valid": int(valid[target].astype(float).sum()),
            "test": int(test[target].astype(float).sum()),
        },
        "features": [
            {"name": n, "description": d} for n, d in feature_descriptions(model.features).items()
        ],
        "feature_set_version": model.feature_set_version,
        "framing": model.meta.get("framing", "direct"),
        "calibration": {
            "method": model.calibrator.method,
            "fitted_on": model.meta.get("calibration_fitted_on", "validation period"),
            "reliability": ev["reliability"].to_dict(orient="records"),
        },
        "metrics": ev["metrics"].to_dict(orient="records"),
        "by_cohort": ev["by_cohort"].to_dict(orient="records"),
        "importance": importance.head(15).to_dict(orient="records"),
        "params": {k: v for k, v in model.params.items()},
        "best_iteration": model.best_iteration,
    }
    log.info(
        "%s: test AUC %.3f (baseline %.3f), ECE %.4f on %d rows",
        name,
        ev["metrics"].set_index("model").loc["lightgbm", "roc_auc"],
        ev["metrics"].set_index("model").loc["logistic", "roc_auc"],
        ev["metrics"].set_index("model").loc["lightgbm", "ece"],
        len(test),
    )
    return ModelRun(
        name=name,
        task=task,
        target=target,
        horizon_days=horizon,
        model=model,
        baseline=baseline,
        split=split,
        test=out,
        evaluation=ev,
        importance=importance,
        card=card,
        train_seconds=train_seconds,
        test_features=test,
    )


def _finish(
    result: TrainingResult,
    *,
    track: bool,
    register: bool,
    settings: Settings | None,
    contrib_sample: int,
    seed: int,
) -> TrainingResult:
    if not (track or register):
        return result
    from workbench.models import registry

    for run in result.runs.values():
        registry.log_training_run(run, settings=settings, seed=seed, sample=contrib_sample)
        if register:
            registry.register_run(run, settings=settings)
    return result


def train_churn(
    con: duckdb.DuckDBPyConnection,
    *,
    horizons: Sequence[int] = CHURN_HORIZONS,
    train_window: tuple[Any, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    settings: Settings | None = None,
    test_months: int = 6,
    valid_months: int = 6,
    embargo: bool = True,
    calibration: str = "isotonic",
    track: bool = True,
    register: bool = True,
    dataset: pd.DataFrame | None = None,
) -> TrainingResult:
    """Train, evaluate and (optionally) track and register the churn models.

    One calibrated LightGBM model per horizon (``churn_<h>d``), with a logistic
    baseline, on a monthly spine of paying accounts; split by time (see
    :func:`time_split`).

    Args:
        con: Warehouse connection (read only is fine).
        horizons: Days; one model each.
        train_window: ``(start, end)`` of ``as_of`` (default: all the data).
        params: LightGBM parameters over :data:`DEFAULT_PARAMS`.
        seed: Seeds LightGBM and the explanation sample.
        settings: Where MLflow lives (default: :func:`workbench.config.load_settings`).
        test_months, valid_months, embargo: See :func:`time_split`.
        calibration: ``isotonic`` or ``platt`` (fitted on the validation months).
        track: Log each run to MLflow (parameters, metrics, plots, feature-set version).
        register: Also register each model and point ``challenger`` at it.
        dataset: A frame from :func:`churn_dataset` to reuse (skips building it).

    Returns:
        A :class:`TrainingResult` with one :class:`ModelRun` per horizon.
    """
    start, end = train_window or (None, None)
    data = (
        dataset
        if dataset is not None
        else churn_dataset(con, start=start, end=end, horizons=horizons)
    )
    feats = model_features(data)
    runs = {}
    for h in horizons:
        run = _train_one(
            data,
            task="churn",
            target=f"churn_{h}d",
            horizon=h,
            features=feats,
            params=params,
            seed=seed,
            test_months=test_months,
            valid_months=valid_months,
            embargo=embargo,
            calibration=calibration,
            id_cols=("account_id",),
            reasons_sample=5000,
        )
        runs[run.name] = run
    result = TrainingResult("churn", runs, data, feature_set_version(feats))
    return _finish(
        result, track=track, register=register, settings=settings, contrib_sample=5000, seed=seed
    )


def train_recovery(
    con: duckdb.DuckDBPyConnection,
    *,
    horizons: Sequence[int] = RECOVERY_HORIZONS,
    train_window: tuple[Any, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    settings: Settings | None = None,
    each_attempt: bool = True,
    test_months: int = 6,
    valid_months: int = 6,
    embargo: bool = True,
    calibration: str | None = None,
    track: bool = True,
    register: bool = True,
    dataset: pd.DataFrame | None = None,
    features: Sequence[str] | None = None,
    framing: str = "direct",
) -> TrainingResult:
    """Train, evaluate and (optionally) track and register the recovery models.

    One model per horizon (``recovery_<h>d``: the failed invoice is paid within ``h`` days
    of the failed attempt), from features at the time of failure (decline code, attempt
    number, amount, the account's payment history...).

    Args:
        each_attempt: Train on every failed attempt (default) or only first failures.
        features: Model inputs of the direct framing (default: :data:`RECOVERY_FEATURES`
            present in the data; ``"all"`` for every declared feature and attribute, as
            :func:`model_features`). The per-retry framing has fixed inputs
            (:data:`workbench.models.retry_schedule.INPUTS`).
        framing: ``direct``: a calibrated LightGBM model of the horizon's label.
            ``per_retry``: a penalised logistic model of one retry's success combined over
            the retry schedule learned from the history
            (:mod:`workbench.models.retry_schedule`); it is fitted on the retries made
            before the test period (the validation months are scored by a fit on the
            retries before them, reported as ``valid_auc_raw``), so it needs the dataset's
            ``paid_at_effective``. Closer to the oracle on the simulated company (see
            docs/model-quality.md); scored from frames (the real-time ``RowScorer`` of
            :mod:`workbench.dunning_realtime` reads LightGBM boosters only).
        calibration: ``isotonic`` or ``platt`` on the validation months, or ``none``
            (default: ``isotonic`` for ``direct``; ``none`` for ``per_retry``, whose logistic
            likelihood is calibrated by construction; with ``isotonic`` or ``platt`` it is
            fitted on the retries before the validation months and calibrated on them).
        Others: as for :func:`train_churn`.
    """
    if framing not in ("direct", "per_retry"):
        raise ValueError(f"framing must be 'direct' or 'per_retry', not {framing!r}")
    start, end = train_window or (None, None)
    data = (
        dataset
        if dataset is not None
        else recovery_dataset(
            con, start=start, end=end, horizons=horizons, each_attempt=each_attempt
        )
    )
    fit_model = None
    if framing == "per_retry":
        from workbench.models import retry_schedule

        if features is not None:
            raise ValueError("the per_retry framing has fixed inputs; do not pass features")
        if not each_attempt:
            raise ValueError("the per_retry framing learns from every failed attempt")
        needed = [c for c in retry_schedule.INPUTS if c not in retry_schedule.OPTIONAL_INPUTS]
        missing = [c for c in (*needed, "paid_at_effective") if c not in data]
        if missing:
            raise ValueError(f"the per_retry framing needs the columns {missing}")
        # an optional input the frame lacks is unknown on every row
        data = data.assign(**{c: np.nan for c in retry_schedule.OPTIONAL_INPUTS if c not in data})
        feats = list(retry_schedule.INPUTS)
        p = dict(params or {})
        calibration = calibration or "none"
        fit_model = retry_schedule.fit_for_split
    else:
        if features is None:
            feats = [f for f in RECOVERY_FEATURES if f in data.columns]
        elif isinstance(features, str) and features == "all":
            feats = model_features(data)
        else:
            feats = list(features)
        p = {**RECOVERY_PARAMS, **dict(params or {})}
        calibration = calibration or "isotonic"
    runs = {}
    for h in horizons:
        run = _train_one(
            data,
            task="recovery",
            target=f"recovered_{h}d",
            horizon=h,
            features=feats,
            params=p,
            seed=seed,
            test_months=test_months,
            valid_months=valid_months,
            embargo=embargo,
            calibration=calibration,
            id_cols=("invoice_id", "account_id"),
            reasons_sample=5000,
            fit_model=fit_model,
        )
        runs[run.name] = run
    result = TrainingResult("recovery", runs, data, feature_set_version(feats))
    return _finish(
        result, track=track, register=register, settings=settings, contrib_sample=5000, seed=seed
    )


def nan_to_none(value: Any) -> Any:
    """JSON-friendly: NaN and infinities become None (recursively for dicts and lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    if isinstance(value, np.generic):
        return nan_to_none(value.item())
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


__all__ = [
    "ATTRIBUTES",
    "BinaryModel",
    "Calibrator",
    "DEFAULT_PARAMS",
    "RECOVERY_FEATURES",
    "FeatureSpec",
    "ModelRun",
    "TimeSplit",
    "TrainingResult",
    "account_attributes",
    "churn_dataset",
    "feature_set_version",
    "fit_binary_model",
    "fit_calibrator",
    "fit_logistic_baseline",
    "model_features",
    "predict_baseline",
    "recovery_dataset",
    "time_split",
    "train_churn",
    "train_recovery",
]
