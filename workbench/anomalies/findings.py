"""The findings frame: one row per suspected billing error, ranked, with its suggested action.

Every detector (the rules in :mod:`workbench.anomalies.rules`, the Isolation Forest in
:mod:`workbench.anomalies.detector`) returns frames with :data:`FINDING_COLUMNS`;
:func:`rank_findings` merges them into the one ranked list finance reviews, and
:func:`approval_actions` turns the findings that move money into rows for the approvals
queue (the queue itself lives elsewhere; this module only returns data).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pandas as pd

#: Columns of every findings frame, in order.
FINDING_COLUMNS: tuple[str, ...] = (
    "finding_id",
    "rule",
    "anomaly_type",
    "object_type",
    "object_id",
    "account_id",
    "severity",
    "amount_at_stake",
    "currency",
    "explanation",
    "suggested_action",
    "detected_at",
    "score",
)

#: Severities from most to least urgent.
SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low")

#: What a reviewer may be asked to do. ``review`` moves no money.
ACTIONS: tuple[str, ...] = ("credit", "refund", "void", "review")

#: Actions that move money (or cancel a receivable) and so need an approval.
MONEY_ACTIONS: frozenset[str] = frozenset({"credit", "refund", "void"})

_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def finding_id(rule: str, object_type: str, object_id: str) -> str:
    """A stable id for a finding: the same rule on the same object always gives the same id.

    Args:
        rule: Rule name (or ``"isolation_forest"``).
        object_type: ``invoice`` | ``subscription`` | ``refund``.
        object_id: The object's id.

    Returns:
        ``"fnd_"`` and 20 hex digits of a SHA-256 over the three parts.
    """
    digest = hashlib.sha256(f"{rule}\x1f{object_type}\x1f{object_id}".encode()).hexdigest()
    return "fnd_" + digest[:20]


def utc_now() -> pd.Timestamp:
    """The current time as a UTC timestamp with microsecond precision."""
    return pd.Timestamp(datetime.now(UTC)).floor("us")


def empty_findings() -> pd.DataFrame:
    """A findings frame with no rows and the right dtypes."""
    return pd.DataFrame(
        {
            "finding_id": pd.Series(dtype="object"),
            "rule": pd.Series(dtype="object"),
            "anomaly_type": pd.Series(dtype="object"),
            "object_type": pd.Series(dtype="object"),
            "object_id": pd.Series(dtype="object"),
            "account_id": pd.Series(dtype="object"),
            "severity": pd.Series(dtype="object"),
            "amount_at_stake": pd.Series(dtype="int64"),
            "currency": pd.Series(dtype="object"),
            "explanation": pd.Series(dtype="object"),
            "suggested_action": pd.Series(dtype="object"),
            "detected_at": pd.Series(dtype="datetime64[us, UTC]"),
            "score": pd.Series(dtype="float64"),
        }
    )


def as_findings(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame to the findings columns and dtypes (extra columns are dropped).

    Args:
        frame: A frame holding at least :data:`FINDING_COLUMNS`.

    Returns:
        A new frame with exactly :data:`FINDING_COLUMNS`, ``amount_at_stake`` as int64,
        ``detected_at`` as ``datetime64[us, UTC]`` and ``score`` as float64.
    """
    if frame.empty:
        return empty_findings()
    missing = [c for c in FINDING_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"findings frame lacks columns {missing}")
    out = frame.loc[:, list(FINDING_COLUMNS)].copy()
    out["amount_at_stake"] = out["amount_at_stake"].fillna(0).astype("int64")
    out["detected_at"] = pd.to_datetime(out["detected_at"], utc=True).astype("datetime64[us, UTC]")
    out["score"] = out["score"].astype("float64")
    bad = set(out["severity"]) - set(SEVERITIES)
    if bad:
        raise ValueError(f"unknown severities {sorted(bad)}")
    bad = set(out["suggested_action"]) - set(ACTIONS)
    if bad:
        raise ValueError(f"unknown actions {sorted(bad)}")
    return out.reset_index(drop=True)


