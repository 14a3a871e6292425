"""A worker operator's own base model: `edgecc worker --base MODULE:CALLABLE` loads it, announces it in
`hello.caps.base`, and runs it for the model-agnostic schemes of a master whose model option is "worker"
(the "user" compute kind; no weights travel). Real worker processes, real TCP on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgecc.datasets import load
from edgecc.errors import ConfigError, EdgeccError
from edgecc.master.handshake import BaseMismatch
from edgecc.master.master import Master
from edgecc.master.probe import probe
from edgecc.protocol.frames import RemoteProtocolError
from edgecc.protocol.messages import parse
from edgecc.schemes.registry import build_plan

from .conftest import TOKEN, started_together

torch = pytest.importorskip("torch")

TOK = TOKEN.encode()
SAMPLE = load("sample")  # (1000, 1, 28, 28)
USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    def make(seed=0):
        """A tiny CNN for 28x28 gray images, 10 classes, its weights fixed by the seed."""
        torch.manual_seed(seed)
        return nn.Sequential(nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 13 * 13, 10))


    def make_other():
        return make(seed=1)


    def not_a_module():
        return 42


    def broken():
        raise RuntimeError("no weights here")
''')


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user-base")
    (d / "mymod_user_base.py").write_text(USER_MODULE)
    sys.path.insert(0, str(d))  # the in-process model, the one the workers import
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def mymod(user_dir):
    import importlib

    return importlib.import_module("mymod_user_base")


@pytest.fixture(scope="module")
def workers(user_dir):
    """Started in parallel: three running mymod's model, one another seed of it, one no base at all."""
    env = {"PYTHONPATH": str(user_dir)}
    args = {f"good{i}": ["--base", "mymod_user_base:make"] for i in range(3)}
    args |= {"other": ["--base", "mymod_user_base:make_other"], "none": []}
    yield from started_together(user_dir, args, env)


def _good(workers):
    return [workers[f"good{i}"].address for i in range(3)]


def _groups(B: int, K: int) -> np.ndarray:
    return SAMPLE.images[: B * K, 0].reshape(B, K, 28, 28)


async def _started(plan, addresses, wait: float = 20.0) -> Master:
    m = Master(plan, addresses, TOK)
    try:
        await m.start(wait_ready=wait)
        assert await m.wait_all_ready(wait)
    except BaseException:
        await m.close()
        raise
    return m


