"""Billing Workbench: subscription billing analytics from Jupyter.

``import workbench as wb`` gives the functions the notebooks call. Submodules load
on first use, so importing the package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# attribute -> (module, name); a name of None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "config": ("workbench.config", None),
    "store": ("workbench.store", None),
    "schema": ("workbench.schema", None),
    "runner": ("workbench.runner", None),
    "load_settings": ("workbench.config", "load_settings"),
    "Warehouse": ("workbench.store", "Warehouse"),
    "open_warehouse": ("workbench.lakehouse", "open_warehouse"),
    "publish_snapshot": ("workbench.store", "publish_snapshot"),
    "read_snapshot": ("workbench.store", "read_snapshot"),
    "run_pipeline": ("workbench.runner", "run_pipeline"),
    "current_run_id": ("workbench.runner", "current_run_id"),
    "check_parameters": ("workbench.runner", "check_parameters"),
    "utc_timestamp": ("workbench.runner", "utc_timestamp"),
    "store_frame": ("workbench.publishing", "store_frame"),
    "publish_tables": ("workbench.publishing", "publish_tables"),
    "setup_notebook": ("workbench.display", "setup_notebook"),
    "money": ("workbench.display", "money"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
