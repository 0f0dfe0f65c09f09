"""Acting on degradation: automatic rollback, pausing automation, self-healing.

- :func:`auto_rollback`: when a rule marked ``rollback: true`` fires for a champion model,
  move its ``champion`` alias back to the previous version
  (:func:`workbench.models.registry.rollback_champion`), pause automation of the action
  types that depend on the model (they fall back to ``insight``), raise the alert, and
  write all of it to the audit log. One automatic rollback per incident: while any of the
  model's rollback alerts stays live (open or acknowledged), later runs only raise or update
  alerts, whichever rule breaches (a person decides what happens next).
- :func:`heal_stale_features`: re-materialize the online store when its newest values lag
  the warehouse (safe: the values are rebuilt from the warehouse by the offline builder).
- :func:`schema_problems` / :func:`guard_schema`: compare the warehouse with the
  ingestion schema (:data:`workbench.schema.TABLES`) and the serving feature files with
  the declared features; on a difference, pause the affected automation and steps with a
  ``schema_change`` alert instead of computing wrong numbers.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from workbench import audit
from workbench.approvals import open_store, pause_automation
from workbench.config import Settings
from workbench.monitoring import alerts as al

log = logging.getLogger(__name__)

#: model name pattern -> action types whose automated decisions use that model
MODEL_ACTIONS: dict[str, tuple[str, ...]] = {
    "churn_*": ("retention_offer",),
    "retention_uplift*": ("retention_offer",),
    "recovery_*": ("retry_payment", "escalate_collections", "write_off"),
}

#: canonical table -> pipeline steps that read it
TABLE_STEPS: dict[str, tuple[str, ...]] = {
    "invoices": ("02_revenue", "06_recovery", "07_dunning", "08_anomalies"),
    "invoice_lines": ("02_revenue", "08_anomalies"),
    "payment_attempts": ("03_features", "06_recovery", "07_dunning"),
    "refunds": ("02_revenue", "08_anomalies"),
    "subscriptions": ("02_revenue", "03_features", "05_churn"),
    "subscription_items": ("02_revenue", "03_features"),
    "subscription_history": ("02_revenue", "03_features", "04_forecast", "05_churn"),
    "prices": ("02_revenue", "03_features"),
    "accounts": ("02_revenue", "03_features", "05_churn", "06_recovery", "07_dunning"),
    "usage": ("03_features", "05_churn"),
    "crm_signals": ("03_features", "05_churn"),
    "support_tickets": ("03_features", "05_churn"),
    "fx_rates": ("02_revenue", "04_forecast", "07_dunning"),
    "features": ("03_features", "05_churn", "06_recovery", "07_dunning"),
}
#: pipeline step -> action types it feeds
STEP_ACTIONS: dict[str, tuple[str, ...]] = {
    "05_churn": ("retention_offer",),
    "06_recovery": ("retry_payment", "escalate_collections", "write_off"),
    "07_dunning": ("retry_payment", "retention_offer", "escalate_collections", "write_off"),
    "08_anomalies": ("credit_note", "refund", "void_invoice"),
}


def dependent_actions(model: str) -> tuple[str, ...]:
    """Action types whose automated decisions depend on ``model`` (may be empty)."""
    out: list[str] = []
    for pattern, actions in MODEL_ACTIONS.items():
        if fnmatch.fnmatch(model, pattern):
            out.extend(a for a in actions if a not in out)
    return tuple(out)


# --------------------------------------------------------------------------- rollback


@dataclass
class RollbackResult:
    """What :func:`auto_rollback` did.

    ``status``: ``healthy`` (no rollback rule breached), ``rolled_back``, ``already_handled``
    (the alert was already live: no second rollback), ``no_champion``, ``no_previous`` (no
    earlier champion: automation paused, alias left), or ``failed``.
    """

    model: str
    status: str
    breached: list[str] = field(default_factory=list)
    from_version: str | None = None
    to_version: str | None = None
    paused: list[str] = field(default_factory=list)
    alerts: list[al.Alert] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for snapshots and logs."""
        return {
            "model": self.model, "status": self.status, "breached": ",".join(self.breached),
            "from_version": self.from_version, "to_version": self.to_version,
            "paused": ",".join(self.paused), "message": self.message,
        }  # fmt: skip


