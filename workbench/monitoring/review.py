"""One monitoring run: schema guard, business metrics, drift, calibration, golden cohort,
alerts and automatic rollback. Used by ``notebooks/09_drift_review.ipynb`` and
``workbench monitor``.

:func:`run_monitoring` reads the warehouse (the champion model's features and predictions
in a reference and a current window), writes the golden scores and the drift reports, and
acts through :mod:`workbench.monitoring.alerts` and :mod:`workbench.monitoring.rollback`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.config import Settings
from workbench.monitoring import alerts as al
from workbench.monitoring import business, golden
from workbench.monitoring import rollback as rb
from workbench.timeutil import utc_time

log = logging.getLogger(__name__)


@dataclass
class MonitoringResult:
    """Everything one monitoring run computed and did (frames are empty when skipped)."""

    run_id: str
    model: str
    alias: str | None = None  # the alias actually scored (champion, or a fallback)
    version: str | None = None
    windows: dict[str, str] = field(default_factory=dict)
    schema: rb.SchemaGuard | None = None
    feature_drift: Any = None  # workbench.monitoring.drift.DriftResult
    prediction_drift: Any = None
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    expected: dict[str, float] = field(default_factory=dict)
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)
    payments: pd.DataFrame = field(default_factory=pd.DataFrame)
    recovery: pd.DataFrame = field(default_factory=pd.DataFrame)
    write_offs: pd.DataFrame = field(default_factory=pd.DataFrame)
    freshness: pd.DataFrame = field(default_factory=pd.DataFrame)
    heal: rb.HealResult | None = None
    golden_shift: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)  # as_of, p, y, window
    metrics: dict[str, float] = field(default_factory=dict)
    alerts: list[al.Alert] = field(default_factory=list)
    rollback: rb.RollbackResult | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """Metric values with the rules watching them and whether they breached."""
        rows = [{"metric": k, "value": v} for k, v in sorted(self.metrics.items())]
        return pd.DataFrame(rows, columns=["metric", "value"])

    def alerts_frame(self) -> pd.DataFrame:
        """The alerts raised or updated by this run."""
        cols = ["alert_id", "rule", "subject", "severity", "status", "value", "count", "message"]
        return pd.DataFrame([{c: getattr(a, c) for c in cols} for a in self.alerts], columns=cols)

    def snapshot_tables(self) -> dict[str, pd.DataFrame]:
        """Tables for the ``models`` snapshot (prefixed ``monitor_``), tagged with the run."""
        tag = {"run_id": self.run_id, "model": self.model}
        drift = []
        for kind, res in (("feature", self.feature_drift), ("prediction", self.prediction_drift)):
            if res is not None:
                drift.append(res.columns.assign(kind_of_drift=kind, **tag))
        out = {
            "monitor_metrics": self.summary().assign(**tag),
            "monitor_drift": pd.concat(drift, ignore_index=True) if drift else pd.DataFrame(),
            "monitor_calibration": self.calibration.assign(**tag),
            "monitor_mrr_gap": self.gaps.assign(**tag),
            "monitor_golden": self.golden_shift.assign(**tag),
            "monitor_rollback": pd.DataFrame(
                [self.rollback.to_dict() | {"run_id": self.run_id}] if self.rollback else []
            ),
            "monitor_notes": pd.DataFrame({"note": self.notes}).assign(**tag),
        }
        return {k: _plain(v) for k, v in out.items()}


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as strings, so Parquet snapshots never trip over mixed types."""
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: None if v is None else str(v))
    return out


# --------------------------------------------------------------------------- windows


def default_windows(
    horizon: pd.Timestamp, *, current_months: int = 3, reference_months: int = 6
) -> tuple[tuple[pd.Timestamp, pd.Timestamp], tuple[pd.Timestamp, pd.Timestamp]]:
    """Current: the last ``current_months`` month starts up to ``horizon``; reference: the
    ``reference_months`` before it."""
    last = horizon.tz_convert("UTC").tz_localize(None).to_period("M").to_timestamp()
    cur_start = last - pd.DateOffset(months=current_months - 1)
    ref_end = cur_start - pd.DateOffset(months=1)
    ref_start = ref_end - pd.DateOffset(months=reference_months - 1)
    utc = lambda t: pd.Timestamp(t).tz_localize("UTC")  # noqa: E731
    return (utc(ref_start), utc(ref_end)), (utc(cur_start), utc(last))


