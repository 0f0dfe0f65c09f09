"""Policy changes through the approvals queue: propose, approve, stale, roll back, crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from workbench import approvals as ap
from workbench import audit
from workbench.approvals import Identity, Role
from workbench.config import load_settings
from workbench.policy import PolicyError, load_policy

REPO = Path(__file__).resolve().parents[1]
DEFAULT = (REPO / "workbench" / "policies" / "default.yaml").read_text()
NOW = pd.Timestamp("2024-06-03T10:00:00", tz="UTC")
ALICE = Identity("alice", Role.ANALYST)
BOB = Identity("bob", Role.APPROVER)
VIC = Identity("vic", Role.VIEWER)
# a real edit of the shipped file: a stricter retry threshold and a new label
PROPOSED = DEFAULT.replace(
    "min_recovery_probability: 0.6", "min_recovery_probability: 0.7"
).replace('label: "default"', 'label: "2024-06 stricter retries"')


@pytest.fixture()
def settings(isolated_env: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings whose policy file is a copy of the shipped one in a temporary folder."""
    policy = isolated_env / "policy" / "dunning.yaml"
    policy.parent.mkdir()
    policy.write_text(DEFAULT)
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(policy))
    return load_settings()


@pytest.fixture()
def pc():
    from workbench import policy_changes

    return policy_changes


def propose(pc, settings, text: str = PROPOSED, who: Identity = ALICE):
    return pc.propose_policy_change(
        settings, text, who=who, reason="recoveries below 0.7 rarely pay", now=NOW
    )


def approve(settings, item_id: str, who: Identity = BOB) -> ap.Outcome:
    store = ap.open_store(settings)
    return ap.approve(store, item_id, who=who, current_state=ap.CurrentState(store), now=NOW)


def items(settings) -> list[ap.ActionItem]:
    return ap.list_items(ap.open_store(settings), action_types=["policy_change"])


def test_propose_then_approve_writes_the_new_policy(pc, settings) -> None:
    before = load_policy(settings=settings)
    proposal = propose(pc, settings)
    assert proposal.outcome.code == "queued"
    assert proposal.diff == [
        ("label", "default", "2024-06 stricter retries"),
        ("retries.min_recovery_probability", 0.6, 0.7),
    ]
    path = Path(settings.policy_file)
    assert path.read_text() == DEFAULT  # nothing changes before an approval
    item = ap.get_item(ap.open_store(settings), proposal.item_id)
    assert item.action_type == "policy_change" and item.risk == "high"
    assert item.payload["proposed_yaml"] == PROPOSED
    assert item.payload["old_sha256"] == pc.sha256_bytes(DEFAULT.encode())
    assert item.payload["diff"][1] == {
        "key": "retries.min_recovery_probability", "old": 0.6, "new": 0.7
    }  # fmt: skip

    out = approve(settings, proposal.item_id)
    assert out.code == "executed", out.message
    assert path.read_text() == PROPOSED
    after = load_policy(settings=settings)
    assert after.retries.min_recovery_probability == 0.7 and after.version != before.version
    kept = pc.history_dir(settings) / f"{pc.sha256_bytes(DEFAULT.encode())}.yaml"
    assert kept.read_text() == DEFAULT
    [execution] = ap.executions_frame(ap.open_store(settings)).to_dict("records")
    result = json.loads(execution["result"])
    assert result["old_sha256"] == pc.sha256_bytes(DEFAULT.encode())
    assert result["new_sha256"] == pc.sha256_bytes(PROPOSED.encode())
    assert result["version"] == after.version and execution["actor"] == "bob"
    assert audit.verify(ap.open_store(settings)).ok


