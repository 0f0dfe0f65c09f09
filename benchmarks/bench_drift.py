"""Drift report: Evidently's full ``DataDriftPreset`` against our fast path.

Builds a seeded reference and current frame (default 100,000 × 50,000 rows × 40
columns: 34 numeric, of which a few low-cardinality integers and some with nulls, and 6
categorical; 5 columns shifted) and runs ``workbench.monitoring.drift.drift_report``
with ``method="evidently"`` (Evidently's report, HTML and JSON written) and with
``method="fast"`` (our numpy/scipy path, its JSON and HTML written). Each path runs in
its own child process (``multiprocessing`` spawn), so each one's peak RSS is its own:
the child builds the frames, notes its RSS, runs the report and returns wall time,
peak RSS and the per-column results. The two must flag the same columns on at least
95% of them; the shifted columns must be flagged.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_drift.py [--small]`` (``--small``:
5,000 × 3,000 rows × 12 columns, recorded as ``drift_small``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import Result, peak_rss_mib, record

log = logging.getLogger("bench_drift")

AGREEMENT_GOAL = 0.95


@dataclass(frozen=True)
class Workload:
    """Frame sizes and column mix."""

    n_reference: int
    n_current: int
    n_columns: int
    n_categorical: int
    seed: int = 0

    def describe(self) -> str:
        return (
            f"{self.n_reference:,} reference × {self.n_current:,} current rows × "
            f"{self.n_columns} columns ({self.n_categorical} categorical)"
        )


def make_frames(w: Workload) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Seeded reference/current frames; returns them, the categorical and the shifted columns.

    Numeric columns cycle through normal, lognormal (money-like), low-cardinality
    integers (counts) and a normal with 20% nulls; categorical columns are plan-like
    labels with skewed shares. Shifted: the first two normal columns (mean +0.5 sd and
    scale ×1.6), the first lognormal (×1.5), the first count column (rate ×2) and the
    first categorical column (shares reversed).
    """
    rng = np.random.default_rng(w.seed)
    n_num = w.n_columns - w.n_categorical
    ref: dict[str, Any] = {}
    cur: dict[str, Any] = {}
    shifted: list[str] = []
    seen = {"normal": 0, "money": 0, "count": 0, "nulls": 0}
    for i in range(n_num):
        shape = ("normal", "money", "count", "nulls")[i % 4]
        k = seen[shape]
        seen[shape] += 1
        name = f"{shape}_{k}"
        if shape in ("normal", "nulls"):
            ref[name] = rng.normal(size=w.n_reference)
            loc, scale = (0.5, 1.0) if (shape, k) == ("normal", 0) else (0.0, 1.0)
            scale = 1.6 if (shape, k) == ("normal", 1) else scale
            cur[name] = rng.normal(loc, scale, size=w.n_current)
            if shape == "nulls":
                ref[name][rng.random(w.n_reference) < 0.2] = np.nan
                cur[name][rng.random(w.n_current) < 0.2] = np.nan
        elif shape == "money":
            ref[name] = np.round(rng.lognormal(4, 1, size=w.n_reference), 2)
            factor = 1.5 if k == 0 else 1.0
            cur[name] = np.round(rng.lognormal(4, 1, size=w.n_current) * factor, 2)
        else:
            ref[name] = rng.poisson(1.5, size=w.n_reference)
            cur[name] = rng.poisson(3.0 if k == 0 else 1.5, size=w.n_current)
        if (shape, k) in {("normal", 0), ("normal", 1), ("money", 0), ("count", 0)}:
            shifted.append(name)
    labels = np.array(["free", "basic", "pro", "team", "enterprise"])
    shares = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    categorical = []
    for j in range(w.n_categorical):
        name = f"plan_{j}"
        categorical.append(name)
        ref[name] = rng.choice(labels, size=w.n_reference, p=shares)
        cur[name] = rng.choice(labels, size=w.n_current, p=shares[::-1] if j == 0 else shares)
        if j == 0:
            shifted.append(name)
    return pd.DataFrame(ref), pd.DataFrame(cur), categorical, shifted


def _rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_path(args: tuple[Workload, str, str, int]) -> dict[str, Any]:
    """Child process: build the frames, run one drift path, report time and memory."""
    workload, method, out_dir, repeat = args
    from workbench.monitoring.drift import drift_report

    reference, current, categorical, _ = make_frames(workload)
    # Warm up imports (Evidently's import is heavy) outside the timing, on a tiny slice.
    drift_report(reference.head(50), current.head(50), method=method, categorical=categorical)
    before = _rss_mib()
    times = []
    result = None
    cpu0 = time.process_time()
    for _ in range(repeat):
        start = time.perf_counter()
        result = drift_report(
            reference,
            current,
            categorical=categorical,
            method=method,
            out_dir=Path(out_dir),
            name=f"bench_{method}",
        )
        times.append(time.perf_counter() - start)
    assert result is not None
    files = {p.name: p.stat().st_size for p in (result.html_path, result.json_path) if p}
    return {
        "method": result.method,
        "seconds": float(np.median(times)),
        "cpu_s": (time.process_time() - cpu0) / repeat,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": before,
        "columns": result.columns.to_dict(orient="list"),
        "share_drifted": result.share_drifted,
        "files": files,
    }


