"""Builders of Stripe-shaped objects and event envelopes (API version 2024-06-20).

Each builder returns a plain ``dict`` with Stripe's field names, types and key order
for the fields the workbench reads (compare ``shared/data/external/stripe``): ids
with Stripe's prefixes, integer unix-second timestamps, integer minor-unit amounts,
lower-case currencies. Rarely used fields (URLs, shipping, rendering options) are
left out to keep the files small; every field that is present exists in Stripe's
API with the same type. Objects are snapshots: the simulator serialises an event
as soon as it is emitted, so later changes never leak into earlier events.
"""

from __future__ import annotations

import json
from typing import Any

API_VERSION = "2024-06-20"

Obj = dict[str, Any]

#: Compact JSON (no spaces, UTF-8 kept), the encoding of every landing line.
encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def event(
    *,
    event_id: str,
    type_: str,
    obj: Obj,
    created: int,
    previous_attributes: Obj | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> Obj:
    """A Stripe ``event`` envelope around a snapshot of ``obj``.

    ``previous_attributes`` (old values of the changed fields) is included only for
    ``*.updated``-style events, as Stripe does. ``request`` carries the API request that
    caused the event, or nulls for automatic ones (renewals, retries).
    """
    data: Obj = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": request_id, "idempotency_key": idempotency_key},
        "type": type_,
    }


def product(*, product_id: str, name: str, description: str, created: int, metadata: Obj) -> Obj:
    """A ``product`` (a plan tier, the metered API product or an add-on)."""
    return {
        "id": product_id,
        "object": "product",
        "active": True,
        "created": created,
        "default_price": None,
        "description": description,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": metadata,
        "name": name,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": created,
        "url": None,
    }


def price(
    *,
    price_id: str,
    product_id: str,
    currency: str,
    unit_amount: int,
    interval: str,
    usage_type: str,
    created: int,
    nickname: str,
    lookup_key: str,
    metadata: Obj,
) -> Obj:
    """A recurring per-unit ``price``; metered prices aggregate usage by ``sum``."""
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": metadata,
        "nickname": nickname,
        "product": product_id,
        "recurring": {
            "aggregate_usage": "sum" if usage_type == "metered" else None,
            "interval": interval,
            "interval_count": 1,
            "meter": None,
            "trial_period_days": None,
            "usage_type": usage_type,
        },
        "tax_behavior": "exclusive",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def coupon(
    *,
    coupon_id: str,
    name: str,
    created: int,
    duration: str,
    percent_off: float | None = None,
    amount_off: int | None = None,
    currency: str | None = None,
    duration_in_months: int | None = None,
) -> Obj:
    """A ``coupon``: ``percent_off`` or ``amount_off`` (+ ``currency``), for a ``duration``."""
    return {
        "id": coupon_id,
        "object": "coupon",
        "amount_off": amount_off,
        "created": created,
        "currency": currency,
        "duration": duration,
        "duration_in_months": duration_in_months,
        "livemode": False,
        "max_redemptions": None,
        "metadata": {},
        "name": name,
        "percent_off": percent_off,
        "redeem_by": None,
        "times_redeemed": 0,
        "valid": True,
    }


def tax_rate(
    *,
    tax_rate_id: str,
    display_name: str,
    percentage: float,
    jurisdiction: str,
    country: str,
    created: int,
) -> Obj:
    """An exclusive ``tax_rate``."""
    return {
        "id": tax_rate_id,
        "object": "tax_rate",
        "active": True,
        "country": country,
        "created": created,
        "description": None,
        "display_name": display_name,
        "inclusive": False,
        "jurisdiction": jurisdiction,
        "livemode": False,
        "metadata": {},
        "percentage": percentage,
        "state": None,
        "tax_type": "vat" if display_name == "VAT" else "sales_tax",
    }


