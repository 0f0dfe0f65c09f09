"""Benchmark: `make demo`'s work at the default size, against the 5-minute budget (issue #2).

Runs ``workbench demo`` (simulate the default company, then every pipeline notebook through
papermill) in a child process on a fresh temporary data and reports folder, and records the
wall time, CPU time, peak RSS and each step's duration from the run's manifest. There is no
outside baseline: the goal is the budget. The virtualenv set-up that ``make demo`` does first
is not timed (it is a one-off, and skipped when nothing changed).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_demo.py            # default size
    PYTHONPATH=. .venv/bin/python benchmarks/bench_demo.py --small    # 300 accounts x 24 months
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Result, record  # noqa: E402

BUDGET_S = 300.0


def run_demo(extra_args: list[str]) -> tuple[float, float, float, dict]:
    """Run the demo in a child; return (wall s, child CPU s, child peak RSS MiB, manifest)."""
    base = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    env = {
        **os.environ,
        "WORKBENCH_DATA_DIR": str(base / "data"),
        "WORKBENCH_REPORTS_DIR": str(base / "reports"),
    }
    workbench = Path(sys.executable).with_name("workbench")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        subprocess.run([str(workbench), "demo", *extra_args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        manifest = json.loads(next((base / "reports").glob("*/manifest.json")).read_text())
        return wall, cpu, after.ru_maxrss / 1024, manifest
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="300 accounts x 24 months")
    args = parser.parse_args()
    extra = ["--accounts", "300", "--months", "24"] if args.small else []
    load_before = os.getloadavg()[0]
    wall, cpu, rss, manifest = run_demo(extra)
    steps = {s["step"]: s["duration_s"] for s in manifest["steps"]}
    size = "300 accounts x 24 months" if args.small else "default size (3,000 accounts x 36 months)"
    result = Result(
        benchmark="demo",
        workload=f"workbench demo, {size}: simulate + {len(steps) - 1} pipeline notebooks",
        ours_s=round(wall, 1),
        goal="< 300 s on 2 cores" if not args.small else "(smoke run)",
        met=(wall < BUDGET_S and manifest["status"] == "ok") if not args.small else None,
        extra={
            "status": manifest["status"],
            "cpu_s": round(cpu, 1),
            "peak_rss_mib": round(rss, 1),
            "steps_s": steps,
            "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
    )
    print(f"{result.workload}: {wall:.1f} s wall, {cpu:.0f} s CPU, status {manifest['status']}")
    for step, seconds in steps.items():
        print(f"  {step:<20} {seconds:>7.1f} s")
    print(f"recorded {record([result], name='demo_small' if args.small else 'demo')}")


if __name__ == "__main__":
    main()
