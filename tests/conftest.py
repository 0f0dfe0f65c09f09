"""Shared fixtures: paths, isolated settings, tiny notebooks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = REPO.parent / "shared" / "data" / "external"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def external_dir() -> Path:
    if not EXTERNAL.is_dir():
        pytest.fail(
            f"external test material not found at {EXTERNAL} (shared/ must sit beside the repo)"
        )
    return EXTERNAL


@pytest.fixture()
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every setting at a fresh temporary folder; return that folder."""
    for key in list(os.environ):
        if key.startswith("WORKBENCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WORKBENCH_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path


_COMPANIES: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def ingested_company(tmp_path_factory: pytest.TempPathFactory):
    """Build (once per session and set of arguments) a simulated company ingested from its
    landing files into its own DuckDB warehouse; returns its settings.

    Call it as ``ingested_company(accounts=150, months=12, seed=3, faults=False)``. Modules
    asking for the same company share it: open it read only, or ask for one of your own.
    """

    def build(*, accounts: int, months: int, seed: int, faults: bool = False):
        key = (accounts, months, seed, faults)
        if key not in _COMPANIES:
            simulator = pytest.importorskip("workbench.simulator")
            from workbench.config import load_settings
            from workbench.ingest.loader import ingest

            out = tmp_path_factory.mktemp(f"company_{accounts}x{months}_s{seed}")
            simulator.simulate(
                accounts=accounts, months=months, seed=seed, out=out, faults=faults, progress=False
            )
            settings = load_settings(root=out, overrides={"data_dir": str(out / "data")})
            ingest(out / "landing" / "stripe", settings=settings, progress=False)
            ingest(out / "landing" / "csv", source="csv", settings=settings, progress=False)
            _COMPANIES[key] = settings
        return _COMPANIES[key]

    return build
