"""Rolling back an approved model promotion (or model rollback) from the approvals queue.

The registry is a real embedded MLflow store (SQLite under a temporary data folder), shared
by the file (its first use runs migrations); every test registers its own model, with empty
versions (nothing here loads a model, only aliases and the champion history move).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench import approvals as ap
from workbench import audit
from workbench.approvals import Identity, Role
from workbench.config import load_settings
from workbench.models import registry

REPO = Path(__file__).resolve().parents[1]
ANN = Identity("ann", Role.ANALYST)
BOB = Identity("bob", Role.APPROVER)
CAROL = Identity("carol", Role.APPROVER)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """The repository's settings (its default policy: a 24 h override window) with the data
    folder in a temp dir."""
    root = tmp_path_factory.mktemp("promotion-rollback")
    return load_settings(REPO, overrides={"data_dir": str(root / "data")})


def new_model(settings, name: str, versions: int = 3) -> list[str]:
    """Register ``name`` with empty versions, the newest one ``challenger`` (as
    :func:`registry.register_run` leaves it); returns the versions."""
    c = registry.client(settings)
    c.create_registered_model(name)
    src = Path(settings.data_dir) / "dummy_models" / name
    src.mkdir(parents=True)
    made = [str(c.create_model_version(name, source=src.as_uri()).version) for _ in range(versions)]
    c.set_registered_model_alias(name, "challenger", made[-1])
    return made


def with_champion(settings, name: str) -> list[str]:
    """:func:`new_model` with three versions, the first made champion directly by alice."""
    versions = new_model(settings, name)
    registry.promote(name, versions[0], who="alice", reason="first", settings=settings)
    return versions


def champion(settings, model: str) -> str | None:
    return registry.alias_version(model, "champion", settings=settings)


def approved(settings, out: ap.Outcome, now: pd.Timestamp) -> ap.ActionItem:
    """bob approves a request ann queued (checked against the registry as the dashboard does)."""
    assert out.code == "queued", out.message
    done = ap.approve(settings, out.item_id, who=BOB, current_state=ap.CurrentState(settings),
                      now=now)  # fmt: skip
    assert done.code == "executed", done.message
    return ap.get_item(settings, out.item_id)


def promoted(settings, model: str, version: str, now: pd.Timestamp) -> ap.ActionItem:
    out = registry.request_promotion(model, version, who=ANN, reason="beats v1", settings=settings,
                                     now=now)  # fmt: skip
    return approved(settings, out, now)


def test_an_approved_promotion_is_rolled_back_within_the_window(settings) -> None:
    model = "churn_30d"
    v1, v2, _ = with_champion(settings, model)
    registry.client(settings).set_registered_model_alias(model, "challenger", v2)
    now = pd.Timestamp.now(tz="UTC")
    item = promoted(settings, model, v2, now)
    assert champion(settings, model) == v2
    assert registry.alias_version(model, "challenger", settings=settings) is None
    # the window of the policy in force when it was requested, from the execution
    assert item.payload["override_window_hours"] == 24
    assert item.rollback_until == item.executed_at + pd.Timedelta(hours=24)
    assert item.can_roll_back(now + pd.Timedelta(hours=23))

    out = ap.rollback(settings, item.item_id, who=CAROL, reason="approved by mistake",
                      now=now + pd.Timedelta(hours=1))  # fmt: skip
    assert out.code == "rolled_back", out.message
    assert ap.get_item(settings, item.item_id).status == "rolled_back"
    assert champion(settings, model) == v1
    # as before the promotion: v2 is the challenger again
    assert registry.alias_version(model, "challenger", settings=settings) == v2
    last = registry.champion_history(model, settings=settings).iloc[-1]
    assert (last["version"], last["previous"], last["who"]) == (v1, v2, "carol")
    assert last["via"] == f"approvals:{item.item_id}:rollback"
    assert last["reason"] == f"rollback: approved by mistake (approvals item {item.item_id})"
    # a rollback: nothing automatic returns to v2
    assert registry.rollback_target(model, settings=settings) is None
    rollback = ap.executions_frame(settings, item_id=item.item_id).set_index("kind").loc["rollback"]
    result = json.loads(rollback["result"])
    assert (result["version"], result["previous_champion"], result["challenger"]) == (v1, v2, v2)
    assert audit.verify(ap.open_store(settings)).ok


def test_a_rollback_after_the_champion_moved_on_is_refused(settings) -> None:
    model = "churn_90d"
    v1, v2, v3 = with_champion(settings, model)
    now = pd.Timestamp.now(tz="UTC")
    item = promoted(settings, model, v2, now)
    registry.promote(model, v3, who="dave", reason="hotfix", settings=settings)
    history = registry.champion_history(model, settings=settings)

    out = ap.rollback(settings, item.item_id, who=CAROL, reason="approved by mistake", now=now)
    assert out.code == "refused", out.message
    assert f"champion is now v{v3}" in out.message and f"--to {v1}" in out.message
    assert champion(settings, model) == v3
    pd.testing.assert_frame_equal(registry.champion_history(model, settings=settings), history)
    # nothing changed, so the item stays executed (and can be rolled back once v2 is back)
    assert ap.get_item(settings, item.item_id).status == "executed"
    assert "rollback" not in set(ap.executions_frame(settings, item_id=item.item_id)["kind"])


def test_a_rollback_after_the_window_is_refused(settings) -> None:
    model = "churn_180d"
    v1, v2, _ = with_champion(settings, model)
    now = pd.Timestamp.now(tz="UTC")
    item = promoted(settings, model, v2, now)
    history = registry.champion_history(model, settings=settings)
    assert item.rollback_until is not None

    later = item.rollback_until + pd.Timedelta(seconds=1)
    out = ap.rollback(settings, item.item_id, who=CAROL, reason="too late", now=later)
    assert out.code == "window_closed", out.message
    assert champion(settings, model) == v2
    pd.testing.assert_frame_equal(registry.champion_history(model, settings=settings), history)
    assert ap.get_item(settings, item.item_id).status == "executed"
    # up to the window's last moment it could have been
    out = ap.rollback(settings, item.item_id, who=CAROL, reason="just in time",
                      now=item.rollback_until)  # fmt: skip
    assert out.code == "rolled_back", out.message
    assert champion(settings, model) == v1


def test_undoing_a_first_promotion_takes_the_champion_alias_away(settings) -> None:
    """Before it there was no champion: the undo removes the alias (and the history says so)."""
    model = "recovery_14d"
    v1, v2, _ = new_model(settings, model)
    registry.client(settings).set_registered_model_alias(model, "challenger", v1)
    now = pd.Timestamp.now(tz="UTC")
    item = promoted(settings, model, v1, now)
    assert item.payload["previous_champion"] is None

    out = ap.rollback(settings, item.item_id, who=CAROL, reason="too early", now=now)
    assert out.code == "rolled_back", out.message
    assert champion(settings, model) is None
    assert registry.alias_version(model, "challenger", settings=settings) == v1
    last = registry.champion_history(model, settings=settings).iloc[-1]
    assert last["version"] is None and last["previous"] == v1
    assert last["via"] == f"approvals:{item.item_id}:rollback"
    assert last["reason"].startswith("rollback: too early")
    # the version-less entry is never a rollback target (v1 was rolled back from)
    registry.promote(model, v2, who="alice", reason="second try", settings=settings)
    assert registry.rollback_target(model, settings=settings) is None
    with pytest.raises(registry.RegistryError, match=rf"\(earlier: {v1}\)"):
        registry.request_rollback(model, who=ANN, reason="x", to_version="9", settings=settings)


def test_an_approved_model_rollback_is_undone_and_no_longer_counts(settings) -> None:
    """Undoing a rollback puts back the champion it moved away from; that champion was not
    found wanting after all, so a later rollback may return to it."""
    model = "retention_uplift"
    v1, v2, v3, v4 = new_model(settings, model, versions=4)
    for v in (v1, v2, v3):
        registry.promote(model, v, who="alice", reason="ok", settings=settings)
    now = pd.Timestamp.now(tz="UTC")
    out = registry.request_rollback(model, who=ANN, reason="drift", settings=settings, now=now)
    item = approved(settings, out, now)
    assert champion(settings, model) == v2
    assert item.rollback_until == item.executed_at + pd.Timedelta(hours=24)

    undo = ap.rollback(settings, item.item_id, who=CAROL, reason="false alarm", now=now)
    assert undo.code == "rolled_back", undo.message
    assert champion(settings, model) == v3
    last = registry.champion_history(model, settings=settings).iloc[-1]
    assert (last["version"], last["previous"]) == (v3, v2)
    assert last["reason"] == f"undo of rollback: false alarm (approvals item {item.item_id})"
    registry.promote(model, v4, who="alice", reason="retrained", settings=settings)
    assert registry.rollback_target(model, settings=settings) == v3


class Died(BaseException):
    """The process stopping mid-rollback (not an ``Exception``: nothing records it)."""


def interrupted_rollback(settings, item: ap.ActionItem, *, after: bool, now: pd.Timestamp) -> None:
    """carol's rollback of ``item`` dies before (or right after) the undo ran."""

    def dies(it, ctx):
        if after:
            registry._undo_promotion(it, ctx)
        raise Died

    ap.register_executor(item.action_type, registry._execute_promotion, rollback=dies)
    try:
        with pytest.raises(Died):
            ap.rollback(settings, item.item_id, who=CAROL, reason="approved by mistake", now=now)
    finally:
        registry.register_approval_executors()
    assert ap.get_item(settings, item.item_id).status == "rolled_back"  # claimed, not recorded


