"""Everything in the landing zone, in the order the pipeline loads it.

``data/landing/`` holds what arrived: ``stripe/`` (event exports, the simulator's output),
``webhooks/`` (bodies saved by ``workbench receive``) and ``csv/`` (exports from other
systems; each file's mapping is detected from its header). ``01_ingest``, the tests and the
benchmarks load a company through this one function.
"""

from __future__ import annotations

from workbench.config import Settings, load_settings
from workbench.ingest.loader import IngestReport, ingest

#: (sub-folder of the landing zone, ingest source), in load order
LANDING_SOURCES = (("stripe", "stripe"), ("webhooks", "webhook"), ("csv", "csv"))


def ingest_landing(
    settings: Settings | None = None, *, progress: bool = True
) -> list[tuple[str, IngestReport]]:
    """Ingest every non-empty folder of the landing zone (idempotent, like :func:`ingest`).

    Returns:
        ``(source, report)`` per folder loaded; empty when nothing has landed yet.
    """
    settings = settings or load_settings()
    landing = settings.data_dir / "landing"
    out = []
    for folder, source in LANDING_SOURCES:
        path = landing / folder
        if path.exists() and any(p.is_file() for p in path.rglob("*.*")):
            out.append((source, ingest(path, source=source, settings=settings, progress=progress)))
    return out