def test_the_queue_carries_out_a_policy_change_in_a_fresh_process(pc, settings) -> None:
    """The dashboard's kernel imports only workbench.approvals: approving must still write
    the file (the executor is found through approvals._OWNERS), not just record it."""
    proposal = propose(pc, settings)
    code = textwrap.dedent(f"""
        import sys
        from workbench import approvals as ap
        from workbench.config import load_settings
        assert "workbench.policy_changes" not in sys.modules
        store = ap.open_store(load_settings())
        out = ap.approve(store, {proposal.item_id!r}, who=ap.Identity("bob", ap.Role.APPROVER),
                         current_state=ap.CurrentState(store))
        print(out.code, out.message)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("executed"), run.stdout
    assert Path(settings.policy_file).read_text() == PROPOSED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("retries: [1, 2\n", "not valid YAML"),
        ("retries:\n  min_recovery_probability: 1.7\n", "retries.min_recovery_probability"),
        ("retires:\n  max_auto_retries: 3\n", "did you mean 'retries'"),
        ("automation:\n  levels:\n    policy_change: autonomous\n", "always needs a human"),
        ("currency: eur\n", "reporting currency"),
    ],
)
def test_an_invalid_proposal_is_refused_and_nothing_is_queued(pc, settings, text, expected) -> None:
    with pytest.raises(PolicyError, match=expected):
        propose(pc, settings, text)
    assert items(settings) == []
    assert Path(settings.policy_file).read_text() == DEFAULT


def test_an_invalid_proposal_lists_every_problem(pc, settings) -> None:
    text = "retries:\n  min_recovery_probability: 2\ncollections:\n  min_amount_minor: -1\n"
    with pytest.raises(PolicyError) as err:
        propose(pc, settings, text)
    assert len(err.value.problems) == 2
    assert "retries.min_recovery_probability" in str(err.value)
    assert "collections.min_amount_minor" in str(err.value)


def test_a_proposal_that_changes_nothing_is_refused(pc, settings) -> None:
    # other comments and order, the same values: not a change
    same = "# reworded\n" + DEFAULT.replace("# Shadow mode", "# shadow mode")
    with pytest.raises(pc.PolicyChangeError, match="same as the current one"):
        propose(pc, settings, same)
    assert items(settings) == []


def test_a_proposal_from_a_file(pc, settings, tmp_path) -> None:
    proposed = tmp_path / "stricter.yaml"
    proposed.write_text(PROPOSED)
    assert propose(pc, settings, proposed).outcome.code == "queued"
    assert propose(pc, settings, str(proposed)).outcome.code == "duplicate"
    with pytest.raises(pc.PolicyChangeError, match="no proposed policy file"):
        propose(pc, settings, tmp_path / "missing.yaml")


def test_the_same_proposal_twice_is_queued_once(pc, settings) -> None:
    first = propose(pc, settings)
    again = propose(pc, settings)
    assert (first.outcome.code, again.outcome.code) == ("queued", "duplicate")
    assert again.item_id == first.item_id
    other = propose(pc, settings, PROPOSED.replace("max_auto_retries: 8", "max_auto_retries: 6"))
    assert other.outcome.code == "queued" and other.item_id != first.item_id
    assert len(items(settings)) == 2


def test_the_same_text_can_be_proposed_again_once_the_earlier_proposal_is_closed(
    pc, settings
) -> None:
    store = ap.open_store(settings)
    first = propose(pc, settings)
    assert ap.reject(store, first.item_id, who=BOB, comment="not this month", now=NOW).ok
    second = propose(pc, settings)
    assert second.outcome.code == "queued" and second.item_id != first.item_id
    assert propose(pc, settings).item_id == second.item_id  # while pending: still one item
    assert approve(settings, second.item_id).code == "executed"
    assert ap.rollback(store, second.item_id, who=BOB, reason="too strict", now=NOW).ok
    third = propose(pc, settings)
    assert third.outcome.code == "queued"
    assert approve(settings, third.item_id).code == "executed"
    assert Path(settings.policy_file).read_text() == PROPOSED


def test_a_file_edited_after_the_proposal_makes_it_stale(pc, settings) -> None:
    proposal = propose(pc, settings)
    path = Path(settings.policy_file)
    edited = DEFAULT.replace("after_days_idle: 60", "after_days_idle: 90")
    path.write_text(edited)  # someone edits the file by hand meanwhile
    out = approve(settings, proposal.item_id)
    assert out.code == "stale"
    assert "propose" in out.message and "policy file changed" in out.message
    assert path.read_text() == edited
    assert ap.get_item(ap.open_store(settings), proposal.item_id).status == "stale"
    assert not pc.history_dir(settings).exists() or not any(pc.history_dir(settings).iterdir())
    # proposing again against the edited file works (the stale item gave up its key)
    assert propose(pc, settings).outcome.code == "queued"


def test_the_executor_itself_refuses_a_changed_file(pc, settings) -> None:
    """Belt and braces: a file edited between the state check and the write."""
    proposal = propose(pc, settings)
    path = Path(settings.policy_file)
    edited = DEFAULT.replace("after_days_idle: 60", "after_days_idle: 90")

    def edit_right_after_the_check(item: ap.ActionItem) -> dict:
        state = pc.current_state(item)
        path.write_text(edited)
        return state

    store = ap.open_store(settings)
    out = ap.approve(store, proposal.item_id, who=BOB, now=NOW,
                     current_state=edit_right_after_the_check)  # fmt: skip
    assert out.code == "failed" and "propose the change again" in out.message
    assert path.read_text() == edited


def test_a_person_without_the_approver_role_cannot_approve(pc, settings) -> None:
    proposal = propose(pc, settings)
    for who in (VIC, Identity("ann", Role.ANALYST)):
        out = approve(settings, proposal.item_id, who=who)
        assert out.code == "denied" and "approver or admin needed" in out.message
    own = approve(settings, proposal.item_id, who=Identity("alice", Role.ADMIN))
    assert own.code == "denied" and "maker-checker" in own.message
    assert Path(settings.policy_file).read_text() == DEFAULT
    store = ap.open_store(settings)
    assert ap.get_item(store, proposal.item_id).status == "pending"
    denied = audit.audit_frame(store, event_prefix="action.denied")
    assert sorted(denied["actor"]) == ["alice", "ann", "vic"]
    assert set(denied["item_id"]) == {proposal.item_id}


def test_a_viewer_cannot_propose(pc, settings) -> None:
    out = propose(pc, settings, who=VIC).outcome
    assert out.code == "denied" and items(settings) == []


def test_rollback_restores_the_old_file(pc, settings) -> None:
    proposal = propose(pc, settings)
    assert approve(settings, proposal.item_id).code == "executed"
    store = ap.open_store(settings)
    out = ap.rollback(store, proposal.item_id, who=BOB, reason="too strict", now=NOW)
    assert out.code == "rolled_back", out.message
    assert Path(settings.policy_file).read_text() == DEFAULT
    rollback = ap.executions_frame(store).set_index("kind").loc["rollback"]
    assert pc.sha256_bytes(DEFAULT.encode()) in rollback["result"]


def test_rollback_refuses_when_the_file_changed_after_the_change(pc, settings) -> None:
    proposal = propose(pc, settings)
    assert approve(settings, proposal.item_id).code == "executed"
    path = Path(settings.policy_file)
    later = PROPOSED.replace("after_days_idle: 60", "after_days_idle: 90")
    path.write_text(later)
    out = ap.rollback(ap.open_store(settings), proposal.item_id, who=BOB, reason="x", now=NOW)
    assert out.code == "refused" and "no longer the file this change wrote" in out.message
    assert path.read_text() == later
    # nothing was done, so the change can still be rolled back once the file is its own again
    assert ap.get_item(ap.open_store(settings), proposal.item_id).status == "executed"
    path.write_text(PROPOSED)
    out = ap.rollback(ap.open_store(settings), proposal.item_id, who=BOB, reason="y", now=NOW)
    assert out.code == "rolled_back" and path.read_text() == DEFAULT
    events = [e.event for e in audit.iter_entries(ap.open_store(settings))]
    assert events.count("action.rollback_refused") == 1 and "action.rolled_back" in events


def test_a_failed_replace_leaves_the_old_file_whole(pc, settings, monkeypatch) -> None:
    proposal = propose(pc, settings)
    path = Path(settings.policy_file)
    real_replace = pc.os.replace

    def crash_on_the_policy_file(src, dst):
        if Path(dst) == path:
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(pc.os, "replace", crash_on_the_policy_file)
    out = approve(settings, proposal.item_id)
    assert out.code == "failed" and "disk gone" in out.message
    assert path.read_text() == DEFAULT and load_policy(settings=settings).label == "default"
    left = [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")]
    assert left == [path.name]  # no temporary file left (the lock file stays, empty)


CRASH = """
import os, sys
from pathlib import Path
from workbench import approvals as ap, policy_changes as pc
from workbench.config import load_settings

settings = load_settings()
real_replace = os.replace
def die_at_the_policy_files_replace(src, dst):
    if Path(dst) == Path(settings.policy_file):
        if sys.argv[2] == "after":
            real_replace(src, dst)  # the new policy is in force; the outcome is never recorded
        os._exit(9)  # before: the new text is complete in its temporary file, never renamed
    real_replace(src, dst)
pc.os.replace = die_at_the_policy_files_replace
store = ap.open_store(settings)
if sys.argv[3] == "rollback":
    ap.rollback(store, sys.argv[1], who=ap.Identity("carol", ap.Role.APPROVER), reason="too strict")
else:
    ap.approve(store, sys.argv[1], who=ap.Identity("bob", ap.Role.APPROVER),
               current_state=ap.CurrentState(store))
"""


def crash_while_approving(item_id: str, when: str, step: str = "approve") -> None:
    """Approve ``item_id`` (or, ``step="rollback"``, roll it back as carol) in a child
    process that dies just ``before`` or just ``after`` the policy file is replaced (the
    history copy is written either way)."""
    run = subprocess.run([sys.executable, "-c", CRASH, item_id, when, step], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 9, run.stderr


def interrupted_notes(store) -> list[str]:
    return [json.loads(e.details)["message"] for e in audit.iter_entries(store)
            if e.event == "action.interrupted"]  # fmt: skip


def test_a_crash_between_the_history_copy_and_the_replace(pc, settings) -> None:
    proposal = propose(pc, settings)
    crash_while_approving(proposal.item_id, "before")
    path = Path(settings.policy_file)
    assert path.read_text() == DEFAULT and load_policy(settings=settings).label == "default"
    kept = pc.history_dir(settings) / f"{pc.sha256_bytes(DEFAULT.encode())}.yaml"
    assert kept.read_text() == DEFAULT  # the history copy was written before the crash
    [tmp] = [p for p in path.parent.iterdir() if p != path and p.suffix == ".tmp"]  # in full
    assert tmp.name.startswith(".") and tmp.read_text() == PROPOSED
    store = ap.open_store(settings)
    assert ap.get_item(store, proposal.item_id).status == "approved"  # claimed, never recorded
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)  # the child approved "now"
    assert ap.recover_interrupted(store, who=BOB, now=later) == [proposal.item_id]
    assert ap.get_item(store, proposal.item_id).status == "failed"
    [note] = interrupted_notes(store)
    # the file still has the hash it was proposed against: known not to have taken effect
    assert "did not take effect" in note and "nothing changed" in note
    assert "unknown" not in note and "payment processor" not in note
    assert ap.executions_frame(store).empty
    again = pc.propose_policy_change(settings, PROPOSED, who=ALICE, reason="again", now=later)
    assert again.outcome.code == "queued"
    assert approve(settings, again.item_id).code == "executed"
    assert path.read_text() == PROPOSED


def test_a_crash_right_after_the_replace_is_recovered_as_executed(pc, settings) -> None:
    """The new policy was in force when the process died: recovery records the change as
    executed (as the approval would have), so it can be rolled back in its window."""
    proposal = propose(pc, settings)
    crash_while_approving(proposal.item_id, "after")
    path = Path(settings.policy_file)
    assert path.read_text() == PROPOSED
    store = ap.open_store(settings)
    claimed = ap.get_item(store, proposal.item_id)
    assert claimed.status == "approved" and ap.executions_frame(store).empty
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [proposal.item_id]
    item = ap.get_item(store, proposal.item_id)
    assert item.status == "executed"
    # the window counts from the approval that wrote the file, not from the recovery
    assert item.executed_at == claimed.decided_at
    assert item.rollback_until == claimed.decided_at + pd.Timedelta(hours=24)
    [execution] = ap.executions_frame(store).to_dict("records")
    assert execution["kind"] == "execute" and execution["actor"] == "bob"
    kept = pc.history_dir(settings) / f"{pc.sha256_bytes(DEFAULT.encode())}.yaml"
    result = json.loads(execution["result"])
    assert result["history_file"] == str(kept) and result["policy_file"] == str(path)
    assert result["new_sha256"] == pc.sha256_bytes(PROPOSED.encode())
    assert result["version"] == load_policy(settings=settings).version
    [note] = interrupted_notes(store)
    assert "took effect" in note and "recorded as executed" in note and "unknown" not in note
    executed = [json.loads(e.details) for e in audit.iter_entries(store)
                if e.event == "action.executed"]  # fmt: skip
    assert [d["recovered"]["by"] for d in executed] == ["system:dunning"]
    assert audit.verify(store).ok
    out = ap.rollback(store, proposal.item_id, who=BOB, reason="too strict", now=later)
    assert out.code == "rolled_back", out.message
    assert path.read_text() == DEFAULT


@pytest.mark.parametrize("after", ["edited", "history_lost", "written_by_another_item"])
def test_a_recovered_policy_change_is_failed_when_the_file_does_not_say(
    pc, settings, after
) -> None:
    """Only the old hash (nothing written) or the new hash with the replaced file kept, and
    no other item that wrote the same text, say what happened; otherwise a person checks."""
    proposal = propose(pc, settings)
    path = Path(settings.policy_file)
    kept = pc.history_dir(settings) / f"{pc.sha256_bytes(DEFAULT.encode())}.yaml"
    store = ap.open_store(settings)
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)
    if after == "written_by_another_item":
        crash_while_approving(proposal.item_id, "before")
        again = pc.propose_policy_change(settings, PROPOSED, who=ALICE, reason="again", now=later)
        assert approve(settings, again.item_id).code == "executed"
    else:
        crash_while_approving(proposal.item_id, "after")
        if after == "edited":
            path.write_text(PROPOSED.replace("after_days_idle: 60", "after_days_idle: 90"))
        else:
            kept.unlink()
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [proposal.item_id]
    assert ap.get_item(store, proposal.item_id).status == "failed"
    [note] = interrupted_notes(store)
    assert "unknown" in note and "workbench policy show" in note
    assert [e["item_id"] for e in ap.executions_frame(store).to_dict("records")] == (
        [again.item_id] if after == "written_by_another_item" else []
    )


def executed_just_now(pc, settings) -> ap.ActionItem:
    """A policy change approved and written just now (the crashing child process uses the
    clock, so the change's override window must be open for it)."""
    proposal = propose(pc, settings)
    store = ap.open_store(settings)
    out = ap.approve(store, proposal.item_id, who=BOB, current_state=ap.CurrentState(store))
    assert out.code == "executed", out.message
    return ap.get_item(store, proposal.item_id)


def test_a_rollback_that_died_right_after_the_replace_is_recovered_as_rolled_back(
    pc, settings
) -> None:
    """The old policy was back when the rollback's process died: recovery records the
    rollback as the rollback would have (its entry and audit by the person who started it)."""
    executed = executed_just_now(pc, settings)
    crash_while_approving(executed.item_id, "after", "rollback")
    path = Path(settings.policy_file)
    assert path.read_text() == DEFAULT
    store = ap.open_store(settings)
    assert ap.get_item(store, executed.item_id).status == "rolled_back"  # claimed, not recorded
    assert list(ap.executions_frame(store)["kind"]) == ["execute"]
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [executed.item_id]
    item = ap.get_item(store, executed.item_id)
    assert item.status == "rolled_back" and item.rollback_until == executed.rollback_until
    _, rollback = ap.executions_frame(store).to_dict("records")
    assert (rollback["kind"], rollback["actor"]) == ("rollback", "carol")  # who started it
    kept = pc.history_dir(settings) / f"{pc.sha256_bytes(DEFAULT.encode())}.yaml"
    result = {
        "policy_file": str(path),
        "old_sha256": pc.sha256_bytes(PROPOSED.encode()),
        "new_sha256": pc.sha256_bytes(DEFAULT.encode()),
        "version": load_policy(settings=settings).version,
        "restored_from": str(kept),
    }  # what a rollback that returned records
    assert json.loads(rollback["result"]) == {"reason": "too strict", **result}
    [entry] = [e for e in audit.iter_entries(store) if e.event == "action.rolled_back"]
    details = json.loads(entry.details)
    assert entry.actor == "carol" and details["reason"] == "too strict"
    assert (details["execution_id"], details["result"]) == (rollback["execution_id"], result)
    assert details["recovered"]["by"] == "system:dunning"
    assert details["recovered"]["after"] == "an interruption"
    [note] = interrupted_notes(store)
    assert "was being rolled back" in note and "took effect" in note
    assert "recorded as rolled back" in note and "unknown" not in note
    assert audit.verify(store).ok
    # as after any rollback, the same change can be proposed again
    again = pc.propose_policy_change(settings, PROPOSED, who=ALICE, reason="again", now=later)
    assert again.outcome.code == "queued"


def test_a_rollback_that_died_before_the_replace_leaves_the_change_executed(pc, settings) -> None:
    """Nothing was restored: as after a refused rollback, the change stays executed (its
    window unchanged) and can be rolled back again while the window is open."""
    executed = executed_just_now(pc, settings)
    crash_while_approving(executed.item_id, "before", "rollback")
    path = Path(settings.policy_file)
    assert path.read_text() == PROPOSED
    store = ap.open_store(settings)
    assert ap.get_item(store, executed.item_id).status == "rolled_back"
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [executed.item_id]
    item = ap.get_item(store, executed.item_id)
    assert item.status == "executed" and item.can_roll_back(later)
    assert (item.executed_at, item.rollback_until) == (
        executed.executed_at, executed.rollback_until
    )  # fmt: skip
    assert list(ap.executions_frame(store)["kind"]) == ["execute"]
    [note] = interrupted_notes(store)
    assert "was being rolled back" in note and "did not take effect" in note
    assert "nothing changed" in note and "rolled back again" in note and "unknown" not in note
    [details] = [json.loads(e.details) for e in audit.iter_entries(store)
                 if e.event == "action.interrupted"]  # fmt: skip
    assert (details["was"], details["now"]) == ("rolled_back", "executed")
    out = ap.rollback(store, executed.item_id, who=BOB, reason="still too strict", now=later)
    assert out.code == "rolled_back", out.message
    assert path.read_text() == DEFAULT
    assert audit.verify(store).ok


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupted_rollback_of_an_edited_file_is_left_to_a_person(pc, settings, when) -> None:
    """A file that is neither the one the change wrote nor the one it replaced says nothing
    about the rollback: rollback_failed with the hint, and the hash that was found."""
    executed = executed_just_now(pc, settings)
    crash_while_approving(executed.item_id, when, "rollback")
    path = Path(settings.policy_file)
    edited = (DEFAULT if when == "after" else PROPOSED).replace(
        "after_days_idle: 60", "after_days_idle: 90"
    )
    path.write_text(edited)
    store = ap.open_store(settings)
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [executed.item_id]
    assert ap.get_item(store, executed.item_id).status == "rollback_failed"
    [note] = interrupted_notes(store)
    assert "unknown" in note and "workbench policy show" in note
    assert pc.sha256_bytes(edited.encode())[:12] in note and "neither" in note
    assert path.read_text() == edited
    assert list(ap.executions_frame(store)["kind"]) == ["execute"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupted_rollback_is_left_to_a_person_when_another_change_wrote_the_file(
    pc, settings, when
) -> None:
    """After the rollback died, another change wrote the very text the hash would point to
    (the replaced policy proposed back, or this change proposed again): either may have
    written it, so a person checks."""
    executed = executed_just_now(pc, settings)
    crash_while_approving(executed.item_id, when, "rollback")
    path = Path(settings.policy_file)
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5)
    text = DEFAULT if when == "before" else PROPOSED  # the other hash of the interrupted item
    other = pc.propose_policy_change(settings, text, who=ALICE, reason="by hand", now=later)
    store = ap.open_store(settings)
    out = ap.approve(store, other.item_id, who=BOB, current_state=ap.CurrentState(store),
                     now=later)  # fmt: skip
    assert out.code == "executed", out.message
    assert path.read_text() == text
    much_later = later + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=much_later) == [executed.item_id]
    assert ap.get_item(store, executed.item_id).status == "rollback_failed"
    [note] = interrupted_notes(store)
    assert "unknown" in note and other.item_id in note


def test_an_earlier_change_that_wrote_the_replaced_file_does_not_count(pc, settings) -> None:
    """Every change but the first replaces a file an earlier change wrote: no reason to doubt
    that an interrupted rollback restored it."""
    first = propose(pc, settings)
    assert approve(settings, first.item_id).code == "executed"
    back = pc.propose_policy_change(settings, DEFAULT, who=ALICE, reason="back",
                                    now=NOW + pd.Timedelta(hours=1))  # fmt: skip
    store = ap.open_store(settings)
    out = ap.approve(store, back.item_id, who=BOB, current_state=ap.CurrentState(store))
    assert out.code == "executed", out.message
    crash_while_approving(back.item_id, "after", "rollback")
    assert Path(settings.policy_file).read_text() == PROPOSED  # what the first change wrote
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [back.item_id]
    assert ap.get_item(store, back.item_id).status == "rolled_back"
    assert ap.get_item(store, first.item_id).status == "executed"


def test_cli_policy_show_and_propose(pc, settings, tmp_path, monkeypatch) -> None:
    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_USER", "alice")
    roles = tmp_path / "roles.yaml"
    roles.write_text("roles:\n  alice: analyst\n")
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(roles))
    cli = CliRunner()
    shown = cli.invoke(main, ["policy", "show"])
    assert shown.exit_code == 0, shown.output
    assert load_policy(settings=settings).version in shown.output
    assert pc.sha256_bytes(DEFAULT.encode()) in shown.output
    assert str(settings.policy_file) in shown.output

    proposed = tmp_path / "stricter.yaml"
    proposed.write_text(PROPOSED)
    out = cli.invoke(main, ["policy", "propose", str(proposed), "--reason", "fewer wasted retries"])
    assert out.exit_code == 0, out.output
    [item] = items(settings)
    assert item.item_id in out.output
    assert "retries.min_recovery_probability" in out.output and "0.7" in out.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("retries:\n  min_recovery_probability: 7\n")
    out = cli.invoke(main, ["policy", "propose", str(bad), "--reason", "typo"])
    assert out.exit_code != 0 and "retries.min_recovery_probability" in out.output
    same = cli.invoke(main, ["policy", "propose", str(settings.policy_file), "--reason", "x"])
    assert same.exit_code != 0 and "same as the current one" in same.output
    assert len(items(settings)) == 1


