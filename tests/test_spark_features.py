"""Point-in-time features, spines and labels on Apache Spark equal DuckDB's (issue #12).

One definition: the DuckDB SQL that :mod:`workbench.features.offline` compiles from the
feature declarations, run as is on DuckDB and transpiled (``workbench.engines.to_spark_sql``:
ASOF JOIN, QUALIFY, structs, FILTER, ``arg_max``, ``epoch_us``, MATERIALIZED CTEs, ...) on
a local SparkSession. Skipped with a message when pyspark, sqlglot or Java is missing.
"""

from __future__ import annotations

import math
import re
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from spark_support import require_spark, small_jobs_engine

require_spark()

from test_spark_engine import spark  # noqa: E402, F401 - the shared session fixture

from workbench.engines import (  # noqa: E402
    SparkEngine,
    copy_tables,
    split_materialized,
    to_spark_sql,
)
from workbench.features import churn_training_set, recovery_training_set  # noqa: E402
from workbench.features.definitions import SOURCES, get_features  # noqa: E402
from workbench.features.labels import churn_labels, recovery_labels  # noqa: E402
from workbench.features.offline import (  # noqa: E402
    OPTIONAL_TABLES,
    build_features,
    churn_spine,
    data_horizon,
    known_at,
    recovery_spine,
    snapshot_spine,
)

#: every table a feature source reads, and ``events`` (the data horizon)
FEATURE_TABLES = tuple(sorted({t for s in SOURCES.values() for t in s.tables} | {"events"}))


def assert_frames_equal(duck: pd.DataFrame, spk: pd.DataFrame, what: str) -> None:
    """Column by column: floats to 1e-9 relative, everything else exactly (NaN = None)."""
    assert list(spk.columns) == list(duck.columns), what
    assert len(spk) == len(duck) > 0, what
    for col in duck.columns:
        a, b = duck[col].reset_index(drop=True), spk[col].reset_index(drop=True)
        if pd.api.types.is_float_dtype(a.dtype):
            assert pd.api.types.is_float_dtype(b.dtype), f"{what}.{col}: {b.dtype}"
            np.testing.assert_allclose(
                b.to_numpy(), a.to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True,
                err_msg=f"{what}.{col}",
            )  # fmt: skip
            continue
        assert str(b.dtype) == str(a.dtype), f"{what}.{col}: {b.dtype} != {a.dtype}"
        left, right = _values(a), _values(b)
        bad = [i for i, (x, y) in enumerate(zip(left, right, strict=True)) if x != y]
        assert not bad, (
            f"{what}.{col}: {len(bad)} rows differ, first {left[bad[0]]!r} != {right[bad[0]]!r}"
        )


def _values(s: pd.Series) -> list[object]:
    def one(v: object) -> object:
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
            return None
        return v

    return [one(v) for v in s.astype(object)]


