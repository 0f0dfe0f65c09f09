"""The recovery curve: predicted success of a retry at any chosen time, learned from history.

The dunning engine chooses *when* to retry from this curve. It is fitted on the payment
attempts in the warehouse (what the business observes: the decline code of the first
failure, the attempt number, days since the first failure, the day of the month, the
amount in the reporting currency and how many earlier invoices of the account failed),
never on the simulator's truth. A small LightGBM model with shape constraints (:data:`MONOTONE`: a
later attempt never helps by itself, waiting never hurts by itself) keeps the curve usable
for comparing candidate times.

:meth:`RecoveryCurve.plan` lays out the next retries greedily: each goes to the candidate
time with the highest predicted success within ``lookahead_hours`` after the earliest time
the policy allows (its minimum spacing), inside the dunning window. The invoice's
*recovery probability* is then ``1 - prod(1 - p)`` over the planned retries still ahead:
the number the policy's ``min_recovery_probability`` threshold is compared with.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DAY_S = 86_400.0
FEATURES = (
    "decline",
    "attempt",
    "days_since_failure",
    "day_of_month",
    "days_to_month_end",
    "log_amount",
    "prior_failed",
)
#: decline codes the curve knows (others map to "other")
DECLINE_CODES = (
    "insufficient_funds",
    "do_not_honor",
    "generic_decline",
    "expired_card",
    "processing_error",
    "fraudulent",
    "lost_card",
    "stolen_card",
    "other",
)
#: Shape constraints. A later attempt never helps by itself (-1); waiting longer since the
#: failure never hurts by itself (+1: funds arrive, cards get updated). The second one is
#: needed because history cannot identify it: a fixed schedule ties days to the attempt
#: number, and the invoices still open late are the hard ones (survivorship), so an
#: unconstrained curve learns "later is worse" and retries too early.
MONOTONE = {"attempt": -1, "days_since_failure": 1}
PARAMS = {
    "objective": "binary",
    "num_leaves": 4,
    "min_data_in_leaf": 20,
    "learning_rate": 0.03,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 1,
    "seed": 0,
    "deterministic": True,
}
ROUNDS = 250
MIN_ROWS = 30


def history_sql(where: str = "TRUE") -> str:
    """SQL of every retry (attempt >= 2) of an invoice whose first charge failed."""
    return f"""
    WITH first AS (
        SELECT invoice_id, arg_min(coalesce(decline_code, failure_code), created) AS decline_code,
               min(created) AS first_failed_at
        FROM payment_attempts WHERE status = 'failed' AND invoice_id IS NOT NULL
        GROUP BY invoice_id
    ), inv AS (
        SELECT f.*, i.account_id, i.amount_due, i.currency FROM first f
        JOIN invoices i USING (invoice_id)
    ), prior AS (
        SELECT a.invoice_id, count(b.invoice_id) AS prior_failed
        FROM inv a LEFT JOIN inv b
          ON b.account_id = a.account_id AND b.first_failed_at < a.first_failed_at
        GROUP BY a.invoice_id
    )
    SELECT inv.*, p.prior_failed, pa.created AS attempt_at, pa.attempt_number AS attempt,
           pa.status = 'succeeded' AS succeeded
    FROM inv JOIN prior p USING (invoice_id)
    JOIN payment_attempts pa USING (invoice_id)
    WHERE pa.attempt_number >= 2 AND ({where})
    """


def _features(
    *,
    decline: pd.Series | np.ndarray,
    attempt: np.ndarray,
    when: pd.DatetimeIndex | pd.Series,
    first_failed_at: pd.Series | np.ndarray,
    amount_reporting: np.ndarray,
    prior_failed: np.ndarray,
) -> pd.DataFrame:
    when = pd.DatetimeIndex(pd.to_datetime(when, utc=True))
    first = pd.DatetimeIndex(pd.to_datetime(first_failed_at, utc=True))
    codes = pd.Categorical(
        [c if c in DECLINE_CODES else "other" for c in np.asarray(decline, dtype=object)],
        categories=DECLINE_CODES,
    )
    return pd.DataFrame(
        {
            "decline": codes.codes.astype(np.int32),
            "attempt": np.asarray(attempt, dtype=float),
            "days_since_failure": (when - first).total_seconds().to_numpy() / DAY_S,
            "day_of_month": when.day.to_numpy(dtype=float),
            "days_to_month_end": (when.days_in_month - when.day).to_numpy(dtype=float),
            "log_amount": np.log1p(np.asarray(amount_reporting, dtype=float) / 100.0),
            "prior_failed": np.minimum(np.asarray(prior_failed, dtype=float), 10.0),
        }
    )


@dataclass
class RecoveryCurve:
    """A fitted curve; :meth:`predict` gives the success probability of one retry."""

    booster: lgb.Booster
    rows: int
    version: str

    @classmethod
    def fit(cls, history: pd.DataFrame, *, rounds: int = ROUNDS) -> RecoveryCurve:
        """Fit on retries from :func:`history_sql` (plus ``amount_reporting``).

        Raises:
            ValueError: Too few retries to learn from (fewer than :data:`MIN_ROWS`, or fewer
                than 3 successes or failures).
        """
        y = history["succeeded"].astype(int).to_numpy()
        if len(history) < MIN_ROWS or y.sum() < 3 or len(y) - y.sum() < 3:
            raise ValueError(
                f"only {len(history)} retries ({int(y.sum())} succeeded) to fit a recovery "
                "curve from; simulate or ingest more history"
            )
        X = _features(
            decline=history["decline_code"].to_numpy(),
            attempt=history["attempt"].to_numpy(),
            when=history["attempt_at"],
            first_failed_at=history["first_failed_at"],
            amount_reporting=history["amount_reporting"].to_numpy(),
            prior_failed=history["prior_failed"].to_numpy(),
        )
        monotone = [MONOTONE.get(f, 0) for f in FEATURES]
        data = lgb.Dataset(
            X[list(FEATURES)],
            label=y,
            categorical_feature=["decline"],
            free_raw_data=False,
        )
        booster = lgb.train(
            {**PARAMS, "monotone_constraints": monotone}, data, num_boost_round=rounds
        )
        return cls(booster=booster, rows=len(history), version=f"retry-curve:{len(history)}rows")

    def predict(self, **kwargs: object) -> np.ndarray:
        """Success probability of retries described by :func:`_features`' arguments."""
        X = _features(**kwargs)  # type: ignore[arg-type]
        return self.booster.predict(X[list(FEATURES)].to_numpy(dtype=np.float64))

    def plan(
        self,
        invoices: pd.DataFrame,
        *,
        retries: int,
        min_hours_between: float,
        window_days: float,
        grid_hours: float = 6.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The retry plan per invoice that maximises its predicted chance of being paid.

        Dynamic programming over a time grid: with ``V_j(t)`` the best chance of recovery
        from retry ``j`` on when the previous attempt was at ``t``,
        ``V_j(t) = max_{t' >= t + spacing} p_j(t') + (1 - p_j(t')) V_{j+1}(t')``, where
        ``p_j(t')`` is the curve's success probability of retry ``j`` at ``t'``. A retry
        that adds nothing is not planned.

        Args:
            invoices: ``first_failed_at, decline_code, amount_reporting, prior_failed``.
            retries: Retries to plan at most (the policy's cap).
            min_hours_between: Minimum spacing between attempts.
            window_days: Retries are planned within this many days of the first failure.
            grid_hours: Spacing of the candidate times.

        Returns:
            ``(times, p)``: arrays (invoices x retries) of planned retry times (unix seconds,
            NaN when no retry is planned) and their predicted success probabilities (0 there).
        """
        first = pd.to_datetime(invoices["first_failed_at"], utc=True)
        return self.plan_arrays(
            first_ns=pd.DatetimeIndex(first).as_unit("ns").asi8,
            first_s=np.array([t.timestamp() for t in first], dtype=np.float64),
            decline=invoices["decline_code"].to_numpy(dtype=object),
            amount_reporting=invoices["amount_reporting"].to_numpy(float),
            prior_failed=invoices["prior_failed"].to_numpy(float),
            retries=retries,
            min_hours_between=min_hours_between,
            window_days=window_days,
            grid_hours=grid_hours,
        )

    def plan_arrays(
        self,
        *,
        first_ns: np.ndarray,
        first_s: np.ndarray,
        decline: np.ndarray,
        amount_reporting: np.ndarray,
        prior_failed: np.ndarray,
        retries: int,
        min_hours_between: float,
        window_days: float,
        grid_hours: float = 6.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`plan` on plain arrays (the per-event fast path of ``workbench receive``).

        Args:
            first_ns: First failure per invoice, int64 ns since the epoch (UTC).
            first_s: The same as float seconds (``Timestamp.timestamp()``).
            decline, amount_reporting, prior_failed: Per invoice, as in :meth:`plan`.
            retries, min_hours_between, window_days, grid_hours: As in :meth:`plan`.
        """
        n = len(first_ns)
        times = np.full((n, retries), np.nan)
        probs = np.zeros((n, retries))
        if n == 0 or retries == 0:
            return times, probs
        grid = _plan_grid(retries, float(min_hours_between), float(window_days), float(grid_hours))
        g = len(grid.offsets_s)
        when = first_s[:, None] + grid.offsets_s[None, :]
        when_ns = pd.DatetimeIndex(pd.to_datetime(when.ravel(), unit="s", utc=True)).asi8
        base = _feature_matrix(
            decline=np.repeat(np.asarray(decline, dtype=object), g),
            when_ns=when_ns,
            first_ns=np.repeat(np.asarray(first_ns, dtype=np.int64), g),
            amount_reporting=np.repeat(np.asarray(amount_reporting, dtype=float), g),
            prior_failed=np.repeat(np.asarray(prior_failed, dtype=float), g),
        )
        col = FEATURES.index("attempt")
        stacked = np.tile(base, (retries, 1))  # one predict call for every retry number
        stacked[:, col] = np.repeat(grid.attempts, n * g)
        p = self.booster.predict(stacked, num_threads=1).reshape(retries, n, g)
        return _best_plan(p, when, grid, retries)


_CODE_OF = {c: k for k, c in enumerate(DECLINE_CODES)}


def _feature_matrix(
    *,
    decline: np.ndarray,
    when_ns: np.ndarray,
    first_ns: np.ndarray,
    amount_reporting: np.ndarray,
    prior_failed: np.ndarray,
) -> np.ndarray:
    """:func:`_features` (with attempt 0) as a float64 matrix in :data:`FEATURES` order, from
    int64 nanosecond timestamps with numpy only (the same values, without pandas frames)."""
    other = _CODE_OF["other"]
    codes = np.fromiter(
        (_CODE_OF.get(c, other) if isinstance(c, str) else other for c in decline),
        dtype=np.float64,
        count=len(decline),
    )
    days = when_ns.astype("datetime64[ns]").astype("datetime64[D]")
    month = days.astype("datetime64[M]")
    month_start = month.astype("datetime64[D]")
    day = (days - month_start).astype(np.int64) + 1
    days_in_month = ((month + 1).astype("datetime64[D]") - month_start).astype(np.int64)
    out = np.empty((len(when_ns), len(FEATURES)), dtype=np.float64)
    out[:, 0] = codes
    out[:, 1] = 0.0
    out[:, 2] = ((when_ns - first_ns) / 1e9) / DAY_S
    out[:, 3] = day
    out[:, 4] = days_in_month - day
    out[:, 5] = np.log1p(amount_reporting / 100.0)
    out[:, 6] = np.minimum(prior_failed, 10.0)
    return out


@dataclass(frozen=True)
class _Grid:
    """What a plan's dynamic programme needs besides the curve, computed once per process
    for each (retries, spacing, window, grid) (see :func:`_plan_grid`)."""

    offsets_s: np.ndarray  # candidate times after the first failure (seconds)
    attempts: np.ndarray  # attempt number of retry j (float)
    first_allowed: np.ndarray  # previous attempt at grid index i (i = g: t0) -> first index
    valid: np.ndarray  # whether any index is allowed after i
    positions: np.ndarray


@functools.lru_cache(maxsize=64)
def _plan_grid(
    retries: int, min_hours_between: float, window_days: float, grid_hours: float
) -> _Grid:
    grid = np.arange(grid_hours, window_days * 24.0 + 1e-9, grid_hours) * 3600.0  # after t0
    g = len(grid)
    gap = int(np.ceil(min_hours_between / grid_hours - 1e-9))
    start0 = max(int(np.ceil(min_hours_between / grid_hours - 1e-9)) - 1, 0)
    first_allowed = np.r_[np.arange(g) + gap, start0]
    valid = first_allowed < g
    for a in (grid, first_allowed, valid):
        a.setflags(write=False)
    return _Grid(
        offsets_s=grid,
        attempts=np.arange(2, retries + 2, dtype=np.float64),
        first_allowed=np.minimum(first_allowed, g - 1),
        valid=valid,
        positions=np.arange(g),
    )


def _best_plan(
    p: np.ndarray, when: np.ndarray, grid: _Grid, retries: int
) -> tuple[np.ndarray, np.ndarray]:
    """The dynamic programme of :meth:`RecoveryCurve.plan` on predicted success ``p``
    (retries x invoices x grid) at candidate times ``when`` (invoices x grid, unix s)."""
    _, n, g = p.shape
    times = np.full((n, retries), np.nan)
    probs = np.zeros((n, retries))
    first_allowed, valid, positions = grid.first_allowed, grid.valid, grid.positions
    value = np.zeros((retries + 1, n, g + 1))  # value[j][:, i]: best from retry j, prev at i
    choice = np.zeros((retries, n, g + 1), dtype=np.int64)
    for j in range(retries - 1, -1, -1):
        gain = p[j] + (1.0 - p[j]) * value[j + 1][:, :g]  # retry j at grid index i'
        # suffix max and its position: the best i' >= k for every k
        rev = gain[:, ::-1]
        best_val = np.maximum.accumulate(rev, axis=1)
        best_pos = np.maximum.accumulate(np.where(rev >= best_val, positions, 0), axis=1)
        best_val = best_val[:, ::-1]
        best_idx = (g - 1 - best_pos)[:, ::-1]
        value[j] = np.where(valid, best_val[:, first_allowed], 0.0)
        choice[j] = np.where(valid, best_idx[:, first_allowed], -1)
    prev = np.full(n, g)
    rows = np.arange(n)
    for j in range(retries):
        k = choice[j][rows, prev]
        ok = k >= 0
        ok &= np.where(ok, p[j][rows, np.maximum(k, 0)], 0.0) > 1e-6
        times[ok, j] = when[rows[ok], k[ok]]
        probs[ok, j] = p[j][rows[ok], k[ok]]
        prev = np.where(ok, k, g + 10**6)
        prev = np.minimum(prev, g)  # not used once stopped: later choices are masked below
        if not ok.all():
            stopped = ~ok
            # once a retry is not planned, none after it is
            times[stopped, j + 1 :] = np.nan
            probs[stopped, j + 1 :] = 0.0
    for j in range(1, retries):
        dead = np.isnan(times[:, j - 1])
        times[dead, j] = np.nan
        probs[dead, j] = 0.0
    return times, probs


def remaining_recovery(probs: np.ndarray) -> np.ndarray:
    """Invoice-level recovery probability from retry ``j`` on: ``1 - prod_{m >= j}(1 - p_m)``
    (same shape as ``probs``)."""
    miss = np.cumprod((1.0 - probs)[:, ::-1], axis=1)[:, ::-1]
    return 1.0 - miss


def load_history(con: duckdb.DuckDBPyConnection, *, where: str = "TRUE") -> pd.DataFrame:
    """Retries from the warehouse with ``amount_reporting`` (usd minor units at the FX rate of
    the first failure's day)."""
    frame = con.execute(
        f"""
        WITH h AS ({history_sql(where)}),
        rates AS (SELECT currency, date, rate_to_usd FROM fx_rates)
        SELECT h.*, CASE WHEN h.currency = 'usd' THEN h.amount_due
                         ELSE round(h.amount_due * (SELECT arg_max(r.rate_to_usd, r.date) FROM rates r
                              WHERE r.currency = h.currency AND r.date <= CAST(h.first_failed_at AS DATE)))
                    END AS amount_reporting
        FROM h
        """
    ).df()
    frame["amount_reporting"] = pd.to_numeric(frame["amount_reporting"]).astype(float)
    return frame
