"""Small requests encoded together: the plan's payloads_many, and the master's coalescing of waiting
small requests (Master._encode_small) over real worker processes on loopback."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edgecc.data import load_sample
from edgecc.master.master import COALESCE_GROUPS, Master, RequestFailed
from edgecc.modelfile import load_model
from edgecc.protocol.frames import unpack_array
from edgecc.schemes.aicc import CodedPlan
from edgecc.schemes.base import payloads_many
from edgecc.schemes.registry import build_plan

from .conftest import TOKEN


def _groups(n: int, offset: int = 0) -> np.ndarray:
    images, _ = load_sample()
    return images[2 * offset: 2 * (offset + n)].reshape(n, 2, 28, 28)


@pytest.mark.parametrize("name,precision", [("hb", "bf16"), ("hs", "bf16"), ("hb", "fp32"), ("hs", "fp32")])
def test_one_encoder_call_gives_each_request_its_own_payloads(tiny_models, name, precision):
    from edgecc.nets.aicc import native_bf16

    if precision == "bf16" and not native_bf16():
        pytest.skip("this CPU has no native bf16 kernels: the master encodes in fp32 here")
    model, info = load_model(tiny_models[name])
    plan = CodedPlan(model, info, 3, encode_precision=precision)
    batches = [_groups(1, 0), _groups(3, 1), _groups(2, 4)]
    many = plan.payloads_many(batches)
    assert len(many) == 3
    for batch, got in zip(batches, many):
        alone = plan.payloads(batch)
        assert len(got) == len(alone) == plan.N
        for g, a in zip(got, alone):
            assert set(g) == set(a)
            for key in a:
                x, y = (unpack_array({**d[key], "data": bytes(d[key]["data"])}, key) for d in (g, a))
                assert x.shape == y.shape and x.dtype == y.dtype
                if precision == "bf16":  # oneDNN's bf16 kernels give each group the same bits at any batch
                    assert np.array_equal(x, y), key
                else:
                    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_plans_without_payloads_many_encode_each_request_alone():
    class Minimal:  # a plan written against the registry's checked members only
        def payloads(self, images):
            return [{"x": images.shape[0]}]

    assert payloads_many(Minimal(), [_groups(1), _groups(2)]) == [[{"x": 1}], [{"x": 2}]]
    plan = build_plan("approxifer", 3, 2)
    assert [len(p) for p in payloads_many(plan, [_groups(1), _groups(2)])] == [3, 3]


async def _master(plan, spawn_workers, **kw) -> Master:
    m = Master(plan, [w.address for w in spawn_workers(plan.N)], TOKEN.encode(), request_timeout=20.0, **kw)
    await m.start(wait_ready=20)
    assert await m.wait_all_ready(20)
    return m


async def test_waiting_small_requests_share_an_encoder_call_and_decode_as_alone(tiny_models, spawn_workers):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    m = await _master(plan, spawn_workers, encode_threads=2)  # one slot for small requests
    try:
        alone = [await m.infer(_groups(1, i)) for i in range(24)]  # one at a time: one call each
        assert m.stats["encoder_calls"] == m.stats["requests_encoded"] == 24
        together = await asyncio.gather(*(m.infer(_groups(1, i)) for i in range(24)))
        calls = m.stats["encoder_calls"] - 24
        assert m.stats["requests_encoded"] == 48
        # the first takes the free slot alone; the others wait behind it and go in batches of up to COALESCE_GROUPS
        assert 2 <= calls <= 1 + -(-23 // min(23, COALESCE_GROUPS)) + 1, calls
        for a, t in zip(alone, together):
            np.testing.assert_allclose(a, t, rtol=0, atol=1e-4)  # fp32 encodes of another batch size: ~1e-6 apart
            assert np.array_equal(a.argmax(-1), t.argmax(-1))
    finally:
        await m.close()


async def test_a_bad_request_in_a_batch_fails_alone(tiny_models, spawn_workers):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    m = await _master(plan, spawn_workers, encode_threads=2)
    try:
        good = [_groups(1, i) for i in range(6)]
        bad = np.zeros((1, 2, 27, 28), np.uint8)  # the wrong image shape
        got = await asyncio.gather(*(m.infer(g) for g in good[:3]), m.infer(bad), *(m.infer(g) for g in good[3:]),
                                   return_exceptions=True)
        assert isinstance(got[3], Exception) and "28" in str(got[3]), got[3]
        assert all(isinstance(g, np.ndarray) and g.shape == (1, 2, 10) for i, g in enumerate(got) if i != 3), got
    finally:
        await m.close()


async def test_small_requests_past_their_deadline_in_the_queue_fail_and_the_rest_go_on(tiny_models, spawn_workers):
    import time

    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    m = await _master(plan, spawn_workers, encode_threads=2)
    try:
        now = time.monotonic()
        tasks = [m.infer(_groups(1, i), deadline=now + (0.0005 if i % 2 else 20)) for i in range(10)]
        got = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(g, np.ndarray) for g in got[0::2]), got
        assert all(isinstance(g, RequestFailed) for g in got[1::2]), got
        assert isinstance(await m.infer(_groups(1)), np.ndarray)  # the master still encodes
    finally:
        await m.close()


async def test_a_full_batch_waiting_opens_the_core_kept_for_the_loop(tiny_models, spawn_workers):
    """Small requests encode one batch at a time while few wait (a core stays with the event loop), and on
    every encode thread once a full batch (coalesce_groups requests) waits behind the running encode: the
    backlog's latency is the queue's by then, and a kept core would cap the master's throughput."""
    import threading
    import time

    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    m = await _master(plan, spawn_workers, encode_threads=2, coalesce_groups=4)
    running, peak, lock = [0], [0], threading.Lock()
    real = m._frames_many

    def slow_frames_many(items):  # an encode that takes long enough for requests to line up behind it
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.05)
            return real(items)
        finally:
            with lock:
                running[0] -= 1

    m._frames_many = slow_frames_many
    try:
        await asyncio.gather(*(m.infer(_groups(1, i)) for i in range(3)))  # never a full batch waiting
        assert peak[0] == 1
        got = await asyncio.gather(*(m.infer(_groups(1, i)) for i in range(13)))
        assert peak[0] == 2 and all(g.shape == (1, 2, 10) for g in got)
    finally:
        await m.close()


