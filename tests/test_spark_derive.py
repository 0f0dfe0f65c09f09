"""The ingestion's current-state tables derived on Apache Spark equal DuckDB's (issue #12).

``workbench.ingest.derive`` is one definition: DuckDB SQL and DML (``CREATE TEMP TABLE t
(...)``, ``DELETE``, ``INSERT [OR REPLACE] ... BY NAME``, ``QUALIFY``, ``* EXCLUDE``), run as
is on DuckDB and through ``SparkEngine`` (transpiled queries, DML on temp views) on Spark.
Skipped with a message when pyspark, sqlglot or Java is missing.
"""

from __future__ import annotations

import time

import duckdb
import pytest
from spark_support import require_spark, small_jobs_engine

require_spark()

from test_spark_engine import spark  # noqa: E402, F401 - the shared session fixture
from test_spark_features import _rows  # noqa: E402

from workbench.engines import SparkEngine, copy_tables  # noqa: E402
from workbench.ingest import derive  # noqa: E402

#: the derived tables and what they are derived from (the version tables; the erasure log
#: keeps erased customers' personal columns empty)
DERIVED = ("accounts", "account_personal_source", "prices", "subscriptions",
           "subscription_items", "subscription_history", "invoices", "invoice_lines",
           "payment_attempts", "refunds", "disputes")  # fmt: skip
VERSIONS = ("account_versions", "price_versions", "subscription_versions",
            "subscription_item_versions", "subscription_history_csv", "invoice_versions",
            "invoice_line_versions", "charge_versions", "refund_versions",
            "dispute_versions", "erasures")  # fmt: skip
#: rows removed on both engines before the rebuild, which must bring them back
DAMAGE = {
    "prices": "DELETE FROM prices",
    "invoice_lines": "DELETE FROM invoice_lines",
    "payment_attempts": "DELETE FROM payment_attempts WHERE status = 'failed'",
    "subscription_history": "DELETE FROM subscription_history WHERE valid_to IS NULL",
}


@pytest.fixture(scope="module")
def stores(
    spark: SparkEngine,  # noqa: F811
    ingested_company,
) -> tuple[duckdb.DuckDBPyConnection, SparkEngine]:
    """A small simulated company ingested with faults (duplicates, out-of-order events, an
    API schema change): its writable DuckDB warehouse, and its version and derived tables
    copied into a Spark session of their own."""
    settings = ingested_company(accounts=100, months=8, seed=5, faults=True)
    con = duckdb.connect(str(settings.warehouse_path))
    # many tiny stages: spark_support.SMALL_JOBS
    engine = small_jobs_engine(spark)
    copy_tables(con, engine, (*VERSIONS, *DERIVED))
    return con, engine


def test_full_rebuild_equal(stores: tuple[duckdb.DuckDBPyConnection, SparkEngine]) -> None:
    """Damage some derived tables on both engines, rebuild every table from the versions
    (``create_touched``, ``touch_all``, ``refresh``): Spark's tables equal DuckDB's, row for
    row, and the damaged rows are back."""
    con, engine = stores
    built = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DERIVED}
    assert all(built[t] > 0 for t in DAMAGE), built
    for store in (con, engine):
        t0 = time.perf_counter()
        for sql in DAMAGE.values():
            store.execute(sql)
        for table in DAMAGE:
            assert store.execute(f"SELECT count(*) FROM {table}").fetchone()[0] < built[table]
        derive.create_touched(store)
        derive.touch_all(store)
        derive.refresh(store)
        print(f"{type(store).__name__}: rebuilt in {time.perf_counter() - t0:.1f}s")
    for table in DERIVED:
        duck = con.execute(f"SELECT * FROM {table}").df()
        spk = engine.fetch_df(f"SELECT * FROM {table}")
        assert list(spk.columns) == list(duck.columns), table
        assert len(duck) == built[table], table  # the rebuild brought the damaged rows back
        assert sorted(_rows(spk), key=repr) == sorted(_rows(duck), key=repr), table


def test_dml_statements(spark: SparkEngine) -> None:  # noqa: F811
    """The DML forms one by one, against DuckDB: typed empty tables, positional and by-name
    inserts with missing columns, VALUES, DELETE keeping rows whose condition is NULL,
    INSERT OR REPLACE on a declared key (keeping the columns it does not set)."""
    duck = duckdb.connect()
    engine = SparkEngine(spark.spark.newSession())
    engine.keys["wb_dml_t"] = ("k",)
    script = [
        "CREATE OR REPLACE TEMP TABLE wb_dml_t (k VARCHAR PRIMARY KEY, v BIGINT, ts TIMESTAMPTZ)",
        "INSERT INTO wb_dml_t VALUES ('a', 1, TIMESTAMPTZ '2024-01-01 10:00:00+00')",
        "INSERT INTO wb_dml_t SELECT 'b', NULL, NULL UNION ALL SELECT 'c', 3, NULL",
        "INSERT INTO wb_dml_t BY NAME SELECT 4 AS v, 'd' AS k",
        "DELETE FROM wb_dml_t WHERE v > 2",
        "INSERT OR REPLACE INTO wb_dml_t BY NAME SELECT 'a' AS k, 10 AS v UNION ALL "
        "SELECT 'e' AS k, 5 AS v",
        "INSERT INTO wb_dml_t (v, k) SELECT 7, 'f'",
    ]
    for sql in script:
        duck.execute(sql)
        engine.execute(sql)
    query = "SELECT k, v, epoch_us(ts) AS ts_us FROM wb_dml_t ORDER BY k"
    want = duck.execute(query).fetchall()
    a_us = 1704103200000000  # a replaced row keeps the columns the INSERT does not give
    assert want == [("a", 10, a_us), ("b", None, None), ("e", 5, None), ("f", 7, None)]
    assert engine.execute(query).fetchall() == want
    duck.execute("DELETE FROM wb_dml_t WHERE k = 'f'")
    engine.execute("DELETE FROM wb_dml_t WHERE k = 'f'")
    duck.execute("INSERT INTO wb_dml_t VALUES ('g', 8, TIMESTAMPTZ '2024-01-01 10:00:00+00')")
    engine.execute("INSERT INTO wb_dml_t VALUES ('g', 8, TIMESTAMPTZ '2024-01-01 10:00:00+00')")
    want = duck.execute(query).fetchall()
    assert want[-1] == ("g", 8, a_us) and len(want) == 4
    assert engine.execute(query).fetchall() == want
