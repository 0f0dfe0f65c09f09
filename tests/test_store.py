"""The one-writer rule and atomic snapshots, tested across real processes."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pandas as pd
import pytest

from workbench.config import load_settings
from workbench.store import (
    SnapshotMissing,
    Warehouse,
    WarehouseBusy,
    publish_snapshot,
    read_snapshot,
)


def _writer(data_dir: str, log_path: str, tag: str, rounds: int) -> None:
    wh = Warehouse(load_settings(overrides={"data_dir": data_dir, "lock_timeout_s": 60}))
    for i in range(rounds):
        with wh.write(step=f"writer-{tag}") as con:
            with open(log_path, "a") as log:
                log.write(f"{tag} start {i}\n")
                log.flush()
            con.execute(
                "INSERT INTO fx_rates VALUES (DATE '2024-01-01' + ?::INTEGER, ?, 1.0)", [i, tag]
            )
            time.sleep(0.02)
            with open(log_path, "a") as log:
                log.write(f"{tag} end {i}\n")
                log.flush()


def test_two_writers_never_interleave(tmp_path: Path) -> None:
    log_path = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path / "data"), str(log_path), t, 8))
        for t in "ab"
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = log_path.read_text().splitlines()
    assert len(lines) == 32
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        tag, word, i = start.split()
        assert word == "start" and end == f"{tag} end {i}", lines
    wh = Warehouse(load_settings(overrides={"data_dir": tmp_path / "data"}))
    with wh.read() as con:
        assert con.execute("SELECT count(*) FROM fx_rates").fetchone()[0] == 16


def _hold_lock(data_dir: str, ready: mp.Event, release: mp.Event) -> None:
    wh = Warehouse(load_settings(overrides={"data_dir": data_dir}))
    with wh.write(step="ingest"):
        ready.set()
        release.wait(30)


def test_second_writer_fails_naming_the_holder(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "data"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        wh = Warehouse(
            load_settings(overrides={"data_dir": tmp_path / "data", "lock_timeout_s": 0.5})
        )
        with pytest.raises(WarehouseBusy) as info, wh.write(step="other"):
            pass
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "ingest" in message and "retry" in message
    finally:
        release.set()
        holder.join(30)
    # Once released, the next writer gets in.
    with wh.write(step="other") as con:
        con.execute("SELECT 1")


def test_failed_write_rolls_back(tmp_path: Path) -> None:
    wh = Warehouse(load_settings(overrides={"data_dir": tmp_path / "data"}))
    with wh.write() as con:
        con.execute("INSERT INTO fx_rates VALUES ('2024-01-01', 'eur', 1.1)")
    with pytest.raises(RuntimeError), wh.write() as con:
        con.execute("INSERT INTO fx_rates VALUES ('2024-01-02', 'eur', 1.2)")
        raise RuntimeError("crash mid-step")
    with wh.read() as con:
        assert con.execute("SELECT count(*) FROM fx_rates").fetchone()[0] == 1


def _publisher(data_dir: str, versions: int) -> None:
    settings = load_settings(overrides={"data_dir": data_dir})
    for v in range(1, versions + 1):
        n = 20_000 + v
        publish_snapshot(
            "finance",
            {"a": pd.DataFrame({"version": [v] * n}), "b": pd.DataFrame({"version": [v] * n})},
            settings=settings,
            metadata={"version": v},
        )


def test_reader_during_publish_sees_one_complete_version(tmp_path: Path) -> None:
    settings = load_settings(overrides={"data_dir": tmp_path / "data"})
    with pytest.raises(SnapshotMissing, match="make demo"):
        read_snapshot("finance", settings=settings)
    _publisher(str(tmp_path / "data"), 1)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_publisher, args=(str(tmp_path / "data"), 30))
    proc.start()
    seen = set()
    while proc.is_alive() or not seen:
        tables = read_snapshot("finance", settings=settings)
        va, vb = tables["a"]["version"], tables["b"]["version"]
        assert va.nunique() == 1 and vb.nunique() == 1
        v = int(va.iloc[0])
        assert int(vb.iloc[0]) == v and len(va) == len(vb) == 20_000 + v
        seen.add(v)
    proc.join(60)
    assert proc.exitcode == 0
    assert len(seen) >= 2  # the reader really overlapped the publisher
