"""Drive the master's handshake (edgecc.protocol.handshake) over a message stream.

The one driver for every client: the master's links, `edgecc ping`, the benchmarks and the fuzzer.
`stream` is anything with `async read(timeout) -> Message` and `async write(msg, timeout)`:
a `comm.Comm`, or an adapter over raw bytes.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..protocol.handshake import ClientHandshake
from ..protocol.messages import Message


class MessageStream(Protocol):
    async def read(self, timeout: float | None = None) -> Message: ...

    async def write(self, msg: Message, timeout: float | None = ...) -> Any: ...


async def client_handshake(stream: MessageStream, hs: ClientHandshake) -> ClientHandshake:
    """Run `hs` to DONE: read a message within the state's timeout, send what the machine answers.
    Raises the machine's HandshakeError (silence included) or the stream's own errors."""
    while not hs.done:
        try:
            msg = await stream.read(timeout=hs.timeout)
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError from Python 3.11
            raise hs.timed_out() from None
        for out in hs.receive(msg):
            await stream.write(out, timeout=hs.send_timeout)
    return hs
