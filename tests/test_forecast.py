"""Tests for the revenue forecasting engine (workbench.forecast, workbench.forecast_charts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.forecast import (
    FORECAST,
    M3_ENSEMBLE,
    RevenueForecaster,
    backtest_metrics,
    build_hierarchy,
    coherence_error,
    combine,
    conformal_widths,
    downside,
    make_model,
    reconcile,
    select_models,
    series_scale,
    summarize_metrics,
)
from workbench.forecast_charts import fan_chart

FAST_MODELS = ("AutoTheta", "AutoCES", "SeasonalNaive")


def synthetic_panel(
    n_series: int, length: int, *, seed: int, noise: float = 0.04, start: str = "2019-01-01"
) -> pd.DataFrame:
    """Trend x seasonality x Gaussian noise of known size, month starts in UTC microseconds."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range(start, periods=length, freq="MS", tz="UTC").astype("datetime64[us, UTC]")
    t = np.arange(length)
    frames = []
    for i in range(n_series):
        level = rng.uniform(2_000, 50_000)
        growth = rng.normal(0.008, 0.004)
        amp = rng.uniform(0.0, 0.08)
        phase = rng.integers(12)
        mean = level * (1 + growth * t) * (1 + amp * np.sin(2 * np.pi * (t + phase) / 12))
        y = mean + rng.normal(0.0, noise * level, length)
        frames.append(pd.DataFrame({"unique_id": f"s{i:03d}", "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return synthetic_panel(12, 48, seed=0)


@pytest.fixture(scope="module")
def fitted(panel: pd.DataFrame) -> RevenueForecaster:
    return RevenueForecaster(models=FAST_MODELS, h=6, n_windows=3, n_jobs=1).fit(panel)


# --- engine -------------------------------------------------------------------------


def test_fit_returns_self_with_fitted_state(panel: pd.DataFrame) -> None:
    small = panel[panel["unique_id"].isin(["s000", "s001", "s002"])]
    fc = RevenueForecaster(models=FAST_MODELS, h=3, n_windows=2, n_jobs=1)
    assert fc.fit(small) is fc
    assert fc.models_ == list(FAST_MODELS)
    assert set(fc.selection_) == {"Ensemble"}
    assert {"cv_", "metrics_", "summary_", "calibration_", "forecast_"} <= set(vars(fc))


def test_predict_columns_quantile_order_and_dtype(fitted: RevenueForecaster, panel) -> None:
    out = fitted.predict()
    assert len(out) == 12 * 6
    for m in [*FAST_MODELS, "Ensemble", FORECAST]:
        for col in (
            m,
            f"{m}-lo-95",
            f"{m}-lo-80",
            f"{m}-hi-80",
            f"{m}-hi-95",
            f"{m}-p5",
            f"{m}-p50",
            f"{m}-p95",
        ):
            assert col in out.columns, col
        assert out[[m, f"{m}-lo-95", f"{m}-p5", f"{m}-p95"]].notna().all().all()
        assert (out[f"{m}-p5"] <= out[f"{m}-p50"]).all()
        assert (out[f"{m}-p50"] <= out[f"{m}-p95"]).all()
        assert (out[f"{m}-lo-95"] <= out[f"{m}-lo-80"]).all()
        assert (out[f"{m}-lo-80"] < out[m]).all() and (out[m] < out[f"{m}-hi-80"]).all()
        assert (out[f"{m}-hi-80"] <= out[f"{m}-hi-95"]).all()
        # The 90% interval (P5..P95) sits between the 80% and the 95% ones.
        assert (out[f"{m}-lo-95"] <= out[f"{m}-p5"]).all()
        assert (out[f"{m}-p5"] <= out[f"{m}-lo-80"]).all()
    assert out["ds"].dtype == panel["ds"].dtype
    first = out.groupby("unique_id")["ds"].min()
    last_seen = panel.groupby("unique_id")["ds"].max()
    assert (first == last_seen + pd.DateOffset(months=1)).all()
    # Ensemble = median of the two non-baseline models (= their mean).
    np.testing.assert_allclose(out["Ensemble"], (out["AutoTheta"] + out["AutoCES"]) / 2)
    short = fitted.predict(2)
    assert short.groupby("unique_id").size().eq(2).all()
    pd.testing.assert_frame_equal(short, out.groupby("unique_id").head(2).reset_index(drop=True))
    with pytest.raises(ValueError):
        fitted.predict(7)
    dn = downside(out)
    np.testing.assert_array_equal(dn["downside"], out["Forecast-p5"])


def test_model_columns_equal_statsforecast(fitted: RevenueForecaster, panel) -> None:
    from statsforecast import StatsForecast
    from statsforecast.models import AutoCES, AutoTheta, SeasonalNaive

    naive = panel.assign(ds=panel["ds"].dt.tz_localize(None).astype("datetime64[ns]"))
    sf = StatsForecast(
        [AutoTheta(season_length=12), AutoCES(season_length=12), SeasonalNaive(12)], freq="MS"
    )
    direct = sf.forecast(df=naive, h=6)
    ours = fitted.predict()
    np.testing.assert_array_equal(ours["AutoTheta"], direct["AutoTheta"])
    np.testing.assert_array_equal(ours["AutoCES"], direct["CES"])
    np.testing.assert_array_equal(ours["SeasonalNaive"], direct["SeasonalNaive"])


def test_backtest_has_cutoff_and_ignores_data_after_it(panel: pd.DataFrame) -> None:
    config = dict(models=FAST_MODELS, h=4, n_windows=3, n_jobs=1)
    fc = RevenueForecaster(**config).fit(panel)
    cv = fc.cv_
    assert "cutoff" in cv.columns
    cutoffs = np.sort(cv["cutoff"].unique())
    assert len(cutoffs) == 3
    assert (cv["ds"] > cv["cutoff"]).all()
    assert (cv["ds"] <= cv["cutoff"] + pd.DateOffset(months=4)).all()
    # Scramble every value after the second cutoff: forecasts and intervals made at the
    # first two cutoffs must not move.
    second = cutoffs[1]
    changed = panel.copy()
    after = changed["ds"] > second
    rng = np.random.default_rng(1)
    changed.loc[after, "y"] = changed.loc[after, "y"] * rng.uniform(0.2, 5.0, after.sum())
    cv2 = RevenueForecaster(**config).fit(changed).cv_
    cols = [c for c in cv.columns if c not in ("y",)]
    early = cv["cutoff"] <= second
    pd.testing.assert_frame_equal(
        cv.loc[early, cols].reset_index(drop=True), cv2.loc[early, cols].reset_index(drop=True)
    )
    # ... while the last cutoff's forecasts do change (the test can fail).
    last = cv["cutoff"] == cutoffs[2]
    assert not np.allclose(cv.loc[last, "AutoTheta"], cv2.loc[last, "AutoTheta"])
    # The first window has no earlier residuals to calibrate on, so no intervals.
    first = cv["cutoff"] == cutoffs[0]
    assert cv.loc[first, "Forecast-lo-80"].isna().all()
    assert cv.loc[~first, "Forecast-lo-80"].notna().all()


def test_summary_reports_every_model_against_seasonal_naive(fitted: RevenueForecaster) -> None:
    s = fitted.summary_
    assert {"mae", "mape", "smape", "mase", "pinball", "coverage_80", "coverage_90"} <= set(
        s["metric"]
    )
    snaive = s[s["model"] == "SeasonalNaive"]
    assert np.allclose(snaive.loc[~snaive["metric"].str.startswith("coverage"), "relative"], 1.0)
    mase = s[(s["metric"] == "mase")].set_index("model")["value"]
    assert mase["Ensemble"] < mase["SeasonalNaive"]  # trend: naive is beaten
    per_series = fitted.metrics_
    assert per_series["unique_id"].nunique() == 12


def test_choose_best_uses_the_selected_model(panel: pd.DataFrame) -> None:
    fc = RevenueForecaster(models=FAST_MODELS, h=3, n_windows=2, choose="best", n_jobs=1)
    out = fc.fit(panel).predict()
    assert set(fc.selection_) <= {*FAST_MODELS, "Ensemble"}
    for uid, model in fc.selection_.items():
        rows = out[out["unique_id"] == uid]
        np.testing.assert_array_equal(rows[FORECAST], rows[model])
    # Selection is in-sample on the backtest, so Forecast is not scored there.
    assert FORECAST not in fc.metrics_.columns


def test_conformal_intervals_cover_near_nominal() -> None:
    """Hold out 12 months of a 60-series panel with known noise and count hits.

    720 held-out points, correlated within a series; the tolerance (about three
    standard errors at an effective sample of ~200) is honest for that size.
    """
    full = synthetic_panel(60, 72, seed=7, noise=0.05)
    cutoff = full["ds"].max() - pd.DateOffset(months=12)
    train, test = full[full["ds"] <= cutoff], full[full["ds"] > cutoff]
    fc = RevenueForecaster(
        models=FAST_MODELS, h=12, n_windows=3, quantiles=(0.05, 0.5, 0.95), n_jobs=1
    ).fit(train)
    out = fc.predict().merge(test, on=["unique_id", "ds"])
    assert len(out) == 720
    y = out["y"]
    cov80 = ((y >= out["Forecast-lo-80"]) & (y <= out["Forecast-hi-80"])).mean()
    cov90 = ((y >= out["Forecast-p5"]) & (y <= out["Forecast-p95"])).mean()
    cov95 = ((y >= out["Forecast-lo-95"]) & (y <= out["Forecast-hi-95"])).mean()
    assert abs(cov80 - 0.80) < 0.08, cov80
    assert abs(cov90 - 0.90) < 0.06, cov90
    assert abs(cov95 - 0.95) < 0.05, cov95
    below_p5 = (y < out["Forecast-p5"]).mean()
    assert below_p5 < 0.10, below_p5


# --- hierarchy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bottom() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ds = pd.date_range("2020-01-01", periods=40, freq="MS", tz="UTC").astype("datetime64[us, UTC]")
    t = np.arange(40)
    rows = []
    for plan in ("basic", "pro"):
        for region in ("eu", "us"):
            level = rng.uniform(1_000, 10_000)
            y = level * (1 + 0.01 * t) + rng.normal(0, 0.05 * level, 40)
            rows.append(pd.DataFrame({"plan": plan, "region": region, "ds": ds, "y": y}))
    return pd.concat(rows, ignore_index=True)


def test_build_hierarchy_aggregates(bottom: pd.DataFrame) -> None:
    y_df, hier = build_hierarchy(bottom, segments=["plan", "region"])
    assert set(hier.tags) == {"total", "total/plan", "total/plan/region"}
    assert sorted(y_df["unique_id"].unique()) == sorted(
        ["total", "total/basic", "total/pro"]
        + [f"total/{p}/{r}" for p in ("basic", "pro") for r in ("eu", "us")]
    )
    total = y_df[y_df["unique_id"] == "total"].set_index("ds")["y"]
    np.testing.assert_allclose(total, bottom.groupby("ds")["y"].sum().loc[total.index])
    pro = y_df[y_df["unique_id"] == "total/pro"].set_index("ds")["y"]
    np.testing.assert_allclose(
        pro, bottom[bottom["plan"] == "pro"].groupby("ds")["y"].sum().loc[pro.index]
    )
    assert y_df["ds"].dtype == bottom["ds"].dtype
    assert hier.bottom_ids == [f"total/{p}/{r}" for p in ("basic", "pro") for r in ("eu", "us")]


@pytest.mark.parametrize("method", ["bottom_up", "mint_shrink"])
def test_reconciled_segments_sum_to_total(bottom: pd.DataFrame, method: str) -> None:
    y_df, hier = build_hierarchy(bottom, segments=["plan", "region"])
    fc = RevenueForecaster(models=FAST_MODELS, h=6, n_windows=2, reconciler=method, n_jobs=1)
    out = fc.fit(y_df, hierarchy=hier).predict()
    for col in ["AutoTheta", "SeasonalNaive", "Ensemble", FORECAST]:
        wide = out.pivot(index="ds", columns="unique_id", values=col)
        bottoms = wide[hier.bottom_ids].sum(axis=1)
        np.testing.assert_allclose(wide["total"], bottoms, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(
            wide["total/pro"], wide["total/pro/eu"] + wide["total/pro/us"], rtol=1e-9
        )
        assert coherence_error(out, hierarchy=hier, model=col) < 1e-6 * wide["total"].abs().max()
    cv = fc.cv_
    for cutoff, part in cv.groupby("cutoff"):
        assert coherence_error(part, hierarchy=hier) < 1e-6 * part["Forecast"].abs().max(), cutoff


def test_reconcile_moves_incoherent_forecasts() -> None:
    """Hand-made two-leaf hierarchy: bottom-up replaces the total by the leaves' sum."""
    s = pd.DataFrame({"unique_id": ["total", "total/a", "total/b"], "total/a": [1.0, 1.0, 0.0]})
    s["total/b"] = [1.0, 0.0, 1.0]
    from workbench.forecast import Hierarchy

    hier = Hierarchy(
        S=s,
        tags={
            "total": np.array(["total"]),
            "total/leaf": np.array(["total/a", "total/b"]),
        },
    )
    ds = pd.Timestamp("2024-01-01")
    fc = pd.DataFrame(
        {"unique_id": ["total", "total/a", "total/b"], "ds": ds, "M": [10.0, 3.0, 4.0]}
    )
    rec = reconcile(fc, hierarchy=hier, models=["M"], method="bottom_up")
    assert rec.set_index("unique_id")["M"].to_dict() == {
        "total": 7.0,
        "total/a": 3.0,
        "total/b": 4.0,
    }
    ols = reconcile(fc, hierarchy=hier, models=["M"], method="ols").set_index("unique_id")["M"]
    # OLS projection: the three numbers move by equal thirds of the gap 10 - 7 = 3.
    np.testing.assert_allclose(ols.to_numpy(), [9.0, 4.0, 5.0])


# --- pure functions on hand-computed frames -----------------------------------------


def test_metrics_by_hand() -> None:
    train = pd.DataFrame(
        {
            "unique_id": "a",
            "ds": pd.date_range("2023-01-01", periods=4, freq="MS"),
            "y": [10.0, 12.0, 14.0, 13.0],
        }
    )
    test = pd.DataFrame(
        {
            "unique_id": "a",
            "ds": pd.date_range("2023-05-01", periods=2, freq="MS"),
            "y": [100.0, 200.0],
            "M": [110.0, 180.0],
            "M-lo-80": [90.0, 190.0],
            "M-hi-80": [120.0, 195.0],
            "M-p10": [95.0, 170.0],
            "M-p50": [110.0, 180.0],
            "M-p90": [125.0, 190.0],
            "SeasonalNaive": [100.0, 100.0],
            "SeasonalNaive-lo-80": [0.0, 0.0],
            "SeasonalNaive-hi-80": [1.0, 1.0],
            "SeasonalNaive-p10": [90.0, 90.0],
            "SeasonalNaive-p50": [100.0, 100.0],
            "SeasonalNaive-p90": [110.0, 110.0],
        }
    )
    m = backtest_metrics(
        test,
        train=train,
        models=["M", "SeasonalNaive"],
        season_length=2,
        levels=[80],
        quantiles=[0.1, 0.5, 0.9],
    ).set_index("metric")
    # MAE: (10 + 20) / 2 = 15.
    assert m.loc["mae", "M"] == pytest.approx(15.0)
    # MAPE: (10/100 + 20/200) / 2 = 10 %.
    assert m.loc["mape", "M"] == pytest.approx(10.0)
    # sMAPE (M3, 0-200): 200/2 * (10/210 + 20/380) = 10.02506...
    assert m.loc["smape", "M"] == pytest.approx(100 * (10 / 210 + 20 / 380))
    assert m.loc["smape", "M"] == pytest.approx(10.025063, abs=1e-5)
    # MASE: in-sample lag-2 errors |14-10| = 4, |13-12| = 1, scale 2.5 -> 15 / 2.5 = 6.
    assert m.loc["mase", "M"] == pytest.approx(6.0)
    assert m.loc["mase", "SeasonalNaive"] == pytest.approx(50 / 2.5)
    # Coverage: 100 in [90, 120], 200 not in [190, 195] -> 0.5.
    assert m.loc["coverage_80", "M"] == pytest.approx(0.5)
    # Pinball, mean over quantiles and points:
    # y=100: q.1 pred 95 -> .1*5=.5; q.5 pred 110 -> .5*10=5; q.9 pred 125 -> .1*25=2.5
    # y=200: q.1 pred 170 -> .1*30=3; q.5 pred 180 -> .5*20=10; q.9 pred 190 -> .9*10=9
    assert m.loc["pinball", "M"] == pytest.approx((0.5 + 5 + 2.5 + 3 + 10 + 9) / 6)
    # Scaled like MASE: 5 / 2.5.
    assert m.loc["scaled_pinball", "M"] == pytest.approx(2.0)
    summary = summarize_metrics(
        m.reset_index().assign(unique_id="a")[["unique_id", "metric", "M", "SeasonalNaive"]]
    ).set_index(["metric", "model"])
    assert summary.loc[("mae", "M"), "relative"] == pytest.approx(15 / 50)
    assert np.isnan(summary.loc[("coverage_80", "M"), "relative"])


def test_conformal_widths_order_statistic() -> None:
    resid = pd.DataFrame({"step": 1, "scale": 2.0, "M": 2.0 * np.arange(1, 10)})
    w = conformal_widths(resid, models=["M"], levels=[80, 90, 95], h=2).set_index(["step", "level"])
    # n = 9 scaled residuals 1..9: k = ceil(10 * .8) = 8 -> 8; ceil(10 * .9) = 9 -> 9.
    assert w.loc[(1, 80.0), "width"] == 8.0
    assert w.loc[(1, 90.0), "width"] == 9.0
    # 95 % needs k = 10 > 9: the step falls back to pooling steps for every level (one
    # method per step keeps intervals nested; here the pool is step 1 itself, so 80 % and
    # 90 % are unchanged); 95 % is still too few, so the max.
    assert w.loc[(1, 80.0), "pooled"]
    assert w.loc[(1, 95.0), "width"] == 9.0
    # Step 2 has no residuals of its own: sqrt(2) x the pooled step-1 quantile.
    assert w.loc[(2, 80.0), "width"] == pytest.approx(8.0 * np.sqrt(2))
    assert w.loc[(2, 80.0), "pooled"]


def test_series_scale_and_combine_and_select() -> None:
    df = pd.DataFrame(
        {
            "unique_id": ["a", "a", "a", "b", "b"],
            "ds": pd.to_datetime(
                ["2024-01-01", "2024-02-01", "2024-03-01"] * 1 + ["2024-01-01", "2024-02-01"]
            ),
            "y": [10.0, 14.0, 12.0, 5.0, 5.0],
        }
    )
    scale = series_scale(df)
    assert scale["a"] == pytest.approx(3.0)  # (|4| + |-2|) / 2
    assert scale["b"] == pytest.approx(5.0)  # constant series -> mean |y|
    frame = pd.DataFrame({"A": [1.0, 5.0], "B": [2.0, 6.0], "C": [10.0, 0.0]})
    assert combine(frame, members=["A", "B", "C"])["Ensemble"].tolist() == [2.0, 5.0]
    assert combine(frame, members=["A", "B", "C"], how="mean")["Ensemble"].tolist() == [
        pytest.approx(13 / 3),
        pytest.approx(11 / 3),
    ]
    four = pd.DataFrame(
        {
            "A": [1.0, 1.0, np.nan],
            "B": [2.0, 2.0, 3.0],
            "C": [10.0, 3.0, 5.0],
            "D": [4.0, np.nan, np.nan],
        }
    )
    trimmed = combine(four, members=["A", "B", "C", "D"], how="trimmed")["Ensemble"]
    assert trimmed.tolist() == [3.0, 2.0, 4.0]  # (2+4)/2; 3 values -> median; 2 -> mean
    with pytest.raises(ValueError, match="trimmed"):
        combine(four, members=["A", "B"], how="mode")
    metrics = pd.DataFrame(
        {
            "unique_id": ["a", "a", "b", "b"],
            "metric": ["mase", "mae", "mase", "mae"],
            "A": [0.9, 1.0, 0.5, 9.0],
            "B": [0.8, 2.0, np.nan, 1.0],
        }
    )
    assert select_models(metrics, candidates=["A", "B"]).to_dict() == {"a": "B", "b": "A"}
    assert select_models(metrics, candidates=["A", "B"], metric="mae").to_dict() == {
        "a": "A",
        "b": "B",
    }


def test_make_model_builds_the_m3_ensemble_members() -> None:
    damped = make_model("AutoETSDamped", season_length=12)
    assert damped.alias == "AutoETSDamped" and damped.damped is True
    assert make_model("AutoETS").damped is None
    for name in ("MFLES", "SeasonalExponentialSmoothingOptimized"):
        model = make_model(name, season_length=12)
        assert model.alias == name and model.season_length == 12
    with pytest.raises(ValueError, match="AutoETSDamped"):
        make_model("NoSuchModel")


def test_m3_ensemble_preset_is_the_trimmed_mean_of_its_members(panel: pd.DataFrame) -> None:
    fc = RevenueForecaster(**M3_ENSEMBLE, h=6, n_windows=2, n_jobs=1).fit(panel)
    members = list(M3_ENSEMBLE["ensemble_members"])
    assert fc.models_ == list(M3_ENSEMBLE["models"])
    for frame in (fc.predict(), fc.cv_):
        values = frame[members].to_numpy()
        assert np.isfinite(values).all()
        expected = (values.sum(axis=1) - values.min(axis=1) - values.max(axis=1)) / (
            len(members) - 2
        )
        np.testing.assert_allclose(frame["Ensemble"].to_numpy(), expected, rtol=1e-12)
        np.testing.assert_array_equal(frame[FORECAST].to_numpy(), frame["Ensemble"].to_numpy())
    # The damped-only variant is a model of its own, not a copy of AutoETS' choice.
    out = fc.predict()
    assert (out["AutoETSDamped"] != out["AutoETS"]).any()


def test_input_validation(panel: pd.DataFrame) -> None:
    fc = RevenueForecaster(models=FAST_MODELS, h=3, n_windows=1, n_jobs=1)
    with pytest.raises(ValueError, match="gaps"):
        fc.fit(panel[panel["ds"] != panel["ds"].iloc[10]])
    with pytest.raises(ValueError, match="grid"):
        fc.fit(panel.assign(ds=panel["ds"] + pd.Timedelta(days=3)))
    with pytest.raises(ValueError, match="missing columns"):
        fc.fit(panel.drop(columns="y"))


# --- chart --------------------------------------------------------------------------


def test_fan_chart_spec(fitted: RevenueForecaster, panel: pd.DataFrame) -> None:
    out = fitted.predict()
    chart = fan_chart(panel, out, unique_id="s001")
    spec = chart.to_dict()
    assert len(spec["layer"]) == 4
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["area", "area", "line", "line"]
    data = {name: rows for name, rows in spec["datasets"].items()}
    sizes = sorted(len(rows) for rows in data.values())
    assert sizes == [6, 6, 6, 48]  # two bands, the median, the history
    band = next(rows for rows in data.values() if rows and rows[0].get("band") == "95%")
    expected = out[out["unique_id"] == "s001"]["Forecast-lo-95"].to_numpy()
    np.testing.assert_allclose([r["lo"] for r in band], expected)
    assert spec["layer"][0]["encoding"]["y2"]["field"] == "hi"
    with pytest.raises(ValueError, match="pass unique_id"):
        fan_chart(panel, out)


def test_segment_series_fills_months_without_accounts_with_zero() -> None:
    from workbench.forecast import segment_series

    am = pd.DataFrame(
        {
            "month": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-03-01"]),
            "region": ["EU", "NA", "NA"],
            "mrr": [1000, 250, 500],
        }
    )
    out = segment_series(am, segments=["region"])
    assert len(out) == 6  # 2 regions x 3 months, February included
    eu = out[out["region"] == "EU"]["y"].tolist()
    na = out[out["region"] == "NA"]["y"].tolist()
    assert eu == [10.0, 0.0, 0.0] and na == [2.5, 0.0, 5.0]


def test_conformal_widths_stay_nested_when_a_step_is_short_for_the_widest_level() -> None:
    # step 1 has 6 residuals: enough for 80 % (the 6th of 6) but not for 95 %; the other
    # steps have many, small ones. Mixing per-step and pooled widths across levels made the
    # 80 % width (30) wider than the 95 % one (about 6).
    rng = np.random.default_rng(0)
    step1 = pd.DataFrame({"step": 1, "scale": 1.0, "M": [1, 2, 3, 4, 5, 30]})
    rest = pd.DataFrame(
        {"step": np.repeat([2, 3, 4], 200), "scale": 1.0, "M": rng.uniform(0, 8, 600)}
    )
    resid = pd.concat([step1, rest], ignore_index=True)
    w = conformal_widths(resid, models=["M"], levels=[80, 90, 95], h=4)
    wide = w.pivot_table(index="step", columns="level", values="width")
    assert (wide[80.0] <= wide[90.0]).all() and (wide[90.0] <= wide[95.0]).all()
    # step 1 took the pooled widths for every level (one method per step)
    assert w.loc[w["step"] == 1, "pooled"].all() and not w.loc[w["step"] == 2, "pooled"].any()