def test_diff_rows_write_values_as_in_the_yaml_file(pc) -> None:
    lists = (["retention_offer", "retry_payment"], ["refund", "retry_payment"])
    assert pc.diff_rows([
        ("shadow", False, True),
        {"key": "bulk_approval.action_types", "old": lists[0], "new": lists[1]},  # payload form
        ("label", None, "x"),
    ]) == [
        ("shadow", "false", "true"),
        ("bulk_approval.action_types", "retention_offer, retry_payment",
         "refund, retry_payment (added refund; removed retention_offer)"),
        ("label", "(unset)", "x"),
    ]  # fmt: skip


def test_the_lock_is_the_policy_files_whatever_data_folder_proposed(
    pc, settings, monkeypatch
) -> None:
    """Two approvals of changes proposed from different data folders must not both pass the
    hash check: the lock belongs to the policy file, not to the proposer's data folder."""
    from filelock import FileLock

    proposal = propose(pc, settings)
    path = Path(settings.policy_file)
    monkeypatch.setattr(pc, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):  # another approval is writing
        outcome = approve(settings, proposal.item_id)
    assert not outcome.ok and "another policy change held" in outcome.message
    assert path.read_text() == DEFAULT
    assert approve(settings, proposal.item_id).ok is False  # closed: propose again
    assert path.read_text() == DEFAULT


