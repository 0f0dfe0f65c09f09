"""Alerts: rules from configuration, stored with a status, optionally POSTed to a webhook.

Rules live in a YAML file (:func:`rules_file`: an explicit path, else
``$WORKBENCH_ALERTS_FILE``, else ``<data_dir>/alerts.yaml`` when it exists, else the
packaged ``workbench/monitoring/alerts.yaml``)::

    rules:
      mrr_forecast_gap:
        metric: mrr_forecast_gap
        comparison: ">"
        threshold: 0.05
        severity: critical        # info | warning | critical
        webhook: https://hooks.example.com/billing   # optional
        rollback: false           # optional: roll the subject's champion back when it fires

Alerts are rows of the ``alerts`` table in the approvals store (the same transactional
store and transactions as the action queue). One alert per rule and subject is live at a
time: firing again while it is ``open`` or ``acknowledged`` bumps ``count`` and
``last_seen`` instead of adding a row; after ``resolved`` a new alert opens. Every state
change is written to the hash-chained audit log in the same transaction.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from workbench import audit
from workbench.approvals import Identity, Role, StoreLike, open_store, system_identity
from workbench.config import Settings

log = logging.getLogger(__name__)

DEFAULT_RULES_FILE = Path(__file__).with_name("alerts.yaml")
SEVERITIES = ("info", "warning", "critical")
STATUSES = ("open", "acknowledged", "resolved")
LIVE = ("open", "acknowledged")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
MONITOR = system_identity("monitoring")
ALERT_COLUMNS = [
    "alert_id", "rule", "metric", "subject", "severity", "status", "value", "threshold",
    "comparison", "message", "details", "first_seen", "last_seen", "count", "run_id",
    "acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at", "webhook_url",
    "webhook_status", "updated_at",
]  # fmt: skip
_DDL = """CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    metric TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    value DOUBLE PRECISION,
    threshold DOUBLE PRECISION NOT NULL,
    comparison TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    count INTEGER NOT NULL,
    run_id TEXT,
    acknowledged_by TEXT,
    acknowledged_at TEXT,
    resolved_by TEXT,
    resolved_at TEXT,
    webhook_url TEXT,
    webhook_status TEXT,
    updated_at TEXT NOT NULL
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS alerts_live ON alerts (rule, subject, status)"
_READY: set[str] = set()
_READY_LOCK = threading.Lock()


class AlertRulesError(ValueError):
    """The alert rules file is malformed; the message names the file, the rule and the fix."""


class AlertError(RuntimeError):
    """An alert operation cannot be done (unknown alert, wrong status)."""


@dataclass(frozen=True)
class AlertRule:
    """One rule: the alert fires when ``metric <comparison> threshold``."""

    name: str
    metric: str
    comparison: str
    threshold: float
    severity: str = "warning"
    webhook: str | None = None
    rollback: bool = False
    description: str = ""

    def breached(self, value: float | None) -> bool:
        """True when ``value`` breaches the rule (a missing or NaN value never does)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return bool(COMPARISONS[self.comparison](float(value), self.threshold))

    def message(self, value: float, subject: str = "") -> str:
        """A one-line explanation for people."""
        where = f" for {subject}" if subject else ""
        text = f"{self.metric}{where} is {value:.4g} ({self.comparison} {self.threshold:g})"
        return f"{text}: {self.description}" if self.description else text


# --------------------------------------------------------------------------- rules


def rules_file(
    settings: Settings | None = None,
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Where the rules come from: ``path``, ``$WORKBENCH_ALERTS_FILE``,
    ``<data_dir>/alerts.yaml`` (if present), else the packaged default."""
    env = os.environ if environ is None else environ
    if path:
        return Path(path)
    if env.get("WORKBENCH_ALERTS_FILE"):
        return Path(env["WORKBENCH_ALERTS_FILE"])
    if settings is not None and (settings.data_dir / "alerts.yaml").is_file():
        return settings.data_dir / "alerts.yaml"
    return DEFAULT_RULES_FILE


_FIELDS = {"metric", "comparison", "threshold", "severity", "webhook", "rollback", "description"}


