"""Kernel clients that read a waiting reply even when its wake-up was lost (workbench.kernels)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

import pytest
import zmq
import zmq.asyncio
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.session import Session

from workbench import kernels
from workbench.kernels import KernelClient, KernelManager, SlicedPollChannel, voila_options

REPO = Path(__file__).resolve().parents[1]


async def _wait_for_stranded_reply(channel_class: type, timeout: float) -> tuple[dict, float]:
    """A 'kernel' replies while the client waits; then something else uses the client's
    socket (here: reading zmq.EVENTS, as pyzmq itself does) after the reply arrived, which
    consumes the file descriptor's edge the waiting poll sleeps on."""
    ctx = zmq.asyncio.Context()
    session = Session(key=b"")
    kernel = ctx.socket(zmq.ROUTER)
    client = ctx.socket(zmq.DEALER)
    try:
        port = kernel.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        channel = channel_class(client, session)
        session.send(client, "kernel_info_request")  # the kernel learns the client's identity
        identity = (await kernel.recv_multipart())[0]
        waiting = asyncio.ensure_future(channel.get_msg(timeout=timeout))
        await asyncio.sleep(0.1)  # the client is polling, nothing has arrived
        started = time.monotonic()
        session.send(kernel, "execute_reply", {"status": "ok"}, ident=identity)
        time.sleep(0.1)  # the reply is in the client's socket; the event loop has not run
        zmq.Socket.shadow(client.underlying).get(zmq.EVENTS)  # ...and the edge is gone
        msg = await waiting
        return msg, time.monotonic() - started
    finally:
        client.close(linger=0)
        kernel.close(linger=0)
        ctx.term()


def test_a_reply_whose_wake_up_was_lost_is_read_within_a_slice() -> None:
    # jupyter_client's channel sleeps on such a reply until its timeout...
    msg, waited = asyncio.run(_wait_for_stranded_reply(AsyncZMQSocketChannel, 2.0))
    assert msg["msg_type"] == "execute_reply"
    assert waited > 1.8, (
        f"jupyter_client read a stranded reply after {waited:.2f} s: if pyzmq no longer loses "
        "the wake-up, workbench.kernels may no longer be needed"
    )
    # ...ours reads it at the end of the slice it arrived in
    msg, waited = asyncio.run(_wait_for_stranded_reply(SlicedPollChannel, 2.0))
    assert msg["msg_type"] == "execute_reply" and msg["content"] == {"status": "ok"}
    assert waited < kernels.POLL_SLICE_S + 0.3


def test_no_message_is_empty_after_the_timeout_and_none_waits_on() -> None:
    async def nothing_comes(timeout: float | None) -> float:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect("tcp://127.0.0.1:9")  # nobody there
        channel = SlicedPollChannel(sock, Session(key=b""))
        started = time.monotonic()
        try:
            if timeout is None:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(channel.get_msg(), 1.3)  # still waiting after slices
            else:
                with pytest.raises(Empty):
                    await channel.get_msg(timeout=timeout)
            return time.monotonic() - started
        finally:
            sock.close(linger=0)
            ctx.term()

    assert 0.7 <= asyncio.run(nothing_comes(0.7)) < 0.7 + 0.3
    assert asyncio.run(nothing_comes(0)) < 0.2
    assert asyncio.run(nothing_comes(None)) >= 1.3


def test_papermill_and_voila_get_the_sliced_client() -> None:
    """The runner hands nbclient KernelManager; Voila's options reach jupyter_server's
    ServerKernelManager, which Voila's executor asks for its client."""
    assert type(KernelManager().client()) is KernelClient
    client = KernelClient()
    assert client.shell_channel_class is SlicedPollChannel
    assert client.iopub_channel_class is SlicedPollChannel

    # in a process of its own, as Voila runs: importing jupyter_server changes process-wide
    # state (nbformat.sign registers an sqlite3 datetime adapter) this test should not leave
    probe = """
import sys
from voila.app import Voila
app = Voila()
app.initialize([sys.argv[1], "--no-browser", *sys.argv[2:]])
app.init_settings()
km = app.kernel_manager.kernel_manager_factory(parent=app.kernel_manager)
print(type(km).__name__, type(km.client()).__module__ + "." + type(km.client()).__name__)
"""
    notebook = str(REPO / "notebooks" / "dashboards" / "finance.ipynb")
    out = subprocess.run(
        [sys.executable, "-c", probe, notebook, *voila_options()],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    assert out == ["ServerKernelManager", "workbench.kernels.KernelClient"]
    plain = subprocess.run(
        [sys.executable, "-c", probe, notebook],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    assert plain[1] != "workbench.kernels.KernelClient"  # the option is what does it


def test_papermill_engine_workbench_runs_a_notebook_with_the_sliced_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    import papermill as pm

    clients: list[type] = []
    handed_out = KernelManager.client

    def client(self: KernelManager, **kw: object) -> object:
        made = handed_out(self, **kw)
        clients.append(type(made))
        return made

    monkeypatch.setattr(KernelManager, "client", client)  # a spy: the real client is used
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("n = 2", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(n * 21)")]  # fmt: skip
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"n": 3},
        engine_name="workbench",
        kernel_name="python3",
        language="python",
        progress_bar=False,
    )
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"] == "63\n"
    assert clients and set(clients) == {KernelClient}
