"""The worker's compute queue (edgecc.worker.compute_queue): one thread, order of arrival, and a
withdrawn job that never runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edgecc.worker.compute_queue import ComputeQueue


async def test_jobs_run_in_order_on_one_thread():
    q = ComputeQueue()
    ran: list[tuple[int, str]] = []

    def job(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * i

    try:
        assert await asyncio.gather(*(q.run(job, i) for i in range(20))) == [i * i for i in range(20)]
        assert [i for i, _ in ran] == list(range(20)) and {n for _, n in ran} == {"edgecc-compute"}
    finally:
        q.close()


async def test_a_withdrawn_job_never_runs_and_a_running_one_finishes_unheard():
    q = ComputeQueue()
    gate = threading.Event()
    ran: list[str] = []

    def blocking() -> str:
        gate.wait(5)
        ran.append("first")
        return "first"

    def later(name: str) -> str:
        ran.append(name)
        return name

    try:
        first = asyncio.create_task(q.run(blocking))
        second = asyncio.create_task(q.run(later, "second"))
        third = asyncio.create_task(q.run(later, "third"))
        await asyncio.sleep(0.05)
        assert q.waiting == 2  # the first runs, the others wait
        second.cancel()
        first.cancel()  # already on the thread: it finishes, its result goes nowhere
        await asyncio.sleep(0.01)
        assert q.waiting == 1  # the second left the queue at once, arrays and all
        gate.set()
        assert await third == "third"
        assert ran == ["first", "third"]
        assert first.cancelled() and second.cancelled()
    finally:
        q.close()


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on():
    q = ComputeQueue()

    def boom() -> None:
        raise ValueError("bad input")

    try:
        with pytest.raises(ValueError, match="bad input"):
            await q.run(boom)
        assert await q.run(lambda: 7) == 7
    finally:
        q.close()


async def test_close_drops_what_waits():
    q = ComputeQueue()
    gate = threading.Event()
    running = asyncio.create_task(q.run(gate.wait, 5))
    waiting = asyncio.create_task(q.run(time.sleep, 0))
    await asyncio.sleep(0.05)
    q.close()
    gate.set()
    assert await running is True
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError, match="closed"):
        await q.run(time.sleep, 0)
