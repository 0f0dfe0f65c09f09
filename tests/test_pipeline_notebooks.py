"""Every pipeline notebook, executed by papermill on a tiny simulated company.

One module-scoped run of the whole pipeline (the way `workbench run` does it), then one
test per notebook checking the outputs it promises. Also: plain papermill works without
the CLI, as schedulers use it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import nbformat
import pytest

from workbench.config import load_settings
from workbench.runner import pipeline_notebooks, run_pipeline
from workbench.store import read_snapshot

REPO = Path(__file__).resolve().parents[1]
# seed is declared by 00, 05 and 06: a shared name is given per step
TINY = {
    "accounts": 150,
    "months": 30,
    "00.seed": 3,
    "05.seed": 3,
    "06.seed": 3,
    "horizon": 3,
    "n_windows": 2,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("pipeline")
    env = {"WORKBENCH_DATA_DIR": str(base / "data"), "WORKBENCH_REPORTS_DIR": str(base / "reports")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = load_settings(REPO)
        manifest = run_pipeline(parameters=TINY, settings=settings, progress=False)
        yield settings, manifest
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _executed(settings, manifest, stem: str) -> nbformat.NotebookNode:
    return nbformat.read(
        Path(settings.reports_dir) / manifest.run_id / f"{stem}.ipynb", as_version=4
    )


def _outputs_text(settings, manifest, stem: str) -> str:
    return json.dumps([c.get("outputs", []) for c in _executed(settings, manifest, stem).cells])


def test_every_step_ran(pipeline) -> None:
    settings, manifest = pipeline
    assert manifest.status == "ok"
    assert [s.step for s in manifest.steps] == [p.stem for p in pipeline_notebooks(REPO)]
    for step in manifest.steps:
        assert step.status == "ok" and len(step.outputs) == 2  # .ipynb and .html
    assert (Path(settings.reports_dir) / "index.html").read_text().count(manifest.run_id) >= 1


def test_00_simulate_writes_landing_and_truth(pipeline) -> None:
    settings, manifest = pipeline
    data = Path(settings.data_dir)
    assert list((data / "landing" / "stripe").glob("*.jsonl"))
    assert (data / "truth" / "churn_hazard.parquet").exists()
    text = _outputs_text(settings, manifest, "00_simulate")
    assert str(TINY["accounts"]) in text


def test_reports_carry_no_progress_text_or_library_advice(pipeline) -> None:
    """Progress bars render as widgets in the executed notebooks (a text bar stored one
    stderr line per update: hundreds in 00_simulate's report), and MLflow's advice on how
    we log models stays out of 05/06."""
    settings, manifest = pipeline
    for step in manifest.steps:
        nb = _executed(settings, manifest, step.step)
        stderr = "".join(
            "".join(o.get("text", ""))
            for c in nb.cells
            for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"
        )
        assert not re.search(r"\d+%\|", stderr), (step.step, stderr[:300])
        for advice in ("type hint", "cloudpickle", "model signature"):
            assert advice not in stderr.lower(), (step.step, advice)


def _warehouse(settings) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(settings.warehouse_path), read_only=True)


def test_01_ingest_loads_and_conserves(pipeline) -> None:
    settings, manifest = pipeline
    con = _warehouse(settings)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] > 1000
        assert con.execute("SELECT count(*) FROM invoices").fetchall()[0][0] > 100
        bad = con.execute(
            "SELECT count(*) FROM loads WHERE received <> accepted + quarantined + duplicates"
        ).fetchall()[0][0]
        assert bad == 0
    finally:
        con.close()
    text = _outputs_text(settings, manifest, "01_ingest")
    assert "Where every received record went" in text or "image/svg+xml" in text


def test_02_revenue_publishes_the_finance_snapshot(pipeline) -> None:
    settings, manifest = pipeline
    am = read_snapshot("finance", settings=settings)["account_months"]
    assert am["mrr"].sum() > 0 and set(am["policy"]) == {"stripe"}
    con = _warehouse(settings)
    try:
        stored = con.execute(
            "SELECT count(*) FROM mrr_account_months WHERE run_id = ?", [manifest.run_id]
        ).fetchall()[0][0]
    finally:
        con.close()
    assert stored == len(am)


def test_03_features_materialize_online(pipeline) -> None:
    settings, manifest = pipeline
    text = _outputs_text(settings, manifest, "03_features")
    assert "no leakage" in text
    assert list(Path(settings.data_dir).rglob("online*.db")), "no Feast online store written"


def test_04_forecast_stored_and_published(pipeline) -> None:
    settings, manifest = pipeline
    con = _warehouse(settings)
    try:
        rows = con.execute(
            "SELECT count(*), count(DISTINCT unique_id) FROM forecasts WHERE run_id = ?",
            [manifest.run_id],
        ).fetchall()[0]
    finally:
        con.close()
    assert rows[0] >= TINY["horizon"] and rows[1] >= 2
    snap = read_snapshot("finance", settings=settings)
    assert {"account_months", "forecast", "forecast_history"} <= set(snap)


def test_08_anomalies_found_and_scored(pipeline) -> None:
    settings, manifest = pipeline
    con = _warehouse(settings)
    try:
        n = con.execute(
            "SELECT count(*) FROM anomaly_findings WHERE run_id = ?", [manifest.run_id]
        ).fetchall()[0][0]
    finally:
        con.close()
    assert n >= 1
    assert "precision" in _outputs_text(settings, manifest, "08_anomalies")


def test_09_drift_review_publishes_the_models_snapshot(pipeline) -> None:
    settings, manifest = pipeline
    snap = read_snapshot("models", settings=settings)
    assert {"monitor_metrics", "monitor_drift", "monitor_history", "alerts"} <= set(snap)
    drift = snap["monitor_drift"]
    assert len(drift) > 0 and set(drift["run_id"]) == {manifest.run_id}
    assert drift["drifted"].isin([True, False]).all()
    con = _warehouse(settings)
    try:
        n = con.execute(
            "SELECT count(*) FROM monitoring_metrics WHERE run_id = ?", [manifest.run_id]
        ).fetchall()[0][0]
    finally:
        con.close()
    assert n >= 1
    assert "drift" in _outputs_text(settings, manifest, "09_drift_review").lower()


def test_plain_papermill_runs_a_step_with_other_parameters(pipeline, tmp_path: Path) -> None:
    settings, _ = pipeline
    out = tmp_path / "revenue.ipynb"
    env = {**os.environ, "WORKBENCH_DATA_DIR": str(settings.data_dir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(REPO / "notebooks" / "02_revenue.ipynb"),
            str(out),
            "-p",
            "policy",
            "chartmogul",
            "-p",
            "compare_policy",
            "stripe",
            "--no-progress-bar",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        read_snapshot("finance", settings=settings)["account_months"]["policy"].iloc[0]
        == "chartmogul"
    )


def test_07_dunning_decides_in_shadow_mode(pipeline) -> None:
    settings, manifest = pipeline
    con = _warehouse(settings)
    try:
        shadow = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT shadow) FROM dunning_decisions WHERE run_id = ?",
            [manifest.run_id],
        ).fetchall()[0]
    finally:
        con.close()
    assert shadow[1] == 0  # the default is shadow: nothing executed
    assert (
        "Decisions per day by action" in _outputs_text(settings, manifest, "07_dunning")
        or shadow[0] == 0
    )


def test_05_06_models_registered_and_scores_traceable(pipeline) -> None:
    settings, manifest = pipeline
    con = _warehouse(settings)
    try:
        scored = con.execute(
            "SELECT model_name, count(*), min(model_version), min(feature_set_version) FROM scores GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    names = {row[0] for row in scored}
    assert {"churn_30d", "churn_90d", "churn_180d"} <= names
    assert all(
        row[2] and row[3] for row in scored
    )  # every score names its model version and feature set
    churn_text = _outputs_text(settings, manifest, "05_churn")
    assert "oracle_auc" in churn_text  # measured against the simulator's truth
    # the retention-offer uplift model, from the experiment, registered beside them
    from workbench.models.registry import alias_version

    assert alias_version("retention_uplift", "challenger", settings=settings)
    assert "expected_qini_ratio" in churn_text and "Qini curve: retention_uplift" in churn_text
    assert "oracle_auc" in _outputs_text(settings, manifest, "06_recovery")
