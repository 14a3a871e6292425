"""The master's links (edgecc.master.link): no head-of-line blocking, cancels, lagging, overload.

The master runs against real Worker objects in this process, linked by in-memory stream pairs
(launch/inprocess.py over comm/memory_pipe.py: no sockets), so a test can make one worker stop
reading its stream — a link whose writes stall forever — without relying on timing of a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from edgecc.data import load_sample
from edgecc.modelfile import load_model
from edgecc.launch.inprocess import InProcessWorkers
from edgecc.master.master import Master, Overloaded, RequestFailed
from edgecc.schemes.aicc import CodedPlan
from edgecc.worker.faults import Faults
from edgecc.worker.server import Worker

TOKEN = b"t" * 32


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


@pytest.fixture(scope="module")
def groups():
    images, labels = load_sample()
    return images.reshape(-1, 2, 28, 28), labels.reshape(-1, 2)


class StalledWorker(Worker):
    """Authenticates and configures, then stops reading its socket at the first request: every
    byte the master writes to it afterwards stays in the link, forever."""

    async def _request(self, comm, state, msg) -> None:
        comm.writer.transport.pause_reading()


class SlowReaderWorker(Worker):
    """Reads its socket in short bursts (5 ms every 100 ms): a slow link whose backlog at the master
    grows while requests keep coming, but never stops draining."""

    burst_s: float | None = 0.005  # None: one loop turn, i.e. one pipe chunk (64 kB) per 100 ms

    async def _serve(self, comm) -> None:
        writer = comm.writer

        async def trickle() -> None:
            while True:
                writer.transport.pause_reading()
                await asyncio.sleep(0.1 - (self.burst_s or 0))
                writer.transport.resume_reading()
                await asyncio.sleep(self.burst_s or 0)

        t = asyncio.create_task(trickle())
        try:
            await super()._serve(comm)
        finally:
            t.cancel()


class MuteSlowReaderWorker(SlowReaderWorker):
    """A hung or desynchronised worker whose socket still drains: it keeps reading (slowly, so the
    master's backlog never empties) but from its first request on it sends nothing, not even a pong.
    It reads one pipe chunk per 100 ms: a 5 ms burst on a loaded machine spans enough loop turns to
    empty the whole backlog, and a link with nothing waiting is dropped by the silence rule instead."""

    burst_s = None

    async def _request(self, comm, state, msg) -> None:
        async def swallow(*args, **kwargs) -> int:
            return 0

        comm.write = swallow
        comm.send = lambda frame: 0


class OldWorker(Worker):
    """A worker of protocol minor version 0: offers no proto_minor, so it must never get a cancel."""

    async def _handshake(self, comm) -> bool:
        from edgecc.protocol import messages

        caps_write = comm.write

        async def write(msg, timeout=30.0):
            if isinstance(msg, messages.Hello):
                msg = messages.Hello(msg.proto, msg.nonce, {k: v for k, v in msg.caps.items() if k != "proto_minor"}, msg.bundle)
            return await caps_write(msg, timeout)

        comm.write = write
        try:
            return await super()._handshake(comm)
        finally:
            comm.write = caps_write


@contextlib.asynccontextmanager
async def linked_master(default_model, workers, **kw):
    """A started Master of the default model's plan over in-process `workers`; closed on exit."""
    model, info = default_model
    linked = InProcessWorkers(workers)
    m = Master(CodedPlan(model, info, len(workers)), await linked.start(), TOKEN, **kw)
    try:
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
        yield m, linked
    finally:
        await m.close()
        await linked.close()


async def test_a_link_whose_writes_stall_forever_delays_no_request(default_model, groups):
    x, y = groups
    async with linked_master(default_model, [Worker(TOKEN), Worker(TOKEN), StalledWorker(TOKEN)],
                             request_timeout=10.0) as (m, linked):
        latencies, correct = [], 0
        # 16-group requests (~50 kB per worker frame) until far more than a socket buffer has been
        # offered to the stalled link: its writes back up, the other two answer every request
        for r in range(60):
            batch = x[(r * 16) % 480:(r * 16) % 480 + 16]
            t = time.perf_counter()
            logits = await m.infer(batch)
            latencies.append(time.perf_counter() - t)
            correct += int((logits.argmax(-1) == y[(r * 16) % 480:(r * 16) % 480 + 16]).sum())
        stalled = m.links[2]
        assert stalled.stats["lagging_skips"] > 0 or stalled.stats["frames_dropped"] > 0
        assert correct / (60 * 32) > 0.8
        # no request waited for the stalled link's socket (a heartbeat period is 1 s)
        assert max(latencies) < 0.5, latencies


async def test_frames_of_decoded_requests_never_reach_a_backed_up_link(default_model, groups):
    x, _ = groups
    # never lagging: every frame is queued for the stalled link
    async with linked_master(default_model, [Worker(TOKEN), Worker(TOKEN), StalledWorker(TOKEN)], request_timeout=10.0,
                             max_queued_bytes=1 << 30) as (m, linked):
        results = await asyncio.gather(*(m.infer(x[i * 8:(i + 1) * 8]) for i in range(40)))
        assert len(results) == 40
        link = m.links[2]
        # what could not go out is dropped from the queue as each request decodes, not left to send later
        assert link.queued_bytes == 0 and not link.queue
        assert link.stats["frames_dropped"] > 0
        assert m.stats["bytes_sent"] == sum(l.stats["bytes_sent"] for l in m.links)


async def test_a_slow_link_that_keeps_draining_is_never_dropped(default_model, groups):
    x, _ = groups
    # heartbeats every 0.1 s: a link is declared dead after 0.3 s without progress
    async with linked_master(default_model, [Worker(TOKEN), Worker(TOKEN), SlowReaderWorker(TOKEN)], heartbeat_s=0.1,
                             max_queued_bytes=1 << 30) as (m, linked):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:  # 16-group requests, far more than the slow reader takes
            await asyncio.gather(*(m.infer(x[i * 16:(i + 1) * 16]) for i in range(4)))
        assert m.links[2].stats["bytes_sent"] > 0
        assert m.links[2].connects == 1, m.links[2].last_error  # slow, not dead
        assert linked.connections == [1, 1, 1]


async def test_a_worker_that_takes_pings_and_never_answers_is_dropped_though_its_link_drains(default_model, groups):
    x, _ = groups
    # heartbeats every 0.1 s; without the ping rule the draining backlog would keep this link "moving" for ever
    async with linked_master(default_model, [Worker(TOKEN), Worker(TOKEN), MuteSlowReaderWorker(TOKEN)], heartbeat_s=0.1,
                             max_queued_bytes=1 << 30) as (m, linked):
        mute = m.links[2]
        t0 = time.monotonic()

        async def keep_sending(i: int) -> None:  # 4 requests always in flight: the mute link's backlog never
            while mute.connects < 2 and time.monotonic() - t0 < 5.0:  # empties between rounds of requests
                await m.infer(x[i * 16:(i + 1) * 16])

        await asyncio.gather(*(keep_sending(i) for i in range(4)))
        assert mute.connects >= 2, mute.last_error
        assert "took our ping" in mute.last_error, mute.last_error
        assert [l.connects for l in m.links[:2]] == [1, 1]


def _delay_worker(delays: dict[int, float]) -> Worker:
    return Worker(TOKEN, faults=Faults(delay=lambda req, t: delays.get(req, 0.0)))


async def test_cancel_skips_queued_work_on_a_current_worker(default_model, groups):
    x, _ = groups
    slow = _delay_worker({0: 3.0})
    async with linked_master(default_model, [Worker(TOKEN), Worker(TOKEN), slow]) as (m, linked):
        await m.infer(x[:4], req_id=0)
        assert m.links[2].stats["cancels_sent"] == 0  # not at once: a worker that computes at once would just answer
        await asyncio.sleep(0.05)
        assert m.links[2].stats["cancels_sent"] == 1 and m.links[0].stats["cancels_sent"] == 0
        for _ in range(100):  # the cancel crosses the stream pair
            if slow.stats["cancelled"]:
                break
            await asyncio.sleep(0.01)
        assert slow.stats["cancelled"] == 1
        await asyncio.sleep(3.2)
        assert m.stats["late_results"] == 0  # the skipped request never answered


async def test_an_old_worker_gets_no_cancel_and_still_serves(default_model, groups):
    x, _ = groups
    old = OldWorker(TOKEN, faults=Faults(delay=lambda req, t: 0.5 if req == 0 else 0.0))
    async with linked_master(default_model, [Worker(TOKEN), Worker(TOKEN), old]) as (m, linked):
        assert m.links[2].minor == 0 and m.links[0].minor == 1
        await m.infer(x[:4], req_id=0)
        assert m.links[2].stats["cancels_sent"] == 0
        await asyncio.sleep(0.8)
        assert m.stats["late_results"] == 1 and old.stats["cancelled"] == 0
        logits = await m.infer(x[:4], req_id=1, info=(info_ := {}))
        assert logits.shape == (4, 2, 10) and len(info_["answered"]) >= 2


async def test_info_reports_this_requests_bytes_under_concurrency(default_model, groups):
    x, _ = groups
    async with linked_master(default_model, [Worker(TOKEN) for _ in range(3)]) as (m, linked):
        infos = [{} for _ in range(20)]
        await asyncio.gather(*(m.infer(x[i:i + 2], info=infos[i]) for i in range(20)))
        per_frame = len(m.plan.payloads(x[:2])[0]["x"]["data"])  # the 2-group encoded image per worker
        for i in infos:
            assert 3 * per_frame < i["bytes_sent"] < 3 * per_frame + 3 * 200  # three frames, headers included
            assert set(i) >= {"queue_ms", "encode_ms", "workers_ms", "decode_ms", "answered", "decode", "result_ms"}
            assert set(i["result_ms"]) == set(i["answered"]) and all(0 < v < i["workers_ms"] + 1e-6 for v in i["result_ms"].values())
            # the workers stage ends with the result that completed the request, not after its decode
            assert i["workers_ms"] == pytest.approx(max(i["result_ms"].values()))
        assert sum(i["bytes_sent"] for i in infos) == m.stats["bytes_sent"]  # no request counts another's bytes


async def test_overload_is_shed_and_no_request_outlives_its_deadline(default_model, groups):
    x, _ = groups
    async with linked_master(default_model, [Worker(TOKEN) for _ in range(3)], request_timeout=5.0) as (m, linked):
        for i in range(5):  # measures the encode cost the admission control works from
            await m.infer(x[i:i + 1])
        budget = 0.25
        outcomes, overshoot = {"ok": 0, "shed": 0, "late": 0}, []

        async def one(i: int) -> None:
            t = time.monotonic()
            try:
                await m.infer(x[i % 400:i % 400 + 1], deadline=t + budget)
                outcomes["ok"] += 1
            except Overloaded:
                outcomes["shed"] += 1
            except RequestFailed:
                outcomes["late"] += 1
            overshoot.append(time.monotonic() - (t + budget))

        await asyncio.gather(*(one(i) for i in range(1500)))  # all at once: far past what 2 cores encode in 0.25 s
        assert outcomes["shed"] > 0 and outcomes["ok"] > 0, outcomes
        assert m.stats["shed"] == outcomes["shed"]
        assert max(overshoot) < 0.1, (max(overshoot), outcomes)  # ended by its deadline, give or take a loop turn


async def test_a_lagging_link_left_out_of_a_request_takes_it_when_another_worker_fails(default_model, groups):
    x, _ = groups
    # worker 0 would answer request 1 after 2 s; worker 2 is healthy but its link counts as lagging
    async with linked_master(default_model, [_delay_worker({1: 2.0}), Worker(TOKEN), Worker(TOKEN)], max_queued_bytes=1) as (m, linked):
        m.links[2].queue[999] = b"x" * 10  # a queued frame of a request that is gone: the link lags
        m.links[2].queued_bytes = 10
        answered = {}
        task = asyncio.create_task(m.infer(x[:2], req_id=1, info=answered))
        for _ in range(200):
            if 1 in m.pending and m.pending[1].results:
                break
            await asyncio.sleep(0.005)
        p = m.pending[1]
        assert p.skipped == {2} and set(p.results) == {1} and p.outstanding == {0}
        m.links[0].comm.abort()  # worker 0 is lost: R = 2 now needs the lagging link
        logits = await asyncio.wait_for(task, 5)
        assert answered["answered"] == [1, 2] and logits.shape == (2, 2, 10)
        assert m.links[2].stats["frames_dropped"] >= 1  # the stale queued frame never reached the socket


def test_admission_plans_with_the_median_encode_time_so_one_stall_sheds_nothing(default_model):
    model, info = default_model
    m = Master(CodedPlan(model, info, 3), InProcessWorkers.placeholders(3), TOKEN, encode_threads=2)
    assert m.encode_s_per_group == 0.0  # nothing measured: admit everything
    m._encode_samples.extend([0.003] * 20 + [0.100])  # one request stalled 100 ms per group by a CPU spike
    assert m.encode_s_per_group == pytest.approx(0.003)
    now = time.monotonic()
    m.queued_groups = 90
    m._admit(1, 1, True, now, now + 0.5)  # a backlog: 91 groups x 3 ms on both encode threads, 0.14 s, within 0.5 s
    with pytest.raises(Overloaded, match="past capacity"):
        m._admit(2, 1, True, now, now + 0.1)
    m.queued_groups = 3  # no full batch waiting: one thread (the other core stays with the loop), 4 x 3 ms
    m._admit(3, 1, True, now, now + 0.013)
    with pytest.raises(Overloaded, match="past capacity"):
        m._admit(4, 1, True, now, now + 0.010)
    assert m.stats["shed"] == 2
    m.encode_pool.shutdown()


def test_admission_counts_the_workers_recent_time_and_forgets_it(default_model):
    model, info = default_model
    m = Master(CodedPlan(model, info, 3), InProcessWorkers.placeholders(3), TOKEN, encode_threads=2)
    now = time.monotonic()
    m._service_samples.extend([(now - 1.0, 0.300)] * 5 + [(now - 60.0, 9.0)] * 20)  # 20 stale, 5 recent
    assert m.workers_s(now) == pytest.approx(0.300)
    m._admit(1, 1, True, now, now + 0.5)  # 0.3 s at the workers fits in 0.5 s
    with pytest.raises(Overloaded, match="~300 ms at the workers"):
        m._admit(2, 1, True, now, now + 0.2)
    assert m.workers_s(now + 10.0) == 0.0  # nothing decoded lately: admit again and measure anew
    m._admit(3, 1, True, now + 10.0, now + 10.2)
    m.encode_pool.shutdown()
