"""One point in time as a UTC ``pandas.Timestamp``.

The package keeps every time in UTC. A time without a zone is taken as UTC (``2025-06-01``
is midnight UTC), a time with one is converted to UTC:

- :func:`utc_time`: one time; None, NaT or an empty string is an error that says which time
  is missing (and, with ``hint``, what to do about it).
- :func:`utc_time_or_now`: the same, except that None means the current time (the ``now=``
  arguments of the approval queue and the audit log).

Whole columns go through :func:`workbench.features.offline.to_utc` (vectorized, microsecond
resolution, NaT allowed per row). :func:`workbench.runner.utc_timestamp` reads a notebook
parameter: ISO-8601 text only, its errors are the runner's.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

TimeLike = datetime | date | pd.Timestamp | np.datetime64 | str


def utc_time(value: TimeLike | None, *, what: str = "time", hint: str = "") -> pd.Timestamp:
    """``value`` as a UTC timestamp: without a zone it is UTC, with one it is converted.

    Text is parsed as :class:`pandas.Timestamp` parses it; the timestamp keeps the
    resolution pandas gives it.

    Args:
        value: A time, a date, or text such as ``2025-06-01T10:30+02:00``.
        what: What the time is, for the error messages (``"decision time"``).
        hint: Appended to the message when ``value`` is missing: why it may be missing and
            what to do.

    Raises:
        ValueError: ``value`` is None, NaT or empty (``no <what>: <hint>``), or is not a
            date or time.
    """
    if value is None:
        when = pd.NaT
    else:
        try:
            when = pd.Timestamp(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: {value!r} is not a date or time") from exc
    if pd.isna(when):
        raise ValueError(f"no {what}: {hint}" if hint else f"no {what} (got {value!r})")
    return when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")


def utc_time_or_now(value: TimeLike | None, *, what: str = "time") -> pd.Timestamp:
    """:func:`utc_time`, except that None means the current time."""
    return pd.Timestamp.now(tz="UTC") if value is None else utc_time(value, what=what)
