"""The action queue: roles, maker-checker, state checks, execute-once, rollback, pause."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from workbench import approvals as ap
from workbench import audit
from workbench.approvals import Identity, Role
from workbench.config import load_settings
from workbench.policy import Policy, parse_policy

NOW = pd.Timestamp("2024-06-03T10:00:00", tz="UTC")
POLICY = Policy()
ALICE = Identity("alice", Role.ANALYST)
ADA = Identity("ada", Role.ADMIN)
BOB = Identity("bob", Role.APPROVER)
CAROL = Identity("carol", Role.APPROVER)
VIC = Identity("vic", Role.VIEWER)
STATE = {
    "invoice_id": "in_1",
    "amount_due": 12_000,
    "attempt_count": 4,
    "recommendation": "write_off",
}


@pytest.fixture()
def store(tmp_path: Path) -> ap.ApprovalStore:
    return ap.ApprovalStore(f"sqlite:///{tmp_path / 'approvals.sqlite'}")


@pytest.fixture(autouse=True)
def _restore_executors():
    saved = dict(ap._EXECUTORS)
    yield
    ap._EXECUTORS.clear()
    ap._EXECUTORS.update(saved)


def request_write_off(
    store, who=ALICE, state=STATE, subject="in_1", amount=12_000, **kw
) -> ap.Outcome:
    return ap.request_action(
        store, who=who, action_type="write_off", subject_id=subject, state=state, policy=POLICY,
        amount_minor=amount, currency="usd", amount_reporting_minor=amount, account_id="acct_1",
        payload={"reason_code": "credit_loss", "reason": "idle 70 days", "recovery_probability": 0.02}, now=NOW, **kw,
    )  # fmt: skip


def events(store) -> list[tuple[str, str, str | None]]:
    frame = audit.audit_frame(store, limit=None).iloc[::-1]
    return list(zip(frame["event"], frame["actor"], frame["item_id"], strict=True))


def same_state(item: ap.ActionItem) -> dict:
    return STATE


# --------------------------------------------------------------------------- roles


def test_roles_file_yaml_and_toml(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    (settings.data_dir).mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "roles.yaml").write_text(
        "roles:\n  alice: approver\n  vic: viewer\ndefault_role: analyst\n"
    )
    book = ap.load_roles(settings)
    assert book.role_of("alice") is Role.APPROVER and book.role_of("stranger") is Role.ANALYST
    toml = isolated_env / "roles.toml"
    toml.write_text('[roles]\nada = "admin"\n')
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(toml))
    assert ap.load_roles(settings).role_of("ada") is Role.ADMIN
    assert ap.load_roles(settings).role_of("alice") is Role.VIEWER  # default default


@pytest.mark.parametrize(
    "text",
    [
        "roles:\n  alice: superuser\n",
        "roles:\n  'system:dunning': admin\n",
        "roles: [alice]\n",
        "roles: {a: 1\n",
    ],
)
def test_bad_roles_files_are_refused(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = isolated_env / "roles.yaml"
    path.write_text(text)
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(path))
    with pytest.raises(ap.RolesError, match=str(path)):
        ap.load_roles(load_settings())


def test_roles_file_is_read_as_utf8_and_other_bytes_are_a_roles_error(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = isolated_env / "roles.yaml"
    path.write_bytes("roles:\n  zoë: approver\n".encode())
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(path))
    assert ap.load_roles(load_settings()).role_of("zoë") is Role.APPROVER
    path.write_bytes("roles:\n  zoë: approver\n".encode("latin-1"))
    with pytest.raises(ap.RolesError, match="not UTF-8"):
        ap.load_roles(load_settings())


def test_identity_comes_from_the_server_environment_never_the_url(
    isolated_env: Path, monkeypatch
) -> None:
    settings = load_settings()
    path = isolated_env / "roles.yaml"
    path.write_text("roles:\n  vic: viewer\n  ada: admin\n")
    env = {"WORKBENCH_ROLES_FILE": str(path), "WORKBENCH_USER": "vic", "QUERY_STRING": "user=ada&role=admin",
           "JUPYTERHUB_USER": "ada"}  # fmt: skip
    who = ap.resolve_identity(settings, env)
    assert (who.user, who.role) == ("vic", Role.VIEWER)
    del env["WORKBENCH_USER"]
    assert ap.resolve_identity(settings, env).user == "ada"  # JupyterHub's authenticated owner
    assert ap.local_user({}) != ""  # the OS account
    # no roles file: everyone is a viewer
    assert ap.resolve_identity(settings, {"WORKBENCH_USER": "ada"}).role is Role.VIEWER


# --------------------------------------------------------------------------- requests


def test_request_is_idempotent_per_subject_action_policy_and_state(store) -> None:
    first = request_write_off(store)
    again = request_write_off(store)
    assert first.code == "queued" and again.code == "duplicate" and again.item_id == first.item_id
    other_state = request_write_off(store, state={**STATE, "attempt_count": 5})
    other_policy = ap.request_action(
        store, who=ALICE, action_type="write_off", subject_id="in_1", state=STATE,
        policy=parse_policy({"label": "v2"}), payload={"reason_code": "credit_loss"}, now=NOW,
    )  # fmt: skip
    assert other_state.code == other_policy.code == "queued"
    assert len({first.item_id, other_state.item_id, other_policy.item_id}) == 3
    assert len(ap.list_items(store)) == 3
    assert [e[0] for e in events(store)] == ["action.requested"] * 3


def test_request_validation_and_roles(store) -> None:
    with pytest.raises(ValueError, match="reason_code"):
        ap.request_action(
            store, who=ALICE, action_type="write_off", subject_id="x", state={}, policy=POLICY
        )
    with pytest.raises(ValueError, match="unknown action type"):
        ap.request_action(
            store, who=ALICE, action_type="launch", subject_id="x", state={}, policy=POLICY
        )
    with pytest.raises(ValueError, match="minor units"):
        request_write_off(store, amount=12.5)
    with pytest.raises(ValueError, match="only system identities"):
        request_write_off(store, auto_execute=True)
    out = request_write_off(store, who=VIC)
    assert out.code == "denied" and not ap.list_items(store)
    assert events(store) == [("action.denied", "vic", None)]


# --------------------------------------------------------------------------- approvals


def test_approver_approves_and_write_off_is_a_new_entry_with_reason_code(store) -> None:
    item_id = request_write_off(store).item_id
    out = ap.approve(store, item_id, who=BOB, current_state=same_state, comment="agreed", now=NOW)
    assert out.ok and out.code == "executed"
    item = ap.get_item(store, item_id)
    assert (item.status, item.decided_by, item.decision_comment) == ("executed", "bob", "agreed")
    ex = ap.executions_frame(store)
    assert len(ex) == 1
    row = ex.iloc[0]
    assert (row.kind, row.action_type, row.subject_id, row.amount_minor, row.reason_code) == (
        "execute", "write_off", "in_1", 12_000, "credit_loss",
    )  # fmt: skip
    assert [e[0] for e in events(store)] == [
        "action.requested",
        "action.approved",
        "action.executed",
    ]
    again = ap.approve(store, item_id, who=CAROL, current_state=same_state, now=NOW)
    assert again.code == "not_pending" and len(ap.executions_frame(store)) == 1
    # executions are append-only in the database
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE executions SET reason_code = 'price_concession'")
    conn.close()
    assert audit.verify(store).ok


@pytest.mark.parametrize("who", [VIC, ALICE], ids=["viewer", "analyst"])
def test_roles_below_approver_cannot_approve_and_are_audited(store, who: Identity) -> None:
    item_id = request_write_off(store, who=ADA).item_id
    out = ap.approve(store, item_id, who=who, current_state=same_state, now=NOW)
    assert out.code == "denied"
    assert ap.get_item(store, item_id).status == "pending"
    assert ap.executions_frame(store).empty
    assert events(store)[-1] == ("action.denied", who.user, item_id)
    denied = audit.audit_frame(store, event_prefix="action.denied").iloc[0]
    assert '"attempted":"approve"' in denied["details"]


def test_maker_checker_holds_even_for_admins(store) -> None:
    item_id = request_write_off(store, who=ADA).item_id
    out = ap.approve(store, item_id, who=ADA, current_state=same_state, now=NOW)
    assert out.code == "denied" and "maker-checker" in out.message
    assert ap.get_item(store, item_id).status == "pending"
    assert events(store)[-1] == ("action.denied", "ada", item_id)
    assert ap.approve(store, item_id, who=BOB, current_state=same_state, now=NOW).code == "executed"


def test_changed_or_missing_state_makes_the_item_stale(store) -> None:
    item_id = request_write_off(store).item_id
    changed = ap.approve(
        store, item_id, who=BOB, current_state=lambda i: {**STATE, "amount_due": 0}, now=NOW
    )
    assert changed.code == "stale"
    assert ap.get_item(store, item_id).status == "stale"
    assert ap.executions_frame(store).empty
    assert events(store)[-1][0] == "action.stale"
    assert (
        ap.approve(store, item_id, who=CAROL, current_state=same_state, now=NOW).code
        == "not_pending"
    )

    gone = request_write_off(store, subject="in_2").item_id
    assert ap.approve(store, gone, who=BOB, current_state=lambda i: None, now=NOW).code == "stale"


def test_latest_state_provider_sees_recorded_changes(store) -> None:
    provider = ap.LatestStateProvider(store)
    first = request_write_off(store).item_id
    assert provider(ap.get_item(store, first)) == STATE
    second = request_write_off(store, subject="in_2", state={**STATE, "invoice_id": "in_2"}).item_id
    # the invoice in_2 moved on (a new attempt was made): recorded by whoever saw it
    n = ap.record_states(store, who=ap.ENGINE, scope="write_off",
                         states={"in_2": {**STATE, "invoice_id": "in_2", "attempt_count": 5}}, now=NOW)  # fmt: skip
    assert n == 1 and ap.get_item(store, second).status == "superseded"
    assert ap.approve(store, second, who=BOB, current_state=provider, now=NOW).code == "not_pending"
    assert ap.approve(store, first, who=BOB, current_state=provider, now=NOW).code == "executed"


def test_a_superseded_or_stale_proposal_can_be_queued_again_a_rejected_one_cannot(store) -> None:
    # superseded: the invoice moved on, then came back to the state of the first proposal
    first = request_write_off(store).item_id
    moved = {**STATE, "attempt_count": 5}
    ap.record_states(store, who=ap.ENGINE, scope="write_off", states={"in_1": moved}, now=NOW)
    assert ap.get_item(store, first).status == "superseded"
    ap.record_states(store, who=ap.ENGINE, scope="write_off", states={"in_1": STATE}, now=NOW)
    again = request_write_off(store)
    assert again.code == "queued" and again.item_id != first
    assert request_write_off(store).code == "duplicate"  # while it is pending, one item
    # stale: found changed at approval, then the same proposal is needed again
    changed = ap.approve(store, again.item_id, who=BOB, current_state=lambda i: moved, now=NOW)
    assert changed.code == "stale"
    third = request_write_off(store)
    assert third.code == "queued" and third.item_id not in (first, again.item_id)
    # a person's rejection stands: the same proposal is not queued again
    assert (
        ap.reject(store, third.item_id, who=BOB, comment="paid by wire", now=NOW).code == "rejected"
    )
    assert request_write_off(store).code == "duplicate"
    statuses = sorted(i.status for i in ap.list_items(store))
    assert statuses == ["rejected", "stale", "superseded"]
    assert audit.verify(store).ok


def _slow_same_state(item: ap.ActionItem) -> dict:
    time.sleep(0.05)  # every thread passes the pre-checks before any of them updates
    return STATE


def _race_in_thread(store, item_id, who, barrier, results) -> None:
    barrier.wait()
    results.append(
        ap.approve(
            ap.ApprovalStore(store.url), item_id, who=who, current_state=_slow_same_state, now=NOW
        )
    )


def test_racing_approvers_in_threads_execute_once(store) -> None:
    calls = []
    ap.register_executor(
        "write_off", lambda item, ctx: calls.append(ctx.actor) or {"reason_code": "credit_loss"}
    )
    item_id = request_write_off(store).item_id
    approvers = [Identity(f"approver{i}", Role.APPROVER) for i in range(8)]
    barrier, results = threading.Barrier(len(approvers)), []
    threads = [
        threading.Thread(target=_race_in_thread, args=(store, item_id, w, barrier, results))
        for w in approvers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(o.code for o in results)
    assert codes == ["executed"] + ["not_pending"] * 7
    assert len(calls) == 1
    assert len(ap.executions_frame(store)) == 1
    assert [e[0] for e in events(store)].count("action.executed") == 1
    assert [e[0] for e in events(store)].count("action.approved") == 1
    assert audit.verify(store).ok


def _race_in_process(url: str, item_id: str, user: str, barrier, queue) -> None:
    barrier.wait()
    out = ap.approve(
        ap.ApprovalStore(url),
        item_id,
        who=Identity(user, Role.APPROVER),
        current_state=_slow_same_state,
        now=NOW,
    )
    queue.put(out.code)


def test_racing_approvers_in_processes_execute_once(store) -> None:
    item_id = request_write_off(store).item_id
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_race_in_process, args=(store.url, item_id, f"p{i}", barrier, queue))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    codes = sorted(queue.get(timeout=5) for _ in procs)
    assert codes == ["executed", "not_pending", "not_pending", "not_pending"]
    assert len(ap.executions_frame(store)) == 1
    assert [e[0] for e in events(store)].count("action.executed") == 1


def test_reject_needs_a_comment_and_ends_the_item(store) -> None:
    item_id = request_write_off(store).item_id
    assert ap.reject(store, item_id, who=VIC, comment="no", now=NOW).code == "denied"
    assert ap.reject(store, item_id, who=BOB, comment="  ", now=NOW).code == "denied"
    assert (
        ap.reject(store, item_id, who=BOB, comment="customer paid by wire", now=NOW).code
        == "rejected"
    )
    assert (
        ap.approve(store, item_id, who=CAROL, current_state=same_state, now=NOW).code
        == "not_pending"
    )
    assert ap.get_item(store, item_id).status == "rejected"
    assert ap.executions_frame(store).empty


def test_a_failing_executor_marks_the_item_failed(store) -> None:
    def broken(item, ctx):
        raise ConnectionError("payment processor down")

    ap.register_executor("write_off", broken)
    item_id = request_write_off(store).item_id
    out = ap.approve(store, item_id, who=BOB, current_state=same_state, now=NOW)
    assert out.code == "failed" and "payment processor down" in out.message
    assert ap.get_item(store, item_id).status == "failed"
    assert ap.executions_frame(store).empty
    assert events(store)[-1][0] == "action.failed"


def test_executors_get_the_settings_the_store_was_opened_with(isolated_env: Path) -> None:
    """Two workbenches in one process sharing an approvals URL, not a policy file: each
    approval's executor sees the settings of the store it was approved through (not the
    first opener's); a store opened from a URL has none."""
    seen = []
    ap.register_executor("write_off", lambda item, ctx: seen.append(ctx.settings) or {})
    first = load_settings(overrides={"policy_file": str(isolated_env / "a.yaml")})
    second = load_settings(overrides={"policy_file": str(isolated_env / "b.yaml")})
    assert first.approvals_url == second.approvals_url
    mine, theirs, bare = (ap.open_store(w) for w in (first, second, first.approvals_url))
    assert (mine.settings, theirs.settings, bare.settings) == (first, second, None)
    for store, subject in ((theirs, "in_2"), (mine, "in_1"), (bare, "in_3")):
        item_id = request_write_off(store, subject=subject).item_id
        out = ap.approve(store, item_id, who=BOB, current_state=same_state, now=NOW)
        assert out.code == "executed", out.message
    assert [s and s.policy_file for s in seen] == [second.policy_file, first.policy_file, None]
    # one database: every item is seen through any of them
    assert len(ap.list_items(bare)) == 3


