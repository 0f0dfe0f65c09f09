"""Writing the simulated company to disk: atomic files, CSV exports, Parquet truth.

Layout under the data directory ``out``::

    landing/stripe/catalog.jsonl          product/price/coupon/tax_rate.created events
    landing/stripe/events-00000.jsonl     one file per chunk of accounts, sorted by (created, id)
    landing/csv/usage.csv                 account_id,date,metric,quantity
    landing/csv/support_tickets.csv       ticket_id,account_id,created_at,severity,category,status,
                                          resolved_at,first_response_minutes,subject,body
    landing/csv/crm_signals.csv           account_id,date,health_score,nps,seats_purchased,seats_used,plan_tier
    landing/csv/fx_rates.csv              date,currency,rate_to_usd
    landing/faults_manifest.json          only with faults
    truth/*.parquet, truth/regime.json, truth/parameters.json

Every file is written under a temporary name in the same folder and renamed into
place, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.simulator.truth import SCHEMAS

USAGE_COLUMNS = ("account_id", "date", "metric", "quantity")
TICKET_COLUMNS = (
    "ticket_id",
    "account_id",
    "created_at",
    "severity",
    "category",
    "status",
    "resolved_at",
    "first_response_minutes",
    "subject",
    "body",
)
CRM_COLUMNS = (
    "account_id",
    "date",
    "health_score",
    "nps",
    "seats_purchased",
    "seats_used",
    "plan_tier",
)
FX_COLUMNS = ("date", "currency", "rate_to_usd")

CSV_FILES = ("usage.csv", "support_tickets.csv", "crm_signals.csv", "fx_rates.csv")
TRUTH_FILES = tuple(f"{name}.parquet" for name in SCHEMAS) + ("regime.json", "parameters.json")
TMP_SUFFIX = ".simtmp"


def tmp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename."""
    return path.with_name(path.name + TMP_SUFFIX)


def commit(path: Path) -> None:
    """Flush the temporary file of ``path`` to disk and rename it into place."""
    tmp = tmp_path(path)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    tmp = tmp_path(path)
    tmp.write_text(text, encoding="utf-8")
    commit(path)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented, key-sorted JSON atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def clean(out: Path) -> None:
    """Remove the files a previous simulation wrote under ``out`` (and only those)."""
    stripe = out / "landing" / "stripe"
    for path in list(stripe.glob("events-*.jsonl")) + [stripe / "catalog.jsonl"]:
        path.unlink(missing_ok=True)
    for folder in (stripe, out / "landing" / "csv", out / "truth", out / "landing"):
        for path in folder.glob(f"*{TMP_SUFFIX}"):
            path.unlink(missing_ok=True)
    for name in CSV_FILES:
        (out / "landing" / "csv" / name).unlink(missing_ok=True)
    for name in TRUTH_FILES:
        (out / "truth" / name).unlink(missing_ok=True)
    (out / "landing" / "faults_manifest.json").unlink(missing_ok=True)


def csv_text(rows: list[tuple], header: tuple[str, ...] | None = None) -> str:
    """Rows as RFC-4180 CSV text with ``\\n`` line ends (``None`` becomes an empty field)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


class CsvSink:
    """An append-only CSV file written under a temporary name until :meth:`close`."""

    def __init__(self, path: Path, header: tuple[str, ...]) -> None:
        self.path = path
        self.rows = 0
        self._fh = open(tmp_path(path), "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        self._fh.write(csv_text([], header))

    def write_text(self, text: str, rows: int) -> None:
        self._fh.write(text)
        self.rows += rows

    def close(self) -> None:
        self._fh.close()
        commit(self.path)


class ParquetSink:
    """A Parquet file that gets one row group per chunk, renamed into place on close."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.rows = 0
        self._writer = pq.ParquetWriter(tmp_path(path), SCHEMAS[name], compression="zstd")

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        commit(self.path)


def write_events(path: Path, lines: list[str]) -> None:
    """Write event lines (already sorted) as JSON Lines, atomically."""
    tmp = tmp_path(path)
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")
    commit(path)
