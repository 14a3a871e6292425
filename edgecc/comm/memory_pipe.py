"""A connected pair of asyncio streams in memory: the master's real code against a worker, no sockets.

Each end is an `asyncio.Transport` feeding the other end's `StreamReaderProtocol`, so the streams
behave as TCP's do where the runtime looks: writes never block; bytes the peer has not taken wait in
the writer's buffer (`get_write_buffer_size`), which tells the writer's protocol to pause above the
high-water mark and resume below the low one; a reader whose buffer is full pauses its peer's
delivery (the peer's buffer then grows, as a socket's would when the other side stops reading);
`close` delivers what is buffered and then end of stream; `abort` drops it. There is no kernel
queue, so `Comm.kernel_backlog` is 0 here: the write buffer is the whole backlog, and bytes that
left it have reached the peer's reader, as acknowledged bytes have reached a peer's kernel.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

DELIVERY_CHUNK = 64 * 1024  # bytes handed to the peer per loop turn, like one socket read
HIGH_WATER = 64 * 1024  # asyncio's defaults for a socket transport's write buffer
LOW_WATER = 16 * 1024
KERNEL_SEND_BUFFER = 256 * 1024  # what a socket's kernel queue would have taken before an abort

_ids = itertools.count()


class MemoryTransport(asyncio.Transport):
    """One end of the pair. `_peer` is the other end; `_protocol` is this end's stream protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str):
        super().__init__(extra={"peername": (name, 0), "sockname": (name, 0), "socket": None})
        self._loop = loop
        self._protocol: asyncio.BaseProtocol | None = None
        self._peer: MemoryTransport | None = None
        self._buffer = bytearray()  # written here, not yet delivered to the peer
        self._delivery_paused = False  # the peer's reader asked us to hold its bytes (its pause_reading)
        self._writing_paused = False  # we told our protocol to stop writing
        self._closing = False  # close() called: deliver the buffer, then end of stream
        self._aborted = False  # abort() called: _finish is already scheduled
        self._lost = False
        self._scheduled = False
        self._high, self._low = HIGH_WATER, LOW_WATER

    # -- writing ---------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost:
            return  # as asyncio's socket transports do after close(): the bytes are dropped
        if not data:
            return
        self._buffer += data
        self._schedule()
        self._check_high()

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_high()

    def _check_high(self) -> None:
        if not self._writing_paused and len(self._buffer) > self._high and self._protocol is not None:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _check_low(self) -> None:
        if self._writing_paused and len(self._buffer) <= self._low and not self._lost:
            self._writing_paused = False
            self._protocol.resume_writing()

    # -- delivery to the peer ----------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled and not self._lost:
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        """One chunk per loop turn, so a large write reaches the reader in pieces as over TCP."""
        self._scheduled = False
        peer = self._peer
        if self._lost or peer is None or peer._lost:
            return
        if self._buffer and not self._delivery_paused:
            chunk = bytes(self._buffer[:DELIVERY_CHUNK])
            del self._buffer[:DELIVERY_CHUNK]
            peer._protocol.data_received(chunk)
            self._check_low()
        if self._buffer and not self._delivery_paused:
            self._schedule()
        elif not self._buffer and self._closing and not self._aborted:
            self._finish(eof=True)

    # -- reading (what the peer delivers to this end) ----------------------------------------------
    def pause_reading(self) -> None:
        if self._peer is not None:
            self._peer._delivery_paused = True

    def resume_reading(self) -> None:
        if self._peer is not None and self._peer._delivery_paused:
            self._peer._delivery_paused = False
            self._peer._schedule()

    def is_reading(self) -> bool:
        return self._peer is not None and not self._peer._delivery_paused and not self._lost

    # -- closing ---------------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        if self._buffer and not (self._peer is None or self._peer._lost):
            self._schedule()  # _deliver finishes once the buffer is out
        else:
            self._loop.call_soon(self._finish, True)

    def abort(self) -> None:
        """As a socket transport's abort: the bytes already handed to the kernel still reach the peer
        (here: up to KERNEL_SEND_BUFFER of what waits, unless the peer stopped reading), the rest is
        dropped; the peer then reads end of stream, or a reset when this end left bytes unread (as
        Linux's close() does). So a worker's last `error` before it drops a peer arrives, as over TCP."""
        if self._lost or self._aborted:
            return
        self._aborted = self._closing = True
        sent = bytes(self._buffer[:KERNEL_SEND_BUFFER]) if not self._delivery_paused else b""
        self._buffer.clear()
        peer = self._peer
        if sent and peer is not None and not peer._lost:
            peer._protocol.data_received(sent)
        reader = getattr(self._protocol, "_stream_reader", None)
        unread = bool(reader is not None and getattr(reader, "_buffer", b""))
        self._loop.call_soon(self._finish, not unread)

    def _finish(self, eof: bool) -> None:
        """This end is gone: the peer reads end of stream (or a reset), then both ends are lost."""
        if self._lost:
            return
        self._lost = True
        peer = self._peer
        self._protocol.connection_lost(None)
        if peer is not None and not peer._lost:
            if eof:
                peer._protocol.eof_received()
            peer._lost = True
            peer._buffer.clear()
            peer._protocol.connection_lost(None if eof else ConnectionResetError("memory pipe aborted by peer"))


def memory_streams(limit: int = 2 ** 16) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                                                   tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Two connected (reader, writer) pairs, as `asyncio.open_connection` would return for each side.
    Call from a running event loop."""
    loop = asyncio.get_running_loop()
    n = next(_ids)
    ends: list[Any] = []
    transports = [MemoryTransport(loop, f"memory-{n}a"), MemoryTransport(loop, f"memory-{n}b")]
    transports[0]._peer, transports[1]._peer = transports[1], transports[0]
    for t in transports:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        t._protocol = protocol
        protocol.connection_made(t)
        ends.append((reader, asyncio.StreamWriter(t, protocol, reader, loop)))
    return ends[0], ends[1]
