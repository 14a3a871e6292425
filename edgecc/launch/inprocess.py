"""Workers in this process, reached by a master at mem:// addresses instead of over TCP.

The master and the workers run their real code (handshake, frames, queues, heartbeats); only the
transport differs (comm/memory.py: TCP's flow control, close and reset, no kernel queue). Tests use
it to put the master against workers whose behaviour they control byte by byte (a worker that stops
reading, an older protocol) without sockets, ports or processes.
"""

from __future__ import annotations

from typing import Sequence

from ..comm.memory import listener_at
from ..worker.server import Worker


class InProcessWorkers:
    """`await start()` puts each worker on its own mem:// listener; `addresses` are for Master(...)."""

    def __init__(self, workers: Sequence[Worker]):
        self.workers = list(workers)
        self.addresses: list[str] = []

    async def start(self) -> list[str]:
        self.addresses = [await w.start("mem://") for w in self.workers]
        return self.addresses

    @property
    def connections(self) -> list[int]:
        """Connections each worker has accepted (a reconnect counts again)."""
        return [listener_at(a).connections if listener_at(a) else 0 for a in self.addresses]

    @staticmethod
    def placeholders(n: int) -> list[str]:
        """Addresses for a Master that is never started (tests of its bookkeeping alone)."""
        return [f"mem://unstarted-{i}" for i in range(n)]

    async def close(self) -> None:
        for w in self.workers:
            await w.close()
