"""Ground-truth tables written beside the simulated data (never read by the pipeline).

All tables are Parquet under ``<out>/truth/``; times are ``timestamp[us, UTC]``.

``churn_hazard.parquet`` — one row per paying account-month (the account had an active or
past-due main subscription not already set to cancel at the month's start):
    account_id, month (month start), month_index, tenure_months, health (latent),
    hazard_base (true monthly voluntary-cancellation probability without an offer),
    offer_active, hazard (the probability actually used), churned (the account decided to
    cancel, or was churned involuntarily, in that month), churn_type (voluntary | involuntary).
``churn_events.parquet`` — every time an account stopped being a customer:
    account_id, churned_at, month_index, churn_type.
``recovery.parquet`` — one row per scheduled payment attempt of every invoice whose first
    charge failed: invoice_id, account_id, attempt (1 = the first charge, 2-5 = retries),
    attempt_at, decline_code, days_since_failure, day_of_month, amount (minor units),
    currency, amount_usd, prior_failed_invoices, health, p_success (true probability this
    attempt succeeds), attempted, succeeded, p_recovered_7d / 14d / 30d / ever (true
    probability, at the first failure, that a retry within that many days succeeds).
``offers.parquet`` — one row per account: account_id, eligible, eligible_month, assigned
    (random, 50 %), offered_at, coupon, effect_relative (true relative hazard reduction while
    the offer is active, also for accounts that never got one), hazard_at_eligibility,
    effect_hazard (absolute hazard reduction at eligibility).
``anomalies.parquet`` — every injected invoice anomaly: object_id, object_type,
    anomaly_type (duplicate_invoice | duplicate_subscription | wrong_amount |
    line_total_mismatch | refund_exceeds_payment), account_id, created, details (JSON).
``accounts.parquet`` — account_id, signup_at, region, country, currency, channel, industry,
    size, trial, initial_health, health_mean, offer_effect, final_state.
``regime.json`` — the regime-change month (or null) and its effects.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "churn_hazard": pa.schema(
        [
            ("account_id", pa.string()),
            ("month", TS),
            ("month_index", pa.int32()),
            ("tenure_months", pa.int32()),
            ("health", pa.float64()),
            ("hazard_base", pa.float64()),
            ("offer_active", pa.bool_()),
            ("hazard", pa.float64()),
            ("churned", pa.bool_()),
            ("churn_type", pa.string()),
        ]
    ),
    "churn_events": pa.schema(
        [
            ("account_id", pa.string()),
            ("churned_at", TS),
            ("month_index", pa.int32()),
            ("churn_type", pa.string()),
        ]
    ),
    "recovery": pa.schema(
        [
            ("invoice_id", pa.string()),
            ("account_id", pa.string()),
            ("attempt", pa.int32()),
            ("attempt_at", TS),
            ("decline_code", pa.string()),
            ("days_since_failure", pa.float64()),
            ("day_of_month", pa.int32()),
            ("amount", pa.int64()),
            ("currency", pa.string()),
            ("amount_usd", pa.float64()),
            ("prior_failed_invoices", pa.int32()),
            ("health", pa.float64()),
            ("p_success", pa.float64()),
            ("attempted", pa.bool_()),
            ("succeeded", pa.bool_()),
            ("p_recovered_7d", pa.float64()),
            ("p_recovered_14d", pa.float64()),
            ("p_recovered_30d", pa.float64()),
            ("p_recovered_ever", pa.float64()),
        ]
    ),
    "offers": pa.schema(
        [
            ("account_id", pa.string()),
            ("eligible", pa.bool_()),
            ("eligible_month", TS),
            ("assigned", pa.bool_()),
            ("offered_at", TS),
            ("coupon", pa.string()),
            ("effect_relative", pa.float64()),
            ("hazard_at_eligibility", pa.float64()),
            ("effect_hazard", pa.float64()),
        ]
    ),
    "anomalies": pa.schema(
        [
            ("object_id", pa.string()),
            ("object_type", pa.string()),
            ("anomaly_type", pa.string()),
            ("account_id", pa.string()),
            ("created", TS),
            ("details", pa.string()),
        ]
    ),
    "accounts": pa.schema(
        [
            ("account_id", pa.string()),
            ("signup_at", TS),
            ("region", pa.string()),
            ("country", pa.string()),
            ("currency", pa.string()),
            ("channel", pa.string()),
            ("industry", pa.string()),
            ("size", pa.string()),
            ("trial", pa.bool_()),
            ("initial_health", pa.float64()),
            ("health_mean", pa.float64()),
            ("offer_effect", pa.float64()),
            ("final_state", pa.string()),
        ]
    ),
}

ANOMALY_TYPES = (
    "duplicate_invoice",
    "duplicate_subscription",
    "wrong_amount",
    "line_total_mismatch",
    "refund_exceeds_payment",
)


def to_table(name: str, rows: list) -> pa.Table:
    """Rows (tuples or lists in schema order; times as unix seconds) to an Arrow table.

    Args:
        name: a key of :data:`SCHEMAS`.
        rows: the rows, each with one value per schema field; timestamp fields hold
            integer unix seconds or ``None``.

    Returns:
        A table with exactly the schema of ``name``.
    """
    schema = SCHEMAS[name]
    columns = []
    for i, f in enumerate(schema):
        values = [row[i] for row in rows]
        if f.type == TS:
            values = [None if v is None else int(v) * 1_000_000 for v in values]
            columns.append(pa.array(values, type=pa.int64()).cast(TS))
        else:
            columns.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(columns, schema=schema)
