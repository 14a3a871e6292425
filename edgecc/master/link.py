"""The master's link to one worker: connect, authenticate, configure, read results, and send
through a per-link outbound queue so that no link can hold up another.

Why a queue per link: a request is complete once R workers answered, whatever state any other
link's send buffer is in. Frames are therefore never awaited at send time. A frame goes straight
to the socket when the link is idle (the common case, no task hop); otherwise it waits in this
link's queue, and the link's writer task sends it when the peer takes bytes. A frame whose request
has been decoded or has failed meanwhile is discarded before it reaches the socket. Control frames
(pings, cancels) jump the queue. A link whose queue exceeds its bound is *lagging*: new requests
leave it out while others can serve them, but it is not torn down for being slow. Only a link that
makes no progress for three heartbeat periods (no queued byte taken by the peer, or a ping taken
and nothing received since, or nothing received while nothing is queued) is declared dead and
reconnected.

The link knows nothing of the master that owns it: it gets its settings (`LinkConfig`: the token,
how to configure a worker from its hello, the heartbeat) and reports to a `LinkListener` (a result,
a request's error, the worker lost), which it also asks, before a queued frame goes out, whether
that request still wants this worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..comm import Comm, CommClosedError, connect
from ..errors import EdgeccError
from ..protocol.frames import RemoteProtocolError, encode_frame
from ..protocol.handshake import ClientHandshake, HandshakeAuthError
from ..protocol.limits import Limits
from ..protocol.messages import Cancel, Configure, Error, Hello, Ping, Pong, Result
from .handshake import client_handshake

log = logging.getLogger("edgecc.master")

# A link is lagging when more than this many bytes of live requests wait in its queue (and at least
# one frame): about 0.1 s of a 100 Mbit/s link, 2 s of a 2 Mbit/s one. Requests then go to the other
# links when they can complete without it.
MAX_QUEUED_BYTES = 1 << 20
MISSED_BEATS = 3  # heartbeat periods without any progress before a link is declared dead


class AuthError(EdgeccError):
    """The peer failed authentication (wrong token on one side)."""


class FrameTooLarge(EdgeccError):
    """A request's frame is larger than this worker reads (its hello's max_frame): it is never sent."""


class LinkListener(Protocol):
    """What a link reports to, and asks: the master, or anything else that sends requests."""

    def wants(self, req_id: int, index: int) -> bool:
        """Does request `req_id` still need worker `index`? Asked before its queued frame is sent."""
        ...

    def on_sent(self, req_id: int, index: int, nbytes: int) -> None:
        """Request `req_id`'s frame went to worker `index`'s connection."""
        ...

    def on_result(self, index: int, msg: Result) -> None: ...

    def on_request_error(self, index: int, req_id: int, why: str) -> None:
        """Worker `index` answered request `req_id` with an error: it will not answer it otherwise."""
        ...

    def on_lost(self, index: int) -> None:
        """Worker `index`'s connection is gone; nothing it was sent will be answered."""
        ...


@dataclass(frozen=True)
class LinkConfig:
    token: bytes
    # the configure for worker `index`, given its hello (a worker that preloaded the bundle gets no arrays)
    configure: Callable[[int, Hello], Configure]
    placement: str | None = None  # refuse a worker whose hello does not offer it
    limits: Limits = field(default_factory=Limits)
    ssl_context: Any = None
    heartbeat_s: float = 1.0
    max_backoff: float = 2.0  # the longest pause between reconnects
    max_queued_bytes: int = MAX_QUEUED_BYTES


