"""Revenue forecasting: statsforecast models, an ensemble, conformal quantiles, reconciliation.

Everything works on Nixtla's tidy long format: ``unique_id`` (series), ``ds`` (month
start timestamps) and ``y`` (float, e.g. MRR in reporting-currency major units). The
engine is a thin layer over three well-kept libraries, each reached only from this
module:

* ``statsforecast`` fits the models (AutoETS, AutoARIMA, AutoTheta, SeasonalNaive, ...)
  and runs the rolling-origin backtest (``cutoff`` column).
* ``hierarchicalforecast`` builds a total/segment hierarchy (``aggregate``) and
  reconciles forecasts so that segments add up to the total (MinTrace, BottomUp).
* ``utilsforecast`` computes the metrics (MAE, MAPE, sMAPE, MASE, pinball, coverage).

What this module adds on top:

* an ``Ensemble`` column (median, mean or trimmed mean of member models, or a blend of a
  global LightGBM model with them, :mod:`workbench.forecast_global`) and a ``Forecast``
  column (the ensemble, or the model each series did best with in the backtest);
* prediction intervals and quantiles calibrated on the backtest residuals (split
  conformal, residuals scaled per series and pooled across the panel per horizon
  step), so that an 80 % interval covers about 80 % of outcomes;
* backtest metric tables reported against seasonal naive.

Typical use::

    fc = RevenueForecaster(h=12).fit(df)
    forecast = fc.predict()  # Forecast, Forecast-lo-80, ..., Forecast-p5, Forecast-p50, ...
    fc.summary_  # backtest metrics vs SeasonalNaive
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

ID, DS, Y, CUTOFF = "unique_id", "ds", "y", "cutoff"
ENSEMBLE = "Ensemble"
FORECAST = "Forecast"
BASELINE = "SeasonalNaive"
DEFAULT_MODELS: tuple[str, ...] = ("AutoETS", "AutoARIMA", "AutoTheta", "SeasonalNaive")
RECONCILERS = ("bottom_up", "ols", "wls_struct", "mint_shrink")
# The configuration chosen on the rolling backtest of the 1,428 monthly M3 series
# (benchmarks/bench_m3.py; selected on each series' training part only):
# ``RevenueForecaster(**M3_ENSEMBLE)`` forecasts with it. Slower than the defaults
# (AutoETS is fitted twice), so not the product default.
M3_ENSEMBLE: dict[str, Any] = {
    "models": (
        "AutoETS",
        "DynamicOptimizedTheta",
        "AutoETSDamped",
        "MFLES",
        "SeasonalExponentialSmoothingOptimized",
        "SeasonalNaive",
    ),
    "ensemble": "trimmed",
    "ensemble_members": (
        "AutoETS",
        "DynamicOptimizedTheta",
        "AutoETSDamped",
        "MFLES",
        "SeasonalExponentialSmoothingOptimized",
    ),
}

# The configuration chosen on the same M3 backtest once the global LightGBM model
# (workbench.forecast_global) and BaggedETS (workbench.forecast_bagged) joined the pool:
# 0.4 x the global model + 0.6 x the median of BaggedETS, DynamicOptimizedTheta, the damped
# AutoETS and seasonal exponential smoothing. Opt-in and slow: the global model is trained
# once per backtest window and once more (about 380 s for the 1,428 M3 series on one
# thread, 3 seeds) and BaggedETS fits AutoETS 20 times per series and window.
M3_GLOBAL: dict[str, Any] = {
    "models": (
        "BaggedETS",
        "DynamicOptimizedTheta",
        "AutoETSDamped",
        "SeasonalExponentialSmoothingOptimized",
        "SeasonalNaive",
        "GlobalLightGBM",
    ),
    "ensemble": "blend",
    "ensemble_members": (
        "BaggedETS",
        "DynamicOptimizedTheta",
        "AutoETSDamped",
        "SeasonalExponentialSmoothingOptimized",
    ),
    "blend_base": "median",
    "blend_weight": 0.4,
}
# The configuration M3_GLOBAL was before BaggedETS joined (session 15): the trimmed mean of
# four statistical members and the global model (docs/forecasting.md).
M3_GLOBAL_TRIMMED: dict[str, Any] = {
    "models": (
        "AutoETS",
        "DynamicOptimizedTheta",
        "AutoETSDamped",
        "SeasonalExponentialSmoothingOptimized",
        "SeasonalNaive",
        "GlobalLightGBM",
    ),
    "ensemble": "trimmed",
    "ensemble_members": (
        "AutoETS",
        "DynamicOptimizedTheta",
        "AutoETSDamped",
        "SeasonalExponentialSmoothingOptimized",
        "GlobalLightGBM",
    ),
}
# The blend recipe: w x GlobalLightGBM + (1 - w) x the M3_ENSEMBLE trimmed mean, with the
# weight the engine's rule picks on the M3 backtest (0.4; blend_weight=None re-chooses it
# on your own backtest). On M3 it is the runner-up to M3_GLOBAL by backtest score
# (docs/forecasting.md), not the benchmark's choice.
M3_BLEND: dict[str, Any] = {
    "models": (*M3_ENSEMBLE["models"], "GlobalLightGBM"),
    "ensemble": "blend",
    "ensemble_members": M3_ENSEMBLE["ensemble_members"],
    "blend_base": "trimmed",
    "blend_weight": 0.4,
}

Reconciler = Literal["bottom_up", "ols", "wls_struct", "mint_shrink"]


# ---------------------------------------------------------------------------
# statsforecast adapter
# ---------------------------------------------------------------------------


def make_model(name: str, *, season_length: int = 12) -> Any:
    """Build one statsforecast model from its class name.

    Args:
        name: ``AutoETS``, ``AutoARIMA``, ``AutoTheta``, ``AutoCES``, ``SeasonalNaive``,
            ``DynamicOptimizedTheta`` (or ``Theta``, ``OptimizedTheta``, ``DynamicTheta``),
            ``Naive``, ``HistoricAverage``, or for intermittent series (many zero months)
            ``CrostonOptimized``, ``ADIDA`` or ``IMAPA``. Also ``MFLES`` (gradient-boosted
            trend/seasonality/level smoothing), ``SeasonalExponentialSmoothingOptimized``
            (seasonal level, no trend) and ``AutoETSDamped`` (AutoETS restricted to
            damped-trend models); with ``AutoETS``, ``DynamicOptimizedTheta`` and a trimmed
            mean these make the ensemble chosen on the M3 monthly backtest
            (:data:`M3_ENSEMBLE`). ``BaggedETS``: AutoETS averaged over 20 bootstrapped
            copies of the series (:mod:`workbench.forecast_bagged`; 20 times AutoETS's cost).
        season_length: Seasonal period (12 for monthly data).

    Returns:
        A statsforecast model whose alias (and so its column name) is ``name``.
    """
    from statsforecast import models as sf_models

    seasonal = {
        "AutoETS",
        "AutoARIMA",
        "AutoTheta",
        "AutoCES",
        "SeasonalNaive",
        "DynamicOptimizedTheta",
        "Theta",
        "OptimizedTheta",
        "DynamicTheta",
        "MFLES",
        "SeasonalExponentialSmoothingOptimized",
    }
    plain = {"Naive", "HistoricAverage", "CrostonOptimized", "ADIDA", "IMAPA"}
    if name in seasonal:
        return getattr(sf_models, name)(season_length=season_length, alias=name)
    if name == "AutoETSDamped":
        return sf_models.AutoETS(season_length=season_length, damped=True, alias=name)
    if name == "BaggedETS":
        from workbench.forecast_bagged import BaggedETS

        return BaggedETS(season_length=season_length, alias=name)
    if name in plain:
        return getattr(sf_models, name)(alias=name)
    known = sorted(seasonal | plain | {"AutoETSDamped", "BaggedETS"})
    raise ValueError(f"unknown model {name!r}; use one of {known}")


def _model_name(model: Any) -> str:
    return model if isinstance(model, str) else str(getattr(model, "alias", repr(model)))


def _statsforecast(models: Sequence[Any], *, season_length: int, freq: str, n_jobs: int) -> Any:
    from statsforecast import StatsForecast

    built = [
        make_model(m, season_length=season_length) if isinstance(m, str) else m for m in models
    ]
    return StatsForecast(models=built, freq=freq, n_jobs=n_jobs)


# ---------------------------------------------------------------------------
# Input checks and time zone handling
# ---------------------------------------------------------------------------


def _prepare(df: pd.DataFrame, *, freq: str) -> tuple[pd.DataFrame, Any]:
    """Validate a long frame and return it sorted with naive ``ds`` plus the input ``ds`` dtype."""
    missing = {ID, DS, Y} - set(df.columns)
    if missing:
        raise ValueError(f"frame is missing columns {sorted(missing)}; needs unique_id, ds, y")
    out = df[[ID, DS, Y]].copy()
    ds_dtype = out[DS].dtype
    if isinstance(ds_dtype, pd.DatetimeTZDtype):
        out[DS] = out[DS].dt.tz_convert("UTC").dt.tz_localize(None)
    out[DS] = out[DS].astype("datetime64[ns]")
    out[Y] = out[Y].astype("float64")
    if out[Y].isna().any():
        raise ValueError("y has missing values; fill or drop them before forecasting")
    if out.duplicated([ID, DS]).any():
        raise ValueError("duplicate (unique_id, ds) rows")
    out = out.sort_values([ID, DS], kind="stable").reset_index(drop=True)
    offset = pd.tseries.frequencies.to_offset(freq)
    stats = out.groupby(ID, sort=False)[DS].agg(["min", "max", "size"])
    if isinstance(offset, pd.offsets.MonthBegin) and offset.n == 1:
        on_grid = (out[DS].dt.day == 1) & (out[DS] == out[DS].dt.normalize())
        expected = (
            (stats["max"].dt.year - stats["min"].dt.year) * 12
            + (stats["max"].dt.month - stats["min"].dt.month)
            + 1
        ).to_numpy()
    else:
        on_grid = out[DS].map(offset.is_on_offset)
        expected = stats.apply(
            lambda r: len(pd.date_range(r["min"], r["max"], freq=freq)), axis=1
        ).to_numpy()
    if not on_grid.all():
        raise ValueError(f"ds values must fall on the {freq!r} grid (month starts for 'MS')")
    gaps = stats.index[expected != stats["size"].to_numpy()]
    if len(gaps):
        raise ValueError(
            f"series with gaps in ds: {list(gaps[:5])}; fill them first "
            "(utilsforecast.preprocessing.fill_gaps)"
        )
    return out, ds_dtype


def _restore_ds(df: pd.DataFrame, ds_dtype: Any, cols: Sequence[str] = (DS,)) -> pd.DataFrame:
    """Give the time columns of ``df`` the input's dtype back (e.g. ``datetime64[us, UTC]``)."""
    out = df.copy()
    for col in cols:
        if col not in out.columns:
            continue
        if isinstance(ds_dtype, pd.DatetimeTZDtype):
            out[col] = out[col].dt.tz_localize("UTC").dt.tz_convert(ds_dtype.tz)
        out[col] = out[col].astype(ds_dtype)
    return out


# ---------------------------------------------------------------------------
# Ensembles and per-series selection
# ---------------------------------------------------------------------------


def combine(
    df: pd.DataFrame,
    *,
    members: Sequence[str],
    how: Literal["median", "mean", "trimmed"] = "median",
    name: str = ENSEMBLE,
) -> pd.DataFrame:
    """Add an ensemble column: the row-wise median, mean or trimmed mean of member columns.

    Args:
        df: Any frame with the member columns (forecasts, backtests, fitted values).
        members: Model columns to combine.
        how: ``median``, ``mean``, or ``trimmed`` (the mean after dropping the lowest and
            the highest member of each row; rows with fewer than three values take
            their mean). Missing member values are ignored.
        name: Name of the new column.

    Returns:
        A copy of ``df`` with column ``name`` added.
    """
    values = df[list(members)].to_numpy(dtype="float64")
    with np.errstate(all="ignore"):
        if how == "median":
            combined = np.nanmedian(values, axis=1)
        elif how == "mean":
            combined = np.nanmean(values, axis=1)
        elif how == "trimmed":
            combined = _trimmed_mean(values)
        else:
            raise ValueError(f"unknown ensemble {how!r}; use median, mean or trimmed")
    out = df.copy()
    out[name] = combined
    return out


def _trimmed_mean(values: np.ndarray) -> np.ndarray:
    """Row-wise mean without each row's lowest and highest value (NaNs ignored)."""
    n = (~np.isnan(values)).sum(axis=1)
    if len(values) == 0:
        return np.full(0, np.nan)
    ordered = np.sort(values, axis=1)  # NaN sorts last
    rows = np.arange(len(values))
    total = np.nansum(values, axis=1)
    low = ordered[:, 0]
    high = ordered[rows, np.maximum(n - 1, 0)]
    trimmed = (total - low - high) / np.where(n >= 3, n - 2, np.nan)
    plain = np.nanmean(values, axis=1)
    return np.where(n >= 3, trimmed, plain)


def select_models(
    metrics: pd.DataFrame, *, candidates: Sequence[str], metric: str = "mase"
) -> pd.Series:
    """Pick, per series, the candidate model with the lowest backtest metric.

    Args:
        metrics: Per-series metrics as returned by :func:`backtest_metrics`
            (columns ``unique_id``, ``metric`` and one per model).
        candidates: Model columns to choose from.
        metric: Which metric to minimise (e.g. ``mase``, ``mae``).

    Returns:
        Series indexed by ``unique_id`` with the chosen model name. Ties go to the
        earlier candidate; series whose metric is missing for every candidate get the
        first candidate.
    """
    rows = metrics[metrics["metric"] == metric].set_index(ID)[list(candidates)]
    filled = rows.astype("float64").fillna(np.inf)
    return filled.idxmin(axis=1).rename("model")


def apply_selection(
    df: pd.DataFrame, selection: pd.Series, *, name: str = FORECAST
) -> pd.DataFrame:
    """Add a column holding, for each series, the values of its selected model column."""
    out = df.copy()
    chosen = out[ID].map(selection)
    if chosen.isna().any():
        raise ValueError("selection is missing some series")
    values = np.full(len(out), np.nan)
    for model in chosen.unique():
        mask = (chosen == model).to_numpy()
        values[mask] = out.loc[mask, model].to_numpy(dtype="float64")
    out[name] = values
    return out


# ---------------------------------------------------------------------------
# Hierarchy and reconciliation (hierarchicalforecast adapter)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """A total/segment hierarchy as hierarchicalforecast describes it.

    Attributes:
        S: Summing matrix: column ``unique_id`` (every series, top first) plus one 0/1
            column per bottom-level series.
        tags: Level name (e.g. ``total/plan``) to the ``unique_id`` values at that level.
    """

    S: pd.DataFrame
    tags: dict[str, np.ndarray]

    @property
    def bottom_ids(self) -> list[str]:
        """The bottom-level series ids, in the summing matrix's column order."""
        return [c for c in self.S.columns if c != ID]

    @property
    def ids(self) -> list[str]:
        """Every series id, in the summing matrix's row order."""
        return self.S[ID].astype(str).tolist()


def build_hierarchy(
    df: pd.DataFrame,
    *,
    segments: Sequence[str],
    spec: Sequence[Sequence[str]] | None = None,
    total_id: str = "total",
) -> tuple[pd.DataFrame, Hierarchy]:
    """Aggregate a bottom-level frame into total, intermediate and bottom series.

    Args:
        df: Bottom-level frame with ``ds``, ``y`` and one column per segment (e.g.
            ``plan``, ``region``, ``channel``); one row per segment combination and month.
        segments: Segment columns, outermost first. By default the hierarchy nests
            them in this order: total, total/plan, total/plan/region, ...
        spec: Instead of nesting, the explicit levels as hierarchicalforecast's
            ``aggregate`` takes them (lists of column names; use ``"total"`` for the
            top), e.g. a grouped structure ``[["total"], ["total", "plan"],
            ["total", "region"], ["total", "plan", "region"]]``.
        total_id: The top series' id.

    Returns:
        ``(Y_df, hierarchy)``: the long frame (``unique_id``, ``ds``, ``y``) with every
        series of every level, ids joined with ``/`` (``total/pro/eu``), and the
        :class:`Hierarchy`.
    """
    from hierarchicalforecast.utils import aggregate

    if "total" in segments:
        raise ValueError("'total' is reserved for the top level; rename that segment column")
    frame, ds_dtype = _prepare_bottom(df, segments=segments)
    frame["total"] = total_id
    if spec is None:
        spec = [["total", *segments[:i]] for i in range(len(segments) + 1)]
    y_df, s_df, tags = aggregate(frame, [list(level) for level in spec])
    y_df = y_df.reset_index() if ID not in y_df.columns else y_df
    s_df = s_df.reset_index() if ID not in s_df.columns else s_df
    y_df[ID] = y_df[ID].astype(str)
    s_df[ID] = s_df[ID].astype(str)
    y_df = _restore_ds(y_df[[ID, DS, Y]], ds_dtype)
    return y_df.reset_index(drop=True), Hierarchy(S=s_df.reset_index(drop=True), tags=dict(tags))


def _prepare_bottom(df: pd.DataFrame, *, segments: Sequence[str]) -> tuple[pd.DataFrame, Any]:
    missing = {DS, Y, *segments} - set(df.columns)
    if missing:
        raise ValueError(f"bottom frame is missing columns {sorted(missing)}")
    frame = df[[*segments, DS, Y]].copy()
    ds_dtype = frame[DS].dtype
    if isinstance(ds_dtype, pd.DatetimeTZDtype):
        frame[DS] = frame[DS].dt.tz_convert("UTC").dt.tz_localize(None)
    frame[DS] = frame[DS].astype("datetime64[ns]")
    for col in segments:
        frame[col] = frame[col].astype(str)
    return frame, ds_dtype


def _reconciler(method: Reconciler) -> Any:
    from hierarchicalforecast.methods import BottomUp, MinTrace

    if method == "bottom_up":
        return BottomUp()
    if method in ("ols", "wls_struct", "mint_shrink"):
        return MinTrace(method=method)
    raise ValueError(f"unknown reconciler {method!r}; use one of {RECONCILERS}")


def reconcile(
    forecasts: pd.DataFrame,
    *,
    hierarchy: Hierarchy,
    models: Sequence[str],
    method: Reconciler = "mint_shrink",
    insample: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Make forecasts coherent: every aggregate equals the sum of its bottom series.

    Args:
        forecasts: ``unique_id``, ``ds`` and the model columns, for every series of the
            hierarchy; other columns (e.g. ``cutoff``, ``y``) are carried through.
        hierarchy: From :func:`build_hierarchy`.
        models: Point-forecast columns to reconcile.
        method: ``bottom_up``, or MinTrace's ``ols``, ``wls_struct`` or ``mint_shrink``.
        insample: For ``mint_shrink`` only: in-sample fitted values (``unique_id``,
            ``ds``, ``y`` and the model columns) to estimate the error covariance.

    Returns:
        ``forecasts`` with the model columns replaced by reconciled values.
    """
    from hierarchicalforecast.core import HierarchicalReconciliation

    if method == "mint_shrink" and insample is None:
        raise ValueError("mint_shrink needs in-sample fitted values (insample=...)")
    models = list(models)
    naive = forecasts[DS].dtype
    yhat = forecasts[[ID, DS, *models]].copy()
    if isinstance(naive, pd.DatetimeTZDtype):
        yhat[DS] = yhat[DS].dt.tz_convert("UTC").dt.tz_localize(None)
    y_df = None
    if method == "mint_shrink":
        y_df = insample[[ID, DS, Y, *models]].copy()
        if isinstance(y_df[DS].dtype, pd.DatetimeTZDtype):
            y_df[DS] = y_df[DS].dt.tz_convert("UTC").dt.tz_localize(None)
    order = {uid: i for i, uid in enumerate(hierarchy.ids)}
    yhat = yhat.assign(_o=yhat[ID].map(order)).sort_values(["_o", DS]).drop(columns="_o")
    hr = HierarchicalReconciliation(reconcilers=[_reconciler(method)])
    rec = hr.reconcile(Y_hat_df=yhat, S_df=hierarchy.S, tags=hierarchy.tags, Y_df=y_df)
    rec = rec.reset_index() if ID not in rec.columns else rec
    suffix = {
        "bottom_up": "BottomUp",
        "ols": "MinTrace_method-ols",
        "wls_struct": "MinTrace_method-wls_struct",
        "mint_shrink": "MinTrace_method-mint_shrink",
    }[method]
    rec = rec[[ID, DS, *[f"{m}/{suffix}" for m in models]]]
    rec.columns = [ID, DS, *models]
    rec[ID] = rec[ID].astype(str)
    if isinstance(naive, pd.DatetimeTZDtype):
        rec[DS] = rec[DS].dt.tz_localize("UTC").dt.tz_convert(naive.tz)
    rec[DS] = rec[DS].astype(naive)
    keep = forecasts.drop(columns=models)
    out = keep.merge(rec, on=[ID, DS], how="left", validate="many_to_one")
    if out[models].isna().any().any() and not forecasts[models].isna().any().any():
        raise ValueError(
            "reconciliation lost rows: do forecasts cover every series of the hierarchy?"
        )
    return out[forecasts.columns]


# ---------------------------------------------------------------------------
# Conformal calibration
# ---------------------------------------------------------------------------


def series_scale(train: pd.DataFrame) -> pd.Series:
    """Per-series scale of one-step changes: mean ``|y_t - y_(t-1)|`` over the training data.

    Used to put residuals of series of very different size on one footing before
    pooling them. A constant series falls back to its mean ``|y|``, and to 1.0 if that
    is 0 too.

    Args:
        train: ``unique_id``, ``ds``, ``y`` (sorted by ``ds`` within each series).

    Returns:
        Series indexed by ``unique_id``.
    """
    diffs = train.groupby(ID, sort=False)[Y].diff().abs()
    scale = diffs.groupby(train[ID], sort=False).mean()
    level = train[Y].abs().groupby(train[ID], sort=False).mean()
    scale = scale.where(scale > 0, level)
    return scale.where(scale > 0, 1.0).fillna(1.0).rename("scale")


def _conformal_rank(n: int, level: float) -> int | None:
    """Split-conformal order statistic: ``k = ceil((n + 1) * level)``, or None if ``k > n``."""
    k = math.ceil((n + 1) * level / 100 - 1e-9)
    return k if 0 < k <= n else None


def conformal_widths(
    residuals: pd.DataFrame,
    *,
    models: Sequence[str],
    levels: Sequence[float],
    h: int,
) -> pd.DataFrame:
    """Half-widths of symmetric conformal intervals, in units of each series' scale.

    For each model, horizon step and level this takes the split-conformal quantile of
    the pooled absolute scaled residuals ``|y - yhat| / scale`` of that step (all
    series, all backtest windows): the ``ceil((n + 1) * level)``-th smallest of the
    ``n`` residuals. Where a step has too few residuals for the widest level
    (fewer than about ``1 / (1 - level)``), residuals of every step are pooled after
    dividing by ``sqrt(step)`` and the width grows as ``sqrt(step)`` (a random-walk
    assumption), for every level of that step, so the intervals stay nested; if even
    that is too few, the largest residual is used and a warning is logged.

    Args:
        residuals: ``step`` (1-based horizon), ``scale`` and, per model, a column of
            absolute residuals named after the model.
        models: Model columns.
        levels: Interval levels in percent (e.g. 80, 90, 95).
        h: Horizon to produce widths for.

    Returns:
        Long frame with ``model``, ``step``, ``level``, ``width`` (scale units) and
        ``n`` (residuals used) and ``pooled`` (True where the sqrt fallback applied).
    """
    rows = []
    short: set[tuple[str, float, int]] = set()
    steps = residuals["step"].to_numpy()
    scale = residuals["scale"].to_numpy(dtype="float64")
    for model in models:
        scaled = residuals[model].to_numpy(dtype="float64") / scale
        ok = np.isfinite(scaled)
        by_step = {k: np.sort(scaled[ok & (steps == k)]) for k in range(1, h + 1)}
        all_steps = np.sort((scaled / np.sqrt(steps))[ok])
        top = max(levels) if len(levels) else 0
        for level in levels:
            for k in range(1, h + 1):
                values = by_step[k]
                rank = _conformal_rank(len(values), level)
                # one method per step for every level (the one the widest level allows), so
                # the intervals stay nested: 80 % inside 90 % inside 95 %
                pooled = _conformal_rank(len(values), top) is None
                if not pooled:
                    width = float(values[rank - 1])
                    n = len(values)
                else:
                    n = len(all_steps)
                    rank = _conformal_rank(n, level)
                    if rank is not None:
                        width = float(all_steps[rank - 1]) * math.sqrt(k)
                    elif n == 0:
                        width = math.nan
                    else:
                        short.add((model, float(level), n))
                        width = float(all_steps[-1]) * math.sqrt(k)
                rows.append((model, k, float(level), width, n, pooled))
    if short:
        logger.warning(
            "too few residuals for some intervals (model, level, n): %s; they will be too narrow",
            sorted(short),
        )
    return pd.DataFrame(rows, columns=["model", "step", "level", "width", "n", "pooled"])


def _residual_frame(
    cv: pd.DataFrame, *, models: Sequence[str], scales: pd.DataFrame
) -> pd.DataFrame:
    """Absolute residuals of backtest rows with their horizon step and series scale."""
    out = cv[[ID, DS, CUTOFF]].copy()
    out["step"] = _months_between(cv[CUTOFF], cv[DS])
    for m in models:
        out[m] = (cv[Y] - cv[m]).abs().to_numpy()
    key = pd.MultiIndex.from_frame(out[[ID, CUTOFF]])
    out["scale"] = scales.set_index([ID, CUTOFF])["scale"].reindex(key).to_numpy()
    return out


def _months_between(start: pd.Series, end: pd.Series) -> np.ndarray:
    s = pd.DatetimeIndex(start)
    e = pd.DatetimeIndex(end)
    return ((e.year - s.year) * 12 + (e.month - s.month)).to_numpy()


def interval_columns(model: str, levels: Sequence[float]) -> list[str]:
    """Column names of a model's intervals, statsforecast order (``M-lo-95, M-lo-80, M-hi-80, M-hi-95``)."""
    lv = sorted(levels)
    return [f"{model}-lo-{_fmt(v)}" for v in reversed(lv)] + [f"{model}-hi-{_fmt(v)}" for v in lv]


def quantile_column(model: str, q: float) -> str:
    """Name of a quantile column: ``Forecast-p5`` for ``q=0.05``."""
    return f"{model}-p{_fmt(q * 100)}"


def _fmt(value: float) -> str:
    return f"{round(value, 6):g}"


def _levels_for(levels: Sequence[float], quantiles: Sequence[float]) -> list[float]:
    needed = {float(v) for v in levels}
    needed |= {round(abs(2 * q - 1) * 100, 6) for q in quantiles if q != 0.5}
    return sorted(needed)


def add_intervals(
    df: pd.DataFrame,
    *,
    widths: pd.DataFrame,
    scale: pd.Series,
    step: np.ndarray,
    models: Sequence[str],
    levels: Sequence[float],
    quantiles: Sequence[float],
    nonnegative: bool = True,
) -> pd.DataFrame:
    """Add ``M-lo-L``/``M-hi-L`` and quantile columns ``M-pQ`` around each point forecast.

    Args:
        df: Frame with the model point-forecast columns.
        widths: From :func:`conformal_widths` (must cover the levels and quantiles).
        scale: Per-row series scale (aligned with ``df``).
        step: Per-row 1-based horizon step (aligned with ``df``).
        models: Point-forecast columns.
        levels: Interval levels in percent.
        quantiles: Quantile levels in (0, 1); 0.5 is the point forecast itself.
        nonnegative: Clip lower bounds and low quantiles at 0 where the point forecast
            is non-negative (MRR cannot go below zero; coverage of y >= 0 is unchanged).

    Returns:
        A copy of ``df`` with the interval and quantile columns added after each model.
    """
    out = df.copy()
    scale_arr = np.asarray(scale, dtype="float64")
    step_arr = np.asarray(step)
    lookup: dict[tuple[str, float], np.ndarray] = {}
    for (m, level), grp in widths.groupby(["model", "level"], sort=False):
        arr = np.full(int(max(grp["step"].max(), step_arr.max(initial=0))) + 1, np.nan)
        arr[grp["step"].to_numpy(dtype=int)] = grp["width"].to_numpy(dtype="float64")
        lookup[(str(m), float(level))] = arr
    new: dict[str, np.ndarray] = {}
    for m in models:
        point = out[m].to_numpy(dtype="float64")

        def half(level: float, m: str = m) -> np.ndarray:
            return lookup[(m, float(level))][step_arr] * scale_arr

        def lower(values: np.ndarray, point: np.ndarray = point) -> np.ndarray:
            if not nonnegative:
                return values
            return np.where(point >= 0, np.maximum(values, 0.0), values)

        for level in sorted(levels, reverse=True):
            new[f"{m}-lo-{_fmt(level)}"] = lower(point - half(level))
        for level in sorted(levels):
            new[f"{m}-hi-{_fmt(level)}"] = point + half(level)
        for q in sorted(quantiles):
            if q == 0.5:
                new[quantile_column(m, q)] = point
            elif q < 0.5:
                new[quantile_column(m, q)] = lower(point - half(round((1 - 2 * q) * 100, 6)))
            else:
                new[quantile_column(m, q)] = point + half(round((2 * q - 1) * 100, 6))
    extra = pd.DataFrame(new, index=out.index)
    out = pd.concat([out, extra], axis=1)
    ordered = [c for c in out.columns if c not in new]
    for m in models:
        pos = ordered.index(m) + 1
        cols = interval_columns(m, levels) + [quantile_column(m, q) for q in sorted(quantiles)]
        ordered[pos:pos] = cols
    return out[ordered]


# ---------------------------------------------------------------------------
# Metrics (utilsforecast)
# ---------------------------------------------------------------------------


def backtest_metrics(
    cv: pd.DataFrame,
    *,
    train: pd.DataFrame,
    models: Sequence[str],
    season_length: int = 12,
    levels: Sequence[float] = (),
    quantiles: Sequence[float] = (),
) -> pd.DataFrame:
    """Per-series accuracy of backtest (or test) forecasts, via ``utilsforecast``.

    Point metrics: ``mae``, ``mape`` (percent), ``smape`` (percent, 0-200 as in M3),
    ``mase`` (scaled by the in-sample seasonal-naive MAE at lag ``season_length``,
    using only data up to each cutoff). With ``levels``: ``coverage_L`` (share of
    actuals inside the L % interval). With ``quantiles``: ``pinball`` (mean quantile
    loss over the quantile columns) and ``scaled_pinball`` (divided by the same scale
    as MASE). Interval metrics use only rows where the intervals exist. Each value is
    averaged over cutoffs.

    Args:
        cv: ``unique_id``, ``ds``, ``y``, optional ``cutoff``, the model columns and,
            for interval metrics, ``M-lo-L``/``M-hi-L`` and ``M-pQ`` columns.
        train: The history (``unique_id``, ``ds``, ``y``) for the MASE scale.
        models: Model columns to score.
        season_length: Seasonal lag of the MASE scale.
        levels: Interval levels to compute coverage for.
        quantiles: Quantile levels whose ``M-pQ`` columns enter the pinball loss.

    Returns:
        Columns ``unique_id``, ``metric`` and one per model.
    """
    from utilsforecast import losses
    from utilsforecast.evaluation import evaluate

    models = list(models)
    frame = cv.copy()
    train = train[[ID, DS, Y]]
    if CUTOFF not in frame.columns:
        frame[CUTOFF] = train.groupby(ID)[DS].max().reindex(frame[ID]).to_numpy()
    point_cols = [ID, DS, CUTOFF, Y, *models]
    parts = [
        evaluate(
            frame[point_cols],
            metrics=[
                losses.mae,
                losses.mape,
                losses.smape,
                partial(losses.mase, seasonality=season_length),
            ],
            models=models,
            train_df=train,
        )
    ]
    for level in levels:
        cols = [c for m in models for c in (f"{m}-lo-{_fmt(level)}", f"{m}-hi-{_fmt(level)}")]
        sub = frame.dropna(subset=cols)
        if sub.empty:
            continue
        cov = losses.coverage(sub[[ID, CUTOFF, Y, *cols]], models=models, level=_fmt(level))
        parts.append(cov.assign(metric=f"coverage_{_fmt(level)}"))
    if quantiles:
        qs = sorted(quantiles)
        qcols = {m: [quantile_column(m, q) for q in qs] for m in models}
        flat = [c for cols in qcols.values() for c in cols]
        sub = frame.dropna(subset=flat)
        if not sub.empty:
            pin = losses.mqloss(sub[[ID, CUTOFF, Y, *flat]], models=qcols, quantiles=np.array(qs))
            parts.append(pin.assign(metric="pinball"))
            # Same scale as MASE (in-sample seasonal-naive MAE up to the cutoff), read
            # back from the point metrics instead of recomputing it: scale = MAE / MASE.
            point = parts[0]
            keys = [ID, CUTOFF]
            mae_ = point[point["metric"] == "mae"].set_index(keys)[models]
            mase_ = point[point["metric"] == "mase"].set_index(keys)[models]
            with np.errstate(all="ignore"):
                scale = (mae_ / mase_).replace([np.inf, 0.0], np.nan).max(axis=1)
            pin_idx = pin.set_index(keys)[models]
            spin = pin_idx.div(scale.reindex(pin_idx.index), axis=0).reset_index()
            parts.append(spin.assign(metric="scaled_pinball"))
    out = pd.concat(parts, ignore_index=True)
    out = out.groupby([ID, "metric"], sort=False)[models].mean().reset_index()
    scale = {"mape": 100.0, "smape": 200.0}
    for metric, factor in scale.items():
        mask = out["metric"] == metric
        out.loc[mask, models] = out.loc[mask, models] * factor
    return out


def summarize_metrics(per_series: pd.DataFrame, *, baseline: str = BASELINE) -> pd.DataFrame:
    """Average per-series metrics over series and set each model against the baseline.

    Args:
        per_series: From :func:`backtest_metrics` (``unique_id``, ``metric``, models).
        baseline: The reference model column (seasonal naive).

    Returns:
        One row per metric and model: ``metric``, ``model``, ``value`` (mean over
        series), ``baseline`` (the baseline's value) and ``relative`` (value / baseline;
        below 1 beats seasonal naive; empty for coverage, where nearer nominal is better).
    """
    models = [c for c in per_series.columns if c not in (ID, "metric")]
    means = per_series.groupby("metric", sort=False)[models].mean()
    if baseline not in means.columns:
        raise ValueError(f"baseline column {baseline!r} is missing from the metrics")
    long = means.reset_index().melt(id_vars="metric", var_name="model", value_name="value")
    long["baseline"] = long["metric"].map(means[baseline])
    relative = long["value"] / long["baseline"]
    long["relative"] = relative.where(~long["metric"].str.startswith("coverage"))
    return long


def downside(
    forecast: pd.DataFrame, *, model: str = FORECAST, confidence: float = 95
) -> pd.DataFrame:
    """The conservative planning value: MRR exceeded with probability ``confidence``.

    The P95 downside is the 5 % quantile (column ``Forecast-p5``).

    Args:
        forecast: From :meth:`RevenueForecaster.predict`.
        model: Which model's quantiles to read.
        confidence: Percent; needs the quantile ``1 - confidence / 100`` to be present.

    Returns:
        ``unique_id``, ``ds``, ``downside``.
    """
    col = quantile_column(model, 1 - confidence / 100)
    if col not in forecast.columns:
        raise ValueError(f"{col} is not in the forecast; add {1 - confidence / 100:g} to quantiles")
    return forecast[[ID, DS, col]].rename(columns={col: "downside"})


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


class RevenueForecaster:
    """Forecast monthly revenue series with quantiles, backtests and optional reconciliation.

    ``fit`` runs a rolling-origin backtest (statsforecast ``cross_validation``) of every
    model, adds the ensemble, measures accuracy against seasonal naive, picks the
    ``Forecast`` column (the ensemble, or per series the model with the lowest backtest
    ``selection_metric``), reconciles if a hierarchy is given, calibrates conformal
    intervals on the backtest residuals and forecasts ``h`` months from the end of
    the history. ``predict`` then returns the first ``h`` (or fewer) months.

    Args:
        models: statsforecast model names (see :func:`make_model`) or model instances, and
            optionally ``"GlobalLightGBM"`` (or a configured
            :class:`workbench.forecast_global.GlobalLightGBM`): one model trained across all
            series, refitted per backtest window on the data up to each cutoff; monthly
            data only. ``SeasonalNaive`` is added as the baseline if missing.
        season_length: Seasonal period (12 for months).
        freq: pandas frequency of ``ds`` (``MS``: month starts).
        h: Longest horizon to forecast and calibrate (months).
        levels: Interval levels in percent (columns ``M-lo-80``, ``M-hi-80``, ...).
        quantiles: Quantile levels (columns ``M-p5``, ``M-p50``, ``M-p95``, ...).
        n_windows: Backtest windows (cutoffs).
        step_size: Months between cutoffs; default ``h`` (non-overlapping windows).
        ensemble: ``median``, ``mean`` or ``trimmed`` (mean without the lowest and the
            highest member) of ``ensemble_members``; or ``blend``: ``w x GlobalLightGBM +
            (1 - w) x`` the ``blend_base`` combination of ``ensemble_members``.
        ensemble_members: Models in the ensemble; default every model but SeasonalNaive
            (and, for ``blend``, but the global model).
        blend_base: How ``blend`` combines the statistical members.
        blend_weight: The global model's share ``w`` in ``blend``; None chooses it on the
            backtest from :data:`workbench.forecast_global.BLEND_GRID` (0, 0.1, ..., 1) by
            the lowest sMAPE/SNaive + MASE/SNaive (means over series).
        choose: ``ensemble`` (``Forecast`` is the ensemble) or ``best`` (per series, the
            model or ensemble with the lowest backtest ``selection_metric``).
        selection_metric: Metric for ``choose="best"``.
        reconciler: Used when ``fit`` gets a hierarchy: ``bottom_up``, ``ols``,
            ``wls_struct`` or ``mint_shrink`` (needs in-sample fitted values, so it
            costs a little more).
        nonnegative: Clip lower bounds at 0 (see :func:`add_intervals`).
        n_jobs: Processes statsforecast uses.

    Attributes (after ``fit``):
        models_: Column names of the base models.
        columns_: Every point column in the outputs (models, ``Ensemble``, ``Forecast``).
        cv_: Backtest frame: ``unique_id``, ``ds``, ``cutoff``, ``y``, point columns
            (reconciled if a hierarchy was given) and intervals/quantiles calibrated
            only on residuals dated on or before each cutoff (so the first window has
            none).
        metrics_: Per-series backtest metrics (:func:`backtest_metrics`).
        summary_: Metrics averaged over series, relative to SeasonalNaive.
        selection_: Per-series chosen model (``Ensemble`` for every series with
            ``choose="ensemble"``).
        calibration_: Conformal widths per model, step and level (:func:`conformal_widths`).
        forecast_: The full-horizon forecast that ``predict`` slices.
        blend_weight_: The blend weight used (``ensemble="blend"`` only).
        blend_scores_: Backtest scores per weight when it was chosen there (else None).
        global_s_: Seconds spent training and predicting the global model (if any).
    """

    def __init__(
        self,
        *,
        models: Sequence[Any] = DEFAULT_MODELS,
        season_length: int = 12,
        freq: str = "MS",
        h: int = 12,
        levels: Sequence[float] = (80, 95),
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        n_windows: int = 3,
        step_size: int | None = None,
        ensemble: Literal["median", "mean", "trimmed", "blend"] = "median",
        ensemble_members: Sequence[str] | None = None,
        blend_base: Literal["median", "mean", "trimmed"] = "trimmed",
        blend_weight: float | None = None,
        choose: Literal["ensemble", "best"] = "ensemble",
        selection_metric: str = "mase",
        reconciler: Reconciler = "mint_shrink",
        nonnegative: bool = True,
        n_jobs: int = 2,
    ) -> None:
        self.models = tuple(models)
        self.season_length = season_length
        self.freq = freq
        self.h = h
        self.levels = tuple(levels)
        self.quantiles = tuple(quantiles)
        self.n_windows = n_windows
        self.step_size = step_size
        self.ensemble = ensemble
        self.ensemble_members = None if ensemble_members is None else tuple(ensemble_members)
        self.blend_base = blend_base
        self.blend_weight = blend_weight
        self.choose = choose
        self.selection_metric = selection_metric
        self.reconciler = reconciler
        self.nonnegative = nonnegative
        self.n_jobs = n_jobs

    # -- configuration helpers -------------------------------------------------

    def _base_models(self) -> list[Any]:
        models = list(self.models)
        if BASELINE not in [_model_name(m) for m in models]:
            models.append(BASELINE)
        return models

    def _global(self) -> Any:
        """The configured global model (unfitted, this engine's ``h``), or None."""
        from workbench.forecast_global import global_model, is_global

        found = [m for m in self.models if is_global(m)]
        if len(found) > 1:
            raise ValueError("at most one global model")
        if not found:
            return None
        return global_model(found[0], h=self.h, season_length=self.season_length)

    def _stat_models(self) -> list[Any]:
        from workbench.forecast_global import is_global

        return [m for m in self._base_models() if not is_global(m)]

    def _members(self, names: Sequence[str]) -> list[str]:
        glob = self._global()
        skip = {BASELINE} | (
            {glob.alias} if glob is not None and self.ensemble == "blend" else set()
        )
        if self.ensemble_members is not None:
            unknown = set(self.ensemble_members) - set(names)
            if unknown:
                raise ValueError(f"ensemble members {sorted(unknown)} are not among the models")
            return list(self.ensemble_members)
        members = [n for n in names if n not in skip]
        return members or [n for n in names if n not in skip - {BASELINE}]

    def _combine(self, df: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
        """Add the ``Ensemble`` column (``blend`` uses ``blend_weight_``)."""
        if self.ensemble != "blend":
            return combine(df, members=self._members(names), how=self.ensemble)
        from workbench.forecast_global import blend

        return blend(
            df,
            global_col=self._global().alias,
            members=self._members(names),
            how=self.blend_base,
            weight=self.blend_weight_,
        )

    def _check(self) -> None:
        if self.choose not in ("ensemble", "best"):
            raise ValueError("choose must be 'ensemble' or 'best'")
        if self.ensemble not in ("median", "mean", "trimmed", "blend"):
            raise ValueError("ensemble must be 'median', 'mean', 'trimmed' or 'blend'")
        glob = self._global()
        if self.ensemble == "blend":
            if glob is None:
                raise ValueError("ensemble='blend' needs the global model among the models")
            if self.blend_base not in ("median", "mean", "trimmed"):
                raise ValueError("blend_base must be 'median', 'mean' or 'trimmed'")
            if self.ensemble_members is not None and glob.alias in self.ensemble_members:
                raise ValueError("with ensemble='blend' the global model is not an ensemble member")
            if self.blend_weight is not None and not 0 <= self.blend_weight <= 1:
                raise ValueError(
                    "blend_weight must lie in [0, 1] (or None: chosen on the backtest)"
                )
        if glob is not None and self.freq != "MS":
            raise ValueError("the global model needs monthly data (freq='MS')")
        if self.n_windows < 1:
            raise ValueError("n_windows must be at least 1 (the backtest calibrates the intervals)")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        if any(not 0 < v < 100 for v in self.levels):
            raise ValueError("levels must lie strictly between 0 and 100")

    # -- public API ----------------------------------------------------------

    def cross_validation(
        self, df: pd.DataFrame, *, hierarchy: Hierarchy | None = None
    ) -> pd.DataFrame:
        """Rolling-origin backtest of the configured models on ``df``.

        Each cutoff's forecasts use only data up to that cutoff (statsforecast refits
        every window). Adds ``Ensemble``; reconciles per cutoff if ``hierarchy`` is
        given. No intervals (``fit`` adds them to ``cv_``).

        Args:
            df: ``unique_id``, ``ds``, ``y``.
            hierarchy: Optional, from :func:`build_hierarchy`.

        Returns:
            ``unique_id``, ``ds``, ``cutoff``, ``y``, the model columns and ``Ensemble``.
        """
        self._check()
        frame, ds_dtype = _prepare(df, freq=self.freq)
        cv, _ = self._cross_validation(frame, hierarchy=hierarchy)
        return _restore_ds(cv, ds_dtype, cols=(DS, CUTOFF))

    def _cross_validation(
        self,
        frame: pd.DataFrame,
        *,
        hierarchy: Hierarchy | None,
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        sf = _statsforecast(
            self._stat_models(),
            season_length=self.season_length,
            freq=self.freq,
            n_jobs=self.n_jobs,
        )
        need_fitted = hierarchy is not None and self.reconciler == "mint_shrink"
        cv = sf.cross_validation(
            h=self.h,
            df=frame,
            n_windows=self.n_windows,
            step_size=self.step_size or self.h,
            fitted=need_fitted,
        )
        cv = cv.reset_index() if ID not in cv.columns else cv
        fitted = None
        if need_fitted:
            fitted = sf.cross_validation_fitted_values()
            fitted = fitted.reset_index() if ID not in fitted.columns else fitted
        glob = self._global()
        if glob is not None:
            # The global model is refitted per window on every series cut at its cutoff.
            from workbench.forecast_global import global_backtest

            start = time.perf_counter()
            g_cv, g_fitted = global_backtest(frame, cv, glob, fitted=need_fitted)
            self.global_s_ = time.perf_counter() - start
            keys = [ID, DS, CUTOFF]
            cv = cv.merge(g_cv, on=keys, how="left", validate="one_to_one")
            if need_fitted:
                fitted = fitted.merge(g_fitted.drop(columns=Y), on=keys, how="left")
        names = [c for c in cv.columns if c not in (ID, DS, CUTOFF, Y)]
        if self.ensemble == "blend":
            self._choose_blend_weight(cv, frame, names)
        cv = self._combine(cv, names)
        if need_fitted:
            fitted = self._combine(fitted, names)
        return cv, fitted

    def _choose_blend_weight(self, cv: pd.DataFrame, frame: pd.DataFrame, names: list[str]) -> None:
        self.blend_weight_, self.blend_scores_ = self.blend_weight, None
        if self.blend_weight is None:
            from workbench.forecast_global import choose_blend_weight

            self.blend_weight_, self.blend_scores_ = choose_blend_weight(
                cv,
                train=frame,
                global_col=self._global().alias,
                members=self._members(names),
                how=self.blend_base,
                season_length=self.season_length,
            )
            logger.info(
                "blend weight of the global model chosen on the backtest: %g", self.blend_weight_
            )

    def fit(self, df: pd.DataFrame, *, hierarchy: Hierarchy | None = None) -> RevenueForecaster:
        """Backtest, select, calibrate and forecast ``h`` months ahead.

        Args:
            df: ``unique_id``, ``ds`` (month starts, naive or UTC), ``y`` (float); every
                series at least ``h + step_size * (n_windows - 1)`` plus a few months
                long, without gaps. With a hierarchy, every series of it (use
                :func:`build_hierarchy`).
            hierarchy: Reconcile forecasts so that segments add up to the total.

        Returns:
            self.
        """
        self._check()
        frame, ds_dtype = _prepare(df, freq=self.freq)
        if hierarchy is not None:
            missing = set(hierarchy.ids) - set(frame[ID].unique())
            if missing:
                raise ValueError(f"series of the hierarchy missing from df: {sorted(missing)[:5]}")
        self._ds_dtype = ds_dtype
        cv, cv_fitted = self._cross_validation(frame, hierarchy=hierarchy)
        base = [c for c in cv.columns if c not in (ID, DS, CUTOFF, Y, ENSEMBLE)]
        self.models_ = base
        candidates = [*base, ENSEMBLE]

        # Selection on the unreconciled backtest.
        if self.choose == "best":
            raw_metrics = backtest_metrics(
                cv, train=frame, models=candidates, season_length=self.season_length
            )
            self.selection_ = select_models(
                raw_metrics, candidates=candidates, metric=self.selection_metric
            )
        else:
            ids = frame[ID].unique()
            self.selection_ = pd.Series(ENSEMBLE, index=pd.Index(ids, name=ID), name="model")
        cv = apply_selection(cv, self.selection_)
        columns = [*candidates, FORECAST]
        self.columns_ = columns

        if hierarchy is not None:
            parts = []
            for cutoff, part in cv.groupby(CUTOFF, sort=True):
                insample = None
                if cv_fitted is not None:
                    insample = apply_selection(
                        cv_fitted[cv_fitted[CUTOFF] == cutoff], self.selection_
                    )
                parts.append(
                    reconcile(
                        part,
                        hierarchy=hierarchy,
                        models=columns,
                        method=self.reconciler,
                        insample=insample,
                    )
                )
            cv = pd.concat(parts, ignore_index=True)

        # Conformal calibration on every window; time-respecting intervals for cv_.
        # Windows are counted per series (series may end on different months).
        all_levels = _levels_for(self.levels, self.quantiles)
        window = cv.groupby(ID, sort=False)[CUTOFF].rank(method="dense").astype(int)
        cutoffs = cv.assign(_w=window).groupby(["_w", ID])[CUTOFF].first()
        scales = []
        for k in sorted(window.unique()):
            cut_k = cutoffs.loc[k]
            train = frame[frame[DS] <= frame[ID].map(cut_k)]
            sc = series_scale(train)
            scales.append(
                pd.DataFrame(
                    {
                        ID: sc.index,
                        CUTOFF: cut_k.reindex(sc.index).to_numpy(),
                        "scale": sc.to_numpy(),
                    }
                )
            )
        scales_df = pd.concat(scales, ignore_index=True)
        resid = _residual_frame(cv, models=columns, scales=scales_df)
        self.calibration_ = conformal_widths(resid, models=columns, levels=all_levels, h=self.h)
        cv = self._backtest_intervals(cv, resid, all_levels, window=window, cutoffs=cutoffs)
        self.cv_ = _restore_ds(cv, ds_dtype, cols=(DS, CUTOFF))

        scored = [*candidates] if self.choose == "best" else columns
        self.metrics_ = backtest_metrics(
            cv,
            train=frame,
            models=scored,
            season_length=self.season_length,
            levels=all_levels,
            quantiles=self.quantiles,
        )
        self.summary_ = summarize_metrics(self.metrics_)

        # Final forecast from the whole history.
        sf = _statsforecast(
            self._stat_models(),
            season_length=self.season_length,
            freq=self.freq,
            n_jobs=self.n_jobs,
        )
        need_fitted = hierarchy is not None and self.reconciler == "mint_shrink"
        fc = sf.forecast(h=self.h, df=frame, fitted=need_fitted)
        fc = fc.reset_index() if ID not in fc.columns else fc
        glob = self._global()
        if glob is not None:
            start = time.perf_counter()
            glob.fit(frame)
            fc = fc.merge(glob.predict(), on=[ID, DS], how="left", validate="one_to_one")
            self.global_s_ += time.perf_counter() - start
        fc = apply_selection(self._combine(fc, base), self.selection_)
        if hierarchy is not None:
            insample = None
            if need_fitted:
                fv = sf.forecast_fitted_values()
                fv = fv.reset_index() if ID not in fv.columns else fv
                if glob is not None:
                    g_fv = glob.fitted_values().drop(columns=Y)
                    fv = fv.merge(g_fv, on=[ID, DS], how="left", validate="one_to_one")
                insample = apply_selection(self._combine(fv, base), self.selection_)
            fc = reconcile(
                fc, hierarchy=hierarchy, models=columns, method=self.reconciler, insample=insample
            )
        last = frame.groupby(ID)[DS].max()
        step = _months_between(fc[ID].map(last), fc[DS])
        scale = fc[ID].map(series_scale(frame)).to_numpy()
        fc = add_intervals(
            fc,
            widths=self.calibration_,
            scale=scale,
            step=step,
            models=columns,
            levels=self.levels,
            quantiles=self.quantiles,
            nonnegative=self.nonnegative,
        )
        self.forecast_ = _restore_ds(fc.reset_index(drop=True), ds_dtype)
        self.hierarchy_ = hierarchy
        logger.info(
            "fitted %d series, %d models, %d backtest windows per series",
            frame[ID].nunique(),
            len(base),
            int(window.max()),
        )
        return self

    def _backtest_intervals(
        self,
        cv: pd.DataFrame,
        resid: pd.DataFrame,
        all_levels: Sequence[float],
        *,
        window: pd.Series,
        cutoffs: pd.Series,
    ) -> pd.DataFrame:
        """Intervals for window k from residuals dated on or before each series' k-th cutoff."""
        parts = []
        for k in sorted(window.unique()):
            part = cv[window == k]
            cut_k = cutoffs.loc[k]
            rows = resid[resid[DS] <= resid[ID].map(cut_k)]
            pr = resid.loc[part.index]
            widths = conformal_widths(rows, models=self.columns_, levels=all_levels, h=self.h)
            parts.append(
                add_intervals(
                    part,
                    widths=widths,
                    scale=pr["scale"].to_numpy(),
                    step=pr["step"].to_numpy(),
                    models=self.columns_,
                    levels=all_levels,
                    quantiles=self.quantiles,
                    nonnegative=self.nonnegative,
                )
            )
        return pd.concat(parts).sort_index()

    def predict(self, h: int | None = None) -> pd.DataFrame:
        """Forecasts for the next ``h`` months (at most the ``h`` given at construction).

        Returns:
            ``unique_id``, ``ds`` and, for every model, ``Ensemble`` and ``Forecast``:
            the point forecast, ``-lo-L``/``-hi-L`` interval columns and ``-pQ``
            quantile columns (``Forecast-p5`` is the P95 downside).
        """
        if not hasattr(self, "forecast_"):
            raise RuntimeError("call fit first")
        h = self.h if h is None else h
        if not 1 <= h <= self.h:
            raise ValueError(
                f"h must be between 1 and {self.h} (the horizon fitted and calibrated)"
            )
        fc = self.forecast_
        rank = fc.groupby(ID, sort=False).cumcount()
        return fc[rank < h].reset_index(drop=True)

    def downside(self, h: int | None = None, *, confidence: float = 95) -> pd.DataFrame:
        """The ``Forecast`` quantile exceeded with probability ``confidence`` (see :func:`downside`)."""
        return downside(self.predict(h), model=FORECAST, confidence=confidence)


def coherence_error(
    forecast: pd.DataFrame, *, hierarchy: Hierarchy, model: str = FORECAST
) -> float:
    """Largest absolute gap between any series and the sum of its bottom series.

    Args:
        forecast: ``unique_id``, ``ds`` and ``model``.
        hierarchy: The hierarchy the forecast should respect.
        model: Point column to check.

    Returns:
        ``max |S @ bottom - all|`` over series and dates (0 for a coherent forecast).
    """
    wide = forecast.pivot(index=ID, columns=DS, values=model)
    s = hierarchy.S.set_index(ID).astype("float64")
    bottom = wide.loc[s.columns].to_numpy()
    implied = s.to_numpy() @ bottom
    actual = wide.loc[s.index].to_numpy()
    return float(np.nanmax(np.abs(implied - actual)))


__all__: Sequence[str] = [
    "DEFAULT_MODELS",
    "ENSEMBLE",
    "FORECAST",
    "Hierarchy",
    "M3_BLEND",
    "M3_ENSEMBLE",
    "M3_GLOBAL",
    "M3_GLOBAL_TRIMMED",
    "RevenueForecaster",
    "add_intervals",
    "apply_selection",
    "backtest_metrics",
    "build_hierarchy",
    "coherence_error",
    "combine",
    "conformal_widths",
    "downside",
    "interval_columns",
    "make_model",
    "quantile_column",
    "reconcile",
    "select_models",
    "series_scale",
    "summarize_metrics",
]


def segment_series(
    account_months: pd.DataFrame,
    *,
    segments: Sequence[str],
    value: str = "mrr",
    scale: float | None = None,
) -> pd.DataFrame:
    """Monthly bottom-level series from the MRR engine's account-month table.

    Every month × segment combination that ever appears gets a row: a segment with no
    paying account in a month has MRR 0 there (the truth, not a gap), so statsforecast and
    the hierarchy see regular monthly series.

    Args:
        account_months: Needs ``month``, ``value`` and the ``segments`` columns.
        segments: Segment columns, outermost first (e.g. ``["region", "channel"]``).
        value: The money column to sum (minor units).
        scale: Divide by this (default: minor per major unit of the table's
            ``reporting_currency``: 100 for USD, 1 for JPY, 1000 for KWD).

    Returns:
        ``ds``, the segment columns and ``y`` (float), ready for :func:`build_hierarchy`.
    """
    if scale is None:
        from workbench.forecast_bottom_up import minor_per_major

        scale = minor_per_major(account_months)
    df = account_months.assign(ds=pd.to_datetime(account_months["month"]))
    df[list(segments)] = df[list(segments)].astype("string").fillna("(unknown)")
    summed = df.groupby(["ds", *segments], as_index=False, observed=True)[value].sum()
    months = pd.date_range(df["ds"].min(), df["ds"].max(), freq="MS")
    combos = summed[list(segments)].drop_duplicates()
    grid = combos.merge(pd.DataFrame({"ds": months}), how="cross")
    out = grid.merge(summed, on=["ds", *segments], how="left")
    out["y"] = out[value].fillna(0).astype(float) / scale
    return out[["ds", *segments, "y"]].sort_values([*segments, "ds"]).reset_index(drop=True)


def base_forecast(
    df: pd.DataFrame | Any,
    *,
    h: int,
    models: Sequence[Any] = DEFAULT_MODELS,
    season_length: int = 12,
    freq: str = "MS",
    n_jobs: int = 1,
) -> pd.DataFrame | Any:
    """Point forecasts of every model for every series, local or distributed.

    A pandas frame is forecast in this process. A Spark DataFrame (``unique_id`` string,
    ``ds`` timestamp, ``y`` double; e.g. from ``SparkEngine.spark.createDataFrame``) is
    forecast on the cluster by statsforecast's own distributed backend (Fugue): series are
    spread over the executors and the result is a Spark DataFrame with the same columns as
    the local result. No ensemble, intervals or reconciliation here: those run on the
    driver (:class:`RevenueForecaster`) on the collected forecasts.

    Args:
        df: Long frame ``unique_id, ds, y`` (pandas or Spark).
        h: Horizon in periods.
        models: statsforecast model names or instances.
        season_length: Seasonal period.
        freq: pandas frequency of ``ds`` (``MS``: month starts).
        n_jobs: Processes for the local path.

    Returns:
        ``unique_id, ds`` and one column per model (pandas in, pandas out; Spark in,
        Spark out).
    """
    sf = _statsforecast(models, season_length=season_length, freq=freq, n_jobs=n_jobs)
    if isinstance(df, pd.DataFrame):
        frame, ds_dtype = _prepare(df, freq=freq)
        fc = sf.forecast(h=h, df=frame)
        fc = fc.reset_index() if ID not in fc.columns else fc
        return _restore_ds(fc, ds_dtype)
    return sf.forecast(h=h, df=df)
