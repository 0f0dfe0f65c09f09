"""The oracle on hand-written truth tables and a four-account warehouse, computed by hand."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench.models import oracle
from workbench.schema import create_all


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write(truth: Path, name: str, frame: pd.DataFrame) -> None:
    truth.mkdir(parents=True, exist_ok=True)
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.DatetimeTZDtype):
            frame[c] = frame[c].astype("datetime64[us, UTC]")
    frame.to_parquet(truth / f"{name}.parquet")


@pytest.fixture()
def world(tmp_path: Path):
    """A: monthly, period ends mid-month; B: already set to cancel; C: yearly;
    D: an invoice in dunning at t with three retries left."""
    con = duckdb.connect()
    create_all(con)
    subs = [
        # account, interval, current_period_end, cancel_at_period_end
        ("A", "month", "2024-03-15", False),
        ("B", "month", "2024-03-20", True),
        ("C", "year", "2024-12-01", False),
        ("D", "month", "2024-03-25", False),
    ]
    for acct, interval, cpe, cape in subs:
        con.execute(
            "INSERT INTO subscription_history (subscription_id, account_id, item_id, price_id, quantity, unit_amount,"
            " currency, interval, interval_count, usage_type, status, cancel_at_period_end, current_period_end,"
            " valid_from, valid_to, event_id) VALUES (?, ?, ?, 'price_x', 1, 5000, 'usd', ?, 1, 'licensed', 'active',"
            " ?, ?, TIMESTAMPTZ '2024-01-01 00:00:00+00', NULL, ?)",
            [
                f"sub_{acct}",
                acct,
                f"si_{acct}",
                interval,
                cape,
                ts(cpe).to_pydatetime(),
                f"evt_{acct}",
            ],
        )
    truth = tmp_path / "truth"
    months = [ts("2024-03-01"), ts("2024-04-01"), ts("2024-05-01")]
    hz = pd.DataFrame(
        {
            "account_id": ["A"] * 3 + ["C"] * 3 + ["D"] * 3,
            "month": months * 3,
            "hazard": [0.1, 0.2, 0.3, 0.05, 0.05, 0.05, 0.0, 0.0, 0.0],
        }
    )
    write(truth, "churn_hazard", hz)
    rec = pd.DataFrame(
        {
            "invoice_id": ["in_D"] * 5,
            "account_id": ["D"] * 5,
            "attempt": [1, 2, 3, 4, 5],
            "attempt_at": [
                ts("2024-02-25"),
                ts("2024-02-28"),
                ts("2024-03-03"),
                ts("2024-03-10"),
                ts("2024-03-17"),
            ],
            "p_success": [0.5, 0.4, 0.3, 0.2, 0.1],
            "succeeded": [False, False, None, None, None],
            "p_recovered_7d": [0.4] * 5,
            "p_recovered_14d": [0.58] * 5,
            "p_recovered_30d": [0.7] * 5,
        }
    )
    write(truth, "recovery", rec)
    offers = pd.DataFrame(
        {
            "account_id": ["A", "C", "Z"],
            "eligible": [True, True, False],
            "eligible_month": [ts("2024-03-01"), ts("2024-04-01"), pd.NaT],
            "assigned": [True, False, False],
            "effect_relative": [0.5, 0.2, 0.4],
            "hazard_at_eligibility": [0.1, 0.05, np.nan],
        }
    )
    write(truth, "offers", offers)
    return con, truth


def test_churn_oracle_by_hand(world) -> None:
    con, truth = world
    spine = pd.DataFrame({"account_id": ["A", "B", "C", "D"], "as_of": [ts("2024-03-01")] * 4})
    out = oracle.churn_oracle(con, spine, truth_dir=truth, horizons=(30, 90))
    # A, 30 days: only March decides; a decision ends things at once (25%) if it falls before
    # T (30 of March's 31 days) or at the period end on the 15th (75%) if it falls before it
    w = 0.25 * 30 / 31 + 0.75 * 14 / 31
    assert out.loc[0, "oracle_churn_30d"] == pytest.approx(0.1 * w)
    # B decided already and its period ends before T
    assert out.loc[1, "oracle_churn_30d"] == pytest.approx(1.0)
    # C (yearly, period ends in December): only immediate cancellations (10%) count
    T = ts("2024-03-01") + pd.Timedelta(days=90)
    w_may = (T - ts("2024-05-01")) / (ts("2024-06-01") - ts("2024-05-01"))
    expected_c = 0.05 * 0.1 * (1 + 0.95 + 0.95**2 * w_may)
    assert out.loc[2, "oracle_churn_90d"] == pytest.approx(expected_c)
    # D: no voluntary hazard, but all three remaining retries must fail
    assert out.loc[3, "oracle_churn_30d"] == pytest.approx(0.7 * 0.8 * 0.9)
    # A, 90 days: March and April wholly inside (anchors Mar 15, Apr 15, May 15 <= T), May partly
    a90 = out.loc[0, "oracle_churn_90d"]
    assert 1 - (1 - 0.1) * (1 - 0.2) < a90 < 1 - (1 - 0.1) * (1 - 0.2) * (1 - 0.3)
    # the "at t" variant holds March's hazard for every month
    assert out.loc[0, "oracle_churn_90d_at_t"] < a90
    with pytest.raises(ValueError, match="month starts"):
        oracle.churn_oracle(con, spine.assign(as_of=ts("2024-03-02")), truth_dir=truth)


def test_recovery_oracle_at_first_and_later_failures(world) -> None:
    _, truth = world
    spine = pd.DataFrame(
        {
            "invoice_id": ["in_D", "in_D", "in_unknown"],
            "as_of": [ts("2024-02-25"), ts("2024-03-03"), ts("2024-03-03")],
        }
    )
    out = oracle.recovery_oracle(spine, truth_dir=truth, horizons=(7, 14))
    assert out["oracle_first_failure"].tolist() == [True, False, False]
    # at the first failure the simulator's own numbers are used
    assert out.loc[0, "oracle_recovered_7d"] == pytest.approx(0.4)
    assert out.loc[0, "oracle_recovered_14d"] == pytest.approx(0.58)
    # after the failed retry of Mar 3: retries on Mar 10 (within 7 days) and Mar 17 (within 14)
    assert out.loc[1, "oracle_recovered_7d"] == pytest.approx(0.2)
    assert out.loc[1, "oracle_recovered_14d"] == pytest.approx(1 - 0.8 * 0.9)
    assert np.isnan(out.loc[2, "oracle_recovered_7d"])


def test_experiment_and_true_uplift(world) -> None:
    _, truth = world
    exp = oracle.experiment_from_truth(truth)
    assert exp["account_id"].tolist() == ["A", "C"] and exp["treatment"].tolist() == [1, 0]
    tau = oracle.uplift_oracle(exp, truth_dir=truth, months=3)
    # churn within 3 months without the offer minus with it (hazard x (1 - effect))
    assert tau.iloc[0] == pytest.approx((1 - 0.9**3) - (1 - 0.95**3))
    assert tau.iloc[1] == pytest.approx((1 - 0.95**3) - (1 - 0.96**3))


def test_uplift_oracle_on_the_subscription_ending_counts_billing(world) -> None:
    """The effect on ``churn_90d`` (the subscription ends within 90 days): a decision ends a
    subscription at once (25% monthly, 10% yearly) or at its period end."""
    con, truth = world
    exp = oracle.experiment_from_truth(truth)  # A eligible on Mar 1, C on Apr 1
    tau = oracle.uplift_oracle(exp, truth_dir=truth, con=con, horizon_days=90)
    # A (monthly, anchor on the 15th; T = May 30): March and April decisions end by T; a May
    # decision only if immediate and before the 30th, or before the May 15 period end
    w_may = 0.25 * 29 / 31 + 0.75 * 14 / 31

    def p_a(h: float) -> float:
        return h + (1 - h) * h + (1 - h) ** 2 * h * w_may

    assert tau.iloc[0] == pytest.approx(p_a(0.1) - p_a(0.1 * (1 - 0.5)))
    # C (yearly, period ends in December; T = Jun 30): only immediate cancellations count

    def p_c(h: float) -> float:
        return 0.1 * (h + (1 - h) * h + (1 - h) ** 2 * h * 29 / 30)

    assert tau.iloc[1] == pytest.approx(p_c(0.05) - p_c(0.05 * (1 - 0.2)))
    # far below the effect on deciding to cancel, which ignores billing
    decision = oracle.uplift_oracle(exp, truth_dir=truth, months=3)
    assert tau.iloc[1] < 0.2 * decision.iloc[1]


def test_missing_truth_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="simulated"):
        oracle.read_truth(tmp_path, "churn_hazard")


def _dunning_truth(truth: Path) -> dict[str, float]:
    """One do_not_honor invoice failing on 2024-03-05 10:00, retries at exactly 3/7/14/21
    days with the simulator's own probabilities (amount 0, no history, health 0)."""
    from workbench.simulator import behaviour as bh

    t0 = ts("2024-03-05 10:00")
    at = [t0] + [t0 + pd.Timedelta(days=d) for d in bh.RETRY_DAYS]
    p = [
        bh.recovery_probability(
            decline_code="do_not_honor",
            attempt=k,
            days_since_failure=float(bh.RETRY_DAYS[k - 2]),
            day_of_month=at[k - 1].day,
            days_in_month=at[k - 1].days_in_month,
            amount_usd=0.0,
            health=0.0,
            prior_failed_invoices=0,
        )
        for k in range(2, 6)
    ]
    rec = pd.DataFrame(
        {
            "invoice_id": ["in_E"] * 5,
            "account_id": ["E"] * 5,
            "attempt": [1, 2, 3, 4, 5],
            "attempt_at": at,
            "decline_code": ["do_not_honor"] * 5,
            "p_success": [0.9, *p],
            "succeeded": [False, False, False, None, None],
            "p_recovered_7d": [1 - (1 - p[0]) * (1 - p[1])] * 5,
            "p_recovered_14d": [1 - (1 - p[0]) * (1 - p[1]) * (1 - p[2])] * 5,
            "p_recovered_30d": [1 - np.prod([1 - q for q in p])] * 5,
        }
    )
    write(truth, "recovery", rec)
    return {"t0": t0, "p": p}


