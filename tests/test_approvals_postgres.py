"""The approvals store on a real (throwaway) PostgreSQL server.

The behaviour tests of ``test_approvals.py`` and ``test_monitoring_alerts.py`` are imported
and run again here with ``store`` bound to a fresh PostgreSQL database each; the tests that
need to bypass the application (tampering, triggers) are written for PostgreSQL below.
Skipped, saying what to install, when the PostgreSQL binaries or psycopg are missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pandas as pd
import pytest
from pg_server import PgServer, pg  # noqa: F401 - the session fixture
from test_approvals import (  # noqa: F401 - re-run against PostgreSQL
    ALICE,
    BOB,
    CAROL,
    NOW,
    _restore_executors,
    events,
    request_write_off,
    same_state,
    test_a_failing_executor_marks_the_item_failed,
    test_a_recover_hook_says_whether_an_interrupted_action_took_effect,
    test_automated_action_runs_once_and_rolls_back_within_its_window,
    test_automation_above_the_approval_amount_is_refused,
    test_bulk_approve_only_low_risk_items_the_policy_allows,
    test_changed_or_missing_state_makes_the_item_stale,
    test_latest_state_provider_sees_recorded_changes,
    test_maker_checker_holds_even_for_admins,
    test_pause_and_resume_are_persistent_admin_only_and_audited,
    test_queue_frame_and_filters,
    test_racing_approvers_in_processes_execute_once,
    test_racing_approvers_in_threads_execute_once,
    test_reject_needs_a_comment_and_ends_the_item,
    test_request_is_idempotent_per_subject_action_policy_and_state,
    test_request_validation_and_roles,
    test_roles_below_approver_cannot_approve_and_are_audited,
    test_write_off_executor_refuses_a_missing_reason_code,
)
from test_monitoring_alerts import (  # noqa: F401 - re-run against PostgreSQL
    _rule,
    test_check_fires_only_breaches,
    test_refire_updates_then_resolve_opens_new,
    test_viewer_cannot_acknowledge,
    test_webhook_posted_and_failure_recorded,
)

from workbench import approvals as ap
from workbench import audit
from workbench.monitoring import alerts as al

T0 = pd.Timestamp("2024-05-01T09:00:00.123456", tz="UTC")


@pytest.fixture()
def store(pg: PgServer) -> Iterator[ap.ApprovalStore]:  # noqa: F811
    """A fresh PostgreSQL database with the approvals schema."""
    s = ap.ApprovalStore(pg.create_database())
    assert s.dialect == "postgresql"
    yield s
    s._engine.dispose()


def _psql(pg: PgServer, store: ap.ApprovalStore, *sql: str) -> None:  # noqa: F811
    """Run statements as the database superuser on the store's database (autocommit)."""
    with pg.connect(store._engine.url.database) as conn:
        for statement in sql:
            conn.execute(statement)