class WorkerLink:
    """One worker: connection lifecycle, the outbound queue and its writer, the reader, the heartbeat."""

    def __init__(self, index: int, address: str, config: LinkConfig, listener: LinkListener):
        self.index, self.address, self.config, self.listener = index, address, config, listener
        self.max_queued_bytes = config.max_queued_bytes
        self.closing = False
        self.comm: Comm | None = None
        self.ready = asyncio.Event()
        self.minor = 0  # the worker's protocol minor version (1: understands cancel)
        self.peer_max_frame = config.limits.max_frame  # the largest payload the worker reads (its hello says)
        self.last_seen = 0.0  # last frame received
        self.connects = 0
        self.last_error = ""
        self.task: asyncio.Task | None = None
        # outbound: request frames by request id (in arrival order) and control frames, sent first
        self.queue: OrderedDict[int, bytes] = OrderedDict()
        self.queued_bytes = 0
        self.control: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self.stats = {"frames_sent": 0, "frames_dropped": 0, "lagging_skips": 0, "cancels_sent": 0, "bytes_sent": 0,
                      "too_large": 0}

    @property
    def lagging(self) -> bool:
        return self.queued_bytes > self.max_queued_bytes

    # -- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff whenever the connection is lost, until `stop`."""
        backoff, cfg = 0.05, self.config
        while not self.closing:
            try:
                comm = await connect(self.address, timeout=cfg.limits.connect_timeout, ssl_context=cfg.ssl_context,
                                     max_frame=cfg.limits.max_frame)
                try:
                    await self._handshake(comm)
                    now = time.monotonic()
                    self.comm, self.last_seen, backoff = comm, now, 0.05
                    self.connects += 1
                    self.ready.set()
                    log.info("worker %d (%s) ready", self.index, self.address)
                    await _first_exception(self._reader(comm), self._heartbeat(comm), self._writer(comm))
                finally:
                    comm.abort()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # whatever a peer does, this link must keep retrying, never die
                self.last_error = f"{type(e).__name__}: {e}"[:500]
                if isinstance(e, AuthError):
                    log.error("worker %d (%s): %s", self.index, self.address, e)
                elif not isinstance(e, (CommClosedError, RemoteProtocolError, asyncio.TimeoutError, OSError)):
                    log.exception("worker %d (%s): unexpected error", self.index, self.address)
            finally:
                was_ready = self.ready.is_set()
                self.ready.clear()
                self.comm = None
                self._clear_queue()
                if was_ready and not self.closing:
                    log.warning("worker %d (%s) lost: %s", self.index, self.address, self.last_error)
                    self.listener.on_lost(self.index)
            if self.closing:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, cfg.max_backoff)

    async def stop(self) -> None:
        """End the link: no reconnect; the connection is closed."""
        self.closing = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _handshake(self, comm: Comm) -> None:
        cfg = self.config
        hs = ClientHandshake(cfg.token, placement=cfg.placement, configure=lambda hello: cfg.configure(self.index, hello),
                             handshake_timeout=cfg.limits.handshake_timeout)
        try:
            await client_handshake(comm, hs)
        except HandshakeAuthError as e:
            raise AuthError(str(e)) from None
        self.minor = hs.minor
        self.peer_max_frame = min(cfg.limits.max_frame, hs.peer_max_frame or cfg.limits.max_frame)

    async def _reader(self, comm: Comm) -> None:
        listener = self.listener
        while True:
            msg = await comm.read()
            self.last_seen = time.monotonic()
            if isinstance(msg, Result):
                listener.on_result(self.index, msg)
            elif isinstance(msg, Error):
                if msg.id is not None:
                    listener.on_request_error(self.index, msg.id, f"{msg.code}: {msg.message}")
                else:
                    log.warning("worker %d: %s: %s", self.index, msg.code, msg.message)
            elif not isinstance(msg, Pong):
                raise RemoteProtocolError(f"unexpected {msg.TYPE} from worker")

    async def _heartbeat(self, comm: Comm) -> None:
        """Ping every period and drop the link after MISSED_BEATS periods in which
        - the peer took none of the bytes waiting for it (a cut link), or
        - the peer took one of our pings but sent nothing back since (a hung or desynchronised worker
          whose socket still drains: its kernel keeps acknowledging, so the backlog alone would call
          it alive for as long as we keep sending), or
        - nothing waited and the peer sent nothing (a paused or partitioned worker).
        A slow link keeps taking bytes and answers each ping once it gets there, so it stays: a ping
        stuck behind our own frames is not counted until it has left the backlog."""
        period, seq = self.config.heartbeat_s, 0
        limit = MISSED_BEATS * period
        # this connection's liveness state
        last_progress = time.monotonic()  # last beat at which the peer took bytes we had queued
        taken_before = 0  # bytes written to this connection that had left the send backlog by then
        pings: deque[int] = deque()  # stream offset of the end of each ping the peer has not yet taken
        unanswered_since: float | None = None  # the beat that saw a ping taken with no byte heard after it
        unanswered_beats = 0  # beats since then: a stalled event loop delays our reader as much as our clock
        heard, heard_at = comm.bytes_received, 0.0
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            kernel = comm.kernel_backlog()
            backlog = comm.write_buffer_size + (kernel or 0)
            # Bytes that left the backlog: what was written minus what still waits. Its growth is
            # progress even while the backlog itself grows (new frames arriving faster than they drain).
            delivered = comm.bytes_sent - backlog
            if delivered > taken_before or not backlog:
                last_progress = now
            taken_before = delivered
            if comm.bytes_received != heard:  # any byte, so a large result still arriving counts
                heard, heard_at = comm.bytes_received, now
            if unanswered_since is not None and heard_at > unanswered_since:
                unanswered_since = None
            taken = False
            while pings and pings[0] <= delivered:
                pings.popleft()
                taken = True
            if unanswered_since is not None:
                unanswered_beats += 1
            elif taken and kernel is not None:  # without SIOCOUTQ "delivered" counts unsent kernel bytes
                unanswered_since, unanswered_beats = now, 0
            moving = bool(backlog) and now - last_progress <= limit
            if backlog and not moving:  # the peer takes no bytes, whatever it sends
                raise CommClosedError(f"worker {self.index} took none of {backlog} waiting bytes for {limit:g} s")
            if unanswered_since is not None and unanswered_beats >= MISSED_BEATS and now - unanswered_since > limit:
                raise CommClosedError(f"worker {self.index} took our ping and sent nothing for {limit:g} s")
            if not moving and now - max(self.last_seen, heard_at) > limit:  # silent, nothing in the way of our pings
                raise CommClosedError(f"no frame from worker {self.index} for {limit:g} s")
            seq += 1
            self.send_control(encode_frame(Ping(seq).to_wire()))
            # Control frames go out before queued requests, so the ping ends after what the transport
            # already holds plus the control frames queued up to and including it.
            pings.append(comm.bytes_sent + sum(map(len, self.control)))

    async def _writer(self, comm: Comm) -> None:
        """Send queued frames in order, control frames first, skipping requests that no longer need them."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.control or self.queue:
                if self.control:
                    comm.send(self.control.popleft())
                else:
                    req_id, frame = self.queue.popitem(last=False)
                    self.queued_bytes -= len(frame)
                    self._put(comm, req_id, frame)
                if comm.backed_up:
                    await comm.writable()

    # -- sending ---------------------------------------------------------------------------------
    def offer(self, req_id: int, frame: bytes, force: bool = False) -> bool:
        """Send or queue request `req_id`'s frame. False when the link is lagging (and not `force`):
        the caller leaves this worker out of the request. CommClosedError when not connected."""
        comm = self.comm
        if comm is None or comm.closed:
            raise CommClosedError("not connected")
        if len(frame) - 4 > self.peer_max_frame:  # the worker would drop the connection (§3): never sent
            self.stats["too_large"] += 1
            raise FrameTooLarge(f"worker {self.index} reads frames of up to {self.peer_max_frame} bytes, "
                                f"this request's is {len(frame) - 4}")
        if self._idle(comm):
            self._put(comm, req_id, frame)  # idle link: straight to the socket, no task hop
            return True
        if self.lagging and not force:
            self.stats["lagging_skips"] += 1
            return False
        self.queue[req_id] = frame
        self.queued_bytes += len(frame)
        self._wakeup.set()
        return True

    def _idle(self, comm: Comm) -> bool:
        """Nothing waits before a new frame: it may go straight to the socket, no task hop."""
        return not self.queue and not self.control and not comm.backed_up

    def _put(self, comm: Comm, req_id: int, frame: bytes) -> None:
        if not self.listener.wants(req_id, self.index):  # decoded or failed meanwhile: never sent
            self.stats["frames_dropped"] += 1
            return
        n = comm.send(frame)
        self.stats["frames_sent"] += 1
        self.stats["bytes_sent"] += n
        self.listener.on_sent(req_id, self.index, n)

    def discard(self, req_id: int) -> bool:
        """Take request `req_id`'s frame out of the queue; True if it was still there (never sent)."""
        frame = self.queue.pop(req_id, None)
        if frame is None:
            return False
        self.queued_bytes -= len(frame)
        self.stats["frames_dropped"] += 1
        return True

    def cancel(self, req_id: int) -> None:
        """Tell the worker to skip `req_id` (workers of minor version >= 1; older ones just answer late)."""
        if self.minor >= 1 and self.comm is not None and not self.comm.closed:
            self.stats["cancels_sent"] += 1
            self.send_control(encode_frame(Cancel(req_id).to_wire()))

    def send_control(self, frame: bytes) -> None:
        comm = self.comm
        if comm is None or comm.closed:
            return
        if self._idle(comm):
            try:
                comm.send(frame)
            except CommClosedError:
                pass  # the reader or heartbeat notices and reconnects
            return
        self.control.append(frame)
        self._wakeup.set()

    def _clear_queue(self) -> None:
        self.stats["frames_dropped"] += len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        self.control.clear()
        self._wakeup.clear()


async def _first_exception(*coros) -> None:
    """Run the link's loops together; the first to fail cancels the others and raises."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
