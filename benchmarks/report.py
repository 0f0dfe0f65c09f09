"""Render every ``benchmarks/results/*.json`` into ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


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
    files = sorted(results_dir.glob("*.json"))
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
        extras = [r for r in rows if r.get("extra")]
        for r in extras:
            details = ", ".join(f"{k}: {_fmt(v)}" for k, v in r["extra"].items())
            lines.append(f"\n- {r['workload']}: {details}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    (HERE / "RESULTS.md").write_text(render())


if __name__ == "__main__":
    main()