def _tamper(pg: PgServer, store: ap.ApprovalStore, *sql: str) -> None:  # noqa: F811
    """What a superuser bypassing the application could do: disable the trigger, edit."""
    _psql(pg, store, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only", *sql)


def _fill(store: ap.ApprovalStore, n: int = 6) -> None:
    for i in range(n):
        with store.transaction() as tx:
            audit.append(tx, actor=f"user{i % 2}", event="test.event", item_id=f"item{i}",
                         details={"n": i, "note": "é"}, at=T0 + pd.Timedelta(seconds=i))  # fmt: skip


# --------------------------------------------------------------------------- schema


def test_schema_is_created_once_with_append_only_triggers(store: ap.ApprovalStore) -> None:
    with store.transaction(write=False) as tx:
        tables = {
            r["table_name"]
            for r in tx.fetchall(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        triggers = {
            r["tgname"] for r in tx.fetchall("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        }
    assert {"actions", "executions", "subject_states", "automation_switches", "audit_log"} <= tables
    assert triggers == {"audit_log_append_only", "executions_append_only"}
    again = ap.ApprovalStore(store.url)  # a second process opening the same database
    again._engine.dispose()


def test_schema_creation_races_are_serialised(pg: PgServer) -> None:  # noqa: F811
    url, errors = pg.create_database(), []

    def opener() -> None:
        try:
            ap.ApprovalStore(url)._engine.dispose()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --------------------------------------------------------------------------- approvals


def test_approve_executes_once_and_executions_are_append_only(
    store: ap.ApprovalStore,
    pg: PgServer,  # noqa: F811
) -> None:
    item_id = request_write_off(store).item_id
    out = ap.approve(store, item_id, who=BOB, current_state=same_state, comment="agreed", now=NOW)
    assert out.ok and out.code == "executed"
    item = ap.get_item(store, item_id)
    assert (item.status, item.decided_by, item.amount_minor) == ("executed", "bob", 12_000)
    assert isinstance(item.amount_minor, int)
    again = ap.approve(store, item_id, who=CAROL, current_state=same_state, now=NOW)
    assert again.code == "not_pending" and len(ap.executions_frame(store)) == 1
    assert [e[0] for e in events(store)] == [
        "action.requested",
        "action.approved",
        "action.executed",
    ]
    with pytest.raises(Exception, match="append-only"):
        _psql(pg, store, "UPDATE executions SET reason_code = 'price_concession'")
    with pytest.raises(Exception, match="append-only"):
        _psql(pg, store, "DELETE FROM executions")
    assert ap.executions_frame(store).iloc[0].reason_code == "credit_loss"
    assert audit.verify(store).ok


def test_a_maker_cannot_approve_their_own_request(store: ap.ApprovalStore) -> None:
    item_id = request_write_off(store, who=ALICE).item_id
    own = ap.approve(store, item_id, who=ap.Identity("alice", ap.Role.ADMIN),
                     current_state=same_state, now=NOW)  # fmt: skip
    assert own.code == "denied" and "maker-checker" in own.message
    assert ap.get_item(store, item_id).status == "pending"
    assert ("action.denied", "alice", item_id) in events(store)


# --------------------------------------------------------------------------- audit


def test_the_database_refuses_audit_updates_and_deletes(
    store: ap.ApprovalStore,
    pg: PgServer,  # noqa: F811
) -> None:
    _fill(store)
    with pytest.raises(Exception, match="append-only"):
        _psql(pg, store, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(Exception, match="append-only"):
        _psql(pg, store, "DELETE FROM audit_log WHERE seq = 6")
    with pytest.raises(Exception, match="append-only"), store.transaction() as tx:
        tx.execute("DELETE FROM audit_log")
    result = audit.verify(store)
    assert result.ok and result.entries == 6, result.summary()
    entries = list(audit.iter_entries(store, page=4))
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].at == "2024-05-01T09:00:00.123456Z"
    assert entries[2].data == {"n": 2, "note": "é"}


@pytest.mark.parametrize(
    ("statements", "first_bad", "phrase"),
    [
        (['UPDATE audit_log SET details = \'{"n":99,"note":"é"}\' WHERE seq = 3'], 3, "content edited"),
        (["UPDATE audit_log SET actor = 'mallory' WHERE seq = 5"], 5, "content edited"),
        (["DELETE FROM audit_log WHERE seq = 4"], 5, "sequence gap"),
        (["DELETE FROM audit_log WHERE seq = 4", "UPDATE audit_log SET seq = seq - 1 WHERE seq > 4"],
         4, "link broken"),
    ],
)  # fmt: skip
def test_tampering_past_the_trigger_is_detected(
    store: ap.ApprovalStore,
    pg: PgServer,  # noqa: F811
    statements: list[str],
    first_bad: int,
    phrase: str,
) -> None:
    _fill(store)
    head = audit.head(store)
    _tamper(pg, store, *statements)
    result = audit.verify(store)
    assert not result.ok and result.first_bad_seq == first_bad, result.summary()
    assert phrase in result.problem
    assert not audit.verify(store, expected_head=head).ok


def test_truncation_is_detected_against_an_exported_head(
    store: ap.ApprovalStore,
    pg: PgServer,  # noqa: F811
) -> None:
    _fill(store)
    head = audit.head(store)
    _tamper(pg, store, "DELETE FROM audit_log WHERE seq >= 5")
    assert audit.verify(store).ok
    result = audit.verify(store, expected_head=head)
    assert not result.ok and "truncated" in result.problem and result.first_bad_seq == 5


def test_concurrent_appends_keep_one_chain(store: ap.ApprovalStore) -> None:
    def writer(k: int) -> None:
        s = ap.ApprovalStore(store.url)  # its own engine, as another process would have
        for i in range(15):
            with s.transaction() as tx:
                audit.append(tx, actor=f"w{k}", event="race", details={"i": i})
        s._engine.dispose()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = audit.verify(store)
    assert result.ok and result.entries == 60, result.summary()


def test_a_failed_transaction_leaves_no_entry(store: ap.ApprovalStore) -> None:
    _fill(store, 2)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        audit.append(tx, actor="x", event="never")
        raise RuntimeError("boom")
    assert audit.head(store).seq == 2 and audit.verify(store).ok


# --------------------------------------------------------------------------- alerts, real time


def test_racing_monitors_open_one_live_alert(store: ap.ApprovalStore) -> None:
    barrier, results, errors = threading.Barrier(6), [], []

    def fire() -> None:
        barrier.wait()
        try:
            results.append(al.raise_alert(store, _rule(), value=0.08, subject="total", post=False))
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    al._ready(store)  # the table exists before the race (as after the first check)
    threads = [threading.Thread(target=fire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    live = al.list_alerts(store, status="live")
    assert len(live) == 1, live[["alert_id", "count"]]
    assert int(live.iloc[0]["count"]) == 6
    assert sum(a.new for a in results) == 1
    assert audit.verify(store).ok


def test_nested_transactions_join_the_outer_one(
    store: ap.ApprovalStore,
    pg: PgServer,  # noqa: F811
) -> None:
    """The real-time handler's fallback store (PostgreSQL) nests ``apply_decision``'s
    transactions inside the decision's audit transaction: they must not wait on it."""
    _psql(pg, store, f"ALTER DATABASE {store._engine.url.database} SET lock_timeout = '5s'")
    store._engine.dispose()  # new connections pick the setting up
    with store.transaction() as tx:
        audit.append(tx, actor="engine", event="decision.realtime")
        with store.transaction() as inner:
            audit.append(inner, actor="engine", event="inner")
        with pytest.raises(RuntimeError), store.transaction() as inner:
            audit.append(inner, actor="engine", event="rolled back with its savepoint")
            raise RuntimeError("inner failure")
    assert [e.event for e in audit.iter_entries(store)] == ["decision.realtime", "inner"]
    assert audit.verify(store).ok


def test_realtime_handler_falls_back_to_the_normal_store_and_stores_decisions(
    store: ap.ApprovalStore, monkeypatch: pytest.MonkeyPatch, isolated_env
) -> None:
    """The handler's storage step (one audit transaction with ``apply_decision`` nested in
    it) on the PostgreSQL fallback store. The handler is built without its model and
    features (``object.__new__``): scoring is covered by ``test_realtime_decisions.py``."""
    from workbench.config import load_settings
    from workbench.dunning import decide_invoice
    from workbench.dunning_realtime import RealtimeHandler, pinned_store
    from workbench.policy import parse_policy

    monkeypatch.setenv("WORKBENCH_APPROVALS_URL", store.url)
    settings = load_settings()
    assert settings.approvals_url == store.url
    handler = object.__new__(RealtimeHandler)
    handler.store = pinned_store(settings)
    assert type(handler.store) is ap.ApprovalStore and handler.store.dialect == "postgresql"
    codes = []
    for level in ("assisted", "autonomous"):
        handler.policy = parse_policy(
            {"automation": {"levels": {"retry_payment": level}}, "control": {"share": 0.0}}
        )
        invoice = {
            "invoice_id": f"in_{level}", "account_id": "cus_1", "amount_due": 5_000,
            "currency": "usd", "amount_due_reporting": 5_000, "attempt_count": 1,
            "last_attempt_at": NOW - pd.Timedelta(hours=30), "decline_code": "insufficient_funds",
            "recovery_probability": 0.9, "uplift": float("nan"), "model_versions": "m@1",
            "preferred_retry_at": None,
        }  # fmt: skip
        decision = decide_invoice(invoice, as_of=NOW, policy=handler.policy)
        assert decision["action_type"] == "retry_payment"
        codes.append(handler._store(decision, invoice, NOW, time.perf_counter()))
    assert codes == ["queued", "executed"]
    assert [e.event for e in audit.iter_entries(store)] == [
        "decision.realtime", "action.requested",
        "decision.realtime", "action.automated", "action.executed",
    ]  # fmt: skip
    assert {i.subject_id: i.status for i in ap.list_items(store)} == {
        "in_assisted": "pending", "in_autonomous": "executed",
    }  # fmt: skip
    assert audit.verify(store).ok
