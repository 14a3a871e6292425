"""`StreamComm`: the Comm (comm/core.py) over a pair of asyncio streams, whatever carries them —
a TCP or TLS socket (comm/tcp.py) or an in-memory pipe (comm/memory.py).

It reads and writes whole protocol messages with deadlines; protocol rules live in edgecc.protocol.
Any unexpected I/O failure closes the stream and surfaces as CommClosedError.
"""

from __future__ import annotations

import asyncio
import fcntl
import ssl
import struct
import termios
from typing import Any

from ..protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from ..protocol.messages import Message, parse
from .core import CommClosedError

READ_CHUNK = 1 << 18
WRITE_BUFFER_LIMIT = 1 << 16  # bytes queued in user space before write() waits for the peer


class StreamComm:
    """Implements comm.core.Comm over an asyncio StreamReader/StreamWriter pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int = DEFAULT_MAX_FRAME):
        self.reader, self.writer = reader, writer
        self.max_frame = max_frame
        self.decoder = FrameDecoder(max_frame)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def set_read_limit(self, max_frame: int) -> None:
        self.decoder.max_frame = max_frame

    async def read(self, timeout: float | None = None) -> Message:
        """Next validated message within `timeout` seconds for the whole message (a peer trickling one
        byte at a time cannot stretch it); RemoteProtocolError for garbage, CommClosedError when closed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            raw = self.decoder.next()
            if raw is not None:
                return parse(raw)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise asyncio.TimeoutError()
            try:
                if deadline is None:
                    data = await self.reader.read(READ_CHUNK)
                else:  # not wait_for: on 3.11 it wraps every read in a new Task (two extra loop turns)
                    async with asyncio.timeout_at(deadline):
                        data = await self.reader.read(READ_CHUNK)
            except TimeoutError:  # the caller owns the deadline's meaning (TimeoutError is an OSError on 3.11)
                raise
            except (OSError, ssl.SSLError) as e:
                self.abort()
                raise CommClosedError(f"{self.peer}: {e}") from None
            if not data:
                self.abort()
                raise CommClosedError(f"{self.peer} closed the connection")
            self.bytes_received += len(data)
            self.decoder.feed(data)

    async def write(self, msg: Message | dict[str, Any], timeout: float | None = 30.0) -> int:
        """Send one message; waits (up to `timeout`) only while the peer is not taking bytes."""
        n = self.send(encode_frame(msg.to_wire() if isinstance(msg, Message) else msg, self.max_frame))
        if self.backed_up:
            await self.drain(timeout)
        return n

    def send(self, frame: bytes) -> int:
        """Queue one encoded frame without waiting (the transport sends at once when it can); call
        `drain` when `backed_up`. Lets the master put a request on N links back to back, with no Task each."""
        if self.closed:
            raise CommClosedError(f"{self.peer}: connection already closed")
        try:
            self.writer.write(frame)
        except (OSError, ssl.SSLError, RuntimeError) as e:
            self.abort()
            raise CommClosedError(f"{self.peer}: write failed ({type(e).__name__}: {e})") from None
        self.bytes_sent += len(frame)
        return len(frame)

    @property
    def backed_up(self) -> bool:
        """More than WRITE_BUFFER_LIMIT bytes wait in user space, or the transport is closing."""
        t = self.writer.transport
        return t.is_closing() or t.get_write_buffer_size() > WRITE_BUFFER_LIMIT

    @property
    def write_buffer_size(self) -> int:
        """Bytes handed to the transport and not yet to the kernel."""
        t = self.writer.transport
        return 0 if t is None or t.is_closing() else t.get_write_buffer_size()

    def kernel_backlog(self) -> int | None:
        """Bytes in the kernel's send queue (unsent + unacknowledged; Linux SIOCOUTQ); 0 for a transport
        with no socket under it (comm/memory_pipe: its write buffer is all there is); None if
        unknown. Lets a heartbeat tell a slow link (the backlog shrinks) from a dead one (it does not)."""
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return None

    async def writable(self) -> None:
        """Wait, without a deadline, until the transport takes more bytes. Whether a link that stays
        backed up is slow or dead is for the caller's liveness check to decide, not for a timeout here."""
        try:
            await self.writer.drain()
        except (OSError, ssl.SSLError, RuntimeError) as e:
            self.abort()
            raise CommClosedError(f"{self.peer}: write failed ({type(e).__name__}: {e})") from None

    async def drain(self, timeout: float | None = 30.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except (OSError, ssl.SSLError, asyncio.TimeoutError, RuntimeError) as e:
            self.abort()
            raise CommClosedError(f"{self.peer}: write failed ({type(e).__name__}: {e})") from None

    def abort(self) -> None:
        self.closed = True
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            self.abort()


