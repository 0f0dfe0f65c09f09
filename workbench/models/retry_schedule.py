"""Recovery as retries: a per-retry success model combined over the dunning schedule.

A failed invoice is recovered within ``h`` days of a failed attempt at ``t`` when one of
the retries still ahead, scheduled inside ``(t, t + h]``, succeeds. The direct framing
(:func:`workbench.models.training.train_recovery` with ``framing="direct"``) learns
``P(recovered within h)`` per horizon from a few hundred failed invoices, and has to
discover on its own which retries fall inside the window and whether they land on paydays.
This framing learns what one retry does and adds up the schedule:

* **per-retry success** (:func:`retry_history`, :class:`RetryScheduleModel`): every
  retry seen in the history (each failed attempt followed by the invoice's next attempt,
  or by its payment) is one row: the invoice's state at the failed attempt (decline code,
  amount and currency, the account's other failed invoices, its health proxies, whether
  the subscription is still ``incomplete``) plus the retry's timing (its number, days
  since the invoice's first failure, whether its UTC day is a common payday). A penalised
  logistic regression fits them, with the timing terms interacted with the decline code
  (waiting and paydays matter for insufficient funds, not for a stolen card);
* **the schedule**: the days from the first failure to each retry number, learned from the
  same history (their empirical quantiles; the simulated company, like Stripe's smart
  retries, jitters them by hours);
* ``P(recovered within h | failed attempt k at t) = 1 - prod_{j > k} E[1 - p_j(o_j) 1(o_j <=
  s + h)]`` with ``s`` the days since the first failure at ``t`` and ``o_j`` the offset
  of retry ``j`` drawn from its schedule given that it has not happened by ``s``; the
  next retry's offset is not drawn when the invoice announced it
  (``invoice_hours_to_next_attempt``, Stripe's ``next_payment_attempt``): whether it
  falls inside the window is then known.

Everything used is known at the failure: the inputs are registry features at ``as_of``
and the history rows are retries made before the fitting cut-off (their outcome is known
the moment they are made). One fitted model serves any horizon.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.timeutil import utc_time

log = logging.getLogger(__name__)

DAY_S = 86_400.0
#: Registry features the model reads (``as_of`` gives the calendar dates of the retries).
INPUTS: tuple[str, ...] = (
    "invoice_last_decline_code",
    "invoice_attempt_number",
    "invoice_hours_since_first_failure",
    "invoice_amount_due",
    "invoice_currency",
    "failed_invoices_total",
    "health_score",
    "usage_per_seat_7d",
    "usage_per_seat_30d",
    "plan_tier",
    "sub_status",
    "invoice_hours_to_next_attempt",
)
#: Inputs a frame may lack: without the announced next retry, its time is drawn from the
#: learned schedule like the later ones'.
OPTIONAL_INPUTS: frozenset[str] = frozenset({"invoice_hours_to_next_attempt"})
#: Categorical inputs: one indicator per level seen at least ``min_level_rows`` times.
CATEGORICAL: dict[str, str] = {
    "decline": "invoice_last_decline_code",
    "currency": "invoice_currency",
    "plan": "plan_tier",
}
#: Numeric static terms and the features they come from.
NUMERIC: dict[str, tuple[str, ...]] = {
    "incomplete": ("sub_status",),
    "log_amount": ("invoice_amount_due",),
    "other_failed_invoices": ("failed_invoices_total",),
    "log_usage_per_seat_7d": ("usage_per_seat_7d",),
    "log_usage_per_seat_30d": ("usage_per_seat_30d",),
    "health_score": ("health_score",),
}
DEFAULT_PARAMS: dict[str, Any] = {
    "C": 0.3,  # inverse L2 strength on standardised columns
    "min_level_rows": 20,
    "draws": 24,  # quantile levels of each retry's offset
    "schedule_quantiles": 101,
}
#: Usage per seat below this is floored before the log (no usage at all is not -inf).
USAGE_FLOOR = 0.05
OTHER = "(other)"


def is_payday(when_s: np.ndarray) -> np.ndarray:
    """1.0 where the UTC day of ``when_s`` (unix seconds) is a common payday: the 1st-2nd,
    15th-16th or last two days of its month (as ``invoice_failure_days_to_payday``)."""
    dt = np.asarray(when_s, dtype=np.float64).astype(np.int64).astype("datetime64[s]")
    month = dt.astype("datetime64[M]")
    day = (dt.astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64) + 1
    dim = ((month + 1).astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64)
    return (np.isin(day, (1, 2, 15, 16)) | (day >= dim - 1)).astype(np.float64)


def _epoch_s(ts: pd.Series) -> np.ndarray:
    """Unix seconds (float) of a timestamp column, whatever its resolution; NaN for missing."""
    s = pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]")
    out = s.dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
    return np.where(s.isna().to_numpy(), np.nan, out)


def retry_history(frame: pd.DataFrame, *, before: Any) -> pd.DataFrame:
    """Every retry made before ``before``, with the state of its invoice at the failed
    attempt just before it.

    A failed attempt followed by another failed attempt of the same invoice is a failed
    retry; the invoice's last failed attempt followed by its payment
    (``paid_at_effective``) is a successful one (an invoice paid after its last failed
    attempt was paid by its next retry). Failed attempts with nothing after them yet make
    no row.

    Args:
        frame: The recovery frame (:func:`workbench.models.training.recovery_dataset`, one
            row per failed attempt): ``invoice_id``, ``as_of``, ``paid_at_effective`` and
            :data:`INPUTS`.
        before: Only retries strictly before this instant (the fitting cut-off).

    Returns:
        The state rows (the frame's columns) plus ``retry_number``, ``retry_at_s`` (unix
        seconds), ``retry_days`` (days since the invoice's first failure) and
        ``succeeded`` (0/1).
    """
    cut_s = utc_time(before, what="before").value / 1e9
    f = frame.sort_values(["invoice_id", "as_of"], kind="stable")
    t_s = _epoch_s(f["as_of"])
    nxt = pd.Series(t_s, index=f.index).groupby(f["invoice_id"].to_numpy()).shift(-1).to_numpy()
    paid = _epoch_s(f["paid_at_effective"]) if "paid_at_effective" in f else np.full(len(f), np.nan)
    last = np.isnan(nxt)
    ok = last & np.isfinite(paid) & (paid > t_s)
    when = np.where(last, np.where(ok, paid, np.nan), nxt)
    keep = np.isfinite(when) & (when < cut_s)
    out = f[keep].copy()
    first_s = t_s[keep] - out["invoice_hours_since_first_failure"].to_numpy(np.float64) * 3600.0
    out["retry_number"] = out["invoice_attempt_number"].to_numpy(np.int64) + 1
    out["retry_at_s"] = when[keep]
    out["retry_days"] = (when[keep] - first_s) / DAY_S
    out["succeeded"] = ok[keep].astype(np.int8)
    return out


def _announced(frame: pd.DataFrame) -> np.ndarray:
    """Hours from each row's ``as_of`` to the next retry its invoice announced (NaN when
    none was, the column is absent or the time has passed)."""
    if "invoice_hours_to_next_attempt" not in frame:
        return np.full(len(frame), np.nan)
    h = pd.to_numeric(frame["invoice_hours_to_next_attempt"], errors="coerce").to_numpy(np.float64)
    return np.where(h >= 0, h, np.nan)


def _levels(values: pd.Series, min_rows: int) -> tuple[str, ...]:
    counts = (
        values.astype(object)
        .where(values.notna(), None)
        .map(lambda v: OTHER if v is None else str(v))
        .value_counts()
    )
    keep = sorted(str(k) for k, n in counts.items() if n >= min_rows and k != OTHER)
    return (*keep, OTHER)


def _as_level(values: pd.Series, levels: Sequence[str]) -> np.ndarray:
    known = set(levels)
    v = values.astype(object).where(values.notna(), None)
    return np.array(
        [str(x) if x is not None and str(x) in known else OTHER for x in v], dtype=object
    )


@dataclass
class RetryScheduleModel:
    """A fitted per-retry success model and retry schedule (see the module docstring).

    Scores like a :class:`~workbench.models.training.BinaryModel` of one horizon
    (``predict`` gives the calibrated probability of recovery within ``horizon_days``);
    coefficients are on the raw (unstandardised) design columns.
    """

    name: str
    target: str
    horizon_days: int
    levels: dict[str, tuple[str, ...]]
    medians: dict[str, float]
    intercept: float
    coef: dict[str, float]
    term_means: dict[str, float]
    schedule: dict[str, list[float]]  # "<incomplete 0|1>:<retry number>" -> offset quantiles
    params: dict[str, Any]
    feature_set_version: str
    spec: Any = None  # FeatureSpec of the inputs (for the logistic baseline and matrices)
    calibrator: Any = None
    best_iteration: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ design
    @property
    def features(self) -> list[str]:
        return list(INPUTS)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The inputs as the feature specification types them."""
        return self.spec.matrix(frame)

    def _static_columns(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {}
        for key, feat in CATEGORICAL.items():
            lv = _as_level(frame[feat], self.levels[key])
            for level in self.levels[key]:
                cols[f"{key}={level}"] = (lv == level).astype(np.float64)
        status = frame["sub_status"].astype(object)
        cols["incomplete"] = (status == "incomplete").to_numpy(np.float64)
        amount = pd.to_numeric(frame["invoice_amount_due"], errors="coerce").to_numpy(np.float64)
        cols["log_amount"] = np.log1p(np.clip(amount, 0, None) / 100.0)
        total = pd.to_numeric(frame["failed_invoices_total"], errors="coerce").to_numpy(np.float64)
        cols["other_failed_invoices"] = np.clip(total - 1.0, 0.0, None)
        for w in (7, 30):
            u = pd.to_numeric(frame[f"usage_per_seat_{w}d"], errors="coerce").to_numpy(np.float64)
            cols[f"log_usage_per_seat_{w}d"] = np.log(np.clip(u, USAGE_FLOOR, None))
        cols["health_score"] = pd.to_numeric(frame["health_score"], errors="coerce").to_numpy(
            np.float64
        )
        for k, v in cols.items():  # impute with the training medians
            if k in self.medians:
                cols[k] = np.where(np.isfinite(v), v, self.medians[k])
        return cols

    def _timing_columns(
        self, decline: np.ndarray, number: np.ndarray, days: np.ndarray, when_s: np.ndarray
    ) -> dict[str, np.ndarray]:
        pay = is_payday(when_s)
        cols = {"retry_number": np.asarray(number, dtype=np.float64) - 2.0}
        for level in self.levels["decline"]:
            on = (decline == level).astype(np.float64)
            cols[f"days*{level}"] = days * on
            cols[f"payday*{level}"] = pay * on
        return cols

    def _static_logit(self, frame: pd.DataFrame) -> np.ndarray:
        cols = self._static_columns(frame)
        out = np.full(len(frame), self.intercept)
        for k, v in cols.items():
            out += self.coef.get(k, 0.0) * v
        return out

    def retry_probability(
        self, frame: pd.DataFrame, *, number: np.ndarray, when_s: np.ndarray
    ) -> np.ndarray:
        """Success probability of retry ``number`` made at ``when_s`` (unix seconds), per
        row of ``frame`` (the invoice's state at its last failed attempt)."""
        first_s = (
            _epoch_s(frame["as_of"])
            - frame["invoice_hours_since_first_failure"].to_numpy(np.float64) * 3600.0
        )
        decline = _as_level(frame["invoice_last_decline_code"], self.levels["decline"])
        days = (np.asarray(when_s, np.float64) - first_s) / DAY_S
        logit = self._static_logit(frame)
        for k, v in self._timing_columns(decline, number, days, when_s).items():
            logit = logit + self.coef.get(k, 0.0) * v
        return 1.0 / (1.0 + np.exp(-logit))

    # ------------------------------------------------------------------ scoring
    def _path(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row follows the ``incomplete`` subscription's retry path (only when
        the history had that path; otherwise every row follows the regular schedule)."""
        incomplete = (frame["sub_status"].astype(object) == "incomplete").to_numpy()
        has_path = any(k.startswith("1:") for k in self.schedule)
        return incomplete if has_path else np.zeros(len(frame), dtype=bool)

    def _offsets(self, key: str, s: np.ndarray, draws: int) -> np.ndarray:
        """``draws`` offsets (days) per row of retry ``key`` given it is later than ``s``."""
        q = np.asarray(self.schedule[key], dtype=np.float64)
        grid = np.linspace(0.0, 1.0, len(q))
        done = np.interp(s, q, grid, left=0.0, right=1.0)  # share of the schedule before s
        u = (np.arange(draws) + 0.5) / draws
        level = done[:, None] + u[None, :] * (1.0 - done[:, None])
        off = np.interp(level, grid, q)
        return np.maximum(off, s[:, None] + 1.0 / 24.0)

    def predict_horizon(self, frame: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Uncalibrated probability that each row's invoice is paid within ``horizon_days``
        of its ``as_of`` (a failed attempt)."""
        n = len(frame)
        if n == 0:
            return np.zeros(0)
        draws = int(self.params["draws"])
        s = frame["invoice_hours_since_first_failure"].to_numpy(np.float64) / 24.0
        s = np.where(np.isfinite(s), s, 0.0)
        k = frame["invoice_attempt_number"].to_numpy(np.float64)
        k = np.where(np.isfinite(k), k, 1.0)
        announced = _announced(frame)
        path = self._path(frame)
        first_s = _epoch_s(frame["as_of"]) - s * DAY_S
        decline = _as_level(frame["invoice_last_decline_code"], self.levels["decline"])
        static = self._static_logit(frame)
        miss = np.ones(n)
        for key in self.schedule:
            inc, number = key.split(":")
            j = int(number)
            rows = np.flatnonzero((path == (inc == "1")) & (k < j))
            if not len(rows):
                continue
            off = self._offsets(key, s[rows], draws)  # rows x draws
            # the next retry's time is known: the invoice announced it at the failure
            known = (k[rows] == j - 1) & np.isfinite(announced[rows])
            off[known] = (s[rows][known] + announced[rows][known] / 24.0)[:, None]
            when = first_s[rows, None] + off * DAY_S
            logit = np.repeat(static[rows, None], draws, axis=1)
            dec = np.repeat(decline[rows, None], draws, axis=1)
            t = self._timing_columns(dec.ravel(), np.full(off.size, j), off.ravel(), when.ravel())
            for name, v in t.items():
                logit = logit + self.coef.get(name, 0.0) * v.reshape(off.shape)
            p = 1.0 / (1.0 + np.exp(-logit))
            inside = off <= s[rows, None] + horizon_days
            miss[rows] *= 1.0 - np.mean(np.where(inside, p, 0.0), axis=1)
        return 1.0 - miss

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of recovery within the model's horizon, before calibration."""
        return self.predict_horizon(frame, self.horizon_days)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of recovery within the model's horizon."""
        raw = self.predict_raw(frame)
        return self.calibrator.apply(raw) if self.calibrator is not None else raw

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions to the log-odds that the *next* retry succeeds.

        The model is linear in log-odds, so each term's contribution is its coefficient
        times the term's distance from its training mean (the exact SHAP value of a linear
        model with independent inputs); terms are summed per input feature (timing terms
        go to ``invoice_attempt_number`` and to ``invoice_hours_to_next_attempt`` when the
        invoice announced the next retry's time, else to ``invoice_hours_since_first_failure``
        with the next retry at its median offset). ``bias`` is the log-odds at the training
        means.
        """
        from workbench.models.explain import BIAS

        n = len(frame)
        out = pd.DataFrame(0.0, index=frame.index, columns=[*self.features, BIAS])
        if n == 0:
            return out
        owner = {
            f"{key}={lv}": feat for key, feat in CATEGORICAL.items() for lv in self.levels[key]
        }
        owner |= {k: v[0] for k, v in NUMERIC.items()}
        for k, v in self._static_columns(frame).items():
            out[owner[k]] += self.coef.get(k, 0.0) * (v - self.term_means.get(k, 0.0))
        s = frame["invoice_hours_since_first_failure"].to_numpy(np.float64) / 24.0
        s = np.where(np.isfinite(s), s, 0.0)
        k = frame["invoice_attempt_number"].to_numpy(np.float64)
        k = np.where(np.isfinite(k), k, 1.0)
        path = self._path(frame)
        nxt = np.full(n, np.nan)
        for key in self.schedule:
            inc, number = key.split(":")
            rows = np.flatnonzero((path == (inc == "1")) & (k + 1 == int(number)))
            if len(rows):
                nxt[rows] = self._offsets(key, s[rows], 1)[:, 0]
        nxt = np.where(np.isfinite(nxt), nxt, s + 1.0)
        announced = _announced(frame)
        known = np.isfinite(announced)
        nxt = np.where(known, s + announced / 24.0, nxt)
        first_s = _epoch_s(frame["as_of"]) - s * DAY_S
        decline = _as_level(frame["invoice_last_decline_code"], self.levels["decline"])
        t = self._timing_columns(decline, k + 1, nxt, first_s + nxt * DAY_S)
        for name, v in t.items():
            c = self.coef.get(name, 0.0) * (v - self.term_means.get(name, 0.0))
            if name == "retry_number":
                out["invoice_attempt_number"] += c
            else:  # the retry's timing: announced by the invoice, or from the schedule
                out["invoice_hours_to_next_attempt"] += np.where(known, c, 0.0)
                out["invoice_hours_since_first_failure"] += np.where(known, 0.0, c)
        bias = self.intercept + sum(self.coef.get(k, 0.0) * m for k, m in self.term_means.items())
        out[BIAS] = bias
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> Path:
        """Write ``model.json`` (everything, plain JSON) into the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": "retry_schedule",
            "name": self.name,
            "target": self.target,
            "horizon_days": self.horizon_days,
            "levels": {k: list(v) for k, v in self.levels.items()},
            "medians": self.medians,
            "intercept": self.intercept,
            "coef": self.coef,
            "term_means": self.term_means,
            "schedule": self.schedule,
            "params": self.params,
            "feature_set_version": self.feature_set_version,
            "spec": self.spec.to_json() if self.spec is not None else None,
            "calibrator": asdict(self.calibrator) if self.calibrator is not None else None,
            "meta": self.meta,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: Path) -> RetryScheduleModel:
        """Read a folder written by :meth:`save`."""
        from workbench.models.training import Calibrator, FeatureSpec

        meta = json.loads((Path(path) / "model.json").read_text())
        cal = meta.get("calibrator")
        return cls(
            name=meta["name"],
            target=meta["target"],
            horizon_days=int(meta["horizon_days"]),
            levels={k: tuple(v) for k, v in meta["levels"].items()},
            medians={k: float(v) for k, v in meta["medians"].items()},
            intercept=float(meta["intercept"]),
            coef={k: float(v) for k, v in meta["coef"].items()},
            term_means={k: float(v) for k, v in meta["term_means"].items()},
            schedule={k: [float(x) for x in v] for k, v in meta["schedule"].items()},
            params=meta["params"],
            feature_set_version=meta["feature_set_version"],
            spec=FeatureSpec.from_json(meta["spec"]) if meta.get("spec") else None,
            calibrator=Calibrator(
                cal["method"], tuple(cal["x"]), tuple(cal["y"]), cal["a"], cal["b"]
            )
            if cal
            else None,
            meta=meta.get("meta", {}),
        )


