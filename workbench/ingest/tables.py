"""Ingestion's internal warehouse tables: every accepted version of every object.

Current-state tables (``accounts``, ``subscriptions``, ``invoices`` ...) are derived
from these version tables, always by the same rule: per object, the version with
the largest ``(version_at, event_id)`` wins. Because the versions are kept, any
arrival order of the same events gives the same current state, and a replayed
event changes nothing.

``version_at`` is the event's ``created`` time (for rows from CSV exports, the
time the file was received). Personal data (names, e-mails) is *not* kept in
versions; it lives only in ``accounts`` (see :mod:`workbench.ingest.derive`).
"""

from __future__ import annotations

from workbench.schema import TABLES, Column, Table, create_tables

TS = "TIMESTAMPTZ"


def _c(name: str, type_: str, description: str = "") -> Column:
    return Column(name=name, type=type_, nullable=True, description=description)


def _like(table: str, *, drop: tuple[str, ...] = ()) -> tuple[Column, ...]:
    """The canonical table's columns, all nullable (versions are validated by contracts)."""
    return tuple(
        Column(name=c.name, type=c.type, nullable=True, description=c.description)
        for c in TABLES[table].columns
        if c.name not in drop
    )


_VERSION_KEY = (
    Column("event_id", "VARCHAR", nullable=False, description="the event this version came from"),
    Column("version_at", TS, nullable=False, description="order key with event_id"),
)

INTERNAL: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "account_versions",
            "Every accepted version of every account (no personal data).",
            (*_VERSION_KEY, *_like("accounts", drop=("name", "email", "updated_at"))),
        ),
        Table(
            "account_personal_source",
            "Which version the personal columns of ``accounts`` come from (ids only).",
            (
                Column("account_id", "VARCHAR", nullable=False),
                Column("event_id", "VARCHAR", nullable=False),
                Column("version_at", TS, nullable=False),
            ),
            primary_key=("account_id",),
        ),
        Table(
            "price_versions",
            "Every version of every price or plan, including those embedded in items and lines.",
            (*_VERSION_KEY, *_like("prices", drop=("updated_at",)), _c("deleted", "BOOLEAN")),
        ),
        Table(
            "subscription_versions",
            "Every version of every subscription.",
            (
                *_VERSION_KEY,
                *_like("subscriptions", drop=("updated_at",)),
                _c("deleted", "BOOLEAN"),
            ),
        ),
        Table(
            "subscription_item_versions",
            "The items of every subscription version, with their embedded price.",
            (
                Column("event_id", "VARCHAR", nullable=False),
                *_like("subscription_items", drop=("deleted", "updated_at")),
                _c("unit_amount", "BIGINT"),
                _c("currency", "VARCHAR"),
                _c("interval", "VARCHAR"),
                _c("interval_count", "INTEGER"),
                _c("usage_type", "VARCHAR"),
                _c("current_period_start", TS),
                _c("current_period_end", TS),
            ),
        ),
        Table(
            "invoice_versions",
            "Every version of every invoice.",
            (
                *_VERSION_KEY,
                *_like("invoices", drop=("updated_at",)),
                _c("deleted", "BOOLEAN"),
                _c(
                    "lines_hash",
                    "VARCHAR",
                    "which line set (invoice_line_versions) this version has",
                ),
            ),
        ),
        Table(
            "invoice_line_versions",
            "Every distinct set of lines of every invoice (keyed by invoice_id, lines_hash); "
            "event_id is the first accepted event that carried it.",
            (
                Column("event_id", "VARCHAR", nullable=False),
                _c("lines_hash", "VARCHAR", "hash of the lines' JSON (or the CSV row's id)"),
                *_like("invoice_lines"),
            ),
        ),
        Table(
            "charge_versions",
            "Every version of every charge (payment attempt).",
            (
                *_VERSION_KEY,
                *_like("payment_attempts", drop=("attempt_number",)),
            ),
        ),
        Table(
            "refund_versions",
            "Every version of every refund (standalone or embedded in a charge).",
            (*_VERSION_KEY, *_like("refunds", drop=("invoice_id", "account_id"))),
        ),
        Table(
            "dispute_versions",
            "Every version of every dispute.",
            (*_VERSION_KEY, *_like("disputes", drop=("account_id", "closed_at"))),
        ),
        Table(
            "subscription_history_csv",
            "Subscription history rows given as such by a CSV mapping (kept as given).",
            (
                *TABLES["subscription_history"].columns,
                Column("load_id", "VARCHAR", description="the load that wrote the row"),
            ),
            primary_key=TABLES["subscription_history"].primary_key,
        ),
        Table(
            "upsert_sources",
            "Which CSV load last wrote each row of the tables CSV files upsert by key (usage, "
            "CRM signals, support tickets, FX rates): a re-map takes out only its file's rows "
            "and leaves keys a later file wrote.",
            (
                Column("table_name", "VARCHAR", nullable=False),
                Column("row_key", "VARCHAR", nullable=False, description="primary key as text"),
                Column("source_file", "VARCHAR", nullable=False, description="lake path"),
                Column("load_id", "VARCHAR", nullable=False),
                Column("version_at", TS, nullable=False, description="when the file arrived"),
            ),
            primary_key=("table_name", "row_key"),
        ),
        Table(
            "erasures",
            "Every personal-data erasure: who, why, and each lake file it rewrote.",
            (
                Column("erasure_id", "VARCHAR", nullable=False),
                Column("customer_id", "VARCHAR", nullable=False),
                Column("who", "VARCHAR", nullable=False),
                Column("why", "VARCHAR", nullable=False),
                Column("erased_at", TS, nullable=False),
                Column("lake_file", "VARCHAR", description="null for the summary row"),
                Column("old_sha256", "VARCHAR"),
                Column("new_sha256", "VARCHAR"),
                Column("values_erased", "BIGINT"),
            ),
        ),
    )
}

#: Version table -> (canonical table whose contract applies, key column).
VERSION_OF: dict[str, tuple[str, str]] = {
    "account_versions": ("accounts", "account_id"),
    "price_versions": ("prices", "price_id"),
    "subscription_versions": ("subscriptions", "subscription_id"),
    "subscription_item_versions": ("subscription_items", "item_id"),
    "invoice_versions": ("invoices", "invoice_id"),
    "invoice_line_versions": ("invoice_lines", "line_id"),
    "charge_versions": ("payment_attempts", "attempt_id"),
    "refund_versions": ("refunds", "refund_id"),
    "dispute_versions": ("disputes", "dispute_id"),
}


def create_internal(con) -> None:  # noqa: ANN001 - a duckdb connection or an engine
    """Create ingestion's internal tables that do not exist yet, in one transaction on DuckDB
    (a load killed half-way leaves all of them or none; verify accepts none before the first
    load)."""
    import duckdb

    if isinstance(con, duckdb.DuckDBPyConnection):
        create_tables(con, INTERNAL.values())
        return
    for table in INTERNAL.values():
        con.execute(table.ddl())
