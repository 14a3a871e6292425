"""Drive the master's handshake (edgecc.protocol.handshake) over a message stream.

The one driver for every client: the master's links, `edgecc ping`, the benchmarks and the fuzzer.
`stream` is anything with `async read(timeout) -> Message` and `async write(msg, timeout)`:
a `comm.Comm`, or an adapter over raw bytes.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..protocol.handshake import ClientHandshake, HandshakeError
from ..protocol.images import dims
from ..protocol.messages import Hello, Message


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


class DatasetMismatch(HandshakeError):
    """A master that sends dataset indices met a worker that does not hold its dataset (none, another
    one, or images of another shape): it is not configured, and never sent an index."""


def check_dataset(hello: Hello, digest: str, image: tuple[int, ...], who: str = "worker") -> int:
    """The number of images of the dataset `hello` announces (`hello.caps.dataset`, `edgecc worker
    --dataset SOURCE`), or DatasetMismatch unless it is the one of SHA-256 `digest`
    (protocol.messages.dataset_digest) with images of (C, H, W) `image`, the model's."""
    got = hello.caps.get("dataset")
    want = "×".join(map(str, image))
    if got is None:
        raise DatasetMismatch(f"{who} holds no dataset, and this master sends dataset indices: start it with "
                              "`edgecc worker --dataset SOURCE`, the source the master's indices refer to")
    shape = "×".join(map(str, got["shape"]))
    held = f"{got['name']!r} ({got['images']} images of {shape}, digest {got['digest'][:12]}…)"
    if dims(got["shape"]) != dims(image):
        raise DatasetMismatch(f"{who} holds dataset {held}; the model takes {want} images")
    if got["digest"] != digest:
        raise DatasetMismatch(f"{who} holds dataset {held}, not the one this master's indices refer to "
                              f"(digest {digest[:12]}…): start it with the same --dataset source as the others")
    return int(got["images"])
