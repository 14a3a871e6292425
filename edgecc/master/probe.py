"""`edgecc ping`: authenticate to a worker and report what it offers, without configuring it."""

from __future__ import annotations

import time

from ..comm import connect
from ..comm.addressing import format_host_port
from ..errors import EdgeccError
from ..protocol.handshake import ClientHandshake, HandshakeError
from .handshake import client_handshake


async def probe(address: str | tuple[str, int], token: bytes, timeout: float = 5.0, ssl_context=None) -> dict:
    """The worker's hello at `address` (any comm/ address, or (host, port)) once it has proved the token."""
    if not isinstance(address, str):
        address = format_host_port(*address)
    t0 = time.perf_counter()
    comm = await connect(address, timeout=timeout, ssl_context=ssl_context)
    try:
        hs = ClientHandshake(token, handshake_timeout=timeout)
        try:
            await client_handshake(comm, hs)
        except HandshakeError as e:  # not a worker, another version, wrong token, or silence
            raise EdgeccError(f"{address}: {e}") from None
        hello = hs.hello
        return {"address": address, "proto": hello.proto, "caps": hello.caps, "bundle": hello.bundle,
                "handshake_ms": round((time.perf_counter() - t0) * 1000, 2)}
    finally:
        await comm.close()
