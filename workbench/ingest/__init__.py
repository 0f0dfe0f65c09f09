"""Ingestion: received files -> raw lake -> canonical warehouse tables, with quarantine.

Public API::

    ingest(path, *, source="stripe", mapping=None, settings=None, progress=True) -> IngestReport
    ingest_landing(settings=None, *, progress=True) -> [(source, IngestReport)]: the landing zone
    rebuild(settings=None) -> RebuildReport
    erase_customer(customer_id, *, who, why, settings=None) -> ErasureReport
    verify(settings=None, *, check_lake=True) -> VerifyReport
    ingest_health(settings=None) -> dict of frames for the 01_ingest notebook
    table_checksums(settings=None) -> {table: checksum}

Modules: ``records`` (files to records, card-number redaction), ``lake`` (the raw lake),
``stripe_events`` (SQL projection of events into versions), ``contracts`` (pandera),
``derive`` (current state from versions), ``loader`` (the load transaction),
``csv_files`` (CSV exports via :mod:`workbench.csv_mapping`), ``rebuild``, ``erase``,
``verify``, ``health``, ``tables`` (internal tables), ``sample_events`` (test data).
"""

from workbench.ingest.checksums import table_checksums
from workbench.ingest.erase import ErasureReport, erase_customer
from workbench.ingest.health import ingest_health
from workbench.ingest.landing import ingest_landing
from workbench.ingest.loader import (
    ConservationError,
    FileReport,
    IngestError,
    IngestReport,
    ingest,
)
from workbench.ingest.rebuild import RebuildReport, rebuild
from workbench.ingest.verify import VerifyReport, verify

__all__ = [
    "ConservationError",
    "ErasureReport",
    "FileReport",
    "IngestError",
    "IngestReport",
    "RebuildReport",
    "VerifyReport",
    "erase_customer",
    "ingest",
    "ingest_health",
    "ingest_landing",
    "rebuild",
    "table_checksums",
    "verify",
]