def _window(
    text: str, fallback: tuple[pd.Timestamp, pd.Timestamp]
) -> tuple[pd.Timestamp, pd.Timestamp]:
    if not text:
        return fallback
    start, _, end = text.partition(",")
    if not end:
        raise ValueError(f"window {text!r}: use 'YYYY-MM-DD,YYYY-MM-DD' (start,end) or leave empty")
    return (
        utc_time(start.strip(), what=f"start of window {text!r}"),
        utc_time(end.strip(), what=f"end of window {text!r}"),
    )


# --------------------------------------------------------------------------- model frames


def model_frame(con, model, *, start, end) -> pd.DataFrame:  # noqa: ANN001
    """The model's rows in ``[start, end]`` (monthly as-of dates) with its features, the
    calibrated prediction ``p`` and the label ``y`` (NaN while it has not matured)."""
    import workbench.features as wf
    from workbench.models.training import _decorate

    if model.target.startswith("recovered_"):
        frame = wf.recovery_training_set(con, start=start, end=end)
    else:
        frame = wf.churn_training_set(con, start=start, end=end, freq="month")
    if frame.empty:
        return frame.assign(p=pd.Series(dtype=float), y=pd.Series(dtype=float))
    frame = _decorate(con, frame)
    frame["p"] = model.predict(frame)
    frame["y"] = pd.to_numeric(frame[model.target], errors="coerce").astype(float)
    return frame


def _resolve_model(
    settings: Settings, name: str, alias: str, fallback: str | None, notes: list[str]
):  # noqa: ANN202
    from workbench.models import registry

    errors = []
    for candidate in (alias, fallback):
        if not candidate:
            continue
        try:
            model, info = registry.load_model(name, candidate, settings=settings)
        except registry.RegistryError as exc:
            errors.append(f"{name}: no {candidate} ({exc})")
            continue
        if candidate != alias:
            notes.append(
                f"{name} has no {alias}: monitoring its {candidate} v{info['version']} instead "
                "(drift and calibration only; nothing to roll back until a champion is approved)"
            )
        return model, info, candidate
    notes.extend(errors)
    return None, None, None


# --------------------------------------------------------------------------- the run


