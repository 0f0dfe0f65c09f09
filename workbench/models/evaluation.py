"""Quality of probability scores: discrimination, calibration, lift, cohorts, the oracle.

Small pure functions over arrays and tidy frames, composed by :func:`evaluate_scores`.
Every function takes the realized outcome ``y`` (0/1) and a probability ``p`` of the
same length; rows where either is missing are dropped first.

Calibration error is the *expected calibration error* (ECE): predictions are put into
bins, and the absolute gap between the mean prediction and the observed rate in each bin
is averaged with the bin's share of rows as weight. ``strategy="uniform"`` uses ten
equal-width bins on [0, 1] (the usual definition, Naeini et al. 2015, Guo et al. 2017);
``strategy="quantile"`` uses bins of equal size, which resolves low-prevalence scores
better but is noisier (each bin's observed rate carries sampling error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

log = logging.getLogger(__name__)

EPS = 1e-15
#: Cohort columns reported by default (plan, region, channel).
COHORTS: tuple[str, ...] = ("plan_tier", "region", "channel")


def _clean(y: Iterable, p: Iterable) -> tuple[np.ndarray, np.ndarray]:
    y = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(float)
    p = pd.to_numeric(pd.Series(np.asarray(p, dtype=object)), errors="coerce").to_numpy(float)
    if len(y) != len(p):
        raise ValueError(f"y and p differ in length ({len(y)} vs {len(p)})")
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(y) and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must be 0 or 1")
    if len(p) and ((p < 0).any() or (p > 1).any()):
        raise ValueError("p must be probabilities in [0, 1]")
    return y.astype(np.int8), p


def roc_auc(y: Iterable, p: Iterable) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    y, p = _clean(y, p)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def pr_auc(y: Iterable, p: Iterable) -> float:
    """Average precision, the usual estimate of the area under the precision-recall curve."""
    y, p = _clean(y, p)
    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def brier_score(y: Iterable, p: Iterable) -> float:
    """Mean squared difference between probability and outcome."""
    y, p = _clean(y, p)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def log_loss(y: Iterable, p: Iterable) -> float:
    """Mean negative log-likelihood (probabilities clipped to [1e-15, 1 - 1e-15])."""
    y, p = _clean(y, p)
    if not len(y):
        return float("nan")
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def _bin_ids(p: np.ndarray, *, bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.minimum((p * bins).astype(np.int64), bins - 1)
    if strategy == "quantile":
        order = np.argsort(p, kind="stable")
        ids = np.empty(len(p), dtype=np.int64)
        ids[order] = (np.arange(len(p)) * bins) // max(len(p), 1)
        return ids
    raise ValueError(f"strategy must be 'uniform' or 'quantile', not {strategy!r}")


def reliability_table(
    y: Iterable, p: Iterable, *, bins: int = 10, strategy: str = "uniform"
) -> pd.DataFrame:
    """Observed rate against mean prediction per bin (the data of a reliability diagram).

    Returns:
        One row per non-empty bin: ``bin``, ``p_low``, ``p_high`` (range of predictions
        in it), ``mean_predicted``, ``observed_rate``, ``rows``, ``share`` (of all rows),
        ``gap`` (observed - predicted).
    """
    y, p = _clean(y, p)
    ids = _bin_ids(p, bins=bins, strategy=strategy)
    frame = pd.DataFrame({"bin": ids, "y": y, "p": p})
    out = (
        frame.groupby("bin")
        .agg(
            p_low=("p", "min"),
            p_high=("p", "max"),
            mean_predicted=("p", "mean"),
            observed_rate=("y", "mean"),
            rows=("y", "size"),
        )
        .reset_index()
    )
    out["share"] = out["rows"] / max(len(y), 1)
    out["gap"] = out["observed_rate"] - out["mean_predicted"]
    return out


def expected_calibration_error(
    y: Iterable, p: Iterable, *, bins: int = 10, strategy: str = "uniform"
) -> float:
    """Row-weighted mean absolute gap between observed rate and mean prediction per bin."""
    table = reliability_table(y, p, bins=bins, strategy=strategy)
    if table.empty:
        return float("nan")
    return float((table["share"] * table["gap"].abs()).sum())


def lift_table(y: Iterable, p: Iterable, *, groups: int = 10) -> pd.DataFrame:
    """Outcome rate by score decile, highest scores first.

    Returns:
        One row per group: ``decile`` (1 = highest scores), ``rows``, ``positives``,
        ``rate``, ``mean_predicted``, ``lift`` (rate / overall rate), ``cumulative_capture``
        (share of all positives found in this and higher deciles) and ``cumulative_lift``.
    """
    y, p = _clean(y, p)
    n = len(y)
    order = np.argsort(-p, kind="stable")
    decile = np.empty(n, dtype=np.int64)
    decile[order] = (np.arange(n) * groups) // max(n, 1) + 1
    frame = pd.DataFrame({"decile": decile, "y": y, "p": p})
    out = (
        frame.groupby("decile")
        .agg(rows=("y", "size"), positives=("y", "sum"), mean_predicted=("p", "mean"))
        .reset_index()
    )
    base = y.mean() if n else float("nan")
    out["rate"] = out["positives"] / out["rows"]
    out["lift"] = out["rate"] / base if base > 0 else float("nan")
    total = max(int(y.sum()), 1)
    out["cumulative_capture"] = out["positives"].cumsum() / total
    out["cumulative_lift"] = (
        (out["positives"].cumsum() / out["rows"].cumsum()) / base if base > 0 else float("nan")
    )
    return out[
        [
            "decile",
            "rows",
            "positives",
            "rate",
            "mean_predicted",
            "lift",
            "cumulative_capture",
            "cumulative_lift",
        ]
    ]


def binary_metrics(y: Iterable, p: Iterable, *, bins: int = 10) -> dict[str, float]:
    """All headline metrics of a probability score.

    Returns:
        ``rows``, ``positives``, ``base_rate``, ``mean_predicted``, ``roc_auc``, ``pr_auc``,
        ``brier``, ``log_loss``, ``ece`` (uniform bins), ``ece_quantile`` (equal-size bins)
        and ``top_decile_lift``.
    """
    y, p = _clean(y, p)
    n = len(y)
    out: dict[str, float] = {
        "rows": float(n),
        "positives": float(y.sum()),
        "base_rate": float(y.mean()) if n else float("nan"),
        "mean_predicted": float(p.mean()) if n else float("nan"),
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "brier": brier_score(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p, bins=bins) if n else float("nan"),
        "ece_quantile": (
            expected_calibration_error(y, p, bins=bins, strategy="quantile") if n else float("nan")
        ),
    }
    if n >= 10 and y.sum() > 0:
        out["top_decile_lift"] = float(lift_table(y, p).iloc[0]["lift"])
    else:
        out["top_decile_lift"] = float("nan")
    return out


def metrics_by_cohort(
    frame: pd.DataFrame,
    *,
    y: str,
    p: str,
    cohorts: Sequence[str] = COHORTS,
    min_rows: int = 30,
) -> pd.DataFrame:
    """:func:`binary_metrics` per value of each cohort column.

    Args:
        frame: Needs the outcome column ``y``, the score column ``p`` and the cohort
            columns (missing cohort values are reported as ``"(none)"``).
        min_rows: Cohorts with fewer rows are reported with counts but no metrics.

    Returns:
        Columns ``cohort`` (the column name), ``value`` and the metrics.
    """
    rows = []
    for col in cohorts:
        if col not in frame.columns:
            log.warning("cohort column %r missing; skipped", col)
            continue
        values = frame[col].astype(object).where(frame[col].notna(), "(none)").astype(str)
        for value, part in frame.groupby(values, sort=True):
            if len(part) >= min_rows:
                m = binary_metrics(part[y], part[p])
            else:
                yy, _ = _clean(part[y], part[p])
                m = {"rows": float(len(yy)), "positives": float(yy.sum())}
            rows.append({"cohort": col, "value": value, **m})
    return pd.DataFrame(rows)


def _fast_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    from scipy.stats import rankdata

    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _group_members(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices of each cluster (each row its own cluster without ``groups``)."""
    g = np.arange(n) if groups is None else groups
    codes, _ = pd.factorize(g)
    return pd.Series(np.arange(n)).groupby(codes).apply(np.asarray).to_list()


