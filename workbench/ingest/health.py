"""Frames about ingestion for the 01_ingest notebook: arrivals, quarantine, freshness, conservation.

The functions taking frames are pure (unit-testable on a few hand-written rows);
:func:`ingest_health` reads what they need from the warehouse and applies them.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from workbench.config import Settings, load_settings
from workbench.lakehouse import open_warehouse


def arrivals(events: pd.DataFrame) -> pd.DataFrame:
    """Events per source, type and day (of ``created``), with their disposition.

    Args:
        events: ``source``, ``type``, ``disposition``, ``created`` (UTC timestamps).

    Returns:
        ``day``, ``source``, ``type``, ``disposition``, ``events``.
    """
    if events.empty:
        return pd.DataFrame(columns=["day", "source", "type", "disposition", "events"])
    day = pd.to_datetime(events["created"], utc=True).dt.floor("D")
    out = (
        events.assign(day=day)
        .groupby(["day", "source", "type", "disposition"], as_index=False, observed=True)
        .size()
        .rename(columns={"size": "events"})
    )
    return out.sort_values(["day", "source", "type"], ignore_index=True)


def quarantine_reasons(quarantine: pd.DataFrame) -> pd.DataFrame:
    """Quarantined rows per source, rule, table and column, most frequent first.

    Args:
        quarantine: ``source``, ``rule``, ``table_name``, ``column_name``.

    Returns:
        ``source``, ``rule``, ``table_name``, ``column_name``, ``rows``.
    """
    cols = ["source", "rule", "table_name", "column_name"]
    if quarantine.empty:
        return pd.DataFrame(columns=[*cols, "rows"])
    out = (
        quarantine[cols]
        .fillna("")
        .groupby(cols, as_index=False)
        .size()
        .rename(columns={"size": "rows"})
    )
    return out.sort_values(
        ["rows", *cols], ascending=[False, True, True, True, True], ignore_index=True
    )


def freshness(events: pd.DataFrame, loads: pd.DataFrame, *, now: datetime) -> pd.DataFrame:
    """Per source: the newest event, the last load, and how far behind ``now`` they are.

    Args:
        events: ``source``, ``created``.
        loads: ``source``, ``finished_at``.
        now: The reference time (UTC).

    Returns:
        ``source``, ``newest_event``, ``last_load``, ``event_lag_hours``, ``load_lag_hours``.
    """
    now_ts = (
        pd.Timestamp(now).tz_convert("UTC")
        if pd.Timestamp(now).tzinfo
        else pd.Timestamp(now, tz="UTC")
    )
    newest = (
        events.groupby("source")["created"].max()
        if len(events)
        else pd.Series(dtype="datetime64[us, UTC]")
    )
    last = (
        loads.groupby("source")["finished_at"].max()
        if len(loads)
        else pd.Series(dtype="datetime64[us, UTC]")
    )
    out = (
        pd.DataFrame({"newest_event": newest, "last_load": last})
        .rename_axis("source")
        .reset_index()
    )
    out["event_lag_hours"] = (
        now_ts - pd.to_datetime(out["newest_event"], utc=True)
    ).dt.total_seconds() / 3600
    out["load_lag_hours"] = (
        now_ts - pd.to_datetime(out["last_load"], utc=True)
    ).dt.total_seconds() / 3600
    return out.sort_values("source", ignore_index=True)


def conservation(loads: pd.DataFrame) -> pd.DataFrame:
    """The conservation table: per load and file, the counts and whether they balance.

    Only loads in force count: a ``superseded`` load (a CSV file re-mapped since, or a file
    that failed and loaded later) was replaced by the load that superseded it, which counts
    the same records again, so its row is left out and the file is counted once.

    Args:
        loads: ``load_id``, ``source``, ``source_file``, ``received``, ``accepted``,
            ``quarantined``, ``duplicates``, ``status``.

    Returns:
        Those columns plus ``balanced`` (received = accepted + quarantined + duplicates),
        without the ``superseded`` loads.
    """
    cols = [
        "load_id",
        "source",
        "source_file",
        "status",
        "received",
        "accepted",
        "quarantined",
        "duplicates",
    ]
    out = loads.loc[loads["status"] != "superseded", cols].copy()
    out["balanced"] = out["received"] == out["accepted"] + out["quarantined"] + out["duplicates"]
    return out.sort_values(["load_id", "source_file"], ignore_index=True)


def ingest_health(
    settings: Settings | None = None, *, now: datetime | None = None
) -> dict[str, pd.DataFrame]:
    """Read the warehouse and return every frame the ingestion notebook charts.

    Returns:
        ``arrivals``, ``quarantine_reasons``, ``freshness``, ``conservation`` and
        ``quarantine_sample`` (the 50 most recent quarantined rows); ``conservation`` and
        both quarantine frames leave out ``superseded`` loads (each file counts once, as the
        load in force left it).
    """
    settings = settings or load_settings()
    with open_warehouse(settings).read(step="ingest-health") as con:
        events = con.execute("SELECT source, type, disposition, created FROM events").df()
        # a rejection of a superseded load no longer stands (the file loaded since)
        quarantine = con.execute(
            "SELECT * FROM quarantine q WHERE NOT EXISTS (SELECT 1 FROM loads l "
            "WHERE l.load_id = q.load_id AND l.source_file = q.source_file "
            "AND l.status = 'superseded')"
        ).df()
        loads = con.execute("SELECT * FROM loads").df()
    now = now or datetime.now().astimezone()
    return {
        "arrivals": arrivals(events),
        "quarantine_reasons": quarantine_reasons(quarantine),
        "freshness": freshness(events, loads, now=now),
        "conservation": conservation(loads),
        "quarantine_sample": quarantine.sort_values("received_at", ascending=False)
        .head(50)[
            [
                "source",
                "source_file",
                "line",
                "event_id",
                "table_name",
                "column_name",
                "rule",
                "message",
                "value_redacted",
            ]
        ]
        .reset_index(drop=True),
    }