def rank_findings(*frames: pd.DataFrame, drop_covered: bool = True) -> pd.DataFrame:
    """Merge findings frames into one list, most urgent first.

    Order: severity (critical first), then exact rules before the learned detector, then
    amount at stake (largest first), then score (highest first), then finding id (so ties
    are stable). Amounts in different
    currencies are compared as they are (minor units), which is good enough to order a
    review list but is not a conversion.

    Args:
        *frames: Findings frames (rules, Isolation Forest, ...).
        drop_covered: Drop ``isolation_forest`` findings on objects that a rule already
            flagged: the rule's exact explanation says more than a score.

    Returns:
        One findings frame with one row per distinct ``finding_id`` (the first seen
        wins), sorted as above.
    """
    parts = [as_findings(f) for f in frames if f is not None and not f.empty]
    if not parts:
        return empty_findings()
    allf = pd.concat(parts, ignore_index=True).drop_duplicates("finding_id", keep="first")
    if drop_covered:
        is_model = allf["rule"] == "isolation_forest"
        covered = set(
            zip(allf.loc[~is_model, "object_type"], allf.loc[~is_model, "object_id"], strict=True)
        )
        keys = list(zip(allf["object_type"], allf["object_id"], strict=True))
        allf = allf[~(is_model & pd.Series([k in covered for k in keys], index=allf.index))]
    order = allf.assign(
        _sev=allf["severity"].map(_SEVERITY_RANK),
        _model=(allf["rule"] == "isolation_forest").astype(int),
    )
    order = order.sort_values(
        ["_sev", "_model", "amount_at_stake", "score", "finding_id"],
        ascending=[True, True, False, False, True],
        kind="stable",
    )
    return as_findings(order.drop(columns=["_sev", "_model"]))


#: Our action word -> the approvals queue's ``action_type``.
APPROVAL_ACTION_TYPES: dict[str, str] = {
    "credit": "credit_note",
    "refund": "refund",
    "void": "void_invoice",
}

_RISK = {"critical": "high", "high": "high", "medium": "medium", "low": "low"}


def approval_actions(findings: pd.DataFrame) -> pd.DataFrame:
    """The findings whose suggested action moves money, as requests for the approvals queue.

    The columns match the keyword arguments of ``workbench.approvals.request_action``
    (``action_type``, ``subject_id``, ``account_id``, ``amount_minor``, ``currency``,
    ``risk``, ``state``, ``payload``), so each row can be passed on as it is with the
    caller's identity and policy. Nothing is queued here.

    Args:
        findings: A findings frame (:data:`FINDING_COLUMNS`).

    Returns:
        One row per finding with ``suggested_action`` in credit / refund / void and a
        positive ``amount_at_stake``: ``finding_id``, ``action`` (credit / refund / void),
        ``action_type`` (:data:`APPROVAL_ACTION_TYPES`), ``subject_id`` (the object's id),
        ``object_type``, ``account_id``, ``amount_minor``, ``currency``, ``risk``
        (low / medium / high), ``state`` (what the finding saw; a changed object makes the
        request stale) and ``payload`` (reason and provenance shown to approvers).
    """
    f = as_findings(findings)
    f = f[f["suggested_action"].isin(MONEY_ACTIONS) & (f["amount_at_stake"] > 0)].reset_index(
        drop=True
    )
    rows = []
    for r in f.to_dict("records"):
        rows.append(
            {
                "finding_id": r["finding_id"],
                "action": r["suggested_action"],
                "action_type": APPROVAL_ACTION_TYPES[r["suggested_action"]],
                "subject_id": r["object_id"],
                "object_type": r["object_type"],
                "account_id": r["account_id"],
                "amount_minor": int(r["amount_at_stake"]),
                "currency": r["currency"],
                "risk": _RISK[r["severity"]],
                "state": {
                    "object_type": r["object_type"],
                    "object_id": r["object_id"],
                    "rule": r["rule"],
                    "amount_at_stake": int(r["amount_at_stake"]),
                    "currency": r["currency"],
                },
                "payload": {
                    "reason": r["explanation"],
                    "finding_id": r["finding_id"],
                    "rule": r["rule"],
                    "anomaly_type": r["anomaly_type"],
                    "severity": r["severity"],
                    "detected_at": r["detected_at"].isoformat(),
                    "source": "anomalies",
                },
            }
        )
    columns = ["finding_id", "action", "action_type", "subject_id", "object_type", "account_id",
               "amount_minor", "currency", "risk", "state", "payload"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
