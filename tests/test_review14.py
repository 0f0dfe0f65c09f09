"""Review 14: reproductions of problems found in today's changes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench import approvals as ap
from workbench import audit

from tests.test_policy_changes import (  # noqa: F401 - fixtures
    ALICE,
    BOB,
    DEFAULT,
    NOW,
    PROPOSED,
    crash_while_approving,
    interrupted_notes,
    pc,
    propose,
    settings,
)


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


def _settings(tmp_path):
    from workbench.config import load_settings

    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


def test_erase_covers_a_csv_row_with_a_quoted_line_break(tmp_path) -> None:
    """A Stripe customers export whose Description holds a line break (valid CSV, which the
    mapping reads as one row): the name and e-mail sit on the row's second physical line,
    which does not hold the customer's id, so the line-by-line scrub never looks at them."""
    from workbench.ingest import erase_customer, ingest_landing, verify
    from workbench.ingest.lake import Lake

    settings = _settings(tmp_path)
    landing = Path(settings.data_dir) / "landing" / "csv"
    landing.mkdir(parents=True)
    export = landing / "customers.csv"
    export.write_text(
        "id,Description,Name,Email,Created (UTC),Currency\n"
        'cus_ml1,"VIP\nsince 2020",Jane Roe,jane@roe.example.com,2023-01-20 10:25,usd\n'
        "cus_zz,,Zed Zulu,zed@example.com,2023-01-21 10:25,usd\n"
    )
    [(_, report)] = ingest_landing(settings, progress=False)
    assert report.files[0].accepted == 2, report.files[0]
    erase_customer("cus_ml1", who="dpo@example.com", why="ticket R14", settings=settings)
    lake = Lake(Path(settings.data_dir) / "lake")
    left = [rel for rel in lake.objects() if b"Jane Roe" in lake.read(rel)]
    left += [str(export)] if b"Jane Roe" in export.read_bytes() else []
    assert not left, left
    assert verify(settings).ok


def test_a_csv_file_with_a_malformed_row_loads_and_rebuilds(tmp_path) -> None:
    """A row with too few fields is a ``malformed_row`` reject whose column is pandas' NA:
    ``quarantine_id`` / ``_qrow`` asked ``NA != NA`` for a bool and the whole ingest (and
    every rebuild replaying the file) died with TypeError."""
    from workbench.ingest import ingest, rebuild, table_checksums, verify

    settings = _settings(tmp_path)
    f = tmp_path / "customers.csv"
    f.write_text(
        "id,Description,Name,Email,Created (UTC),Currency\n"
        "cus_short,VIP\n"
        "cus_zz,,Zed Zulu,zed@example.com,2023-01-21 10:25,usd\n"
    )
    [report] = ingest(f, source="csv", settings=settings, progress=False).files
    assert (report.accepted, report.quarantined) == (1, 1)
    assert verify(settings).ok
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before


@pytest.mark.xfail(strict=True, reason="review14: not fixed (load_settings refuses first)")
def test_cell_timeout_flag_can_lift_the_limit_a_long_lock_wait_conflicts_with(
    tmp_path, monkeypatch
) -> None:
    """lock_timeout_s = 4000 with the default cell_timeout_s (3600) is refused by
    load_settings, so ``workbench run --cell-timeout 0`` (no cell limit: nothing to conflict
    with) never gets to its own check; the flag that would make the run valid cannot be
    used. Also any other command (erase, receive, approvals) fails on the same settings."""
    from click.testing import CliRunner

    from workbench import cli

    monkeypatch.setenv("WORKBENCH_LOCK_TIMEOUT_S", "4000")
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    calls = []
    import workbench.runner as runner

    monkeypatch.setattr(runner, "run_pipeline", lambda *a, **k: calls.append(k) or [])
    out = CliRunner().invoke(cli.main, ["run", "--cell-timeout", "0", "ingest"])
    assert "lock_timeout_s" not in (out.output or ""), out.output


def _slow_rollback(pc, settings, *, recover_first: bool):
    """Roll back a fresh change whose rollback executor is slow: recovery (older_than 0)
    runs while it works, before (``recover_first``) or after it restored the file."""
    proposal = propose(pc, settings)
    store = ap.open_store(settings)
    out = ap.approve(store, proposal.item_id, who=BOB, current_state=ap.CurrentState(store),
                     now=NOW)  # fmt: skip
    assert out.code == "executed", out.message
    later = NOW + pd.Timedelta(hours=1)

    def slow_rollback(item, ctx):
        if not recover_first:
            result = pc._rollback(item, ctx)
        # meanwhile, the queue counts the rollback's process as gone
        assert ap.recover_interrupted(ctx.store, who=ap.ENGINE, older_than=pd.Timedelta(0),
                                      now=later) == [item.item_id]  # fmt: skip
        return pc._rollback(item, ctx) if recover_first else result

    ap.register_executor("policy_change", pc._execute, rollback=slow_rollback,
                         recover=pc._recover, recover_rollback=pc._recover_rollback)  # fmt: skip
    try:
        outcome = ap.rollback(store, proposal.item_id, who=BOB, reason="too strict", now=NOW)
    finally:
        pc.register_approval_executors()
    assert Path(settings.policy_file).read_text() == DEFAULT
    return store, proposal.item_id, outcome


@pytest.mark.xfail(strict=True, reason="review14: not fixed (rollback() records unguarded)")
def test_a_slow_rollback_recovered_as_rolled_back_is_not_an_integrity_error(pc, settings) -> None:
    """Recovery recorded the rollback (old hash found); the slow process then records it
    again: the executions UNIQUE (item_id, kind) stops the second entry, so the queue stays
    consistent, but ``rollback`` dies with a raw IntegrityError instead of an Outcome (or
    the StoreError ``_execute`` raises in the same situation)."""
    store, item_id, outcome = _slow_rollback(pc, settings, recover_first=False)
    assert outcome.code == "rolled_back"


@pytest.mark.xfail(strict=True, reason="review14: not fixed (rollback() records unguarded)")
def test_a_slow_rollback_recovered_as_not_taken_effect_leaves_the_queue_consistent(
    pc, settings
) -> None:
    """Recovery ran before the slow rollback restored the file: the item went back to
    ``executed`` ("did not take effect: nothing changed"); then the rollback restored the
    file and ``rollback`` inserted its rollback entry and action.rolled_back audit entry on
    an item whose status stays ``executed``."""
    store, item_id, outcome = _slow_rollback(pc, settings, recover_first=True)
    item = ap.get_item(store, item_id)
    kinds = list(ap.executions_frame(store)["kind"])
    assert not (item.status == "executed" and "rollback" in kinds), (item.status, kinds)


