"""The warehouse computations on Apache Spark equal DuckDB's, table by table (issue #12).

One definition per computation: the DuckDB SQL the engine generates, transpiled with
SQLGlot (``workbench.engines.to_spark_sql``) and run on a local SparkSession. Skipped
with a message when pyspark, sqlglot or Java is missing; CI installs them.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator

import duckdb
import numpy as np
import pandas as pd
import pytest
from spark_support import require_spark

require_spark()

from workbench.engines import (  # noqa: E402
    REVENUE_TABLES,
    DuckDBEngine,
    SparkEngine,
    copy_tables,
    spark_session,
    to_spark_sql,
)
from workbench.revenue.daily import account_day_mrr, daily_mrr  # noqa: E402
from workbench.revenue.diff import diff_policies, diff_summary  # noqa: E402
from workbench.revenue.engine import build_account_months, hdiv  # noqa: E402
from workbench.revenue.metrics import (  # noqa: E402
    cohort_retention,
    monthly_bridge,
    refunds_by_month,
    trial_conversion,
    usage_revenue,
)
from workbench.revenue.policies import get_policy  # noqa: E402
from workbench.revenue.synthetic import generate_warehouse  # noqa: E402

END = "2023-02-01"
#: small and quick: one local session, two shuffle partitions, no whole-stage codegen
TEST_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.driver.memory": "1g",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkEngine]:
    session = spark_session("local[2]", app_name="workbench-tests", conf=TEST_CONF)
    session.sparkContext.setLogLevel("ERROR")
    yield SparkEngine(session)
    session.stop()


@pytest.fixture(scope="module")
def company(spark: SparkEngine) -> duckdb.DuckDBPyConnection:
    """A tiny synthetic company (usd/eur/gbp, trials, coupons, past-due, FX), in both engines."""
    con = duckdb.connect()
    generate_warehouse(con, accounts=50, months=14, seed=7)
    copy_tables(con, spark, REVENUE_TABLES)
    return con


def canon(frame: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """Rows as comparable Python values: dates as ISO strings, integral numbers as int,
    nulls as None (DuckDB and Spark hand pandas different dtypes for the same values)."""

    def value(v: object) -> object:
        if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, pd.Timestamp | dt.datetime):
            return pd.Timestamp(v).isoformat()
        if isinstance(v, dt.date):
            return pd.Timestamp(v).isoformat()
        if isinstance(v, np.bool_ | bool):
            return bool(v)
        if isinstance(v, np.integer | int):
            return int(v)
        if isinstance(v, np.floating | float):
            return int(v) if float(v).is_integer() else float(v)
        return v

    cols = list(frame.columns)
    rows = [tuple(value(v) for v in row) for row in frame.astype(object).itertuples(index=False)]
    order = [cols.index(k) for k in keys]
    return sorted(rows, key=lambda r: tuple(str(r[i]) for i in order))


def assert_same(duck: pd.DataFrame, spark: pd.DataFrame, keys: list[str]) -> None:
    assert list(spark.columns) == list(duck.columns)
    assert len(spark) == len(duck) > 0
    a, b = canon(duck, keys), canon(spark, keys)
    bad = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert not bad, f"{len(bad)} rows differ, first: duckdb {bad[0][0]} != spark {bad[0][1]}"


# --------------------------------------------------------------------------- transpiler


def test_exact_integer_arithmetic_matches(spark: SparkEngine) -> None:
    """Half-even division of HUGEINTs (money in 1/SCALE units) gives the same integers,
    including values far beyond BIGINT that Spark's DIV or DOUBLE would get wrong."""
    cases = [(5, 2), (7, 2), (-5, 2), (-7, 2), (1, 3), (2, 3), (0, 7),
             (10**25 + 1, 2), (-(10**25) - 1, 2), (3 * 10**24 + 5, 10), (2**62 + 3, 2),
             (123_456_789_012_345_678_901, 332_640_000_000)]  # fmt: skip
    exprs = ", ".join(
        f"CAST({hdiv(f'CAST({n} AS HUGEINT)', f'CAST({d} AS HUGEINT)')} AS VARCHAR) AS c{i}"
        for i, (n, d) in enumerate(cases)
    )
    sql = f"SELECT {exprs}"
    duck = duckdb.connect().execute(sql).fetchone()
    got = spark.execute(sql).fetchone()
    assert "DECIMAL(38, 0)" in to_spark_sql(sql) and "INT128" not in to_spark_sql(sql)
    assert [int(str(v).split(".")[0]) for v in got] == [int(v) for v in duck]


