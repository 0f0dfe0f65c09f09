"""End to end: the simulator's regime change (payment-processor outage, then more declines, a
pricing change that lowers usage and raises churn) is caught by one monitoring run.

A small company (300 accounts, 24 months, the regime change in month 20), a revenue forecast
made before the change, a churn champion (v2, with v1 before it); then one monitoring run over
the months after the change must detect drift, fire the MRR predicted-vs-realized alert and roll
the champion back (alias moved, dependent automation paused, all audited).

The company's rules file (``<data_dir>/alerts.yaml``) is the default with one change an operator
makes to roll back on broad input drift: ``feature_drift`` gets ``rollback: true``. The
pricing change raises the true churn hazard without a feature that shows it, so whether the
champion's *scores* drift depends on which features the model leans on; the inputs drift
either way (the outage, the usage drop).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workbench import audit
from workbench import forecast as fc
from workbench.approvals import open_store, paused_action_types
from workbench.config import load_settings
from workbench.ingest import ingest
from workbench.models import registry, training
from workbench.monitoring import business
from workbench.monitoring.alerts import DEFAULT_RULES_FILE
from workbench.monitoring.review import publish_models_snapshot, run_monitoring
from workbench.publishing import store_frame
from workbench.revenue import account_month_mrr
from workbench.simulator import simulate
from workbench.store import Warehouse, read_snapshot

REPO = Path(__file__).resolve().parents[1]
MONTHS, REGIME = 24, 20

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def company(tmp_path_factory):
    root = tmp_path_factory.mktemp("regime")
    data = root / "data"
    simulate(accounts=300, months=MONTHS, seed=5, regime_change=REGIME, out=data, progress=False)
    rules = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    rules["rules"]["feature_drift"].update(severity="critical", rollback=True)
    (data / "alerts.yaml").write_text(yaml.safe_dump(rules))
    settings = load_settings(
        REPO, overrides={"data_dir": str(data), "reports_dir": str(root / "reports")}
    )
    ingest(data / "landing" / "stripe", source="stripe", settings=settings, progress=False)
    ingest(data / "landing" / "csv", source="csv", settings=settings, progress=False)
    change = pd.Timestamp(
        json.loads((data / "truth" / "regime.json").read_text())["regime_change_date"]
    )

    with Warehouse(settings).read(step="test") as con:
        months = account_month_mrr(con, policy="stripe")
    store_frame(months.assign(run_id="revenue"), table="mrr_account_months", settings=settings,
                replace_where={"run_id": "revenue"})  # fmt: skip
    # the forecast a finance team made the month before the change
    total = (months.groupby("month")["mrr"].sum() / 100).rename("y").reset_index()
    total = total.rename(columns={"month": "ds"}).assign(unique_id="total")
    total["ds"] = pd.to_datetime(total["ds"]).dt.tz_localize(None)
    before = total[total["ds"] < change.tz_localize(None)]
    forecaster = fc.RevenueForecaster(models=["AutoETS", "SeasonalNaive"], h=4, n_windows=1,
                                      step_size=3, n_jobs=1).fit(before)  # fmt: skip
    store_frame(forecaster.predict().assign(run_id="before-change", currency="usd"), table="forecasts",
                settings=settings, replace_where={"run_id": "before-change"})  # fmt: skip

    # a champion trained before the change (v1), then retrained and promoted (v2)
    with Warehouse(settings).read(step="test") as con:
        res = training.train_churn(con, horizons=(90,), train_window=(None, change - pd.DateOffset(months=3)),
                                   test_months=3, valid_months=3, settings=settings)  # fmt: skip
    run = res.runs["churn_90d"]
    v1 = str(run.version)
    v2 = str(registry.register_run(run, settings=settings, alias="challenger"))
    registry.promote("churn_90d", v1, who="alice", reason="first model", settings=settings)
    registry.promote("churn_90d", v2, who="alice", reason="retrained", settings=settings)

    current = f"{change.date()},{(change + pd.DateOffset(months=3)).date()}"
    reference = (
        f"{(change - pd.DateOffset(months=6)).date()},{(change - pd.DateOffset(months=1)).date()}"
    )
    result = run_monitoring(settings, run_id="after-change", model="churn_90d", reference=reference,
                            current=current, drift_method="fast", progress=False)  # fmt: skip
    return settings, result, v1, v2


def test_drift_detected_in_one_run(company) -> None:
    _, res, _, _ = company
    assert res.alias == "champion"
    assert res.feature_drift.share_drifted >= 0.3
    drifted = set(res.feature_drift.columns.loc[res.feature_drift.columns["drifted"], "column"])
    assert {
        "failed_payments_30d",
        "usage_trend_90d",
    } <= drifted  # the outage and the pricing change
    assert res.metrics["prediction_drift"] in (0.0, 1.0)  # measured (the scores' KS test)
    assert res.prediction_drift.n_current > 0 and res.prediction_drift.json_path.is_file()
    assert res.feature_drift.html_path.is_file() and res.feature_drift.json_path.is_file()
    assert "feature_drift" in {a.rule for a in res.alerts}


def test_mrr_predicted_vs_realized_alert_fires(company) -> None:
    _, res, _, _ = company
    gaps = res.gaps[res.gaps["run_id"] == "before-change"]
    assert len(gaps) >= 3 and gaps["breach"].any()
    assert (gaps["predicted"] > gaps["realized"]).iloc[-1]  # revenue fell short of the plan
    fired = [a for a in res.alerts if a.rule == "mrr_forecast_gap"]
    assert fired and fired[0].value > 0.05 and fired[0].severity == "critical"


def test_champion_rolled_back_automation_paused_and_audited(company) -> None:
    settings, res, v1, v2 = company
    assert res.rollback.status == "rolled_back", res.rollback.message
    assert "feature_drift" in {a.rule for a in res.rollback.alerts}
    assert (res.rollback.from_version, res.rollback.to_version) == (v2, v1)
    assert registry.alias_version("churn_90d", "champion", settings=settings) == v1
    assert "retention_offer" in paused_action_types(settings)
    events = audit.audit_frame(open_store(settings), limit=None)
    assert {"alert.opened", "automation.paused", "model.auto_rolled_back"} <= set(events["event"])
    assert audit.verify(open_store(settings)).ok


def test_failed_payment_spike_seen_and_features_healed(company) -> None:
    settings, res, _, _ = company
    after = res.payments[pd.to_datetime(res.payments["month"]) >= pd.Timestamp("2024-09-01")]
    assert after["spike"].iloc[0]  # the outage month
    # there was no online store: monitoring published it (self-healing) and it is fresh now
    assert res.heal.status == "rematerialized"
    fresh = business.feature_freshness(settings, horizon=None)
    assert fresh.loc[fresh["store"] == "online", "newest"].notna().all()


def test_models_snapshot_published(company) -> None:
    settings, res, v1, _ = company
    counts = publish_models_snapshot(settings, res)
    snap = read_snapshot("models", settings=settings)
    assert counts["monitor_drift"] > 0 and counts["alerts"] >= 3
    reg = snap["registry"]
    assert reg.loc[reg["aliases"].str.contains("champion"), "version"].tolist() == [v1]
    assert (snap["monitor_rollback"]["status"] == "rolled_back").all()
