"""The worker: an asyncio server that authenticates a master, takes its role, and computes.

`configure` names a compute spec (protocol/compute_spec.py); COMPUTES maps its kind to the class
that runs it, imported on use, so the torch-free kinds ("affine", "affine-hs", "mlp") never load
torch: the H_B map is one GEMM. Requests are validated against the spec; large ones compute in a
thread so the event loop keeps answering pings and reading frames. Scenarios and tests attach
injected delays, failures and lies as `faults` (worker/faults.py), around the computation.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle import digest as array_digest
from ..errors import EdgeccError
from ..protocol import auth
from ..protocol.compute_spec import KINDS, NEEDS_TORCH, ComputeSpec
from ..protocol.frames import FatalProtocolError, RemoteProtocolError, pack_array, unpack_array
from ..protocol.messages import (PROTOCOL_MINOR, PROTOCOL_VERSION, Auth, Cancel, Compute, Configure, Configured, Error,
                                 Hello, Ping, Pong, Result, Welcome, version_mismatch)
from ..blas import single_threaded_blas
from .faults import Faults
from ..protocol.limits import Limits
from ..comm import Comm, CommClosedError, Listener, listen

log = logging.getLogger("edgecc.worker")

SHARED_DATASETS = ("sample", "test", "train")
PREAUTH_MAX_FRAME = 4096  # an auth frame is ~100 bytes
INLINE_GROUPS = 256  # encoded/plain requests up to this many groups compute on the event loop

# compute kind (protocol/compute_spec.py) -> (module, class) that runs it; each class has
# from_spec(spec, arrays). Imported on first use: the torch-free kinds never import torch.
COMPUTES: dict[str, tuple[str, str]] = {
    "affine": (".compute", "AffineCompute"),
    "affine-hs": (".compute", "AffineCompute"),
    "mlp": (".compute", "PlainCompute"),
    "cnn": (".plain_cnn", "PlainCNNCompute"),
    "aicc-shared": (".shared_compute", "SharedCompute"),
}
assert set(COMPUTES) == set(KINDS), "every compute kind needs its class"


def torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class WorkerState:
    """What one master connection configured."""
    spec: ComputeSpec
    scheme: str  # the scheme's name and its parameters for this worker: for logs only
    params: dict
    wire_dtype: str
    compute: Any
    dataset: np.ndarray | None = None

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

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        if self.faults is not None:  # injected delays count from the worker's start
            self.faults.started = self.started
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecc-compute")
        self.listener: Listener | None = None
        self.sessions: set[asyncio.Task] = set()  # one per master connection
        self.stats = {"connections": 0, "refused": 0, "requests": 0, "errors": 0, "cancelled": 0}
        self._datasets: dict[str, np.ndarray] = {}

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
        self.pool.shutdown(wait=False, cancel_futures=True)

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
        nonce = auth.new_nonce()
        torch = torch_available()
        caps = {"placements": ["encoded", "plain", "shared"] if torch else ["encoded", "plain"], "wire_dtypes": ["f4", "f2"],
                "torch": torch, "max_frame": self.limits.max_frame, "max_batch": self.limits.max_batch,
                "max_in_flight": self.limits.max_in_flight, "proto_minor": PROTOCOL_MINOR,
                "computes": [k for k in KINDS if torch or k not in NEEDS_TORCH]}
        await comm.write(Hello(PROTOCOL_VERSION, nonce, caps, self.bundle[2] if self.bundle else None))
        comm.set_read_limit(PREAUTH_MAX_FRAME)  # an unauthenticated peer gets no big buffers
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
            why = version_mismatch("worker", "master", msg.proto)
            await self._send_error(comm, "version", why)
            return await self._refuse(comm, None, f"unsupported protocol version: {why}")
        if not auth.verify(auth.master_mac(self.token, nonce, msg.nonce), msg.mac):
            await self._send_error(comm, "auth", "authentication failed")
            return await self._refuse(comm, None, "wrong token (HMAC mismatch)")
        comm.set_read_limit(self.limits.max_frame)
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
                    log.info("configured by %s: %s", comm.peer, state.label())
                elif isinstance(msg, Compute):
                    if state is None:
                        await self._send_error(comm, "not_configured", "configure the worker before sending compute", msg.id)
                    elif msg.id in tasks:  # two answers for one id could not be told apart
                        await self._send_error(comm, "bad_request", f"request id {msg.id} is already in flight", msg.id)
                    elif len(tasks) >= self.limits.max_in_flight:
                        await self._send_error(comm, "busy", f"more than {self.limits.max_in_flight} requests in flight", msg.id)
                    elif self._runs_inline(state, msg):  # no sleep, no thread: a Task would only add loop turns
                        await self._request(comm, state, msg)
                    else:
                        task = asyncio.create_task(self._request(comm, state, msg))
                        tasks[msg.id] = task
                        task.add_done_callback(lambda t, i=msg.id: tasks.pop(i, None) if tasks.get(i) is t else None)
                else:
                    await self._send_error(comm, "bad_request", f"unexpected message {msg.TYPE!r} from a master")
        finally:
            for t in tasks.values():
                t.cancel()

    # -- configuration and compute -------------------------------------------------------------
    def _configure(self, msg: Configure) -> WorkerState:
        spec = msg.spec()
        if spec.needs_torch and not torch_available():
            raise EdgeccError(f"the {spec.kind!r} compute needs torch on the worker (pip install 'edgecc[ml]')")
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
        if msg.dataset is not None:  # aicc-shared only (Configure.check)
            if msg.dataset not in SHARED_DATASETS:  # names only: a master must not pick files on the worker
                raise EdgeccError(f"dataset must be one of {SHARED_DATASETS}, got {msg.dataset!r}")
            dataset = self._dataset(msg.dataset)
        module, name = COMPUTES[spec.kind]
        compute = getattr(importlib.import_module(module, __package__), name).from_spec(spec, arrays)
        return WorkerState(spec, msg.scheme, dict(msg.params), msg.wire_dtype, compute, dataset)

    def _dataset(self, name: str) -> np.ndarray:
        if name not in self._datasets:
            from ..data import load_images

            self._datasets[name] = load_images(name, self.data_dir)[0]
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
        for inp in alt:
            a = unpack_array(fields[inp.name], inp.name, dtypes=inp.dtypes, shape=(B, *inp.shape))
            B = a.shape[0]
            if inp.name == "indices":  # rows of the dataset this worker holds
                if state.dataset is None:
                    raise RemoteProtocolError("indices sent but no dataset configured")
                if a.size and (a.min() < 0 or a.max() >= state.dataset.shape[0]):
                    raise RemoteProtocolError(f"indices out of range 0..{state.dataset.shape[0] - 1}")
                a = state.dataset[a]
            elif a.dtype.kind == "f":
                a = a.astype(np.float32, copy=False)
            args.append(a)
        if B < 1 or B > self.limits.max_batch:
            raise RemoteProtocolError(f"batch of {B} groups outside 1..{self.limits.max_batch}")
        return tuple(args)

    def _runs_inline(self, state: WorkerState, msg: Compute) -> bool:
        """Whether a request finishes without waiting: small torch-free work and no injected delay."""
        if (self.faults is not None and self.faults.waits) or state.spec.needs_torch:
            return False
        x = msg.x
        shape = x.get("shape") if isinstance(x, dict) else None
        return isinstance(shape, list) and bool(shape) and isinstance(shape[0], int) and shape[0] <= INLINE_GROUPS

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

    async def _compute(self, state: WorkerState, args: tuple) -> np.ndarray:
        """The configured computation on validated inputs: (B, out) float32."""
        if state.spec.needs_torch or args[0].shape[0] > INLINE_GROUPS:
            return await asyncio.get_running_loop().run_in_executor(self.pool, state.compute, *args)
        return state.compute(*args)  # a small GEMM (~4 µs per group) costs less than the thread hop (45 µs p50, ms at p99 under load)
