"""Replay dunning strategies on the simulator's truth, and the policy's lift over control.

For the failed invoices of a simulated company (the warehouse gives what the business
sees: amounts, decline codes, attempt history; the simulator's truth gives each invoice's
latent health, failure history and regime), every strategy is simulated forward with the
simulator's own recovery model (:func:`workbench.simulator.behaviour.recovery_probability`:
the true probability that retry ``k`` at a given time succeeds). Draws are common random
numbers: invoice ``i``'s retry ``k`` succeeds when ``U[i, k] < p``, with ``U`` fixed by the
seed and the invoice id, so every strategy faces the same luck and differences come from
the strategies alone.

Strategies (all inside the same dunning window, ``window_days`` after the first failure;
an invoice not recovered in it counts as involuntary churn: its subscription is canceled):

- ``policy``: the dunning engine (:func:`workbench.dunning.decide`) under the policy, with
  retry times and recovery probabilities from the recovery curve
  (:class:`workbench.retry_curve.RecoveryCurve`, fitted on the warehouse's retries of
  *other* accounts: cross-fitted, never on the invoice being replayed nor on the truth);
- ``policy_with_control``: the same with the control group on the baseline schedule
  (:func:`workbench.dunning.decide_with_control`), as in live use;
- ``fixed_schedule``: Stripe's default, 8 retries evenly spaced within 2 weeks;
- ``no_retries``: never retry;
- ``retry_everything``: every invoice (hard declines too), the policy's retry cap, as fast
  as the policy's minimum spacing allows.

:func:`control_lift` estimates the policy's recovery lift over the control group with a
bootstrap confidence interval (what the notebook reports in live use);
:func:`lift_comparison` puts the replay's and the live lift side by side. The charts:
:func:`comparison_chart` (the strategies) and :func:`decisions_per_day_chart` (a day-by-day
shadow replay, :func:`workbench.dunning.decide_daily`).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import duckdb
import numpy as np
import pandas as pd

from workbench.dunning import decide, in_control_group
from workbench.policy import Policy
from workbench.retry_curve import DAY_S, RecoveryCurve, load_history, remaining_recovery
from workbench.simulator import behaviour as bh
from workbench.simulator.timeline import Timeline, parse_start

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = (
    "policy",
    "policy_with_control",
    "fixed_schedule",
    "no_retries",
    "retry_everything",
)
MAX_ATTEMPTS = 64  # common random numbers drawn per invoice (attempt numbers 2..65)
MIN_GROUP = 30  # below this many invoices in a group the lift's interval is not reliable
REF = pd.Timestamp("2000-01-01", tz="UTC")  # decisions are made on times relative to this


@dataclass(frozen=True)
class ReplayConfig:
    """How the replay runs (the same for every strategy)."""

    window_days: float = 30.0  # dunning window after the first failure
    fixed_retries: int = 8  # Stripe's default: 8 retries ...
    fixed_window_days: float = 14.0  # ... within 2 weeks
    folds: int = 3  # cross-fitting folds (by account) for the recovery curve
    seed: int = 0  # seeds the common random numbers
    approvals_granted: bool = True  # queued retries count as approved when decided


@dataclass
class ReplayResult:
    """What :func:`replay` produced.

    Attributes:
        summary: One row per strategy: ``invoices, amount_due, recovered_revenue,
            recovery_rate, retries, offers, offer_cost, recovered_invoices,
            involuntary_churn, churned_revenue``; money in
            reporting-currency minor units.
        outcomes: One row per (strategy, invoice): ``recovered, recovered_at_attempt,
            retries, recovered_amount, control_group``.
        vs_fixed: ``recovered_ratio`` (policy / fixed schedule), ``retries_ratio``, ``goal_met``.
        lift: :func:`control_lift` of ``policy_with_control`` (treated vs control).
        true_lift: The same quantity computed on all invoices (every invoice under the
            policy vs every invoice under the control schedule): what the CI should cover.
        curve_versions: The recovery curves used (one per fold).
    """

    summary: pd.DataFrame
    outcomes: pd.DataFrame
    vs_fixed: dict[str, Any]
    lift: dict[str, Any]
    true_lift: dict[str, Any]
    curve_versions: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- inputs


def load_replay_invoices(
    con: duckdb.DuckDBPyConnection, truth_dir: Path | str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The failed invoices of a simulated company and the warehouse's retry history.

    Returns:
        ``(invoices, history)``. ``invoices``: one row per invoice whose first charge failed
        and went to dunning, with the warehouse's ``invoice_id, account_id, amount_due,
        currency, amount_reporting, first_failed_at, decline_code, prior_failed`` and the
        truth's ``true_decline, amount_usd, health, true_prior_failed, regime_logit``.
        ``history``: :func:`workbench.retry_curve.load_history`.
    """
    truth_dir = Path(truth_dir)
    rec = pd.read_parquet(truth_dir / "recovery.parquet")
    first = rec[rec["attempt"] == 1]
    params = json.loads((truth_dir / "parameters.json").read_text())
    regime = json.loads((truth_dir / "regime.json").read_text())
    timeline = Timeline(parse_start(params["start"]), int(params["months"]))
    regime_month = regime.get("regime_change_month")
    t0 = (pd.to_datetime(first["attempt_at"], utc=True).astype("int64") // 10**3).to_numpy()
    if str(first["attempt_at"].dtype).endswith("ns, UTC]"):
        t0 = t0 // 10**3
    months = [timeline.month_of(int(t)) for t in t0]
    truth = pd.DataFrame(
        {
            "invoice_id": first["invoice_id"].to_numpy(),
            "true_decline": first["decline_code"].to_numpy(),
            "amount_usd": first["amount_usd"].to_numpy(float),
            "health": first["health"].to_numpy(float),
            "true_prior_failed": first["prior_failed_invoices"].to_numpy(int),
            "regime_logit": [bh.regime_failure_logit(m, regime_month) for m in months],
        }
    )
    history = load_history(con)
    inv = (
        history.sort_values("attempt")
        .groupby("invoice_id", as_index=False)
        .first()[
            [
                "invoice_id",
                "account_id",
                "amount_due",
                "currency",
                "amount_reporting",
                "first_failed_at",
                "decline_code",
                "prior_failed",
            ]
        ]
    )
    # invoices whose first failure has no retry yet in the warehouse (end of the horizon)
    missing = truth[~truth["invoice_id"].isin(inv["invoice_id"])]
    if len(missing):
        log.info("%d failed invoices have no retry in the warehouse; left out", len(missing))
    out = inv.merge(truth, on="invoice_id", how="inner")
    out["first_failed_at"] = pd.to_datetime(out["first_failed_at"], utc=True)
    return out.sort_values(["first_failed_at", "invoice_id"]).reset_index(drop=True), history


def common_random_numbers(invoice_ids: Sequence[str], seed: int) -> np.ndarray:
    """``U[i, j]`` in [0, 1) for retry ``j + 2`` of invoice ``i``: fixed by seed and id."""
    out = np.empty((len(invoice_ids), MAX_ATTEMPTS))
    for i, iid in enumerate(invoice_ids):
        key = int.from_bytes(hashlib.sha256(str(iid).encode()).digest()[:8], "big")
        out[i] = np.random.default_rng([seed, key]).random(MAX_ATTEMPTS)
    return out


def true_success(inv: pd.Series | Any, attempt: int, when_s: float) -> float:
    """The simulator's true probability that retry ``attempt`` at ``when_s`` succeeds."""
    first_s = inv.first_failed_at.timestamp()
    dt = pd.Timestamp(when_s, unit="s", tz="UTC")
    return bh.recovery_probability(
        decline_code=inv.true_decline,
        attempt=attempt,
        days_since_failure=(when_s - first_s) / DAY_S,
        day_of_month=dt.day,
        days_in_month=calendar.monthrange(dt.year, dt.month)[1],
        amount_usd=inv.amount_usd,
        health=inv.health,
        prior_failed_invoices=inv.true_prior_failed,
        regime_logit=inv.regime_logit,
    )


# --------------------------------------------------------------------------- strategies


def _run_schedule(
    invoices: pd.DataFrame, u: np.ndarray, schedules: list[list[float]]
) -> pd.DataFrame:
    """Outcomes of fixed retry times per invoice (stops at the first success)."""
    rows = []
    for i, inv in enumerate(invoices.itertuples(index=False)):
        recovered_at, used = 0, 0
        for j, when in enumerate(schedules[i]):
            used += 1
            if u[i, j] < true_success(inv, j + 2, when):
                recovered_at = j + 2
                break
        rows.append((inv.invoice_id, recovered_at, used))
    return pd.DataFrame(rows, columns=["invoice_id", "recovered_at_attempt", "retries"])


def _fixed_times(invoices: pd.DataFrame, *, retries: int, every_h: float, window_days: float):
    first = invoices["first_failed_at"].map(pd.Timestamp.timestamp).to_numpy()
    times = first[:, None] + np.arange(1, retries + 1)[None, :] * every_h * 3600.0
    return [
        [t for t in row if t <= f + window_days * DAY_S]
        for row, f in zip(times, first, strict=True)
    ]


def _engine_frame(
    invoices: pd.DataFrame, idx: np.ndarray, attempt: np.ndarray, last_s: np.ndarray,
    now_s: np.ndarray, score: np.ndarray, version: str,
) -> pd.DataFrame:  # fmt: skip
    """Engine inputs with every time shifted so each row's ``now`` is :data:`REF`."""
    shift = pd.to_timedelta(last_s - now_s, unit="s")
    sub = invoices.iloc[idx]
    return pd.DataFrame(
        {
            "invoice_id": sub["invoice_id"].to_numpy(),
            "account_id": sub["account_id"].to_numpy(),
            "amount_due": sub["amount_due"].astype("int64").to_numpy(),
            "currency": sub["currency"].to_numpy(),
            "amount_due_reporting": pd.array(
                np.round(sub["amount_reporting"].to_numpy(float)).astype("int64"), dtype="Int64"
            ),
            "attempt_count": attempt.astype(int),
            "last_attempt_at": (REF + shift).astype("datetime64[us, UTC]"),
            "decline_code": sub["decline_code"].to_numpy(),
            "recovery_probability": score,
            "uplift": np.nan,
            "model_versions": version,
        }
    )


def _run_policy(
    invoices: pd.DataFrame,
    u: np.ndarray,
    *,
    policy: Policy,
    times: np.ndarray,
    probs: np.ndarray,
    versions: np.ndarray,
    control: np.ndarray,
    config: ReplayConfig,
) -> pd.DataFrame:
    """The engine, round by round: retry ``j`` of every invoice still open is decided at its
    planned time (control invoices: the baseline schedule, no score threshold)."""
    from workbench.dunning import baseline_policy

    n, r = times.shape
    gate = remaining_recovery(probs)
    first_s = invoices["first_failed_at"].map(pd.Timestamp.timestamp).to_numpy()
    base = baseline_policy(policy)
    spacing = 24.0 * policy.control.baseline_window_days / policy.control.baseline_retries
    base_r = base.retries.max_auto_retries
    base_times = (
        first_s[:, None]
        + np.arange(1, base_r + 1)[None, :] * max(spacing, base.retries.min_hours_between) * 3600.0
    )
    open_ = np.ones(n, dtype=bool)
    recovered_at = np.zeros(n, dtype=int)
    used = np.zeros(n, dtype=int)
    last = first_s.copy()
    end = first_s + config.window_days * DAY_S
    for j in range(max(r, base_r)):
        when = np.where(
            control, base_times[:, j] if j < base_r else np.nan, times[:, j] if j < r else np.nan
        )
        live = open_ & np.isfinite(when) & (when <= end)
        for grp, pol in ((~control, policy), (control, base)):
            idx = np.flatnonzero(live & grp)
            if not len(idx):
                continue
            score = np.where(control[idx], 1.0, gate[idx, min(j, r - 1)] if r else 0.0)
            frame = _engine_frame(
                invoices, idx, np.full(len(idx), j + 1), last[idx], when[idx], score,
                "" if control[idx].all() else versions[idx[0]],
            )  # fmt: skip
            out = decide(frame, as_of=REF, policy=pol)
            act = out["action"].isin(["retry_now", "retry_at"]).to_numpy()
            if not config.approvals_granted:
                act &= out["executes_automatically"].to_numpy() | pol.shadow
            for k, i in enumerate(idx):
                if not act[k]:
                    open_[i] = False  # the engine stops retrying: wait, escalate or write off
                    continue
                used[i] += 1
                last[i] = when[i]
                if u[i, j] < true_success(invoices.iloc[i], j + 2, when[i]):
                    recovered_at[i] = j + 2
                    open_[i] = False
        open_[~np.isfinite(when) | (when > end)] = False
    return pd.DataFrame(
        {
            "invoice_id": invoices["invoice_id"].to_numpy(),
            "recovered_at_attempt": recovered_at,
            "retries": used,
        }
    )


# --------------------------------------------------------------------------- replay


def _folds(account_ids: Any, folds: int) -> np.ndarray:
    """Cross-fitting fold of each account (a hash: stable across runs)."""
    return np.array(
        [int(hashlib.sha256(f"fold:{a}".encode()).hexdigest()[:8], 16) % folds for a in account_ids]
    )


def _curves(
    invoices: pd.DataFrame, history: pd.DataFrame, *, policy: Policy, config: ReplayConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Cross-fitted plans: each invoice's curve is fitted on other accounts' retries."""
    r = policy.retries
    inv_fold = _folds(invoices["account_id"], config.folds)
    hist_fold = _folds(history["account_id"], config.folds)
    times = np.full((len(invoices), r.max_auto_retries), np.nan)
    probs = np.zeros((len(invoices), r.max_auto_retries))
    versions = np.empty(len(invoices), dtype=object)
    names = []
    for f in range(config.folds):
        rows = inv_fold == f
        if not rows.any():
            continue
        try:
            curve = RecoveryCurve.fit(history[hist_fold != f])
        except ValueError as exc:  # too little history: no score, the policy's own rules
            log.warning("fold %d: %s; its invoices are decided without a score", f, exc)
            spacing = np.arange(1, r.max_auto_retries + 1) * r.min_hours_between * 3600.0
            first = invoices.loc[rows, "first_failed_at"].map(pd.Timestamp.timestamp).to_numpy()
            times[rows] = first[:, None] + spacing[None, :]
            probs[rows] = np.nan
            versions[rows] = ""
            continue
        name = f"{curve.version}:fold{f}"
        names.append(name)
        if r.max_auto_retries:
            t, p = curve.plan(
                invoices[rows],
                retries=r.max_auto_retries,
                min_hours_between=r.min_hours_between,
                window_days=min(r.window_days, config.window_days),
            )
            times[rows], probs[rows] = t, p
        versions[rows] = name
    return times, probs, versions, names


def _summarise(invoices: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    amount = invoices.set_index("invoice_id")["amount_reporting"]
    rows = []
    for name, g in outcomes.groupby("strategy", sort=False):
        due = amount.loc[g["invoice_id"]].to_numpy()
        rec = g["recovered"].to_numpy()
        rows.append(
            {
                "strategy": name,
                "invoices": len(g),
                "amount_due": float(due.sum()),
                "recovered_revenue": float(due[rec].sum()),
                "recovery_rate": float(due[rec].sum() / due.sum()) if due.sum() else np.nan,
                "recovered_invoices": int(rec.sum()),
                "retries": int(g["retries"].sum()),
                "offers": 0,
                "offer_cost": 0.0,
                "involuntary_churn": int((~rec).sum()),
                "churned_revenue": float(due[~rec].sum()),
            }
        )
    return pd.DataFrame(rows)


def replay(
    invoices: pd.DataFrame,
    history: pd.DataFrame,
    *,
    policy: Policy,
    config: ReplayConfig | None = None,
    strategies: Sequence[str] = STRATEGIES,
) -> ReplayResult:
    """Simulate every strategy forward on the same failed invoices and the same draws.

    Args:
        invoices, history: From :func:`load_replay_invoices`.
        policy: The dunning policy (guardrails, threshold, timing, control group).
        config: Window, baseline schedule, folds, seed.
        strategies: Which of :data:`STRATEGIES` to run.

    Returns:
        A :class:`ReplayResult`.
    """
    config = config or ReplayConfig()
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategies {bad}; choose from {list(STRATEGIES)}")
    if invoices.empty:
        raise ValueError("no failed invoices to replay; simulate a larger company")
    invoices = invoices.reset_index(drop=True)
    u = common_random_numbers(invoices["invoice_id"].tolist(), config.seed)
    ids = invoices["invoice_id"].to_numpy()
    ctrl = in_control_group(ids, policy)
    r = policy.retries
    parts: dict[str, pd.DataFrame] = {}
    names: list[str] = []
    times, probs, versions, names = _curves(invoices, history, policy=policy, config=config)
    runs: dict[str, Any] = {
        "fixed_schedule": lambda: _run_schedule(invoices, u, _fixed_times(
            invoices, retries=config.fixed_retries,
            every_h=24.0 * config.fixed_window_days / config.fixed_retries,
            window_days=config.window_days)),
        "no_retries": lambda: _run_schedule(invoices, u, [[] for _ in range(len(invoices))]),
        "retry_everything": lambda: _run_schedule(invoices, u, _fixed_times(
            invoices, retries=r.max_auto_retries, every_h=max(r.min_hours_between, 1e-6),
            window_days=config.window_days)),
        "policy": lambda: _run_policy(invoices, u, policy=policy, times=times, probs=probs,
                                      versions=versions, control=np.zeros(len(ids), bool), config=config),
        "policy_with_control": lambda: _run_policy(invoices, u, policy=policy, times=times, probs=probs,
                                                   versions=versions, control=ctrl, config=config),
    }  # fmt: skip
    all_control = None
    for name in strategies:
        parts[name] = runs[name]()
    if "policy" in parts:
        all_control = _run_policy(
            invoices, u, policy=policy, times=times, probs=probs, versions=versions,
            control=np.ones(len(ids), bool), config=config,
        )  # fmt: skip
    frames = []
    for name, out in parts.items():
        out = out.assign(strategy=name, recovered=out["recovered_at_attempt"] > 0)
        out["control_group"] = ctrl if name == "policy_with_control" else False
        out["end_action"] = np.where(out["recovered"], "recovered", "canceled")
        frames.append(out)
    outcomes = pd.concat(frames, ignore_index=True)
    amount = invoices.set_index("invoice_id")["amount_reporting"]
    outcomes["amount_due"] = amount.loc[outcomes["invoice_id"]].to_numpy()
    outcomes["recovered_amount"] = np.where(outcomes["recovered"], outcomes["amount_due"], 0.0)
    summary = _summarise(invoices, outcomes)
    vs_fixed: dict[str, Any] = {}
    s = summary.set_index("strategy")
    if {"policy", "fixed_schedule"} <= set(s.index):
        rec_ratio = s.at["policy", "recovered_revenue"] / max(
            s.at["fixed_schedule", "recovered_revenue"], 1e-9
        )
        ret_ratio = s.at["policy", "retries"] / max(s.at["fixed_schedule", "retries"], 1)
        vs_fixed = {
            "recovered_ratio": float(rec_ratio),
            "retries_ratio": float(ret_ratio),
            "goal_met": bool(rec_ratio >= 1.15 and ret_ratio < 1.0),
        }
    lift: dict[str, Any] = {}
    true_lift: dict[str, Any] = {}
    if "policy_with_control" in parts:
        wc = outcomes[outcomes["strategy"] == "policy_with_control"]
        lift = control_lift(
            wc.assign(group=np.where(wc["control_group"], "control", "policy")), seed=config.seed
        )
    if all_control is not None and "policy" in parts:
        pol = outcomes[outcomes["strategy"] == "policy"]
        due = pol["amount_due"].to_numpy()
        ctl_rec = all_control["recovered_at_attempt"].to_numpy() > 0
        rate_p = pol["recovered_amount"].sum() / due.sum()
        rate_c = due[ctl_rec].sum() / due.sum()
        true_lift = {
            "rate_policy": float(rate_p),
            "rate_control": float(rate_c),
            "lift": float(rate_p - rate_c),
        }
    return ReplayResult(
        summary=summary, outcomes=outcomes, vs_fixed=vs_fixed, lift=lift,
        true_lift=true_lift, curve_versions=names,
    )  # fmt: skip


# --------------------------------------------------------------------------- control lift


def control_lift(
    outcomes: pd.DataFrame,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The policy's recovery lift over the control group, with a bootstrap CI.

    The recovery rate of a group is recovered revenue / amount due (a ratio estimator);
    the lift is ``rate(policy) - rate(control)``. The CI resamples invoices within each group
    (percentile bootstrap); a normal-approximation CI from the bootstrap standard error is
    given too.

    Args:
        outcomes: One row per invoice with ``group`` (``policy`` | ``control``),
            ``amount_due`` and ``recovered_amount``.
        n_boot: Bootstrap resamples.
        level: Confidence level.
        seed: Seed of the resampling.

    Returns:
        ``n_policy, n_control, rate_policy, rate_control, lift, ci_low, ci_high,
        normal_ci_low, normal_ci_high, relative_lift, level, note``; NaNs when a group is
        empty; ``note`` warns when a group has fewer than :data:`MIN_GROUP` invoices.
    """
    g = outcomes["group"].to_numpy()
    out: dict[str, Any] = {
        "n_policy": int((g == "policy").sum()),
        "n_control": int((g == "control").sum()),
        "level": level,
    }
    if out["n_policy"] == 0 or out["n_control"] == 0:
        return {**out, "note": "a group is empty", "rate_policy": np.nan, "rate_control": np.nan, "lift": np.nan,
                "ci_low": np.nan, "ci_high": np.nan, "normal_ci_low": np.nan,
                "normal_ci_high": np.nan, "relative_lift": np.nan}  # fmt: skip
    rng = np.random.default_rng(seed)
    rates, boots = {}, {}
    for name in ("policy", "control"):
        sel = g == name
        due = outcomes.loc[sel, "amount_due"].to_numpy(float)
        rec = outcomes.loc[sel, "recovered_amount"].to_numpy(float)
        rates[name] = rec.sum() / due.sum() if due.sum() else np.nan
        idx = rng.integers(0, len(due), size=(n_boot, len(due)))
        boots[name] = rec[idx].sum(axis=1) / np.maximum(due[idx].sum(axis=1), 1e-12)
    diff = boots["policy"] - boots["control"]
    lift = rates["policy"] - rates["control"]
    alpha = 1.0 - level
    z = float(abs(np.sqrt(2.0) * _erfinv(level)))
    se = float(diff.std(ddof=1))
    small = min(out["n_policy"], out["n_control"]) < MIN_GROUP
    return {
        **out,
        "note": f"fewer than {MIN_GROUP} invoices in a group: the interval is not reliable"
        if small
        else "",
        "rate_policy": float(rates["policy"]),
        "rate_control": float(rates["control"]),
        "lift": float(lift),
        "ci_low": float(np.quantile(diff, alpha / 2)),
        "ci_high": float(np.quantile(diff, 1 - alpha / 2)),
        "normal_ci_low": float(lift - z * se),
        "normal_ci_high": float(lift + z * se),
        "relative_lift": float(rates["policy"] / rates["control"] - 1)
        if rates["control"]
        else np.nan,
    }


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(y))


def lift_comparison(replayed: ReplayResult | None, live_outcomes: pd.DataFrame) -> pd.DataFrame:
    """The policy's lift over the control group in the replay and live, one row each.

    Args:
        replayed: A :func:`replay` result, or None (no replay): its row is left out, as it
            is when the replay has no lift.
        live_outcomes: :func:`observed_outcomes` of the warehouse.

    Returns:
        ``source`` (``replay`` | ``live (warehouse)``) and :func:`control_lift`'s columns;
        with a replay row also ``true_lift``, the lift on all invoices that the replay's
        interval should cover (NaN on the live row, where it is unknown).
    """
    rows = []
    if replayed and replayed.lift:
        rows.append(
            {"source": "replay", **replayed.lift, "true_lift": replayed.true_lift.get("lift")}
        )
    rows.append({"source": "live (warehouse)", **control_lift(live_outcomes)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- chart


def comparison_chart(summary: pd.DataFrame, *, currency: str = "usd") -> alt.HConcatChart:
    """Recovered revenue and retries spent per strategy, side by side (Altair)."""
    data = summary.assign(recovered=summary["recovered_revenue"] / 100.0)
    order = list(data["strategy"])
    base = alt.Chart(data).encode(
        y=alt.Y("strategy:N", sort=order, title=None),
        color=alt.Color("strategy:N", legend=None),
    )
    revenue = (
        base.mark_bar()
        .encode(
            x=alt.X("recovered:Q", title=f"Recovered revenue ({currency.upper()})"),
            tooltip=[
                "strategy",
                alt.Tooltip("recovered:Q", format=",.0f"),
                alt.Tooltip("recovery_rate:Q", format=".1%"),
            ],
        )
        .properties(width=280, height=150, title="Recovered revenue")
    )
    retries = (
        base.mark_bar()
        .encode(
            x=alt.X("retries:Q", title="Retries spent"),
            tooltip=["strategy", "retries", "involuntary_churn"],
        )
        .properties(width=220, height=150, title="Retries spent")
    )
    return alt.hconcat(revenue, retries)


def decisions_per_day_chart(
    decisions: pd.DataFrame, *, width: int = 620, height: int = 220
) -> alt.Chart:
    """Stacked bars of a day-by-day replay: how many invoices got each action per day.

    Args:
        decisions: :func:`workbench.dunning.decide_daily`'s result (``as_of``, ``action``).
        width: Chart width in pixels.
        height: Chart height in pixels.
    """
    counts = (
        decisions.groupby(["as_of", "action"], as_index=False)
        .size()
        .rename(columns={"size": "invoices"})
    )
    return (
        alt.Chart(counts, title="Decisions per day by action")
        .mark_bar()
        .encode(
            x=alt.X("as_of:T", title="Day"),
            y=alt.Y("invoices:Q", title="Invoices"),
            color="action:N",
        )
        .properties(width=width, height=height)
    )


def observed_outcomes(
    con: duckdb.DuckDBPyConnection, *, policy: Policy, since: Any = None, until: Any = None
) -> pd.DataFrame:
    """Live outcomes for :func:`control_lift`: every invoice whose first charge failed in
    ``[since, until)``, its group under the policy's control split, and whether it was paid.

    Returns:
        ``invoice_id, group, amount_due, recovered_amount, first_failed_at`` (amounts in the
        invoice's minor units; use one reporting currency per comparison).
    """
    frame = con.execute(
        """
        WITH first AS (
            SELECT invoice_id, min(created) AS first_failed_at FROM payment_attempts
            WHERE status = 'failed' AND invoice_id IS NOT NULL GROUP BY invoice_id
        )
        SELECT f.invoice_id, f.first_failed_at, i.amount_due,
               (i.paid_at IS NOT NULL OR EXISTS (SELECT 1 FROM payment_attempts p
                 WHERE p.invoice_id = f.invoice_id AND p.status = 'succeeded')) AS paid
        FROM first f JOIN invoices i USING (invoice_id)
        WHERE i.amount_due > 0
          AND ($since IS NULL OR f.first_failed_at >= CAST($since AS TIMESTAMPTZ))
          AND ($until IS NULL OR f.first_failed_at < CAST($until AS TIMESTAMPTZ))
        ORDER BY f.first_failed_at, f.invoice_id
        """,
        {
            "since": None if since is None else pd.Timestamp(since).isoformat(),
            "until": None if until is None else pd.Timestamp(until).isoformat(),
        },
    ).df()
    ctrl = in_control_group(frame["invoice_id"].to_numpy(), policy)
    amount = frame["amount_due"].astype(float)
    return pd.DataFrame(
        {
            "invoice_id": frame["invoice_id"],
            "group": np.where(ctrl, "control", "policy"),
            "amount_due": amount,
            "recovered_amount": np.where(frame["paid"].astype(bool), amount, 0.0),
            "first_failed_at": pd.to_datetime(frame["first_failed_at"], utc=True),
        }
    )
