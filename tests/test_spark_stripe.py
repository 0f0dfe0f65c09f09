"""Parsing Stripe events into version rows on Apache Spark equals DuckDB (issue #12).

One definition: the DuckDB SQL of :mod:`workbench.ingest.stripe_events` (``stage``:
``json_transform`` into one struct and the envelope checks; ``project``: the version
tables with strict typing; ``type_problems``: what goes to quarantine), run as is on
DuckDB and through ``SparkEngine`` on Spark (``json_transform`` as ``from_json`` plus type
probes, the ``TEMP MACRO``s inlined, ``regexp_full_match`` as ``RLIKE``, ...). The raw
records are the same registered Arrow table on both. Skipped with a message when
pyspark, sqlglot or Java is missing.
"""

from __future__ import annotations

import time
from decimal import Decimal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from spark_support import require_spark

require_spark()

from test_spark_engine import spark  # noqa: E402, F401 - the shared session fixture
from test_spark_features import _rows  # noqa: E402

from workbench.engines import SparkEngine  # noqa: E402
from workbench.ingest import stripe_events  # noqa: E402
from workbench.ingest.records import read_records  # noqa: E402

RECEIVED = 1_800_000_000  # unix seconds of the (pretend) receipt
#: records appended to the simulated events: malformed JSON, a JSON array, wrong types
#: (numbers as strings, fractions, booleans, objects where scalars belong), impossible
#: times, a wrong-typed envelope, expanded references, escapes, and valid refunds and a
#: dispute (top level and in a charge's refund list)
EXTRA = [
    '{"id":"evt_x1","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_x1",'
    '"object":"invoice","customer":"cus_x","status":"paid","currency":"usd","total":"1500",'
    '"subtotal":12.5,"created":"abc","total_taxes":[{"amount":7},{"amount":"8"}],'
    '"lines":{"data":[{"id":"il_x1","amount":"9","currency":"usd","period":{"start":1,"end":2},'
    '"discount_amounts":[{"amount":3},{"amount":4}]}]}}}}',
    '{"id":"evt_x2","type":"charge.failed","created":1700000001,"data":{"object":{"id":"ch_x2",'
    '"object":"charge","amount":1000,"currency":"usd","status":"failed","paid":"no",'
    '"created":99999999999,"outcome":{"reason":"card_declined","type":"issuer_declined"},'
    '"payment_method_details":{"card":{"brand":"Visa","exp_month":"12","exp_year":2030}}}}}',
    '{"id":"evt_x3","type":"customer.created","created":"1700000002","data":{"object":'
    '{"id":"cus_x3","object":"customer"}}}',
    "{not json",
    "[1, 2]",
    '{"id":"evt_x4","type":"customer.updated","created":1700000003,"data":{"object":{'
    '"id":"cus_x4","object":"customer","created":true,"address":"nowhere","delinquent":1,'
    '"metadata":{"region":"emea","n":[1,2.5]}}}}',
    '{"id":"evt_x5","type":"customer.subscription.updated","created":1700000004,"data":{'
    '"object":{"id":"sub_x5","object":"subscription","customer":{"id":"cus_x4",'
    '"object":"customer"},"status":"active","cancel_at_period_end":"yes","items":{"data":[{'
    '"id":"si_x5","quantity":"2","price":{"id":"price_x5","currency":"usd",'
    '"unit_amount":"abc","recurring":{"interval":"month","interval_count":1.5}}}]},'
    '"discount":{"coupon":{"id":"c1","percent_off":"x","amount_off":{"v":1}},"start":-5}}}}',
    '{"id":"evt_x6","type":"refund.created","created":2000000000,"data":{"object":{'
    '"id":"re_x6","object":"refund","amount":-5,"currency":"usd","status":"ok"}}}',
    '{"id":"evt_x7","type":"refund.created","created":1700000005,"data":{"object":{'
    '"id":"re_x7","object":"refund","amount":250,"currency":"usd","status":"succeeded",'
    '"charge":{"id":"ch_x2"},"reason":"a\\"b\\\\c\\n\\u00e9","created":1700000005}}}',
    '{"id":"evt_x8","type":"charge.refunded","created":1700000006,"data":{"object":{'
    '"id":"ch_x8","object":"charge","amount":900,"currency":"eur","status":"succeeded",'
    '"paid":true,"amount_refunded":900,"refunds":{"data":[{"id":"re_x8","amount":900,'
    '"status":"succeeded","created":1700000006},{"id":"re_x9","amount":"1"}]}}}}',
    '{"id":"evt_x9","type":"charge.dispute.created","created":1700000007,"data":{"object":{'
    '"id":"dp_x9","object":"dispute","charge":"ch_x8","amount":900,"currency":"eur",'
    '"reason":"fraudulent","status":"needs_response","created":"1700000007"}}}',
    '{"id":"evt_x10","type":"invoice.created","created":1700000008,"data":{"object":{'
    '"id":"in_x10","object":"invoice","customer":"cus_x","status":null,"currency":"usd",'
    '"total":100,"lines":{"data":[{"id":"sub_x10","amount":100,"pricing":{"price_details":'
    '{"price":"price_x5"}},"parent":{"type":"subscription_item_details",'
    '"subscription_item_details":{"subscription":"sub_x5","proration":false}}}]}}}}',
]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, pd.DataFrame]:
    """The simulator's Stripe landing files of a small company, plus :data:`EXTRA`, split
    into records as the loader does (``wb_raw``), and the files (``wb_files``)."""
    simulator = pytest.importorskip("workbench.simulator")
    out = tmp_path_factory.mktemp("sim_stripe")
    simulator.simulate(accounts=40, months=6, seed=11, out=out, faults=False, progress=False)
    files = sorted(f for f in (out / "landing" / "stripe").rglob("*") if f.is_file())
    tables = []
    for idx, path in enumerate(files):
        data = path.read_bytes()
        if idx == len(files) - 1:
            data = data.rstrip(b"\n") + b"\n" + "\n".join(EXTRA).encode() + b"\n"
        t = read_records(data, received_at=RECEIVED).table
        idx_col = pa.array(np.full(t.num_rows, idx, dtype=np.int32))
        tables.append(t.append_column("file_idx", idx_col))
    files_df = pd.DataFrame({"file_idx": np.arange(len(files), dtype=np.int32), "source": "stripe"})
    return pa.concat_tables(tables), files_df


