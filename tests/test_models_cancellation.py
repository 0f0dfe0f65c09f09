"""Decisions to cancel and when they take effect: labels, shares and billing weights by hand."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench.features.offline import to_us
from workbench.models import cancellation as cn

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def world() -> duckdb.DuckDBPyConnection:
    """Six cancellations: a, b monthly (a at once, b at period end), c yearly at period end,
    d in its trial, e after dunning gave up, f monthly at period end in May."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE subscriptions (subscription_id VARCHAR, account_id VARCHAR, "
        "canceled_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, trial_end TIMESTAMPTZ)"
    )
    con.execute(
        """INSERT INTO subscriptions VALUES
        ('s_a', 'a', '2024-03-10 00:00:00+00', '2024-03-10 00:00:00+00', NULL),
        ('s_b', 'b', '2024-03-20 00:00:00+00', '2024-04-05 00:00:00+00', '2023-01-15 00:00:00+00'),
        ('s_c', 'c', '2024-03-02 00:00:00+00', '2024-11-01 00:00:00+00', NULL),
        ('s_d', 'd', '2024-03-05 00:00:00+00', '2024-03-05 00:00:00+00', '2024-03-14 00:00:00+00'),
        ('s_e', 'e', '2024-03-15 00:00:00+00', '2024-03-15 00:00:00+00', NULL),
        ('s_f', 'f', '2024-05-03 00:00:00+00', '2024-05-20 00:00:00+00', NULL),
        ('s_g', 'g', NULL, NULL, NULL)"""
    )
    con.execute("CREATE TABLE subscription_history (subscription_id VARCHAR, interval VARCHAR)")
    con.execute(
        "INSERT INTO subscription_history VALUES ('s_a', 'month'), ('s_b', 'month'), "
        "('s_c', 'year'), ('s_d', 'month'), ('s_e', 'month'), ('s_f', 'month'), ('s_g', 'month')"
    )
    con.execute(
        "CREATE TABLE invoices (invoice_id VARCHAR, account_id VARCHAR, "
        "marked_uncollectible_at TIMESTAMPTZ)"
    )
    con.execute(
        "INSERT INTO invoices VALUES ('in_e', 'e', '2024-03-14 12:00:00+00'), "
        "('in_b', 'b', '2023-06-01 00:00:00+00')"
    )
    return con


def test_immediate_shares_count_voluntary_paid_cancellations_only() -> None:
    con = world()
    # monthly: a (at once), b and f (at period end); d (trial) and e (dunning) left out
    assert cn.immediate_shares(con) == {"month": pytest.approx(1 / 3), "year": 0.0}
    con.execute("DELETE FROM subscriptions WHERE subscription_id = 's_c'")
    # no yearly cancellation: the pooled share
    assert cn.immediate_shares(con)["year"] == pytest.approx(1 / 3)
    con.execute("DELETE FROM subscriptions WHERE account_id IN ('a', 'b', 'f')")
    with pytest.raises(ValueError, match="no voluntary cancellation"):
        cn.immediate_shares(con)


def test_decision_labels_look_one_month_ahead() -> None:
    con = world()
    frame = pd.DataFrame(
        {
            "account_id": ["a", "b", "c", "d", "e", "f", "g", "a", "f"],
            "as_of": [T0] * 7 + [T0 + pd.Timedelta(days=8), pd.Timestamp("2024-04-03", tz="UTC")],
        }
    )
    got = cn.decision_labels(con, frame).tolist()
    # a, b, c asked in March; d (trial) and e (after dunning) do not count; f asked in May;
    # g never; the window is (as_of, as_of + 1 month]: a's request on the 10th is inside
    # (as_of the 9th), f's on May 3rd is at the window's end (as_of April 3rd)
    assert got == [True, True, True, False, False, False, False, True, True]
    later = frame.assign(as_of=pd.Timestamp("2024-03-10", tz="UTC")).head(1)
    assert not cn.decision_labels(con, later).any()  # not at the request itself


def test_ending_weights_by_hand() -> None:
    t = to_us(pd.Series([T0, T0, T0]))
    starts = cn.month_starts(t, 90)
    assert starts.shape == (3, 6)
    T = t + 90 * cn.DAY_US
    day = cn.DAY_US
    # monthly plan renewing on March 11; yearly renewing in November; one pending
    cpe = np.array([t[0] + 10 * day, t[0] + 245 * day, t[0] + 10 * day], dtype=np.float64)
    w = cn.ending_weights(
        starts,
        T,
        cpe=cpe,
        step=np.array([1, 12, 1]),
        pending=np.array([False, False, True]),
        immediate={"month": 0.25, "year": 0.1},
    )
    # monthly: a decision in March or April ends the subscription by May 30 (at once, or at a
    # renewal before it); in May: at once if before May 30 (29 of 31 days), at the May 11
    # renewal if before it (10 of 31 days); nothing from June on
    np.testing.assert_allclose(w[0, :2], 1.0)
    assert w[0, 2] == pytest.approx(0.25 * 29 / 31 + 0.75 * 10 / 31)
    np.testing.assert_allclose(w[0, 3:], 0.0)
    # yearly, renewing after the horizon: only the immediate share, prorated in May
    np.testing.assert_allclose(w[1, :2], 0.1)
    assert w[1, 2] == pytest.approx(0.1 * 29 / 31)
    np.testing.assert_allclose(w[2], 0.0)  # already set to cancel: nothing to decide
    # a constant monthly hazard h: the subscription ends by T with sum_k S_k h w_k
    h = np.full((3, 5), 0.1)
    expected = 0.1 * (1 + 0.9 + 0.81 * w[0, 2])
    assert cn.ended_by(h, w)[0] == pytest.approx(expected)


def test_ended_by_constant_is_ended_by_with_its_exact_slope() -> None:
    rng = np.random.default_rng(0)
    w = rng.uniform(0, 1, (50, 4))
    h = rng.uniform(0, 0.9, 50)
    value, slope = cn.ended_by_constant(h, w)
    np.testing.assert_allclose(value, cn.ended_by(np.repeat(h[:, None], 4, axis=1), w))
    step = 1e-6
    numeric = (cn.ended_by_constant(h + step, w)[0] - cn.ended_by_constant(h - step, w)[0]) / (
        2 * step
    )
    np.testing.assert_allclose(slope, numeric, rtol=1e-6, atol=1e-9)


def test_billing_weights_from_features_match_the_explicit_state() -> None:
    frame = pd.DataFrame(
        {
            "as_of": [T0, T0 + pd.Timedelta(days=3), T0],
            "days_to_period_end": [10.0, 200.0, np.nan],
            "billing_interval_months": [1.0, 12.0, np.nan],
            "cancel_at_period_end": [0, 0, 0],
        }
    )
    shares = {"month": 0.3, "year": 0.05}
    got = cn.billing_weights(frame, horizon_days=90, immediate=shares)
    t = to_us(frame["as_of"])
    cpe = t + frame["days_to_period_end"].to_numpy() * cn.DAY_US
    want = cn.ending_weights(
        cn.month_starts(t, 90),
        t + 90 * cn.DAY_US,
        cpe=cpe,
        step=np.array([1, 12, 1]),
        pending=np.zeros(3, bool),
        immediate=shares,
    )
    np.testing.assert_allclose(got, want)
    # without a known period end, a decision ends the subscription only at once
    np.testing.assert_allclose(got[2, :2], 0.3)