def _parse_rule(name: str, raw: Any, problems: list[str]) -> AlertRule | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{name}: expected a mapping of fields, got {type(raw).__name__}")
        return None
    before = len(problems)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        problems.append(f"{name}: unknown field(s) {', '.join(unknown)}; known: {sorted(_FIELDS)}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        problems.append(f"{name}: `metric` is required (the metric name to watch)")
    comparison = str(raw.get("comparison", ""))
    if comparison not in COMPARISONS:
        problems.append(f"{name}: comparison {comparison!r} must be one of {list(COMPARISONS)}")
    threshold = raw.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        problems.append(f"{name}: threshold {threshold!r} must be a number")
    severity = str(raw.get("severity", "warning"))
    if severity not in SEVERITIES:
        problems.append(f"{name}: severity {severity!r} must be one of {list(SEVERITIES)}")
    webhook = raw.get("webhook")
    if webhook is not None and not (
        isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
    ):
        problems.append(f"{name}: webhook {webhook!r} must be an http(s) URL")
    rollback = raw.get("rollback", False)
    if not isinstance(rollback, bool):
        problems.append(f"{name}: rollback must be true or false, not {rollback!r}")
    if len(problems) > before:
        return None
    return AlertRule(
        name=name,
        metric=str(metric),
        comparison=comparison,
        threshold=float(threshold),
        severity=severity,
        webhook=webhook,
        rollback=rollback,
        description=str(raw.get("description", "")),
    )


def parse_rules(data: Any, *, source: str = "<rules>") -> dict[str, AlertRule]:
    """Validate parsed YAML (``{"rules": {name: {...}}}``) into rules by name.

    Raises:
        AlertRulesError: Every problem found, each naming the rule and what to change.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), Mapping):
        raise AlertRulesError(f"{source}: expected a mapping with `rules: {{name: {{...}}}}`")
    problems: list[str] = []
    rules = {}
    for name, raw in data["rules"].items():
        rule = _parse_rule(str(name), raw, problems)
        if rule is not None:
            rules[rule.name] = rule
    if problems:
        raise AlertRulesError(f"{source}: " + "; ".join(problems))
    return rules


def load_rules(
    path: Path | str | None = None, *, settings: Settings | None = None
) -> dict[str, AlertRule]:
    """Read and validate the rules file (see :func:`rules_file`).

    Raises:
        AlertRulesError: Missing file, YAML errors, or invalid rules.
    """
    where = rules_file(settings, path)
    if not where.is_file():
        raise AlertRulesError(
            f"alert rules file {where} not found: create it or unset $WORKBENCH_ALERTS_FILE"
        )
    try:
        data = yaml.safe_load(where.read_text())
    except yaml.YAMLError as exc:
        raise AlertRulesError(f"{where}: cannot parse YAML: {exc}") from exc
    return parse_rules(data, source=str(where))


def with_thresholds(
    rules: Mapping[str, AlertRule], **thresholds: float | None
) -> dict[str, AlertRule]:
    """A copy of ``rules`` where every rule watching ``metric`` gets ``thresholds[metric]``
    (``None`` keeps the configured value), e.g. from notebook parameters."""
    from dataclasses import replace

    return {
        name: replace(rule, threshold=float(thresholds[rule.metric]))
        if thresholds.get(rule.metric) is not None
        else rule
        for name, rule in rules.items()
    }


def rules_for(rules: Mapping[str, AlertRule], metric: str) -> list[AlertRule]:
    """The rules watching ``metric``."""
    return [r for r in rules.values() if r.metric == metric]


# --------------------------------------------------------------------------- store


def _ready(store: StoreLike):  # noqa: ANN202 - ApprovalStore
    store = open_store(store)
    with _READY_LOCK:
        if store.url not in _READY:
            with store.transaction() as tx:
                tx.execute(_DDL)
                tx.execute(_INDEX)
            _READY.add(store.url)
    return store


@dataclass(frozen=True)
class Alert:
    """One stored alert (a row of ``alerts``), plus ``new``: opened by this call."""

    alert_id: str
    rule: str
    metric: str
    subject: str
    severity: str
    status: str
    value: float | None
    threshold: float
    comparison: str
    message: str
    details: dict[str, Any]
    first_seen: str
    last_seen: str
    count: int
    run_id: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None
    webhook_url: str | None = None
    webhook_status: str | None = None
    updated_at: str = ""
    new: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, new: bool = False) -> Alert:
        data = {k: row.get(k) for k in ALERT_COLUMNS}
        data["details"] = json.loads(data["details"] or "{}")
        data["count"] = int(data["count"])
        return cls(**data, new=new)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for webhooks and snapshots)."""
        return audit.jsonable(asdict(self))


def _get(tx: Any, alert_id: str) -> dict[str, Any] | None:
    return tx.fetchone("SELECT * FROM alerts WHERE alert_id = :id", {"id": alert_id})


def raise_alert(
    store: StoreLike,
    rule: AlertRule,
    *,
    value: float,
    subject: str = "",
    details: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    who: Identity = MONITOR,
    now: pd.Timestamp | None = None,
    post: bool = True,
    timeout: float = 5.0,
) -> Alert:
    """Open an alert for ``rule`` on ``subject``, or update the live one (count, last seen,
    value, details) if it is still open or acknowledged. A new alert is POSTed to the rule's
    webhook when it has one (and ``post``); the outcome is recorded on the alert.
    """
    store = _ready(store)
    at = audit.utc_text(now)
    body = audit.canonical_json(audit.jsonable(dict(details or {})))
    message = rule.message(value, subject)
    with store.transaction() as tx:
        live = tx.fetchone(
            "SELECT * FROM alerts WHERE rule = :rule AND subject = :subject "
            "AND status IN ('open', 'acknowledged') ORDER BY first_seen DESC LIMIT 1",
            {"rule": rule.name, "subject": subject},
        )
        if live is not None:
            alert_id, new = str(live["alert_id"]), False
            tx.execute(
                "UPDATE alerts SET value = :value, details = :details, message = :message, "
                "last_seen = :at, count = count + 1, run_id = :run_id, severity = :severity, "
                "updated_at = :at WHERE alert_id = :id",
                {"value": float(value), "details": body, "message": message, "at": at,
                 "run_id": run_id, "severity": rule.severity, "id": alert_id},
            )  # fmt: skip
            event = "alert.repeated"
        else:
            alert_id, new = uuid.uuid4().hex, True
            tx.execute(
                "INSERT INTO alerts (alert_id, rule, metric, subject, severity, status, value, "
                "threshold, comparison, message, details, first_seen, last_seen, count, run_id, "
                "webhook_url, updated_at) VALUES (:id, :rule, :metric, :subject, :severity, "
                "'open', :value, :threshold, :comparison, :message, :details, :at, :at, 1, "
                ":run_id, :webhook, :at)",
                {"id": alert_id, "rule": rule.name, "metric": rule.metric, "subject": subject,
                 "severity": rule.severity, "value": float(value), "threshold": rule.threshold,
                 "comparison": rule.comparison, "message": message, "details": body, "at": at,
                 "run_id": run_id, "webhook": rule.webhook},
            )  # fmt: skip
            event = "alert.opened"
        audit.append(tx, actor=who.user, event=event, item_id=alert_id, at=now,
                     details={"rule": rule.name, "subject": subject, "value": float(value),
                              "severity": rule.severity, "run_id": run_id})  # fmt: skip
        row = _get(tx, alert_id)
    alert = Alert.from_row(row, new=new)
    if new and post and rule.webhook:
        alert = _deliver(store, alert, rule.webhook, timeout=timeout, now=now)
    return alert


def check(
    store: StoreLike,
    metrics: Mapping[str, float | None],
    rules: Mapping[str, AlertRule],
    *,
    subject: str = "",
    details: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    now: pd.Timestamp | None = None,
    post: bool = True,
) -> list[Alert]:
    """Evaluate every rule whose metric is in ``metrics``; raise an alert for each breach.

    Returns:
        The alerts raised or updated (empty when nothing breached).
    """
    fired = []
    for rule in rules.values():
        if rule.metric not in metrics:
            continue
        value = metrics[rule.metric]
        if rule.breached(value):
            extra = {**dict(details or {}), "metric": rule.metric, "value": value}
            fired.append(
                raise_alert(
                    store,
                    rule,
                    value=float(value),
                    subject=subject,
                    details=extra,
                    run_id=run_id,
                    now=now,
                    post=post,
                )  # fmt: skip
            )
    return fired


def post_webhook(url: str, payload: Mapping[str, Any], *, timeout: float = 5.0) -> str:
    """POST ``payload`` as JSON; returns ``"ok <status>"`` or ``"failed: <reason>"`` (never
    raises: an unreachable webhook must not stop monitoring)."""
    data = json.dumps(audit.jsonable(dict(payload))).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            return f"ok {response.status}"
    except urllib.error.HTTPError as exc:
        return f"failed: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"failed: {getattr(exc, 'reason', exc)}"


def _deliver(
    store: StoreLike, alert: Alert, url: str, *, timeout: float, now: pd.Timestamp | None
) -> Alert:
    status = post_webhook(
        url, {"type": "workbench.alert", "alert": alert.to_dict()}, timeout=timeout
    )
    if status.startswith("failed"):
        log.warning("alert %s: webhook %s %s", alert.alert_id, url, status)
    with open_store(store).transaction() as tx:
        tx.execute(
            "UPDATE alerts SET webhook_status = :status WHERE alert_id = :id",
            {"status": status, "id": alert.alert_id},
        )
        event = "alert.webhook_sent" if status.startswith("ok") else "alert.webhook_failed"
        audit.append(tx, actor=MONITOR.user, event=event, item_id=alert.alert_id, at=now,
                     details={"url": url, "status": status})  # fmt: skip
        row = _get(tx, alert.alert_id)
    return Alert.from_row(row, new=alert.new)


def _transition(
    store: StoreLike,
    alert_id: str,
    *,
    who: Identity,
    to: str,
    allowed_from: Iterable[str],
    min_role: Role,
    comment: str,
    now: pd.Timestamp | None,
) -> Alert:
    store = _ready(store)
    at = audit.utc_text(now)
    verb = "acknowledge" if to == "acknowledged" else "resolve"
    with store.transaction() as tx:
        row = _get(tx, alert_id)
        if row is None:
            raise AlertError(f"no alert {alert_id!r}: see `workbench alerts list`")
        if who.role < min_role and not who.system:
            audit.append(tx, actor=who.user, event="alert.denied", item_id=alert_id, at=now,
                         details={"attempted": verb, "role": who.role.label,
                                  "needed": min_role.label})  # fmt: skip
            denied = PermissionError(
                f"{who.user} ({who.role.label}) cannot {verb} alerts: {min_role.label} or above"
            )
        else:
            denied = None
            if row["status"] not in allowed_from:
                raise AlertError(f"alert {alert_id} is {row['status']}; cannot {verb} it")
            who_col = "acknowledged" if to == "acknowledged" else "resolved"
            tx.execute(
                f"UPDATE alerts SET status = :to, {who_col}_by = :who, {who_col}_at = :at, "
                "updated_at = :at WHERE alert_id = :id",
                {"to": to, "who": who.user, "at": at, "id": alert_id},
            )
            audit.append(tx, actor=who.user, event=f"alert.{to}", item_id=alert_id, at=now,
                         details={"rule": row["rule"], "subject": row["subject"],
                                  "from": row["status"], "comment": comment})  # fmt: skip
            row = _get(tx, alert_id)
    if denied is not None:  # raised after the denial is committed to the audit log
        raise denied
    return Alert.from_row(row)


def acknowledge(
    store: StoreLike, alert_id: str, *, who: Identity, comment: str = "",
    now: pd.Timestamp | None = None,
) -> Alert:  # fmt: skip
    """Mark an open alert as seen and being handled (analysts and above).

    Raises:
        PermissionError: The role is too low (the attempt is audited).
        AlertError: No such alert, or it is not open.
    """
    return _transition(store, alert_id, who=who, to="acknowledged", allowed_from=("open",),
                       min_role=Role.ANALYST, comment=comment, now=now)  # fmt: skip


def resolve(
    store: StoreLike, alert_id: str, *, who: Identity, comment: str = "",
    now: pd.Timestamp | None = None,
) -> Alert:  # fmt: skip
    """Close an open or acknowledged alert (approvers and above, or monitoring itself).

    Raises:
        PermissionError: The role is too low (the attempt is audited).
        AlertError: No such alert, or it is already resolved.
    """
    return _transition(store, alert_id, who=who, to="resolved", allowed_from=LIVE,
                       min_role=Role.APPROVER, comment=comment, now=now)  # fmt: skip


def get_alert(store: StoreLike, alert_id: str) -> Alert | None:
    """One alert by id, or None."""
    with _ready(store).transaction(write=False) as tx:
        row = _get(tx, alert_id)
    return None if row is None else Alert.from_row(row)


def list_alerts(
    store: StoreLike,
    *,
    status: str | Iterable[str] | None = None,
    rule: str | None = None,
    limit: int | None = 500,
) -> pd.DataFrame:
    """Alerts, most recently seen first, as a frame with :data:`ALERT_COLUMNS`.

    Args:
        status: One status, several, or None for all (``"live"`` = open or acknowledged).
        rule: Only this rule.
    """
    statuses = (
        list(LIVE)
        if status == "live"
        else [status]
        if isinstance(status, str)
        else list(status or [])
    )
    bad = sorted(set(statuses) - set(STATUSES))
    if bad:
        raise ValueError(f"unknown alert status {bad}; use {', '.join(STATUSES)} or live")
    where, params = [], {}
    if statuses:
        names = [f":s{i}" for i in range(len(statuses))]
        where.append(f"status IN ({', '.join(names)})")
        params.update({f"s{i}": s for i, s in enumerate(statuses)})
    if rule:
        where.append("rule = :rule")
        params["rule"] = rule
    sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY last_seen DESC, alert_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with _ready(store).transaction(write=False) as tx:
        rows = tx.fetchall(sql, params)
    return pd.DataFrame(rows, columns=ALERT_COLUMNS)
