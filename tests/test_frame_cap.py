"""A master never sends a worker a frame larger than the worker reads (docs/protocol.md §3: its
hello's caps.max_frame): a configure too large is refused at the handshake with what to do, and a
request frame too large for one worker goes to the others, or fails naming the limit."""

from __future__ import annotations

import numpy as np
import pytest

from edgecc.bundle import digest
from edgecc.data import load_sample
from edgecc.errors import EdgeccError
from edgecc.launch.inprocess import InProcessWorkers
from edgecc.master.master import Master, RequestFailed
from edgecc.modelfile import load_model
from edgecc.protocol.limits import Limits
from edgecc.schemes.aicc import CodedPlan
from edgecc.worker.server import Worker

from .conftest import TOKEN

TOK = TOKEN.encode()


@pytest.fixture(scope="module")
def plan():
    model, info = load_model("default")
    return CodedPlan(model, info, 3)


def _bundled(plan, max_frame: int) -> Worker:
    """A worker that preloaded the plan's arrays (so its configure carries none) and reads frames of up to max_frame."""
    return Worker(TOK, Limits(max_frame=max_frame), bundle=({}, plan.arrays, digest(plan.arrays)))


async def test_a_configure_larger_than_the_worker_reads_is_refused_with_what_to_do(plan):
    linked = InProcessWorkers([Worker(TOK, Limits(max_frame=16 * 1024)) for _ in range(3)])
    m = Master(plan, await linked.start(), TOK)
    try:
        with pytest.raises(EdgeccError, match=r"the configure is \d+ bytes, more than the worker reads \(16384.*--bundle"):
            await m.start(wait_ready=2)
        assert all(w.stats["requests"] == 0 for w in linked.workers)
    finally:
        await m.close()
        await linked.close()


async def test_a_request_too_large_for_one_worker_goes_to_the_others_or_fails_naming_the_limit(plan):
    images, labels = load_sample()
    small = 8 * 1024  # one group's frame (~6.3 kB) fits; eight groups' do not
    linked = InProcessWorkers([_bundled(plan, 1 << 20), _bundled(plan, 1 << 20), _bundled(plan, small)])
    m = Master(plan, await linked.start(), TOK)
    try:
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
        one = await m.infer(images[:2].reshape(1, 2, 28, 28))  # fits everywhere
        assert one.shape == (1, 2, 10)
        info: dict = {}
        eight = await m.infer(images[:16].reshape(8, 2, 28, 28), info=info)  # too large for worker 2: R=2 from 0 and 1
        assert sorted(info["answered"]) == [0, 1]
        assert (eight.argmax(-1).reshape(-1) == labels[:16]).mean() > 0.7
        assert m.links[2].stats["too_large"] >= 1 and m.links[2].stats["frames_sent"] == 1
        m.links[0].comm.abort()  # now only worker 1 can take a large request: it fails, saying why
        with pytest.raises(RequestFailed, match=r"worker 2 reads frames of up to 8192 bytes, this request's is \d+"):
            await m.infer(images[:16].reshape(8, 2, 28, 28))
    finally:
        await m.close()
        await linked.close()
    assert np.isfinite(one).all()
