"""One time as UTC: naive is UTC, aware is converted, missing says which time is missing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from workbench.timeutil import utc_time, utc_time_or_now

NOON_UTC = pd.Timestamp("2025-06-01T12:00", tz="UTC")


@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 6, 1, 12, 0),  # naive: taken as UTC
        pd.Timestamp("2025-06-01T12:00"),
        np.datetime64("2025-06-01T12:00"),
        "2025-06-01T12:00",
        "2025-06-01 12:00:00",
        datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),  # aware: converted
        pd.Timestamp("2025-06-01T08:00", tz="America/New_York"),
        "2025-06-01T14:00+02:00",
        NOON_UTC,
    ],
)
def test_a_time_in_utc(value) -> None:  # noqa: ANN001
    got = utc_time(value)
    assert got == NOON_UTC and str(got.tz) == "UTC"


def test_a_date_is_midnight_utc() -> None:
    assert utc_time(date(2025, 6, 1)) == pd.Timestamp("2025-06-01", tz="UTC")
    assert utc_time("2025-06-01") == pd.Timestamp("2025-06-01", tz="UTC")


def test_the_resolution_is_the_one_pandas_gives() -> None:
    """No rounding: a nanosecond stays (columns go through features.offline.to_utc)."""
    ns = pd.Timestamp("2025-06-01T12:00:00.000000001")
    assert utc_time(ns).value == ns.value


@pytest.mark.parametrize("missing", [None, pd.NaT, np.datetime64("NaT"), "", float("nan")])
def test_a_missing_time_says_which(missing) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"^no as_of \(got "):
        utc_time(missing, what="as_of")
    with pytest.raises(ValueError, match=r"^no decision time: load some events first$"):
        utc_time(missing, what="decision time", hint="load some events first")


def test_text_that_is_no_time_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^start: 'yesterday-ish' is not a date or time$"):
        utc_time("yesterday-ish", what="start")
    with pytest.raises(ValueError, match="is not a date or time"):
        utc_time(object())  # a TypeError in pandas


def test_none_means_now_only_where_asked() -> None:
    before = datetime.now(UTC)
    now = utc_time_or_now(None)
    assert before <= now <= datetime.now(UTC) and str(now.tz) == "UTC"
    assert utc_time_or_now("2025-06-01T14:00+02:00") == NOON_UTC
    with pytest.raises(ValueError, match="no time"):
        utc_time_or_now(pd.NaT)  # NaT is not "now": it is a missing time
