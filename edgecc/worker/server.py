"""The worker: an asyncio server that authenticates a master, takes its role, and computes.

`configure` names a compute spec (protocol/compute_spec.py); COMPUTES maps its kind to the class
that runs it, imported on use, so the torch-free kinds ("affine", "affine-hs", "mlp") never load
torch: the H_B map is one GEMM. Requests are validated against the spec. Scenarios and tests attach
injected delays, failures and lies as `faults` (worker/faults.py), around the computation.

One event loop serves every connection and never waits for a computation or a configuration, so a
session always reads (docs/protocol.md §7.2, §10): it answers `ping` and `cancel` as they arrive;
a `configure` is built on a configure thread while the requests sent after it wait, in order, for
its answer; requests too large for the loop wait in the worker's compute queue (worker/compute_queue.py)
for its one compute thread, and a `cancel` withdraws them from there. Small torch-free requests
compute on the loop itself (below).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle import digest as array_digest
from ..errors import EdgeccError
from ..protocol.compute_spec import KINDS, ComputeSpec
from ..protocol.frames import FatalProtocolError, LocalProtocolError, RemoteProtocolError, pack_array, unpack_array
from ..protocol.images import dims
from ..protocol.messages import Cancel, Compute, Configure, Configured, Error, Ping, Pong, Result, dataset_cap
from ..protocol.worker_handshake import PREAUTH_MAX_FRAME, HandshakeRefused, WorkerHandshake, worker_caps
from ..blas import single_threaded_blas
from .compute_queue import ComputeQueue
from .faults import Faults
from ..protocol.limits import Limits
from ..comm import Comm, CommClosedError, Listener, listen

log = logging.getLogger("edgecc.worker")

__all__ = ["PREAUTH_MAX_FRAME", "HeldDataset", "Worker", "WorkerState"]

# the built-in names a configure may still give for a dataset (masters of before `edgecc worker --dataset`);
# otherwise a configure names the dataset this worker announced, by its digest
SHARED_DATASETS = ("sample", "test", "train")
# A request computes on the event loop when it is small enough that a thread hop costs more than the
# work: a 256-group H_B GEMM takes ~0.1 ms, the hop 45 µs at p50 and milliseconds at p99 under load.
# Both bounds hold: at most INLINE_GROUPS groups and INLINE_MACS multiply-adds (~1-4 ms of the loop on
# the 2-core VM), so the default MLP (178 k per group) keeps 256 groups inline while a wide MLP's
# requests go to the compute thread instead of holding every connection's pings.
INLINE_GROUPS = 256
INLINE_MACS = 1 << 26
CONFIGURE_THREADS = 2  # one master's configure does not wait behind another's
IDLE_CHECKS = 8  # the idle timeout is checked this many times per period (§10: any byte is activity)

# compute kind (protocol/compute_spec.py) -> (module, class) that runs it; each class has
# from_spec(spec, arrays). Imported on first use: the torch-free kinds never import torch.
COMPUTES: dict[str, tuple[str, str]] = {
    "affine": (".compute", "AffineCompute"),
    "affine-hs": (".compute", "AffineCompute"),
    "mlp": (".compute", "PlainCompute"),
    "cnn": (".plain_cnn", "PlainTorchCompute"),
    "resnet18": (".plain_cnn", "PlainTorchCompute"),
    "aicc-shared": (".shared_compute", "SharedCompute"),
    "user": (".user_base", "UserBase"),  # the operator's own base (--base): its `compute`, not from_spec
}
assert set(COMPUTES) == set(KINDS), "every compute kind needs its class"


def torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def macs_per_group(spec: ComputeSpec) -> int:
    """Multiply-adds one group costs in a torch-free kind (what decides whether it computes inline)."""
    n = math.prod(spec.in_shape)
    if spec.kind == "affine":
        return n * spec.out
    if spec.kind == "affine-hs":
        return n * spec.out + 2 * spec["P"] * n  # the map, and Horner's rule over V_0..V_P
    if spec.kind == "mlp":
        widths = [n, *spec["hidden"], spec.out]
        return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    raise ValueError(f"no inline cost for the {spec.kind!r} compute")


def public_source_name(source: str) -> str:
    """The name a worker announces for its --dataset `source`: the source without the directories of its
    location (the hello goes out before the master authenticates, so it must not tell anyone a local
    path): 'npz:/home/u/data/x.npz?size=32x32' -> 'npz:x.npz?size=32x32', 'folder:/a/b/c' -> 'folder:c',
    '/data/x.npz' -> 'x.npz'; built-in names ('sample', 'test', ...) and the options are kept."""
    text, sep, query = source.strip().partition("?")
    kind, colon, location = text.partition(":")
    if not (colon and len(kind) > 1 and kind.replace("-", "").isalnum()):  # not KIND:LOCATION but a bare name
        kind, colon, location = "", "", text  # or path ('sample', '/data/a:b/x.npz', a Windows drive's 'C:\\x.npz')
    base = location.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return f"{kind}{colon}{base or location[:1]}{sep}{query}"


@dataclass(frozen=True)
class HeldDataset:
    """The images a worker's operator gave it (`edgecc worker --dataset SOURCE`, Remark 1's shared
    dataset): loaded once, announced in `hello.caps.dataset` (name, count, (C, H, W), digest), and
    looked up by the indices of requests whose configure names its digest. Only the operator picks
    it: a master can name it, never a file."""
    name: str
    images: np.ndarray  # (n, C, H, W) uint8, C-contiguous, read-only
    cap: dict

    @classmethod
    def load(cls, source: str, data_dir: str | None = None) -> "HeldDataset":
        """The test split of `source` (any edgecc.datasets source; `train` for Fashion-MNIST's training set)."""
        from ..datasets import load

        images = np.ascontiguousarray(load(source, "test", data_dir).images)
        images.flags.writeable = False
        return cls(source, images, dataset_cap(public_source_name(source), images))

    @property
    def digest(self) -> str:
        return self.cap["digest"]

    def describe(self) -> str:
        return (f"{self.name!r} ({self.images.shape[0]} images of {'×'.join(map(str, self.images.shape[1:]))}, "
                f"digest {self.digest[:12]}…)")


@dataclass
class WorkerState:
    """What one master connection configured."""
    spec: ComputeSpec
    scheme: str  # the scheme's name and its parameters for this worker: for logs only
    params: dict
    wire_dtype: str
    compute: Any
    dataset: np.ndarray | None = None
    macs: int | None = field(init=False, default=None)  # per group; None: never inline (torch)

    def __post_init__(self) -> None:
        self.macs = None if self.spec.needs_torch else macs_per_group(self.spec)

    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in list(self.params.items())[:8])
        return f"{self.scheme} ({shown}), compute {self.spec.kind}"


