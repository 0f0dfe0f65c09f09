"""Drift report: the fast path agrees with Evidently, files, bad inputs."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench.monitoring import drift
from workbench.monitoring.drift import DriftResult, column_drift, drift_report

SHIFTED = ["num_mean", "num_scale", "count_rate", "plan_mix", "flag_rate"]


def shifted_frames(n_ref: int, n_cur: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric, count, categorical and boolean columns; the SHIFTED ones drift strongly."""
    rng = np.random.default_rng(seed)
    plans = np.array(["free", "basic", "pro", "team"])
    shares = np.array([0.4, 0.3, 0.2, 0.1])

    def frame(n: int, shift: bool) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "num_mean": rng.normal(0.8 if shift else 0.0, 1.0, n),
                "num_scale": rng.normal(0.0, 2.0 if shift else 1.0, n),
                "count_rate": rng.poisson(3.0 if shift else 1.2, n),
                "plan_mix": rng.choice(plans, n, p=shares[::-1] if shift else shares),
                "flag_rate": rng.random(n) < (0.6 if shift else 0.3),
                "num_same_a": rng.normal(5.0, 2.0, n),
                "num_same_b": rng.lognormal(3.0, 1.0, n),
                "num_same_c": rng.uniform(0, 1, n),
                "count_same": rng.poisson(2.0, n),
                "plan_same": rng.choice(plans, n, p=shares),
                "flag_same": rng.random(n) < 0.3,
                "few_same": rng.integers(0, 4, n).astype(float),
            }
        )

    return frame(n_ref, False), frame(n_cur, True)


