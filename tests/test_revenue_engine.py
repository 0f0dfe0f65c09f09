"""The MRR engine: exact money, the bridge on simulated data, FX, policy rules."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import duckdb
import pandas as pd
import pytest

from workbench.revenue import POLICIES, PolicyError, RevenueError, get_policy
from workbench.revenue.adapters import history_frame, insert_history
from workbench.revenue.daily import account_day_mrr, daily_mrr
from workbench.revenue.engine import account_month_mrr, build_account_months, hdiv
from workbench.revenue.metrics import monthly_bridge
from workbench.revenue.policies import STRIPE
from workbench.revenue.synthetic import generate_warehouse
from workbench.schema import create_all

MOVES = ["new_mrr", "expansion_mrr", "contraction_mrr", "churn_mrr", "reactivation_mrr", "fx_mrr"]


def warehouse(
    rows: list[dict], fx: list[tuple[str, str, str]] = (), accounts: list[dict] = ()
) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    create_all(con)
    insert_history(con, history_frame(rows))
    for d, cur, rate in fx:
        con.execute("INSERT INTO fx_rates VALUES (?, ?, ?)", [d, cur, rate])
    for a in accounts:
        con.execute(
            "INSERT INTO accounts (account_id, region, channel, currency) VALUES (?, ?, ?, ?)",
            [a["account_id"], a.get("region"), a.get("channel"), a.get("currency")],
        )
    return con


@pytest.fixture(scope="module")
def simulated() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    generate_warehouse(con, accounts=400, months=24, seed=7)
    return con


@pytest.fixture(scope="module")
def simulated_months(simulated: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame]:
    return {name: account_month_mrr(simulated, policy=name, end="2023-12-01") for name in POLICIES}


# ---------------------------------------------------------------- exact money


def test_hdiv_rounds_half_even() -> None:
    con = duckdb.connect()
    cases = [(5, 2), (7, 2), (-5, 2), (-7, 2), (1, 3), (2, 3), (10, 4), (14, 4), (0, 7)]
    for n, d in cases:
        got = con.execute(
            f"SELECT {hdiv(f'CAST({n} AS HUGEINT)', f'CAST({d} AS HUGEINT)')}"
        ).fetchone()[0]
        assert got == round(Fraction(n, d)), (n, d, got)  # Python rounds half to even


def test_normalisation_and_rounding_are_exact() -> None:
    rows = [
        # 1000 every 3 months = 333.33.. -> 333; three items of it on one account -> 1000
        dict(
            subscription_id="q",
            account_id="q",
            item_id="a",
            unit_amount=1_000,
            interval_count=3,
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="q",
            account_id="q",
            item_id="b",
            unit_amount=1_000,
            interval_count=3,
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="q",
            account_id="q",
            item_id="c",
            unit_amount=1_000,
            interval_count=3,
            valid_from="2024-01-02",
        ),
        # weekly 700 -> 700 * 52 / 12 = 3033.33 -> 3033
        dict(
            subscription_id="w",
            account_id="w",
            unit_amount=700,
            interval="week",
            valid_from="2024-01-02",
        ),
        # 25 per year -> 2.0833 -> 2 ; 30 per year -> 2.5 -> 2 (half-even); 42 -> 3.5 -> 4
        dict(
            subscription_id="y1",
            account_id="y1",
            unit_amount=25,
            interval="year",
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="y2",
            account_id="y2",
            unit_amount=30,
            interval="year",
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="y3",
            account_id="y3",
            unit_amount=42,
            interval="year",
            valid_from="2024-01-02",
        ),
        # 33.33 % off 999 -> 666.03 -> 666
        dict(
            subscription_id="d",
            account_id="d",
            unit_amount=999,
            valid_from="2024-01-02",
            discount_percent_off=33.33,
            discount_duration="forever",
        ),
    ]
    am = account_month_mrr(warehouse(rows), policy="stripe").set_index("account_id")["mrr"]
    assert am.to_dict() == {"q": 1_000, "w": 3_033, "y1": 2, "y2": 2, "y3": 4, "d": 666}


def test_multi_subscription_quantity_and_amount_off() -> None:
    rows = [
        dict(
            subscription_id="s1",
            account_id="a",
            unit_amount=1_500,
            quantity=4,
            valid_from="2024-01-02",
        ),
        dict(
            subscription_id="s2",
            account_id="a",
            unit_amount=12_000,
            interval="year",
            valid_from="2024-01-20",
            discount_amount_off=1_200,  # per yearly invoice -> 100 per month
            discount_duration="forever",
        ),
    ]
    am = account_month_mrr(warehouse(rows), policy="stripe")
    assert am["mrr"].tolist() == [6_000 + 1_000 - 100]


# ---------------------------------------------------------------- the bridge


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_bridge_holds_every_month_and_segment(
    simulated_months: dict[str, pd.DataFrame], policy: str
) -> None:
    am = simulated_months[policy]
    assert len(am) > 2_000
    # every account-month
    assert (am["opening_mrr"] + am[MOVES].sum(axis=1) == am["mrr"]).all()
    # opening is the previous month's closing, per account
    s = am.sort_values(["account_id", "month"])
    prev = s.groupby("account_id")["mrr"].shift(1)
    contiguous = s.groupby("account_id")["month"].shift(1) == s["month"] - pd.DateOffset(months=1)
    assert (s.loc[contiguous, "opening_mrr"] == prev[contiguous]).all()
    assert (s.loc[~contiguous, "opening_mrr"] == 0).all()
    for by in (
        [],
        ["region"],
        ["channel"],
        ["plan"],
        ["currency"],
        ["cohort_month"],
        ["region", "plan"],
    ):
        b = monthly_bridge(am, by=by)
        total = b["opening_mrr"] + b[MOVES + ["transfer_in_mrr", "transfer_out_mrr"]].sum(axis=1)
        assert (total == b["closing_mrr"]).all(), by
        # each segment opens with what it closed the month before
        b = b.sort_values([*by, "month"])
        if by:
            grouped = b.groupby(by, dropna=False)
            prev_close = grouped["closing_mrr"].shift(1)
            prev_month = grouped["month"].shift(1)
        else:
            prev_close, prev_month = b["closing_mrr"].shift(1), b["month"].shift(1)
        linked = prev_month == b["month"] - pd.DateOffset(months=1)
        assert (b.loc[linked, "opening_mrr"] == prev_close[linked]).all(), by
        # transfers only move money between segments
        per_month = b.groupby("month")[["transfer_in_mrr", "transfer_out_mrr"]].sum()
        assert (per_month.sum(axis=1) == 0).all(), by
    # static segments never transfer
    assert (monthly_bridge(am, by=["region"])["transfer_in_mrr"] == 0).all()


def test_bridge_sql_on_table_equals_frame(
    simulated: duckdb.DuckDBPyConnection, simulated_months: dict[str, pd.DataFrame]
) -> None:
    run = build_account_months(simulated, policy="chartmogul", end="2023-12-01", into="t_bridge")
    from_table = monthly_bridge(run.table, con=simulated, by=["plan"])
    from_frame = monthly_bridge(simulated_months["chartmogul"], by=["plan"])
    pd.testing.assert_frame_equal(from_table, from_frame, check_dtype=False)


def reference_month_end_mrr(
    con: duckdb.DuckDBPyConnection, month: date
) -> dict[tuple[str, str], int]:
    """Stripe rules evaluated row by row with exact fractions, independent of the engine."""
    hist = con.execute("SELECT * FROM subscription_history").df()
    nm = pd.Timestamp(month, tz="UTC") + pd.DateOffset(months=1)
    t = nm - pd.Timedelta(microseconds=1)
    live = hist[(hist["valid_from"] <= t) & (hist["valid_to"].isna() | (hist["valid_to"] > t))]
    totals: dict[tuple[str, str], Fraction] = {}
    for r in live.itertuples():
        in_trial = pd.notna(r.trial_end) and t < r.trial_end
        counts = r.status in ("active", "past_due", "trialing") and not in_trial
        if r.status == "trialing" and pd.isna(r.trial_end):
            counts = False
        if bool(r.cancel_at_period_end) or pd.notna(r.canceled_at):
            counts = False
        if not counts:
            continue
        k = {"month": 12, "year": 1, "week": 52, "day": 365}[r.interval]
        value = Fraction(int(r.unit_amount) * int(r.quantity) * k, 12 * int(r.interval_count))
        started = pd.isna(r.discount_start) or t >= r.discount_start
        if r.discount_duration == "forever" and pd.notna(r.discount_percent_off) and started:
            value *= 1 - Fraction(int(round(r.discount_percent_off * 10_000)), 1_000_000)
        key = (r.account_id, r.currency)
        totals[key] = totals.get(key, Fraction(0)) + value
    return {k: round(v) for k, v in totals.items() if v > 0}


def test_month_end_mrr_matches_independent_reference(
    simulated: duckdb.DuckDBPyConnection, simulated_months: dict[str, pd.DataFrame]
) -> None:
    am = simulated_months["stripe"]
    for month in (date(2022, 6, 1), date(2023, 3, 1), date(2023, 12, 1)):
        ref = reference_month_end_mrr(simulated, month)
        got = am[(am["month"] == pd.Timestamp(month)) & (am["mrr_native"] > 0)]
        ours = {(r.account_id, r.currency): int(r.mrr_native) for r in got.itertuples()}
        assert ours == ref, month
        assert len(ref) > 100


# ---------------------------------------------------------------- FX


FX_RATES = [
    ("2024-01-31", "eur", "1.100000000"),
    ("2024-02-29", "eur", "1.200000000"),
    ("2024-03-31", "eur", "1.050000000"),
]


def test_rate_change_alone_is_only_fx() -> None:
    rows = [
        dict(
            subscription_id="e",
            account_id="e",
            unit_amount=10_000,
            currency="eur",
            valid_from="2024-01-10",
        )
    ]
    am = account_month_mrr(
        warehouse(rows, fx=FX_RATES), policy="stripe", end="2024-03-01"
    ).set_index("month")
    assert am["mrr_native"].tolist() == [10_000, 10_000, 10_000]
    assert am["mrr"].tolist() == [11_000, 12_000, 10_500]
    feb, mar = am.loc[pd.Timestamp("2024-02-01")], am.loc[pd.Timestamp("2024-03-01")]
    assert feb["fx_mrr"] == 1_000 and mar["fx_mrr"] == -1_500
    for row in (feb, mar):
        assert (
            row[["new_mrr", "expansion_mrr", "contraction_mrr", "churn_mrr", "reactivation_mrr"]]
            .abs()
            .sum()
            == 0
        )
        assert row["movement"] is None
    # constant-currency view: one stated rate date, no FX movement at all
    fixed = account_month_mrr(
        warehouse(rows, fx=FX_RATES), policy="stripe", end="2024-03-01", fx_rate_date="2024-01-31"
    )
    assert fixed["mrr"].tolist() == [11_000, 11_000, 11_000] and (fixed["fx_mrr"] == 0).all()


def test_expansion_is_measured_at_constant_currency() -> None:
    rows = [
        dict(
            subscription_id="e",
            account_id="e",
            unit_amount=10_000,
            currency="eur",
            valid_from="2024-01-10",
            valid_to="2024-02-15",
        ),
        dict(
            subscription_id="e",
            account_id="e",
            unit_amount=10_000,
            quantity=2,
            currency="eur",
            valid_from="2024-02-15",
        ),
    ]
    feb = account_month_mrr(warehouse(rows, fx=FX_RATES), policy="stripe", end="2024-02-01").iloc[
        -1
    ]
    # opening 100 EUR at 1.10 = 110 USD; closing 200 EUR at 1.20 = 240 USD
    assert feb["opening_mrr"] == 11_000 and feb["mrr"] == 24_000
    assert feb["fx_mrr"] == 1_000  # 100 EUR revalued 1.10 -> 1.20
    assert feb["expansion_mrr"] == 12_000  # +100 EUR at February's rate


def test_reporting_in_another_currency_and_zero_decimal() -> None:
    rows = [
        dict(
            subscription_id="j",
            account_id="j",
            unit_amount=15_000,
            currency="jpy",
            valid_from="2024-01-10",
        ),
        dict(
            subscription_id="u",
            account_id="u",
            unit_amount=10_000,
            currency="usd",
            valid_from="2024-01-10",
        ),
    ]
    fx = [("2024-01-31", "jpy", "0.006800000"), ("2024-01-31", "eur", "1.100000000")]
    am = account_month_mrr(
        warehouse(rows, fx=fx), policy="stripe", reporting_currency="eur"
    ).set_index("account_id")
    # 15000 JPY * 0.0068 = 102 USD = 92.727 EUR -> 9273 cents; 100 USD = 90.909 EUR -> 9091
    assert am.loc["j", "mrr"] == 9_273 and am.loc["j", "mrr_native"] == 15_000
    assert am.loc["u", "mrr"] == 9_091


def test_missing_rate_is_an_error() -> None:
    rows = [
        dict(
            subscription_id="e",
            account_id="e",
            unit_amount=10_000,
            currency="chf",
            valid_from="2024-01-10",
        )
    ]
    with pytest.raises(RevenueError, match="chf"):
        account_month_mrr(warehouse(rows), policy="stripe")
    # reporting in the native currency needs no rate
    assert account_month_mrr(warehouse(rows), policy="stripe", reporting_currency="chf")[
        "mrr"
    ].tolist() == [10_000]


def test_multi_currency_account() -> None:
    rows = [
        dict(
            subscription_id="a",
            account_id="m",
            unit_amount=10_000,
            currency="usd",
            valid_from="2024-01-10",
        ),
        dict(
            subscription_id="b",
            account_id="m",
            unit_amount=10_000,
            currency="eur",
            valid_from="2024-02-10",
        ),
    ]
    am = account_month_mrr(
        warehouse(rows, fx=FX_RATES), policy="stripe", end="2024-03-01"
    ).set_index("month")
    assert am["currency"].tolist() == ["mixed", "mixed", "mixed"]  # the account bills in two
    assert am["mrr_native"].isna().all()
    assert am["mrr"].tolist() == [10_000, 22_000, 20_500]
    assert am.loc[pd.Timestamp("2024-02-01"), "expansion_mrr"] == 12_000
    assert am.loc[pd.Timestamp("2024-03-01"), "fx_mrr"] == -1_500


@pytest.mark.parametrize(
    ("usd_amount", "expansion", "contraction"), [(10_500, 0, -1_500), (13_000, 1_000, 0)]
)
def test_currency_switch_at_one_instant_is_classified_in_one_unit(
    usd_amount: int, expansion: int, contraction: int
) -> None:
    # EUR 100 (USD 120 at February's rate) is replaced on Feb 10 by a USD subscription: a
    # move to USD 105 is a contraction, to USD 130 an expansion, whatever the native
    # numbers (100 EUR vs 105 USD) say.
    rows = [
        dict(subscription_id="e", account_id="x", unit_amount=10_000, currency="eur",
             valid_from="2024-01-05", valid_to="2024-02-10"),
        dict(subscription_id="e", account_id="x", unit_amount=10_000, currency="eur", status="canceled",
             valid_from="2024-02-10", ended_at="2024-02-10"),
        dict(subscription_id="u", account_id="x", unit_amount=usd_amount, currency="usd",
             valid_from="2024-02-10"),
    ]  # fmt: skip
    feb = (
        account_month_mrr(warehouse(rows, fx=FX_RATES), policy="stripe", end="2024-02-01")
        .set_index("month")
        .loc[pd.Timestamp("2024-02-01")]
    )
    assert feb["opening_mrr"] == 11_000 and feb["mrr"] == usd_amount
    assert feb["expansion_mrr"] == expansion and feb["contraction_mrr"] == contraction
    assert feb["fx_mrr"] == 1_000  # the EUR opening revalued 1.10 -> 1.20 before it left
    assert feb["churn_mrr"] == 0 and feb["new_mrr"] == 0
    assert feb["movement"] == ("expansion" if expansion else "contraction")


# ---------------------------------------------------------------- rules


def immediate_cancel_rows() -> list[dict]:
    return [
        dict(subscription_id="s", account_id="a", unit_amount=5_000, valid_from="2024-01-05", valid_to="2024-02-10",
             current_period_end="2024-03-05"),
        dict(subscription_id="s", account_id="a", unit_amount=5_000, status="canceled", valid_from="2024-02-10",
             canceled_at="2024-02-10", ended_at="2024-02-10", current_period_end="2024-03-05"),
    ]  # fmt: skip


def test_churn_recognition_timing() -> None:
    con = warehouse(immediate_cancel_rows())
    churn_month = {}
    for name in ("stripe", "chartmogul", "profitwell"):
        am = account_month_mrr(con, policy=name, end="2024-04-01")
        churn_month[name] = am.loc[am["churn_mrr"] < 0, "month"].dt.strftime("%Y-%m").tolist()
    # cancel_request and ended: February; paid_through: March (end of the paid period)
    assert churn_month == {
        "stripe": ["2024-02"],
        "chartmogul": ["2024-02"],
        "profitwell": ["2024-03"],
    }


def test_cancel_at_period_end_request_vs_end() -> None:
    rows = [
        dict(subscription_id="s", account_id="a", unit_amount=5_000, valid_from="2024-01-05", valid_to="2024-02-10"),
        dict(subscription_id="s", account_id="a", unit_amount=5_000, valid_from="2024-02-10", valid_to="2024-03-05",
             cancel_at_period_end=True, canceled_at="2024-02-10"),
        dict(subscription_id="s", account_id="a", unit_amount=5_000, status="canceled", valid_from="2024-03-05",
             canceled_at="2024-02-10", ended_at="2024-03-05"),
    ]  # fmt: skip
    con = warehouse(rows)
    stripe = account_month_mrr(con, policy="stripe", end="2024-04-01")
    cm = account_month_mrr(con, policy="chartmogul", end="2024-04-01")
    assert stripe.loc[stripe["churn_mrr"] < 0, "month"].dt.month.tolist() == [2]
    assert cm.loc[cm["churn_mrr"] < 0, "month"].dt.month.tolist() == [3]


def test_same_month_signup_and_cancel() -> None:
    rows = [
        dict(
            subscription_id="s",
            account_id="a",
            unit_amount=5_000,
            valid_from="2024-01-05",
            valid_to="2024-01-20",
        ),
        dict(
            subscription_id="s",
            account_id="a",
            unit_amount=5_000,
            status="canceled",
            valid_from="2024-01-20",
            ended_at="2024-01-20",
        ),
        dict(subscription_id="k", account_id="keep", unit_amount=1_000, valid_from="2024-01-02"),
    ]
    con = warehouse(rows)
    counted = account_month_mrr(con, policy="stripe").set_index("account_id")
    assert counted.loc["a", "new_mrr"] == 5_000 and counted.loc["a", "churn_mrr"] == -5_000
    assert counted.loc["a", "new_logo"] and counted.loc["a", "churned_logo"]
    ignored = account_month_mrr(con, policy="profitwell").set_index("account_id")
    assert ignored.loc["a", MOVES].abs().sum() == 0
    assert not ignored.loc["a", "new_logo"] and not ignored.loc["a", "churned_logo"]
    snapshot = account_month_mrr(con, policy=STRIPE.replace(movement_timing="snapshot"))
    assert "a" not in set(snapshot["account_id"])  # never paying at a month end


def test_past_due_grace_boundary() -> None:
    rows = [
        dict(
            subscription_id="s",
            account_id="a",
            unit_amount=5_000,
            valid_from="2024-01-05",
            valid_to="2024-03-01",
        ),
        dict(
            subscription_id="s",
            account_id="a",
            unit_amount=5_000,
            status="past_due",
            valid_from="2024-03-01",
            valid_to="2024-03-20",
        ),
        # recovered, then past due again: the clock restarts
        dict(
            subscription_id="s",
            account_id="a",
            unit_amount=5_000,
            valid_from="2024-03-20",
            valid_to="2024-04-25",
        ),
        dict(
            subscription_id="s",
            account_id="a",
            unit_amount=5_000,
            status="past_due",
            valid_from="2024-04-25",
        ),
    ]
    con = warehouse(rows)
    bm = account_month_mrr(con, policy="baremetrics", end="2024-06-01").set_index("month")
    # 30 days of grace each time: still paying at the end of March and April, churned 25 May
    assert bm["mrr"].tolist() == [5_000, 5_000, 5_000, 5_000, 0]
    assert bm.loc[pd.Timestamp("2024-05-01"), "churn_mrr"] == -5_000
    zero = account_month_mrr(
        con, policy=get_policy("stripe").replace(past_due_grace_days=0), end="2024-06-01"
    )
    zero = zero.set_index("month")
    # no grace: out on 1 March, back on 20 March, out again on 25 April
    assert zero["mrr"].tolist() == [5_000, 5_000, 5_000, 0]
    march = zero.loc[pd.Timestamp("2024-03-01")]
    assert march["churn_mrr"] == -5_000 and march["reactivation_mrr"] == 5_000


def test_trials_count_only_when_policy_says_so() -> None:
    rows = [
        dict(subscription_id="t", account_id="a", unit_amount=5_000, status="trialing", trial_start="2024-01-05",
             trial_end="2024-02-05", valid_from="2024-01-05", valid_to="2024-02-05"),
        dict(subscription_id="t", account_id="a", unit_amount=5_000, valid_from="2024-02-05", trial_start="2024-01-05",
             trial_end="2024-02-05"),
    ]  # fmt: skip
    con = warehouse(rows)
    assert account_month_mrr(con, policy="stripe", end="2024-02-01")["mrr"].tolist() == [5_000]
    with_trials = account_month_mrr(con, policy=STRIPE.replace(trial_counts=True), end="2024-02-01")
    assert with_trials["mrr"].tolist() == [5_000, 5_000]


def test_policies_are_data_and_versioned() -> None:
    assert get_policy("stripe@1") is get_policy("stripe")
    with pytest.raises(PolicyError, match="known"):
        get_policy("recurly")
    with pytest.raises(PolicyError):
        STRIPE.replace(snapshot="month_start")  # event timing needs month-end snapshots
    with pytest.raises(PolicyError):
        STRIPE.replace(discount_durations=frozenset({"sometimes"}))
    for p in POLICIES.values():
        assert p.sources and p.version
    am = account_month_mrr(
        warehouse(
            [dict(subscription_id="s", account_id="a", unit_amount=100, valid_from="2024-01-02")]
        ),
        policy="baremetrics",
    )
    assert am[["policy", "policy_version"]].iloc[0].tolist() == ["baremetrics", "1"]


# ---------------------------------------------------------------- daily grain


def test_daily_mrr_agrees_with_month_end(
    simulated: duckdb.DuckDBPyConnection, simulated_months: dict[str, pd.DataFrame]
) -> None:
    am = simulated_months["stripe"]
    daily = daily_mrr(simulated, policy="stripe", start="2023-03-01", end="2023-04-30")
    for month, last_day in (
        (date(2023, 3, 1), date(2023, 3, 31)),
        (date(2023, 4, 1), date(2023, 4, 30)),
    ):
        d = daily[daily["day"] == pd.Timestamp(last_day)]
        m = am[am["month"] == pd.Timestamp(month)]
        native_d = d.groupby("currency")["mrr_native"].sum()
        native_m = m.groupby("currency")["mrr_native"].sum()
        assert native_d.to_dict() == native_m[native_m != 0].to_dict()
        assert int(d["paying_accounts"].sum()) == int(m["is_paying"].sum())
    by_region = daily_mrr(
        simulated, policy="stripe", start="2023-03-31", end="2023-03-31", by=["region"]
    )
    assert by_region["mrr"].sum() == daily[daily["day"] == pd.Timestamp("2023-03-31")]["mrr"].sum()
    acct = am[
        (am["month"] == pd.Timestamp("2023-03-01")) & (am["currency"] == "usd") & (am["mrr"] > 0)
    ].iloc[0]
    days = account_day_mrr(
        simulated, account_ids=[acct["account_id"]], start="2023-03-01", end="2023-03-31"
    )
    assert days.iloc[-1]["mrr_native"] == acct["mrr_native"]
