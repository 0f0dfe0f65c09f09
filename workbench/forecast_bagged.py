"""Bagged exponential smoothing: AutoETS averaged over bootstrapped copies of a series.

Bergmeir, Hyndman and Benitez (2016, International Journal of Forecasting, "Bagging
exponential smoothing methods using STL decomposition and Box-Cox transformation") found
that fitting ETS to many bootstrapped versions of a series and averaging the forecasts beats
ETS on the M3 monthly data: the average hedges ETS's choice of model form, which is where
most of its error comes from. Each copy is made as they make it ("BLD.MBB"):

1. a Box-Cox transformation, lambda by Guerrero's method in [0, 1] (none if a value is not
   positive);
2. the transformed series split into trend + season (STL with a periodic season when the
   series has more than two seasons, else a lowess trend) and a remainder;
3. the remainder resampled by a moving-block bootstrap (blocks of two seasons, or of
   ``min(8, n // 2)`` without a season), added back and transformed back.

The original series is one of the ``n_bootstraps`` copies. AutoETS (statsforecast) is fitted
to each and the forecasts are averaged. The copies are drawn from a generator seeded with
``seed`` and the series' own values, so a series gets the same forecast whatever else is
fitted with it, and in any order.

:class:`BaggedETS` is a statsforecast model (``RevenueForecaster(models=["BaggedETS",
...])`` via :func:`workbench.forecast.make_model`). It costs ``n_bootstraps`` AutoETS fits
per series (20 by default). Its in-sample fitted values (for MinT reconciliation) are those
of AutoETS on the original series.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

#: How many copies are averaged (the original among them).
N_BOOTSTRAPS = 20
#: Shorter series are forecast by AutoETS alone (too short to decompose and resample).
MIN_LENGTH = 8


def box_cox_lambda(y: np.ndarray, season_length: int) -> float:
    """Guerrero's lambda in [0, 1]; 1 (no transformation) if a value is not positive."""
    from coreforecast.scalers import boxcox_lambda

    if np.any(y <= 0):
        return 1.0
    return float(
        boxcox_lambda(
            y, method="guerrero", season_length=max(season_length, 2), lower=0.0, upper=1.0
        )
    )


def _block_bootstrap(remainder: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """A moving-block bootstrap of ``remainder``: ``ceil(n / block) + 2`` blocks from random
    starts, joined, then cut to length ``n`` at a random offset within the first block."""
    n = len(remainder)
    starts = rng.integers(0, n - block + 1, size=math.ceil(n / block) + 2)
    joined = np.concatenate([remainder[s : s + block] for s in starts])
    offset = int(rng.integers(0, block))
    return joined[offset : offset + n]


def bootstrap_series(
    y: np.ndarray, *, season_length: int, n_bootstraps: int = N_BOOTSTRAPS, seed: int = 0
) -> list[np.ndarray]:
    """The original series and ``n_bootstraps - 1`` bootstrapped copies of it (see the module
    docstring); only the original for a series shorter than :data:`MIN_LENGTH`. A copy
    with a value the inverse transformation cannot give (outside its domain) is replaced by
    the original."""
    from coreforecast.scalers import boxcox, inv_boxcox

    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < MIN_LENGTH or n_bootstraps <= 1:
        return [y]
    rng = np.random.default_rng([seed, zlib.crc32(y.tobytes())])
    lam = box_cox_lambda(y, season_length)
    z = boxcox(y, lam) if lam != 1.0 else y - 1.0
    if season_length > 1 and n > 2 * season_length:
        from statsmodels.tsa.seasonal import STL

        # a periodic season (the same every year), as R's stl(s.window = "periodic")
        parts = STL(z, period=season_length, seasonal=10 * n + 1, robust=False).fit()
        base = np.asarray(parts.trend) + np.asarray(parts.seasonal)
        block = 2 * season_length
    else:
        from statsmodels.nonparametric.smoothers_lowess import lowess

        base = lowess(z, np.arange(n, dtype=np.float64), frac=0.75, return_sorted=False)
        block = min(8, n // 2)
    remainder = z - base
    out = [y]
    for _ in range(n_bootstraps - 1):
        b = base + _block_bootstrap(remainder, block, rng)
        copy = inv_boxcox(b, lam) if lam != 1.0 else b + 1.0
        out.append(copy if np.all(np.isfinite(copy)) else y)
    return out


class BaggedETS:
    """AutoETS averaged over bootstrapped copies of the series (a statsforecast model).

    Args:
        season_length: Seasonal period (12 for monthly data).
        n_bootstraps: Copies averaged, the original among them.
        seed: Seeds the bootstrap (with the series' values).
        alias: The model's column name.
    """

    uses_exog = False

    def __init__(
        self,
        season_length: int = 12,
        n_bootstraps: int = N_BOOTSTRAPS,
        seed: int = 0,
        alias: str = "BaggedETS",
    ) -> None:
        self.season_length = season_length
        self.n_bootstraps = n_bootstraps
        self.seed = seed
        self.alias = alias

    def __repr__(self) -> str:
        return self.alias

    def new(self) -> BaggedETS:
        """A fresh copy with the same settings (statsforecast fits one per series)."""
        return BaggedETS(self.season_length, self.n_bootstraps, self.seed, self.alias)

    def _ets(self) -> Any:
        from statsforecast.models import AutoETS

        return AutoETS(season_length=self.season_length)

    def forecast(
        self,
        y: np.ndarray,
        h: int,
        X: np.ndarray | None = None,  # noqa: N803 - statsforecast's signature
        X_future: np.ndarray | None = None,  # noqa: N803
        level: list[int] | None = None,
        fitted: bool = False,
    ) -> dict[str, np.ndarray]:
        """``{"mean": the average forecast}`` (and ``"fitted"``: AutoETS's on ``y``).

        Raises:
            ValueError: ``level`` given: the engine calibrates intervals on its backtest.
        """
        if level:
            raise ValueError("BaggedETS gives point forecasts; intervals come from the backtest")
        y = np.asarray(y, dtype=np.float64)
        copies = bootstrap_series(
            y, season_length=self.season_length, n_bootstraps=self.n_bootstraps, seed=self.seed
        )
        means = []
        original: dict[str, np.ndarray] | None = None
        for i, series in enumerate(copies):
            try:
                res = self._ets().forecast(y=series, h=h, fitted=fitted and i == 0)
            except Exception:  # noqa: BLE001 - a copy AutoETS cannot fit is left out
                if i == 0:
                    raise
                continue
            if i == 0:
                original = res
            means.append(np.asarray(res["mean"], dtype=np.float64))
        out = {"mean": np.mean(means, axis=0)}
        if fitted and original is not None:
            out["fitted"] = np.asarray(original["fitted"], dtype=np.float64)
        return out

    def fit(self, y: np.ndarray, X: np.ndarray | None = None) -> BaggedETS:  # noqa: N803
        """Keep ``y`` (and AutoETS's fitted values on it) for :meth:`predict`."""
        self._y = np.asarray(y, dtype=np.float64)
        self.model_ = {"fitted": self._ets().fit(self._y).predict_in_sample()["fitted"]}
        return self

    def predict(
        self,
        h: int,
        X: np.ndarray | None = None,
        level: list[int] | None = None,  # noqa: N803
    ) -> dict[str, np.ndarray]:
        return self.forecast(self._y, h, level=level)

    def predict_in_sample(self, level: list[int] | None = None) -> dict[str, np.ndarray]:
        return {"fitted": self.model_["fitted"]}
