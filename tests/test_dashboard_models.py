"""The models dashboard: role checks in the callbacks (in-process, forged clicks) and a real
Voila + headless Chromium session that reads the content and acknowledges an alert."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench import audit
from workbench.approvals import open_store
from workbench.config import load_settings
from workbench.dashboards.models import ModelsDashboard
from workbench.monitoring import alerts as al
from workbench.publishing import publish_tables

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import chromium_page, voila_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "dashboards" / "models.ipynb"
ROLES = "roles:\n  alice: analyst\n  bob: approver\n  carol: viewer\n"


def seed(data_dir: Path) -> dict[str, str]:
    """A published ``models`` snapshot (as 09 publishes it) and two open alerts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "roles.yaml").write_text(ROLES)
    settings = load_settings(REPO, overrides={"data_dir": str(data_dir)})
    rules = al.load_rules(al.DEFAULT_RULES_FILE)
    gap = al.raise_alert(settings, rules["mrr_forecast_gap"], value=0.16, subject="business")
    drift = al.raise_alert(settings, rules["prediction_drift"], value=1.0, subject="churn_90d")
    registry = pd.DataFrame({
        "model": ["churn_90d", "churn_90d"], "version": ["1", "2"], "aliases": ["champion", "challenger"],
        "test_roc_auc": [0.71, 0.73], "test_ece": [0.02, 0.03], "promoted_by": ["bob", None],
        "promoted_at": ["2024-12-01", None],
    })  # fmt: skip
    cards = pd.DataFrame({
        "model": ["churn_90d"], "version": ["1"], "aliases": ["champion"],
        "card": ["# Model card: churn_90d v1\n\n## Intended use\n\nRank paying accounts by 90-day churn risk."],
    })  # fmt: skip
    at = pd.to_datetime(["2024-11-01", "2024-12-01"], utc=True).astype(str)
    history = pd.DataFrame({
        "metric": ["drift_share", "drift_share"], "value": [0.05, 0.34], "run_id": ["r1", "r2"],
        "model": "churn_90d", "version": "1", "measured_at": at,
    })  # fmt: skip
    drift_cols = pd.DataFrame({
        "column": ["usage_trend_90d", "tenure_days"], "kind": ["num", "num"], "stat_test": ["ks", "ks"],
        "score": [1e-9, 0.4], "threshold": [0.05, 0.05], "drifted": [True, False],
        "kind_of_drift": "feature", "run_id": "r2", "model": "churn_90d",
    })  # fmt: skip
    publish_tables("models", {"registry": registry, "model_cards": cards, "monitor_history": history,
                              "monitor_drift": drift_cols}, settings=settings,
                   metadata={"monitor_run_id": "r2"})  # fmt: skip
    return {"gap": gap.alert_id, "drift": drift.alert_id}


def forged_click(button) -> None:
    """What arrives from a browser when the button is clicked (or from a forger)."""
    button.comm.handle_msg({
        "content": {"comm_id": button.comm.comm_id, "data": {"method": "custom", "content": {"event": "click"}}},
        "buffers": [],
    })  # fmt: skip


@pytest.fixture()
def seeded(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    data = isolated_env / "data"
    ids = seed(data)
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(data / "roles.yaml"))
    return ids


def dashboard_as(user: str, monkeypatch: pytest.MonkeyPatch) -> ModelsDashboard:
    monkeypatch.setenv("WORKBENCH_USER", user)
    dash = ModelsDashboard()
    assert dash.load()
    dash.build()
    return dash


def test_content_from_the_snapshot(seeded, monkeypatch) -> None:
    dash = dashboard_as("bob", monkeypatch)
    assert 'data-kpi="live_alerts">2<' in dash.tiles.value
    assert 'data-kpi="monitor_run">r2<' in dash.tiles.value
    assert 'data-aliases="champion"' in dash.registry_html.value
    assert "<h2>Intended use</h2>" in dash.card_html.value
    assert 'data-drifted="1"' in dash.drift_html.value
    assert set(dash.alert_rows) == set(seeded.values())


