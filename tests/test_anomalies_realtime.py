"""Real-time checks: one invoice (stored or as a Stripe payload) through the batch rules."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from test_anomalies_helpers import DAY, NOW, T0, clean_books, months

from workbench.anomalies.detector import InvoiceAnomalyDetector, invoice_features
from workbench.anomalies.realtime import (
    check,
    check_invoice,
    check_invoice_payload,
    invoice_rows_from_stripe,
)
from workbench.anomalies.rules import run_rules

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external" / "stripe"


def stripe_invoice(
    invoice_id: str,
    *,
    customer: str,
    subscription: str | None,
    start: pd.Timestamp,
    qty: int,
    unit: int = 1_000,
    price_id: str = "price_seat",
    total: int | None = None,
) -> dict:
    """A classic-shape Stripe invoice with one licensed line (10 % tax), as ``invoice.finalized`` carries it."""
    s = int(start.timestamp())
    e = int(pd.Timestamp(months(start.to_pydatetime(), 1)).timestamp())
    amount = unit * qty
    tax = amount // 10
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "subscription": subscription,
        "status": "open",
        "billing_reason": "subscription_cycle",
        "currency": "usd",
        "created": s,
        "period_start": s - 30 * 86_400,
        "period_end": s,
        "subtotal": amount,
        "tax": tax,
        "total": amount + tax if total is None else total,
        "amount_due": amount + tax,
        "amount_paid": 0,
        "amount_remaining": amount + tax,
        "total_discount_amounts": [],
        "status_transitions": {
            "finalized_at": s + 3600,
            "paid_at": None,
            "marked_uncollectible_at": None,
            "voided_at": None,
        },
        "lines": {
            "object": "list",
            "has_more": False,
            "total_count": 1,
            "data": [
                {
                    "id": f"il_{invoice_id}",
                    "object": "line_item",
                    "amount": amount,
                    "currency": "usd",
                    "discount_amounts": [],
                    "period": {"start": s, "end": e},
                    "price": {
                        "id": price_id,
                        "object": "price",
                        "currency": "usd",
                        "unit_amount": unit,
                        "billing_scheme": "per_unit",
                        "recurring": {
                            "interval": "month",
                            "interval_count": 1,
                            "usage_type": "licensed",
                        },
                    },
                    "proration": False,
                    "quantity": qty,
                    "subscription": subscription,
                    "type": "subscription",
                }
            ],
        },
    }


def test_check_invoice_flags_the_duplicate_the_batch_run_flags() -> None:
    b = clean_books()
    b.cycle_invoice("in_dup", "cus_1", "sub_1", "price_seat", 1_000, 3, months(T0, 3))
    b.con.execute(
        "UPDATE invoices SET created = created + INTERVAL 2 HOUR WHERE invoice_id = 'in_dup'"
    )
    one = check_invoice(b.con, "in_dup", detected_at=NOW)
    batch = run_rules(b.con, detected_at=NOW)
    pd.testing.assert_frame_equal(one, batch[batch["object_id"] == "in_dup"].reset_index(drop=True))
    assert check_invoice(
        b.con, "in_1_3", detected_at=NOW
    ).empty  # the original is not the duplicate
    assert check_invoice(b.con, "in_1_4", detected_at=NOW).empty


def test_check_invoice_covers_its_subscription_and_refunds() -> None:
    b = clean_books()
    b.subscription(
        "sub_dup",
        "cus_2",
        "price_seat",
        quantity=4,
        start=T0 + timedelta(minutes=5),
        end=T0 + 40 * DAY,
    )
    b.cycle_invoice(
        "in_subdup", "cus_2", "sub_dup", "price_seat", 1_000, 4, T0 + timedelta(minutes=5)
    )
    b.refund("re_over", "ch_in_0_2", 2_500, created=months(T0, 2) + DAY)
    assert list(check_invoice(b.con, "in_subdup", detected_at=NOW)["object_id"]) == ["sub_dup"]
    assert list(check_invoice(b.con, "in_0_2", detected_at=NOW)["object_id"]) == ["re_over"]
    assert list(check(b.con, refund_ids=["re_over"], detected_at=NOW)["object_id"]) == ["re_over"]
    assert check(b.con, detected_at=NOW).empty


def test_payload_duplicate_is_flagged_before_it_is_loaded() -> None:
    b = clean_books()
    start = pd.Timestamp(months(T0, 3))
    dup = stripe_invoice("in_new_dup", customer="cus_1", subscription="sub_1", start=start, qty=3)
    f = check_invoice_payload(dup, b.con, detected_at=NOW)
    assert list(f["object_id"]) == ["in_new_dup"] and f.iloc[0]["rule"] == "duplicate_invoice"
    assert f.iloc[0]["suggested_action"] == "void" and f.iloc[0]["amount_at_stake"] == 3_300
    # nothing was written, nothing registered is left behind
    assert (
        b.con.execute("SELECT count(*) FROM invoices WHERE invoice_id = 'in_new_dup'").fetchone()[0]
        == 0
    )
    assert not [
        t for t in b.con.execute("SHOW TABLES").fetchall() if t[0].startswith("_wb_anomaly")
    ]
    # the same payload wrapped in an event gives the same answer; the next period's invoice is fine
    event = {"object": "event", "type": "invoice.finalized", "data": {"object": dup}}
    pd.testing.assert_frame_equal(check_invoice_payload(event, b.con, detected_at=NOW), f)
    nxt = stripe_invoice(
        "in_next", customer="cus_1", subscription="sub_1", start=pd.Timestamp(months(T0, 6)), qty=3
    )
    assert check_invoice_payload(nxt, b.con, detected_at=NOW).empty


def test_payload_with_wrong_total_and_unknown_price_is_checked_with_its_embedded_price() -> None:
    b = clean_books()
    start = pd.Timestamp(months(T0, 6))
    bad = stripe_invoice(
        "in_bad",
        customer="cus_0",
        subscription="sub_0",
        start=start,
        qty=2,
        unit=1_500,
        price_id="price_new",
        total=3_400,
    )
    bad["lines"]["data"][0]["amount"] = 4_500  # 3 × the new price's unit amount for quantity 2
    bad["subtotal"] = 4_500
    f = check_invoice_payload(bad, b.con, detected_at=NOW).set_index("rule")
    assert set(f.index) == {"line_total_mismatch", "amount_vs_price"}
    assert "price price_new at 1,500 each = 3,000" in f.loc["amount_vs_price", "explanation"]
    # lines said to be incomplete: the totals rule is skipped rather than guessed
    partial = copy.deepcopy(bad)
    partial["lines"]["has_more"] = True
    partial["lines"]["total_count"] = 3
    assert set(check_invoice_payload(partial, b.con, detected_at=NOW)["rule"]) == {
        "amount_vs_price"
    }


def test_payload_replaces_a_stored_copy_with_the_same_id() -> None:
    b = clean_books()
    stored = b.con.execute("SELECT total FROM invoices WHERE invoice_id = 'in_2_5'").fetchall()[0][
        0
    ]
    redelivered = stripe_invoice(
        "in_2_5", customer="cus_2", subscription="sub_2", start=pd.Timestamp(months(T0, 5)), qty=4
    )
    assert redelivered["total"] == stored
    assert check_invoice_payload(redelivered, b.con, detected_at=NOW).empty


def test_real_stripe_fixtures_map_and_check(external_dir: Path) -> None:  # noqa: ARG001
    b = clean_books()
    event = json.loads((EXTERNAL / "webhook_events" / "invoice.finalized.json").read_text())
    inv, lines, prices, complete = invoice_rows_from_stripe(event)
    assert (
        inv["invoice_id"] == "in_000000000000000000000000"
        and inv["total"] == 2000
        and inv["tax"] == 0
    )
    assert (
        complete
        and len(lines) == 1
        and lines[0]["type"] == "invoiceitem"
        and prices[0]["unit_amount"] == 2000
    )
    assert check_invoice_payload(event, b.con, detected_at=NOW).empty
    for path in sorted((EXTERNAL / "objects").glob("invoice_*.json")):
        obj = json.loads(path.read_text())
        inv, lines, _, complete = invoice_rows_from_stripe(obj)
        assert inv["invoice_id"] == obj["id"] and len(lines) == len(obj["lines"].get("data", []))
        assert complete == bool(lines)  # one fixture carries no lines at all
        f = check_invoice_payload(obj, b.con, detected_at=NOW)
        # the fixtures are consistent invoices: no totals, duplicate or price finding
        assert not set(f["rule"]) & {
            "line_total_mismatch",
            "duplicate_invoice",
            "amount_vs_price",
        }, f["explanation"].tolist()


def test_new_shape_payload_maps_subscription_tax_and_prorations() -> None:
    s = int(T0.timestamp())
    obj = {
        "id": "in_new_shape",
        "object": "invoice",
        "customer": "cus_0",
        "currency": "usd",
        "created": s,
        "status": "open",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": "sub_0"},
        },
        "subtotal": 1_000,
        "total": 1_100,
        "total_taxes": [{"amount": 100}],
        "lines": {
            "has_more": False,
            "total_count": 1,
            "data": [
                {
                    "id": "il_ns",
                    "amount": 1_000,
                    "currency": "usd",
                    "quantity": 1,
                    "period": {"start": s, "end": s + 86_400},
                    "pricing": {"price_details": {"price": "price_seat"}},
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {
                            "proration": True,
                            "subscription": "sub_0",
                            "subscription_item": "si_1",
                        },
                    },
                }
            ],
        },
    }
    inv, lines, prices, _ = invoice_rows_from_stripe(obj)
    assert inv["subscription_id"] == "sub_0" and inv["tax"] == 100
    assert (
        lines[0]["price_id"] == "price_seat"
        and lines[0]["proration"] is True
        and lines[0]["type"] == "subscription"
    )
    assert lines[0]["subscription_item_id"] == "si_1" and prices == []
    with pytest.raises(ValueError):
        invoice_rows_from_stripe({"object": "charge", "id": "ch_1"})


def test_check_invoice_scores_like_the_batch_detector() -> None:
    b = clean_books(n_accounts=20, n_months=12)
    b.invoice(
        "in_manual_big",
        "cus_4",
        created=months(T0, 5) + 3 * DAY,
        billing_reason="manual",
        lines=[dict(amount=60_000, quantity=1)],
    )
    feats = invoice_features(b.con)
    det = InvoiceAnomalyDetector(contamination=0.02).fit(feats)
    batch = det.score(feats).set_index("invoice_id")
    assert batch.loc["in_manual_big", "is_outlier"]
    f = check_invoice(b.con, "in_manual_big", detector=det, detected_at=NOW)
    assert list(f["rule"]) == ["isolation_forest"]
    assert f.iloc[0]["score"] == pytest.approx(batch.loc["in_manual_big", "score"])
    assert "the account's median invoice" in f.iloc[0]["explanation"]
    assert not batch.loc["in_4_6", "is_outlier"]
    assert check_invoice(b.con, "in_4_6", detector=det, detected_at=NOW).empty
