"""The worker's compute thread and the requests waiting for it, oldest first.

Every computation too large for the event loop runs on one thread, in order of arrival, whichever
connection sent it: a worker has one core's worth of compute to give (numpy's BLAS runs single
threaded, blas.py), and a second thread would only share that core. Requests wait in this queue, not
in an executor's, so that withdrawing one (a `cancel`, a closed connection: the awaiting task is
cancelled) removes it and its arrays at once: it never reaches the thread, and a master cannot pile
up cancelled work behind a long computation. A computation that already started runs to its end; its
result is dropped.

numpy-free and torch-free: it runs whatever callable it is given.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Callable


class _Job:
    __slots__ = ("fn", "args", "loop", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.fn, self.args, self.loop, self.future = fn, args, loop, future


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # withdrawn while it ran: nobody waits for it
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ComputeQueue:
    """`await run(fn, *args)`: fn(*args) on the compute thread, after every job queued before it."""

    def __init__(self, name: str = "edgecc-compute"):
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: deque[_Job] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        """Jobs queued and not started."""
        return len(self._jobs)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the compute queue is closed")
            self._jobs.append(job)
            if self._thread is None:  # daemon: a computation in progress must not keep the process alive
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._wake.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._jobs.remove(job)  # not started: it never will be
                except ValueError:
                    pass  # running: its result goes nowhere
            raise

    def close(self) -> None:
        """Drop every job not started; the thread ends after the one it runs."""
        with self._lock:
            self._closed = True
            dropped = list(self._jobs)
            self._jobs.clear()
            self._wake.notify()
        for job in dropped:
            try:
                job.loop.call_soon_threadsafe(job.future.cancel)
            except RuntimeError:  # that loop is closed
                pass

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            result, error = None, None
            try:
                result = job.fn(*job.args)
            except Exception as e:  # delivered to the request, which answers `error internal`
                error = e
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:  # the loop is closed: the worker stopped
                pass
            del job, result, error  # drop the arrays before waiting for the next job
