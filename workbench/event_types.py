"""Which Stripe event types the warehouse uses, and why it ignores the others.

Every one of Stripe's 275 v1 event types is listed here and is either *handled*
(its ``data.object`` becomes a version of a canonical table's row) or *ignored*
with a stated reason (the event is still kept in ``events`` with disposition
``ignored``). A type that is not listed is *unknown*: it is kept and counted, and
never fails a load. Objects received without an event envelope (API exports,
fixtures) are wrapped as pseudo-events of type ``<object>.snapshot``.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

Disposition = Literal["handled", "ignored", "unknown"]

#: The 275 v1 event types Stripe defines (stripe-python 16.1.0, ``stripe/_event.py``).
STRIPE_V1_EVENT_TYPES: tuple[str, ...] = (
    "account.application.authorized",
    "account.application.deauthorized",
    "account.external_account.created",
    "account.external_account.deleted",
    "account.external_account.updated",
    "account.updated",
    "application_fee.created",
    "application_fee.refund.updated",
    "application_fee.refunded",
    "apps.install.created",
    "apps.install.deleted",
    "apps.install.updated",
    "balance.available",
    "balance_settings.updated",
    "billing.alert.triggered",
    "billing.credit_balance_transaction.created",
    "billing.credit_grant.created",
    "billing.credit_grant.updated",
    "billing.meter.created",
    "billing.meter.deactivated",
    "billing.meter.reactivated",
    "billing.meter.updated",
    "billing_portal.configuration.created",
    "billing_portal.configuration.updated",
    "billing_portal.session.created",
    "capability.updated",
    "cash_balance.funds_available",
    "charge.captured",
    "charge.dispute.closed",
    "charge.dispute.created",
    "charge.dispute.funds_reinstated",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.updated",
    "charge.expired",
    "charge.failed",
    "charge.pending",
    "charge.refund.updated",
    "charge.refunded",
    "charge.succeeded",
    "charge.updated",
    "checkout.session.async_payment_failed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.completed",
    "checkout.session.expired",
    "climate.order.canceled",
    "climate.order.created",
    "climate.order.delayed",
    "climate.order.delivered",
    "climate.order.product_substituted",
    "climate.product.created",
    "climate.product.pricing_updated",
    "coupon.created",
    "coupon.deleted",
    "coupon.updated",
    "credit_note.created",
    "credit_note.updated",
    "credit_note.voided",
    "customer.created",
    "customer.deleted",
    "customer.discount.created",
    "customer.discount.deleted",
    "customer.discount.updated",
    "customer.source.created",
    "customer.source.deleted",
    "customer.source.expiring",
    "customer.source.updated",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.updated",
    "customer.tax_id.created",
    "customer.tax_id.deleted",
    "customer.tax_id.updated",
    "customer.updated",
    "customer_cash_balance_transaction.created",
    "entitlements.active_entitlement_summary.updated",
    "file.created",
    "financial_connections.account.account_numbers_updated",
    "financial_connections.account.created",
    "financial_connections.account.deactivated",
    "financial_connections.account.disconnected",
    "financial_connections.account.expected_deactivation_date_updated",
    "financial_connections.account.reactivated",
    "financial_connections.account.refreshed_balance",
    "financial_connections.account.refreshed_ownership",
    "financial_connections.account.refreshed_transactions",
    "financial_connections.account.supported_payment_method_types_updated",
    "financial_connections.account.upcoming_account_number_expiry",
    "financial_connections.account.upcoming_deactivation",
    "financial_connections.authorization.expected_deactivation_date_updated",
    "financial_connections.authorization.upcoming_deactivation",
    "identity.verification_session.canceled",
    "identity.verification_session.created",
    "identity.verification_session.processing",
    "identity.verification_session.redacted",
    "identity.verification_session.requires_input",
    "identity.verification_session.verified",
    "invoice.created",
    "invoice.deleted",
    "invoice.finalization_failed",
    "invoice.finalized",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.overpaid",
    "invoice.paid",
    "invoice.payment_action_required",
    "invoice.payment_attempt_required",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.sent",
    "invoice.upcoming",
    "invoice.updated",
    "invoice.voided",
    "invoice.will_be_due",
    "invoice_payment.paid",
    "invoiceitem.created",
    "invoiceitem.deleted",
    "issuing_authorization.created",
    "issuing_authorization.request",
    "issuing_authorization.updated",
    "issuing_card.created",
    "issuing_card.updated",
    "issuing_cardholder.created",
    "issuing_cardholder.updated",
    "issuing_dispute.closed",
    "issuing_dispute.created",
    "issuing_dispute.funds_reinstated",
    "issuing_dispute.funds_rescinded",
    "issuing_dispute.submitted",
    "issuing_dispute.updated",
    "issuing_personalization_design.activated",
    "issuing_personalization_design.deactivated",
    "issuing_personalization_design.rejected",
    "issuing_personalization_design.updated",
    "issuing_token.created",
    "issuing_token.updated",
    "issuing_transaction.created",
    "issuing_transaction.purchase_details_receipt_updated",
    "issuing_transaction.updated",
    "mandate.updated",
    "payment_intent.amount_capturable_updated",
    "payment_intent.canceled",
    "payment_intent.created",
    "payment_intent.partially_funded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
    "payment_link.created",
    "payment_link.updated",
    "payment_method.attached",
    "payment_method.automatically_updated",
    "payment_method.detached",
    "payment_method.updated",
    "payout.canceled",
    "payout.created",
    "payout.failed",
    "payout.paid",
    "payout.reconciliation_completed",
    "payout.updated",
    "person.created",
    "person.deleted",
    "person.updated",
    "plan.created",
    "plan.deleted",
    "plan.updated",
    "price.created",
    "price.deleted",
    "price.updated",
    "product.created",
    "product.deleted",
    "product.updated",
    "promotion_code.created",
    "promotion_code.updated",
    "quote.accepted",
    "quote.canceled",
    "quote.created",
    "quote.finalized",
    "radar.early_fraud_warning.created",
    "radar.early_fraud_warning.updated",
    "refund.created",
    "refund.failed",
    "refund.updated",
    "reporting.report_run.failed",
    "reporting.report_run.succeeded",
    "reporting.report_type.updated",
    "reserve.hold.created",
    "reserve.hold.updated",
    "reserve.plan.created",
    "reserve.plan.disabled",
    "reserve.plan.expired",
    "reserve.plan.updated",
    "reserve.release.created",
    "review.closed",
    "review.opened",
    "setup_intent.canceled",
    "setup_intent.created",
    "setup_intent.requires_action",
    "setup_intent.setup_failed",
    "setup_intent.succeeded",
    "sigma.scheduled_query_run.created",
    "source.canceled",
    "source.chargeable",
    "source.failed",
    "source.mandate_notification",
    "source.refund_attributes_required",
    "source.transaction.created",
    "source.transaction.updated",
    "subscription_schedule.aborted",
    "subscription_schedule.canceled",
    "subscription_schedule.completed",
    "subscription_schedule.created",
    "subscription_schedule.expiring",
    "subscription_schedule.released",
    "subscription_schedule.updated",
    "tax.settings.updated",
    "tax_rate.created",
    "tax_rate.updated",
    "terminal.reader.action_failed",
    "terminal.reader.action_succeeded",
    "terminal.reader.action_updated",
    "test_helpers.test_clock.advancing",
    "test_helpers.test_clock.created",
    "test_helpers.test_clock.deleted",
    "test_helpers.test_clock.internal_failure",
    "test_helpers.test_clock.ready",
    "three_d_secure.authentication.canceled",
    "three_d_secure.authentication.challenge_started",
    "three_d_secure.authentication.errored",
    "three_d_secure.authentication.failed",
    "three_d_secure.authentication.requires_challenge",
    "three_d_secure.authentication.requires_submission",
    "three_d_secure.authentication.succeeded",
    "topup.canceled",
    "topup.created",
    "topup.failed",
    "topup.reversed",
    "topup.succeeded",
    "transfer.created",
    "transfer.reversed",
    "transfer.updated",
    "treasury.credit_reversal.created",
    "treasury.credit_reversal.posted",
    "treasury.debit_reversal.completed",
    "treasury.debit_reversal.created",
    "treasury.debit_reversal.initial_credit_granted",
    "treasury.financial_account.closed",
    "treasury.financial_account.created",
    "treasury.financial_account.features_status_updated",
    "treasury.inbound_transfer.canceled",
    "treasury.inbound_transfer.created",
    "treasury.inbound_transfer.failed",
    "treasury.inbound_transfer.succeeded",
    "treasury.outbound_payment.canceled",
    "treasury.outbound_payment.created",
    "treasury.outbound_payment.expected_arrival_date_updated",
    "treasury.outbound_payment.failed",
    "treasury.outbound_payment.posted",
    "treasury.outbound_payment.returned",
    "treasury.outbound_payment.tracking_details_updated",
    "treasury.outbound_transfer.canceled",
    "treasury.outbound_transfer.created",
    "treasury.outbound_transfer.expected_arrival_date_updated",
    "treasury.outbound_transfer.failed",
    "treasury.outbound_transfer.posted",
    "treasury.outbound_transfer.returned",
    "treasury.outbound_transfer.tracking_details_updated",
    "treasury.received_credit.created",
    "treasury.received_credit.failed",
    "treasury.received_credit.succeeded",
    "treasury.received_debit.created",
)

_SUBSCRIPTION_TABLES = ("subscriptions", "subscription_items", "subscription_history", "prices")
_INVOICE_TABLES = ("invoices", "invoice_lines")

#: Object type (``data.object.object``) -> canonical tables its versions feed.
OBJECT_TABLES: dict[str, tuple[str, ...]] = {
    "customer": ("accounts",),
    "subscription": _SUBSCRIPTION_TABLES,
    "invoice": _INVOICE_TABLES,
    "price": ("prices",),
    "plan": ("prices",),
    "charge": ("payment_attempts", "refunds"),
    "refund": ("refunds",),
    "dispute": ("disputes",),
}

#: Handled event type -> the object type its ``data.object`` must be.
HANDLED: dict[str, str] = {
    **{f"customer.{a}": "customer" for a in ("created", "updated", "deleted")},
    **{
        f"customer.subscription.{a}": "subscription"
        for a in (
            "created",
            "updated",
            "deleted",
            "paused",
            "resumed",
            "pending_update_applied",
            "pending_update_expired",
            "trial_will_end",
        )
    },
    **{
        f"invoice.{a}": "invoice"
        for a in (
            "created",
            "deleted",
            "finalization_failed",
            "finalized",
            "marked_uncollectible",
            "overdue",
            "overpaid",
            "paid",
            "payment_action_required",
            "payment_attempt_required",
            "payment_failed",
            "payment_succeeded",
            "sent",
            "updated",
            "voided",
            "will_be_due",
        )
    },
    **{f"price.{a}": "price" for a in ("created", "updated", "deleted")},
    **{f"plan.{a}": "plan" for a in ("created", "updated", "deleted")},
    **{
        f"charge.{a}": "charge"
        for a in ("captured", "expired", "failed", "pending", "refunded", "succeeded", "updated")
    },
    **{
        f"charge.dispute.{a}": "dispute"
        for a in ("closed", "created", "funds_reinstated", "funds_withdrawn", "updated")
    },
    "charge.refund.updated": "refund",
    **{f"refund.{a}": "refund" for a in ("created", "failed", "updated")},
}

#: Event types whose object is gone afterwards (a ``deleted`` version).
DELETING: frozenset[str] = frozenset(t for t in HANDLED if t.endswith(".deleted"))

#: Why the other types are ignored: longest matching prefix wins.
IGNORED_REASONS: dict[str, str] = {
    "account.": "Connect platform accounts, not billing customers",
    "application_fee.": "Connect platform fees are not subscription revenue",
    "apps.": "Stripe Apps installs carry no billing facts",
    "balance.": "balance movements are treasury, not billing",
    "balance_settings.": "account settings",
    "billing.alert.": "usage alerts are notifications; usage arrives as usage data",
    "billing.credit_balance_transaction.": "billing credits are not modelled yet",
    "billing.credit_grant.": "billing credits are not modelled yet",
    "billing.meter.": "meter configuration, not usage; usage arrives as usage data",
    "billing_portal.": "customer portal configuration and sessions",
    "capability.": "Connect capabilities",
    "cash_balance.": "customer cash balances are not modelled",
    "charge.dispute.": "",  # handled (listed so the prefix below does not claim them)
    "checkout.session.": "checkout sessions lead to subscriptions and invoices, which are handled",
    "climate.": "Stripe Climate orders",
    "coupon.": "coupons arrive embedded in the subscription's discount",
    "credit_note.": "credit notes are not modelled yet (invoice totals already reflect them)",
    "customer.discount.": "discounts arrive embedded in subscription versions",
    "customer.source.": "payment sources; card brand and last four arrive on charges",
    "customer.tax_id.": "tax ids are not used by the warehouse",
    "customer_cash_balance_transaction.": "customer cash balances are not modelled",
    "entitlements.": "feature entitlements",
    "file.": "uploaded files",
    "financial_connections.": "bank account data access (Financial Connections)",
    "identity.": "identity verification",
    "invoice.upcoming": "a preview of a future invoice, without an id; the real invoice follows",
    "invoice_payment.": "invoice-payment links; charges carry the invoice or payment intent",
    "invoiceitem.": "pending invoice items reach the warehouse as invoice lines",
    "issuing_": "Stripe Issuing (cards the business issues), not billing",
    "mandate.": "payment mandates",
    "payment_intent.": "payment intents; each attempt arrives as a charge",
    "payment_link.": "payment links",
    "payment_method.": "payment methods; card brand and last four arrive on charges",
    "payout.": "payouts to the business's bank account",
    "person.": "Connect account persons",
    "product.": "products; prices carry the product id",
    "promotion_code.": "promotion codes arrive embedded in discounts",
    "quote.": "quotes become subscriptions and invoices, which are handled",
    "radar.": "fraud warnings; disputes are handled",
    "refund.": "",  # handled
    "reporting.": "Stripe reporting runs",
    "reserve.": "balance reserves",
    "review.": "Radar reviews",
    "setup_intent.": "card setup flows",
    "sigma.": "Sigma query runs",
    "source.": "legacy Sources API objects",
    "subscription_schedule.": "schedules act through subscription events, which are handled",
    "tax.": "tax settings",
    "tax_rate.": "tax rates; invoices carry their tax amounts",
    "terminal.": "in-person payment readers",
    "test_helpers.": "test clocks",
    "three_d_secure.": "3-D Secure authentication steps; the charge outcome is handled",
    "topup.": "balance top-ups",
    "transfer.": "Connect transfers",
    "treasury.": "Stripe Treasury",
}

#: Objects received without an event envelope: ``<object>.snapshot`` is handled for these.
SNAPSHOT_SUFFIX = ".snapshot"


def ignored_reason(event_type: str) -> str | None:
    """The reason ``event_type`` is ignored, or ``None`` when it is handled or unknown."""
    if event_type in HANDLED or event_type not in _V1:
        return None
    best = ""
    for prefix in IGNORED_REASONS:
        if event_type.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return IGNORED_REASONS.get(best) or "not used by the warehouse"


def expected_object(event_type: str) -> str | None:
    """The object type a handled event carries (``<object>.snapshot`` -> ``<object>``)."""
    if event_type.endswith(SNAPSHOT_SUFFIX):
        obj = event_type[: -len(SNAPSHOT_SUFFIX)]
        return obj if obj in OBJECT_TABLES else None
    return HANDLED.get(event_type)


def disposition(event_type: str) -> Disposition:
    """``handled``, ``ignored`` (a known type the warehouse does not use) or ``unknown``."""
    if expected_object(event_type) is not None:
        return "handled"
    if event_type in _V1 or event_type.endswith(SNAPSHOT_SUFFIX):
        return "ignored"
    return "unknown"


def registry() -> pd.DataFrame:
    """Every known v1 type with its disposition, the tables it feeds and why if ignored.

    Returns:
        Columns ``type``, ``disposition``, ``object_type``, ``tables``, ``reason``.
    """
    rows = []
    for t in STRIPE_V1_EVENT_TYPES:
        obj = HANDLED.get(t)
        rows.append(
            {
                "type": t,
                "disposition": disposition(t),
                "object_type": obj,
                "tables": ", ".join(OBJECT_TABLES[obj]) if obj else "",
                "reason": ignored_reason(t) or "",
            }
        )
    return pd.DataFrame(rows)


_V1 = frozenset(STRIPE_V1_EVENT_TYPES)
