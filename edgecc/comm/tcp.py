"""The tcp:// and tls:// transports: asyncio sockets, the only code in edgecc that opens one.

A TLS backend is the TCP backend with a context: the master's verifies the worker against a CA
(`client_ssl_context`), the worker's presents a certificate (`server_ssl_context`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from .addressing import format_host_port, parse_host_port
from .core import CommClosedError, Handler
from .stream import READ_CHUNK, StreamComm

# Unsent bytes the kernel may hold per socket (TCP_NOTSENT_LOWAT). Without it Linux autotunes the
# send buffer up to megabytes, and on a slow link every frame written — a ping, a cancel, the next
# request — waits behind seconds of queued data the master can no longer take back. With it the
# backlog stays in user space (the master's per-link queue), where frames of requests that were
# already decoded are dropped before they reach the socket. 128 KiB still fills a 100 Mbit/s link
# at 10 ms RTT.
NOTSENT_LOWAT = 128 * 1024


def tune_socket(sock: socket.socket | None) -> None:
    """Bound the kernel's unsent data (see NOTSENT_LOWAT); a no-op where the option is missing."""
    opt = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or opt is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, NOTSENT_LOWAT)
    except OSError:
        pass


class TCPListener:
    """An asyncio server whose connections reach the handler as StreamComms."""

    def __init__(self, server: asyncio.base_events.Server, scheme: str, host: str):
        self.server, self.scheme, self.host = server, scheme, host

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.scheme}://{format_host_port(self.host, self.port)}"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@dataclass(frozen=True)
class _TCPBackend:
    scheme: str  # "tcp" or "tls": which one the addresses of its listeners name

    async def connect(self, location: str, *, timeout: float, ssl_context, max_frame: int) -> StreamComm:
        host, port = parse_host_port(location)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl_context, limit=READ_CHUNK), timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            raise CommClosedError(f"cannot connect to {host}:{port}: {type(e).__name__}: {e}") from None
        tune_socket(writer.get_extra_info("socket"))
        return StreamComm(reader, writer, max_frame)

    async def listen(self, location: str, handler: Handler, *, ssl_context, max_frame: int,
                     handshake_timeout: float) -> TCPListener:
        host, port = parse_host_port(location)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await handler(StreamComm(reader, writer, max_frame))

        server = await asyncio.start_server(accepted, host, port, ssl=ssl_context, limit=READ_CHUNK,
                                            ssl_handshake_timeout=handshake_timeout if ssl_context else None)
        return TCPListener(server, self.scheme, host)


TCP = _TCPBackend("tcp")
TLS = _TCPBackend("tls")


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
