"""The dunning decision engine: scores in, guarded actions out.

For every open failed invoice the engine picks one action: ``wait``, ``retry_now``,
``retry_at`` (a chosen time), ``send_retention_offer``, ``escalate_collections`` or
``propose_write_off``, with the reason, the expected value (amount x recovery
probability), the model and policy versions, the automation level and whether a human
must approve.

Guardrails come first and a model score can only choose *within* them:

- no retry after a hard decline code, or once ``retries.max_auto_retries`` is used;
- no retry sooner than ``retries.min_hours_between`` after the last attempt;
- no retry unless the recovery probability is a real probability at or above
  ``retries.min_recovery_probability`` (missing, NaN, infinite or out-of-range scores
  count as no score);
- retention offers stay within ``retention.offer_budget_minor`` per run;
- any action above ``approval.amount_above_minor`` (or with an unknown amount) needs a
  human, whatever the automation level; paused automation forces ``insight``;
- in shadow mode nothing is queued or run: the decisions are only recorded.

:func:`decide` is pure (a frame in, a frame out). :func:`apply_decisions` writes the
result to the approvals store; :func:`run_dunning` does both with the configured policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from workbench import audit
from workbench.approvals import (
    ENGINE,
    ApprovalStore,
    Identity,
    StoreLike,
    open_store,
    paused_action_types,
    record_states,
    recover_interrupted,
    request_action,
    state_hash,
)
from workbench.config import Settings
from workbench.policy import AUTOMATIC_LEVELS, Policy, load_policy

log = logging.getLogger(__name__)

STATE_SCOPE = "dunning"

INPUT_COLUMNS = (
    "invoice_id", "account_id", "amount_due", "currency", "amount_due_reporting", "attempt_count",
    "last_attempt_at", "decline_code", "recovery_probability", "uplift", "model_versions",
)  # fmt: skip

DECISION_COLUMNS = (
    "invoice_id", "account_id", "action", "action_type", "scheduled_at", "reason", "expected_value",
    "recovery_probability", "uplift", "amount_due", "currency", "amount_due_reporting", "risk",
    "offer_cost_minor", "model_versions", "policy_version", "automation_level", "requires_approval",
    "executes_automatically", "shadow", "state_hash",
)  # fmt: skip

#: decision action -> queue action type
ACTION_TYPE_OF = {
    "wait": None,
    "retry_now": "retry_payment",
    "retry_at": "retry_payment",
    "send_retention_offer": "retention_offer",
    "escalate_collections": "escalate_collections",
    "propose_write_off": "write_off",
}


def _as_utc(ts: datetime | pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    if ts.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware UTC, got naive {ts}")
    return ts.tz_convert("UTC")


def _check_integers(col: str, values: np.ndarray, *, allow_missing: bool) -> None:
    """Refuse money/count values that are not non-negative integers (NaN = missing)."""
    known = values[~np.isnan(values)]
    bad = (known < 0) | (known != np.floor(known)) | ~np.isfinite(known)
    if bad.any() or (not allow_missing and len(known) != len(values)):
        raise ValueError(f"column {col!r} must hold non-negative integers (minor units for money)")


def _check_currencies(currencies: list[str]) -> None:
    if any(c != c.lower() for c in currencies):
        raise ValueError("currency codes must be lowercase ISO codes like 'usd'")


def _missing_value(col: str) -> ValueError:
    return ValueError(f"column {col!r} has missing values; every open failed invoice needs one")


def _validate(invoices: pd.DataFrame) -> None:
    missing = [c for c in INPUT_COLUMNS if c not in invoices.columns]
    if missing:
        raise ValueError(
            f"invoices frame is missing columns {missing}; needs {list(INPUT_COLUMNS)}"
        )
    for col in ("invoice_id", "amount_due", "currency", "attempt_count"):
        if pd.isna(invoices[col].to_numpy()).any():
            raise _missing_value(col)
    ids = invoices["invoice_id"].astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"invoice_id {dup!r} appears more than once; one row per open invoice")
    for col in ("amount_due", "attempt_count", "amount_due_reporting"):
        values = pd.to_numeric(invoices[col], errors="coerce").astype(float).to_numpy()
        _check_integers(col, values, allow_missing=col == "amount_due_reporting")
    _check_currencies([str(c) for c in invoices["currency"].to_numpy()])
    last = invoices["last_attempt_at"]
    if (
        len(last)
        and pd.api.types.is_datetime64_any_dtype(last)
        and getattr(last.dt, "tz", None) is None
    ):
        raise ValueError("last_attempt_at must be timezone-aware UTC")


def _numeric(values: Any) -> np.ndarray:
    """Floats from a column or an object array (unparseable and missing -> NaN)."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def _score(raw: np.ndarray, *, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, cleaned values with NaN where invalid) of raw float scores."""
    valid = np.isfinite(raw) & (raw >= low) & (raw <= high)
    return valid, np.where(valid, raw, np.nan)