def test_generated_sql_constructs_transpile(spark: SparkEngine) -> None:
    """DuckDB-only pieces the engine uses: to_months on month ends, empty series, struct max."""
    sql = """
SELECT CAST(TIMESTAMP '2024-01-31 10:00:00' + to_months(1) AS VARCHAR) AS a,
  CAST(TIMESTAMP '2024-01-31 10:00:00' + to_days(30) AS VARCHAR) AS b,
  (SELECT count(*) FROM (SELECT unnest(generate_series(CAST(DATE '2024-03-01' AS TIMESTAMP),
     CAST(DATE '2024-01-01' AS TIMESTAMP), INTERVAL 1 MONTH)) AS m) s) AS c,
  (SELECT max({'g': g, 'p': p}).p FROM (VALUES (2, 'x'), (5, 'y'), (5, 'z')) t(g, p)) AS d
"""
    duck = duckdb.connect().execute(sql).fetchone()
    got = spark.execute(sql).fetchone()
    assert duck == ("2024-02-29 10:00:00", "2024-03-01 10:00:00", 0, "z")
    assert got == duck


# --------------------------------------------------------------------------- revenue


@pytest.mark.parametrize("policy", ["stripe", "dbt_playbook"])
def test_mrr_account_months_equal(
    company: duckdb.DuckDBPyConnection, spark: SparkEngine, policy: str
) -> None:
    """Account-month MRR and movements (event timing / snapshot timing): exact integers."""
    t = time.perf_counter()
    d = build_account_months(company, policy=policy, end=END, into=f"am_{policy}")
    s = build_account_months(spark, policy=policy, end=END, into=f"am_{policy}")
    assert (s.start, s.end, s.rows) == (d.start, d.end, d.rows)
    duck = company.execute(f"SELECT * FROM am_{policy}").df()
    spk = spark.fetch_df(f"SELECT * FROM am_{policy}")
    assert_same(duck, spk, ["account_id", "month", "currency"])
    assert duck["new_mrr"].sum() > 0 and duck["churn_mrr"].sum() < 0  # churn exercised
    assert duck["contraction_mrr"].sum() < 0
    assert (duck["currency"] != "usd").any()  # FX conversion exercised
    print(f"spark {policy}: {time.perf_counter() - t:.1f}s for {d.rows} account-months")


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_revenue_export_equal(
    company: duckdb.DuckDBPyConnection,
    spark: SparkEngine,
    tmp_path,
    kind: str,  # noqa: ANN001
) -> None:
    """``workbench revenue --out`` on Spark (rows written here with Arrow) writes the same
    account-months and bridge as on DuckDB (``COPY``)."""
    from workbench.revenue.export import export

    read = pd.read_parquet if kind == "parquet" else pd.read_csv
    out = {}
    for name, con in (("duckdb", company), ("spark", spark)):
        out[name] = export(con, policy="stripe", out=tmp_path / name, fmt=kind, end=END)
    for part, keys in (("account_month", ["account_id", "month"]), ("bridge", ["month"])):
        duck, spk = read(out["duckdb"][part]), read(out["spark"][part])
        assert_same(duck.astype(object), spk.astype(object), keys)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_bridge_and_cohorts_equal(company: duckdb.DuckDBPyConnection, spark: SparkEngine) -> None:
    """The monthly bridge (warehouse SQL) per region, and cohort retention from the table."""
    if not company.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'am_stripe'"
                           ).fetchone()[0]:  # fmt: skip
        build_account_months(company, policy="stripe", end=END, into="am_stripe")
        build_account_months(spark, policy="stripe", end=END, into="am_stripe")
    for by in ([], ["region"]):
        duck = monthly_bridge("am_stripe", by=by, con=company)
        spk = monthly_bridge("am_stripe", by=by, con=spark)
        assert_same(duck, spk, ["month", *by])
    duck_am = company.execute("SELECT * FROM am_stripe").df()
    spark_am = spark.fetch_df("SELECT * FROM am_stripe")
    for kind in ("logo", "revenue"):
        assert_same(
            cohort_retention(duck_am, kind=kind),
            cohort_retention(spark_am, kind=kind),
            ["cohort_month", "age"],
        )