def interrupted_note(settings, item_id: str) -> str:
    frame = audit.audit_frame(ap.open_store(settings), item_id=item_id,
                              event_prefix="action.interrupted")  # fmt: skip
    return json.loads(frame["details"].iloc[0])["message"]


@pytest.mark.parametrize("after", [True, False])
def test_an_interrupted_rollback_is_recovered_from_the_champion_history(settings, after) -> None:
    model = f"churn_{45 if after else 60}d"
    v1, v2, _ = with_champion(settings, model)
    now = pd.Timestamp.now(tz="UTC")
    item = promoted(settings, model, v2, now)
    interrupted_rollback(settings, item, after=after, now=now)
    later = now + pd.Timedelta(hours=1)

    assert ap.recover_interrupted(settings, who=ap.ENGINE, now=later) == [item.item_id]
    note = interrupted_note(settings, item.item_id)
    runs = ap.executions_frame(settings, item_id=item.item_id).set_index("kind")
    if after:
        assert ap.get_item(settings, item.item_id).status == "rolled_back"
        assert "took effect" in note and "recorded as rolled back" in note
        assert champion(settings, model) == v1
        result = json.loads(runs.loc["rollback", "result"])
        assert runs.loc["rollback", "actor"] == "carol"  # who started it
        assert (result["reason"], result["version"], result["previous_champion"]) == (
            "approved by mistake", v1, v2,
        )  # fmt: skip
        assert result["via"] == f"approvals:{item.item_id}:rollback"
    else:
        assert ap.get_item(settings, item.item_id).status == "executed"
        assert "did not take effect" in note and "nothing changed" in note
        assert champion(settings, model) == v2 and "rollback" not in runs.index
        # and it can be rolled back again within its window
        out = ap.rollback(settings, item.item_id, who=CAROL, reason="again", now=later)
        assert out.code == "rolled_back", out.message
        assert champion(settings, model) == v1


