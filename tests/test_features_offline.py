"""Point-in-time features, spines and labels on small hand-written warehouses."""

from __future__ import annotations

import itertools
import math

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench.features.labels import churn_labels, recovery_labels
from workbench.features.offline import (
    build_features,
    churn_spine,
    data_horizon,
    period_grid,
    recovery_spine,
    snapshot_spine,
)
from workbench.ingest.tables import INTERNAL
from workbench.schema import create_all

_ids = itertools.count()


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, pd.Timestamp)).any():
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    con.register("_rows", df)
    cols = ", ".join(df.columns)
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows")
    con.unregister("_rows")


def version(
    acc: str,
    sub: str,
    frm: str,
    to: str | None,
    *,
    status: str = "active",
    price: str = "p_m",
    amount: int = 1000,
    interval: str = "month",
    qty: int = 1,
    count: int = 1,
    usage_type: str = "licensed",
    item: str = "i1",
    **kw,
) -> dict:
    return {
        "account_id": acc,
        "subscription_id": sub,
        "item_id": f"{sub}_{item}",
        "price_id": price,
        "unit_amount": amount,
        "interval": interval,
        "interval_count": count,
        "quantity": qty,
        "usage_type": usage_type,
        "currency": "usd",
        "status": status,
        "valid_from": ts(frm),
        "valid_to": ts(to) if to else None,
        "event_id": f"evt_{next(_ids)}",
        **kw,
    }


def attempt(acc: str | None, inv: str, at: str, status: str = "failed", **kw) -> dict:
    return {
        "attempt_id": f"ch_{next(_ids)}",
        "account_id": acc,
        "invoice_id": inv,
        "created": ts(at),
        "amount": 1000,
        "currency": "usd",
        "status": status,
        **kw,
    }


def invoice(acc: str, inv: str, at: str, **kw) -> dict:
    return {
        "invoice_id": inv,
        "account_id": acc,
        "currency": "usd",
        "created": ts(at),
        "amount_due": 1000,
        "total": 1000,
        **kw,
    }


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    create_all(c)
    return c


def spine(acc: str, *times: str, col: str = "account_id") -> pd.DataFrame:
    return pd.DataFrame({col: [acc] * len(times), "as_of": [ts(t) for t in times]})


def test_window_edges_are_half_open(con) -> None:
    insert(con, "invoices", [invoice("a", "in1", "2024-01-01")])
    insert(
        con,
        "payment_attempts",
        [
            attempt("a", "in1", "2024-01-01 00:00", decline_code="insufficient_funds"),
            attempt(
                None, "in1", "2024-01-11 00:00", decline_code="lost_card"
            ),  # account via invoice
            attempt("a", "in1", "2024-01-12 00:00", status="succeeded"),
        ],
    )
    out = build_features(
        con,
        spine("a", "2024-01-31", "2024-01-11", "2024-01-10 23:59:59.999999"),
        features=[
            "failed_payments_30d",
            "failed_payments_7d",
            "days_since_last_failed_payment",
            "last_decline_code",
            "decline_share_hard_90d",
            "payment_failure_rate_90d",
            "days_since_last_successful_payment",
        ],
    )
    # 2024-01-31: t - 30d = 2024-01-01 exactly, so the first failure is out of the window
    assert out.failed_payments_30d.tolist() == [1, 2, 1]
    assert out.failed_payments_7d.tolist() == [0, 1, 0]
    assert out.days_since_last_failed_payment.tolist() == pytest.approx(
        [20.0, 0.0, 10 - 1e-6 / 86400]
    )
    assert out.last_decline_code.tolist() == ["lost_card", "lost_card", "insufficient_funds"]
    assert out.decline_share_hard_90d.tolist() == [0.5, 0.5, 0.0]
    assert out.payment_failure_rate_90d.tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    assert out.days_since_last_successful_payment.iloc[0] == pytest.approx(19.0)
    assert math.isnan(out.days_since_last_successful_payment.iloc[1])
    assert out.as_of.dtype == "datetime64[us, UTC]"


