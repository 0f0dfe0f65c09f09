"""Current-state tables, derived from the version tables in SQL.

The rule everywhere: per object, the version with the largest ``(version_at,
event_id)`` wins. A version that only says "deleted" (an old API's deletion stub,
without the object's fields) marks the object deleted but does not blank its
other columns. Because these are pure functions of the stored versions, the
result does not depend on the order in which events arrived.

Refreshes are incremental: the caller fills ``wb_t_<entity>`` temp tables with the
ids touched by a load and only those objects are recomputed. Payment attempts,
refunds and disputes link to each other and to invoices (an attempt's invoice may
only be known through its payment intent), so they are recomputed whole whenever a
load touched any of them; they are small next to the events.

Every function takes a DuckDB connection or an engine: on a
:class:`~workbench.engines.SparkEngine` the same statements run transpiled, the DML
(``CREATE TEMP TABLE t (...)``, ``DELETE``, ``INSERT [OR REPLACE] ... BY NAME``) on temp
views (see :mod:`workbench.engines`).
"""

from __future__ import annotations

import logging

import duckdb

from workbench.engines import Engine

log = logging.getLogger(__name__)

#: Stand-in item id for a subscription version without items (the history's key
#: includes ``item_id``, and DuckDB key columns cannot be null).
NO_ITEM = ""

TOUCHED = ("accounts", "prices", "subscriptions", "invoices", "payments")


