"""What every dashboard shares: reading published snapshots, error and empty states.

Voila hides tracebacks, so a dashboard draws its own messages: an empty state that
says which command publishes the data, and an error state that says what went wrong
and what to do next. Dashboards never open the live warehouse (the one-writer rule):
they read snapshots published by the pipeline.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.config import Settings, load_settings
from workbench.store import SnapshotMissing, read_snapshot, snapshot_info

log = logging.getLogger(__name__)

CSS = """
<style>
.wb-tile {border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:4px;min-width:130px}
.wb-tile .wb-label {color:#666;font-size:12px}
.wb-tile .wb-value {font-size:22px;font-weight:600}
.wb-empty {background:#f6f8fa;border:1px dashed #aaa;padding:16px;border-radius:6px}
.wb-error {background:#fff0f0;border:1px solid #e99;padding:16px;border-radius:6px}
</style>
"""


def message_html(kind: str, title: str, body: str) -> str:
    """HTML for an empty (``kind="empty"``) or error (``kind="error"``) state."""
    return (
        f'<div class="wb-{kind}" data-state="{kind}"><b>{html.escape(title)}</b>'
        f"<p>{html.escape(body)}</p></div>"
    )


def tile_html(label: str, value: str, *, key: str) -> str:
    """A KPI tile; ``data-kpi`` lets browser tests read the number shown."""
    return (
        f'<div class="wb-tile"><div class="wb-label">{html.escape(label)}</div>'
        f'<div class="wb-value" data-kpi="{html.escape(key)}">{html.escape(value)}</div></div>'
    )


class Dashboard:
    """Base class: a root box with a header, a message area and a content area."""

    title = "Dashboard"
    snapshot = ""  # the published snapshot this dashboard reads

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.message = widgets.HTML()
        self.content = widgets.VBox()
        self.root = widgets.VBox(
            [widgets.HTML(CSS), self.message, self.content]
        )  # the notebook holds the title
        self.tables: dict[str, pd.DataFrame] = {}

    def load(self) -> bool:
        """Read the snapshot; show the empty state and return False when there is none."""
        try:
            self.tables = read_snapshot(self.snapshot, settings=self.settings)
            self.info = snapshot_info(self.snapshot, settings=self.settings)
        except SnapshotMissing as exc:
            self.show_message("empty", "No data yet", str(exc))
            return False
        return True

    def show_message(self, kind: str, title: str, body: str) -> None:
        self.message.value = message_html(kind, title, body)

    def guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a callback so that an exception is shown to the user, not swallowed."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user and logged
                log.exception("dashboard callback failed")
                self.show_message(
                    "error",
                    "Something went wrong",
                    f"{type(exc).__name__}: {exc}. Re-run the pipeline (`workbench run`) or ask "
                    "the data team; details are in the server log.",
                )
                return None
            return result

        return wrapper

    def build(self) -> None:  # pragma: no cover - each dashboard draws itself
        raise NotImplementedError

    def show(self) -> None:
        """Build and display the dashboard (the notebook's only call). Returns None so that
        Voila does not draw it a second time as the cell's value."""
        from IPython.display import display

        from workbench.display import setup_notebook

        setup_notebook()
        if self.load():
            self.guarded(self.build)()
        display(self.root)
