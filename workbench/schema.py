"""The canonical warehouse: every table, column, type and key, declared once.

This module is the contract between ingestion (which writes these tables) and
everything downstream (revenue, features, models), which reads them. Money is
integer minor units (``BIGINT``) beside an ISO currency code in lower case, as
Stripe writes it; times are UTC ``TIMESTAMPTZ`` with microsecond precision.

Names and e-mails live only in ``accounts``; every other table carries ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    """One column of a canonical table."""

    name: str
    type: str  # DuckDB type
    nullable: bool = True
    description: str = ""


@dataclass(frozen=True)
class Table:
    """A canonical table: its columns, primary key and meaning."""

    name: str
    description: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    personal: tuple[str, ...] = field(default=())  # columns holding personal data
    # False: the key is unique by construction (the writer checks it) and is not declared to
    # DuckDB, whose key index makes bulk loads several times slower.
    enforce_key: bool = True

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` statement for DuckDB."""
        cols = [f"{c.name} {c.type}{'' if c.nullable else ' NOT NULL'}" for c in self.columns]
        if self.primary_key and self.enforce_key:
            cols.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  " + ",\n  ".join(cols) + "\n)"


def _c(name: str, type_: str, description: str = "", *, nullable: bool = True) -> Column:
    return Column(name=name, type=type_, nullable=nullable, description=description)


TS = "TIMESTAMPTZ"
MONEY = "BIGINT"

