"""A load killed with SIGKILL at any moment leaves a consistent warehouse; the rerun completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from workbench.config import load_settings
from workbench.ingest import ingest, verify
from workbench.ingest.checksums import checksums
from workbench.ingest.sample_events import sample_events, write_jsonl
from workbench.schema import create_all

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import sys
from workbench.config import load_settings
from workbench.ingest import ingest
settings = load_settings(overrides={"data_dir": sys.argv[1]})
ingest(sys.argv[2:], settings=settings, progress=False)
"""


def _inputs(root: Path) -> list[Path]:
    events = sample_events(accounts=40, months=10, seed=5)
    bad = json.dumps(events[7])[:50]  # something to quarantine, too
    paths = []
    for i in range(3):
        part = events[i::3]
        path = write_jsonl(part, root / "landing" / f"events-{i}.jsonl")
        if i == 1:
            with open(path, "a") as fh:
                fh.write(bad + "\n")
        paths.append(path)
    return paths


def _state(data_dir: Path) -> dict[str, str]:
    """Checksums of every table but ``loads`` (a rerun is a load of its own), plus the totals
    the loads must add up to: each event accepted once, each bad record quarantined once."""
    settings = load_settings(overrides={"data_dir": str(data_dir)})
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        sums = checksums(con, ignore_load_columns=True)
        del sums["loads"]
        sums["loads_totals"] = con.execute(
            "SELECT sum(accepted), sum(quarantined), count(DISTINCT source_file) FROM loads"
        ).fetchall()[0]
        return sums
    finally:
        con.close()


def _child(data_dir: Path, paths: list[Path]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), *map(str, paths)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_kill_at_random_points_then_rerun(tmp_path):
    paths = _inputs(tmp_path)
    clean_dir = tmp_path / "clean"
    started = time.perf_counter()
    proc = _child(clean_dir, paths)
    assert proc.wait(timeout=300) == 0
    duration = time.perf_counter() - started
    # the first child may pay cold imports; kill points are fractions of a warm run
    started = time.perf_counter()
    assert _child(tmp_path / "clean-warm", paths).wait(timeout=300) == 0
    duration = min(duration, time.perf_counter() - started)
    expected = _state(clean_dir)
    lines = sum(len(p.read_text().splitlines()) for p in paths)
    assert expected["events"].split(":")[0] == str(lines - 1)  # all but the cut line

    killed_before_done = 0
    for trial, fraction in enumerate((0.3, 0.6, 0.8, 0.95)):
        data_dir = tmp_path / f"trial{trial}"
        proc = _child(data_dir, paths)
        time.sleep(duration * fraction)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_before_done += 1
        proc.wait(timeout=60)
        settings = load_settings(overrides={"data_dir": str(data_dir)})
        if settings.warehouse_path.exists():
            # whatever was committed is consistent on its own
            assert verify(settings, check_lake=True).ok
        report = ingest(paths, settings=settings, progress=False)
        assert all(f.balanced for f in report.files)
        assert _state(data_dir) == expected, f"trial {trial} (killed at {fraction:.0%})"
        assert verify(settings).ok
    if killed_before_done < 3:
        pytest.fail(
            f"only {killed_before_done} of 4 trials were killed mid-load; the load ran too fast"
        )


def test_a_store_killed_before_its_first_commit_verifies_as_empty(tmp_path):
    settings = load_settings(overrides={"data_dir": str(tmp_path)})
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.connect(str(settings.warehouse_path)).close()  # the file, and nothing committed
    report = verify(settings)
    assert report.ok and [c.name for c in report.checks] == ["initialized"]
    ingest(_inputs(tmp_path), settings=settings, progress=False)  # the next load starts it
    assert verify(settings).ok

    # killed after the canonical tables' commit, before ingestion's own tables were created
    between = load_settings(overrides={"data_dir": str(tmp_path / "between")})
    between.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(between.warehouse_path))
    create_all(con)
    con.close()
    report = verify(between)
    assert report.ok and [c.name for c in report.checks] == ["initialized"], report.checks
    ingest(_inputs(tmp_path), settings=between, progress=False)
    assert verify(between).ok
    con = duckdb.connect(str(between.warehouse_path))
    con.execute("DROP TABLE erasures")  # after a load, a missing ingestion table is damage
    con.close()
    report = verify(between)
    assert not report.ok and "erasures" in report.checks[0].detail

    other = load_settings(overrides={"data_dir": str(tmp_path / "partial")})
    other.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(other.warehouse_path))
    con.execute("CREATE TABLE loads (load_id VARCHAR)")  # some tables, not all: not ours
    con.close()
    report = verify(other)
    assert not report.ok and "missing" in report.checks[0].detail