def test_an_approved_policy_with_non_ascii_text_loads_in_any_locale(pc, settings) -> None:
    text = PROPOSED.replace('label: "2024-06 stricter retries"', 'label: "juin – révisé"')
    assert approve(settings, propose(pc, settings, text).item_id).ok
    code = (
        "from workbench.policy import load_policy; "
        f"print(load_policy({str(settings.policy_file)!r}).label)"
    )
    env = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8", "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        encoding="utf-8", check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "juin – révisé"


@pytest.mark.parametrize("opened_from", ["settings", "url"])
def test_a_change_proposed_for_another_policy_file_is_not_written(
    pc, settings, tmp_path, monkeypatch, opened_from
) -> None:
    """A proposer with other settings (another checkout) sharing the approvals store: the
    approving workbench writes only its own policy file, and not someone else's either.
    The approver's settings are those its store was opened with, even in the process that
    opened the same approvals URL with the proposer's settings first; a store opened from
    a URL falls back to the environment's."""
    proposal = propose(pc, settings)  # opens (and caches) the store with the proposer's
    theirs = Path(settings.policy_file)
    ours = tmp_path / "service" / "dunning.yaml"
    ours.parent.mkdir()
    ours.write_text(DEFAULT)
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(ours))  # the approving process's settings
    approver = load_settings()
    assert approver.approvals_url == settings.approvals_url  # one shared store
    store = ap.open_store(approver if opened_from == "settings" else approver.approvals_url)
    outcome = ap.approve(store, proposal.item_id, who=BOB, current_state=ap.CurrentState(store),
                         now=NOW)  # fmt: skip
    assert not outcome.ok and "this workbench's policy file is" in outcome.message
    assert str(ours) in outcome.message
    assert theirs.read_text() == DEFAULT and ours.read_text() == DEFAULT


