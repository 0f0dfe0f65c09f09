"""A Stripe lake becomes the canonical tables on Apache Spark, equal to DuckDB's (issue #12).

``workbench.ingest.rebuild.build_on_engine`` replays the lake's receipts through the
loader's own code (``run_batch``) with a ``SparkEngine`` in place of the DuckDB
connection: staging and projection (``stripe_events``), duplicates and conflicts ("the
first one stands"), the type registry, contracts, quarantine, events, version tables and
the derived current-state tables. The DuckDB side is the warehouse the real loader built
(``ingest``). Skipped with a message when pyspark, sqlglot or Java is missing.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from spark_support import require_spark, small_jobs_engine

require_spark()

from test_spark_engine import spark  # noqa: E402, F401 - the shared session fixture
from test_spark_features import _rows  # noqa: E402
from test_spark_stripe import EXTRA, _same_partition  # noqa: E402

from workbench.engines import SparkEngine  # noqa: E402
from workbench.ingest.lake import Lake  # noqa: E402
from workbench.ingest.loader import ingest  # noqa: E402
from workbench.ingest.rebuild import build_on_engine  # noqa: E402
from workbench.ingest.tables import VERSION_OF  # noqa: E402

#: the tables compared: what the loads wrote (Stripe events and CSV exports) and what is
#: derived from the versions
TABLES = ("events", "quarantine", "loads", *VERSION_OF, "account_personal_source", "accounts",
          "prices", "subscriptions", "subscription_items", "subscription_history", "invoices",
          "invoice_lines", "payment_attempts", "refunds", "disputes", "usage", "crm_signals",
          "support_tickets", "fx_rates", "subscription_history_csv")  # fmt: skip


def _second_delivery(events: Path, out: Path) -> Path:
    """A later file re-delivering some of ``events``: byte-identical copies, a copy with only
    its delivery counter changed (a duplicate), a changed payload (a conflict with the
    stored event), two new events sharing one id with different payloads (a conflict
    within the load), plus :data:`EXTRA` (values of the wrong type, impossible times,
    malformed JSON, refunds, a dispute)."""
    lines = events.read_text().splitlines()
    first, second, third = (json.loads(lines[i]) for i in (0, 1, 2))
    counter = dict(second, pending_webhooks=7)
    changed = json.loads(lines[2])
    changed["data"]["object"]["description"] = "changed after delivery"
    twin = dict(third, id="evt_twin_1", created=third["created"] + 1)
    twin_changed = json.loads(json.dumps(twin))
    twin_changed["data"]["object"]["description"] = "the second twin"
    records = [lines[0], json.dumps(counter), json.dumps(changed), lines[3], json.dumps(twin),
               json.dumps(twin_changed), *EXTRA]  # fmt: skip
    assert first["id"] != second["id"] != third["id"]
    path = out / "redelivery.jsonl"
    path.write_text("\n".join(records) + "\n")
    return path


def _late_csvs(landing: Path, out: Path) -> Path:
    """A later CSV load (mappings detected from the headers): usage rows that replace stored
    ones, a new one, a key twice, a negative quantity and an impossible date; a Stripe
    customers export (account versions and their personal data); RavenStack subscriptions
    with a row of zero seats (subscription versions and the mapping's own subscription
    history); a file no mapping fits (the file fails); and the simulator's CRM export again
    (all duplicates)."""
    usage = landing.joinpath("usage.csv").read_text().splitlines()
    head, first, second = usage[0], usage[1].split(","), usage[2].split(",")
    (out / "a_usage_late.csv").write_text("\n".join([
        head, ",".join([*first[:3], "99999"]), ",".join([*second[:3], "0"]),
        f"{first[0]},2023-05-02,api_calls,12", f"{first[0]},2023-05-02,api_calls,13",
        f"{first[0]},2023-05-03,api_calls,-3", f"{first[0]},2023-13-45,api_calls,5",
    ]) + "\n")  # fmt: skip
    (out / "b_customers.csv").write_text(
        "id,Name,Email,Created (UTC),Currency,Address Country,region (metadata)\n"
        "cus_csv_1,Ann Example,ann@example.com,2023-02-01 10:00:00,usd,de,EMEA\n"
        "cus_csv_2,Bob Example,bob@example.com,2023-02-03 11:30:00,eur,fr,EMEA\n"
    )
    (out / "d_subscriptions.csv").write_text(
        "subscription_id,account_id,start_date,end_date,plan_tier,seats,mrr_amount,arr_amount,"
        "is_trial,upgrade_flag,downgrade_flag,churn_flag,billing_frequency,auto_renew_flag\n"
        "S-8cec59,A-3c1a3f,2023-01-23,2023-04-12,Enterprise,14,2786,33432,FALSE,FALSE,FALSE,TRUE,"
        "monthly,TRUE\n"
        "S-0f6f44,A-9b9fe9,2023-02-11,,Pro,17,833,9996,FALSE,FALSE,FALSE,FALSE,monthly,TRUE\n"
        "S-0f6f45,A-9b9fe9,2023-02-11,,Pro,0,0,0,FALSE,FALSE,FALSE,FALSE,monthly,TRUE\n"
    )
    (out / "e_notes.csv").write_text("note,author\nhello,me\n")
    (out / "f_crm_signals.csv").write_bytes(landing.joinpath("crm_signals.csv").read_bytes())
    return out


@pytest.fixture(scope="module")
def built(
    spark: SparkEngine,  # noqa: F811
    ingested_company,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[duckdb.DuckDBPyConnection, SparkEngine]:
    """A small simulated company with faults (duplicate deliveries, out-of-order and cut
    events, missing fields, unknown types, an API schema change) ingested by the loader,
    then a second Stripe load (:func:`_second_delivery` and the first events file again);
    its DuckDB warehouse, and the same lake built on Spark by :func:`build_on_engine`."""
    settings = ingested_company(accounts=30, months=4, seed=21, faults=True)
    landing = Path(settings.data_dir).parent / "landing" / "stripe"
    events = sorted(landing.glob("events-*.jsonl"))[0]
    extra = _second_delivery(events, tmp_path_factory.mktemp("redelivery"))
    ingest([extra, events], settings=settings, progress=False)
    late = _late_csvs(landing.parent / "csv", tmp_path_factory.mktemp("late_csv"))
    ingest(late, source="csv", settings=settings, progress=False)
    # many tiny stages: spark_support.SMALL_JOBS
    engine = small_jobs_engine(spark)
    t0 = time.perf_counter()
    report = build_on_engine(engine, Lake(Path(settings.data_dir) / "lake"))
    print(f"{report} (spark: {time.perf_counter() - t0:.1f}s)")
    assert report.loads == 4  # Stripe events, the CSV exports, redelivery, late CSVs
    return duckdb.connect(str(settings.warehouse_path), read_only=True), engine


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for name in frame.columns:  # Spark's DECIMAL(38, 0) arrives as Decimal objects
        sample = frame[name].dropna()
        if len(sample) and isinstance(sample.iloc[0], Decimal):
            frame[name] = frame[name].astype(float)
    return frame


@pytest.mark.parametrize("table", TABLES)
def test_lake_to_canonical_equal(
    built: tuple[duckdb.DuckDBPyConnection, SparkEngine], table: str
) -> None:
    """Each table the loads wrote or derived equals DuckDB's, row for row (both sorted),
    with the same columns; ``lines_hash`` (``hash`` on DuckDB, ``xxhash64`` on Spark)
    groups the same rows instead of having the same values."""
    con, engine = built
    duck = con.execute(f"SELECT * FROM {table}").df()
    spk = engine.fetch_df(f"SELECT * FROM {table}")
    assert list(spk.columns) == list(duck.columns)
    assert len(spk) == len(duck)
    if "lines_hash" in duck.columns:
        key = [c for c in ("event_id", "invoice_id", "line_id") if c in duck.columns]
        duck, spk = duck.sort_values(key), spk.sort_values(key)
        _same_partition(duck["lines_hash"].reset_index(drop=True),
                        spk["lines_hash"].reset_index(drop=True))  # fmt: skip
        duck, spk = duck.drop(columns="lines_hash"), spk.drop(columns="lines_hash")
    want = sorted(_rows(_comparable(duck)), key=repr)
    assert sorted(_rows(_comparable(spk)), key=repr) == want


def test_lake_exercised_the_rules(built: tuple[duckdb.DuckDBPyConnection, SparkEngine]) -> None:
    """The comparison covers what the merge rule decides: duplicates (byte-identical, within a
    file and against a prior load, and with only the delivery counter changed), conflicts
    (against the stored event and within a load), type problems and broken envelopes in
    quarantine, a whole file delivered again; for CSV exports, rejected rows, a failed file and
    a file delivered again; conservation holds on Spark."""
    _, engine = built
    rules = {r[0] for r in engine.execute("SELECT DISTINCT rule FROM quarantine").fetchall()}
    assert {"conflict", "malformed_json", "wrong_type", "out_of_range", "missing_required"} <= rules
    conflicts = engine.fetch_df(
        "SELECT source_file, message FROM quarantine WHERE rule = 'conflict'"
    )
    pairs = zip(conflicts["source_file"], conflicts["message"], strict=True)
    within = [f"({f} line" in m for f, m in pairs]
    assert any(within) and not all(within)  # one within the file, one with a prior load
    loads = engine.fetch_df(
        "SELECT load_id, source, status, received, accepted, quarantined, duplicates FROM loads "
        "ORDER BY finished_at"
    )
    assert (loads["received"] == loads[["accepted", "quarantined", "duplicates"]].sum(axis=1)).all()
    assert loads["load_id"].nunique() == 4
    csv = loads[loads["source"] == "csv"]
    assert csv["load_id"].nunique() == 2 and csv["accepted"].sum() > 3000
    assert list(csv["status"]).count("failed") == 1  # the file no mapping fits
    assert list(csv["duplicates"] > 0).count(True) == 1  # the CRM export again
    csv_rules = {"not_negative", "not_date", "below_min", "division_by_zero", "file_rejected"}
    assert csv_rules <= {
        r[0] for r in engine.execute("SELECT rule FROM quarantine WHERE source = 'csv'").fetchall()
    }
    loads = loads[loads["source"].isin(["stripe", "webhook"])]
    assert loads["load_id"].nunique() == 2
    again = loads.iloc[-1]  # the first events file, delivered again: all duplicates
    assert again["duplicates"] == again["received"] > 0
    redelivery = loads.iloc[-2]
    assert redelivery["duplicates"] >= 3  # identical, the delivery counter, a fourth line
    assert engine.execute(
        "SELECT count(*) FROM events WHERE event_id = 'evt_twin_1'"
    ).fetchone() == (1,)


def test_loader_statements(spark: SparkEngine) -> None:  # noqa: F811
    """The statement forms the loader adds, one by one against DuckDB: ``UPDATE ... FROM``
    (matched rows only, several columns, a struct field in the condition), ``INSERT ... ON
    CONFLICT DO NOTHING`` and ``INSERT OR REPLACE`` (the first row of a key wins; a
    duplicate or NULL key fails), ``CREATE TEMP VIEW``, ``DESCRIBE``, ``?`` parameters, an empty
    registered frame, and integers with NULLs from ``fetchall``."""
    duck = duckdb.connect()
    engine = SparkEngine(spark.spark.newSession())
    engine.keys["wb_stmt_q"] = ("id",)
    script = [
        "CREATE OR REPLACE TEMP TABLE wb_stmt_t (k VARCHAR, o STRUCT(object VARCHAR), "
        "status VARCHAR, keep BOOLEAN, n BIGINT)",
        "INSERT INTO wb_stmt_t VALUES ('a', {'object': 'invoice'}, NULL, false, 1), "
        "('b', {'object': 'charge'}, NULL, false, NULL), ('c', NULL, 'old', false, 3)",
        "CREATE OR REPLACE TEMP TABLE wb_stmt_u (k VARCHAR, object VARCHAR, status VARCHAR)",
        "INSERT INTO wb_stmt_u VALUES ('a', 'invoice', 'new'), ('b', 'invoice', 'new'), "
        "('c', NULL, NULL)",
        "UPDATE wb_stmt_t SET keep = true, status = u.status FROM wb_stmt_u u "
        "WHERE wb_stmt_t.k = u.k AND wb_stmt_t.o.object = u.object",
        "UPDATE wb_stmt_t SET n = n + 10 WHERE k = 'c'",
        "CREATE OR REPLACE TEMP TABLE wb_stmt_q (id VARCHAR PRIMARY KEY, v BIGINT)",
        "INSERT INTO wb_stmt_q VALUES ('x', 1)",
        "INSERT INTO wb_stmt_q BY NAME SELECT * FROM (VALUES ('x', 2), ('y', 3)) AS r(id, v) "
        "ON CONFLICT DO NOTHING",
        "INSERT INTO wb_stmt_q BY NAME SELECT * FROM (VALUES ('w', 5), ('w', 4)) AS r(id, v) "
        "ON CONFLICT DO NOTHING",
        "INSERT OR REPLACE INTO wb_stmt_q BY NAME SELECT * FROM (VALUES ('z', 1), ('z', 3), "
        "('y', 8), ('y', 9)) AS r(id, v) ORDER BY v DESC",
        "CREATE OR REPLACE TEMP VIEW wb_stmt_v AS SELECT k, n FROM wb_stmt_t WHERE keep",
    ]
    for sql in script:
        duck.execute(sql)
        engine.execute(sql)
    for query in (
        "SELECT k, o.object AS object, status, keep, n FROM wb_stmt_t ORDER BY k",
        "SELECT * FROM wb_stmt_q ORDER BY id",
        "SELECT * FROM wb_stmt_v ORDER BY k",
    ):
        want = duck.execute(query).fetchall()
        assert engine.execute(query).fetchall() == want, query
    assert duck.execute("SELECT n FROM wb_stmt_t ORDER BY k").fetchall() == [(1,), (None,), (13,)]
    # a key twice, or NULL, fails as DuckDB's primary key does; the table stays as it was
    for sql in ("INSERT INTO wb_stmt_q VALUES ('n', 1), ('x', 2)",
                "INSERT OR REPLACE INTO wb_stmt_q VALUES (NULL, 1)"):  # fmt: skip
        for con in (duck, engine):
            with pytest.raises(duckdb.ConstraintException):
                con.execute(sql)
    query = "SELECT * FROM wb_stmt_q ORDER BY id"
    assert engine.execute(query).fetchall() == duck.execute(query).fetchall()
    query = "SELECT k FROM wb_stmt_t WHERE n >= ? AND k <> ? ORDER BY k"
    assert engine.execute(query, [1, "a"]).fetchall() == duck.execute(query, [1, "a"]).fetchall()
    names = [r[0] for r in duck.execute("DESCRIBE wb_stmt_t").fetchall()]
    assert [r[0] for r in engine.execute("DESCRIBE wb_stmt_t").fetchall()] == names
    empty = pd.DataFrame({"event_id": pd.Series([], dtype=object)})
    engine.register("wb_stmt_empty", empty)
    assert engine.execute("SELECT count(*) FROM wb_stmt_empty").fetchone() == (0,)
