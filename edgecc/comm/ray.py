"""The ray:// transport: a server (an edgecc worker) hosted in a Ray actor, reached by the actor's name.

    ray://NAME              the actor named NAME in the namespace "edgecc"
    ray://NAMESPACE/NAME    ... in another namespace

The location names an actor, not a cluster: which Ray cluster this process talks to is Ray's own
setting (RAY_ADDRESS, the cluster `ray start` made, or a local instance; `ensure_ray`).

Why a byte stream over actor calls, and not one actor call per request: the master's links and the
worker's sessions then run unchanged (comm/core.py's Comm), so everything they do over TCP holds
here by construction: the authenticated handshake, `configure`, first-R decoding, `cancel` for
requests that are no longer needed (the worker drops a queued or delayed request, as `ray.cancel`
would), heartbeats, reconnect with backoff, and the fault layer (worker/faults.py) inside the worker.
An actor that dies fails the calls in flight; the link sees its connection reset, reconnects, and
Ray's restart (max_restarts=-1, edgecc.launch.ray_workers) has a fresh worker waiting there.

How the bytes cross. The actor (`RayHost`) keeps one *session* per connection, a pair of in-memory
streams (comm/memory_pipe.py) whose one end is the worker's Comm. The client opens a session
(`open`) and sends its bytes with `push(session, seq, bytes)` calls, several in flight, numbered:
Ray does not order an async actor's calls, so the actor writes them to the worker in `seq` order.
The worker's bytes come back numbered too, in the reply of a push that is waiting for them (a push
waits up to PIGGYBACK_S for the worker's answer), or else in the reply of the one long-polling
`pull(session)` the client keeps open; the client puts them back in order. So a request and its
answer usually cost one actor call, the push and its reply, as a call per request would: the pull
carries what comes later (a straggler's answer, a pong after a quiet spell). Flow control: the client keeps at most
PUSH_WINDOW bytes in pushes the actor has not answered; the actor's push returns once the worker's
reader has room, and it reads no more than PULL_LIMIT bytes of the worker's that the client has not
taken. Bytes the client cannot push yet wait in its own pipe, where the link's backlog accounting
sees them (`backed_up`, the heartbeat). On the client the Comm is a `StreamComm` over another
in-memory pipe, so framing, deadlines and backlogs are the very code TCP uses; its "kernel backlog"
is the bytes handed to the pump that the actor has not answered for, as a socket's is the bytes the
peer has not acknowledged.

A session whose client stops calling (its master died without closing) is dropped after
SESSION_LEASE_S, so the worker's session ends as a reset TCP connection would.

Ray's cluster is the trust boundary of this transport: whoever can reach it can run code in the
actors. The worker's HMAC handshake still runs (the master and worker code are the same as over
TCP), so a master with the wrong token is still refused. No TLS here: Ray's own TLS (RAY_USE_TLS)
covers its traffic.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .addressing import AddressError
from .core import CommClosedError, Handler

try:
    import ray
except ImportError as e:  # the optional extra: an address of this scheme says what to install
    raise AddressError("ray:// addresses need Ray on this machine: pip install 'edgecc[ray]'") from e

from .memory_pipe import memory_streams
from .stream import READ_CHUNK, StreamComm

RAY_NAMESPACE = "edgecc"  # where `ray://NAME` looks for NAME
PUSH_CHUNK = 1 << 18  # bytes per push: one request's frames in one call, a 1 MB configure in four
PUSH_WINDOW = 1 << 20  # bytes in pushes the actor has not answered yet
PULL_LIMIT = 1 << 18  # the worker's bytes the actor holds for the client before it stops reading them
# How long a push waits for the worker's answer to come back in its reply. A small request is answered
# in well under a millisecond and one computed in a thread in a few; a straggler's answer comes later
# by the pull. A waiting push holds up nothing: the client does not wait for it to send the next.
PIGGYBACK_S = 0.02
POLL_S = 2.0  # a pull waits this long for the worker's bytes before returning none (the lease's clock)
SESSION_LEASE_S = 15.0  # a session without any call from its client for this long is dropped


def parse_location(location: str) -> tuple[str, str]:
    """'NAME' -> ('edgecc', 'NAME'); 'NS/NAME' -> ('NS', 'NAME')."""
    namespace, sep, name = location.strip().rpartition("/")
    namespace = namespace if sep else RAY_NAMESPACE
    if not name or not namespace or any(c.isspace() for c in location.strip()):
        raise AddressError(f"ray://{location}: expected ray://NAME or ray://NAMESPACE/NAME, NAME an actor's name")
    if ":" in name:  # ray://HOST:PORT is how Ray spells a Ray Client address
        raise AddressError(f"ray://{location} names a Ray cluster, not an actor: edgecc's ray:// address is an actor's "
                           "name (ray://NAME); the cluster comes from RAY_ADDRESS")
    return namespace, name


def ensure_ray(**init_kwargs: Any) -> bool:
    """Connect this process to Ray unless it already is: RAY_ADDRESS, else the cluster `ray start`
    made, else a new local instance (Ray's own rule). True when this call connected it."""
    if ray.is_initialized():
        return False
    init_kwargs.setdefault("include_dashboard", False)
    ray.init(**init_kwargs)
    return True


# -- the actor's side ------------------------------------------------------------------------------

_listeners: dict[str, "RayListener"] = {}  # this process's ray:// listeners by name (one per hosted server)


class RayListener:
    """What `listen("ray://NAME", handler)` returns inside the actor named NAME: the host hands it each
    session's server end."""

    def __init__(self, location: str, name: str, handler: Handler, max_frame: int):
        self.location, self.name, self.handler, self.max_frame = location, name, handler, max_frame

    @property
    def address(self) -> str:
        return f"ray://{self.location}"

    async def stop(self) -> None:
        if _listeners.get(self.name) is self:
            del _listeners[self.name]


class _ServerComm(StreamComm):
    """The worker's end of a session. Its `abort` closes instead: the bytes the worker wrote last (the
    error that explains a refusal) still reach the master, as they would over TCP, where a write is
    in the kernel before the reset. Nothing is held up by it: a session whose client is gone is
    dropped by the host (`SESSION_LEASE_S`), which resets this end."""

    def abort(self) -> None:
        self.closed = True
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.close()


class SessionGone(Exception):
    """The session named in a call is not (or no longer) open in this actor: the client reconnects."""


@dataclass
class _Session:
    reader: asyncio.StreamReader  # the worker's bytes
    writer: asyncio.StreamWriter  # the master's bytes, written in push order
    task: asyncio.Task  # the server's handler on the other end
    last_call: float = field(default_factory=time.monotonic)
    in_seq: int = 0  # the next push to write
    in_turn: dict[int, asyncio.Future] = field(default_factory=dict)  # pushes that arrived early, by seq
    out: bytearray = field(default_factory=bytearray)  # the worker's bytes not yet taken by a call
    out_seq: int = 0  # the number of the next chunk taken
    eof: bool = False  # the worker ended its side (after `out`)
    eof_sent: bool = False
    room: asyncio.Event = field(default_factory=asyncio.Event)  # `out` was taken: read on
    push_takers: deque[asyncio.Future] = field(default_factory=deque)  # pushes waiting for the worker's bytes
    pull_takers: deque[asyncio.Future] = field(default_factory=deque)  # the pull waiting for them
    drainer: asyncio.Task | None = None


class RayHost:
    """The actor (`ray.remote(RayHost)`, options chosen by the launcher): runs `serve(address)` on its
    event loop, a coroutine that starts a server listening at `address` (ray://NAME; e.g. a worker's
    `Worker.start`), and carries each client session's bytes to and from it.

    The server starts on the actor's first call, not in __init__ (no event loop runs there). A
    restarted actor runs __init__ again with the same arguments, so its server starts afresh on the
    first call after the restart, which is the master's reconnect."""

    def __init__(self, name: str, namespace: str, serve: Callable[[str], Awaitable[Any]]):
        self.name, self.namespace, self.serve = name, namespace, serve
        self.server: Any = None  # whatever `serve` returned (kept alive with the actor)
        self._starting: asyncio.Future | None = None
        self._sessions: dict[str, _Session] = {}
        self._watchdog: asyncio.Task | None = None

    async def ready(self) -> dict[str, Any]:
        """Start the server if it is not running; where this actor runs."""
        await self._ready()
        ctx = ray.get_runtime_context()
        return {"address": self.address, "pid": os.getpid(), "node_id": ctx.get_node_id(),
                "node_ip": ray.util.get_node_ip_address()}

    async def _ready(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    @property
    def address(self) -> str:
        return f"ray://{self.name}" if self.namespace == RAY_NAMESPACE else f"ray://{self.namespace}/{self.name}"

    async def _start(self) -> None:
        self.server = await self.serve(self.address)
        self._watchdog = asyncio.create_task(self._expire())

    async def open(self) -> str:
        """A new connection to the server; returns its session id (random: a restarted actor must not
        take an old client's calls for a new client's session)."""
        await self._ready()
        listener = _listeners.get(self.name)
        if listener is None:
            raise SessionGone(f"nothing listens at {self.address} in this actor")
        (reader, writer), (s_reader, s_writer) = memory_streams(limit=READ_CHUNK)
        task = asyncio.create_task(listener.handler(_ServerComm(s_reader, s_writer, listener.max_frame)))
        sid = secrets.token_hex(8)
        s = self._sessions[sid] = _Session(reader, writer, task)
        s.drainer = asyncio.create_task(self._drain(s))
        return sid

    def _session(self, sid: str) -> _Session:
        s = self._sessions.get(sid)
        if s is None:
            raise SessionGone(f"session {sid} is not open at {self.address} (closed, expired, or the actor restarted)")
        s.last_call = time.monotonic()
        return s

    async def push(self, sid: str, seq: int, data: bytes) -> tuple[int, bytes, bool] | None:
        """The client's `seq`-th bytes, written to the server after push seq-1's (TCP's flow control: it
        waits while the server's reader has no room). Returns the server's next bytes if they come
        within PIGGYBACK_S (see `_take`), else None."""
        s = self._session(sid)
        if seq != s.in_seq:  # an earlier push has not arrived yet: wait for our turn
            turn = s.in_turn[seq] = asyncio.get_running_loop().create_future()
            await turn
        try:
            s.writer.write(data)
            await s.writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self._drop(sid)
            raise SessionGone(f"session {sid} ended: {e}") from None
        finally:
            s.in_seq = seq + 1
            nxt = s.in_turn.pop(s.in_seq, None)
            if nxt is not None and not nxt.done():
                nxt.set_result(None)
        return await self._take(s, PIGGYBACK_S, s.push_takers)

    async def pull(self, sid: str) -> tuple[int, bytes, bool] | None:
        """The server's next bytes as soon as there are any that no push takes; None after POLL_S without."""
        s = self._session(sid)
        try:
            return await self._take(s, POLL_S, s.pull_takers)
        finally:
            s.last_call = time.monotonic()

    async def _take(self, s: _Session, wait: float, takers: deque) -> tuple[int, bytes, bool] | None:
        """(seq, bytes, last) of the server's bytes held now, waiting up to `wait` for some; `last`: the
        server ended the session after them. Pushes are handed new bytes before the pull, so an answer
        rides back on the reply of the push that is waiting for it."""
        if not s.out and not (s.eof and not s.eof_sent):
            taker = asyncio.get_running_loop().create_future()
            takers.append(taker)
            try:
                async with asyncio.timeout(wait):
                    await taker
            except TimeoutError:
                pass
            finally:
                if taker in takers:
                    takers.remove(taker)
        if s.out:
            data = bytes(s.out)
            s.out.clear()
            s.room.set()
        elif s.eof and not s.eof_sent:
            data = b""
        else:
            return None
        seq, s.out_seq = s.out_seq, s.out_seq + 1
        last = s.eof and not s.eof_sent
        s.eof_sent = s.eof_sent or last  # the session stays until the client closes it (or the lease ends it)
        return seq, data, last

    def _hand_out(self, s: _Session) -> None:
        """Wake one waiting call to take the server's bytes: a push first, else the pull."""
        for takers in (s.push_takers, s.pull_takers):
            while takers:
                taker = takers.popleft()
                if not taker.done():
                    taker.set_result(None)
                    return

    async def _drain(self, s: _Session) -> None:
        """Read the server's bytes into the session's outbox, at most PULL_LIMIT ahead of the client."""
        try:
            while True:
                while len(s.out) >= PULL_LIMIT:
                    s.room.clear()
                    await s.room.wait()
                data = await s.reader.read(PUSH_CHUNK)
                if not data:
                    break
                s.out += data
                self._hand_out(s)
        except ConnectionError:
            pass
        s.eof = True
        self._hand_out(s)

    async def close(self, sid: str) -> None:
        """The client closed: the server reads the end of its stream."""
        s = self._sessions.pop(sid, None)
        if s is not None:
            s.writer.close()
            self._cancel(s)

    def sessions(self) -> int:
        """Sessions open now (tests: a closed master leaves none)."""
        return len(self._sessions)

    def server_stats(self) -> dict | None:
        """The hosted server's `stats` (a Worker's counters: connections, requests, cancelled...)."""
        stats = getattr(self.server, "stats", None)
        return dict(stats) if isinstance(stats, dict) else None

    def _drop(self, sid: str) -> None:
        s = self._sessions.pop(sid, None)
        if s is not None:
            s.writer.transport.abort()
            self._cancel(s)

    @staticmethod
    def _cancel(s: _Session) -> None:
        """Calls still waiting on a session that is gone end now (their client is told by SessionGone
        on its next call, or has gone itself)."""
        for f in [*s.in_turn.values(), *s.push_takers, *s.pull_takers, s.drainer]:
            if f is not None and not f.done():
                f.cancel()

    async def _expire(self) -> None:
        """Drop sessions whose client stopped calling: its master is gone without closing."""
        while True:
            await asyncio.sleep(SESSION_LEASE_S / 3)
            now = time.monotonic()
            for sid in [sid for sid, s in self._sessions.items() if now - s.last_call > SESSION_LEASE_S]:
                self._drop(sid)


HOST = ray.remote(RayHost)  # the launcher sets the options: name, namespace, restarts, placement


# -- the client's side -----------------------------------------------------------------------------

class _Pump:
    """Moves one session's bytes between the client's pipe (its far end) and the actor."""

    def __init__(self, actor, sid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.actor, self.sid, self.reader, self.writer = actor, sid, reader, writer
        self.acked = 0  # bytes of answered pushes
        self.unanswered = 0  # bytes in pushes not answered yet
        self.answered = asyncio.Event()
        self.pushes: set[asyncio.Task] = set()
        self.next_out = 0  # the number of the server's next chunk to write to our pipe
        self.early: dict[int, tuple[bytes, bool]] = {}  # chunks that came before their turn
        self.why = ""  # why the session ended from the actor's side
        self.done = False
        self.tasks = [asyncio.ensure_future(self._push()), asyncio.ensure_future(self._pull())]

    async def _push(self) -> None:
        seq = 0
        try:
            while True:
                data = await self.reader.read(PUSH_CHUNK)
                if not data:  # our Comm closed
                    break
                while self.unanswered >= PUSH_WINDOW:
                    self.answered.clear()
                    await self.answered.wait()
                self.unanswered += len(data)
                task = asyncio.ensure_future(self._one_push(seq, data))
                self.pushes.add(task)
                task.add_done_callback(self.pushes.discard)
                seq += 1
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # our Comm aborted
            pass
        if self.pushes:  # what we sent goes before the end of the stream
            await asyncio.wait(list(self.pushes), timeout=5.0)
        self._stop("", reset=False)
        try:  # the worker reads the end of its stream (else the lease ends the session)
            async with asyncio.timeout(5.0):
                await self.actor.close.remote(self.sid)
        except Exception:
            pass

    async def _one_push(self, seq: int, data: bytes) -> None:
        try:
            reply = await self.actor.push.remote(self.sid, seq, data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the actor died or dropped the session
            self._stop(_reason(e), reset=True)
            return
        self.unanswered -= len(data)
        self.acked += len(data)
        self.answered.set()
        self._received(reply)

    async def _pull(self) -> None:
        try:
            while not self.done:
                self._received(await self.actor.pull.remote(self.sid))
                if not self.done:
                    await self.writer.drain()  # our Comm is not reading: stop taking the worker's bytes
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # our Comm aborted
            self._stop("", reset=False)
        except Exception as e:
            self._stop(_reason(e), reset=True)

    def _received(self, reply: tuple[int, bytes, bool] | None) -> None:
        """The server's chunk `seq` from a push's or the pull's reply: written to our pipe in order."""
        if reply is None or self.done:
            return
        seq, data, last = reply
        self.early[seq] = (data, last)
        while self.next_out in self.early:
            data, last = self.early.pop(self.next_out)
            self.next_out += 1
            if data:
                self.writer.write(data)
            if last:  # the worker ended the session: what it wrote is delivered, then the end
                self._stop("the worker closed the connection", reset=False)
                return

    def _stop(self, why: str, reset: bool) -> None:
        """End both directions: `reset` drops what our Comm has not read yet (the actor is gone)."""
        if why and not self.why:
            self.why = why
        self.done = True
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort() if reset else transport.close()
        me = asyncio.current_task()
        for t in [*self.tasks, *self.pushes]:
            if t is not me:
                t.cancel()


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


class RayComm(StreamComm):
    """The client's Comm: a StreamComm over an in-memory pipe whose far end a `_Pump` carries to the actor."""

    def __init__(self, reader, writer, max_frame: int, peer: str):
        super().__init__(reader, writer, max_frame)
        self.peer = peer
        self.pump: _Pump | None = None

    def kernel_backlog(self) -> int:
        """Bytes that left our pipe's buffer that the actor has not answered for (in the pump or a push)."""
        if self.pump is None:
            return 0
        return max(0, self.bytes_sent - self.write_buffer_size - self.pump.acked)

    async def read(self, timeout: float | None = None):
        try:
            return await super().read(timeout)
        except CommClosedError:
            if self.pump is not None and self.pump.why:  # say what happened at the actor, not "pipe reset"
                raise CommClosedError(f"{self.peer}: {self.pump.why}") from None
            raise


class _RayBackend:
    async def connect(self, location: str, *, timeout: float, ssl_context, max_frame: int) -> RayComm:
        if ssl_context is not None:
            raise AddressError(f"ray://{location}: no TLS over ray:// (Ray's own TLS, RAY_USE_TLS, covers its traffic)")
        namespace, name = parse_location(location)
        peer = f"ray://{location}"
        if not ray.is_initialized():  # once per process; blocks this loop while Ray connects
            ensure_ray()
        try:
            async with asyncio.timeout(timeout):
                actor = await asyncio.to_thread(ray.get_actor, name, namespace)
                sid = await actor.open.remote()
        except TimeoutError:
            raise CommClosedError(f"cannot connect to {peer}: the actor did not open a session within {timeout:g} s") from None
        except ValueError:  # get_actor: no live actor of that name
            raise CommClosedError(f"cannot connect to {peer}: no actor named {name!r} in namespace {namespace!r}") from None
        except Exception as e:  # the actor died, is restarting, or refused
            raise CommClosedError(f"cannot connect to {peer}: {_reason(e)}") from None
        (reader, writer), (p_reader, p_writer) = memory_streams(limit=READ_CHUNK)
        comm = RayComm(reader, writer, max_frame, peer)
        comm.pump = _Pump(actor, sid, p_reader, p_writer)
        return comm

    async def listen(self, location: str, handler: Handler, *, ssl_context, max_frame: int,
                     handshake_timeout: float) -> RayListener:
        if ssl_context is not None:
            raise AddressError(f"ray://{location}: no TLS over ray:// (Ray's own TLS, RAY_USE_TLS, covers its traffic)")
        _, name = parse_location(location)
        if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
            raise AddressError(f"ray://{location} is served from inside a Ray actor (edgecc.launch.ray_workers), "
                               "not from a process of its own")
        if name in _listeners:
            raise AddressError(f"ray://{name} is already listening in this actor")
        listener = _listeners[name] = RayListener(location.strip(), name, handler, max_frame)
        return listener


RAY = _RayBackend()