def test_an_interrupted_change_reverted_by_a_later_change_is_not_recorded_as_nothing_changed(
    pc, settings
) -> None:
    """A wrote PROPOSED and died before recording; B (proposed against PROPOSED) put DEFAULT
    back. The file has A's old hash again, but A did take effect: the hook cannot tell
    "never written" from "written, then reverted by B", so a person must check."""
    first = propose(pc, settings)
    crash_while_approving(first.item_id, "after")
    path = Path(settings.policy_file)
    assert path.read_text() == PROPOSED
    store = ap.open_store(settings)
    soon = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5)
    back = pc.propose_policy_change(settings, DEFAULT, who=ALICE, reason="back", now=soon)
    assert back.outcome.code == "queued", back.outcome.message
    out = ap.approve(store, back.item_id, who=BOB, current_state=ap.CurrentState(store), now=soon)
    assert out.code == "executed", out.message
    assert path.read_text() == DEFAULT
    later = soon + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(store, who=ap.ENGINE, now=later) == [first.item_id]
    [note] = interrupted_notes(store)
    assert "did not take effect" not in note, note
    assert "unknown" in note


def _approved_change(pc, settings):
    """A change proposed by alice and approved (executed) by bob at NOW, and the store."""
    proposal = propose(pc, settings)
    store = ap.open_store(settings)
    out = ap.approve(store, proposal.item_id, who=BOB, current_state=ap.CurrentState(store),
                     now=NOW)  # fmt: skip
    assert out.code == "executed", out.message
    return proposal, store


