"""Billing rules with exact explanations, written once as SQL over named relations.

Each :class:`Rule` is one SQL query over the canonical tables. The query never names a
table directly: it reads ``{invoices}``, ``{invoice_lines}``, ``{prices}``, ... (the
*context*: everything the warehouse knows) and ``{target_invoices}``,
``{target_subscriptions}``, ``{target_refunds}`` (the objects to check). A
:class:`Relations` fills those names in:

* batch: the targets are the whole tables (or the objects created in a period);
* real time (:mod:`workbench.anomalies.realtime`): the targets are one invoice, its
  subscription and its refunds, and the context may also hold a Stripe payload that
  has not been loaded yet.

So the very same query decides whether an invoice is a double bill when the whole
warehouse is scanned and when one ``invoice.finalized`` event arrives.

Each query returns ``object_id``, ``account_id``, ``currency``, ``amount_at_stake``
(minor units), ``severity``, ``suggested_action`` and the numbers its explanation
template quotes; :func:`run_rules` turns the rows into a findings frame.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from typing import Any

import pandas as pd

from workbench.anomalies.findings import empty_findings, finding_id, rank_findings, utc_now
from workbench.timeutil import utc_time

log = logging.getLogger(__name__)

#: Subscription statuses in which a subscription bills (or is about to).
LIVE_STATUSES: tuple[str, ...] = ("trialing", "active", "past_due")


@dataclass(frozen=True)
class RuleConfig:
    """Thresholds of the rules (the notebook exposes them as parameters).

    Attributes:
        amount_tolerance: Minor units a non-proration line may differ from
            ``unit_amount × quantity`` before it counts as a wrong amount (rounding of
            decimal unit amounts).
        amount_rel_tolerance: The same tolerance as a share of the expected amount; the
            larger of the two applies.
        total_tolerance: Minor units an invoice total may differ from
            ``lines − discounts + tax``.
        allow_inclusive_tax: Accept ``total == lines − discounts`` when the invoice has tax
            (tax included in the line amounts, as Stripe does for inclusive tax rates).
        period_tolerance_days: Days a line's service period may differ from the price's
            billing interval (month-end anchors shift periods by up to 3 days).
        min_overlap_hours: Hours two subscriptions to the same price must have been live
            together to count as duplicates (two that are both live now always count).
        critical_amount: A ``high`` finding with at least this much at stake (minor
            units) becomes ``critical``.
    """

    amount_tolerance: int = 1
    amount_rel_tolerance: float = 0.0
    total_tolerance: int = 0
    allow_inclusive_tax: bool = True
    period_tolerance_days: float = 3.0
    min_overlap_hours: float = 1.0
    critical_amount: int = 100_000

    def params(self) -> dict[str, Any]:
        """The thresholds as SQL parameters."""
        return asdict(self)


@dataclass(frozen=True)
class Relations:
    """SQL relations (table names or parenthesised subqueries) the rule queries read.

    The defaults check every object in the warehouse against the warehouse.
    """

    invoices: str = "invoices"
    invoice_lines: str = "invoice_lines"
    prices: str = "prices"
    subscriptions: str = "subscriptions"
    subscription_items: str = "subscription_items"
    subscription_history: str = "subscription_history"
    payment_attempts: str = "payment_attempts"
    refunds: str = "refunds"
    accounts: str = "accounts"
    target_invoices: str = "invoices"
    target_subscriptions: str = (
        "(SELECT subscription_id, account_id FROM subscriptions"
        " UNION SELECT subscription_id, account_id FROM subscription_history)"
    )
    target_refunds: str = "refunds"

    def mapping(self) -> dict[str, str]:
        """Placeholder name -> relation, plus ``invoice_refunds`` (refunds per invoice)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["invoice_refunds"] = _INVOICE_REFUNDS.format(**out)
        return out

    def render(self, sql: str) -> str:
        """``sql`` with every ``{placeholder}`` filled in."""
        return sql.format(**self.mapping())


