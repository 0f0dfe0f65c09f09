"""Feature declarations, as data: every feature is declared once here.

A feature names its entity (``account_id``, ``subscription_id`` or ``invoice_id``), the
*source* it reads (a small SQL view over the canonical warehouse tables, declared below),
an aggregation, an optional window and offset, a time-to-live for serving, a dtype, a
description, an owner and a version. :mod:`workbench.features.offline` compiles these
declarations into set-based DuckDB SQL; :mod:`workbench.features.serving` turns them into
a Feast repository. Nothing else defines what a feature means.

Point-in-time rules (what "as of ``t``" means):

* every source row carries ``ts_us``, the instant (epoch microseconds, UTC) from which it
  is known: an event's ``created``; for daily tables (``usage``, ``crm_signals``) the end
  of the day, ``date + 1 day``, because a daily row summarises the whole day;
* windowed aggregations use rows with ``t - window < ts_us <= t``;
* ``latest`` uses the last row with ``ts_us <= t`` (ties broken by ``row_key``);
* interval sources (state) also carry ``valid_to_us``; a row is in force at ``t`` when
  ``ts_us <= t < valid_to_us`` (``NULL`` means still in force). Interval ends derived
  from later events (an invoice paid later, a subscription changed later) only ever
  appear in that comparison, so they cannot leak;
* ``offset_days`` evaluates the feature as of ``t - offset``.

Versions: each feature has an explicit integer ``version`` and a content
``fingerprint`` (a hash of everything that defines its values, including its source's
SQL and, for derived features, its inputs' fingerprints). ``registry.lock.json``
records both; :func:`check_registry_lock` reports a fingerprint that changed without a
version bump. After bumping, run ``python -m workbench.features.definitions --write-lock``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

ENTITIES: tuple[str, ...] = ("account_id", "subscription_id", "invoice_id")
DTYPES: tuple[str, ...] = ("int64", "float64", "string")

WINDOWED = ("count", "sum", "avg", "mean_per_day", "daily_slope")
POINT = ("latest", "since_latest", "until_latest", "since_earliest")
STATE = (
    "state_sum",
    "state_count",
    "state_max",
    "state_argmax",
    "state_count_distinct",
    "state_any",
)
AGGREGATIONS: tuple[str, ...] = (*WINDOWED, *POINT, *STATE, "derived")
DERIVED_OPS: tuple[str, ...] = ("diff", "ratio", "pct_change", "drop_pct", "le")
UNITS_US: dict[str, int] = {"days": 86_400_000_000, "hours": 3_600_000_000}

LOCK_PATH = Path(__file__).with_name("registry.lock.json")

#: A subscription item counts towards MRR (the account is "paying") when this holds.
PAYING_FILTER = "status IN ('active', 'past_due') AND licensed AND monthly_amount > 0"
#: Decline codes (``coalesce(decline_code, failure_code)``) grouped for the decline mix.
DECLINE_GROUPS: dict[str, tuple[str, ...]] = {
    "insufficient_funds": ("insufficient_funds",),
    "expired_card": ("expired_card",),
    "generic": ("generic_decline", "do_not_honor", "card_declined", "try_again_later"),
    "hard": (
        "lost_card",
        "stolen_card",
        "fraudulent",
        "pickup_card",
        "restricted_card",
        "do_not_try_again",
        "invalid_account",
        "incorrect_number",
        "security_violation",
        "card_not_supported",
    ),
}
HIGH_SEVERITIES: tuple[str, ...] = ("high", "urgent")


def _sql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


@dataclass(frozen=True)
class Source:
    """A view over canonical tables that features aggregate.

    ``sql`` is a template: ``{table}`` placeholders are replaced by the relation to read
    (the table itself, or a truncated copy in leakage checks). It must return
    ``row_key`` (a unique, deterministic tie-breaker), ``ts_us`` (BIGINT epoch µs), one
    column per entity in ``keys``, ``valid_to_us`` when ``kind == "intervals"``, and the
    value columns features use.
    """

    name: str
    kind: str  # "events" | "intervals"
    keys: tuple[str, ...]
    tables: tuple[str, ...]
    sql: str
    description: str
    #: (entity, table, predicate): rows of ``table`` failing ``predicate`` can never reach
    #: a spine key of ``entity``, so the builder may drop them before the source's own work.
    #: ``{keys}`` is the spine's key set; ``{other_table}`` names another table. An
    #: execution hint only: it never changes values, so it is not in fingerprints.
    pushdown: tuple[tuple[str, str, str], ...] = ()

    def render(self, relations: Mapping[str, str] | None = None) -> str:
        """The source's SQL with each canonical table replaced by ``relations[table]``."""
        rel = {t: (relations or {}).get(t, t) for t in self.tables}
        return self.sql.format(**rel)


_DAY_US = UNITS_US["days"]

#: Payment attempts a dispute or refund row can read its account from: only rows without an
#: account of their own, or whose account is a spine key, look the charge up.
_CHARGES = (
    "attempt_id IN (SELECT charge_id FROM {{{table}}} "
    "WHERE account_id IS NULL OR account_id IN {{keys}})"
)

#: Payment attempts with ``known_at``: when the attempt's current status became known.
#: A charge first recorded with its outcome (a card charge) is known at its creation; one
#: first recorded as pending (bank debits) is known failed or succeeded from the first
#: charge version carrying that status. Without charge versions (CSV, hand-made
#: warehouses) an attempt is known at its creation.
_ATTEMPTS = """(SELECT a0.*,
        CASE WHEN k0.final_at > k0.first_at THEN k0.final_at ELSE a0.created END AS known_at
    FROM {payment_attempts} a0 LEFT JOIN (
        SELECT v.attempt_id, min(v.version_at) AS first_at,
               min(CASE WHEN v.status = p.status THEN v.version_at END) AS final_at
        FROM {charge_versions} v JOIN {payment_attempts} p ON p.attempt_id = v.attempt_id
        GROUP BY v.attempt_id) k0 ON k0.attempt_id = a0.attempt_id)"""

