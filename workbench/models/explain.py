"""Explanations: exact SHAP values, global importance, plain-words reasons.

SHAP values are path-dependent TreeSHAP, the numbers of LightGBM's
``booster.predict(X, pred_contrib=True)`` and of ``shap.TreeExplainer`` (which, for
LightGBM, calls ``pred_contrib``); :mod:`workbench.models.treeshap` computes them from
per-leaf tables built once per model, several times faster. Values are in the model's
raw score (log-odds) before calibration; per row they sum, with the ``bias`` column, to
the raw score.

:func:`top_reasons` turns each row's largest contributions into short phrases such as
"3 failed payments in the last 30 days" or "usage down 40% (last 30 days vs the 60 before)",
using a template per feature and the registry's description otherwise.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BIAS = "bias"


class _HasBooster(Protocol):
    booster: Any
    best_iteration: int

    @property
    def features(self) -> list[str]: ...

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame: ...


def explainer(booster, num_iteration: int | None, owner: object):  # noqa: ANN001, ANN201
    """The :class:`~workbench.models.treeshap.TreeShap` of a booster, built once and kept on
    ``owner`` (the model object) for later calls."""
    from workbench.models.treeshap import TreeShap

    cache = owner.__dict__.setdefault("_treeshap", {})
    key = (id(booster), num_iteration)
    if key not in cache:
        cache[key] = TreeShap(booster, num_iteration=num_iteration)
    return cache[key]


def contributions(model: _HasBooster, frame: pd.DataFrame) -> pd.DataFrame:
    """SHAP values per row and feature (raw log-odds), plus the ``bias`` column.

    Exact path-dependent TreeSHAP, the values of LightGBM's ``pred_contrib`` (and of
    ``shap.TreeExplainer``), computed by :mod:`workbench.models.treeshap` from tables
    built once per model.

    Args:
        model: A :class:`~workbench.models.training.BinaryModel` (or anything with a
            ``booster``, ``best_iteration``, ``features`` and ``matrix``); a model
            without a booster but with its own ``contributions(frame)`` (the per-retry
            recovery model) gives those.
        frame: Rows carrying the model's feature columns.

    Returns:
        A frame with the same index, one column per feature and ``bias``.
    """
    if getattr(model, "booster", None) is None and hasattr(model, "contributions"):
        return model.contributions(frame)  # a model that explains itself (not a booster)
    X = model.matrix(frame)
    values = explainer(model.booster, model.best_iteration, model).contributions(X)
    return pd.DataFrame(values, index=frame.index, columns=[*model.features, BIAS])


def global_importance(contrib: pd.DataFrame) -> pd.DataFrame:
    """Mean absolute SHAP value per feature, largest first.

    Returns:
        ``feature``, ``mean_abs_shap``, ``mean_shap`` and ``share`` (of the total).
    """
    vals = contrib.drop(columns=[BIAS], errors="ignore")
    mean_abs = vals.abs().mean()
    total = float(mean_abs.sum()) or 1.0
    out = pd.DataFrame(
        {
            "feature": mean_abs.index,
            "mean_abs_shap": mean_abs.to_numpy(),
            "mean_shap": vals.mean().to_numpy(),
            "share": mean_abs.to_numpy() / total,
        }
    )
    return out.sort_values("mean_abs_shap", ascending=False, ignore_index=True)


# --------------------------------------------------------------------------- phrases


def _num(v: float, digits: int = 0) -> str:
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _plural(n: float, word: str) -> str:
    return f"{_num(n)} {word}{'' if round(n) == 1 else 's'}"


def _money(v: float) -> str:
    return f"{v / 100:,.0f}"


def _pct(v: float) -> str:
    return f"{abs(v) * 100:,.0f}%"


_WINDOW = re.compile(r"_(\d+)d$")


def _window(name: str) -> str:
    m = _WINDOW.search(name)
    return f"in the last {m.group(1)} days" if m else ""


def _phrase_count(word: str) -> Callable[[str, Any], str]:
    def f(name: str, v: Any) -> str:
        return f"{_plural(v, word)} {_window(name)}".strip()

    return f


def _usage_drop(name: str, v: Any) -> str:
    if v >= 0:
        return f"usage down {_pct(v)} (last 30 days vs the 60 before)"
    return f"usage up {_pct(v)} (last 30 days vs the 60 before)"


def _days(what: str) -> Callable[[str, Any], str]:
    def f(name: str, v: Any) -> str:
        return f"{what} {_plural(v, 'day')} ago"

    return f


def _mrr_change(name: str, v: Any) -> str:
    return f"MRR {'up' if v >= 0 else 'down'} {_pct(v)} over 90 days"


def _flag(yes: str, no: str) -> Callable[[str, Any], str]:
    return lambda name, v: yes if v >= 0.5 else no


PHRASES: dict[str, Callable[[str, Any], str]] = {
    **{f"failed_payments_{w}d": _phrase_count("failed payment") for w in (7, 30, 60, 90)},
    "successful_payments_90d": _phrase_count("successful payment"),
    "payment_failure_rate_90d": lambda n, v: f"{_pct(v)} of payments failed in the last 90 days",
    "days_since_last_successful_payment": _days("last successful payment"),
    "days_since_last_failed_payment": _days("last failed payment"),
    "last_decline_code": lambda n, v: f"last payment declined as '{v}'",
    "card_days_until_expiry": lambda n, v: (
        f"card expired {_plural(-v, 'day')} ago"
        if v < 0
        else f"card expires in {_plural(v, 'day')}"
    ),
    "card_expiring_30d": _flag("card expires within 30 days", "card not expiring soon"),
    "payment_lag_days_avg_90d": lambda n, v: (
        f"invoices paid {_num(v, 1)} days after issue on average"
    ),
    "dunning_invoices_open": _phrase_count("invoice in dunning"),
    "dunning_amount_open": lambda n, v: f"{_money(v)} due on invoices in dunning",
    "retries_on_open_invoices": _phrase_count("failed retry on open invoices"),
    "mrr": lambda n, v: f"MRR {_money(v)}",
    "mrr_change_90d": lambda n, v: (
        f"MRR {'up' if v >= 0 else 'down'} {_money(abs(v))} over 90 days"
    ),
    "mrr_change_pct_90d": _mrr_change,
    "plan_tier": lambda n, v: f"on plan {v}",
    "billing_interval_months": lambda n, v: "billed yearly" if v >= 12 else "billed monthly",
    "licensed_seats": lambda n, v: _plural(v, "licensed seat"),
    "active_subscriptions": lambda n, v: _plural(v, "active subscription"),
    "tenure_days": lambda n, v: f"customer for {_plural(v / 30.44, 'month')}",
    "account_age_days": lambda n, v: f"account created {_plural(v / 30.44, 'month')} ago",
    "discount_active": _flag("discount in force", "no discount"),
    "is_trialing": _flag("in a trial", "not in a trial"),
    "is_past_due": _flag("subscription past due", "no subscription past due"),
    "cancel_at_period_end": _flag("set to cancel at period end", "not set to cancel"),
    "usage_avg_daily_7d": lambda n, v: f"average daily usage {_num(v)} (last 7 days)",
    "usage_avg_daily_30d": lambda n, v: f"average daily usage {_num(v)} (last 30 days)",
    "usage_avg_daily_prior_60d": lambda n, v: (
        f"average daily usage {_num(v)} in the 60 days before"
    ),
    "usage_drop_pct_30d_vs_prior_60d": _usage_drop,
    "usage_trend_90d": lambda n, v: f"usage {'rising' if v >= 0 else 'falling'} over 90 days",
    "usage_active_days_30d": lambda n, v: f"active on {_plural(v, 'day')} of the last 30",
    "days_since_last_usage": _days("last used"),
    **{f"tickets_{w}d": _phrase_count("support ticket") for w in (30, 90)},
    **{
        f"high_severity_tickets_{w}d": _phrase_count("urgent or high-severity ticket")
        for w in (30, 90)
    },
    "open_tickets": lambda n, v: _plural(v, "open support ticket"),
    "days_since_last_ticket": _days("last support ticket"),
    "health_score": lambda n, v: f"health score {_num(v)}",
    "health_score_90d_ago": lambda n, v: f"health score was {_num(v)} 90 days ago",
    "health_score_change_90d": lambda n, v: (
        f"health score {'up' if v >= 0 else 'down'} {_num(abs(v))} points in 90 days"
    ),
    "nps": lambda n, v: f"NPS answer {_num(v)}",
    "nps_90d_ago": lambda n, v: f"NPS answer was {_num(v)} 90 days ago",
    "nps_change_90d": lambda n, v: f"NPS {'up' if v >= 0 else 'down'} {_num(abs(v))} in 90 days",
    "seats_purchased": lambda n, v: _plural(v, "seat") + " purchased",
    "seats_used": lambda n, v: _plural(v, "seat") + " in use",
    "seat_utilization": lambda n, v: f"{_pct(v)} of seats in use",
    "disputes_90d": _phrase_count("dispute"),
    "disputes_365d": _phrase_count("dispute"),
    "disputes_lost_365d": _phrase_count("lost dispute"),
    "refunds_90d": _phrase_count("refund"),
    "invoice_amount_due": lambda n, v: f"invoice amount {_money(v)}",
    "invoice_currency": lambda n, v: f"invoice in {str(v).upper()}",
    "invoice_billing_reason": lambda n, v: f"invoice for {str(v).replace('_', ' ')}",
    "invoice_days_since_created": lambda n, v: f"invoice issued {_plural(v, 'day')} ago",
    "invoice_attempt_number": lambda n, v: f"{_plural(v, 'payment attempt')} on this invoice",
    "invoice_failed_attempts": lambda n, v: f"{_plural(v, 'failed attempt')} on this invoice",
    "invoice_last_decline_code": lambda n, v: f"declined as '{v}'",
    "invoice_hours_since_first_failure": lambda n, v: f"first failure {_plural(v / 24, 'day')} ago",
    "invoice_hours_since_last_failure": lambda n, v: f"last failure {_plural(v, 'hour')} ago",
    "invoice_failure_day_of_month": lambda n, v: f"failed on day {_num(v)} of the month",
    "invoice_hours_to_next_attempt": lambda n, v: f"next retry in {_plural(v / 24, 'day')}",
    "sub_mrr": lambda n, v: f"subscription MRR {_money(v)}",
    "sub_status": lambda n, v: f"subscription {str(v).replace('_', ' ')}",
    "sub_tenure_days": lambda n, v: f"subscription {_plural(v / 30.44, 'month')} old",
    "sub_interval_months": lambda n, v: "billed yearly" if v >= 12 else "billed monthly",
    "sub_quantity": lambda n, v: _plural(v, "seat") + " on the subscription",
    "sub_cancel_at_period_end": _flag(
        "subscription set to cancel", "subscription not set to cancel"
    ),
    "churn_risk": lambda n, v: f"churn risk {_pct(v)}",
    "cancel_hazard": lambda n, v: f"{_pct(v)} chance of deciding to cancel this month",
    "days_to_period_end": lambda n, v: f"billing period ends in {_plural(v, 'day')}",
    "region": lambda n, v: f"region {v}",
    "channel": lambda n, v: f"{v} customer",
    "industry": lambda n, v: f"{v} industry",
    "size": lambda n, v: f"{v} account",
}
_NONE: dict[str, str] = {
    "days_since_last_usage": "no usage recorded",
    "days_since_last_successful_payment": "no successful payment yet",
    "days_since_last_failed_payment": "no failed payments",
    "days_since_last_ticket": "no support tickets",
    "last_decline_code": "no declined payments",
    "health_score": "no health score recorded",
    "nps": "no NPS answer",
    "usage_drop_pct_30d_vs_prior_60d": "no usage in the prior 60 days",
    "card_days_until_expiry": "card expiry unknown",
    "mrr_change_pct_90d": "not paying 90 days ago",
    "seat_utilization": "seat use unknown",
}


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def phrase(feature: str, value: Any, *, descriptions: Mapping[str, str] | None = None) -> str:
    """One feature value in plain words (a template per feature, else its description)."""
    if _is_missing(value):
        if feature in _NONE:
            return _NONE[feature]
        desc = (descriptions or {}).get(feature, feature.replace("_", " "))
        return f"{desc.rstrip('.')}: unknown"
    fn = PHRASES.get(feature)
    if fn is not None:
        try:
            return fn(feature, value)
        except (TypeError, ValueError):
            pass
    desc = (descriptions or {}).get(feature, feature.replace("_", " "))
    shown = _num(value, 2) if isinstance(value, float) else str(value)
    return f"{desc.rstrip('.')}: {shown}"


def top_reasons(
    frame: pd.DataFrame,
    contrib: pd.DataFrame,
    *,
    k: int = 3,
    direction: str = "up",
    descriptions: Mapping[str, str] | None = None,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Each row's ``k`` strongest reasons, in plain words.

    Args:
        frame: The scored rows (feature values are read from here; same index as
            ``contrib``).
        contrib: From :func:`contributions`.
        direction: ``up``: the features that raise the score most (why the risk is high);
            when fewer than ``k`` raise it, the ones lowering it most follow, marked
            "(lowers)". ``down``: the reverse, fill-ins marked "(raises)". ``abs``: the
            largest either way, every phrase marked "(raises)" or "(lowers)".
        descriptions: Feature descriptions for features without a template.
        features: Restrict to these features (default: all contribution columns).

    Returns:
        Columns ``reason_1`` .. ``reason_k`` (None only when fewer than ``k`` features have a
        non-zero contribution) and ``reason_features`` (the feature names,
        ``;``-separated), same index as ``frame``.
    """
    if direction not in ("up", "down", "abs"):
        raise ValueError(f"direction must be 'up', 'down' or 'abs', not {direction!r}")
    cols = [c for c in (features or contrib.columns) if c != BIAS]
    vals = contrib[cols].to_numpy(dtype=np.float64)
    n, m = vals.shape
    k_eff = min(k, m)
    if direction == "abs":
        order = np.argsort(-np.abs(vals), axis=1, kind="stable")[:, :k_eff]
        fill = None
    else:
        sign = 1.0 if direction == "up" else -1.0
        order = np.argsort(-sign * vals, axis=1, kind="stable")[:, :k_eff]  # main direction first
        fill = np.argsort(sign * vals, axis=1, kind="stable")[
            :, :k_eff
        ]  # the other way, strongest first
    names = np.asarray(cols, dtype=object)
    value_cols = {c: frame[c].to_numpy(dtype=object) if c in frame.columns else None for c in cols}
    out: dict[str, list] = {f"reason_{i + 1}": [None] * n for i in range(k)}
    used: list[str] = [""] * n

    def say(r: int, c: int, v: float, mark: bool) -> str:
        name = names[c]
        col = value_cols[name]
        text = phrase(name, None if col is None else col[r], descriptions=descriptions)
        return text + (" (raises)" if v > 0 else " (lowers)") if mark else text

    main_positive = direction != "down"
    for r in range(n):
        picked: list[int] = []
        texts: list[str] = []
        for c in order[r]:
            v = vals[r, c]
            if v == 0 or (direction != "abs" and (v > 0) != main_positive):
                continue
            picked.append(c)
            texts.append(say(r, c, v, direction == "abs"))
        if fill is not None and len(picked) < k_eff:
            for c in fill[r]:
                v = vals[r, c]
                if len(picked) >= k_eff or v == 0 or (v > 0) == main_positive:
                    continue
                picked.append(c)
                texts.append(say(r, c, v, True))
        for i, t in enumerate(texts):
            out[f"reason_{i + 1}"][r] = t
        used[r] = ";".join(names[c] for c in picked)
    res = pd.DataFrame(out, index=frame.index)
    res["reason_features"] = used
    return res
