"""Calibration of predicted probabilities over time, and performance before labels arrive.

A model's probabilities are *calibrated* when, among rows scored ``p``, a share ``p``
turns out positive. This module measures that per period (Brier score, expected
calibration error, log loss, reliability tables and charts) and, for recent periods
whose labels have not matured yet, estimates the performance to expect if the model
is still calibrated (:func:`expected_performance`).

Label maturity: a label is known only once its horizon has passed (a 90-day churn
label for a score made on 1 May matures on 30 July). The caller passes labels that
have not matured as null (``None``/``NaN``/``pd.NA``), never as 0. Every function
here counts all rows in ``n`` and ``mean_p`` but computes label-based metrics
(``rate``, ``brier``, ``ece``, ``log_loss``) on the labelled rows only; a period with
no labelled row gets NaN there. Compare ``mean_p`` of such a period with
:func:`expected_performance` of its scores to see what to expect.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import xlogy

PERIODS = {"day": "D", "week": "W", "month": "M", "quarter": "Q", "year": "Y"}
"""Friendly period names -> pandas period aliases (any pandas alias is accepted too)."""
EPS = 1e-15
"""Probabilities are clipped to [EPS, 1 - EPS] in the log loss (as scikit-learn does)."""
BY_PERIOD_COLUMNS = ["period", "n", "labelled", "mean_p", "rate", "brier", "ece", "log_loss"]


# --- metrics --------------------------------------------------------------------------------


def _check_probabilities(p: np.ndarray, name: str) -> None:
    finite = p[~np.isnan(p)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(
            f"{name} must hold probabilities in [0, 1] (found {finite.min():.3g} to "
            f"{finite.max():.3g}); pass the model's predicted probability, not a raw score"
        )


def _labels(values: pd.Series, name: str) -> np.ndarray:
    """Labels as floats: 0.0/1.0, NaN where not matured; raises on anything else."""
    try:
        y = values.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"label column {name!r} must be 0/1 (or null while the label has not matured)"
        ) from exc
    if (~np.isnan(y) & (y != 0) & (y != 1)).any():
        raise ValueError(
            f"label column {name!r} must be 0/1 (or null while the label has not matured)"
        )
    return y


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability: 0 .. bins-1 (1.0 falls in the last bin)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    return np.minimum((p * bins).astype(int), bins - 1)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, *, bins: int = 10) -> float:
    """ECE: sum over equal-width bins of ``share of rows × |mean p - positive rate|``.

    Args:
        p: Probabilities of labelled rows.
        y: Their 0/1 labels.
        bins: Number of equal-width bins on [0, 1].

    Returns:
        The ECE, NaN when there are no rows.
    """
    if len(p) == 0:
        return float("nan")
    idx = _bin_index(p, bins)
    n = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    return float(np.abs(sum_p - sum_y).sum() / n.sum())


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    if len(p) == 0:
        return float("nan")
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")


# --- per period -----------------------------------------------------------------------------


def _period_start(at: pd.Series, period: str) -> pd.Series:
    """Start of each timestamp's period; keeps UTC when the input is tz-aware."""
    alias = PERIODS.get(period, period)
    times = pd.to_datetime(at)
    tz = getattr(times.dt, "tz", None)
    if tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    try:
        starts = times.dt.to_period(alias).dt.start_time
    except ValueError as exc:
        raise ValueError(
            f"unknown period {period!r}: use one of {sorted(PERIODS)} or a pandas period alias"
        ) from exc
    return starts.dt.tz_localize("UTC") if tz is not None else starts


def calibration_by_period(
    frame: pd.DataFrame,
    *,
    period: str = "month",
    prob: str = "p",
    label: str = "y",
    at: str = "as_of",
    bins: int = 10,
) -> pd.DataFrame:
    """Calibration metrics of the scores made in each period.

    Args:
        frame: One row per scored entity and time: ``at`` (when it was scored), ``prob``
            (predicted probability) and ``label`` (0/1, null while not matured).
        period: "day", "week", "month", "quarter", "year" or a pandas period alias.
        prob: Probability column.
        label: Label column.
        at: Timestamp column.
        bins: Equal-width bins of the ECE.

    Returns:
        One row per period, oldest first: ``period`` (Timestamp of its start), ``n``
        (rows), ``labelled`` (rows whose label has matured), ``mean_p`` (all rows),
        ``rate`` (positive share of labelled rows), ``brier``, ``ece``, ``log_loss``
        (labelled rows; NaN where no label has matured yet).
    """
    missing = [c for c in (prob, label, at) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"columns {missing} are not in the frame (it has {list(frame.columns)[:20]}); "
            "pass prob=, label= and at= with the right names"
        )
    p = pd.to_numeric(frame[prob], errors="coerce").astype("float64").to_numpy()
    _check_probabilities(p, prob)
    y = _labels(frame[label], label)
    work = pd.DataFrame({"period": _period_start(frame[at], period), "p": p, "y": y})
    work = work[work["period"].notna() & work["p"].notna()]
    rows = []
    for start, group in work.groupby("period", sort=True):
        done = group[group["y"].notna()]
        pl, yl = done["p"].to_numpy(), done["y"].to_numpy()
        rows.append(
            {
                "period": start,
                "n": len(group),
                "labelled": len(done),
                "mean_p": float(group["p"].mean()),
                "rate": float(yl.mean()) if len(yl) else float("nan"),
                "brier": _brier(pl, yl),
                "ece": expected_calibration_error(pl, yl, bins=bins),
                "log_loss": _log_loss(pl, yl),
            }
        )
    out = pd.DataFrame(rows, columns=BY_PERIOD_COLUMNS)
    return out.astype({"n": "int64", "labelled": "int64"})