def _slow_rollback(pc, settings, *, recover_first: bool):
    """Roll back a fresh change whose rollback executor is slow: recovery (older_than 0)
    runs while it works, before (``recover_first``) or after it restored the file."""
    proposal, store = _approved_change(pc, settings)
    later = NOW + pd.Timedelta(hours=1)

    def slow_rollback(item, ctx):
        if not recover_first:
            result = pc._rollback(item, ctx)
        # meanwhile, the queue counts the rollback's process as gone
        assert ap.recover_interrupted(ctx.store, who=ap.ENGINE, older_than=pd.Timedelta(0),
                                      now=later) == [item.item_id]  # fmt: skip
        return pc._rollback(item, ctx) if recover_first else result

    outcome = _roll_back_with(pc, store, proposal.item_id, slow_rollback)
    assert Path(settings.policy_file).read_text() == DEFAULT
    return store, proposal.item_id, outcome


def _roll_back_with(pc, store, item_id: str, executor) -> ap.Outcome:
    """bob rolls ``item_id`` back with ``executor`` as the policy change's rollback executor
    (the module's own executors registered again afterwards)."""
    ap.register_executor("policy_change", pc._execute, rollback=executor,
                         recover=pc._recover, recover_rollback=pc._recover_rollback)  # fmt: skip
    try:
        return ap.rollback(store, item_id, who=BOB, reason="too strict", now=NOW)
    finally:
        pc.register_approval_executors()


