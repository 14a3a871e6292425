"""Dynamic grouping: images queue until K of them make a group or the batching window expires.

AICC codes K images together, so a lone image waits for K-1 others; the window bounds that wait.
When it expires the partial group is padded with blank images, and the padding's share of the
group's compute is reported with each answer. Full groups that are waiting together go to the
workers as one request (up to `max_groups`), which keeps the number of requests in flight small at
high rates. An image whose deadline would be missed by waiting out the window flushes its group
at once; one whose deadline has already passed fails instead of occupying a slot.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..master.master import Overloaded, RequestFailed
from ..protocol.images import PAPER_IMAGE, dims
from ..schemes.base import plan_shape

BLANK = np.zeros(dims(PAPER_IMAGE), dtype=np.uint8)  # the paper's padding image; a batcher pads with its model's


class Rejected(Exception):
    """The service will not take (or could not finish) this image; `status` and `retry_after` are HTTP."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass
class Item:
    image: np.ndarray
    arrived: float
    deadline: float | None
    future: asyncio.Future
    dispatched: float | None = None


@dataclass
class Outcome:
    """One image's answer: logits and what the group it rode in cost."""
    logits: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class Batcher:
    def __init__(self, master, K: int, *, window_s: float, max_queue: int, max_groups: int, max_in_flight: int,
                 metrics=None):
        if window_s < 0 or max_queue < 1 or max_groups < 1 or max_in_flight < 1:
            raise ValueError("window must be >= 0; queue, groups and in-flight limits >= 1")
        self.master, self.K = master, K
        # padding slots hold a black image of the shape the plan's model takes
        self.blank = np.zeros(dims(plan_shape(getattr(master, "plan", None))[0]), dtype=np.uint8)
        self.window_s, self.max_queue, self.max_groups, self.max_in_flight = window_s, max_queue, max_groups, max_in_flight
        self.metrics = metrics
        self.queue: collections.deque[Item] = collections.deque()
        self.in_flight = 0
        self.closing = False
        self.next_id = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        # recent service times (dispatch to decoded) for deadline admission; until the first answer
        # every deadline is admitted (and fails at its deadline if it was too short)
        self._service: collections.deque[float] = collections.deque(maxlen=200)

    # -- admission ------------------------------------------------------------------------------
    def service_estimate(self) -> float:
        """Median of recent dispatch-to-decoded times (s); 0 before the first answer."""
        return float(np.median(self._service)) if self._service else 0.0

    def expected_wait(self) -> float:
        """Seconds a new image may wait for a free request slot (0 while one is free)."""
        if self.in_flight < self.max_in_flight:
            return 0.0
        batches_ahead = math.ceil(len(self.queue) / (self.K * self.max_groups)) + 1
        return self.service_estimate() * batches_ahead / self.max_in_flight

    def submit(self, images: np.ndarray, deadline: float | None = None) -> list[asyncio.Future]:
        """Queue n images; one future per image resolving to an Outcome (or raising Rejected)."""
        if self.closing:
            raise Rejected(503, "the service is shutting down", retry_after=1)
        n = images.shape[0]
        if len(self.queue) + n > self.max_queue:
            raise Rejected(503, f"queue full ({len(self.queue)} of {self.max_queue} images waiting)",
                           retry_after=max(1.0, self.service_estimate()))
        now = time.monotonic()
        if deadline is not None:
            need = self.service_estimate() + self.expected_wait()
            if now + need > deadline:
                raise Rejected(503, f"deadline {1000 * (deadline - now):.0f} ms cannot be met: requests take about "
                                    f"{1000 * need:.0f} ms now", retry_after=max(1.0, self.expected_wait()))
        loop = asyncio.get_running_loop()
        items = [Item(img, now, deadline, loop.create_future()) for img in images]
        self.queue.extend(items)
        self._changed()
        return [i.future for i in items]

    # -- the grouping loop -------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        """The grouping loop is alive (it ends only after a drain)."""
        return self._loop_task is not None and (not self._loop_task.done() or self.closing)

    def _changed(self) -> None:
        self._wake.set()
        if self.metrics:
            self.metrics.queue_depth.set(len(self.queue))
            self.metrics.in_flight.set(self.in_flight)

    async def _run(self) -> None:
        while True:
            self._expire(time.monotonic())
            if not self.queue:
                if self.closing:
                    return
                await self._sleep(None)
                continue
            now = time.monotonic()
            if self.in_flight >= self.max_in_flight:
                await self._sleep(self._next_expiry())
                continue
            full = len(self.queue) // self.K
            if full:
                self._dispatch(min(full, self.max_groups) * self.K)
                continue
            flush_at = self._flush_at()
            if self.closing or now >= flush_at:
                self._dispatch(len(self.queue))
                continue
            await self._sleep(flush_at)

    def _flush_at(self) -> float:
        """When the partial group at the head must leave: its oldest image's window, or earlier for a deadline."""
        at = self.queue[0].arrived + self.window_s
        est = self.service_estimate()
        for it in self.queue:
            if it.deadline is not None:
                at = min(at, it.deadline - est)
        return at

    def _next_expiry(self) -> float | None:
        ds = [it.deadline for it in self.queue if it.deadline is not None]
        return min(ds) if ds else None

    def _expire(self, now: float) -> None:
        """Drop queued images that would only waste a slot: past their deadline (they fail), or given up
        by their client (the HTTP handler was cancelled, and with it their futures)."""
        if not any(it.future.done() or (it.deadline is not None and it.deadline <= now) for it in self.queue):
            return
        keep = collections.deque()
        for it in self.queue:
            if it.future.done():
                continue
            if it.deadline is not None and it.deadline <= now:
                if not it.future.done():
                    it.future.set_exception(Rejected(503, "deadline passed while queued", retry_after=1))
                if self.metrics:
                    self.metrics.shed.labels("deadline_queued").inc()
            else:
                keep.append(it)
        self.queue = keep
        self._changed()

    async def _sleep(self, until: float | None) -> None:
        self._wake.clear()
        timeout = None if until is None else max(0.0, until - time.monotonic())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _dispatch(self, n: int) -> None:
        items = [self.queue.popleft() for _ in range(n)]
        now = time.monotonic()
        for it in items:
            it.dispatched = now
        self.in_flight += 1
        self._changed()
        task = asyncio.create_task(self._infer(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _infer(self, items: list[Item]) -> None:
        K = self.K
        groups = math.ceil(len(items) / K)
        pad = groups * K - len(items)
        batch = np.stack([it.image for it in items] + [self.blank] * pad).reshape(groups, K, *self.blank.shape)
        deadlines = [it.deadline for it in items if it.deadline is not None]
        info: dict[str, Any] = {}
        req = self.next_id
        self.next_id += 1
        t0 = time.monotonic()
        try:
            logits = await self.master.infer(batch, req, deadline=min(deadlines) if deadlines else None, info=info)
        except Overloaded as e:
            self._fail(items, Rejected(503, f"workers overloaded: {e}", retry_after=max(1.0, self.service_estimate())), "overloaded")
        except RequestFailed as e:
            self._fail(items, Rejected(502, f"inference failed: {e}"), "failed")
        except Exception as e:  # whatever goes wrong, every waiting client gets an answer
            self._fail(items, Rejected(500, f"internal error: {type(e).__name__}: {e}"), "internal")
        else:
            done = time.monotonic()
            self._service.append(done - t0)
            decode = info.get("decode") or {}
            shared = {
                "request": req, "groups": groups, "padding_slots": pad, "padding_cost": pad / (groups * K),
                "decoded_by": decode.get("subset"), "answered": info.get("answered"), "error_bound": decode.get("bound"),
                "master_queue_ms": info.get("queue_ms"), "encode_ms": info.get("encode_ms"), "workers_ms": info.get("workers_ms"), "decode_ms": info.get("decode_ms"),
                "infer_ms": 1000 * (done - t0),
            }
            for j, it in enumerate(items):
                if not it.future.done():
                    it.future.set_result(Outcome(logits[j // K, j % K], {**shared, "queue_wait_ms": 1000 * (it.dispatched - it.arrived)}))
            if self.metrics:
                self.metrics.observe_group(shared, info, [1000 * (it.dispatched - it.arrived) for it in items])
        finally:
            self.in_flight -= 1
            self._changed()

    def _fail(self, items: list[Item], error: Rejected, reason: str) -> None:
        for it in items:
            if not it.future.done():
                it.future.set_exception(error)
        if self.metrics:
            self.metrics.shed.labels(reason).inc(len(items))

    # -- shutdown ----------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Refuse new images, send what is queued without waiting out windows, and wait for every
        answer (True) or `timeout` (False)."""
        self.closing = True
        self._changed()
        try:
            async with asyncio.timeout(timeout):
                if self._loop_task:
                    await self._loop_task
                while self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
            return True
        except TimeoutError:
            return False