def test_invoice_status_is_never_read_only_payment_times(con) -> None:
    # current state says paid; as of Jan 20 it was still in dunning
    insert(
        con,
        "invoices",
        [
            invoice(
                "a", "in1", "2024-01-01", status="paid", paid_at=ts("2024-01-25"), amount_due=4200
            )
        ],
    )
    insert(
        con,
        "payment_attempts",
        [attempt("a", "in1", "2024-01-02"), attempt("a", "in1", "2024-01-05")],
    )
    out = build_features(
        con,
        spine("a", "2024-01-01 12:00", "2024-01-03", "2024-01-20", "2024-01-25"),
        features=[
            "dunning_invoices_open",
            "dunning_amount_open",
            "retries_on_open_invoices",
            "payment_lag_days_avg_90d",
        ],
    )
    assert out.dunning_invoices_open.tolist() == [0, 1, 1, 0]
    assert out.dunning_amount_open.tolist() == [0.0, 4200.0, 4200.0, 0.0]
    assert out.retries_on_open_invoices.tolist() == [0, 1, 2, 0]
    assert out.payment_lag_days_avg_90d.iloc[3] == pytest.approx(24.0)
    assert out.payment_lag_days_avg_90d.iloc[:3].isna().all()


def test_a_mean_does_not_depend_on_the_order_rows_are_read() -> None:
    # lags of 0.1, 0.2 and 0.3 days: summed as doubles, (0.1 + 0.2) + 0.3 and
    # (0.3 + 0.2) + 0.1 differ in the last bit, and DuckDB's threads sum in any order: the
    # same warehouse gave a model different inputs from one run to the next
    lags = [(f"in{k}", pd.Timedelta(days=k / 10)) for k in (1, 2, 3, 4, 5, 6, 7)]
    got = []
    for order in (lags, lags[::-1], lags[3:] + lags[:3]):
        c = duckdb.connect()
        create_all(c)
        rows = []
        for inv, lag in order:
            paid = ts("2024-01-01") + lag
            rows.append(invoice("a", inv, "2024-01-01", status="paid", paid_at=paid))
        insert(c, "invoices", rows)
        got.append(
            build_features(
                c, spine("a", "2024-01-10"), features=["payment_lag_days_avg_90d"]
            ).payment_lag_days_avg_90d.iloc[0]
        )
    assert got[0] == got[1] == got[2] == pytest.approx(0.4, abs=1e-12)


def test_invoice_features_as_of_failures(con) -> None:
    insert(
        con,
        "invoices",
        [invoice("a", "in1", "2024-03-14 10:00", billing_reason="subscription_cycle")],
    )
    insert(
        con,
        "payment_attempts",
        [
            attempt("a", "in1", "2024-03-14 11:00", decline_code="do_not_honor"),
            attempt("a", "in1", "2024-03-17 11:00", decline_code="insufficient_funds"),
        ],
    )
    out = build_features(
        con,
        spine("in1", "2024-03-14 11:00", "2024-03-18 11:00", "2024-03-14 09:00", col="invoice_id"),
    )
    assert out.invoice_attempt_number.tolist() == [1, 2, 0]
    assert out.invoice_failed_attempts.tolist() == [1, 2, 0]
    assert out.invoice_last_decline_code.tolist() == ["do_not_honor", "insufficient_funds", None]
    assert out.invoice_hours_since_first_failure.tolist()[:2] == [0.0, 96.0]
    assert out.invoice_hours_since_last_failure.tolist()[:2] == [0.0, 24.0]
    assert out.invoice_failure_day_of_month.tolist()[:2] == [14.0, 17.0]
    assert out.invoice_amount_due.tolist()[:2] == [1000.0, 1000.0]
    assert math.isnan(out.invoice_amount_due.iloc[2])  # not created yet
    assert out.invoice_billing_reason.tolist() == ["subscription_cycle", "subscription_cycle", None]


def test_mrr_normalises_intervals_and_skips_metered_and_trials(con) -> None:
    insert(
        con,
        "prices",
        [
            {"price_id": "p_y", "product_id": "prod_big", "currency": "usd"},
            {"price_id": "p_w", "product_id": "prod_small", "currency": "usd"},
        ],
    )
    insert(
        con,
        "subscription_history",
        [
            version(
                "a", "s1", "2024-01-01", None, price="p_y", amount=12000, interval="year", qty=2
            ),
            version(
                "a",
                "s2",
                "2024-01-01",
                "2024-02-01",
                price="p_w",
                amount=700,
                interval="week",
                count=2,
                status="past_due",
            ),
            version(
                "a",
                "s2",
                "2024-02-01",
                None,
                price="p_w",
                amount=700,
                interval="week",
                count=2,
                status="canceled",
            ),
            version(
                "a",
                "s1",
                "2024-01-01",
                None,
                price="p_api",
                amount=5,
                usage_type="metered",
                qty=None,
                item="metered",
            ),
            version("a", "s3", "2024-01-01", None, status="trialing", amount=99999),
        ],
    )
    out = build_features(
        con,
        spine("a", "2024-01-15", "2024-02-15", "2023-12-31"),
        features=[
            "mrr",
            "plan_tier",
            "billing_interval_months",
            "licensed_seats",
            "active_subscriptions",
            "is_trialing",
            "is_past_due",
            "tenure_days",
        ],
    )
    weekly = 700 / (2 * 12 / 52)
    assert out.mrr.tolist() == pytest.approx([2000 + weekly, 2000, 0])
    assert out.plan_tier.tolist() == ["prod_big", "prod_big", None]
    assert out.billing_interval_months.iloc[:2].tolist() == [12.0, 12.0]
    assert out.licensed_seats.tolist() == [3.0, 2.0, 0.0]
    assert out.active_subscriptions.tolist() == [3, 2, 0]
    assert out.is_trialing.tolist() == [1, 1, 0]
    assert out.is_past_due.tolist() == [1, 0, 0]
    assert out.tenure_days.iloc[0] == 14.0


