"""A global (cross-learned) LightGBM forecaster for many monthly series.

Statistical models (:mod:`workbench.forecast`) fit each series alone. A *global* model
learns one mapping from recent history to the future across every series of a panel:
each series contributes training windows (an origin month, the normalized values before
it, the months ahead and what happened then), and a single gradient-boosted tree model
predicts every horizon step directly (the step is a feature). On a panel of similar
series this pools evidence that a short series cannot provide alone; blended with a
statistical ensemble it improved the M3 monthly forecasts (``docs/forecasting.md``).

Features of one row (origin ``o``, step ``k``), all scale-free: the last ``lags`` values
divided by the level (the mean of the last ``season_length`` values), the step, the
seasonal position of the origin and of the target month, the two latest same-season
values relative to the level (seasonal naive), the year-on-year growth of the level,
the spread of the normalized lags and the number of observations so far. The target is
``y[o + k] / level`` (or its logarithm). A variant may first divide each series by its
classical multiplicative seasonal indices (when the 90 % seasonality test of the M3/M4
Naive2 benchmark passes, computed from the history the model is given) and multiply
them back on the forecast.

The model only ever sees the frame it is fitted on: a backtest refits it on the history
up to each cutoff (``RevenueForecaster`` does so). Training is single-threaded and
deterministic (fixed seed, LightGBM ``deterministic=True``), so the same input gives the
same forecasts.

Typical use::

    model = GlobalLightGBM(h=18).fit(df)   # unique_id, ds (month starts), y
    model.predict()                        # unique_id, ds, GlobalLightGBM
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from workbench.forecast import (
    BASELINE,
    CUTOFF,
    DS,
    ENSEMBLE,
    ID,
    Y,
    _prepare,
    _restore_ds,
    backtest_metrics,
    combine,
)

GLOBAL_MODEL = "GlobalLightGBM"
#: Blend weights of the global model tried on the backtest (``RevenueForecaster(ensemble="blend")``).
BLEND_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


# ---------------------------------------------------------------------------
# Seasonality (the M3/M4 Naive2 recipe)
# ---------------------------------------------------------------------------


def _acf(y: np.ndarray, k: int) -> float:
    d = y - y.mean()
    with np.errstate(all="ignore"):
        return float((d[:-k] * d[k:]).sum() / (d**2).sum())


def seasonality_test(y: np.ndarray, m: int) -> bool:
    """The 90 % autocorrelation test of the M4 reference code (Naive2's seasonality check).

    The series counts as seasonal when ``|acf(m)|`` exceeds ``1.645 * sqrt((1 + 2 s) / n)``
    with ``s = acf(1) + sum(acf(i) ** 2 for i in 2..m-1)``.

    Parameters
    ----------
    y : numpy.ndarray
        The series (at least ``m + 1`` values).
    m : int
        Seasonal period.

    Returns
    -------
    bool
        True if seasonal; False for constant series and where the limit is undefined.
    """
    s = _acf(y, 1)
    for i in range(2, m):
        s += _acf(y, i) ** 2
    with np.errstate(all="ignore"):
        limit = 1.645 * np.sqrt((1 + 2 * s) / len(y))
    return bool(abs(_acf(y, m)) > limit)


def classical_indices(y: np.ndarray, m: int) -> np.ndarray:
    """Seasonal indices of a multiplicative classical decomposition.

    The trend is the centred moving average of order ``m`` (``2 x m`` for even ``m``);
    each position's index is the mean ratio of ``y`` to the trend there, normalized so
    that the indices average 1.

    Parameters
    ----------
    y : numpy.ndarray
        The series (at least ``m + 1`` values; positive for a meaningful result).
    m : int
        Seasonal period.

    Returns
    -------
    numpy.ndarray
        ``m`` indices; entry ``p`` applies to positions ``t`` with ``t % m == p``
        (positions counted from the series' first value).
    """
    weights = np.r_[0.5, np.ones(m - 1), 0.5] / m
    trend = np.full(len(y), np.nan)
    half = m // 2
    trend[half : len(y) - half] = np.convolve(y, weights, mode="valid")
    ratio = y / trend
    pos = np.arange(len(y)) % m
    idx = np.array([np.nanmean(ratio[pos == p]) for p in range(m)])
    return idx / idx.mean()


def seasonal_indices(y: np.ndarray, m: int) -> np.ndarray:
    """Naive2's seasonal adjustment: classical indices if the series is seasonal, else ones.

    The indices are used only for series of at least three seasons, with positive values
    (a multiplicative decomposition), that pass :func:`seasonality_test`.

    Parameters
    ----------
    y : numpy.ndarray
        The series.
    m : int
        Seasonal period.

    Returns
    -------
    numpy.ndarray
        ``m`` indices by position ``t % m`` (ones when not seasonal).
    """
    y = np.asarray(y, dtype="float64")
    if m < 2 or len(y) < 3 * m or not (y > 0).all() or not seasonality_test(y, m):
        return np.ones(m)
    idx = classical_indices(y, m)
    return idx if np.isfinite(idx).all() and (idx > 0).all() else np.ones(m)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LightGBMVariant:
    """One member of :class:`GlobalLightGBM`'s average.

    Attributes
    ----------
    target : {"ratio", "log"}
        Learn ``y[o + k] / level`` or its logarithm (rows with a non-positive ratio are
        left out of a ``log`` fit).
    deseasonalize : bool
        Divide each series by its :func:`seasonal_indices` before building rows, and
        multiply the forecast by them.
    rounds : int
        Boosting rounds.
    """

    target: Literal["ratio", "log"] = "ratio"
    deseasonalize: bool = False
    rounds: int = 300


#: The two variants chosen on the M3 monthly backtest: deseasonalized log-ratio target
#: with 150 rounds, and the raw ratio target with 300 rounds; their forecasts are averaged.
DEFAULT_VARIANTS: tuple[LightGBMVariant, ...] = (
    LightGBMVariant(target="log", deseasonalize=True, rounds=150),
    LightGBMVariant(target="ratio", deseasonalize=False, rounds=300),
)


#: Models per variant (seeds 0, 1, 2), averaged: chosen on the M3 monthly backtest, where
#: it lowered the best configuration's selection score by a hair (1.536511 -> 1.536503;
#: docs/forecasting.md). Triples the global model's training time.
DEFAULT_N_SEEDS = 3


@dataclass
class _Series:
    """One series' arrays as the row builder needs them."""

    y: np.ndarray  # values (deseasonalized when the variant asks)
    phase: np.ndarray  # seasonal position of each month (0..season_length-1)
    future: np.ndarray  # seasonal indices of the next h months (ones if not adjusted)
    past: np.ndarray  # seasonal index of every month of the history (ones if not adjusted)


class GlobalLightGBM:
    """One LightGBM model for a whole panel of monthly series, direct multi-horizon.

    Parameters
    ----------
    h : int
        Longest horizon (months) to train and forecast.
    season_length : int
        Seasonal period (12 for months).
    lags : int
        Normalized past values per row.
    window : int
        Origins per series used for training: the latest ``window`` months before the end
        of each series' history.
    min_obs : int
        Observations an origin needs (including itself) to give a training row.
    variants : sequence of LightGBMVariant
        Models to train; the forecast is their mean (default :data:`DEFAULT_VARIANTS`).
    learning_rate, num_leaves, min_data_in_leaf, feature_fraction, bagging_fraction : float or int
        LightGBM settings (``objective="l1"``, ``bagging_freq=1``).
    seed : int
        LightGBM's seed (with ``deterministic=True``).
    n_seeds : int
        Models per variant, trained with seeds ``seed``, ``seed + 1``, ...; the forecast is
        the mean over all of them (bagging and feature sampling make each seed's trees
        differ, so averaging lowers the variance; costs ``n_seeds`` times the training).
    num_threads : int
        LightGBM threads (1: reproducible and polite on shared machines).
    alias : str
        Name of the forecast column.

    Attributes
    ----------
    ids_ : list
        Series fitted, in output order.
    n_rows_ : int
        Training rows, summed over the variants.
    boosters_ : list of lightgbm.Booster
        ``n_seeds`` per variant.

    Notes
    -----
    Series need at least ``season_length + 1`` observations (a full season for the level
    and the seasonal-naive feature); shorter ones raise ``ValueError``. A series whose
    level (mean of its last ``season_length`` values) is not positive is forecast by
    seasonal naive, since the model's ratios are undefined there.
    """

    def __init__(
        self,
        *,
        h: int = 12,
        season_length: int = 12,
        lags: int = 24,
        window: int = 60,
        min_obs: int = 13,
        variants: Sequence[LightGBMVariant] = DEFAULT_VARIANTS,
        learning_rate: float = 0.05,
        num_leaves: int = 63,
        min_data_in_leaf: int = 100,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        seed: int = 0,
        n_seeds: int = DEFAULT_N_SEEDS,
        num_threads: int = 1,
        alias: str = GLOBAL_MODEL,
    ) -> None:
        self.h = h
        self.season_length = season_length
        self.lags = lags
        self.window = window
        self.min_obs = min_obs
        self.variants = tuple(variants)
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.seed = seed
        self.n_seeds = n_seeds
        self.num_threads = num_threads
        self.alias = alias

    def __repr__(self) -> str:
        return f"GlobalLightGBM(h={self.h}, alias={self.alias!r}, variants={len(self.variants)})"

    def clone(self, **changes: Any) -> GlobalLightGBM:
        """An unfitted copy with the same settings, optionally changing some (e.g. ``h``)."""
        fresh = copy.copy(self)
        for key in ("ids_", "n_rows_", "boosters_", "_frame", "_ds_dtype"):
            fresh.__dict__.pop(key, None)
        for key, value in changes.items():
            if not hasattr(fresh, key) or key.endswith("_"):
                raise TypeError(f"unknown setting {key!r}")
            setattr(fresh, key, value)
        return fresh

    # -- helpers ---------------------------------------------------------------

    def _params(self, seed: int) -> dict[str, Any]:
        return {
            "objective": "l1",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "num_threads": self.num_threads,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }

    def _series(self, variant: LightGBMVariant) -> list[_Series]:
        m = self.season_length
        out = []
        frame = self._frame
        bounds = np.flatnonzero(np.r_[True, frame[ID].to_numpy()[1:] != frame[ID].to_numpy()[:-1]])
        ends = np.r_[bounds[1:], len(frame)]
        values = frame[Y].to_numpy(dtype="float64")
        months = frame[DS].dt.year.to_numpy() * 12 + frame[DS].dt.month.to_numpy() - 1
        for start, end in zip(bounds, ends, strict=True):
            y = values[start:end]
            n = len(y)
            idx = seasonal_indices(y, m) if variant.deseasonalize else np.ones(m)
            past = idx[np.arange(n) % m]
            out.append(
                _Series(
                    y=y / past,
                    phase=months[start:end] % m,
                    future=idx[np.arange(n, n + self.h) % m],
                    past=past,
                )
            )
        return out

    def _rows(
        self, s: _Series, origins: np.ndarray, steps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Feature rows for origins ``origins`` (index of the last value used) and steps 1..``steps``."""
        m, n_lags = self.season_length, self.lags
        pad_len = n_lags + 2 * m
        pad = np.concatenate([np.full(pad_len, np.nan), s.y])
        o = np.repeat(origins, steps)
        k = np.concatenate([np.arange(1, j + 1) for j in steps]) if len(steps) else origins[:0]
        at = o + pad_len
        with np.errstate(all="ignore"):
            lagged = pad[at[:, None] - np.arange(n_lags)[None, :]]
            level = np.nanmean(pad[at[:, None] - np.arange(m)[None, :]], axis=1)
            growth = level / np.nanmean(pad[at[:, None] - m - np.arange(m)[None, :]], axis=1)
            seasons = np.ceil(k / m).astype(int)
            snaive1 = pad[at + k - m * seasons]
            snaive2 = pad[at + k - m * (seasons + 1)]
            norm = lagged / level[:, None]
            spread = np.nanstd(norm[:, : 2 * m], axis=1)
        phase_o = s.phase[o]
        x = np.column_stack(
            [
                norm,
                k,
                phase_o,
                (phase_o + k) % m,
                snaive1 / level,
                snaive2 / level,
                growth,
                spread,
                np.minimum(o + 1, 200),
            ]
        ).astype(np.float32)
        return x, o, k, level

    def _members(self) -> list[tuple[LightGBMVariant, Any]]:
        """Each fitted booster with its variant (``n_seeds`` per variant, in order)."""
        variants = [v for v in self.variants for _ in range(self.n_seeds)]
        return list(zip(variants, self.boosters_, strict=True))

    # -- public API ------------------------------------------------------------

    def fit(self, df: pd.DataFrame) -> GlobalLightGBM:
        """Train on every series of ``df`` (only on values present in ``df``).

        Parameters
        ----------
        df : pandas.DataFrame
            ``unique_id``, ``ds`` (month starts, naive or time-zone aware), ``y``; no
            gaps, no missing values.

        Returns
        -------
        GlobalLightGBM
            self.

        Raises
        ------
        ValueError
            If a series has fewer than ``season_length + 1`` observations, or no series
            is long enough to give a training row (``min_obs + 1`` observations).
        """
        import lightgbm as lgb

        if self.h < 1 or not self.variants or self.n_seeds < 1:
            raise ValueError("GlobalLightGBM needs h >= 1, at least one variant and n_seeds >= 1")
        frame, ds_dtype = _prepare(df, freq="MS")
        sizes = frame.groupby(ID, sort=False).size()
        short = sizes[sizes < self.season_length + 1]
        if len(short):
            raise ValueError(
                f"GlobalLightGBM needs at least {self.season_length + 1} observations per "
                f"series; too short: {list(short.index[:5])} ({len(short)} series)"
            )
        self._frame, self._ds_dtype = frame, ds_dtype
        self.ids_ = list(sizes.index)
        self.boosters_ = []
        self.n_rows_ = 0
        for variant in self.variants:
            xs, ts = [], []
            for s in self._series(variant):
                n = len(s.y)
                first = max(self.min_obs - 1, n - 1 - self.window)
                origins = np.arange(first, n - 1)
                steps = np.minimum(self.h, n - 1 - origins)
                x, o, k, level = self._rows(s, origins, steps)
                with np.errstate(all="ignore"):
                    target = s.y[o + k] / level
                    if variant.target == "log":
                        target = np.log(target)
                keep = np.isfinite(target) & (level > 0)
                xs.append(x[keep])
                ts.append(target[keep])
            x_all = np.concatenate(xs) if xs else np.empty((0, self.lags + 8), np.float32)
            if len(x_all) == 0:
                raise ValueError(
                    f"no training rows: GlobalLightGBM needs series of at least "
                    f"{self.min_obs + 1} observations with a positive level"
                )
            data = lgb.Dataset(x_all, np.concatenate(ts), free_raw_data=True)
            for i in range(self.n_seeds):
                params = self._params(self.seed + i)
                self.boosters_.append(lgb.train(params, data, num_boost_round=variant.rounds))
            self.n_rows_ += len(x_all)
        return self

    def _predict_values(self, variant: LightGBMVariant, booster: Any) -> np.ndarray:
        """(n_series, h) forecasts of one variant."""
        rows, levels, futures, fallback = [], [], [], []
        m = self.season_length
        for s in self._series(variant):
            n = len(s.y)
            x, _, k, level = self._rows(s, np.array([n - 1]), np.array([self.h]))
            rows.append(x)
            levels.append(level)
            futures.append(s.future)
            raw = s.y * s.past
            fallback.append(raw[n - m + (k - 1) % m])
        pred = booster.predict(np.concatenate(rows), num_threads=self.num_threads)
        if variant.target == "log":
            pred = np.exp(pred)
        level = np.stack(levels)
        out = pred.reshape(len(rows), self.h) * level * np.stack(futures)
        ok = (level > 0) & np.isfinite(out)
        return np.where(ok, out, np.stack(fallback))

    def predict(self, h: int | None = None) -> pd.DataFrame:
        """Forecast ``h`` months after each series' last month.

        Parameters
        ----------
        h : int, optional
            At most the ``h`` the model was trained for (the default).

        Returns
        -------
        pandas.DataFrame
            ``unique_id``, ``ds`` (the input's dtype) and the ``alias`` column, series in
            the order of ``ids_``.
        """
        if not hasattr(self, "boosters_"):
            raise RuntimeError("call fit first")
        h = self.h if h is None else h
        if not 1 <= h <= self.h:
            raise ValueError(f"h must be between 1 and {self.h} (the horizon trained for)")
        values = np.mean([self._predict_values(v, b) for v, b in self._members()], axis=0)[:, :h]
        last = self._frame.groupby(ID, sort=False)[DS].max()
        month0 = last.dt.year.to_numpy() * 12 + last.dt.month.to_numpy() - 1
        future = (month0[:, None] + np.arange(1, h + 1)[None, :]).ravel()
        ds = pd.to_datetime(
            pd.DataFrame({"year": future // 12, "month": future % 12 + 1, "day": 1})
        ).astype("datetime64[ns]")
        out = pd.DataFrame(
            {ID: np.repeat(last.index.to_numpy(), h), DS: ds, self.alias: values.ravel()}
        )
        return _restore_ds(out, self._ds_dtype)

    def fitted_values(self) -> pd.DataFrame:
        """In-sample one-step-ahead predictions (for MinT reconciliation's error covariance).

        Returns
        -------
        pandas.DataFrame
            ``unique_id``, ``ds``, ``y`` and the ``alias`` column for every month of the
            history; missing for the first ``min_obs`` months of each series (no origin
            before them).
        """
        if not hasattr(self, "boosters_"):
            raise RuntimeError("call fit first")
        per_variant = []
        for variant, booster in self._members():
            values = []
            for s in self._series(variant):
                n = len(s.y)
                col = np.full(n, np.nan)
                origins = np.arange(self.min_obs - 1, n - 1)
                if len(origins):
                    x, o, _, level = self._rows(s, origins, np.ones(len(origins), int))
                    pred = booster.predict(x, num_threads=self.num_threads)
                    if variant.target == "log":
                        pred = np.exp(pred)
                    with np.errstate(all="ignore"):
                        col[o + 1] = np.where(level > 0, pred * level, np.nan)
                values.append(col * s.past)
            per_variant.append(np.concatenate(values))
        out = self._frame[[ID, DS, Y]].copy()
        out[self.alias] = np.mean(per_variant, axis=0)
        return _restore_ds(out.reset_index(drop=True), self._ds_dtype)


# ---------------------------------------------------------------------------
# Engine support: backtest per cutoff, blend, choice of the blend weight
# ---------------------------------------------------------------------------


def global_backtest(
    frame: pd.DataFrame,
    cutoffs: pd.DataFrame,
    model: GlobalLightGBM,
    *,
    fitted: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Rolling-origin forecasts of the global model, refitted per window on data up to each cutoff.

    Windows are counted per series (the k-th cutoff of every series), as statsforecast's
    ``cross_validation`` makes them; window k's model is trained on every series cut at
    its own k-th cutoff, so no value after a series' cutoff reaches its forecast.

    Parameters
    ----------
    frame : pandas.DataFrame
        The whole history (``unique_id``, ``ds``, ``y``).
    cutoffs : pandas.DataFrame
        ``unique_id`` and ``cutoff`` (e.g. the statistical backtest's rows).
    model : GlobalLightGBM
        Settings to clone for each window (its ``h`` is the horizon forecast).
    fitted : bool
        Also return each window model's in-sample one-step predictions.

    Returns
    -------
    tuple of pandas.DataFrame
        ``unique_id``, ``ds``, ``cutoff`` and the model's column; and, with ``fitted``,
        ``unique_id``, ``ds``, ``cutoff``, ``y`` and the column (else None).
    """
    pairs = cutoffs[[ID, CUTOFF]].drop_duplicates()
    window = pairs.groupby(ID, sort=False)[CUTOFF].rank(method="dense").astype(int)
    forecasts, insample = [], []
    for k in sorted(window.unique()):
        cut_k = pairs[window == k].set_index(ID)[CUTOFF]
        history = frame[frame[DS] <= frame[ID].map(cut_k)]
        fit_k = model.clone().fit(history)
        parts = [(forecasts, fit_k.predict())]
        if fitted:
            parts.append((insample, fit_k.fitted_values()))
        for target, part in parts:
            part[CUTOFF] = part[ID].map(cut_k)
            target.append(part)
    cols = [ID, DS, CUTOFF, model.alias]
    out = pd.concat(forecasts, ignore_index=True)[cols]
    fv_all = (
        pd.concat(insample, ignore_index=True)[[ID, DS, CUTOFF, Y, model.alias]] if fitted else None
    )
    return out, fv_all


def blend(
    df: pd.DataFrame,
    *,
    global_col: str,
    members: Sequence[str],
    how: Literal["median", "mean", "trimmed"] = "trimmed",
    weight: float,
    name: str = ENSEMBLE,
) -> pd.DataFrame:
    """Add ``weight * global + (1 - weight) * ensemble(members)`` as column ``name``.

    Parameters
    ----------
    df : pandas.DataFrame
        Frame with the global model's column and the member columns.
    global_col : str
        The global model's column.
    members : sequence of str
        Statistical model columns, combined by :func:`workbench.forecast.combine`.
    how : {"median", "mean", "trimmed"}
        How the members are combined.
    weight : float
        The global model's share, in [0, 1].
    name : str
        Name of the new column.

    Returns
    -------
    pandas.DataFrame
        A copy of ``df`` with column ``name``.
    """
    if not 0 <= weight <= 1:
        raise ValueError("the blend weight must lie in [0, 1]")
    stat = combine(df[list(members)], members=members, how=how, name="_stat")["_stat"]
    out = df.copy()
    out[name] = weight * df[global_col].to_numpy(dtype="float64") + (1 - weight) * stat.to_numpy()
    return out


def selection_score(
    cv: pd.DataFrame,
    *,
    train: pd.DataFrame,
    models: Sequence[str],
    season_length: int = 12,
    baseline: str = BASELINE,
) -> pd.DataFrame:
    """Backtest sMAPE and MASE (means over series) and their sum relative to the baseline.

    The rule that chooses the M3 configuration and the blend weight: lowest
    ``sMAPE / sMAPE(baseline) + MASE / MASE(baseline)``.

    Parameters
    ----------
    cv : pandas.DataFrame
        Backtest rows (``unique_id``, ``ds``, ``cutoff``, ``y``, model columns and the
        baseline's).
    train : pandas.DataFrame
        History for the MASE scale (only data up to each cutoff is used).
    models : sequence of str
        Columns to score (the baseline is added).
    season_length : int
        Seasonal lag of the MASE scale.
    baseline : str
        Reference column (seasonal naive).

    Returns
    -------
    pandas.DataFrame
        Indexed by model: ``smape``, ``mase`` and ``score``.
    """
    cols = list(dict.fromkeys([*models, baseline]))
    per = backtest_metrics(cv, train=train, models=cols, season_length=season_length)
    means = per[per["metric"].isin(["smape", "mase"])].groupby("metric")[cols].mean().T
    rel = means / means.loc[baseline]
    return means.assign(score=rel["smape"] + rel["mase"])


def choose_blend_weight(
    cv: pd.DataFrame,
    *,
    train: pd.DataFrame,
    global_col: str,
    members: Sequence[str],
    how: Literal["median", "mean", "trimmed"] = "trimmed",
    grid: Sequence[float] = BLEND_GRID,
    season_length: int = 12,
) -> tuple[float, pd.DataFrame]:
    """The blend weight with the lowest backtest :func:`selection_score`.

    Parameters
    ----------
    cv : pandas.DataFrame
        Backtest rows with the global model's, the members' and ``SeasonalNaive``'s columns.
    train : pandas.DataFrame
        History for the MASE scale.
    global_col, members, how :
        As for :func:`blend`.
    grid : sequence of float
        Weights to try; ties go to the earlier one.
    season_length : int
        Seasonal lag of the MASE scale.

    Returns
    -------
    tuple
        The chosen weight and the scores per weight (index: the weights).
    """
    frame = cv[[ID, DS, CUTOFF, Y, BASELINE]].copy()
    names = []
    for w in grid:
        names.append(f"w={w:g}")
        frame[names[-1]] = blend(cv, global_col=global_col, members=members, how=how, weight=w)[
            ENSEMBLE
        ].to_numpy()
    scores = selection_score(frame, train=train, models=names, season_length=season_length)
    scores = scores.loc[names].set_axis(pd.Index([float(w) for w in grid], name="weight"))
    best = float(scores["score"].idxmin())
    return best, scores


def is_global(model: Any) -> bool:
    """Whether ``model`` (a name or an instance) is the global LightGBM model."""
    return isinstance(model, GlobalLightGBM) or model == GLOBAL_MODEL


def global_model(model: Any, *, h: int, season_length: int) -> GlobalLightGBM:
    """An unfitted :class:`GlobalLightGBM` for the engine: from its name or a configured instance."""
    if isinstance(model, GlobalLightGBM):
        return model.clone(h=h, season_length=season_length)
    return GlobalLightGBM(h=h, season_length=season_length)


__all__: Sequence[str] = [
    "BLEND_GRID",
    "DEFAULT_N_SEEDS",
    "DEFAULT_VARIANTS",
    "GLOBAL_MODEL",
    "GlobalLightGBM",
    "LightGBMVariant",
    "blend",
    "choose_blend_weight",
    "classical_indices",
    "global_backtest",
    "global_model",
    "is_global",
    "seasonal_indices",
    "seasonality_test",
    "selection_score",
]
