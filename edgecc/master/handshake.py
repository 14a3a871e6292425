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


class WorkerMismatch(HandshakeError):
    """A worker does not hold what its operator must have given it for this master's plan (a dataset, a
    base model): it is not configured, and the master says which worker and why."""


class DatasetMismatch(WorkerMismatch):
    """A master that sends dataset indices met a worker that does not hold its dataset (none, another
    one, or images of another shape): it is not configured, and never sent an index."""


class BaseMismatch(WorkerMismatch):
    """A master whose plan runs the workers' own base model (model "worker") met a worker that runs none,
    or one of other images, classes or weights than the other workers' (or the digest the plan pins)."""


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


def check_base(hello: Hello, in_shape: tuple[int, ...], classes: int, digest: str | None, who: str = "worker",
               reference: str = "the plan pins") -> str:
    """The digest of the base model `hello` announces (`hello.caps.base`, `edgecc worker --base`), or
    BaseMismatch unless it takes `in_shape` images to `classes` logits and, when `digest` is given, has
    that digest (the one `reference` names: the plan's pin, or the first worker's)."""
    got = hello.caps.get("base")
    if got is None:
        raise BaseMismatch(f"{who} runs no base model of its own, and this master's plan runs the workers' (model "
                           "worker): start it with `edgecc worker --base MODULE:CALLABLE`, the same as the others")
    shape, want = "×".join(map(str, got["in_shape"])), "×".join(map(str, in_shape))
    held = f"{got['name']!r} ({shape} images, {got['classes']} classes, digest {got['digest'][:12]}…)"
    if tuple(got["in_shape"]) != tuple(in_shape) or got["classes"] != classes:
        raise BaseMismatch(f"{who} runs base {held}; this master's plan takes {want} images to {classes} classes "
                           "(model worker?shape=HxW&classes=C)")
    if digest is not None and got["digest"] != digest:
        raise BaseMismatch(f"{who} runs base {held}, not the one {reference} (digest {digest[:12]}…): every worker "
                           "must run the same base, the same code and weights")
    return str(got["digest"])