def test_viewer_forged_clicks_change_nothing_and_are_audited(seeded, monkeypatch) -> None:
    dash = dashboard_as("carol", monkeypatch)
    _, ack, res = dash.alert_rows[seeded["gap"]]
    assert ack.disabled and res.disabled and dash.rollback_button.disabled
    forged_click(ack)
    assert 'data-code="denied"' in dash.result.value
    forged_click(res)
    dash.req_reason.value = "forged"
    forged_click(dash.rollback_button)
    assert 'data-code="denied"' in dash.result.value
    store = open_store(load_settings())
    assert al.get_alert(store, seeded["gap"]).status == "open"
    denied = audit.audit_frame(store)
    denied = denied[
        (denied["actor"] == "carol") & denied["event"].isin(["alert.denied", "action.denied"])
    ]
    assert len(denied) == 3
    assert audit.verify(store).ok


def test_analyst_acknowledges_but_cannot_resolve(seeded, monkeypatch) -> None:
    dash = dashboard_as("alice", monkeypatch)
    _, ack, res = dash.alert_rows[seeded["drift"]]
    forged_click(ack)
    assert 'data-code="acknowledged"' in dash.result.value
    _, ack, res = dash.alert_rows[seeded["drift"]]  # redrawn
    assert ack.disabled and res.disabled
    forged_click(res)
    assert 'data-code="denied"' in dash.result.value
    assert al.get_alert(load_settings(), seeded["drift"]).status == "acknowledged"
    # a rollback request needs a reason, then a champion in the registry
    forged_click(dash.rollback_button)
    assert 'data-code="missing_reason"' in dash.result.value
    dash.req_reason.value = "prediction drift"
    forged_click(dash.rollback_button)
    assert 'data-code="not_found"' in dash.result.value  # no MLflow registry in this test


def test_empty_state_without_snapshot(isolated_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_USER", "bob")
    dash = ModelsDashboard()
    assert not dash.load()
    assert 'data-state="empty"' in dash.message.value and "09_drift_review" in dash.message.value


@pytest.mark.browser
@pytest.mark.slow
def test_browser_shows_models_and_analyst_acknowledges(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ids = seed(data)
    env = {
        "WORKBENCH_DATA_DIR": str(data), "WORKBENCH_ROLES_FILE": str(data / "roles.yaml"),
        "WORKBENCH_REPORTS_DIR": str(tmp_path / "reports"), "WORKBENCH_USER": "alice",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }  # fmt: skip
    with voila_server(NOTEBOOK, env=env, cwd=REPO) as url, chromium_page() as page:
        page.goto(url)
        page.locator('.wb-identity[data-role="analyst"]').wait_for(timeout=90_000)
        assert page.locator('tr.wb-model-row[data-aliases="champion"]').count() == 1
        assert "Intended use" in page.locator(".wb-card").inner_text()
        assert page.locator('tr.wb-drift-row[data-drifted="true"]').count() == 1
        assert page.locator('[data-kpi="live_alerts"]').inner_text() == "2"
        row = page.locator(f".wb-alert-{ids['gap']}")
        assert "mrr_forecast_gap" in row.inner_text()
        assert row.locator(".wb-resolve").is_disabled()  # analysts may acknowledge only
        row.locator(".wb-ack").click()
        page.locator('.wb-result[data-code="acknowledged"]').wait_for(timeout=60_000)
        page.locator(f'.wb-alert-{ids["gap"]} [data-status="acknowledged"]').wait_for(
            timeout=60_000
        )
        # forcing the disabled Resolve button: the server says no and audits it
        resolve = page.locator(f".wb-alert-{ids['gap']} .wb-resolve")
        resolve.evaluate("el => el.removeAttribute('disabled')")
        resolve.click()
        page.locator('.wb-result[data-code="denied"]').wait_for(timeout=60_000)
    with sqlite3.connect(data / "approvals" / "approvals.sqlite") as conn:
        status = conn.execute("SELECT status, acknowledged_by FROM alerts WHERE alert_id = ?",
                              (ids["gap"],)).fetchone()  # fmt: skip
        denied = conn.execute("SELECT count(*) FROM audit_log WHERE event = 'alert.denied' "
                              "AND actor = 'alice'").fetchone()[0]  # fmt: skip
    assert status == ("acknowledged", "alice") and denied == 1
