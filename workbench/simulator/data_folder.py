"""Simulate into the pipeline's data folder without mixing two companies in one warehouse.

:func:`~workbench.simulator.simulate` replaces the landing files and the truth of the folder
it writes to, but the warehouse (and the raw lake it is built from) keeps every event ever
ingested: a company simulated with other parameters on top of it would be counted with the
first. :func:`simulate_data_folder` records the parameters of each simulation in
``<data folder>/simulation.json`` and refuses, before writing anything, a different
simulation once something has been ingested there. The same simulation again is fine
(ingestion is idempotent), so ``make demo`` can run twice on one folder.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime
from pathlib import Path
from typing import Any

from workbench.config import Settings
from workbench.simulator.simulation import SimulationSummary, simulate
from workbench.simulator.timeline import parse_start

RECORD = "simulation.json"
#: what makes two simulations the same company (chunking and workers change no event)
IDENTITY = ("accounts", "months", "seed", "start", "faults", "regime_change")


class DataFolderConflict(ValueError):
    """The data folder's warehouse was built from another simulation."""


def simulation_identity(
    *,
    accounts: int,
    months: int,
    seed: int,
    start: str | date | datetime,
    faults: bool,
    regime_change: int | None,
) -> dict[str, Any]:
    """The parameters that decide which company a simulation writes, normalized."""
    return {
        "accounts": int(accounts),
        "months": int(months),
        "seed": int(seed),
        "start": parse_start(start).date().isoformat(),
        "faults": bool(faults),
        "regime_change": None if regime_change is None else int(regime_change),
    }


def recorded_simulation(out: Path) -> dict[str, Any] | None:
    """The identity of the last simulation written to ``out``: from its record, else (a folder
    simulated before the record existed) from the truth's ``parameters.json``."""
    for path in (out / RECORD, out / "truth" / "parameters.json"):
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue
        if all(key in raw for key in IDENTITY):
            return simulation_identity(**{key: raw[key] for key in IDENTITY})
    return None


def holds_ingested_data(out: Path, warehouse_path: Path | None = None) -> bool:
    """Whether anything was ingested into the data folder ``out`` (its raw lake holds a file,
    or its warehouse exists)."""
    lake = out / "lake"
    if lake.is_dir() and any(p.is_file() for p in lake.rglob("*")):
        return True
    return warehouse_path is not None and Path(warehouse_path).exists()


def check_data_folder(
    out: Path, identity: dict[str, Any], *, warehouse_path: Path | None = None
) -> None:
    """Refuse a simulation that would mix a second company into ``out``'s warehouse.

    Raises:
        DataFolderConflict: Something was ingested in ``out``, and it came from a simulation
            with other parameters, or from no recorded simulation at all.
    """
    if not holds_ingested_data(out, warehouse_path):
        return
    recorded = recorded_simulation(out)
    if recorded == identity:
        return
    if recorded is None:
        what = "data that no recorded simulation produced (real data?)"
    else:
        changed = ", ".join(
            f"{key} {recorded[key]} -> {identity[key]}"
            for key in IDENTITY
            if recorded[key] != identity[key]
        )
        what = f"a company simulated with other parameters ({changed})"
    raise DataFolderConflict(
        f"the data folder {out} already holds a warehouse built from {what}; simulating into it "
        "would mix two companies in the warehouse. Start from an empty data folder: "
        f"`make clean-data` (deletes data/ and reports/ in the project) or delete {out}, or "
        "point WORKBENCH_DATA_DIR at a new folder"
        + ("." if recorded is None else "; or simulate again with the recorded parameters.")
    )


def simulate_data_folder(
    settings: Settings,
    *,
    accounts: int = 3000,
    months: int = 36,
    seed: int = 0,
    start: str | date | datetime = "2023-01-01",
    faults: bool = False,
    regime_change: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    workers: int = 1,
) -> SimulationSummary:
    """:func:`~workbench.simulator.simulate` into a data folder (default: the configured one),
    refusing a different company once the folder's warehouse holds one.

    Raises:
        DataFolderConflict: See :func:`check_data_folder`; nothing was written.
    """
    folder = Path(out) if out is not None else Path(settings.data_dir)
    company = dict(accounts=accounts, months=months, seed=seed, start=start, faults=faults,
                   regime_change=regime_change)  # fmt: skip
    identity = simulation_identity(**company)
    own_warehouse = folder.resolve() == Path(settings.data_dir).resolve()
    check_data_folder(
        folder, identity, warehouse_path=settings.warehouse_path if own_warehouse else None
    )
    summary = simulate(**company, out=folder, progress=progress, workers=workers)
    record = folder / RECORD
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, record)
    return summary