def run_child(workload: Workload, method: str, out_dir: Path, repeat: int) -> dict[str, Any]:
    """Run :func:`run_path` in a fresh spawned process (its own peak RSS)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_path, ((workload, method, str(out_dir), repeat),))


def compare(evid: dict[str, Any], fast: dict[str, Any]) -> dict[str, Any]:
    """Share of columns where the flags agree, tests that differ, largest score gap."""
    e = pd.DataFrame(evid["columns"]).set_index("column")
    f = pd.DataFrame(fast["columns"]).set_index("column").loc[e.index]
    gap = (e["score"] - f["score"]).abs()
    return {
        "agreement": float((e["drifted"] == f["drifted"]).mean()),
        "same_test": bool((e["stat_test"] == f["stat_test"]).all()),
        "max_score_gap": float(gap.max()),
        "disagreeing": e.index[e["drifted"] != f["drifted"]].tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="quick smoke run")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the fast path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    w = Workload(5_000, 3_000, 12, 2) if args.small else Workload(100_000, 50_000, 40, 6)
    name = "drift_small" if args.small else "drift"
    _, _, _, shifted = make_frames(Workload(200, 200, w.n_columns, w.n_categorical))
    out_dir = Path(tempfile.mkdtemp(prefix="wb-bench-drift-"))
    load = os.getloadavg()
    log.info("workload %s; load %s; files in %s", w.describe(), load, out_dir)

    fast = run_child(w, "fast", out_dir, args.repeat)
    log.info("fast: %.2fs, peak RSS %.0f MiB", fast["seconds"], fast["peak_rss_mib"])
    evid = run_child(w, "evidently", out_dir, 1)
    log.info("evidently: %.2fs, peak RSS %.0f MiB", evid["seconds"], evid["peak_rss_mib"])

    cmp = compare(evid, fast)
    flagged = {
        m: set(pd.DataFrame(r["columns"]).query("drifted")["column"])
        for m, r in (("evidently", evid), ("fast", fast))
    }
    shifted_found = all(set(shifted) <= flags for flags in flagged.values())
    agree = cmp["agreement"] >= AGREEMENT_GOAL and shifted_found
    log.info("agreement %.3f, shifted flagged %s, %s", cmp["agreement"], shifted_found, cmp)
    common = {
        "load_avg_1_5_15": [round(x, 1) for x in load],
        "load_avg_1_after": round(os.getloadavg()[0], 1),
    }
    speed = Result(
        benchmark=name,
        workload=w.describe() + f"; {len(shifted)} shifted",
        ours_s=fast["seconds"],
        baseline=_evidently_label(),
        baseline_s=evid["seconds"],
        ratio=fast["seconds"] / evid["seconds"],
        goal="fast path ≥ 10× faster; flags agree on ≥ 95% of columns",
        met=fast["seconds"] * 10 <= evid["seconds"],
        agree=agree,
        extra={
            **common,
            "agreement": round(cmp["agreement"], 4),
            "same_test_every_column": cmp["same_test"],
            "max_score_gap": cmp["max_score_gap"],
            "disagreeing": cmp["disagreeing"],
            "shifted": shifted,
            "flagged_fast": sorted(flagged["fast"]),
            "flagged_evidently": sorted(flagged["evidently"]),
            "ours_cpu_s": round(fast["cpu_s"], 2),
            "baseline_cpu_s": round(evid["cpu_s"], 2),
            "files_fast_bytes": fast["files"],
            "files_evidently_bytes": evid["files"],
            "note": "each path timed in its own spawned child; both write their HTML and JSON",
        },
    )
    memory = Result(
        benchmark=name,
        workload=w.describe() + "; peak RSS of each path's own process (MiB)",
        ours_s=None,
        baseline="Evidently peak RSS",
        ratio=fast["peak_rss_mib"] / evid["peak_rss_mib"],
        goal="fast path uses less memory",
        met=fast["peak_rss_mib"] < evid["peak_rss_mib"],
        agree=agree,
        extra={
            **common,
            "ours_peak_rss_mib": round(fast["peak_rss_mib"]),
            "baseline_peak_rss_mib": round(evid["peak_rss_mib"]),
            "ours_rss_before_run_mib": round(fast["rss_before_mib"]),
            "baseline_rss_before_run_mib": round(evid["rss_before_mib"]),
            "ours_peak_over_data_mib": round(fast["peak_rss_mib"] - fast["rss_before_mib"]),
            "baseline_peak_over_data_mib": round(evid["peak_rss_mib"] - evid["rss_before_mib"]),
            "note": "rss_before_run = frames built and libraries imported, before the report",
        },
    )
    path = record([speed, memory], name=name)
    log.info("recorded %s", path)


def _evidently_label() -> str:
    try:
        from importlib.metadata import version

        return f"Evidently {version('evidently')} DataDriftPreset (HTML+JSON)"
    except Exception:  # noqa: BLE001 - the label is cosmetic
        return "Evidently DataDriftPreset (HTML+JSON)"


if __name__ == "__main__":
    main()
