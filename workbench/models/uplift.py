"""Retention-offer uplift: who should get an offer, from a randomized experiment.

The outcome is churn within ``horizon_days`` of the moment an account became eligible;
the *uplift* of an account is the reduction of that probability thanks to the offer
(``P(churn | no offer) - P(churn | offer)``; positive = the offer helps).

Learners (Künzel et al. 2019, "Metalearners for estimating heterogeneous treatment
effects"); T and X on LightGBM, S a penalised logistic regression, and ``d`` (the default of
:func:`train_uplift`) built on how cancellations work:

* **Decision-hazard learner** (``d``): a retention discount acts on the *decision* to
  cancel, and a decision ends the subscription at once or only at the end of the billing
  period (:mod:`workbench.models.cancellation`). A model of the monthly decision to cancel
  (:class:`DecisionHazardModel`: LightGBM and a logistic regression averaged on the log-odds
  scale, with the health outlook of :mod:`workbench.models.outlook`, next month's CRM
  health score predicted, among their inputs; :func:`decision_hazards`, fitted on the
  warehouse's cancellation requests of the accounts outside the experiment and of the
  control arm from eligibility on; the
  experiment's own rows scored out-of-fold) gives each account's hazard ``h``; the billing
  features give the chance ``w_k`` that a decision in month ``k`` ends the subscription
  within the horizon (with the shares of immediate cancellations measured on the
  warehouse). Churn without the offer is ``1 - (1 - q)(1 - sum_k S_k c h w_k)``, with the
  offer the same with ``c h (1 - tau(x))``; the scale ``c``, the other exits ``q`` and the
  relative effect ``tau(x)`` (a common effect plus penalised attribute modifiers, the
  penalty chosen by cross-validated log loss) are fitted on the experiment by maximum
  likelihood. Uplift = the difference of the two.

* **T-learner**: a churn model per arm, ``mu0`` (control) and ``mu1`` (treated);
  uplift = ``mu0(x) - mu1(x)``.
* **X-learner**: the same first stage, then imputed effects ``D1 = mu0(x) - y`` on the
  treated and ``D0 = y - mu1(x)`` on the controls, one regression per arm (``tau1``,
  ``tau0``), combined with the propensity ``e`` as ``e * tau0 + (1 - e) * tau1`` (``e`` is
  the share treated: assignment is random). Its output is additive in the regression
  trees, so SHAP values of the uplift itself are exact.
* **S-learner** (``s``): one penalised logistic regression of churn on the inputs, the
  treatment and treatment x input interactions (the baseline ``churn_risk`` enters as its
  log-odds); uplift = ``P(churn | x, no offer) - P(churn | x, offer)``. The interactions
  are penalised :data:`S_INTERACTION_PENALTY` times harder than the main effects, so with
  few rows it stays close to a common relative effect on the baseline risk (on a few
  hundred experiment rows the effect's heterogeneity is mostly noise to the T/X-learners).

The baseline risk model (:func:`fit_risk_model`) can be fitted on *voluntary* churn only
(``risk_label="voluntary"``): a retention discount acts on the decision to cancel, not on
a card that keeps failing, so accounts leaving after an invoice was marked uncollectible
are not counted as churners there.

Evaluation: out-of-fold (cross-fitted) uplift predictions on every experiment row, the
Qini curve and coefficient and the area under the uplift curve (AUUC), computed on
realized outcomes; with the simulator's true effects, also the *expected* gain of
targeting by the model against targeting by the true effects (free of outcome noise).

Definitions used (``k`` = number targeted, highest predicted uplift first, ``N`` rows;
``C_T(k)``, ``C_C(k)``: churners among treated / control in the top ``k``; ``N_T(k)``,
``N_C(k)``: their counts):

* Qini curve ``Q(k) = C_C(k) * N_T(k) / N_C(k) - C_T(k)`` (churners prevented among the
  treated in the top ``k``, the control churn rate scaled to them);
* Qini coefficient = mean over ``k`` of ``(Q(k) - k / N * Q(N)) / N``: the area between
  the curve and random targeting, per account;
* uplift (gain) curve ``G(k) = (C_C(k) / N_C(k) - C_T(k) / N_T(k)) * k``; AUUC = mean over
  ``k`` of ``G(k) / N``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from workbench.config import Settings
from workbench.features import labels as flabels
from workbench.features import offline
from workbench.models import training
from workbench.models.linear import LogisticModel, log_odds_mean
from workbench.models.outlook import OUTLOOK, HealthOutlook, next_health_scores
from workbench.models.training import FeatureSpec

log = logging.getLogger(__name__)

#: The input added by a risk model: its calibrated churn probability.
RISK = "churn_risk"
#: Default learner inputs beside ``churn_risk``: firmographics that plausibly modify how
#: much a discount matters.
EFFECT_FEATURES: tuple[str, ...] = training.ATTRIBUTES

#: The input added by a decision model (learner ``d``): the monthly probability that the
#: account asks to cancel (:func:`workbench.models.cancellation.decision_labels`).
HAZARD = "cancel_hazard"
#: Learner ``d``: the billing features that say when a decision to cancel takes effect.
BILLING_INPUTS: tuple[str, ...] = (
    "days_to_period_end",
    "billing_interval_months",
    "cancel_at_period_end",
)
#: Learner ``d``: L2 penalties on the effect modifiers, chosen by cross-validated log loss.
D_PENALTIES: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)

#: S-learner: L2 strength (sklearn's ``C``, on standardised columns) and how many times
#: harder the treatment interactions are penalised than the main effects.
S_LEARNER_C = 1.0
S_INTERACTION_PENALTY = 100.0

UPLIFT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.03,
    "num_leaves": 4,
    "min_data_in_leaf": 25,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "min_data_per_group": 20,
    "cat_smooth": 20.0,
    "verbose": -1,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
}


# --------------------------------------------------------------------------- data


def uplift_dataset(
    con: duckdb.DuckDBPyConnection,
    experiment: pd.DataFrame,
    *,
    horizon_days: int = 90,
    observed_until=None,
) -> pd.DataFrame:
    """Features at the moment of eligibility, the treatment and the churn outcome.

    Args:
        experiment: ``account_id``, ``as_of`` (when the account became eligible; the
            offer, if any, must come after it) and ``treatment`` (1 offered, 0 control),
            e.g. :func:`workbench.models.oracle.experiment_from_truth`.
        horizon_days: Outcome window: ``churn_<h>d``.

    Returns:
        The experiment's columns, every account feature, ``churn_<h>d`` (Int8, missing
        where the window has not elapsed or the account was not paying at ``as_of``),
        the attributes and ``plan``.
    """
    spine = experiment[["account_id", "as_of"]].reset_index(drop=True)
    feats = offline.build_features(con, spine)
    lab = flabels.churn_labels(con, spine, horizons=(horizon_days,), observed_until=observed_until)
    feats[f"churn_{horizon_days}d"] = lab[f"churn_{horizon_days}d"].to_numpy()
    feats["treatment"] = experiment["treatment"].astype(np.int8).to_numpy()
    return training._decorate(con, feats)


# --------------------------------------------------------------------------- metrics


def _sorted(
    y: np.ndarray, t: np.ndarray, score: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    # ties broken at random (fixed seed) so a constant score gives the random line in expectation
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(score)), -score))
    return y[order], t[order]


def qini_curve(y: Sequence, treatment: Sequence, score: Sequence) -> pd.DataFrame:
    """The Qini and gain curves when targeting by ``score`` (highest first).

    Args:
        y: 1 = churned (the bad outcome), 0 = retained.
        treatment: 1 = offered, 0 = control.
        score: Predicted uplift (reduction in churn probability).

    Returns:
        One row per ``k`` (0..N): ``k``, ``fraction``, ``qini``, ``random`` (the straight
        line to ``Q(N)``), ``gain``.
    """
    y = np.asarray(y, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.int64)
    s = np.asarray(score, dtype=np.float64)
    ys, ts = _sorted(y, t, s)
    n_t = np.cumsum(ts)
    n_c = np.cumsum(1 - ts)
    c_t = np.cumsum(ys * ts)
    c_c = np.cumsum(ys * (1 - ts))
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = np.where(n_c > 0, c_c * n_t / n_c, 0.0) - c_t
        rate_diff = np.where(n_c > 0, c_c / np.maximum(n_c, 1), 0.0) - np.where(
            n_t > 0, c_t / np.maximum(n_t, 1), 0.0
        )
    k = np.arange(1, len(y) + 1)
    gain = rate_diff * k
    n = len(y)
    out = pd.DataFrame(
        {
            "k": np.concatenate([[0], k]),
            "qini": np.concatenate([[0.0], qini]),
            "gain": np.concatenate([[0.0], gain]),
        }
    )
    out["fraction"] = out["k"] / max(n, 1)
    out["random"] = out["fraction"] * (qini[-1] if n else 0.0)
    return out


def qini_coefficient(y: Sequence, treatment: Sequence, score: Sequence) -> float:
    """Mean over ``k`` of ``(Q(k) - k/N Q(N)) / N``: area between the Qini curve and random."""
    c = qini_curve(y, treatment, score).iloc[1:]
    n = len(c)
    return float(((c["qini"] - c["random"]) / max(n, 1)).mean()) if n else float("nan")


def auuc(y: Sequence, treatment: Sequence, score: Sequence) -> float:
    """Area under the uplift (gain) curve, per account: mean over ``k`` of ``G(k) / N``."""
    c = qini_curve(y, treatment, score).iloc[1:]
    n = len(c)
    return float((c["gain"] / max(n, 1)).mean()) if n else float("nan")


def expected_gain_curve(true_uplift: Sequence, score: Sequence) -> pd.DataFrame:
    """Churners prevented in expectation when the top ``k`` by ``score`` get the offer.

    Returns:
        ``k``, ``fraction``, ``gain`` (sum of the true uplift of the targeted), ``random``.
    """
    tau = np.asarray(true_uplift, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    order = np.lexsort((np.random.default_rng(0).random(len(s)), -s))
    g = np.concatenate([[0.0], np.cumsum(tau[order])])
    k = np.arange(len(g))
    frac = k / max(len(tau), 1)
    return pd.DataFrame({"k": k, "fraction": frac, "gain": g, "random": frac * g[-1]})


def expected_qini(true_uplift: Sequence, score: Sequence) -> float:
    """Area between the expected gain curve and random targeting, per account."""
    c = expected_gain_curve(true_uplift, score).iloc[1:]
    n = len(c)
    return float(((c["gain"] - c["random"]) / max(n, 1)).mean()) if n else float("nan")


# --------------------------------------------------------------------------- learners


@dataclass
class UpliftModel:
    """A T- or X-learner on LightGBM (``boosters``: ``mu0``, ``mu1`` + ``tau0``, ``tau1``), an
    S-learner (penalised logistic regression, ``linear``; no boosters) or the
    decision-hazard learner ``d`` (``risk`` is its decision model, ``linear`` its fitted
    parameters; no boosters)."""

    name: str
    learner: str
    spec: FeatureSpec
    boosters: dict[str, lgb.Booster]
    propensity: float
    horizon_days: int
    params: dict[str, Any]
    rounds: int
    feature_set_version: str
    risk: training.BinaryModel | DecisionHazardModel | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    linear: dict[str, Any] | None = None

    @property
    def features(self) -> list[str]:
        return self.spec.names

    @property
    def risk_column(self) -> str:
        """The column the risk model adds: :data:`HAZARD` (learner ``d``) or :data:`RISK`."""
        return HAZARD if self.learner == "d" else RISK

    def with_inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` plus the risk model's column (``churn_risk``, or ``cancel_hazard`` for
        learner ``d``) when the model has a risk model."""
        col = self.risk_column
        if self.risk is not None and col not in frame.columns:
            return frame.assign(**{col: self.risk.predict(frame)})
        return frame

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The design matrix (with ``churn_risk`` from the risk model, when there is one)."""
        return self.spec.matrix(self.with_inputs(frame))

    def predict_components(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``p_control``, ``p_treated`` (first-stage churn probabilities) and ``uplift``."""
        if self.learner == "d":
            return _d_components(self.linear, self.with_inputs(frame))
        X = self.matrix(frame)
        if self.learner == "s":
            p0 = _s_predict(self.linear, self.spec, X, treated=False)
            p1 = _s_predict(self.linear, self.spec, X, treated=True)
            return pd.DataFrame(
                {"p_control": p0, "p_treated": p1, "uplift": p0 - p1}, index=frame.index
            )
        p0 = self.boosters["mu0"].predict(X)
        p1 = self.boosters["mu1"].predict(X)
        if self.learner == "x":
            e = self.propensity
            up = e * self.boosters["tau0"].predict(X) + (1 - e) * self.boosters["tau1"].predict(X)
        else:
            up = p0 - p1
        return pd.DataFrame({"p_control": p0, "p_treated": p1, "uplift": up}, index=frame.index)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted uplift: reduction in churn probability if offered."""
        return self.predict_components(frame)["uplift"].to_numpy()

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """SHAP values of the uplift (X-learner: exact, in uplift units; T-learner: the
        difference of the two arms' log-odds contributions; S-learner: each input's effect
        on the uplift when it alone is set to its training mean, the rest in ``bias``, so
        rows still sum to the uplift; learner ``d``: the same with training medians and
        modes)."""
        from workbench.models.explain import explainer

        cols = [*self.features, "bias"]
        if self.learner == "d":
            frame = self.with_inputs(frame)
            up = _d_components(self.linear, frame)["uplift"].to_numpy()
            out = pd.DataFrame(0.0, index=frame.index, columns=cols)
            for name in self.features:
                value = self.linear["ablate"].get(name)
                held = frame.assign(**{name: value})
                out[name] = up - _d_components(self.linear, held)["uplift"].to_numpy()
            out["bias"] = up - out[self.features].sum(axis=1).to_numpy()
            return out

        X = self.matrix(frame)
        if self.learner == "s":
            up = self.predict_components(frame)["uplift"].to_numpy()
            out = pd.DataFrame(0.0, index=frame.index, columns=cols)
            for name in self.features:
                Xm = X.copy()
                if name in self.spec.categorical:
                    Xm[name] = pd.Categorical(
                        [self.linear["modes"][name]] * len(Xm),
                        categories=X[name].cat.categories,
                    )
                else:
                    Xm[name] = self.linear["means"][name]
                p0 = _s_predict(self.linear, self.spec, Xm, treated=False)
                p1 = _s_predict(self.linear, self.spec, Xm, treated=True)
                out[name] = up - (p0 - p1)
            out["bias"] = up - out[self.features].sum(axis=1).to_numpy()
            return out

        def shap(part: str) -> np.ndarray:
            return explainer(self.boosters[part], None, self).contributions(X)

        if self.learner == "x":
            e = self.propensity
            v = e * shap("tau0") + (1 - e) * shap("tau1")
        else:
            v = shap("mu0") - shap("mu1")
        return pd.DataFrame(v, index=frame.index, columns=cols)

    def save(self, path: Path) -> Path:
        """Write one ``<part>.txt`` per booster and ``model.json`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k, b in self.boosters.items():
            b.save_model(str(path / f"{k}.txt"))
        meta = {
            "kind": "uplift",
            "name": self.name,
            "learner": self.learner,
            "spec": self.spec.to_json(),
            "propensity": self.propensity,
            "horizon_days": self.horizon_days,
            "params": self.params,
            "rounds": self.rounds,
            "feature_set_version": self.feature_set_version,
            "parts": sorted(self.boosters),
            "meta": self.meta,
            "risk": self.risk is not None,
            "linear": self.linear,
        }
        if self.risk is not None:
            self.risk.save(path / "risk")
        (path / "model.json").write_text(json.dumps(meta, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: Path) -> UpliftModel:
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        boosters = {k: lgb.Booster(model_file=str(path / f"{k}.txt")) for k in meta["parts"]}
        return cls(
            name=meta["name"],
            learner=meta["learner"],
            spec=FeatureSpec.from_json(meta["spec"]),
            boosters=boosters,
            propensity=float(meta["propensity"]),
            horizon_days=int(meta["horizon_days"]),
            params=meta["params"],
            rounds=int(meta["rounds"]),
            feature_set_version=meta["feature_set_version"],
            meta=meta.get("meta", {}),
            risk=_load_risk(path / "risk") if meta.get("risk") else None,
            linear=meta.get("linear"),
        )


def _s_raw(spec: FeatureSpec, X: pd.DataFrame, medians: Mapping[str, float]) -> np.ndarray:
    """Main-effect columns of the S-learner: numerics (``churn_risk`` as log-odds; missing
    -> the training median) and one indicator per category level."""
    cols = []
    for c in spec.numeric:
        v = X[c].to_numpy(dtype=np.float64)
        if c == RISK:
            q = np.clip(v, 1e-3, 1 - 1e-3)
            v = np.log(q / (1 - q))
        cols.append(np.where(np.isfinite(v), v, medians.get(c, 0.0)))
    for c, levels in spec.categorical.items():
        v = X[c].astype(object).to_numpy()
        cols += [(v == level).astype(np.float64) for level in levels]
    return np.column_stack(cols) if cols else np.zeros((len(X), 0))


def _s_full(spec: FeatureSpec, raw: np.ndarray, t: np.ndarray, main_index: Sequence[int]) -> np.ndarray:  # fmt: skip
    """Main effects (``main_index`` columns of ``raw``), the treatment, treatment x every
    column."""
    return np.column_stack([raw[:, list(main_index)], t, raw * t[:, None]])


def _s_design(linear: Mapping[str, Any], spec: FeatureSpec, X: pd.DataFrame, treated) -> np.ndarray:  # noqa: ANN001
    raw = _s_raw(spec, X, linear["medians"])
    t = np.broadcast_to(np.asarray(treated, dtype=np.float64), (len(X),))
    full = _s_full(spec, raw, t, linear["main_index"])
    z = (full - np.asarray(linear["mu"])) / np.asarray(linear["sd"])
    return z * np.asarray(linear["scale"])


def _s_predict(linear: Mapping[str, Any], spec: FeatureSpec, X: pd.DataFrame, *, treated: bool) -> np.ndarray:  # fmt: skip
    z = _s_design(linear, spec, X, treated) @ np.asarray(linear["coef"]) + linear["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


def _fit_s_learner(
    spec: FeatureSpec,
    X: pd.DataFrame,
    y: np.ndarray,
    t: np.ndarray,
    *,
    C: float = S_LEARNER_C,
    interaction_penalty: float = S_INTERACTION_PENALTY,
) -> dict[str, Any]:
    """Penalised logistic regression of ``y`` on main effects, ``t`` and ``t`` x inputs.

    With a ``churn_risk`` input the baseline is its log-odds alone (slope and intercept
    refitted on the experiment: the risk model has already used every feature, and main
    effects of the other inputs estimated on a few hundred rows would only add noise);
    without one, every input is a main effect. Every input may modify the effect, under
    ``interaction_penalty`` times the main effects' L2 penalty.
    """
    from sklearn.linear_model import LogisticRegression

    medians = {
        c: float(np.nanmedian(X[c].to_numpy(dtype=np.float64))) if X[c].notna().any() else 0.0
        for c in spec.numeric
    }
    raw = _s_raw(spec, X, medians)
    main_index = (
        [list(spec.numeric).index(RISK)] if RISK in spec.numeric else list(range(raw.shape[1]))
    )
    tt = t.astype(np.float64)
    full = _s_full(spec, raw, tt, main_index)
    mu, sd = full.mean(axis=0), full.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    k = raw.shape[1]
    scale = np.concatenate(
        [np.ones(len(main_index) + 1), np.full(k, 1.0 / np.sqrt(interaction_penalty))]
    )
    lr = LogisticRegression(C=C, max_iter=5000).fit((full - mu) / sd * scale, y.astype(int))
    return {
        "C": C,
        "interaction_penalty": interaction_penalty,
        "main_index": main_index,
        "medians": medians,
        "mu": mu.tolist(),
        "sd": sd.tolist(),
        "scale": scale.tolist(),
        "coef": lr.coef_[0].tolist(),
        "intercept": float(lr.intercept_[0]),
        "means": {c: float(np.nanmean(X[c].to_numpy(dtype=np.float64))) for c in spec.numeric},
        "modes": {
            c: (str(X[c].mode().iloc[0]) if X[c].notna().any() else None) for c in spec.categorical
        },
    }


def _d_effects(linear: Mapping[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """Effect-modifier columns of the ``d`` learner (numerics, missing -> the training
    median; one indicator per category level), standardised as in training."""
    cols = []
    for c in linear["effect_numeric"]:
        v = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
        cols.append(np.where(np.isfinite(v), v, linear["medians"][c]))
    for c, levels in linear["effect_levels"].items():
        v = frame[c].astype(object).to_numpy()
        cols += [(v == level).astype(np.float64) for level in levels]
    A = np.column_stack(cols) if cols else np.zeros((len(frame), 0))
    return (A - np.asarray(linear["mu"])) / np.asarray(linear["sd"])


def _d_parts(theta: np.ndarray, hazard: np.ndarray, W: np.ndarray, A: np.ndarray) -> dict:
    """The ``d`` learner's pieces per row: the relative effect ``tau``, the scaled hazard
    ``b`` (and whether the scale was clipped), the other exits' probability and the chance
    a decision ends the subscription by the horizon without (``d0``) and with (``d1``) the
    offer, with their slopes in the hazard (``s0``, ``s1``)."""
    from scipy.special import expit

    from workbench.models.cancellation import ended_by_constant

    tau = expit(theta[1] + A @ theta[3:])
    scaled = np.exp(theta[0]) * hazard
    b = np.clip(scaled, 0.0, 0.999)
    d0, s0 = ended_by_constant(b, W)
    d1, s1 = ended_by_constant(b * (1.0 - tau), W)
    return {"tau": tau, "b": b, "free": (scaled > 0) & (scaled < 0.999), "other": expit(theta[2]),
            "d0": d0, "s0": s0, "d1": d1, "s1": s1}  # fmt: skip


def _d_probs(
    theta: np.ndarray, hazard: np.ndarray, W: np.ndarray, A: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Churn probability without and with the offer, and their difference.

    ``theta`` = (log of the hazard's scale, logit of the common relative effect, logit of
    the churn that no decision explains, effect modifiers...): the offer lowers the
    monthly decision hazard ``c * hazard`` by ``tau(x)`` over the horizon; a decision ends
    the subscription by the horizon with the billing weights ``W``; other exits (after
    failed payments) happen with a probability the offer does not change.
    """
    q = _d_parts(theta, hazard, W, A)
    kept = 1 - q["other"]
    return 1 - kept * (1 - q["d0"]), 1 - kept * (1 - q["d1"]), kept * (q["d0"] - q["d1"])


def _d_log_loss(theta: np.ndarray, hazard, W, A, t, y) -> float:  # noqa: ANN001
    return _d_loss_grad(theta, hazard, W, A, t, y)[0]


def _d_loss_grad(theta: np.ndarray, hazard, W, A, t, y) -> tuple[float, np.ndarray]:  # noqa: ANN001
    """The log loss of :func:`_d_probs` on the observed arm and its exact gradient."""
    q = _d_parts(theta, hazard, W, A)
    treated = t == 1
    o, b, tau = q["other"], q["b"], q["tau"]
    d = np.where(treated, q["d1"], q["d0"])
    p_raw = 1 - (1 - o) * (1 - d)
    p = np.clip(p_raw, 1e-9, 1 - 1e-9)
    loss = float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    # d loss / d p (zero where p was clipped), then the chain through each parameter
    dl = np.where(p == p_raw, (p - y) / (p * (1 - p)), 0.0)
    slope = np.where(treated, q["s1"] * (1 - tau), q["s0"])  # d d / d b
    dd_scale = slope * b * q["free"]
    dd_tau = np.where(treated, -q["s1"] * b * tau * (1 - tau), 0.0)  # d d / d logit(tau)
    g = dl * (1 - o)
    grad = np.concatenate(
        [
            [np.sum(g * dd_scale), np.sum(g * dd_tau), np.sum(dl * (1 - d) * o * (1 - o))],
            A.T @ (g * dd_tau),
        ]
    )
    return loss, grad


def _d_theta(hazard, W, A, t, y, penalty: float) -> np.ndarray:  # noqa: ANN001
    from scipy.optimize import minimize

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = _d_loss_grad(theta, hazard, W, A, t, y)
        grad[3:] += 2 * penalty * theta[3:]
        return loss + penalty * float(np.sum(theta[3:] ** 2)), grad

    start = np.concatenate([[0.0, 0.0, -3.0], np.zeros(A.shape[1])])
    # the scale within e^-5..e^3, the common effect and the other exits within logits of
    # -12..12 (a tiny experiment can otherwise drive them to infinity)
    bounds = [(-5.0, 3.0), (-12.0, 12.0), (-12.0, 12.0)] + [(None, None)] * A.shape[1]
    return minimize(objective, start, method="L-BFGS-B", jac=True, bounds=bounds).x


def _fit_d_learner(
    frame: pd.DataFrame,
    y: np.ndarray,
    t: np.ndarray,
    *,
    effect_features: Sequence[str],
    immediate: Mapping[str, float],
    horizon_days: int,
    penalty: float | None = None,
    folds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the ``d`` learner's parameters by penalised maximum likelihood.

    ``frame`` carries :data:`HAZARD`, ``as_of``, :data:`BILLING_INPUTS` and the
    ``effect_features``. Without ``penalty``, the effect modifiers' L2 penalty is the one
    of :data:`D_PENALTIES` with the lowest ``folds``-fold cross-validated log loss on the
    outcomes (no true effect is used).
    """
    from scipy.special import expit
    from sklearn.model_selection import StratifiedKFold

    from workbench.models.cancellation import billing_weights

    numeric = [c for c in effect_features if pd.api.types.is_numeric_dtype(frame[c])]
    levels = {
        c: sorted(frame[c].dropna().astype(str).unique().tolist())
        for c in effect_features
        if c not in numeric
    }
    medians = {
        c: float(np.nanmedian(pd.to_numeric(frame[c], errors="coerce")))
        if frame[c].notna().any()
        else 0.0
        for c in numeric
    }
    k = len(numeric) + sum(len(v) for v in levels.values())
    linear: dict[str, Any] = {
        "effect_numeric": numeric,
        "effect_levels": levels,
        "medians": medians,
        "mu": [0.0] * k,
        "sd": [1.0] * k,
        "immediate": dict(immediate),
        "horizon_days": int(horizon_days),
    }
    raw = _d_effects(linear, frame)  # unstandardised while mu = 0 and sd = 1
    mu, sd = raw.mean(axis=0), np.where(raw.std(axis=0) > 0, raw.std(axis=0), 1.0)
    linear["mu"], linear["sd"] = mu.tolist(), sd.tolist()
    A = (raw - mu) / sd
    hazard = frame[HAZARD].to_numpy(dtype=np.float64)
    W = billing_weights(frame, horizon_days=horizon_days, immediate=immediate)
    cv: dict[str, float] = {}
    if penalty is None:
        strata = t.astype(int) * 2 + y.astype(int)
        kf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(kf.split(np.zeros(len(y)), strata))
        for lam in D_PENALTIES:
            loss = 0.0
            for tr, te in splits:
                th = _d_theta(hazard[tr], W[tr], A[tr], t[tr], y[tr], lam)
                loss += _d_log_loss(th, hazard[te], W[te], A[te], t[te], y[te])
            cv[f"{lam:g}"] = loss / len(y)
        penalty = min(D_PENALTIES, key=lambda lam: cv[f"{lam:g}"])
    theta = _d_theta(hazard, W, A, t, y, float(penalty))
    linear.update(
        theta=theta.tolist(),
        penalty=float(penalty),
        cv_log_loss=cv,
        tau_common=float(expit(theta[1])),
        hazard_scale=float(np.exp(theta[0])),
        other_exit=float(expit(theta[2])),
        # the values each input is held at for its contribution (medians, modes)
        ablate={
            **{
                c: float(np.nanmedian(pd.to_numeric(frame[c], errors="coerce")))
                for c in (HAZARD, *BILLING_INPUTS)
            },
            **medians,
            **{
                c: (str(frame[c].mode().iloc[0]) if frame[c].notna().any() else None)
                for c in levels
            },
        },
    )
    return linear


def decision_parts(model: UpliftModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Learner ``d``'s two parts per row of ``frame`` (which carries :data:`HAZARD`, e.g.
    the out-of-fold hazards of :attr:`UpliftResult.scored` joined to the features):
    ``hazard``, the decision hazard times the fitted scale (clipped below 1), and
    ``tau``, the fitted relative effect of the offer."""
    from workbench.models.cancellation import billing_weights

    if model.learner != "d":
        raise ValueError(f"decision_parts needs learner 'd', not {model.learner!r}")
    lin = model.linear
    W = billing_weights(frame, horizon_days=lin["horizon_days"], immediate=lin["immediate"])
    hazard = frame[HAZARD].to_numpy(dtype=np.float64)
    parts = _d_parts(np.asarray(lin["theta"]), hazard, W, _d_effects(lin, frame))
    return pd.DataFrame({"hazard": parts["b"], "tau": parts["tau"]}, index=frame.index)


def _d_components(linear: Mapping[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    from workbench.models.cancellation import billing_weights

    W = billing_weights(frame, horizon_days=linear["horizon_days"], immediate=linear["immediate"])
    hazard = frame[HAZARD].to_numpy(dtype=np.float64)
    p0, p1, up = _d_probs(np.asarray(linear["theta"]), hazard, W, _d_effects(linear, frame))
    return pd.DataFrame({"p_control": p0, "p_treated": p1, "uplift": up}, index=frame.index)


def failed_payment_exits(
    con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, *, horizon_days: int
) -> np.ndarray:
    """Per row (``account_id``, ``as_of``): did an invoice of the account get marked
    uncollectible in ``(as_of, as_of + horizon]`` (dunning gave up: the account leaves
    involuntarily)? Used to keep such exits out of a voluntary-churn label.
    """
    from workbench.models.cancellation import DAY_US, rows_with_event

    events = (
        "SELECT account_id, marked_uncollectible_at AS event_at FROM invoices "
        "WHERE marked_uncollectible_at IS NOT NULL"
    )
    end_us = offline.to_us(frame["as_of"]) + int(horizon_days) * DAY_US
    return rows_with_event(con, frame, events, end_us=end_us)


def _labelled_rows(
    frame: pd.DataFrame,
    target: str,
    exclude_accounts: Sequence[str],
    *,
    involuntary: np.ndarray | None = None,
) -> pd.DataFrame:
    """The rows of ``frame`` with a label, outside ``exclude_accounts``, the label as 0/1
    (0 where ``involuntary``)."""
    keep = frame[target].notna() & ~frame["account_id"].isin(set(exclude_accounts))
    label = frame[target]
    if involuntary is not None:
        label = label.where(~np.asarray(involuntary, dtype=bool), 0)
    return frame[keep].assign(**{target: label[keep].astype(np.int8)})


def fit_risk_model(
    churn_frame: pd.DataFrame,
    *,
    target: str,
    exclude_accounts: Sequence[str] = (),
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    involuntary: np.ndarray | None = None,
    refit: bool = False,
    window: pd.DateOffset | None = None,
    extra_features: Sequence[str] = (),
) -> training.BinaryModel:
    """A churn model for the uplift learners' ``churn_risk`` input, fitted on accounts
    outside the experiment (so no experiment outcome is seen through it).

    Args:
        churn_frame: A frame from :func:`workbench.models.training.churn_dataset`.
        target: ``churn_<h>d`` (the uplift outcome).
        exclude_accounts: The experiment's accounts: none of their rows are used.
        involuntary: Per row of ``churn_frame``, True where the account left after failed
            payments in the window (:func:`failed_payment_exits`): those rows count as not
            churned, so the model estimates voluntary churn.
        refit: After early stopping and calibration, refit the booster on every row with
            the chosen number of rounds (the latest months then inform the ranking too;
            the calibration stays the one fitted on the held-out months).
        window: How far past ``as_of`` the label looks (default: :func:`label_window`).
        extra_features: Columns of ``churn_frame`` to use beside the declared features
            (the decision model's :data:`~workbench.models.outlook.OUTLOOK`).

    Returns:
        A calibrated :class:`~workbench.models.training.BinaryModel`. The last 20% of
        ``as_of`` months are used for early stopping and calibration; the rows fitted on
        before them are those whose label window (:func:`label_window`) closed before
        them (the embargo of :func:`workbench.models.training.time_split`). With
        ``refit``, the calibration map fitted on the held-out months is applied to the
        booster refitted on every row: scikit-learn's ``CalibratedClassifierCV(ensemble=
        False)`` practice (held-out predictions calibrate, the final model uses all data).
    """
    rows = _labelled_rows(churn_frame, target, exclude_accounts, involuntary=involuntary)
    months = np.sort(rows["as_of"].unique())
    cut = months[int(len(months) * 0.8)]
    feats = training.model_features(rows)
    feats += [c for c in extra_features if c in rows.columns and c not in feats]
    as_of = pd.to_datetime(rows["as_of"], utc=True)
    closed = (as_of + (window or label_window(target))) <= pd.Timestamp(cut)
    if not closed.any():
        raise ValueError(
            f"{target}: no row's label window closes before {pd.Timestamp(cut).date()}, "
            "the start of the calibration months; give the risk model more months of history"
        )
    model = training.fit_binary_model(
        rows[closed.to_numpy()],
        rows[rows["as_of"] >= cut],
        target=target,
        features=feats,
        name=f"{target}_risk",
        params=params,
        seed=seed,
    )
    if refit:
        d = training.lgb_dataset(model.matrix(rows), rows[target].to_numpy(dtype=np.float64))
        model.booster = lgb.train(model.params, d, num_boost_round=model.best_iteration)
        model.meta["refit_rows"] = int(len(rows))
    return model


#: The decision model's label: a voluntary cancellation request within a month.
DECISION = "cancel_decided_1m"


def label_window(target: str) -> pd.DateOffset:
    """How far past ``as_of`` the label ``target`` looks: ``h`` days for ``churn_<h>d``,
    one month for :data:`DECISION`."""
    if target == DECISION:
        return pd.DateOffset(months=1)
    m = re.fullmatch(r"churn_(\d+)d", target)
    if m is None:
        raise ValueError(f"{target}: not a churn_<h>d label or {DECISION}")
    return pd.DateOffset(days=int(m.group(1)))


#: The decision model's LightGBM parameters: a few hundred requests a year is a rare event,
#: so small trees on many rows each.
DECISION_PARAMS: dict[str, Any] = {
    "num_leaves": 4,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.5,
    "lambda_l2": 10.0,
}


def decision_frame(con: duckdb.DuckDBPyConnection, churn_frame: pd.DataFrame) -> pd.DataFrame:
    """``churn_frame`` with the decision model's label :data:`DECISION` in place of its
    ``churn_<h>d`` labels: a voluntary cancellation request in the month after ``as_of``
    (:func:`workbench.models.cancellation.decision_labels`), missing where that month has
    not passed by the frame's last ``as_of``."""
    from workbench.models.cancellation import decision_labels

    labels = [c for c in churn_frame.columns if c.startswith("churn_") and c.endswith("d")]
    as_of = pd.to_datetime(churn_frame["as_of"], utc=True)
    observed = (as_of + pd.DateOffset(months=1)) <= as_of.max()
    decided = pd.Series(decision_labels(con, churn_frame), index=churn_frame.index)
    return churn_frame.drop(columns=labels).assign(
        **{DECISION: decided.astype("Int8").where(observed)}
    )


@dataclass
class DecisionHazardModel:
    """Learner ``d``'s model of the monthly decision to cancel: a LightGBM model and a
    logistic regression fitted on the same rows, averaged on the log-odds scale.

    A decision is a rare event (a few hundred a year), and the hazard it reveals moves
    smoothly with the usage and CRM signals; the trees capture interactions and the
    regression is steadier where events are few. With the average, learner ``d`` ranked the
    offer's true effects better than with LightGBM alone on both development companies
    (see docs/model-quality.md, "Uplift"). With a health outlook the regression reads it
    and the account's attributes only (:data:`REGRESSION_INPUTS`), the trees every feature.
    """

    trees: training.BinaryModel
    linear: LogisticModel
    #: Next month's health score predicted from the features (:mod:`workbench.models.outlook`),
    #: an input of the trees and, with the account's attributes, of the regression
    #: (:data:`REGRESSION_INPUTS`); ``None`` for models saved before it existed.
    outlook: HealthOutlook | None = None

    @property
    def target(self) -> str:
        return self.trees.target

    @property
    def features(self) -> list[str]:
        return self.trees.features

    @property
    def meta(self) -> dict[str, Any]:
        return self.trees.meta

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The monthly probability of a cancellation request for each row (its health
        outlook computed from the row's features first)."""
        if self.outlook is not None:
            frame = self.outlook.with_outlook(frame)
        return log_odds_mean([self.trees.predict(frame), self.linear.predict(frame)])

    def save(self, path: Path) -> Path:
        """The LightGBM model's files plus ``linear.json`` (and the health outlook's, in
        ``outlook/``) in the folder ``path``."""
        path = self.trees.save(path)
        (path / "linear.json").write_text(json.dumps(self.linear.to_json(), indent=1))
        if self.outlook is not None:
            self.outlook.save(path / "outlook")
        return path

    @classmethod
    def load(cls, path: Path) -> DecisionHazardModel:
        path = Path(path)
        linear = LogisticModel.from_json(json.loads((path / "linear.json").read_text()))
        outlook = HealthOutlook.load(path / "outlook") if (path / "outlook").is_dir() else None
        return cls(trees=training.BinaryModel.load(path), linear=linear, outlook=outlook)


def _load_risk(path: Path) -> training.BinaryModel | DecisionHazardModel:
    if (path / "linear.json").is_file():
        return DecisionHazardModel.load(path)
    return training.BinaryModel.load(path)


def _fit_decision(
    frame: pd.DataFrame,
    *,
    exclude_accounts: Sequence[str] = (),
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    outlook: HealthOutlook | None = None,
) -> DecisionHazardModel:
    """A decision model fitted on ``frame`` (a :func:`decision_frame`) without
    ``exclude_accounts``; with ``outlook``, its prediction is one more input of the trees
    and the regression's inputs are :data:`REGRESSION_INPUTS`."""
    if outlook is not None:  # computed again over any column of that name: what predict sees
        frame = outlook.with_outlook(frame)
    trees = fit_risk_model(
        frame,
        target=DECISION,
        exclude_accounts=exclude_accounts,
        seed=seed,
        params={**DECISION_PARAMS, **dict(params or {})},
        refit=True,
        extra_features=(OUTLOOK,) if outlook is not None else (),
    )
    rows = _labelled_rows(frame, DECISION, exclude_accounts)
    spec = trees.spec
    if outlook is not None:
        spec = training.FeatureSpec.infer(rows, [c for c in REGRESSION_INPUTS if c in rows])
    return DecisionHazardModel(
        trees=trees,
        linear=LogisticModel.fit(rows, target=DECISION, spec=spec),
        outlook=outlook,
    )


#: The inputs of the decision hazard's regression half when the health outlook is there:
#: the outlook (the behavioural signals, usage, tickets, CRM and payments, summarised by a
#: model of a dense label) and who the account is. The few hundred decisions a year then
#: fit about 15 coefficients rather than about 90; on both development companies the
#: hazard's rank correlation with the true one rose from 0.83-0.85 to 0.87-0.89 and the
#: uplift's expected-Qini ratio from 0.877 / 0.870 to 0.879 / 0.887 (docs/model-quality.md).
#: Without an outlook (no CRM scores) the regression keeps every feature.
REGRESSION_INPUTS: tuple[str, ...] = (
    OUTLOOK,
    "tenure_days",
    "billing_interval_months",
    "plan_tier",
    *training.ATTRIBUTES,
)


#: Learner ``d`` cross-fits twice (the experiment's decision hazards, out-of-fold by
#: account, and the evaluated uplift scores, out-of-fold by row), and each is repeated
#: over this many splits and averaged: on the development companies the split alone moved
#: the expected-Qini ratio by up to 0.04 (0.858-0.895); with three splits the mean rose
#: from 0.879 / 0.887 to 0.900 / 0.894 and the spread fell to 0.010 / 0.005
#: (docs/model-quality.md). It triples the cross-fitting's cost (default company's uplift
#: training 23 s -> 59 s on one thread, 40 s on two: ``training.MULTITHREAD_ROWS``).
D_REPEATS = 3


def partition_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds of ``repeats`` splits into folds: ``seed`` first (one split is the split
    of ``seed`` alone), then seeds 1000 apart, so runs with nearby seeds share no split."""
    return [seed + 1000 * r for r in range(repeats)]


def decision_pool(churn_frame: pd.DataFrame, experiment: pd.DataFrame) -> np.ndarray:
    """Which rows of ``churn_frame`` the decision model may learn from, given the
    experiment (``account_id``, ``as_of`` = eligibility, ``treatment``): every row of the
    accounts outside it, and the control arm's rows from eligibility on (randomized, never
    offered anything). Treated accounts' rows are left out, and so is every experiment
    account's history before eligibility (it survived to eligibility by construction)."""
    exp, since_eligible = _eligibility(churn_frame, experiment)
    account = churn_frame["account_id"]
    control = account.map(exp["treatment"]).eq(0) & since_eligible
    return (~account.isin(exp.index) | control).to_numpy()


def _eligibility(
    churn_frame: pd.DataFrame, experiment: pd.DataFrame
) -> tuple[pd.DataFrame, pd.Series]:
    """The experiment by account, and per row of ``churn_frame`` whether its account is in
    the experiment and ``as_of`` is at or after its eligibility."""
    exp = experiment.drop_duplicates("account_id").set_index("account_id")
    eligible = pd.to_datetime(churn_frame["account_id"].map(exp["as_of"]), utc=True)
    since = (pd.to_datetime(churn_frame["as_of"], utc=True) >= eligible).fillna(False)
    return exp, since


#: The health outlook a decision model uses, given the accounts it leaves out (fitted
#: without them too: :func:`decision_hazards`).
OutlookFor = Callable[[Sequence[str]], HealthOutlook]


def _fit_decisions(
    pool: pd.DataFrame,
    exclusions: Sequence[Sequence[str]],
    *,
    seed: int,
    params: Mapping[str, Any] | None,
    outlook_for: OutlookFor | None = None,
) -> list[DecisionHazardModel]:
    """One decision model per entry of ``exclusions`` (accounts left out), fitted one after
    the other. They once ran side by side in threads (25 s -> 17 s on the default company),
    but LightGBM's thread count is process-wide OpenMP state that its documentation warns
    against changing while several jobs run at once, and a test run crashed (segfault) in
    those threads; a crash costs more than the 8 s."""
    return [
        _fit_decision(
            pool,
            exclude_accounts=held_out,
            seed=seed,
            params=params,
            outlook=outlook_for(held_out) if outlook_for is not None else None,
        )
        for held_out in exclusions
    ]


def _account_folds(
    accounts: Sequence[str], rows: pd.DataFrame, *, folds: int, seed: int
) -> tuple[np.ndarray, list[list[str]]]:
    """``accounts`` in ``folds`` seeded groups: each row's group and each group's accounts."""
    ids = sorted({str(a) for a in accounts})
    group = dict(zip(ids, np.random.default_rng(seed).permutation(len(ids)) % folds, strict=True))
    fold = rows["account_id"].astype(str).map(group).to_numpy(dtype=np.float64)
    if np.isnan(fold).any():
        raise ValueError("every row to score must belong to one of the accounts")
    return fold.astype(np.int64), [[a for a, g in group.items() if g == k] for k in range(folds)]


def _score_folds(
    models: Sequence[DecisionHazardModel], rows: pd.DataFrame, fold: np.ndarray
) -> np.ndarray:
    hazard = np.full(len(rows), np.nan)
    for k, model in enumerate(models):
        sel = fold == k
        if sel.any():
            hazard[sel] = model.predict(rows[sel])
    return hazard


def out_of_fold_hazards(
    pool: pd.DataFrame,
    accounts: Sequence[str],
    rows: pd.DataFrame,
    *,
    folds: int = 5,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    outlook: HealthOutlook | OutlookFor | None = None,
    repeats: int = 1,
) -> tuple[np.ndarray, DecisionHazardModel]:
    """``rows``' decision hazards, each from a model fitted on ``pool`` (a
    :func:`decision_frame`) without its account's fold (``accounts``, which every row
    belongs to, in ``folds`` seeded groups), and the model fitted on the whole pool (for
    new accounts; fitted alongside the folds' models). With ``outlook``, every model has a
    health outlook's prediction as one more input: the same one, or (a function of the
    accounts a model leaves out) one fitted without those accounts too. With ``repeats``
    above 1, the accounts are split into folds that many times (:func:`partition_seeds`)
    and a row's hazard is the log-odds mean of its out-of-fold hazards, each from a model
    that never saw its account."""
    if isinstance(outlook, HealthOutlook):
        shared = outlook
        outlook = lambda _held_out: shared  # noqa: E731
    (full,) = _fit_decisions(pool, [[]], seed=seed, params=params, outlook_for=outlook)
    hazards = []
    for split in partition_seeds(seed, repeats):
        fold, groups = _account_folds(accounts, rows, folds=folds, seed=split)
        parts = _fit_decisions(pool, groups, seed=seed, params=params, outlook_for=outlook)
        hazards.append(_score_folds(parts, rows, fold))
    return (hazards[0] if repeats == 1 else log_odds_mean(hazards)), full


def decision_hazards(
    con: duckdb.DuckDBPyConnection,
    churn_frame: pd.DataFrame,
    experiment: pd.DataFrame,
    rows: pd.DataFrame,
    *,
    folds: int = 5,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    repeats: int = 1,
) -> tuple[DecisionHazardModel, np.ndarray]:
    """The decision model for learner ``d`` and out-of-fold hazards for the experiment.

    Every account that meets the experiment's eligibility rule joins the experiment, so
    the accounts outside it never show the state its accounts are in: the model also
    learns from the control arm's months from eligibility on (:func:`decision_pool`). A
    control account's own outcome must not shape the hazard it is evaluated with, so
    ``rows``' hazards are out-of-fold by account (:func:`out_of_fold_hazards`).

    Every model has one more input, the health outlook: next month's CRM health score
    predicted from the features (:mod:`workbench.models.outlook`; a dense label beside the
    few hundred decisions), fitted on the rows whose score no offer can have touched (see
    :func:`outlook_rows`) and, like the hazard, out-of-fold by account: the outlook of a
    fold's model never learned from that fold's accounts (an experiment row's own label is
    the score that made it eligible). The regression half then reads the outlook and who
    the account is only (:data:`REGRESSION_INPUTS`). A warehouse without CRM health scores
    gets models without an outlook, the regression on every feature (logged).

    Args:
        churn_frame: Monthly modelling rows (:func:`workbench.models.training.churn_dataset`).
        experiment: ``account_id``, ``as_of`` (eligibility) and ``treatment``.
        rows: The experiment rows to score (``account_id`` and the features).
        repeats: Splits of the accounts into folds, the hazards averaged over them
            (:func:`train_uplift` uses :data:`D_REPEATS`).

    Returns:
        The model fitted on the whole pool (it scores new accounts) and ``rows``'
        out-of-fold hazards.
    """
    keep = decision_pool(churn_frame, experiment)
    in_experiment = churn_frame["account_id"].isin(set(experiment["account_id"])).to_numpy()
    usable = outlook_rows(churn_frame, experiment)
    scores = np.where(usable, next_health_scores(con, churn_frame), np.nan)
    account = churn_frame["account_id"].astype(str)
    outlook_for = None
    if np.isfinite(scores).any():

        def outlook_for(held_out: Sequence[str]) -> HealthOutlook:
            fit = ~account.isin({str(a) for a in held_out}).to_numpy()
            return HealthOutlook.fit(churn_frame[fit], scores[fit], seed=seed)

    else:
        log.warning("no CRM health scores: the decision hazard is fitted without its outlook")
    pool = decision_frame(con, churn_frame[keep])
    hazard, model = out_of_fold_hazards(
        pool, experiment["account_id"], rows, folds=folds, seed=seed, params=params,
        outlook=outlook_for, repeats=repeats,
    )  # fmt: skip
    model.meta["control_rows"] = int((keep & in_experiment).sum())
    model.meta["hazard_folds"] = int(folds)
    model.meta["hazard_repeats"] = int(repeats)
    model.meta["outlook_rows"] = model.outlook.meta["rows"] if model.outlook is not None else 0
    return model, hazard


def outlook_rows(churn_frame: pd.DataFrame, experiment: pd.DataFrame) -> np.ndarray:
    """Which rows of ``churn_frame`` the health outlook may learn from: every row of the
    accounts outside the experiment, every experiment account's rows before eligibility
    (either arm: no offer yet; its label is a health score, not survival, so having
    survived to eligibility does not bias it), and the control arm's rows from eligibility
    on (never offered anything). Treated accounts' rows from eligibility on are left out
    (an offer might change how an account feels, and so its score). Every account that
    meets the eligibility rule joins the experiment, so without its rows the outlook would
    never see the state the experiment's accounts are in."""
    exp, since_eligible = _eligibility(churn_frame, experiment)
    before = churn_frame["account_id"].isin(exp.index) & ~since_eligible
    return before.to_numpy() | decision_pool(churn_frame, experiment)


def fit_uplift(
    frame: pd.DataFrame,
    *,
    outcome: str,
    features: Sequence[str],
    treatment: str = "treatment",
    learner: str = "x",
    params: Mapping[str, Any] | None = None,
    rounds: int = 150,
    seed: int = 0,
    name: str = "retention_uplift",
    spec: FeatureSpec | None = None,
    risk: training.BinaryModel | DecisionHazardModel | None = None,
) -> UpliftModel:
    """Fit a T-, X-, S- or ``d`` learner.

    Args:
        frame: Rows with the ``features``, a 0/1 ``treatment`` and a 0/1 ``outcome`` (churn).
        learner: ``t``, ``x``, ``s`` (penalised logistic; ``params`` may set ``C`` and
            ``interaction_penalty``, see :data:`S_LEARNER_C`) or ``d`` (decision hazard:
            ``risk`` must be a model of the monthly decision to cancel and ``params`` must
            give ``immediate``, the shares of decisions that end a subscription at once
            per billing interval; ``penalty`` and ``folds`` are optional; the ``features``
            are the effect modifiers; see :func:`train_uplift`).
        params: LightGBM parameters over :data:`UPLIFT_PARAMS`.
        rounds: Boosting rounds per model (small data: no early stopping).
        risk: A churn model (see :func:`fit_risk_model`) whose probability becomes the
            ``churn_risk`` input: the offer's effect scales with the baseline risk, which a
            model fitted on the whole customer base estimates far better than a few hundred
            experiment rows can.
    """
    if learner not in ("t", "x", "s", "d"):
        raise ValueError(f"learner must be 't', 'x', 's' or 'd', not {learner!r}")
    if learner == "d":
        return _fit_d(frame, outcome=outcome, features=features, treatment=treatment,
                      params=params, seed=seed, name=name, spec=spec, risk=risk)  # fmt: skip
    if risk is not None:
        frame = frame.assign(**{RISK: risk.predict(frame)})
        features = [*features, RISK] if RISK not in features else list(features)
    spec = spec or FeatureSpec.infer(frame, features)
    X = spec.matrix(frame)
    y = frame[outcome].to_numpy(dtype=np.float64)
    t = frame[treatment].to_numpy(dtype=np.int64)
    if not ((t == 0).any() and (t == 1).any()):
        raise ValueError("the experiment needs treated and control rows")
    if learner == "s":
        sp = dict(params or {})
        linear = _fit_s_learner(
            spec,
            X,
            y,
            t,
            C=float(sp.get("C", S_LEARNER_C)),
            interaction_penalty=float(sp.get("interaction_penalty", S_INTERACTION_PENALTY)),
        )
        return UpliftModel(
            name=name,
            learner=learner,
            spec=spec,
            boosters={},
            propensity=float(t.mean()),
            horizon_days=int(outcome.split("_")[1].rstrip("d"))
            if outcome.startswith("churn_")
            else 0,
            params={"C": linear["C"], "interaction_penalty": linear["interaction_penalty"]},
            rounds=0,
            feature_set_version=training.feature_set_version(spec.names),
            risk=risk,
            linear=linear,
        )
    p = {**UPLIFT_PARAMS, **dict(params or {}), "seed": seed}

    def fit(mask: np.ndarray, target: np.ndarray, objective: str) -> lgb.Booster:
        d = training.lgb_dataset(X[mask], target[mask])
        return lgb.train({**p, "objective": objective}, d, num_boost_round=rounds)

    boosters = {"mu0": fit(t == 0, y, "binary"), "mu1": fit(t == 1, y, "binary")}
    e = float(t.mean())
    if learner == "x":
        d1 = (
            boosters["mu0"].predict(X) - y
        )  # treated: churn they would have had minus what they had
        d0 = y - boosters["mu1"].predict(X)  # controls: what they had minus churn with an offer
        boosters["tau1"] = fit(t == 1, d1, "regression")
        boosters["tau0"] = fit(t == 0, d0, "regression")
    return UpliftModel(
        name=name,
        learner=learner,
        spec=spec,
        boosters=boosters,
        propensity=e,
        horizon_days=int(outcome.split("_")[1].rstrip("d")) if outcome.startswith("churn_") else 0,
        params=p,
        rounds=rounds,
        feature_set_version=training.feature_set_version(spec.names),
        risk=risk,
    )


def _fit_d(
    frame: pd.DataFrame,
    *,
    outcome: str,
    features: Sequence[str],
    treatment: str,
    params: Mapping[str, Any] | None,
    seed: int,
    name: str,
    spec: FeatureSpec | None,
    risk: training.BinaryModel | DecisionHazardModel | None,
) -> UpliftModel:
    """:func:`fit_uplift` for learner ``d``."""
    p = dict(params or {})
    if risk is None or "immediate" not in p:
        raise ValueError(
            "learner 'd' needs risk= (a model of the monthly decision to cancel) and "
            "params={'immediate': {'month': ..., 'year': ...}}: train_uplift(learner='d') "
            "builds both from the warehouse"
        )
    if not outcome.startswith("churn_"):
        raise ValueError(f"learner 'd' models churn_<h>d outcomes, not {outcome!r}")
    horizon = int(outcome.split("_")[1].rstrip("d"))
    if HAZARD not in frame.columns:  # else out-of-fold hazards (decision_hazards)
        frame = frame.assign(**{HAZARD: risk.predict(frame)})
    names = [*features, HAZARD, *(c for c in BILLING_INPUTS if c not in features)]
    spec = spec or FeatureSpec.infer(frame, names)
    y = frame[outcome].to_numpy(dtype=np.float64)
    t = frame[treatment].to_numpy(dtype=np.int64)
    if not ((t == 0).any() and (t == 1).any()):
        raise ValueError("the experiment needs treated and control rows")
    linear = _fit_d_learner(
        frame,
        y,
        t,
        effect_features=list(features),
        immediate=p["immediate"],
        horizon_days=horizon,
        penalty=p.get("penalty"),
        folds=int(p.get("folds", 3)),
        seed=seed,
    )
    return UpliftModel(
        name=name,
        learner="d",
        spec=spec,
        boosters={},
        propensity=float(t.mean()),
        horizon_days=horizon,
        params={"immediate": dict(p["immediate"]), "penalty": linear["penalty"]},
        rounds=0,
        feature_set_version=training.feature_set_version(spec.names),
        risk=risk,
        linear=linear,
    )


def cross_fit(
    frame: pd.DataFrame,
    *,
    outcome: str,
    features: Sequence[str],
    treatment: str = "treatment",
    learner: str = "x",
    folds: int = 5,
    params: Mapping[str, Any] | None = None,
    rounds: int = 150,
    seed: int = 0,
    risk: training.BinaryModel | DecisionHazardModel | None = None,
    repeats: int = 1,
) -> pd.DataFrame:
    """Out-of-fold uplift predictions for every row (folds stratified by treatment and outcome).

    With ``repeats`` above 1 the rows are split into folds that many times
    (:func:`partition_seeds`) and each row's predictions are the mean of its out-of-fold
    predictions (repeated cross-fitting); ``fold`` is its fold in the first split.

    Returns:
        ``p_control``, ``p_treated``, ``uplift`` and ``fold``, same index as ``frame``.
    """
    from sklearn.model_selection import StratifiedKFold

    if learner == "d":
        base = (
            frame.assign(**{HAZARD: risk.predict(frame)})
            if risk is not None and HAZARD not in frame.columns
            else frame
        )
        names = [*features, HAZARD, *(c for c in BILLING_INPUTS if c not in features)]
    else:
        base = frame.assign(**{RISK: risk.predict(frame)}) if risk is not None else frame
        names = [*features, RISK] if risk is not None else list(features)
    spec = FeatureSpec.infer(base, names)
    strata = frame[treatment].astype(int).to_numpy() * 2 + frame[outcome].astype(int).to_numpy()
    runs = []
    for split in partition_seeds(seed, repeats):
        kf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=split)
        parts = []
        for i, (tr, te) in enumerate(kf.split(np.zeros(len(frame)), strata)):
            m = fit_uplift(
                frame.iloc[tr],
                outcome=outcome,
                features=features,
                treatment=treatment,
                learner=learner,
                params=params,
                rounds=rounds,
                seed=seed,
                spec=spec,
                risk=risk,
            )
            parts.append(m.predict_components(frame.iloc[te]).assign(fold=i))
        runs.append(pd.concat(parts).loc[frame.index])
    out = runs[0].copy()
    for c in ("p_control", "p_treated", "uplift"):
        out[c] = np.mean([run[c].to_numpy() for run in runs], axis=0)
    return out


# --------------------------------------------------------------------------- training run


@dataclass
class UpliftResult:
    """The fitted uplift model, its cross-fitted evaluation and where it was tracked.

    ``scored`` holds every experiment row with an outcome: ids, ``as_of``, ``treatment``,
    the outcome, out-of-fold ``uplift``, ``p_control``, ``p_treated``, cohort columns (and
    ``oracle_uplift`` once compared with the truth).
    """

    name: str
    model: UpliftModel
    scored: pd.DataFrame
    metrics: dict[str, float]
    card: dict[str, Any]
    importance: pd.DataFrame
    dataset: pd.DataFrame
    train_seconds: float
    task: str = "uplift"
    run_id: str | None = None
    version: str | None = None

    @property
    def target(self) -> str:
        return f"churn_{self.model.horizon_days}d"

    def qini_curves(self) -> pd.DataFrame:
        """The cross-fitted Qini curve (``model``) and, once compared with the truth, the
        curve of targeting by the true effects (``oracle``), for
        :func:`workbench.models.charts.qini_chart`."""
        y, t = self.scored[self.target], self.scored["treatment"]
        curves = [qini_curve(y, t, self.scored["uplift"]).assign(model="model")]
        if "oracle_uplift" in self.scored.columns:
            ok = self.scored["oracle_uplift"].notna()
            curves.append(
                qini_curve(y[ok], t[ok], self.scored.loc[ok, "oracle_uplift"]).assign(
                    model="oracle"
                )
            )
        return pd.concat(curves, ignore_index=True)


UPLIFT_CARD = {
    "intended_use": (
        "Ranks accounts that have become eligible for a retention offer by how much the "
        "offer is expected to lower their probability of churning within {h} days, so "
        "offers go where they change the outcome. Learned from a randomized experiment; "
        "offers are proposed by the dunning/retention policy and approved by people."
    ),
    "ability_to_pay": (
        "No. It estimates the effect of a discount on cancellation, not whether a customer can pay."
    ),
}
UPLIFT_LIMITATIONS = [
    "The offer's effect is modelled from the account attributes and the baseline risk "
    "(by default the monthly probability of deciding to cancel, from a model fitted on the "
    "accounts outside the experiment and the control arm after eligibility, and when such "
    "a decision would end the subscription "
    "given its billing period): effects driven by other signals are not captured.",
    "With a few hundred experiment rows, who responds more than their baseline risk "
    "suggests is barely identifiable: the attributes' effect modification is penalised "
    "(penalty chosen by cross-validated log loss), so the ranking is mostly the baseline "
    "risk and the billing period.",
    "Assumes the offer lowers the decision to cancel by the same relative amount over the "
    "whole horizon and does not change exits after failed payments.",
    "Learned from one randomized experiment with few hundred eligible accounts: individual "
    "uplift estimates are noisy; use them to rank, not as exact effects.",
    "Valid only for the offer tested (the same coupon) and the eligibility rule of the "
    "experiment (a low CRM health score after two paying months).",
    "Evaluated by cross-fitting on the experiment itself (no later experiment to test on).",
]


def train_uplift(
    con: duckdb.DuckDBPyConnection,
    experiment: pd.DataFrame,
    *,
    horizon_days: int = 90,
    learner: str = "d",
    features: Sequence[str] | None = None,
    folds: int = 5,
    params: Mapping[str, Any] | None = None,
    rounds: int = 100,
    seed: int = 0,
    settings: Settings | None = None,
    track: bool = True,
    register: bool = True,
    dataset: pd.DataFrame | None = None,
    risk: bool | training.BinaryModel | DecisionHazardModel = True,
    churn_frame: pd.DataFrame | None = None,
    risk_label: str = "voluntary",
) -> UpliftResult:
    """Fit, cross-fit-evaluate and (optionally) track and register ``retention_uplift``.

    Args:
        con: Warehouse connection.
        experiment: ``account_id``, ``as_of``, ``treatment`` (see :func:`uplift_dataset`).
        horizon_days: Outcome window (churn within it).
        learner: ``d`` (default: the decision-hazard learner; needs ``con``), ``s``
            (penalised logistic S-learner), ``x`` or ``t`` (see :func:`fit_uplift`). ``d``
            was chosen on two development companies (simulator seeds 1 and 2, not the
            benchmark's): expected Qini 0.80 and 0.81 of the oracle's, against 0.56 and
            0.72 for the S-learner; see docs/model-quality.md.
        features: The learners' inputs besides ``churn_risk`` (``d``: the effect
            modifiers, besides ``cancel_hazard`` and the billing features). Default with a
            risk model:
            the account attributes (:data:`EFFECT_FEATURES`: who responds to a discount),
            the baseline risk coming from the risk model, which sees every feature; without
            one: every feature. A few hundred experiment rows cannot support many inputs.
        folds: Cross-fitting folds for the evaluation (learner ``d``: repeated over
            :data:`D_REPEATS` splits, as are its out-of-fold hazards).
        dataset: A frame from :func:`uplift_dataset` to reuse.
        risk: ``True``: fit a churn model on the accounts outside the experiment
            (:func:`fit_risk_model`) and give its probability to the learners as
            ``churn_risk``; learner ``d``: a decision model (:func:`decision_hazards`: also
            on the control arm from eligibility on, the experiment's hazards out-of-fold by
            account) as ``cancel_hazard``; a fitted model to use instead (its predictions
            for every row); ``False``: none (not for ``d``).
        churn_frame: The churn dataset for that risk model (default: built with
            :func:`workbench.models.training.churn_dataset` for ``horizon_days``).
        risk_label: What the risk model of ``s``, ``t`` and ``x`` learns: ``voluntary``
            churn (default: accounts
            that leave after an invoice is marked uncollectible in the window count as
            retained, :func:`failed_payment_exits`; needs ``con``), or ``all`` churn.

    Returns:
        An :class:`UpliftResult`.
    """
    from workbench.models import explain

    t0 = time.perf_counter()
    data = (
        dataset
        if dataset is not None
        else uplift_dataset(con, experiment, horizon_days=horizon_days)
    )
    outcome = f"churn_{horizon_days}d"
    rows = data[data[outcome].notna()].copy()
    rows[outcome] = rows[outcome].astype(np.int8)
    risk_model = None
    if risk_label not in ("all", "voluntary"):
        raise ValueError(f"risk_label must be 'all' or 'voluntary', not {risk_label!r}")
    if learner == "d":
        if con is None:
            raise ValueError(
                "learner 'd' learns from the warehouse's cancellations: pass con, or choose "
                "learner='s' (with risk=False or a fitted risk model) to train without one"
            )
        from workbench.models.cancellation import immediate_shares

        if churn_frame is None:
            churn_frame = training.churn_dataset(con, horizons=(horizon_days,))
        if isinstance(risk, (training.BinaryModel, DecisionHazardModel)):
            risk_model = risk
        else:
            risk_model, rows[HAZARD] = decision_hazards(
                con, churn_frame, experiment, rows, seed=seed, repeats=D_REPEATS
            )
        params = {"immediate": immediate_shares(con), **dict(params or {})}
    elif risk is True:
        if churn_frame is None:
            churn_frame = training.churn_dataset(con, horizons=(horizon_days,))
        involuntary = None
        if risk_label == "voluntary":
            if con is None:
                raise ValueError("risk_label='voluntary' needs the warehouse connection")
            involuntary = failed_payment_exits(con, churn_frame, horizon_days=horizon_days)
        risk_model = fit_risk_model(
            churn_frame,
            target=outcome,
            exclude_accounts=experiment["account_id"],
            seed=seed,
            involuntary=involuntary,
        )
    elif isinstance(risk, (training.BinaryModel, DecisionHazardModel)):
        risk_model = risk
    if features is not None:
        feats = list(features)
    elif risk_model is not None:
        feats = [c for c in EFFECT_FEATURES if c in rows.columns]
    else:
        feats = training.model_features(rows)
    model = fit_uplift(
        rows,
        outcome=outcome,
        features=feats,
        learner=learner,
        params=params,
        rounds=rounds,
        seed=seed,
        risk=risk_model,
    )
    train_seconds = time.perf_counter() - t0
    oof = cross_fit(
        rows,
        outcome=outcome,
        features=feats,
        learner=learner,
        folds=folds,
        params=params,
        rounds=rounds,
        seed=seed,
        risk=risk_model,
        repeats=D_REPEATS if learner == "d" else 1,
    )
    keep = [
        c
        for c in (
            "account_id",
            "as_of",
            "treatment",
            outcome,
            "plan",
            "region",
            "channel",
            "industry",
            "size",
        )
        if c in rows.columns
    ]
    scored = rows[keep].join(oof)
    metrics = {
        "rows": float(len(rows)),
        "treated": float(rows["treatment"].sum()),
        "churn_rate_control": float(rows.loc[rows["treatment"] == 0, outcome].mean()),
        "churn_rate_treated": float(rows.loc[rows["treatment"] == 1, outcome].mean()),
        "qini": qini_coefficient(scored[outcome], scored["treatment"], scored["uplift"]),
        "auuc": auuc(scored[outcome], scored["treatment"], scored["uplift"]),
        "mean_predicted_uplift": float(scored["uplift"].mean()),
    }
    metrics["ate_observed"] = metrics["churn_rate_control"] - metrics["churn_rate_treated"]
    contrib = model.contributions(rows)
    importance = explain.global_importance(contrib)
    if risk_model is not None:  # the inputs the evaluation used (out-of-fold hazards for d)
        scored[model.risk_column] = model.with_inputs(rows)[model.risk_column].to_numpy()
    card = {
        "name": model.name,
        "task": "uplift",
        "target": outcome,
        "horizon_days": horizon_days,
        "intended_use": UPLIFT_CARD["intended_use"].format(h=horizon_days),
        "ability_to_pay": UPLIFT_CARD["ability_to_pay"],
        "assesses_ability_to_pay": False,
        "limitations": UPLIFT_LIMITATIONS,
        "learner": learner,
        "folds": folds,
        "split": {
            "experiment_start": str(rows["as_of"].min().date()),
            "experiment_end": str(rows["as_of"].max().date()),
            "evaluation": f"{folds}-fold cross-fitting",
        },
        "rows": {"experiment": int(len(rows)), "treated": int(rows["treatment"].sum())},
        "features": [
            {"name": n, "description": d}
            for n, d in training.feature_descriptions(model.features).items()
        ],
        "feature_set_version": model.feature_set_version,
        "metrics": [metrics],
        "importance": importance.head(15).to_dict(orient="records"),
        "params": model.params,
        "rounds": rounds,
        "risk_model": None
        if risk_model is None
        else {
            "target": risk_model.target,
            "label": "monthly decision to cancel" if learner == "d" else f"{risk_label} churn",
            "model": (
                "LightGBM and logistic regression, log-odds mean"
                + (
                    "; input health_score_outlook: next month's CRM health score predicted "
                    "by a LightGBM regression fitted on the rows no offer touched; the "
                    "regression reads only " + ", ".join(risk_model.linear.spec.names)
                    if risk_model.outlook is not None
                    else ""
                )
            )
            if isinstance(risk_model, DecisionHazardModel)
            else "LightGBM",
            "features": len(risk_model.features),
            "trained_on": (
                "churn spine rows of accounts outside the experiment"
                + (
                    " and of the control arm from eligibility on (experiment rows scored "
                    "out-of-fold by account, averaged over "
                    f"{risk_model.meta.get('hazard_repeats', 1)} splits)"
                    if "control_rows" in risk_model.meta
                    else ""
                )
            ),
            **risk_model.meta,
        },
    }
    result = UpliftResult(
        name=model.name,
        model=model,
        scored=scored,
        metrics=metrics,
        card=card,
        importance=importance,
        dataset=data,
        train_seconds=train_seconds,
    )
    log.info(
        "%s: qini %.4f, auuc %.4f on %d experiment rows",
        model.name,
        metrics["qini"],
        metrics["auuc"],
        len(rows),
    )
    if track or register:
        from workbench.models import registry

        registry.log_training_run(result, settings=settings, seed=seed)
        if register:
            registry.register_run(result, settings=settings)
    return result
