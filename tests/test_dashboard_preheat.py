"""Dashboard start-up: the deferred import, the snapshot check, and pre-heated kernels in Voila.

``workbench serve`` runs the finance dashboard's notebook in a kernel heated before anyone
visits; these tests prove that the visitor still sees the snapshot published last, also when
it was published after the kernel was heated.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from browser import chromium_page, voila_server

from workbench.config import load_settings
from workbench.dashboards.finance import FinanceDashboard, finance_view
from workbench.dashboards.startup import PREHEATED_NOTEBOOKS, preheat_options, wait_for_visit
from workbench.display import money
from workbench.publishing import publish_tables
from workbench.revenue import account_month_mrr
from workbench.revenue.synthetic import generate_warehouse
from workbench.schema import create_all
from workbench.store import snapshot_info

REPO = Path(__file__).resolve().parents[1]
CHARTS = "img[src^='data:image/svg'], .jp-RenderedSVG svg"


def _account_months(seed: int) -> pd.DataFrame:
    con = duckdb.connect()
    create_all(con)
    generate_warehouse(con, accounts=200, months=14, seed=seed)
    return account_month_mrr(con, policy="stripe")


@pytest.fixture(scope="module")
def companies() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two different companies: what was published before, and after, a kernel was heated."""
    before, after = _account_months(5), _account_months(6)
    assert finance_view(before).tiles["mrr"] != finance_view(after).tiles["mrr"]
    return before, after


def _publish(data: Path, am: pd.DataFrame, run_id: str) -> str:
    settings = load_settings(REPO, overrides={"data_dir": data})
    publish_tables(
        "finance",
        {"account_months": am},
        settings=settings,
        metadata={"run_id": run_id, "policy": "stripe"},
        merge=False,
    )
    return snapshot_info("finance", settings=settings)["version"]


def _mrr_shown(tiles_html: str) -> str:
    found = re.search(r'data-kpi="mrr">([^<]*)<', tiles_html)
    assert found, tiles_html
    return found.group(1)


# ----------------------------------------------------------------- without a browser


