"""Data contracts (pandera) for every warehouse table.

One ``DataFrameSchema`` per canonical table, built from :mod:`workbench.schema`
(required columns) plus the business rules below (money not negative, ISO
currency codes, known statuses, periods that end after they start, ...).
Validation is always ``lazy`` so that every failing row is reported, and the
failures come back as a tidy frame that ingestion turns into quarantine rows.

The same contracts are applied to the version rows at load time (a failing
event is quarantined with the column and rule) and to the current-state tables
by :func:`workbench.ingest.verify`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import pandas as pd
import pandera.pandas as pa

from workbench.schema import TABLES

#: rule -> what it means, used in quarantine messages.
RULE_MESSAGES: dict[str, str] = {
    "missing_required": "is required but missing",
    "not_negative": "must not be negative",
    "currency_code": "must be a three-letter lower-case ISO currency code (like 'usd')",
    "country_code": "must be a two-letter upper-case country code",
    "in_set": "is not one of the known values",
    "period_order": "ends before it starts",
    "out_of_range": "is outside the plausible range",
    "last4": "must be exactly four digits",
    "refund_exceeds_amount": "is larger than the charged amount",
    "positive": "must be greater than zero",
    "conservation": "received != accepted + quarantined + duplicates",
}

#: The longest interval Stripe allows, per interval unit (three years).
MAX_INTERVAL_COUNT = {"day": 1095, "week": 156, "month": 36, "year": 3}

SUBSCRIPTION_STATUSES = (
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "paused",
)
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
CHARGE_STATUSES = ("succeeded", "failed", "pending")
REFUND_STATUSES = ("pending", "requires_action", "succeeded", "failed", "canceled")
DISPUTE_STATUSES = (
    "warning_needs_response",
    "warning_under_review",
    "warning_closed",
    "needs_response",
    "under_review",
    "charge_refunded",
    "won",
    "lost",
    "prevented",
)


def _nonneg() -> pa.Check:
    return pa.Check.ge(0, error="not_negative")


def _currency() -> pa.Check:
    return pa.Check.str_matches(r"^[a-z]{3}$", error="currency_code")


def _one_of(values: Iterable[str]) -> pa.Check:
    return pa.Check.isin(list(values), error="in_set")


def _order(start: str, end: str) -> pa.Check:
    def check(df: pd.DataFrame) -> pd.Series:
        if start not in df or end not in df:
            return pd.Series(True, index=df.index)
        return df[start].isna() | df[end].isna() | (df[end] >= df[start])

    return pa.Check(check, error=f"period_order:{end}")


def _interval_count() -> pa.Check:
    def check(df: pd.DataFrame) -> pd.Series:
        if "interval_count" not in df or "interval" not in df:
            return pd.Series(True, index=df.index)
        cap = df["interval"].map(MAX_INTERVAL_COUNT)
        n = df["interval_count"]
        return n.isna() | ((n >= 1) & (cap.isna() | (n <= cap)))

    return pa.Check(check, error="out_of_range:interval_count")


def _refund_le_amount() -> pa.Check:
    def check(df: pd.DataFrame) -> pd.Series:
        if "amount_refunded" not in df or "amount" not in df:
            return pd.Series(True, index=df.index)
        return (
            df["amount_refunded"].isna()
            | df["amount"].isna()
            | (df["amount_refunded"] <= df["amount"])
        )

    return pa.Check(check, error="refund_exceeds_amount:amount_refunded")


def _conservation() -> pa.Check:
    def check(df: pd.DataFrame) -> pd.Series:
        return df["received"] == df["accepted"] + df["quarantined"] + df["duplicates"]

    return pa.Check(check, error="conservation:received")


# Column checks per table; required columns come from schema.py (nullable=False).
_COLUMN_RULES: dict[str, dict[str, list[pa.Check]]] = {
    "accounts": {
        "currency": [_currency()],
        "country": [pa.Check.str_matches(r"^[A-Z]{2}$", error="country_code")],
    },
    "prices": {
        "currency": [_currency()],
        "unit_amount": [_nonneg()],
        "billing_scheme": [_one_of(("per_unit", "tiered"))],
        "usage_type": [_one_of(("licensed", "metered"))],
        "interval": [_one_of(MAX_INTERVAL_COUNT)],
    },
    "subscriptions": {
        "status": [_one_of(SUBSCRIPTION_STATUSES)],
        "currency": [_currency()],
        "discount_percent_off": [pa.Check.in_range(0, 100, error="out_of_range")],
        "discount_amount_off": [_nonneg()],
        "discount_duration": [_one_of(("once", "repeating", "forever"))],
    },
    "subscription_items": {"quantity": [_nonneg()]},
    "invoices": {
        "status": [_one_of(INVOICE_STATUSES)],
        "currency": [_currency()],
        "amount_due": [_nonneg()],
        "amount_paid": [_nonneg()],
        "amount_remaining": [_nonneg()],
        "total_discount": [_nonneg()],
        "attempt_count": [_nonneg()],
    },
    "invoice_lines": {
        "currency": [_currency()],
        "quantity": [_nonneg()],
        "discount_amount": [_nonneg()],
    },
    "payment_attempts": {
        "amount": [_nonneg()],
        "currency": [_currency()],
        "status": [_one_of(CHARGE_STATUSES)],
        "card_last4": [pa.Check.str_matches(r"^[0-9]{4}$", error="last4")],
        "card_exp_month": [pa.Check.in_range(1, 12, error="out_of_range")],
        "card_exp_year": [pa.Check.in_range(1970, 2200, error="out_of_range")],
        "amount_refunded": [_nonneg()],
        "attempt_number": [pa.Check.ge(1, error="positive")],
    },
    "refunds": {
        "amount": [_nonneg()],
        "currency": [_currency()],
        "status": [_one_of(REFUND_STATUSES)],
    },
    "disputes": {
        "amount": [_nonneg()],
        "currency": [_currency()],
        "status": [_one_of(DISPUTE_STATUSES)],
    },
    "usage": {"quantity": [_nonneg()]},
    "crm_signals": {
        "nps": [pa.Check.in_range(-100, 100, error="out_of_range")],
        "seats_purchased": [_nonneg()],
        "seats_used": [_nonneg()],
    },
    "support_tickets": {"severity": [_one_of(("low", "medium", "high", "urgent"))]},
    "fx_rates": {
        "currency": [_currency()],
        "rate_to_usd": [pa.Check.gt(0, error="positive")],
    },
    "events": {
        "disposition": [_one_of(("handled", "ignored", "unknown"))],
        "source": [_one_of(("stripe", "stripe-csv", "csv", "webhook"))],
    },
    "loads": {
        "received": [_nonneg()],
        "accepted": [_nonneg()],
        "quarantined": [_nonneg()],
        "duplicates": [_nonneg()],
        "status": [_one_of(("ok", "failed", "superseded"))],
    },
}

# Checks across columns of one row.
_ROW_RULES: dict[str, list[pa.Check]] = {
    "prices": [_interval_count()],
    "subscriptions": [
        _order("current_period_start", "current_period_end"),
        _order("trial_start", "trial_end"),
    ],
    "subscription_items": [_order("current_period_start", "current_period_end")],
    "subscription_history": [
        _order("current_period_start", "current_period_end"),
        _order("trial_start", "trial_end"),
        _order("valid_from", "valid_to"),
        _interval_count(),
    ],
    "invoices": [_order("period_start", "period_end")],
    "invoice_lines": [_order("period_start", "period_end")],
    # A refund above its charge is not malformed data: it is a billing anomaly that finance must
    # see, so it is loaded and flagged by workbench.anomalies (rule refund_exceeds_payment)
    # instead of quarantining the whole charge.refunded event. _refund_le_amount stays
    # available for sources where it is a data error.
    "payment_attempts": [],
    "support_tickets": [_order("created_at", "resolved_at")],
    "loads": [_conservation()],
}
_COLUMN_RULES["subscription_history"] = {
    **_COLUMN_RULES["subscriptions"],
    "quantity": [_nonneg()],
    "unit_amount": [_nonneg()],
    "interval": [_one_of(MAX_INTERVAL_COUNT)],
    "usage_type": [_one_of(("licensed", "metered"))],
}


def _text(value: object) -> str | None:
    if (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float) and value != value)
    ):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@cache
def contract(table: str) -> pa.DataFrameSchema:
    """The pandera contract of a canonical table.

    Every column is optional in the frame (a projection may carry a subset); a column
    that is present must satisfy its rules, and a required column must not be null.
    """
    spec = TABLES[table]
    rules = _COLUMN_RULES.get(table, {})
    columns = {
        c.name: pa.Column(
            checks=rules.get(c.name, []), nullable=c.nullable, required=False, coerce=False
        )
        for c in spec.columns
    }
    return pa.DataFrameSchema(columns, checks=_ROW_RULES.get(table, []), strict=False, name=table)


_ROW_RULE_COLUMNS = {
    "prices": ("interval", "interval_count"),
    "subscriptions": ("current_period_start", "current_period_end", "trial_start", "trial_end"),
    "subscription_items": ("current_period_start", "current_period_end"),
    "subscription_history": (
        "current_period_start",
        "current_period_end",
        "trial_start",
        "trial_end",
        "valid_from",
        "valid_to",
        "interval",
        "interval_count",
    ),
    "invoices": ("period_start", "period_end"),
    "invoice_lines": ("period_start", "period_end"),
    "payment_attempts": ("amount", "amount_refunded"),
    "support_tickets": ("created_at", "resolved_at"),
    "loads": ("received", "accepted", "quarantined", "duplicates"),
}


def checked_columns(table: str) -> list[str]:
    """The columns of ``table`` that its contract looks at (required, or with a rule)."""
    rules = _COLUMN_RULES.get(table, {})
    row = set(_ROW_RULE_COLUMNS.get(table, ()))
    return [
        c.name
        for c in TABLES[table].columns
        if not c.nullable or rules.get(c.name) or c.name in row
    ]


def validate(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Check ``frame`` against ``table``'s contract and list every failure.

    Args:
        frame: Rows to check, with (a subset of) the canonical columns of ``table``;
            its index identifies the rows in the result.
        table: Canonical table name (a key of ``workbench.schema.TABLES``).

    Returns:
        One row per failure: ``row`` (the frame's index label), ``column_name``,
        ``rule``, ``message`` and ``value`` (as text). Empty when all rows pass.
    """
    empty = pd.DataFrame(columns=["row", "column_name", "rule", "message", "value"])
    if frame.empty:
        return empty
    try:
        contract(table).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return empty
    cases = cases[cases["index"].notna()].copy()
    check = cases["check"].astype(str)
    rule = check.str.split(":").str[0]
    target = check.str.split(":").str[1]
    # A row-level check reports every column of a failing row; keep the one it is about.
    keep = target.isna() | (target == cases["column"])
    cases, rule = cases[keep], rule[keep]
    rule = rule.where(rule != "not_nullable", "missing_required")
    known = rule.isin(list(RULE_MESSAGES))
    rule = rule.where(known, "contract")
    out = pd.DataFrame(
        {
            "row": cases["index"].to_numpy(),
            "column_name": cases["column"].astype(str).to_numpy(),
            "rule": rule.to_numpy(),
            "value": [_text(v) for v in cases["failure_case"].astype(object)],
        }
    )
    out["message"] = [
        f"{table}.{c} {RULE_MESSAGES.get(r, 'breaks the table contract')}"
        for c, r in zip(out["column_name"], out["rule"], strict=True)
    ]
    return out[["row", "column_name", "rule", "message", "value"]].drop_duplicates(
        ignore_index=True
    )
