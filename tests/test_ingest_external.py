"""Real Stripe material written by others: webhook payloads, API objects, OpenAPI fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from workbench import event_types
from workbench.config import load_settings
from workbench.ingest import ingest, verify
from workbench.ingest.lake import Lake
from workbench.redact import contains_pan

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external" / "stripe"


@pytest.fixture()
def settings(tmp_path: Path):
    if not EXTERNAL.is_dir():
        pytest.fail(f"external test material not found at {EXTERNAL}")
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


def rows(settings, sql: str) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def outcomes(settings) -> dict[str, tuple]:
    """file name -> (accepted, quarantined rules)"""
    loads = rows(settings, "SELECT source_file, original_path, accepted FROM loads")
    q = rows(
        settings,
        "SELECT source_file, list(DISTINCT rule || ':' || coalesce(column_name, '') "
        "ORDER BY rule || ':' || coalesce(column_name, '')) FROM quarantine GROUP BY 1",
    )
    rules = dict(q)
    return {Path(orig).name: (acc, tuple(rules.get(src, []))) for src, orig, acc in loads}


def test_every_v1_event_type_is_handled_or_ignored_with_a_reason():
    listed = [t for t in (EXTERNAL / "event_types_v1.txt").read_text().split() if t]
    assert len(listed) == 275
    assert set(listed) == set(event_types.STRIPE_V1_EVENT_TYPES)
    for t in listed:
        d = event_types.disposition(t)
        assert d in ("handled", "ignored"), t
        if d == "ignored":
            assert event_types.ignored_reason(t), t
        else:
            assert event_types.expected_object(t) in event_types.OBJECT_TABLES
    assert event_types.disposition("invoice.reconciled") == "unknown"
    assert event_types.disposition("customer.snapshot") == "handled"
    assert len(event_types.registry()) == 275


def test_each_webhook_payload_ingests(settings, tmp_path):
    """The 88 payloads share two event ids; with the ids made unique each is judged alone."""
    folder = tmp_path / "bodies"
    folder.mkdir()
    for f in sorted((EXTERNAL / "webhook_events").glob("*.json")):
        body = json.loads(f.read_text())
        body["id"] = f"{body['id']}_{f.stem.replace('.', '_')}"
        (folder / f.name).write_text(json.dumps(body, indent=2))
    report = ingest(folder, source="webhook", settings=settings, progress=False)
    assert len(report.files) == 88 and all(f.balanced and f.status == "ok" for f in report.files)
    got = outcomes(settings)
    # Two old dispute payloads have no dispute id at all.
    rejected = {name: r for name, (acc, r) in got.items() if r}
    assert rejected == {
        "charge.dispute.closed.json": ("missing_required:dispute_id",),
        "charge.dispute.updated.json": ("missing_required:dispute_id",),
    }
    assert all(acc == 1 for name, (acc, _) in got.items() if name not in rejected)
    # Types Stripe does not list in v1 are counted, not fatal.
    unknown = {t for f in report.files for t in f.unknown_types}
    assert unknown == {"invoiceitem.updated", "transfer.failed", "transfer.paid"}
    # Old shapes still land: a 2012 charge without status (paid: true) and expanded objects.
    assert rows(settings, "SELECT count(*) FROM payment_attempts WHERE status = 'succeeded'") == [
        (2,)
    ]
    assert rows(settings, "SELECT count(*) FROM subscriptions") == [(2,)]
    assert rows(settings, "SELECT count(*) FROM invoice_lines") == [(1,)]
    assert verify(settings).ok


def test_webhook_folder_as_delivered_shares_ids(settings):
    """As delivered, payloads reuse two event ids: the first of each stands, the rest conflict."""
    report = ingest(
        EXTERNAL / "webhook_events", source="webhook", settings=settings, progress=False
    )
    t = report.totals()
    assert (t["received"], t["accepted"], t["quarantined"], t["duplicates"]) == (88, 2, 86, 0)
    assert rows(settings, "SELECT DISTINCT rule FROM quarantine") == [("conflict",)]
    assert sorted(r[0] for r in rows(settings, "SELECT event_id FROM events")) == [
        "evt_00000000000000",
        "evt_000000000000000000000000",
    ]


def test_objects_folder(settings):
    report = ingest(EXTERNAL / "objects", settings=settings, progress=False)
    assert all(f.balanced for f in report.files)
    skipped = [Path(f.path) for f in report.files if f.status == "skipped"]
    assert skipped  # byte-identical files are one lake object
    for path in skipped:
        twins = [
            p
            for p in (EXTERNAL / "objects").glob("*.json")
            if p != path and p.read_bytes() == path.read_bytes()
        ]
        assert twins, path.name
    got = outcomes(settings)
    rejected = {name: r for name, (acc, r) in got.items() if r}
    assert rejected == {
        # dj-stripe's charge fixture has its amounts as decimal strings
        "dispute_ch_fakefakefakefake01.json": ("wrong_type:amount", "wrong_type:amount_refunded"),
        # a payment method "created" in 1973
        "payment_method_pm_fakefakefakefake0001.json": ("out_of_range:created",),
        # dj-stripe reuses one event id per family of account events: the first one stands
        **{
            f"event_{n}.json": ("conflict:",)
            for n in (
                "account_updated_standard",
                "external_account_bank_account_deleted",
                "external_account_bank_account_updated",
                "external_account_card_deleted",
                "external_account_card_updated",
            )
        },
    }
    assert rows(settings, "SELECT count(*) FROM subscriptions") == [(4,)]
    assert rows(settings, "SELECT count(*) FROM accounts") == [(4,)]
    # the three versions of one dispute: the latest by (created, id) wins, none is lost
    assert rows(settings, "SELECT count(*) FROM dispute_versions") == [(3,)]
    assert rows(settings, "SELECT count(*) FROM disputes") == [(1,)]


def test_openapi_nonsense_values_are_quarantined_with_reasons(settings):
    report = ingest(EXTERNAL / "openapi_fixtures3.json", settings=settings, progress=False)
    (f,) = report.files
    assert f.received == 176 and f.balanced
    got = rows(
        settings,
        "SELECT line, rule, table_name, column_name, value_redacted FROM quarantine ORDER BY rule",
    )
    assert got == [
        (4700, "currency_code", "prices", "currency", "currency"),
        (4700, "out_of_range", "prices", "interval_count", "797691627"),
        (4700, "period_order", "subscriptions", "current_period_end", "2000-12-08 15:02:53+00:00"),
    ]
    text = (EXTERNAL / "openapi_fixtures3.json").read_text().splitlines()
    assert text[4700 - 1].strip() == '"subscription": {'
    # deletion stubs are valid records, not nonsense
    assert f.quarantined == 1 and f.accepted + f.duplicates == 175


def test_card_numbers_are_redacted_before_the_lake(settings, tmp_path):
    body = json.loads((EXTERNAL / "webhook_events" / "customer.created.json").read_text())
    body["data"]["object"]["description"] = "call me, card 4242 4242 4242 4242 exp 12/29"
    body["data"]["object"]["metadata"] = {"note": "4000-0566-5566-5556"}
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body, indent=2))
    report = ingest(path, source="webhook", settings=settings, progress=False)
    (f,) = report.files
    assert f.redactions == 2 and f.accepted == 1
    lake = Lake(Path(settings.data_dir) / "lake")
    stored = lake.read(f.lake_path).decode()
    assert not contains_pan(stored)
    assert "[REDACTED PAN ****4242]" in stored and "[REDACTED PAN ****5556]" in stored
    assert rows(settings, "SELECT redactions FROM loads") == [(2,)]
    # everything else in the file is byte-exact
    original = path.read_text()
    assert stored == original.replace("4242 4242 4242 4242", "[REDACTED PAN ****4242]").replace(
        "4000-0566-5566-5556", "[REDACTED PAN ****5556]"
    )
    assert rows(
        settings, "SELECT count(*) FROM accounts WHERE metadata::VARCHAR LIKE '%4000%'"
    ) == [(0,)]
