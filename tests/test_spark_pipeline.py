"""The pipeline notebooks on Apache Spark (issue #12): ``workbench run`` with ``engine = "spark"``.

The notebooks open the warehouse through ``wb.open_warehouse``: with ``WORKBENCH_ENGINE=spark``
every step reads and writes the Spark warehouse (versioned Parquet tables under
``data/spark-warehouse``), and no DuckDB file is made. CI runs the steps that load the
warehouse, compute MRR, forecast and train, explain and score the churn models (00, 01, 02,
04, 05: about five minutes of local-mode Spark); all ten run the same way (README,
"Scaling out"). The MRR the revenue step stores on Spark equals DuckDB's on the same files.
Skipped with a message when pyspark, sqlglot or Java is missing.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from spark_support import SMALL_JOBS, require_spark

require_spark()

from test_spark_features import _rows  # noqa: E402
from test_spark_ingest import _comparable  # noqa: E402

from workbench.config import load_settings  # noqa: E402
from workbench.lakehouse import SparkWarehouse  # noqa: E402
from workbench.runner import run_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = ["00", "01", "02", "04", "05"]
TINY = {"accounts": 150, "months": 30, "00.seed": 3, "05.seed": 3, "horizon": 3, "n_windows": 2}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    base = tmp_path_factory.mktemp("spark_pipeline")
    conf = base / "spark-conf"  # Spark reads the kernels' settings from SPARK_CONF_DIR
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text(
        "".join(f"{k} {v}\n" for k, v in {**SMALL_JOBS, "spark.ui.enabled": "false"}.items())
    )
    env = {
        "WORKBENCH_DATA_DIR": str(base / "data"),
        "WORKBENCH_REPORTS_DIR": str(base / "reports"),
        "WORKBENCH_ENGINE": "spark",
        "SPARK_CONF_DIR": str(conf),
    }
    with pytest.MonkeyPatch.context() as patch:  # the kernels inherit the environment
        for key, value in env.items():
            patch.setenv(key, value)
        settings = load_settings(REPO)
        manifest = run_pipeline(STEPS, parameters=TINY, settings=settings, progress=False)
        yield settings, manifest


def test_steps_ran_on_spark(pipeline) -> None:  # noqa: ANN001
    settings, manifest = pipeline
    assert settings.engine == "spark"
    assert manifest.status == "ok"
    assert [s.step[:2] for s in manifest.steps] == STEPS
    assert not Path(settings.warehouse_path).exists()  # nothing fell back to DuckDB
    tables = SparkWarehouse(settings).tables()
    for table in ("events", "invoices", "subscription_history", "mrr_account_months",
                  "forecasts", "forecasts_bottom_up", "scores"):  # fmt: skip
        assert table in tables, table
    with SparkWarehouse(settings, conf=SMALL_JOBS).read() as engine:
        runs = engine.execute("SELECT DISTINCT run_id FROM mrr_account_months").fetchall()
        assert runs == [(manifest.run_id,)]
        scored = engine.execute(
            "SELECT model_name, count(*) FROM scores GROUP BY model_name"
        ).fetchall()
    assert {name for name, n in scored if n > 30} >= {"churn_30d", "churn_90d", "churn_180d"}


def test_mrr_on_spark_equals_duckdb(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """The account-months 02_revenue stored on Spark equal DuckDB's from the same landing
    files (loaded here into a DuckDB warehouse of its own)."""
    from workbench.ingest.loader import ingest
    from workbench.revenue import account_month_mrr

    settings, _ = pipeline
    duck = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data"), "engine": "duckdb"})
    landing = Path(settings.data_dir) / "landing"
    for folder, source in (("stripe", "stripe"), ("csv", "csv")):
        ingest(landing / folder, source=source, settings=duck, progress=False)
    con = duckdb.connect(str(duck.warehouse_path), read_only=True)
    want = account_month_mrr(con, policy="stripe", reporting_currency="usd")
    con.close()
    with SparkWarehouse(settings, conf=SMALL_JOBS).read() as engine:
        got = engine.fetch_df("SELECT * FROM mrr_account_months").drop(columns="run_id")
    assert len(want) > 1000
    assert list(got.columns) == list(want.columns)
    assert sorted(_rows(_comparable(got)), key=repr) == sorted(_rows(_comparable(want)), key=repr)
