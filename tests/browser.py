"""Helpers for dashboard tests: a real Voila server and a real headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from workbench.kernels import voila_options

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's Chromium; the tests fail loudly (not skip) when it is missing, since CI installs it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium not found: install Debian's `chromium` package (.ci/run does).")
    raise AssertionError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def voila_server(
    notebook: Path,
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float = 90,
    extra_args: tuple[str, ...] = (),
) -> Iterator[str]:
    """Serve one dashboard notebook with Voila on a free port; yield its URL."""
    port = free_port()
    log_path = Path(env.get("WORKBENCH_DATA_DIR", cwd)) / f"voila-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voila",
                str(notebook),
                f"--port={port}",
                "--no-browser",
                "--Voila.ip=127.0.0.1",
                "--VoilaConfiguration.file_allowlist=['.*']",
                *voila_options(),  # as `workbench serve` runs it
                *extra_args,
            ],
            cwd=cwd,
            # PYTHONFAULTHANDLER: a kernel sent SIGABRT prints every thread's stack (see below)
            env={**os.environ, "PYTHONFAULTHANDLER": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            # Wait for the port to accept connections. Requesting the page itself would start a
            # kernel and run the dashboard for every probe that times out: on a busy 2-core CI
            # machine those runs piled up and the real visit waited behind them.
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"voila exited early: {log_path.read_text()[-3000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"voila did not start: {log_path.read_text()[-3000:]}"
                        ) from None
                    time.sleep(0.3)
            try:
                yield url
            except BaseException:
                # the server's side of a failed visit, shown with the test's failure: first
                # where each of its kernels was waiting (a hang names its place), then the log
                _dump_kernel_stacks(proc.pid)
                sys.stderr.write(f"--- voila log ({log_path}) ---\n")
                sys.stderr.write(log_path.read_text(errors="replace")[-20000:])
                raise
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _dump_kernel_stacks(server_pid: int, wait: float = 3.0) -> None:
    """Send SIGABRT to every kernel the server started; Python's faulthandler (on through
    PYTHONFAULTHANDLER) writes each thread's stack to the kernel's stderr, which is the log."""
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    kernels = [c for c in children if _is_kernel(c)]
    for kernel in kernels:
        with contextlib.suppress(psutil.NoSuchProcess):
            kernel.send_signal(signal.SIGABRT)
    if kernels:
        time.sleep(wait)


def _is_kernel(process: psutil.Process) -> bool:
    try:
        return any("ipykernel" in part for part in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@contextlib.contextmanager
def chromium_page() -> Iterator[object]:
    """A Playwright page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield page
        finally:
            browser.close()