@pytest.mark.skipif(
    importlib.util.find_spec("rfc3987_syntax") is None, reason="rfc3987-syntax not installed"
)
def test_rfc3987_syntax_loads_only_when_an_iri_is_checked() -> None:
    """The dashboards skip the 1.3-1.8 s import, and jsonschema's ``iri`` checks still give
    the answers they give without the stand-in."""
    check = (
        "import sys\n"
        "{setup}\n"
        "from jsonschema import FormatChecker\n"
        "deferred = 'rfc3987_syntax.syntax_helpers' not in sys.modules\n"
        "fc = FormatChecker()\n"
        "print(deferred, 'iri' in fc.checkers, fc.conforms('http://example.com/caf\\u00e9', 'iri'),"
        " fc.conforms('no spaces allowed', 'iri'), fc.conforms('//host/x', 'iri-reference'),"
        " 'rfc3987_syntax.syntax_helpers' in sys.modules)\n"
    )

    def run(setup: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", check.format(setup=setup)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.split()
        return out

    with_stand_in = run("import workbench.dashboards.finance  # imports Altair, so jsonschema")
    plain = run("import jsonschema")
    assert with_stand_in == ["True", "True", "True", "False", "True", "True"]
    assert plain[1:] == with_stand_in[1:] and plain[0] == "False"  # the real import ran at once


def test_outside_a_preheated_kernel_nothing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOILA_PREHEAT", raising=False)
    started = time.perf_counter()
    assert wait_for_visit() is False
    assert time.perf_counter() - started < 1
    assert preheat_options(0) == []
    options = " ".join(preheat_options(2))
    assert "preheat_kernel=True" in options and "'default': {'pool_size': 0}" in options
    assert all(f"'{nb}': {{'pool_size': 2}}" in options for nb in PREHEATED_NOTEBOOKS)


def test_a_preheated_kernel_that_cannot_hear_of_a_visit_does_not_go_on() -> None:
    """Voila's own ``wait_for_request`` returns when it cannot reach the server; the
    dashboard's wait does not, since going on would show data as of heating to a later visitor."""
    from browser import free_port

    env = {**os.environ, "VOILA_PREHEAT": "True", "VOILA_APP_PORT": str(free_port())}
    env.pop("SCRIPT_NAME", None)
    env["VOILA_KERNEL_ID"] = "no-such-kernel"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from workbench.dashboards.startup import wait_for_visit\n"
            "wait_for_visit()\nprint('went on', flush=True)",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:  # blocks until the kernel-side log line (or the end)
            if "cannot hear from Voila" in line:
                break
        else:
            raise AssertionError("wait_for_visit ended without logging why it waits")
        time.sleep(3)
        assert proc.poll() is None  # still waiting for a visit
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert "went on" not in out


def test_a_newer_snapshot_makes_the_dashboard_stale_and_rebuild_shows_it(
    tmp_path: Path, companies: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    before, after = companies
    data = tmp_path / "data"
    settings = load_settings(REPO, overrides={"data_dir": data})

    dash = FinanceDashboard(settings)
    dash.load_and_build()  # nothing published yet: the empty state
    assert dash.version is None and 'data-state="empty"' in dash.message.value
    assert not dash.is_stale()

    first = _publish(data, before, "run-before")
    assert dash.is_stale()
    dash.rebuild()
    assert dash.version == first and dash.message.value == "" and not dash.is_stale()
    assert _mrr_shown(dash.tiles.value) == money(finance_view(before).tiles["mrr"], "usd")

    second = _publish(data, after, "run-after")
    assert second != first and dash.is_stale()
    old_tiles, old_charts = dash.tiles, dash.charts
    dash.rebuild()
    assert old_tiles.comm is None and old_charts.comm is None  # closed: not sent to the page
    assert dash.tiles.comm is not None
    assert dash.version == second and not dash.is_stale()
    assert _mrr_shown(dash.tiles.value) == money(finance_view(after).tiles["mrr"], "usd")
    caption = dash.content.children[0].value
    assert "run-after" in caption and "run-before" not in caption


# ----------------------------------------------------------------- Voila and Chromium


def _server_log(url: str, data: Path) -> Path:
    port = url.rstrip("/").rsplit(":", 1)[1]
    return data / f"voila-{port}.log"  # where tests/browser.py's voila_server writes it


@contextlib.contextmanager
def _log_on_failure(log: Path) -> Iterator[None]:
    """Add the server log (Voila's and the kernels' lines) to a failure's message."""
    try:
        yield
    except Exception as exc:
        tail = log.read_text(errors="replace")[-6000:] if log.exists() else "(no log)"
        raise AssertionError(f"{type(exc).__name__}: {exc}\n--- server log ---\n{tail}") from exc


def _wait_for_log(log: Path, text: str, *, count: int = 1, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace")
        if content.count(text) >= count:
            return content
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} x{count} not in the server log:\n{content[-4000:]}")
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.browser
def test_preheated_kernel_shows_the_snapshot_published_after_heating(
    tmp_path: Path, companies: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    before, after = companies
    data = tmp_path / "data"
    old = _publish(data, before, "run-before")
    folder = REPO / "notebooks" / "dashboards"  # served as `workbench serve` serves it
    with voila_server(
        folder,
        env={"WORKBENCH_DATA_DIR": str(data)},
        cwd=REPO,
        extra_args=tuple(preheat_options(1)),
    ) as url:
        log = _server_log(url, data)
        with _log_on_failure(log):
            _check_visits(url, log, old, before, after, data)


def _check_visits(
    url: str, log: Path, old: str, before: pd.DataFrame, after: pd.DataFrame, data: Path
) -> None:
    """Publish while a kernel waits heated; two visits then see the newest snapshot."""
    _wait_for_log(log, f"built from snapshot finance {old}; waiting for a visitor")
    new = _publish(data, after, "run-after")  # published while the kernel waits
    with chromium_page() as page:
        page.goto(url + "voila/render/finance.ipynb", timeout=120_000)
        page.wait_for_selector('[data-kpi="mrr"]', timeout=120_000)
        page.locator(CHARTS).nth(1).wait_for(timeout=60_000)
        shown = page.locator('[data-kpi="mrr"]').first.inner_text()
        caption = page.locator("small", has_text="published").first.inner_text()
    assert shown == money(finance_view(after).tiles["mrr"], "usd")
    assert shown != money(finance_view(before).tiles["mrr"], "usd")
    assert "run-after" in caption
    content = _wait_for_log(log, f"visitor shown snapshot finance {new} (rebuilt, was {old})")
    assert "Using pre-heated kernel" in content  # the visit did take the heated kernel

    # Voila heats the next kernel from the new snapshot; its visitor gets it unchanged.
    _wait_for_log(log, f"built from snapshot finance {new}; waiting for a visitor")
    with chromium_page() as page:
        page.goto(url + "voila/render/finance.ipynb", timeout=120_000)
        page.wait_for_selector('[data-kpi="mrr"]', timeout=120_000)
        assert page.locator('[data-kpi="mrr"]').first.inner_text() == shown
    content = _wait_for_log(log, f"visitor shown snapshot finance {new} (unchanged)")
    assert content.count("Using pre-heated kernel") == 2
    # only the finance dashboard is heated: the others would show state as of heating
    assert "Kernel pool of approvals.ipynb" not in content
    assert "Kernel pool of models.ipynb" not in content
