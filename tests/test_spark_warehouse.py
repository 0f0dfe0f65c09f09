"""The warehouse on Spark (issue #12): versioned Parquet tables behind ``open_warehouse``.

A ``write()`` block commits the tables it created or changed, together, by adding one
manifest; a block that fails, or a commit that stops before its manifest, leaves readers on
the previous version. Loads through the real ``ingest`` on ``engine = "spark"`` are
idempotent and give DuckDB's tables; ``workbench rebuild`` on Spark gives them again.
Skipped with a message when pyspark, sqlglot or Java is missing.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
from spark_support import SMALL_JOBS, require_spark

require_spark()

from test_spark_engine import spark  # noqa: E402, F401 - the shared session fixture
from test_spark_features import _rows  # noqa: E402
from test_spark_ingest import _comparable  # noqa: E402

from workbench.config import load_settings  # noqa: E402
from workbench.engines import EngineError, SparkEngine, table_names  # noqa: E402
from workbench.ingest.erase import erase_customer  # noqa: E402
from workbench.ingest.landing import ingest_landing  # noqa: E402
from workbench.ingest.verify import verify  # noqa: E402
from workbench.lakehouse import SparkWarehouse, open_warehouse  # noqa: E402
from workbench.schema import TABLES  # noqa: E402
from workbench.store import Warehouse  # noqa: E402

#: the tables a load writes that are compared with DuckDB's
LOADED = ("events", "quarantine", "accounts", "subscriptions", "subscription_history",
          "invoices", "invoice_lines", "payment_attempts", "refunds", "usage", "crm_signals",
          "support_tickets", "fx_rates")  # fmt: skip


def _settings(root: Path, **extra: str):  # noqa: ANN202
    return load_settings(root=root, overrides={"data_dir": str(root / "data"), **extra})


@pytest.fixture()
def warehouse(spark: SparkEngine, tmp_path: Path) -> SparkWarehouse:  # noqa: F811
    return SparkWarehouse(_settings(tmp_path, engine="spark"), conf=SMALL_JOBS)


def _rows_of(wh: SparkWarehouse, sql: str) -> list[tuple]:
    with wh.read() as engine:
        return engine.execute(sql).fetchall()


def test_open_warehouse_follows_the_engine_setting(tmp_path: Path) -> None:
    assert isinstance(open_warehouse(_settings(tmp_path, engine="spark")), SparkWarehouse)
    assert isinstance(open_warehouse(_settings(tmp_path)), Warehouse)


def test_commit_then_read(warehouse: SparkWarehouse) -> None:
    """Created and changed tables are committed; temporary ones and registered frames are
    not; every canonical table exists (empty) after the first write."""
    with warehouse.write(step="t") as engine:
        engine.execute("CREATE TABLE results AS SELECT 1 AS a, 'x' AS b")
        engine.execute("CREATE TEMP TABLE scratch AS SELECT 2 AS c")
        engine.register("frame", pd.DataFrame({"d": [3]}))
        engine.execute("INSERT INTO accounts (account_id, currency) VALUES ('acc_1', 'usd')")
    manifest = warehouse.manifest()
    assert manifest["seq"] == 1 and manifest["step"] == "t"
    assert set(TABLES) <= set(manifest["tables"]) and "results" in manifest["tables"]
    assert not {"scratch", "frame"} & set(manifest["tables"])
    assert _rows_of(warehouse, "SELECT a, b FROM results") == [(1, "x")]
    assert _rows_of(warehouse, "SELECT account_id, currency FROM accounts") == [("acc_1", "usd")]
    assert _rows_of(warehouse, "SELECT count(*) FROM invoices") == [(0,)]
    with warehouse.read() as engine:  # a new block sees only the committed tables
        assert "scratch" not in table_names(engine) and "results" in table_names(engine)
    with warehouse.write() as engine:  # reading only: nothing to commit
        engine.execute("SELECT count(*) FROM results").fetchall()
    assert warehouse.manifest()["seq"] == 1


def test_failed_block_and_stopped_commit_leave_the_previous_version(
    warehouse: SparkWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warehouse.write() as engine:
        engine.execute("CREATE TABLE results AS SELECT 1 AS a")
    foreign = [Path(warehouse.root) / "results" / "notes", Path(warehouse.root) / "other" / "x"]
    for folder in foreign:  # someone else's files under the root: never pruned
        folder.mkdir(parents=True)
        (folder / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="boom"), warehouse.write() as engine:
        engine.execute("INSERT INTO results VALUES (2)")
        raise ValueError("boom")
    assert _rows_of(warehouse, "SELECT a FROM results") == [(1,)]

    def stop(manifest: dict) -> None:  # the process dies after writing the Parquet files
        raise KeyboardInterrupt

    monkeypatch.setattr(warehouse, "_write_manifest", stop)
    with pytest.raises(KeyboardInterrupt), warehouse.write() as engine:
        engine.execute("INSERT INTO results VALUES (3)")
    monkeypatch.undo()
    assert _rows_of(warehouse, "SELECT a FROM results") == [(1,)]
    versions = [p for p in (Path(warehouse.root) / "results").iterdir() if p.name != "notes"]
    assert len(versions) == 2  # the committed one and the orphan
    with warehouse.write() as engine:
        engine.execute("INSERT INTO results VALUES (4)")
    assert sorted(_rows_of(warehouse, "SELECT a FROM results")) == [(1,), (4,)]
    assert all((folder / "keep.txt").read_text() == "mine" for folder in foreign)
    kept = {p.name for p in (Path(warehouse.root) / "results").iterdir()} - {"notes"}
    named = {Path(m).name for m in (warehouse.tables()["results"],)}
    assert named <= kept and len(kept) == 2  # orphan pruned; the previous version kept
    assert warehouse.manifest()["seq"] == 2  # the failed and the stopped block added none


def test_declared_primary_key_and_drop(warehouse: SparkWarehouse) -> None:
    """A key declared in ``CREATE TABLE`` holds in later blocks (where the table already
    exists): ``INSERT OR REPLACE`` replaces, a plain duplicate fails as on DuckDB; ``DROP
    TABLE`` removes the table from the warehouse."""
    ddl = "CREATE TABLE IF NOT EXISTS kv (k VARCHAR, v INTEGER, PRIMARY KEY (k))"
    with warehouse.write() as engine:
        engine.execute(ddl)
        engine.execute("INSERT INTO kv VALUES ('a', 1), ('b', 2)")
    with warehouse.write() as engine:
        engine.execute(ddl)
        engine.execute("INSERT OR REPLACE INTO kv VALUES ('a', 10)")
    assert sorted(_rows_of(warehouse, "SELECT k, v FROM kv")) == [("a", 10), ("b", 2)]
    with pytest.raises(duckdb.ConstraintException), warehouse.write() as engine:
        engine.execute(ddl)
        engine.execute("INSERT INTO kv VALUES ('b', 3)")
    with pytest.raises(EngineError, match="already exists"), warehouse.write() as engine:
        engine.execute("CREATE TABLE kv AS SELECT 1 AS k")
    with warehouse.write() as engine:
        engine.execute("DROP TABLE kv")
    assert "kv" not in warehouse.tables()


def test_read_before_anything_was_committed(warehouse: SparkWarehouse) -> None:
    with pytest.raises(FileNotFoundError, match="engine = 'spark'"), warehouse.read():
        pass


@pytest.fixture(scope="module")
def loaded(spark: SparkEngine, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811, ANN201
    """A small company with faults loaded through ``ingest`` twice on Spark, and the same
    landing files loaded into a DuckDB warehouse."""
    simulator = pytest.importorskip("workbench.simulator")
    root = tmp_path_factory.mktemp("spark_loads")
    simulator.simulate(accounts=25, months=4, seed=8, out=root / "data", faults=True,
                       progress=False)  # fmt: skip
    settings = _settings(root, engine="spark")
    with pytest.MonkeyPatch.context() as patch:  # the sessions ingest opens: small jobs
        patch.setattr(SparkWarehouse, "session_conf", SMALL_JOBS)
        first = ingest_landing(settings, progress=False)
        second = ingest_landing(settings, progress=False)
    duck_root = tmp_path_factory.mktemp("duck_loads")
    duck = _settings(duck_root)
    from workbench.ingest.loader import ingest

    for folder, source in (("stripe", "stripe"), ("csv", "csv")):
        ingest(root / "data" / "landing" / folder, source=source, settings=duck, progress=False)
    return settings, duck, first, second


def test_ingest_on_spark_is_idempotent_and_verified(loaded) -> None:  # noqa: ANN001
    settings, _, first, second = loaded
    assert sum(r.accepted for _, report in first for r in report.files) > 1000
    assert sum(r.quarantined for _, report in first for r in report.files) > 0
    again = [r for _, report in second for r in report.files]
    assert again and all(r.accepted == 0 and r.duplicates == r.received for r in again)
    report = verify(settings)
    assert report.ok, report.failed()


@pytest.mark.parametrize("table", LOADED)
def test_ingest_on_spark_equals_duckdb(loaded, table: str) -> None:  # noqa: ANN001
    """Through Parquet and back: each table the loads wrote equals DuckDB's (load ids and
    times differ between the two runs and are left out)."""
    settings, duck, _, _ = loaded
    skip = {"load_id", "received_at", "loaded_at", "lines_hash", "quarantine_id", "source_file"}
    con = duckdb.connect(str(duck.warehouse_path), read_only=True)
    want = con.execute(f"SELECT * FROM {table}").df()
    con.close()
    with SparkWarehouse(settings, conf=SMALL_JOBS).read() as engine:
        got = engine.fetch_df(f"SELECT * FROM {table}")
    assert list(got.columns) == list(want.columns)
    cols = [c for c in want.columns if c not in skip]
    assert sorted(_rows(_comparable(got[cols])), key=repr) == sorted(
        _rows(_comparable(want[cols])), key=repr
    )


def test_erase_and_rebuild_on_spark(loaded) -> None:  # noqa: ANN001
    """Erasing a customer rewrites the lake and rebuilds the Spark warehouse from it (the
    rebuild ``workbench rebuild`` runs): the customer's name and e-mail are gone, every
    other account and the events (but the hashes of rewritten records) and invoices are as
    before, and verify passes."""
    settings, *_ = loaded
    wh = SparkWarehouse(settings, conf=SMALL_JOBS)
    query = "SELECT account_id, name, email FROM accounts WHERE email IS NOT NULL"
    with wh.read() as engine:
        people = sorted(engine.execute(query).fetchall())
        before = {t: _sorted_rows(engine, t) for t in ("events", "invoices")}
    customer = people[0][0]
    seq = wh.manifest()["seq"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SparkWarehouse, "session_conf", SMALL_JOBS)
        report = erase_customer(customer, who="test", why="GDPR art. 17", settings=settings)
    assert report.files_rewritten >= 1 and report.rebuild.loads == 4
    assert wh.manifest()["seq"] == seq + 1
    with wh.read() as engine:
        assert sorted(engine.execute(query).fetchall()) == people[1:]
        erased = engine.execute(
            "SELECT count(*) FROM erasures WHERE customer_id = ?", [customer]
        ).fetchall()
        assert erased[0][0] >= 1
        for table, rows in before.items():
            assert _sorted_rows(engine, table) == rows, table
    assert verify(settings).ok


def _sorted_rows(engine: SparkEngine, table: str) -> list[tuple]:
    frame = engine.fetch_df(f"SELECT * FROM {table}")
    frame = frame.drop(columns=[c for c in frame.columns if "sha" in c or "hash" in c])
    return sorted(_rows(_comparable(frame)), key=repr)