def test_an_interrupted_rollback_is_left_to_a_person_when_the_champion_moved(settings) -> None:
    model = "churn_365d"
    v1, v2, v3 = with_champion(settings, model)
    now = pd.Timestamp.now(tz="UTC")
    item = promoted(settings, model, v2, now)
    interrupted_rollback(settings, item, after=False, now=now)
    registry.promote(model, v3, who="dave", reason="hotfix", settings=settings)

    later = now + pd.Timedelta(hours=1)
    assert ap.recover_interrupted(settings, who=ap.ENGINE, now=later) == [item.item_id]
    assert ap.get_item(settings, item.item_id).status == "rollback_failed"
    note = interrupted_note(settings, item.item_id)
    assert f"champion is v{v3}" in note and "unknown" in note
    assert "workbench models list" in note  # the registry's hint, not the ledger's
    assert champion(settings, model) == v3


def interrupted_promotion(settings, out: ap.Outcome, *, dies_in, now: pd.Timestamp) -> None:
    """bob's approval of ``out`` runs the promotion, whose process stops in ``dies_in``
    (``"start"``: before it; ``"history"``: after the alias moved, before the champion
    history entry; ``"end"``: after the promotion, before the outcome was recorded)."""

    def dies(it, ctx):
        if dies_in == "end":
            registry._execute_promotion(it, ctx)
        raise Died

    def history_dies(*a, **kw):
        raise Died

    if dies_in == "history":
        ap.register_executor("model_promotion", registry._execute_promotion)
        patch = pytest.MonkeyPatch()
        patch.setattr(registry, "_append_history", history_dies)
    else:
        ap.register_executor("model_promotion", dies)
        patch = None
    try:
        with pytest.raises(Died):
            ap.approve(settings, out.item_id, who=BOB, current_state=ap.CurrentState(settings),
                       now=now)  # fmt: skip
    finally:
        if patch is not None:
            patch.undo()
        registry.register_approval_executors()
    assert ap.get_item(settings, out.item_id).status == "approved"  # claimed, not recorded