@dataclass(frozen=True)
class Rule:
    """One billing rule.

    Attributes:
        name: Rule name, used in ``finding_id`` and the ``rule`` column.
        anomaly_type: The kind of error (matches the simulator's labels where it has one).
        object_type: What a finding points at: ``invoice``, ``subscription`` or ``refund``.
        title: One line for people.
        sql: The query, with ``{relation}`` placeholders and ``$threshold`` parameters.
        explanation: A :meth:`str.format` template over the query's columns.
    """

    name: str
    anomaly_type: str
    object_type: str
    title: str
    sql: str
    explanation: str

    def render(self, relations: Relations) -> str:
        """The query with the relation names filled in."""
        return relations.render(self.sql)

    def parameters(self, config: RuleConfig) -> dict[str, Any]:
        """The thresholds this query uses (DuckDB refuses unused named parameters)."""
        used = set(re.findall(r"\$([a-z_]+)", self.sql))
        return {k: v for k, v in config.params().items() if k in used}


# Refunds per invoice (a refund names its charge; the charge names its invoice).
_INVOICE_REFUNDS = """
    SELECT coalesce(r.invoice_id, p.invoice_id) AS invoice_id, sum(r.amount) AS refunded
    FROM {refunds} r LEFT JOIN {payment_attempts} p ON p.attempt_id = r.charge_id
    WHERE coalesce(r.status, 'succeeded') NOT IN ('failed', 'canceled')
    GROUP BY 1
"""

DUPLICATE_INVOICE = Rule(
    name="duplicate_invoice",
    anomaly_type="duplicate_invoice",
    object_type="invoice",
    title="Duplicate invoice: same account, subscription, amount, lines and service period as an earlier one",
    sql="""
WITH scope AS (SELECT DISTINCT account_id FROM {target_invoices}),
line_period AS (
    SELECT l.invoice_id, min(l.period_start) AS ps, max(l.period_end) AS pe,
           bool_or(coalesce(l.proration, false)) AS proration,
           string_agg(concat_ws('|', coalesce(l.price_id, ''), coalesce(CAST(l.quantity AS VARCHAR), ''),
                                CAST(l.amount AS VARCHAR)), ';'
                      ORDER BY l.price_id, l.quantity, l.amount) AS line_sig
    FROM {invoice_lines} l
    WHERE l.invoice_id IN (SELECT invoice_id FROM {invoices} WHERE account_id IN (SELECT account_id FROM scope))
    GROUP BY 1
),
sig AS (
    SELECT i.invoice_id, i.account_id, coalesce(i.subscription_id, '') AS sub_key, i.currency,
           i.total, i.subtotal, i.created, coalesce(i.status, 'open') AS status,
           coalesce(i.amount_paid, 0) AS amount_paid,
           coalesce(i.amount_remaining, i.total) AS amount_remaining,
           date_trunc('day', coalesce(lp.ps, i.period_start) AT TIME ZONE 'UTC') AS ps,
           date_trunc('day', coalesce(lp.pe, i.period_end) AT TIME ZONE 'UTC') AS pe,
           coalesce(lp.proration, false) AS proration, lp.line_sig
    FROM {invoices} i LEFT JOIN line_period lp USING (invoice_id)
    WHERE i.account_id IN (SELECT account_id FROM scope)
      AND coalesce(i.status, 'open') NOT IN ('void', 'draft') AND i.total > 0
),
pairs AS (
    SELECT t.*, o.invoice_id AS original_id,
           row_number() OVER (PARTITION BY t.invoice_id ORDER BY o.created, o.invoice_id) AS k,
           count(*) OVER (PARTITION BY t.invoice_id) AS n_earlier
    FROM sig t JOIN sig o
      ON o.account_id = t.account_id AND o.sub_key = t.sub_key AND o.currency = t.currency
     AND o.ps = t.ps AND o.pe = t.pe AND o.proration = t.proration
     AND (o.total = t.total OR o.subtotal = t.subtotal)
     AND (o.line_sig IS NULL OR t.line_sig IS NULL OR o.line_sig = t.line_sig)
     AND (o.created < t.created OR (o.created = t.created AND o.invoice_id < t.invoice_id))
    WHERE t.invoice_id IN (SELECT invoice_id FROM {target_invoices})
),
refunded AS ({invoice_refunds})
SELECT p.invoice_id AS object_id, p.account_id, p.currency, p.original_id, p.n_earlier,
       p.total, p.status, p.amount_paid, coalesce(r.refunded, 0) AS refunded,
       strftime(p.ps, '%Y-%m-%d') AS period_from, strftime(p.pe, '%Y-%m-%d') AS period_to,
       CASE WHEN p.amount_paid > 0 THEN greatest(p.amount_paid - coalesce(r.refunded, 0), 0)
            ELSE p.amount_remaining END AS amount_at_stake,
       CASE WHEN p.amount_paid > 0 AND p.amount_paid > coalesce(r.refunded, 0) THEN 'refund'
            WHEN p.amount_paid = 0 AND p.status = 'open' THEN 'void'
            ELSE 'review' END AS suggested_action,
       CASE WHEN p.amount_paid > 0 AND p.amount_paid > coalesce(r.refunded, 0) THEN 'critical'
            WHEN p.amount_paid = 0 AND p.status = 'open' THEN 'high'
            WHEN p.amount_paid = 0 THEN 'medium'
            ELSE 'low' END AS severity
FROM pairs p LEFT JOIN refunded r ON r.invoice_id = p.invoice_id
WHERE p.k = 1
""",
    explanation=(
        "invoice {object_id} repeats invoice {original_id} for account {account_id}: same subscription, "
        "total {total:,} {currency}, service period {period_from} to {period_to} "
        "({n_earlier} earlier invoice(s) match); status {status}, paid {amount_paid:,}, refunded {refunded:,}"
    ),
)

