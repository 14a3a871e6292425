"""What the runtime knows of a connection: `Comm`, a stream of whole protocol messages, and
`Listener`, which hands each incoming connection to a handler as a Comm.

The master's links and the worker's sessions are written against these two protocols only; a
transport provides them for an address scheme (comm/registry.py), so the same worker code serves
`tcp://`, `tls://` and `mem://` alike.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from ..errors import EdgeccError
from ..protocol.messages import Message


class CommClosedError(EdgeccError):
    """The connection is gone (peer closed, reset, refused, or we aborted it)."""


class Comm(Protocol):
    """One connection, message by message. Any I/O failure aborts it and raises CommClosedError.

    Sending never waits: `send` queues an encoded frame and returns its size; `backed_up` says the
    peer is not keeping up, `writable()` waits until it does. The byte counters and backlogs let a
    heartbeat tell a slow peer (the backlog drains) from a dead one (it does not)."""

    peer: str  # who is at the other end, for logs
    closed: bool
    bytes_sent: int  # frames handed to the transport
    bytes_received: int  # bytes read from it, whole messages or not

    async def read(self, timeout: float | None = None) -> Message:
        """The next validated message within `timeout` s (TimeoutError); RemoteProtocolError for garbage."""
        ...

    async def write(self, msg: Message | dict[str, Any], timeout: float | None = 30.0) -> int:
        """Send one message, waiting (up to `timeout`) only while the peer takes no bytes."""
        ...

    def send(self, frame: bytes) -> int: ...

    def set_read_limit(self, max_frame: int) -> None:
        """The largest frame the next reads accept (a peer not yet authenticated gets a small one)."""
        ...

    @property
    def backed_up(self) -> bool: ...

    @property
    def write_buffer_size(self) -> int:
        """Bytes handed to the transport and not yet to the kernel (or to the peer, in memory)."""
        ...

    def kernel_backlog(self) -> int | None:
        """Bytes in the kernel's send queue; 0 with no kernel under the transport; None if unknown."""
        ...

    async def writable(self) -> None: ...

    async def drain(self, timeout: float | None = 30.0) -> None: ...

    def abort(self) -> None: ...

    async def close(self) -> None: ...


Handler = Callable[[Comm], Awaitable[None]]


class Listener(Protocol):
    """Accepts connections and runs `handler(comm)` for each, concurrently, until stopped."""

    @property
    def address(self) -> str:
        """The address connecting peers use (the bound port filled in): 'tcp://127.0.0.1:7701'."""
        ...

    async def stop(self) -> None:
        """Stop accepting; connections already handed to the handler are the handler's to end."""
        ...
