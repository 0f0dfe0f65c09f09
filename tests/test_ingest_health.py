"""The frames the ingestion notebook charts, on a few hand-written rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from workbench.ingest.health import arrivals, conservation, freshness, quarantine_reasons


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_arrivals_per_day_source_and_type():
    events = pd.DataFrame(
        {
            "source": ["stripe", "stripe", "webhook", "stripe"],
            "type": ["invoice.paid", "invoice.paid", "invoice.paid", "customer.created"],
            "disposition": ["handled"] * 4,
            "created": [
                ts("2024-01-01 10:00"),
                ts("2024-01-01 23:59"),
                ts("2024-01-01 12:00"),
                ts("2024-01-02 00:00"),
            ],
        }
    )
    out = arrivals(events)
    assert out.to_dict("records") == [
        {
            "day": ts("2024-01-01"),
            "source": "stripe",
            "type": "invoice.paid",
            "disposition": "handled",
            "events": 2,
        },
        {
            "day": ts("2024-01-01"),
            "source": "webhook",
            "type": "invoice.paid",
            "disposition": "handled",
            "events": 1,
        },
        {
            "day": ts("2024-01-02"),
            "source": "stripe",
            "type": "customer.created",
            "disposition": "handled",
            "events": 1,
        },
    ]
    assert arrivals(events.iloc[:0]).empty


def test_quarantine_reasons_most_frequent_first():
    q = pd.DataFrame(
        {
            "source": ["stripe", "stripe", "stripe", "csv"],
            "rule": ["conflict", "malformed_json", "malformed_json", "file_rejected"],
            "table_name": [None, None, None, None],
            "column_name": [None, None, None, None],
        }
    )
    out = quarantine_reasons(q)
    assert out[["rule", "rows"]].values.tolist() == [
        ["malformed_json", 2],
        ["file_rejected", 1],
        ["conflict", 1],
    ]


def test_freshness_lags_in_hours():
    events = pd.DataFrame(
        {
            "source": ["stripe", "stripe", "webhook"],
            "created": [ts("2024-01-01"), ts("2024-01-02"), ts("2024-01-02 12:00")],
        }
    )
    loads = pd.DataFrame(
        {"source": ["stripe", "webhook"], "finished_at": [ts("2024-01-03"), ts("2024-01-03")]}
    )
    out = freshness(events, loads, now=datetime(2024, 1, 3, 6, tzinfo=UTC))
    assert out["source"].tolist() == ["stripe", "webhook"]
    assert out["event_lag_hours"].tolist() == pytest.approx([30.0, 18.0])
    assert out["load_lag_hours"].tolist() == pytest.approx([6.0, 6.0])


def test_conservation_flags_unbalanced_rows():
    loads = pd.DataFrame(
        {
            "load_id": ["L1", "L1"],
            "source": ["stripe", "csv"],
            "source_file": ["a", "b"],
            "status": ["ok", "failed"],
            "received": [10, 4],
            "accepted": [7, 0],
            "quarantined": [2, 4],
            "duplicates": [1, 1],
        }
    )
    assert conservation(loads)["balanced"].tolist() == [True, False]


def test_conservation_counts_a_remapped_or_failed_then_loaded_file_once(tmp_path):
    """A file re-mapped (or that failed and loaded later) has a ``superseded`` load beside
    the load in force: conservation counts the file once, with the counts now in force."""
    from test_csv_remap import EXPORT, MAPPING, RIGHT, WRONG

    from workbench.config import load_settings
    from workbench.ingest import ingest
    from workbench.ingest.health import ingest_health

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    export, failed = tmp_path / "export.csv", tmp_path / "failed.csv"
    export.write_text(EXPORT)
    failed.write_text(EXPORT.replace("cus_", "cus_f"))
    wrong, right, broken = (tmp_path / f"{n}.yaml" for n in ("wrong", "right", "broken"))
    wrong.write_text(MAPPING.format(**WRONG))
    right.write_text(MAPPING.format(**RIGHT))
    broken.write_text(right.read_text().replace("headers: [Calls]", "headers: [Calls Made]"))

    def load(path: Path, mapping: Path, **kw):
        return ingest(path, source="csv", mapping=mapping, settings=settings, progress=False, **kw)

    load(export, wrong)  # 2 accepted, 2 quarantined
    load(export, right, remap=True)  # now 3 accepted, 1 quarantined; the first is superseded
    assert load(failed, broken).files[0].status == "failed"  # 4 quarantined as one rejection
    assert load(failed, right).files[0].status == "ok"  # 3 accepted, 1 quarantined

    health = ingest_health(settings)
    frame = health["conservation"]
    per_file = frame.groupby("source_file")[["received", "accepted", "quarantined"]].sum()
    assert per_file.values.tolist() == [[4, 3, 1], [4, 3, 1]]  # each file once, as in force
    totals = frame.groupby("source")[["received", "accepted", "quarantined", "duplicates"]].sum()
    assert totals.loc["csv"].tolist() == [8, 6, 2, 0]
    assert (frame["status"] == "ok").all() and frame["balanced"].all()
