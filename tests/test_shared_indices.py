"""Remark 1's shared dataset for real: workers started with `edgecc worker --dataset SOURCE` announce it
in their hello, and a master made with its digest sends indices instead of pixels (`Master.infer_indices`).
Real worker processes, real TCP on loopback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgecc.datasets import load
from edgecc.errors import EdgeccError
from edgecc.master.handshake import DatasetMismatch
from edgecc.master.master import Master, RequestFailed
from edgecc.master.probe import probe
from edgecc.modelfile import load_model
from edgecc.protocol.frames import RemoteProtocolError
from edgecc.protocol.messages import Hello, dataset_cap, dataset_digest, parse
from edgecc.schemes.aicc import CodedPlan

from .conftest import TOKEN, started_together

TOK = TOKEN.encode()
SAMPLE = load("sample")  # (1000, 1, 28, 28)
DIGEST = dataset_digest(np.ascontiguousarray(SAMPLE.images))


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Started in parallel: three holding `sample`, one holding it at 32×32, one holding other images of
    the same shape (the sample reversed), one holding none."""
    tmp = tmp_path_factory.mktemp("shared-indices")
    other = tmp / "reversed.npz"
    np.savez(other, x=SAMPLE.images[::-1, 0], y=SAMPLE.labels[::-1])
    args = {"good0": ["--dataset", "sample"], "good1": ["--dataset", "sample"], "good2": ["--dataset", "sample"],
            "resized": ["--dataset", "sample?size=32x32"], "other": ["--dataset", f"npz:{other}"], "none": []}
    yield from started_together(tmp, args)


@pytest.fixture(scope="module")
def plan(tiny_models):
    model, info = load_model(tiny_models["hb"])
    return CodedPlan(model, info, 3, "shared", encode_precision="fp32")


async def _started(plan, ws, **kw) -> Master:
    m = Master(plan, [w.address for w in ws], TOK, **kw)
    try:
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
    except BaseException:
        await m.close()
        raise
    return m


def _good(workers):
    return [workers["good0"], workers["good1"], workers["good2"]]


async def test_the_hello_announces_the_dataset(workers):
    caps = (await probe(workers["good0"].address, TOK))["caps"]
    assert caps["dataset"] == {"name": "sample", "images": 1000, "shape": [1, 28, 28], "digest": DIGEST}
    assert "dataset" not in (await probe(workers["none"].address, TOK))["caps"]  # as before --dataset existed
    # the hello goes out before the master authenticates: the source's name, not the path of its file
    other = (await probe(workers["other"].address, TOK))["caps"]["dataset"]
    assert other["name"] == "npz:reversed.npz" and other["images"] == 1000, other


async def test_indices_decode_what_the_images_decode_for_a_fraction_of_the_bytes(workers, plan):
    idx = np.arange(16, dtype=np.int64).reshape(8, 2) * 7  # 8 groups of K=2 images, anywhere in the set
    images = SAMPLE.images[idx.reshape(-1), 0].reshape(8, 2, 28, 28)
    m = await _started(plan, _good(workers), dataset=DIGEST)
    try:
        by_index, by_pixels = {}, {}
        got = await m.infer_indices(idx, info=by_index)
        want = await m.infer(images, info=by_pixels)  # the same master still ships images when asked to
    finally:
        await m.close()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    per_image = {k: v["bytes_sent"] / idx.size for k, v in (("indices", by_index), ("images", by_pixels))}
    assert per_image["indices"] * 10 < per_image["images"], per_image  # 4 bytes vs 784 per image and worker, plus headers
    assert per_image["images"] > 3 * 784  # each of the 3 workers got every image


async def test_a_master_without_a_dataset_still_ships_images_to_dataset_workers(workers, plan):
    images = SAMPLE.images[:8, 0].reshape(4, 2, 28, 28)
    m = await _started(plan, _good(workers))
    try:
        logits = await m.infer(images)
        with pytest.raises(EdgeccError, match="dataset=DIGEST"):
            await m.infer_indices(np.zeros((1, 2), int))
    finally:
        await m.close()
    assert logits.shape == (4, 2, 10)


async def test_out_of_range_indices_are_refused_and_the_workers_serve_on(workers, plan):
    m = await _started(plan, _good(workers), dataset=DIGEST)
    try:
        with pytest.raises(ValueError, match="index 1000 out of range: the workers' dataset holds 1000 images"):
            await m.infer_indices(np.array([[0, 1000]]))  # the master knows the size from the hellos
        with pytest.raises(RequestFailed, match=r"index 1000 out of range: the dataset holds 1000 images \(0..999\)"):
            await m.infer(np.array([[0, 1000]], np.int32))  # past the master's check: each worker refuses it
        assert m.ready_count() == 3
        assert (await m.infer_indices(np.array([[998, 999]]))).shape == (1, 2, 10)
    finally:
        await m.close()
    assert m.stats["worker_errors"] >= 2