def test_write_off_executor_refuses_a_missing_reason_code(store) -> None:
    item_id = request_write_off(store).item_id
    item = ap.get_item(store, item_id)
    bad = ap.ActionItem(**{**item.__dict__, "payload": {}})
    with pytest.raises(ValueError, match="reason code"):
        ap.execute_write_off(bad, ap.ExecutionContext(store, "bob", NOW))


# --------------------------------------------------------------------------- automation, rollback, bulk


def auto_retry(store, subject="in_9", amount=4_000, policy=POLICY) -> ap.Outcome:
    return ap.request_action(
        store, who=ap.ENGINE, action_type="retry_payment", subject_id=subject, state={"invoice_id": subject},
        policy=policy, amount_minor=amount, currency="usd", amount_reporting_minor=amount, auto_execute=True, now=NOW,
    )  # fmt: skip


def test_automated_action_runs_once_and_rolls_back_within_its_window(store) -> None:
    undone = []
    ap.register_executor(
        "retry_payment",
        ap.record_only,
        rollback=lambda item, ctx: undone.append(item.item_id) or {"cancelled": True},
    )
    out = auto_retry(store)
    assert out.code == "executed"
    assert auto_retry(store).code == "duplicate"
    item = ap.get_item(store, out.item_id)
    assert item.decided_by == f"policy:{POLICY.version}"
    assert item.rollback_until == NOW + pd.Timedelta(hours=24)
    assert ap.rollback(store, out.item_id, who=VIC, reason="x", now=NOW).code == "denied"
    late = NOW + pd.Timedelta(hours=25)
    assert ap.rollback(store, out.item_id, who=BOB, reason="oops", now=late).code == "window_closed"
    ok = ap.rollback(
        store, out.item_id, who=BOB, reason="customer asked", now=NOW + pd.Timedelta(hours=2)
    )
    assert ok.code == "rolled_back" and undone == [out.item_id]
    assert ap.rollback(store, out.item_id, who=CAROL, reason="again", now=NOW).code == "not_pending"
    ex = ap.executions_frame(store)
    assert list(ex["kind"]) == ["execute", "rollback"]
    assert ap.get_item(store, out.item_id).status == "rolled_back"
    assert "action.rolled_back" in [e[0] for e in events(store)]


