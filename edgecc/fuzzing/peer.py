"""A raw client connection for fuzzing (sends any bytes, validates what comes back) and the findings it records."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any


from ..protocol.frames import DEFAULT_MAX_FRAME, HEADER, RemoteProtocolError, decode_payload, encode_frame
from ..protocol.handshake import ClientHandshake, HandshakeError
from ..protocol.messages import Error, Message, parse
from ..comm import CommClosedError


MAX_EXAMPLES = 40  # finding examples kept per run
# Findings that are reported but are not failures (a hardening note).
INFO_FINDINGS = {"PREAUTH_BUFFERING"}


class Findings:
    """Counts of things that should not happen, with a few examples."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: list[dict] = []

    def add(self, kind: str, **detail: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, **{k: (v if isinstance(v, (int, float, bool, type(None))) else str(v)[:400])
                                                  for k, v in detail.items()}})

    def total(self) -> int:
        return sum(self.counts.values())

    def critical(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k not in INFO_FINDINGS}


# --- a raw client connection -------------------------------------------------------------------------
class Peer:
    """A TCP connection that sends arbitrary bytes and reads the worker's frames (validated)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, findings: Findings):
        self.reader, self.writer, self.findings = reader, writer, findings
        self.closed = False

    @classmethod
    async def open(cls, port: int, findings: Findings, timeout: float = 10.0) -> "Peer":
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)
        return cls(r, w, findings)

    async def send(self, data: bytes, pieces: int = 1) -> bool:
        """False when the connection is gone. `pieces` > 1 splits the write at random points."""
        if self.closed:
            return False
        try:
            if pieces <= 1 or len(data) < 2:
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), 20)
            else:
                cuts = sorted(random.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
                for a, b in zip([0, *cuts], [*cuts, len(data)]):
                    self.writer.write(data[a:b])
                    await asyncio.wait_for(self.writer.drain(), 20)
                    await asyncio.sleep(0)
            return True
        except (OSError, asyncio.TimeoutError, RuntimeError):
            self.closed = True
            return False

    async def recv(self, timeout: float) -> Any:
        """The next message (a Message, or an ("invalid", why) tuple); None at EOF; TimeoutError."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
            (n,) = HEADER.unpack(head)
            if n > DEFAULT_MAX_FRAME:
                self.findings.add("worker_sent_oversized_frame", length=n)
                return ("invalid", "oversized")
            payload = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        except asyncio.TimeoutError:  # (a subclass of OSError since Python 3.11: keep this first)
            raise
        except asyncio.IncompleteReadError as e:
            if e.partial:
                self.findings.add("worker_sent_truncated_frame", partial=len(e.partial))
            return None
        except (ConnectionError, OSError):
            return None
        try:
            return parse(decode_payload(payload))
        except RemoteProtocolError as e:
            self.findings.add("worker_sent_invalid_message", why=e, payload=payload[:80])
            return ("invalid", str(e))

    async def wait_eof(self, timeout: float) -> tuple[bool, list]:
        """(closed by the peer within timeout, frames received before that)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, got
            try:
                m = await self.recv(left)
            except asyncio.TimeoutError:
                return False, got
            if m is None:
                return True, got
            got.append(m)

    def abort(self) -> None:
        self.closed = True
        if not self.writer.transport.is_closing():
            self.writer.transport.abort()


def describe(m: Any) -> str:
    if m is None:
        return "EOF"
    if isinstance(m, tuple):
        return f"invalid({m[1][:60]})"
    if isinstance(m, Error):
        return f"error:{m.code}:{m.id}"
    return m.TYPE


class PeerStream:
    """A Peer as the message stream the handshake driver (edgecc.master.handshake) reads and
    writes; `pieces` > 1 fragments every frame sent."""

    def __init__(self, peer: Peer, pieces: int = 1):
        self.peer, self.pieces = peer, pieces

    async def read(self, timeout: float | None = None) -> Message:
        m = await self.peer.recv(10.0 if timeout is None else timeout)
        if m is None:
            raise CommClosedError("the worker closed the connection")
        if isinstance(m, tuple):
            raise RemoteProtocolError(m[1])
        return m

    async def write(self, msg: Message, timeout: float | None = None) -> None:
        if not await self.peer.send(encode_frame(msg.to_wire()), self.pieces):
            raise CommClosedError("the worker closed the connection")


def welcomed(hs: ClientHandshake, m: Any) -> bool:
    """Whether `m`, a reply read by Peer.recv, completes the handshake `hs` (waiting for welcome)."""
    if not isinstance(m, Message):
        return False
    try:
        hs.receive(m)
    except HandshakeError:
        return False
    return hs.done