def test_daily_rows_are_known_only_after_their_day(con) -> None:
    insert(
        con,
        "usage",
        [
            {
                "account_id": "a",
                "date": pd.Timestamp("2024-01-10").date(),
                "metric": m,
                "quantity": q,
            }
            for m, q in (("api", 5.0), ("seats", 2.0))
        ],
    )
    insert(
        con,
        "crm_signals",
        [
            {
                "account_id": "a",
                "date": pd.Timestamp("2024-01-10").date(),
                "health_score": 70.0,
                "seats_purchased": 10,
                "seats_used": 4,
            }
        ],
    )
    out = build_features(
        con,
        spine("a", "2024-01-10 23:59:59", "2024-01-11", "2024-04-10"),
        features=[
            "usage_avg_daily_7d",
            "days_since_last_usage",
            "health_score",
            "seat_utilization",
            "usage_trend_90d",
        ],
    )
    assert out.usage_avg_daily_7d.tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert out.days_since_last_usage.tolist()[1:] == [0.0, 90.0]
    assert math.isnan(out.health_score.iloc[0]) and out.health_score.iloc[1] == 70.0
    assert out.seat_utilization.iloc[1] == pytest.approx(0.4)
    # one day of usage at the start of a 90-day window: slope is negative
    assert out.usage_trend_90d.iloc[2] == 0.0  # the day fell out of (t - 90d, t]
    later = build_features(con, spine("a", "2024-04-09"), features=["usage_trend_90d"])
    y = np.zeros(90)
    y[0] = 7.0
    assert later.usage_trend_90d.iloc[0] == pytest.approx(np.polyfit(np.arange(90), y, 1)[0])


def test_spine_validation(con) -> None:
    with pytest.raises(ValueError, match="as_of"):
        build_features(con, pd.DataFrame({"account_id": ["a"]}))
    with pytest.raises(ValueError, match="invoice_id"):
        build_features(con, spine("a", "2024-01-01"), features=["invoice_amount_due"])
    with pytest.raises(KeyError, match="unknown feature"):
        build_features(con, spine("a", "2024-01-01"), features=["no_such_feature"])
    naive = pd.DataFrame({"account_id": ["a"], "as_of": [pd.Timestamp("2024-01-01")]})
    assert build_features(con, naive, features=["mrr"]).as_of.iloc[0] == ts("2024-01-01")
    assert build_features(con, spine("a")).shape[0] == 0


@pytest.fixture
def churn_con(con) -> duckdb.DuckDBPyConnection:
    insert(
        con,
        "subscription_history",
        [
            # a: paying Jan 1, cancels Feb 10
            version("a", "sa", "2024-01-01", "2024-02-10"),
            version("a", "sa", "2024-02-10", None, status="canceled"),
            # b: cancels Feb 10, comes back Feb 20 on a new subscription
            version("b", "sb1", "2024-01-01", "2024-02-10"),
            version("b", "sb1", "2024-02-10", None, status="canceled"),
            version("b", "sb2", "2024-02-20", None),
            # c: free plan only (never paying); d: paying throughout
            version("c", "sc", "2024-01-01", None, amount=0),
            version("d", "sd", "2023-06-01", None, interval="year", amount=120000),
        ],
    )
    insert(
        con,
        "events",
        [
            {
                "event_id": "e_last",
                "type": "x",
                "created": ts("2024-06-15"),
                "source": "test",
                "payload_hash": "h",
                "disposition": "handled",
                "load_id": "l",
            }
        ],
    )
    return con


