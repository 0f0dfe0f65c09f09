"""Leakage: nothing that happens after t can change a feature (or a spine row) as of t.

Property: on random warehouses, changing, deleting or adding any event after t, and
rewriting every field that only describes the current state, leaves every feature of
every entity as of any time <= t unchanged. Reference check: building on the tables as
they were known at t (:func:`known_at`) gives the same values as building on everything.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from workbench.features.offline import (
    build_features,
    churn_spine,
    known_at,
    recovery_spine,
    ts_literal,
)
from workbench.features.synthetic import random_warehouse

START, END = pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC")


def _sel(col: str, salt: int, share: float) -> str:
    return f"(hash({col} || '{salt}') % 1000) < {int(share * 1000)}"


def mutate_after(con: duckdb.DuckDBPyConnection, t: pd.Timestamp, salt: int) -> int:
    """Change, delete and add events after ``t``; scramble current-state fields. Returns
    the number of rows touched (so a test can insist that something changed)."""
    T = ts_literal(t)
    s = salt
    stmts = [
        # payment attempts after t: delete, rewrite, add
        f"DELETE FROM payment_attempts WHERE created > {T} AND {_sel('attempt_id', s, 0.3)}",
        f"""UPDATE payment_attempts SET
              status = CASE WHEN status = 'failed' THEN 'succeeded' ELSE 'failed' END,
              decline_code = 'lost_card', failure_code = 'card_declined', amount = amount * 3 + 1,
              card_exp_year = card_exp_year + 1, created = created + INTERVAL 17 HOUR
            WHERE created > {T} AND {_sel("attempt_id", s + 1, 0.6)}""",
        f"""INSERT INTO payment_attempts SELECT * REPLACE (
              attempt_id || '_late' AS attempt_id, created + INTERVAL 3 DAY AS created,
              'failed' AS status, 'insufficient_funds' AS decline_code)
            FROM payment_attempts
            WHERE created + INTERVAL 3 DAY > {T} AND {_sel("attempt_id", s + 2, 0.3)}""",
        # invoices: after-t facts, and current-state fields of every invoice
        f"""UPDATE invoices SET amount_due = amount_due * 2 + 7, total = total * 2,
              currency = 'xxx', billing_reason = 'manual'
            WHERE created > {T}""",
        f"DELETE FROM invoices WHERE created > {T} AND {_sel('invoice_id', s + 3, 0.3)}",
        f"""UPDATE invoices SET paid_at = CASE WHEN {_sel("invoice_id", s + 4, 0.5)}
                                               THEN paid_at + INTERVAL 5 DAY END
            WHERE paid_at > {T}""",
        f"""UPDATE invoices SET paid_at = {T} + INTERVAL 2 DAY
            WHERE paid_at IS NULL AND {_sel("invoice_id", s + 5, 0.5)}""",
        f"UPDATE invoices SET voided_at = NULL WHERE voided_at > {T}",
        f"""UPDATE invoices SET marked_uncollectible_at = {T} + INTERVAL 1 HOUR
            WHERE marked_uncollectible_at > {T}
               OR (paid_at IS NULL AND marked_uncollectible_at IS NULL
                   AND {_sel("invoice_id", s + 6, 0.3)})""",
        """UPDATE invoices SET status = CASE WHEN status = 'paid' THEN 'open' ELSE 'paid' END,
              amount_paid = 0, amount_remaining = amount_due, attempt_count = 99,
              next_payment_attempt = NULL""",
        # subscription history: versions after t, and the end of the version in force at t
        f"DELETE FROM subscription_history WHERE valid_from > {T} AND {_sel('event_id', s + 7, 0.3)}",
        f"""UPDATE subscription_history SET status = 'canceled', quantity = quantity + 5,
              unit_amount = unit_amount * 2, coupon_id = 'late', discount_start = valid_from,
              valid_from = valid_from + INTERVAL 1 HOUR
            WHERE valid_from > {T} AND {_sel("event_id", s + 8, 0.6)}""",
        f"""UPDATE subscription_history SET valid_to = CASE WHEN {_sel("event_id", s + 9, 0.5)}
                                                        THEN valid_to + INTERVAL 9 DAY END
            WHERE valid_to > {T}""",
        f"""INSERT INTO subscription_history SELECT * REPLACE (
              'evt_late_' || event_id AS event_id, {T} + INTERVAL 1 DAY AS valid_from,
              NULL AS valid_to, 'active' AS status, 100000 AS unit_amount)
            FROM subscription_history
            WHERE valid_from <= {T} AND (valid_to IS NULL OR valid_to > {T})""",
        # daily tables: days not over at t
        f"""UPDATE usage SET quantity = quantity * 10 + 1
            WHERE CAST(date AS TIMESTAMP) + INTERVAL 1 DAY > CAST({T} AT TIME ZONE 'UTC' AS TIMESTAMP)""",
        f"""INSERT INTO usage SELECT account_id, CAST({T} AT TIME ZONE 'UTC' AS DATE), 'late_metric',
              1000.0, 'test' FROM accounts""",
        f"""UPDATE crm_signals SET health_score = 1, nps = -100, seats_purchased = 1, seats_used = 999
            WHERE CAST(date AS TIMESTAMP) + INTERVAL 1 DAY > CAST({T} AT TIME ZONE 'UTC' AS TIMESTAMP)""",
        f"""DELETE FROM crm_signals WHERE {_sel("account_id || CAST(date AS VARCHAR)", s + 10, 0.3)}
            AND CAST(date AS TIMESTAMP) + INTERVAL 1 DAY > CAST({T} AT TIME ZONE 'UTC' AS TIMESTAMP)""",
        # tickets, disputes, refunds, accounts
        f"UPDATE support_tickets SET severity = 'urgent' WHERE created_at > {T}",
        f"""INSERT INTO support_tickets SELECT ticket_id || '_late', account_id,
              created_at + INTERVAL 10 DAY, 'urgent', category, 'open', NULL, source
            FROM support_tickets WHERE created_at + INTERVAL 10 DAY > {T}""",
        f"UPDATE support_tickets SET resolved_at = NULL WHERE resolved_at > {T}",
        "UPDATE support_tickets SET status = 'closed'",
        f"UPDATE disputes SET amount = amount * 5 WHERE created > {T}",
        f"DELETE FROM disputes WHERE created > {T} AND {_sel('dispute_id', s + 11, 0.3)}",
        f"""UPDATE disputes SET status = 'lost', closed_at = CASE WHEN closed_at > {T}
              THEN closed_at + INTERVAL 1 DAY END WHERE closed_at IS NULL OR closed_at > {T}""",
        f"UPDATE refunds SET amount = amount * 5 WHERE created > {T}",
        "UPDATE refunds SET status = 'canceled'",
        f"DELETE FROM accounts WHERE created > {T} AND {_sel('account_id', s + 12, 0.5)}",
    ]
    touched = 0
    for sql in stmts:
        touched += con.execute(sql).fetchall()[0][0]
    return touched


def _spines(con: duckdb.DuckDBPyConnection, t: pd.Timestamp) -> dict[str, pd.DataFrame]:
    accounts = con.execute("SELECT account_id FROM accounts ORDER BY 1").df().account_id
    subs = (
        con.execute("SELECT DISTINCT subscription_id FROM subscription_history ORDER BY 1")
        .df()
        .subscription_id
    )
    invoices = (
        con.execute(f"SELECT invoice_id FROM invoices WHERE created <= {ts_literal(t)} ORDER BY 1")
        .df()
        .invoice_id
    )
    times = [
        t,
        t - pd.Timedelta(microseconds=1),
        t - pd.Timedelta(days=31),
        t - pd.Timedelta(days=95),
    ]

    def grid(col, ids, ts):
        return pd.DataFrame([(i, x) for x in ts for i in ids], columns=[col, "as_of"]).astype(
            {"as_of": "datetime64[us, UTC]"}
        )

    return {
        "account_id": grid("account_id", accounts, times),
        "subscription_id": grid("subscription_id", subs, times[:2]),
        "invoice_id": grid("invoice_id", invoices, times[:2]),
    }


def _pick_t(con, frac: float, snap: str) -> pd.Timestamp:
    t = START + (END - START) * frac
    if snap == "attempt":
        got = con.execute(
            f"SELECT min(created) FROM payment_attempts WHERE created >= {ts_literal(t)}"
        ).fetchall()[0][0]
        t = pd.Timestamp(got) if got is not None else t
    elif snap == "midnight":
        t = t.floor("D")
    return pd.Timestamp(t).tz_convert("UTC").floor("us")


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    seed=st.integers(0, 100_000),
    frac=st.floats(0.15, 0.95),
    salt=st.integers(0, 10_000),
    snap=st.sampled_from(["none", "attempt", "midnight"]),
    micro=st.booleans(),
)
def test_events_after_t_never_change_features_as_of_t(seed, frac, salt, snap, micro) -> None:
    con = duckdb.connect()
    random_warehouse(
        con,
        n_accounts=8,
        start=START,
        end=END,
        seed=seed,
        change_every_days=30,
        tickets_per_month=0.6,
        dispute_rate=0.03,
        resolution_us=1 if micro else 1_000_000,
    )
    t = _pick_t(con, frac, snap)
    spines = _spines(con, t)
    before = {e: build_features(con, sp) for e, sp in spines.items()}
    churn_before = churn_spine(con, start=START, end=t)
    recovery_before = recovery_spine(con, end=t, each_attempt=True)
    assert mutate_after(con, t, salt) > 0
    for e, sp in spines.items():
        pd.testing.assert_frame_equal(
            before[e], build_features(con, sp), rtol=1e-9, obj=f"{e} features as of <= {t}"
        )
    pd.testing.assert_frame_equal(churn_before, churn_spine(con, start=START, end=t))
    pd.testing.assert_frame_equal(recovery_before, recovery_spine(con, end=t, each_attempt=True))


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(seed=st.integers(0, 100_000), frac=st.floats(0.2, 0.95))
def test_tables_as_known_at_t_give_the_same_features(seed: int, frac: float) -> None:
    """Building on the truncated tables (later rows dropped, later times and current-state
    fields nulled) equals building on everything, for rows as of <= t."""
    con = duckdb.connect()
    random_warehouse(
        con,
        n_accounts=8,
        start=START,
        end=END,
        seed=seed,
        change_every_days=30,
        tickets_per_month=0.6,
        dispute_rate=0.03,
        pending_share=0.25,  # bank debits: outcome known hours after the charge
    )
    t = _pick_t(con, frac, "none")
    for e, sp in _spines(con, t).items():
        full = build_features(con, sp)
        known = build_features(con, sp, relations=known_at(t))
        pd.testing.assert_frame_equal(full, known, rtol=1e-9, obj=f"{e} as of <= {t}")


def test_mutation_really_changes_features_after_t() -> None:
    """The mutations are strong enough to move features as of a time after t (so the
    property above is not vacuous)."""
    con = duckdb.connect()
    random_warehouse(con, n_accounts=8, start=START, end=END, seed=11, change_every_days=30)
    t = _pick_t(con, 0.5, "none")
    later = _spines(con, END)["account_id"]
    before = build_features(con, later)
    mutate_after(con, t, 5)
    after = build_features(con, later)
    changed = [c for c in before.columns[2:] if not before[c].equals(after[c])]
    assert len(changed) >= 30, changed
    assert not np.array_equal(before["mrr"], after["mrr"])


def test_a_charge_pending_at_t_is_not_a_failure_at_t() -> None:
    """A bank debit pending at t that fails later: as of t there is no failed payment and
    no invoice in dunning; from its failure on there is (the failure is dated when the
    charge version reporting it was recorded, not at the charge's creation)."""
    con = duckdb.connect()
    random_warehouse(con, n_accounts=40, start=START, end=END, seed=3, pending_share=0.3)
    att, inv, acc, created, failed_at = con.execute(
        """SELECT p.attempt_id, p.invoice_id, i.account_id, p.created, v.version_at
           FROM payment_attempts p JOIN invoices i USING (invoice_id)
           JOIN charge_versions v ON v.attempt_id = p.attempt_id AND v.status = 'failed'
           WHERE p.status = 'failed' AND p.attempt_number = 1 AND v.version_at > p.created
             AND (i.paid_at IS NULL OR i.paid_at > v.version_at + INTERVAL 1 HOUR)
           ORDER BY p.created LIMIT 1"""
    ).fetchone()
    mid = pd.Timestamp(created).tz_convert("UTC") + (failed_at - created) / 2
    after = pd.Timestamp(failed_at).tz_convert("UTC") + pd.Timedelta(minutes=30)
    spine = pd.DataFrame({"invoice_id": [inv, inv], "as_of": [mid, after]})
    got = build_features(con, spine, features=["invoice_failed_attempts"])
    assert got["invoice_failed_attempts"].tolist() == [0, 1]
    accounts = pd.DataFrame({"account_id": [acc, acc], "as_of": [mid, after]})
    failed = build_features(con, accounts, features=["failed_payments_7d"])["failed_payments_7d"]
    assert failed.iloc[1] == failed.iloc[0] + 1, att
    assert inv not in set(recovery_spine(con, end=mid)["invoice_id"])
    first = recovery_spine(con).set_index("invoice_id").loc[inv, "as_of"]
    assert first >= pd.Timestamp(failed_at).tz_convert("UTC")


def test_an_amount_changed_after_t_is_not_known_at_t() -> None:
    """A credit note halves an invoice in dunning: before it, the invoice's amount is the
    original one (on the full warehouse and on what was known then); after it, the new one.
    The account's amount in dunning stays the amount recorded at the first failure."""
    con = duckdb.connect()
    random_warehouse(con, n_accounts=30, start=START, end=END, seed=4)
    inv, acc, created, amount, failed = con.execute(
        """SELECT i.invoice_id, i.account_id, i.created, i.amount_due, min(p.created)
           FROM invoices i JOIN payment_attempts p USING (invoice_id)
           WHERE p.status = 'failed'
           GROUP BY i.invoice_id, i.account_id, i.created, i.amount_due, i.paid_at,
                    i.voided_at, i.marked_uncollectible_at
           HAVING coalesce(least(i.paid_at, i.voided_at, i.marked_uncollectible_at),
                           TIMESTAMPTZ '2100-01-01') > min(p.created) + INTERVAL 4 DAY
              AND min(p.created) < TIMESTAMPTZ '2024-02-01'
           ORDER BY i.created LIMIT 1"""
    ).fetchone()
    credit = pd.Timestamp(failed).tz_convert("UTC") + pd.Timedelta(days=2)
    for at, due in ((created, amount), (credit, amount // 2)):
        con.execute(
            "INSERT INTO invoice_versions (event_id, version_at, invoice_id, account_id, amount_due) "
            "VALUES (?, ?, ?, ?, ?)",
            [f"evt_{due}", at, inv, acc, due],
        )
    con.execute("UPDATE invoices SET amount_due = ? WHERE invoice_id = ?", [amount // 2, inv])
    before, after = credit - pd.Timedelta(hours=1), credit + pd.Timedelta(hours=1)
    spine = pd.DataFrame({"invoice_id": [inv, inv], "as_of": [before, after]})
    got = build_features(con, spine, features=["invoice_amount_due"])["invoice_amount_due"]
    assert got.tolist() == [amount, amount // 2]
    known = build_features(con, spine.head(1), features=["invoice_amount_due"],
                           relations=known_at(before))  # fmt: skip
    assert known["invoice_amount_due"].tolist() == [amount]
    accounts = pd.DataFrame({"account_id": [acc, acc], "as_of": [before, after]})
    open_amount = build_features(con, accounts, features=["dunning_amount_open"])
    assert open_amount["dunning_amount_open"].iloc[0] >= amount
    assert open_amount["dunning_amount_open"].iloc[1] == open_amount["dunning_amount_open"].iloc[0]
