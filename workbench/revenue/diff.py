"""Why do two policies disagree? A per account-month reconciliation.

:func:`diff_policies` walks from policy ``a`` to policy ``b`` one rule at a time
(in the order of :data:`~.policies.RULE_FIELDS`), recomputing the account-month table
after each switch. Every step's change is attributed to the rule that was switched,
so the per-rule amounts add up exactly to the total difference, and the ``reason``
column names the rules (with both values) that moved this account-month.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import date

import pandas as pd

from .engine import Connection, account_month_mrr
from .policies import RULE_FIELDS, Policy, PolicyError, get_policy

log = logging.getLogger(__name__)

_MOVES = ("new_mrr", "expansion_mrr", "contraction_mrr", "churn_mrr", "reactivation_mrr", "fx_mrr")
_KEEP = ("mrr", "opening_mrr", *_MOVES, "movement")


def _fmt(value: object) -> str:
    if isinstance(value, frozenset):
        return "{" + ",".join(sorted(value)) + "}"
    return str(value)


def policy_steps(a: Policy, b: Policy) -> list[tuple[tuple[str, ...], Policy]]:
    """The chain of valid policies from ``a`` to ``b``, switching one rule (or the
    smallest group of rules that must change together) per step.

    Returns:
        ``[(fields switched, policy after the switch), ...]``; the last policy has
        every rule of ``b``.
    """
    steps: list[tuple[tuple[str, ...], Policy]] = []
    current = a
    pending: list[str] = []
    for name in RULE_FIELDS:
        if getattr(a, name) == getattr(b, name):
            continue
        pending.append(name)
        try:
            nxt = dataclasses.replace(
                current, **{f: getattr(b, f) for f in pending}, name=f"{a.name}>{b.name}"
            )
        except PolicyError:
            continue  # this rule can only move together with a later one
        steps.append((tuple(pending), nxt))
        current = nxt
        pending = []
    if pending:
        raise PolicyError(f"cannot move from {a.key} to {b.key}: {pending} never become valid")
    return steps


def diff_policies(
    con: Connection,
    a: str | Policy,
    b: str | Policy,
    *,
    reporting_currency: str = "usd",
    start: date | str | None = None,
    end: date | str | None = None,
    only_differences: bool = True,
) -> pd.DataFrame:
    """Explain, per account-month, why policies ``a`` and ``b`` give different numbers.

    Args:
        con: warehouse connection or engine, e.g. a
            :class:`~workbench.engines.SparkEngine` (see :func:`~.engine.build_account_months`).
        a, b: policy names, ``name@version`` or :class:`Policy` objects.
        reporting_currency, start, end: as for the engine; both sides use them.
        only_differences: drop account-months where MRR and every movement agree.

    Returns:
        One row per account-month: ``month, account_id, mrr_a, mrr_b, mrr_diff``
        (b - a), ``movement_a, movement_b``, ``<movement>_diff`` for each movement,
        ``diff_<rule>`` (the part of ``mrr_diff`` caused by switching that rule; they
        sum to ``mrr_diff``), ``moved_<rule>`` (absolute movement amounts that rule
        reclassified) and ``reason``: the rules involved with both values, e.g.
        ``"churn_recognition: cancel_request -> ended (+6000)"``.
    """
    pa, pb = get_policy(a), get_policy(b)
    steps = policy_steps(pa, pb)
    kw = dict(reporting_currency=reporting_currency, start=start, end=end)
    frames = [account_month_mrr(con, policy=pa, **kw)]
    for _, pol in steps:
        frames.append(account_month_mrr(con, policy=pol, **kw))
    # final step must equal b exactly (only the name differs)
    key = ["month", "account_id"]
    joined = None
    for i, f in enumerate(frames):
        part = f[key + list(_KEEP)].rename(columns={c: f"{c}_{i}" for c in _KEEP})
        joined = part if joined is None else joined.merge(part, on=key, how="outer")
    assert joined is not None
    n = len(frames) - 1
    for i in range(n + 1):
        for c in ("mrr", "opening_mrr", *_MOVES):
            joined[f"{c}_{i}"] = joined[f"{c}_{i}"].fillna(0).astype("int64")
    out = joined[key].copy()
    out["mrr_a"] = joined["mrr_0"]
    out["mrr_b"] = joined[f"mrr_{n}"]
    out["mrr_diff"] = out["mrr_b"] - out["mrr_a"]
    out["movement_a"] = joined["movement_0"]
    out["movement_b"] = joined[f"movement_{n}"]
    for c in _MOVES:
        out[f"{c}_diff"] = joined[f"{c}_{n}"] - joined[f"{c}_0"]
    reasons: list[pd.Series] = []
    for i, (fields, _) in enumerate(steps, start=1):
        label = "+".join(fields)
        d = joined[f"mrr_{i}"] - joined[f"mrr_{i - 1}"]
        moved = sum((joined[f"{c}_{i}"] - joined[f"{c}_{i - 1}"]).abs() for c in _MOVES)
        out[f"diff_{label}"] = d
        out[f"moved_{label}"] = moved
        values = "; ".join(f"{f}: {_fmt(getattr(pa, f))} -> {_fmt(getattr(pb, f))}" for f in fields)
        text = pd.Series(
            [
                f"{values} ({'+' if x >= 0 else ''}{x})"
                if x != 0
                else f"{values} (reclassified {m})"
                for x, m in zip(d, moved, strict=True)
            ],
            index=out.index,
        )
        reasons.append(text.where((d != 0) | (moved != 0)))
    if reasons:
        out["reason"] = pd.concat(reasons, axis=1).apply(
            lambda r: " | ".join(v for v in r if isinstance(v, str)) or None, axis=1
        )
    else:
        out["reason"] = None
    if only_differences:
        differs = out["mrr_diff"] != 0
        for c in _MOVES:
            differs |= out[f"{c}_diff"] != 0
        out = out[differs]
    out.insert(0, "policy_b", pb.key)
    out.insert(0, "policy_a", pa.key)
    log.info("diff %s vs %s: %d account-months differ", pa.key, pb.key, len(out))
    return out.sort_values(key).reset_index(drop=True)


def diff_summary(diff: pd.DataFrame) -> pd.DataFrame:
    """Per month and rule: how much MRR that rule moves between the two policies.

    Needs the output of :func:`diff_policies`.

    Returns:
        ``month, rule, mrr_diff, accounts`` (accounts whose MRR that rule changed).
    """
    rules = [c[len("diff_") :] for c in diff.columns if c.startswith("diff_")]
    rows = []
    for rule in rules:
        g = diff.groupby("month")[f"diff_{rule}"]
        part = pd.DataFrame(
            {"mrr_diff": g.sum(), "accounts": g.apply(lambda s: int((s != 0).sum()))}
        )
        part["rule"] = rule
        rows.append(part.reset_index())
    if not rows:
        return pd.DataFrame(columns=["month", "rule", "mrr_diff", "accounts"])
    return pd.concat(rows)[["month", "rule", "mrr_diff", "accounts"]].reset_index(drop=True)
