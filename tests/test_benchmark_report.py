"""benchmarks/report.py: RESULTS.md writes what rows share once."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report


def _row(baseline: str, ratio: float, extra: dict) -> dict:
    return {
        "machine": "2 cores",
        "when": "today",
        "workload": "M3 monthly",
        "ours_s": 1.0,
        "baseline": baseline,
        "baseline_s": None,
        "ratio": ratio,
        "goal": "g",
        "met": True,
        "agree": None,
        "extra": extra,
    }


def test_shared_details_are_written_once_and_repeated_workloads_named_by_baseline(
    tmp_path: Path,
) -> None:
    common = {"config": "trimmed(ETS+Theta)", "smape": 13.3}
    rows = [
        _row("Theta", 0.95, {**common, "baseline_smape": 13.9}),
        _row("Naive2", 0.79, {**common, "baseline_smape": 16.9}),
    ]
    (tmp_path / "m3.json").write_text(json.dumps(rows))
    text = report.render(tmp_path)
    assert text.count("trimmed(ETS+Theta)") == 1
    assert "- in every row's details: config: trimmed(ETS+Theta), smape: 13.3" in text
    assert "- M3 monthly vs Theta: baseline_smape: 13.9" in text
    assert "- M3 monthly vs Naive2: baseline_smape: 16.9" in text
    # one row: its details stay with it
    (tmp_path / "m3.json").write_text(json.dumps(rows[:1]))
    text = report.render(tmp_path)
    assert "in every row" not in text
    assert "- M3 monthly: config: trimmed(ETS+Theta), smape: 13.3, baseline_smape: 13.9" in text
