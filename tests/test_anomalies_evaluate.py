"""Evaluation against labels, ranking, approval rows and the notebook's charts."""

from __future__ import annotations

import math
from pathlib import Path

import altair as alt
import pandas as pd
import pytest
from test_anomalies_helpers import NOW

from workbench.anomalies import charts
from workbench.anomalies.evaluate import evaluate, lift_over_rules, load_labels
from workbench.anomalies.findings import (
    FINDING_COLUMNS,
    approval_actions,
    as_findings,
    finding_id,
    rank_findings,
)


def fnd(
    object_id: str,
    anomaly_type: str,
    *,
    rule: str | None = None,
    object_type: str = "invoice",
    severity: str = "high",
    amount: int = 100,
    action: str = "refund",
    score: float = 1.0,
) -> dict:
    rule = rule or anomaly_type
    return {
        "finding_id": finding_id(rule, object_type, object_id),
        "rule": rule,
        "anomaly_type": anomaly_type,
        "object_type": object_type,
        "object_id": object_id,
        "account_id": "cus_1",
        "severity": severity,
        "amount_at_stake": amount,
        "currency": "usd",
        "explanation": f"{object_id} is off",
        "suggested_action": action,
        "detected_at": NOW,
        "score": score,
    }


LABELS = pd.DataFrame(
    [
        ("in_1", "invoice", "duplicate_invoice"),
        ("in_2", "invoice", "duplicate_invoice"),
        ("in_3", "invoice", "wrong_amount"),
        ("sub_1", "subscription", "duplicate_subscription"),
        ("re_1", "refund", "refund_exceeds_payment"),
    ],
    columns=["object_id", "object_type", "anomaly_type"],
)


def test_per_type_precision_recall_and_precision_at_k() -> None:
    findings = pd.DataFrame(
        [
            fnd("in_1", "duplicate_invoice"),
            fnd("in_9", "duplicate_invoice"),  # false positive
            fnd("in_3", "line_total_mismatch"),  # right object, wrong type
            fnd("sub_1", "duplicate_subscription", object_type="subscription"),
            fnd(
                "in_1", "unusual_invoice", rule="isolation_forest", severity="low", action="review"
            ),
            fnd(
                "in_8", "unusual_invoice", rule="isolation_forest", severity="low", action="review"
            ),
        ]
    )
    ev = evaluate(findings, LABELS, ks=(1, 2, 3, 4, 5, 10))
    t = ev.per_type.set_index("anomaly_type")
    assert t.loc["duplicate_invoice", ["labelled", "flagged", "true_positives"]].tolist() == [
        2,
        2,
        1,
    ]
    assert (
        t.loc["duplicate_invoice", "precision"] == 0.5
        and t.loc["duplicate_invoice", "recall"] == 0.5
    )
    assert t.loc["wrong_amount", "recall"] == 0.0 and t.loc["wrong_amount", "recall_any"] == 1.0
    assert math.isnan(t.loc["wrong_amount", "precision"])
    assert (
        t.loc["line_total_mismatch", "precision"] == 0.0
        and t.loc["line_total_mismatch", "precision_any"] == 1.0
    )
    assert t.loc["duplicate_subscription", "f1"] == 1.0
    assert t.loc["refund_exceeds_payment", "recall"] == 0.0
    assert t.loc["unusual_invoice", "precision_any"] == 0.5
    # objects in order: in_1 (hit), in_9, in_3 (hit), sub_1 (hit), in_8; in_1 counted once
    at = ev.at_k.set_index("k")
    assert at["hits"].tolist() == [1, 1, 2, 3, 3]
    assert at.loc[4, "precision_at_k"] == 0.75 and 10 not in at.index
    assert ev.overall == {
        "findings": 6,
        "objects_flagged": 5,
        "labelled": 5,
        "true_positives": 3,
        "precision": 0.6,
        "recall": 0.6,
    }


def test_evaluate_handles_no_findings() -> None:
    ev = evaluate(as_findings(pd.DataFrame(columns=FINDING_COLUMNS)), LABELS)
    assert ev.per_type["recall"].eq(0).all() and ev.at_k.empty and ev.overall["true_positives"] == 0


