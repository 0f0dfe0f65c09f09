"""Each billing rule on hand-written books: a positive case, and near-misses it must leave alone."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from test_anomalies_helpers import DAY, NOW, T0, clean_books, months

from workbench.anomalies.findings import FINDING_COLUMNS, finding_id
from workbench.anomalies.rules import RULES, RuleConfig, detect_rules, run_rules

HOUR = timedelta(hours=1)


def only(findings: pd.DataFrame, rule: str) -> pd.DataFrame:
    return findings[findings["rule"] == rule].reset_index(drop=True)


# ----------------------------------------------------------------- duplicate invoices
def test_paid_duplicate_invoice_is_flagged_with_its_original() -> None:
    b = clean_books()
    start = months(T0, 3)
    b.cycle_invoice("in_dup", "cus_1", "sub_1", "price_seat", 1_000, 3, start)
    b.con.execute(
        "UPDATE invoices SET created = created + INTERVAL 2 HOUR WHERE invoice_id = 'in_dup'"
    )
    f = run_rules(b.con, detected_at=NOW)
    assert list(f["object_id"]) == ["in_dup"]
    row = f.iloc[0]
    assert row["rule"] == "duplicate_invoice" and row["object_type"] == "invoice"
    assert row["suggested_action"] == "refund" and row["severity"] == "critical"
    assert row["amount_at_stake"] == 3_300  # 3 000 + 10 % tax, all paid
    assert "repeats invoice in_1_3" in row["explanation"]
    assert (
        "total 3,300 usd" in row["explanation"] and "2024-04-01 to 2024-05-01" in row["explanation"]
    )


def test_open_duplicate_is_voided_and_refunded_duplicate_is_low() -> None:
    b = clean_books()
    b.cycle_invoice(
        "in_dup_open", "cus_0", "sub_0", "price_seat", 1_000, 2, months(T0, 4), status="open"
    )
    b.cycle_invoice("in_dup_paid", "cus_2", "sub_2", "price_seat", 1_000, 4, months(T0, 5))
    b.con.execute(
        "UPDATE invoices SET created = created + INTERVAL 1 HOUR WHERE invoice_id LIKE 'in_dup%'"
    )
    b.refund("re_dup", "ch_in_dup_paid", 4_400, created=months(T0, 5) + 3 * DAY)
    f = only(run_rules(b.con, detected_at=NOW), "duplicate_invoice").set_index("object_id")
    assert set(f.index) == {"in_dup_open", "in_dup_paid"}
    assert f.loc["in_dup_open", ["suggested_action", "severity", "amount_at_stake"]].tolist() == [
        "void",
        "high",
        2_200,
    ]
    assert f.loc["in_dup_paid", ["suggested_action", "severity", "amount_at_stake"]].tolist() == [
        "review",
        "low",
        0,
    ]
    assert "refunded 4,400" in f.loc["in_dup_paid", "explanation"]


def test_same_amount_next_period_and_proration_and_void_reissue_are_not_duplicates() -> None:
    b = clean_books()
    # a proration invoice for the same period and the same amount as the renewal it sits beside
    b.invoice(
        "in_prorate_same",
        "cus_0",
        subscription_id="sub_0",
        created=months(T0, 2) + HOUR,
        billing_reason="subscription_update",
        lines=[
            dict(
                price_id="price_seat",
                quantity=2,
                amount=2_000,
                period_start=months(T0, 2),
                period_end=months(T0, 3),
                proration=True,
            )
        ],
    )
    # a voided invoice re-issued with the same numbers
    b.cycle_invoice(
        "in_void", "cus_2", "sub_2", "price_seat", 1_000, 4, months(T0, 6), status="void"
    )
    b.cycle_invoice("in_reissue", "cus_2", "sub_2", "price_seat", 1_000, 4, months(T0, 6))
    b.con.execute(
        "UPDATE invoices SET created = created + INTERVAL 1 DAY WHERE invoice_id = 'in_reissue'"
    )
    # the same amount and period on another subscription of another account
    b.cycle_invoice(
        "in_other_acct", "cus_1", "sub_1", "price_seat", 1_000, 2, months(T0, 2), amount=2_000
    )
    f = run_rules(b.con, rules=["duplicate_invoice"], detected_at=NOW)
    assert f.empty, f["explanation"].tolist()


def test_two_seat_additions_with_equal_proration_totals_are_not_duplicates() -> None:
    """2 -> 3 seats and, minutes later, 3 -> 4 seats: each proration invoice credits the old
    quantity and charges the new one, so both total one seat's remaining time. Equal totals,
    different lines: two real purchases, not a double bill."""
    b = clean_books()
    start, end = months(T0, 2), months(T0, 3)
    mid = start + 10 * DAY

    def seats(before: int, after: int) -> list[dict]:
        return [
            dict(price_id="price_seat", quantity=before, amount=-700 * before,
                 period_start=mid, period_end=end, proration=True),
            dict(price_id="price_seat", quantity=after, amount=700 * after,
                 period_start=mid, period_end=end, proration=True),
        ]  # fmt: skip

    for k, (before, after) in enumerate([(2, 3), (3, 4)]):
        b.invoice(
            f"in_seats_{after}",
            "cus_0",
            subscription_id="sub_0",
            created=mid + k * 5 * 60 * pd.Timedelta(seconds=1),
            billing_reason="subscription_update",
            lines=seats(before, after),
        )
    assert run_rules(b.con, rules=["duplicate_invoice"], detected_at=NOW).empty
    # the same change billed twice is still a duplicate
    b.invoice(
        "in_seats_4_again",
        "cus_0",
        subscription_id="sub_0",
        created=mid + 2 * HOUR,
        billing_reason="subscription_update",
        lines=seats(3, 4),
    )
    f = run_rules(b.con, rules=["duplicate_invoice"], detected_at=NOW)
    assert list(f["object_id"]) == ["in_seats_4_again"]
    assert "repeats invoice in_seats_4" in f.iloc[0]["explanation"]


# ----------------------------------------------------------------- duplicate subscriptions
def test_duplicate_subscription_on_the_same_price_is_flagged_on_the_later_one() -> None:
    b = clean_books()
    dup_start = T0 + 15 * 60 * pd.Timedelta(seconds=1)
    b.subscription(
        "sub_dup", "cus_1", "price_seat", quantity=3, start=dup_start, end=dup_start + 40 * DAY
    )
    b.cycle_invoice("in_subdup", "cus_1", "sub_dup", "price_seat", 1_000, 3, dup_start)
    f = run_rules(b.con, detected_at=NOW)
    f = only(f, "duplicate_subscription")
    assert list(f["object_id"]) == ["sub_dup"]
    row = f.iloc[0]
    assert row["object_type"] == "subscription" and row["suggested_action"] == "refund"
    assert row["amount_at_stake"] == 3_300 and row["severity"] == "critical"
    assert "duplicates sub_1" in row["explanation"] and "until 2024-02-10" in row["explanation"]


def test_two_live_subscriptions_are_flagged_even_after_minutes() -> None:
    b = clean_books()
    b.subscription("sub_dup_live", "cus_2", "price_seat", quantity=4, start=T0 + 200 * DAY)
    f = only(run_rules(b.con, detected_at=NOW), "duplicate_subscription")
    assert list(f["object_id"]) == ["sub_dup_live"]
    assert f.iloc[0]["suggested_action"] == "review"  # nothing billed yet
    assert f.iloc[0]["amount_at_stake"] == 4_000  # one period of the duplicate price × quantity
    assert "both are still live" in f.iloc[0]["explanation"]


def test_handover_addon_and_resubscription_are_not_duplicate_subscriptions() -> None:
    b = clean_books()
    b.price("price_addon", 500)
    b.subscription("sub_addon", "cus_0", "price_addon", start=T0 + 5 * DAY)  # another price
    # an upgrade by replacing the subscription: the old one ends 10 minutes after the new one starts
    b.account("cus_swap")
    b.subscription(
        "sub_swap_old",
        "cus_swap",
        "price_seat",
        start=T0,
        end=T0 + 30 * DAY + 10 * 60 * pd.Timedelta(seconds=1),
    )
    b.subscription("sub_swap_new", "cus_swap", "price_seat", start=T0 + 30 * DAY)
    f = run_rules(b.con, rules=["duplicate_subscription"], detected_at=NOW)
    assert f.empty, f["explanation"].tolist()
    f = run_rules(
        b.con,
        rules=["duplicate_subscription"],
        config=RuleConfig(min_overlap_hours=0.1),
        detected_at=NOW,
    )
    assert list(f["object_id"]) == ["sub_swap_new"]


# ----------------------------------------------------------------- line totals
def test_total_mismatch_explains_the_arithmetic() -> None:
    b = clean_books()
    b.invoice(
        "in_123",
        "cus_0",
        subscription_id="sub_0",
        created=months(T0, 2) + HOUR,
        billing_reason="manual",
        status="open",
        lines=[dict(amount=9_000, quantity=1)],
        total=10_000,
        amount_due=10_000,
        amount_remaining=10_000,
    )
    f = run_rules(b.con, detected_at=NOW)
    assert list(f["rule"]) == ["line_total_mismatch"]
    row = f.iloc[0]
    assert (
        row["explanation"]
        == "invoice in_123 total 10,000 ≠ lines 9,000 − discounts 0 + tax 900 = 9,900 (difference 100 usd)"
    )
    assert (
        row["suggested_action"] == "credit"
        and row["amount_at_stake"] == 100
        and row["severity"] == "high"
    )


def test_subtotal_that_disagrees_with_lines_is_named_and_undercharge_is_reviewed() -> None:
    b = clean_books()
    b.cycle_invoice(
        "in_short",
        "cus_1",
        "sub_1",
        "price_seat",
        1_000,
        3,
        months(T0, 6),
        subtotal=2_500,
        total=2_750,
    )
    row = run_rules(b.con, detected_at=NOW).iloc[0]
    assert row["rule"] == "line_total_mismatch" and row["amount_at_stake"] == 550
    assert "difference -550" in row["explanation"]
    assert "states subtotal 2,500 but its 1 line(s) add up to 3,000" in row["explanation"]
    assert row["suggested_action"] == "review" and row["severity"] == "medium"


def test_inclusive_tax_and_line_discounts_are_not_mismatches() -> None:
    b = clean_books()
    # tax included in the line amounts: total = lines - discounts, tax reported beside it
    b.invoice(
        "in_incl", "cus_0", created=months(T0, 7), lines=[dict(amount=1_100)], tax_bp=0, tax=100
    )
    # discount known only on the lines (invoice-level discount missing)
    b.invoice(
        "in_linedisc",
        "cus_1",
        created=months(T0, 7),
        lines=[dict(amount=1_000, discount_amount=200)],
        discount=200,
        total_discount=None,
    )
    f = run_rules(b.con, rules=["line_total_mismatch"], detected_at=NOW)
    assert f.empty, f["explanation"].tolist()
    strict = run_rules(
        b.con,
        rules=["line_total_mismatch"],
        config=RuleConfig(allow_inclusive_tax=False),
        detected_at=NOW,
    )
    assert list(strict["object_id"]) == ["in_incl"]


# ----------------------------------------------------------------- amounts vs price
def test_amount_far_from_price_times_quantity_is_flagged() -> None:
    b = clean_books()
    b.cycle_invoice(
        "in_double", "cus_2", "sub_2", "price_seat", 1_000, 4, months(T0, 6), amount=8_000
    )
    f = run_rules(b.con, detected_at=NOW)
    assert list(f["rule"]) == ["amount_vs_price"]
    row = f.iloc[0]
    assert row["anomaly_type"] == "wrong_amount" and row["amount_at_stake"] == 4_000
    assert (
        "bills 8,000 usd for quantity 4 of price price_seat at 1,000 each = 4,000 (difference 4,000"
        in row["explanation"]
    )
    assert row["suggested_action"] == "refund"


def test_prorations_trials_tiered_prices_and_rounding_are_not_wrong_amounts() -> None:
    b = clean_books()
    b.price("price_tiered", None, billing_scheme="tiered")
    b.cycle_invoice(
        "in_tiered", "cus_0", "sub_0", "price_tiered", 0, 7, months(T0, 7), amount=12_345
    )
    b.cycle_invoice(
        "in_round", "cus_1", "sub_1", "price_seat", 1_000, 3, months(T0, 7), amount=3_001
    )
    f = run_rules(b.con, rules=["amount_vs_price"], detected_at=NOW)
    assert f.empty, f["explanation"].tolist()
    f = run_rules(
        b.con, rules=["amount_vs_price"], config=RuleConfig(amount_tolerance=0), detected_at=NOW
    )
    assert list(f["object_id"]) == ["in_round"]


# ----------------------------------------------------------------- refunds
def test_refunds_beyond_the_payment_flag_the_refund_that_crossed_the_line() -> None:
    b = clean_books()
    b.refund("re_big", "ch_in_0_1", 2_500, created=months(T0, 1) + DAY)  # charge was 2 200
    b.refund("re_a", "ch_in_2_1", 3_000, created=months(T0, 1) + DAY)  # charge was 4 400
    b.refund("re_b", "ch_in_2_1", 2_000, created=months(T0, 1) + 2 * DAY)
    b.refund("re_failed", "ch_in_1_1", 9_999, created=months(T0, 1) + DAY, status="failed")
    f = run_rules(b.con, detected_at=NOW).set_index("object_id")
    assert set(f.index) == {"re_big", "re_b"}
    assert f.loc["re_big", "amount_at_stake"] == 300 and f.loc["re_b", "amount_at_stake"] == 600
    assert f.loc["re_b", "explanation"] == (
        "refund re_b of 2,000 usd brings refunds on charge ch_in_2_1 to 5,000, more than the 4,400 paid (excess 600)"
    )
    assert set(f["severity"]) == {"critical"}


def test_refund_of_a_failed_charge_is_flagged() -> None:
    b = clean_books()
    b.charge("ch_failed", "in_0_5", "cus_0", 2_200, created=months(T0, 5), status="failed")
    b.refund("re_on_failed", "ch_failed", 2_200, created=months(T0, 5) + DAY)
    f = run_rules(b.con, detected_at=NOW)
    assert list(f["object_id"]) == ["re_on_failed"]
    assert "more than the 0 paid" in f.iloc[0]["explanation"]


# ----------------------------------------------------------------- service periods
def test_service_period_longer_than_the_billing_interval_is_flagged() -> None:
    b = clean_books()
    start = months(T0, 6)
    b.invoice(
        "in_twomonths",
        "cus_0",
        subscription_id="sub_0",
        created=start,
        lines=[
            dict(
                price_id="price_seat",
                quantity=2,
                amount=2_000,
                period_start=start,
                period_end=months(start, 2),
            )
        ],
    )
    b.invoice(
        "in_backwards",
        "cus_1",
        subscription_id="sub_1",
        created=start,
        lines=[
            dict(
                price_id="price_seat",
                quantity=3,
                amount=3_000,
                period_start=start,
                period_end=start - DAY,
            )
        ],
    )
    b.invoice(
        "in_far_future",
        "cus_2",
        subscription_id="sub_2",
        created=start,
        lines=[
            dict(
                price_id="price_seat",
                quantity=4,
                amount=4_000,
                period_start=months(start, 3),
                period_end=months(start, 4),
            )
        ],
    )
    f = run_rules(b.con, rules=["service_period_mismatch"], detected_at=NOW).set_index("object_id")
    assert set(f.index) == {"in_twomonths", "in_backwards", "in_far_future"}
    assert (
        "runs 62.0 days but price price_seat bills every 1 month (expected end 2024-08-01, off by 31.0 days)"
        in f.loc["in_twomonths", "explanation"]
    )
    assert "ends before it starts" in f.loc["in_backwards", "explanation"]
    assert (
        "starts 92.0 days from the invoice date 2024-07-01" in f.loc["in_far_future", "explanation"]
    )
    assert set(f["suggested_action"]) == {"review"}


def test_month_end_anchors_are_within_tolerance() -> None:
    b = clean_books()
    b.account("cus_eom")
    b.subscription("sub_eom", "cus_eom", "price_seat")
    bounds = [
        pd.Timestamp(s, tz="UTC") for s in ("2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30")
    ]
    for i, (s, e) in enumerate(zip(bounds, bounds[1:], strict=False)):
        b.invoice(
            f"in_eom_{i}",
            "cus_eom",
            subscription_id="sub_eom",
            created=s,
            lines=[
                dict(price_id="price_seat", quantity=1, amount=1_000, period_start=s, period_end=e)
            ],
        )
    f = run_rules(b.con, rules=["service_period_mismatch"], detected_at=NOW)
    assert f.empty, f["explanation"].tolist()


# ----------------------------------------------------------------- currency
def test_invoice_in_another_currency_than_the_account_is_flagged() -> None:
    b = clean_books()
    b.price("price_seat_eur", 900, currency="eur")
    b.invoice(
        "in_eur",
        "cus_0",
        created=months(T0, 6),
        currency="eur",
        status="open",
        lines=[dict(price_id="price_seat_eur", quantity=1, amount=900)],
    )
    b.account("cus_nocur", currency=None)
    b.invoice(
        "in_nocur", "cus_nocur", created=months(T0, 6), currency="gbp", lines=[dict(amount=900)]
    )
    f = run_rules(b.con, detected_at=NOW)
    assert list(f["object_id"]) == ["in_eur"]
    row = f.iloc[0]
    assert (
        row["explanation"]
        == "invoice in_eur is in eur but account cus_0 bills in usd (total 990 eur, status open)"
    )
    assert row["suggested_action"] == "void" and row["currency"] == "eur"


# ----------------------------------------------------------------- engine
def test_findings_have_the_contract_columns_stable_ids_and_ranking() -> None:
    b = clean_books()
    b.cycle_invoice(
        "in_double", "cus_2", "sub_2", "price_seat", 1_000, 4, months(T0, 6), amount=8_000
    )
    b.refund("re_big", "ch_in_0_1", 2_500, created=months(T0, 1) + DAY)
    b.cycle_invoice(
        "in_big", "cus_1", "sub_1", "price_seat", 1_000, 3, months(T0, 7), amount=300_000
    )
    f1 = run_rules(b.con, detected_at=NOW)
    f2 = run_rules(b.con, detected_at=NOW + pd.Timedelta(hours=1))
    assert tuple(f1.columns) == FINDING_COLUMNS
    assert (
        str(f1["detected_at"].dtype) == "datetime64[us, UTC]"
        and f1["amount_at_stake"].dtype == "int64"
    )
    assert list(f1["finding_id"]) == list(f2["finding_id"])
    assert f1.loc[f1["object_id"] == "in_big", "finding_id"].item() == finding_id(
        "amount_vs_price", "invoice", "in_big"
    )
    # high with 297 000 at stake becomes critical; critical rows come first, larger amounts first
    assert list(f1["object_id"]) == ["in_big", "re_big", "in_double"]
    assert list(f1["severity"]) == ["critical", "critical", "high"]


def test_period_window_checks_only_new_objects_against_all_history() -> None:
    b = clean_books()
    b.cycle_invoice("in_dup_old", "cus_0", "sub_0", "price_seat", 1_000, 2, T0)
    b.cycle_invoice("in_dup_new", "cus_1", "sub_1", "price_seat", 1_000, 3, months(T0, 5))
    b.con.execute(
        "UPDATE invoices SET created = created + INTERVAL 1 HOUR WHERE invoice_id LIKE 'in_dup_%'"
    )
    window = detect_rules(b.con, start=months(T0, 4), end=months(T0, 7), detected_at=NOW)
    assert list(window["object_id"]) == ["in_dup_new"]
    everything = detect_rules(b.con, detected_at=NOW)
    assert set(everything["object_id"]) == {"in_dup_old", "in_dup_new"}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_rule_runs_on_empty_tables(rule) -> None:  # noqa: ANN001
    b = clean_books(n_accounts=0, n_months=0)
    b.con.execute("DELETE FROM invoice_lines; DELETE FROM invoices; DELETE FROM refunds")
    assert run_rules(b.con, rules=[rule], detected_at=NOW).empty