def run_monitoring(
    settings: Settings,
    *,
    run_id: str,
    model: str = "churn_90d",
    reference: str = "",
    current: str = "",
    alias: str = "champion",
    fallback_alias: str | None = "challenger",
    drift_method: str = "auto",
    share_threshold: float = 0.5,
    bins: int = 10,
    write_off_days: int = 90,
    maturity_days: int = 30,
    max_feature_lag_hours: float = 48.0,
    golden_size: int = 25,
    heal: bool = True,
    act: bool = True,
    rules: dict[str, al.AlertRule] | None = None,
    out_dir: Path | None = None,
    now: pd.Timestamp | None = None,
    progress: bool = True,
) -> MonitoringResult:
    """Run every monitor once and act on what breaches.

    Args:
        run_id: The pipeline run (alerts, golden scores and reports are tagged with it).
        model: Registered model to watch.
        reference, current: Windows ``"start,end"`` (ISO dates); empty: the 6 months before
            the current window, and the last 3 months up to the newest event.
        alias: The alias to watch; ``fallback_alias`` is scored when it does not exist.
        act: Raise alerts, roll back and pause automation (False: compute only).
        out_dir: Where drift reports go (default ``<reports_dir>/<run_id>/monitoring``).

    Returns:
        A :class:`MonitoringResult`.
    """
    from workbench.lakehouse import open_warehouse
    from workbench.monitoring import calibration as cal
    from workbench.monitoring.drift import drift_report
    from workbench.policy import load_policy
    from workbench.runner import validate_run_id

    validate_run_id(run_id)  # it names a folder under reports/
    rules = rules if rules is not None else al.load_rules(settings=settings)
    out_dir = Path(out_dir or Path(settings.reports_dir) / run_id / "monitoring")
    res = MonitoringResult(run_id=run_id, model=model)
    steps = tqdm(total=6, desc="monitoring", disable=not progress)

    with open_warehouse(settings).read(step="monitor") as con:
        horizon = business.newest_event_time(con)
        if horizon is None:
            raise ValueError("the warehouse has no events: run the pipeline (00-03) first")
        res.schema = rb.guard_schema(settings, con, rules=rules, run_id=run_id, now=now) if act else (
            rb.SchemaGuard(rb.schema_problems(con, settings=settings), [], []))  # fmt: skip
        steps.update()
        if not res.schema.ok:
            res.notes.append(
                f"schema changed in {sorted(set(res.schema.problems['table']))}: steps "
                f"{res.schema.blocked_steps} blocked, automation paused for {res.schema.paused}; "
                "no other numbers computed"
            )
            res.alerts.extend([res.schema.alert] if res.schema.alert else [])
            steps.close()
            return res
        ref_default, cur_default = default_windows(horizon)
        cur = _window(current, cur_default)
        if current and not reference:  # the 6 months before the given current window
            start = cur[0].tz_convert("UTC").tz_localize(None).to_period("M").to_timestamp()
            ref_default = (
                (start - pd.DateOffset(months=6)).tz_localize("UTC"),
                (start - pd.DateOffset(months=1)).tz_localize("UTC"),
            )
        ref = _window(reference, ref_default)
        if ref[1] >= cur[0]:
            raise ValueError(
                f"the reference window ({ref[0].date()} to {ref[1].date()}) must end before the "
                f"current one starts ({cur[0].date()}): pass --reference explicitly"
            )
        res.windows = {"reference": f"{ref[0].date()},{ref[1].date()}",
                       "current": f"{cur[0].date()},{cur[1].date()}"}  # fmt: skip

        res.gaps = business.forecast_vs_realized(con)
        res.payments = business.failed_payment_rates(con)
        res.recovery = business.recovery_by_cohort(con)
        days = pd.date_range(horizon - pd.Timedelta(days=write_off_days), horizon, freq="7D")
        proposals = business.replay_write_off_proposals(
            con, policy=load_policy(settings=settings), days=days,
            reporting_currency=settings.reporting_currency,
        )  # fmt: skip
        stored = business.stored_write_off_proposals(con)
        if len(stored):
            both = pd.concat([proposals, stored], ignore_index=True)
            both["as_of"] = pd.to_datetime(both["as_of"], utc=True)
            proposals = (
                both.sort_values("as_of").drop_duplicates("invoice_id").reset_index(drop=True)
            )
        res.write_offs = business.write_off_false_positives(
            con, proposals, maturity_days=maturity_days
        )
        res.freshness = business.feature_freshness(settings, horizon=horizon, now=now)
        if heal:
            res.heal = rb.heal_stale_features(settings, con, freshness=res.freshness,
                                              max_lag_hours=max_feature_lag_hours, now=now)  # fmt: skip
            if res.heal.status == "rematerialized":
                res.notes.append(f"stale online features re-materialized: {res.heal.message}")
        res.metrics.update(business.business_metrics(
            gaps=res.gaps, payments=res.payments, recovery=res.recovery,
            write_offs=res.write_offs,
            freshness=business.feature_freshness(settings, horizon=horizon, now=now)
            if res.heal and res.heal.status == "rematerialized" else res.freshness,
        ))  # fmt: skip
        if res.gaps.empty:
            res.notes.append("no past forecast month has realized MRR yet: nothing to compare")
        steps.update()

        mdl, info, res.alias = _resolve_model(settings, model, alias, fallback_alias, res.notes)
        if mdl is not None:
            res.version = info["version"]
            ref_frame = model_frame(con, mdl, start=ref[0], end=ref[1])
            cur_frame = model_frame(con, mdl, start=cur[0], end=cur[1])
    steps.update()

    if mdl is not None and len(ref_frame) and len(cur_frame):
        features = [c for c in mdl.features if c in ref_frame.columns]
        res.feature_drift = drift_report(
            ref_frame[features], cur_frame[features], method=drift_method,
            share_threshold=share_threshold, out_dir=out_dir, name=f"{model}_features",
        )  # fmt: skip
        res.prediction_drift = drift_report(
            ref_frame[["p"]].rename(columns={"p": "prediction"}),
            cur_frame[["p"]].rename(columns={"p": "prediction"}),
            method=drift_method, out_dir=out_dir, name=f"{model}_prediction",
        )  # fmt: skip
        res.metrics["drift_share"] = float(res.feature_drift.share_drifted)
        res.metrics["prediction_drift"] = float(bool(res.prediction_drift.columns["drifted"].any()))
        both = pd.concat([ref_frame, cur_frame], ignore_index=True)
        res.predictions = pd.concat(
            [ref_frame[["as_of", "p", "y"]].assign(window="reference"),
             cur_frame[["as_of", "p", "y"]].assign(window="current")], ignore_index=True,
        )  # fmt: skip
        res.calibration = cal.calibration_by_period(both, period="month", prob="p", label="y",
                                                    at="as_of", bins=bins)  # fmt: skip
        res.expected = cal.expected_performance(cur_frame["p"].to_numpy())
        labelled = cur_frame.dropna(subset=["y"])
        if len(labelled):
            p, y = labelled["p"].to_numpy(float), labelled["y"].to_numpy(float)
            res.metrics["champion_ece"] = cal.expected_calibration_error(p, y, bins=bins)
            res.metrics["champion_brier"] = float(np.mean((p - y) ** 2))
        else:
            res.notes.append("no label in the current window has matured yet: calibration pending")
    elif mdl is not None:
        res.notes.append("a window has no rows for the model: drift skipped")
    steps.update()

    if mdl is not None and not mdl.target.startswith("recovered_"):
        try:
            cohort = golden.ensure_golden(settings, n=golden_size, now=now)
            golden.score_golden(settings, cohort, model=model, as_of=horizon, alias=res.alias,
                                run_id=run_id)  # fmt: skip
            res.golden_shift = golden.golden_shift(golden.golden_history(settings, model=model))
            res.metrics.update(golden.golden_metrics(res.golden_shift))
        except ValueError as exc:
            res.notes.append(f"golden cohort skipped: {exc}")
    steps.update()

    if act:
        model_metrics = {"drift_share", "prediction_drift", "champion_ece", "champion_brier",
                         "golden_mean_shift", "golden_max_shift"}  # fmt: skip
        plain = {n: r for n, r in rules.items() if not r.rollback}
        res.alerts.extend(al.check(
            settings, {k: v for k, v in res.metrics.items() if k not in model_metrics}, plain,
            subject="business", run_id=run_id, now=now,
        ))  # fmt: skip
        res.alerts.extend(al.check(
            settings, {k: v for k, v in res.metrics.items() if k in model_metrics}, plain,
            subject=model, run_id=run_id, now=now, details={"version": res.version},
        ))  # fmt: skip
        if res.alias == alias:
            res.rollback = rb.auto_rollback(settings, model, res.metrics, rules=rules,
                                            run_id=run_id, now=now,
                                            details={"windows": res.windows})  # fmt: skip
            res.alerts.extend(res.rollback.alerts)
        elif res.metrics:
            res.notes.append(f"{model}: no {alias}, so automatic rollback does not apply")
    steps.update()
    steps.close()
    return res