def _bootstrap_interval(
    members: list[np.ndarray],
    stat: Callable[[np.ndarray], float],
    *,
    n_boot: int,
    level: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of ``stat(rows)`` over resamples of whole clusters."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        values.append(stat(np.concatenate([members[i] for i in pick])))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def auc_gap_interval(
    y: Iterable,
    p_model: Iterable,
    p_oracle: Iterable,
    *,
    groups: Iterable | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the AUC gap (oracle - model) on the same rows.

    Paired: each resample draws rows (or whole ``groups``, e.g. accounts scored at several
    dates, whose rows are not independent) and computes both AUCs on it, so the interval
    reflects how much the gap itself moves with the sample, not the two AUCs' separate
    noise. Rows with a missing value are dropped first.

    Returns:
        ``(low, high)``: the percentile interval at ``level`` (NaN when too few rows).
    """
    yy = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(float)
    pm = np.asarray(p_model, dtype=float)
    po = np.asarray(p_oracle, dtype=float)
    ok = np.isfinite(yy) & np.isfinite(pm) & np.isfinite(po)
    if ok.sum() < 20 or not 0 < yy[ok].sum() < ok.sum():
        return float("nan"), float("nan")
    yy, pm, po = yy[ok].astype(np.int8), pm[ok], po[ok]
    g = None if groups is None else np.asarray(list(groups), dtype=object)[ok]
    return _bootstrap_interval(
        _group_members(g, len(yy)),
        lambda idx: _fast_auc(yy[idx], po[idx]) - _fast_auc(yy[idx], pm[idx]),
        n_boot=n_boot,
        level=level,
        seed=seed,
    )


def calibration_error_vs_truth(p_true: Iterable, p_model: Iterable, *, bins: int = 10) -> float:
    """The ECE of ``p_model`` with the true probability in place of the outcome.

    Same bins as :func:`expected_calibration_error` (ten equal-width bins of the model's
    predictions), but each bin's mean prediction is compared with the mean **true**
    probability of its rows instead of their observed rate. When outcomes are drawn as
    ``Bernoulli(p_true)`` the two estimate the same calibration error (the expected outcome
    given the prediction is the expected true probability given it), but this one carries
    no outcome noise: on a few hundred rows, where even the truth's own ECE is several
    points by chance (:func:`ece_noise_floor`), it can still tell 0.01 from 0.03.
    Only a simulator, which knows ``p_true``, can compute it.
    """
    pt = np.asarray(p_true, dtype=float)
    pm = np.asarray(p_model, dtype=float)
    if len(pt) != len(pm):
        raise ValueError(f"p_true and p_model differ in length ({len(pt)} vs {len(pm)})")
    ok = np.isfinite(pt) & np.isfinite(pm)
    pt, pm = pt[ok], pm[ok]
    if not len(pt):
        return float("nan")
    if (pm < 0).any() or (pm > 1).any() or (pt < 0).any() or (pt > 1).any():
        raise ValueError("p_true and p_model must be probabilities in [0, 1]")
    ids = _bin_ids(pm, bins=bins, strategy="uniform")
    gap = np.bincount(ids, weights=pt - pm, minlength=bins)
    return float(np.abs(gap).sum() / len(pt))


def oracle_self_check(
    y: Iterable, p_oracle: Iterable, *, groups: Iterable | None = None, n_sim: int = 300
) -> dict[str, float]:
    """Are the "true" probabilities the outcomes' own? The premise of
    :func:`calibration_error_vs_truth`.

    An ECE against the truth measures calibration only if the outcomes are drawn from it.
    A simulator's oracle can leave something out (the churn oracle, for instance, models
    the decision to cancel, not cards that stop paying), and then the model is compared
    with the wrong thing. Checked on as many rows as there are (train, validation and test
    together): the oracle's own ECE against the outcomes must lie within what chance gives
    (:func:`ece_noise_floor`'s 95th percentile on the same rows), and the mean outcome must
    lie within two standard errors of the mean oracle (a left-out exit or payment channel
    shifts every probability a little, which the binned ECE is slow to see). Both assume
    independent rows, so with ``groups`` (e.g. the invoice, whose attempts share one
    outcome) only the first row of each group is used.

    Returns:
        ``rows``, ``mean_outcome``, ``mean_oracle``, ``mean_z`` (their difference in
        standard errors), ``oracle_ece``, ``ece_floor_p95`` and ``calibrated`` (1.0 when the
        oracle's ECE is within its chance p95 and ``|mean_z| <= 2``, else 0.0).
    """
    yy = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(float)
    po = np.asarray(p_oracle, dtype=float)
    if groups is not None:  # the first complete row of each group
        rows = np.flatnonzero(np.isfinite(yy) & np.isfinite(po))
        g = pd.Series(np.asarray(list(groups), dtype=object)[rows])
        rows = rows[~g.duplicated().to_numpy()]
        yy, po = yy[rows], po[rows]
    y, po = _clean(yy, po)
    if not len(y):
        nan = float("nan")
        keys = ("rows", "mean_outcome", "mean_oracle", "mean_z", "oracle_ece", "ece_floor_p95")
        return dict.fromkeys(keys, nan) | {"calibrated": 0.0}
    ece = expected_calibration_error(y, po)
    p95 = ece_noise_floor(po, n_sim=n_sim)[1]
    se = np.sqrt(np.sum(po * (1 - po))) / len(y)
    z = float((y.mean() - po.mean()) / se) if se > 0 else float("nan")
    return {
        "rows": float(len(y)),
        "mean_outcome": float(y.mean()),
        "mean_oracle": float(po.mean()),
        "mean_z": z,
        "oracle_ece": ece,
        "ece_floor_p95": p95,
        "calibrated": float(ece <= p95 and abs(z) <= 2),
    }


def ece_noise_floor(
    p: Iterable, *, bins: int = 10, n_sim: int = 300, seed: int = 0
) -> tuple[float, float]:
    """The ECE that perfectly calibrated probabilities ``p`` show on this many rows by chance.

    Outcomes are drawn as ``Bernoulli(p)`` ``n_sim`` times and the ECE of ``p`` against
    them computed: with a few hundred rows, ten bins hold a few dozen rows each and the
    observed rate in each moves by several points, so even the true probabilities have an
    ECE well above zero. An ECE goal below this floor cannot be told apart from noise.

    Returns:
        ``(mean, 95th percentile)`` of the simulated ECE.
    """
    pp = np.asarray(p, dtype=float)
    pp = pp[np.isfinite(pp)]
    if not len(pp):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ids = _bin_ids(pp, bins=bins, strategy="uniform")
    mean_p = np.bincount(ids, weights=pp, minlength=bins)
    sims = np.empty(n_sim)
    for i in range(n_sim):
        y = rng.random(len(pp)) < pp
        obs = np.bincount(ids, weights=y.astype(float), minlength=bins)
        sims[i] = float(np.abs(obs - mean_p).sum() / len(pp))
    return float(sims.mean()), float(np.quantile(sims, 0.95))


def oracle_comparison(
    y: Iterable,
    p_model: Iterable,
    p_oracle: Iterable,
    *,
    groups: Iterable | None = None,
    n_boot: int = 0,
) -> dict[str, float]:
    """Model against the true probabilities on exactly the same rows.

    Rows where the outcome, the model score or the oracle is missing are dropped from
    both, so the two are always compared on identical rows.

    Args:
        groups: Cluster of each row for the bootstrap (e.g. the account).
        n_boot: Bootstrap resamples for the gap's 95% interval (0: none).

    Returns:
        ``rows``, ``model_auc``, ``oracle_auc``, ``auc_gap`` (oracle - model),
        ``model_brier``, ``oracle_brier``, ``model_ece``, ``oracle_ece``,
        ``model_ece_vs_truth`` (the model's ECE against the true probabilities, see
        :func:`calibration_error_vs_truth`), ``ece_floor`` and ``ece_floor_p95`` (the ECE
        the true probabilities show on these rows by chance alone, see
        :func:`ece_noise_floor`) and, with ``n_boot``, ``auc_gap_low``, ``auc_gap_high``,
        ``model_ece_vs_truth_low`` and ``model_ece_vs_truth_high`` (95% intervals).
    """
    yy = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(float)
    pm = np.asarray(p_model, dtype=float)
    po = np.asarray(p_oracle, dtype=float)
    ok = np.isfinite(yy) & np.isfinite(pm) & np.isfinite(po)
    gg = None if groups is None else np.asarray(list(groups), dtype=object)[ok]
    yy, pm, po = yy[ok], pm[ok], po[ok]
    out = {
        "rows": float(ok.sum()),
        "model_auc": roc_auc(yy, pm),
        "oracle_auc": roc_auc(yy, po),
        "model_brier": brier_score(yy, pm),
        "oracle_brier": brier_score(yy, po),
        "model_ece": expected_calibration_error(yy, pm) if len(yy) else float("nan"),
        "oracle_ece": expected_calibration_error(yy, po) if len(yy) else float("nan"),
        "model_ece_vs_truth": calibration_error_vs_truth(po, pm),
    }
    out["auc_gap"] = out["oracle_auc"] - out["model_auc"]
    out["ece_floor"], out["ece_floor_p95"] = ece_noise_floor(po)
    if n_boot:
        out["auc_gap_low"], out["auc_gap_high"] = auc_gap_interval(
            yy, pm, po, groups=gg, n_boot=n_boot
        )
        if len(yy):
            out["model_ece_vs_truth_low"], out["model_ece_vs_truth_high"] = _bootstrap_interval(
                _group_members(gg, len(yy)),
                lambda idx: calibration_error_vs_truth(po[idx], pm[idx]),
                n_boot=n_boot,
                level=0.95,
                seed=0,
            )
    return out


def evaluate_scores(
    frame: pd.DataFrame,
    *,
    y: str,
    scores: Mapping[str, str],
    cohorts: Sequence[str] = COHORTS,
    oracle: str | None = None,
) -> dict[str, pd.DataFrame | dict]:
    """Everything the model card and the notebooks show, for one outcome.

    Args:
        frame: Test rows with the outcome ``y``, one column per score in ``scores``
            (display name -> column), cohort columns and optionally the oracle column.
        oracle: Column with the true probabilities, compared on the same rows.

    Returns:
        ``metrics`` (frame: one row per score, the oracle included when given),
        ``reliability`` and ``lift`` (frames with a ``model`` column), ``by_cohort``
        (frame for the first score) and ``oracle`` (dict from :func:`oracle_comparison`
        for the first score, empty without an oracle).
    """
    names = dict(scores)
    names_all = {**names, "oracle": oracle} if oracle is not None else names
    metrics = pd.DataFrame(
        [{"model": k, **binary_metrics(frame[y], frame[c])} for k, c in names_all.items()]
    )
    rel = pd.concat(
        [reliability_table(frame[y], frame[c]).assign(model=k) for k, c in names_all.items()],
        ignore_index=True,
    )
    lift = pd.concat(
        [lift_table(frame[y], frame[c]).assign(model=k) for k, c in names_all.items()],
        ignore_index=True,
    )
    first = next(iter(names.values()))
    by_cohort = metrics_by_cohort(frame, y=y, p=first, cohorts=cohorts)
    cmp = oracle_comparison(frame[y], frame[first], frame[oracle]) if oracle is not None else {}
    return {
        "metrics": metrics,
        "reliability": rel,
        "lift": lift,
        "by_cohort": by_cohort,
        "oracle": cmp,
    }