DUPLICATE_SUBSCRIPTION = Rule(
    name="duplicate_subscription",
    anomaly_type="duplicate_subscription",
    object_type="subscription",
    title="Duplicate subscription: two subscriptions of one account live on the same price at once",
    sql="""
WITH scope AS (SELECT DISTINCT account_id FROM {target_subscriptions}),
live AS (
    SELECT h.subscription_id, h.account_id, h.price_id, h.quantity,
           h.valid_from AS t0, h.valid_to AS t1
    FROM {subscription_history} h
    WHERE h.status IN ('trialing', 'active', 'past_due') AND h.price_id IS NOT NULL
      AND h.account_id IN (SELECT account_id FROM scope)
    UNION ALL
    SELECT s.subscription_id, s.account_id, it.price_id, it.quantity,
           coalesce(s.start_date, s.created, it.created) AS t0, NULL::TIMESTAMPTZ AS t1
    FROM {subscriptions} s JOIN {subscription_items} it USING (subscription_id)
    WHERE s.status IN ('trialing', 'active', 'past_due') AND NOT coalesce(it.deleted, false)
      AND s.account_id IN (SELECT account_id FROM scope)
),
born AS (
    SELECT l.subscription_id, coalesce(min(s.created), min(l.t0)) AS created
    FROM live l LEFT JOIN {subscriptions} s USING (subscription_id)
    GROUP BY 1
),
pairs AS (
    SELECT a.subscription_id AS dup_id, b.subscription_id AS original_id, a.account_id, a.price_id,
           a.quantity, greatest(a.t0, b.t0) AS o0, least(a.t1, b.t1) AS o1,
           a.t1 IS NULL AND b.t1 IS NULL AS still_live
    FROM live a
    JOIN live b ON b.account_id = a.account_id AND b.price_id = a.price_id
               AND b.subscription_id <> a.subscription_id
    JOIN born ba ON ba.subscription_id = a.subscription_id
    JOIN born bb ON bb.subscription_id = b.subscription_id
    WHERE (bb.created < ba.created OR (bb.created = ba.created AND b.subscription_id < a.subscription_id))
      AND a.subscription_id IN (SELECT subscription_id FROM {target_subscriptions})
      AND (b.t1 IS NULL OR a.t0 < b.t1) AND (a.t1 IS NULL OR b.t0 < a.t1)
      AND ((a.t1 IS NULL AND b.t1 IS NULL)
           OR epoch(least(a.t1, b.t1)) - epoch(greatest(a.t0, b.t0)) >= $min_overlap_hours * 3600)
),
dup AS (
    SELECT dup_id, account_id,
           arg_min(original_id, o0) AS original_id, arg_min(price_id, o0) AS price_id,
           max(quantity) AS quantity, min(o0) AS o0, max(o1) AS o1, bool_or(still_live) AS still_live
    FROM pairs GROUP BY dup_id, account_id
),
billed AS (
    SELECT i.subscription_id, count(*) AS n_invoices, sum(coalesce(i.amount_paid, 0)) AS paid,
           sum(CASE WHEN i.status = 'open' THEN coalesce(i.amount_remaining, i.total) ELSE 0 END) AS open_amount,
           sum(coalesce(r.refunded, 0)) AS refunded, min(i.currency) AS currency
    FROM {invoices} i LEFT JOIN ({invoice_refunds}) r USING (invoice_id)
    WHERE i.subscription_id IN (SELECT dup_id FROM dup) AND coalesce(i.status, 'open') NOT IN ('void', 'draft')
    GROUP BY 1
)
SELECT d.dup_id AS object_id, d.account_id, d.original_id, d.price_id, coalesce(d.quantity, 1) AS quantity,
       coalesce(b.currency, pr.currency, s.currency) AS currency,
       coalesce(b.n_invoices, 0) AS n_invoices, coalesce(b.paid, 0) AS paid,
       coalesce(b.refunded, 0) AS refunded, coalesce(b.open_amount, 0) AS open_amount,
       strftime(d.o0 AT TIME ZONE 'UTC', '%Y-%m-%d') AS overlap_from,
       CASE WHEN d.still_live THEN 'and both are still live'
            ELSE 'until ' || strftime(d.o1 AT TIME ZONE 'UTC', '%Y-%m-%d') END AS overlap_until,
       CASE WHEN coalesce(b.paid, 0) - coalesce(b.refunded, 0) > 0 THEN coalesce(b.paid, 0) - coalesce(b.refunded, 0)
            WHEN coalesce(b.open_amount, 0) > 0 THEN b.open_amount
            WHEN d.still_live THEN coalesce(pr.unit_amount * coalesce(d.quantity, 1), 0)
            ELSE 0 END AS amount_at_stake,
       CASE WHEN coalesce(b.paid, 0) - coalesce(b.refunded, 0) > 0 THEN 'refund'
            WHEN coalesce(b.open_amount, 0) > 0 THEN 'void'
            ELSE 'review' END AS suggested_action,
       CASE WHEN coalesce(b.paid, 0) - coalesce(b.refunded, 0) > 0 THEN 'critical'
            WHEN d.still_live OR coalesce(b.open_amount, 0) > 0 THEN 'high'
            ELSE 'low' END AS severity
FROM dup d
LEFT JOIN billed b ON b.subscription_id = d.dup_id
LEFT JOIN {prices} pr ON pr.price_id = d.price_id
LEFT JOIN {subscriptions} s ON s.subscription_id = d.dup_id
""",
    explanation=(
        "subscription {object_id} duplicates {original_id}: both bill price {price_id} (quantity {quantity:,}) "
        "to account {account_id} and were live together from {overlap_from} {overlap_until}; "
        "the duplicate has {n_invoices} invoice(s), paid {paid:,}, refunded {refunded:,}, open {open_amount:,} {currency}"
    ),
)

