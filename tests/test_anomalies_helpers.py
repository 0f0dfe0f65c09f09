"""Hand-written billing books for the anomaly tests, and the check that clean books raise nothing.

``Books`` writes rows into the canonical tables of an in-memory DuckDB; every invoice is
internally consistent (lines, discounts, tax, total, payment) unless a test overrides a
number on purpose.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from workbench.anomalies.rules import run_rules
from workbench.schema import TABLES, create_all

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
NOW = pd.Timestamp("2025-01-01T00:00:00Z")


def months(ts: datetime, n: int) -> datetime:
    """``ts`` plus ``n`` calendar months (day clamped to 28 for simplicity of the fixtures)."""
    m = ts.month - 1 + n
    return ts.replace(year=ts.year + m // 12, month=m % 12 + 1, day=min(ts.day, 28))


class Books:
    """A tiny warehouse built row by row."""

    def __init__(self) -> None:
        self._con = duckdb.connect()
        create_all(self._con)
        self._n = 0
        self._pending: dict[str, list[dict[str, Any]]] = {}

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection, with every row written so far flushed into its table."""
        for table, rows in self._pending.items():
            cols = TABLES[table].column_names
            frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols).astype(
                object
            )
            frame = frame.where(frame.notna(), None)
            self._con.register("_pending_rows", frame)
            casts = ", ".join(
                f"CAST({c} AS {t.type}) AS {c}"
                for c, t in zip(cols, TABLES[table].columns, strict=True)
            )
            self._con.execute(f"INSERT INTO {table} SELECT {casts} FROM _pending_rows")
            self._con.unregister("_pending_rows")
        self._pending = {}
        return self._con

    def _insert(self, table: str, **row: Any) -> None:
        unknown = set(row) - set(TABLES[table].column_names)
        assert not unknown, f"{table} has no columns {unknown}"
        self._pending.setdefault(table, []).append(row)

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n:04d}"

    def account(self, account_id: str, *, currency: str | None = "usd") -> str:
        self._insert("accounts", account_id=account_id, currency=currency, created=T0)
        return account_id

    def price(
        self,
        price_id: str,
        unit_amount: int | None,
        *,
        currency: str = "usd",
        interval: str | None = "month",
        interval_count: int = 1,
        usage_type: str = "licensed",
        billing_scheme: str = "per_unit",
    ) -> str:
        self._insert(
            "prices",
            price_id=price_id,
            currency=currency,
            unit_amount=unit_amount,
            billing_scheme=billing_scheme,
            usage_type=usage_type,
            interval=interval,
            interval_count=interval_count,
            active=True,
            created=T0,
        )
        return price_id

    def subscription(
        self,
        subscription_id: str,
        account_id: str,
        price_id: str,
        *,
        quantity: int = 1,
        start: datetime = T0,
        end: datetime | None = None,
        status: str | None = None,
        currency: str = "usd",
        trial_end: datetime | None = None,
    ) -> str:
        """A subscription with one item, live from ``start`` until ``end`` (None: still live)."""
        status = status or ("canceled" if end is not None else "active")
        item_id = self._id("si")
        self._insert(
            "subscriptions",
            subscription_id=subscription_id,
            account_id=account_id,
            status=status,
            currency=currency,
            created=start,
            start_date=start,
            trial_start=start if trial_end else None,
            trial_end=trial_end,
            ended_at=end,
        )
        self._insert(
            "subscription_items",
            item_id=item_id,
            subscription_id=subscription_id,
            price_id=price_id,
            quantity=quantity,
            created=start,
            deleted=end is not None,
        )
        base = dict(
            subscription_id=subscription_id,
            account_id=account_id,
            item_id=item_id,
            price_id=price_id,
            quantity=quantity,
            currency=currency,
        )
        self._insert(
            "subscription_history",
            **base,
            status="active",
            valid_from=start,
            valid_to=end,
            event_id=self._id("evt"),
        )
        if end is not None:
            self._insert(
                "subscription_history",
                **base,
                status="canceled",
                valid_from=end,
                valid_to=None,
                event_id=self._id("evt"),
            )
        return subscription_id

    def invoice(
        self,
        invoice_id: str,
        account_id: str,
        *,
        lines: list[dict[str, Any]],
        created: datetime,
        subscription_id: str | None = None,
        currency: str = "usd",
        discount: int = 0,
        tax_bp: int = 1000,
        status: str = "paid",
        billing_reason: str = "subscription_cycle",
        **override: Any,
    ) -> dict[str, Any]:
        """An invoice with consistent numbers; ``lines`` are dicts of line columns.

        Each line needs ``amount``; ``price_id``, ``quantity``, ``period_start``,
        ``period_end`` and ``proration`` are passed through. Any invoice column given in
        ``override`` replaces the computed value.
        """
        subtotal = sum(line["amount"] for line in lines)
        tax = (subtotal - discount) * tax_bp // 10_000
        total = subtotal - discount + tax
        paid = total if status == "paid" else 0
        row = dict(
            invoice_id=invoice_id,
            account_id=account_id,
            subscription_id=subscription_id,
            status=status,
            billing_reason=billing_reason,
            currency=currency,
            created=created,
            period_start=created,
            period_end=created,
            subtotal=subtotal,
            total_discount=discount,
            tax=tax,
            total=total,
            amount_due=total,
            amount_paid=paid,
            amount_remaining=total - paid,
            finalized_at=created,
        )
        row.update(override)
        self._insert("invoices", **row)
        for line in lines:
            self._insert(
                "invoice_lines",
                line_id=line.get("line_id") or self._id("il"),
                invoice_id=invoice_id,
                subscription_id=subscription_id,
                type=line.get("type", "subscription"),
                currency=line.get("currency", currency),
                proration=line.get("proration", False),
                **{
                    k: v
                    for k, v in line.items()
                    if k
                    in (
                        "amount",
                        "price_id",
                        "quantity",
                        "period_start",
                        "period_end",
                        "discount_amount",
                    )
                },
            )
        if row["amount_paid"]:
            self.charge(
                f"ch_{invoice_id}",
                invoice_id,
                account_id,
                row["amount_paid"],
                created=created,
                currency=currency,
            )
        return row

    def cycle_invoice(
        self,
        invoice_id: str,
        account_id: str,
        subscription_id: str,
        price_id: str,
        unit: int,
        qty: int,
        start: datetime,
        **kw: Any,
    ) -> dict[str, Any]:
        """A renewal: one licensed line of ``unit × qty`` for [start, start + ``period_months``)."""
        n = kw.pop("period_months", 1)
        line = dict(
            price_id=price_id,
            quantity=qty,
            amount=kw.pop("amount", unit * qty),
            period_start=start,
            period_end=months(start, n),
        )
        return self.invoice(
            invoice_id,
            account_id,
            lines=[line],
            created=start,
            subscription_id=subscription_id,
            **kw,
        )

    def charge(
        self,
        charge_id: str,
        invoice_id: str,
        account_id: str,
        amount: int,
        *,
        created: datetime,
        currency: str = "usd",
        status: str = "succeeded",
    ) -> str:
        self._insert(
            "payment_attempts",
            attempt_id=charge_id,
            invoice_id=invoice_id,
            account_id=account_id,
            created=created,
            amount=amount,
            currency=currency,
            status=status,
            attempt_number=1,
        )
        return charge_id

    def refund(
        self,
        refund_id: str,
        charge_id: str | None,
        amount: int,
        *,
        created: datetime,
        currency: str = "usd",
        invoice_id: str | None = None,
        status: str = "succeeded",
    ) -> str:
        self._insert(
            "refunds",
            refund_id=refund_id,
            charge_id=charge_id,
            invoice_id=invoice_id,
            amount=amount,
            currency=currency,
            created=created,
            status=status,
        )
        return refund_id


