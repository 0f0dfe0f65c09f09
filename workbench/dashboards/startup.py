"""What a dashboard kernel does before its first render, and how it meets its visitor.

Voila starts a kernel and runs the dashboard notebook for each visit, so the kernel's
start is part of the first render. Two things here shorten or hide it:

* :func:`defer_rfc3987_syntax`: jsonschema (imported by Altair) imports the optional
  ``rfc3987_syntax`` package to check the ``iri`` string format, and that import compiles a
  Lark grammar: 1.3 to 1.8 s, more than half of the dashboard's imports. A stand-in defers
  the real import to the first ``iri`` check, which Altair never makes (the Vega-Lite
  schema has no ``iri`` formats).
* :func:`wait_for_visit`: under Voila's pre-heated kernels (``workbench serve``), the
  notebook runs before anyone visits. The dashboard does its slow work first, then waits
  here for the visit, and checks after it that its data is still the latest
  (:meth:`workbench.dashboards.base.Dashboard.show`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import time
import types
from typing import Any

_DEFERRED = "rfc3987_syntax"

# Dashboards whose notebook may run before its visitor: those drawn wholly from a snapshot
# (``build_before_visit``). The others wait for the visit anyway, so heating them gains little.
PREHEATED_NOTEBOOKS = ("finance.ipynb",)


def defer_rfc3987_syntax() -> bool:
    """Make ``import rfc3987_syntax`` cheap until something uses it.

    Puts a stand-in module in ``sys.modules`` whose ``is_valid_syntax`` (the one name
    jsonschema takes from it) and any other attribute import the real package on first
    use, so ``iri`` format checks behave exactly as before. Does nothing when the package
    is not installed or already imported.

    Returns:
        Whether the stand-in was installed.
    """
    if _DEFERRED in sys.modules:
        return False
    spec = importlib.util.find_spec(_DEFERRED)
    if spec is None:
        return False
    stand_in = types.ModuleType(_DEFERRED, "Stand-in: imports rfc3987_syntax on first use.")
    # the real package's spec and path: find_spec and submodule imports work as before
    stand_in.__spec__ = spec
    stand_in.__path__ = list(spec.submodule_search_locations or [])
    stand_in.__file__ = spec.origin

    def real() -> types.ModuleType:
        if sys.modules.get(_DEFERRED) is stand_in:
            del sys.modules[_DEFERRED]
        return importlib.import_module(_DEFERRED)

    def is_valid_syntax(term: str, value: str) -> bool:
        return real().is_valid_syntax(term, value)

    def __getattr__(name: str) -> Any:  # noqa: N807 - module-level __getattr__ (PEP 562)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[_DEFERRED] = stand_in
    return True


def preheated() -> bool:
    """Whether this kernel was started by Voila ahead of its visitor (a pre-heated kernel)."""
    return os.environ.get("VOILA_PREHEAT") == "True"


def _server_log() -> logging.Logger:
    """A logger writing to the kernel process's own stderr, i.e. the Voila server's log
    (the notebook's ``sys.stderr`` would put the line on the visitor's page)."""
    logger = logging.getLogger("workbench.dashboards.preheat")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(
            logging.Formatter("[workbench %(asctime)s pid %(process)d] %(message)s")
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def server_log(message: str, *args: object) -> None:
    """Log a line to the Voila server's log (see :func:`_server_log`)."""
    _server_log().info(message, *args)


def wait_for_visit() -> bool:
    """In a pre-heated kernel, block until a visitor's request takes this kernel.

    Voila sends the request's details (``SCRIPT_NAME``, ``QUERY_STRING``...) to the waiting
    kernel through :func:`voila.utils.wait_for_request`, which puts them in ``os.environ``;
    their arrival is the visit. Should that wait end without them (the connection to the
    server dropped), it is made again, so a pre-heated kernel never goes on before a visit.

    Returns:
        False at once in a kernel started for a visit (Voila's default, and outside Voila);
        True once the visitor has arrived in a pre-heated kernel.
    """
    if not preheated():
        return False
    from voila.utils import wait_for_request

    os.environ.pop("SCRIPT_NAME", None)  # no request has reached this kernel yet
    failures = 0
    while "SCRIPT_NAME" not in os.environ:
        wait_for_request()
        if "SCRIPT_NAME" not in os.environ:
            failures += 1
            if failures == 1:
                server_log(
                    "pre-heated kernel cannot hear from Voila at %s:%s (VOILA_APP_IP, "
                    "VOILA_APP_PORT); retrying every second",
                    os.environ.get("VOILA_APP_IP", "127.0.0.1"),
                    os.environ.get("VOILA_APP_PORT", "8866"),
                )
            time.sleep(1)
    return True


def kernel_address(host: str) -> str:
    """The address a pre-heated kernel reaches Voila at (``VOILA_APP_IP``; Voila's default is
    127.0.0.1, which a server bound to one other address does not answer)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host


def preheat_options(pool_size: int = 1) -> list[str]:
    """Voila options for ``pool_size`` pre-heated kernels of each of ``PREHEATED_NOTEBOOKS``
    (no pre-heating when ``pool_size`` is 0). Notebook names are relative to the folder served.
    """
    if pool_size <= 0:
        return []
    pools = {"default": {"pool_size": 0}} | {
        name: {"pool_size": pool_size} for name in PREHEATED_NOTEBOOKS
    }
    return [
        "--VoilaConfiguration.preheat_kernel=True",
        f"--VoilaKernelManager.kernel_pools_config={pools!r}",
    ]
