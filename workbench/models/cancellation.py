"""Decisions to cancel and the billing mechanics that turn them into ended subscriptions.

A customer *decides* to cancel at some moment; the subscription then ends at once (Stripe's
``cancel``) or at the end of the current billing period (``cancel_at_period_end``). So the
probability that an account churns within ``H`` days is not its decision hazard alone: on a
yearly plan most decisions made now end nothing within 90 days. This module holds:

* :func:`decision_labels`: per (account, as-of) row, did the account ask to cancel a paying
  subscription in the month after ``as_of`` (``subscriptions.canceled_at``)? Cancellations
  during a trial and exits after dunning gave up (an invoice marked uncollectible in the 40
  days before) do not count: those are not decisions a retention offer can change.
* :func:`immediate_shares`: per billing interval, the share of such decisions that ended
  the subscription at once, measured on the warehouse.
* :func:`ending_weights` / :func:`ended_by`: the chance that a decision made in each month
  ahead ends the subscription by the horizon, and the probability that the subscription ends
  by then given a monthly decision hazard.
* :func:`billing_weights`: the same weights from a feature frame (``as_of``,
  ``days_to_period_end``, ``billing_interval_months``, ``cancel_at_period_end``), so a model
  scores without the warehouse.

The oracle (:mod:`workbench.models.oracle`) uses the same mechanics with the simulator's
true shares; the uplift model's ``d`` learner uses them with the measured ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import duckdb
import numpy as np
import pandas as pd

from workbench.features.offline import registered_rows, to_us

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
#: Days before a cancellation in which an invoice marked uncollectible makes it involuntary.
INVOLUNTARY_WINDOW_DAYS = 40


def add_months_us(us: np.ndarray, months: int) -> np.ndarray:
    """Epoch microseconds shifted by calendar months (day clipped to the month's end)."""
    ts = pd.Series(pd.to_datetime(np.asarray(us, dtype=np.int64), unit="us", utc=True)).astype(
        "datetime64[us, UTC]"
    )
    if months:
        ts = ts + pd.DateOffset(months=months)
    return ts.dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)


def month_starts(t_us: np.ndarray, horizon_days: int) -> np.ndarray:
    """Per row, ``t`` and the calendar months after it covering ``horizon_days`` (one more
    column than months)."""
    k = int(np.ceil(horizon_days / 28)) + 1
    return np.column_stack([add_months_us(t_us, j) for j in range(k + 1)])


def last_anchor(cpe_us: np.ndarray, step_months: np.ndarray, T_us: np.ndarray) -> np.ndarray:
    """The last billing period boundary at or before ``T``: the largest ``cpe + j`` billing
    intervals that is ``<= T`` (NaN when the current period ends after ``T``)."""
    out = np.full(len(T_us), np.nan)
    known = np.isfinite(cpe_us)
    cpe_i = np.where(known, cpe_us, 0).astype(np.int64)
    for j in range(0, 13):
        for step in (1, 12):
            sel = known & (step_months == step)
            if not sel.any() or (step == 12 and j > 1):
                continue
            anchor = add_months_us(cpe_i[sel], j * step).astype(np.float64)
            good = anchor <= T_us[sel]
            idx = np.flatnonzero(sel)[good]
            out[idx] = np.fmax(out[idx], anchor[good])
    return out


def ending_weights(
    starts: np.ndarray,
    T: np.ndarray,
    *,
    cpe: np.ndarray,
    step: np.ndarray,
    pending: np.ndarray,
    immediate: Mapping[str, float],
) -> np.ndarray:
    """Per row and month ``[starts[:, k], starts[:, k + 1])``: the chance that a decision to
    cancel made in that month (uniformly in it) ends the subscription by ``T``: at once
    with probability ``immediate[interval]`` (``month`` or ``year``), else at the end of the
    billing period (anchored on ``cpe``, the current period end, every ``step`` months).
    Zero where a cancellation is already pending (nothing left to decide)."""
    m0, m1 = starts[:, :-1], starts[:, 1:]
    length = (m1 - m0).astype(np.float64)
    p_imm = np.where(step == 12, immediate["year"], immediate["month"])
    anchor = last_anchor(cpe, step, T.astype(np.float64))
    p_by_T = np.clip((T[:, None] - m0) / length, 0, 1)
    p_by_A = np.where(
        np.isfinite(anchor)[:, None],
        np.clip((np.nan_to_num(anchor)[:, None] - m0) / length, 0, 1),
        0.0,
    )
    w = (p_imm[:, None] * p_by_T + (1 - p_imm[:, None]) * p_by_A) * (m0 < T[:, None])
    w[np.asarray(pending, dtype=bool)] = 0.0
    return w


