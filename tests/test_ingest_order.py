"""Any arrival order of the same events gives the same tables (property test)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from workbench.config import load_settings
from workbench.ingest import ingest
from workbench.ingest.checksums import checksums
from workbench.ingest.sample_events import sample_events

STATE_TABLES = [
    "accounts",
    "prices",
    "subscriptions",
    "subscription_items",
    "subscription_history",
    "invoices",
    "invoice_lines",
    "payment_attempts",
    "refunds",
    "disputes",
]


def _events() -> list[dict]:
    events = sample_events(accounts=4, months=4, seed=11)
    # Two versions of one subscription in the same second: the event id breaks the tie.
    sub = next(e for e in events if e["type"] == "customer.subscription.created")
    tie = json.loads(json.dumps(sub))
    tie["id"] = sub["id"][:-1] + ("Z" if sub["id"][-1] != "Z" else "Y")
    tie["type"] = "customer.subscription.updated"
    tie["data"]["object"]["items"]["data"][0]["quantity"] = 99
    events.append(tie)
    return events


EVENTS = _events()


def _load(root: Path, batches: list[list[list[dict]]]) -> dict[str, str]:
    """Ingest ``batches`` (loads of files of events) into a fresh warehouse; checksums."""
    settings = load_settings(root=root, overrides={"data_dir": str(root / "data")})
    for b, files in enumerate(batches):
        paths = []
        for f, events in enumerate(files):
            path = root / "in" / f"load{b}" / f"part{f}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(e) + "\n" for e in events))
            paths.append(path)
        ingest(paths, settings=settings, progress=False)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        sums = checksums(con, tables=STATE_TABLES)
        sums["events"] = con.execute(
            "SELECT md5(string_agg(event_id || type || created || payload_hash || disposition, ',' "
            "ORDER BY event_id)) FROM events"
        ).fetchall()[0][0]
        sums["quarantine"] = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    finally:
        con.close()
    return sums


def test_events_cover_the_interesting_cases():
    types = {e["type"] for e in EVENTS}
    assert {
        "customer.subscription.updated",
        "invoice.paid",
        "charge.failed",
        "customer.created",
    } <= types
    assert len(EVENTS) >= 80


@hsettings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**31 - 1),
    loads=st.integers(1, 2),
    files=st.integers(1, 3),
    duplicate=st.booleans(),
)
def test_any_arrival_order_gives_the_same_tables(tmp_path_factory, seed, loads, files, duplicate):
    reference = getattr(test_any_arrival_order_gives_the_same_tables, "_reference", None)
    if reference is None:
        reference = _load(tmp_path_factory.mktemp("ref"), [[EVENTS]])
        assert all(
            not v.startswith("0:") for k, v in reference.items() if k in ("accounts", "invoices")
        )
        test_any_arrival_order_gives_the_same_tables._reference = reference
    rng = random.Random(seed)
    shuffled = EVENTS[:]
    rng.shuffle(shuffled)
    if duplicate:  # re-delivered events change nothing either
        shuffled += rng.sample(EVENTS, 10)
    cuts = sorted(rng.sample(range(1, len(shuffled)), loads * files - 1))
    pieces = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    batches = [pieces[i * files : (i + 1) * files] for i in range(loads)]
    assert _load(tmp_path_factory.mktemp("perm"), batches) == reference