@dataclass
class Worker:
    token: bytes
    limits: Limits = field(default_factory=Limits)
    bundle: tuple[dict, dict[str, np.ndarray], str] | None = None  # (info, arrays, digest) from --bundle
    faults: Faults | None = None  # scenarios/tests only: injected delays, failures and lies (worker/faults.py)
    data_dir: str | None = None
    ssl_context: Any = None
    name: str = "worker"
    dataset: HeldDataset | None = None  # --dataset: announced in hello, indexed by requests' indices
    base: Any = None  # --base: the operator's own base model (worker/user_base.UserBase), announced in hello

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        if self.faults is not None:  # injected delays count from the worker's start
            self.faults.started = self.started
        self.queue = ComputeQueue()  # every connection's large requests, in order, on one thread
        # configurations are built here, never on the compute thread, so that they do not wait behind requests
        self.configure_pool = ThreadPoolExecutor(max_workers=CONFIGURE_THREADS, thread_name_prefix="edgecc-configure")
        self.listener: Listener | None = None
        self.sessions: set[asyncio.Task] = set()  # one per master connection
        self.stats = {"connections": 0, "refused": 0, "requests": 0, "errors": 0, "cancelled": 0}
        self._datasets: dict[str, np.ndarray] = {}
        self._datasets_lock = threading.Lock()  # two configure threads may ask for the same dataset

    # -- server lifecycle ---------------------------------------------------------------------
    async def start(self, address: str) -> str:
        """Listen at `address` (tcp://HOST:PORT, a bare HOST:PORT, tls://... with `ssl_context`, mem://NAME);
        returns the address masters reach it at, with the bound port filled in."""
        single_threaded_blas()  # process-wide, see blas.py
        self.listener = await listen(address, self._serve, ssl_context=self.ssl_context, max_frame=self.limits.max_frame,
                                     handshake_timeout=self.limits.handshake_timeout)
        log.info("%s listening on %s (torch available: %s)", self.name, self.listener.address, torch_available())
        return self.listener.address

    async def serve_forever(self) -> None:
        assert self.listener is not None
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening and end every master's session."""
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        for t in list(self.sessions):
            t.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        self.queue.close()
        self.configure_pool.shutdown(wait=False, cancel_futures=True)

    # -- one master connection ----------------------------------------------------------------
    async def _serve(self, comm: Comm) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
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
            self.sessions.discard(task)

    async def _handshake(self, comm: Comm) -> bool:
        """Drive the worker's handshake (protocol/worker_handshake.py) over `comm`: True once welcome is sent."""
        caps = worker_caps(self.limits, torch_available(), self.dataset.cap if self.dataset else None,
                           self.base.cap if self.base else None)
        hs = WorkerHandshake(self.token, caps,
                             bundle=self.bundle[2] if self.bundle else None, handshake_timeout=self.limits.handshake_timeout)
        try:
            for out in hs.start():
                await comm.write(out)
            comm.set_read_limit(hs.read_limit)  # an unauthenticated peer gets no big buffers
            while not hs.done:
                try:
                    msg = await comm.read(timeout=hs.timeout)
                except asyncio.TimeoutError:
                    raise hs.timed_out() from None
                except RemoteProtocolError as e:
                    raise hs.invalid(e) from None
                except CommClosedError:
                    raise hs.closed() from None
                replies = hs.receive(msg)
                if hs.done:  # from welcome on, the session's limit (§3)
                    comm.set_read_limit(self.limits.max_frame)
                for out in replies:
                    await comm.write(out)
        except HandshakeRefused as e:
            return await self._refuse(comm, e)
        log.info("master %s authenticated", comm.peer)
        return True

    async def _refuse(self, comm: Comm, refusal: HandshakeRefused) -> bool:
        """Log, tell the peer why (the refusal's error frame, if any), and drop it."""
        self.stats["refused"] += 1
        log.warning("refused peer %s: %s", comm.peer, refusal)
        if refusal.reply is not None:
            await self._send(comm, refusal.reply)
        comm.abort()
        return False

    async def _send_error(self, comm: Comm, code: str, message: str, req_id: int | None = None) -> None:
        await self._send(comm, Error(code, message[:1000], req_id))

    async def _send(self, comm: Comm, error: Error) -> None:
        self.stats["errors"] += 1
        try:
            await comm.write(error)
        except CommClosedError:
            pass

    async def _session(self, comm: Comm) -> None:
        await Session(self, comm).run()

    # -- configuration and compute -------------------------------------------------------------
    def _configure(self, msg: Configure) -> WorkerState:
        """Build the configuration `msg` names (on a configure thread: arrays, digest, the compute)."""
        spec = msg.spec()
        if spec.needs_torch and not torch_available():
            raise EdgeccError(f"the {spec.kind!r} compute needs torch on the worker (pip install 'edgecc[ml]')")
        if spec.kind == "user":  # the base this worker's operator loaded, named by the digest it announced
            if self.base is None:
                raise EdgeccError("the 'user' compute runs the worker's own base model, and this worker has none "
                                  "(its operator gives it one with `edgecc worker --base MODULE:CALLABLE`)")
            return WorkerState(spec, msg.scheme, dict(msg.params), msg.wire_dtype, self.base.compute(spec, msg.digest))
        if msg.arrays is None:
            if not self.bundle or self.bundle[2] != msg.digest:
                raise EdgeccError(f"no arrays sent and this worker does not hold bundle {msg.digest[:12]}")
            arrays = self.bundle[1]
        else:
            arrays = {str(k): np.array(unpack_array(v, f"arrays[{k}]", dtypes=("f4",), max_elements=1 << 25))
                      for k, v in msg.arrays.items()}
            if array_digest(arrays) != msg.digest:
                raise EdgeccError("arrays do not match their digest")
        dataset = None if msg.dataset is None else self._configured_dataset(msg.dataset, spec)  # aicc-shared only
        module, name = COMPUTES[spec.kind]
        compute = getattr(importlib.import_module(module, __package__), name).from_spec(spec, arrays)
        return WorkerState(spec, msg.scheme, dict(msg.params), msg.wire_dtype, compute, dataset)

    def _configured_dataset(self, ref: str, spec: ComputeSpec) -> np.ndarray:
        """The images `configure.dataset` names, (n, *in_shape): the dataset this worker announced (by its
        digest), or a built-in name. Never a path: a master must not pick files on the worker."""
        held = self.dataset
        if held is not None and ref == held.digest:
            images, what = held.images, f"this worker's dataset {held.describe()}"
        elif ref in SHARED_DATASETS:
            images, what = self._dataset(ref), f"the built-in dataset {ref!r}"
        elif held is None:
            raise EdgeccError(f"dataset {ref[:16]!r}: this worker holds no dataset to take indices into (its operator "
                              "gives it one with `edgecc worker --dataset SOURCE`)")
        else:
            raise EdgeccError(f"dataset {ref[:16]!r}… is not the one this worker holds, {held.describe()}: a master "
                              "names only the dataset a worker announced in its hello")
        shape = dims(images.shape[1:]) if images.ndim == 4 else tuple(images.shape[1:])  # (n, C, H, W) held, (n, *dims) built-in
        if shape != spec.in_shape:
            raise EdgeccError(f"{what} has images of {'×'.join(map(str, images.shape[1:]))}; the compute takes "
                              f"{'×'.join(map(str, spec.in_shape))}")
        return images.reshape(images.shape[0], *spec.in_shape)

    def _dataset(self, name: str) -> np.ndarray:
        with self._datasets_lock:
            if name not in self._datasets:
                from ..datasets import load_arrays

                self._datasets[name] = load_arrays(name, "test", self.data_dir)[0]
            return self._datasets[name]

    def _inputs(self, state: WorkerState, msg: Compute) -> tuple:
        """Validate the request's arrays against the compute spec; returns the compute arguments."""
        spec, fields = state.spec, {"x": msg.x, "v": msg.v, "images": msg.images, "indices": msg.indices}
        given = {k for k, v in fields.items() if v is not None}
        alt = next((a for a in spec.inputs() if {i.name for i in a} == given), None)
        if alt is None:
            raise RemoteProtocolError(f"the {spec.kind!r} compute takes {spec.describe_inputs()}, "
                                      f"got {', '.join(sorted(given)) or 'no input'}")
        args, B = [], None
        for inp in alt:  # each field on its own: x and v may differ in dtype (§7.3); floats are widened
            a = unpack_array(fields[inp.name], inp.name, dtypes=inp.dtypes, shape=(B, *inp.shape))
            B = a.shape[0]
            if inp.name == "indices":  # rows of the dataset this worker holds
                if state.dataset is None:
                    raise RemoteProtocolError("indices sent but no dataset configured")
                n = state.dataset.shape[0]
                if a.size and (a.min() < 0 or a.max() >= n):
                    bad = int(a.min() if a.min() < 0 else a.max())
                    raise RemoteProtocolError(f"index {bad} out of range: the dataset holds {n} images (0..{n - 1})")
                a = state.dataset[a]
            elif a.dtype.kind == "f":
                a = a.astype(np.float32, copy=False)
            args.append(a)
        if B < 1 or B > self.limits.max_batch:
            raise RemoteProtocolError(f"batch of {B} groups outside 1..{self.limits.max_batch}")
        return tuple(args)

    def _inline(self, state: WorkerState, groups: int) -> bool:
        """Whether `groups` groups compute on the event loop: torch-free and small (INLINE_GROUPS, INLINE_MACS)."""
        return state.macs is not None and groups <= INLINE_GROUPS and groups * state.macs <= INLINE_MACS

    def _runs_inline(self, state: WorkerState, msg: Compute) -> bool:
        """Whether a request finishes without waiting: small torch-free work and no injected delay."""
        if self.faults is not None and self.faults.waits:
            return False
        x = msg.x
        shape = x.get("shape") if isinstance(x, dict) else None
        return (isinstance(shape, list) and bool(shape) and type(shape[0]) is int and shape[0] >= 0
                and self._inline(state, shape[0]))

    async def _request(self, comm: Comm, state: WorkerState, msg: Compute) -> None:
        """One request's life: validate, let the faults hold it, compute, let them tamper, answer."""
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
        if self.faults is not None and not await self.faults.hold(msg.id):
            return  # an injected failure: this request is never answered
        try:
            y = await self._compute(state, args)
        except Exception as e:
            log.exception("compute failed for request %d", msg.id)
            await self._send_error(comm, "internal", f"compute failed: {type(e).__name__}: {e}", msg.id)
            return
        if self.faults is not None:
            y = self.faults.tamper(msg.id, y)
        try:
            await comm.write(Result(msg.id, pack_array(y, state.wire_dtype)))
        except CommClosedError:
            pass
        except LocalProtocolError as e:  # B x out values that do not fit in max_frame: this id cannot be answered
            await self._send_error(comm, "internal", f"result not sent: {e}", msg.id)

    async def _compute(self, state: WorkerState, args: tuple) -> np.ndarray:
        """The configured computation on validated inputs: (B, out) float32."""
        if self._inline(state, args[0].shape[0]):
            return state.compute(*args)
        return await self.queue.run(state.compute, *args)


