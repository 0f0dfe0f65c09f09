"""Business monitoring on small hand-made warehouses: every number checked by hand."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench.config import load_settings
from workbench.monitoring import business as bz
from workbench.schema import create_all

REPO = Path(__file__).resolve().parents[1]
UTC = "UTC"


@pytest.fixture()
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE events (event_id VARCHAR, created TIMESTAMPTZ)")
    c.execute(
        "CREATE TABLE payment_attempts (attempt_id VARCHAR, invoice_id VARCHAR, "
        "created TIMESTAMPTZ, status VARCHAR)"
    )
    c.execute("CREATE TABLE invoices (invoice_id VARCHAR, paid_at TIMESTAMPTZ)")
    yield c
    c.close()


def _events(con, last: str) -> None:
    con.execute(
        "INSERT INTO events VALUES ('e1', ?)",
        [pd.Timestamp(last, tz=UTC).to_pydatetime()],
    )


def test_newest_event_time_is_in_utc(con) -> None:
    """The scoring and decision time of 05-07 when none is given."""
    assert bz.newest_event_time(con) is None  # no events yet
    con.execute(
        "INSERT INTO events VALUES ('e1', TIMESTAMPTZ '2024-06-30 12:00:00+00'), "
        "('e2', TIMESTAMPTZ '2024-07-01 01:30:00+02')"
    )
    con.execute("SET TimeZone = 'America/New_York'")  # the session's zone does not leak out
    newest = bz.newest_event_time(con)
    assert newest == pd.Timestamp("2024-06-30 23:30", tz=UTC) and str(newest.tz) == UTC
    assert bz.newest_event_time(duckdb.connect()) is None  # no events table


def test_forecast_vs_realized_every_run_and_month(con) -> None:
    _events(con, "2024-06-30 12:00")
    months = pd.date_range("2024-01-01", "2024-06-01", freq="MS")
    am = pd.DataFrame({"month": np.repeat(months, 2), "account_id": ["a", "b"] * 6,
                       "mrr": [5000, 5000] * 6, "run_id": "r1"})  # fmt: skip
    con.register("am", am)
    con.execute("CREATE TABLE mrr_account_months AS SELECT * FROM am")
    fc = pd.DataFrame({
        "unique_id": ["total"] * 4 + ["total"] * 2 + ["EU"],
        "ds": list(pd.to_datetime(["2024-04-01", "2024-05-01", "2024-06-01", "2024-07-01"]))
        + list(pd.to_datetime(["2024-06-01", "2024-07-01"])) + [pd.Timestamp("2024-05-01")],
        "Forecast": [100.0, 104.0, 120.0, 130.0, 99.0, 98.0, 5.0],
        "run_id": ["old"] * 4 + ["new"] * 2 + ["old"],
    })  # fmt: skip
    con.register("fc", fc)
    con.execute("CREATE TABLE forecasts AS SELECT * FROM fc")
    gaps = bz.forecast_vs_realized(con)
    # realized total: 2 x 5000 minor units = 100.00 per month; July has not happened
    assert list(gaps["run_id"]) == ["new", "old", "old", "old"]
    assert gaps["realized"].tolist() == [100.0] * 4
    assert gaps["gap_pct"].round(4).tolist() == [-0.01, 0.0, 0.04, 0.2]
    assert gaps["breach"].tolist() == [False, False, False, True]
    # the newest run with realized months is "new" (June): its gap is 1%
    assert bz.business_metrics(gaps=gaps)["mrr_forecast_gap"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no column"):
        bz.forecast_vs_realized(con, model="Nope")


def test_partial_last_month_is_left_out(con) -> None:
    _events(con, "2024-06-10")
    am = pd.DataFrame({"month": pd.to_datetime(["2024-05-01", "2024-06-01"]),
                       "account_id": ["a", "a"], "mrr": [100, 50], "run_id": "r"})  # fmt: skip
    con.register("am", am)
    con.execute("CREATE TABLE mrr_account_months AS SELECT * FROM am")
    assert bz.realized_mrr(con)["realized"].tolist() == [1.0]


def _attempts(con, rows) -> None:
    frame = pd.DataFrame(rows, columns=["attempt_id", "invoice_id", "created", "status"])
    frame["created"] = pd.to_datetime(frame["created"], utc=True)
    con.register("pa", frame)
    con.execute(
        "INSERT INTO payment_attempts (attempt_id, invoice_id, created, status) "
        "SELECT attempt_id, invoice_id, created, status FROM pa"
    )
    con.unregister("pa")


def test_failed_payment_spike(con) -> None:
    rows = []
    for m in range(1, 8):
        failures = 20 if m == 7 else 5
        for i in range(100):
            status = "failed" if i < failures else "succeeded"
            rows.append((f"a{m}_{i}", f"in{m}_{i}", f"2024-{m:02d}-05", status))
            if status == "failed":  # a later retry does not change the first-charge rate
                rows.append((f"r{m}_{i}", f"in{m}_{i}", f"2024-{m:02d}-09", "succeeded"))
    _attempts(con, rows)
    rates = bz.failed_payment_rates(con, window=6, spike_ratio=1.5)
    assert rates["rate"].tolist() == [0.05] * 6 + [0.2]
    assert rates["spike"].tolist() == [False] * 6 + [True]
    assert not bz.failed_payment_rates(con, min_failed=21)["spike"].any()
    assert rates["ratio"].iloc[-1] == pytest.approx(4.0)
    assert bz.business_metrics(payments=rates)["failed_payment_rate_ratio"] == pytest.approx(4.0)


def test_recovery_by_cohort_counts_only_paid_in_window(con) -> None:
    _events(con, "2024-05-20")
    _attempts(con, [
        ("1", "i1", "2024-01-10", "failed"), ("2", "i2", "2024-01-20", "failed"),
        ("3", "i3", "2024-01-25", "failed"), ("4", "i4", "2024-04-28", "failed"),
    ])  # fmt: skip
    inv = pd.DataFrame({
        "invoice_id": ["i1", "i2", "i3", "i4"],
        "paid_at": pd.to_datetime(["2024-01-15", "2024-03-30", None, "2024-04-29"], utc=True),
    })  # fmt: skip
    con.register("inv", inv)
    con.execute("INSERT INTO invoices (invoice_id, paid_at) SELECT invoice_id, paid_at FROM inv")
    rec = bz.recovery_by_cohort(con, days=30)
    assert rec["failed_invoices"].tolist() == [3, 1]
    assert rec["recovered"].tolist() == [1, 1]  # i2 paid after 70 days does not count
    assert rec["matured"].tolist() == [True, False]  # April's window is still open
    assert bz.business_metrics(recovery=rec, min_cohort=3)[
        "dunning_recovery_rate"
    ] == pytest.approx(1 / 3)
    assert "dunning_recovery_rate" not in bz.business_metrics(recovery=rec)  # 3 < 10: too small


def test_write_off_false_positives(con) -> None:
    _events(con, "2024-06-30")
    inv = pd.DataFrame({
        "invoice_id": ["w1", "w2", "w3", "w4"],
        "paid_at": pd.to_datetime(["2024-03-01", None, "2024-01-01", "2024-06-29"], utc=True),
    })  # fmt: skip
    con.register("inv", inv)
    con.execute("INSERT INTO invoices (invoice_id, paid_at) SELECT invoice_id, paid_at FROM inv")
    proposals = pd.DataFrame({
        "invoice_id": ["w1", "w2", "w3", "w4"], "account_id": "a",
        "as_of": pd.to_datetime(["2024-02-01", "2024-02-01", "2024-02-01", "2024-06-20"], utc=True),
        "amount_due_reporting": 100,
    })  # fmt: skip
    out = bz.write_off_false_positives(con, proposals, maturity_days=30)
    assert out["paid_later"].tolist() == [True, False, False, True]
    assert out["matured"].tolist() == [True, True, True, False]
    assert bz.false_positive_rate(out) == pytest.approx(1 / 3)  # w4 has not matured
    assert bz.business_metrics(write_offs=out)["write_off_false_positive_rate"] == pytest.approx(
        1 / 3
    )


def test_replayed_write_offs_use_the_dunning_policy() -> None:
    from workbench.policy import load_policy

    settings = load_settings(REPO)
    con = duckdb.connect()
    create_all(con)
    empty = bz.replay_write_off_proposals(
        con, policy=load_policy(settings=settings), days=["2024-01-01"]
    )
    assert empty.empty and list(empty.columns) == [
        "invoice_id",
        "account_id",
        "as_of",
        "amount_due_reporting",
    ]


def test_replayed_write_offs_are_the_first_proposal_per_invoice() -> None:
    """Two hard-declined invoices idle long enough on the later days; days given out of
    order and twice are replayed once each, in day order."""
    from workbench.dunning import decide_daily
    from workbench.failed_invoices import open_failed_invoices_on
    from workbench.policy import load_policy

    policy = load_policy(settings=load_settings(REPO))
    con = duckdb.connect()
    create_all(con)
    con.execute(
        "INSERT INTO invoices (invoice_id, account_id, currency, created, amount_due) VALUES "
        "('in_1', 'a1', 'usd', TIMESTAMPTZ '2024-01-01 00:00:00+00', 5000), "
        "('in_2', 'a2', 'usd', TIMESTAMPTZ '2024-01-20 00:00:00+00', 7000)"
    )
    con.execute(
        "INSERT INTO payment_attempts (attempt_id, invoice_id, created, amount, currency, status, "
        "decline_code) VALUES "
        "('ch_1', 'in_1', TIMESTAMPTZ '2024-01-02 00:00:00+00', 5000, 'usd', 'failed', 'stolen_card'), "
        "('ch_2', 'in_2', TIMESTAMPTZ '2024-01-21 00:00:00+00', 7000, 'usd', 'failed', 'stolen_card')"
    )  # fmt: skip
    con.execute("INSERT INTO fx_rates VALUES (DATE '2024-01-01', 'usd', 1)")
    days = ["2024-04-01", "2024-02-01", "2024-03-10T00:00:00+01:00", "2024-04-01"]
    out = bz.replay_write_off_proposals(con, policy=policy, days=days)
    assert out["invoice_id"].tolist() == ["in_1", "in_2"]
    assert out["as_of"].tolist() == [
        pd.Timestamp("2024-03-09 23:00", tz=UTC),  # idle 60 days from 2024-01-02
        pd.Timestamp("2024-04-01", tz=UTC),
    ]
    assert out["amount_due_reporting"].tolist() == [5000, 7000]
    with pytest.raises(ValueError, match=r"no day \(got NaT\)"):
        open_failed_invoices_on(con, days=["2024-02-01", pd.NaT])
    # the same as the day-by-day replay of the dunning notebook, narrowed to write-offs
    replay = decide_daily(open_failed_invoices_on(con, days=days[:3]), policy=policy)
    assert (replay["action"] == "propose_write_off").sum() == 3


def test_feature_freshness_without_a_feature_store(tmp_path: Path) -> None:
    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data")})
    fresh = bz.feature_freshness(settings, horizon=pd.Timestamp("2024-06-30", tz=UTC))
    assert set(fresh["store"]) == {"offline", "online"} and (fresh["rows"] == 0).all()
    assert fresh["newest"].isna().all()
    assert "feature_lag_hours" not in bz.business_metrics(freshness=fresh)


def test_feature_lag_metric() -> None:
    fresh = pd.DataFrame({
        "entity": ["account_id"] * 2, "store": ["offline", "online"],
        "newest": pd.to_datetime(["2024-06-30", "2024-06-27"], utc=True),
        "age_hours": [0.0, 72.0], "lag_hours": [0.0, 72.0], "rows": [10, 10],
    })  # fmt: skip
    assert bz.business_metrics(freshness=fresh)["feature_lag_hours"] == 72.0
    fresh.loc[1, "newest"] = pd.NaT  # rows offline, nothing online: infinitely stale
    assert bz.business_metrics(freshness=fresh)["feature_lag_hours"] == float("inf")


def test_stored_write_off_proposals(con) -> None:
    assert bz.stored_write_off_proposals(con).empty  # no dunning_decisions yet
    decisions = pd.DataFrame({
        "invoice_id": ["w1", "w1", "w2"], "account_id": "a",
        "action": ["propose_write_off", "propose_write_off", "retry_now"],
        "as_of": pd.to_datetime(["2024-02-01", "2024-03-01", "2024-02-01"], utc=True),
        "amount_due_reporting": [100, 100, 50],
    })  # fmt: skip
    con.register("d", decisions)
    con.execute("CREATE TABLE dunning_decisions AS SELECT * FROM d")
    got = bz.stored_write_off_proposals(con)
    assert got["invoice_id"].tolist() == ["w1"]
    assert pd.Timestamp(got["as_of"].iloc[0]) == pd.Timestamp("2024-02-01", tz="UTC")


def test_a_window_with_an_empty_end_is_refused() -> None:
    """`workbench monitor --current '2024-01-01, '` used to give an end of NaT, which every
    comparison let through (a window up to nothing); now it names the missing end."""
    from workbench.monitoring.review import _window

    fallback = (pd.Timestamp("2023-01-01", tz=UTC), pd.Timestamp("2023-06-01", tz=UTC))
    assert _window("", fallback) == fallback
    assert _window("2024-01-01, 2024-03-01T00:00+02:00", fallback) == (
        pd.Timestamp("2024-01-01", tz=UTC),
        pd.Timestamp("2024-02-29 22:00", tz=UTC),
    )
    with pytest.raises(ValueError, match=r"no end of window '2024-01-01, '"):
        _window("2024-01-01, ", fallback)
    with pytest.raises(ValueError, match=r"no start of window ' ,2024-03-01'"):
        _window(" ,2024-03-01", fallback)
