"""Bottom-up forecast: survival interpolation, expected MRR, inputs, comparison, truth check."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench import forecast_bottom_up as bu

M = bu.DAYS_PER_MONTH


def _probs_constant(lam_per_day: np.ndarray) -> np.ndarray:
    """Churn probabilities at 30/90/180 days under a constant hazard."""
    return np.column_stack([1 - np.exp(-lam_per_day * d) for d in (30, 90, 180)])


def test_constant_hazard_gives_exponential_survival() -> None:
    lam = np.array([0.0, 0.001, 0.01])
    surv = bu.survival_curve(_probs_constant(lam), months=12)
    expected = np.exp(-np.outer(lam, np.arange(1, 13) * M))
    np.testing.assert_allclose(surv, expected, rtol=1e-12, atol=1e-12)


def test_piecewise_hazard_hits_the_three_points_and_extends_the_last_rate() -> None:
    p = np.array([[0.1, 0.3, 0.5]])
    surv = bu.survival_curve(p, months=12, days_per_month=30.0)
    # Month 1 ends at day 30, month 3 at day 90, month 6 at day 180: the scores exactly.
    np.testing.assert_allclose(surv[0, [0, 2, 5]], [0.9, 0.7, 0.5], rtol=1e-12)
    # Inside [30, 90]: exponential interpolation (constant hazard) between 0.9 and 0.7.
    np.testing.assert_allclose(surv[0, 1], 0.9 * (0.7 / 0.9) ** 0.5, rtol=1e-12)
    # Beyond 180 days the [90, 180] hazard continues: S(360) = 0.5 * (0.5/0.7)^(180/90).
    np.testing.assert_allclose(surv[0, 11], 0.5 * (0.5 / 0.7) ** 2, rtol=1e-12)
    assert np.all(np.diff(surv[0]) <= 0)


def test_non_monotone_scores_are_made_monotone() -> None:
    surv = bu.survival_curve(np.array([[0.2, 0.1, 0.3]]), months=6, days_per_month=30.0)
    np.testing.assert_allclose(surv[0, :3], [0.8, 0.8, 0.8], rtol=1e-12)  # 90d lifted to 0.2
    assert surv[0, 5] == pytest.approx(0.7)


def test_survival_curve_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        bu.survival_curve(np.array([[0.1, 0.2]]), months=3)
    with pytest.raises(ValueError, match="missing"):
        bu.survival_curve(np.array([[0.1, np.nan, 0.3]]), months=3)


def test_expected_mrr_from_known_survival_and_expansion() -> None:
    lam = np.array([0.002, 0.0005])
    mrr = np.array([100.0, 300.0])
    accounts = pd.DataFrame({"mrr": mrr}).join(
        pd.DataFrame(_probs_constant(lam), columns=["p_30d", "p_90d", "p_180d"])
    )
    out = bu.bottom_up_forecast(accounts, start="2025-01-01", h=6, expansion_rate=0.01)
    k = np.arange(1, 7)
    surv = np.exp(-np.outer(lam, k * M))
    np.testing.assert_allclose(out["bottom_up_churn_only"], mrr @ surv, rtol=1e-12)
    np.testing.assert_allclose(out["bottom_up"], (mrr @ surv) * 1.01**k, rtol=1e-12)
    np.testing.assert_allclose(out["expected_accounts"], surv.sum(axis=0), rtol=1e-12)
    assert list(out["ds"]) == list(pd.date_range("2025-01-01", periods=6, freq="MS"))
    sd = np.sqrt((mrr**2) @ (surv * (1 - surv))) * 1.01**k
    np.testing.assert_allclose(out["bottom_up-hi-90"] - out["bottom_up"], 1.6448536 * sd, 1e-6)
    assert (out["bottom_up-lo-90"] <= out["bottom_up"]).all()


def _account_months() -> pd.DataFrame:
    rows = [
        # month, account, opening, mrr, fx
        ("2025-01-01", "a", 0, 1000, 0),
        ("2025-02-01", "a", 1000, 1100, 0),  # +100 expansion
        ("2025-03-01", "a", 1100, 1100, 0),
        ("2025-02-01", "b", 0, 2000, 0),  # new
        ("2025-03-01", "b", 2000, 1900, 50),  # -150 contraction, +50 FX
        ("2025-01-01", "c", 0, 500, 0),
        ("2025-02-01", "c", 500, 0, 0),  # churned: not a survivor
    ]
    df = pd.DataFrame(rows, columns=["month", "account_id", "opening_mrr", "mrr", "fx_mrr"])
    df["month"] = pd.to_datetime(df["month"]).dt.date
    return df


def test_net_expansion_rate_counts_survivors_only_and_excludes_fx() -> None:
    am = _account_months()
    # survivors: a Feb (1000 -> 1100), a Mar (1100 -> 1100), b Mar (2000 -> 1900, fx +50)
    assert bu.net_expansion_rate(am, months=12) == pytest.approx((100 + 0 - 150) / 4100)
    assert bu.net_expansion_rate(am, months=1) == pytest.approx(-150 / 3100)


def test_account_inputs_joins_latest_scores_and_fills_unscored() -> None:
    am = pd.concat(
        [
            _account_months(),
            pd.DataFrame(
                {
                    "month": [pd.Timestamp("2025-03-01").date()],
                    "account_id": ["d"],
                    "opening_mrr": [0],
                    "mrr": [1000],
                    "fx_mrr": [0],
                }
            ),
        ]
    )
    scores = pd.DataFrame(
        {
            "entity_id": ["a", "a", "a", "b", "b", "b", "a"],
            "model_name": ["churn_30d", "churn_90d", "churn_180d"] * 2 + ["churn_30d"],
            "score": [0.1, 0.2, 0.3, 0.0, 0.1, 0.2, 0.05],
            "as_of": pd.to_datetime(["2025-03-01"] * 6 + ["2025-03-15"]),
        }
    )
    out = bu.account_inputs(am, scores).set_index("account_id")
    assert out.attrs["unscored"] == 1
    assert out.loc["a", "mrr"] == pytest.approx(11.0)  # minor -> major units
    assert out.loc["a", "p_30d"] == pytest.approx(0.05)  # the later as_of wins
    w = np.array([11.0, 19.0])
    assert out.loc["d", "p_90d"] == pytest.approx(np.average([0.2, 0.1], weights=w))
    assert "c" not in out.index  # not paying in the latest month


def test_churn_probabilities_uses_the_horizons_present() -> None:
    scores = pd.DataFrame(
        {
            "entity_id": ["a", "a", "b"],
            "model_name": ["churn_90d", "churn_30d", "churn_30d"],
            "score": [0.2, 0.1, 0.3],
        }
    )
    out = bu.churn_probabilities(scores)
    assert list(out.columns) == ["account_id", "p_30d", "p_90d"]
    assert list(out["account_id"]) == ["a"]  # b lacks churn_90d
    with pytest.raises(ValueError, match="05_churn"):
        bu.churn_probabilities(scores.assign(model_name="recovery_7d"))


def test_forecast_from_accounts_starts_after_the_latest_month() -> None:
    am = _account_months()
    scores = pd.DataFrame(
        {
            "entity_id": ["a", "b"] * 3,
            "model_name": ["churn_30d"] * 2 + ["churn_90d"] * 2 + ["churn_180d"] * 2,
            "score": [0.0] * 6,
        }
    )
    out = bu.forecast_from_accounts(am, scores, h=2)
    assert out["ds"].iloc[0] == pd.Timestamp("2025-04-01")
    rate = (100 + 0 - 150) / 4100
    assert list(out["bottom_up"]) == pytest.approx([30 * (1 + rate), 30 * (1 + rate) ** 2])
    assert out.attrs["accounts"] == 2 and out.attrs["unscored"] == 0
    hist = bu.total_mrr(am)
    assert list(hist["y"]) == pytest.approx([15.0, 31.0, 30.0])


def test_compare_aligns_months_and_reports_the_gap() -> None:
    top = pd.DataFrame(
        {
            "ds": pd.date_range("2025-04-01", periods=3, freq="MS", tz="UTC"),
            "Forecast": [110.0, 120.0, 130.0],
            "Forecast-lo-80": [100.0, 105.0, 110.0],
            "Forecast-hi-80": [120.0, 135.0, 150.0],
        }
    )
    accounts = pd.DataFrame({"mrr": [100.0], "p_30d": [0.0], "p_90d": [0.0], "p_180d": [0.0]})
    bottom = bu.bottom_up_forecast(accounts, start="2025-04-01", h=3)
    table = bu.compare(top, bottom)
    assert list(table["gap"]) == pytest.approx([10.0, 20.0, 30.0])
    assert table["gap_pct"].iloc[0] == pytest.approx(100 * 10 / 110)
    chart = bu.comparison_chart(table, history=pd.DataFrame({"ds": top["ds"], "y": [1, 2, 3]}))
    spec = chart.to_dict()
    assert len(spec["layer"]) == 2
    with pytest.raises(ValueError, match="no month"):
        bu.compare(top, bu.bottom_up_forecast(accounts, start="2030-01-01", h=2))


def test_top_down_total_reads_the_run_and_falls_back_to_the_latest() -> None:
    con = duckdb.connect()
    frame = pd.DataFrame(
        {
            "unique_id": ["total", "total", "total/eu", "total"],
            "ds": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-01-01", "2025-01-01"]),
            "Forecast": [1.0, 2.0, 0.5, 9.0],
            "run_id": ["20250101T000000Z-a", "20250101T000000Z-a", "x", "20240101T000000Z-b"],
        }
    )
    con.register("f", frame)
    con.execute("CREATE TABLE forecasts AS SELECT * FROM f")
    rows = bu.top_down_total(con, run_id="20250101T000000Z-a")
    assert list(rows["Forecast"]) == [1.0, 2.0]
    rows = bu.top_down_total(con, run_id="adhoc-missing")
    assert rows.attrs["run_id"] == "20250101T000000Z-a"
    with pytest.raises(LookupError, match="04_forecast"):
        bu.top_down_total(duckdb.connect(), run_id="r")


def _stored_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 3-month bottom-up forecast and its comparison with a top-down covering 2 months."""
    accounts = pd.DataFrame({"mrr": [100.0], "p_30d": [0.0], "p_90d": [0.0], "p_180d": [0.0]})
    bottom = bu.bottom_up_forecast(accounts, start="2025-04-01", h=3)
    top = pd.DataFrame(
        {"ds": pd.date_range("2025-04-01", periods=2, freq="MS"), "Forecast": [110.0, 125.0]}
    )
    return bottom, bu.compare(top, bottom)


