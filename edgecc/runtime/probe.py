"""`edgecc ping`: authenticate to a worker and report what it offers, without configuring it."""

from __future__ import annotations

import time

from ..errors import EdgeccError
from ..protocol import auth
from ..protocol.messages import PROTOCOL_VERSION, Auth, Error, Hello, Welcome
from .transport import connect


async def probe(host: str, port: int, token: bytes, timeout: float = 5.0, ssl_context=None) -> dict:
    t0 = time.perf_counter()
    comm = await connect(host, port, timeout, ssl_context)
    try:
        hello = await comm.read(timeout=timeout)
        if not isinstance(hello, Hello):
            raise EdgeccError(f"{host}:{port} is not an edgecc worker (first message {hello.TYPE})")
        nonce = auth.new_nonce()
        await comm.write(Auth(PROTOCOL_VERSION, nonce, auth.master_mac(token, hello.nonce, nonce)))
        reply = await comm.read(timeout=timeout)
        if isinstance(reply, Error):
            raise EdgeccError(f"{host}:{port} refused the handshake: {reply.message}")
        if not isinstance(reply, Welcome) or not auth.verify(auth.worker_mac(token, nonce, hello.nonce), reply.mac):
            raise EdgeccError(f"{host}:{port} failed to prove the shared token")
        return {"address": f"{host}:{port}", "proto": hello.proto, "caps": hello.caps, "bundle": hello.bundle,
                "handshake_ms": round((time.perf_counter() - t0) * 1000, 2)}
    finally:
        await comm.close()
