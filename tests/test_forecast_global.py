"""Tests for the global LightGBM model and its blend in the engine (workbench.forecast_global)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.forecast import (
    FORECAST,
    M3_BLEND,
    M3_ENSEMBLE,
    M3_GLOBAL,
    M3_GLOBAL_TRIMMED,
    RevenueForecaster,
    build_hierarchy,
    coherence_error,
    combine,
)
from workbench.forecast_global import (
    BLEND_GRID,
    GlobalLightGBM,
    LightGBMVariant,
    blend,
    choose_blend_weight,
    classical_indices,
    seasonal_indices,
)

G = "GlobalLightGBM"
# Small and fast: the same feature/target recipe with fewer rounds and smaller leaves.
SMALL = GlobalLightGBM(
    variants=(
        LightGBMVariant(target="log", deseasonalize=True, rounds=60),
        LightGBMVariant(target="ratio", rounds=60),
    ),
    num_leaves=15,
    min_data_in_leaf=20,
    n_seeds=1,
)


def seasonal_panel(n_series: int, length: int, *, seed: int, ragged: bool = False) -> pd.DataFrame:
    """Trend x shared-shape seasonality x noise; with ``ragged`` series end on different months."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_series):
        n = length - (int(rng.integers(0, 6)) if ragged else 0)
        t = np.arange(n)
        level = rng.uniform(500, 20_000)
        growth = rng.normal(0.01, 0.005)
        amp = rng.uniform(0.15, 0.35)
        phase = rng.integers(12)
        season = 1 + amp * np.sin(2 * np.pi * (t + phase) / 12)
        y = level * (1 + growth) ** t * season * (1 + rng.normal(0, 0.05, n))
        ds = pd.date_range("2015-01-01", periods=n, freq="MS", tz="UTC").astype(
            "datetime64[us, UTC]"
        )
        frames.append(pd.DataFrame({"unique_id": f"s{i:02d}", "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return seasonal_panel(24, 72, seed=0, ragged=True)


def _split(df: pd.DataFrame, h: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rank = df.groupby("unique_id").cumcount(ascending=False)
    return df[rank >= h], df[rank < h]


# --- seasonality helpers ----------------------------------------------------------------


def test_seasonal_indices_follow_the_naive2_rules() -> None:
    t = np.arange(60)
    pattern = 1 + 0.3 * np.sin(2 * np.pi * t / 12)
    y = 100 * pattern * (1 + 0.002 * t)
    idx = seasonal_indices(y, 12)
    assert idx.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(idx, pattern[:12] / pattern[:12].mean(), atol=0.01)
    np.testing.assert_array_equal(classical_indices(y, 12), idx)
    noise = np.random.default_rng(0).normal(100, 1, 60)
    np.testing.assert_array_equal(seasonal_indices(noise, 12), np.ones(12))  # test fails
    np.testing.assert_array_equal(seasonal_indices(y[:35], 12), np.ones(12))  # < 3 seasons
    with_zero = y.copy()
    with_zero[5] = 0.0
    np.testing.assert_array_equal(seasonal_indices(with_zero, 12), np.ones(12))
    np.testing.assert_array_equal(seasonal_indices(np.full(60, 7.0), 12), np.ones(12))


# --- the model --------------------------------------------------------------------------


def test_predict_shapes_ids_dates_and_determinism(panel: pd.DataFrame) -> None:
    model = SMALL.clone(h=6).fit(panel)
    out = model.predict()
    ids = sorted(panel["unique_id"].unique())
    assert list(out.columns) == ["unique_id", "ds", G]
    assert model.ids_ == ids and list(out["unique_id"].unique()) == ids
    assert out.groupby("unique_id").size().eq(6).all()
    assert out["ds"].dtype == panel["ds"].dtype
    first = out.groupby("unique_id")["ds"].min()
    last_seen = panel.groupby("unique_id")["ds"].max()
    assert (first == last_seen + pd.DateOffset(months=1)).all()
    assert np.isfinite(out[G]).all() and (out[G] > 0).all()
    short = model.predict(2)
    pd.testing.assert_frame_equal(short, out.groupby("unique_id").head(2).reset_index(drop=True))
    with pytest.raises(ValueError, match="between 1 and 6"):
        model.predict(7)
    again = SMALL.clone(h=6).fit(panel.sample(frac=1.0, random_state=1)).predict()
    np.testing.assert_array_equal(again[G].to_numpy(), out[G].to_numpy())
    other_seed = SMALL.clone(h=6, seed=7).fit(panel).predict()
    assert not np.array_equal(other_seed[G].to_numpy(), out[G].to_numpy())


def test_seed_averaging_is_the_mean_of_single_seed_models(panel: pd.DataFrame) -> None:
    both = SMALL.clone(h=6, n_seeds=2).fit(panel)
    assert len(both.boosters_) == 2 * len(SMALL.variants)
    singles = [SMALL.clone(h=6, seed=s).fit(panel).predict()[G].to_numpy() for s in (0, 1)]
    np.testing.assert_allclose(both.predict()[G].to_numpy(), np.mean(singles, axis=0), rtol=1e-12)
    fitted = [SMALL.clone(h=6, seed=s).fit(panel).fitted_values()[G] for s in (0, 1)]
    np.testing.assert_allclose(
        both.fitted_values()[G].to_numpy(), ((fitted[0] + fitted[1]) / 2).to_numpy(), rtol=1e-12
    )
    with pytest.raises(ValueError, match="n_seeds"):
        SMALL.clone(n_seeds=0).fit(panel)


def test_beats_seasonal_naive_on_a_seasonal_panel() -> None:
    h = 6
    df = seasonal_panel(40, 84, seed=5)
    train, test = _split(df, h)
    pred = SMALL.clone(h=h).fit(train).predict().merge(test, on=["unique_id", "ds"])
    last_year = train.groupby("unique_id").tail(12).groupby("unique_id").head(h)
    pred["snaive"] = last_year["y"].to_numpy()
    scale = train.groupby("unique_id")["y"].apply(lambda s: np.abs(s.diff(12)).mean())
    err = pred.assign(g=(pred[G] - pred["y"]).abs(), s=(pred["snaive"] - pred["y"]).abs())
    mase = err.groupby("unique_id")[["g", "s"]].mean().div(scale, axis=0).mean()
    assert mase["g"] < 0.8 * mase["s"], mase


def test_too_short_series_raise_a_clear_error(panel: pd.DataFrame) -> None:
    short = panel.groupby("unique_id").head(40)
    tiny = pd.concat([short, panel[panel["unique_id"] == "s03"].head(12).assign(unique_id="tiny")])
    with pytest.raises(ValueError, match=r"at least 13 observations.*'tiny'"):
        SMALL.clone(h=6).fit(tiny)
    with pytest.raises(ValueError, match="no training rows"):
        SMALL.clone(h=6).fit(panel.groupby("unique_id").head(13))
    with pytest.raises(RuntimeError, match="fit first"):
        SMALL.clone().predict()


def test_fitted_values_are_one_step_ahead_and_start_after_min_obs(panel: pd.DataFrame) -> None:
    model = SMALL.clone(h=3).fit(panel)
    fv = model.fitted_values()
    assert len(fv) == len(panel)
    rank = fv.groupby("unique_id").cumcount()
    assert fv.loc[rank < model.min_obs, G].isna().all()
    later = fv[rank >= model.min_obs]
    assert np.isfinite(later[G]).all()
    rel = (later[G] - later["y"]).abs() / later["y"]
    assert rel.median() < 0.1


# --- the engine -------------------------------------------------------------------------


def test_engine_backtest_refits_per_cutoff_without_leakage(panel: pd.DataFrame) -> None:
    config = dict(models=("SeasonalNaive", SMALL), h=6, n_windows=2, step_size=6, n_jobs=1)
    cv = RevenueForecaster(**config).fit(panel).cv_
    window = cv.groupby("unique_id")["cutoff"].rank(method="dense")
    first_cut = cv[window == 1].groupby("unique_id")["cutoff"].first()
    assert first_cut.nunique() > 1  # ragged ends: cutoffs are per series
    # Window 1's column is the standalone model trained on every series cut at its cutoff.
    cut = panel[panel["ds"] <= panel["unique_id"].map(first_cut)]
    direct = SMALL.clone(h=6).fit(cut).predict()
    w1 = cv[window == 1].merge(direct, on=["unique_id", "ds"], suffixes=("", "_direct"))
    assert len(w1) == (window == 1).sum()
    np.testing.assert_array_equal(w1[G].to_numpy(), w1[f"{G}_direct"].to_numpy())
    # Scrambling everything after each series' first cutoff leaves window 1 unchanged ...
    changed = panel.copy()
    after = changed["ds"] > changed["unique_id"].map(first_cut)
    rng = np.random.default_rng(2)
    changed.loc[after, "y"] *= rng.uniform(0.3, 3.0, after.sum())
    cv2 = RevenueForecaster(**config).fit(changed).cv_
    np.testing.assert_array_equal(cv.loc[window == 1, G], cv2.loc[window == 1, G])
    # ... and moves window 2 (the check can fail).
    assert not np.allclose(cv.loc[window == 2, G], cv2.loc[window == 2, G])


def test_blend_weight_is_chosen_on_the_backtest(panel: pd.DataFrame) -> None:
    members = ["AutoTheta"]
    blend = {"models": ("AutoTheta", "SeasonalNaive", SMALL), "ensemble": "blend",
             "ensemble_members": members, "blend_base": "mean", "h": 6, "n_windows": 2,
             "step_size": 6, "n_jobs": 1}  # fmt: skip
    fc = RevenueForecaster(**blend).fit(panel)
    scores = fc.blend_scores_
    assert list(scores.index) == list(BLEND_GRID)
    assert fc.blend_weight_ == scores["score"].idxmin()
    w = fc.blend_weight_
    # On this seasonal panel the blend beats both of its parts on the backtest.
    assert 0 < w < 1
    assert scores.loc[w, "score"] < min(scores.loc[0.0, "score"], scores.loc[1.0, "score"])
    for frame in (fc.cv_, fc.predict()):
        stat = combine(frame, members=members, how="mean")["Ensemble"]
        expected = w * frame[G] + (1 - w) * stat
        np.testing.assert_allclose(frame["Ensemble"], expected, rtol=1e-12)
        np.testing.assert_array_equal(frame[FORECAST], frame["Ensemble"])
    # Intervals and quantiles follow the blended point forecast.
    out = fc.predict()
    assert (out["Forecast-lo-80"] < out[FORECAST]).all()
    assert (out[FORECAST] < out["Forecast-hi-80"]).all()
    assert (out["Forecast-p50"] == out[FORECAST]).all()
    assert fc.calibration_["model"].isin([G, "Ensemble"]).any()
    # A fixed weight is used as given.
    fixed = RevenueForecaster(**blend, blend_weight=0.25).fit(panel)
    assert fixed.blend_weight_ == 0.25 and fixed.blend_scores_ is None
    np.testing.assert_allclose(
        fixed.cv_["Ensemble"],
        0.25 * fixed.cv_[G] + 0.75 * combine(fixed.cv_, members=members, how="mean")["Ensemble"],
    )


def test_choose_blend_weight_follows_the_backtest_errors() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {
            "unique_id": np.repeat(["a", "b"], 36),
            "ds": np.tile(pd.date_range("2020-01-01", periods=36, freq="MS"), 2),
            "y": rng.uniform(50, 150, 72),
        }
    )
    cv = train.groupby("unique_id").tail(6).assign(cutoff=pd.Timestamp("2022-06-01"))
    y = cv["y"].to_numpy()
    cv = cv.assign(SeasonalNaive=y * 1.3, Stat=y * 1.2, Global=y)
    kw = dict(train=train, members=["Stat"], how="mean")
    assert choose_blend_weight(cv, global_col="Global", **kw)[0] == 1.0
    assert choose_blend_weight(cv.assign(Global=y * 2.0), global_col="Global", **kw)[0] == 0.0
    # Errors of opposite sign cancel: the best blend is in the middle.
    best, scores = choose_blend_weight(cv.assign(Global=y * 0.8), global_col="Global", **kw)
    assert best == 0.5 and scores["score"].min() < scores.loc[0.0, "score"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend(cv, global_col="Global", members=["Stat"], weight=1.5)


def test_blend_with_hierarchy_stays_coherent() -> None:
    rows = []
    df = seasonal_panel(4, 48, seed=9)
    for i, (plan, region) in enumerate(
        [("basic", "eu"), ("basic", "us"), ("pro", "eu"), ("pro", "us")]
    ):
        part = df[df["unique_id"] == f"s{i:02d}"]
        rows.append(part.assign(plan=plan, region=region).drop(columns="unique_id"))
    y_df, hier = build_hierarchy(pd.concat(rows), segments=["plan", "region"])
    fc = RevenueForecaster(
        models=("AutoTheta", "SeasonalNaive", SMALL.clone(min_data_in_leaf=5)),
        ensemble="blend",
        blend_weight=0.5,
        h=6,
        n_windows=2,
        n_jobs=1,
    )
    out = fc.fit(y_df, hierarchy=hier).predict()
    for col in (G, FORECAST, "Forecast-p5"):
        assert np.isfinite(out[col]).all()
    for col in (G, FORECAST):
        assert coherence_error(out, hierarchy=hier, model=col) < 1e-6 * out[col].abs().max()


def test_engine_options_are_checked(panel: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="needs the global model"):
        RevenueForecaster(models=("AutoTheta",), ensemble="blend").fit(panel)
    with pytest.raises(ValueError, match="blend_weight"):
        RevenueForecaster(models=(G,), ensemble="blend", blend_weight=1.5).fit(panel)
    with pytest.raises(ValueError, match="not an ensemble member"):
        RevenueForecaster(models=(G, "AutoTheta"), ensemble="blend", ensemble_members=[G]).fit(
            panel
        )
    with pytest.raises(ValueError, match="at most one"):
        RevenueForecaster(models=(G, SMALL)).fit(panel)
    with pytest.raises(ValueError, match="monthly"):
        RevenueForecaster(models=(G,), freq="D").fit(panel)


def test_m3_presets_with_the_global_model() -> None:
    # M3_GLOBAL: the global model blended with the median of statistical members (BaggedETS
    # among them); M3_GLOBAL_TRIMMED, its form before: a trimmed mean including the global model.
    assert M3_GLOBAL["ensemble"] == "blend" and M3_GLOBAL["blend_base"] == "median"
    assert G in M3_GLOBAL["models"] and G not in M3_GLOBAL["ensemble_members"]
    assert "BaggedETS" in M3_GLOBAL["ensemble_members"]
    assert M3_GLOBAL["blend_weight"] in BLEND_GRID
    assert M3_GLOBAL_TRIMMED["ensemble"] == "trimmed" and G in M3_GLOBAL_TRIMMED["ensemble_members"]
    for preset in (M3_GLOBAL, M3_GLOBAL_TRIMMED):
        assert set(preset["ensemble_members"]) <= set(preset["models"])
        engine = RevenueForecaster(**preset, h=18, n_windows=2, step_size=6)
        engine._check()
        assert engine._members(list(preset["models"])) == list(preset["ensemble_members"])
    # M3_BLEND: the statistical preset blended with the global model at a grid weight.
    assert M3_BLEND["models"] == (*M3_ENSEMBLE["models"], G)
    assert M3_BLEND["ensemble_members"] == M3_ENSEMBLE["ensemble_members"]
    assert M3_BLEND["ensemble"] == "blend" and M3_BLEND["blend_base"] == M3_ENSEMBLE["ensemble"]
    assert M3_BLEND["blend_weight"] in BLEND_GRID
    engine = RevenueForecaster(**M3_BLEND, h=18, n_windows=2, step_size=6)
    engine._check()
    assert engine._members([*M3_ENSEMBLE["models"], G]) == list(M3_ENSEMBLE["ensemble_members"])
