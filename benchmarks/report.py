"""Render every ``benchmarks/results/*.json`` into ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCALING = "scaling"  # rendered as its own growth-curve table


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render(results_dir: Path = HERE / "results") -> str:
    """Return RESULTS.md text for all recorded benchmark rows, grouped by benchmark."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`benchmarks/report.py`); each row is one side-by-side run of our",
        "code and its baseline in the same process. Times are medians in seconds.",
        "",
        "Conditions: the rows dated 2026-11-25 were recorded while several other benchmarks and test",
        "suites ran on the same 2-core machine (load averages of 6 to 30, given per row where measured),",
        "so their wall times are pessimistic; ratios measured side by side in one run are the fairer",
        "reading. `*_small` sections are quick smoke runs (`--small`), not the target workloads.",
        "",
    ]
    files = sorted(f for f in results_dir.glob("*.json") if f.stem != SCALING)
    if not files:
        lines.append("No benchmark has been run yet: `make bench`.")
    for path in files:
        rows = json.loads(path.read_text())
        if not rows:
            continue
        lines += [
            f"## {path.stem}",
            "",
            f"Machine: {rows[0]['machine']}; run {rows[0]['when']}.",
            "",
        ]
        lines.append(
            "| workload | ours (s) | baseline | baseline (s) | ratio | goal | met | agree |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            lines.append(
                f"| {r['workload']} | {_fmt(r['ours_s'])} | {_fmt(r['baseline'])} | "
                f"{_fmt(r['baseline_s'])} | {_fmt(r['ratio'])} | {r['goal'] or '–'} | "
                f"{_fmt(r['met'])} | {_fmt(r['agree'])} |"
            )
        lines += _details([r for r in rows if r.get("extra")])
        lines.append("")
    lines += _scaling(results_dir / f"{SCALING}.json")
    return "\n".join(lines) + "\n"


def _details(rows: list[dict]) -> list[str]:
    """Each row's extra details; what every row shares is written once, before them."""
    shared: dict = {}
    if len(rows) > 1:
        first = rows[0]["extra"]
        shared = {k: v for k, v in first.items() if all(r["extra"].get(k, ...) == v for r in rows)}
    lines = []
    if shared:
        lines.append(
            "\n- in every row's details: " + ", ".join(f"{k}: {_fmt(v)}" for k, v in shared.items())
        )
    repeated = len({r["workload"] for r in rows}) < len(rows)
    for r in rows:
        own = {k: v for k, v in r["extra"].items() if k not in shared}
        if own:
            name = f"{r['workload']} vs {r['baseline']}" if repeated else r["workload"]
            details = ", ".join(f"{k}: {_fmt(v)}" for k, v in own.items())
            lines.append(f"\n- {name}: {details}")
    return lines


def _scaling(path: Path) -> list[str]:
    """The growth-curve section from ``results/scaling.json`` (``bench_scaling.py``)."""
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    lines = [
        "## Scaling",
        "",
        "Warehouse computations on the DuckDB engine as the company grows "
        "(`benchmarks/bench_scaling.py`; each point in its own process; peak memory is the",
        "process's resident high-water mark during the computation, input generation excluded).",
        "",
        "| computation | accounts | input rows | output rows | time (s) | s per 10k accounts "
        "| peak memory (MiB) | memory before (MiB) | load | machine | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        x = r["extra"]
        per = r["ours_s"] / x["accounts"] * 10_000 if r["ours_s"] and x.get("accounts") else None
        lines.append(
            f"| {r['workload'].split(',')[0]} | {x.get('accounts', 0):,} | "
            f"{x.get('rows_in', 0):,} | {x.get('rows_out', 0):,} | {_fmt(r['ours_s'])} | "
            f"{_fmt(per)} | {_fmt(x.get('peak_rss_mib'))} | {_fmt(x.get('rss_before_mib'))} | "
            f"{_fmt(x.get('load_1m'))} | "
            f"{r['machine']} | {r['when']} |"
        )
    lines.append("")
    return lines


def main() -> None:
    (HERE / "RESULTS.md").write_text(render())


if __name__ == "__main__":
    main()