def invoice_state(row: Mapping[str, Any], *, action_type: str | None) -> dict[str, Any]:
    """The state an engine recommendation is approved against: the invoice's billing facts
    plus the recommended action type (scores are left out: they move on every re-score)."""
    last = row["last_attempt_at"]
    return {
        "invoice_id": str(row["invoice_id"]),
        "amount_due": int(row["amount_due"]),
        "currency": str(row["currency"]),
        "attempt_count": int(row["attempt_count"]),
        "last_attempt_at": None if pd.isna(last) else audit.utc_text(last),
        "decline_code": None if pd.isna(row["decline_code"]) else str(row["decline_code"]),
        "recommendation": action_type or "wait",
    }


def _fmt_p(x: float) -> str:
    return f"{x:.2f}"


NAT = np.iinfo(np.int64).min  # int64 view of NaT
_IMMEDIATE = frozenset(
    {"retry_now", "send_retention_offer", "escalate_collections", "propose_write_off"}
)

_STATE_FIELDS = (
    "invoice_id", "amount_due", "currency", "attempt_count", "last_attempt_at", "decline_code",
)  # fmt: skip


@dataclass(frozen=True)
class _Rows:
    """The engine's inputs as plain arrays, one entry per invoice: what the rules read.

    Built from a frame (:func:`decide`) or from one invoice (:func:`decide_invoice`); the
    rules (:func:`_decide_rows`) are the same code for both.
    """

    invoice_id: list[str]
    records: list[dict[str, Any]]  # the fields of :func:`invoice_state`
    p_raw: np.ndarray  # float, NaN = no score
    u_raw: np.ndarray
    rep: np.ndarray  # float, NaN = unknown amount in the reporting currency
    attempts: np.ndarray  # int
    last_ns: np.ndarray  # int64 ns since the epoch, NAT = no attempt
    pref_us: np.ndarray | None  # int64 us (floored), NAT = no preferred time
    decline: np.ndarray  # object: decline code text, "" when missing