def customer(
    *,
    customer_id: str,
    created: int,
    name: str,
    email: str,
    currency: str,
    description: str,
    country: str,
    invoice_prefix: str,
    payment_method: str,
    metadata: Obj,
) -> Obj:
    """A ``customer``; ``metadata`` carries region, channel, industry and size as strings."""
    return {
        "id": customer_id,
        "object": "customer",
        "address": {
            "city": None,
            "country": country,
            "line1": None,
            "line2": None,
            "postal_code": None,
            "state": None,
        },
        "balance": 0,
        "created": created,
        "currency": currency,
        "default_source": None,
        "delinquent": False,
        "description": description,
        "discount": None,
        "email": email,
        "invoice_prefix": invoice_prefix,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": payment_method,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": metadata,
        "name": name,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def discount(
    *,
    discount_id: str,
    coupon_obj: Obj,
    customer_id: str,
    subscription_id: str,
    start: int,
    end: int | None,
) -> Obj:
    """A ``discount`` applying ``coupon_obj`` to a subscription from ``start`` to ``end``."""
    return {
        "id": discount_id,
        "object": "discount",
        "checkout_session": None,
        "coupon": coupon_obj,
        "customer": customer_id,
        "end": end,
        "invoice": None,
        "invoice_item": None,
        "promotion_code": None,
        "start": start,
        "subscription": subscription_id,
        "subscription_item": None,
    }


def subscription_item(
    *, item_id: str, price_obj: Obj, quantity: int | None, subscription_id: str, created: int
) -> Obj:
    """A ``subscription_item`` with its full ``price``; metered items carry no quantity."""
    item: Obj = {
        "id": item_id,
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": created,
        "discounts": [],
        "metadata": {},
        "price": price_obj,
    }
    if quantity is not None:
        item["quantity"] = quantity
    item["subscription"] = subscription_id
    item["tax_rates"] = []
    return item


def item_list(items: list[Obj], subscription_id: str) -> Obj:
    """The ``items`` list object of a subscription."""
    return {
        "object": "list",
        "data": items,
        "has_more": False,
        "total_count": len(items),
        "url": f"/v1/subscription_items?subscription={subscription_id}",
    }


def subscription(
    *,
    subscription_id: str,
    customer_id: str,
    currency: str,
    created: int,
    items: list[Obj],
    status: str,
    period_start: int,
    period_end: int,
    trial_start: int | None,
    trial_end: int | None,
    tax_rate_obj: Obj | None,
    metadata: Obj,
) -> Obj:
    """A ``subscription`` snapshot (2024-06-20 shape: periods at the top level)."""
    return {
        "id": subscription_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": period_start if trial_end is None else trial_end,
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "current_period_end": period_end,
        "current_period_start": period_start,
        "customer": customer_id,
        "days_until_due": None,
        "default_payment_method": None,
        "default_tax_rates": [tax_rate_obj] if tax_rate_obj else [],
        "description": None,
        "discount": None,
        "discounts": [],
        "ended_at": None,
        "items": item_list(items, subscription_id),
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata,
        "pause_collection": None,
        "pending_update": None,
        "schedule": None,
        "start_date": created,
        "status": status,
        "test_clock": None,
        "trial_end": trial_end,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": trial_start,
    }


def invoice_line(
    *,
    line_id: str,
    invoice_id: str,
    amount: int,
    currency: str,
    description: str,
    period_start: int,
    period_end: int,
    price_obj: Obj,
    quantity: int,
    proration: bool,
    line_type: str,
    subscription_id: str | None,
    subscription_item_id: str | None,
    invoice_item_id: str | None,
    discount_amounts: list[Obj],
    tax_amounts: list[Obj],
) -> Obj:
    """An invoice ``line_item``: ``type`` is ``subscription`` or ``invoiceitem`` (prorations)."""
    return {
        "id": line_id,
        "object": "line_item",
        "amount": amount,
        "amount_excluding_tax": amount,
        "currency": currency,
        "description": description,
        "discount_amounts": discount_amounts,
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "invoice_item": invoice_item_id,
        "livemode": False,
        "metadata": {},
        "period": {"end": period_end, "start": period_start},
        "price": price_obj,
        "proration": proration,
        "proration_details": {"credited_items": None},
        "quantity": quantity,
        "subscription": subscription_id,
        "subscription_item": subscription_item_id,
        "tax_amounts": tax_amounts,
        "tax_rates": [],
        "type": line_type,
        "unit_amount_excluding_tax": str(price_obj["unit_amount"]),
    }


def invoice(
    *,
    invoice_id: str,
    customer_obj: Obj,
    subscription_id: str | None,
    created: int,
    currency: str,
    billing_reason: str,
    lines: list[Obj],
    period_start: int,
    period_end: int,
    subtotal: int,
    total_discount_amounts: list[Obj],
    tax: int,
    total_tax_amounts: list[Obj],
    total: int,
    discount_obj: Obj | None,
    number: str,
    payment_intent_id: str | None,
) -> Obj:
    """A draft ``invoice``; the caller moves it through open → paid / uncollectible / void."""
    discount_total = sum(d["amount"] for d in total_discount_amounts)
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Billing Workbench Demo Co",
        "amount_due": total,
        "amount_paid": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_reason": billing_reason,
        "charge": None,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer_obj["id"],
        "customer_email": customer_obj["email"],
        "customer_name": customer_obj["name"],
        "customer_tax_exempt": "none",
        "description": None,
        "discount": discount_obj,
        "discounts": [discount_obj["id"]] if discount_obj else [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": number,
        "paid": False,
        "paid_out_of_band": False,
        "payment_intent": payment_intent_id,
        "period_end": period_end,
        "period_start": period_start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "starting_balance": 0,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": subscription_id,
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "tax": tax,
        "total": total,
        "total_discount_amounts": total_discount_amounts,
        "total_excluding_tax": subtotal - discount_total,
        "total_tax_amounts": total_tax_amounts,
    }


def card_details(card: Obj) -> Obj:
    """``payment_method_details`` of a card charge (brand and last four only, never a number)."""
    return {
        "card": {
            "brand": card["brand"],
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": None,
            },
            "country": card["country"],
            "exp_month": card["exp_month"],
            "exp_year": card["exp_year"],
            "fingerprint": card["fingerprint"],
            "funding": card["funding"],
            "last4": card["last4"],
            "network": card["brand"],
            "three_d_secure": None,
            "wallet": None,
        },
        "type": "card",
    }


