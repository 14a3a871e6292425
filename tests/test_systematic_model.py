"""The systematic encoder (ours, not the paper's) as an AICC model: `edgecc systematic-model` builds it from the
committed centralized CNN (no training); the AICC plan decodes the CNN's own logits from every K of N answers,
with the β's and α's the model file records; it runs over real worker processes past a killed worker; bad input
is refused with a clear error."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecc.cli import main
from edgecc.coding.schemes import Scheme, default_betas, systematic_betas
from edgecc.data import load_sample
from edgecc.errors import ConfigError
from edgecc.master.master import Master
from edgecc.modelfile import load_model, read_header, resolve, save_model
from edgecc.schemes.registry import build_plan
from edgecc.worker.compute import EncodedCompute

from .conftest import REPO, TOKEN, until_lost

BASE = REPO / "results" / "checkpoints" / "table2" / "baseline-cnn.safetensors"  # the schemes table's CNN, 91.83%
TOL = 1e-3  # float32 logits: measured ≤ 4.1e-5 from every 8 of 9 at K=8 (edgecc eval)


def build(tmp_path, K: int) -> str:
    out = tmp_path / f"systematic-k{K}.safetensors"
    r = CliRunner().invoke(main, ["systematic-model", "--base", str(BASE), "--K", str(K), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["R"] == K
    return str(out)


def cnn_logits(images: np.ndarray) -> np.ndarray:
    """The centralized CNN's own forward on uint8 images (n, 28, 28): what every decode must give."""
    cnn, _ = load_model(BASE)
    with torch.inference_mode():
        return cnn(torch.from_numpy(images.astype(np.float32) / 255.0)).numpy()


def test_every_K_subset_decodes_the_cnn_logits_with_the_recorded_points(tmp_path):
    path = build(tmp_path, 8)
    info = read_header(path)
    s = Scheme.from_dict(info["scheme"])
    assert info["kind"] == "aicc" and info["design"] == "systematic encoder (ours, not the paper's)"
    assert (s.encoder, s.K, s.G, s.R, s.worker_points) == ("systematic", 8, 7, 8, "chebyshev-extreme")
    assert s.betas() == pytest.approx(np.cos((2 * np.arange(8) + 1) * np.pi / 16), abs=0)  # benchmark's β, bitwise
    assert "systematic encoder (ours, not the paper's)" in s.label()
    plan = build_plan("aicc", 9, 8, model=path, encode_precision="fp32")
    assert plan.alphas == pytest.approx(np.cos(np.arange(9) * np.pi / 8), abs=0)  # the model's rule, not chosen_alphas
    assert plan.decoder.betas == tuple(s.betas())
    # H_B collapsed to the worker's affine map is the CNN's fc3 on the first 100 entries, zeros after
    cnn, _ = load_model(BASE)
    A = plan.arrays["affine.weight"]
    assert A.shape == (10, 784) and not A[:, 100:].any()
    np.testing.assert_array_equal(A[:, :100], cnn.mlp.fc3.weight.detach().numpy())
    np.testing.assert_array_equal(plan.arrays["affine.bias"], cnn.mlp.fc3.bias.detach().numpy())

    images, _ = load_sample()
    groups = images[:128].reshape(-1, 8, 28, 28)
    want = cnn_logits(images[:128]).reshape(-1, 8, 10)
    worker = EncodedCompute(plan.scheme, plan.arrays)  # what a worker builds from its configure
    with torch.inference_mode():  # the master's encoding, as CodedPlan.payloads sends it in float32
        xt = plan.model.encode(torch.from_numpy(groups.astype(np.float32) / 255.0), plan.alphas, "fp32").numpy()
    outs = {n: worker(xt[:, n]) for n in range(9)}
    for used in itertools.combinations(range(9), 8):
        got, report = plan.decoded({n: outs[n] for n in used})
        assert report["subset"] == list(used) and report["bound"] < plan.tolerance
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        assert np.array_equal(got.argmax(-1), want.argmax(-1))
    model, _ = load_model(path)
    with torch.inference_mode():  # D(β_k) is the CNN's logits bit for bit: at β the Lagrange weights are exact
        direct = model(torch.from_numpy(groups.astype(np.float32) / 255.0)).numpy()
    np.testing.assert_allclose(direct, want, rtol=0, atol=1e-5)


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    out = str(tmp_path / "x.safetensors")
    for K, msg in ((0, "K >= 2"), (1, "replication")):
        r = CliRunner().invoke(main, ["systematic-model", "--base", str(BASE), "--K", str(K), "--out", out])
        assert r.exit_code == 2 and msg in r.output, r.output
    for name in ("default-mlp", "default"):  # a centralized MLP, an AICC model: not a centralized CNN
        r = CliRunner().invoke(main, ["systematic-model", "--base", str(resolve(name)), "--K", "8", "--out", out])
        assert r.exit_code == 2 and "centralized-cnn" in r.output, r.output
    assert not os.path.exists(out)

    good = Scheme.from_dict(read_header(build(tmp_path, 2))["scheme"]).to_dict()
    bad = (("data_points", [0.5], "must be a list of K=2 finite numbers"),
           ("data_points", [0.5, 0.5], "must be distinct"),
           ("data_points", [0.5, float("nan")], "finite numbers"),
           ("data_points", ["0.5", -0.5], "finite numbers"),
           ("worker_points", "n/(N+1)", "worker_points must be one of"))
    for field, value, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            Scheme.from_dict({**good, field: value})
    for drop in ("data_points", "worker_points"):  # a systematic model must carry its points: no silent k/K
        with pytest.raises(ConfigError, match="records its points"):
            Scheme.from_dict({k: v for k, v in good.items() if k != drop})
    with pytest.raises(ConfigError, match="G = K−1"):
        Scheme.from_dict({**good, "G": 2})
    # a file whose β's were tampered with fails to load, it does not decode with other points
    model, info = load_model(str(tmp_path / "systematic-k2.safetensors"))
    path = tmp_path / "tampered.safetensors"
    save_model(path, model, {**info, "scheme": {**good, "data_points": [0.1, 0.1]}})
    with pytest.raises(ConfigError, match="distinct"):
        load_model(path)
    with pytest.raises(ConfigError, match="encodes at the master only"):
        build_plan("aicc", 3, 2, model=str(tmp_path / "systematic-k2.safetensors"), placement="shared")


