"""Workers in this process, linked to a master over in-memory streams instead of TCP.

The master and the workers run their real code (handshake, frames, queues, heartbeats); only the
transport differs (`memory_pipe`: TCP's flow control, close and reset, no kernel queue). Tests use it
to put the master against workers whose behaviour they control byte by byte (a worker that stops
reading, an older protocol) without sockets, ports or processes.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from ..comm.memory_pipe import memory_streams
from ..comm.stream import READ_CHUNK, Comm
from ..worker.server import Worker


class InProcessWorkers:
    """`connector` for Master(connector=...): link i reaches workers[i] through a fresh stream pair."""

    def __init__(self, workers: Sequence[Worker]):
        self.workers = list(workers)
        self.sessions: set[asyncio.Task] = set()
        self.connections = [0] * len(self.workers)

    async def connector(self, index: int, host: str, port: int) -> Comm:
        (reader, writer), (w_reader, w_writer) = memory_streams(limit=READ_CHUNK)
        task = asyncio.create_task(self.workers[index]._serve(w_reader, w_writer))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)
        self.connections[index] += 1
        return Comm(reader, writer)

    @staticmethod
    def addresses(n: int) -> list[tuple[str, int]]:
        """Placeholder addresses for the Master's bookkeeping (never dialled)."""
        return [(f"inprocess-{i}", 0) for i in range(n)]

    async def close(self) -> None:
        for t in list(self.sessions):
            t.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        for w in self.workers:
            await w.close()