def _rows(frame: pd.DataFrame) -> list[tuple]:
    """Rows with times as naive UTC ISO strings, numbers as floats, NULLs as None (the two
    engines hand pandas different dtypes for the same values)."""
    columns = []
    for name in frame.columns:
        col = frame[name]
        sample = col.dropna()
        first = sample.iloc[0] if len(sample) else None
        if pd.api.types.is_datetime64_any_dtype(col) or hasattr(first, "isoformat"):
            col = pd.to_datetime(col, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
        elif pd.api.types.is_bool_dtype(col) or isinstance(first, bool | np.bool_):
            col = col.astype(object)
        elif pd.api.types.is_numeric_dtype(col):
            col = col.astype(float)
        columns.append(_values(col))
    return list(zip(*columns, strict=True))


@pytest.fixture(scope="module")
def warehouse(
    spark: SparkEngine,  # noqa: F811
    ingested_company,
) -> tuple[duckdb.DuckDBPyConnection, SparkEngine]:
    """The simulator's small company (150 accounts, a year): its DuckDB warehouse, and the
    tables the features read copied into a Spark session of their own."""
    settings = ingested_company(accounts=150, months=12, seed=3, faults=False)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    # many tiny stages: spark_support.SMALL_JOBS
    engine = small_jobs_engine(spark)
    copy_tables(con, engine, FEATURE_TABLES)
    return con, engine


# --------------------------------------------------------------------------- transpiler


ASOF_DATA = """
WITH l(id, k, t) AS (VALUES (1, 'a', 10), (2, 'a', 20), (3, 'a', 25), (4, 'b', 5),
                           (5, NULL, 20), (6, 'a', NULL), (7, 'c', 30), (8, 'a', 9)),
     r(k, t, v) AS (VALUES ('a', 10, 'a10'), ('a', 20, NULL), ('a', 30, 'a30'),
                           ('b', 6, 'b6'), (NULL, 1, 'null key'), ('c', NULL, 'null time'),
                           ('c', 29, 'c29'))
"""


@pytest.mark.parametrize(
    "join",
    [
        "ASOF LEFT JOIN r e ON s.k = e.k AND s.t >= e.t",
        "ASOF LEFT JOIN r e ON e.t <= s.t AND e.k = s.k",
        "ASOF LEFT JOIN r e ON s.k = e.k AND s.t > e.t",
        "ASOF JOIN r e ON s.k = e.k AND s.t >= e.t",
    ],
)
def test_asof_join_rewrite(spark: SparkEngine, join: str) -> None:  # noqa: F811
    """Equal times match for >= and not for >; NULL keys and times never match; a matched
    row whose value is NULL is still the match; inner ASOF drops the unmatched."""
    sql = f"{ASOF_DATA} SELECT s.id, e.t AS et, e.v FROM l s {join} ORDER BY s.id"
    duck = duckdb.connect().execute(sql).fetchall()
    got = spark.execute(sql).fetchall()
    assert not re.search(r"\bASOF\b", to_spark_sql(sql), re.IGNORECASE)
    assert got == duck
    if "LEFT" in join and ">=" in join:
        assert duck == [(1, 10, "a10"), (2, 20, None), (3, 20, None), (4, None, None),
                        (5, None, None), (6, None, None), (7, 29, "c29"),
                        (8, None, None)]  # fmt: skip


def test_duckdb_arithmetic_and_ctes_kept(spark: SparkEngine) -> None:  # noqa: F811
    """Division and avg in DOUBLE (not Spark's 6-digit decimals), epoch micros, date_diff in
    micros, * REPLACE / * EXCLUDE, MATERIALIZED CTEs computed once, nested CTEs with clashing
    names, QUALIFY, struct carry-forward with IGNORE NULLS, arg_max on a struct, FILTER."""
    spark.register(
        "wb_t_rows",
        pd.DataFrame(
            {"k": ["a", "a", "b", "b"], "x": [1, 2, 3, 4], "s": ["p", None, "q", "r"],
             "ts": pd.to_datetime(["2024-01-01 00:00:00.000001", "2024-02-29 12:00:00",
                                   "2024-03-01", "2024-03-01"], utc=True, format="ISO8601")}
        ),
    )  # fmt: skip
    duck = duckdb.connect()
    duck.register("wb_t_rows", spark.fetch_df("SELECT * FROM wb_t_rows"))
    sql = """
WITH m AS MATERIALIZED (SELECT * REPLACE (x * 10 AS x) FROM wb_t_rows),
     n AS MATERIALIZED (SELECT * EXCLUDE (s) FROM m WHERE x > 10),
     c AS (SELECT k, x FROM (WITH ok AS (SELECT k, max(x) AS x FROM m GROUP BY k)
                              SELECT * FROM ok) q
           UNION ALL
           SELECT k, x FROM (WITH ok AS (SELECT k, min(x) AS x FROM n GROUP BY k)
                              SELECT * FROM ok) q),
     w AS (SELECT k, x, last_value(CASE WHEN s IS NOT NULL THEN {'v': s} END IGNORE NULLS)
                      OVER (PARTITION BY k ORDER BY x ROWS BETWEEN UNBOUNDED PRECEDING
                            AND CURRENT ROW) AS carried
           FROM m QUALIFY row_number() OVER (PARTITION BY k ORDER BY x DESC) = 1)
SELECT
  (SELECT sum(x) FROM c) AS c_sum,
  (SELECT coalesce((carried).v, '-') FROM w WHERE k = 'a') AS carried_a,
  (SELECT coalesce((carried).v, '-') FROM w WHERE k = 'b') AS carried_b,
  (SELECT arg_max(s, {'o': x % 20, 'k': k}) FROM m WHERE s IS NOT NULL) AS am,
  (SELECT count(*) FILTER (WHERE x > 15) FROM m) AS filtered,
  (SELECT avg(CASE WHEN x > 15 THEN 1.0 ELSE 0.0 END) FROM m) AS share,
  2 / 3.0 AS third, 12.0 / 52 AS week_months,
  (SELECT min(epoch_us(ts)) FROM wb_t_rows) AS first_us,
  (SELECT max(date_diff('microsecond', TIMESTAMP '2024-01-01 00:00:00', ts))
     FROM wb_t_rows) AS span_us
"""
    steps, rest = split_materialized(sql)
    assert len(steps) == 2 and "MATERIALIZED" not in rest.upper()
    want = duck.execute(sql).fetchall()
    got = spark.execute(sql).fetchall()
    assert want[0][:5] == (20 + 40 + 20 + 30, "p", "r", "q", 3)  # nested ``ok``s kept apart
    assert want[0][5:8] == (0.75, 2 / 3, 12 / 52)  # DOUBLE, as DuckDB computes them
    assert got == want


# --------------------------------------------------------------------------- features


def test_churn_spine_features_equal(
    warehouse: tuple[duckdb.DuckDBPyConnection, SparkEngine],
) -> None:
    """Month-start churn spine and every account feature: Spark's frame equals DuckDB's."""
    con, engine = warehouse
    t = time.perf_counter()
    spine = churn_spine(con, start="2023-04-01", end="2023-12-01")
    assert_frames_equal(spine, churn_spine(engine, start="2023-04-01", end="2023-12-01"), "spine")
    duck = build_features(con, spine)
    spk = build_features(engine, spine)
    names = [f.name for f in get_features() if f.entity == "account_id"]
    assert list(duck.columns) == ["account_id", "as_of", *names]
    assert_frames_equal(duck, spk, "churn features")
    # the comparison exercised every kind of value, not columns of zeros and NULLs
    kinds = {f.aggregation for f in get_features() if f.entity == "account_id"}
    assert {"latest", "since_latest", "state_argmax", "daily_slope", "derived"} <= kinds
    live = [c for c in names if duck[c].notna().any() and (duck[c].astype(str) != "0").any()]
    assert len(live) >= 0.8 * len(names), sorted(set(names) - set(live))
    print(f"churn features: {len(spine)} rows x {len(names)} in {time.perf_counter() - t:.1f}s")


def test_recovery_spine_features_equal(
    warehouse: tuple[duckdb.DuckDBPyConnection, SparkEngine],
) -> None:
    """Failed-attempt spine (invoice, account, subscription ids) and the invoice and
    subscription features: Spark equals DuckDB."""
    con, engine = warehouse
    t = time.perf_counter()
    spine = recovery_spine(con, each_attempt=True)
    assert_frames_equal(spine, recovery_spine(engine, each_attempt=True), "spine")
    names = [f.name for f in get_features() if f.entity in ("invoice_id", "subscription_id")]
    duck = build_features(con, spine, features=names)
    spk = build_features(engine, spine, features=names)
    assert_frames_equal(duck, spk, "recovery features")
    live = [c for c in names if duck[c].notna().any() and (duck[c].astype(str) != "0").any()]
    assert len(live) >= 0.7 * len(names), sorted(set(names) - set(live))
    print(f"recovery features: {len(spine)} rows x {len(names)} in {time.perf_counter() - t:.1f}s")


def test_recovery_spine_without_invoice_history_equal(
    warehouse: tuple[duckdb.DuckDBPyConnection, SparkEngine],
) -> None:
    """The empty stand-in for a missing ``invoice_versions`` runs on Spark too: failures are
    scored at the attempt's own time and the announced retry is missing."""
    con, engine = warehouse
    rel = {"invoice_versions": OPTIONAL_TABLES["invoice_versions"]}
    spine = recovery_spine(con, each_attempt=True, relations=rel)
    assert_frames_equal(spine, recovery_spine(engine, each_attempt=True, relations=rel), "spine")
    names = ["invoice_hours_to_next_attempt", "invoice_hours_since_last_failure"]
    duck = build_features(con, spine, features=names, relations=rel)
    assert_frames_equal(duck, build_features(engine, spine, features=names, relations=rel), "f")
    assert duck["invoice_hours_to_next_attempt"].isna().all()
    assert (duck["invoice_hours_since_last_failure"] == 0).all()
    # with the history, the failures move to the invoice's report a few seconds later
    reported = recovery_spine(con, each_attempt=True)
    assert len(reported) == len(spine) and (reported["as_of"] > spine["as_of"]).mean() > 0.9


def test_training_sets_equal(warehouse: tuple[duckdb.DuckDBPyConnection, SparkEngine]) -> None:
    """``churn_training_set`` and ``recovery_training_set`` given the Spark engine (spine,
    a few features of each kind, labels there) return DuckDB's frames."""
    con, engine = warehouse
    t = time.perf_counter()
    account = [f.name for f in get_features() if f.entity == "account_id"][:4]
    window = {"start": "2023-06-01", "end": "2023-08-01", "features": account}
    duck = churn_training_set(con, **window)
    assert len(duck) > 0 and {"churn_30d", *account} <= set(duck.columns)
    assert_frames_equal(duck, churn_training_set(engine, **window), "churn training set")
    invoice = [f.name for f in get_features() if f.entity in ("invoice_id", "subscription_id")]
    window = {"start": "2023-03-01", "end": "2023-09-01", "features": invoice[:4]}
    duck = recovery_training_set(con, **window)
    assert len(duck) > 0 and "recovered_7d" in duck.columns
    assert_frames_equal(duck, recovery_training_set(engine, **window), "recovery training set")
    print(f"training sets: {time.perf_counter() - t:.1f}s")


def test_labels_equal(warehouse: tuple[duckdb.DuckDBPyConnection, SparkEngine]) -> None:
    """Churn within 30/90/180 days and recovery within 7/14/30 days, with the data horizon
    each engine finds: equal, and both outcomes occur."""
    con, engine = warehouse
    assert data_horizon(engine) == data_horizon(con)
    spine = churn_spine(con, start="2023-02-01", end="2023-12-01")
    duck = churn_labels(con, spine)
    assert_frames_equal(duck, churn_labels(engine, spine), "churn labels")
    assert set(duck["churn_30d"].dropna().unique()) == {0, 1}
    assert duck["churn_180d"].isna().any() and duck["churn_180d"].notna().any()
    failed = recovery_spine(con)
    duck = recovery_labels(con, failed)
    assert_frames_equal(duck, recovery_labels(engine, failed), "recovery labels")
    assert set(duck["recovered_7d"].dropna().unique()) == {0, 1}


def test_known_at_and_snapshot_equal(
    warehouse: tuple[duckdb.DuckDBPyConnection, SparkEngine],
) -> None:
    """The leakage reference (tables truncated to what was known at t, ``* REPLACE``) and
    a serving snapshot's invoice features read the same rows on both engines."""
    con, engine = warehouse
    failed = recovery_spine(con)
    t = failed["as_of"].iloc[len(failed) // 2]  # an instant with an invoice in dunning
    rel = known_at(t)
    for table, relation in rel.items():
        sql = f"SELECT * FROM {relation} r"
        duck, spk = con.execute(sql).df(), engine.fetch_df(sql)
        assert list(spk.columns) == list(duck.columns), table
        assert sorted(_rows(spk), key=repr) == sorted(_rows(duck), key=repr), table
    spine = snapshot_spine(con, entity="invoice_id", as_of=t)
    assert_frames_equal(spine, snapshot_spine(engine, entity="invoice_id", as_of=t), "snapshot")
    names = [f.name for f in get_features() if f.entity == "invoice_id"]
    duck = build_features(con, spine, features=names, relations=rel)
    assert_frames_equal(duck, build_features(engine, spine, features=names, relations=rel),
                        "known-at invoice features")  # fmt: skip