def _parse(con: duckdb.DuckDBPyConnection | SparkEngine, raw: pa.Table, files: pd.DataFrame):  # noqa: ANN202
    """stage + project + type_problems on one engine: the staged records' verdicts, the
    type problems and every version table (and the personal columns) as pandas."""
    con.register("wb_raw", raw)
    con.register("wb_files", files)
    stripe_events.install_macros(con)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE invoice_line_versions (invoice_id VARCHAR, lines_hash VARCHAR)"
    )
    stripe_events.stage(con, received_epoch=RECEIVED)
    # the loader keeps the new records of handled types; here: every usable record
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE wb_new AS {stripe_events.new_records_sql('s.rule IS NULL')}"
    )
    versions = stripe_events.project(con)
    problems = stripe_events.type_problems(con, versions)
    staged = con.execute(
        "SELECT file_idx, line, sha, event_id, type, created_raw, api_version, rule, "
        "column_name, value, o.object AS object, o.id AS object_id FROM wb_stage"
    ).df()
    tables = {t: con.execute(f"SELECT * FROM {temp}").df() for t, temp in versions.items()}
    tables["wb_personal"] = con.execute("SELECT * FROM wb_personal").df()
    return staged, problems, tables


def _sorted_rows(frame: pd.DataFrame) -> list[tuple]:
    frame = frame.copy()
    for name in frame.columns:  # Spark's DECIMAL(38, 0) sums arrive as Decimal objects
        sample = frame[name].dropna()
        if len(sample) and isinstance(sample.iloc[0], Decimal):
            frame[name] = frame[name].astype(float)
    return sorted(_rows(frame), key=repr)


def _same_partition(duck: pd.Series, spk: pd.Series) -> None:
    """Engine-specific identifiers (``lines_hash``): equal on exactly the same rows."""
    pairs = set(zip(duck.fillna("<null>"), spk.fillna("<null>"), strict=True))
    assert len(pairs) == len({d for d, _ in pairs}) == len({s for _, s in pairs})


def test_stripe_events_parse_equal(
    spark: SparkEngine,  # noqa: F811
    raw: tuple[pa.Table, pd.DataFrame],
) -> None:
    """The same records parsed on DuckDB and on Spark: the same stage verdicts (malformed,
    missing, wrong-typed, out-of-range envelopes), the same type problems for quarantine
    (table, column, rule and the JSON text of the value) and the same version rows, table
    by table."""
    table, files = raw
    engine = SparkEngine(spark.spark.newSession())
    t0 = time.perf_counter()
    duck = _parse(duckdb.connect(), table, files)
    t1 = time.perf_counter()
    spk = _parse(engine, table, files)
    print(f"parse: duckdb {t1 - t0:.1f}s, spark {time.perf_counter() - t1:.1f}s")
    (d_staged, d_problems, d_tables), (s_staged, s_problems, s_tables) = duck, spk

    assert list(s_staged.columns) == list(d_staged.columns)
    assert _sorted_rows(s_staged) == _sorted_rows(d_staged)
    rules = set(d_staged["rule"].dropna())
    assert {"malformed_json", "wrong_type", "out_of_range"} <= rules, rules

    assert list(s_problems.columns) == list(d_problems.columns)
    assert _sorted_rows(s_problems) == _sorted_rows(d_problems)
    assert set(d_problems["rule"]) == {"wrong_type", "out_of_range", "missing_required"}
    assert {'"1500"', "12.5", "true", '"abc"'} <= set(d_problems["value"])

    assert set(s_tables) == set(d_tables)
    for name, d in d_tables.items():
        s = s_tables[name]
        assert list(s.columns) == list(d.columns), name
        assert len(d) > 0, name
        if "lines_hash" in d.columns:
            key = ["event_id", *[c for c in d.columns if c.endswith("_id")][:2]]
            d, s = d.sort_values(key), s.sort_values(key)
            _same_partition(d["lines_hash"].reset_index(drop=True),
                            s["lines_hash"].reset_index(drop=True))  # fmt: skip
            d, s = d.drop(columns="lines_hash"), s.drop(columns="lines_hash")
        if "_problems" in d.columns:
            d, s = d.drop(columns="_problems"), s.drop(columns="_problems")
        assert _sorted_rows(s) == _sorted_rows(d), name