def charge(
    *,
    charge_id: str,
    customer_obj: Obj,
    invoice_id: str,
    payment_intent_id: str,
    amount: int,
    currency: str,
    created: int,
    card: Obj,
    succeeded: bool,
    failure_code: str | None,
    failure_message: str | None,
    outcome: Obj,
    balance_transaction: str | None,
    description: str,
) -> Obj:
    """A ``charge`` (one payment attempt); refunds are listed inside it."""
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": balance_transaction,
        "billing_details": {
            "address": {
                "city": None,
                "country": card["country"],
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": customer_obj["email"],
            "name": customer_obj["name"],
            "phone": None,
        },
        "calculated_statement_descriptor": "BILLINGWORKBENCH",
        "captured": succeeded,
        "created": created,
        "currency": currency,
        "customer": customer_obj["id"],
        "description": description,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": failure_code,
        "failure_message": failure_message,
        "fraud_details": {},
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": payment_intent_id,
        "payment_method": card["id"],
        "payment_method_details": card_details(card),
        "receipt_email": None,
        "receipt_number": None,
        "refunded": False,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        "review": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "failed",
        "transfer_data": None,
        "transfer_group": None,
    }


def payment_intent(
    *,
    payment_intent_id: str,
    customer_id: str,
    invoice_id: str,
    amount: int,
    currency: str,
    created: int,
    description: str,
) -> Obj:
    """The ``payment_intent`` of an invoice (one per invoice, one charge per attempt)."""
    return {
        "id": payment_intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "created": created,
        "currency": currency,
        "customer": customer_id,
        "description": description,
        "invoice": invoice_id,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "payment_method": None,
        "payment_method_types": ["card"],
        "setup_future_usage": "off_session",
        "status": "requires_payment_method",
    }


def refund(
    *,
    refund_id: str,
    charge_id: str,
    payment_intent_id: str | None,
    amount: int,
    currency: str,
    created: int,
    reason: str,
) -> Obj:
    """A ``refund`` of (part of) a charge."""
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": "txn_" + refund_id[3:],
        "charge": charge_id,
        "created": created,
        "currency": currency,
        "metadata": {},
        "payment_intent": payment_intent_id,
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def dispute(
    *,
    dispute_id: str,
    charge_id: str,
    payment_intent_id: str | None,
    amount: int,
    currency: str,
    created: int,
    reason: str,
    due_by: int,
) -> Obj:
    """A ``dispute`` (chargeback) on a charge, opened with status ``needs_response``."""
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge_id,
        "created": created,
        "currency": currency,
        "evidence_details": {
            "due_by": due_by,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent_id,
        "reason": reason,
        "status": "needs_response",
    }