@pytest.mark.skipif(not __import__("edgecc.nets.blocks", fromlist=["_HAS_FUSED_CONV"])._HAS_FUSED_CONV,
                    reason="this torch has no fused oneDNN convolution (forward_bf16 runs under autocast)")
def test_encoder_networks_side_by_side_give_their_own_coefficients_bit_for_bit():
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from edgecc.nets.blocks import stacks_on

    model, _ = load_model("default")
    x = torch.from_numpy(_groups(3).astype(np.float32) / 255.0)
    alone = model.gamma.forward_bf16(x)
    with ThreadPoolExecutor(1) as pool, stacks_on(pool):
        side = model.gamma.forward_bf16(x)
    assert torch.equal(alone, side)


async def test_a_lone_small_request_runs_its_networks_on_the_idle_core_and_decodes_the_same(spawn_workers):
    """On 2 encode threads a lone small request's encoder networks run side by side (the stack pool takes all
    but the first), a large one's do not; the answers are a one-thread master's (the coefficients are the same
    bit for bit, tested above; the decode may use another 2 of the 3 answers, exact to float32 rounding)."""
    model, info = load_model("default")
    plan = CodedPlan(model, info, 3)
    workers = [w.address for w in spawn_workers(3)]
    got = {}
    for threads in (1, 2):
        m = Master(plan, workers, TOKEN.encode(), request_timeout=20.0, encode_threads=threads)
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
        try:
            assert (m.stack_pool is None) == (threads == 1)
            submitted = []
            if m.stack_pool is not None:
                real = m.stack_pool.submit
                m.stack_pool.submit = lambda *a, **k: (submitted.append(1), real(*a, **k))[1]
            cpu0 = m.encoder_cpu_s()
            got[threads] = await m.infer(_groups(1))
            assert len(submitted) == (plan.scheme.G if threads == 2 else 0)  # all networks but the first
            assert m.encoder_cpu_s() > cpu0
            await m.infer(_groups(8))  # not small: one network after the other
            assert len(submitted) == (plan.scheme.G if threads == 2 else 0)
        finally:
            await m.close()
    np.testing.assert_allclose(got[1], got[2], rtol=0, atol=1e-3)
    assert np.array_equal(got[1].argmax(-1), got[2].argmax(-1))
