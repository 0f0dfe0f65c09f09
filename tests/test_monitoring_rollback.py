"""Automatic rollback, pausing dependent automation, schema guard, golden cohort maths."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from workbench import audit
from workbench.approvals import open_store, paused_action_types
from workbench.config import load_settings
from workbench.models import registry, training
from workbench.monitoring import alerts as al
from workbench.monitoring import golden
from workbench.monitoring import rollback as rb
from workbench.schema import create_all

REPO = Path(__file__).resolve().parents[1]
RULES = al.load_rules(al.DEFAULT_RULES_FILE)


def synthetic(n_accounts: int = 120, months: int = 12, seed: int = 0) -> pd.DataFrame:
    """A churn training set where health drives churn (enough to train a real model)."""
    rng = np.random.default_rng(seed)
    as_of = pd.date_range("2024-01-01", periods=months, freq="MS", tz="UTC").astype(
        "datetime64[us, UTC]"
    )
    n = n_accounts * months
    health = rng.normal(0, 1, n)
    frame = pd.DataFrame({
        "account_id": np.repeat([f"cus_{i:04d}" for i in range(n_accounts)], months),
        "as_of": np.tile(as_of, n_accounts),
        "health_score": 50 + 15 * health + rng.normal(0, 5, n),
        "failed_payments_30d": rng.poisson(np.exp(-0.5 - 0.6 * health)).astype(np.int64),
        "tenure_days": rng.uniform(30, 900, n),
        "plan_tier": rng.choice(["prod_a", "prod_b"], n),
        "region": rng.choice(["NA", "EU"], n),
        "channel": rng.choice(["self-serve", "sales"], n),
        "mrr": rng.uniform(1000, 9000, n),
    })  # fmt: skip
    p = 1 / (1 + np.exp(-(-2.2 - 1.2 * health)))
    frame["churn_30d"] = pd.array((rng.uniform(0, 1, n) < p).astype(np.int8), dtype="Int8")
    frame["plan"] = frame["plan_tier"]
    return frame


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """churn_30d with v1 champion, then v2 champion (its previous champion is v1)."""
    root = tmp_path_factory.mktemp("monitoring-rollback")
    settings = load_settings(REPO, overrides={"data_dir": str(root / "data")})
    res = training.train_churn(None, horizons=(30,), dataset=synthetic(n_accounts=120, months=12),
                               settings=settings, test_months=3, valid_months=3)  # fmt: skip
    run = res.runs["churn_30d"]
    v1 = str(run.version)
    v2 = str(registry.register_run(run, settings=settings, alias="challenger"))
    registry.promote("churn_30d", v1, who="alice", reason="first", settings=settings)
    registry.promote("churn_30d", v2, who="alice", reason="retrained", settings=settings)
    assert v1 != v2
    return settings, v1, v2


def test_dependent_actions() -> None:
    assert rb.dependent_actions("churn_90d") == ("retention_offer",)
    assert "write_off" in rb.dependent_actions("recovery_14d")
    assert rb.dependent_actions("something_else") == ()


def test_healthy_metrics_do_nothing(champion) -> None:
    settings, _, v2 = champion
    res = rb.auto_rollback(settings, "churn_30d", {"prediction_drift": 0.0, "champion_ece": 0.01},
                           rules=RULES)  # fmt: skip
    assert res.status == "healthy" and not res.alerts
    assert registry.alias_version("churn_30d", "champion", settings=settings) == v2


def test_degraded_champion_rolls_back_pauses_and_audits(champion) -> None:
    settings, v1, v2 = champion
    res = rb.auto_rollback(settings, "churn_30d", {"champion_ece": 0.25}, rules=RULES, run_id="r1")
    assert res.status == "rolled_back", res.message
    assert (res.from_version, res.to_version) == (v2, v1)
    assert registry.alias_version("churn_30d", "champion", settings=settings) == v1
    history = registry.champion_history("churn_30d", settings=settings)
    assert history.iloc[-1]["via"] == "monitoring" and history.iloc[-1]["who"] == al.MONITOR.user
    assert "retention_offer" in paused_action_types(settings)
    alerts = al.list_alerts(settings, status="open")
    assert (alerts["rule"] == "champion_calibration").any()
    events = audit.audit_frame(open_store(settings))
    for event in ("alert.opened", "automation.paused", "model.auto_rolled_back"):
        assert events["event"].str.startswith(event).any(), event
    done = events[events["event"] == "model.auto_rolled_back"].iloc[0]
    assert json.loads(done["details"])["to_version"] == v1
    assert audit.verify(open_store(settings)).ok

    # the same incident on the next run: the alert is updated, no second rollback
    again = rb.auto_rollback(settings, "churn_30d", {"champion_ece": 0.3}, rules=RULES)
    assert again.status == "already_handled" and again.alerts[0].count == 2
    assert registry.alias_version("churn_30d", "champion", settings=settings) == v1
    # another rollback rule breaching while that incident is live is raised as its own alert
    # but is the same incident: no second automatic rollback, nothing new to pause
    other = rb.auto_rollback(settings, "churn_30d", {"prediction_drift": 1.0}, rules=RULES)
    assert other.status == "already_handled" and other.alerts[0].new, other.message
    assert "champion_calibration" in other.message and not other.paused
    assert registry.alias_version("churn_30d", "champion", settings=settings) == v1


def test_no_earlier_champion_still_pauses(champion) -> None:
    settings, v1, _ = champion
    # resolve the live alert: a new incident. v1's only predecessor in the history is v2,
    # which was rolled back from: monitoring must not flip back to it
    assert rb.rollback_target("churn_30d", settings=settings) is None
    for alert_id in al.list_alerts(settings, status="live")["alert_id"]:
        al.resolve(settings, alert_id, who=al.MONITOR)
    res = rb.auto_rollback(settings, "churn_30d", {"champion_ece": 0.4}, rules=RULES)
    assert res.status == "no_previous" and "retention_offer" in res.paused
    assert registry.alias_version("churn_30d", "champion", settings=settings) == v1


def test_model_without_champion(champion) -> None:
    settings, _, _ = champion
    res = rb.auto_rollback(settings, "churn_999d", {"prediction_drift": 1.0}, rules=RULES)
    assert res.status == "no_champion" and res.alerts[0].subject == "churn_999d"


def test_schema_change_pauses_affected_steps(tmp_path: Path) -> None:
    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data")})
    con = duckdb.connect()
    create_all(con)
    assert rb.schema_problems(con).empty
    guard = rb.guard_schema(settings, con, rules=RULES)
    assert guard.ok and not guard.paused and guard.alert is None
    con.execute("ALTER TABLE payment_attempts DROP COLUMN decline_code")
    con.execute("ALTER TABLE invoices ALTER COLUMN amount_due TYPE VARCHAR")
    problems = rb.schema_problems(con)
    assert set(map(tuple, problems[["table", "column", "problem"]].values)) == {
        ("payment_attempts", "decline_code", "missing column"),
        ("invoices", "amount_due", "type changed"),
    }
    guard = rb.guard_schema(settings, con, rules=RULES, run_id="r9")
    assert not guard.ok and "07_dunning" in guard.blocked_steps
    assert {"retry_payment", "write_off"} <= set(guard.paused) <= paused_action_types(settings)
    assert guard.alert.rule == "schema_change" and guard.alert.severity == "critical"
    assert guard.alert.details["tables"] == ["invoices", "payment_attempts"]


def test_heal_does_nothing_when_fresh(tmp_path: Path) -> None:
    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data")})
    fresh = pd.DataFrame({"entity": ["account_id"], "store": ["online"],
                          "newest": pd.to_datetime(["2024-06-30"], utc=True),
                          "age_hours": [1.0], "lag_hours": [2.0], "rows": [5]})  # fmt: skip
    assert rb.heal_stale_features(settings, None, freshness=fresh).status == "fresh"


def test_golden_shift_against_the_first_run() -> None:
    t = pd.Timestamp("2024-01-01", tz="UTC")
    history = pd.DataFrame({
        "run_id": ["a", "a", "b", "b", "c"],
        "account_id": ["x", "y", "x", "y", "x"],
        "model_version": ["1", "1", "2", "2", "2"],
        "score": [0.1, 0.3, 0.2, 0.3, 0.1],
        "scored_at": [t, t, t + pd.Timedelta(days=1), t + pd.Timedelta(days=1), t + pd.Timedelta(days=2)],
    })  # fmt: skip
    shift = golden.golden_shift(history)
    assert shift["run_id"].tolist() == ["a", "b", "c"]
    assert shift["mean_shift"].round(6).tolist() == [0.0, 0.05, 0.0]
    assert shift["max_shift"].round(6).tolist() == [0.0, 0.1, 0.0]
    assert shift["accounts"].tolist() == [2, 2, 1]
    metrics = golden.golden_metrics(shift.iloc[:2])
    assert metrics == {
        "golden_mean_shift": pytest.approx(0.05),
        "golden_max_shift": pytest.approx(0.1),
    }
    fired = [r.name for r in RULES.values() if r.breached(metrics.get(r.metric))]
    assert fired == []  # 0.05 is not above 0.05, 0.1 is not above 0.25


def test_runner_refuses_steps_blocked_by_a_schema_change(tmp_path: Path) -> None:
    from workbench.approvals import Identity, Role
    from workbench.runner import StepBlocked, run_pipeline

    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data"),
                                              "reports_dir": str(tmp_path / "reports")})  # fmt: skip
    assert rb.blocked_steps(settings) == {}
    con = duckdb.connect()
    create_all(con)
    con.execute("ALTER TABLE payment_attempts DROP COLUMN decline_code")
    guard = rb.guard_schema(settings, con, rules=RULES)
    blocked = rb.blocked_steps(settings)
    assert set(blocked) == set(guard.blocked_steps) and "07_dunning" in blocked
    assert "01_ingest" not in blocked  # re-ingesting is how the source gets fixed
    assert guard.alert.alert_id in blocked["07_dunning"]
    with pytest.raises(StepBlocked, match="07_dunning is paused by alert"):
        run_pipeline(["07_dunning"], settings=settings, run_id="blocked-run", progress=False)
    manifest = json.loads((tmp_path / "reports" / "blocked-run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["steps"][0]["status"] == "blocked"
    assert not (tmp_path / "reports" / "blocked-run" / "07_dunning.ipynb").exists()
    al.resolve(settings, guard.alert.alert_id, who=Identity("bea", Role.APPROVER), comment="fixed")
    assert rb.blocked_steps(settings) == {}


def test_manual_rollbacks_never_return_to_a_version_rolled_back_from(tmp_path: Path) -> None:
    from workbench import approvals
    from workbench.approvals import Identity, Role

    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data")})
    model = "churn_90d"
    c = registry.client(settings)
    c.create_registered_model(model)
    src = tmp_path / "dummy_model"
    src.mkdir()
    v1, v2, v3, v4 = (
        str(c.create_model_version(model, source=src.as_uri()).version) for _ in range(4)
    )
    for v in (v1, v2, v3):
        registry.promote(model, v, who="alice", reason="ok", settings=settings)
    assert (
        rb.auto_rollback(settings, model, {"prediction_drift": 1.0}, rules=RULES).to_version == v2
    )
    # v2 misbehaves too: a rollback request without --to goes to v1, never back to v3
    ann, bob = Identity("ann", Role.ANALYST), Identity("bob", Role.APPROVER)
    req = registry.request_rollback(model, who=ann, reason="v2 misbehaves", settings=settings)
    assert approvals.get_item(settings, req.item_id).payload["version"] == v1
    done = approvals.approve(settings, req.item_id, who=bob, current_state=registry.current_state)
    assert (
        done.code == "executed"
        and registry.alias_version(model, "champion", settings=settings) == v1
    )
    # the queued rollback is recorded as one, so nothing automatic returns to v2 (or v3)
    history = registry.champion_history(model, settings=settings)
    assert history["reason"].iloc[-1].startswith("rollback:")
    assert registry.rollback_target(model, settings=settings) is None
    # --to must name an earlier champion, not the champion or a version never promoted
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.request_rollback(model, who=ann, reason="x", to_version=v1, settings=settings)
    with pytest.raises(registry.RegistryError, match="never champion"):
        registry.request_rollback(model, who=ann, reason="x", to_version=v4, settings=settings)


def test_a_given_current_window_gets_the_six_months_before_it_as_reference(tmp_path: Path) -> None:
    from workbench.monitoring.review import run_monitoring

    settings = load_settings(REPO, overrides={"data_dir": str(tmp_path / "data")})
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(settings.warehouse_path))
    create_all(con)
    required = [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'events' AND NOT is_nullable"
    ).fetchall()]  # fmt: skip
    values = {"event_id": "'evt_1'", "type": "'invoice.created'",
              "created": "TIMESTAMPTZ '2025-03-15 00:00:00+00'"}  # fmt: skip
    for c in required:
        values.setdefault(c, "1" if c == "line" else "'x'")
    con.execute(f"INSERT INTO events ({', '.join(values)}) VALUES ({', '.join(values.values())})")
    con.close()
    res = run_monitoring(
        settings, run_id="r1", current="2024-09-01,2024-12-01", act=False, heal=False
    )
    assert res.windows == {"reference": "2024-03-01,2024-08-01", "current": "2024-09-01,2024-12-01"}
    with pytest.raises(ValueError, match="must end before"):
        run_monitoring(settings, run_id="r2", reference="2024-07-01,2024-12-01",
                       current="2024-09-01,2024-12-01", act=False, heal=False)  # fmt: skip