def reliability_table(
    frame: pd.DataFrame, *, prob: str = "p", label: str = "y", bins: int = 10
) -> pd.DataFrame:
    """Mean predicted probability against the observed positive rate, per probability bin.

    Args:
        frame: Rows with ``prob`` and ``label`` (rows with a null label are ignored).
        prob: Probability column.
        label: Label column (0/1, null while not matured).
        bins: Number of equal-width bins on [0, 1].

    Returns:
        One row per non-empty bin: ``bin`` (0 .. bins-1), ``lo``/``hi`` (bin edges),
        ``mean_p``, ``rate`` (positive share) and ``n`` (labelled rows).
    """
    p = pd.to_numeric(frame[prob], errors="coerce").astype("float64").to_numpy()
    _check_probabilities(p, prob)
    y = _labels(frame[label], label)
    keep = ~np.isnan(p) & ~np.isnan(y)
    p, y = p[keep], y[keep]
    idx = _bin_index(p, bins)
    table = (
        pd.DataFrame({"bin": idx, "p": p, "y": y})
        .groupby("bin")
        .agg(mean_p=("p", "mean"), rate=("y", "mean"), n=("y", "size"))
        .reset_index()
    )
    table.insert(1, "lo", table["bin"] / bins)
    table.insert(2, "hi", (table["bin"] + 1) / bins)
    return table.astype({"bin": "int64", "n": "int64"})


# --- charts -------------------------------------------------------------------------------


def reliability_chart(
    frame: pd.DataFrame,
    *,
    prob: str = "p",
    label: str = "y",
    bins: int = 10,
    period: str | None = None,
    at: str = "as_of",
    columns: int = 4,
) -> alt.FacetChart | alt.LayerChart:
    """Reliability diagram (observed rate against mean probability) with the diagonal.

    Args:
        frame: Rows with ``prob``, ``label`` and, when ``period`` is set, ``at``.
        prob: Probability column.
        label: Label column (null while not matured; those rows are left out).
        bins: Equal-width probability bins.
        period: When set ("month", ...), one small diagram per period.
        at: Timestamp column used with ``period``.
        columns: Diagrams per row when faceted.

    Returns:
        An Altair chart; points are sized by the number of labelled rows in the bin.
    """
    if period is None:
        data = reliability_table(frame, prob=prob, label=label, bins=bins)
    else:
        starts = _period_start(frame[at], period)
        parts = []
        for start, group in frame.groupby(starts.to_numpy(), sort=True):
            part = reliability_table(group, prob=prob, label=label, bins=bins)
            parts.append(part.assign(period=pd.Timestamp(start).strftime("%Y-%m-%d")))
        data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if data.empty:
        raise ValueError("no labelled rows to draw; labels may not have matured yet")
    axis = alt.Scale(domain=[0, 1])
    base = alt.Chart(data)
    diagonal = base.mark_rule(color="gray", strokeDash=[4, 4]).encode(
        x=alt.datum(0, scale=axis), y=alt.datum(0, scale=axis), x2=alt.datum(1), y2=alt.datum(1)
    )
    curve = base.mark_line(point=False).encode(
        x=alt.X("mean_p:Q", title="mean predicted probability", scale=axis),
        y=alt.Y("rate:Q", title="observed positive rate", scale=axis),
    )
    points = base.mark_circle().encode(
        x="mean_p:Q",
        y="rate:Q",
        size=alt.Size("n:Q", title="labelled rows"),
        tooltip=["bin:O", "lo:Q", "hi:Q", "mean_p:Q", "rate:Q", "n:Q"],
    )
    layered = alt.layer(diagonal, curve, points).properties(width=180, height=180)
    if period is None:
        return layered.properties(title="Reliability diagram", width=300, height=300)
    return layered.facet(facet=alt.Facet("period:N", title=None), columns=columns).properties(
        title=f"Reliability by {period}"
    )