def _ns(values: Any) -> np.ndarray:
    """int64 nanoseconds (NAT where missing) of UTC timestamps."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


def _rows_from_frame(df: pd.DataFrame) -> _Rows:
    pref_us = None
    if "preferred_retry_at" in df.columns:
        pref = pd.to_datetime(df["preferred_retry_at"], utc=True).astype("datetime64[us, UTC]")
        pref_us = pd.DatetimeIndex(pref).asi8
    return _Rows(
        invoice_id=[str(i) for i in df["invoice_id"].to_numpy()],
        records=df[list(_STATE_FIELDS)].to_dict("records"),
        p_raw=_numeric(df["recovery_probability"]).to_numpy(),
        u_raw=_numeric(df["uplift"]).to_numpy(),
        rep=_numeric(df["amount_due_reporting"]).to_numpy(),
        attempts=pd.to_numeric(df["attempt_count"]).astype(int).to_numpy(),
        last_ns=_ns(df["last_attempt_at"]),
        pref_us=pref_us,
        decline=df["decline_code"].astype("string").fillna("").to_numpy(dtype=object),
    )


def _decide_rows(
    rows: _Rows, *, as_of: pd.Timestamp, policy: Policy, paused: frozenset[str]
) -> dict[str, Any]:
    """The guardrails and the choice of action: per invoice arrays/lists (one code path for
    a frame of invoices and for a single invoice)."""
    n = len(rows.invoice_id)
    r, c, w, wo, ret = (
        policy.retries,
        policy.collections,
        policy.retention,
        policy.write_off,
        policy.approval,
    )
    p_raw, u_raw, rep = rows.p_raw, rows.u_raw, rows.rep
    p_valid, p = _score(p_raw, low=0.0, high=1.0)
    u_valid, u = _score(u_raw, low=-1.0, high=1.0)
    rep_known = np.isfinite(rep)
    retries_used = np.maximum(rows.attempts - 1, 0)
    as_of_ns = int(as_of.value)
    last_known = rows.last_ns != NAT
    # NaN without attempts
    idle_days = np.where(last_known, (as_of_ns - rows.last_ns) / 1e9, np.nan) / 86400.0
    decline = rows.decline
    no_retry_codes = frozenset(r.no_retry_decline_codes)
    hard = np.fromiter((d in no_retry_codes for d in decline), dtype=bool, count=n)
    retries_left = retries_used < r.max_auto_retries

    # microsecond timestamps, rounded up so the spacing is never undercut
    spacing_ns = int(pd.Timedelta(hours=r.min_hours_between).value)
    after = -((-(rows.last_ns + spacing_ns)) // 1000) * 1000
    earliest_ns = np.where(last_known & (after > as_of_ns), after, as_of_ns)
    earliest = earliest_ns // 1000  # int64 microseconds
    timed = np.zeros(n, dtype=bool)
    if rows.pref_us is not None:  # retry timing chosen from the recovery curve
        timed = (rows.pref_us != NAT) & (rows.pref_us > earliest)
        earliest = np.where(timed, rows.pref_us, earliest)
    due = earliest * 1000 <= as_of_ns

    retry_route = ~hard & retries_left
    retry_ok = retry_route & p_valid & (p >= r.min_recovery_probability)
    no_retry = ~retry_ok
    idle_known = np.isfinite(idle_days)
    write_off = (
        no_retry
        & idle_known
        & (idle_days >= wo.after_days_idle)
        & (~p_valid | (p <= wo.max_recovery_probability))
    )
    escalate = (
        no_retry
        & ~write_off
        & idle_known
        & (idle_days >= c.after_days_idle)
        & rep_known
        & (rep >= c.min_amount_minor)
    )
    offer_candidate = no_retry & ~write_off & ~escalate & u_valid & (u >= w.min_uplift) & rep_known

    # Retention offers: best expected gain first, within the budget (skip what does not fit).
    offer = np.zeros(n, dtype=bool)
    offer_cost = np.zeros(n, dtype=np.int64)
    budget_left = w.offer_budget_minor
    cand = np.flatnonzero(offer_candidate)
    order = sorted(cand, key=lambda i: (-(u[i] * rep[i]), rows.invoice_id[i]))
    over_budget = np.zeros(n, dtype=bool)
    for i in order:
        cost = math.ceil(w.offer_cost_fraction * rep[i])
        if cost <= budget_left:
            offer[i] = True
            offer_cost[i] = cost
            budget_left -= cost
        else:
            over_budget[i] = True

    action = np.full(n, "wait", dtype=object)
    action[retry_ok & due] = "retry_now"
    action[retry_ok & ~due] = "retry_at"
    action[write_off] = "propose_write_off"
    action[escalate] = "escalate_collections"
    action[offer] = "send_retention_offer"

    immediate = np.fromiter((a in _IMMEDIATE for a in action), dtype=bool, count=n)
    sched = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    sched[immediate] = as_of.tz_localize(None).to_datetime64()
    later = action == "retry_at"
    sched[later] = earliest.astype("datetime64[us]")[later]

    action_type = np.array([ACTION_TYPE_OF[a] for a in action], dtype=object)
    levels, needs_human, executes, risks, reasons, hashes = [], [], [], [], [], []
    for i in range(n):
        a_type = action_type[i]
        amount_rep = int(rep[i]) if rep_known[i] else None
        if a_type is None:
            level, human = "none", False
        else:
            level = policy.level(a_type, paused=paused)
            human = policy.needs_human(amount_reporting_minor=amount_rep, level=level)
        levels.append(level)
        needs_human.append(human)
        executes.append(
            bool(
                a_type is not None and level in AUTOMATIC_LEVELS and not human and not policy.shadow
            )
        )
        risks.append(policy.risk(amount_rep))
        hashes.append(state_hash(invoice_state(rows.records[i], action_type=a_type)))

        why: list[str] = []
        if not np.isnan(p_raw[i]) and not p_valid[i]:
            why.append(f"recovery score {p_raw[i]!r} is not a probability: treated as no score")
        elif np.isnan(p_raw[i]):
            why.append("no recovery score")
        else:
            why.append(f"recovery probability {_fmt_p(p[i])}")
        if hard[i]:
            why.append(f"decline code {decline[i]} forbids retries")
        elif not retries_left[i]:
            why.append(
                f"retry cap reached ({retries_used[i]} of {r.max_auto_retries} automatic retries used)"
            )
        elif p_valid[i] and not retry_ok[i]:
            why.append(f"below the retry threshold {_fmt_p(r.min_recovery_probability)}")
        elif not p_valid[i]:
            why.append(f"automatic retries need a score >= {_fmt_p(r.min_recovery_probability)}")
        a = action[i]
        if a == "retry_now":
            why.append(f"retry now ({retries_used[i]} of {r.max_auto_retries} retries used)")
        elif a == "retry_at":
            when = audit.utc_text(pd.Timestamp(int(earliest[i]), unit="us", tz="UTC"))
            why.append(
                f"retry at {when}: best predicted time on the recovery curve"
                if timed[i]
                else f"retry at {when}: {r.min_hours_between:g} h after the last attempt"
            )
        elif a == "propose_write_off":
            why.append(
                f"idle {idle_days[i]:.0f} days >= {wo.after_days_idle:g}: propose write-off ({wo.reason_code})"
            )
        elif a == "escalate_collections":
            why.append(
                f"idle {idle_days[i]:.0f} days >= {c.after_days_idle:g} and amount >= {c.min_amount_minor}: escalate"
            )
        elif a == "send_retention_offer":
            why.append(
                f"uplift {_fmt_p(u[i])} >= {_fmt_p(w.min_uplift)}; offer cost {offer_cost[i]} within budget"
            )
        elif over_budget[i]:
            why.append(
                f"uplift {_fmt_p(u[i])} qualifies for an offer but the offer budget is spent"
            )
        if a_type is not None and level == "insight":
            why.append(
                "automation paused: insight only"
                if (a_type in paused or "*" in paused)
                else "insight only"
            )
        elif human and level in AUTOMATIC_LEVELS:
            why.append(
                "amount unknown: needs approval" if amount_rep is None
                else f"amount {amount_rep} > {ret.amount_above_minor}: needs approval"
            )  # fmt: skip
        if policy.shadow and a_type is not None:
            why.append("shadow mode: recorded only")
        reasons.append("; ".join(why))

    return {
        "action": action,
        "action_type": action_type,
        "scheduled_at": sched,
        "reason": np.array(reasons, dtype=object),
        "expected_value": np.where(rep_known & p_valid, rep * np.nan_to_num(p), np.nan),
        "recovery_probability": p,
        "uplift": u,
        "rep": rep,
        "rep_known": rep_known,
        "risk": np.array(risks, dtype=object),
        "offer_cost_minor": offer_cost,
        "automation_level": np.array(levels, dtype=object),
        "requires_approval": np.array(needs_human, dtype=bool),
        "executes_automatically": np.array(executes, dtype=bool),
        "state_hash": np.array(hashes, dtype=object),
    }


def decide(
    invoices: pd.DataFrame,
    *,
    as_of: datetime | pd.Timestamp,
    policy: Policy,
    paused: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """Decide one action per open failed invoice under the policy's guardrails.

    Args:
        invoices: One row per open failed invoice with ``invoice_id, account_id,
            amount_due`` (minor units), ``currency, amount_due_reporting`` (minor units of
            the reporting currency; missing = unknown, which always needs a human),
            ``attempt_count`` (attempts so far, including the first), ``last_attempt_at``
            (UTC), ``decline_code, recovery_probability`` (float, NaN without a model),
            ``uplift`` (float or NaN) and ``model_versions`` (text); optionally
            ``preferred_retry_at`` (UTC or NaT): the best predicted retry time from a
            recovery curve, used when later than the earliest allowed time.
        as_of: The decision time (UTC).
        policy: The guardrails and automation levels.
        paused: Action types whose automation is paused (``*`` = all): forced to ``insight``.

    Returns:
        One row per invoice, in input order, with :data:`DECISION_COLUMNS`.
        ``scheduled_at`` is when to act (``as_of`` for immediate actions, the chosen time
        for ``retry_at``, NaT for ``wait``); ``expected_value`` is
        ``amount_due_reporting x recovery_probability`` (NaN without a valid score);
        ``executes_automatically`` is True only for actions the policy lets run with no
        human (never in shadow mode, never above the approval amount).
        :func:`decide_invoice` decides a single invoice the same way, without pandas.
    """
    _validate(invoices)
    as_of = _as_utc(as_of)
    df = invoices.reset_index(drop=True)
    d = _decide_rows(_rows_from_frame(df), as_of=as_of, policy=policy, paused=frozenset(paused))
    rep, rep_known = d["rep"], d["rep_known"]
    out = pd.DataFrame({
        "invoice_id": df["invoice_id"].astype(str),
        "account_id": df["account_id"],
        "action": d["action"],
        "action_type": d["action_type"],
        "scheduled_at": pd.Series(d["scheduled_at"], index=df.index).dt.tz_localize("UTC"),
        "reason": d["reason"],
        "expected_value": d["expected_value"],
        "recovery_probability": d["recovery_probability"],
        "uplift": d["uplift"],
        "amount_due": pd.to_numeric(df["amount_due"]).astype("int64"),
        "currency": df["currency"].astype(str),
        "amount_due_reporting": pd.array([int(x) if k else pd.NA for x, k in zip(rep, rep_known, strict=True)], dtype="Int64"),
        "risk": d["risk"],
        "offer_cost_minor": d["offer_cost_minor"],
        "model_versions": df["model_versions"].fillna("").astype(str),
        "policy_version": policy.version,
        "automation_level": d["automation_level"],
        "requires_approval": d["requires_approval"],
        "executes_automatically": d["executes_automatically"],
        "shadow": policy.shadow,
        "state_hash": d["state_hash"],
    })  # fmt: skip
    return out[list(DECISION_COLUMNS)]


def decide_daily(
    history: pd.DataFrame,
    *,
    policy: Policy,
    paused: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """Replay the policy day by day: :func:`decide` on each day's open failed invoices.

    What the engine would have decided each day of a period (a shadow replay: nothing is
    queued or run), e.g. to see how the mix of actions moves over time.

    Args:
        history: Open failed invoices with an ``as_of`` column, one block per day
            (:func:`workbench.failed_invoices.open_failed_invoices_daily`); each day's
            block is decided at its ``as_of``.
        policy: The guardrails and automation levels.
        paused: As in :func:`decide`.

    Returns:
        :data:`DECISION_COLUMNS` plus ``as_of``: one block of decisions per day that had
        invoices, in day order; empty, with those columns, when ``history`` is.
    """
    columns = [*DECISION_COLUMNS, "as_of"]
    if "as_of" not in history.columns:
        raise ValueError("history needs an as_of column: the day each block is decided at")
    parts = [
        decide(day_invoices, as_of=day, policy=policy, paused=paused).assign(as_of=day)
        for day, day_invoices in history.groupby("as_of", sort=True)
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def _one(value: Any) -> np.ndarray:
    return np.array([value], dtype=object)


def _float1(value: Any) -> np.ndarray:
    """:func:`_numeric` of one value (plain numbers without the pandas call)."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return np.array([float(value)])
    return np.asarray(_numeric(_one(value)), dtype=float)


