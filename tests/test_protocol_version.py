"""Peers of protocol version 1 meet version 2 (docs/protocol.md §11): each side gets a clear error.

The other direction — a version 1 master's auth at a real version 2 worker, answered `error version`
— is a row of tests/test_conformance.py. Here the master's side: a stand-in for a version 1 worker
(a TCP server that sends the version 1 hello, byte for byte as the version 1 document specifies it,
and records what the master sends) meets the real `edgecc ping` process and a real Master.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import struct
import subprocess
import sys

import msgpack
import pytest

from edgecc.errors import EdgeccError
from edgecc.master.master import Master
from edgecc.schemes.registry import build_plan

from .conftest import TOKEN

V1_CAPS = {"placements": ["encoded", "plain"], "wire_dtypes": ["f4", "f2"], "torch": False, "max_frame": 1 << 26,
           "max_batch": 4096, "max_in_flight": 256, "proto_minor": 1}
WANT = ("this master speaks protocol version 2, the worker speaks version 1: "
        "upgrade the worker to an edgecc release that speaks protocol 2")


class V1Worker:
    """Sends a version 1 hello on every connection, then records every byte the master sends until it closes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        hello = msgpack.packb({"t": "hello", "proto": 1, "nonce": secrets.token_bytes(32), "caps": V1_CAPS, "bundle": None},
                              use_bin_type=True)
        writer.write(struct.pack(">I", len(hello)) + hello)
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(), 10)  # until the master closes
        except asyncio.TimeoutError:
            data = b"<master kept the connection open>"
        self.received.append(data)
        writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_edgecc_ping_names_both_versions_and_what_to_upgrade():
    w = V1Worker()
    port = await w.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecc.cli", "ping", f"127.0.0.1:{port}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "EDGECC_TOKEN": TOKEN})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode != 0 and out == b""
        assert WANT in err.decode(), err.decode()
        for _ in range(100):
            if w.received:
                break
            await asyncio.sleep(0.02)
        assert w.received == [b""]  # the master closed without sending auth: nothing after hello can be misread
    finally:
        await w.close()


async def test_a_master_refuses_a_version_1_worker_and_logs_why(caplog):
    w = V1Worker()
    port = await w.start()
    plan = build_plan("uncoded", 1, 1)
    m = Master(plan, [("127.0.0.1", port)], TOKEN.encode())
    try:
        with caplog.at_level(logging.ERROR, logger="edgecc"):
            with pytest.raises(EdgeccError, match="only 0 of 1 workers ready") as e:
                await m.start(wait_ready=1.5)
        assert WANT in str(e.value)
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(WANT in line for line in logged), logged
        assert w.connections >= 1 and all(r == b"" for r in w.received)  # never an auth, never a configure
    finally:
        await m.close()
        await w.close()
