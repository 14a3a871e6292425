"""The light master as a runtime scheme (ours, not the paper's; schemes/light_master.py): Lagrange-coded inputs
to real worker processes running the shipped quadratic-activation MLP (the "mlp" compute kind with act "quad"),
decoded exactly from any R = 2(K−1)+1 answers, with a straggler and with a killed worker."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from edgecc.data import load_sample
from edgecc.errors import ConfigError
from edgecc.master.master import Master
from edgecc.modelfile import load_model, read_header
from edgecc.protocol import compute_spec
from edgecc.protocol.compute_spec import ComputeSpec
from edgecc.protocol.frames import RemoteProtocolError
from edgecc.schemes.light_master import LightMasterPlan
from edgecc.schemes.registry import build_plan, get, scheme_for_model
from edgecc.worker.compute import PlainCompute

from .conftest import REPO, TOKEN, until_lost

TOK = TOKEN.encode()


def direct(plan: LightMasterPlan, groups: np.ndarray) -> np.ndarray:
    """f(x_k) of every image, in process (float64 torch): what the decode must give."""
    x = torch.from_numpy(groups.reshape(-1, *groups.shape[2:]).astype(np.float64) / 255.0)
    model = load_model("poly-mlp")[0].double()
    with torch.inference_mode():
        return model(x).numpy().reshape(groups.shape[0], plan.K, plan.classes)


def test_the_numpy_worker_runs_the_torch_model_and_every_R_subset_decodes_it():
    net, info = load_model("poly-mlp")
    assert info["kind"] == "poly-mlp" and info["hidden"] == [512]
    plan = LightMasterPlan(net, info, K=2, N=5)
    images, _ = load_sample()
    groups = images[:64].reshape(-1, 2, 28, 28)
    want = direct(plan, groups)
    f = PlainCompute.from_spec(plan.spec, plan.arrays)  # what the worker builds from its configure
    assert f.act == "quad"
    with torch.inference_mode():
        x = torch.from_numpy(groups.reshape(-1, 28, 28).astype(np.float32) / 255.0)
        np.testing.assert_allclose(f(x.numpy()), net(x).numpy(), rtol=1e-5, atol=1e-4)
    wx = plan.encode(groups)
    outs = {n: f(np.ascontiguousarray(wx[:, n])) for n in range(plan.N)}
    for used in itertools.combinations(range(plan.N), plan.R):
        got, report = plan.decoded({n: outs[n] for n in used})
        assert report["subset"] == list(used)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
    _, report = plan.decoded(outs)  # more than R in hand: the best-conditioned R
    assert len(report["subset"]) == plan.R
    with pytest.raises(Exception, match="R=3"):
        plan.decoded({n: outs[n] for n in range(2)})


async def test_decodes_over_real_workers_past_a_straggler_and_a_killed_worker(spawn_workers):
    plan = build_plan("light-master", 4, 2)  # R = 3: one straggler
    images, _ = load_sample()
    groups = images[:64].reshape(-1, 2, 28, 28)
    want = direct(plan, groups)
    top2 = np.sort(want, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-3  # predictions that float rounding cannot flip
    slow = json.dumps({"latency": {"dist": "constant", "value": 1.5}})
    workers = spawn_workers(3) + spawn_workers(1, extra=["--behaviour", slow])  # worker 3 answers 1.5 s late
    m = Master(plan, [w.address for w in workers], TOK, request_timeout=20.0)
    await m.start(wait_ready=20)
    assert await m.wait_all_ready(20)
    try:
        for _ in range(2):  # the straggler is never waited for
            info = {}
            got = await m.infer(groups, info=info)
            assert info["decode"]["subset"] == [0, 1, 2]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
            assert np.array_equal(got.argmax(-1), want.argmax(-1))
        workers[1].kill()
        await until_lost(m, 1)
        info = {}
        got = await m.infer(groups, info=info)  # the straggler is needed now
        assert info["decode"]["subset"] == [0, 2, 3]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
        assert np.array_equal(got.argmax(-1), want.argmax(-1))
    finally:
        await m.close()


def test_fewer_workers_than_R_are_refused_with_the_R_needed():
    with pytest.raises(ConfigError, match=r"K=2 needs N >= R = 2\(K−1\)\+1 = 3 workers"):
        build_plan("light-master", 2, 2)
    with pytest.raises(ConfigError, match=r"= 15 workers .* got N=14"):
        build_plan("light-master", 14, 8)
    plan = build_plan("light-master", 16, 8)
    assert plan.R == 15 and plan.need == "any R=15 of 16" and plan.placement == "plain"
    assert plan.oracle({n: 0.01 * n for n in range(16)}) == pytest.approx(0.14)
    assert plan.oracle({**{n: None for n in range(2)}, **{n: 0.0 for n in range(2, 16)}}) is None
    assert not plan.complete(set(range(14))) and plan.complete(set(range(1, 16)))
    mlp, info = load_model("default-mlp")
    with pytest.raises(ConfigError, match="poly-mlp"):
        build_plan("light-master", 4, 2, model=(mlp, info))


def test_declared_ours_and_picked_for_poly_mlp_models():
    assert "ours" in get("light-master").summary
    assert scheme_for_model("poly-mlp") == "light-master"
    # the benchmark's checkpoint is the shipped model, in the model-file format
    assert read_header(REPO / "results" / "checkpoints" / "poly-mlp.safetensors")["kind"] == "poly-mlp"


def test_mlp_spec_act_keys():
    relu = compute_spec.mlp([200, 100])
    assert "act" not in relu.to_wire() and relu["act"] == "relu"  # ReLU is sent as before: old workers read it
    quad = compute_spec.mlp([8], act="quad")
    assert quad.to_wire()["act"] == "quad" and ComputeSpec.from_wire(quad.to_wire()) == quad
    assert ComputeSpec.from_wire({**relu.to_wire(), "act": "relu"})["act"] == "relu"
    with pytest.raises(RemoteProtocolError, match=r"act of kind 'mlp': invalid value 'tanh' \(one of relu, quad\)"):
        ComputeSpec.from_wire({**relu.to_wire(), "act": "tanh"})
    with pytest.raises(RemoteProtocolError, match="unknown keys"):
        ComputeSpec.from_wire({**compute_spec.cnn().to_wire(), "act": "quad"})  # only the mlp kind has it


def test_quad_spec_refuses_missing_or_misshaped_c():
    rng = np.random.default_rng(0)
    arrays = {"mlp.mlp.fc1.weight": rng.random((8, 784), np.float32), "mlp.mlp.fc1.bias": rng.random(8, np.float32),
              "mlp.mlp.fc2.weight": rng.random((10, 8), np.float32), "mlp.mlp.fc2.bias": rng.random(10, np.float32)}
    quad = compute_spec.mlp([8], act="quad")
    with pytest.raises(ConfigError, match="lack 'mlp.mlp.c1'"):
        PlainCompute.from_spec(quad, arrays)
    with pytest.raises(ConfigError, match=r"quadratic activations have shapes \[\(7,\)\], expected \[\(8,\)\]"):
        PlainCompute.from_spec(quad, {**arrays, "mlp.mlp.c1": np.zeros(7, np.float32)})
    c = rng.random(8, np.float32)
    f = PlainCompute.from_spec(quad, {**arrays, "mlp.mlp.c1": c})
    x = rng.random((3, 28, 28), np.float32)
    h = x.reshape(3, -1) @ arrays["mlp.mlp.fc1.weight"].T + arrays["mlp.mlp.fc1.bias"]
    want = (h + c * h * h) @ arrays["mlp.mlp.fc2.weight"].T + arrays["mlp.mlp.fc2.bias"]
    np.testing.assert_allclose(f(x), want, rtol=1e-5)
    relu = PlainCompute.from_spec(compute_spec.mlp([8]), {**arrays, "mlp.mlp.c1": c})  # relu ignores c
    np.testing.assert_allclose(relu(x), np.maximum(h, 0) @ arrays["mlp.mlp.fc2.weight"].T + arrays["mlp.mlp.fc2.bias"],
                               rtol=1e-5)


def test_half_precision_results_are_refused_not_decoded_unchecked():
    from edgecc.errors import ConfigError
    from edgecc.schemes.registry import build_plan

    with pytest.raises(ConfigError, match="float32 results only"):
        build_plan("light-master", 4, 2, wire_dtype="f2")