def _utc_ns(value: Any) -> int:
    """Nanoseconds since the epoch of one timestamp, naive = UTC (as ``to_datetime(utc=True)``)."""
    ts = pd.Timestamp(value)
    return int((ts.tz_localize("UTC") if ts.tzinfo is None else ts).value)


def _rows_from_invoice(invoice: Mapping[str, Any]) -> _Rows:
    """:class:`_Rows` of one invoice, validated like a frame row by :func:`_validate`."""
    missing = [c for c in INPUT_COLUMNS if c not in invoice]
    if missing:
        raise ValueError(f"invoice is missing fields {missing}; needs {list(INPUT_COLUMNS)}")
    for col in ("invoice_id", "amount_due", "currency", "attempt_count"):
        if pd.isna(invoice[col]):
            raise _missing_value(col)
    for col in ("amount_due", "attempt_count", "amount_due_reporting"):
        _check_integers(col, _float1(invoice[col]), allow_missing=col == "amount_due_reporting")
    _check_currencies([str(invoice["currency"])])
    last = invoice["last_attempt_at"]
    last = pd.NaT if last is None or pd.isna(last) else pd.Timestamp(last)
    if last is not pd.NaT and last.tzinfo is None:
        raise ValueError("last_attempt_at must be timezone-aware UTC")
    pref_us = None
    if "preferred_retry_at" in invoice:
        pref = invoice["preferred_retry_at"]
        pref_us = np.array(
            [NAT if pref is None or pd.isna(pref) else _utc_ns(pref) // 1000], dtype=np.int64
        )
    decline = invoice["decline_code"]
    record = {k: invoice[k] for k in _STATE_FIELDS}
    record["last_attempt_at"] = last
    return _Rows(
        invoice_id=[str(invoice["invoice_id"])],
        records=[record],
        p_raw=_float1(invoice["recovery_probability"]),
        u_raw=_float1(invoice["uplift"]),
        rep=_float1(invoice["amount_due_reporting"]),
        attempts=np.array([int(invoice["attempt_count"])]),
        last_ns=np.array([NAT if last is pd.NaT else last.value], dtype=np.int64),
        pref_us=pref_us,
        decline=np.array(
            ["" if decline is None or pd.isna(decline) else str(decline)], dtype=object
        ),
    )


def _decide_one(
    invoice: Mapping[str, Any],
    *,
    as_of: pd.Timestamp,
    policy: Policy,
    paused: frozenset[str],
    version: str,
) -> dict[str, Any]:
    d = _decide_rows(_rows_from_invoice(invoice), as_of=as_of, policy=policy, paused=paused)
    sched = d["scheduled_at"][0]
    versions = invoice["model_versions"]
    return {
        "invoice_id": str(invoice["invoice_id"]),
        "account_id": invoice["account_id"],
        "action": d["action"][0],
        "action_type": d["action_type"][0],
        "scheduled_at": pd.NaT if np.isnat(sched) else pd.Timestamp(sched).tz_localize("UTC"),
        "reason": d["reason"][0],
        "expected_value": float(d["expected_value"][0]),
        "recovery_probability": float(d["recovery_probability"][0]),
        "uplift": float(d["uplift"][0]),
        "amount_due": int(invoice["amount_due"]),
        "currency": str(invoice["currency"]),
        "amount_due_reporting": int(d["rep"][0]) if d["rep_known"][0] else None,
        "risk": d["risk"][0],
        "offer_cost_minor": int(d["offer_cost_minor"][0]),
        "model_versions": "" if versions is None or pd.isna(versions) else str(versions),
        "policy_version": version,
        "automation_level": d["automation_level"][0],
        "requires_approval": bool(d["requires_approval"][0]),
        "executes_automatically": bool(d["executes_automatically"][0]),
        "shadow": policy.shadow,
        "state_hash": d["state_hash"][0],
    }


def in_control_group(invoice_ids: Any, policy: Policy) -> np.ndarray:
    """Which invoices belong to the policy's control group (``control.share`` of them).

    A deterministic hash of ``control.salt`` and the invoice id, uniform on [0, 1): the
    same invoice is always in the same group, with no state to store.
    """
    ids = [str(i) for i in invoice_ids]
    share = policy.control.share
    if share <= 0 or not ids:
        return np.zeros(len(ids), dtype=bool)
    salt = policy.control.salt.encode()
    u = np.array(
        [
            int.from_bytes(hashlib.sha256(salt + b":" + i.encode()).digest()[:8], "big") / 2.0**64
            for i in ids
        ]
    )
    return u < share


def baseline_policy(policy: Policy) -> Policy:
    """The policy the control group runs under: the baseline schedule (evenly spaced, no
    score threshold) within the same guardrails (hard declines, retry cap, approvals)."""
    c, r = policy.control, policy.retries
    spacing_h = 24.0 * c.baseline_window_days / c.baseline_retries
    retries = dataclasses.replace(
        r,
        min_recovery_probability=0.0,
        max_auto_retries=min(r.max_auto_retries, c.baseline_retries),
        min_hours_between=max(r.min_hours_between, spacing_h),
    )
    return dataclasses.replace(policy, retries=retries, label=f"{policy.label} (control)")


def _control_scores(raw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Control-group scores: ``(scores with 0.0 for missing/invalid ones, scored mask)``."""
    p = _numeric(raw)
    p = np.asarray(p, dtype=float)
    scored = np.isfinite(p) & (p >= 0) & (p <= 1)
    return np.where(scored, p, 0.0), scored


def _control_reason(policy: Policy, unscored: bool, why: str) -> str:
    spacing = 24.0 * policy.control.baseline_window_days / policy.control.baseline_retries
    prefix = f"control group: baseline schedule, a retry every {spacing:g} h whatever the score"
    return prefix + ("; no recovery score" if unscored else "") + "; " + str(why).split("; ", 1)[-1]


def decide_with_control(
    invoices: pd.DataFrame,
    *,
    as_of: datetime | pd.Timestamp,
    policy: Policy,
    paused: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """:func:`decide`, with the control group kept on the baseline schedule.

    Control invoices (:func:`in_control_group`) are decided under :func:`baseline_policy`:
    retried on the baseline spacing whatever their score, never offered a discount, with
    every guardrail intact. Their rows say so in ``reason`` and carry the real policy
    version.

    Returns:
        :data:`DECISION_COLUMNS` plus ``control_group`` (bool), in input order.
    """
    df = invoices.reset_index(drop=True)
    ctrl = in_control_group(df["invoice_id"].to_numpy(), policy)
    if not ctrl.any():
        return decide(df, as_of=as_of, policy=policy, paused=paused).assign(control_group=False)
    treated = decide(df[~ctrl], as_of=as_of, policy=policy, paused=paused)
    parts = [treated.assign(control_group=False)]
    if ctrl.any():
        base = baseline_policy(policy)
        inputs = df[ctrl].copy()
        p, scored = _control_scores(inputs["recovery_probability"])
        inputs["recovery_probability"] = p
        inputs["uplift"] = np.nan
        inputs = inputs.drop(columns=["preferred_retry_at"], errors="ignore")
        out = decide(inputs, as_of=as_of, policy=base, paused=paused)
        unscored = ~scored
        out.loc[unscored, "recovery_probability"] = np.nan
        out.loc[unscored, "expected_value"] = np.nan
        out["reason"] = [
            _control_reason(policy, u, why) for u, why in zip(unscored, out["reason"], strict=True)
        ]
        out["policy_version"] = policy.version
        parts.append(out.assign(control_group=True))
    order = {iid: k for k, iid in enumerate(df["invoice_id"].astype(str))}
    merged = pd.concat([x for x in parts if len(x)], ignore_index=True) if len(df) else parts[0]
    merged = merged.iloc[np.argsort([order[i] for i in merged["invoice_id"]], kind="stable")]
    return merged.reset_index(drop=True)


def decide_invoice(
    invoice: Mapping[str, Any],
    *,
    as_of: datetime | pd.Timestamp,
    policy: Policy,
    paused: Collection[str] = frozenset(),
) -> dict[str, Any]:
    """The single-invoice fast path of :func:`decide_with_control` (no pandas frames).

    The same rules, in the same code (:func:`_decide_rows`), as the frame path: for any
    valid invoice the result equals ``decide_with_control(frame_of(invoice)).iloc[0]``
    (a property test checks this), in microseconds instead of milliseconds.

    Args:
        invoice: The fields of one row of :func:`decide`'s input (plus, optionally,
            ``preferred_retry_at``).
        as_of, policy, paused: As for :func:`decide`.

    Returns:
        :data:`DECISION_COLUMNS` plus ``control_group`` as plain values
        (``amount_due_reporting`` is None when unknown, ``scheduled_at`` NaT for ``wait``).
    """
    as_of = _as_utc(as_of)
    paused = frozenset(paused)
    version = policy.version  # a content hash: computed once here
    if not in_control_group([invoice["invoice_id"]], policy)[0]:
        return {
            **_decide_one(invoice, as_of=as_of, policy=policy, paused=paused, version=version),
            "control_group": False,
        }
    p, scored = _control_scores(_one(invoice["recovery_probability"]))
    inputs = {k: v for k, v in invoice.items() if k != "preferred_retry_at"}
    inputs.update(recovery_probability=float(p[0]), uplift=np.nan)
    base = baseline_policy(policy)
    out = _decide_one(inputs, as_of=as_of, policy=base, paused=paused, version=version)
    if not scored[0]:
        out.update(recovery_probability=np.nan, expected_value=np.nan)
    out["reason"] = _control_reason(policy, not scored[0], out["reason"])
    return {**out, "control_group": True}


@dataclass(frozen=True)
class ApplySummary:
    """What :func:`apply_decisions` did."""

    queued: int = 0
    duplicates: int = 0
    executed: int = 0
    failed: int = 0
    paused: int = 0
    shadowed: int = 0
    superseded: int = 0
    insight_only: int = 0


def _payload(row: Any, policy: Policy, as_of: pd.Timestamp) -> dict[str, Any]:
    payload = {
        "reason": row["reason"],
        "decision": row["action"],
        "scheduled_at": row["scheduled_at"],
        "recovery_probability": row["recovery_probability"],
        "uplift": row["uplift"],
        "expected_value": row["expected_value"],
        "offer_cost_minor": int(row["offer_cost_minor"]),
        "model_versions": row["model_versions"],
        "as_of": as_of,
    }
    if row["action_type"] == "write_off":
        payload["reason_code"] = policy.write_off.reason_code
    return audit.jsonable(payload)


def _shadow_entry(
    tx: Any,
    row: Mapping[str, Any],
    *,
    policy: Policy,
    as_of: pd.Timestamp,
    who: Identity,
    now: pd.Timestamp,
) -> None:
    """The ``decision.shadow`` audit entry of one acting decision (shadow mode)."""
    audit.append(tx, actor=who.user, event="decision.shadow", item_id=None, at=now,
                 details={"invoice_id": row["invoice_id"], "action": row["action"],
                          "action_type": row["action_type"], "automation_level": row["automation_level"],
                          "requires_approval": bool(row["requires_approval"]),
                          "amount_due_reporting": row["amount_due_reporting"],
                          "policy_version": policy.version, **_payload(row, policy, as_of)})  # fmt: skip


def _request(
    store: ApprovalStore,
    row: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    policy: Policy,
    as_of: pd.Timestamp,
    who: Identity,
    now: pd.Timestamp,
) -> str | None:
    """Queue or run one acting decision; the outcome code (None: insight only)."""
    if not (row["requires_approval"] or row["executes_automatically"]):
        return None
    rep = row["amount_due_reporting"]
    outcome = request_action(
        store, who=who, action_type=row["action_type"], subject_id=row["invoice_id"],
        state=state, policy=policy, amount_minor=int(row["amount_due"]),
        currency=row["currency"], amount_reporting_minor=None if pd.isna(rep) else int(rep),
        account_id=None if pd.isna(row["account_id"]) else str(row["account_id"]),
        payload=_payload(row, policy, as_of), state_scope=STATE_SCOPE, risk=row["risk"],
        auto_execute=bool(row["executes_automatically"]), now=now,
    )  # fmt: skip
    return outcome.code


def _summary(codes: list[str | None], superseded: int) -> ApplySummary:
    counts = {"queued": 0, "duplicate": 0, "executed": 0, "failed": 0, "paused": 0}
    insight = 0
    for code in codes:
        if code is None:
            insight += 1
        else:
            counts[code if code in counts else "failed"] += 1
    return ApplySummary(
        queued=counts["queued"], duplicates=counts["duplicate"], executed=counts["executed"],
        failed=counts["failed"], paused=counts["paused"], superseded=superseded, insight_only=insight,
    )  # fmt: skip


def apply_decisions(
    store: StoreLike,
    decisions: pd.DataFrame,
    invoices: pd.DataFrame,
    *,
    policy: Policy,
    as_of: datetime | pd.Timestamp,
    complete: bool = False,
    who: Identity = ENGINE,
    now: datetime | pd.Timestamp | None = None,
) -> ApplySummary:
    """Write decisions to the approvals store.

    Shadow mode: one ``decision.shadow`` audit entry per non-wait decision, nothing else.
    Otherwise: every invoice's state is recorded (pending engine items whose invoice or
    recommendation changed are superseded), decisions needing approval are queued
    (idempotently), and decisions the policy automates are executed once.

    Args:
        decisions: Output of :func:`decide` under ``policy``.
        invoices: The frame the decisions were made from (for the recorded states).
        complete: ``invoices`` holds every open failed invoice: pending engine items for
            invoices not in it (paid, voided) are superseded.
        now: When the items are recorded and run (audit times, executions and the override
            window start here); the wall clock by default. ``as_of`` is when the decisions
            were made as of (e.g. the newest warehouse event), which may be days earlier.
    """
    store, as_of, now = open_store(store), _as_utc(as_of), _as_utc(now or pd.Timestamp.now("UTC"))
    if len(decisions) and (decisions["policy_version"] != policy.version).any():
        raise ValueError(f"decisions were made under another policy than {policy.version}")
    inv = invoices.reset_index(drop=True).set_index(invoices["invoice_id"].astype(str).to_numpy())
    acting = decisions[decisions["action_type"].notna()]
    if policy.shadow:
        with store.transaction() as tx:
            for _, row in acting.iterrows():
                _shadow_entry(tx, row, policy=policy, as_of=as_of, who=who, now=now)
        return ApplySummary(shadowed=len(acting))

    states = {
        str(row["invoice_id"]): invoice_state(
            inv.loc[str(row["invoice_id"])], action_type=row["action_type"]
        )
        for _, row in decisions.iterrows()
    }
    superseded = record_states(
        store, who=who, scope=STATE_SCOPE, states=states, close_missing=complete,
        policy_version=policy.version, now=now,
    )  # fmt: skip
    codes = [
        _request(
            store, row, states[row["invoice_id"]], policy=policy, as_of=as_of, who=who, now=now
        )
        for _, row in acting.iterrows()
    ]
    summary = _summary(codes, superseded)
    log.info("dunning decisions applied under %s: %s", policy.version, summary)
    return summary


def apply_decision(
    store: StoreLike,
    decision: Mapping[str, Any],
    invoice: Mapping[str, Any],
    *,
    policy: Policy,
    as_of: datetime | pd.Timestamp,
    who: Identity = ENGINE,
    now: datetime | pd.Timestamp | None = None,
) -> ApplySummary:
    """:func:`apply_decisions` for one decision of :func:`decide_invoice` (no frames).

    Args:
        decision: One decision (``decide_invoice`` output, or a row of ``decide``'s).
        invoice: The invoice it was made from (the fields of :func:`invoice_state`).
        now: As in :func:`apply_decisions` (the wall clock by default).
    """
    store, as_of, now = open_store(store), _as_utc(as_of), _as_utc(now or pd.Timestamp.now("UTC"))
    if decision["policy_version"] != policy.version:
        raise ValueError(f"decisions were made under another policy than {policy.version}")
    acting = decision["action_type"] is not None and not pd.isna(decision["action_type"])
    if policy.shadow:
        if acting:
            with store.transaction() as tx:
                _shadow_entry(tx, decision, policy=policy, as_of=as_of, who=who, now=now)
        return ApplySummary(shadowed=int(acting))
    iid = str(decision["invoice_id"])
    states = {iid: invoice_state(invoice, action_type=decision["action_type"])}
    superseded = record_states(
        store, who=who, scope=STATE_SCOPE, states=states, close_missing=False,
        policy_version=policy.version, now=now,
    )  # fmt: skip
    codes = (
        [_request(store, decision, states[iid], policy=policy, as_of=as_of, who=who, now=now)]
        if acting
        else []
    )
    return _summary(codes, superseded)


@dataclass(frozen=True)
class DunningRun:
    """Result of :func:`run_dunning`."""

    decisions: pd.DataFrame
    summary: ApplySummary | None
    policy_version: str


def run_dunning(
    settings: Settings,
    invoices: pd.DataFrame,
    *,
    as_of: datetime | pd.Timestamp,
    apply: bool = True,
    complete: bool = True,
) -> DunningRun:
    """Decide with the configured policy and paused switches, then (optionally) apply.

    Args:
        settings: Supplies ``policy_file``, ``reporting_currency`` and ``approvals_url``.
        invoices: Every open failed invoice (see :func:`decide` for the columns).
        apply: Write to the approvals store; ``False`` only returns the decisions.
        complete: ``invoices`` is the full open set (see :func:`apply_decisions`).
    """
    policy = load_policy(settings=settings)
    store = open_store(settings)
    if apply:  # items a killed run left claimed but unrecorded are closed first
        recover_interrupted(store, who=ENGINE)
    decisions = decide_with_control(
        invoices, as_of=as_of, policy=policy, paused=paused_action_types(store)
    )
    summary = (
        apply_decisions(store, decisions, invoices, policy=policy, as_of=as_of, complete=complete)
        if apply
        else None
    )
    return DunningRun(decisions=decisions, summary=summary, policy_version=policy.version)


def decisions_to_store(
    decisions: pd.DataFrame,
    *,
    run_id: str,
    as_of: datetime | pd.Timestamp,
    shadow: bool,
    policy_version: str,
) -> pd.DataFrame:
    """A run's decisions as rows of the warehouse table ``dunning_decisions``.

    Adds (or sets) ``run_id``, ``as_of`` (the decision time), ``shadow`` (whether the run
    only recorded its decisions) and ``policy_version``, and makes every object column a
    pandas string column, so the warehouse types it ``VARCHAR`` even when it holds only
    nulls (``action_type`` of a run that only waits would otherwise have no type).

    Returns:
        A new frame (``decisions`` is left untouched), for
        :func:`workbench.publishing.store_frame`.
    """
    stored = decisions.assign(
        run_id=run_id, as_of=as_of, shadow=shadow, policy_version=policy_version
    )
    return stored.astype({c: "string" for c in stored.columns if stored[c].dtype == object})
