"""The same rules, one invoice at a time, as invoices are finalized.

:func:`check_invoice` checks an invoice already in the warehouse;
:func:`check_invoice_payload` checks a Stripe invoice (or an ``invoice.finalized``
event) before it is loaded, against what the warehouse already holds. Both only swap
the :class:`~workbench.anomalies.rules.Relations` the rule queries read: the queries
are the very ones the batch run uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from workbench.anomalies.detector import InvoiceAnomalyDetector, invoice_features
from workbench.anomalies.findings import rank_findings, utc_now
from workbench.anomalies.rules import RULES, Relations, RuleConfig, run_rules, sql_literal
from workbench.schema import TABLES

log = logging.getLogger(__name__)


def _in_list(values: Iterable[str]) -> str:
    vals = sorted({v for v in values if v is not None})
    return "(" + ", ".join(sql_literal(v) for v in vals) + ")" if vals else "(NULL)"


def object_relations(
    *,
    invoice_ids: Iterable[str] = (),
    subscription_ids: Iterable[str] = (),
    refund_ids: Iterable[str] = (),
    base: Relations | None = None,
) -> Relations:
    """Relations whose targets are the given objects (and what hangs off the invoices).

    The targets are the invoices named, the subscriptions named plus those of the invoices,
    and the refunds named plus the refunds of the invoices (directly or through their
    charges). The context is ``base`` (default: the warehouse tables).

    Args:
        invoice_ids: Invoices to check.
        subscription_ids: Subscriptions to check.
        refund_ids: Refunds to check.
        base: Context relations (e.g. with a payload unioned in).

    Returns:
        A :class:`Relations`.
    """
    base = base or Relations()
    inv = _in_list(invoice_ids)
    subs = _in_list(subscription_ids)
    refs = _in_list(refund_ids)
    return Relations(
        invoices=base.invoices,
        invoice_lines=base.invoice_lines,
        prices=base.prices,
        subscriptions=base.subscriptions,
        subscription_items=base.subscription_items,
        subscription_history=base.subscription_history,
        payment_attempts=base.payment_attempts,
        refunds=base.refunds,
        accounts=base.accounts,
        target_invoices=f"(SELECT * FROM {base.invoices} WHERE invoice_id IN {inv})",
        target_subscriptions=(
            f"(SELECT DISTINCT subscription_id, account_id FROM (SELECT subscription_id, account_id FROM {base.subscriptions}"
            f" UNION SELECT subscription_id, account_id FROM {base.subscription_history})"
            f" WHERE subscription_id IN {subs}"
            f" OR subscription_id IN (SELECT subscription_id FROM {base.invoices} WHERE invoice_id IN {inv}))"
        ),
        target_refunds=(
            f"(SELECT * FROM {base.refunds} WHERE refund_id IN {refs} OR invoice_id IN {inv}"
            f" OR charge_id IN (SELECT attempt_id FROM {base.payment_attempts} WHERE invoice_id IN {inv}))"
        ),
    )


def check(
    con: Any,
    *,
    invoice_ids: Iterable[str] = (),
    subscription_ids: Iterable[str] = (),
    refund_ids: Iterable[str] = (),
    config: RuleConfig | None = None,
    detector: InvoiceAnomalyDetector | None = None,
    detected_at: pd.Timestamp | None = None,
    rules: Iterable[Any] | None = None,
    base: Relations | None = None,
) -> pd.DataFrame:
    """Run the rules (and optionally a fitted detector) on a few objects against the warehouse.

    Args:
        con: A DuckDB connection with the canonical tables.
        invoice_ids: Invoices to check (with their subscriptions and refunds).
        subscription_ids: More subscriptions to check.
        refund_ids: More refunds to check (call this on ``charge.refunded``).
        config: Rule thresholds.
        detector: A fitted :class:`InvoiceAnomalyDetector`; when given, the invoices are
            also scored and flagged above its threshold.
        detected_at: Stamp for ``detected_at`` (default: now).
        rules: Rules or rule names (default: all).
        base: Context relations (default: the warehouse tables).

    Returns:
        A ranked findings frame (empty when everything checks out).
    """
    invoice_ids = list(invoice_ids)
    rel = object_relations(
        invoice_ids=invoice_ids, subscription_ids=subscription_ids, refund_ids=refund_ids, base=base
    )
    detected_at = detected_at if detected_at is not None else utc_now()
    found = run_rules(con, relations=rel, config=config, rules=rules, detected_at=detected_at)
    if detector is None or not invoice_ids:
        return found
    feats = invoice_features(con, relations=rel)
    if feats.empty:
        return found
    return rank_findings(found, detector.findings(feats, detected_at=detected_at))


def check_invoice(
    con: Any,
    invoice_id: str,
    *,
    config: RuleConfig | None = None,
    detector: InvoiceAnomalyDetector | None = None,
    detected_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Check one invoice already in the warehouse, as the batch run would.

    Args:
        con: A DuckDB connection with the canonical tables.
        invoice_id: The invoice.
        config: Rule thresholds.
        detector: Optional fitted detector to score the invoice too.
        detected_at: Stamp for ``detected_at``.

    Returns:
        A ranked findings frame for the invoice, its subscription and its refunds.
    """
    return check(
        con, invoice_ids=[invoice_id], config=config, detector=detector, detected_at=detected_at
    )


