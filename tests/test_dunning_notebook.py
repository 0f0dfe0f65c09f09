"""07_dunning's as_of parameter, on a tiny simulated company."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from workbench.config import load_settings
from workbench.runner import RunnerError, run_pipeline

REPO = Path(__file__).resolve().parents[1]


def test_a_time_without_a_zone_is_read_as_utc() -> None:
    from workbench.runner import utc_timestamp

    assert utc_timestamp("2025-06-01") == pd.Timestamp("2025-06-01T00:00Z")
    assert utc_timestamp("2025-06-01T10:30") == pd.Timestamp("2025-06-01T10:30Z")
    assert utc_timestamp("2025-06-01T12:30+02:00") == pd.Timestamp("2025-06-01T10:30Z")
    assert str(utc_timestamp("2025-06-01T12:30+02:00").tz) == "UTC"
    with pytest.raises(RunnerError, match="not an ISO-8601 date or time"):
        utc_timestamp("June")
    with pytest.raises(RunnerError, match="NaT is not an ISO-8601 date or time"):
        utc_timestamp(pd.NaT)  # it used to come back as NaT, a time that is no time


def test_07_decides_as_of_a_date_given_without_a_zone(isolated_env: Path) -> None:
    settings = load_settings(REPO)
    tiny = {"accounts": "40", "months": "4", "seed": "1"}
    run_pipeline(["00", "01"], parameters=tiny, settings=settings, progress=False)
    manifest = run_pipeline(["07"], parameters={"as_of": "2023-04-01", "period_days": "3",
                            "replay": "false"}, settings=settings, progress=False)  # fmt: skip
    assert manifest.status == "ok"