LINE_TOTAL_MISMATCH = Rule(
    name="line_total_mismatch",
    anomaly_type="line_total_mismatch",
    object_type="invoice",
    title="Invoice total differs from its lines minus discounts plus tax",
    sql="""
WITH lines AS (
    SELECT invoice_id, sum(amount) AS lines, sum(coalesce(discount_amount, 0)) AS line_discounts,
           count(*) AS n_lines
    FROM {invoice_lines}
    WHERE invoice_id IN (SELECT invoice_id FROM {target_invoices})
    GROUP BY 1
),
checked AS (
    SELECT t.invoice_id, t.account_id, t.currency, coalesce(t.status, 'open') AS status, t.total,
           l.lines, l.n_lines, coalesce(t.subtotal, l.lines) AS subtotal,
           coalesce(t.total_discount, l.line_discounts, 0) AS discounts, coalesce(t.tax, 0) AS tax,
           coalesce(t.amount_paid, 0) AS amount_paid
    FROM {target_invoices} t JOIN lines l USING (invoice_id)
    WHERE coalesce(t.status, 'open') <> 'draft' AND t.total IS NOT NULL
),
diffs AS (
    SELECT *, lines - discounts + tax AS expected, total - (lines - discounts + tax) AS diff FROM checked
)
SELECT invoice_id AS object_id, account_id, currency, status, total, lines, subtotal, discounts, tax,
       expected, diff, n_lines,
       CASE WHEN subtotal <> lines THEN '; the invoice states subtotal ' || format('{{:,}}', subtotal)
                 || ' but its ' || n_lines || ' line(s) add up to ' || format('{{:,}}', lines)
            ELSE '' END AS subtotal_note,
       abs(diff) AS amount_at_stake,
       CASE WHEN diff < 0 OR status = 'void' THEN 'review'
            WHEN amount_paid > 0 THEN 'refund'
            WHEN status = 'open' THEN 'credit'
            ELSE 'review' END AS suggested_action,
       CASE WHEN status = 'void' THEN 'low' WHEN diff > 0 THEN 'high' ELSE 'medium' END AS severity
FROM diffs
WHERE abs(diff) > $total_tolerance
  AND NOT ($allow_inclusive_tax AND tax <> 0 AND diff = -tax)
""",
    explanation=(
        "invoice {object_id} total {total:,} ≠ lines {lines:,} − discounts {discounts:,} + tax {tax:,} "
        "= {expected:,} (difference {diff:,} {currency}){subtotal_note}"
    ),
)