def calibration_chart(
    by_period: pd.DataFrame, *, metrics: tuple[str, ...] = ("brier", "ece")
) -> alt.Chart:
    """Calibration metrics over time, from :func:`calibration_by_period`.

    Args:
        by_period: Output of :func:`calibration_by_period`.
        metrics: Which of ``brier``, ``ece``, ``log_loss`` (and ``mean_p``, ``rate``) to draw.

    Returns:
        A line chart with one line per metric; periods without matured labels are gaps.
    """
    unknown = [m for m in metrics if m not in by_period.columns]
    if unknown:
        raise ValueError(f"metrics {unknown} are not columns of the calibration table")
    long = by_period.melt(
        id_vars=["period", "n", "labelled"], value_vars=list(metrics), var_name="metric"
    )
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("period:T", title=None),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("metric:N", title=None),
            tooltip=["period:T", "metric:N", alt.Tooltip("value:Q", format=".4f"), "n", "labelled"],
        )
        .properties(title="Calibration over time", width=520, height=220)
    )


# --- before labels arrive -------------------------------------------------------------------


def expected_auc(p: ArrayLike) -> float:
    """AUC expected if labels were drawn Bernoulli(p) and ranked by p itself.

    Each pair ``(i, j)``, ``i != j``, is a (positive, negative) pair with weight
    ``p_i (1 - p_j)``; it is ranked right when ``p_i > p_j`` and counts half when
    ``p_i == p_j``. So::

        AUC = [Σ_i p_i Σ_{j: p_j < p_i} (1 - p_j) + ½ Σ_{i≠j, p_i = p_j} p_i (1 - p_j)]
              / [Σ_i p_i · Σ_j (1 - p_j) - Σ_i p_i (1 - p_i)]

    — the probability that a random positive outranks a random negative, with
    positives and negatives weighted by how likely each row is to be one (the ratio of
    the expected concordant pairs to the expected positive × negative pairs; it is the
    expectation of the realised AUC up to O(1/n)). Grouping equal probabilities and
    cumulating ``1 - p`` over the sorted groups makes it O(n log n).

    Args:
        p: Calibrated probabilities (NaN ignored).

    Returns:
        The expected AUC; NaN with fewer than two rows or when every p is 0 or every p is 1.
    """
    p = np.asarray(p, dtype="float64")
    p = p[~np.isnan(p)]
    _check_probabilities(p, "p")
    if len(p) < 2:
        return float("nan")
    values, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=p, minlength=len(values))
    neg = np.bincount(inverse, weights=1 - p, minlength=len(values))
    self_pairs = np.bincount(inverse, weights=p * (1 - p), minlength=len(values))
    neg_below = np.cumsum(neg) - neg
    concordant = float(np.dot(pos, neg_below) + 0.5 * (pos * neg - self_pairs).sum())
    pairs = float(pos.sum() * neg.sum() - self_pairs.sum())
    return concordant / pairs if pairs > 0 else float("nan")


def expected_performance(p: ArrayLike) -> dict[str, float]:
    """Performance to expect from calibrated probabilities before their labels arrive.

    If the model is calibrated, each row's label is Bernoulli(p), so:

    * expected positive rate = mean(p);
    * expected Brier score = mean(p (1 - p)) (the Brier of the true probabilities);
    * expected log loss = mean of the binary entropy ``-(p log p + (1-p) log(1-p))``;
    * expected AUC: :func:`expected_auc`.

    A realised metric well off these (once labels mature), or a ``mean_p`` far from the
    labelled rate, means the model is no longer calibrated.

    Args:
        p: Predicted probabilities of one period (NaN ignored).

    Returns:
        ``n``, ``positive_rate``, ``brier``, ``log_loss``, ``auc``.
    """
    p = np.asarray(p, dtype="float64")
    p = p[~np.isnan(p)]
    _check_probabilities(p, "p")
    if len(p) == 0:
        nan = float("nan")
        return {"n": 0, "positive_rate": nan, "brier": nan, "log_loss": nan, "auc": nan}
    entropy = -(xlogy(p, p) + xlogy(1 - p, 1 - p))
    return {
        "n": len(p),
        "positive_rate": float(p.mean()),
        "brier": float(np.mean(p * (1 - p))),
        "log_loss": float(entropy.mean()),
        "auc": expected_auc(p),
    }
