"""The mem:// transport: master and workers in one process, over in-memory stream pairs
(comm/memory_pipe.py: TCP's flow control, close and reset, no kernel queue).

A worker listening at mem://NAME is found by name in this process; a master connecting there gets
a fresh pipe whose other end goes to the worker's handler, exactly as an accepted socket would.
Tests use it to put the real master against real workers, byte for byte, without sockets, ports
or processes; `mem://` with no name listens under a fresh one.
"""

from __future__ import annotations

import asyncio
import itertools

from .core import CommClosedError, Handler
from .memory_pipe import memory_streams
from .stream import READ_CHUNK, StreamComm

_names = itertools.count()
_listeners: dict[str, "MemoryListener"] = {}  # this process's mem:// listeners by name


class MemoryListener:
    def __init__(self, name: str, handler: Handler, max_frame: int):
        self.name, self.handler, self.max_frame = name, handler, max_frame
        self.connections = 0  # accepted so far (tests count reconnects with it)
        self.sessions: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        return f"mem://{self.name}"

    def accept(self, max_frame: int) -> StreamComm:
        """A new connection: the worker's end goes to the handler in a task, the caller gets the other."""
        (reader, writer), (w_reader, w_writer) = memory_streams(limit=READ_CHUNK)
        task = asyncio.create_task(self.handler(StreamComm(w_reader, w_writer, self.max_frame)))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)
        self.connections += 1
        return StreamComm(reader, writer, max_frame)

    async def stop(self) -> None:
        if _listeners.get(self.name) is self:
            del _listeners[self.name]


class _MemoryBackend:
    async def connect(self, location: str, *, timeout: float, ssl_context, max_frame: int) -> StreamComm:
        listener = _listeners.get(location)
        if listener is None:
            raise CommClosedError(f"cannot connect to mem://{location}: nothing listens there in this process")
        return listener.accept(max_frame)

    async def listen(self, location: str, handler: Handler, *, ssl_context, max_frame: int,
                     handshake_timeout: float) -> MemoryListener:
        name = location or f"listener-{next(_names)}"
        if name in _listeners:
            raise CommClosedError(f"mem://{name} is already listening in this process")
        listener = _listeners[name] = MemoryListener(name, handler, max_frame)
        return listener


MEMORY = _MemoryBackend()


def listener_at(address: str) -> MemoryListener | None:
    """The mem:// listener serving `address` in this process, if any (for tests' connection counts)."""
    return _listeners.get(address.removeprefix("mem://"))