@pytest.fixture(scope="module")
def feature_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A realistic churn feature frame: months before August as reference, after as current."""
    from workbench.features import churn_training_set
    from workbench.features.synthetic import random_warehouse

    con = duckdb.connect()
    random_warehouse(con, n_accounts=200, start="2024-01-01", end="2025-01-01", seed=1)
    frame = churn_training_set(con, start="2024-02-01", end="2025-01-01")
    # Keep the test fast: every categorical and low-cardinality column, some numeric ones.
    numeric = [c for c in frame.columns if frame[c].dtype == "float64"][:12]
    other = ["plan_tier", "last_decline_code", "is_past_due", "failed_payments_30d"]
    cols = ["account_id", "as_of", *numeric, *[c for c in other if c in frame.columns]]
    frame = frame[cols]
    cut = pd.Timestamp("2024-08-01", tz="UTC")
    return frame[frame["as_of"] < cut], frame[frame["as_of"] >= cut]


@pytest.fixture(scope="module")
def paired(feature_frames, tmp_path_factory) -> dict[str, tuple[DriftResult, DriftResult]]:
    """Evidently and fast results on a small, a large and the realistic pair of frames."""
    out = tmp_path_factory.mktemp("drift")
    cases = {
        "small": shifted_frames(600, 400, seed=1),
        "large": shifted_frames(2500, 1500, seed=2),
        "features": feature_frames,
    }
    results = {}
    for name, (ref, cur) in cases.items():
        evid = drift_report(ref, cur, method="evidently", out_dir=out, name=f"{name}_evidently")
        fast = drift_report(ref, cur, method="fast", out_dir=out, name=f"{name}_fast")
        results[name] = (evid, fast)
    return results


def test_fast_path_agrees_with_evidently(paired):
    merged = []
    for name, (evid, fast) in paired.items():
        assert evid.method == "evidently" and fast.method == "fast"
        both = evid.columns.merge(fast.columns, on="column", suffixes=("_e", "_f"))
        assert len(both) == len(evid.columns) == len(fast.columns), name
        merged.append(both.assign(case=name))
    both = pd.concat(merged, ignore_index=True)
    assert len(both) >= 40
    agreement = (both["drifted_e"] == both["drifted_f"]).mean()
    assert agreement >= 0.95, both.loc[both["drifted_e"] != both["drifted_f"]]
    # Same test and threshold for every column, and the same score up to rounding.
    assert (both["stat_test_e"] == both["stat_test_f"]).all()
    assert (both["kind_e"] == both["kind_f"]).all()
    np.testing.assert_allclose(both["threshold_e"], both["threshold_f"])
    np.testing.assert_allclose(both["score_e"], both["score_f"], rtol=1e-6, atol=1e-9)
    assert abs(paired["large"][0].share_drifted - paired["large"][1].share_drifted) < 0.1


def test_tests_follow_evidently_defaults(paired):
    small = paired["small"][1].columns.set_index("column")
    large = paired["large"][1].columns.set_index("column")
    assert small.loc["num_mean", "stat_test"] == "ks"
    assert small.loc["plan_mix", "stat_test"] == "chisquare"
    assert small.loc["flag_rate", "stat_test"] == "z"
    assert small.loc["few_same", "stat_test"] == "chisquare"  # numeric with ≤ 5 values
    assert large.loc["num_mean", "stat_test"] == "wasserstein"
    assert large.loc["plan_mix", "stat_test"] == "jensenshannon"
    assert large.loc["few_same", "stat_test"] == "jensenshannon"
    assert large.loc["num_mean", "threshold"] == pytest.approx(0.1)
    assert small.loc["num_mean", "threshold"] == pytest.approx(0.05)


@pytest.mark.parametrize("case", ["small", "large"])
def test_shifted_columns_flagged_unshifted_mostly_not(paired, case):
    for result in paired[case]:
        cols = result.columns.set_index("column")
        assert cols.loc[SHIFTED, "drifted"].all(), cols
        unshifted = cols.drop(index=SHIFTED)
        # Evidently's chi-square treats the reference shares as exact, so its false-alarm
        # rate on unshifted columns is above the nominal 5%; allow two of seven.
        assert unshifted["drifted"].sum() <= 2, unshifted
        assert result.share_drifted == pytest.approx(cols["drifted"].mean())
        assert result.dataset_drift == (result.share_drifted >= 0.5)


def test_realistic_feature_frame(paired):
    evid, fast = paired["features"]
    # Ids and timestamps are left out by default.
    assert "account_id" not in set(fast.columns["column"])
    assert "as_of" not in set(fast.columns["column"])
    assert set(fast.columns["kind"]) == {"num", "cat"}
    assert len(fast.columns) >= 12


def test_files_written(paired):
    for name, (evid, fast) in paired.items():
        for result in (evid, fast):
            assert result.html_path is not None and result.html_path.stat().st_size > 500
            assert result.json_path is not None and result.json_path.exists()
        assert evid.html_path.name == f"{name}_evidently.html"
        evidently_json = json.loads(evid.json_path.read_text())
        assert "metrics" in evidently_json
        ours = json.loads(fast.json_path.read_text())
        assert ours["method"] == "fast"
        assert [c["column"] for c in ours["columns"]] == fast.columns["column"].tolist()
        assert "<table>" in fast.html_path.read_text()
        json.dumps(evid.to_dict())  # JSON-ready


def test_no_files_without_out_dir():
    ref, cur = shifted_frames(200, 200, seed=3)
    result = drift_report(ref, cur, method="fast")
    assert result.html_path is None and result.json_path is None
    assert result.seconds > 0


def test_auto_picks_engine_by_size(monkeypatch):
    ref, cur = shifted_frames(300, 300, seed=4)
    monkeypatch.setattr(drift, "AUTO_MAX_CELLS", 100)
    assert drift_report(ref, cur).method == "fast"


def test_sample_is_seeded_and_used():
    ref, cur = shifted_frames(5000, 4000, seed=5)
    a = drift_report(ref, cur, method="fast", sample=800, seed=7)
    b = drift_report(ref, cur, method="fast", sample=800, seed=7)
    assert a.n_reference == 800 and a.n_current == 800
    pd.testing.assert_frame_equal(a.columns, b.columns)
    assert a.columns.set_index("column").loc["num_mean", "stat_test"] == "ks"


def test_columns_and_categorical_arguments():
    ref, cur = shifted_frames(300, 300, seed=6)
    result = drift_report(
        ref, cur, method="fast", columns=["num_same_a", "count_same"], categorical=["count_same"]
    )
    assert result.columns["column"].tolist() == ["num_same_a", "count_same"]
    assert result.columns.set_index("column").loc["count_same", "kind"] == "cat"


def test_missing_column_is_a_clear_error():
    ref, cur = shifted_frames(100, 100, seed=7)
    with pytest.raises(ValueError, match=r"\['nope'\] are not in the reference frame"):
        drift_report(ref, cur, columns=["num_mean", "nope"], method="fast")
    with pytest.raises(ValueError, match="not in the current frame"):
        drift_report(ref, cur.drop(columns="num_mean"), columns=["num_mean"], method="fast")
    with pytest.raises(ValueError, match="categorical columns"):
        drift_report(ref, cur, columns=["num_mean"], categorical=["plan_mix"], method="fast")


def test_empty_frame_and_bad_arguments():
    ref, cur = shifted_frames(100, 100, seed=8)
    with pytest.raises(ValueError, match="current frame has no rows"):
        drift_report(ref, cur.iloc[0:0], method="fast")
    with pytest.raises(ValueError, match="reference frame has no rows"):
        drift_report(ref.iloc[0:0], cur, method="evidently")
    with pytest.raises(ValueError, match="method must be"):
        drift_report(ref, cur, method="ks")
    with pytest.raises(TypeError, match="DataFrame"):
        drift_report(ref.to_numpy(), cur)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="datetimes"):
        stamped = ref.assign(t=pd.Timestamp("2024-01-01"))
        drift_report(stamped, stamped, columns=["t"], method="fast")


@pytest.mark.parametrize("method", ["fast", "evidently"])
def test_all_null_column_is_reported_not_crashing(method):
    ref, cur = shifted_frames(300, 200, seed=9)
    ref = ref.assign(empty=np.nan)
    cur = cur.assign(empty=np.nan, num_same_a=np.inf)
    result = drift_report(
        ref, cur, method=method, columns=["num_mean", "num_same_a", "plan_same", "empty"]
    )
    cols = result.columns.set_index("column")
    assert cols.loc["empty", "stat_test"] == "not_tested"
    assert "reference" in cols.loc["empty", "note"]
    assert cols.loc["num_same_a", "stat_test"] == "not_tested"  # only infinities: missing
    assert not cols.loc[["empty", "num_same_a"], "drifted"].any()
    assert cols.loc["num_mean", "drifted"]
    assert result.share_drifted == pytest.approx(0.5)  # 1 of the 2 tested columns
    with pytest.raises(ValueError, match="no column can be tested"):
        drift_report(ref, cur, columns=["empty"], method=method)


def test_partial_nulls_are_dropped_like_evidently():
    rng = np.random.default_rng(10)
    ref = pd.Series(rng.normal(size=400))
    cur = pd.Series(rng.normal(size=300))
    with_nulls = pd.concat([cur, pd.Series([np.nan] * 50)], ignore_index=True)
    plain = drift_report(ref.to_frame("x"), cur.to_frame("x"), method="fast")
    nulls = drift_report(ref.to_frame("x"), with_nulls.to_frame("x"), method="fast")
    pd.testing.assert_frame_equal(plain.columns, nulls.columns)


def test_column_drift_edge_cases():
    same = pd.Series(["a"] * 50)
    assert column_drift(same, same, kind="cat") == ("z", 1.0, 0.05, False)
    ref = pd.Series(["a"] * 50 + ["b"] * 50 + ["c"] * 50)
    new = pd.Series(["a"] * 50 + ["d"] * 50)  # a category the reference never saw
    test, p, _, drifted = column_drift(ref, new, kind="cat")
    assert test == "chisquare" and p == 0.0 and drifted


def test_one_sort_wasserstein_matches_scipy():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(11)
    ref = np.round(rng.lognormal(2, 1, 3000), 1)  # ties
    cur = np.round(rng.lognormal(2.1, 1, 2000), 1)
    test, score, threshold, _ = column_drift(ref, cur, kind="num")
    assert test == "wasserstein" and threshold == 0.1
    assert score == pytest.approx(wasserstein_distance(ref, cur) / np.std(ref), rel=1e-9)
    with pytest.raises(ValueError, match="kind must be"):
        column_drift(ref, cur, kind="text")