def test_churn_spine_and_labels(churn_con) -> None:
    sp = churn_spine(churn_con, start="2024-01-01", end="2024-06-01")
    assert data_horizon(churn_con) == ts("2024-06-15")
    feb = sp[sp.as_of == ts("2024-02-01")].account_id.tolist()
    assert feb == ["a", "b", "d"]
    assert sp[sp.as_of == ts("2024-03-01")].account_id.tolist() == ["b", "d"]
    assert "c" not in set(sp.account_id)
    lab = churn_labels(churn_con, sp).set_index(["account_id", "as_of"])
    assert lab.loc[("a", ts("2024-02-01")), "churn_30d"] == 1
    assert lab.loc[("b", ts("2024-02-01")), "churn_30d"] == 0  # back before t + 30d
    assert lab.loc[("d", ts("2024-02-01")), "churn_90d"] == 0
    # windows not elapsed by 2024-06-15 stay missing
    assert pd.isna(lab.loc[("d", ts("2024-06-01")), "churn_30d"])
    assert lab.loc[("d", ts("2024-05-01")), "churn_30d"] == 0
    assert pd.isna(lab.loc[("d", ts("2024-01-01")), "churn_180d"])
    # a row not paying at t gets no label
    extra = churn_labels(churn_con, spine("c", "2024-02-01"), observed_until="2025-01-01")
    assert not extra.paying_at_as_of.iloc[0] and pd.isna(extra.churn_30d.iloc[0])
    assert str(lab["churn_30d"].dtype) == "Int8"


def test_recovery_spine_and_labels(con) -> None:
    insert(
        con,
        "invoices",
        [
            invoice("a", "in_late", "2024-01-01", paid_at=ts("2024-01-11")),
            invoice("a", "in_retry", "2024-01-01"),
            invoice("a", "in_void", "2024-01-01", voided_at=ts("2024-01-20")),
            invoice("a", "in_ok", "2024-01-01", paid_at=ts("2024-01-01 01:00")),
            invoice("b", "in_recent", "2024-05-30"),
        ],
    )
    insert(
        con,
        "payment_attempts",
        [
            attempt("a", "in_late", "2024-01-01 00:10"),
            attempt("a", "in_retry", "2024-01-01 00:10"),
            attempt("a", "in_retry", "2024-01-03 00:10"),
            attempt("a", "in_retry", "2024-01-04 00:10", status="succeeded"),
            attempt("a", "in_void", "2024-01-01 00:10"),
            attempt("a", "in_void", "2024-01-21 00:10"),  # after voiding: not a spine row
            attempt("a", "in_ok", "2024-01-01 00:30", status="succeeded"),
            attempt("a", "in_ok", "2024-01-02 00:30"),  # failure after payment: ignored
            attempt("b", "in_recent", "2024-05-30 01:00"),
        ],
    )
    sp = recovery_spine(con)
    assert sp.invoice_id.tolist() == ["in_late", "in_retry", "in_void", "in_recent"]
    assert (sp.as_of.iloc[:3] == ts("2024-01-01 00:10")).all()
    each = recovery_spine(con, each_attempt=True)
    assert each.invoice_id.tolist() == ["in_late", "in_retry", "in_void", "in_retry", "in_recent"]
    assert recovery_spine(con, start="2024-02-01").invoice_id.tolist() == ["in_recent"]
    lab = recovery_labels(con, sp, observed_until="2024-06-10").set_index("invoice_id")
    assert lab.loc["in_late", ["recovered_7d", "recovered_14d", "recovered_30d"]].tolist() == [
        0,
        1,
        1,
    ]
    assert lab.loc["in_retry", ["recovered_7d", "recovered_14d"]].tolist() == [1, 1]
    assert lab.loc["in_void", ["recovered_7d", "recovered_30d"]].tolist() == [0, 0]
    assert lab.loc["in_recent", "recovered_7d"] == 0
    assert pd.isna(lab.loc["in_recent", "recovered_14d"])
    assert lab.loc["in_retry", "paid_at_effective"] == ts("2024-01-04 00:10")


