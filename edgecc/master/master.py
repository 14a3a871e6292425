"""The master: keeps links to N workers, sends each request to all of them, and decodes from
whichever R answer first. Late answers are dropped by request id; every request ends decoded or
failed with a reason, within its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import DecodeError, EdgeccError
from ..protocol.frames import RemoteProtocolError, encode_frame, unpack_array
from ..protocol.messages import Compute, Result
from ..blas import single_threaded_blas
from ..protocol.limits import Limits
from ..comm import CommClosedError
from ..comm.addressing import format_host_port
from ..process import keep_frame_memory
from ..protocol.messages import Configure, Hello
from ..schemes.base import payloads_many, plan_shape, side_by_side
from ..schemes.registry import configure_message
from .handshake import BaseMismatch, DatasetMismatch, WorkerMismatch, check_base, check_dataset
from .link import MAX_QUEUED_BYTES, AuthError, FrameTooLarge, LinkConfig, WorkerLink  # noqa: F401  (AuthError: part of this module's API)

log = logging.getLogger("edgecc.master")


SMALL_REQUEST_GROUPS = 4  # requests up to this many groups are latency-bound (see Master.small_parallel)
# The most groups one encode of waiting small requests takes (see Master._encode_small). Past ~16 groups a
# call the encoder's cost per group no longer falls (`edgecc bench`, section master), while the first
# request of a larger batch would wait for all of them.
COALESCE_GROUPS = 16
CANCEL_DELAY_S = 0.005  # how long after a request ends its unanswered workers get `cancel` (see _finish)
ENCODE_SAMPLES = 32  # recent requests whose encode time per group (and workers' time) admission takes the median of
SERVICE_WINDOW_S = 5.0  # how far back admission looks at the workers' time per request


class RequestFailed(EdgeccError):
    """A request could not be decoded; the message says why."""


class Overloaded(RequestFailed):
    """The master shed the request on arrival: with the work already queued it could not finish
    before its deadline (or the queue is at its bound). Nothing was sent for it."""


@dataclass
class Pending:
    """One request between sending its frames and its decode (or failure)."""
    id: int
    groups: int
    future: asyncio.Future
    outstanding: set[int]  # workers that were offered the request and have not answered
    results: dict[int, np.ndarray] = field(default_factory=dict)
    sent_to: set[int] = field(default_factory=set)  # workers whose socket got the frame
    bytes_sent: int = 0  # this request's frames as written to sockets (dropped frames excluded)
    report: dict[str, Any] = field(default_factory=dict)  # the plan's decode report
    decode_ms: float = 0.0
    sent_at: float = 0.0  # when its frames were offered to the links
    done_at: float = 0.0  # when its decode finished
    finished: bool = False  # queued frames discarded and cancels sent
    frames: list[bytes] = field(default_factory=list)  # per worker, kept to offer to a skipped link later
    result_at: dict[int, float] = field(default_factory=dict)  # worker -> when its result arrived (none after the
    # one that made it decodable: later ones are late, so the workers stage ends at the latest of these)
    skipped: set[int] = field(default_factory=set)  # live workers left out (lagging, or not taking it)
    refused: dict[int, str] = field(default_factory=dict)  # workers that cannot take it at all, and why

class Master:
    """Talks to N workers through a plan (any schemes.base.Plan; with N = 0 it classifies alone).

    A request's deadline covers its whole life: waiting for an encode slot, encoding, the workers,
    decoding. A request that the master could not finish by its deadline with the work already
    queued is shed on arrival (Overloaded) instead of joining an ever longer queue.

    Note: constructing a Master sets torch's intra-op threads (when torch is loaded) and numpy's BLAS
    threads to 1 for the whole process (requests are encoded in parallel on `encode_threads` threads
    instead), and keeps freed frame memory for reuse (process.keep_frame_memory)."""

    def __init__(self, plan, addresses: list[str | tuple[str, int]], token: bytes, *, limits: Limits | None = None,
                 ssl_context=None, request_timeout: float = 10.0, heartbeat_s: float = 1.0, max_backoff: float = 2.0,
                 encode_threads: int | None = None, max_queue: int = 1024,
                 max_queued_bytes: int = MAX_QUEUED_BYTES, dataset: str | None = None,
                 coalesce_groups: int = COALESCE_GROUPS):
        """`addresses`: one per worker, any address comm/ can reach ('tcp://h:p', 'tls://h:p', 'mem://name';
        a bare 'h:p' or (host, port) is TCP, or TLS when `ssl_context` is given). `dataset`: the digest
        (protocol.messages.dataset_digest) of the images every worker holds (`edgecc worker --dataset
        SOURCE`), for `infer_indices` with the shared placement; a worker that does not announce it is
        refused at handshake. `coalesce_groups`: the most groups of waiting small requests one encoder call
        takes (`_encode_small`); 1 encodes each request alone."""
        if coalesce_groups < 1:
            raise ValueError(f"coalesce_groups must be >= 1, got {coalesce_groups}")
        self.coalesce_groups = coalesce_groups
        if len(addresses) != plan.N:
            raise EdgeccError(f"{len(addresses)} worker addresses for a plan of N={plan.N}")
        self.plan, self.token = plan, token
        self.classes = plan_shape(plan)[1]  # logits per image in every result
        self.limits = limits or Limits()
        self.ssl_context, self.request_timeout = ssl_context, request_timeout
        self.heartbeat_s, self.max_backoff = heartbeat_s, max_backoff
        self.max_queue = max_queue  # requests in the master at once (queued, encoding, with workers); more are shed
        self.closing = False
        config = LinkConfig(token, self._configure, placement=plan.placement, limits=self.limits,
                            ssl_context=ssl_context, heartbeat_s=heartbeat_s, max_backoff=max_backoff,
                            max_queued_bytes=max_queued_bytes)
        self.links = [WorkerLink(i, a if isinstance(a, str) else format_host_port(*a), config, self)
                      for i, a in enumerate(addresses)]
        self.pending: dict[int, Pending] = {}
        self._cancel_after: dict[int, set[int]] = {}  # request id -> workers to cancel it on, shortly
        self.admitted: set[int] = set()  # request ids between arrival and their end (pending or encoding)
        self.next_id = 0
        # Requests encode in parallel, one per thread, each op single-threaded: measured on 2 cores under
        # load, one group took 8 ms this way and 260 ms with torch's 2-thread intra-op pool.
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        single_threaded_blas()  # numpy's too (decoding): see blas.py
        keep_frame_memory()  # N frames per request are allocated and freed: see process.py
        self.encode_threads = encode_threads or os.cpu_count() or 1
        self.encode_pool = ThreadPoolExecutor(max_workers=self.encode_threads, thread_name_prefix="edgecc-encode")
        # Small requests encode on all cores but one, which stays with the event loop (sends, results, decode).
        # Measured in the one-straggler scenario on 2 cores (single-group requests, 2 in flight): p99 overhead
        # 13.5-16 ms with 2 parallel encodes, 8.5-12.5 ms with 1. Large requests (throughput) use every core.
        # Not on the loop thread, even for a lone request: it saves two thread hops (~0.2 ms), but the loop
        # thread then sends with a large scheduler debt and co-located workers preempt it between the N
        # writes (measured +0.33 ms), and concurrent requests stall behind it.
        # A backlog is another matter: once a full batch (coalesce_groups requests) waits behind the running
        # encodes, latency is already the queue's, and the core kept for the loop encodes too (every
        # encode thread busy: `_small_slots`). Measured on 2 cores, Poisson single-group requests at 500/s:
        # one slot kept its thread 92% busy and the requests queued for ~0.9 s while the machine ran 1.05
        # of its 2 cores (the sweep's CPU split).
        self.small_parallel = max(1, self.encode_threads - 1)
        # Small requests that wait for an encode are encoded together (`_encode_small`): the encoder's
        # networks cost less per group on several groups at a time.
        # A lone small request's encoder networks run side by side (nets/blocks.stacks_on): the first in its
        # encode thread, the others here, on the cores the small requests leave free. Only while so few groups
        # are encoding that those cores are idle (at most SMALL_REQUEST_GROUPS, see _encode_batch).
        self.stack_pool = (_EncoderPool(self._count_encode_cpu, max_workers=self.encode_threads - self.small_parallel,
                                        thread_name_prefix="edgecc-stack", initializer=_one_torch_thread)
                           if self.encode_threads > self.small_parallel else None)
        self._small_waiting: deque[_Waiting] = deque()
        self._small_running = 0  # encodes of small requests in the pool (at most _small_slots())
        self.encoding: set[asyncio.Future] = set()  # requests whose frames are being made in the pool
        # admission: groups waiting for or in encoding, and the measured encode cost per group
        self.queued_groups = 0
        # the median of recent requests' encode time per group: one request stalled by a CPU spike must
        # not make admission shed everything behind it (an average would jump by that request's stall)
        self._encode_samples: deque[float] = deque(maxlen=ENCODE_SAMPLES)
        # (when, seconds from send to decode) of recent decoded requests: the workers' side of admission
        self._service_samples: deque[tuple[float, float]] = deque(maxlen=ENCODE_SAMPLES)
        self.stats = {"late_results": 0, "bad_results": 0, "bytes_sent": 0, "worker_errors": 0,
                      "shed": 0, "deadline_failures": 0, "waited_extra": 0,
                      # requests encoded, and the encoder calls that made them (fewer: small ones coalesce)
                      "requests_encoded": 0, "encoder_calls": 0}
        # CPU seconds the encode pool's threads spent encoding, one entry per thread, each written by its own
        # thread only (no lock): where a saturated master's CPU goes (encoder_cpu_s)
        self._encode_cpu: dict[int, float] = {}
        # Remark 1's shared dataset (infer_indices): its digest, its size once a worker announced it, and
        # the workers refused for not holding it (index -> why)
        if dataset is not None and plan.placement != "shared":
            raise EdgeccError(f"dataset indices need the shared placement; this plan's is {plan.placement!r}")
        self.dataset, self.dataset_size = dataset, None
        # the workers refused for not holding what the plan needs of them, the dataset or a base (index -> why)
        self.refused: dict[int, str] = {}
        # with model "worker" (schemes/base.WorkerBase): the base's digest, and the worker that announced it first
        self.base_digest: tuple[str, str] | None = None

    @property
    def dataset_refused(self) -> dict[int, str]:
        return self.refused

    # -- lifecycle ------------------------------------------------------------------------------
    def _configure(self, index: int, hello: Hello) -> Configure:
        """Worker `index`'s configure: no arrays when its hello says it preloaded this plan's bundle, or when
        the plan runs the workers' own base (then named by the digest they announced)."""
        arrays = None if hello.bundle == self.plan.digest else self.plan.wire_arrays
        who = f"worker {index} ({self.links[index].address})"
        try:
            base = self._check_base(hello, who)
            if self.dataset is not None:  # it must hold the dataset the indices refer to, named by its digest
                self.dataset_size = check_dataset(hello, self.dataset, self.plan.image, who)
        except WorkerMismatch as e:
            if self.refused.get(index) != str(e):  # once, not at every reconnect
                log.error("%s", e)
            self.refused[index] = str(e)
            raise
        self.refused.pop(index, None)
        msg = configure_message(self.plan, index, arrays, self.dataset)
        return msg if base is None else replace(msg, digest=base, arrays=None)

    def _check_base(self, hello: Hello, who: str) -> str | None:
        """With model "worker": the digest of the base every worker must run, the plan's pin or the first
        worker's to answer, once `hello` announced it (BaseMismatch otherwise). None for any other plan."""
        base = getattr(self.plan, "worker_base", None)
        if base is None:
            return None
        pinned, reference = base.digest, "the plan pins"
        if pinned is None and self.base_digest is not None:
            pinned, reference = self.base_digest[0], f"{self.base_digest[1]} runs"
        digest = check_base(hello, base.in_shape, base.classes, pinned, who, reference)
        if self.base_digest is None:
            self.base_digest = (digest, who)
        return digest

    async def start(self, wait_ready: float = 10.0) -> None:
        """Start all links and wait until at least R workers are ready (or raise after `wait_ready` s)."""
        for link in self.links:
            link.task = asyncio.create_task(link.run())
        deadline = time.monotonic() + wait_ready
        while not self.plan.reachable({l.index for l in self.links if l.ready.is_set()}):
            refused = dict(self.refused)
            if refused and all(l.ready.is_set() or l.index in refused for l in self.links):
                error, what = ((BaseMismatch, "run the base model this master's plan runs")
                               if getattr(self.plan, "worker_base", None) is not None
                               else (DatasetMismatch, "hold the dataset this master sends indices into"))
                raise error(f"{len(refused)} of {self.plan.N} workers do not {what} ({self.plan.need} unreachable): "
                            + "; ".join(refused[i] for i in sorted(refused)))
            if time.monotonic() > deadline:
                errors = "; ".join(f"worker {l.index} ({l.address}): {l.last_error or 'not ready'}" for l in self.links if not l.ready.is_set())
                raise EdgeccError(f"only {self.ready_count()} of {self.plan.N} workers ready after {wait_ready:g} s, "
                                  f"need {self.plan.need}: {errors}")
            await asyncio.sleep(0.02)

    async def wait_all_ready(self, timeout: float) -> bool:
        # One link after another under one deadline, not a gather: cancelled mid-wait (SIGTERM), a gather
        # leaves a future whose CancelledError nobody retrieves, and asyncio prints its traceback on exit.
        end = time.monotonic() + timeout
        try:
            for link in self.links:
                if not link.ready.is_set():
                    await asyncio.wait_for(link.ready.wait(), max(0.0, end - time.monotonic()))
            return True
        except asyncio.TimeoutError:
            return False

    def ready_count(self) -> int:
        return sum(l.ready.is_set() for l in self.links)

    async def close(self) -> None:
        self.closing = True
        await asyncio.gather(*(l.stop() for l in self.links))
        for p in list(self.pending.values()):
            self._fail(p, "master closed")
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
        if self.stack_pool is not None:
            self.stack_pool.shutdown(wait=False, cancel_futures=True)
        for fut in list(self.encoding):  # requests still encoding (a cancelled job never settles its future)
            _settle(fut, None, RequestFailed("master closed while encoding"))
        while self._small_waiting:  # and those waiting for an encode slot, which no slot will take now
            _settle(self._small_waiting.popleft().future, None, RequestFailed("master closed while queued for encoding"))

    # -- one request -----------------------------------------------------------------------------
    async def infer(self, images: np.ndarray, req_id: int | None = None, *, deadline: float | None = None,
                    info: dict[str, Any] | None = None) -> np.ndarray:
        """Decoded (B, K, classes) logits for B groups `images` (B, K, *dims(plan.image)) uint8, or RequestFailed
        (Overloaded when shed on arrival).

        `req_id` (default: the next free one) must be unique; scenarios pass their request number so
        that injected delays line up across schemes. `deadline` (time.monotonic(); default now +
        request_timeout) bounds the whole request. `info`, when given, is filled with this request's
        bytes_sent, its timings (queue_ms, encode_ms, workers_ms: first send to the result that made
        it decodable, decode_ms; disjoint, so they add up to at most its latency), the workers that
        answered in order, and the plan's decode report."""
        arrived = time.monotonic()
        if deadline is None:
            deadline = arrived + self.request_timeout
        if req_id is None:
            req_id = self.next_id
        if req_id in self.admitted:
            raise ValueError(f"request id {req_id} is already in flight")
        self.next_id = max(self.next_id, req_id + 1)
        groups = images.shape[0]
        small = groups <= SMALL_REQUEST_GROUPS  # latency-bound: leave the event loop its core
        self._admit(req_id, groups, small, arrived, deadline)
        self.admitted.add(req_id)
        try:
            frames, started, encoded = await self._encode_by(req_id, images, small, deadline)
            timings = {"queue_ms": (started - arrived) * 1000, "encode_ms": (encoded - started) * 1000}
            if not self.plan.N:  # the plan classified in the encode pool (`_frames`): nothing to send or wait for
                if info is not None:
                    info.update(timings, bytes_sent=0, workers_ms=0.0, decode_ms=0.0, answered=[],
                                decode={"subset": []}, result_ms={})
                return frames
            return await self._send_and_wait(req_id, frames, groups, deadline, info, timings=timings)
        finally:
            self.admitted.discard(req_id)

    async def infer_indices(self, indices: np.ndarray, req_id: int | None = None, *, deadline: float | None = None,
                            info: dict[str, Any] | None = None) -> np.ndarray:
        """`infer` for B groups of images the workers hold (Remark 1's shared dataset): `indices` (B, K) ints
        into the dataset of the digest this master was made with (`dataset=`), which every worker it
        configured announced. Only the indices travel; each worker looks its images up and encodes them."""
        if self.dataset is None:
            raise EdgeccError("infer_indices needs a Master made with dataset=DIGEST, the dataset every worker "
                              "holds (`edgecc worker --dataset SOURCE`)")
        idx = np.asarray(indices)
        K = self.plan.K
        if idx.dtype.kind not in "iu" or idx.ndim != 2 or idx.shape[1] != K or not idx.shape[0]:
            raise ValueError(f"indices must be integers of shape (B, {K}) with B >= 1, got {idx.dtype} {idx.shape}")
        top = self.dataset_size if self.dataset_size is not None else 2**31
        if idx.min() < 0 or idx.max() >= top:
            bad = int(idx.min() if idx.min() < 0 else idx.max())
            raise ValueError(f"index {bad} out of range: the workers' dataset holds {top} images (0..{top - 1})")
        return await self.infer(idx.astype(np.int32), req_id, deadline=deadline, info=info)  # plan.payloads sends them

    @property
    def encode_s_per_group(self) -> float:
        """Encode seconds per group the admission control plans with (0 until a request was encoded)."""
        return _median(self._encode_samples)

    def _admit(self, req_id: int, groups: int, small: bool, now: float, deadline: float) -> None:
        """Shed the request now if, behind the groups already waiting, it cannot be encoded and answered
        before its deadline: the median encode cost per group, spread over the encode threads, plus the
        median time the workers took for recent requests."""
        if len(self.admitted) >= self.max_queue:
            self.stats["shed"] += 1
            raise Overloaded(f"request {req_id}: shed, {len(self.admitted)} requests already queued (max_queue)")
        parallel = self._small_slots(self.queued_groups) if small else self.encode_threads
        wait = (self.queued_groups + groups) * self.encode_s_per_group / max(1, parallel)
        service = self.workers_s(now)
        if now + wait + service > deadline:
            self.stats["shed"] += 1
            raise Overloaded(f"request {req_id}: shed, the master is past capacity ({self.queued_groups} groups "
                             f"queued, ~{wait * 1000:.0f} ms to encode, ~{service * 1000:.0f} ms at the workers, "
                             f"{max(0.0, deadline - now) * 1000:.0f} ms left)")

    def workers_s(self, now: float) -> float:
        """The median time from sending a request to its decode over the last SERVICE_WINDOW_S (0 when
        none decoded then). Only recent requests count: while everything is shed no new ones finish,
        and the master must try again once the window has passed rather than shed forever."""
        recent = [s for t, s in self._service_samples if now - t <= SERVICE_WINDOW_S]
        return _median(recent)

    async def _encode_by(self, req_id: int, images: np.ndarray, small: bool, deadline: float):
        """(frames, encode start, encode end), or RequestFailed once the deadline passes first."""
        groups = images.shape[0]
        self.queued_groups += groups
        phase = "queued for encoding"
        try:
            async with asyncio.timeout(deadline - time.monotonic()):  # relative: loop clocks may differ
                if small:
                    frames, started, per_group = await self._encode_small(req_id, images, deadline)
                else:
                    phase, started = "encoding", time.monotonic()
                    frames = await self._encode(req_id, images, deadline)
                    per_group = (time.monotonic() - started) / groups
                    self.stats["encoder_calls"] += 1
                    self.stats["requests_encoded"] += 1
            self._encode_samples.append(per_group)
            return frames, started, time.monotonic()
        except TimeoutError:
            self.stats["deadline_failures"] += 1
            raise RequestFailed(f"request {req_id}: deadline passed while {phase}") from None
        finally:
            self.queued_groups -= groups

    async def _send_and_wait(self, req_id: int, frames: list[bytes], groups: int, deadline: float,
                             info: dict[str, Any] | None, timings: dict[str, float]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        live = [l for l in self.links if l.ready.is_set()]
        if not self.plan.reachable({l.index for l in live}):
            raise RequestFailed(f"request {req_id}: only {len(live)} of {self.plan.N} workers connected, "
                                f"{self.plan.need} unreachable")
        p = Pending(req_id, groups, loop.create_future(), set(), frames=frames)
        self.pending[req_id] = p
        p.sent_at = time.monotonic()
        try:
            # Offered back to back, none awaited: idle links write at once, busy ones queue. Lagging links
            # are left out when the others can complete the request without them (and offered the
            # request later if those fail it: see _widen).
            force = any(l.lagging for l in live) and not self.plan.reachable({l.index for l in live if not l.lagging})
            for link in live:
                self._offer(p, link, force)
            if not p.future.done() and not self._reachable(p):
                why = "".join(f"; {r}" for r in p.refused.values())
                self._fail(p, f"only workers {sorted(p.outstanding)} could take it, {self.plan.need} unreachable{why}")
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    logits = await p.future
            except TimeoutError:
                self.stats["deadline_failures"] += 1
                raise RequestFailed(f"request {req_id}: {len(p.results)} result(s) by its deadline, not enough for "
                                    f"{self.plan.need} (waiting on workers {sorted(p.outstanding)})") from None
            if info is not None:
                info.update(timings, bytes_sent=p.bytes_sent, workers_ms=(max(p.result_at.values()) - p.sent_at) * 1000,
                            decode_ms=p.decode_ms, answered=list(p.results), decode=p.report,
                            result_ms={i: (t - p.sent_at) * 1000 for i, t in p.result_at.items()})
            return logits
        finally:
            if info is not None:
                info.setdefault("bytes_sent", p.bytes_sent)
            self._finish(p)
            self.pending.pop(req_id, None)

    def _encode(self, req_id: int, images: np.ndarray, deadline: float) -> asyncio.Future:
        """_frames in the encode pool. Leaner than run_in_executor, which chains two futures with
        callbacks both ways (measured ~50 µs of the loop thread per request, mostly lock hand-offs)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def job() -> None:
            if time.monotonic() > deadline or fut.done():  # given up while it waited in the pool: skip the work
                loop.call_soon_threadsafe(_settle, fut, None, RequestFailed(f"request {req_id}: deadline passed while queued for encoding"))
                return
            cpu = time.thread_time()
            try:
                result, error = self._frames(req_id, images), None
            except BaseException as e:  # handed to the awaiting request, whatever it is
                result, error = None, e
            self._count_encode_cpu(cpu)
            loop.call_soon_threadsafe(_settle, fut, result, error)

        try:
            self.encode_pool.submit(job)
        except RuntimeError:  # the pool is shut down
            raise RequestFailed(f"request {req_id}: master closed") from None
        self.encoding.add(fut)
        fut.add_done_callback(self.encoding.discard)
        return fut

    def _encode_small(self, req_id: int, images: np.ndarray, deadline: float) -> asyncio.Future:
        """A small request's frames, encoded together with the small requests waiting beside it: result
        (frames, encode start, encode seconds per group of its batch).

        No time window: a request that finds an encode slot free is encoded at once, alone; those that
        arrive while every slot is busy wait, and the next free slot takes all of them (up to
        coalesce_groups groups) in one encoder call. So batches form exactly when requests would queue
        anyway, and a lone request never waits for company."""
        fut = asyncio.get_running_loop().create_future()
        self._small_waiting.append(_Waiting(req_id, images, deadline, fut))
        self._start_small_encodes()
        return fut

    def _small_slots(self, waiting: int) -> int:
        """Encode slots for small requests with `waiting` of them (or their groups) in line: small_parallel,
        every encode thread once a full batch waits (see __init__)."""
        return self.encode_threads if waiting >= self.coalesce_groups else self.small_parallel

    def _start_small_encodes(self) -> None:
        """On the loop thread: hand the waiting small requests to the free encode slots."""
        loop = asyncio.get_running_loop()
        while self._small_waiting and self._small_running < self._small_slots(len(self._small_waiting)):
            batch, groups = [], 0
            while self._small_waiting:
                w = self._small_waiting[0]
                if w.future.done():  # its deadline passed while it waited
                    self._small_waiting.popleft()
                    continue
                if batch and groups + w.images.shape[0] > self.coalesce_groups:
                    break
                batch.append(self._small_waiting.popleft())
                groups += w.images.shape[0]
            if not batch:
                return
            self._small_running += 1
            try:
                self.encode_pool.submit(self._encode_batch, loop, batch, groups)
            except RuntimeError:  # the pool is shut down
                self._small_running -= 1
                for w in batch:
                    _settle(w.future, None, RequestFailed(f"request {w.req_id}: master closed"))
                return
            for w in batch:
                self.encoding.add(w.future)
                w.future.add_done_callback(self.encoding.discard)

    def _encode_batch(self, loop: asyncio.AbstractEventLoop, batch: list["_Waiting"], groups: int) -> None:
        """In the encode pool: one encoder call for `batch`; each request gets its own frames."""
        started, cpu = time.monotonic(), time.thread_time()
        live = [w for w in batch if started <= w.deadline and not w.future.done()]
        outcomes: list[tuple[Any, BaseException | None]]
        frames_ok = True
        try:
            with self._side_by_side(sum(w.images.shape[0] for w in live), len(batch)):
                frames = self._frames_many([(w.req_id, w.images) for w in live])
            outcomes = [(f, None) for f in frames]
        except BaseException:
            frames_ok = False
            # one request's bad input must not fail the others: encode each alone, each with its own error
            outcomes = []
            for w in live:
                try:
                    outcomes.append((self._frames(w.req_id, w.images), None))
                except BaseException as e:  # handed to the awaiting request, whatever it is
                    outcomes.append((None, e))
        per_group = (time.monotonic() - started) / max(1, sum(w.images.shape[0] for w in live))
        self._count_encode_cpu(cpu)

        def settle() -> None:
            self._small_running -= 1
            if live:
                self.stats["encoder_calls"] += 1 if frames_ok else 1 + len(live)  # the failed batch, then one each
                self.stats["requests_encoded"] += sum(error is None for _, error in outcomes)
            for w in batch:
                if w not in live:
                    _settle(w.future, None, RequestFailed(f"request {w.req_id}: deadline passed while queued for encoding"))
            for w, (result, error) in zip(live, outcomes):
                _settle(w.future, None if error else (result, started, per_group), error)
            if not self.closing:
                self._start_small_encodes()

        loop.call_soon_threadsafe(settle)

    def _side_by_side(self, groups: int, requests: int):
        """The context an encode of `groups` groups for `requests` requests runs in: its encoder networks side by
        side on stack_pool while it is small (at most SMALL_REQUEST_GROUPS groups) and the only encode running
        (the other cores idle), else one after the other (Plan.side_by_side: a plan without networks ignores
        it). Read from the encode thread: `encoding` may lag the loop by a request, which errs either way by
        one encode at most."""
        if (self.stack_pool is None or groups > SMALL_REQUEST_GROUPS or self._small_running > 1
                or len(self.encoding) > requests):  # a large request (or another batch) is encoding too
            return contextlib.nullcontext()
        return side_by_side(self.plan, self.stack_pool)

    def _count_encode_cpu(self, since: float) -> None:
        """In an encode thread: add its CPU time since `since` (time.thread_time) to its own entry."""
        me = threading.get_ident()
        self._encode_cpu[me] = self._encode_cpu.get(me, 0.0) + time.thread_time() - since

    def encoder_cpu_s(self) -> float:
        """CPU seconds spent encoding so far, over all encode threads (the rest of the process's CPU is the
        event loop: framing, sends, results, decoding)."""
        return sum(list(self._encode_cpu.values()))

    def _offer(self, p: Pending, link: WorkerLink, force: bool) -> bool:
        p.outstanding.add(link.index)
        try:
            offered = link.offer(p.id, p.frames[link.index], force)
        except CommClosedError:
            offered = False
        except FrameTooLarge as e:
            offered = False
            p.refused[link.index] = str(e)
        if not offered:
            p.outstanding.discard(link.index)
            p.skipped.add(link.index)
        return offered

    def _widen(self, p: Pending) -> bool:
        """Offer p to the live workers it skipped; True if R (or the plan's condition) is reachable again."""
        for index in sorted(p.skipped):
            if self.links[index].ready.is_set():
                self._offer(p, self.links[index], force=True)
        p.skipped.clear()  # each gets one such offer: a link that refuses it now is not connected
        return self.plan.reachable(set(p.results) | p.outstanding)

    def _reachable(self, p: Pending) -> bool:
        """Can p still complete: from the workers it holds or expects, else after offering it to skipped ones."""
        return self.plan.reachable(set(p.results) | p.outstanding) or self._widen(p)

    def _frames(self, req_id: int, images: np.ndarray) -> list[bytes] | np.ndarray:
        """One encoded Compute frame per worker (encode + msgpack, in the encode pool); for a plan with no
        workers (N = 0), the logits it computes at the master instead (Plan.at_master)."""
        if not self.plan.N:
            return self.plan.at_master(images)
        return self._pack(req_id, self.plan.payloads(images))

    def _frames_many(self, requests: list[tuple[int, np.ndarray]]) -> list[list[bytes] | np.ndarray]:
        """_frames for several requests, the plan's encoder run once over all of them (Plan.payloads_many)."""
        if not self.plan.N:
            return [self.plan.at_master(images) for _, images in requests]
        many = payloads_many(self.plan, [images for _, images in requests])
        return [self._pack(req_id, payloads) for (req_id, _), payloads in zip(requests, many)]

    def _pack(self, req_id: int, payloads: list[dict[str, Any]]) -> list[bytes]:
        packed: dict[int, bytes] = {}  # the shared placement sends every worker the same payload: pack it once
        frames = []
        for pl in payloads:
            if id(pl) not in packed:
                packed[id(pl)] = encode_frame(Compute(req_id, **_fields(pl)).to_wire(), self.limits.max_frame)
            frames.append(packed[id(pl)])
        return frames

    # -- the links' listener (master/link.LinkListener) --------------------------------------------------
    def wants(self, req_id: int, index: int) -> bool:
        """Does request `req_id` still need worker `index`'s answer? (A link asks before sending.)"""
        p = self.pending.get(req_id)
        return p is not None and not p.future.done() and index in p.outstanding

    def on_sent(self, req_id: int, index: int, nbytes: int) -> None:
        self.stats["bytes_sent"] += nbytes
        p = self.pending.get(req_id)
        if p is not None:
            p.sent_to.add(index)
            p.bytes_sent += nbytes

    def on_result(self, index: int, msg: Result) -> None:
        p = self.pending.get(msg.id)
        if p is None or p.future.done() or index not in p.outstanding:
            self.stats["late_results"] += 1  # decoded, failed or duplicate: nothing waits for it
            self._cancel_after.get(msg.id, set()).discard(index)  # answered: nothing left to cancel
            return
        try:
            y = unpack_array(msg.y, "y", shape=(p.groups, self.classes))
        except RemoteProtocolError as e:
            self.stats["bad_results"] += 1
            self._drop_worker(p, index, f"invalid result: {e}")
            return
        p.outstanding.discard(index)
        p.results[index] = y
        p.result_at[index] = time.monotonic()
        if not self.plan.complete(p.results):
            if not self._reachable(p):
                self._fail(p, f"{len(p.results)} result(s) in and none to come cannot satisfy {self.plan.need}")
            return
        t = time.perf_counter()
        try:
            logits, report = self.plan.decoded(p.results)
        except DecodeError as e:
            self._fail(p, str(e))
            return
        p.decode_ms, p.done_at, p.report = (time.perf_counter() - t) * 1000, time.monotonic(), report
        self._service_samples.append((p.done_at, p.done_at - p.sent_at))
        if report.get("waited_extra"):
            self.stats["waited_extra"] += 1
        p.future.set_result(logits)
        self._finish(p)

    def on_request_error(self, index: int, req_id: int, why: str) -> None:
        self.stats["worker_errors"] += 1
        self._cancel_after.get(req_id, set()).discard(index)
        p = self.pending.get(req_id)
        if p is not None:
            self._drop_worker(p, index, why)

    def on_lost(self, index: int) -> None:
        for p in list(self.pending.values()):
            if index in p.outstanding:
                self._drop_worker(p, index, "worker disconnected")

    def _drop_worker(self, p: Pending, index: int, why: str) -> None:
        """Worker `index` will not answer request p; fail p at once if R is now out of reach."""
        p.outstanding.discard(index)
        if p.future.done() or self._reachable(p):
            return
        self._fail(p, f"{len(p.results)} result(s) and {len(p.outstanding)} live worker(s) left, "
                      f"{self.plan.need} unreachable (worker {index}: {why})")

    def _fail(self, p: Pending, why: str) -> None:
        if not p.future.done():
            p.future.set_exception(RequestFailed(f"request {p.id}: {why}"))
        self._finish(p)

    def _finish(self, p: Pending) -> None:
        """The request is decoded or failed: no queued frame of it is sent, and workers that have
        its frame but not answered are told to skip it."""
        if p.finished:
            return
        p.finished = True
        to_cancel = {i for i in p.outstanding if not self.links[i].discard(p.id) and i in p.sent_to}
        if to_cancel and not self.closing:
            # Not at once: a worker that computes as soon as the frame arrives answers within a few ms,
            # and a cancel would only cost it (and us) a frame. Whoever has not answered by then is
            # waiting or queued, and the cancel spares it the work.
            self._cancel_after[p.id] = to_cancel
            asyncio.get_running_loop().call_later(CANCEL_DELAY_S, self._send_cancels, p.id)

    def _send_cancels(self, req_id: int) -> None:
        for index in self._cancel_after.pop(req_id, ()):
            self.links[index].cancel(req_id)

    def link_stats(self) -> list[dict[str, Any]]:
        """Per worker: connects, whether ready or lagging now, and its outbound counters."""
        return [{"index": l.index, "address": l.address, "connects": l.connects, "ready": l.ready.is_set(),
                 "lagging": l.lagging, "queued_bytes": l.queued_bytes, **l.stats} for l in self.links]


@dataclass(eq=False)
class _Waiting:
    """A small request waiting for an encode slot (Master._encode_small)."""
    req_id: int
    images: np.ndarray
    deadline: float
    future: asyncio.Future


def _median(values) -> float:
    """statistics.median in one C sort (it runs twice per request in admission); 0 when empty."""
    v = sorted(values)
    n = len(v)
    if not n:
        return 0.0
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


class _EncoderPool(ThreadPoolExecutor):
    """A thread pool whose tasks' CPU time counts as the encoder's (Master.encoder_cpu_s)."""

    def __init__(self, count_cpu, **kwargs: Any):
        super().__init__(**kwargs)
        self._count_cpu = count_cpu

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._counted, fn, args, kwargs)

    def _counted(self, fn, args, kwargs):
        since = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self._count_cpu(since)


def _one_torch_thread() -> None:
    """A stack_pool thread's initializer: one intra-op thread, as the encode threads run (set in __init__)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if not fut.done():  # the request may have been cancelled meanwhile
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {"x": payload.get("x"), "v": payload.get("v"), "images": payload.get("images"), "indices": payload.get("indices")}
