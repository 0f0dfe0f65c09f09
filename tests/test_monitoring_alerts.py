"""Alert rules from YAML, the alerts table (open/acknowledged/resolved), webhooks, audit."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from workbench import audit
from workbench.approvals import Identity, Role, open_store
from workbench.monitoring import alerts as al


@pytest.fixture()
def store(tmp_path: Path):
    return open_store(f"sqlite:///{tmp_path / 'approvals.sqlite'}")


def _rule(**kw) -> al.AlertRule:
    base = dict(name="gap", metric="mrr_forecast_gap", comparison=">", threshold=0.05)
    return al.AlertRule(**{**base, **kw})


def test_default_rules_file_is_valid() -> None:
    rules = al.load_rules(al.DEFAULT_RULES_FILE)
    assert rules["mrr_forecast_gap"].threshold == 0.05
    assert any(r.rollback for r in rules.values())


def test_invalid_rules_name_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "alerts.yaml"
    bad.write_text(
        "rules:\n  a: {metric: x, comparison: '=>', threshold: 1}\n"
        "  b: {metric: y, comparison: '>', threshold: high, severity: loud, colour: red}\n"
        "  c: {metric: z, comparison: '<', threshold: 1, webhook: ftp://x}\n"
    )
    with pytest.raises(al.AlertRulesError) as err:
        al.load_rules(bad)
    text = str(err.value)
    for part in (
        "a: comparison '=>'",
        "b: threshold 'high'",
        "severity 'loud'",
        "colour",
        "c: webhook",
    ):
        assert part in text
    with pytest.raises(al.AlertRulesError, match="not found"):
        al.load_rules(tmp_path / "missing.yaml")


def test_rules_file_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKBENCH_ALERTS_FILE", raising=False)
    assert al.rules_file() == al.DEFAULT_RULES_FILE
    monkeypatch.setenv("WORKBENCH_ALERTS_FILE", str(tmp_path / "x.yaml"))
    assert al.rules_file() == tmp_path / "x.yaml"
    assert al.rules_file(path=tmp_path / "y.yaml") == tmp_path / "y.yaml"


def test_breach_comparisons() -> None:
    assert _rule().breached(0.06) and not _rule().breached(0.05)
    assert not _rule().breached(float("nan")) and not _rule().breached(None)
    assert _rule(comparison="<", threshold=0.3).breached(0.1)


def test_refire_updates_then_resolve_opens_new(store) -> None:
    rule = _rule()
    first = al.raise_alert(store, rule, value=0.08, subject="total", details={"month": "2025-01"})
    again = al.raise_alert(store, rule, value=0.09, subject="total")
    other = al.raise_alert(store, rule, value=0.07, subject="emea")
    assert first.new and not again.new and other.new
    assert again.alert_id == first.alert_id and again.count == 2 and again.value == 0.09
    frame = al.list_alerts(store)
    assert len(frame) == 2 and set(frame["status"]) == {"open"}

    analyst = Identity("ann", Role.ANALYST)
    acked = al.acknowledge(store, first.alert_id, who=analyst, comment="looking")
    assert acked.status == "acknowledged" and acked.acknowledged_by == "ann"
    # firing while acknowledged still updates the same alert
    assert al.raise_alert(store, rule, value=0.1, subject="total").alert_id == first.alert_id

    with pytest.raises(PermissionError):
        al.resolve(store, first.alert_id, who=analyst)
    boss = Identity("bea", Role.APPROVER)
    done = al.resolve(store, first.alert_id, who=boss)
    assert done.status == "resolved" and done.count == 3
    with pytest.raises(al.AlertError, match="resolved"):
        al.resolve(store, first.alert_id, who=boss)
    reopened = al.raise_alert(store, rule, value=0.2, subject="total")
    assert reopened.new and reopened.alert_id != first.alert_id
    assert len(al.list_alerts(store, status="live")) == 2
    assert len(al.list_alerts(store, status="resolved")) == 1

    events = audit.audit_frame(store, event_prefix="alert.")["event"].tolist()
    for e in (
        "alert.opened",
        "alert.repeated",
        "alert.acknowledged",
        "alert.resolved",
        "alert.denied",
    ):
        assert e in events
    assert audit.verify(store).ok


def test_viewer_cannot_acknowledge(store) -> None:
    a = al.raise_alert(store, _rule(), value=1.0)
    with pytest.raises(PermissionError, match="analyst"):
        al.acknowledge(store, a.alert_id, who=Identity("vic", Role.VIEWER))
    assert al.get_alert(store, a.alert_id).status == "open"


def test_check_fires_only_breaches(store) -> None:
    rules = al.load_rules(al.DEFAULT_RULES_FILE)
    fired = al.check(store, {"mrr_forecast_gap": 0.02, "schema_changes": 2, "unknown": 5}, rules)
    assert [a.rule for a in fired] == ["schema_change"]


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_posted_and_failure_recorded(store) -> None:
    _Hook.received.clear()  # class-level: the PostgreSQL suite runs this test too
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        a = al.raise_alert(store, _rule(webhook=url), value=0.3, subject="total")
        assert a.webhook_status == "ok 204"
        assert _Hook.received[-1]["alert"]["alert_id"] == a.alert_id
        # a repeat does not post again
        al.raise_alert(store, _rule(webhook=url), value=0.4, subject="total")
        assert len(_Hook.received) == 1
    finally:
        server.shutdown()
    dead = al.raise_alert(
        store, _rule(name="dead", webhook=f"http://127.0.0.1:{server.server_port}/x"),
        value=0.3, timeout=1.0,
    )  # fmt: skip
    assert dead.status == "open" and dead.webhook_status.startswith("failed")
    assert "alert.webhook_failed" in audit.audit_frame(store)["event"].tolist()


def test_cli_list_ack_resolve(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from workbench.cli import main
    from workbench.config import load_settings

    data = isolated_env / "data"
    data.mkdir(parents=True)
    (data / "roles.yaml").write_text("roles:\n  ann: analyst\n")
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(data / "roles.yaml"))
    monkeypatch.setenv("WORKBENCH_USER", "ann")
    alert = al.raise_alert(load_settings(), _rule(), value=0.2, subject="total")
    runner = CliRunner()
    listed = runner.invoke(main, ["alerts", "list"])
    assert listed.exit_code == 0 and alert.alert_id in listed.output
    acked = runner.invoke(main, ["alerts", "ack", alert.alert_id, "--comment", "on it"])
    assert acked.exit_code == 0 and "acknowledged" in acked.output
    refused = runner.invoke(main, ["alerts", "resolve", alert.alert_id])
    assert refused.exit_code == 1 and "approver" in refused.output
    missing = runner.invoke(main, ["alerts", "ack", "nope"])
    assert missing.exit_code == 1 and "workbench alerts list" in missing.output
    assert al.get_alert(load_settings(), alert.alert_id).status == "acknowledged"


def test_cli_monitor_no_act_computes_only(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --no-act promises no alerts, rollback, pauses or self-healing: what the CLI asks
    # run_monitoring for (its own tests cover what act= and heal= do)
    from click.testing import CliRunner

    from workbench.cli import main
    from workbench.monitoring import review

    asked: dict = {}

    def fake_run(settings, **kwargs):  # noqa: ANN001, ANN003
        asked.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(review, "run_monitoring", fake_run)
    out = CliRunner().invoke(main, ["monitor", "--no-act"])
    assert out.exit_code == 1 and "stop here" in out.output
    assert asked["act"] is False and asked["heal"] is False
    CliRunner().invoke(main, ["monitor"])
    assert asked["act"] is True and asked["heal"] is True
