"""The master: keeps links to N workers, sends each request to all of them, and decodes from
whichever R answer first. Late answers are dropped by request id; every request ends decoded or
failed with a reason, within its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import DecodeError, EdgeccError
from ..protocol import auth
from ..protocol.frames import RemoteProtocolError, encode_frame, unpack_array
from ..protocol.messages import (PROTOCOL_VERSION, Auth, Compute, Configure, Configured, Error, Hello, Ping, Pong,
                                 Result, Welcome)
from .limits import Limits
from .transport import Comm, CommClosedError, connect

log = logging.getLogger("edgecc.master")


SMALL_REQUEST_GROUPS = 4  # requests up to this many groups are latency-bound (see Master.small_encodes)


class AuthError(EdgeccError):
    """The peer failed authentication (wrong token on one side)."""


class RequestFailed(EdgeccError):
    """A request could not be decoded; the message says why."""


@dataclass
class Pending:
    id: int
    groups: int
    future: asyncio.Future
    outstanding: set[int]
    results: dict[int, np.ndarray] = field(default_factory=dict)


class WorkerLink:
    """One worker: connect, authenticate, configure, read results; reconnect with jittered backoff."""

    def __init__(self, master: "Master", index: int, host: str, port: int):
        self.master, self.index, self.host, self.port = master, index, host, port
        self.comm: Comm | None = None
        self.ready = asyncio.Event()
        self.last_seen = 0.0
        self.connects = 0
        self.last_error = ""
        self.task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(self) -> None:
        backoff = 0.05
        while not self.master.closing:
            try:
                comm = await connect(self.host, self.port, self.master.limits.connect_timeout,
                                     self.master.ssl_context, self.master.limits.max_frame)
                try:
                    await self._handshake(comm)
                    self.comm, self.last_seen, backoff = comm, time.monotonic(), 0.05
                    self.connects += 1
                    self.ready.set()
                    log.info("worker %d (%s) ready", self.index, self.address)
                    await asyncio.gather(self._reader(comm), self._heartbeat(comm))
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
                if was_ready and not self.master.closing:
                    log.warning("worker %d (%s) lost: %s", self.index, self.address, self.last_error)
                    self.master._worker_lost(self.index)
            if self.master.closing:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.master.max_backoff)

    async def _handshake(self, comm: Comm) -> None:
        t = self.master.limits.handshake_timeout
        hello = await comm.read(timeout=t)
        if isinstance(hello, Error):
            raise AuthError(f"worker refused: {hello.message}")
        if not isinstance(hello, Hello):
            raise RemoteProtocolError(f"expected hello, got {hello.TYPE}")
        if hello.proto != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"worker speaks protocol {hello.proto}, master speaks {PROTOCOL_VERSION}")
        plan = self.master.plan
        if plan.placement not in hello.caps.get("placements", []):
            raise RemoteProtocolError(f"worker cannot serve the {plan.placement!r} placement (it offers {hello.caps.get('placements')})")
        nonce = auth.new_nonce()
        token = self.master.token
        await comm.write(Auth(PROTOCOL_VERSION, nonce, auth.master_mac(token, hello.nonce, nonce)))
        welcome = await comm.read(timeout=t)
        if isinstance(welcome, Error):
            raise AuthError(f"worker refused the handshake: {welcome.message}")
        if not isinstance(welcome, Welcome) or not auth.verify(auth.worker_mac(token, nonce, hello.nonce), welcome.mac):
            raise AuthError("worker failed to prove the shared token")
        arrays = None if hello.bundle == plan.digest else plan.wire_arrays
        await comm.write(Configure(self.index, plan.alphas[self.index], plan.scheme.to_dict(), plan.placement,
                                   plan.wire_dtype, plan.digest, arrays, self.master.dataset), timeout=60.0)
        reply = await comm.read(timeout=max(t, 60.0))
        if isinstance(reply, Error):
            raise RemoteProtocolError(f"worker refused the configuration: {reply.message}")
        if not isinstance(reply, Configured) or reply.digest != plan.digest:
            raise RemoteProtocolError("worker did not confirm the configuration")

    async def _reader(self, comm: Comm) -> None:
        while True:
            msg = await comm.read()
            self.last_seen = time.monotonic()
            if isinstance(msg, Result):
                self.master._on_result(self.index, msg)
            elif isinstance(msg, Error):
                if msg.id is not None:
                    self.master._on_request_error(self.index, msg.id, f"{msg.code}: {msg.message}")
                else:
                    log.warning("worker %d: %s: %s", self.index, msg.code, msg.message)
            elif not isinstance(msg, Pong):
                raise RemoteProtocolError(f"unexpected {msg.TYPE} from worker")

    async def _heartbeat(self, comm: Comm) -> None:
        """A worker that stops answering (paused, partitioned) is dropped after 3 missed beats."""
        period, seq = self.master.heartbeat_s, 0
        while True:
            await asyncio.sleep(period)
            if time.monotonic() - self.last_seen > 3 * period:
                raise CommClosedError(f"no frame from worker {self.index} for {3 * period:g} s")
            seq += 1
            await comm.write(Ping(seq), timeout=period)

    def send(self, frame: bytes) -> int:
        if self.comm is None:
            raise CommClosedError("not connected")
        return self.comm.send(frame)


class Master:
    """Talks to N workers through a plan (CodedPlan or ReplicatedPlan).

    Note: when torch is loaded, constructing a Master sets torch's intra-op threads to 1 for the
    whole process; requests are encoded in parallel on `encode_threads` threads instead."""

    def __init__(self, plan, addresses: list[tuple[str, int]], token: bytes, *, limits: Limits | None = None,
                 ssl_context=None, request_timeout: float = 10.0, heartbeat_s: float = 1.0, max_backoff: float = 2.0,
                 dataset: str | None = None, encode_threads: int | None = None):
        if len(addresses) != plan.N:
            raise EdgeccError(f"{len(addresses)} worker addresses for a plan of N={plan.N}")
        self.plan, self.token = plan, token
        self.limits = limits or Limits()
        self.ssl_context, self.request_timeout = ssl_context, request_timeout
        self.heartbeat_s, self.max_backoff, self.dataset = heartbeat_s, max_backoff, dataset
        self.closing = False
        self.links = [WorkerLink(self, i, h, p) for i, (h, p) in enumerate(addresses)]
        self.pending: dict[int, Pending] = {}
        self.next_id = 0
        # Requests encode in parallel, one per thread, each op single-threaded: measured on 2 cores under
        # load, one group took 8 ms this way and 260 ms with torch's 2-thread intra-op pool.
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        threads = encode_threads or os.cpu_count() or 1
        self.encode_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgecc-encode")
        # Small requests encode on all cores but one, which stays with the event loop (sends, results, decode).
        # Measured in the one-straggler scenario on 2 cores (single-group requests, 2 in flight): p99 overhead
        # 13.5-16 ms with 2 parallel encodes, 8.5-12.5 ms with 1. Large requests (throughput) use every core.
        # Not on the loop thread, even for a lone request: it saves two thread hops (~0.2 ms), but the loop
        # thread then sends with a large scheduler debt and co-located workers preempt it between the N
        # writes (measured +0.33 ms), and concurrent requests stall behind it.
        self.small_encodes = asyncio.Semaphore(max(1, threads - 1))
        self.encoding: set[asyncio.Future] = set()  # requests whose frames are being made in the pool
        self.stats = {"late_results": 0, "bad_results": 0, "bytes_sent": 0, "worker_errors": 0}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, wait_ready: float = 10.0) -> None:
        """Start all links and wait until at least R workers are ready (or raise after `wait_ready` s)."""
        for link in self.links:
            link.task = asyncio.create_task(link.run())
        deadline = time.monotonic() + wait_ready
        while not self.plan.reachable({l.index for l in self.links if l.ready.is_set()}):
            if time.monotonic() > deadline:
                errors = "; ".join(f"worker {l.index} ({l.address}): {l.last_error or 'not ready'}" for l in self.links if not l.ready.is_set())
                raise EdgeccError(f"only {self.ready_count()} of {self.plan.N} workers ready after {wait_ready:g} s, "
                                  f"need {self.plan.need}: {errors}")
            await asyncio.sleep(0.02)

    async def wait_all_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.gather(*(l.ready.wait() for l in self.links)), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def ready_count(self) -> int:
        return sum(l.ready.is_set() for l in self.links)

    async def close(self) -> None:
        self.closing = True
        for link in self.links:
            if link.task:
                link.task.cancel()
        await asyncio.gather(*(l.task for l in self.links if l.task), return_exceptions=True)
        for p in list(self.pending.values()):
            self._fail(p, "master closed")
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
        for fut in list(self.encoding):  # requests still encoding (a cancelled job never settles its future)
            _settle(fut, None, RequestFailed("master closed while encoding"))

    # -- one request -----------------------------------------------------------------------------
    async def infer(self, images: np.ndarray, req_id: int | None = None) -> np.ndarray:
        """Decoded (B, K, 10) logits for B groups `images` (B, K, 28, 28) uint8, or RequestFailed.

        `req_id` (default: the next free one) must be unique; scenarios pass their request number so
        that injected delays line up across schemes."""
        if req_id is None:
            req_id = self.next_id
        if req_id in self.pending:
            raise ValueError(f"request id {req_id} is already in flight")
        self.next_id = max(self.next_id, req_id + 1)
        loop = asyncio.get_running_loop()
        small = images.shape[0] <= SMALL_REQUEST_GROUPS  # latency-bound: leave the event loop its core
        async with self.small_encodes if small else contextlib.nullcontext():
            frames = await self._encode(req_id, images)
        live = [l for l in self.links if l.ready.is_set()]
        if not self.plan.reachable({l.index for l in live}):
            raise RequestFailed(f"request {req_id}: only {len(live)} of {self.plan.N} workers connected, "
                                f"{self.plan.need} unreachable")
        p = Pending(req_id, images.shape[0], loop.create_future(), {l.index for l in live})
        self.pending[req_id] = p
        try:
            # back to back, no Task per link: each write starts a worker, and the R-th answer is what we wait for
            backed_up = []
            for link in live:
                try:
                    self.stats["bytes_sent"] += link.send(frames[link.index])
                    if link.comm is not None and link.comm.backed_up:
                        backed_up.append((link.index, link.comm))
                except CommClosedError:
                    self._drop_worker(p, link.index, "connection lost while sending")
            if backed_up:  # large requests: wait for slow links concurrently, so one cannot hold up the others
                async def drain(index: int, comm: Comm) -> None:
                    try:
                        await comm.drain(self.request_timeout)
                    except CommClosedError:
                        self._drop_worker(p, index, "connection lost while sending")

                await asyncio.gather(*(drain(i, c) for i, c in backed_up))
            try:
                async with asyncio.timeout(self.request_timeout):
                    return await p.future
            except asyncio.TimeoutError:
                raise RequestFailed(f"request {req_id}: {len(p.results)} result(s) within "
                                    f"{self.request_timeout:g} s, not enough for {self.plan.need} (waiting on workers {sorted(p.outstanding)})") from None
        finally:
            self.pending.pop(req_id, None)

    def _encode(self, req_id: int, images: np.ndarray) -> asyncio.Future:
        """_frames in the encode pool. Leaner than run_in_executor, which chains two futures with
        callbacks both ways (measured ~50 µs of the loop thread per request, mostly lock hand-offs)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def job() -> None:
            try:
                result, error = self._frames(req_id, images), None
            except BaseException as e:  # handed to the awaiting request, whatever it is
                result, error = None, e
            loop.call_soon_threadsafe(_settle, fut, result, error)

        try:
            self.encode_pool.submit(job)
        except RuntimeError:  # the pool is shut down
            raise RequestFailed(f"request {req_id}: master closed") from None
        self.encoding.add(fut)
        fut.add_done_callback(self.encoding.discard)
        return fut

    def _frames(self, req_id: int, images: np.ndarray) -> list[bytes]:
        """One encoded Compute frame per worker (encode + msgpack, in the encode pool)."""
        packed: dict[int, bytes] = {}  # the shared placement sends every worker the same payload: pack it once
        frames = []
        for pl in self.plan.payloads(images):
            if id(pl) not in packed:
                packed[id(pl)] = encode_frame(Compute(req_id, **_fields(pl)).to_wire(), self.limits.max_frame)
            frames.append(packed[id(pl)])
        return frames

    def _on_result(self, index: int, msg: Result) -> None:
        p = self.pending.get(msg.id)
        if p is None or index not in p.outstanding:
            self.stats["late_results"] += 1  # decoded, failed or duplicate: nothing waits for it
            return
        try:
            y = unpack_array(msg.y, "y", shape=(p.groups, 10))
        except RemoteProtocolError as e:
            self.stats["bad_results"] += 1
            self._drop_worker(p, index, f"invalid result: {e}")
            return
        p.outstanding.discard(index)
        p.results[index] = y
        if self.plan.complete(p.results) and not p.future.done():
            try:
                p.future.set_result(self.plan.decode(p.results))
            except DecodeError as e:
                p.future.set_exception(RequestFailed(f"request {p.id}: {e}"))

    def _on_request_error(self, index: int, req_id: int, why: str) -> None:
        self.stats["worker_errors"] += 1
        p = self.pending.get(req_id)
        if p is not None:
            self._drop_worker(p, index, why)

    def _worker_lost(self, index: int) -> None:
        for p in list(self.pending.values()):
            if index in p.outstanding:
                self._drop_worker(p, index, "worker disconnected")

    def _drop_worker(self, p: Pending, index: int, why: str) -> None:
        """Worker `index` will not answer request p; fail p at once if R is now out of reach."""
        p.outstanding.discard(index)
        if not self.plan.reachable(set(p.results) | p.outstanding) and not p.future.done():
            self._fail(p, f"{len(p.results)} result(s) and {len(p.outstanding)} live worker(s) left, "
                          f"{self.plan.need} unreachable (worker {index}: {why})")

    def _fail(self, p: Pending, why: str) -> None:
        if not p.future.done():
            p.future.set_exception(RequestFailed(f"request {p.id}: {why}"))


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if not fut.done():  # the request may have been cancelled meanwhile
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {"x": payload.get("x"), "v": payload.get("v"), "images": payload.get("images"), "indices": payload.get("indices")}


