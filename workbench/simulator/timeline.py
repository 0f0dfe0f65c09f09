"""Calendar arithmetic for the simulation: months, days and Stripe's billing anchors.

Times inside the simulator are integer unix seconds (UTC), as Stripe's ``created``.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np

DAY = 86_400
HOUR = 3_600


def to_ts(value: datetime) -> int:
    """Unix seconds of an aware (or naive UTC) datetime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def from_ts(ts: int) -> datetime:
    """Aware UTC datetime of unix seconds."""
    return datetime.fromtimestamp(ts, tz=UTC)


def iso(ts: int) -> str:
    """ISO-8601 UTC text with a ``Z`` suffix, e.g. ``2023-01-05T13:45:12Z``."""
    return from_ts(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_months(anchor: int, months: int) -> int:
    """The anchor moved by whole months, clamped to the month's last day as Stripe does.

    A subscription anchored on Jan 31 renews on Feb 28 (or 29), Mar 31, Apr 30, …: every
    period end is computed from the anchor, never from the previous period end.
    """
    dt = from_ts(anchor)
    month_index = dt.month - 1 + months
    year = dt.year + month_index // 12
    month = month_index % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return to_ts(dt.replace(year=year, month=month, day=day))


def parse_start(start: str | date | datetime) -> datetime:
    """The simulation start as an aware UTC datetime at midnight."""
    if isinstance(start, datetime):
        dt = start if start.tzinfo else start.replace(tzinfo=UTC)
    elif isinstance(start, date):
        dt = datetime(start.year, start.month, start.day, tzinfo=UTC)
    else:
        dt = datetime.fromisoformat(str(start))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Timeline:
    """The simulated horizon: ``months`` calendar-month steps from ``start``.

    Month ``m`` spans ``[month_starts[m], month_starts[m + 1])``; day ``d`` starts at
    ``start_ts + d * DAY``. Per-day arrays let usage be generated vectorised.
    """

    start: datetime
    months: int
    month_starts: tuple[int, ...] = field(init=False)
    day_month: np.ndarray = field(init=False, repr=False)
    day_frac: np.ndarray = field(init=False, repr=False)
    day_weekday: np.ndarray = field(init=False, repr=False)
    day_text: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        start_ts = to_ts(self.start)
        starts = tuple(add_months(start_ts, m) for m in range(self.months + 1))
        object.__setattr__(self, "month_starts", starts)
        n_days = (starts[-1] - start_ts) // DAY
        day_ts = start_ts + np.arange(n_days, dtype=np.int64) * DAY
        bounds = np.asarray(starts, dtype=np.int64)
        month = np.searchsorted(bounds, day_ts, side="right") - 1
        frac = (day_ts - bounds[month]) / (bounds[month + 1] - bounds[month])
        weekday = (np.arange(n_days) + self.start.weekday()) % 7
        first = self.start.date()
        text = tuple((first + timedelta(days=int(d))).isoformat() for d in range(n_days))
        object.__setattr__(self, "day_month", month.astype(np.int32))
        object.__setattr__(self, "day_frac", frac)
        object.__setattr__(self, "day_weekday", weekday.astype(np.int8))
        object.__setattr__(self, "day_text", text)

    @property
    def start_ts(self) -> int:
        return self.month_starts[0]

    @property
    def end_ts(self) -> int:
        return self.month_starts[-1]

    @property
    def n_days(self) -> int:
        return len(self.day_text)

    def month_of(self, ts: int) -> int:
        """Index of the month containing ``ts`` (clamped to the horizon)."""
        lo, hi = 0, self.months - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.month_starts[mid] <= ts:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def day_of(self, ts: int) -> int:
        """Index of the day containing ``ts``."""
        return (ts - self.start_ts) // DAY

    def month_length(self, m: int) -> int:
        return self.month_starts[m + 1] - self.month_starts[m]