WRONG_AMOUNT = Rule(
    name="amount_vs_price",
    anomaly_type="wrong_amount",
    object_type="invoice",
    title="A line's amount is not its price's unit amount times its quantity",
    sql="""
WITH checked AS (
    SELECT l.invoice_id, l.line_id, l.price_id, l.amount, l.quantity, p.unit_amount,
           p.unit_amount * l.quantity AS expected, l.amount - p.unit_amount * l.quantity AS diff,
           t.account_id, t.currency, coalesce(t.status, 'open') AS status,
           coalesce(t.amount_paid, 0) AS amount_paid
    FROM {invoice_lines} l
    JOIN {target_invoices} t USING (invoice_id)
    JOIN {prices} p ON p.price_id = l.price_id
    LEFT JOIN {subscriptions} s ON s.subscription_id = coalesce(l.subscription_id, t.subscription_id)
    WHERE NOT coalesce(l.proration, false) AND p.unit_amount IS NOT NULL
      AND coalesce(p.billing_scheme, 'per_unit') = 'per_unit' AND l.quantity IS NOT NULL
      AND p.currency = l.currency AND coalesce(t.status, 'open') <> 'draft'
      AND NOT (l.amount = 0 AND (
            (s.trial_start IS NOT NULL AND l.period_start >= s.trial_start AND l.period_start < s.trial_end)
            OR (t.billing_reason = 'subscription_create' AND t.total = 0)))
),
bad AS (
    SELECT * FROM checked
    WHERE abs(diff) > greatest($amount_tolerance, $amount_rel_tolerance * abs(expected))
)
SELECT invoice_id AS object_id, any_value(account_id) AS account_id, any_value(currency) AS currency,
       any_value(status) AS status, count(*) AS n_bad,
       arg_max(line_id, abs(diff)) AS line_id, arg_max(price_id, abs(diff)) AS price_id,
       arg_max(amount, abs(diff)) AS amount, arg_max(quantity, abs(diff)) AS quantity,
       arg_max(unit_amount, abs(diff)) AS unit_amount, arg_max(expected, abs(diff)) AS expected,
       arg_max(diff, abs(diff)) AS diff, sum(diff) AS net_diff,
       CASE WHEN sum(diff) > 0 THEN sum(diff) ELSE sum(abs(diff)) END AS amount_at_stake,
       CASE WHEN sum(diff) <= 0 OR any_value(status) = 'void' THEN 'review'
            WHEN any_value(amount_paid) > 0 THEN 'refund'
            WHEN any_value(status) = 'open' THEN 'credit'
            ELSE 'review' END AS suggested_action,
       CASE WHEN any_value(status) = 'void' THEN 'low' WHEN sum(diff) > 0 THEN 'high' ELSE 'medium' END AS severity
FROM bad GROUP BY invoice_id
""",
    explanation=(
        "invoice {object_id} line {line_id} bills {amount:,} {currency} for quantity {quantity:,} of price "
        "{price_id} at {unit_amount:,} each = {expected:,} (difference {diff:,}; {n_bad} line(s) off, "
        "net {net_diff:,})"
    ),
)