def create_touched(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Create empty ``wb_t_<entity>`` tables (one ``id`` column each) and ``wb_personal_acc``."""
    for name in TOUCHED:
        con.execute(f"CREATE OR REPLACE TEMP TABLE wb_t_{name} (id VARCHAR)")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE wb_personal_acc "
        "(event_id VARCHAR, version_at TIMESTAMPTZ, account_id VARCHAR, name VARCHAR, email VARCHAR)"
    )


def touch_all(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Mark every object in the version tables as touched (for a full rebuild)."""
    con.execute("INSERT INTO wb_t_accounts SELECT DISTINCT account_id FROM account_versions")
    con.execute("INSERT INTO wb_t_prices SELECT DISTINCT price_id FROM price_versions")
    con.execute(
        "INSERT INTO wb_t_subscriptions SELECT DISTINCT subscription_id FROM subscription_versions"
    )
    con.execute("INSERT INTO wb_t_invoices SELECT DISTINCT invoice_id FROM invoice_versions")
    con.execute("INSERT INTO wb_t_payments VALUES ('*')")


def _latest(table: str, key: str, *, touched: str) -> str:
    """Latest non-stub version per key (a stub only when there is nothing else)."""
    return f"""
        SELECT *,
               max(version_at) OVER (PARTITION BY {key}) AS last_at,
               bool_or(coalesce(deleted, false)) OVER (PARTITION BY {key}) AS any_deleted
        FROM {table}
        WHERE {key} IN (SELECT id FROM wb_t_{touched})
        QUALIFY row_number() OVER (
            PARTITION BY {key}
            ORDER BY (coalesce(deleted, false) AND created IS NULL), version_at DESC, event_id DESC
        ) = 1
    """


def refresh_accounts(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Recompute ``accounts`` rows of touched accounts; personal columns come from the
    latest version that carried them (``wb_personal_acc`` or the current row), and stay
    empty for a customer in ``erasures``: a file loaded (or re-mapped) after an erasure that
    still names the customer does not bring the name or e-mail back."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE wb_personal_merged AS
        SELECT account_id, name, email, event_id, version_at FROM (
            SELECT account_id, name, email, event_id, version_at FROM wb_personal_acc
            UNION ALL
            SELECT a.account_id, a.name, a.email, s.event_id, s.version_at
            FROM accounts a JOIN account_personal_source s USING (account_id)
            WHERE a.account_id IN (SELECT id FROM wb_t_accounts)
        )
        QUALIFY row_number() OVER (PARTITION BY account_id ORDER BY version_at DESC, event_id DESC) = 1
        """
    )
    con.execute("DELETE FROM accounts WHERE account_id IN (SELECT id FROM wb_t_accounts)")
    con.execute(
        f"""
        INSERT INTO accounts BY NAME
        SELECT v.account_id,
               CASE WHEN e.customer_id IS NULL THEN p.name END AS name,
               CASE WHEN e.customer_id IS NULL THEN p.email END AS email, v.currency, v.country, v.region, v.channel,
               v.industry, v.size, v.created, v.delinquent, v.any_deleted AS deleted,
               v.metadata, v.source, v.last_at AS updated_at
        FROM ({_latest("account_versions", "account_id", touched="accounts")}) v
        LEFT JOIN wb_personal_merged p USING (account_id)
        LEFT JOIN (SELECT DISTINCT customer_id FROM erasures) e
            ON e.customer_id = v.account_id
        """
    )
    con.execute(
        """
        INSERT OR REPLACE INTO account_personal_source
        SELECT account_id, event_id, version_at FROM wb_personal_merged
        """
    )


def refresh_prices(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Recompute ``prices`` rows of touched prices (a deleted price is inactive)."""
    con.execute("DELETE FROM prices WHERE price_id IN (SELECT id FROM wb_t_prices)")
    con.execute(
        f"""
        INSERT INTO prices BY NAME
        SELECT price_id, product_id, nickname, currency, unit_amount, billing_scheme, usage_type,
               interval, interval_count,
               CASE WHEN any_deleted THEN false ELSE active END AS active,
               created, last_at AS updated_at
        FROM ({_latest("price_versions", "price_id", touched="prices")})
        WHERE currency IS NOT NULL
        """
    )


def refresh_subscriptions(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Recompute ``subscriptions``, ``subscription_items`` and ``subscription_history`` of
    touched subscriptions."""
    touched = "(SELECT id FROM wb_t_subscriptions)"
    con.execute(f"DELETE FROM subscriptions WHERE subscription_id IN {touched}")
    con.execute(
        f"""
        INSERT INTO subscriptions BY NAME
        SELECT subscription_id, account_id,
               CASE WHEN any_deleted THEN 'canceled' ELSE status END AS status,
               currency, created, start_date, current_period_start, current_period_end,
               trial_start, trial_end, cancel_at_period_end, cancel_at, canceled_at, ended_at,
               coupon_id, discount_percent_off, discount_amount_off, discount_duration,
               discount_duration_in_months, discount_start, discount_end,
               last_at AS updated_at
        FROM ({_latest("subscription_versions", "subscription_id", touched="subscriptions")})
        WHERE account_id IS NOT NULL AND status IS NOT NULL
        """
    )
    con.execute(f"DELETE FROM subscription_items WHERE subscription_id IN {touched}")
    con.execute(
        f"""
        INSERT OR REPLACE INTO subscription_items BY NAME
        WITH latest AS (
            SELECT subscription_id, event_id AS latest_event FROM subscription_versions
            WHERE subscription_id IN {touched}
            QUALIFY row_number() OVER (
                PARTITION BY subscription_id ORDER BY version_at DESC, event_id DESC) = 1
        ),
        items AS (
            SELECT i.*, s.version_at FROM subscription_item_versions i
            JOIN subscription_versions s USING (event_id, subscription_id)
            WHERE i.subscription_id IN {touched}
            QUALIFY row_number() OVER (
                PARTITION BY i.item_id ORDER BY s.version_at DESC, i.event_id DESC) = 1
        )
        SELECT i.item_id, i.subscription_id, i.price_id, i.quantity, i.created,
               i.event_id <> l.latest_event AS deleted, i.version_at AS updated_at
        FROM items i JOIN latest l USING (subscription_id)
        """
    )
    con.execute(f"DELETE FROM subscription_history WHERE subscription_id IN {touched}")
    con.execute(
        f"""
        INSERT INTO subscription_history BY NAME
        WITH s AS (
            SELECT *, lead(version_at) OVER (
                PARTITION BY subscription_id ORDER BY version_at, event_id) AS valid_to
            FROM subscription_versions WHERE subscription_id IN {touched}
        )
        SELECT s.subscription_id, s.account_id, coalesce(i.item_id, '{NO_ITEM}') AS item_id,
               i.price_id, i.quantity, i.unit_amount, coalesce(i.currency, s.currency) AS currency,
               i.interval, i.interval_count, i.usage_type, s.status, s.trial_start, s.trial_end,
               s.cancel_at_period_end,
               coalesce(s.current_period_start, i.current_period_start) AS current_period_start,
               coalesce(s.current_period_end, i.current_period_end) AS current_period_end,
               s.canceled_at, s.ended_at, s.coupon_id, s.discount_percent_off,
               s.discount_amount_off, s.discount_duration, s.discount_duration_in_months,
               s.discount_start, s.discount_end,
               s.version_at AS valid_from, s.valid_to, s.event_id
        FROM s LEFT JOIN subscription_item_versions i USING (event_id, subscription_id)
        WHERE s.subscription_id NOT IN (SELECT subscription_id FROM subscription_history_csv)
        """
    )
    # A mapping that gives the history itself (valid_from/valid_to from the source) wins.
    con.execute(
        f"""
        INSERT OR REPLACE INTO subscription_history BY NAME
        SELECT * EXCLUDE (load_id) FROM subscription_history_csv WHERE subscription_id IN {touched}
        """
    )


def refresh_invoices(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Recompute ``invoices`` and ``invoice_lines`` of touched invoices (a deleted draft
    has no row)."""
    touched = "(SELECT id FROM wb_t_invoices)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE wb_inv_latest AS
        {_latest("invoice_versions", "invoice_id", touched="invoices")}
        """
    )
    con.execute(f"DELETE FROM invoices WHERE invoice_id IN {touched}")
    con.execute(
        """
        INSERT INTO invoices BY NAME
        SELECT * EXCLUDE (event_id, version_at, deleted, lines_hash, last_at, any_deleted),
               last_at AS updated_at
        FROM wb_inv_latest WHERE NOT any_deleted
        """
    )
    con.execute(f"DELETE FROM invoice_lines WHERE invoice_id IN {touched}")
    con.execute(
        """
        INSERT OR REPLACE INTO invoice_lines BY NAME
        SELECT l.* EXCLUDE (event_id, lines_hash)
        FROM invoice_line_versions l JOIN wb_inv_latest v USING (invoice_id, lines_hash)
        WHERE NOT v.any_deleted
        """
    )


def refresh_payments(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Recompute ``payment_attempts``, ``refunds`` and ``disputes`` whole.

    An attempt's invoice is the charge's own ``invoice``, else the invoice with its
    payment intent, else the invoice naming it as its charge; ``attempt_number`` counts
    the attempts of one invoice by (created, id). ``amount_refunded`` is the larger of
    the charge's figure and the sum of its succeeded refunds; ``disputed`` is set by a
    dispute too. A dispute's ``closed_at`` is when it first reached a final status.
    """
    con.execute("DELETE FROM payment_attempts")
    con.execute(
        """
        INSERT INTO payment_attempts BY NAME
        WITH c AS (
            SELECT * FROM charge_versions
            QUALIFY row_number() OVER (PARTITION BY attempt_id ORDER BY version_at DESC, event_id DESC) = 1
        ),
        r AS (
            SELECT charge_id, sum(amount) FILTER (WHERE status IN ('succeeded', 'pending')) AS refunded
            FROM (SELECT * FROM refund_versions QUALIFY row_number() OVER (
                    PARTITION BY refund_id ORDER BY version_at DESC, event_id DESC) = 1)
            GROUP BY charge_id
        ),
        d AS (SELECT DISTINCT charge_id FROM dispute_versions),
        by_pi AS (SELECT payment_intent_id, min(invoice_id) AS inv FROM invoices
                  WHERE payment_intent_id IS NOT NULL GROUP BY 1),
        by_ch AS (SELECT charge_id, min(invoice_id) AS inv FROM invoices
                  WHERE charge_id IS NOT NULL GROUP BY 1),
        j AS (
            SELECT c.*, coalesce(c.invoice_id, by_pi.inv, by_ch.inv) AS inv,
                   r.refunded, d.charge_id IS NOT NULL AS has_dispute
            FROM c
            LEFT JOIN by_pi ON c.payment_intent_id = by_pi.payment_intent_id
            LEFT JOIN by_ch ON c.attempt_id = by_ch.charge_id
            LEFT JOIN r ON r.charge_id = c.attempt_id
            LEFT JOIN d ON d.charge_id = c.attempt_id
        )
        SELECT j.attempt_id, j.inv AS invoice_id, coalesce(j.account_id, i.account_id) AS account_id,
               j.payment_intent_id, j.created, j.amount, j.currency, j.status, j.failure_code,
               j.decline_code, j.outcome_type,
               CASE WHEN j.inv IS NOT NULL THEN row_number() OVER (
                   PARTITION BY j.inv ORDER BY j.created, j.attempt_id) END AS attempt_number,
               j.card_brand, j.card_last4, j.card_exp_month, j.card_exp_year,
               CASE WHEN j.amount_refunded IS NULL AND j.refunded IS NULL THEN NULL
                    ELSE greatest(coalesce(j.amount_refunded, 0), coalesce(j.refunded, 0)) END
                   AS amount_refunded,
               coalesce(j.disputed, false) OR j.has_dispute AS disputed
        FROM j LEFT JOIN invoices i ON i.invoice_id = j.inv
        """
    )
    con.execute("DELETE FROM refunds")
    con.execute(
        """
        INSERT INTO refunds BY NAME
        SELECT r.refund_id, r.charge_id, p.invoice_id, p.account_id, r.amount, r.currency,
               r.created, r.reason, r.status
        FROM refund_versions r LEFT JOIN payment_attempts p ON p.attempt_id = r.charge_id
        QUALIFY row_number() OVER (PARTITION BY r.refund_id ORDER BY r.version_at DESC, r.event_id DESC) = 1
        """
    )
    con.execute("DELETE FROM disputes")
    con.execute(
        """
        INSERT INTO disputes BY NAME
        SELECT d.dispute_id, d.charge_id, p.account_id, d.amount, d.currency, d.reason, d.status,
               d.created,
               min(d.version_at) FILTER (WHERE d.status IN
                   ('won', 'lost', 'warning_closed', 'charge_refunded', 'prevented'))
                   OVER (PARTITION BY d.dispute_id) AS closed_at
        FROM dispute_versions d LEFT JOIN payment_attempts p ON p.attempt_id = d.charge_id
        QUALIFY row_number() OVER (PARTITION BY d.dispute_id ORDER BY d.version_at DESC, d.event_id DESC) = 1
        """
    )


def refresh(con: duckdb.DuckDBPyConnection | Engine) -> None:
    """Recompute every current-state table for the touched ids, in dependency order."""
    refresh_accounts(con)
    refresh_prices(con)
    refresh_subscriptions(con)
    refresh_invoices(con)
    payments = con.execute(
        "SELECT (SELECT count(*) FROM wb_t_payments) + (SELECT count(*) FROM wb_t_invoices)"
    ).fetchall()[0][0]
    if payments:
        refresh_payments(con)