# ----------------------------------------------------------------- Stripe payloads
def _ts(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    return pd.Timestamp(int(value), unit="s", tz="UTC")


def _dig(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _amounts(items: Any) -> int | None:
    if not items:
        return None
    return int(sum(int(x.get("amount") or 0) for x in items))


def invoice_rows_from_stripe(
    payload: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Map a Stripe invoice (or an event carrying one) to canonical rows.

    Handles the classic shape (``subscription``, ``tax``, line ``price`` / ``proration``)
    and the 2025 shape (``parent.subscription_details``, ``total_taxes``, line ``pricing``
    and ``parent``).

    Args:
        payload: An ``invoice`` object or an event whose ``data.object`` is one.

    Returns:
        ``(invoice_row, line_rows, price_rows, lines_complete)``: rows keyed by canonical
        column names, the prices embedded in the lines, and whether the payload holds all
        of the invoice's lines.
    """
    obj = payload["data"]["object"] if payload.get("object") == "event" else payload
    if obj.get("object", "invoice") != "invoice":
        raise ValueError(f"not an invoice: {obj.get('object')!r}")
    st = obj.get("status_transitions") or {}
    sub = obj.get("subscription")
    if isinstance(sub, Mapping):
        sub = sub.get("id")
    sub = sub or _dig(obj, "parent", "subscription_details", "subscription")
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    tax = obj.get("tax")
    if tax is None:
        tax = _amounts(obj.get("total_taxes")) or _amounts(obj.get("total_tax_amounts")) or 0
    charge = obj.get("charge")
    pi = obj.get("payment_intent")
    inv = {
        "invoice_id": obj["id"],
        "account_id": customer,
        "subscription_id": sub,
        "status": obj.get("status"),
        "billing_reason": obj.get("billing_reason"),
        "currency": (obj.get("currency") or "").lower() or None,
        "created": _ts(obj.get("created")),
        "period_start": _ts(obj.get("period_start")),
        "period_end": _ts(obj.get("period_end")),
        "subtotal": obj.get("subtotal"),
        "total_discount": _amounts(obj.get("total_discount_amounts")) or 0,
        "tax": int(tax),
        "total": obj.get("total"),
        "amount_due": obj.get("amount_due"),
        "amount_paid": obj.get("amount_paid"),
        "amount_remaining": obj.get("amount_remaining"),
        "attempt_count": obj.get("attempt_count"),
        "next_payment_attempt": _ts(obj.get("next_payment_attempt")),
        "charge_id": charge.get("id") if isinstance(charge, Mapping) else charge,
        "payment_intent_id": pi.get("id") if isinstance(pi, Mapping) else pi,
        "finalized_at": _ts(st.get("finalized_at")),
        "paid_at": _ts(st.get("paid_at")),
        "marked_uncollectible_at": _ts(st.get("marked_uncollectible_at")),
        "voided_at": _ts(st.get("voided_at")),
        "updated_at": _ts(obj.get("created")),
    }
    lines_obj = obj.get("lines") or {}
    data = list(lines_obj.get("data") or [])
    count = lines_obj.get("total_count")
    complete = not lines_obj.get("has_more") and (
        len(data) >= int(count) if count is not None else bool(data)
    )
    lines, prices = [], {}
    for line in data:
        price = line.get("price")
        if price is None:
            price = _dig(line, "pricing", "price_details", "price")
        price_id = price.get("id") if isinstance(price, Mapping) else price
        if isinstance(price, Mapping):
            rec = price.get("recurring") or {}
            prices[price_id] = {
                "price_id": price_id,
                "product_id": price.get("product")
                if not isinstance(price.get("product"), Mapping)
                else price["product"].get("id"),
                "nickname": price.get("nickname"),
                "currency": (price.get("currency") or "").lower() or None,
                "unit_amount": price.get("unit_amount"),
                "billing_scheme": price.get("billing_scheme"),
                "usage_type": rec.get("usage_type"),
                "interval": rec.get("interval"),
                "interval_count": rec.get("interval_count"),
                "active": price.get("active"),
                "created": _ts(price.get("created")),
            }
        parent = line.get("parent") or {}
        item_details = parent.get("subscription_item_details") or {}
        proration = line.get("proration")
        if proration is None:
            proration = item_details.get("proration") or (
                parent.get("invoice_item_details") or {}
            ).get("proration")
        line_type = line.get("type") or (
            "subscription" if parent.get("type") == "subscription_item_details" else "invoiceitem"
        )
        lines.append(
            {
                "line_id": line["id"],
                "invoice_id": obj["id"],
                "subscription_id": line.get("subscription")
                or item_details.get("subscription")
                or sub,
                "subscription_item_id": line.get("subscription_item")
                or item_details.get("subscription_item"),
                "price_id": price_id,
                "type": line_type,
                "amount": line.get("amount"),
                "discount_amount": _amounts(line.get("discount_amounts")) or 0,
                "currency": (line.get("currency") or inv["currency"] or "").lower() or None,
                "quantity": line.get("quantity"),
                "proration": bool(proration),
                "period_start": _ts(_dig(line, "period", "start")),
                "period_end": _ts(_dig(line, "period", "end")),
            }
        )
    return inv, lines, list(prices.values()), complete


def _literal(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return sql_literal(value)
    return sql_literal(pd.Timestamp(value))


def values_relation(rows: list[dict[str, Any]], table: str) -> str:
    """A parenthesised SQL relation holding ``rows`` with ``table``'s columns and types.

    The rows travel as literals in the query text, so nothing is registered on the
    connection and an open transaction of the caller is left alone.
    """
    cols = TABLES[table].columns
    casts = ", ".join(f"CAST({c.name} AS {c.type}) AS {c.name}" for c in cols)
    if not rows:
        nulls = ", ".join(f"CAST(NULL AS {c.type}) AS {c.name}" for c in cols)
        return f"(SELECT {nulls} WHERE false)"
    values = ", ".join("(" + ", ".join(_literal(r.get(c.name)) for c in cols) + ")" for r in rows)
    names = ", ".join(c.name for c in cols)
    return f"(SELECT {casts} FROM (VALUES {values}) AS v({names}))"


def check_invoice_payload(
    stripe_invoice: Mapping[str, Any],
    con: Any,
    *,
    config: RuleConfig | None = None,
    detector: InvoiceAnomalyDetector | None = None,
    detected_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Check a Stripe invoice (e.g. from ``invoice.finalized``) before it is loaded.

    The payload is laid over the warehouse: the rules see every invoice already loaded
    plus this one (a stored copy with the same id is replaced by the payload), and its
    lines' prices when the warehouse does not know them yet. Nothing is written.

    Args:
        stripe_invoice: An ``invoice`` object or an event carrying one.
        con: A DuckDB connection with the canonical tables.
        config: Rule thresholds.
        detector: Optional fitted detector to score the invoice too.
        detected_at: Stamp for ``detected_at``.

    Returns:
        A ranked findings frame for the invoice (and its subscription and refunds).
    """
    inv, lines, prices, complete = invoice_rows_from_stripe(stripe_invoice)
    iid = sql_literal(inv["invoice_id"])
    base = Relations(
        invoices=f"(SELECT * FROM invoices WHERE invoice_id <> {iid} UNION ALL SELECT * FROM {values_relation([inv], 'invoices')})",
        invoice_lines=(
            f"(SELECT * FROM invoice_lines WHERE invoice_id <> {iid}"
            f" UNION ALL SELECT * FROM {values_relation(lines, 'invoice_lines')})"
        ),
        prices=(
            f"(SELECT * FROM prices UNION ALL SELECT * FROM {values_relation(prices, 'prices')}"
            " WHERE price_id NOT IN (SELECT price_id FROM prices))"
        ),
    )
    rules = None
    if not complete:
        log.warning(
            "invoice %s: payload holds only some of its lines; skipping the line-total rule",
            inv["invoice_id"],
        )
        rules = [r for r in RULES if r.name != "line_total_mismatch"]
    return check(
        con,
        invoice_ids=[inv["invoice_id"]],
        config=config,
        detector=detector,
        detected_at=detected_at,
        rules=rules,
        base=base,
    )