_DISCOUNT = (
    _c("coupon_id", "VARCHAR", "coupon applied to the subscription, if any"),
    _c("discount_percent_off", "DOUBLE", "percent off (a rate, not money)"),
    _c("discount_amount_off", MONEY, "amount off per invoice, minor units"),
    _c("discount_duration", "VARCHAR", "once | repeating | forever"),
    _c("discount_duration_in_months", "INTEGER", "for repeating coupons"),
    _c("discount_start", TS, "when the discount started"),
    _c("discount_end", TS, "when the discount ends (null: never or once)"),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "events",
            "Every accepted event, once per event id (the first delivery stands).",
            (
                _c("event_id", "VARCHAR", "Stripe event id or a derived id", nullable=False),
                _c("type", "VARCHAR", "event type, e.g. invoice.paid", nullable=False),
                _c("object_type", "VARCHAR", "data.object.object"),
                _c("object_id", "VARCHAR", "data.object.id"),
                _c("created", TS, "when the source says it happened", nullable=False),
                _c("api_version", "VARCHAR"),
                _c("source", "VARCHAR", "stripe | stripe-csv | csv | webhook", nullable=False),
                _c("source_file", "VARCHAR", "lake path of the file it came from"),
                _c("line", "INTEGER", "1-based line in that file"),
                _c(
                    "payload_hash",
                    "VARCHAR",
                    "sha256 of the canonical JSON payload",
                    nullable=False,
                ),
                _c("disposition", "VARCHAR", "handled | ignored | unknown", nullable=False),
                _c("load_id", "VARCHAR", "the load that accepted it", nullable=False),
            ),
            primary_key=("event_id",),
            # Ingestion accepts an event id once (duplicates and conflicts are detected before
            # insert) and `workbench.ingest.verify` checks uniqueness; a declared key would make
            # loading 1M events about 2x slower.
            enforce_key=False,
        ),
        Table(
            "accounts",
            "Customers (Stripe customers or another system's accounts), current state.",
            (
                _c("account_id", "VARCHAR", "e.g. cus_…", nullable=False),
                _c("name", "VARCHAR", "personal data"),
                _c("email", "VARCHAR", "personal data"),
                _c("currency", "VARCHAR", "the account's billing currency"),
                _c("country", "VARCHAR"),
                _c("region", "VARCHAR", "NA | EU | APAC (metadata.region)"),
                _c("channel", "VARCHAR", "self-serve | sales (metadata.channel)"),
                _c("industry", "VARCHAR"),
                _c("size", "VARCHAR"),
                _c("created", TS),
                _c("delinquent", "BOOLEAN"),
                _c("deleted", "BOOLEAN", "customer.deleted seen"),
                _c("metadata", "JSON"),
                _c("source", "VARCHAR"),
                _c("updated_at", TS, "created time of the last event applied"),
            ),
            primary_key=("account_id",),
            personal=("name", "email"),
        ),
        Table(
            "prices",
            "Prices (and the legacy plans), current state.",
            (
                _c("price_id", "VARCHAR", nullable=False),
                _c("product_id", "VARCHAR"),
                _c("nickname", "VARCHAR"),
                _c("currency", "VARCHAR", nullable=False),
                _c("unit_amount", MONEY, "minor units per unit; null for tiered"),
                _c("billing_scheme", "VARCHAR", "per_unit | tiered"),
                _c("usage_type", "VARCHAR", "licensed | metered; null for one-time"),
                _c("interval", "VARCHAR", "day | week | month | year; null for one-time"),
                _c("interval_count", "INTEGER"),
                _c("active", "BOOLEAN"),
                _c("created", TS),
                _c("updated_at", TS),
            ),
            primary_key=("price_id",),
        ),
        Table(
            "subscriptions",
            "Subscriptions, current state (derived from events ordered by (created, id)).",
            (
                _c("subscription_id", "VARCHAR", nullable=False),
                _c("account_id", "VARCHAR", nullable=False),
                _c(
                    "status",
                    "VARCHAR",
                    "trialing | active | past_due | unpaid | canceled | incomplete | incomplete_expired | paused",
                    nullable=False,
                ),
                _c("currency", "VARCHAR"),
                _c("created", TS),
                _c("start_date", TS),
                _c("current_period_start", TS),
                _c("current_period_end", TS),
                _c("trial_start", TS),
                _c("trial_end", TS),
                _c("cancel_at_period_end", "BOOLEAN"),
                _c("cancel_at", TS),
                _c("canceled_at", TS),
                _c("ended_at", TS),
                *_DISCOUNT,
                _c("updated_at", TS),
            ),
            primary_key=("subscription_id",),
        ),
        Table(
            "subscription_items",
            "Items of subscriptions, current state.",
            (
                _c("item_id", "VARCHAR", nullable=False),
                _c("subscription_id", "VARCHAR", nullable=False),
                _c("price_id", "VARCHAR", nullable=False),
                _c("quantity", "BIGINT"),
                _c("created", TS),
                _c("deleted", "BOOLEAN", "no longer on the subscription"),
                _c("updated_at", TS),
            ),
            primary_key=("item_id",),
        ),
        Table(
            "subscription_history",
            "Every version of every subscription item: one row per (subscription event, item), "
            "valid over [valid_from, valid_to). The MRR engine and features read this.",
            (
                _c("subscription_id", "VARCHAR", nullable=False),
                _c("account_id", "VARCHAR", nullable=False),
                _c("item_id", "VARCHAR", "null when a version has no items", nullable=True),
                _c("price_id", "VARCHAR"),
                _c("quantity", "BIGINT"),
                _c("unit_amount", MONEY),
                _c("currency", "VARCHAR"),
                _c("interval", "VARCHAR"),
                _c("interval_count", "INTEGER"),
                _c("usage_type", "VARCHAR"),
                _c("status", "VARCHAR", nullable=False),
                _c("trial_start", TS),
                _c("trial_end", TS),
                _c("cancel_at_period_end", "BOOLEAN"),
                _c("current_period_start", TS),
                _c("current_period_end", TS),
                _c("canceled_at", TS),
                _c("ended_at", TS),
                *_DISCOUNT,
                _c(
                    "valid_from",
                    TS,
                    "created time of the event that produced this version",
                    nullable=False,
                ),
                _c("valid_to", TS, "created time of the next version; null for the current one"),
                _c("event_id", "VARCHAR", nullable=False),
            ),
            primary_key=("event_id", "subscription_id", "item_id"),
        ),
        Table(
            "invoices",
            "Invoices, current state.",
            (
                _c("invoice_id", "VARCHAR", nullable=False),
                _c("account_id", "VARCHAR", nullable=False),
                _c("subscription_id", "VARCHAR"),
                _c("status", "VARCHAR", "draft | open | paid | uncollectible | void"),
                _c("billing_reason", "VARCHAR"),
                _c("currency", "VARCHAR", nullable=False),
                _c("created", TS),
                _c("period_start", TS),
                _c("period_end", TS),
                _c("subtotal", MONEY),
                _c("total_discount", MONEY, "sum of total_discount_amounts"),
                _c("tax", MONEY),
                _c("total", MONEY),
                _c("amount_due", MONEY),
                _c("amount_paid", MONEY),
                _c("amount_remaining", MONEY),
                _c("attempt_count", "INTEGER"),
                _c("next_payment_attempt", TS),
                _c("charge_id", "VARCHAR"),
                _c("payment_intent_id", "VARCHAR"),
                _c("finalized_at", TS),
                _c("paid_at", TS),
                _c("marked_uncollectible_at", TS),
                _c("voided_at", TS),
                _c("updated_at", TS),
            ),
            primary_key=("invoice_id",),
        ),
        Table(
            "invoice_lines",
            "Line items of invoices.",
            (
                _c("line_id", "VARCHAR", nullable=False),
                _c("invoice_id", "VARCHAR", nullable=False),
                _c("subscription_id", "VARCHAR"),
                _c("subscription_item_id", "VARCHAR"),
                _c("price_id", "VARCHAR"),
                _c("type", "VARCHAR", "subscription | invoiceitem"),
                _c("amount", MONEY, nullable=False),
                _c("discount_amount", MONEY),
                _c("currency", "VARCHAR", nullable=False),
                _c("quantity", "BIGINT"),
                _c("proration", "BOOLEAN"),
                _c("period_start", TS),
                _c("period_end", TS),
            ),
            primary_key=("line_id",),
        ),
        Table(
            "payment_attempts",
            "Charges (each payment attempt), current state.",
            (
                _c("attempt_id", "VARCHAR", "charge id", nullable=False),
                _c("invoice_id", "VARCHAR"),
                _c("account_id", "VARCHAR"),
                _c("payment_intent_id", "VARCHAR"),
                _c("created", TS, nullable=False),
                _c("amount", MONEY, nullable=False),
                _c("currency", "VARCHAR", nullable=False),
                _c("status", "VARCHAR", "succeeded | failed | pending"),
                _c("failure_code", "VARCHAR", "e.g. card_declined, expired_card"),
                _c("decline_code", "VARCHAR", "e.g. insufficient_funds"),
                _c("outcome_type", "VARCHAR"),
                _c("attempt_number", "INTEGER", "1-based within its invoice"),
                _c("card_brand", "VARCHAR", "at most brand and last four"),
                _c("card_last4", "VARCHAR"),
                _c("card_exp_month", "INTEGER"),
                _c("card_exp_year", "INTEGER"),
                _c("amount_refunded", MONEY),
                _c("disputed", "BOOLEAN"),
            ),
            primary_key=("attempt_id",),
        ),
        Table(
            "refunds",
            "Refunds.",
            (
                _c("refund_id", "VARCHAR", nullable=False),
                _c("charge_id", "VARCHAR"),
                _c("invoice_id", "VARCHAR"),
                _c("account_id", "VARCHAR"),
                _c("amount", MONEY, nullable=False),
                _c("currency", "VARCHAR", nullable=False),
                _c("created", TS),
                _c("reason", "VARCHAR"),
                _c("status", "VARCHAR"),
            ),
            primary_key=("refund_id",),
        ),
        Table(
            "disputes",
            "Disputes (chargebacks).",
            (
                _c("dispute_id", "VARCHAR", nullable=False),
                _c("charge_id", "VARCHAR"),
                _c("account_id", "VARCHAR"),
                _c("amount", MONEY, nullable=False),
                _c("currency", "VARCHAR", nullable=False),
                _c("reason", "VARCHAR"),
                _c("status", "VARCHAR", "needs_response | under_review | won | lost | ..."),
                _c("created", TS),
                _c("closed_at", TS),
            ),
            primary_key=("dispute_id",),
        ),
        Table(
            "usage",
            "Metered usage per account per day and metric.",
            (
                _c("account_id", "VARCHAR", nullable=False),
                _c("date", "DATE", nullable=False),
                _c("metric", "VARCHAR", nullable=False),
                _c("quantity", "DOUBLE", nullable=False),
                _c("source", "VARCHAR"),
            ),
            primary_key=("account_id", "date", "metric"),
        ),
        Table(
            "crm_signals",
            "CRM signals per account and day.",
            (
                _c("account_id", "VARCHAR", nullable=False),
                _c("date", "DATE", nullable=False),
                _c("health_score", "DOUBLE"),
                _c("nps", "INTEGER"),
                _c("seats_purchased", "BIGINT"),
                _c("seats_used", "BIGINT"),
                _c("source", "VARCHAR"),
            ),
            primary_key=("account_id", "date"),
        ),
        Table(
            "support_tickets",
            "Support tickets (free text is not kept; ids only).",
            (
                _c("ticket_id", "VARCHAR", nullable=False),
                _c("account_id", "VARCHAR", nullable=False),
                _c("created_at", TS, nullable=False),
                _c("severity", "VARCHAR", "low | medium | high | urgent"),
                _c("category", "VARCHAR"),
                _c("status", "VARCHAR"),
                _c("resolved_at", TS),
                _c("source", "VARCHAR"),
            ),
            primary_key=("ticket_id",),
        ),
        Table(
            "fx_rates",
            "Daily exchange rates: 1 unit of `currency` = `rate_to_usd` USD.",
            (
                _c("date", "DATE", nullable=False),
                _c("currency", "VARCHAR", nullable=False),
                _c("rate_to_usd", "DECIMAL(18, 9)", nullable=False),
            ),
            primary_key=("date", "currency"),
        ),
        Table(
            "quarantine",
            "Every rejected record with its reason; values redacted.",
            (
                _c(
                    "quarantine_id",
                    "VARCHAR",
                    "stable hash of (source_file, line, event_id, rule, column)",
                    nullable=False,
                ),
                _c("load_id", "VARCHAR", nullable=False),
                _c("source", "VARCHAR", nullable=False),
                _c("source_file", "VARCHAR"),
                _c("line", "INTEGER"),
                _c("event_id", "VARCHAR"),
                _c("table_name", "VARCHAR"),
                _c("column_name", "VARCHAR"),
                _c(
                    "rule",
                    "VARCHAR",
                    "e.g. malformed_json, missing_required, not_negative, conflict",
                    nullable=False,
                ),
                _c("message", "VARCHAR", "what is wrong and what to do", nullable=False),
                _c(
                    "value_redacted",
                    "VARCHAR",
                    "the offending value, card numbers and personal data redacted",
                ),
                _c("received_at", TS, nullable=False),
            ),
            primary_key=("quarantine_id",),
        ),
        Table(
            "loads",
            "One row per input file per load, with its conservation counts.",
            (
                _c("load_id", "VARCHAR", nullable=False),
                _c("source", "VARCHAR", nullable=False),
                _c("source_file", "VARCHAR", "lake path", nullable=False),
                _c("file_sha256", "VARCHAR", nullable=False),
                _c("received", "BIGINT", nullable=False),
                _c("accepted", "BIGINT", nullable=False),
                _c("quarantined", "BIGINT", nullable=False),
                _c("duplicates", "BIGINT", nullable=False),
                _c(
                    "status",
                    "VARCHAR",
                    "ok | failed | superseded (re-mapped, or failed and loaded since, by a later load)",
                    nullable=False,
                ),
                _c("message", "VARCHAR"),
                _c("started_at", TS, nullable=False),
                _c("finished_at", TS),
                _c(
                    "redactions",
                    "BIGINT",
                    "card numbers redacted from the file before anything was written",
                ),
                _c("original_path", "VARCHAR", "where the file was received from"),
                _c("mapping", "VARCHAR", "CSV sources: lake path of the mapping used"),
            ),
            primary_key=("load_id", "source_file"),
        ),
    )
}


def create_tables(con, tables) -> None:  # noqa: ANN001 - a duckdb connection
    """Create the tables (objects with ``ddl()``) that do not exist yet, in one transaction:
    a process killed half-way leaves either all of them or none."""
    import duckdb

    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.TransactionException:  # the caller's transaction already covers it
        for table in tables:
            con.execute(table.ddl())
        return
    try:
        for table in tables:
            con.execute(table.ddl())
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def create_all(con) -> None:  # noqa: ANN001 - a duckdb connection
    """Create every canonical table that does not exist yet, in one transaction (verify
    treats none as an empty store)."""
    create_tables(con, TABLES.values())
