"""The oracle: the simulator's true probabilities for the rows a model is tested on.

The simulated company writes its ground truth to ``<out>/truth/`` (see
:mod:`workbench.simulator.truth`). Because it knows the true churn hazards, payment
recovery probabilities and offer effects, the quality of a model can be put beside
the best any model could do on the same rows. Nothing here is used for training.

**Churn within h days of t** (``T = t + h``). An account stops paying by ``T`` when

1. a cancellation was already decided before ``t`` (its paying subscription is set to
   cancel at period end) and that period ends by ``T`` (probability 1, else 0);
2. an open failed invoice at ``t`` fails all its remaining retries, the last one by
   ``T`` (the simulator then churns the account): the product of ``1 - p_success`` of its
   retries after ``t``, from ``recovery.parquet``;
3. it decides to cancel in a month ``m`` starting in ``[t, T)`` with the true monthly
   hazard ``hazard_m`` (``churn_hazard.parquet``), and that decision ends the
   subscription by ``T``. The decision falls uniformly in month ``m``; it ends the
   subscription at once with probability 0.25 (0.10 on yearly billing), else at the end
   of the billing period; the billing anchor (``current_period_end`` at ``t``) comes from
   the warehouse. With survival ``S_m = prod_{j<m} (1 - hazard_j)``, the probability is
   ``sum_m S_m * hazard_m * w_m`` where ``w_m`` is the chance that a decision in ``m`` ends
   the subscription by ``T``.

``P = 1 - (1 - P1)(1 - P2)(1 - P3)``. Approximations, documented rather than hidden:
the hazards of the months after ``t`` are the *realized* path (they use the latent
health of those months, which no model can know at ``t``; months after the account has
left carry its last hazard forward), so this oracle is optimistic; the ``*_at_t``
variant holds the hazard of month ``t`` constant instead. Invoices whose *first* failure
comes after ``t`` (future involuntary churn) and reactivations are not modelled.

**Recovery within h days of a failed attempt at t**: ``1 - prod(1 - p_success)`` over the
scheduled retries after ``t`` and no later than ``t + h``. At the first failure this
equals the simulator's ``p_recovered_<h>d``, which is used there directly. It uses the
*drawn* retry times (each retry is jittered by up to 18 hours), so whether a retry near
the window's end falls inside it is known to it and, beyond the next retry (which the
invoice announces), to no model; the ``*_at_t`` variant averages over that jitter for the
later retries not yet made (see :func:`_recovery_at_t`).

**Comparisons** report the AUC gap with a 95% bootstrap interval (resampling accounts,
paired) and the ECE that the true probabilities themselves show on the same rows by
chance (``ece_floor``): with a few hundred rows an ECE goal of 0.02 can sit below it.
They also report the model's ECE against the true probabilities
(``model_ece_vs_truth``, :func:`workbench.models.evaluation.calibration_error_vs_truth`),
which has no outcome noise but is only meaningful where the oracle is the probability the
outcomes were drawn from: recovery, yes (each retry's outcome is drawn from the very
probability the oracle multiplies); churn, no (the oracle leaves out involuntary churn).

**Offer uplift** (retention offer at eligibility): the true reduction of the probability
that the subscription ends within the uplift horizon (positive = the offer helps), from the
hazard at eligibility ``h`` (held constant), the account's true relative effect ``tau``
(``offers.parquet``, applied for ``OFFER_MONTHS``) and the billing anchor: a decision ends
the subscription at once or at its period end, as for churn. The earlier form, the
reduction of the probability of *deciding* within ``k`` months,
``(1 - (1 - h)^k) - (1 - (1 - h (1 - tau))^k)``, ignores billing (on yearly plans most
decisions end nothing within 90 days) and is reported beside it (``decision_*``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from workbench.features.offline import ANNOUNCE_WINDOW_S, registered_rows, to_us
from workbench.models.cancellation import ended_by, ending_weights, month_starts

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
#: Bootstrap resamples (by account) for the 95% interval of each AUC gap.
N_BOOT = 1000
#: The simulator's share of voluntary cancellations that end the subscription at once.
IMMEDIATE_SHARE = {"month": 0.25, "year": 0.10}


def read_truth(truth_dir: Path | str, name: str) -> pd.DataFrame:
    """One truth table (``churn_hazard``, ``recovery``, ``offers``, ``accounts``, ...)."""
    path = Path(truth_dir) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"no truth table {path}; was the data simulated with workbench.simulator?"
        )
    return pd.read_parquet(path)


# --------------------------------------------------------------------------- churn


def _billing_state(con: duckdb.DuckDBPyConnection, spine: pd.DataFrame) -> pd.DataFrame:
    """Per spine row, the main paying subscription item at ``as_of``: its billing interval,
    current period end and whether it is set to cancel at period end."""
    with registered_rows(con, spine) as name:
        df = con.execute(
            f"""
            WITH h AS (
              SELECT h.account_id, epoch_us(h.valid_from) AS vf, epoch_us(h.valid_to) AS vt,
                     h.interval, epoch_us(h.current_period_end) AS cpe,
                     coalesce(h.cancel_at_period_end, false) AS cape,
                     CAST(h.unit_amount AS DOUBLE) * coalesce(h.quantity, 1)
                       / CASE h.interval WHEN 'year' THEN 12.0 ELSE 1.0 END AS mrr
              FROM subscription_history h LEFT JOIN prices p ON p.price_id = h.price_id
              WHERE h.status IN ('active', 'past_due')
                AND coalesce(h.usage_type, p.usage_type, 'licensed') = 'licensed'
                AND h.unit_amount > 0)
            SELECT s._row, arg_max(h.interval, h.mrr) AS interval, arg_max(h.cpe, h.mrr) AS cpe,
                   bool_or(h.cape) AS cape
            FROM {name} s JOIN h ON h.account_id = s.account_id AND h.vf <= s.t_us
                               AND (h.vt IS NULL OR h.vt > s.t_us)
            GROUP BY s._row
            """
        ).df()
    out = pd.DataFrame(index=np.arange(len(spine)))
    out["interval"] = None
    out["cpe_us"] = np.nan
    out["pending"] = False
    rows = df["_row"].to_numpy(np.int64)
    out.loc[rows, "interval"] = df["interval"].to_numpy(object)
    out.loc[rows, "cpe_us"] = df["cpe"].to_numpy(np.float64)
    out.loc[rows, "pending"] = df["cape"].fillna(False).to_numpy(bool)
    return out


def _open_invoice_failure(spine: pd.DataFrame, rec: pd.DataFrame) -> pd.DataFrame:
    """Per (spine row, failed invoice open at ``t``): probability that all remaining retries
    fail (``q``) and the time of the last retry (``last_us``)."""
    rec = rec.assign(at_us=to_us(rec["attempt_at"]))
    first = rec[rec["attempt"] == 1][["invoice_id", "account_id", "at_us"]].rename(
        columns={"at_us": "first_us"}
    )
    retries = rec[rec["attempt"] > 1][["invoice_id", "at_us", "p_success", "succeeded"]]
    pairs = spine[["_row", "account_id", "t_us"]].merge(first, on="account_id")
    pairs = pairs[pairs["first_us"] < pairs["t_us"]]
    if pairs.empty:
        return pd.DataFrame({"_row": [], "q": [], "last_us": []})
    x = pairs.merge(retries, on="invoice_id")
    # paid before t: no longer open (the realized outcome up to t is known at t)
    paid_before = x[
        (x["at_us"] <= x["t_us"]) & (x["succeeded"].astype("boolean").fillna(False).to_numpy(bool))
    ]
    closed = set(zip(paid_before["_row"], paid_before["invoice_id"], strict=True))
    rest = x[x["at_us"] > x["t_us"]]
    if closed:
        key = pd.Series(list(zip(rest["_row"], rest["invoice_id"], strict=True)), index=rest.index)
        rest = rest[~key.isin(closed)]
    g = rest.assign(miss=1.0 - rest["p_success"]).groupby(["_row", "invoice_id"])
    return pd.DataFrame({"q": g["miss"].prod(), "last_us": g["at_us"].max()}).reset_index()


def churn_oracle(
    con: duckdb.DuckDBPyConnection,
    spine: pd.DataFrame,
    *,
    truth_dir: Path | str,
    horizons: Sequence[int] = (30, 90, 180),
) -> pd.DataFrame:
    """True probability that each spine account stops paying within each horizon.

    Args:
        con: The warehouse built from the simulated data (for the billing anchor).
        spine: ``account_id`` and ``as_of``; ``as_of`` must be month starts (00:00 UTC on
            the 1st), as in ``churn_spine``, because hazards are monthly.
        truth_dir: The simulation's ``truth`` folder.

    Returns:
        The spine's index with ``oracle_churn_<h>d`` (realized hazard path) and
        ``oracle_churn_<h>d_at_t`` (hazard of month ``t`` held constant) per horizon; NaN
        for accounts without any hazard in the truth and nothing pending.
    """
    n = len(spine)
    t_us = to_us(spine["as_of"])
    as_of = pd.DatetimeIndex(pd.to_datetime(t_us, unit="us", utc=True))
    if (
        n
        and not (
            (as_of.day == 1) & (as_of.hour == 0) & (as_of.minute == 0) & (as_of.second == 0)
        ).all()
    ):
        raise ValueError("churn_oracle needs as_of at month starts (monthly hazards)")
    sp = pd.DataFrame(
        {
            "_row": np.arange(n),
            "account_id": spine["account_id"].astype(str).to_numpy(),
            "t_us": t_us,
        }
    )
    hz = read_truth(truth_dir, "churn_hazard")[["account_id", "month", "hazard"]]
    hz = hz.assign(m_us=to_us(hz["month"]))[["account_id", "m_us", "hazard"]]
    state = _billing_state(con, spine.reset_index(drop=True))
    step = np.where(state["interval"].to_numpy(object) == "year", 12, 1)
    cpe = state["cpe_us"].to_numpy(np.float64)
    pending = state["pending"].to_numpy(bool)

    starts = month_starts(t_us, max(horizons))
    K = starts.shape[1] - 1
    path = np.full((n, K), np.nan)
    lookup = hz.set_index(["account_id", "m_us"])["hazard"]
    lookup = lookup[~lookup.index.duplicated()]
    for k in range(K):
        idx = pd.MultiIndex.from_arrays([sp["account_id"], starts[:, k]])
        path[:, k] = lookup.reindex(idx).to_numpy(np.float64)
    # hazard at t: the row of month t, else the last one before t, else the first after
    hz_sorted = hz.sort_values("m_us")
    before = pd.merge_asof(
        sp.sort_values("t_us"),
        hz_sorted.rename(columns={"m_us": "t_us"}),
        on="t_us",
        by="account_id",
        direction="backward",
    ).set_index("_row")["hazard"]
    after = pd.merge_asof(
        sp.sort_values("t_us"),
        hz_sorted.rename(columns={"m_us": "t_us"}),
        on="t_us",
        by="account_id",
        direction="forward",
    ).set_index("_row")["hazard"]
    h_t = before.reindex(sp["_row"]).fillna(after.reindex(sp["_row"])).to_numpy(np.float64)
    known = np.isfinite(h_t)
    # carry the last known hazard forward (months after the account left or decided)
    path[:, 0] = np.where(np.isnan(path[:, 0]), h_t, path[:, 0])
    path = pd.DataFrame(path).ffill(axis=1).to_numpy()
    path = np.nan_to_num(path, nan=0.0)
    h_t0 = np.nan_to_num(h_t, nan=0.0)

    inv = _open_invoice_failure(sp, read_truth(truth_dir, "recovery"))
    out = pd.DataFrame(index=spine.index)
    for h in horizons:
        T = t_us + h * DAY_US
        p1 = (pending & np.isfinite(cpe) & (np.nan_to_num(cpe, nan=np.inf) <= T)).astype(np.float64)
        if len(inv):
            ok = inv["last_us"].to_numpy() <= T[inv["_row"].to_numpy(np.int64)]
            keep = inv[ok].assign(log_keep=np.log1p(-inv.loc[ok, "q"].clip(upper=1 - 1e-12)))
            s = keep.groupby("_row")["log_keep"].sum()
            p2 = np.zeros(n)
            p2[s.index.to_numpy(np.int64)] = 1.0 - np.exp(s.to_numpy())
        else:
            p2 = np.zeros(n)
        w = ending_weights(
            starts, T, cpe=cpe, step=step, pending=pending, immediate=IMMEDIATE_SHARE
        )
        p3 = ended_by(path, w)
        p3_t = ended_by(np.repeat(h_t0[:, None], K, axis=1), w)
        res = 1 - (1 - p1) * (1 - p2) * (1 - p3)
        res_t = 1 - (1 - p1) * (1 - p2) * (1 - p3_t)
        undefined = ~known & ~pending & (p2 == 0)
        out[f"oracle_churn_{h}d"] = np.where(undefined, np.nan, res)
        out[f"oracle_churn_{h}d_at_t"] = np.where(undefined, np.nan, res_t)
    return out


# --------------------------------------------------------------------------- recovery


def recovery_oracle(
    spine: pd.DataFrame,
    *,
    truth_dir: Path | str,
    horizons: Sequence[int] = (7, 14, 30),
) -> pd.DataFrame:
    """True probability that each failed invoice is paid within each horizon of ``as_of``.

    Args:
        spine: ``invoice_id`` and ``as_of`` (the time of a failed attempt, or of the invoice's
            report of it, as :func:`~workbench.features.offline.recovery_spine` gives). Rows whose
            invoice the truth does not know (e.g. a first invoice that failed while the
            subscription was incomplete) get NaN.

    Returns:
        The spine's index with ``oracle_recovered_<h>d`` and ``oracle_first_failure``
        (bool: ``as_of`` is the invoice's first failure in the truth).
    """
    rec = read_truth(truth_dir, "recovery")
    rec = rec.assign(at_us=to_us(rec["attempt_at"]))
    first = rec[rec["attempt"] == 1].set_index("invoice_id")
    retries = rec[rec["attempt"] > 1]
    groups = {
        i: (g["at_us"].to_numpy(np.int64), g["p_success"].to_numpy(np.float64))
        for i, g in retries.groupby("invoice_id", sort=False)
    }
    ids = spine["invoice_id"].astype(str).to_numpy(object)
    t_us = to_us(spine["as_of"])
    first_at = first["at_us"].reindex(ids).to_numpy(np.float64)
    # the failure itself or the invoice's report of it (at most ANNOUNCE_WINDOW_S later)
    after = t_us - np.nan_to_num(first_at, nan=-np.inf)
    is_first = np.isfinite(first_at) & (after > -1_000_000) & (after <= ANNOUNCE_WINDOW_S * 1e6)
    out = pd.DataFrame(index=spine.index)
    out["oracle_first_failure"] = is_first
    for h in horizons:
        vals = np.full(len(ids), np.nan)
        direct = first[f"p_recovered_{h}d"].reindex(ids).to_numpy(np.float64)
        for i, (inv, t) in enumerate(zip(ids, t_us, strict=True)):
            if is_first[i]:
                vals[i] = direct[i]
                continue
            g = groups.get(inv)
            if g is None:
                continue
            at, p = g
            sel = (at > t) & (at <= t + h * DAY_US)
            vals[i] = 1.0 - float(np.prod(1.0 - p[sel]))
        out[f"oracle_recovered_{h}d"] = vals
    at_t = _recovery_at_t(rec, ids, t_us, horizons=horizons)
    for h in horizons:
        out[f"oracle_recovered_{h}d_at_t"] = at_t[h]
    return out


#: Draws of the unannounced retry times per invoice in :func:`_recovery_at_t`.
JITTER_DRAWS = 256


def _retry_logit_terms(decline: str, attempt: int, when_s: np.ndarray, first_s: int) -> np.ndarray:
    """Log-odds of a retry at ``when_s`` (unix seconds) from its timing alone: the terms of
    :func:`~workbench.simulator.behaviour.recovery_probability` that depend on the retry
    time (the rest, amount, history, health and regime, is the same for every retry)."""
    from workbench.simulator import behaviour as bh

    days = (when_s - first_s) / 86_400.0
    dt = when_s.astype("datetime64[s]")
    month = dt.astype("datetime64[M]")
    dom = (dt.astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64) + 1
    dim = ((month + 1).astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64)
    p = np.array(
        [
            bh.recovery_probability(
                decline_code=decline,
                attempt=attempt,
                days_since_failure=float(d),
                day_of_month=int(a),
                days_in_month=int(b),
                amount_usd=0.0,
                health=0.0,
                prior_failed_invoices=0,
            )
            for d, a, b in zip(days.ravel(), dom.ravel(), dim.ravel(), strict=True)
        ]
    ).reshape(when_s.shape)
    return np.log(p / (1.0 - p))


def _recovery_at_t(
    rec: pd.DataFrame,
    ids: np.ndarray,
    t_us: np.ndarray,
    *,
    horizons: Sequence[int],
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """The recovery oracle given only what is known at ``t``: retries not made yet are
    averaged over the simulator's timing jitter instead of taken at their drawn times.

    The simulator fixes every retry time at the first failure (``RETRY_DAYS`` after it,
    each shifted uniformly by up to 18 hours either way) and the odds of each retry depend
    on that time (days since the failure, paydays). Only the next retry's time is
    announced at a failure (the invoice's ``next_payment_attempt``); whether the day-7
    retry falls inside a 7-day window from the first failure is a coin flip no one can
    know then, so :func:`recovery_oracle` (which uses the drawn times) is optimistic. Here
    each retry after ``t`` but the next one is redrawn (conditioned on coming after
    ``t``); the rest of its log-odds (decline code, amount, history, health) is the true
    one, recovered from the truth's ``p_success``.
    """
    from workbench.simulator import behaviour as bh

    jitter = 18 * 3600
    rng = np.random.default_rng(seed)
    out = {h: np.full(len(ids), np.nan) for h in horizons}
    if "decline_code" not in rec.columns:
        return out
    first = rec[rec["attempt"] == 1].set_index("invoice_id")
    retries = rec[rec["attempt"] > 1].sort_values(["invoice_id", "attempt"])
    wanted = set(ids.tolist())
    by_inv = {i: g for i, g in retries.groupby("invoice_id", sort=False) if i in wanted}
    rows_of: dict[str, list[int]] = {}
    for i, inv in enumerate(ids):
        rows_of.setdefault(inv, []).append(i)
    for inv, rows in rows_of.items():
        g = by_inv.get(inv)
        if g is None or inv not in first.index:
            continue
        first_s = int(first.loc[inv, "at_us"]) // 1_000_000
        decline = str(first.loc[inv, "decline_code"])
        k = g["attempt"].to_numpy(np.int64)
        if decline not in bh.RETRY_BASE or k.max() - 2 >= len(bh.RETRY_DAYS):
            continue
        actual_s = g["at_us"].to_numpy(np.int64) // 1_000_000
        p_true = np.clip(g["p_success"].to_numpy(np.float64), 1e-12, 1 - 1e-12)
        # the timing-free part of the log-odds, from the first retry's true probability
        timing = _retry_logit_terms(decline, int(k[0]), actual_s[:1], first_s)[0]
        static = float(np.log(p_true[0] / (1 - p_true[0])) - timing)
        centre = first_s + np.array([bh.RETRY_DAYS[j - 2] * 86_400 for j in k])
        for i in rows:
            t_s = int(t_us[i]) // 1_000_000
            future = actual_s > t_s  # not made yet at t
            # its time is unknown, except the next retry's: the invoice announced it
            unknown = future.copy()
            unknown[np.argmax(future)] = False
            lo = np.maximum(centre - jitter, t_s + 1)
            hi = np.maximum(centre + jitter, lo)
            u = rng.random((JITTER_DRAWS, len(k)))
            when = np.where(unknown, lo + u * (hi - lo), actual_s)
            logit = np.column_stack(
                [
                    _retry_logit_terms(decline, int(kk), when[:, j], first_s)
                    for j, kk in enumerate(k)
                ]
            )
            p = 1.0 / (1.0 + np.exp(-(logit + static)))
            for h in horizons:
                inside = future & (when <= t_s + h * 86_400)
                out[h][i] = float(np.mean(1.0 - np.prod(np.where(inside, 1.0 - p, 1.0), axis=1)))
    return out


# --------------------------------------------------------------------------- uplift


def experiment_from_truth(truth_dir: Path | str) -> pd.DataFrame:
    """The simulator's randomized retention-offer experiment as an experiment log.

    Returns:
        ``account_id``, ``as_of`` (the month start at which the account became eligible;
        the offer, if assigned, came within three days after it) and ``treatment`` (1 =
        assigned an offer, 0 = control), one row per eligible account.
    """
    offers = read_truth(truth_dir, "offers")
    e = offers[offers["eligible"] & offers["eligible_month"].notna()]
    return pd.DataFrame(
        {
            "account_id": e["account_id"].astype(str).to_numpy(),
            "as_of": pd.to_datetime(e["eligible_month"], utc=True)
            .astype("datetime64[us, UTC]")
            .to_numpy(),
            "treatment": e["assigned"].astype(np.int8).to_numpy(),
        }
    ).sort_values(["as_of", "account_id"], ignore_index=True)


def uplift_oracle(
    experiment: pd.DataFrame,
    *,
    truth_dir: Path | str,
    months: int = 6,
    con: duckdb.DuckDBPyConnection | None = None,
    horizon_days: int | None = None,
) -> pd.Series:
    """True reduction thanks to the offer, per experiment row (NaN for accounts the truth
    does not know), with the hazard at eligibility ``h`` held constant.

    Without ``con``: of the probability of *deciding* to cancel within ``months`` months,
    ``(1 - (1 - h)^k) - (1 - (1 - h (1 - tau))^k)``. With ``con`` (the warehouse, for each
    account's billing anchor) and ``horizon_days``: of the probability that the
    subscription *ends* within ``horizon_days`` (the outcome the uplift models learn,
    ``churn_<h>d``): a decision ends it at once or at the end of the billing period (as in
    :func:`churn_oracle`), so on yearly billing most decisions made now end nothing within
    90 days; the offer lowers the hazard for ``OFFER_MONTHS`` months.
    """
    offers = read_truth(truth_dir, "offers").set_index("account_id")
    ids = experiment["account_id"].astype(str)
    h = offers["hazard_at_eligibility"].reindex(ids).to_numpy(np.float64)
    tau = offers["effect_relative"].reindex(ids).to_numpy(np.float64)
    if con is None or horizon_days is None:
        p0 = 1 - (1 - h) ** months
        p1 = 1 - (1 - h * (1 - tau)) ** months
        return pd.Series(p0 - p1, index=experiment.index, name="oracle_uplift")
    from workbench.simulator.behaviour import OFFER_MONTHS

    t_us = to_us(experiment["as_of"])
    state = _billing_state(con, experiment[["account_id", "as_of"]].reset_index(drop=True))
    step = np.where(state["interval"].to_numpy(object) == "year", 12, 1)
    starts = month_starts(t_us, horizon_days)
    K = starts.shape[1] - 1
    w = ending_weights(
        starts,
        t_us + horizon_days * DAY_US,
        cpe=state["cpe_us"].to_numpy(np.float64),
        step=step,
        pending=state["pending"].to_numpy(bool),
        immediate=IMMEDIATE_SHARE,
    )
    base = np.repeat(np.nan_to_num(h)[:, None], K, axis=1)
    offered = base.copy()
    offered[:, :OFFER_MONTHS] *= (1 - np.nan_to_num(tau))[:, None]
    out = ended_by(base, w) - ended_by(offered, w)
    return pd.Series(
        np.where(np.isfinite(h) & np.isfinite(tau), out, np.nan),
        index=experiment.index,
        name="oracle_uplift",
    )


# --------------------------------------------------------------------------- comparisons


def evaluate_against_oracle(
    result,  # noqa: ANN001 - TrainingResult | UpliftResult
    *,
    con: duckdb.DuckDBPyConnection,
    truth_dir: Path | str,
    settings=None,  # noqa: ANN001 - Settings
    log_to_mlflow: bool = True,
) -> pd.DataFrame:
    """Put each model of a training result beside the oracle, on exactly its test rows.

    Adds an ``oracle`` column to each run's test frame (``oracle_uplift`` to an uplift
    result's ``scored``), stores the comparison in ``run.evaluation["oracle"]`` and the
    card (``card["oracle"]``), and, when the run was tracked, logs ``oracle_*`` metrics and
    the updated card to its MLflow run.

    Churn: all test rows the oracle covers. Recovery: all test rows (every failed attempt;
    the headline), and the invoices' first failures alone (where the simulator states
    ``p_recovered_<h>d``) as a second row.
    Uplift: Qini coefficient on realized outcomes of the model's cross-fitted scores and of
    the true effects, and the expected Qini (true effects as outcomes, free of noise).

    Returns:
        One row per model (and subset): ``model``, ``subset``, ``rows``, ``model_auc``,
        ``oracle_auc``, ``auc_gap``, ``model_brier``, ``oracle_brier``, ``model_ece``,
        ``oracle_ece`` (uplift: ``model_qini``, ``oracle_qini``, ``qini_ratio``,
        ``model_expected_qini``, ``oracle_expected_qini``, ``expected_qini_ratio``).
    """
    from workbench.models import evaluation

    rows = []
    if getattr(result, "task", "") == "uplift":
        from workbench.models import uplift as up

        sc = result.scored
        h = result.model.horizon_days
        sc["oracle_uplift"] = uplift_oracle(
            sc, truth_dir=truth_dir, con=con, horizon_days=h
        ).to_numpy()
        # the earlier oracle: the effect on deciding to cancel, billing ignored
        sc["oracle_uplift_decision"] = uplift_oracle(
            sc, truth_dir=truth_dir, months=max(1, round(h / 30))
        ).to_numpy()
        ok = sc["oracle_uplift"].notna()
        s = sc[ok]
        y, t = s[result.target], s["treatment"]
        cmp = {
            "rows": float(len(s)),
            "model_qini": up.qini_coefficient(y, t, s["uplift"]),
            "oracle_qini": up.qini_coefficient(y, t, s["oracle_uplift"]),
            "model_auuc": up.auuc(y, t, s["uplift"]),
            "oracle_auuc": up.auuc(y, t, s["oracle_uplift"]),
            "model_expected_qini": up.expected_qini(s["oracle_uplift"], s["uplift"]),
            "oracle_expected_qini": up.expected_qini(s["oracle_uplift"], s["oracle_uplift"]),
            "uplift_correlation": float(np.corrcoef(s["uplift"], s["oracle_uplift"])[0, 1])
            if len(s) > 2
            else float("nan"),
            "true_ate": float(s["oracle_uplift"].mean()),
            "decision_oracle_qini": up.qini_coefficient(y, t, s["oracle_uplift_decision"]),
        }
        cmp["qini_ratio"] = _ratio(cmp["model_qini"], cmp["oracle_qini"])
        cmp["expected_qini_ratio"] = _ratio(cmp["model_expected_qini"], cmp["oracle_expected_qini"])
        d = s["oracle_uplift_decision"]
        cmp["decision_expected_qini_ratio"] = _ratio(
            up.expected_qini(d, s["uplift"]), up.expected_qini(d, d)
        )
        cmp["qini_ratio_low"], cmp["qini_ratio_high"] = _qini_ratio_interval(
            y.to_numpy(), t.to_numpy(), s["uplift"].to_numpy(), s["oracle_uplift"].to_numpy()
        )
        result.metrics.update({f"oracle_{k}": v for k, v in cmp.items()})
        result.card["oracle"] = cmp
        rows.append({"model": result.name, "subset": "experiment (cross-fitted)", **cmp})
        _log(result, {f"oracle_{k}": v for k, v in cmp.items()}, settings, log_to_mlflow)
        return pd.DataFrame(rows)

    for run in result.runs.values():
        h = run.horizon_days
        test = run.test
        if run.task == "churn":
            o = churn_oracle(con, test[["account_id", "as_of"]], truth_dir=truth_dir, horizons=(h,))
            test["oracle"] = o[f"oracle_churn_{h}d"].to_numpy()
            test["oracle_at_t"] = o[f"oracle_churn_{h}d_at_t"].to_numpy()
            subsets = {"test": np.ones(len(test), bool)}
        else:
            o = recovery_oracle(test[["invoice_id", "as_of"]], truth_dir=truth_dir, horizons=(h,))
            test["oracle"] = o[f"oracle_recovered_{h}d"].to_numpy()
            test["oracle_at_t"] = o[f"oracle_recovered_{h}d_at_t"].to_numpy()
            first = o["oracle_first_failure"].to_numpy(bool)
            subsets = {
                "test, all failed attempts": np.ones(len(test), bool),
                "test, first failures": first,
            }
        headline = None
        for label, mask in subsets.items():
            part = test[mask]
            groups = part["account_id"] if "account_id" in part.columns else None
            cmp = evaluation.oracle_comparison(
                part[run.target], part["p_model"], part["oracle"], groups=groups, n_boot=N_BOOT
            )
            cmp["coverage"] = float(part["oracle"].notna().mean()) if len(part) else float("nan")
            at_t = evaluation.oracle_comparison(
                part[run.target], part["p_model"], part["oracle_at_t"], groups=groups, n_boot=N_BOOT
            )
            cmp["oracle_at_t_auc"] = at_t["oracle_auc"]
            cmp["oracle_at_t_brier"] = at_t["oracle_brier"]
            cmp["auc_gap_at_t"] = at_t["auc_gap"]
            cmp["auc_gap_at_t_low"] = at_t.get("auc_gap_low", float("nan"))
            cmp["auc_gap_at_t_high"] = at_t.get("auc_gap_high", float("nan"))
            rows.append({"model": run.name, "subset": label, **cmp})
            headline = headline or cmp
        run.evaluation["oracle"] = headline
        run.card["oracle"] = {"subset": next(iter(subsets)), **headline}
        _log(run, {f"oracle_{k}": v for k, v in headline.items()}, settings, log_to_mlflow)
    return pd.DataFrame(rows)


def uplift_gap(
    result,  # noqa: ANN001 - UpliftResult of learner d
    *,
    con: duckdb.DuckDBPyConnection,
    truth_dir: Path | str,
) -> pd.DataFrame:
    """Where learner ``d`` falls short of the oracle: the expected-Qini ratio of rankings
    that put the truth in place of one of its two parts at a time.

    Each ranking is the churn reduction within the horizon of a decision hazard ``h`` and
    a relative effect ``tau`` through the model's billing weights (the shares measured on
    the warehouse): the true ``h`` (the simulator's hazard at eligibility) or the model's
    (its out-of-fold hazard times its fitted scale), and the true ``tau``, the model's
    fitted ``tau`` (the model fitted on all rows) or the mean true ``tau``. Diagnostics
    only: they read the truth, so nothing may be chosen by them.

    Returns:
        One row per ranking (``hazard``, ``effect``, ``expected_qini_ratio``), the last
        the model's own cross-fitted scores; ``attrs`` holds ``rows``,
        ``hazard_spearman`` (model vs true hazard), ``effect_correlation`` (fitted vs
        true ``tau``), ``effect_mean_fitted`` and ``effect_mean_true``.
    """
    from scipy.stats import spearmanr

    from workbench.models import uplift as up
    from workbench.models.cancellation import billing_weights, ended_by_constant

    model = result.model
    if model.learner != "d" or up.HAZARD not in result.scored.columns:
        raise ValueError("uplift_gap reads learner d's hazard and effect: train with learner='d'")
    scored = result.scored
    truth = uplift_oracle(scored, truth_dir=truth_dir, con=con, horizon_days=model.horizon_days)
    offers = read_truth(truth_dir, "offers").set_index("account_id")
    ids = scored["account_id"].astype(str)
    h_true = offers["hazard_at_eligibility"].reindex(ids).to_numpy(np.float64)
    tau_true = offers["effect_relative"].reindex(ids).to_numpy(np.float64)
    ok = truth.notna().to_numpy() & np.isfinite(h_true) & np.isfinite(tau_true)
    hazard = scored[up.HAZARD].to_numpy(np.float64)[ok]
    rows = result.dataset.loc[scored.index[ok]].assign(**{up.HAZARD: hazard})
    h_true, tau_true, target = h_true[ok], tau_true[ok], truth.to_numpy()[ok]
    W = billing_weights(rows, horizon_days=model.horizon_days, immediate=model.linear["immediate"])
    parts = up.decision_parts(model, rows)
    h_model, tau_fit = parts["hazard"].to_numpy(), parts["tau"].to_numpy()
    tau_mean = np.full(len(rows), tau_true.mean())
    best = up.expected_qini(target, target)

    def ratio(score: np.ndarray) -> float:
        return _ratio(up.expected_qini(target, score), best)

    def reduction(h: np.ndarray, tau: np.ndarray) -> np.ndarray:
        return ended_by_constant(h, W)[0] - ended_by_constant(h * (1 - tau), W)[0]

    table = [
        ("true", "true", ratio(reduction(h_true, tau_true))),
        ("true", "fitted", ratio(reduction(h_true, tau_fit))),
        ("true", "mean true", ratio(reduction(h_true, tau_mean))),
        ("model", "true", ratio(reduction(h_model, tau_true))),
        ("model", "mean true", ratio(reduction(h_model, tau_mean))),
        ("model", "fitted (cross-fitted scores)", ratio(scored["uplift"].to_numpy()[ok])),
    ]
    out = pd.DataFrame(table, columns=["hazard", "effect", "expected_qini_ratio"])
    out.attrs = {
        "rows": int(ok.sum()),
        "hazard_spearman": float(spearmanr(hazard, h_true).statistic),
        "effect_correlation": float(np.corrcoef(tau_fit, tau_true)[0, 1]),
        "effect_mean_fitted": float(tau_fit.mean()),
        "effect_mean_true": float(tau_true.mean()),
    }
    return out


def _ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is 0 (no effect to rank by)."""
    return a / b if b else float("nan")


def _qini_ratio_interval(
    y: np.ndarray,
    t: np.ndarray,
    score: np.ndarray,
    truth: np.ndarray,
    *,
    n_boot: int = 300,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap 95% interval of the realized Qini ratio (model / true effects).

    Both Qini coefficients are computed on the same resampled experiment rows; with a few
    hundred rows the realized ratio moves a lot with the sample (the outcomes are mostly
    noise around small effects), which this makes visible.
    """
    from workbench.models import uplift as up

    if len(y) < 20:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        q_oracle = up.qini_coefficient(y[i], t[i], truth[i])
        if q_oracle > 0:
            ratios.append(up.qini_coefficient(y[i], t[i], score[i]) / q_oracle)
    if len(ratios) < n_boot // 2:
        return float("nan"), float("nan")
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def _log(run, metrics: dict, settings, enabled: bool) -> None:  # noqa: ANN001
    if not enabled or getattr(run, "run_id", None) is None:
        return
    from workbench.models import registry

    registry.log_metrics(run.run_id, metrics, settings=settings, card=run.card)
