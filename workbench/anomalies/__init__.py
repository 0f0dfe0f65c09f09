"""Invoice and revenue anomaly detection: exact rules, a learned detector, one ranked list.

* :mod:`~workbench.anomalies.rules` — billing rules as SQL over named relations
  (duplicate invoices and subscriptions, totals vs lines, amounts vs price, refunds vs
  payments, service periods, currencies), each with a plain-words explanation.
* :mod:`~workbench.anomalies.detector` — an Isolation Forest on invoice features with
  per-invoice explanations (robust z-scores).
* :mod:`~workbench.anomalies.realtime` — the same rules on one invoice as it arrives.
* :mod:`~workbench.anomalies.findings` — the findings frame, ranking, approval actions.
* :mod:`~workbench.anomalies.evaluate` — precision / recall per type, precision@k, lift.
* :mod:`~workbench.anomalies.charts` — Altair charts for the notebook.

Typical use::

    result = detect(con, start="2024-01-01", end="2024-07-01", contamination=0.01)
    result.findings            # ranked: rules first by severity and money, then the model
    approval_actions(result.findings)   # the money-moving ones, for the approvals queue
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workbench.anomalies.detector import (
    FEATURE_NAMES,
    InvoiceAnomalyDetector,
    detect_unusual_invoices,
    invoice_features,
)
from workbench.anomalies.evaluate import Evaluation, evaluate, lift_over_rules, load_labels
from workbench.anomalies.findings import (
    FINDING_COLUMNS,
    approval_actions,
    empty_findings,
    rank_findings,
    utc_now,
)
from workbench.anomalies.realtime import check, check_invoice, check_invoice_payload
from workbench.anomalies.rules import RULES, RuleConfig, detect_rules, run_rules

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_NAMES",
    "FINDING_COLUMNS",
    "RULES",
    "Detection",
    "Evaluation",
    "InvoiceAnomalyDetector",
    "RuleConfig",
    "approval_actions",
    "check",
    "check_invoice",
    "check_invoice_payload",
    "detect",
    "detect_rules",
    "detect_unusual_invoices",
    "evaluate",
    "invoice_features",
    "lift_over_rules",
    "load_labels",
    "rank_findings",
    "run_rules",
]


@dataclass(frozen=True)
class Detection:
    """Everything one detection run produced.

    Attributes:
        findings: The ranked list (rules and model; model findings on objects a rule
            already flagged are dropped).
        rule_findings: The rules' findings alone.
        model_findings: The Isolation Forest's findings alone (all flagged invoices).
        scores: Every invoice of the window with its model features, ``score`` and
            ``is_outlier`` (empty without the detector); ``detector.explain(scores)``
            explains any of them.
        detector: The fitted detector (None when not used or too few invoices).
    """

    findings: pd.DataFrame
    rule_findings: pd.DataFrame
    model_findings: pd.DataFrame
    scores: pd.DataFrame
    detector: InvoiceAnomalyDetector | None


def detect(
    con: Any,
    *,
    start: Any = None,
    end: Any = None,
    config: RuleConfig | None = None,
    contamination: float = 0.01,
    use_detector: bool = True,
    max_samples: int = 4096,
    random_state: int = 0,
    detected_at: pd.Timestamp | None = None,
) -> Detection:
    """Run every rule and the Isolation Forest on the objects created in ``[start, end)``.

    Args:
        con: A DuckDB connection with the canonical tables.
        start: Start of the window (None: from the beginning).
        end: End of the window, exclusive (None: everything).
        config: Rule thresholds.
        contamination: Share of invoices the detector flags.
        use_detector: Run the Isolation Forest as well as the rules.
        max_samples: Rows per tree of the forest.
        random_state: Seed of the forest.
        detected_at: Stamp for ``detected_at`` (default: now).

    Returns:
        A :class:`Detection`.
    """
    detected_at = detected_at if detected_at is not None else utc_now()
    rule_findings = detect_rules(con, start=start, end=end, config=config, detected_at=detected_at)
    model_findings, scores, detector = (
        empty_findings(),
        pd.DataFrame(columns=["invoice_id", "score"]),
        None,
    )
    if use_detector:
        try:
            model_findings, scores, detector = detect_unusual_invoices(
                con,
                start=start,
                end=end,
                contamination=contamination,
                max_samples=max_samples,
                random_state=random_state,
                detected_at=detected_at,
            )
        except ValueError as exc:  # fewer than two invoices
            log.warning("isolation forest skipped: %s", exc)
    return Detection(
        findings=rank_findings(rule_findings, model_findings),
        rule_findings=rule_findings,
        model_findings=model_findings,
        scores=scores,
        detector=detector,
    )
