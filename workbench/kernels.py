"""Kernel clients that cannot miss a message already waiting for them.

The pipeline (papermill) and the dashboards (Voila) run notebooks through nbclient, which
waits for each cell's ``execute_reply`` with ``await socket.poll(timeout)`` on an asyncio ZMQ
socket. That poll wakes on the socket's file descriptor, which is edge-triggered: any other
use of the socket after the reply has arrived (pyzmq reads ``zmq.EVENTS``, a send, a recv)
can consume the edge, and the poll then sleeps on a reply that is already in the socket until
its timeout, when a last non-blocking check finds it. Measured on this project's finance
dashboard (fresh kernel, 2 cores): 1 to 5 in 100 runs waited out the whole timeout after the
kernel had replied (the reply's own timestamp was before the kernel went idle), with
ipykernel 7.4 and 6.31 and with pyzmq 27.3 and 26.4 alike. Voila waits without a timeout, so
there the dashboard never appeared; papermill waits ``cell_timeout_s`` (an hour by default)
and then goes on as if nothing happened. benchmarks/bench_kernel_replies.py measures it.

:class:`KernelClient` polls in slices of :data:`POLL_SLICE_S`: each slice ends with the same
non-blocking check, so a stranded message costs at most one slice. It is installed through
jupyter_client's own extension point, the kernel manager's ``client_class``:
:func:`voila_options` for Voila, :class:`KernelManager` for papermill (nbclient's
``kernel_manager_class``; ``workbench run`` passes it, and ``papermill --engine workbench``
uses :class:`workbench.papermill_engine.PapermillEngine`, which does the same).
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

# Longest a message already in the socket can wait unnoticed. Each slice is one
# non-blocking zmq_poll when nothing arrives, so a shorter slice costs little.
POLL_SLICE_S = 0.5


class SlicedPollChannel(AsyncZMQSocketChannel):
    """An asyncio ZMQ channel whose ``get_msg`` re-checks its socket every slice."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """Get a message if one is ready, waiting at most ``timeout`` seconds (None: for ever).

        Raises ``queue.Empty`` when the time is up, as jupyter_client's channel does.
        """
        assert self.socket is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL_SLICE_S
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            if await self.socket.poll(int(wait * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty


class KernelClient(AsyncKernelClient):
    """jupyter_client's asyncio kernel client with :class:`SlicedPollChannel` channels."""

    shell_channel_class = Type(SlicedPollChannel)
    iopub_channel_class = Type(SlicedPollChannel)
    stdin_channel_class = Type(SlicedPollChannel)
    control_channel_class = Type(SlicedPollChannel)


CLIENT_CLASS = f"{KernelClient.__module__}.{KernelClient.__qualname__}"


class KernelManager(AsyncKernelManager):
    """nbclient's default kernel manager, handing out :class:`KernelClient` clients."""

    # both: the factory is what ``client()`` calls, and AsyncKernelManager's has a static
    # default that a new ``client_class`` default alone does not replace (configuring
    # ``client_class``, as voila_options does, goes through an observer that does)
    client_class = DottedObjectName(CLIENT_CLASS, config=True)
    client_factory = Type(KernelClient, klass=AsyncKernelClient, config=True)


def voila_options() -> list[str]:
    """Voila command-line options that give its executor :class:`KernelClient` clients.

    Voila's kernels are managed by jupyter_server's ``ServerKernelManager``, an
    ``AsyncKernelManager``; configuring the base class reaches it.
    """
    return [f"--AsyncKernelManager.client_class={CLIENT_CLASS}"]