def test_recovery_oracle_at_t_averages_unannounced_retry_times(tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    w = _dunning_truth(truth)
    p2, p3, p4, p5 = w["p"]
    t0 = w["t0"]
    spine = pd.DataFrame(
        {
            "invoice_id": ["in_E", "in_E", "in_E"],
            "as_of": [t0, t0 + pd.Timedelta(days=7), t0 + pd.Timedelta(days=21)],
        }
    )
    out = oracle.recovery_oracle(spine, truth_dir=truth, horizons=(7, 30))
    # 30 days after the first failure every retry is inside whatever its jitter: only the
    # odds move a little with the retry days (paydays), so it stays close to the truth's
    assert out.loc[0, "oracle_recovered_30d_at_t"] == pytest.approx(
        out.loc[0, "oracle_recovered_30d"], abs=0.03
    )
    # the day-7 retry sits on the 7-day boundary: inside about half the time, so the value
    # lies between "day-3 retry only" and "both retries" (the drawn-times oracle has both)
    only_first = p2
    both = 1 - (1 - p2) * (1 - p3)
    mid = out.loc[0, "oracle_recovered_7d_at_t"]
    assert only_first + 0.2 * (both - only_first) < mid < both - 0.2 * (both - only_first)
    assert out.loc[0, "oracle_recovered_7d"] == pytest.approx(both)
    # after the last retry nothing is left to succeed
    assert out.loc[2, "oracle_recovered_30d_at_t"] == pytest.approx(0.0)
    assert 0 < out.loc[1, "oracle_recovered_30d_at_t"] < 1


def test_recovery_oracle_at_t_without_decline_codes_is_missing(world) -> None:
    _, truth = world
    spine = pd.DataFrame({"invoice_id": ["in_D"], "as_of": [ts("2024-02-25")]})
    out = oracle.recovery_oracle(spine, truth_dir=truth, horizons=(7,))
    assert np.isnan(out.loc[0, "oracle_recovered_7d_at_t"])