def ended_by(hazard: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row: sum over months of survival-to-month x hazard x chance the decision ends
    the subscription in time (``hazard``: monthly decision probabilities, one column per
    month of ``w``)."""
    surv = np.concatenate(
        [np.ones((hazard.shape[0], 1)), np.cumprod(1.0 - hazard, axis=1)[:, :-1]], axis=1
    )
    return np.sum(surv * hazard * w, axis=1)


def ended_by_constant(hazard: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ended_by` for one hazard per row, the same every month, and its derivative
    in that hazard: ``sum_k w_k h (1 - h)^k`` and ``sum_k w_k (1 - h)^(k-1) (1 - (k + 1) h)``.
    """
    h = np.asarray(hazard, dtype=np.float64)[:, None]
    k = np.arange(w.shape[1], dtype=np.float64)[None, :]
    surv = (1.0 - h) ** k
    slope = np.where(k > 0, (1.0 - h) ** np.maximum(k - 1, 0) * (1.0 - (k + 1) * h), 1.0)
    return np.sum(w * h * surv, axis=1), np.sum(w * slope, axis=1)


def billing_weights(
    frame: pd.DataFrame, *, horizon_days: int, immediate: Mapping[str, float]
) -> np.ndarray:
    """:func:`ending_weights` from a feature frame: ``as_of``, ``days_to_period_end`` (the
    current period's end), ``billing_interval_months`` (12 = yearly, anything else is
    billed monthly) and ``cancel_at_period_end`` (a cancellation already pending).

    A row without a known period end can only end at once (the immediate share).
    """
    t_us = to_us(frame["as_of"])
    days = pd.to_numeric(frame["days_to_period_end"], errors="coerce").to_numpy(np.float64)
    cpe = np.where(np.isfinite(days), t_us + days * DAY_US, np.nan)
    interval = pd.to_numeric(frame["billing_interval_months"], errors="coerce").to_numpy()
    step = np.where(interval == 12, 12, 1)
    pending = pd.to_numeric(frame["cancel_at_period_end"], errors="coerce").fillna(0).to_numpy()
    starts = month_starts(t_us, horizon_days)
    return ending_weights(
        starts,
        t_us + int(horizon_days) * DAY_US,
        cpe=cpe,
        step=step,
        pending=pending > 0,
        immediate=immediate,
    )


#: Voluntary cancellations of paying subscriptions: not in a trial, not after dunning gave up.
_VOLUNTARY = f"""
    SELECT s.subscription_id, s.account_id, s.canceled_at, s.ended_at
    FROM subscriptions s
    LEFT JOIN invoices i
      ON i.account_id = s.account_id AND i.marked_uncollectible_at IS NOT NULL
     AND epoch_us(i.marked_uncollectible_at)
         BETWEEN epoch_us(s.canceled_at) - {INVOLUNTARY_WINDOW_DAYS * DAY_US}
             AND epoch_us(s.canceled_at) + {DAY_US}
    WHERE s.canceled_at IS NOT NULL
      AND NOT (s.trial_end IS NOT NULL AND s.canceled_at <= s.trial_end)
      AND i.invoice_id IS NULL
"""


def immediate_shares(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Share of voluntary cancellations that ended the subscription at once (within an
    hour of the request), per billing interval (``month``, ``year``).

    An interval without cancellations takes the pooled share.

    Raises:
        ValueError: The warehouse has no voluntary cancellation to learn from.
    """
    df = con.execute(
        f"""
        WITH v AS ({_VOLUNTARY}),
        iv AS (SELECT subscription_id, max(interval) AS interval FROM subscription_history
               GROUP BY subscription_id)
        SELECT coalesce(iv.interval, 'month') AS interval, count(*) AS n,
               sum(CASE WHEN v.ended_at IS NOT NULL
                         AND epoch_us(v.ended_at) - epoch_us(v.canceled_at) < {DAY_US // 24}
                        THEN 1 ELSE 0 END) AS immediate
        FROM v LEFT JOIN iv ON iv.subscription_id = v.subscription_id
        GROUP BY coalesce(iv.interval, 'month')
        """
    ).df()
    if df.empty or df["n"].sum() == 0:
        raise ValueError(
            "the warehouse has no voluntary cancellation (subscriptions.canceled_at outside "
            "trials and dunning): there is nothing to learn how cancellations take effect from"
        )
    pooled = float(df["immediate"].sum() / df["n"].sum())
    out = {}
    for interval in ("month", "year"):
        row = df[df["interval"] == interval]
        out[interval] = float(row["immediate"].sum() / row["n"].sum()) if len(row) else pooled
    return out


def rows_with_event(
    con: duckdb.DuckDBPyConnection,
    frame: pd.DataFrame,
    events_sql: str,
    *,
    end_us: np.ndarray,
) -> np.ndarray:
    """Per row (``account_id``, ``as_of``): does ``events_sql`` (a query with columns
    ``account_id`` and ``event_at``) have an event of the account in ``(as_of, end]``
    (``end_us``: per row, epoch microseconds)?"""
    with registered_rows(con, frame, end_us=end_us) as name:
        hit = con.execute(
            f"""
            WITH e AS ({events_sql})
            SELECT DISTINCT p._row FROM {name} p JOIN e ON e.account_id = p.account_id
            WHERE epoch_us(e.event_at) > p.t_us AND epoch_us(e.event_at) <= p.end_us
            """
        ).fetchnumpy()["_row"]
    out = np.zeros(len(frame), dtype=bool)
    out[np.asarray(hit, dtype=np.int64)] = True
    return out


def decision_labels(
    con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, *, months: int = 1
) -> np.ndarray:
    """Per row (``account_id``, ``as_of``): did the account ask to cancel a paying
    subscription voluntarily in ``(as_of, as_of + months]`` (see the module docstring)?

    Rows whose window has not elapsed by the warehouse's last cancellation request or
    invoice are still labelled (False unless a request is seen): pass rows whose window
    is observed.
    """
    events = f"SELECT v.account_id, v.canceled_at AS event_at FROM ({_VOLUNTARY}) v"
    end_us = add_months_us(to_us(frame["as_of"]), months)
    return rows_with_event(con, frame, events, end_us=end_us)