REFUND_EXCEEDS_PAYMENT = Rule(
    name="refund_exceeds_payment",
    anomaly_type="refund_exceeds_payment",
    object_type="refund",
    title="Refunds on a charge add up to more than was paid",
    sql="""
WITH scope AS (SELECT DISTINCT coalesce(charge_id, invoice_id) AS k FROM {target_refunds}),
r AS (
    SELECT r.refund_id, coalesce(r.charge_id, '') AS charge_id,
           coalesce(r.invoice_id, p.invoice_id) AS invoice_id,
           coalesce(r.account_id, p.account_id, i.account_id) AS account_id,
           r.amount, r.currency, r.created,
           CASE WHEN p.attempt_id IS NOT NULL
                THEN CASE WHEN p.status = 'succeeded' THEN p.amount ELSE 0 END
                ELSE i.amount_paid END AS paid,
           CASE WHEN p.attempt_id IS NOT NULL THEN 'charge ' || p.attempt_id
                ELSE 'invoice ' || i.invoice_id END AS paid_on,
           sum(r.amount) OVER (PARTITION BY coalesce(r.charge_id, r.invoice_id)
                               ORDER BY r.created, r.refund_id ROWS UNBOUNDED PRECEDING) AS refunded
    FROM {refunds} r
    LEFT JOIN {payment_attempts} p ON p.attempt_id = r.charge_id
    LEFT JOIN {invoices} i ON i.invoice_id = coalesce(r.invoice_id, p.invoice_id)
    WHERE coalesce(r.status, 'succeeded') NOT IN ('failed', 'canceled')
      AND coalesce(r.charge_id, r.invoice_id) IN (SELECT k FROM scope)
)
SELECT refund_id AS object_id, account_id, currency, amount, paid, paid_on, refunded,
       least(amount, refunded - paid) AS amount_at_stake,
       refunded - paid AS excess,
       'review' AS suggested_action, 'critical' AS severity
FROM r
WHERE paid IS NOT NULL AND refunded > paid
  AND refund_id IN (SELECT refund_id FROM {target_refunds})
""",
    explanation=(
        "refund {object_id} of {amount:,} {currency} brings refunds on {paid_on} to {refunded:,}, "
        "more than the {paid:,} paid (excess {excess:,})"
    ),
)

SERVICE_PERIOD_MISMATCH = Rule(
    name="service_period_mismatch",
    anomaly_type="service_period_mismatch",
    object_type="invoice",
    title="A line's service period does not match its price's billing interval (revenue recognition)",
    sql="""
WITH l AS (
    SELECT l.invoice_id, l.line_id, l.price_id, l.amount, p.interval, coalesce(p.interval_count, 1) AS n,
           l.period_start AT TIME ZONE 'UTC' AS ps, l.period_end AT TIME ZONE 'UTC' AS pe,
           t.created AT TIME ZONE 'UTC' AS billed_at,
           t.account_id, t.currency
    FROM {invoice_lines} l
    JOIN {target_invoices} t USING (invoice_id)
    JOIN {prices} p ON p.price_id = l.price_id
    WHERE NOT coalesce(l.proration, false) AND coalesce(p.usage_type, 'licensed') = 'licensed'
      AND p.interval IN ('day', 'week', 'month', 'year') AND l.amount <> 0
      AND l.period_start IS NOT NULL AND l.period_end IS NOT NULL
      AND coalesce(t.status, 'open') NOT IN ('draft', 'void')
),
x AS (
    SELECT *, CASE interval WHEN 'day' THEN ps + to_days(n) WHEN 'week' THEN ps + to_weeks(n)
                            WHEN 'month' THEN ps + to_months(n) ELSE ps + to_years(n) END AS expected_end
    FROM l
),
bad AS (
    SELECT *,
           round((epoch(pe) - epoch(ps)) / 86400, 1) AS days,
           round((epoch(pe) - epoch(expected_end)) / 86400, 1) AS off_days,
           round((epoch(ps) - epoch(billed_at)) / 86400, 1) AS lead_days,
           CASE WHEN pe <= ps THEN 'ends before it starts'
                WHEN abs(epoch(pe) - epoch(expected_end)) > $period_tolerance_days * 86400
                    THEN 'runs ' || round((epoch(pe) - epoch(ps)) / 86400, 1) || ' days but price '
                         || price_id || ' bills every ' || n || ' ' || interval
                         || ' (expected end ' || strftime(expected_end, '%Y-%m-%d') || ', off by '
                         || round((epoch(pe) - epoch(expected_end)) / 86400, 1) || ' days)'
                ELSE 'starts ' || round((epoch(ps) - epoch(billed_at)) / 86400, 1)
                     || ' days from the invoice date ' || strftime(billed_at, '%Y-%m-%d')
                     || ', more than one billing interval away' END AS problem
    FROM x
    WHERE pe <= ps
       OR abs(epoch(pe) - epoch(expected_end)) > $period_tolerance_days * 86400
       OR abs(epoch(ps) - epoch(billed_at)) > epoch(expected_end) - epoch(ps) + $period_tolerance_days * 86400
)
SELECT invoice_id AS object_id, any_value(account_id) AS account_id, any_value(currency) AS currency,
       count(*) AS n_bad, arg_max(line_id, abs(amount)) AS line_id,
       arg_max(strftime(ps, '%Y-%m-%d'), abs(amount)) AS period_from,
       arg_max(strftime(pe, '%Y-%m-%d'), abs(amount)) AS period_to,
       arg_max(problem, abs(amount)) AS problem, arg_max(amount, abs(amount)) AS amount,
       sum(abs(amount)) AS amount_at_stake, 'review' AS suggested_action, 'medium' AS severity
FROM bad GROUP BY invoice_id
""",
    explanation=(
        "invoice {object_id} line {line_id} ({amount:,} {currency}) covers {period_from} to {period_to} and "
        "{problem}; {n_bad} line(s) affected"
    ),
)