def test_a_slow_rollback_that_a_recovery_recorded_is_not_recorded_twice(pc, settings) -> None:
    """Recovery found the replaced file's hash and recorded the rollback; the slow process
    then finishes: one rollback entry, an outcome (not the executions table's UNIQUE
    error)."""
    store, item_id, outcome = _slow_rollback(pc, settings, recover_first=False)
    assert outcome.code == "rolled_back" and "already recorded" in outcome.message
    assert ap.get_item(store, item_id).status == "rolled_back"
    assert list(ap.executions_frame(store)["kind"]).count("rollback") == 1


def test_a_slow_rollback_that_a_recovery_closed_as_not_taken_effect_is_corrected(
    pc, settings
) -> None:
    """Recovery ran before the slow rollback restored the file (the change's hash: back to
    ``executed``); the rollback then restored it: the item is ``rolled_back`` with one
    rollback entry, and the audit says the recovery's answer was corrected."""
    store, item_id, outcome = _slow_rollback(pc, settings, recover_first=True)
    assert outcome.code == "rolled_back" and "corrected" in outcome.message
    assert ap.get_item(store, item_id).status == "rolled_back"
    assert list(ap.executions_frame(store)["kind"]).count("rollback") == 1
    assert any("finished after a recovery closed it as executed" in n
               for n in interrupted_notes(store))  # fmt: skip