def _pause(settings: Settings, actions: tuple[str, ...], reason: str, now) -> list[str]:  # noqa: ANN001
    done = []
    for action in actions:
        outcome = pause_automation(
            settings, who=al.MONITOR, action_type=action, reason=reason, now=now
        )
        if outcome.ok:
            done.append(action)
        else:
            log.warning("could not pause %s: %s", action, outcome.message)
    return done


def rollback_target(model: str, *, settings: Settings) -> str | None:
    """The newest earlier champion that was never rolled back from (None if there is none);
    see :func:`workbench.models.registry.rollback_target`."""
    from workbench.models import registry

    return registry.rollback_target(model, settings=settings)


def auto_rollback(
    settings: Settings,
    model: str,
    metrics: Mapping[str, float | None],
    *,
    rules: Mapping[str, al.AlertRule] | None = None,
    run_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    now: pd.Timestamp | None = None,
) -> RollbackResult:
    """Roll ``model``'s champion back when a ``rollback: true`` rule breaches.

    Args:
        settings: Registry and approvals store.
        model: Registered model name (e.g. ``churn_90d``); alerts use it as their subject.
        metrics: The champion's monitored metrics (e.g. ``champion_ece``, ``prediction_drift``).
        rules: Alert rules (default: :func:`workbench.monitoring.alerts.load_rules`).

    Returns:
        A :class:`RollbackResult`; the alert, the alias move and the pauses are audited.
    """
    from workbench.models import registry

    rules = rules if rules is not None else al.load_rules(settings=settings)
    watch = {n: r for n, r in rules.items() if r.rollback}
    breached = [r for r in watch.values() if r.breached(metrics.get(r.metric))]
    result = RollbackResult(model=model, status="healthy", breached=[r.name for r in breached])
    if not breached:
        return result
    champion = registry.alias_version(model, "champion", settings=settings)
    result.from_version = champion
    extra = {**dict(details or {}), "champion": champion}
    result.alerts = [
        al.raise_alert(
            settings,
            r,
            value=float(metrics[r.metric]),
            subject=model,
            details=extra,
            run_id=run_id,
            now=now,
        )  # fmt: skip
        for r in breached
    ]
    if champion is None:
        result.status = "no_champion"
        result.message = f"{model} has no champion: nothing to roll back (alert raised)"
        return result
    raised = {a.alert_id for a in result.alerts if a.new}
    live = al.list_alerts(settings, status="live", limit=None)
    earlier = live[
        live["subject"].eq(model) & live["rule"].isin(watch) & ~live["alert_id"].isin(raised)
    ]
    if not earlier.empty:
        # one incident until a person resolves its alert, whichever rule breaches next
        result.status = "already_handled"
        result.message = (
            f"{model}: incident already live ({', '.join(sorted(set(earlier['rule'])))}, "
            f"seen {int(earlier['count'].max())} times); no second automatic rollback: "
            "acknowledge/resolve it and decide"
        )
        return result
    reason = "; ".join(a.message for a in result.alerts)
    result.paused = _pause(settings, dependent_actions(model), f"monitoring: {model} degraded", now)
    try:
        target = rollback_target(model, settings=settings)
        if target is None:
            raise registry.RegistryError(
                f"{model}: no earlier champion that was not itself rolled back"
            )
        moved = registry.rollback_champion(
            model,
            who=al.MONITOR.user,
            reason=reason,
            to_version=target,
            via="monitoring",
            settings=settings,
        )
    except registry.RegistryError as exc:
        result.status = "no_previous"
        result.message = f"{exc}; automation paused for {', '.join(result.paused) or 'nothing'}"
    else:
        result.status, result.to_version = "rolled_back", str(moved["version"])
        result.message = f"{model}: champion v{champion} -> v{result.to_version}"
    with open_store(settings).transaction() as tx:
        audit.append(tx, actor=al.MONITOR.user, event=f"model.auto_{result.status}",
                     item_id=result.alerts[0].alert_id, at=now,
                     details={**result.to_dict(), "run_id": run_id})  # fmt: skip
    log.warning("automatic rollback: %s", result.message)
    return result


