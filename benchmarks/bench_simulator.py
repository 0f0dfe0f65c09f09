"""Benchmark: how long the company simulator takes and how much memory it needs.

There is no outside baseline for a simulator, so this records our numbers only. Each
workload runs in a fresh child process (so peak RSS is its own, workers included)
and writes to a temporary directory that is removed afterwards. With ``repeat > 1``
the output digests of the runs are compared: ``agree`` says whether every run wrote
the same bytes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_simulator.py --small   # demo size, 3000 x 36
    PYTHONPATH=. .venv/bin/python benchmarks/bench_simulator.py           # + 100,000 x 36, 2 workers
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Result, record  # noqa: E402

DEMO = {"accounts": 3000, "months": 36, "workers": 1, "repeat": 3, "goal_s": 60.0}
SCALE = {"accounts": 100_000, "months": 36, "workers": 2, "repeat": 1, "goal_rss_mib": 4096.0}


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(out)).encode())
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
    return h.hexdigest()


def run_one(spec: dict) -> dict:
    """Child process: one simulation; report time, peak RSS, counts, size and digest."""
    from workbench.simulator import simulate

    out = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        start = time.perf_counter()
        summary = simulate(
            accounts=spec["accounts"],
            months=spec["months"],
            seed=0,
            out=out,
            progress=False,
            workers=spec["workers"],
        )
        seconds = time.perf_counter() - start
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_self, rss_children = me.ru_maxrss / 1024, kids.ru_maxrss / 1024
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        digest = _digest(out) if spec.get("digest", True) else ""
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mib": max(rss_self, rss_children),
        "rss_main_mib": rss_self,
        "rss_worker_mib": rss_children,
        "events": summary.events,
        "invoices": summary.invoices,
        "bytes": size,
        "digest": digest,
    }


def measure(spec: dict) -> list[dict]:
    runs = []
    for _ in range(spec["repeat"]):
        proc = subprocess.run(
            [sys.executable, __file__, "--run-one", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs


def to_result(name: str, spec: dict, runs: list[dict]) -> Result:
    seconds = statistics.median(r["seconds"] for r in runs)
    rss = max(r["peak_rss_mib"] for r in runs)
    last = runs[-1]
    if "goal_s" in spec:
        goal, met = f"< {spec['goal_s']:.0f} s (demo budget)", seconds < spec["goal_s"]
    else:
        goal, met = (
            f"peak RSS < {spec['goal_rss_mib']:.0f} MiB (bounded memory)",
            rss < spec["goal_rss_mib"],
        )
    return Result(
        benchmark="simulator",
        workload=f"{name}: {spec['accounts']:,} accounts x {spec['months']} months, {spec['workers']} worker(s)",
        ours_s=round(seconds, 2),
        goal=goal,
        met=met,
        agree=(len({r["digest"] for r in runs}) == 1) if len(runs) > 1 else None,
        extra={
            "peak_rss_mib": round(rss, 1),
            "rss_main_mib": round(max(r["rss_main_mib"] for r in runs), 1),
            "rss_worker_mib": round(max(r["rss_worker_mib"] for r in runs), 1),
            "runs": len(runs),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "events": last["events"],
            "invoices": last["invoices"],
            "output_mib": round(last["bytes"] / 2**20, 1),
            "events_per_s": round(last["events"] / seconds),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="only the demo-size run (3000 x 36)")
    parser.add_argument(
        "--scale-only", action="store_true", help="only the 100,000 x 36 run (2 workers)"
    )
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return
    scale = ("scale", {**SCALE, "digest": False})
    if args.small:
        workloads, out_name = [("demo", DEMO)], "simulator_small"
    elif args.scale_only:
        workloads, out_name = [scale], "simulator_scale"
    else:
        workloads, out_name = [("demo", DEMO), scale], "simulator"
    results = []
    for name, spec in workloads:
        runs = measure(spec)
        res = to_result(name, spec, runs)
        print(
            f"{res.workload}: {res.ours_s} s, peak RSS {res.extra['peak_rss_mib']} MiB, "
            f"{res.extra['events']:,} events, {res.extra['output_mib']} MiB written, met={res.met}, "
            f"same bytes={res.agree}"
        )
        results.append(res)
        # record after every workload, so a long scale run never loses the earlier rows
        path = record(results, name=out_name)
        print(f"recorded {path}", flush=True)


if __name__ == "__main__":
    main()
