"""Altair charts for the model notebooks, cards and MLflow runs: pure functions of frames.

Reliability diagram, lift by decile, SHAP summary (beeswarm-style strip plot and
global importance bars) and Qini curves. Each function takes the frame an
evaluation function returns and gives back an ``alt.Chart`` (or layered chart).
"""

from __future__ import annotations

import logging
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def reliability_chart(
    reliability: pd.DataFrame, *, title: str = "Reliability diagram"
) -> alt.LayerChart:
    """Observed rate against mean prediction per bin, with the diagonal.

    Args:
        reliability: From :func:`workbench.models.evaluation.reliability_table` (one model)
            or :func:`~workbench.models.evaluation.evaluate_scores` (``model`` column).
    """
    data = reliability.copy()
    if "model" not in data.columns:
        data["model"] = "model"
    top = (
        float(max(data["mean_predicted"].max(), data["observed_rate"].max(), 0.05))
        if len(data)
        else 1.0
    )
    top = min(1.0, top * 1.1)
    diag = (
        alt.Chart(pd.DataFrame({"x": [0.0, top], "y": [0.0, top]}))
        .mark_line(strokeDash=[4, 4], color="gray")
        .encode(x="x:Q", y="y:Q")
    )
    points = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "mean_predicted:Q",
                title="mean predicted probability",
                scale=alt.Scale(domain=[0, top]),
            ),
            y=alt.Y("observed_rate:Q", title="observed rate", scale=alt.Scale(domain=[0, top])),
            color=alt.Color("model:N", title=None),
            size=alt.Size("rows:Q", legend=None, scale=alt.Scale(range=[20, 300])),
            tooltip=[
                "model",
                "bin",
                "rows",
                alt.Tooltip("mean_predicted:Q", format=".3f"),
                alt.Tooltip("observed_rate:Q", format=".3f"),
            ],
        )
    )
    return alt.layer(diag, points, title=title).properties(width=360, height=320)


def lift_chart(lift: pd.DataFrame, *, title: str = "Lift by decile") -> alt.Chart:
    """Outcome rate relative to the average, per score decile (1 = highest scores)."""
    data = lift.copy()
    if "model" not in data.columns:
        data["model"] = "model"
    return (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=alt.X("decile:O", title="score decile (1 = highest)"),
            y=alt.Y("lift:Q", title="lift (rate / average rate)"),
            xOffset="model:N",
            color=alt.Color("model:N", title=None),
            tooltip=[
                "model",
                "decile",
                "rows",
                "positives",
                alt.Tooltip("rate:Q", format=".3f"),
                alt.Tooltip("lift:Q", format=".2f"),
            ],
        )
        .properties(width=420, height=260)
    )


def importance_chart(
    importance: pd.DataFrame, *, top: int = 15, title: str = "Global importance (mean |SHAP|)"
) -> alt.Chart:
    """Bars of mean absolute SHAP value per feature (from ``explain.global_importance``)."""
    data = importance.head(top)
    return (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            y=alt.Y("feature:N", sort="-x", title=None),
            x=alt.X("mean_abs_shap:Q", title="mean |SHAP| (log-odds)"),
            tooltip=[
                "feature",
                alt.Tooltip("mean_abs_shap:Q", format=".4f"),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
        .properties(width=360, height=max(120, 18 * len(data)))
    )


def shap_summary_chart(
    contrib: pd.DataFrame,
    values: pd.DataFrame,
    *,
    top: int = 12,
    max_points: int = 1500,
    seed: int = 0,
    title: str = "SHAP summary",
) -> alt.Chart:
    """A beeswarm-style summary: one strip per feature (most important on top), each dot a
    row at its SHAP value, coloured by the feature's value (rank within the feature).

    Args:
        contrib: From :func:`workbench.models.explain.contributions`.
        values: The explained rows' feature values (same index).
    """
    from workbench.models.explain import global_importance

    imp = global_importance(contrib)
    feats = list(imp["feature"].head(top))
    sample = (
        contrib.sample(n=min(max_points, len(contrib)), random_state=seed)
        if len(contrib)
        else contrib
    )
    rows = []
    rng = np.random.default_rng(seed)
    for f in feats:
        v = (
            values.loc[sample.index, f]
            if f in values.columns
            else pd.Series(np.nan, index=sample.index)
        )
        num = pd.to_numeric(v, errors="coerce")
        level = num.rank(pct=True) if num.notna().any() else pd.Series(np.nan, index=v.index)
        rows.append(
            pd.DataFrame(
                {
                    "feature": f,
                    "shap": sample[f].to_numpy(),
                    "value_level": level.to_numpy(),
                    "value": v.astype(str).to_numpy(),
                    "jitter": rng.normal(0, 1, len(sample)),
                }
            )
        )
    data = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame({"feature": [], "shap": [], "value_level": [], "value": [], "jitter": []})
    )
    return (
        alt.Chart(data, title=title)
        .mark_circle(size=12, opacity=0.6)
        .encode(
            y=alt.Y("feature:N", sort=feats, title=None),
            yOffset=alt.YOffset("jitter:Q"),
            x=alt.X("shap:Q", title="SHAP value (impact on log-odds)"),
            color=alt.Color(
                "value_level:Q",
                title="feature value (rank)",
                scale=alt.Scale(scheme="redblue", reverse=True),
            ),
            tooltip=["feature", "value", alt.Tooltip("shap:Q", format=".3f")],
        )
        .properties(width=420, height=28 * max(len(feats), 1))
    )


def qini_chart(curves: pd.DataFrame, *, title: str = "Qini curve") -> alt.LayerChart:
    """Qini curves (``fraction``, ``qini``, ``model``) with each model's random line.

    Args:
        curves: Rows from :func:`workbench.models.uplift.qini_curve` with a ``model`` column
            (e.g. the uplift model and the oracle).
    """
    data = curves.copy()
    if "model" not in data.columns:
        data["model"] = "model"
    # thin long curves for the browser: at most ~400 points per model
    parts = []
    for _, g in data.groupby("model", sort=False):
        step = max(1, len(g) // 400)
        parts.append(pd.concat([g.iloc[::step], g.iloc[[-1]]]).drop_duplicates("k"))
    data = pd.concat(parts, ignore_index=True) if parts else data
    lines = (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X(
                "fraction:Q", title="share of accounts targeted (highest predicted uplift first)"
            ),
            y=alt.Y("qini:Q", title="churners prevented (Qini)"),
            color=alt.Color("model:N", title=None),
        )
    )
    random = (
        alt.Chart(data)
        .mark_line(strokeDash=[4, 4])
        .encode(
            x="fraction:Q", y="random:Q", color=alt.Color("model:N", title=None), detail="model:N"
        )
    )
    return alt.layer(lines, random, title=title).properties(width=420, height=300)


def save_chart(chart: alt.TopLevelMixin, path: Path, *, png: bool = True) -> list[Path]:
    """Write ``<path>.html`` (always) and ``<path>.png`` (when vl-convert is available).

    Returns:
        The files written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    html = path.with_suffix(".html")
    chart.save(str(html))
    out.append(html)
    if png:
        try:
            p = path.with_suffix(".png")
            chart.save(str(p), format="png", scale_factor=1.5)
            out.append(p)
        except Exception as exc:  # noqa: BLE001 - PNG is a convenience; HTML is always written
            log.warning("PNG export of %s failed (%s); HTML only", path.name, exc)
    return out
