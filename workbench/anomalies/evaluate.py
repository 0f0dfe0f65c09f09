"""Scoring findings against labelled anomalies (the simulator's ground truth).

A finding matches a label when both name the same object (``object_type``,
``object_id``). Per anomaly type, a *typed* match also needs the same
``anomaly_type``; *any* match does not (the Isolation Forest's findings have their own
type, ``unusual_invoice``, so only *any* matches apply to them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LABEL_COLUMNS: tuple[str, ...] = ("object_id", "object_type", "anomaly_type")


@dataclass(frozen=True)
class Evaluation:
    """Quality of one findings list against labels.

    Attributes:
        per_type: One row per anomaly type seen in labels or findings: ``anomaly_type``,
            ``labelled`` (distinct labelled objects), ``flagged`` (distinct objects with a
            finding of that type), ``true_positives`` (flagged and labelled with that type),
            ``precision``, ``recall``, ``f1``, ``precision_any`` (share of the flagged objects
            that carry any label), ``recall_any`` (share of the labelled objects that got any
            finding). Undefined ratios are NaN.
        at_k: ``k``, ``hits``, ``precision_at_k`` over the ranked list, counting each object
            once (its first, highest-ranked finding).
        overall: ``findings``, ``objects_flagged``, ``labelled``, ``true_positives``,
            ``precision`` and ``recall`` over all objects, any type.
    """

    per_type: pd.DataFrame
    at_k: pd.DataFrame
    overall: dict[str, float]


def load_labels(path: str | Path) -> pd.DataFrame:
    """Read labelled anomalies: a simulator output folder, its ``truth`` folder, or the Parquet file.

    Args:
        path: ``<out>``, ``<out>/truth`` or ``<out>/truth/anomalies.parquet``.

    Returns:
        The labels with at least :data:`LABEL_COLUMNS`.
    """
    p = Path(path)
    for candidate in (p, p / "anomalies.parquet", p / "truth" / "anomalies.parquet"):
        if candidate.is_file():
            labels = pd.read_parquet(candidate)
            missing = set(LABEL_COLUMNS) - set(labels.columns)
            if missing:
                raise ValueError(f"{candidate} lacks columns {sorted(missing)}")
            return labels
    raise FileNotFoundError(f"no anomalies.parquet under {p}")


def _keys(frame: pd.DataFrame) -> pd.Series:
    return frame["object_type"].astype(str) + ":" + frame["object_id"].astype(str)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def evaluate(
    findings: pd.DataFrame, labels: pd.DataFrame, *, ks: Sequence[int] = (10, 25, 50, 100, 200, 500)
) -> Evaluation:
    """Per-type precision and recall, and precision@k of a ranked findings list.

    Args:
        findings: A findings frame, ranked (needs ``object_type``, ``object_id``,
            ``anomaly_type``; its row order is the review order).
        labels: Labelled anomalies (:data:`LABEL_COLUMNS`).
        ks: Cut-offs for precision@k; those beyond the number of flagged objects are skipped.

    Returns:
        An :class:`Evaluation`.
    """
    f = (
        findings.assign(_key=_keys(findings))
        if len(findings)
        else findings.assign(_key=pd.Series(dtype=str))
    )
    lab = (
        labels.assign(_key=_keys(labels))
        if len(labels)
        else labels.assign(_key=pd.Series(dtype=str))
    )
    labelled_any = set(lab["_key"])
    flagged_any = set(f["_key"])
    types = sorted(set(lab["anomaly_type"]) | set(f["anomaly_type"]))
    rows = []
    for t in types:
        lab_t = set(lab.loc[lab["anomaly_type"] == t, "_key"])
        flag_t = set(f.loc[f["anomaly_type"] == t, "_key"])
        tp = len(lab_t & flag_t)
        precision, recall = _ratio(tp, len(flag_t)), _ratio(tp, len(lab_t))
        f1 = (
            2 * precision * recall / (precision + recall)
            if not (np.isnan(precision) or np.isnan(recall)) and precision + recall > 0
            else float("nan")
        )
        rows.append(
            {
                "anomaly_type": t,
                "labelled": len(lab_t),
                "flagged": len(flag_t),
                "true_positives": tp,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "precision_any": _ratio(len(flag_t & labelled_any), len(flag_t)),
                "recall_any": _ratio(len(lab_t & flagged_any), len(lab_t)),
            }
        )
    per_type = pd.DataFrame(
        rows,
        columns=[
            "anomaly_type",
            "labelled",
            "flagged",
            "true_positives",
            "precision",
            "recall",
            "f1",
            "precision_any",
            "recall_any",
        ],
    )
    order = f["_key"].drop_duplicates().tolist()
    hits = np.cumsum([k in labelled_any for k in order]) if order else np.array([], dtype=int)
    at_k = pd.DataFrame(
        [
            {"k": k, "hits": int(hits[k - 1]), "precision_at_k": hits[k - 1] / k}
            for k in ks
            if 0 < k <= len(order)
        ],
        columns=["k", "hits", "precision_at_k"],
    )
    tp_all = len(flagged_any & labelled_any)
    overall = {
        "findings": len(f),
        "objects_flagged": len(flagged_any),
        "labelled": len(labelled_any),
        "true_positives": tp_all,
        "precision": _ratio(tp_all, len(flagged_any)),
        "recall": _ratio(tp_all, len(labelled_any)),
    }
    return Evaluation(per_type=per_type, at_k=at_k, overall=overall)


def lift_over_rules(
    rule_findings: pd.DataFrame,
    scores: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    budgets: Sequence[int] = (25, 50, 100, 200, 500),
) -> pd.DataFrame:
    """What the Isolation Forest adds to the rules for a fixed extra review budget.

    Reviewers first take every rule finding, then the ``budget`` highest-scored invoices
    that no rule flagged. Only invoice labels can be found this way.

    Args:
        rule_findings: Findings of the rules.
        scores: Detector scores (``invoice_id``, ``score``) of every invoice considered.
        labels: Labelled anomalies (:data:`LABEL_COLUMNS`).
        budgets: Extra invoices reviewed.

    Returns:
        One row per budget: ``budget``, ``rules_true_positives`` (labelled objects the rules
        found, any type), ``added_true_positives`` (labelled invoices among the extra
        reviews), ``extra_precision``, ``rules_recall`` and ``combined_recall`` (over all
        labelled objects), ``random_expected`` (labelled invoices a random pick of the same
        size from the unflagged invoices would find), ``lift_vs_random``, and
        ``detector_alone_recall_invoices`` (share of labelled invoices in the detector's
        own top ``budget``, with no rules).
    """
    lab_keys = set(_keys(labels)) if len(labels) else set()
    lab_invoices = (
        set(labels.loc[labels["object_type"] == "invoice", "object_id"]) if len(labels) else set()
    )
    rule_keys = set(_keys(rule_findings)) if len(rule_findings) else set()
    rule_invoices = (
        set(rule_findings.loc[rule_findings["object_type"] == "invoice", "object_id"])
        if len(rule_findings)
        else set()
    )
    rules_tp = len(rule_keys & lab_keys)
    ranked = scores.sort_values(["score", "invoice_id"], ascending=[False, True], kind="stable")
    candidates = ranked[~ranked["invoice_id"].isin(rule_invoices)]["invoice_id"].tolist()
    remaining = len(set(candidates) & lab_invoices)
    all_ranked = ranked["invoice_id"].tolist()
    rows = []
    for b in budgets:
        top = candidates[:b]
        added = sum(1 for i in top if i in lab_invoices)
        expected = len(top) * remaining / len(candidates) if candidates else 0.0
        alone = sum(1 for i in all_ranked[:b] if i in lab_invoices)
        rows.append(
            {
                "budget": b,
                "rules_true_positives": rules_tp,
                "added_true_positives": added,
                "extra_precision": _ratio(added, len(top)),
                "rules_recall": _ratio(rules_tp, len(lab_keys)),
                "combined_recall": _ratio(rules_tp + added, len(lab_keys)),
                "random_expected": expected,
                "lift_vs_random": _ratio(added, expected) if expected else float("nan"),
                "detector_alone_recall_invoices": _ratio(alone, len(lab_invoices)),
            }
        )
    return pd.DataFrame(rows)
