"""Re-simulating into a data folder whose warehouse came from another simulation is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from workbench.config import load_settings
from workbench.runner import StepFailed, run_pipeline

REPO = Path(__file__).resolve().parents[1]
TINY = {"accounts": "20", "months": "3", "seed": "1"}


def test_00_refuses_a_different_company_once_the_warehouse_holds_one(isolated_env: Path) -> None:
    settings = load_settings(REPO)
    first = run_pipeline(["00", "01"], parameters=TINY, settings=settings, progress=False)
    assert first.status == "ok"
    again = run_pipeline(["00", "01"], parameters=TINY, settings=settings, progress=False)
    assert again.status == "ok"  # the same company again: idempotent
    with pytest.raises(StepFailed, match="make clean-data") as info:
        run_pipeline(["00"], parameters={**TINY, "accounts": "30"}, settings=settings,
                     progress=False)  # fmt: skip
    assert "accounts 20 -> 30" in str(info.value)
    truth = json.loads((settings.data_dir / "truth" / "parameters.json").read_text())
    assert truth["accounts"] == 20  # refused before anything was overwritten


def test_a_new_simulation_is_fine_before_anything_was_ingested(isolated_env: Path) -> None:
    from workbench.simulator import simulate_data_folder

    settings = load_settings(REPO)
    simulate_data_folder(settings, accounts=20, months=3, seed=1, progress=False)
    summary = simulate_data_folder(settings, accounts=30, months=3, seed=1, progress=False)
    assert summary.accounts == 30


def test_a_folder_simulated_before_the_record_existed_is_judged_by_its_truth(
    isolated_env: Path,
) -> None:
    from workbench.ingest import ingest_landing
    from workbench.simulator import DataFolderConflict, simulate_data_folder

    settings = load_settings(REPO)
    simulate_data_folder(settings, accounts=20, months=3, seed=1, progress=False)
    ingest_landing(settings, progress=False)
    (settings.data_dir / "simulation.json").unlink()  # as a folder from an earlier version
    simulate_data_folder(settings, accounts=20, months=3, seed=1, progress=False)
    with pytest.raises(DataFolderConflict, match="seed 1 -> 2"):
        simulate_data_folder(settings, accounts=20, months=3, seed=2, progress=False)


def test_make_help_lists_clean_data() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True).stdout
    assert "make clean-data" in out
