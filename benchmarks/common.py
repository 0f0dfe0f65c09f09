"""Shared plumbing for the benchmarks: timing, peak memory and result records.

Every benchmark runs our code and its named baseline side by side in one process
run, checks they agree, and calls :func:`record`. ``benchmarks/report.py``
renders all records into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """Describe this machine in one line (cores, memory, Python)."""
    cores = os.cpu_count() or 0
    try:
        mem_kib = int(
            next(
                line
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            ).split()[1]
        )
        mem = f"{mem_kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "unknown memory"
    return f"{cores} cores, {mem}, {platform.machine()}, Python {platform.python_version()}"


def median_time(fn: Callable[[], Any], *, repeat: int = 3) -> tuple[float, Any]:
    """Run ``fn`` ``repeat`` times; return the median wall time in seconds and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def traced_peak_mib(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Peak Python-allocated memory while ``fn`` runs, in MiB (tracemalloc)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20, result


@dataclass
class Result:
    """One benchmark row.

    ``ratio`` is ours / baseline for times (lower is better) unless the goal says otherwise.
    """

    benchmark: str
    workload: str
    ours_s: float | None
    baseline: str | None = None
    baseline_s: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    agree: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    machine: str = field(default_factory=machine)
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def record(results: list[Result], *, name: str) -> Path:
    """Write one benchmark's rows to ``benchmarks/results/<name>.json`` atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