def clean_books(n_accounts: int = 3, n_months: int = 6) -> Books:
    """Accounts each on one monthly plan, renewed every month, with a legitimate upgrade,
    a trial, a partial refund and a yearly plan: nothing a rule should flag."""
    b = Books()
    b.price("price_seat", 1_000)
    b.price("price_seat_pro", 2_500)
    b.price("price_year", 100_000, interval="year")
    b.price("price_api", 2, usage_type="metered")
    for a in range(n_accounts):
        acct = b.account(f"cus_{a}")
        sub = b.subscription(f"sub_{a}", acct, "price_seat", quantity=a + 2)
        for m in range(n_months):
            b.cycle_invoice(f"in_{a}_{m}", acct, sub, "price_seat", 1_000, a + 2, months(T0, m))
    # a legitimate mid-period upgrade: a proration invoice in the same period as a renewal
    up = T0 + 10 * DAY
    b.invoice(
        "in_0_upgrade",
        "cus_0",
        subscription_id="sub_0",
        created=up,
        billing_reason="subscription_update",
        lines=[
            dict(
                price_id="price_seat",
                quantity=2,
                amount=-1_400,
                period_start=up,
                period_end=months(T0, 1),
                proration=True,
                type="invoiceitem",
            ),
            dict(
                price_id="price_seat_pro",
                quantity=2,
                amount=3_500,
                period_start=up,
                period_end=months(T0, 1),
                proration=True,
                type="invoiceitem",
            ),
        ],
    )
    # a trial: zero line at the plan's price, then paid renewals with metered usage in arrears
    b.account("cus_trial")
    trial_end = T0 + 14 * DAY
    b.subscription("sub_trial", "cus_trial", "price_seat", quantity=3, trial_end=trial_end)
    b.invoice(
        "in_trial_0",
        "cus_trial",
        subscription_id="sub_trial",
        created=T0,
        billing_reason="subscription_create",
        lines=[
            dict(price_id="price_seat", quantity=3, amount=0, period_start=T0, period_end=trial_end)
        ],
    )
    b.invoice(
        "in_trial_1",
        "cus_trial",
        subscription_id="sub_trial",
        created=trial_end,
        lines=[
            dict(
                price_id="price_seat",
                quantity=3,
                amount=3_000,
                period_start=trial_end,
                period_end=months(trial_end, 1),
            ),
            dict(
                price_id="price_api",
                quantity=120,
                amount=240,
                period_start=T0,
                period_end=trial_end,
            ),
        ],
        discount=300,
    )
    # a partial refund and a second partial refund that together stay within the payment
    b.refund("re_partial_1", "ch_in_1_2", 1_000, created=months(T0, 2) + DAY)
    b.refund("re_partial_2", "ch_in_1_2", 2_300, created=months(T0, 2) + 2 * DAY)
    # a yearly plan and a canceled-then-resubscribed customer (no overlap)
    b.account("cus_year")
    b.subscription("sub_year", "cus_year", "price_year")
    b.cycle_invoice(
        "in_year", "cus_year", "sub_year", "price_year", 100_000, 1, T0, tax_bp=0, period_months=12
    )
    b.account("cus_back")
    b.subscription("sub_back_1", "cus_back", "price_seat", start=T0, end=T0 + 40 * DAY)
    b.subscription("sub_back_2", "cus_back", "price_seat", start=T0 + 90 * DAY)
    # the same amount billed again, but for the next period
    b.cycle_invoice("in_back_1", "cus_back", "sub_back_1", "price_seat", 1_000, 1, T0)
    b.cycle_invoice("in_back_2", "cus_back", "sub_back_2", "price_seat", 1_000, 1, T0 + 90 * DAY)
    return b


def test_clean_books_raise_no_finding() -> None:
    b = clean_books()
    n_invoices = b.con.execute("SELECT count(*) FROM invoices").fetchone()[0]
    assert n_invoices >= 20
    findings = run_rules(b.con, detected_at=NOW)
    assert findings.empty, findings[["rule", "object_id", "explanation"]].to_string()


def test_books_keep_invoices_consistent() -> None:
    b = clean_books()
    bad = b.con.execute(
        """
        SELECT i.invoice_id FROM invoices i JOIN (SELECT invoice_id, sum(amount) s FROM invoice_lines GROUP BY 1) l
        USING (invoice_id) WHERE i.total <> l.s - i.total_discount + i.tax
        """
    ).fetchall()
    assert bad == []
