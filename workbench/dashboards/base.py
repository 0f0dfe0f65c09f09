"""What every dashboard shares: reading published snapshots, error and empty states.

Voila hides tracebacks, so a dashboard draws its own messages: an empty state that
says which command publishes the data, and an error state that says what went wrong
and what to do next. Dashboards never open the live warehouse (the one-writer rule):
they read snapshots published by the pipeline.

Under Voila's pre-heated kernels (``workbench serve``) a dashboard's notebook runs before
anyone visits. :meth:`Dashboard.show` then waits for the visit before showing anything,
and shows data that is current at the visit: a dashboard drawn wholly from its snapshot
(``build_before_visit``) is built while waiting and rebuilt if a newer snapshot was
published since; any other dashboard loads and builds only after the visit.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.config import Settings, load_settings
from workbench.dashboards.startup import preheated, server_log, wait_for_visit
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


def _close_tree(widget: widgets.Widget) -> None:
    """Close a widget and the widgets it contains."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


class Dashboard:
    """Base class: a root box with a header, a message area and a content area."""

    title = "Dashboard"
    snapshot = ""  # the published snapshot this dashboard reads
    # True when everything shown comes from ``snapshot``: a pre-heated kernel may then build
    # before the visit and only compare the snapshot's version after it (see ``show``).
    build_before_visit = False
    #: What to do after a callback failed (shown under the error).
    advice = (
        "Re-run the pipeline (`workbench run`) or ask the data team; details are in the server log."
    )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.message = widgets.HTML()
        self._callback_failed = False
        self.content = widgets.VBox()
        self.root = widgets.VBox(
            [widgets.HTML(CSS), self.message, self.content]
        )  # the notebook holds the title
        self.tables: dict[str, pd.DataFrame] = {}
        self.info: dict = {}
        self.version: str | None = None  # the snapshot version shown; None before a load

    def load(self) -> bool:
        """Read the snapshot; show the empty state and return False when there is none.

        ``self.info`` (the pointer, with ``version``) describes exactly the tables read: a
        version published during the read makes it read again.
        """
        try:
            for _attempt in range(5):
                info = snapshot_info(self.snapshot, settings=self.settings)
                tables = read_snapshot(self.snapshot, settings=self.settings)
                if (
                    snapshot_info(self.snapshot, settings=self.settings)["version"]
                    == info["version"]
                ):
                    break
        except SnapshotMissing as exc:
            self.version = None
            self.show_message("empty", "No data yet", str(exc))
            return False
        self.tables, self.info, self.version = tables, info, info["version"]
        return True

    def latest_version(self) -> str | None:
        """The version of ``snapshot`` published now (None when there is none)."""
        try:
            return snapshot_info(self.snapshot, settings=self.settings)["version"]
        except SnapshotMissing:
            return None

    def is_stale(self) -> bool:
        """Whether the snapshot published now is not the one shown (a newer version, or one
        published since an empty state was drawn)."""
        return self.latest_version() != self.version

    def rebuild(self) -> None:
        """Forget what is shown and load and build again from the current snapshot."""
        self.message.value = ""
        old, self.content.children = self.content.children, []
        for widget in old:
            _close_tree(widget)  # so the page is not sent their state (charts included)
        self.load_and_build()

    def load_and_build(self) -> None:
        """Load the snapshot and, if there is one, build the widgets from it."""
        if self.load():
            self.guarded(self.build)()

    def show_message(self, kind: str, title: str, body: str) -> None:
        self.message.value = message_html(kind, title, body)

    def guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a callback so that an exception is shown to the user, not swallowed."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._callback_failed:  # an earlier click's error is not this one's
                self.message.value, self._callback_failed = "", False
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user and logged
                log.exception("dashboard callback failed")
                self.show_message(
                    "error", "Something went wrong", f"{type(exc).__name__}: {exc}. {self.advice}"
                )
                self._callback_failed = True
                return None
            return result

        return wrapper

    def build(self) -> None:  # pragma: no cover - each dashboard draws itself
        raise NotImplementedError

    def show(self) -> None:
        """Build and display the dashboard (the notebook's only call). Returns None so that
        Voila does not draw it a second time as the cell's value.

        In a kernel Voila started for a visit, this loads, builds and displays. In a
        pre-heated kernel it displays nothing before the visit: a ``build_before_visit``
        dashboard builds, waits for the visitor, then rebuilds if the snapshot changed in
        the meantime; any other dashboard waits for the visitor, then loads and builds.
        """
        from IPython.display import display

        from workbench.display import setup_notebook

        setup_notebook()
        if not preheated():
            self.load_and_build()
        elif self.build_before_visit:
            self.load_and_build()
            built_from = self.version
            server_log(
                "%s: built from snapshot %s %s; waiting for a visitor",
                self.title,
                self.snapshot,
                built_from,
            )
            wait_for_visit()
            if self.is_stale():
                self.rebuild()
            server_log(
                "%s: visitor shown snapshot %s %s (%s)",
                self.title,
                self.snapshot,
                self.version,
                "unchanged" if self.version == built_from else f"rebuilt, was {built_from}",
            )
        else:
            server_log("%s: waiting for a visitor", self.title)
            wait_for_visit()
            self.load_and_build()
        display(self.root)
