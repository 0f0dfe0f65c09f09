"""Send the anomaly findings that move money (credit, refund, void) to the approvals queue.

Requests are made by the system identity ``anomaly-detector``, so any approver (admins
included) can decide them; the queue is idempotent, so re-running detection on the same
findings queues nothing new.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from workbench.anomalies.findings import approval_actions
from workbench.config import Settings, load_settings


def queue_findings(findings: pd.DataFrame, *, settings: Settings | None = None) -> dict[str, int]:
    """Request an approval for every finding whose suggested action moves money.

    Args:
        findings: A findings frame (``detect(...).findings``).
        settings: Names the approvals store and the policy file.

    Returns:
        How many requests ended in each outcome code (``queued``, ``duplicate``, ...).
    """
    from workbench.approvals import open_store, request_action, system_identity
    from workbench.policy import load_policy

    settings = settings or load_settings()
    actions = approval_actions(findings)
    if actions.empty:
        return {}
    policy = load_policy(settings=settings)
    store = open_store(settings)
    who = system_identity("anomaly-detector")
    outcomes: Counter[str] = Counter()
    for row in actions.itertuples(index=False):
        same_currency = str(row.currency).lower() == settings.reporting_currency
        outcome = request_action(
            store,
            who=who,
            action_type=row.action_type,
            subject_id=row.subject_id,
            state=row.state,
            policy=policy,
            amount_minor=int(row.amount_minor),
            currency=row.currency,
            # Unknown in the reporting currency means a person must approve (policy rule).
            amount_reporting_minor=int(row.amount_minor) if same_currency else None,
            account_id=row.account_id,
            payload=row.payload,
            risk=row.risk,
        )
        outcomes[outcome.code] += 1
    return dict(outcomes)