def test_automation_above_the_approval_amount_is_refused(store) -> None:
    with pytest.raises(ValueError, match="without approval"):
        auto_retry(store, amount=POLICY.approval.amount_above_minor + 1)
    with pytest.raises(ValueError, match="without approval"):
        ap.request_action(store, who=ap.ENGINE, action_type="write_off", subject_id="x", state={}, policy=POLICY,
                          amount_reporting_minor=1, payload={"reason_code": "credit_loss"}, auto_execute=True)  # fmt: skip
    with pytest.raises(ValueError, match="shadow mode"):
        auto_retry(store, policy=parse_policy({"shadow": True}))
    assert ap.list_items(store) == []


def test_pause_and_resume_are_persistent_admin_only_and_audited(store) -> None:
    assert ap.pause_automation(store, who=BOB, action_type="retry_payment").code == "denied"
    assert ap.paused_action_types(store) == frozenset()
    assert ap.pause_automation(
        store, who=ADA, action_type="retry_payment", reason="drift alarm", now=NOW
    ).ok
    assert ap.paused_action_types(ap.ApprovalStore(store.url)) == {
        "retry_payment"
    }  # survives a new connection
    assert auto_retry(store).code == "paused" and ap.list_items(store) == []
    monitoring = ap.system_identity("monitoring")
    assert ap.pause_automation(store, who=monitoring, reason="champion degraded", now=NOW).ok
    assert ap.resume_automation(store, who=ADA, action_type="retry_payment", now=NOW).ok
    assert ap.paused_action_types(store) == {"*"}  # everything still paused
    assert auto_retry(store).code == "paused"
    assert ap.resume_automation(store, who=ADA, now=NOW).ok
    assert auto_retry(store).code == "executed"
    evs = [(e[0], e[1]) for e in events(store) if e[0].startswith(("automation", "action.denied"))]
    assert evs == [
        ("action.denied", "bob"), ("automation.paused", "ada"), ("automation.paused", "system:monitoring"),
        ("automation.resumed", "ada"), ("automation.resumed", "ada"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown action type"):
        ap.pause_automation(store, who=ADA, action_type="retry")


def test_bulk_approve_only_low_risk_items_the_policy_allows(store) -> None:
    def retry(subject, amount, who=ALICE):
        return ap.request_action(store, who=who, action_type="retry_payment", subject_id=subject,
                                 state={"s": subject}, policy=POLICY, amount_minor=amount, currency="usd",
                                 amount_reporting_minor=amount, now=NOW).item_id  # fmt: skip

    low, medium, own = retry("a", 10_000), retry("b", 60_000), retry("c", 5_000, who=BOB)
    write_off = request_write_off(store, amount=100)
    provider = ap.LatestStateProvider(store)
    denied = ap.bulk_approve(store, [low], who=VIC, policy=POLICY, current_state=provider, now=NOW)
    assert [o.code for o in denied] == ["denied"]
    outs = ap.bulk_approve(store, [low, medium, own, write_off.item_id, "nope"], who=BOB, policy=POLICY,
                           current_state=provider, comment="batch", now=NOW)  # fmt: skip
    assert [o.code for o in outs] == [
        "executed",
        "not_eligible",
        "denied",
        "not_eligible",
        "not_found",
    ]
    assert ap.get_item(store, medium).status == "pending"
    off = parse_policy({"bulk_approval": {"enabled": False}})
    assert [
        o.code for o in ap.bulk_approve(store, [own], who=CAROL, policy=off, current_state=provider)
    ] == ["not_eligible"]


def test_queue_frame_and_filters(store) -> None:
    request_write_off(store)
    auto_retry(store)
    later = NOW + pd.Timedelta(hours=5)
    frame = ap.queue_frame(store, now=later)
    assert len(frame) == 2 and str(frame["requested_at"].dtype) == "datetime64[us, UTC]"
    assert frame["age_hours"].tolist() == [5.0, 5.0]
    pending = ap.queue_frame(store, statuses=["pending"], now=later)
    assert pending["action_type"].tolist() == ["write_off"]
    assert pending["recovery_probability"].tolist() == [0.02]
    f = ap.filter_queue
    assert len(f(frame, action_type="retry_payment")) == 1
    assert len(f(frame, min_amount_minor=5_000)) == 1
    assert len(f(frame, max_amount_minor=5_000)) == 1
    assert len(f(frame, risk="low")) == 2
    assert len(f(frame, min_age_hours=6)) == 0
    assert bool(frame.set_index("action_type").loc["retry_payment", "can_roll_back"]) is True


def test_an_action_interrupted_mid_run_is_closed_as_failed_and_can_be_proposed_again(store) -> None:
    def killed(item, ctx):
        raise KeyboardInterrupt  # the process stops while the effect runs (not an Exception)

    ap.register_executor("write_off", killed)
    item_id = request_write_off(store).item_id
    with pytest.raises(KeyboardInterrupt):
        ap.approve(store, item_id, who=BOB, current_state=same_state, now=NOW)
    assert ap.get_item(store, item_id).status == "approved" and ap.executions_frame(store).empty
    assert request_write_off(store).code == "duplicate"  # stuck: held by the claimed item
    # a run a minute later leaves it alone (it may still be running elsewhere) ...
    early = NOW + pd.Timedelta(minutes=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=early) == []
    # ... later it is closed, audited, and the proposal can be queued again
    late = NOW + pd.Timedelta(minutes=20)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=late) == [item_id]
    assert ap.get_item(store, item_id).status == "failed"
    last = audit.audit_frame(store, item_id=item_id, limit=1).iloc[0]
    assert last["event"] == "action.interrupted" and "unknown" in last["details"]
    assert request_write_off(store).code == "queued"
    with pytest.raises(PermissionError):
        ap.recover_interrupted(store, who=VIC, now=late)


def test_a_recover_hook_says_whether_an_interrupted_action_took_effect(store) -> None:
    """An action type that can tell (its ``recover`` hook) closes an interrupted item as
    executed or as failed with "nothing changed"; a hook that fails leaves it to a person."""

    def killed(item, ctx):
        raise KeyboardInterrupt

    def ledger(item, ctx):
        assert ap.get_item(ctx.store, item.item_id).status == "approved"  # hooks may read
        if item.subject_id == "in_broken":
            raise OSError("ledger unreachable")
        booked = item.subject_id == "in_booked"
        return ap.Recovered(booked, f"ledger {'has' if booked else 'has no'} entry",
                            {"invoice_id": item.subject_id})  # fmt: skip

    ap.register_executor("write_off", killed, recover=ledger)
    ids = {}
    for invoice in ("in_booked", "in_missing", "in_broken"):
        ids[invoice] = request_write_off(store, subject=invoice).item_id
        with pytest.raises(KeyboardInterrupt):
            ap.approve(store, ids[invoice], who=BOB, current_state=same_state, now=NOW)
    late = NOW + pd.Timedelta(minutes=20)
    assert sorted(ap.recover_interrupted(store, who=ap.ENGINE, now=late)) == sorted(ids.values())
    status = {k: ap.get_item(store, v).status for k, v in ids.items()}
    assert status == {"in_booked": "executed", "in_missing": "failed", "in_broken": "failed"}
    [execution] = ap.executions_frame(store).to_dict("records")
    assert execution["item_id"] == ids["in_booked"] and execution["actor"] == "bob"
    notes = {
        k: audit.audit_frame(store, item_id=v, event_prefix="action.interrupted").iloc[0]["details"]
        for k, v in ids.items()
    }
    assert "took effect (ledger has entry): recorded as executed" in notes["in_booked"]
    assert "did not take effect (ledger has no entry): nothing changed" in notes["in_missing"]
    assert "unknown" in notes["in_broken"] and "payment processor" in notes["in_broken"]
    assert audit.verify(store).ok


def test_a_rollback_interrupted_mid_run_is_on_record_and_closed(store) -> None:
    def killed(item, ctx):
        raise KeyboardInterrupt

    ap.register_executor("retry_payment", ap.record_only, rollback=killed)
    out = ap.request_action(
        store, who=ap.ENGINE, action_type="retry_payment", subject_id="in_2",
        state={"invoice_id": "in_2"}, policy=POLICY, amount_minor=500, currency="usd",
        amount_reporting_minor=500, auto_execute=True, now=NOW,
    )  # fmt: skip
    assert out.code == "executed"
    with pytest.raises(KeyboardInterrupt):
        ap.rollback(store, out.item_id, who=BOB, reason="customer called", now=NOW)
    events = audit.audit_frame(store, item_id=out.item_id, limit=None)["event"].tolist()
    assert "action.rollback_started" in events  # who started it is recorded
    later = NOW + pd.Timedelta(minutes=20)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [out.item_id]
    assert ap.get_item(store, out.item_id).status == "rollback_failed"
    assert audit.verify(store).ok


def test_a_recover_rollback_hook_says_whether_an_interrupted_rollback_took_effect(store) -> None:
    """``recover_rollback`` is asked about interrupted rollbacks (``recover`` only about
    executions): one that took effect is recorded as rolled back, by whoever started it; one
    that did not is ``executed`` again, as after a refused rollback; otherwise a person checks."""

    def killed(item, ctx):
        raise KeyboardInterrupt

    asked_about_executions = []

    def processor(item, ctx):
        assert ap.get_item(ctx.store, item.item_id).status == "rolled_back"  # hooks may read
        return {
            "in_refunded": ap.Recovered(True, "refund found", {"refund_id": "re_1"}),
            "in_charged": ap.Recovered(False, "no refund"),
            "in_unsure": None,
        }[item.subject_id]

    ap.register_executor("retry_payment", ap.record_only, rollback=killed,
                         recover=lambda item, ctx: asked_about_executions.append(item),
                         recover_rollback=processor)  # fmt: skip
    ids = {}
    for invoice in ("in_refunded", "in_charged", "in_unsure"):
        ids[invoice] = auto_retry(store, subject=invoice, amount=500).item_id
        with pytest.raises(KeyboardInterrupt):
            ap.rollback(store, ids[invoice], who=BOB, reason="customer called", now=NOW)
    later = NOW + pd.Timedelta(minutes=20)
    assert sorted(ap.recover_interrupted(store, who=ap.ENGINE, now=later)) == sorted(ids.values())
    assert asked_about_executions == []
    status = {k: ap.get_item(store, v).status for k, v in ids.items()}
    assert status == {"in_refunded": "rolled_back", "in_charged": "executed",
                      "in_unsure": "rollback_failed"}  # fmt: skip
    ex = ap.executions_frame(store)
    [rollback] = ex[ex["kind"] == "rollback"].to_dict("records")
    assert (rollback["item_id"], rollback["actor"]) == (ids["in_refunded"], "bob")
    assert json.loads(rollback["result"]) == {"reason": "customer called", "refund_id": "re_1"}
    notes = {
        k: audit.audit_frame(store, item_id=v, event_prefix="action.interrupted").iloc[0]
        for k, v in ids.items()
    }
    notes = {k: json.loads(entry["details"])["message"] for k, entry in notes.items()}
    assert "took effect (refund found): recorded as rolled back" in notes["in_refunded"]
    assert "did not take effect (no refund): nothing changed" in notes["in_charged"]
    assert "unknown" in notes["in_unsure"]
    # back to executed: it can be rolled back again within its window
    ap.register_executor("retry_payment", ap.record_only, rollback=lambda i, c: {"cancelled": True})
    again = ap.rollback(store, ids["in_charged"], who=CAROL, reason="again", now=later)
    assert again.code == "rolled_back", again.message
    assert audit.verify(store).ok


def test_an_interrupted_automatic_action_is_not_run_again_by_itself(store) -> None:
    def killed(item, ctx):
        raise KeyboardInterrupt

    ap.register_executor("retry_payment", killed)

    def retry() -> ap.Outcome:
        return ap.request_action(
            store, who=ap.ENGINE, action_type="retry_payment", subject_id="in_3",
            state={"invoice_id": "in_3"}, policy=POLICY, amount_minor=500, currency="usd",
            amount_reporting_minor=500, auto_execute=True, now=NOW,
        )  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        retry()
    (item,) = ap.list_items(store)
    later = NOW + pd.Timedelta(minutes=20)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [item.item_id]
    assert retry().code == "duplicate"  # the same state does not run it a second time


def test_a_process_that_imports_only_the_queue_runs_model_actions() -> None:
    """The approvals dashboard's kernel imports the queue, never the registry: a model
    promotion approved there must still promote (not be recorded as done), and be checked
    against the registry as it is now."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from workbench import approvals as ap\n"
        "assert 'workbench.models.registry' not in sys.modules\n"
        "ex = ap.executor_for('model_promotion')\n"
        "print(ex.execute.__module__, ex.execute.__name__, ap.executor_for('model_rollback').execute.__name__)\n"
        "print(ap._STATE_PROVIDERS['model_registry'].__name__)\n"
        "print(ap.executor_for('retry_payment').execute.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == [
        "workbench.models.registry _execute_promotion _execute_rollback",
        "current_state",
        "record_only",
    ]