def test_stored_rows_keep_every_bottom_up_month_with_its_gap() -> None:
    bottom, table = _stored_inputs()
    rows = bu.stored_rows(bottom, table, run_id="r1", top_down_run_id="r0")
    assert list(rows.columns) == [
        *bottom.columns, "top_down", "gap", "unique_id", "run_id", "top_down_run_id",
    ]  # fmt: skip
    assert list(rows["ds"]) == list(bottom["ds"])  # the month without a top-down stays
    assert rows["top_down"].tolist()[:2] == [110.0, 125.0] and np.isnan(rows["top_down"].iloc[2])
    assert rows["gap"].tolist()[:2] == pytest.approx([10.0, 25.0]) and np.isnan(rows["gap"].iloc[2])
    assert set(rows["unique_id"]) == {"total"} and set(rows["run_id"]) == {"r1"}
    assert set(rows["top_down_run_id"]) == {"r0"}


def test_store_bottom_up_replaces_the_runs_rows_only(isolated_env: Path) -> None:
    from workbench.config import load_settings
    from workbench.store import Warehouse

    settings = load_settings(Path(__file__).resolve().parents[1])  # data in isolated_env
    bottom, table = _stored_inputs()
    args = {"top_down_run_id": "r0", "settings": settings}
    assert bu.store_bottom_up(bottom, table, run_id="r1", **args) == 3
    assert bu.store_bottom_up(bottom, table, run_id="r2", **args) == 3
    assert bu.store_bottom_up(bottom.head(2), table, run_id="r1", **args) == 2  # a rerun
    with Warehouse(settings).read(step="test") as con:
        counts = con.execute(
            f"SELECT run_id, count(*), count(gap) FROM {bu.TABLE} GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert counts == [("r1", 2, 2), ("r2", 3, 2)]


@pytest.fixture(scope="module")
def tiny_truth(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from workbench.simulator.simulation import simulate

    out: Path = tmp_path_factory.mktemp("sim")
    simulate(accounts=400, months=24, seed=3, out=out, progress=False)
    return pd.read_parquet(out / "truth" / "churn_hazard.parquet")


@pytest.mark.parametrize("as_of_month", [12, 18])
def test_expected_survivors_match_the_simulator_truth(
    tiny_truth: pd.DataFrame, as_of_month: int
) -> None:
    """The simulator's true monthly voluntary hazards, turned into 30/90/180-day churn
    probabilities, give expected survivors within 3 sd of the realized ones."""
    h, k = tiny_truth, 6
    later = h[(h["month_index"] >= as_of_month) & (h["month_index"] < as_of_month + k)]
    involuntary = later.loc[later["churned"] & (later["churn_type"] == "involuntary"), "account_id"]
    cohort = h[(h["month_index"] == as_of_month) & ~h["account_id"].isin(involuntary)]
    lam = -np.log1p(-cohort["hazard"].to_numpy()) / M
    accounts = pd.DataFrame(_probs_constant(lam), columns=["p_30d", "p_90d", "p_180d"])
    accounts["mrr"] = 1.0
    expected = bu.bottom_up_forecast(accounts, start="2025-01-01", h=k)
    voluntary = later[
        later["churned"]
        & (later["churn_type"] == "voluntary")
        & later["account_id"].isin(cohort["account_id"])
    ]
    first = voluntary.groupby("account_id")["month_index"].min()
    realized = np.array([len(cohort) - (first <= as_of_month + s - 1).sum() for s in range(1, 7)])
    sd = (expected["bottom_up-hi-90"] - expected["bottom_up"]).to_numpy() / 1.6448536
    assert len(cohort) > 80 and realized[-1] < len(cohort)  # something churned
    z = (realized - expected["bottom_up"].to_numpy()) / sd
    assert np.all(np.abs(z) < 3), (realized, expected["bottom_up"].round(1).tolist())


@pytest.mark.parametrize(
    ("currency", "minor", "major"),
    [("usd", 50_000, 500.0), ("jpy", 500_000, 500_000.0), ("kwd", 500_000, 500.0)],
)
def test_major_units_follow_the_reporting_currency(currency: str, minor: int, major: float) -> None:
    from workbench import forecast as fc

    am = pd.DataFrame(
        {
            "month": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-02-01", "2024-02-01"]),
            "account_id": ["a", "b", "a", "b"],
            "mrr": [minor] * 4,
            "region": ["EU"] * 4,
            "reporting_currency": currency,
        }
    )
    assert bu.current_mrr(am)["mrr"].tolist() == [major, major]
    assert bu.total_mrr(am)["y"].tolist() == [2 * major, 2 * major]
    assert fc.segment_series(am, segments=["region"])["y"].tolist() == [2 * major, 2 * major]
    assert bu.current_mrr(am, scale=1.0)["mrr"].tolist() == [minor, minor]  # explicit wins
    # a table that does not say its currency keeps the two-decimal default
    assert bu.current_mrr(am.drop(columns="reporting_currency"))["mrr"].iloc[0] == minor / 100