async def _infer_once(plan, addresses, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """One request through a master started on `addresses`, closed after: (logits, info)."""
    m = await _started(plan, addresses)
    try:
        info: dict = {}
        return await m.infer(images, info=info), info
    finally:
        await m.close()


async def test_the_hello_announces_the_base_and_the_user_compute(workers, mymod):
    from edgecc.worker.user_base import weights_digest

    caps = (await probe(workers["good0"].address, TOK))["caps"]
    assert caps["base"] == {"name": "mymod_user_base:make", "in_shape": [28, 28], "classes": 10,
                            "digest": weights_digest(mymod.make())}
    assert caps["computes"][-1] == "user"
    other = (await probe(workers["other"].address, TOK))["caps"]["base"]
    assert other["digest"] != caps["base"]["digest"] and other["name"] == "mymod_user_base:make_other"
    none = (await probe(workers["none"].address, TOK))["caps"]
    assert "base" not in none and "user" not in none["computes"]  # a worker without --base says what it said before


async def test_uncoded_runs_the_workers_base_and_returns_its_logits(workers, mymod):
    plan = build_plan("uncoded", 3, 3, model="worker")
    assert plan.spec.to_wire() == {"kind": "user", "in_shape": [28, 28], "out": 10} and plan.wire_arrays == {}
    images = _groups(4, 3)
    got, info = await _infer_once(plan, _good(workers), images)
    with torch.inference_mode():
        want = mymod.make().eval()(torch.from_numpy(images.reshape(12, 28, 28).astype(np.float32) / 255.0)).numpy()
    np.testing.assert_allclose(got.reshape(12, 10), want, rtol=1e-5, atol=1e-5)
    assert info["bytes_sent"] < 12 * 28 * 28 * 4 + 3 * 200  # the images only: the master holds no weights to send


async def test_approxifer_decodes_from_any_k_of_the_workers_base(workers, mymod):
    plan = build_plan("approxifer", 3, 2, model="worker")
    images = _groups(8, 2)
    got, info = await _infer_once(plan, _good(workers), images)
    assert got.shape == (8, 2, 10) and np.isfinite(got).all()
    # what the K workers that answered first computed, here: the in-process model on their Berrut combinations
    subset = info["decode"]["subset"]
    assert len(subset) == 2
    wx = plan.code.encode(images.astype(np.float32) / 255.0)  # (B, N, 28, 28), as the master sent them
    with torch.inference_mode():
        net = mymod.make().eval()
        results = {n: net(torch.from_numpy(np.ascontiguousarray(wx[:, n]))).numpy() for n in subset}
    np.testing.assert_allclose(got, plan.decoded(results)[0], rtol=1e-4, atol=1e-5)


async def test_a_worker_with_another_base_is_refused_and_named(workers, mymod):
    from edgecc.worker.user_base import weights_digest

    digest = weights_digest(mymod.make())
    addresses = [workers["good0"].address, workers["good1"].address, workers["other"].address]
    plan = build_plan("uncoded", 3, 3, model=f"worker?digest={digest}")  # pinned: the plan names the base
    with pytest.raises(BaseMismatch) as e:
        await _started(plan, addresses, wait=15)
    assert "1 of 3 workers do not run the base model" in str(e.value)
    assert "worker 2" in str(e.value) and "'mymod_user_base:make_other'" in str(e.value), str(e.value)
    assert "not the one the plan pins" in str(e.value)
    # not pinned: every worker must run the base the first to answer runs; whichever that was, worker 2 is named
    with pytest.raises(BaseMismatch, match="worker 2") as e:
        await _started(build_plan("uncoded", 3, 3, model="worker"), addresses, wait=15)
    assert "every worker must run the same base" in str(e.value)


async def test_a_worker_without_a_base_or_of_other_images_is_refused(workers):
    addresses = [workers["good0"].address, workers["good1"].address, workers["none"].address]
    with pytest.raises(BaseMismatch, match=r"worker 2 \(.*\) runs no base model of its own.*edgecc worker --base"):
        await _started(build_plan("uncoded", 3, 3, model="worker"), addresses, wait=15)
    with pytest.raises(BaseMismatch, match=r"3 of 3 workers .* takes 32×32 images to 10 classes"):
        await _started(build_plan("uncoded", 3, 3, model="worker?shape=32x32"), _good(workers), wait=15)


def test_a_worker_refuses_a_user_configure_it_cannot_run(workers, mymod):
    """The worker's own check, past any master: another digest, another shape, arrays sent along."""
    from edgecc.protocol.messages import Configure
    from edgecc.worker.server import Worker
    from edgecc.worker.user_base import UserBase

    base = UserBase.load("mymod_user_base:make")
    w = Worker(TOK, base=base)
    spec = {"kind": "user", "in_shape": [28, 28], "out": 10}
    ok = w._configure(Configure(0, "uncoded", {}, spec, "f4", base.digest, None, None))
    assert ok.compute(SAMPLE.images[:2, 0].astype(np.float32) / 255).shape == (2, 10)
    with pytest.raises(ConfigError, match="configure names base 000000000000…; this worker runs"):
        w._configure(Configure(0, "uncoded", {}, spec, "f4", "0" * 64, None, None))
    with pytest.raises(ConfigError, match="takes 32×32 images to 10 logits"):
        w._configure(Configure(0, "uncoded", {}, {**spec, "in_shape": [32, 32]}, "f4", base.digest, None, None))
    bare = Worker(TOK)
    with pytest.raises(EdgeccError, match="this worker has none"):
        bare._configure(Configure(0, "uncoded", {}, spec, "f4", base.digest, None, None))
    bare.configure_pool.shutdown()
    bad = {"t": "configure", "index": 0, "scheme": "uncoded", "params": {}, "compute": spec, "wire_dtype": "f4",
           "digest": base.digest, "arrays": {"w": {}}, "dataset": None}
    with pytest.raises(RemoteProtocolError, match="arrays must be nil for the 'user' compute"):
        parse(bad)
    w.configure_pool.shutdown()


@pytest.mark.parametrize("spec, error", [
    ("mymod_user_base:missing", "module 'mymod_user_base' has no 'missing'"),
    ("mymod_user_base:not_a_module", "not_a_module() returned a int, not a torch.nn.Module"),
    ("mymod_user_base:broken", "broken() failed: RuntimeError: no weights here"),
    ("mymod_user_base:make?shape=3x32x32", "the model fails on a batch of 3×32×32 images"),
    ("mymod_user_base:make?shape=5x5x5", "shape must be HxW (one channel) or 3xHxW"),
    ("/tmp/model.pt", "expected MODULE:CALLABLE"),
    ("mymod_user_base", "expected MODULE:CALLABLE"),
])
def test_a_bad_base_is_refused_when_loaded(user_dir, spec, error):
    from edgecc.worker.user_base import UserBase

    with pytest.raises(ConfigError) as e:
        UserBase.load(spec)
    assert error in str(e.value), str(e.value)


def test_a_worker_with_a_bad_base_stops_at_start(tmp_path):
    """The command line: a clear error and a non-zero exit, before listening."""
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "worker", "--listen", "127.0.0.1:0", "--base",
                        "no_such_module_here:make"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "EDGECC_TOKEN": TOKEN})
    assert r.returncode == 2, r.stderr
    assert "cannot import module 'no_such_module_here'" in r.stderr and "PYTHONPATH" in r.stderr, r.stderr
    assert "listening" not in r.stderr