async def run_stream(master: Master, images: np.ndarray, labels: np.ndarray, groups_per_request: int = 64,
                     in_flight: int = 8, progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Stream `images` through the master; returns (summary, predictions with -1 where a request failed)."""
    K = master.plan.K
    n = images.shape[0] - images.shape[0] % K
    groups = images[:n].reshape(-1, K, 28, 28)
    preds = np.full(n, -1, dtype=np.int64)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(in_flight)
    t0 = time.perf_counter()

    async def one(start: int) -> None:
        async with sem:
            batch = groups[start : start + groups_per_request]
            t = time.perf_counter()
            try:
                logits = await master.infer(batch)
            except RequestFailed as e:
                reason = str(e).split(": ", 1)[-1].split(" (")[0]
                failures[reason] = failures.get(reason, 0) + 1
                log.warning("%s", e)
            else:
                latencies.append((time.perf_counter() - t) * 1000)
                preds[start * K : (start + batch.shape[0]) * K] = logits.argmax(-1).reshape(-1)
            if progress:
                progress(batch.shape[0] * K)

    await asyncio.gather(*(one(s) for s in range(0, groups.shape[0], groups_per_request)))
    elapsed = time.perf_counter() - t0
    done = preds >= 0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    summary = {
        "images": int(n), "N": master.plan.N, "K": K, "need": master.plan.need, "placement": master.plan.placement,
        "encode_precision": getattr(master.plan, "encode_precision", None),
        "rebuilt_groups": getattr(master.plan, "rebuilt_groups", None),  # learned code: groups decoded in degraded mode
        "accuracy": 100.0 * float((preds[done] == labels[:n][done]).mean()) if done.any() else 0.0,
        "accuracy_all_images": 100.0 * float((preds == labels[:n]).mean()),
        "requests_decoded": len(latencies), "requests_failed": sum(failures.values()), "failure_reasons": failures,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                       "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())},
        "elapsed_s": elapsed, "images_per_s": n / elapsed if elapsed > 0 else 0.0,
        "bytes_sent": master.stats["bytes_sent"], "late_results": master.stats["late_results"],
        "bad_results": master.stats["bad_results"], "worker_errors": master.stats["worker_errors"],
        "groups_per_request": groups_per_request, "in_flight": in_flight,
        "workers": [{"index": l.index, "address": l.address, "alpha": master.plan.alphas[l.index], "connects": l.connects,
                     "ready": l.ready.is_set(), "suspect_groups": getattr(master.plan, "suspect_groups", [0] * master.plan.N)[l.index]}
                    for l in master.links],
    }
    return summary, preds