CURRENCY_MISMATCH = Rule(
    name="currency_mismatch",
    anomaly_type="currency_mismatch",
    object_type="invoice",
    title="Invoice currency differs from the account's currency",
    sql="""
SELECT t.invoice_id AS object_id, t.account_id, t.currency, a.currency AS account_currency,
       t.total, coalesce(t.status, 'open') AS status,
       greatest(coalesce(t.total, 0), 0) AS amount_at_stake,
       CASE WHEN coalesce(t.status, 'open') = 'open' AND coalesce(t.amount_paid, 0) = 0 THEN 'void'
            ELSE 'review' END AS suggested_action,
       CASE WHEN coalesce(t.status, 'open') = 'void' THEN 'low' ELSE 'high' END AS severity
FROM {target_invoices} t JOIN {accounts} a USING (account_id)
WHERE a.currency IS NOT NULL AND t.currency IS NOT NULL AND lower(t.currency) <> lower(a.currency)
  AND coalesce(t.status, 'open') <> 'draft'
""",
    explanation=(
        "invoice {object_id} is in {currency} but account {account_id} bills in {account_currency} "
        "(total {total:,} {currency}, status {status})"
    ),
)

#: Every rule, in the order they run.
RULES: tuple[Rule, ...] = (
    DUPLICATE_INVOICE,
    DUPLICATE_SUBSCRIPTION,
    LINE_TOTAL_MISMATCH,
    WRONG_AMOUNT,
    REFUND_EXCEEDS_PAYMENT,
    SERVICE_PERIOD_MISMATCH,
    CURRENCY_MISMATCH,
)

RULES_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}


def sql_literal(value: str | datetime | date | pd.Timestamp) -> str:
    """A SQL literal for a string or a time (times become UTC ``TIMESTAMPTZ`` literals)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    ts = utc_time(value)
    return f"TIMESTAMPTZ '{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def period_relations(*, start: Any = None, end: Any = None) -> Relations:
    """Relations that check the objects created in ``[start, end)`` against the whole warehouse.

    Args:
        start: First instant checked (inclusive); None for no lower bound.
        end: Instant after the last one checked (exclusive); None for no upper bound.

    Returns:
        A :class:`Relations` whose targets are invoices, subscriptions and refunds created
        in the window; the context stays the whole warehouse (a duplicate of an invoice
        from before the window is still found).
    """
    if start is None and end is None:
        return Relations()
    conds = []
    if start is not None:
        conds.append(f"created >= {sql_literal(start)}")
    if end is not None:
        conds.append(f"created < {sql_literal(end)}")
    where = " AND ".join(conds)
    subs = (
        "(SELECT subscription_id, account_id FROM (SELECT subscription_id, account_id, created FROM subscriptions"
        " UNION ALL SELECT subscription_id, account_id, min(valid_from) FROM subscription_history"
        f" GROUP BY ALL) WHERE {where} GROUP BY ALL)"
    )
    return Relations(
        target_invoices=f"(SELECT * FROM invoices WHERE {where})",
        target_subscriptions=subs,
        target_refunds=f"(SELECT * FROM refunds WHERE {where})",
    )


class _Template(string.Formatter):
    """``str.format`` that prints a missing number as 0 and a missing text as '?'."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "0" if format_spec.endswith((",", "d")) else "?"
        if format_spec == "," and isinstance(value, float) and value.is_integer():
            value = int(value)
        return super().format_field(value, format_spec)


