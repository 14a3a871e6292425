"""ApproxIFER end to end: real worker processes on loopback running the shipped centralized MLP on
Berrut-combined images; the master decodes from whichever K answer, and around a lying worker."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from edgecc.data import load_sample
from edgecc.errors import ConfigError
from edgecc.modelfile import load_model
from edgecc.schemes.approxifer import ApproxIFERPlan
from edgecc.worker.compute import PlainCompute
from edgecc.master.master import Master
from edgecc.master.stream import run_stream
from edgecc.worker.plain_cnn import PlainTorchCompute, plain_compute

from .conftest import TOKEN, until_lost

TOK = TOKEN.encode()


def in_process(plan: ApproxIFERPlan, groups: np.ndarray) -> dict[int, np.ndarray]:
    """Every worker's output computed here, as a worker computes it (the payload it would receive, f4)."""
    f = plain_compute(plan.arrays)
    wx = plan.code.encode(groups.astype(np.float32) / 255.0)
    return {n: f(np.ascontiguousarray(wx[:, n])) for n in range(plan.N)}


async def started(plan, workers) -> Master:
    m = Master(plan, [w.address for w in workers], TOK, request_timeout=10.0)
    await m.start(wait_ready=20)
    assert await m.wait_all_ready(20)
    return m


async def test_decodes_over_real_workers_as_in_process_from_any_K_and_with_a_killed_worker(spawn_workers):
    net, info = load_model("default-mlp")
    plan = ApproxIFERPlan(net, info, K=2, N=4)  # S = 2
    images, _ = load_sample()
    groups = images[:64].reshape(-1, 2, 28, 28)
    outs = in_process(plan, groups)
    want = {s: plan.code.decode({n: outs[n] for n in s}) for s in itertools.combinations(range(4), 2)}
    # float32 workers may round differently from this process (batching); decoding amplifies it, and the
    # subsets' decodes differ by far more (> 10 in the logits)
    tol = 1e-5 * max(np.abs(w).max() for w in want.values())
    workers = spawn_workers(4)
    m = await started(plan, workers)
    try:
        for _ in range(4):  # whichever 2 answer first: the decode is the in-process one from those 2
            info_ = {}
            got = await m.infer(groups, info=info_)
            subset = tuple(info_["decode"]["subset"])  # the plan's report: the workers it decoded from
            assert len(subset) == 2 and sorted(info_["answered"]) == list(subset)
            np.testing.assert_allclose(got, want[subset], rtol=0, atol=tol)
            assert sum(np.allclose(got, w, rtol=0, atol=tol) for w in want.values()) == 1  # and no other subset's
        workers[0].kill()
        workers[2].kill()
        await until_lost(m, 0)
        await until_lost(m, 2)
        info_ = {}
        got = await m.infer(groups, info=info_)  # the only two left decode, as in process
        assert info_["decode"]["subset"] == [1, 3]
        np.testing.assert_allclose(got, want[(1, 3)], rtol=0, atol=tol)
    finally:
        await m.close()


async def test_a_lying_worker_is_located_and_dropped_with_E_1(spawn_workers):
    """K=2, E=1, S=0: N = 2K + 2E − 1 = 5. The liar (worker 1) is named in every group, nobody else is,
    and the predictions are the in-process decode from the four honest workers. (Every kind of lie at
    every position: tests/test_berrut.py.)"""
    net, info = load_model("default-mlp")
    plan = ApproxIFERPlan(net, info, K=2, N=5, byzantine=1)
    images, labels = load_sample()
    images, labels = images[:200], labels[:200]
    outs = in_process(plan, images.reshape(-1, 2, 28, 28))
    honest = plan.code.decode({n: y for n, y in outs.items() if n != 1})
    honest_workers = spawn_workers(4)
    liar = spawn_workers(1, extra=["--lie", "random"])[0]
    m = await started(plan, [honest_workers[0], liar, *honest_workers[1:]])
    try:
        summary, preds = await run_stream(m, images, labels, groups_per_request=10)
    finally:
        await m.close()
    assert summary["requests_failed"] == 0
    assert [w["suspect_groups"] for w in summary["workers"]] == [0, 100, 0, 0, 0]
    assert np.array_equal(preds, honest.argmax(-1).reshape(-1))


def test_plan_refuses_what_it_cannot_do():
    net, info = load_model("default-mlp")
    with pytest.raises(ConfigError, match="needs N >= 5"):
        ApproxIFERPlan(net, info, K=2, N=4, byzantine=1)
    with pytest.raises(ConfigError, match="needs N >= 8"):
        ApproxIFERPlan(net, info, K=8, N=7)
    with pytest.raises(ConfigError, match="points"):
        ApproxIFERPlan(net, info, K=2, N=3, points="equispaced")
    aicc, ainfo = load_model("default")
    with pytest.raises(ConfigError, match="centralized model"):
        ApproxIFERPlan(aicc, ainfo, K=2, N=3)
    plan = ApproxIFERPlan(net, info, K=8, N=9)
    assert plan.need == "any K=8 of 9" and plan.oracle({n: 0.01 * n for n in range(9)}) == pytest.approx(0.07)
    assert not plan.complete(set(range(7))) and plan.complete(set(range(1, 9)))


def test_cnn_worker_compute_is_the_centralized_cnn(tmp_path):
    """The CNN base's worker compute (worker/plain_cnn) equals the torch model; the MLP's stays numpy."""
    import torch

    from edgecc.nets.baselines import CentralizedCNN
    from edgecc.worker.plain_cnn import cnn_arrays

    torch.manual_seed(0)
    cnn = CentralizedCNN().eval()
    x = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    f = plain_compute(cnn_arrays(cnn))
    assert isinstance(f, PlainTorchCompute) and f.kind == "cnn"
    with torch.inference_mode():
        np.testing.assert_allclose(f(x), cnn(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    net, info = load_model("default-mlp")
    plan = ApproxIFERPlan(net, info, K=2, N=3)
    assert isinstance(plain_compute(plan.arrays), PlainCompute)
    with pytest.raises(ConfigError, match="do not fit"):
        PlainTorchCompute("cnn", {"cnn.stack.head.weight": np.zeros((1, 1), np.float32)})


async def test_cnn_base_over_tcp():
    """The CNN base over real TCP, workers in this process: worker.py's plain placement goes through
    worker/plain_cnn.plain_compute (the MLP keeps the numpy PlainCompute) and decodes as in process."""
    from edgecc.worker import server as wm
    from edgecc.schemes_table import CNN_BASE

    net, info = load_model(CNN_BASE)
    plan = ApproxIFERPlan(net, info, K=2, N=3)
    images, _ = load_sample()
    groups = images[:32].reshape(-1, 2, 28, 28)
    outs = in_process(plan, groups)
    workers = [wm.Worker(TOK, name=f"cnn{i}") for i in range(3)]
    addresses = [await w.start("127.0.0.1:0") for w in workers]
    serving = [asyncio.create_task(w.serve_forever()) for w in workers]
    m = Master(plan, addresses, TOK, request_timeout=20.0)
    try:
        await m.start(wait_ready=20)
        info_ = {}
        got = await m.infer(groups, info=info_)
        want = plan.code.decode({n: outs[n] for n in info_["decode"]["subset"]})
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    finally:
        await m.close()
        for w, t in zip(workers, serving):
            t.cancel()
            await w.close()