def test_the_papers_schemes_are_unchanged():
    s = Scheme(K=2, G=1)
    assert s.to_dict() == {"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl", "compute_arch": "cl"}
    assert s.betas() == default_betas(2) and s.alphas(3) is None
    shipped = read_header("default")["scheme"]
    assert Scheme.from_dict(shipped).to_dict() == shipped
    assert systematic_betas(2) == pytest.approx([np.cos(np.pi / 4), np.cos(3 * np.pi / 4)], abs=0)


async def test_live_over_real_workers_past_a_killed_worker(spawn_workers, tmp_path):
    path = build(tmp_path, 4)
    images, labels = load_sample()
    groups = images[:64].reshape(-1, 4, 28, 28)
    want = cnn_logits(images[:64]).reshape(-1, 4, 10)
    workers = spawn_workers(5)
    plan = build_plan("aicc", 5, 4, model=path, encode_precision="fp32")
    m = Master(plan, [w.address for w in workers], TOKEN.encode(), request_timeout=20.0)
    await m.start(wait_ready=20)
    assert await m.wait_all_ready(20)
    try:
        got = await m.infer(groups)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        workers[2].kill()  # the worker at α = cos(π/2) ≈ 0
        await until_lost(m, 2)
        info = {}
        got = await m.infer(groups, info=info)
        assert info["decode"]["subset"] == [0, 1, 3, 4]
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        assert np.array_equal(got.argmax(-1), want.argmax(-1))
    finally:
        await m.close()
    # the product's command line over the same workers, one of them still dead
    addresses = ",".join(f"{h}:{p}" for h, p in (w.address for w in workers))
    pred = tmp_path / "pred.npy"
    r = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edgecc.cli", "master", "--quiet", "--workers", addresses, "--model", path,
                         "--encode-precision", "fp32", "--limit", "64", "--timeout", "20", "--wait", "20",
                         "--predictions-out", str(pred)],
        check=False, capture_output=True, text=True, timeout=60, env={**os.environ, "EDGECC_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["requests_failed"] == 0 and summary["images"] == 64, summary
    np.testing.assert_array_equal(np.load(pred), want.reshape(-1, 10).argmax(-1))
    assert summary["accuracy"] == pytest.approx(100 * float((want.reshape(-1, 10).argmax(-1) == labels[:64]).mean()))