def test_trial_conversion_equal(company: duckdb.DuckDBPyConnection, spark: SparkEngine) -> None:
    duck = trial_conversion(company)
    spk = trial_conversion(spark)
    assert duck["trials"].sum() > 0
    assert_same(duck, spk, ["month"])


def test_daily_mrr_equal(company: duckdb.DuckDBPyConnection, spark: SparkEngine) -> None:
    """The per-day MRR view (total and by region, across two month ends and a year end)
    and the per-account drill-down: same rows and dtypes on Spark as on DuckDB."""
    window = {"start": "2022-11-20", "end": "2023-01-10"}
    for by in ([], ["region"]):
        duck = daily_mrr(company, by=by, **window)
        spk = daily_mrr(spark, by=by, **window)
        assert spk.dtypes.to_dict() == duck.dtypes.to_dict()
        assert_same(duck, spk, ["day", *by, "currency"])
        assert duck["day"].nunique() == 52 and (duck["currency"] != "usd").any()
        assert duck["mrr"].sum() > 0
    ids = (
        company.execute("SELECT DISTINCT account_id FROM subscription_history ORDER BY 1 LIMIT 6")
        .df()["account_id"]
        .tolist()
    )
    duck = account_day_mrr(company, account_ids=ids, **window)
    spk = account_day_mrr(spark, account_ids=ids, **window)
    assert spk.dtypes.to_dict() == duck.dtypes.to_dict()
    assert_same(duck, spk, ["account_id", "day", "currency"])
    assert duck["account_id"].nunique() > 1


def test_policy_diff_equal(company: duckdb.DuckDBPyConnection, spark: SparkEngine) -> None:
    """``diff_policies`` (what ``workbench revenue diff`` prints) from stripe to stripe with
    Baremetrics' grace period for past-due subscriptions: one step, two engine runs per
    side; every per account-month difference, attribution and reason agrees."""
    a = get_policy("stripe")
    b = a.replace(past_due_grace_days=get_policy("baremetrics").past_due_grace_days)
    duck = diff_policies(company, a, b, end=END)
    spk = diff_policies(spark, a, b, end=END)
    assert len(duck) > 0 and (duck["mrr_diff"] != 0).any()
    assert spk.dtypes.to_dict() == duck.dtypes.to_dict()
    assert_same(duck, spk, ["month", "account_id"])
    assert_same(diff_summary(duck), diff_summary(spk), ["month", "rule"])


def test_duckdb_engine_runs_the_same_code(company: duckdb.DuckDBPyConnection) -> None:
    """The engine abstraction's DuckDB side is the plain connection."""
    eng = DuckDBEngine(company)
    run = build_account_months(eng, policy="stripe", end=END, into="am_via_engine")
    assert run.rows == company.execute("SELECT count(*) FROM am_via_engine").fetchone()[0] > 0


# --------------------------------------------------------------------------- simulated company

SIM_TABLES = (*REVENUE_TABLES, "invoices", "invoice_lines", "refunds")


@pytest.fixture(scope="module")
def simulated(
    spark: SparkEngine, ingested_company
) -> tuple[duckdb.DuckDBPyConnection, SparkEngine]:
    """The simulator's tiny company, ingested from its landing files into DuckDB, copied
    into its own Spark session (separate temp views from the synthetic company)."""
    settings = ingested_company(accounts=150, months=12, seed=3, faults=False)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    engine = SparkEngine(spark.spark.newSession())
    copy_tables(con, engine, SIM_TABLES)
    return con, engine