def test_lift_counts_only_what_the_rules_missed() -> None:
    rules = pd.DataFrame(
        [
            fnd("in_1", "duplicate_invoice"),
            fnd("re_1", "refund_exceeds_payment", object_type="refund"),
        ]
    )
    scores = pd.DataFrame(
        {
            "invoice_id": ["in_1", "in_3", "in_5", "in_2", "in_6", "in_7"],
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        }
    )
    lift = lift_over_rules(rules, scores, LABELS, budgets=(1, 2, 3)).set_index("budget")
    assert lift["rules_true_positives"].tolist() == [2, 2, 2]
    assert lift["added_true_positives"].tolist() == [
        1,
        1,
        2,
    ]  # in_3, then in_5 (no label), then in_2
    assert lift.loc[3, "combined_recall"] == pytest.approx(4 / 5)
    assert lift.loc[1, "random_expected"] == pytest.approx(
        1 * 2 / 5
    )  # 2 labelled among 5 unflagged invoices
    assert lift.loc[1, "lift_vs_random"] == pytest.approx(2.5)
    assert lift.loc[1, "detector_alone_recall_invoices"] == pytest.approx(1 / 3)


def test_load_labels_finds_the_truth_file(tmp_path: Path) -> None:
    (tmp_path / "truth").mkdir()
    LABELS.to_parquet(tmp_path / "truth" / "anomalies.parquet")
    for where in (tmp_path, tmp_path / "truth", tmp_path / "truth" / "anomalies.parquet"):
        pd.testing.assert_frame_equal(load_labels(where), LABELS)
    with pytest.raises(FileNotFoundError):
        load_labels(tmp_path / "nowhere")


def test_ranking_and_approval_rows() -> None:
    model = fnd(
        "in_1",
        "unusual_invoice",
        rule="isolation_forest",
        severity="medium",
        action="review",
        amount=10_000,
        score=0.8,
    )
    ranked = rank_findings(
        pd.DataFrame(
            [
                fnd("in_2", "wrong_amount", severity="high", amount=50),
                fnd("in_3", "duplicate_invoice", severity="critical", amount=20, action="void"),
            ]
        ),
        pd.DataFrame(
            [
                fnd("in_1", "duplicate_invoice", severity="high", amount=70, action="credit"),
                model,
                fnd(
                    "in_4",
                    "unusual_invoice",
                    rule="isolation_forest",
                    severity="low",
                    action="review",
                ),
            ]
        ),
    )
    assert list(ranked["object_id"]) == [
        "in_3",
        "in_1",
        "in_2",
        "in_4",
    ]  # in_1's model finding dropped
    assert len(rank_findings(pd.DataFrame([model]), pd.DataFrame([model]))) == 1
    actions = approval_actions(ranked)
    assert list(actions["subject_id"]) == ["in_3", "in_1", "in_2"]
    assert list(actions["action_type"]) == ["void_invoice", "credit_note", "refund"]
    assert list(actions["risk"]) == ["high", "high", "high"] and actions[
        "amount_minor"
    ].tolist() == [20, 70, 50]
    assert (
        actions.iloc[0]["payload"]["reason"] == "in_3 is off"
        and actions.iloc[0]["state"]["amount_at_stake"] == 20
    )
    with pytest.raises(ValueError):
        as_findings(pd.DataFrame([fnd("in_5", "x", severity="urgent")]))


def test_charts_build_from_frames() -> None:
    findings = as_findings(
        pd.DataFrame(
            [fnd("in_1", "duplicate_invoice"), fnd("in_2", "wrong_amount", severity="medium")]
        )
    )
    ev = evaluate(findings, LABELS)
    explanation = pd.DataFrame(
        {
            "invoice_id": ["in_1"] * 2,
            "rank": [1, 2],
            "feature": ["a", "b"],
            "value": [3.0, 0.0],
            "typical": [1.0, 1.0],
            "z": [5.0, -2.5],
            "text": ["x", "y"],
        }
    )
    lift = lift_over_rules(
        findings, pd.DataFrame({"invoice_id": ["in_3"], "score": [0.5]}), LABELS, budgets=(1,)
    )
    built = [
        charts.findings_by_type_chart(findings),
        charts.amount_at_stake_chart(findings),
        charts.score_histogram(pd.DataFrame({"score": [0.3, 0.4, 0.8]}), threshold=0.6),
        charts.explanation_chart(explanation, "in_1"),
        charts.evaluation_chart(ev.per_type),
        charts.precision_at_k_chart(ev.at_k),
        charts.lift_chart(lift),
    ]
    for chart in built:
        assert isinstance(chart, alt.TopLevelMixin)
        spec = chart.to_dict()
        assert "$schema" in spec
    data = built[1].to_dict()["datasets"]
    assert sorted(v["amount"] for rows in data.values() for v in rows) == [
        1.0,
        1.0,
    ]  # 100 minor units each
    assert charts.findings_by_type_chart(
        as_findings(pd.DataFrame(columns=FINDING_COLUMNS))
    ).to_dict()