# --------------------------------------------------------------------------- publishing

METRICS_TABLE = "monitoring_metrics"


def metrics_history(settings: Settings, result: MonitoringResult) -> pd.DataFrame:
    """Store this run's metrics in the warehouse (``monitoring_metrics``, one set of rows per
    run) and return every run's, oldest first."""
    from workbench.lakehouse import open_warehouse
    from workbench.publishing import store_frame

    rows = result.summary().assign(run_id=result.run_id, model=result.model,
                                   version=str(result.version),
                                   measured_at=pd.Timestamp.now(tz="UTC"))  # fmt: skip
    if len(rows):
        store_frame(
            rows, table=METRICS_TABLE, settings=settings, replace_where={"run_id": result.run_id}
        )
    with open_warehouse(settings).read(step="monitor-history") as con:
        if not business._has_table(con, METRICS_TABLE):
            return rows
        return con.execute(f"SELECT * FROM {METRICS_TABLE} ORDER BY measured_at, metric").df()


def registry_tables(settings: Settings) -> dict[str, pd.DataFrame]:
    """Registered versions, model cards of aliased versions, and champion histories."""
    from workbench.models import registry

    models = registry.list_models(settings=settings)
    cards, history = [], []
    for row in models[models["aliases"].fillna("") != ""].itertuples(index=False):
        cards.append({"model": row.model, "version": row.version, "aliases": row.aliases,
                      "card": registry.model_card(row.model, row.version, settings=settings)})  # fmt: skip
    for name in sorted(set(models["model"])):
        h = registry.champion_history(name, settings=settings)
        if len(h):
            history.append(h.assign(model=name))
    return {
        "registry": _plain(models.assign(created=models["created"].astype(str))),
        "model_cards": pd.DataFrame(cards, columns=["model", "version", "aliases", "card"]),
        "champion_history": _plain(pd.concat(history, ignore_index=True)) if history
        else pd.DataFrame(columns=["version", "previous", "who", "at", "via", "reason", "model"]),
    }  # fmt: skip


def publish_models_snapshot(settings: Settings, result: MonitoringResult) -> dict[str, int]:
    """Publish the ``models`` snapshot the models dashboard reads: registry, cards, champion
    history, this run's monitoring tables, the metric history and the alerts.

    Returns:
        Rows per published table.
    """
    from workbench.publishing import publish_tables

    tables = {
        **registry_tables(settings),
        **result.snapshot_tables(),
        "monitor_history": _plain(metrics_history(settings, result)),
        "alerts": _plain(al.list_alerts(settings, limit=1000)),
    }
    publish_tables("models", tables, settings=settings,
                   metadata={"monitor_run_id": result.run_id, "model": result.model})  # fmt: skip
    return {k: len(v) for k, v in tables.items()}