def test_a_failure_is_scored_when_the_invoice_reports_it(con) -> None:
    """With ingestion's invoice history, a failed attempt's spine time is the invoice's report
    of it (the version recorded within ten minutes after it), and the invoice feature
    ``invoice_hours_to_next_attempt`` reads the retry that report announced."""
    insert(
        con,
        "invoices",
        [invoice("a", f"in{k}", "2024-01-01") for k in (1, 2)]
        + [invoice("a", "in3", "2024-01-01", paid_at=ts("2024-01-05 00:12"))],
    )
    insert(
        con,
        "payment_attempts",
        [
            attempt("a", "in1", "2024-01-01 00:10"),
            attempt("a", "in1", "2024-01-04 00:10"),
            attempt("a", "in2", "2024-01-01 00:10"),  # reported only an hour later: too late
            attempt("a", "in3", "2024-01-05 00:10"),  # paid two minutes later: not a report
        ],
    )
    con.execute(INTERNAL["invoice_versions"].ddl())
    insert(
        con,
        "invoice_versions",
        [
            {"event_id": e, "version_at": ts(at), "invoice_id": i, "account_id": "a",
             "currency": "usd", "next_payment_attempt": nxt, "status": st}
            for e, at, i, nxt, st in (
                ("e0", "2024-01-01 00:00", "in1", None, "open"),  # created
                ("e1", "2024-01-01 00:10:01", "in1", ts("2024-01-04 00:10"), "open"),
                ("e2", "2024-01-04 00:10:02", "in1", ts("2024-01-11 06:10"), "open"),
                ("e3", "2024-01-01 01:10", "in2", ts("2024-01-04 00:10"), "open"),
                ("e4", "2024-01-05 00:12", "in3", None, "paid"),
            )
        ],
    )  # fmt: skip
    sp = recovery_spine(con, each_attempt=True)
    assert sp[["invoice_id", "as_of"]].values.tolist() == [
        ["in2", ts("2024-01-01 00:10")],
        ["in1", ts("2024-01-01 00:10:01")],
        ["in1", ts("2024-01-04 00:10:02")],
        ["in3", ts("2024-01-05 00:10")],
    ]
    got = build_features(con, sp, features=["invoice_hours_to_next_attempt"])
    hours = got["invoice_hours_to_next_attempt"].tolist()
    assert math.isnan(hours[0])  # in2's report comes after its spine time
    assert hours[1] == pytest.approx(72 - 1 / 3600)
    assert hours[2] == pytest.approx(7 * 24 + 6 - 2 / 3600)
    # without the invoice history the attempt's own time is used and the feature is missing
    con.execute("DROP TABLE invoice_versions")
    sp = recovery_spine(con, each_attempt=True)
    assert sp["as_of"].tolist() == [ts("2024-01-01 00:10")] * 2 + [
        ts("2024-01-04 00:10"),
        ts("2024-01-05 00:10"),
    ]
    got = build_features(con, sp, features=["invoice_hours_to_next_attempt"])
    assert got["invoice_hours_to_next_attempt"].isna().all()


def test_snapshot_spine_and_grid(churn_con) -> None:
    snap = snapshot_spine(churn_con, entity="account_id", as_of="2024-01-15")
    assert snap.account_id.tolist() == ["a", "b", "c", "d"]
    assert (snap.as_of == ts("2024-01-15")).all()
    assert snapshot_spine(
        churn_con, entity="subscription_id", as_of="2024-02-15"
    ).subscription_id.tolist() == ["sa", "sb1", "sc", "sd"]
    grid = period_grid(start="2024-01-15", end="2024-04-01", freq="month")
    assert grid.tolist() == [ts("2024-02-01"), ts("2024-03-01"), ts("2024-04-01")]
    with pytest.raises(ValueError, match="freq"):
        period_grid(start="2024-01-01", end="2024-02-01", freq="quarter")


@pytest.mark.parametrize("only", [None, ("refund", "dispute")])
def test_a_few_accounts_get_the_values_of_the_full_build(only) -> None:
    """Pushdown (each table read once, filtered to rows that can reach the spine's keys) is
    an execution hint: a spine of a few accounts gets exactly the values of a full build
    without it, including refunds and disputes that only name their account through the
    charge."""
    from workbench.features.definitions import get_features
    from workbench.features.offline import period_grid
    from workbench.features.synthetic import random_warehouse

    c = duckdb.connect()
    random_warehouse(
        c,
        n_accounts=300,
        start="2023-01-01",
        end="2024-12-31",
        seed=3,
        refund_rate=0.2,
        dispute_rate=0.1,
    )
    accounts = c.execute("SELECT account_id FROM accounts ORDER BY 1").df().account_id
    grid = period_grid(start="2023-03-01", end="2024-12-01")
    full = accounts.to_frame().merge(pd.DataFrame({"as_of": grid}), how="cross")
    names = [
        f.name for f in get_features(entity="account_id") if only is None or f.name.startswith(only)
    ]
    everyone = build_features(c, full, features=names, pushdown=False)
    few = set(accounts.sample(12, random_state=1))
    some = build_features(c, full[full.account_id.isin(few)], features=names)
    expected = everyone[everyone.account_id.isin(few)].reset_index(drop=True)
    assert expected["refunds_90d"].sum() > 0 and expected["disputes_365d"].sum() > 0
    pd.testing.assert_frame_equal(some, expected)
