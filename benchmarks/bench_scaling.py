"""Benchmark: how the warehouse computations grow with the company (DuckDB engine).

A scaling table, not a race: MRR and movements (``build_account_months``, ``stripe``
policy) and point-in-time account features (``build_features``) at 10k, 100k and 1M
accounts, wall time and peak memory per point, so the growth curve is visible.

Inputs are synthetic and set-based, because the simulator is too slow at 1M accounts:

* MRR: :func:`workbench.revenue.synthetic.generate_warehouse` (36 months of subscription
  histories: plan changes, seats, trials, coupons, past-due, cancellations, FX);
* features: :func:`workbench.features.synthetic.random_warehouse` over 2024 (subscription
  versions, invoices, payments, refunds, disputes, sparse usage, CRM signals, tickets) and
  a spine of every existing account at the last three month boundaries; every account
  feature is computed.

Each point runs in its own child process, so its peak memory (the kernel's high-water
mark of resident memory, reset just before the computation) is its own; the input is
generated before the reset. Results merge into ``benchmarks/results/scaling.json`` (a
point re-run replaces its row), so the 1M point can be run on its own:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scaling.py --sizes 10000,100000
    PYTHONPATH=. .venv/bin/python benchmarks/bench_scaling.py --sizes 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import RESULTS_DIR, Result, record

NAME = "scaling"
KINDS = ("mrr", "features")
MEMORY_LIMIT = "12GB"  # DuckDB memory_limit of the features points


def _hwm_reset() -> None:
    """Reset this process's peak-RSS counter (Linux ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def point_mrr(n: int) -> dict:
    """Generate a warehouse of ``n`` accounts and time the MRR engine on it."""
    import duckdb

    from workbench.revenue.engine import build_account_months
    from workbench.revenue.synthetic import generate_warehouse

    con = duckdb.connect()
    generate_warehouse(con, accounts=n, months=36, seed=11)
    rows_in = con.execute("SELECT count(*) FROM subscription_history").fetchone()[0]
    _hwm_reset()
    base = _status_mib("VmRSS")
    t, c = time.perf_counter(), _cpu()
    run = build_account_months(con, policy="stripe", into="am")
    wall, cpu = time.perf_counter() - t, _cpu() - c
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "peak_rss_mib": _status_mib("VmHWM"),
        "rss_before_mib": base,
        "rows_in": rows_in,
        "rows_out": run.rows,
        "input": "subscription_history rows, 36 months",
        "output": "account-month rows",
    }


def point_features(n: int) -> dict:
    """Generate a feature warehouse of ``n`` accounts and time ``build_features`` on it."""
    import duckdb
    import pandas as pd

    from workbench.features.offline import build_features, period_grid
    from workbench.features.synthetic import random_warehouse

    con = duckdb.connect()
    # a cap so the 1M point spills instead of crowding the shared 24 GiB machine
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    size = random_warehouse(
        con,
        n_accounts=n,
        start="2024-01-01",
        end="2024-12-31",
        seed=5,
        usage_day_prob=0.02,
        crm_day_prob=0.02,
        tickets_per_month=0.1,
    )
    rows_in = sum(v for v in asdict(size).values() if isinstance(v, int))
    acc = con.execute("SELECT account_id, created FROM accounts").df()
    grid = pd.DataFrame({"as_of": period_grid(start="2024-10-01", end="2024-12-01")})
    spine = acc.merge(grid, how="cross")
    spine = spine[spine.created <= spine.as_of][["account_id", "as_of"]].reset_index(drop=True)
    del acc
    _hwm_reset()
    base = _status_mib("VmRSS")
    t, c = time.perf_counter(), _cpu()
    out = build_features(con, spine)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "peak_rss_mib": _status_mib("VmHWM"),
        "rss_before_mib": base,
        "rows_in": rows_in,
        "rows_out": len(out),
        "features": out.shape[1] - 2,
        "input": "event rows (all sources), 2024",
        "output": "spine rows (accounts x 3 month boundaries)",
        "duckdb_memory_limit": MEMORY_LIMIT,
    }


def run_child(kind: str, n: int) -> dict:
    """Run one point in a fresh interpreter; return its measurements."""
    cmd = [sys.executable, __file__, "--point", f"{kind}:{n}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} at {n:,} accounts failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def workload(kind: str, n: int) -> str:
    """The row label of one point."""
    what = "MRR + movements (stripe)" if kind == "mrr" else "point-in-time account features"
    return f"{what}, {n:,} accounts"


def main() -> None:
    """Run the requested points and merge them into ``results/scaling.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="account counts")
    ap.add_argument("--kinds", default=",".join(KINDS), help="mrr,features")
    ap.add_argument("--point", help="internal: run one kind:size and print JSON")
    args = ap.parse_args()
    if args.point:
        kind, n = args.point.split(":")
        fn = point_mrr if kind == "mrr" else point_features
        print(json.dumps(fn(int(n))))
        return
    path = RESULTS_DIR / f"{NAME}.json"
    rows = [Result(**r) for r in json.loads(path.read_text())] if path.exists() else []
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            load = os.getloadavg()[0]
            m = run_child(kind, n)
            print(f"{kind:9s} {n:>9,} accounts: {m['seconds']:8.1f} s, "
                  f"peak {m['peak_rss_mib']:8.0f} MiB, load {load:.1f}", flush=True)  # fmt: skip
            res = Result(
                benchmark=NAME,
                workload=workload(kind, n),
                ours_s=round(m.pop("seconds"), 3),
                goal="growth curve (no baseline)",
                extra={
                    "kind": kind,
                    "accounts": n,
                    "engine": "duckdb",
                    "load_1m": round(load, 1),
                    **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in m.items()},
                },
            )
            rows = [r for r in rows if r.workload != res.workload] + [res]
    rows.sort(key=lambda r: (r.extra.get("kind", ""), r.extra.get("accounts", 0)))
    print(record(rows, name=NAME))


if __name__ == "__main__":
    main()
