"""``papermill --engine workbench``: papermill's nbclient engine with workbench's kernel client.

Kept apart from :mod:`workbench.kernels` so that serving dashboards does not import papermill.
"""

from __future__ import annotations

from typing import Any

from papermill.engines import NBClientEngine

from workbench.kernels import KernelManager


class PapermillEngine(NBClientEngine):
    """nbclient, as papermill runs it, with :class:`workbench.kernels.KernelManager`: a reply
    the kernel already sent is read within a poll slice (registered under ``papermill.engine``
    in pyproject.toml)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        kwargs.setdefault("kernel_manager_class", KernelManager)
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
