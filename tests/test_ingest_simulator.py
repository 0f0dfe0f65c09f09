"""The simulator's landing files with injected faults: exact conservation against its manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from workbench import event_types
from workbench.config import load_settings
from workbench.ingest import ingest, verify
from workbench.ingest.lake import Lake
from workbench.redact import contains_pan

simulator = pytest.importorskip("workbench.simulator")

# What the warehouse cannot do without, per object type (data.object.<field>). Fields not
# listed are optional for that object: a customer's currency, a subscription's currency
# (its items carry it), a charge's customer (its invoice tells) or status (``paid`` tells).
NEEDED = {
    "customer": {"id"},
    "subscription": {"id", "customer", "status"},
    "invoice": {"id", "customer", "currency", "status", "total"},
    "charge": {"id", "amount", "currency"},
    "price": {"id", "currency"},
    "refund": {"id", "amount", "currency", "status"},
    "dispute": {"id", "amount", "currency", "status"},
}
ENVELOPE = {"id", "type", "created"}


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulator.simulate(accounts=200, months=6, seed=3, out=out, faults=True, progress=False)
    manifest = json.loads((out / "landing" / "faults_manifest.json").read_text())
    settings = load_settings(root=out, overrides={"data_dir": str(out / "data")})
    stripe = ingest(out / "landing" / "stripe", settings=settings, progress=False)
    csv = ingest(out / "landing" / "csv", source="csv", settings=settings, progress=False)
    return out, manifest, settings, stripe, csv


def _expected_quarantine(out: Path, faults: list[dict]) -> set[tuple[str, int]]:
    expected = set()
    for f in faults:
        if f["kind"] == "malformed_json":
            expected.add((f["file"], f["line"]))
        elif f["kind"] == "missing_required_field":
            line = (out / "landing" / f["file"]).read_text().splitlines()[f["line"] - 1]
            event = json.loads(line)
            path = f["field"].split(".")
            if len(path) == 1:
                assert path[0] in ENVELOPE
                expected.add((f["file"], f["line"]))
                continue
            obj = event["data"]["object"].get("object")
            handled = event_types.disposition(event["type"]) == "handled"
            if handled and path[-1] in NEEDED.get(obj, set()):
                expected.add((f["file"], f["line"]))
    return expected


def test_conservation_matches_the_fault_manifest(landed):
    out, manifest, settings, stripe, csv = landed
    faults = [f for f in manifest["faults"] if f["file"].startswith("stripe/")]
    assert {f["kind"] for f in faults} >= {
        "duplicate_delivery",
        "malformed_json",
        "missing_required_field",
        "unknown_event_type",
        "card_number_in_text",
        "schema_change",
        "out_of_order",
    }
    by_file = {Path(f.path).relative_to(out / "landing").as_posix(): f for f in stripe.files}
    for name, report in by_file.items():
        lines = [ln for ln in (out / "landing" / name).read_text().splitlines() if ln.strip()]
        assert report.received == len(lines)
        assert report.balanced
        mine = [f for f in faults if f["file"] == name]
        kinds = Counter(f["kind"] for f in mine)
        assert report.duplicates == kinds["duplicate_delivery"], name
        assert report.redactions == kinds["card_number_in_text"], name
        assert sum(report.unknown_types.values()) == kinds["unknown_event_type"], name
        assert set(report.unknown_types) == {
            f["type"] for f in mine if f["kind"] == "unknown_event_type"
        }

    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        lake_to_landing = {
            f.lake_path: Path(f.path).relative_to(out / "landing").as_posix() for f in stripe.files
        }
        got = {
            (lake_to_landing[s], ln)
            for s, ln in con.execute(
                "SELECT DISTINCT source_file, line FROM quarantine WHERE source = 'stripe'"
            ).fetchall()
        }
        expected = _expected_quarantine(out, faults)
        assert got == expected
        assert sum(f.quarantined for f in stripe.files) == len(expected)
        rules = Counter(
            r
            for (r,) in con.execute(
                "SELECT rule FROM quarantine WHERE source = 'stripe'"
            ).fetchall()
        )
        assert rules["malformed_json"] == Counter(f["kind"] for f in faults)["malformed_json"]
        # the events the schema change rewrote were read in their new shape
        changed = [f["event_id"] for f in faults if f["kind"] == "schema_change"]
        for eid in changed:
            (obj_type, obj_id) = con.execute(
                "SELECT object_type, object_id FROM events WHERE event_id = ?", [eid]
            ).fetchall()[0]
            if obj_type == "invoice":
                (sub,) = con.execute(
                    "SELECT subscription_id FROM invoice_versions WHERE event_id = ?", [eid]
                ).fetchall()[0]
                assert sub is not None
            else:
                (start,) = con.execute(
                    "SELECT current_period_start FROM subscription_versions WHERE event_id = ?",
                    [eid],
                ).fetchall()[0]
                assert start is not None
        # every customer the simulator made is an account
        (accounts,) = con.execute("SELECT count(*) FROM accounts").fetchall()[0]
        assert accounts == 200
    finally:
        con.close()


def test_csv_exports_and_cards_in_tickets(landed):
    out, manifest, settings, stripe, csv = landed
    assert csv.ok and all(f.balanced for f in csv.files)
    tickets = [f for f in csv.files if f.path.endswith("support_tickets.csv")][0]
    cards = [
        f
        for f in manifest["faults"]
        if f["kind"] == "card_number_in_text" and f["file"].startswith("csv/")
    ]
    assert tickets.redactions == len(cards)
    lake = Lake(Path(settings.data_dir) / "lake")
    for rel in lake.objects():
        assert not contains_pan(lake.read(rel).decode("utf-8", "replace")), rel
    assert verify(settings).ok