def test_simulated_company_mrr_and_revenue_metrics_equal(
    simulated: tuple[duckdb.DuckDBPyConnection, SparkEngine],
) -> None:
    """Account-months (stripe), bridge, usage/one-time revenue and refunds on the simulator's
    company: Spark equals DuckDB."""
    con, engine = simulated
    con.execute("SET TimeZone = 'UTC'")
    d = build_account_months(con, policy="stripe", into="am_sim")
    s = build_account_months(engine, policy="stripe", into="am_sim")
    assert s.rows == d.rows > 0
    assert_same(
        con.execute("SELECT * FROM am_sim").df(),
        engine.fetch_df("SELECT * FROM am_sim"),
        ["account_id", "month", "currency"],
    )
    assert_same(
        monthly_bridge("am_sim", by=["plan"], con=con),
        monthly_bridge("am_sim", by=["plan"], con=engine),
        ["month", "plan"],
    )
    usage_d = usage_revenue(con, kinds=("metered", "one_time"))
    usage_s = usage_revenue(engine, kinds=("metered", "one_time"))
    assert_same(usage_d, usage_s, ["month", "account_id", "kind", "currency"])
    refunds_d, refunds_s = refunds_by_month(con), refunds_by_month(engine)
    assert_same(refunds_d, refunds_s, ["month", "currency"])


# --------------------------------------------------------------------------- forecasting


def test_distributed_forecast_equals_local(spark: SparkEngine) -> None:
    """statsforecast on Spark (via Fugue) gives the local forecasts for every series."""
    pytest.importorskip("fugue_spark", reason="distributed forecasting needs fugue[spark]")
    from workbench.forecast import base_forecast

    rng = np.random.default_rng(3)
    months = pd.date_range("2021-01-01", periods=36, freq="MS")
    frames = []
    for i in range(4):
        season = 1 + 0.1 * np.sin(2 * np.pi * np.arange(36) / 12 + i)
        y = (100 + 10 * i) * np.linspace(1, 1.5, 36) * season + rng.normal(0, 2, 36)
        frames.append(pd.DataFrame({"unique_id": f"s{i}", "ds": months, "y": y}))
    df = pd.concat(frames, ignore_index=True)
    models = ["SeasonalNaive", "HistoricAverage", "AutoETS"]
    local = base_forecast(df, h=6, models=models)
    sdf = spark.spark.createDataFrame(df)
    dist = base_forecast(sdf, h=6, models=models).toPandas()
    assert len(dist) == len(local) == 4 * 6
    key = ["unique_id", "ds"]
    local = local.sort_values(key).reset_index(drop=True)
    dist = dist.sort_values(key).reset_index(drop=True)
    assert (pd.to_datetime(dist["ds"]).to_numpy() == pd.to_datetime(local["ds"]).to_numpy()).all()
    assert dist["unique_id"].tolist() == local["unique_id"].tolist()
    for m in models:
        np.testing.assert_allclose(dist[m].to_numpy(), local[m].to_numpy(), rtol=1e-6)


def test_engine_chosen_by_configuration(spark: SparkEngine, isolated_env, monkeypatch) -> None:  # noqa: ANN001
    """``engine`` / ``spark_master`` settings (here via env vars) pick the engine."""
    from workbench.config import load_settings
    from workbench.engines import get_engine

    duck = get_engine(load_settings(), con=duckdb.connect())
    assert isinstance(duck, DuckDBEngine)
    monkeypatch.setenv("WORKBENCH_ENGINE", "spark")
    monkeypatch.setenv("WORKBENCH_SPARK_MASTER", "local[2]")
    settings = load_settings()
    assert (settings.engine, settings.spark_master) == ("spark", "local[2]")
    eng = get_engine(settings)
    assert isinstance(eng, SparkEngine)
    assert eng.execute("SELECT 7 // 2 AS q").fetchone()[0] == 3