def fit_retry_model(
    history: pd.DataFrame,
    *,
    name: str,
    target: str,
    horizon_days: int,
    params: Mapping[str, Any] | None = None,
    spec: Any = None,
) -> RetryScheduleModel:
    """Fit the per-retry logistic regression and the schedule on retry rows.

    Args:
        history: Rows of :func:`retry_history` (state inputs, ``retry_number``,
            ``retry_at_s``, ``retry_days``, ``succeeded``); both outcomes must occur.
        params: Over :data:`DEFAULT_PARAMS`.

    Returns:
        The model, uncalibrated (``calibrator`` is the identity).
    """
    from sklearn.linear_model import LogisticRegression

    from workbench.models.training import Calibrator, feature_set_version

    p = {**DEFAULT_PARAMS, **dict(params or {})}
    y = history["succeeded"].to_numpy(np.int8)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{target}: the retry history has only one outcome ({len(y)} retries)")
    levels = {
        key: _levels(history[feat], int(p["min_level_rows"])) for key, feat in CATEGORICAL.items()
    }
    model = RetryScheduleModel(
        name=name,
        target=target,
        horizon_days=int(horizon_days),
        levels=levels,
        medians={},
        intercept=0.0,
        coef={},
        term_means={},
        schedule={},
        params=p,
        feature_set_version=feature_set_version(INPUTS),
        spec=spec,
        calibrator=Calibrator("none"),
    )
    static = model._static_columns(history)
    model.medians = {
        k: float(np.nanmedian(v)) if np.isfinite(v).any() else 0.0 for k, v in static.items()
    }
    static = model._static_columns(history)
    decline = _as_level(history["invoice_last_decline_code"], levels["decline"])
    timing = model._timing_columns(
        decline,
        history["retry_number"].to_numpy(np.float64),
        history["retry_days"].to_numpy(np.float64),
        history["retry_at_s"].to_numpy(np.float64),
    )
    cols = {**static, **timing}
    names = list(cols)
    X = np.column_stack([cols[c] for c in names])
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    lr = LogisticRegression(C=float(p["C"]), max_iter=5000).fit((X - mu) / sd, y)
    beta = lr.coef_[0] / sd
    model.coef = {c: float(b) for c, b in zip(names, beta, strict=True)}
    model.intercept = float(lr.intercept_[0] - np.sum(lr.coef_[0] * mu / sd))
    model.term_means = {c: float(m) for c, m in zip(names, mu, strict=True)}
    # the schedule: days from the first failure to each retry number, per path
    inc = (history["sub_status"].astype(object) == "incomplete").to_numpy()
    qs = np.linspace(0.0, 1.0, int(p["schedule_quantiles"]))
    for (path, number), g in pd.DataFrame(
        {
            "inc": inc.astype(int),
            "n": history["retry_number"].to_numpy(np.int64),
            "d": history["retry_days"],
        }
    ).groupby(["inc", "n"]):
        model.schedule[f"{path}:{number}"] = [float(x) for x in np.quantile(g["d"], qs)]
    model.meta = {
        "retry_rows": int(len(history)),
        "retry_successes": int(y.sum()),
        "invoices": int(history["invoice_id"].nunique()),
        "schedule_median_days": {
            k: round(float(np.median(v)), 2) for k, v in model.schedule.items()
        },
    }
    return model


