"""The hash-chained audit log: edits, deletions, reordering and truncation are detected."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest

from workbench import audit
from workbench.approvals import ApprovalStore, open_store
from workbench.config import load_settings

T0 = pd.Timestamp("2024-05-01T09:00:00.123456", tz="UTC")


@pytest.fixture()
def store(tmp_path: Path) -> ApprovalStore:
    s = ApprovalStore(f"sqlite:///{tmp_path / 'approvals.sqlite'}")
    for i in range(6):
        with s.transaction() as tx:
            audit.append(tx, actor=f"user{i % 2}", event="test.event", item_id=f"item{i}",
                         details={"n": i, "note": "é"}, at=T0 + pd.Timedelta(seconds=i))  # fmt: skip
    return s


def _tamper(store: ApprovalStore, *sql: str) -> None:
    """What someone with write access to the file (bypassing the app) could do."""
    conn = sqlite3.connect(store.path)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_intact_chain_verifies(store: ApprovalStore) -> None:
    result = audit.verify(store)
    assert result.ok, result.summary()
    assert result.entries == 6
    assert result.head == audit.head(store)
    entries = list(audit.iter_entries(store, page=4))  # paging crosses a page boundary
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == audit.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:], strict=False))
    assert entries[0].at == "2024-05-01T09:00:00.123456Z"
    assert entries[2].data == {"n": 2, "note": "é"}


def test_the_database_refuses_updates_and_deletes(store: ApprovalStore) -> None:
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 6")
    conn.close()
    assert audit.verify(store).ok


@pytest.mark.parametrize(
    ("statements", "first_bad", "phrase"),
    [
        (
            ['UPDATE audit_log SET details = \'{"n":99,"note":"é"}\' WHERE seq = 3'],
            3,
            "content edited",
        ),
        (["UPDATE audit_log SET actor = 'mallory' WHERE seq = 5"], 5, "content edited"),
        (
            ["UPDATE audit_log SET at = '2024-05-01T08:00:00.000000Z' WHERE seq = 1"],
            1,
            "content edited",
        ),
        (["DELETE FROM audit_log WHERE seq = 4"], 5, "sequence gap"),
        # renumber to close the gap: the links still break
        (
            [
                "DELETE FROM audit_log WHERE seq = 4",
                "UPDATE audit_log SET seq = seq - 1 WHERE seq > 4",
            ],
            4,
            "link broken",
        ),
        # swap two entries' positions
        (
            [
                "UPDATE audit_log SET seq = 100 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE seq = 100",
            ],
            2,
            "link broken",
        ),  # fmt: skip
    ],
)
def test_tampering_is_detected_at_the_first_bad_entry(
    store: ApprovalStore, statements: list[str], first_bad: int, phrase: str
) -> None:
    _tamper(store, *statements)
    result = audit.verify(store)
    assert not result.ok
    assert result.first_bad_seq == first_bad, result.summary()
    assert phrase in result.problem
    assert f"entry {first_bad}" in result.summary()


def test_truncation_is_detected_against_an_exported_head(
    store: ApprovalStore, tmp_path: Path
) -> None:
    head = audit.head(store)
    head_file = head.save(tmp_path / "head.json")
    assert audit.verify(store, expected_head=audit.AuditHead.load(head_file)).ok
    _tamper(store, "DELETE FROM audit_log WHERE seq >= 5")
    assert audit.verify(store).ok  # a shorter chain is still a valid chain...
    result = audit.verify(store, expected_head=audit.AuditHead.load(head_file))
    assert not result.ok and "truncated" in result.problem  # ...but not the one we exported
    assert result.first_bad_seq == 5


def test_rewritten_history_is_detected_against_the_head(store: ApprovalStore) -> None:
    head = audit.head(store)
    # An attacker who edits entry 2 and recomputes every hash after it keeps a valid chain.
    entries = list(audit.iter_entries(store))
    prev = entries[0].hash
    statements = []
    for e in entries[1:]:
        details = '{"n":-1,"note":"é"}' if e.seq == 2 else e.details
        h = audit.entry_hash(seq=e.seq, at=e.at, actor=e.actor, event=e.event, item_id=e.item_id,
                             details=details, prev_hash=prev)  # fmt: skip
        statements.append(
            f"UPDATE audit_log SET details = '{details}', prev_hash = '{prev}', hash = '{h}' WHERE seq = {e.seq}"
        )
        prev = h
    _tamper(store, *statements)
    assert audit.verify(store).ok
    result = audit.verify(store, expected_head=head)
    assert not result.ok and "rewritten" in result.problem and result.first_bad_seq == 6


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    store = ApprovalStore(f"sqlite:///{tmp_path / 'a.sqlite'}")

    def writer(k: int) -> None:
        s = ApprovalStore(store.url)  # its own object, as another process would have
        for i in range(15):
            with s.transaction() as tx:
                audit.append(tx, actor=f"w{k}", event="race", details={"i": i})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = audit.verify(store)
    assert result.ok, result.summary()
    assert result.entries == 60


def test_a_failed_transaction_leaves_no_entry(store: ApprovalStore) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        audit.append(tx, actor="x", event="never")
        raise RuntimeError("boom")
    assert audit.head(store).seq == 6
    assert audit.verify(store).ok


def test_verify_audit_and_export_head_from_settings(isolated_env: Path) -> None:
    settings = load_settings()
    store = open_store(settings)
    with store.transaction() as tx:
        audit.append(tx, actor="cli", event="x")
    head_file = isolated_env / "elsewhere" / "head.json"
    exported = audit.export_audit_head(settings, head_file)
    assert exported == audit.head(store)
    assert audit.verify_audit(settings, head_file=head_file).ok
    frame = audit.audit_frame(store)
    assert list(frame["event"]) == ["x"]


def test_jsonable_handles_numpy_nan_and_timestamps() -> None:
    import numpy as np

    text = audit.canonical_json(
        {"b": np.int64(3), "a": float("nan"), "t": T0, "p": np.float32(0.5), "l": (1, 2)}
    )
    assert text == '{"a":null,"b":3,"l":[1,2],"p":0.5,"t":"2024-05-01T09:00:00.123456Z"}'
