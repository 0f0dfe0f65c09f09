"""Money-moving anomaly findings reach the approvals queue, once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.anomalies.findings import FINDING_COLUMNS
from workbench.anomalies.queue import queue_findings
from workbench.approvals import open_store, queue_frame
from workbench.config import load_settings


def _finding(object_id: str, action: str, amount: int, currency: str = "usd") -> dict:
    row = dict.fromkeys(FINDING_COLUMNS)
    row.update(
        finding_id=f"f-{object_id}",
        rule="duplicate_invoice",
        anomaly_type="duplicate_invoice",
        object_type="invoice",
        object_id=object_id,
        account_id="cus_1",
        severity="high",
        amount_at_stake=amount,
        currency=currency,
        explanation=f"{object_id} bills the same period twice",
        suggested_action=action,
        detected_at=pd.Timestamp("2024-03-01", tz="UTC"),
        score=1.0,
    )
    return row


def test_money_findings_are_queued_once(tmp_path: Path) -> None:
    settings = load_settings(overrides={"data_dir": tmp_path / "data"})
    findings = pd.DataFrame(
        [
            _finding("in_1", "void", 5_000),
            _finding("in_2", "refund", 2_500, currency="eur"),
            _finding("in_3", "review", 9_999),  # no money moves: not queued
            _finding("in_4", "credit", 0),  # nothing at stake: not queued
        ]
    )
    assert queue_findings(findings, settings=settings) == {"queued": 2}
    assert queue_findings(findings, settings=settings) == {"duplicate": 2}
    queue = queue_frame(open_store(settings))
    assert sorted(queue["action_type"]) == ["refund", "void_invoice"]
    assert set(queue["status"]) == {"pending"}