def fit_for_split(
    *,
    data: pd.DataFrame,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    split: Any,
    name: str,
    target: str,
    features: Sequence[str],
    params: Mapping[str, Any] | None,
    calibration: str,
    seed: int = 0,
) -> RetryScheduleModel:
    """The per-retry model of one horizon for a time split (the ``fit_model`` hook of
    :func:`workbench.models.training._train_one`).

    Fits on the retries made before ``split.valid_start`` and scores the validation rows
    (``valid_auc_raw`` in ``meta``). With ``calibration="none"`` the returned model is
    refitted on every retry made before ``split.test_start`` (no outcome inside the test
    period is used); otherwise the first fit is calibrated on the validation rows.

    Args:
        data: The whole recovery frame (retries are taken from it by time).
        train, valid: The split's rows of ``target`` (``valid`` carries the label).
        split: The :class:`~workbench.models.training.TimeSplit`.
    """
    from workbench.models import evaluation
    from workbench.models.training import FeatureSpec, fit_calibrator

    del seed  # deterministic: no sampling
    spec = FeatureSpec.infer(train, list(features))
    common = {"name": name, "target": target, "horizon_days": split.horizon_days, "spec": spec}
    early = fit_retry_model(retry_history(data, before=split.valid_start), params=params, **common)
    y_valid = valid[target].to_numpy(dtype=np.float64)
    raw_valid = early.predict_raw(valid)
    checks = {
        "framing": "per_retry",
        "valid_auc_raw": evaluation.roc_auc(y_valid, raw_valid),
        "valid_ece_raw": evaluation.expected_calibration_error(y_valid, raw_valid),
        "valid_rows": int(len(valid)),
        "train_rows": int(len(train)),
        "valid_positives": int(np.nansum(y_valid)),
    }
    if calibration == "none":
        model = fit_retry_model(
            retry_history(data, before=split.test_start), params=params, **common
        )
        checks["calibration_fitted_on"] = "none (refitted on the retries before the test period)"
    else:
        model = early
        model.calibrator = fit_calibrator(raw_valid, y_valid, method=calibration)
        checks["calibration_fitted_on"] = "validation period"
    model.meta |= checks
    return model


__all__ = [
    "DEFAULT_PARAMS",
    "INPUTS",
    "RetryScheduleModel",
    "fit_for_split",
    "fit_retry_model",
    "is_payday",
    "retry_history",
]
