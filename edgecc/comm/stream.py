"""Message streams over asyncio TCP (optionally TLS): the only place that touches sockets.

`Comm` reads and writes whole protocol messages with deadlines; protocol rules live in
edgecc.protocol. Any unexpected I/O failure closes the stream and surfaces as CommClosedError.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import platform
import socket
import ssl
import struct
import termios
from typing import Any

from ..errors import EdgeccError
from ..protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from ..protocol.messages import Message, parse

READ_CHUNK = 1 << 18
WRITE_BUFFER_LIMIT = 1 << 16  # bytes queued in user space before write() waits for the peer
# Unsent bytes the kernel may hold per socket (TCP_NOTSENT_LOWAT). Without it Linux autotunes the
# send buffer up to megabytes, and on a slow link every frame written — a ping, a cancel, the next
# request — waits behind seconds of queued data the master can no longer take back. With it the
# backlog stays in user space (the master's per-link queue), where frames of requests that were
# already decoded are dropped before they reach the socket. 128 KiB still fills a 100 Mbit/s link
# at 10 ms RTT.
NOTSENT_LOWAT = 128 * 1024
# glibc's allocator for frame-sized blocks (see keep_frame_memory): blocks up to FRAME_HEAP_MAX come
# from the heap, and up to HEAP_KEEP bytes of freed heap stay with the process.
FRAME_HEAP_MAX = 4 << 20
HEAP_KEEP = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_kept: bool | None = None


def keep_frame_memory() -> bool:
    """Let the process reuse the memory of freed frames instead of handing it back to the kernel.

    Every message allocates and frees blocks of its frame's size several times (the socket read,
    msgpack's bytes, a request's encoded arrays: ~200 kB per worker for a 64-group request). With
    glibc's defaults a freed block that size is unmapped or trimmed off the heap, and the next one
    page-faults its memory in again; `edgecc bench` (section "codec") measures what that costs per
    frame with and without this setting. Blocks up to FRAME_HEAP_MAX now come from the heap, and up
    to HEAP_KEEP bytes of freed heap are kept for the next frame (larger blocks, such as a
    configure's arrays, still go straight back). Process-wide and idempotent, like the BLAS thread
    limit; False where the C library is not glibc (nothing changes there)."""
    global _kept
    if _kept is None:
        _kept = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, FRAME_HEAP_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP))
            except (OSError, AttributeError):
                pass
    return _kept


def tune_socket(sock: socket.socket | None) -> None:
    """Bound the kernel's unsent data (see NOTSENT_LOWAT); a no-op where the option is missing."""
    opt = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or opt is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, NOTSENT_LOWAT)
    except OSError:
        pass


class CommClosedError(EdgeccError):
    """The connection is gone (peer closed, reset, or we aborted it)."""


def parse_address(text: str, default_port: int = 7700) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    try:
        p = int(port)
    except ValueError:
        raise EdgeccError(f"bad port in address {text!r}") from None
    if not host or not 0 <= p < 65536:
        raise EdgeccError(f"bad address {text!r}; expected HOST:PORT")
    return host, p


class Comm:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int = DEFAULT_MAX_FRAME):
        self.reader, self.writer = reader, writer
        self.max_frame = max_frame
        self.decoder = FrameDecoder(max_frame)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

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


async def connect(host: str, port: int, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None,
                  max_frame: int = DEFAULT_MAX_FRAME) -> Comm:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, limit=READ_CHUNK), timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
        raise CommClosedError(f"cannot connect to {host}:{port}: {type(e).__name__}: {e}") from None
    tune_socket(writer.get_extra_info("socket"))
    return Comm(reader, writer, max_frame)


def client_ssl_context(cafile: str | None, insecure_hostname: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if insecure_hostname:  # workers are often addressed by IP on a LAN; the CA still pins them
        ctx.check_hostname = False
    return ctx


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def run(coro) -> Any:
    """Run a coroutine on uvloop where installed, plain asyncio otherwise (same code path). Every
    edgecc process (worker, master, serve) runs through here, so it also keeps frame memory."""
    keep_frame_memory()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    # not uvloop.run: it appeared in 0.18, and Debian 12 (Raspberry Pi OS) ships 0.17
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