def test_with_default_settings_an_approved_change_writes_the_data_folders_policy(
    pc, isolated_env: Path
) -> None:
    """The policy in force lives in the data folder: approving a change leaves the packaged
    default (tracked in git) byte for byte as shipped, so the checkout stays clean."""
    packaged = REPO / "workbench" / "policies" / "default.yaml"
    shipped = packaged.read_bytes()
    settings = load_settings()
    in_force = isolated_env / "data" / "policy.yaml"
    try:
        proposal = propose(pc, settings)
        assert proposal.outcome.code == "queued"
        approved = approve(settings, proposal.item_id)
    finally:
        changed = packaged.read_bytes() != shipped
        if changed:  # put the checkout back before failing
            packaged.write_bytes(shipped)
    assert not changed, "approving edited the packaged workbench/policies/default.yaml"
    assert approved.ok, approved.message
    assert in_force.read_text() == PROPOSED
    assert load_policy(settings=load_settings()).label == "2024-06 stricter retries"
    kept = isolated_env / "data" / "policies" / "history" / f"{pc.sha256_bytes(shipped)}.yaml"
    assert kept.read_bytes() == shipped
    assert not list(packaged.parent.glob(".default.yaml*"))  # no lock beside the packaged file
    [item] = items(settings)
    assert item.subject_id == f"policy:{in_force}"


def test_an_approver_with_another_data_folder_does_not_write_either_policy(
    pc, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default settings each data folder has its own policy in force: a change
    proposed for one is not written by an approver whose settings name another."""
    settings = load_settings()
    proposal = propose(pc, settings)
    theirs = Path(settings.policy_file)
    # the approver's workbench: another data folder, the same approvals store
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(isolated_env / "other"))
    monkeypatch.setenv("WORKBENCH_APPROVALS_URL", settings.approvals_url)
    outcome = approve(load_settings(), proposal.item_id)
    assert not outcome.ok and "this workbench's policy file is" in outcome.message
    assert "<data_dir>/policy.yaml" in outcome.message
    assert theirs.read_text() == DEFAULT
    assert not (isolated_env / "other" / "policy.yaml").exists()


CAROL = Identity("carol", Role.APPROVER)


def test_a_refused_rollback_does_not_reopen_a_change_another_rollback_recorded(settings):
    """R1 is slow; a recovery counts it as gone (the file is still the change's: back to
    ``executed``); R2 by carol then rolls back for real and is recorded. R1's executor
    finds the file restored and refuses: the item must stay ``rolled_back`` (the file is
    the old policy and a rollback entry exists), not go back to ``executed``."""
    from workbench import policy_changes as pc

    proposal, store = _approved_change(pc, settings)
    later = NOW + pd.Timedelta(hours=1)
    calls = []

    def slow_rollback(item, ctx):
        calls.append(item.item_id)
        if len(calls) == 1:  # R1: meanwhile a recovery, then carol's rollback R2
            assert ap.recover_interrupted(ctx.store, who=ap.ENGINE, older_than=pd.Timedelta(0),
                                          now=later) == [item.item_id]  # fmt: skip
            second = ap.rollback(ctx.store, item.item_id, who=CAROL, reason="again", now=NOW)
            assert second.code == "rolled_back", second.message
        return pc._rollback(item, ctx)

    first = _roll_back_with(pc, store, proposal.item_id, slow_rollback)
    assert Path(settings.policy_file).read_text() == DEFAULT
    assert list(ap.executions_frame(store)["kind"]).count("rollback") == 1
    assert ap.get_item(store, proposal.item_id).status == "rolled_back", first.message


# --------------------------------------------------------------------------- overrides


def test_a_change_proposed_and_approved_with_the_same_overridden_data_dir_is_written(
    isolated_env,
):
    """The executor compares the proposal's policy file with the settings the approving
    store was opened with, not the environment's: a data folder given as an override
    (Python API) names the same policy file for the proposal and for its approval."""
    from workbench import policy_changes as pc

    mine = load_settings(overrides={"data_dir": str(isolated_env / "billing")})
    proposal = pc.propose_policy_change(mine, PROPOSED, who=ALICE, reason="r", now=NOW)
    assert proposal.outcome.code == "queued", proposal.outcome.message
    store = ap.open_store(mine)
    out = ap.approve(store, proposal.item_id, who=BOB, current_state=ap.CurrentState(store),
                     now=NOW)  # fmt: skip
    assert out.code == "executed", out.message
    assert Path(mine.policy_file).read_text() == PROPOSED
