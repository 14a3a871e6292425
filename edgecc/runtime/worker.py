"""The worker: an asyncio server that authenticates a master, takes its role, and computes.

Encoded-only placement imports numpy and msgpack only (no torch): the H_B map is one GEMM.
Compute runs in a thread so the event loop keeps answering pings and reading frames.
A scenario can attach a `behaviour` (delay per request, or no answer) to emulate stragglers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..bundle import digest as array_digest
from ..coding.schemes import Scheme
from ..errors import EdgeccError
from ..protocol import auth
from ..protocol.frames import FatalProtocolError, RemoteProtocolError, pack_array, unpack_array
from ..protocol.messages import (PROTOCOL_MINOR, PROTOCOL_VERSION, Auth, Cancel, Compute, Configure, Configured, Error,
                                 Hello, Ping, Pong, Result, Welcome)
from .blas import single_threaded_blas
from .compute import EncodedCompute
from .plain_cnn import plain_compute
from .limits import Limits
from .transport import Comm, CommClosedError

log = logging.getLogger("edgecc.worker")

SHARED_DATASETS = ("sample", "test", "train")
PREAUTH_MAX_FRAME = 4096  # an auth frame is ~100 bytes
INLINE_GROUPS = 256  # encoded/plain requests up to this many groups compute on the event loop

# behaviour(request_id, seconds since the worker started) -> injected delay in seconds, or None = never answer
Behaviour = Callable[[int, float], "float | None"]


def torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


LIES = ("random", "scale", "adversarial")


def lie(kind: str, y: np.ndarray, req_id: int) -> np.ndarray:
    """A Byzantine worker's answer (for testing detection): noise, a scaled copy, or logits pushed
    towards another class by far more than the honest spread."""
    rng = np.random.default_rng(req_id)
    spread = float(np.abs(y).max()) + 1.0
    if kind == "random":
        return (rng.normal(size=y.shape) * 3 * spread).astype(np.float32)
    if kind == "scale":
        return (-2.0 * y).astype(np.float32)
    top = y.argmax(axis=1)
    push = np.zeros_like(y)
    push[np.arange(len(y)), top] = -spread
    push[np.arange(len(y)), (top + 1) % y.shape[1]] = spread
    return (y + 4 * push).astype(np.float32)


@dataclass
class WorkerState:
    """What one master connection configured."""
    scheme: Scheme
    placement: str
    alpha: float
    wire_dtype: str
    compute: Any
    dataset: np.ndarray | None = None


@dataclass
class Worker:
    token: bytes
    limits: Limits = field(default_factory=Limits)
    bundle: tuple[dict, dict[str, np.ndarray], str] | None = None  # (info, arrays, digest) from --bundle
    behaviour: Behaviour | None = None
    data_dir: str | None = None
    ssl_context: Any = None
    name: str = "worker"
    lie: str | None = None  # scenarios/tests only: "random", "scale" or "adversarial" wrong results

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecc-compute")
        self.server: asyncio.base_events.Server | None = None
        self.stats = {"connections": 0, "refused": 0, "requests": 0, "errors": 0, "cancelled": 0}
        self._datasets: dict[str, np.ndarray] = {}

    # -- server lifecycle ---------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        single_threaded_blas()  # process-wide, see runtime/blas.py
        self.server = await asyncio.start_server(self._serve, host, port, ssl=self.ssl_context,
                                                 limit=1 << 18, ssl_handshake_timeout=self.limits.handshake_timeout if self.ssl_context else None)
        bound = self.server.sockets[0].getsockname()[1]
        log.info("%s listening on %s:%d (torch available: %s)", self.name, host, bound, torch_available())
        return bound

    async def serve_forever(self) -> None:
        assert self.server is not None
        async with self.server:
            await self.server.serve_forever()

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- one master connection ----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        comm = Comm(reader, writer, self.limits.max_frame)
        try:
            if not await self._handshake(comm):
                return
            self.stats["connections"] += 1
            await self._session(comm)
        except CommClosedError as e:
            log.info("connection closed: %s", e)
        except Exception:  # never let one connection take the server down
            log.exception("unexpected error on connection from %s", comm.peer)
        finally:
            comm.abort()

    async def _handshake(self, comm: Comm) -> bool:
        nonce = auth.new_nonce()
        caps = {"placements": ["encoded", "plain", "shared"] if torch_available() else ["encoded", "plain"], "wire_dtypes": ["f4", "f2"],
                "torch": torch_available(), "max_frame": self.limits.max_frame, "max_batch": self.limits.max_batch,
                "max_in_flight": self.limits.max_in_flight, "proto_minor": PROTOCOL_MINOR}
        await comm.write(Hello(PROTOCOL_VERSION, nonce, caps, self.bundle[2] if self.bundle else None))
        comm.decoder.max_frame = PREAUTH_MAX_FRAME  # an unauthenticated peer gets no big buffers
        try:
            msg = await comm.read(timeout=self.limits.handshake_timeout)
        except asyncio.TimeoutError:
            return await self._refuse(comm, "auth", f"no authentication within {self.limits.handshake_timeout:g} s")
        except RemoteProtocolError as e:
            return await self._refuse(comm, "auth", f"invalid handshake frame: {e}")
        except CommClosedError:
            return await self._refuse(comm, None, "closed during the handshake")
        if not isinstance(msg, Auth):
            return await self._refuse(comm, "auth", f"expected auth, got {msg.TYPE}")
        if msg.proto != PROTOCOL_VERSION:
            await self._send_error(comm, "version", f"protocol version {msg.proto} not supported (worker speaks {PROTOCOL_VERSION})")
            return await self._refuse(comm, None, f"unsupported protocol version {msg.proto}")
        if not auth.verify(auth.master_mac(self.token, nonce, msg.nonce), msg.mac):
            await self._send_error(comm, "auth", "authentication failed")
            return await self._refuse(comm, None, "wrong token (HMAC mismatch)")
        comm.decoder.max_frame = self.limits.max_frame
        await comm.write(Welcome(auth.worker_mac(self.token, msg.nonce, nonce)))
        log.info("master %s authenticated", comm.peer)
        return True

    async def _refuse(self, comm: Comm, code: str | None, why: str) -> bool:
        """Log, tell the peer why (when `code` is set), and drop it."""
        self.stats["refused"] += 1
        log.warning("refused peer %s: %s", comm.peer, why)
        if code:
            await self._send_error(comm, code, why)
        comm.abort()
        return False

    async def _send_error(self, comm: Comm, code: str, message: str, req_id: int | None = None) -> None:
        self.stats["errors"] += 1
        try:
            await comm.write(Error(code, message[:1000], req_id))
        except CommClosedError:
            pass

    async def _session(self, comm: Comm) -> None:
        state: WorkerState | None = None
        tasks: dict[int, asyncio.Task] = {}  # requests waiting (injected delay) or computing, by id
        try:
            while True:
                try:
                    msg = await comm.read(timeout=self.limits.idle_timeout)
                except asyncio.TimeoutError:
                    log.info("dropping idle master %s", comm.peer)
                    return
                except FatalProtocolError as e:
                    await self._send_error(comm, "limit", str(e))
                    log.warning("closing %s: %s", comm.peer, e)
                    return
                except RemoteProtocolError as e:  # the frame was whole: answer and keep serving
                    log.warning("bad frame from %s: %s", comm.peer, e)
                    await self._send_error(comm, "bad_request", str(e))
                    continue
                if isinstance(msg, Ping):
                    await comm.write(Pong(msg.seq))
                elif isinstance(msg, Cancel):
                    task = tasks.pop(msg.id, None)
                    if task is not None:  # not answered yet: its result would only arrive late
                        task.cancel()
                        self.stats["cancelled"] += 1
                elif isinstance(msg, Configure):
                    try:
                        state = await asyncio.get_running_loop().run_in_executor(self.pool, self._configure, msg)
                    except (EdgeccError, ValueError) as e:
                        await self._send_error(comm, "bad_request", f"configure refused: {e}")
                        continue
                    await comm.write(Configured(msg.digest))
                    log.info("configured by %s: %s, %s placement, alpha=%g", comm.peer, state.scheme.label(), state.placement, state.alpha)
                elif isinstance(msg, Compute):
                    if state is None:
                        await self._send_error(comm, "not_configured", "configure the worker before sending compute", msg.id)
                    elif msg.id in tasks:  # two answers for one id could not be told apart
                        await self._send_error(comm, "bad_request", f"request id {msg.id} is already in flight", msg.id)
                    elif len(tasks) >= self.limits.max_in_flight:
                        await self._send_error(comm, "busy", f"more than {self.limits.max_in_flight} requests in flight", msg.id)
                    elif self._runs_inline(state, msg):  # no sleep, no thread: a Task would only add loop turns
                        await self._compute(comm, state, msg)
                    else:
                        task = asyncio.create_task(self._compute(comm, state, msg))
                        tasks[msg.id] = task
                        task.add_done_callback(lambda t, i=msg.id: tasks.pop(i, None) if tasks.get(i) is t else None)
                else:
                    await self._send_error(comm, "bad_request", f"unexpected message {msg.TYPE!r} from a master")
        finally:
            for t in tasks.values():
                t.cancel()

    # -- configuration and compute -------------------------------------------------------------
    def _configure(self, msg: Configure) -> WorkerState:
        scheme = Scheme.from_dict(msg.scheme)
        if msg.arrays is None:
            if not self.bundle or self.bundle[2] != msg.digest:
                raise EdgeccError(f"no arrays sent and this worker does not hold bundle {msg.digest[:12]}")
            arrays = self.bundle[1]
        else:
            arrays = {str(k): np.array(unpack_array(v, f"arrays[{k}]", dtypes=("f4",), max_elements=1 << 25))
                      for k, v in msg.arrays.items()}
            if array_digest(arrays) != msg.digest:
                raise EdgeccError("arrays do not match their digest")
        dataset = None
        if msg.placement == "shared":
            if not torch_available():
                raise EdgeccError("shared-dataset placement needs torch on the worker (pip install 'edgecc[ml]')")
            from .shared_compute import SharedCompute

            compute = SharedCompute(scheme, arrays, msg.alpha)
            if msg.dataset is not None:
                if msg.dataset not in SHARED_DATASETS:  # names only: a master must not pick files on the worker
                    raise EdgeccError(f"dataset must be one of {SHARED_DATASETS}, got {msg.dataset!r}")
                dataset = self._dataset(msg.dataset)
        elif msg.placement == "plain":  # the centralized MLP in numpy, or the CNN where torch is installed
            compute = plain_compute(arrays)
        else:
            compute = EncodedCompute(scheme, arrays)
        return WorkerState(scheme, msg.placement, float(msg.alpha), msg.wire_dtype, compute, dataset)

    def _dataset(self, name: str) -> np.ndarray:
        if name not in self._datasets:
            from ..data import load_images

            self._datasets[name] = load_images(name, self.data_dir)[0]
        return self._datasets[name]

    def _inputs(self, state: WorkerState, msg: Compute) -> tuple:
        """Validate the request's arrays against the configuration; returns the compute arguments."""
        s, B = state.scheme, None
        lim = self.limits.max_batch
        if state.placement in ("encoded", "plain"):
            if msg.x is None or msg.images is not None or msg.indices is not None:
                raise RemoteProtocolError("encoded placement: send x (and v for H_S), not images or indices")
            x = unpack_array(msg.x, "x", shape=(None, 28, 28))
            B = x.shape[0]
            v = None
            if s.computation == "hs" and state.placement == "encoded":
                if msg.v is None:
                    raise RemoteProtocolError("H_S needs v (B, P+1, 28, 28)")
                v = unpack_array(msg.v, "v", shape=(B, s.P + 1, 28, 28)).astype(np.float32, copy=False)
            elif msg.v is not None:
                raise RemoteProtocolError("only H_S in the encoded placement takes v")
            args = (x.astype(np.float32, copy=False), v)
        else:
            if (msg.images is None) == (msg.indices is None) or msg.x is not None:
                raise RemoteProtocolError("shared placement: send exactly one of images or indices")
            if msg.images is not None:
                images = unpack_array(msg.images, "images", dtypes=("u1",), shape=(None, s.K, 28, 28))
            else:
                if state.dataset is None:
                    raise RemoteProtocolError("indices sent but no dataset configured")
                idx = unpack_array(msg.indices, "indices", dtypes=("i4",), shape=(None, s.K))
                if idx.size and (idx.min() < 0 or idx.max() >= state.dataset.shape[0]):
                    raise RemoteProtocolError(f"indices out of range 0..{state.dataset.shape[0] - 1}")
                images = state.dataset[idx]
            B = images.shape[0]
            args = (images,)
        if B < 1 or B > lim:
            raise RemoteProtocolError(f"batch of {B} groups outside 1..{lim}")
        return args

    def _runs_inline(self, state: WorkerState, msg: Compute) -> bool:
        """Whether `_compute` finishes without waiting: small encoded/plain work and no injected delay."""
        if self.behaviour is not None or state.placement == "shared":
            return False
        x = msg.x
        shape = x.get("shape") if isinstance(x, dict) else None
        return isinstance(shape, list) and bool(shape) and isinstance(shape[0], int) and shape[0] <= INLINE_GROUPS

    async def _compute(self, comm: Comm, state: WorkerState, msg: Compute) -> None:
        self.stats["requests"] += 1
        try:
            args = self._inputs(state, msg)
        except RemoteProtocolError as e:
            await self._send_error(comm, "bad_request", str(e), msg.id)
            return
        except Exception as e:  # a validation gap must cost one request, never the task
            log.exception("unexpected error validating request %d", msg.id)
            await self._send_error(comm, "bad_request", f"invalid request: {type(e).__name__}", msg.id)
            return
        if self.behaviour is not None:
            delay = self.behaviour(msg.id, time.monotonic() - self.started)
            if delay is None:
                return  # emulated failure: this request is never answered
            if delay > 0:
                await asyncio.sleep(delay)
        try:
            if state.placement == "shared" or args[0].shape[0] > INLINE_GROUPS:
                y = await asyncio.get_running_loop().run_in_executor(self.pool, state.compute, *args)
            else:  # a small GEMM (~4 µs per group) costs less than the thread hop (45 µs p50, ms at p99 under load)
                y = state.compute(*args)
        except Exception as e:
            log.exception("compute failed for request %d", msg.id)
            await self._send_error(comm, "internal", f"compute failed: {type(e).__name__}: {e}", msg.id)
            return
        if self.lie:
            y = lie(self.lie, y, msg.id)
        try:
            await comm.write(Result(msg.id, pack_array(y, state.wire_dtype)))
        except CommClosedError:
            pass