async def test_workers_without_the_dataset_are_refused_at_handshake_and_named(workers, plan):
    ws = [workers["good0"], workers["resized"], workers["other"]]
    m = Master(plan, [w.address for w in ws], TOK, dataset=DIGEST)
    try:
        with pytest.raises(DatasetMismatch) as e:
            await m.start(wait_ready=20)
    finally:
        await m.close()
    msg = str(e.value)
    assert "2 of 3 workers do not hold the dataset this master sends indices into" in msg
    assert f"worker 1 (127.0.0.1:{ws[1].port}) holds dataset 'sample?size=32x32' (1000 images of 1×32×32" in msg
    assert "the model takes 1×28×28 images" in msg
    assert f"worker 2 (127.0.0.1:{ws[2].port}) holds dataset 'npz:reversed.npz'" in msg and "not the one this master's indices refer to" in msg
    assert "worker 0" not in msg


async def test_a_worker_without_a_dataset_is_refused_clearly(workers, plan):
    ws = [workers["none"], workers["good1"], workers["good2"]]
    m = Master(plan, [w.address for w in ws], TOK, dataset=DIGEST)
    try:
        await m.start(wait_ready=20)  # R = 2 of the 3 hold it: the master serves on without worker 0
        await m.wait_all_ready(1.0)
        assert not m.links[0].ready.is_set()
        assert "worker 0" in m.dataset_refused[0] and "holds no dataset" in m.dataset_refused[0]
        assert "edgecc worker --dataset SOURCE" in m.links[0].last_error
        assert (await m.infer_indices(np.array([[1, 2]]))).shape == (1, 2, 10)
    finally:
        await m.close()


def test_a_worker_refuses_a_configure_naming_a_dataset_it_does_not_hold():
    from edgecc.protocol import compute_spec
    from edgecc.worker.server import HeldDataset, Worker

    scheme = {"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "mlp", "compute_arch": "mlp"}
    spec = compute_spec.aicc_shared(scheme, 0.5)
    bare, held = Worker(TOK), Worker(TOK, dataset=HeldDataset.load("sample"))
    try:
        assert held._configured_dataset(DIGEST, spec).shape == (1000, 28, 28)
        with pytest.raises(EdgeccError, match="is not the one this worker holds, 'sample'"):
            held._configured_dataset("0" * 64, spec)
        with pytest.raises(EdgeccError, match="holds no dataset"):
            bare._configured_dataset(DIGEST, spec)
        with pytest.raises(EdgeccError, match="the compute takes 32×32"):
            held._configured_dataset(DIGEST, compute_spec.aicc_shared(scheme, 0.5, (32, 32)))
    finally:
        for w in (bare, held):
            w.queue.close()
            w.configure_pool.shutdown()


def test_the_dataset_cap_is_validated():
    hello = {"t": "hello", "proto": 2, "nonce": b"n" * 32, "bundle": None}
    cap = dataset_cap("sample", np.ascontiguousarray(SAMPLE.images))
    assert isinstance(parse({**hello, "caps": {"dataset": cap}}), Hello)
    for bad in ({**cap, "digest": "ABC"}, {**cap, "shape": [28, 28]}, {**cap, "images": -1}, {**cap, "extra": 1}, "sample"):
        with pytest.raises(RemoteProtocolError, match="hello.caps.dataset"):
            parse({**hello, "caps": {"dataset": bad}})


def test_a_worker_with_an_unreadable_dataset_does_not_start(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "worker", "--listen", "127.0.0.1:0", "--dataset", "npz:/nonexistent.npz"],
                       env={"EDGECC_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--dataset" in r.stderr, r.stderr


SCENARIO = """
name = "indices"
images = "sample"
requests = 6
groups_per_request = 2
schemes = ["aicc"]
N = 3
shared_data = "indices"
[options.aicc]
model = "{model}"
placement = "shared"
[defaults]
latency = {{ dist = "constant", value = 0.002 }}
"""


def test_a_scenario_starts_its_workers_with_its_images_and_sends_indices(tmp_path, tiny_models):
    import json

    from edgecc.scenario.runner import run_scenario
    from edgecc.scenario.spec import load_scenario

    f = tmp_path / "indices.toml"
    f.write_text(SCENARIO.format(model=tiny_models["hb"]))
    summaries = run_scenario(load_scenario(f), tmp_path / "out")
    assert summaries["aicc"]["decoded_fraction"] == 1.0 and summaries["aicc"]["accuracy"] is not None
    stats = json.loads((tmp_path / "out" / "report.json").read_text())["scenario"]["master_stats"]["aicc"]
    assert stats["sends"] == "indices" and 3 * 4 < stats["bytes_per_image"] < 100  # 3 workers × 4 bytes, plus headers
    assert "| aicc | indices |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("extra,why", [('shared_data = "pixels"', "must be one of images, indices"),
                                       ('shared_data = "indices"\nbackend = "ray"', "Ray actors hold no dataset")])
def test_the_scenario_key_is_checked(tmp_path, extra, why):
    from edgecc.errors import ConfigError
    from edgecc.scenario.spec import load_scenario

    f = tmp_path / "s.toml"
    f.write_text(f'N = 3\nschemes = ["uncoded"]\n{extra}\n')
    with pytest.raises(ConfigError, match=why):
        load_scenario(f)