#: Invoice amounts as recorded: every invoice version that carries ``amount_due`` (a credit
#: note or an edit changes it later), and for an invoice with no such version (CSV,
#: hand-made warehouses) its current amount at its creation.
_AMOUNTS = """(SELECT v.invoice_id, v.version_at AS at, v.amount_due
    FROM {invoice_versions} v WHERE v.amount_due IS NOT NULL AND v.version_at IS NOT NULL
    UNION ALL
    SELECT i.invoice_id, i.created, i.amount_due FROM {invoices} i
    WHERE i.created IS NOT NULL AND i.invoice_id NOT IN (
        SELECT invoice_id FROM {invoice_versions}
        WHERE amount_due IS NOT NULL AND invoice_id IS NOT NULL))"""

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "attempts",
            "events",
            ("account_id", "invoice_id"),
            ("payment_attempts", "charge_versions", "invoices"),
            """
WITH att AS """
            + _ATTEMPTS
            + """,
pa AS (
  SELECT attempt_id AS row_key, account_id, invoice_id, known_at AS at, status, amount,
         coalesce(decline_code, failure_code) AS decline_code, card_exp_month, card_exp_year, created
  FROM att WHERE created IS NOT NULL
  UNION ALL  -- a charge first recorded as pending was pending until its outcome was known
  SELECT attempt_id || ':pending', account_id, invoice_id, created, 'pending', amount,
         CAST(NULL AS VARCHAR), card_exp_month, card_exp_year, created
  FROM att WHERE created IS NOT NULL AND known_at > created)
SELECT pa.row_key,
       coalesce(pa.account_id, i.account_id) AS account_id,
       pa.invoice_id,
       epoch_us(pa.at) AS ts_us,
       pa.status,
       CAST(pa.amount AS DOUBLE) AS amount,
       pa.decline_code,
       CASE WHEN pa.card_exp_month BETWEEN 1 AND 12 AND pa.card_exp_year BETWEEN 1970 AND 2200
            THEN epoch_us(make_timestamp(CAST(pa.card_exp_year AS BIGINT), CAST(pa.card_exp_month AS BIGINT), 1, 0, 0, 0)
                          + INTERVAL 1 MONTH)
       END AS card_expires_us,
       CAST(date_part('day', pa.created AT TIME ZONE 'UTC') AS DOUBLE) AS day_of_month
FROM pa
LEFT JOIN {invoices} i ON i.invoice_id = pa.invoice_id""",
            "Payment attempts (charges) at the time their status became known (their "
            "creation, or for a charge first recorded as pending, the version reporting its "
            "outcome); the card expires at the first instant after its expiry month.",
            pushdown=(
                (
                    "account_id",
                    "payment_attempts",
                    "account_id IN {keys} OR invoice_id IN (SELECT invoice_id FROM {invoices} WHERE account_id IN {keys})",
                ),
                ("account_id", "invoices", "account_id IN {keys}"),
                ("invoice_id", "payment_attempts", "invoice_id IN {keys}"),
                ("invoice_id", "invoices", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "invoice_facts",
            "events",
            ("account_id", "subscription_id", "invoice_id"),
            ("invoices",),
            """
SELECT invoice_id AS row_key, invoice_id, account_id, subscription_id,
       epoch_us(created) AS ts_us,
       CAST(amount_due AS DOUBLE) AS amount_due,
       currency, billing_reason
FROM {invoices}
WHERE created IS NOT NULL""",
            "Invoices at their created time; only fields fixed at creation are used.",
            pushdown=(
                ("account_id", "invoices", "account_id IN {keys}"),
                ("subscription_id", "invoices", "subscription_id IN {keys}"),
                ("invoice_id", "invoices", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "invoice_amounts",
            "events",
            ("account_id", "invoice_id"),
            ("invoice_versions", "invoices"),
            """
SELECT a.invoice_id || ':' || CAST(epoch_us(a.at) AS VARCHAR) AS row_key, a.invoice_id,
       i.account_id, epoch_us(a.at) AS ts_us, CAST(a.amount_due AS DOUBLE) AS amount_due
FROM """
            + _AMOUNTS
            + """ a JOIN {invoices} i ON i.invoice_id = a.invoice_id""",
            "The amount due on each invoice as recorded over time (each invoice version "
            "carrying one; the current amount at creation where the warehouse has none).",
            pushdown=(
                ("account_id", "invoices", "account_id IN {keys}"),
                ("invoice_id", "invoices", "invoice_id IN {keys}"),
                ("invoice_id", "invoice_versions", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "invoice_announcements",
            "events",
            ("account_id", "invoice_id"),
            ("invoice_versions",),
            """
SELECT event_id || ':' || invoice_id AS row_key, invoice_id, account_id,
       epoch_us(version_at) AS ts_us,
       epoch_us(next_payment_attempt) AS next_attempt_us
FROM {invoice_versions}
WHERE version_at IS NOT NULL""",
            "Invoice versions at the time they were recorded, with the next automatic "
            "payment attempt each one announced (Stripe's next_payment_attempt: set when an "
            "attempt fails and a retry is scheduled, empty once none is).",
            pushdown=(
                ("account_id", "invoice_versions", "account_id IN {keys}"),
                ("invoice_id", "invoice_versions", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "invoice_payments",
            "events",
            ("account_id", "invoice_id"),
            ("invoices", "payment_attempts", "charge_versions"),
            """
WITH ok AS (
  SELECT invoice_id, min(known_at) AS succeeded_at
  FROM """
            + _ATTEMPTS
            + """ pa WHERE status = 'succeeded' AND invoice_id IS NOT NULL
  GROUP BY invoice_id)
SELECT i.invoice_id AS row_key, i.invoice_id, i.account_id,
       epoch_us(least(i.paid_at, ok.succeeded_at)) AS ts_us,
       date_diff('microsecond', i.created, least(i.paid_at, ok.succeeded_at)) / 86400e6 AS lag_days
FROM {invoices} i LEFT JOIN ok ON ok.invoice_id = i.invoice_id
WHERE least(i.paid_at, ok.succeeded_at) IS NOT NULL AND i.created IS NOT NULL""",
            "One row per paid invoice at its payment time (paid_at or first succeeded attempt, "
            "whichever is earlier); lag_days = payment time - invoice created.",
            pushdown=(
                ("account_id", "invoices", "account_id IN {keys}"),
                (
                    "account_id",
                    "payment_attempts",
                    "invoice_id IN (SELECT invoice_id FROM {invoices} WHERE account_id IN {keys})",
                ),
                ("invoice_id", "invoices", "invoice_id IN {keys}"),
                ("invoice_id", "payment_attempts", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "dunning_invoices",
            "intervals",
            ("account_id", "invoice_id"),
            ("invoices", "payment_attempts", "charge_versions", "invoice_versions"),
            """
WITH att AS """
            + _ATTEMPTS
            + """,
failed AS (
  SELECT invoice_id, min(known_at) AS first_failed_at
  FROM att WHERE status = 'failed' AND invoice_id IS NOT NULL
  GROUP BY invoice_id),
ok AS (
  SELECT invoice_id, min(known_at) AS succeeded_at
  FROM att WHERE status = 'succeeded' AND invoice_id IS NOT NULL
  GROUP BY invoice_id),
amounts AS """
            + _AMOUNTS
            + """,
known AS (  -- the amount as recorded at the first failure: the latest record by then
  SELECT f.invoice_id, a.amount_due,
         row_number() OVER (PARTITION BY f.invoice_id ORDER BY a.at DESC, a.amount_due) AS rn
  FROM failed f JOIN amounts a ON a.invoice_id = f.invoice_id AND a.at <= f.first_failed_at)
SELECT i.invoice_id AS row_key, i.invoice_id, i.account_id,
       epoch_us(f.first_failed_at) AS ts_us,
       epoch_us(least(i.paid_at, ok.succeeded_at, i.voided_at, i.marked_uncollectible_at)) AS valid_to_us,
       CAST(k.amount_due AS DOUBLE) AS amount_due
FROM {invoices} i
JOIN failed f ON f.invoice_id = i.invoice_id
LEFT JOIN known k ON k.invoice_id = i.invoice_id AND k.rn = 1
LEFT JOIN ok ON ok.invoice_id = i.invoice_id""",
            "Invoices in dunning: from their first failed attempt until paid, voided or "
            "marked uncollectible (status is never read: it is the current state).",
            pushdown=(
                ("account_id", "invoices", "account_id IN {keys}"),
                (
                    "account_id",
                    "payment_attempts",
                    "invoice_id IN (SELECT invoice_id FROM {invoices} WHERE account_id IN {keys})",
                ),
                ("invoice_id", "invoices", "invoice_id IN {keys}"),
                ("invoice_id", "payment_attempts", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "dunning_attempts",
            "intervals",
            ("account_id", "invoice_id"),
            ("invoices", "payment_attempts", "charge_versions"),
            """
WITH pa AS """
            + _ATTEMPTS
            + """,
ok AS (
  SELECT invoice_id, min(known_at) AS succeeded_at
  FROM pa WHERE status = 'succeeded' AND invoice_id IS NOT NULL
  GROUP BY invoice_id)
SELECT pa.attempt_id AS row_key, i.invoice_id, coalesce(pa.account_id, i.account_id) AS account_id,
       epoch_us(pa.known_at) AS ts_us,
       epoch_us(least(i.paid_at, ok.succeeded_at, i.voided_at, i.marked_uncollectible_at)) AS valid_to_us
FROM pa
JOIN {invoices} i ON i.invoice_id = pa.invoice_id
LEFT JOIN ok ON ok.invoice_id = i.invoice_id
WHERE pa.status = 'failed' AND pa.created IS NOT NULL""",
            "Failed attempts of invoices, in force until their invoice is paid, voided or "
            "marked uncollectible: counting them at t gives the retries so far on open invoices.",
            pushdown=(
                (
                    "account_id",
                    "payment_attempts",
                    "account_id IN {keys} OR invoice_id IN (SELECT invoice_id FROM {invoices} WHERE account_id IN {keys})",
                ),
                (
                    "account_id",
                    "invoices",
                    "account_id IN {keys} OR invoice_id IN (SELECT invoice_id FROM {payment_attempts} WHERE account_id IN {keys})",
                ),
                ("invoice_id", "invoices", "invoice_id IN {keys}"),
                ("invoice_id", "payment_attempts", "invoice_id IN {keys}"),
            ),
        ),
        Source(
            "subscription_items",
            "intervals",
            ("account_id", "subscription_id"),
            ("subscription_history", "prices"),
            """
WITH h AS (
  SELECT h.*, coalesce(p.product_id, h.price_id) AS product,
         (h.usage_type IS NULL OR h.usage_type = 'licensed') AS licensed,
         CASE h.interval WHEN 'month' THEN 1.0 WHEN 'year' THEN 12.0
                         WHEN 'week' THEN 12.0 / 52 WHEN 'day' THEN 12.0 / 365 END
           * coalesce(h.interval_count, 1) AS interval_months
  FROM {subscription_history} h LEFT JOIN {prices} p ON p.price_id = h.price_id)
SELECT event_id || ':' || subscription_id || ':' || coalesce(item_id, '') AS row_key,
       account_id, subscription_id,
       epoch_us(valid_from) AS ts_us, epoch_us(valid_to) AS valid_to_us,
       status, product, licensed, interval_months,
       CAST(coalesce(quantity, 1) AS DOUBLE) AS quantity,
       CASE WHEN licensed AND interval_months > 0
            THEN CAST(unit_amount AS DOUBLE) * coalesce(quantity, 1) / interval_months END AS monthly_amount,
       coalesce(cancel_at_period_end, false) AS cancel_at_period_end
FROM h""",
            "Subscription item versions over [valid_from, valid_to); monthly_amount is "
            "unit_amount x quantity normalised to a month (licensed items only, no discounts).",
            pushdown=(
                ("account_id", "subscription_history", "account_id IN {keys}"),
                ("subscription_id", "subscription_history", "subscription_id IN {keys}"),
            ),
        ),
        Source(
            "discounts",
            "intervals",
            ("account_id", "subscription_id"),
            ("subscription_history",),
            """
SELECT event_id || ':' || subscription_id || ':' || coalesce(item_id, '') AS row_key,
       account_id, subscription_id, status,
       epoch_us(greatest(valid_from, coalesce(discount_start, valid_from))) AS ts_us,
       epoch_us(least(valid_to, discount_end)) AS valid_to_us
FROM {subscription_history}
WHERE coupon_id IS NOT NULL""",
            "Subscription versions carrying a coupon, narrowed to [discount_start, discount_end).",
            pushdown=(
                ("account_id", "subscription_history", "account_id IN {keys}"),
                ("subscription_id", "subscription_history", "subscription_id IN {keys}"),
            ),
        ),
        Source(
            "billing_periods",
            "intervals",
            ("account_id", "subscription_id"),
            ("subscription_history",),
            """
WITH h AS (
  SELECT h.*, (h.usage_type IS NULL OR h.usage_type = 'licensed') AS licensed,
         CASE h.interval WHEN 'month' THEN 1.0 WHEN 'year' THEN 12.0
                         WHEN 'week' THEN 12.0 / 52 WHEN 'day' THEN 12.0 / 365 END
           * coalesce(h.interval_count, 1) AS interval_months
  FROM {subscription_history} h)
SELECT event_id || ':' || subscription_id || ':' || coalesce(item_id, '') AS row_key,
       account_id, subscription_id,
       epoch_us(valid_from) AS ts_us, epoch_us(valid_to) AS valid_to_us,
       status, licensed,
       CASE WHEN licensed AND interval_months > 0
            THEN CAST(unit_amount AS DOUBLE) * coalesce(quantity, 1) / interval_months END AS monthly_amount,
       epoch_us(current_period_end) AS period_end_us
FROM h""",
            "Subscription item versions over [valid_from, valid_to) with the end of their "
            "current billing period (monthly_amount as in subscription_items).",
            pushdown=(
                ("account_id", "subscription_history", "account_id IN {keys}"),
                ("subscription_id", "subscription_history", "subscription_id IN {keys}"),
            ),
        ),
        Source(
            "account_facts",
            "events",
            ("account_id",),
            ("accounts",),
            """
SELECT account_id AS row_key, account_id, epoch_us(created) AS ts_us
FROM {accounts} WHERE created IS NOT NULL""",
            "Accounts at their created time.",
            pushdown=(("account_id", "accounts", "account_id IN {keys}"),),
        ),
        Source(
            "usage_daily",
            "events",
            ("account_id",),
            ("usage",),
            f"""
SELECT account_id || ':' || CAST(date AS VARCHAR) AS row_key, account_id,
       epoch_us(CAST(date AS TIMESTAMP)) + {_DAY_US} AS ts_us,
       sum(quantity) AS quantity
FROM {{usage}}
GROUP BY account_id, date""",
            "Daily usage summed over metrics, known at the end of its day (date + 1 day).",
            pushdown=(("account_id", "usage", "account_id IN {keys}"),),
        ),
        Source(
            "crm",
            "events",
            ("account_id",),
            ("crm_signals",),
            f"""
SELECT account_id || ':' || CAST(date AS VARCHAR) AS row_key, account_id,
       epoch_us(CAST(date AS TIMESTAMP)) + {_DAY_US} AS ts_us,
       health_score, CAST(nps AS DOUBLE) AS nps,
       CAST(seats_purchased AS DOUBLE) AS seats_purchased, CAST(seats_used AS DOUBLE) AS seats_used
FROM {{crm_signals}}""",
            "CRM signals per day, known at the end of their day (date + 1 day).",
            pushdown=(("account_id", "crm_signals", "account_id IN {keys}"),),
        ),
        Source(
            "tickets",
            "intervals",
            ("account_id",),
            ("support_tickets",),
            """
SELECT ticket_id AS row_key, account_id, epoch_us(created_at) AS ts_us,
       epoch_us(resolved_at) AS valid_to_us, severity
FROM {support_tickets}""",
            "Support tickets from created_at, open until resolved_at.",
            pushdown=(("account_id", "support_tickets", "account_id IN {keys}"),),
        ),
        Source(
            "dispute_events",
            "events",
            ("account_id",),
            ("disputes", "payment_attempts"),
            """
SELECT d.dispute_id AS row_key, coalesce(d.account_id, pa.account_id) AS account_id,
       epoch_us(d.created) AS ts_us, CAST(d.amount AS DOUBLE) AS amount
FROM {disputes} d LEFT JOIN {payment_attempts} pa ON pa.attempt_id = d.charge_id
WHERE d.created IS NOT NULL""",
            "Disputes at their created time (status is never read here).",
            pushdown=(("account_id", "payment_attempts", _CHARGES.format(table="disputes")),),
        ),
        Source(
            "dispute_closures",
            "events",
            ("account_id",),
            ("disputes", "payment_attempts"),
            """
SELECT d.dispute_id AS row_key, coalesce(d.account_id, pa.account_id) AS account_id,
       epoch_us(d.closed_at) AS ts_us, d.status
FROM {disputes} d LEFT JOIN {payment_attempts} pa ON pa.attempt_id = d.charge_id
WHERE d.closed_at IS NOT NULL""",
            "Disputes at their closing time, with their final status (known once closed).",
            pushdown=(("account_id", "payment_attempts", _CHARGES.format(table="disputes")),),
        ),
        Source(
            "refund_events",
            "events",
            ("account_id",),
            ("refunds", "payment_attempts", "invoices"),
            """
SELECT r.refund_id AS row_key,
       coalesce(r.account_id, pa.account_id, i.account_id) AS account_id,
       epoch_us(r.created) AS ts_us, CAST(r.amount AS DOUBLE) AS amount
FROM {refunds} r
LEFT JOIN {payment_attempts} pa ON pa.attempt_id = r.charge_id
LEFT JOIN {invoices} i ON i.invoice_id = r.invoice_id
WHERE r.created IS NOT NULL""",
            "Refunds at their created time.",
            pushdown=(
                ("account_id", "payment_attempts", _CHARGES.format(table="refunds")),
                (
                    "account_id",
                    "invoices",
                    "invoice_id IN (SELECT invoice_id FROM {refunds} "
                    "WHERE account_id IS NULL OR account_id IN {keys})",
                ),
            ),
        ),
    )
}


@dataclass(frozen=True)
class Feature:
    """One feature's declaration.

    Attributes:
        name: Unique snake_case name (also the column name everywhere).
        entity: ``account_id``, ``subscription_id`` or ``invoice_id``.
        domain: payments | billing | usage | support | crm | disputes | invoice | subscription.
        source: A key of :data:`SOURCES`; ``None`` for derived features.
        aggregation: One of :data:`AGGREGATIONS` (see :mod:`workbench.features.offline`).
        dtype: ``int64`` (never null), ``float64`` or ``string`` (nullable).
        description: What the value means, in words.
        owner: Team answering for it.
        version: Explicit integer, bumped whenever :attr:`fingerprint` changes.
        value: SQL over the source's columns (the aggregated value).
        filter: SQL predicate over the source's columns.
        window_days: Look-back window ``(t - window, t]``; ``None`` means all history.
        offset_days: Evaluate as of ``t - offset_days``.
        order_by: For ``state_argmax``: the row with the largest value wins.
        unit: ``days`` or ``hours`` for time-difference aggregations; on ``state_argmax``
            of a time (epoch µs), the value becomes the time until it from ``t``.
        inputs: For derived features: the features they combine.
        op: For derived features: one of :data:`DERIVED_OPS`.
        constant: For ``le``: the threshold.
        ttl_hours: How old a served value may be before it is flagged stale.
    """

    name: str
    entity: str
    domain: str
    source: str | None
    aggregation: str
    dtype: str
    description: str
    owner: str
    version: int
    value: str | None = None
    filter: str | None = None
    window_days: int | None = None
    offset_days: int = 0
    order_by: str | None = None
    unit: str | None = None
    inputs: tuple[str, ...] = ()
    op: str | None = None
    constant: float | None = None
    ttl_hours: int = 24

    def semantics(self) -> dict:
        """Everything that determines this feature's values (not its prose or owner)."""
        d = asdict(self)
        for k in ("name", "domain", "description", "owner", "version"):
            d.pop(k)
        d["inputs"] = list(self.inputs)
        # whitespace in the SQL is layout, not meaning
        d["source_sql"] = " ".join(SOURCES[self.source].sql.split()) if self.source else None
        return d


def _f(
    name: str,
    entity: str,
    domain: str,
    source: str | None,
    aggregation: str,
    dtype: str,
    description: str,
    *,
    version: int = 1,
    **kw,
) -> Feature:
    owner = _OWNERS[domain]
    return Feature(
        name=name,
        entity=entity,
        domain=domain,
        source=source,
        aggregation=aggregation,
        dtype=dtype,
        description=description,
        owner=owner,
        version=version,
        **kw,
    )


_OWNERS = {
    "payments": "payments-risk",
    "invoice": "payments-risk",
    "disputes": "payments-risk",
    "billing": "revenue-analytics",
    "subscription": "revenue-analytics",
    "usage": "product-analytics",
    "support": "customer-success",
    "crm": "customer-success",
}

ACC, SUB, INV = "account_id", "subscription_id", "invoice_id"
FAILED = "status = 'failed'"
SETTLED = "status IN ('failed', 'succeeded')"


def _payments() -> list[Feature]:
    out = [
        _f(
            f"failed_payments_{w}d",
            ACC,
            "payments",
            "attempts",
            "count",
            "int64",
            f"Failed payment attempts in the last {w} days.",
            filter=FAILED,
            window_days=w,
            version=2,  # outcomes dated when known (pending debits)
        )
        for w in (7, 30, 60, 90)
    ]
    out += [
        _f(
            "successful_payments_90d",
            ACC,
            "payments",
            "attempts",
            "count",
            "int64",
            "Succeeded payment attempts in the last 90 days.",
            filter="status = 'succeeded'",
            window_days=90,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "payment_failure_rate_90d",
            ACC,
            "payments",
            "attempts",
            "avg",
            "float64",
            "Share of settled attempts in the last 90 days that failed (null: no attempts).",
            value="CASE WHEN status = 'failed' THEN 1.0 ELSE 0.0 END",
            filter=SETTLED,
            window_days=90,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "days_since_last_successful_payment",
            ACC,
            "payments",
            "attempts",
            "since_latest",
            "float64",
            "Days since the last succeeded attempt (null: none yet).",
            filter="status = 'succeeded'",
            unit="days",
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "days_since_last_failed_payment",
            ACC,
            "payments",
            "attempts",
            "since_latest",
            "float64",
            "Days since the last failed attempt (null: none yet).",
            filter=FAILED,
            unit="days",
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "last_decline_code",
            ACC,
            "payments",
            "attempts",
            "latest",
            "string",
            "Decline code (or failure code) of the last failed attempt.",
            value="decline_code",
            filter=FAILED,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "card_days_until_expiry",
            ACC,
            "payments",
            "attempts",
            "until_latest",
            "float64",
            "Days until the card used on the last attempt expires (negative: expired).",
            value="card_expires_us",
            filter="card_expires_us IS NOT NULL",
            unit="days",
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "card_expiring_30d",
            ACC,
            "payments",
            None,
            "derived",
            "float64",
            "1 if the last card used expires within 30 days (or has expired), else 0.",
            inputs=("card_days_until_expiry",),
            op="le",
            constant=30.0,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "payment_lag_days_avg_90d",
            ACC,
            "payments",
            "invoice_payments",
            "avg",
            "float64",
            "Mean days from invoice creation to payment, invoices paid in the last 90 days.",
            value="lag_days",
            window_days=90,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "dunning_invoices_open",
            ACC,
            "payments",
            "dunning_invoices",
            "state_count",
            "int64",
            "Invoices with a failed attempt not yet paid, voided or written off.",
            version=3,  # outcomes dated when known; amounts as recorded then
        ),
        _f(
            "dunning_amount_open",
            ACC,
            "payments",
            "dunning_invoices",
            "state_sum",
            "float64",
            "Amount due on those invoices as recorded at their first failure, minor units of "
            "each invoice's currency.",
            value="amount_due",
            version=3,  # outcomes dated when known; amounts as recorded then
        ),
        _f(
            "retries_on_open_invoices",
            ACC,
            "payments",
            "dunning_attempts",
            "state_count",
            "int64",
            "Failed attempts so far on invoices still in dunning.",
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "failed_invoices_total",
            ACC,
            "payments",
            "dunning_invoices",
            "count",
            "int64",
            "Invoices that have had a failed payment so far, all history (an invoice counts "
            "from its first failed attempt, whatever happened to it later).",
            version=3,  # outcomes dated when known; amounts as recorded then
        ),
    ]
    for group, codes in DECLINE_GROUPS.items():
        out.append(
            _f(
                f"decline_share_{group}_90d",
                ACC,
                "payments",
                "attempts",
                "avg",
                "float64",
                f"Share of failed attempts in the last 90 days declined as {group} "
                f"({', '.join(codes)}).",
                value=f"CASE WHEN decline_code IN {_sql_list(codes)} THEN 1.0 ELSE 0.0 END",
                filter=FAILED,
                window_days=90,
                version=2,  # outcomes dated when known (pending debits)
            )
        )
    return out


PAYING = PAYING_FILTER


def _billing() -> list[Feature]:
    return [
        _f(
            "mrr",
            ACC,
            "billing",
            "subscription_items",
            "state_sum",
            "float64",
            "Monthly recurring revenue now: normalised unit price x quantity of paying "
            "licensed items, minor units (no discounts, no currency conversion).",
            value="monthly_amount",
            filter=PAYING,
        ),
        _f(
            "mrr_90d_ago",
            ACC,
            "billing",
            "subscription_items",
            "state_sum",
            "float64",
            "MRR 90 days ago.",
            value="monthly_amount",
            filter=PAYING,
            offset_days=90,
        ),
        _f(
            "mrr_change_90d",
            ACC,
            "billing",
            None,
            "derived",
            "float64",
            "MRR now minus MRR 90 days ago.",
            inputs=("mrr", "mrr_90d_ago"),
            op="diff",
        ),
        _f(
            "mrr_change_pct_90d",
            ACC,
            "billing",
            None,
            "derived",
            "float64",
            "Relative MRR change over 90 days (null when MRR was 0).",
            inputs=("mrr", "mrr_90d_ago"),
            op="pct_change",
        ),
        _f(
            "plan_tier",
            ACC,
            "billing",
            "subscription_items",
            "state_argmax",
            "string",
            "Product of the paying item with the highest MRR.",
            value="product",
            filter=PAYING,
            order_by="monthly_amount",
        ),
        _f(
            "billing_interval_months",
            ACC,
            "billing",
            "subscription_items",
            "state_argmax",
            "float64",
            "Billing interval in months of the paying item with the highest MRR.",
            value="interval_months",
            filter=PAYING,
            order_by="monthly_amount",
        ),
        _f(
            "days_to_period_end",
            ACC,
            "billing",
            "billing_periods",
            "state_argmax",
            "float64",
            "Days until the current billing period of the paying item with the highest MRR "
            "ends (its renewal, or its end when set to cancel): a cancellation decided now "
            "usually takes effect then, so on a yearly plan it may be months away.",
            value="period_end_us",
            filter=PAYING,
            order_by="monthly_amount",
            unit="days",
        ),
        _f(
            "licensed_seats",
            ACC,
            "billing",
            "subscription_items",
            "state_sum",
            "float64",
            "Quantity bought on paying licensed items.",
            value="quantity",
            filter=PAYING,
        ),
        _f(
            "active_subscriptions",
            ACC,
            "billing",
            "subscription_items",
            "state_count_distinct",
            "int64",
            "Subscriptions trialing, active or past due.",
            value="subscription_id",
            filter="status IN ('trialing', 'active', 'past_due')",
        ),
        _f(
            "tenure_days",
            ACC,
            "billing",
            "subscription_items",
            "since_earliest",
            "float64",
            "Days since the account's first trialing, active or past-due subscription version.",
            filter="status IN ('trialing', 'active', 'past_due')",
            unit="days",
        ),
        _f(
            "discount_active",
            ACC,
            "billing",
            "discounts",
            "state_any",
            "int64",
            "1 if a paying subscription carries a coupon in force.",
            filter="status IN ('active', 'past_due')",
        ),
        _f(
            "is_trialing",
            ACC,
            "billing",
            "subscription_items",
            "state_any",
            "int64",
            "1 if a subscription is trialing.",
            filter="status = 'trialing'",
        ),
        _f(
            "is_past_due",
            ACC,
            "billing",
            "subscription_items",
            "state_any",
            "int64",
            "1 if a subscription is past due.",
            filter="status = 'past_due'",
        ),
        _f(
            "cancel_at_period_end",
            ACC,
            "billing",
            "subscription_items",
            "state_any",
            "int64",
            "1 if a paying subscription is set to cancel at period end.",
            filter=f"{PAYING} AND cancel_at_period_end",
        ),
        _f(
            "account_age_days",
            ACC,
            "billing",
            "account_facts",
            "since_earliest",
            "float64",
            "Days since the account was created.",
        ),
    ]


def _usage() -> list[Feature]:
    return [
        _f(
            "usage_avg_daily_7d",
            ACC,
            "usage",
            "usage_daily",
            "mean_per_day",
            "float64",
            "Average daily usage (all metrics summed; missing days are 0), last 7 days.",
            value="quantity",
            window_days=7,
            ttl_hours=48,
        ),
        _f(
            "usage_avg_daily_30d",
            ACC,
            "usage",
            "usage_daily",
            "mean_per_day",
            "float64",
            "Average daily usage, last 30 days.",
            value="quantity",
            window_days=30,
            ttl_hours=48,
        ),
        _f(
            "usage_avg_daily_prior_60d",
            ACC,
            "usage",
            "usage_daily",
            "mean_per_day",
            "float64",
            "Average daily usage in the 60 days before the last 30.",
            value="quantity",
            window_days=60,
            offset_days=30,
            ttl_hours=48,
        ),
        _f(
            "usage_drop_pct_30d_vs_prior_60d",
            ACC,
            "usage",
            None,
            "derived",
            "float64",
            "1 - (last 30 days' daily average / prior 60 days' daily average); null when the "
            "prior average is 0.",
            inputs=("usage_avg_daily_30d", "usage_avg_daily_prior_60d"),
            op="drop_pct",
            ttl_hours=48,
        ),
        *(
            _f(
                f"usage_per_seat_{w}d",
                ACC,
                "usage",
                None,
                "derived",
                "float64",
                f"Average daily usage in the last {w} days per licensed seat (null without "
                "seats): usage in proportion to what the account bought.",
                inputs=(f"usage_avg_daily_{w}d", "licensed_seats"),
                op="ratio",
                ttl_hours=48,
            )
            for w in (7, 30)
        ),
        _f(
            "usage_trend_90d",
            ACC,
            "usage",
            "usage_daily",
            "daily_slope",
            "float64",
            "Least-squares slope of daily usage over the last 90 days (per day; missing days 0).",
            value="quantity",
            window_days=90,
            ttl_hours=48,
        ),
        _f(
            "usage_active_days_30d",
            ACC,
            "usage",
            "usage_daily",
            "count",
            "int64",
            "Days with positive usage in the last 30 days.",
            filter="quantity > 0",
            window_days=30,
            ttl_hours=48,
        ),
        _f(
            "days_since_last_usage",
            ACC,
            "usage",
            "usage_daily",
            "since_latest",
            "float64",
            "Days since the end of the last day with positive usage.",
            filter="quantity > 0",
            unit="days",
            ttl_hours=48,
        ),
    ]


HIGH = f"severity IN {_sql_list(HIGH_SEVERITIES)}"


def _support() -> list[Feature]:
    out = []
    for w in (30, 90):
        out.append(
            _f(
                f"tickets_{w}d",
                ACC,
                "support",
                "tickets",
                "count",
                "int64",
                f"Support tickets opened in the last {w} days.",
                window_days=w,
            )
        )
        out.append(
            _f(
                f"high_severity_tickets_{w}d",
                ACC,
                "support",
                "tickets",
                "count",
                "int64",
                f"High or urgent tickets opened in the last {w} days.",
                filter=HIGH,
                window_days=w,
            )
        )
    out += [
        _f(
            "open_tickets",
            ACC,
            "support",
            "tickets",
            "state_count",
            "int64",
            "Tickets opened and not yet resolved.",
        ),
        _f(
            "days_since_last_ticket",
            ACC,
            "support",
            "tickets",
            "since_latest",
            "float64",
            "Days since the last ticket was opened.",
            unit="days",
        ),
    ]
    return out


def _crm() -> list[Feature]:
    out = []
    for col, label in (("health_score", "Health score"), ("nps", "NPS")):
        nn = f"{col} IS NOT NULL"
        out += [
            _f(
                col,
                ACC,
                "crm",
                "crm",
                "latest",
                "float64",
                f"{label}, latest known.",
                value=col,
                filter=nn,
                ttl_hours=168,
            ),
            _f(
                f"{col}_90d_ago",
                ACC,
                "crm",
                "crm",
                "latest",
                "float64",
                f"{label}, latest known 90 days ago.",
                value=col,
                filter=nn,
                offset_days=90,
                ttl_hours=168,
            ),
            _f(
                f"{col}_change_90d",
                ACC,
                "crm",
                None,
                "derived",
                "float64",
                f"{label} now minus 90 days ago.",
                inputs=(col, f"{col}_90d_ago"),
                op="diff",
                ttl_hours=168,
            ),
        ]
    out += [
        _f(
            "seats_purchased",
            ACC,
            "crm",
            "crm",
            "latest",
            "float64",
            "Seats purchased, latest CRM value.",
            value="seats_purchased",
            filter="seats_purchased IS NOT NULL",
            ttl_hours=168,
        ),
        _f(
            "seats_used",
            ACC,
            "crm",
            "crm",
            "latest",
            "float64",
            "Seats used, latest CRM value.",
            value="seats_used",
            filter="seats_used IS NOT NULL",
            ttl_hours=168,
        ),
        _f(
            "seat_utilization",
            ACC,
            "crm",
            None,
            "derived",
            "float64",
            "Seats used / seats purchased (null when none purchased).",
            inputs=("seats_used", "seats_purchased"),
            op="ratio",
            ttl_hours=168,
        ),
    ]
    return out


def _disputes() -> list[Feature]:
    return [
        _f(
            "disputes_90d",
            ACC,
            "disputes",
            "dispute_events",
            "count",
            "int64",
            "Disputes opened in the last 90 days.",
            window_days=90,
        ),
        _f(
            "disputes_365d",
            ACC,
            "disputes",
            "dispute_events",
            "count",
            "int64",
            "Disputes opened in the last 365 days.",
            window_days=365,
        ),
        _f(
            "dispute_amount_90d",
            ACC,
            "disputes",
            "dispute_events",
            "sum",
            "float64",
            "Amount disputed in the last 90 days, minor units.",
            value="amount",
            window_days=90,
        ),
        _f(
            "disputes_lost_365d",
            ACC,
            "disputes",
            "dispute_closures",
            "count",
            "int64",
            "Disputes closed as lost in the last 365 days.",
            filter="status = 'lost'",
            window_days=365,
        ),
        _f(
            "refunds_90d",
            ACC,
            "disputes",
            "refund_events",
            "count",
            "int64",
            "Refunds created in the last 90 days.",
            window_days=90,
        ),
        _f(
            "refund_amount_90d",
            ACC,
            "disputes",
            "refund_events",
            "sum",
            "float64",
            "Amount refunded in the last 90 days, minor units.",
            value="amount",
            window_days=90,
        ),
    ]


#: Days from an attempt's UTC day to the next payday window (1st-2nd, 15th-16th, last two).
PAYDAY_DAYS = """CASE
  WHEN day_of_month IN (1, 2, 15, 16)
       OR day_of_month >= day(last_day(make_timestamp(ts_us))) - 1 THEN 0
  WHEN day_of_month < 15 THEN 15 - day_of_month
  ELSE day(last_day(make_timestamp(ts_us))) - 1 - day_of_month
END"""


def _invoice() -> list[Feature]:
    kw = {"ttl_hours": 1}
    return [
        _f(
            "invoice_amount_due",
            INV,
            "invoice",
            "invoice_amounts",
            "latest",
            "float64",
            "Amount due on the invoice as recorded at the time, minor units.",
            value="amount_due",
            version=2,  # the amount as recorded at the time
            **kw,
        ),
        _f(
            "invoice_currency",
            INV,
            "invoice",
            "invoice_facts",
            "latest",
            "string",
            "Invoice currency.",
            value="currency",
            **kw,
        ),
        _f(
            "invoice_billing_reason",
            INV,
            "invoice",
            "invoice_facts",
            "latest",
            "string",
            "Why the invoice was created (subscription_cycle, subscription_create, ...).",
            value="billing_reason",
            **kw,
        ),
        _f(
            "invoice_days_since_created",
            INV,
            "invoice",
            "invoice_facts",
            "since_earliest",
            "float64",
            "Days since the invoice was created.",
            unit="days",
            **kw,
        ),
        _f(
            "invoice_attempt_number",
            INV,
            "invoice",
            "attempts",
            "count",
            "int64",
            "Payment attempts made on the invoice so far.",
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "invoice_failed_attempts",
            INV,
            "invoice",
            "attempts",
            "count",
            "int64",
            "Failed attempts on the invoice so far.",
            filter=FAILED,
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "invoice_last_decline_code",
            INV,
            "invoice",
            "attempts",
            "latest",
            "string",
            "Decline code (or failure code) of the invoice's last failed attempt.",
            value="decline_code",
            filter=FAILED,
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "invoice_hours_since_first_failure",
            INV,
            "invoice",
            "attempts",
            "since_earliest",
            "float64",
            "Hours since the invoice's first failed attempt.",
            filter=FAILED,
            unit="hours",
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "invoice_hours_since_last_failure",
            INV,
            "invoice",
            "attempts",
            "since_latest",
            "float64",
            "Hours since the invoice's last failed attempt.",
            filter=FAILED,
            unit="hours",
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "invoice_hours_to_next_attempt",
            INV,
            "invoice",
            "invoice_announcements",
            "until_latest",
            "float64",
            "Hours until the next automatic retry the invoice has announced (its "
            "next_payment_attempt, set when an attempt fails); missing when no retry is "
            "scheduled or the source has no invoice versions (CSV).",
            value="next_attempt_us",
            unit="hours",
            **kw,
        ),
        _f(
            "invoice_failure_day_of_month",
            INV,
            "invoice",
            "attempts",
            "latest",
            "float64",
            "Day of month (UTC) of the invoice's last failed attempt.",
            value="day_of_month",
            filter=FAILED,
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
        _f(
            "invoice_failure_days_to_payday",
            INV,
            "invoice",
            "attempts",
            "latest",
            "float64",
            "Days from the invoice's last failed attempt (UTC day) to the next common payday "
            "(the 1st-2nd, 15th-16th or last two days of a month; 0 on one): funds that "
            "arrive on paydays let retries of insufficient-funds declines succeed.",
            value=PAYDAY_DAYS,
            filter=FAILED,
            **kw,
            version=2,  # outcomes dated when known (pending debits)
        ),
    ]


def _subscription() -> list[Feature]:
    return [
        _f(
            "sub_mrr",
            SUB,
            "subscription",
            "subscription_items",
            "state_sum",
            "float64",
            "The subscription's MRR now (as for the account's mrr).",
            value="monthly_amount",
            filter=PAYING,
        ),
        _f(
            "sub_status",
            SUB,
            "subscription",
            "subscription_items",
            "state_max",
            "string",
            "The subscription's status now (null before it exists).",
            value="status",
        ),
        _f(
            "sub_tenure_days",
            SUB,
            "subscription",
            "subscription_items",
            "since_earliest",
            "float64",
            "Days since the subscription's first version.",
        ),
        _f(
            "sub_interval_months",
            SUB,
            "subscription",
            "subscription_items",
            "state_argmax",
            "float64",
            "Billing interval in months of its highest-MRR item.",
            value="interval_months",
            filter="licensed",
            order_by="monthly_amount",
        ),
        _f(
            "sub_quantity",
            SUB,
            "subscription",
            "subscription_items",
            "state_sum",
            "float64",
            "Quantity on its licensed items.",
            value="quantity",
            filter="licensed",
        ),
        _f(
            "sub_cancel_at_period_end",
            SUB,
            "subscription",
            "subscription_items",
            "state_any",
            "int64",
            "1 if it is set to cancel at period end.",
            filter="cancel_at_period_end",
        ),
    ]


FEATURES: tuple[Feature, ...] = (
    *_payments(),
    *_billing(),
    *_usage(),
    *_support(),
    *_crm(),
    *_disputes(),
    *_invoice(),
    *_subscription(),
)
REGISTRY: dict[str, Feature] = {f.name: f for f in FEATURES}


class RegistryError(ValueError):
    """A feature declaration is inconsistent; the message names the feature and the fix."""


def validate_registry(features: Iterable[Feature] = FEATURES) -> None:
    """Check every declaration; raise :class:`RegistryError` listing all problems."""
    feats = list(features)
    by_name = {f.name: f for f in feats}
    problems: list[str] = []
    if len(by_name) != len(feats):
        problems.append("duplicate feature names")
    for f in feats:
        where = f"feature {f.name!r}"
        if f.entity not in ENTITIES:
            problems.append(f"{where}: entity {f.entity!r} not in {ENTITIES}")
        if f.dtype not in DTYPES:
            problems.append(f"{where}: dtype {f.dtype!r} not in {DTYPES}")
        if f.aggregation not in AGGREGATIONS:
            problems.append(f"{where}: aggregation {f.aggregation!r} unknown")
        if f.version < 1:
            problems.append(f"{where}: version must be >= 1")
        if f.aggregation == "derived":
            if f.op not in DERIVED_OPS:
                problems.append(f"{where}: op {f.op!r} not in {DERIVED_OPS}")
            for name in f.inputs:
                dep = by_name.get(name)
                if dep is None:
                    problems.append(f"{where}: input {name!r} is not declared")
                elif dep.aggregation == "derived" or dep.entity != f.entity:
                    problems.append(
                        f"{where}: input {name!r} must be a non-derived "
                        f"feature of entity {f.entity}"
                    )
            continue
        src = SOURCES.get(f.source or "")
        if src is None:
            problems.append(f"{where}: source {f.source!r} is not declared")
            continue
        if f.entity not in src.keys:
            problems.append(f"{where}: source {src.name} has no key {f.entity}")
        if f.aggregation in STATE and src.kind != "intervals":
            problems.append(f"{where}: {f.aggregation} needs an interval source")
        if (
            f.aggregation
            in (
                "sum",
                "avg",
                "mean_per_day",
                "daily_slope",
                "latest",
                "until_latest",
                "state_sum",
                "state_max",
                "state_argmax",
                "state_count_distinct",
            )
            and not f.value
        ):
            problems.append(f"{where}: {f.aggregation} needs a value")
        if f.aggregation in ("mean_per_day", "daily_slope") and not f.window_days:
            problems.append(f"{where}: {f.aggregation} needs window_days")
        if f.aggregation == "state_argmax" and not f.order_by:
            problems.append(f"{where}: state_argmax needs order_by")
        if (
            f.aggregation in ("since_latest", "until_latest", "since_earliest")
            or (f.aggregation == "state_argmax" and f.unit is not None)
        ) and ((f.unit or "days") not in UNITS_US):
            problems.append(f"{where}: unit {f.unit!r} not in {tuple(UNITS_US)}")
        if f.window_days is not None and f.window_days <= 0:
            problems.append(f"{where}: window_days must be positive")
        if f.offset_days < 0:
            problems.append(f"{where}: offset_days must be >= 0")
        if f.dtype == "int64" and f.aggregation not in (
            "count",
            "state_count",
            "state_any",
            "state_count_distinct",
        ):
            problems.append(f"{where}: int64 is only for counts and flags (never null)")
    if problems:
        raise RegistryError("; ".join(problems))


validate_registry()


def fingerprint(feature: Feature, registry: Mapping[str, Feature] = REGISTRY) -> str:
    """Content hash (16 hex digits) of everything that determines the feature's values."""
    sem = feature.semantics()
    sem["inputs_fingerprints"] = [fingerprint(registry[n], registry) for n in feature.inputs]
    blob = json.dumps(sem, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def get_features(names: Iterable[str] | None = None, *, entity: str | None = None) -> list[Feature]:
    """Declarations by name (all when ``names`` is None), optionally of one entity.

    Raises:
        KeyError: A name that is not declared (the message lists close names).
    """
    if names is None:
        feats = list(FEATURES)
    else:
        feats = []
        for n in names:
            if n not in REGISTRY:
                close = [k for k in REGISTRY if n.split("_")[0] in k][:5]
                raise KeyError(f"unknown feature {n!r}; similar: {close}")
            feats.append(REGISTRY[n])
    if entity is not None:
        feats = [f for f in feats if f.entity == entity]
    return feats


def registry_frame(features: Iterable[Feature] = FEATURES) -> pd.DataFrame:
    """The registry as a table, one row per feature (what ``workbench features list`` prints).

    Returns:
        Columns name, entity, domain, source, aggregation, window_days, offset_days,
        ttl_hours, dtype, version, fingerprint, owner, description.
    """
    rows = [
        {
            "name": f.name,
            "entity": f.entity,
            "domain": f.domain,
            "source": f.source or "(derived: " + ", ".join(f.inputs) + ")",
            "aggregation": f.aggregation if f.aggregation != "derived" else f"derived:{f.op}",
            "window_days": f.window_days,
            "offset_days": f.offset_days,
            "ttl_hours": f.ttl_hours,
            "dtype": f.dtype,
            "version": f.version,
            "fingerprint": fingerprint(f),
            "owner": f.owner,
            "description": f.description,
        }
        for f in features
    ]
    frame = pd.DataFrame(rows)
    return frame.astype({"window_days": "Int64"})


def registry_lock(features: Iterable[Feature] = FEATURES) -> dict[str, dict]:
    """The lock content: ``{name: {"version": int, "fingerprint": str}}`` sorted by name."""
    feats = list(features)
    reg = {f.name: f for f in feats}
    return {
        f.name: {"version": f.version, "fingerprint": fingerprint(f, reg)}
        for f in sorted(feats, key=lambda f: f.name)
    }


def load_registry_lock(path: Path = LOCK_PATH) -> dict[str, dict]:
    """Read the checked-in lock (empty when the file does not exist)."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def write_registry_lock(path: Path = LOCK_PATH, features: Iterable[Feature] = FEATURES) -> Path:
    """Write the lock for the current declarations (after bumping versions)."""
    validate_registry(features)
    path.write_text(json.dumps(registry_lock(features), indent=1, sort_keys=True) + "\n")
    return path


def check_registry_lock(
    features: Iterable[Feature] = FEATURES, lock: Mapping[str, Mapping] | None = None
) -> list[str]:
    """Compare declarations with the lock; return problems (empty when consistent).

    A changed fingerprint with the same version is the error this exists to catch: a
    definition changed but models trained on the old meaning would not notice.
    """
    lock = load_registry_lock() if lock is None else lock
    current = registry_lock(features)
    problems = []
    for name, cur in current.items():
        old = lock.get(name)
        if old is None:
            problems.append(f"{name}: new feature not in the lock; run --write-lock")
        elif cur["fingerprint"] != old["fingerprint"]:
            if cur["version"] <= old["version"]:
                problems.append(
                    f"{name}: definition changed but version stayed {cur['version']}; "
                    f"bump it to {old['version'] + 1} and run --write-lock"
                )
            else:
                problems.append(f"{name}: version bumped to {cur['version']}; run --write-lock")
        elif cur["version"] != old["version"]:
            problems.append(
                f"{name}: version changed {old['version']} -> {cur['version']} without a "
                "definition change; revert it or run --write-lock"
            )
    for name in lock:
        if name not in current:
            problems.append(f"{name}: in the lock but no longer declared; run --write-lock")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.features.definitions [--write-lock | --check]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-lock", action="store_true", help="rewrite registry.lock.json")
    args = parser.parse_args(argv)
    if args.write_lock:
        path = write_registry_lock()
        log.info("wrote %s", path)
        return 0
    problems = check_registry_lock()
    for p in problems:
        log.error(p)
    return 1 if problems else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