class Session:
    """One authenticated master connection (docs/protocol.md §7, §8): it reads every frame as it
    arrives and never waits for a configuration or a computation to do so.

    A request is *held* from its arrival until it is answered, refused or cancelled; `max_in_flight`
    counts the held requests, and their ids must differ (§7.3). It is held in one of three places:
    `waiting`, in order of arrival behind a configure being applied (a configure applies in order:
    what follows it is checked against the configuration it leaves, §7.2); `requests`, as a task
    (an injected delay, the compute queue, the compute thread); or, for a moment, inline on the
    loop. A cancel ends it in the first two at once and frees its id and its slot (§5.6a).
    """

    def __init__(self, worker: Worker, comm: Comm):
        self.worker, self.comm = worker, comm
        self.state: WorkerState | None = None
        self.requests: dict[int, asyncio.Task] = {}
        self.waiting: deque[Configure | Compute] = deque()
        self.waiting_ids: set[int] = set()
        self.configuring: asyncio.Task | None = None  # applies a configure, then releases what waited for it

    async def run(self) -> None:
        w, comm = self.worker, self.comm
        try:
            while True:
                try:
                    msg = await self._read()
                except FatalProtocolError as e:
                    await w._send_error(comm, "limit", str(e))
                    log.warning("closing %s: %s", comm.peer, e)
                    return
                except RemoteProtocolError as e:  # the frame was whole: answer and keep serving
                    log.warning("bad frame from %s: %s", comm.peer, e)
                    await w._send_error(comm, "bad_request", str(e))
                    continue
                if msg is None:
                    log.info("dropping idle master %s", comm.peer)
                    return
                if isinstance(msg, Ping):
                    await comm.write(Pong(msg.seq))
                elif isinstance(msg, Cancel):
                    self._cancel(msg.id)
                elif isinstance(msg, Configure):
                    if self.configuring is not None:
                        self.waiting.append(msg)
                    else:
                        self.configuring = self._spawn(self._configure(msg))
                elif isinstance(msg, Compute):
                    if self.configuring is not None:
                        await self._wait(msg)
                    else:
                        await self._admit(msg)
                else:
                    await w._send_error(comm, "bad_request", f"unexpected message {msg.TYPE!r} from a master")
        finally:
            if self.configuring is not None:
                self.configuring.cancel()
            for t in self.requests.values():
                t.cancel()
            self.waiting.clear()

    async def _read(self):
        """The next message; None once no byte at all has arrived for idle_timeout. The bytes of a
        frame still arriving count (§10): a large frame on a slow link comes from a live master."""
        comm, idle = self.comm, self.worker.limits.idle_timeout
        loop = asyncio.get_running_loop()
        heard, heard_at = comm.bytes_received, loop.time()
        while True:
            try:
                return await comm.read(timeout=idle / IDLE_CHECKS)
            except asyncio.TimeoutError:  # what arrived of a frame stays buffered in comm
                now = loop.time()
                if comm.bytes_received != heard:
                    heard, heard_at = comm.bytes_received, now
                elif now - heard_at >= idle:
                    return None

    @staticmethod
    def _spawn(coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        task.add_done_callback(_log_failure)
        return task

    def _cancel(self, req_id: int) -> None:
        task = self.requests.pop(req_id, None)
        if task is not None:  # in a delay, the queue or the thread: its result would only arrive late
            task.cancel()
        elif req_id in self.waiting_ids:
            self.waiting_ids.discard(req_id)
            self.waiting.remove(next(m for m in self.waiting if isinstance(m, Compute) and m.id == req_id))
        else:  # answered already, or never received: a cancel races the result (§5.6a)
            return
        self.worker.stats["cancelled"] += 1

    async def _wait(self, msg: Compute) -> None:
        """A request that arrived while a configure is applied: §7.3's checks 2 and 3 now; it then
        waits for the configure's answer, and checks 1 and 4 follow against the configuration it leaves."""
        w = self.worker
        if msg.id in self.requests or msg.id in self.waiting_ids:
            await w._send_error(self.comm, "bad_request", f"request id {msg.id} is already in flight", msg.id)
        elif len(self.requests) + len(self.waiting_ids) >= w.limits.max_in_flight:
            await w._send_error(self.comm, "busy", f"more than {w.limits.max_in_flight} requests in flight", msg.id)
        else:
            self.waiting.append(msg)
            self.waiting_ids.add(msg.id)

    async def _admit(self, msg: Compute, checked: bool = False) -> None:
        """§7.3's checks in order (2 and 3 made already when `checked`), then compute inline or start its task."""
        w, comm, state = self.worker, self.comm, self.state
        if state is None:
            await w._send_error(comm, "not_configured", "configure the worker before sending compute", msg.id)
        elif not checked and msg.id in self.requests:  # two answers for one id could not be told apart
            await w._send_error(comm, "bad_request", f"request id {msg.id} is already in flight", msg.id)
        elif not checked and len(self.requests) >= w.limits.max_in_flight:
            await w._send_error(comm, "busy", f"more than {w.limits.max_in_flight} requests in flight", msg.id)
        elif w._runs_inline(state, msg):  # no sleep, no thread: a Task would only add loop turns
            await w._request(comm, state, msg)
        else:
            task = self._spawn(w._request(comm, state, msg))
            self.requests[msg.id] = task
            task.add_done_callback(lambda t, i=msg.id: self.requests.pop(i, None) if self.requests.get(i) is t else None)

    async def _configure(self, msg: Configure | None) -> None:
        """Apply `msg`, then release what waited for it, in order, up to the next configure; and so on.
        The session reads on meanwhile, and a compute it reads joins `waiting` until this task ends."""
        try:
            while msg is not None:
                await self._apply(msg)
                msg = None
                while self.waiting:
                    m = self.waiting.popleft()
                    if isinstance(m, Configure):
                        msg = m
                        break
                    self.waiting_ids.discard(m.id)
                    await self._admit(m, checked=True)
        except CommClosedError:
            pass  # the session's read finds the connection gone
        finally:
            self.configuring = None  # no await since `waiting` was found empty: nothing slips in between

    async def _apply(self, msg: Configure) -> None:
        """Build the configuration off the loop, then swap it in and answer (§7.2)."""
        w, comm = self.worker, self.comm
        try:
            state = await asyncio.get_running_loop().run_in_executor(w.configure_pool, w._configure, msg)
        except (EdgeccError, ValueError) as e:
            await w._send_error(comm, "bad_request", f"configure refused: {e}")
            return
        except Exception as e:  # a gap in the checks: the configuration is refused, the worker serves on
            log.exception("configure from %s failed", comm.peer)
            await w._send_error(comm, "bad_request", f"configure refused: {type(e).__name__}: {e}")
            return
        self.state = state  # requests held already keep the configuration they were checked against
        await comm.write(Configured(msg.digest))
        log.info("configured by %s: %s", comm.peer, state.label())


def _log_failure(task: asyncio.Task) -> None:
    """A session's task must not end with an exception nobody reads (asyncio would log it late, if at all)."""
    if not task.cancelled() and task.exception() is not None:
        e = task.exception()
        log.error("worker task failed: %s", e, exc_info=(type(e), e, e.__traceback__))
