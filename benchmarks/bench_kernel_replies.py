"""Benchmark: replies read late by the notebook client (workbench.kernels vs jupyter_client).

The finance dashboard's notebook runs in a fresh kernel again and again through nbclient (as
Voila and papermill run it), alternating jupyter_client's own kernel client (the baseline)
and :class:`workbench.kernels.KernelClient`. A run whose cell reply was left unread until the
cell timeout takes the whole timeout and then finishes normally; it is counted as *late*
(longer than ``LATE_FRACTION`` of the timeout). Two worker processes run side by side, as a
busy machine does. Goal: no late run with our client, and its median run time within 5% of
the baseline's. "Agree": every run of both clients produced the same outputs.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_kernel_replies.py [--runs 200] [--timeout 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Result, record  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "dashboards" / "finance.ipynb"
LATE_FRACTION = 0.8
WORKERS = 2


def publish_snapshot(data: Path) -> None:
    """A small company's finance snapshot for the dashboard to read (as its tests use)."""
    import duckdb

    from workbench.config import load_settings
    from workbench.publishing import publish_tables
    from workbench.revenue import account_month_mrr
    from workbench.revenue.synthetic import generate_warehouse
    from workbench.schema import create_all

    con = duckdb.connect()
    create_all(con)
    generate_warehouse(con, accounts=300, months=14, seed=5)
    am = account_month_mrr(con, policy="stripe")
    publish_tables(
        "finance",
        {"account_months": am},
        settings=load_settings(ROOT, overrides={"data_dir": data}),
        metadata={"run_id": "bench", "policy": "stripe"},
        merge=False,
    )


def _outputs(nb) -> list[tuple[str, ...]]:  # noqa: ANN001
    """What each code cell showed: output types and MIME bundles' keys (not widget ids)."""
    return [
        tuple(f"{o['output_type']}:{','.join(sorted(o.get('data', {})))}" for o in c.outputs)
        for c in nb.cells
        if c.cell_type == "code"
    ]


def worker(args: tuple[int, int, float, str]) -> list[dict]:
    """Run the notebook ``runs`` times per client, alternating; one record per run."""
    index, runs, timeout, data = args
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    from workbench.kernels import KernelManager

    os.environ["WORKBENCH_DATA_DIR"] = data
    clients = {"ours": KernelManager, "baseline": AsyncKernelManager}
    out = []
    for i in range(2 * runs):
        name = ("ours", "baseline")[(i + index) % 2]
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", kernel_manager_class=clients[name]
        )
        started = time.monotonic()
        error = None
        try:
            client.execute(cwd=str(ROOT))
        except Exception as exc:  # noqa: BLE001 - recorded: a run that could not start
            error = f"{type(exc).__name__}: {exc}"[:200]
        seconds = time.monotonic() - started
        out.append({"client": name, "s": seconds, "error": error, "outputs": _outputs(nb)})
        if i % 20 == 19:
            print(f"worker {index}: {i + 1}/{2 * runs} runs", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per client in all")
    parser.add_argument("--timeout", type=float, default=10.0, help="cell timeout, seconds")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        data = Path(tmp) / "data"
        publish_snapshot(data)
        per_worker = max(1, a.runs // WORKERS)
        with mp.get_context("spawn").Pool(WORKERS) as pool:
            jobs = [(k, per_worker, a.timeout, str(data)) for k in range(WORKERS)]
            runs = [r for chunk in pool.map(worker, jobs) for r in chunk]

    def summary(name: str) -> dict:
        mine = [r for r in runs if r["client"] == name]
        done = [r for r in mine if r["error"] is None]
        late = [r["s"] for r in done if r["s"] > LATE_FRACTION * a.timeout]
        on_time = [r["s"] for r in done if r["s"] <= LATE_FRACTION * a.timeout]
        return {
            "runs": len(mine),
            "late": len(late),
            "failed_to_start": len(mine) - len(done),
            "median_s": statistics.median(on_time),
            "max_s": max(r["s"] for r in done),
        }

    ours, base = summary("ours"), summary("baseline")
    shapes = {tuple(map(tuple, r["outputs"])) for r in runs if r["error"] is None}
    ratio = ours["median_s"] / base["median_s"]
    result = Result(
        benchmark="kernel_replies",
        workload=(
            f"finance dashboard notebook in a fresh kernel, {ours['runs']} + {base['runs']} runs "
            f"({WORKERS} workers), cell timeout {a.timeout:g} s"
        ),
        ours_s=ours["median_s"],
        baseline="jupyter_client AsyncKernelClient",
        baseline_s=base["median_s"],
        ratio=ratio,
        goal="no late run; median <= 1.05x",
        met=ours["late"] == 0 and ratio <= 1.05,
        agree=len(shapes) == 1,
        extra={"ours": ours, "baseline": base, "late_means": f"> {LATE_FRACTION:g} x timeout"},
    )
    print(result)
    record([result], name="kernel_replies")


if __name__ == "__main__":
    main()