# --------------------------------------------------------------------------- features


@dataclass
class HealResult:
    """What :func:`heal_stale_features` did: ``status`` ``fresh`` | ``rematerialized`` |
    ``failed``, the lag before, and rows published per entity."""

    status: str
    lag_hours: float | None
    published: dict[str, int] = field(default_factory=dict)
    message: str = ""


def heal_stale_features(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    freshness: pd.DataFrame,
    max_lag_hours: float = 48.0,
    now: pd.Timestamp | None = None,
) -> HealResult:
    """Re-materialize the online store (Feast) when it lags the warehouse too much, or when
    declared features are missing from it (declared after the last publish).

    Args:
        con: Warehouse connection (read only is enough).
        freshness: :func:`workbench.monitoring.business.feature_freshness`.
        max_lag_hours: Lag of the online store's newest values behind the warehouse's
            newest event that is still fine.
    """
    from workbench.features import serving
    from workbench.monitoring.business import newest_event_time

    online = freshness[freshness["store"] == "online"]
    lag = online["lag_hours"]
    worst = (
        float("inf") if online["newest"].isna().any() else float(lag.max()) if len(lag) else None
    )
    missing = unpublished_features(settings)
    if (worst is None or worst <= max_lag_hours) and not missing:
        return HealResult("fresh", worst)
    horizon = newest_event_time(con)
    if horizon is None:
        return HealResult("failed", worst, message="the warehouse has no events to publish from")
    try:
        counts = serving.publish_online(con, as_of=horizon, settings=settings)
    except Exception as exc:  # noqa: BLE001 - report, alert, keep monitoring
        result = HealResult("failed", worst, message=f"re-materialization failed: {exc}")
    else:
        why = f"{len(missing)} declared feature(s) unpublished" if missing else f"lag {worst:.0f} h"
        result = HealResult("rematerialized", worst, counts,
                            f"online store republished as of {horizon} ({why})")  # fmt: skip
    with open_store(settings).transaction() as tx:
        audit.append(tx, actor=al.MONITOR.user, event=f"features.{result.status}", at=now,
                     details={"lag_hours": worst, "max_lag_hours": max_lag_hours,
                              "published": result.published, "message": result.message})  # fmt: skip
    return result


# --------------------------------------------------------------------------- schema


def _norm(type_name: str) -> str:
    t = re.sub(r"\s+", "", str(type_name).upper())
    return {"TIMESTAMPTZ": "TIMESTAMPWITHTIMEZONE", "INT": "INTEGER", "INT64": "BIGINT"}.get(t, t)


SCHEMA_COLUMNS = ["table", "column", "expected", "actual", "problem"]


def schema_problems(
    con: duckdb.DuckDBPyConnection, *, settings: Settings | None = None
) -> pd.DataFrame:
    """Differences between the warehouse and the ingestion schema, and between the serving
    feature files and the declared features.

    Missing tables are not problems (a source may not be loaded yet); missing columns and
    changed types are.

    Returns:
        :data:`SCHEMA_COLUMNS` (``problem``: ``missing column`` or ``type changed``).
    """
    from workbench.engines import column_types, stored_type
    from workbench.schema import TABLES

    have = column_types(con)  # on Spark: Spark's type names, compared with what each
    expected: dict[str, str] = {}  # declared type becomes there
    rows = []
    for name, table in TABLES.items():
        if name not in have:
            continue
        for col in table.columns:
            got = have[name].get(col.name)
            if col.type not in expected:
                expected[col.type] = stored_type(con, col.type)
            if got is None:
                rows.append((name, col.name, col.type, None, "missing column"))
            elif _norm(got) != _norm(expected[col.type]):
                rows.append((name, col.name, col.type, got, "type changed"))
    if settings is not None:
        rows.extend(_feature_file_problems(settings))
    return pd.DataFrame(rows, columns=SCHEMA_COLUMNS)


