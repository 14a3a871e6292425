"""`edgecc ping`: authenticate to a worker and report what it offers, without configuring it."""

from __future__ import annotations

import time

from ..errors import EdgeccError
from ..protocol.handshake import ClientHandshake, HandshakeError
from .handshake import client_handshake
from ..comm.stream import connect


async def probe(host: str, port: int, token: bytes, timeout: float = 5.0, ssl_context=None) -> dict:
    t0 = time.perf_counter()
    comm = await connect(host, port, timeout, ssl_context)
    try:
        hs = ClientHandshake(token, handshake_timeout=timeout)
        try:
            await client_handshake(comm, hs)
        except HandshakeError as e:  # not a worker, another version, wrong token, or silence
            raise EdgeccError(f"{host}:{port}: {e}") from None
        hello = hs.hello
        return {"address": f"{host}:{port}", "proto": hello.proto, "caps": hello.caps, "bundle": hello.bundle,
                "handshake_ms": round((time.perf_counter() - t0) * 1000, 2)}
    finally:
        await comm.close()
