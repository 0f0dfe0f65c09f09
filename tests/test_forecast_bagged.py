"""BaggedETS: bootstrapped copies of a series, AutoETS averaged over them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsforecast import StatsForecast
from statsforecast.models import AutoETS

from workbench.forecast import make_model
from workbench.forecast_bagged import MIN_LENGTH, BaggedETS, bootstrap_series


def _seasonal(n: int = 72, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    level = 100 * (1 + 0.01 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12))
    return level * np.exp(rng.normal(0, noise, n))


def test_copies_keep_the_series_shape_and_the_original_comes_first():
    y = _seasonal()
    copies = bootstrap_series(y, season_length=12, n_bootstraps=20)
    assert len(copies) == 20 and all(len(c) == len(y) for c in copies)
    np.testing.assert_array_equal(copies[0], y)
    assert all(np.all(np.isfinite(c)) and np.all(c > 0) for c in copies)
    # copies differ from the series only by resampled noise: same level, same season
    stacked = np.vstack(copies[1:])
    assert not np.allclose(stacked, y)
    assert np.abs(np.log(stacked / y)).mean() < 0.15
    assert np.corrcoef(stacked.mean(axis=0), y)[0, 1] > 0.95


def test_a_series_without_noise_is_reproduced_by_every_copy():
    """Trend and season come back exactly through the Box-Cox inverse: only the remainder
    is resampled."""
    y = _seasonal(noise=0.0)
    copies = bootstrap_series(y, season_length=12, n_bootstraps=5)
    for c in copies:
        np.testing.assert_allclose(c, y, rtol=0.02)


def test_copies_are_the_same_for_the_same_series_and_seed_only():
    y = _seasonal()
    a = bootstrap_series(y, season_length=12, n_bootstraps=4)
    b = bootstrap_series(y.copy(), season_length=12, n_bootstraps=4)
    c = bootstrap_series(y, season_length=12, n_bootstraps=4, seed=1)
    for x, z in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, z)
    assert not np.allclose(a[1], c[1])


@pytest.mark.parametrize(
    ("y", "season"),
    [
        (np.arange(1.0, MIN_LENGTH), 12),  # too short: the original only
        (np.r_[0.0, 5.0, -2.0, np.linspace(1, 30, 30)], 12),  # not positive: no Box-Cox
        (np.linspace(10, 40, 30) + np.sin(np.arange(30)), 1),  # no season: a lowess trend
    ],
)
def test_short_non_positive_and_non_seasonal_series_give_finite_copies(y, season):
    copies = bootstrap_series(y, season_length=season, n_bootstraps=6)
    assert len(copies) == (1 if len(y) < MIN_LENGTH else 6)
    assert all(np.all(np.isfinite(c)) and len(c) == len(y) for c in copies)


def test_one_copy_is_autoets_itself():
    y = _seasonal()
    one = BaggedETS(season_length=12, n_bootstraps=1).forecast(y, 18, fitted=True)
    ets = AutoETS(season_length=12).forecast(y=y, h=18, fitted=True)
    np.testing.assert_allclose(one["mean"], ets["mean"])
    np.testing.assert_allclose(one["fitted"], ets["fitted"])


def test_the_forecast_is_the_mean_of_autoets_over_the_copies():
    y = _seasonal()
    copies = bootstrap_series(y, season_length=12, n_bootstraps=5)
    expected = np.mean(
        [AutoETS(season_length=12).forecast(y=c, h=12)["mean"] for c in copies], axis=0
    )
    got = BaggedETS(season_length=12, n_bootstraps=5).forecast(y, 12)["mean"]
    np.testing.assert_allclose(got, expected)
    with pytest.raises(ValueError, match="intervals"):
        BaggedETS().forecast(y, 12, level=[80])


def test_a_series_gets_the_same_forecast_whatever_is_fitted_beside_it():
    ds = pd.date_range("2018-01-01", periods=60, freq="MS")
    a = pd.DataFrame({"unique_id": "a", "ds": ds, "y": _seasonal(60, seed=1)})
    b = pd.DataFrame({"unique_id": "b", "ds": ds, "y": _seasonal(60, seed=2) * 3})
    model = make_model("BaggedETS", season_length=12)
    assert isinstance(model, BaggedETS) and model.alias == "BaggedETS"

    def run(frame: pd.DataFrame) -> pd.DataFrame:
        sf = StatsForecast(models=[make_model("BaggedETS")], freq="MS", n_jobs=1)
        out = sf.forecast(df=frame, h=6)
        return out[out["unique_id"] == "a"].reset_index(drop=True)

    alone, together = run(a), run(pd.concat([b, a], ignore_index=True))
    np.testing.assert_allclose(alone["BaggedETS"], together["BaggedETS"])


def test_the_engine_reconciles_it_with_mint_from_its_fitted_values():
    """In a hierarchy with MinT (which needs in-sample fitted values, also per backtest
    window) the bagged forecasts add up from segments to the total."""
    from workbench.forecast import RevenueForecaster, build_hierarchy

    rng = np.random.default_rng(3)
    ds = pd.date_range("2020-01-01", periods=40, freq="MS", tz="UTC")
    rows = [
        pd.DataFrame({"plan": plan, "ds": ds, "y": _seasonal(40, seed=int(rng.integers(99))) * k})
        for plan, k in (("basic", 1.0), ("pro", 4.0))
    ]
    y_df, hier = build_hierarchy(pd.concat(rows, ignore_index=True), segments=["plan"])
    fc = RevenueForecaster(models=["BaggedETS", "SeasonalNaive"], h=6, n_windows=2,
                           reconciler="mint_shrink", n_jobs=1)  # fmt: skip
    out = fc.fit(y_df, hierarchy=hier).predict()
    wide = out.pivot(index="ds", columns="unique_id", values="BaggedETS")
    np.testing.assert_allclose(wide["total"], wide["total/basic"] + wide["total/pro"], rtol=1e-9)
    assert fc.cv_["BaggedETS"].notna().all()