def unpublished_features(settings: Settings) -> list[str]:
    """Declared features missing from the serving files (declared after the last publish)."""
    import pyarrow.parquet as pq

    from workbench.features import serving
    from workbench.features.definitions import get_features

    repo = serving.feature_repo(settings)
    missing = []
    for entity in serving.ENTITIES:
        path = repo.parquet_dir / f"{entity}.parquet"
        if path.is_file():
            names = set(pq.read_schema(path).names)
            missing.extend(f.name for f in get_features(entity=entity) if f.name not in names)
    return missing


def _feature_file_problems(settings: Settings) -> list[tuple]:
    import pyarrow.parquet as pq

    from workbench.features import serving
    from workbench.features.definitions import get_features

    repo = serving.feature_repo(settings)
    kinds = {
        "int64": ("int",),
        "float64": ("double", "float"),
        "string": ("string", "large_string"),
    }
    rows = []
    for entity in serving.ENTITIES:
        path = repo.parquet_dir / f"{entity}.parquet"
        if not path.is_file():
            continue
        schema = pq.read_schema(path)
        for f in get_features(entity=entity):
            if f.name not in schema.names:
                continue  # declared after the last publish: stale, healed by re-publishing
            got = str(schema.field(f.name).type)
            if not got.startswith(kinds.get(f.dtype, (f.dtype,))):
                rows.append(("features", f.name, f.dtype, got, "type changed"))
    return rows


@dataclass
class SchemaGuard:
    """Result of :func:`guard_schema`: the problems, blocked steps, paused action types."""

    problems: pd.DataFrame
    blocked_steps: list[str]
    paused: list[str]
    alert: al.Alert | None = None

    @property
    def ok(self) -> bool:
        return self.problems.empty


def guard_schema(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    rules: Mapping[str, al.AlertRule] | None = None,
    run_id: str | None = None,
    now: pd.Timestamp | None = None,
) -> SchemaGuard:
    """Check the schema; on a change, pause the automation fed by the affected steps and
    raise the ``schema_changes`` alert (rule from configuration).

    ``blocked_steps`` names the pipeline steps that must not produce numbers until the
    source is fixed (re-ingest or backfill, then resume automation).
    """
    problems = schema_problems(con, settings=settings)
    if problems.empty:
        return SchemaGuard(problems, [], [])
    tables = sorted(set(problems["table"]))
    steps = sorted({s for t in tables for s in TABLE_STEPS.get(t, ())})
    actions = tuple(dict.fromkeys(a for s in steps for a in STEP_ACTIONS.get(s, ())))
    paused = _pause(settings, actions, f"monitoring: schema change in {', '.join(tables)}", now)
    rules = rules if rules is not None else al.load_rules(settings=settings)
    details = {
        "tables": tables,
        "blocked_steps": steps,
        "paused": paused,
        "problems": problems.head(50).to_dict("records"),
    }
    fired = al.check(settings, {"schema_changes": float(len(problems))}, rules,
                     subject=",".join(tables), details=details, run_id=run_id, now=now)  # fmt: skip
    return SchemaGuard(problems, steps, paused, fired[0] if fired else None)


def blocked_steps(settings: Settings) -> dict[str, str]:
    """Pipeline steps paused by a live (open or acknowledged) alert on ``schema_changes``.

    Returns:
        ``{step: message}``, the message naming the alert and what to do next. The runner
        refuses to run these steps until the alert is resolved.
    """
    import json

    live = al.list_alerts(settings, status="live", limit=None)
    live = live[live["metric"] == "schema_changes"]
    out: dict[str, str] = {}
    for row in live.itertuples():
        details = json.loads(row.details or "{}")
        tables = ", ".join(details.get("tables", [])) or row.subject
        for step in details.get("blocked_steps", []):
            out.setdefault(
                step,
                f"paused by alert {row.alert_id} (upstream schema change in {tables}): fix the "
                f"source and re-ingest (`workbench run 01_ingest`), then "
                f"`workbench alerts resolve {row.alert_id}` and run again",
            )
    return out