@pytest.mark.parametrize("dies_in", ["start", "history", "end"])
def test_an_interrupted_promotion_is_recovered_from_the_champion_history(settings, dies_in) -> None:
    model = {"start": "recovery_3d", "history": "recovery_5d", "end": "recovery_9d"}[dies_in]
    v1, v2, _ = with_champion(settings, model)
    registry.client(settings).set_registered_model_alias(model, "challenger", v2)
    now = pd.Timestamp.now(tz="UTC")
    out = registry.request_promotion(model, v2, who=ANN, reason="beats v1", settings=settings,
                                     now=now)  # fmt: skip
    interrupted_promotion(settings, out, dies_in=dies_in, now=now)
    later = now + pd.Timedelta(hours=1)

    assert ap.recover_interrupted(settings, who=ap.ENGINE, now=later) == [out.item_id]
    note = interrupted_note(settings, out.item_id)
    status = ap.get_item(settings, out.item_id).status
    if dies_in == "end":
        assert status == "executed" and "took effect" in note
        result = json.loads(ap.executions_frame(settings, item_id=out.item_id)["result"].iloc[-1])
        assert (result["version"], result["previous_champion"], result["via"]) == (
            v2, v1, f"approvals:{out.item_id}",
        )  # fmt: skip
        assert result["challenger_removed"] is True
        # the recovered result is what a rollback needs: v1 champion, v2 challenger again
        back = ap.rollback(settings, out.item_id, who=CAROL, reason="too early", now=later)
        assert back.code == "rolled_back", back.message
        assert champion(settings, model) == v1
        assert registry.alias_version(model, "challenger", settings=settings) == v2
    elif dies_in == "start":
        assert status == "failed" and "did not take effect" in note
        assert champion(settings, model) == v1
    else:  # the alias moved, the history has no entry: a person checks
        assert status == "failed" and "unknown" in note
        assert f"champion is v{v2}" in note and "workbench models list" in note
        assert champion(settings, model) == v2


def test_the_dashboards_roll_back_button_undoes_a_promotion(settings, monkeypatch) -> None:
    from workbench.dashboards.approvals import ApprovalsDashboard

    model = "churn_14d"
    v1, v2, _ = with_champion(settings, model)
    item = promoted(settings, model, v2, pd.Timestamp.now(tz="UTC"))
    roles = Path(settings.data_dir) / "roles.yaml"
    roles.write_text("roles:\n  ann: analyst\n  bob: approver\n  carol: approver\n")
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(roles))
    monkeypatch.setenv("WORKBENCH_USER", "carol")
    dash = ApprovalsDashboard()
    assert dash.load()
    dash.build()
    dash.f_status.value = "executed"
    row = dash.rows[item.item_id]
    assert not row.rollback.disabled and row.rollback in row.box.children
    row.comment.value = "approved by mistake"
    out = dash.on_rollback(item.item_id)
    assert out.code == "rolled_back", out.message
    assert champion(settings, model) == v1
