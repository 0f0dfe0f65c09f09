"""Stripe events into the warehouse: state, quarantine, duplicates, conflicts, conservation."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from workbench.config import load_settings
from workbench.ingest import IngestError, ingest, table_checksums, verify

T0 = 1_700_000_000


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


def event(eid: str, type_: str, created: int, obj: dict, **extra) -> dict:
    return {
        "id": eid,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": {"object": obj},
        "type": type_,
        "pending_webhooks": 1,
        **extra,
    }


def customer(
    cid: str = "cus_A", *, name: str = "Ada Lovelace", email: str = "ada@example.com", **kw
) -> dict:
    return {
        "id": cid,
        "object": "customer",
        "created": T0,
        "currency": "usd",
        "name": name,
        "email": email,
        "address": {"country": "GB"},
        "metadata": {"region": "EU", "channel": "sales"},
        **kw,
    }


def price(pid: str = "price_M", amount: int = 2900, interval: str = "month", **kw) -> dict:
    return {
        "id": pid,
        "object": "price",
        "currency": "usd",
        "unit_amount": amount,
        "active": True,
        "billing_scheme": "per_unit",
        "created": T0 - 100,
        "product": "prod_X",
        "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed"},
        **kw,
    }


def subscription(
    sid: str = "sub_A",
    *,
    status: str = "active",
    items: list[dict] | None = None,
    start: int = T0,
    end: int = T0 + 30 * 86400,
    **kw,
) -> dict:
    items = (
        items
        if items is not None
        else [
            {
                "id": "si_1",
                "object": "subscription_item",
                "created": T0,
                "quantity": 2,
                "price": price(),
            }
        ]
    )
    return {
        "id": sid,
        "object": "subscription",
        "customer": "cus_A",
        "status": status,
        "created": T0,
        "start_date": T0,
        "current_period_start": start,
        "current_period_end": end,
        "currency": "usd",
        "cancel_at_period_end": False,
        "items": {"object": "list", "data": items},
        **kw,
    }


def invoice(iid: str = "in_1", *, status: str = "open", total: int = 5800, **kw) -> dict:
    return {
        "id": iid,
        "object": "invoice",
        "customer": "cus_A",
        "subscription": "sub_A",
        "status": status,
        "currency": "usd",
        "created": T0 + 10,
        "period_start": T0,
        "period_end": T0 + 30 * 86400,
        "subtotal": total,
        "total": total,
        "amount_due": total,
        "amount_paid": total if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else total,
        "attempt_count": 0,
        "payment_intent": "pi_1",
        "customer_email": "ada@example.com",
        "customer_name": "Ada Lovelace",
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": "il_1",
                    "object": "line_item",
                    "amount": total,
                    "currency": "usd",
                    "quantity": 2,
                    "period": {"start": T0, "end": T0 + 30 * 86400},
                    "price": {"id": "price_M"},
                    "subscription": "sub_A",
                    "subscription_item": "si_1",
                    "type": "subscription",
                    "proration": False,
                }
            ],
        },
        **kw,
    }


def charge(chid: str, *, status: str, created: int, invoice_id: str | None = "in_1", **kw) -> dict:
    return {
        "id": chid,
        "object": "charge",
        "amount": 5800,
        "amount_refunded": 0,
        "currency": "usd",
        "customer": "cus_A",
        "invoice": invoice_id,
        "payment_intent": "pi_1",
        "status": status,
        "created": created,
        "failure_code": "card_declined" if status == "failed" else None,
        "outcome": {
            "reason": "insufficient_funds" if status == "failed" else None,
            "type": "authorized",
        },
        "payment_method_details": {
            "card": {"brand": "visa", "last4": "4242", "exp_month": 4, "exp_year": 2030}
        },
        "billing_details": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "refunds": {"object": "list", "data": []},
        **kw,
    }


def write(path: Path, events: list[dict] | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    path.write_text("\n".join(lines) + "\n")
    return path


def query(settings, sql: str) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def story() -> list[dict]:
    """A customer subscribes, upgrades, gets invoiced, fails a payment, pays, then cancels."""
    return [
        event("evt_01", "customer.created", T0, customer()),
        event("evt_02", "price.created", T0 - 100, price()),
        event("evt_03", "customer.subscription.created", T0 + 1, subscription(status="trialing")),
        event(
            "evt_04",
            "customer.subscription.updated",
            T0 + 86400,
            subscription(
                items=[
                    {
                        "id": "si_1",
                        "object": "subscription_item",
                        "created": T0,
                        "quantity": 5,
                        "price": price(),
                    },
                    {
                        "id": "si_2",
                        "object": "subscription_item",
                        "created": T0 + 86400,
                        "quantity": 1,
                        "price": price("price_Y", 99000, "year"),
                    },
                ]
            ),
        ),
        event("evt_05", "invoice.created", T0 + 10, invoice(status="draft")),
        event("evt_06", "invoice.finalized", T0 + 20, invoice(status="open")),
        event("evt_07", "charge.failed", T0 + 30, charge("ch_1", status="failed", created=T0 + 30)),
        event(
            "evt_08",
            "charge.succeeded",
            T0 + 3 * 86400,
            charge("ch_2", status="succeeded", created=T0 + 3 * 86400, customer=None),
        ),
        event("evt_09", "invoice.paid", T0 + 3 * 86400 + 1, invoice(status="paid")),
        event(
            "evt_10",
            "customer.subscription.deleted",
            T0 + 40 * 86400,
            subscription(
                status="canceled",
                canceled_at=T0 + 40 * 86400,
                ended_at=T0 + 40 * 86400,
                items=[
                    {
                        "id": "si_1",
                        "object": "subscription_item",
                        "created": T0,
                        "quantity": 5,
                        "price": price(),
                    }
                ],
            ),
        ),
        event(
            "evt_11",
            "payment_intent.succeeded",
            T0 + 3 * 86400,
            {"id": "pi_1", "object": "payment_intent"},
        ),
        event("evt_12", "invoice.reconciled", T0 + 50, {"id": "in_1", "object": "invoice"}),
    ]


def test_story_becomes_current_state_and_history(settings, tmp_path):
    report = ingest(
        write(tmp_path / "in" / "events.jsonl", story()), settings=settings, progress=False
    )
    (f,) = report.files
    assert (f.received, f.accepted, f.quarantined, f.duplicates) == (12, 12, 0, 0)
    assert (f.handled, f.ignored, f.unknown) == (10, 1, 1)
    assert f.unknown_types == {"invoice.reconciled": 1}

    assert query(
        settings, "SELECT account_id, name, email, country, region, currency FROM accounts"
    ) == [("cus_A", "Ada Lovelace", "ada@example.com", "GB", "EU", "usd")]
    sub = query(settings, "SELECT status, canceled_at IS NOT NULL FROM subscriptions")
    assert sub == [("canceled", True)]  # the deletion is the latest version
    items = query(
        settings, "SELECT item_id, quantity, deleted FROM subscription_items ORDER BY item_id"
    )
    assert items == [("si_1", 5, False), ("si_2", 1, True)]  # si_2 was dropped by the last version
    hist = query(
        settings,
        """
        SELECT event_id, item_id, quantity, unit_amount, interval, status, valid_to IS NULL
        FROM subscription_history ORDER BY valid_from, item_id""",
    )
    assert hist == [
        ("evt_03", "si_1", 2, 2900, "month", "trialing", False),
        ("evt_04", "si_1", 5, 2900, "month", "active", False),
        ("evt_04", "si_2", 1, 99000, "year", "active", False),
        ("evt_10", "si_1", 5, 2900, "month", "canceled", True),
    ]
    # valid_to of a version is the next version's valid_from
    gaps = query(
        settings,
        """
        SELECT count(*) FROM subscription_history h
        WHERE valid_to IS NOT NULL AND valid_to NOT IN (SELECT valid_from FROM subscription_history)""",
    )
    assert gaps == [(0,)]
    assert query(settings, "SELECT status, amount_paid, total FROM invoices") == [
        ("paid", 5800, 5800)
    ]
    assert query(settings, "SELECT line_id, amount, price_id FROM invoice_lines") == [
        ("il_1", 5800, "price_M")
    ]
    attempts = query(
        settings,
        """
        SELECT attempt_id, attempt_number, account_id, status, decline_code, card_brand, card_last4
        FROM payment_attempts ORDER BY attempt_number""",
    )
    # ch_2 names no customer: its invoice says whose it is
    assert attempts == [
        ("ch_1", 1, "cus_A", "failed", "insufficient_funds", "visa", "4242"),
        ("ch_2", 2, "cus_A", "succeeded", None, "visa", "4242"),
    ]
    prices = query(settings, "SELECT price_id, unit_amount, interval FROM prices ORDER BY price_id")
    assert prices == [("price_M", 2900, "month"), ("price_Y", 99000, "year")]
    # names and e-mails live only in accounts (charge and invoice copies are not kept)
    assert query(settings, "SELECT count(*) FROM quarantine") == [(0,)]
    assert verify(settings).ok


def test_replaying_the_same_input_changes_nothing(settings, tmp_path):
    path = write(tmp_path / "in" / "events.jsonl", story())
    ingest(path, settings=settings, progress=False)
    before = table_checksums(settings)
    again = ingest(path, settings=settings, progress=False)
    (f,) = again.files
    assert (f.received, f.accepted, f.quarantined, f.duplicates) == (12, 0, 0, 12)
    after = table_checksums(settings)
    assert {k: v for k, v in after.items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }
    # a second copy under another name is the same lake object
    copy = tmp_path / "elsewhere" / "copy.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    third = ingest(copy, settings=settings, progress=False)
    assert third.files[0].lake_path == again.files[0].lake_path
    assert third.files[0].duplicates == 12


def test_same_id_different_payload_is_a_conflict_and_the_first_stands(settings, tmp_path):
    first = event("evt_c", "customer.created", T0, customer(name="First Name"))
    changed = event("evt_c", "customer.created", T0, customer(name="Second Name"))
    redelivered = dict(first, pending_webhooks=3)  # same payload, new delivery counter
    pretty = tmp_path / "in" / "webhook.json"
    pretty.parent.mkdir(parents=True)
    pretty.write_text(json.dumps(first, indent=2))  # same event, other whitespace
    report = ingest(
        write(tmp_path / "in" / "a.jsonl", [first, redelivered, changed]),
        settings=settings,
        progress=False,
    )
    (f,) = report.files
    assert (f.received, f.accepted, f.quarantined, f.duplicates) == (3, 1, 1, 1)
    row = query(settings, "SELECT line, event_id, rule, message FROM quarantine")
    assert row[0][:3] == (3, "evt_c", "conflict")
    assert "first one stands" in row[0][3]
    assert query(settings, "SELECT name FROM accounts") == [("First Name",)]
    # a later file: the pretty-printed copy is a duplicate, a changed payload a conflict
    report = ingest(pretty, source="webhook", settings=settings, progress=False)
    assert report.files[0].duplicates == 1
    later = event("evt_c", "customer.updated", T0, customer(name="Third"))
    report = ingest(write(tmp_path / "in" / "b.jsonl", [later]), settings=settings, progress=False)
    assert report.files[0].quarantined == 1
    assert query(settings, "SELECT name FROM accounts") == [("First Name",)]


def test_bad_records_are_quarantined_with_reasons_and_the_rest_loads(settings, tmp_path):
    good = event("evt_ok", "customer.created", T0, customer())
    cut = json.dumps(event("evt_cut", "customer.created", T0, customer("cus_cut")))
    lines = [
        json.dumps(good),
        "",  # blank lines are not records
        cut[: cut.index('"address"')],  # cut off after the name and e-mail
        json.dumps(
            event(
                "evt_f",
                "charge.succeeded",
                T0,
                charge("ch_f", status="succeeded", created=T0, amount=12.5),
            )
        ),
        json.dumps(
            event(
                "evt_s",
                "charge.succeeded",
                T0,
                charge("ch_s", status="succeeded", created=T0, amount="1500"),
            )
        ),
        json.dumps(
            {
                k: v
                for k, v in event("evt_nt", "customer.created", T0, customer()).items()
                if k != "type"
            }
        ),
        json.dumps(event("evt_old", "customer.created", 5, customer("cus_B"))),
        json.dumps(event("evt_neg", "invoice.created", T0, invoice(amount_due=-10))),
        json.dumps(event("evt_cur", "invoice.created", T0, invoice("in_2", currency="US Dollars"))),
        json.dumps(event("evt_wo", "invoice.created", T0, customer("cus_C"))),
        json.dumps(
            event(
                "evt_nocus",
                "charge.failed",
                T0,
                charge("ch_n", status="failed", created=T0, currency=None),
            )
        ),
        json.dumps(
            event(
                "evt_per",
                "customer.subscription.created",
                T0,
                subscription("sub_P", start=T0, end=T0 - 10),
            )
        ),
        "[1, 2, 3]",
    ]
    report = ingest(
        write(tmp_path / "in" / "mixed.jsonl", lines), settings=settings, progress=False
    )
    (f,) = report.files
    assert f.received == 12 and f.accepted == 1 and f.quarantined == 11 and f.duplicates == 0
    got = query(
        settings,
        "SELECT line, rule, coalesce(table_name, ''), coalesce(column_name, '') FROM quarantine "
        "ORDER BY line, rule, column_name",
    )
    assert got == [
        (3, "malformed_json", "", ""),
        (4, "wrong_type", "payment_attempts", "amount"),
        (5, "wrong_type", "payment_attempts", "amount"),
        (6, "missing_required", "", "type"),
        (7, "out_of_range", "", "created"),
        (8, "not_negative", "invoices", "amount_due"),
        (9, "currency_code", "invoices", "currency"),
        (10, "wrong_object", "", "data.object.object"),
        (11, "missing_required", "payment_attempts", "currency"),
        (12, "period_order", "subscriptions", "current_period_end"),
        (13, "not_an_event", "", ""),
    ]
    values = dict(
        query(settings, "SELECT line, value_redacted FROM quarantine WHERE line IN (4, 5, 9)")
    )
    assert values == {4: "12.5", 5: '"1500"', 9: "US Dollars"}
    malformed = query(
        settings, "SELECT value_redacted FROM quarantine WHERE rule = 'malformed_json'"
    )[0][0]
    assert malformed.startswith('{"id": "evt_cut"')
    assert "ada@" not in malformed and "Ada" not in malformed
    assert query(settings, "SELECT count(*) FROM events") == [(1,)]
    assert query(settings, "SELECT received, accepted, quarantined, duplicates FROM loads") == [
        (12, 1, 11, 0)
    ]


def test_newer_api_shapes_give_the_same_rows(settings, tmp_path):
    """2025 ("basil") shapes: periods on items, invoice.parent, line.pricing and line.parent."""
    sub = subscription()
    basil_sub = {
        k: v for k, v in sub.items() if k not in ("current_period_start", "current_period_end")
    }
    basil_sub["items"] = {
        "data": [
            dict(
                sub["items"]["data"][0], current_period_start=T0, current_period_end=T0 + 30 * 86400
            )
        ]
    }
    inv = invoice()
    basil_inv = {k: v for k, v in inv.items() if k not in ("subscription", "payment_intent")}
    basil_inv["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": "sub_A"},
    }
    basil_inv["total_taxes"] = [{"amount": 120}]
    line = inv["lines"]["data"][0]
    basil_inv["lines"] = {
        "data": [
            {
                k: v
                for k, v in line.items()
                if k not in ("price", "subscription", "subscription_item", "type")
            }
            | {
                "pricing": {"price_details": {"price": "price_M"}},
                "parent": {
                    "type": "subscription_item_details",
                    "subscription_item_details": {
                        "subscription": "sub_A",
                        "subscription_item": "si_1",
                    },
                },
            }
        ]
    }
    ingest(
        write(
            tmp_path / "in" / "basil.jsonl",
            [
                event("evt_1", "customer.subscription.created", T0, basil_sub),
                event("evt_2", "invoice.created", T0, basil_inv),
            ],
        ),
        settings=settings,
        progress=False,
    )
    assert query(
        settings, "SELECT epoch(current_period_start)::BIGINT, currency FROM subscriptions"
    ) == [(T0, "usd")]
    assert query(settings, "SELECT subscription_id, tax FROM invoices") == [("sub_A", 120)]
    assert query(
        settings, "SELECT price_id, subscription_id, subscription_item_id, type FROM invoice_lines"
    ) == [("price_M", "sub_A", "si_1", "subscription")]


def test_deleted_invoice_and_deletion_stubs(settings, tmp_path):
    ingest(
        write(
            tmp_path / "in" / "d.jsonl",
            [
                event("evt_1", "invoice.created", T0, invoice("in_draft", status="draft")),
                event(
                    "evt_2",
                    "invoice.deleted",
                    T0 + 5,
                    {"id": "in_draft", "object": "invoice", "deleted": True},
                ),
                event("evt_3", "customer.created", T0, customer()),
                event(
                    "evt_4",
                    "customer.deleted",
                    T0 + 9,
                    {"id": "cus_A", "object": "customer", "deleted": True},
                ),
            ],
        ),
        settings=settings,
        progress=False,
    )
    assert query(settings, "SELECT count(*) FROM invoices") == [(0,)]
    assert query(settings, "SELECT count(*) FROM quarantine") == [(0,)]
    # the stub marks the customer deleted but keeps what the earlier version said
    assert query(settings, "SELECT deleted, currency, country FROM accounts") == [
        (True, "usd", "GB")
    ]


def test_every_file_of_a_folder_and_unknown_source(settings, tmp_path):
    write(tmp_path / "in" / "a.jsonl", story()[:3])
    write(tmp_path / "in" / "sub" / "b.jsonl", story()[3:])
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    report = ingest(tmp_path / "in", settings=settings, progress=False)
    assert [Path(f.path).name for f in report.files] == ["a.jsonl", "b.jsonl"]
    assert report.totals()["accepted"] == 12
    with pytest.raises(IngestError, match="unknown source"):
        ingest(tmp_path / "in", source="paypal", settings=settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no JSON files"):
        ingest(tmp_path / "empty", settings=settings)


def test_a_line_that_is_not_utf8_is_quarantined(settings, tmp_path):
    good = json.dumps(
        event("evt_u", "customer.created", T0, customer(name="Zoë")), ensure_ascii=False
    ).encode()
    bad = (
        json.dumps(event("evt_v", "customer.created", T0, customer("cus_V")))
        .encode()
        .replace(b"Ada", b"\xff\xfe")
    )
    path = tmp_path / "in" / "bytes.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(good + b"\n" + bad + b"\n")
    (f,) = ingest(path, settings=settings, progress=False).files
    assert (f.accepted, f.quarantined) == (1, 1)
    assert query(settings, "SELECT line, rule FROM quarantine") == [(2, "invalid_utf8")]
