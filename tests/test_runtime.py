"""The runtime end to end: real worker processes, real TCP on loopback, the in-process master.

Plans that are compared with the fp32 model in process encode in fp32; bf16 encoding has its own test."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from edgecc.data import load_sample
from edgecc.errors import EdgeccError
from edgecc.modelfile import load_model
from edgecc.master.master import Master, RequestFailed
from edgecc.master.stream import run_stream
from edgecc.schemes.aicc import CodedPlan

from .conftest import TOKEN

TOK = TOKEN.encode()


def direct_logits(model, images: np.ndarray, K: int) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(images.reshape(-1, K, 28, 28).astype(np.float32) / 255.0)
        return model(x).numpy()


async def stream_200_and_match_in_process(model, plan, workers) -> dict:
    """Stream 200 shipped images through `workers`; every request decodes to the in-process predictions."""
    images, labels = load_sample()
    m = await started(plan, workers)
    try:
        summary, preds = await run_stream(m, images[:200], labels[:200], groups_per_request=10)
    finally:
        await m.close()
    assert summary["requests_failed"] == 0
    assert np.array_equal(preds, direct_logits(model, images[:200], 2).argmax(-1).reshape(-1))
    return summary


async def started(plan, workers, **kw) -> Master:
    m = Master(plan, [w.address for w in workers], TOK, request_timeout=kw.pop("request_timeout", 10.0), **kw)
    await m.start(wait_ready=20)
    assert await m.wait_all_ready(20)
    return m


@pytest.mark.parametrize("name,placement", [("hb", "encoded"), ("hs", "encoded"), ("hb", "shared"), ("hs", "shared"),
                                            ("hs-maps", "encoded"), ("hs-maps", "shared"), ("hs-cheb", "shared")])
async def test_network_decode_equals_in_process(tiny_models, spawn_workers, name, placement):
    model, info = load_model(tiny_models[name])
    plan = CodedPlan(model, info, 3, placement, encode_precision="fp32")
    if name == "hs-cheb":  # the model's own worker points, sent to shared-placement workers as they are
        assert plan.alphas[0] == 1.0 and plan.alphas[2] == -1.0
    images, labels = load_sample()
    images, labels = images[:96], labels[:96]
    m = await started(plan, spawn_workers(3))
    try:
        logits = await m.infer(images.reshape(-1, 2, 28, 28))
        summary, preds = await run_stream(m, images, labels, groups_per_request=8, in_flight=3)
    finally:
        await m.close()
    want = direct_logits(model, images, 2)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.array_equal(preds, want.argmax(-1).reshape(-1))
    assert summary["requests_failed"] == 0 and summary["requests_decoded"] == 6
    assert summary["accuracy"] == pytest.approx(100 * float((preds == labels).mean()))


async def test_killing_one_of_three_loses_nothing(tiny_models, spawn_workers):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    images, labels = load_sample()
    workers = spawn_workers(3)
    m = await started(plan, workers)
    done = 0

    def progress(n):
        nonlocal done
        done += 1
        if done == 5:
            workers[0].kill()

    try:
        summary, preds = await asyncio.wait_for(run_stream(m, images, labels, groups_per_request=4, in_flight=2, progress=progress), 120)
    finally:
        await m.close()
    assert summary["requests_failed"] == 0
    assert summary["requests_decoded"] == 125
    assert (preds >= 0).all()
    assert np.array_equal(preds, direct_logits(model, images, 2).argmax(-1).reshape(-1))


async def test_killing_two_of_three_fails_requests_clearly_without_hanging(tiny_models, spawn_workers):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    images, labels = load_sample()
    workers = spawn_workers(3)
    m = await started(plan, workers, request_timeout=5.0)
    try:
        await m.infer(images[:8].reshape(-1, 2, 28, 28))
        workers[0].kill()
        workers[2].kill()
        for _ in range(100):  # the master notices closed sockets promptly
            if m.ready_count() == 1:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(RequestFailed, match="R=2"):
            await asyncio.wait_for(m.infer(images[:8].reshape(-1, 2, 28, 28)), 10)
        summary, preds = await asyncio.wait_for(run_stream(m, images[:80], labels[:80], groups_per_request=8), 30)
    finally:
        await m.close()
    assert summary["requests_failed"] == 5 and summary["requests_decoded"] == 0
    assert (preds == -1).all()
    assert any("R=2" in reason for reason in summary["failure_reasons"])


async def test_restarted_worker_is_used_again(tiny_models, spawn_workers):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    images, _ = load_sample()
    workers = spawn_workers(3)
    m = await started(plan, workers)
    try:
        workers[1].kill()
        workers[2].kill()
        await asyncio.sleep(0.3)
        workers[1].start()  # same port
        for _ in range(200):
            if m.links[1].ready.is_set() and m.links[1].connects == 2:
                break
            await asyncio.sleep(0.05)
        assert m.links[1].connects == 2
        # Workers 0 and 1 are the only live ones: a decode now needs the restarted worker.
        logits = await m.infer(images[:8].reshape(-1, 2, 28, 28))
    finally:
        await m.close()
    np.testing.assert_allclose(logits, direct_logits(model, images[:8], 2), rtol=1e-4, atol=1e-4)


async def test_wrong_token_is_refused_and_logged(tiny_models, spawn_workers):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    workers = spawn_workers(3, env={"EDGECC_TOKEN": "another-token-that-is-long-enough"})
    m = Master(plan, [w.address for w in workers], TOK)
    try:
        with pytest.raises(EdgeccError, match="only 0 of 3 workers ready"):
            await m.start(wait_ready=2)
    finally:
        await m.close()
    assert "AuthError" in m.links[0].last_error
    assert "refused peer" in workers[0].logs() and "HMAC mismatch" in workers[0].logs()
    assert "another-token" not in workers[0].logs() and TOKEN not in workers[0].logs()


BLOCK_TORCH = '''
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
'''


async def test_hb_worker_runs_without_torch(tiny_models, spawn_workers, tmp_path):
    import os

    from edgecc.master.probe import probe

    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, encode_precision="fp32")
    workers = spawn_workers(3, env=env)
    hello = await probe(workers[0].address, TOK)
    assert hello["caps"]["torch"] is False and hello["caps"]["placements"] == ["encoded", "plain"]
    await stream_200_and_match_in_process(model, plan, workers)


@pytest.mark.parametrize("kind", ["random", "adversarial"])
async def test_one_lying_worker_among_R_plus_2_is_named_and_harmless(tiny_models, spawn_workers, kind):
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 4, byzantine=1, encode_precision="fp32")
    honest = spawn_workers(3)
    liar = spawn_workers(1, extra=["--lie", kind])[0]
    workers = [honest[0], liar, honest[1], honest[2]]  # the liar is worker 1
    summary = await stream_200_and_match_in_process(model, plan, workers)
    suspects = [w["suspect_groups"] for w in summary["workers"]]
    assert suspects == [0, 100, 0, 0]


async def test_a_peer_trickling_bytes_cannot_stretch_the_handshake(spawn_workers):
    """The handshake deadline covers the whole auth message, not each read."""
    import time

    w = spawn_workers(1, extra=["--handshake-timeout", "1"])[0]
    reader, writer = await asyncio.open_connection(*w.address)
    await reader.read(4096)  # hello
    t0 = time.monotonic()

    async def trickle() -> None:
        writer.write(b"\x00\x00\x03\xe8")  # announces a 1000-byte frame (under the pre-auth limit)
        for _ in range(50):  # then one byte every 0.1 s
            await asyncio.sleep(0.1)
            try:
                writer.write(b"\x00")
                await writer.drain()
            except (ConnectionError, OSError):
                return

    async def until_closed() -> None:
        try:
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass

    task = asyncio.create_task(trickle())
    try:
        await asyncio.wait_for(until_closed(), 4.0)
    finally:
        task.cancel()
        writer.close()
    assert time.monotonic() - t0 < 4.0
    assert "refused peer" in w.logs()


async def test_small_requests_leave_a_core_to_the_event_loop_large_ones_use_all(tiny_models, spawn_workers):
    """With 2 encode threads, single-group (latency-bound) requests encode one at a time, so the event loop
    keeps a core for sends and results; 64-group (throughput) requests encode in parallel."""
    import threading
    import time

    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, "encoded")
    payloads, lock, state = plan.payloads, threading.Lock(), {"now": 0, "max": 0}

    def slow_payloads(images):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)  # long enough that concurrent calls overlap
        try:
            return payloads(images)
        finally:
            with lock:
                state["now"] -= 1

    plan.payloads = slow_payloads
    images, _ = load_sample()
    groups = images[:256].reshape(-1, 2, 28, 28)
    m = await started(plan, spawn_workers(3), encode_threads=2)
    try:
        await asyncio.gather(*(m.infer(groups[i : i + 1]) for i in range(4)))
        assert state["max"] == 1
        await asyncio.gather(*(m.infer(groups[i * 64 : (i + 1) * 64]) for i in range(2)))
        assert state["max"] == 2
    finally:
        await m.close()


async def test_bf16_encoding_decodes_what_the_in_process_bf16_encoder_gives(tiny_models, spawn_workers):
    """The default CNN plan encodes in bf16 (where the CPU has native kernels): the network result equals
    the same arithmetic in process (bf16 coefficients, fp32 polynomial, H, Lagrange decode)."""
    from edgecc.coding.lagrange import Decoder

    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3, "encoded", encode_precision="bf16")
    images, _ = load_sample()
    groups = images[:64].reshape(-1, 2, 28, 28)
    m = await started(plan, spawn_workers(3))
    try:
        got = await m.infer(groups)
    finally:
        await m.close()
    with torch.inference_mode():
        x = torch.from_numpy(groups.astype(np.float32) / 255.0)
        y = model.compute(model.encode(x, plan.alphas, "bf16")).double().numpy()
    want = Decoder(plan.alphas, plan.scheme.betas(), plan.R).decode({0: y[:, 0], 1: y[:, 1]})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(got - direct_logits(model, groups, 2)).max() > 0  # it really ran in bf16


async def test_learned_code_runs_as_a_scheme_and_rebuilds_one_missing_slot(tiny_models, spawn_workers):
    """Workers 0, 1 run the base MLP on the data images, worker 2 on the learned parity. With all three, the
    data slots are the base model's own outputs; with worker 0 dead, slot 0 comes from the learned decoder."""
    from edgecc.schemes.learned_code import LearnedCodePlan

    model, info = load_model(tiny_models["lc"])
    plan = LearnedCodePlan(model, info)
    assert (plan.N, plan.K, plan.placement) == (3, 2, "plain")
    images, _ = load_sample()
    groups = images[:64].reshape(-1, 2, 28, 28)
    x = torch.from_numpy(groups.astype(np.float32) / 255.0)
    with torch.inference_mode():
        base = model.base(x.reshape(-1, 28, 28)).reshape(-1, 2, 10).numpy()
        parity_out = model.base(model.encoder(x)).numpy()
        rebuilt = model.decoder(torch.from_numpy(np.stack([np.zeros_like(base[:, 0]), base[:, 1], parity_out], 1))).numpy()
    workers = spawn_workers(3)
    m = await started(plan, workers)
    try:
        got = await m.infer(groups)
        exact = [np.allclose(got[:, n], base[:, n], rtol=1e-4, atol=1e-5) for n in range(2)]
        # decoded from the first 2 answers: both data workers, or one of them and the parity
        assert all(exact) if plan.rebuilt_groups == 0 else sum(exact) == 1 and plan.rebuilt_groups == 32
        plan.rebuilt_groups = 0
        workers[0].kill()
        for _ in range(100):  # until the master has noticed the dead link
            if not m.links[0].ready.is_set():
                break
            await asyncio.sleep(0.05)
        got = await m.infer(groups)
    finally:
        await m.close()
    np.testing.assert_allclose(got[:, 1], base[:, 1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, 0], rebuilt[:, 0], rtol=1e-4, atol=1e-4)
    assert plan.rebuilt_groups == 32
    with pytest.raises(EdgeccError, match="one data slot"):
        plan.decode({0: base[:, 0]})


async def test_closing_the_master_while_a_request_encodes_fails_it_instead_of_hanging(tiny_models, spawn_workers):
    import time

    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3)
    payloads = plan.payloads
    plan.payloads = lambda images: (time.sleep(0.5), payloads(images))[1]
    images, _ = load_sample()
    m = await started(plan, spawn_workers(3), encode_threads=1)
    first = asyncio.create_task(m.infer(images[:2].reshape(1, 2, 28, 28)))
    queued = asyncio.create_task(m.infer(images[:128].reshape(64, 2, 28, 28)))  # waits for the only thread
    await asyncio.sleep(0.1)
    await m.close()
    for task in (first, queued):
        with pytest.raises(RequestFailed, match="closed"):
            await asyncio.wait_for(task, 5)