_FORMATTER = _Template()


def _severity(severity: str, amount: int, config: RuleConfig) -> str:
    if severity == "high" and amount >= config.critical_amount:
        return "critical"
    return severity


def run_rule(
    con: Any,
    rule: Rule,
    *,
    relations: Relations | None = None,
    config: RuleConfig | None = None,
    detected_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Run one rule and return its findings.

    Args:
        con: A DuckDB connection holding the canonical tables (or the relations named).
        rule: The rule.
        relations: What to check against what (default: the whole warehouse).
        config: Thresholds.
        detected_at: Stamp for ``detected_at`` (default: now).

    Returns:
        A findings frame (``FINDING_COLUMNS``), one row per flagged object, score 1.0.
    """
    relations = relations or Relations()
    config = config or RuleConfig()
    detected_at = detected_at if detected_at is not None else utc_now()
    cur = con.execute(rule.render(relations), rule.parameters(config))
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if not rows:
        return empty_findings()
    out = []
    for row in rows:
        amount = int(row["amount_at_stake"] or 0)
        out.append(
            {
                "finding_id": finding_id(rule.name, rule.object_type, row["object_id"]),
                "rule": rule.name,
                "anomaly_type": rule.anomaly_type,
                "object_type": rule.object_type,
                "object_id": row["object_id"],
                "account_id": row["account_id"],
                "severity": _severity(row["severity"], amount, config),
                "amount_at_stake": amount,
                "currency": row["currency"],
                "explanation": _FORMATTER.format(rule.explanation, **row),
                "suggested_action": row["suggested_action"],
                "detected_at": detected_at,
                "score": 1.0,
            }
        )
    log.debug("rule %s: %d finding(s)", rule.name, len(out))
    return pd.DataFrame(out)


def run_rules(
    con: Any,
    *,
    relations: Relations | None = None,
    config: RuleConfig | None = None,
    rules: Iterable[Rule | str] | None = None,
    detected_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Run rules and return their findings in one ranked frame.

    Args:
        con: A DuckDB connection holding the canonical tables.
        relations: What to check against what (default: the whole warehouse).
        config: Thresholds.
        rules: Rules or rule names to run (default: :data:`RULES`).
        detected_at: Stamp for ``detected_at`` (default: now, the same for every row).

    Returns:
        A findings frame sorted by severity, amount at stake and id.
    """
    chosen: Sequence[Rule] = (
        RULES if rules is None else [RULES_BY_NAME[r] if isinstance(r, str) else r for r in rules]
    )
    detected_at = detected_at if detected_at is not None else utc_now()
    frames = [
        run_rule(con, rule, relations=relations, config=config, detected_at=detected_at)
        for rule in chosen
    ]
    return rank_findings(*frames)


def detect_rules(
    con: Any,
    *,
    start: Any = None,
    end: Any = None,
    config: RuleConfig | None = None,
    rules: Iterable[Rule | str] | None = None,
    detected_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Run every rule over the warehouse, checking the objects created in ``[start, end)``.

    Args:
        con: A DuckDB connection holding the canonical tables.
        start: First instant whose objects are checked (None: from the beginning).
        end: End of the window, exclusive (None: up to now).
        config: Thresholds.
        rules: Rules or names to run (default: all).
        detected_at: Stamp for ``detected_at``.

    Returns:
        A ranked findings frame.
    """
    return run_rules(
        con,
        relations=period_relations(start=start, end=end),
        config=config,
        rules=rules,
        detected_at=detected_at,
    )
