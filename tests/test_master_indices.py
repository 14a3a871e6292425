"""`edgecc master --indices` for real: three `edgecc worker --dataset sample` processes hold the images
(Remark 1's shared dataset) and the master command sends only their indices. Real processes, real TCP
on loopback; also the name a worker announces for its dataset, which must not tell a local path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgecc.worker.server import public_source_name

from .conftest import TOKEN, WorkerProcess


@pytest.fixture(scope="module")
def addresses(tmp_path_factory):
    """Three workers holding `sample`, started in parallel."""
    tmp = tmp_path_factory.mktemp("master-indices")
    ws = [WorkerProcess(tmp, f"w{i}", ["--dataset", "sample"]) for i in range(3)]
    try:
        for w in ws:
            w.launch()
        for w in ws:
            w.wait_started()
        yield ",".join(f"127.0.0.1:{w.port}" for w in ws)
    finally:
        for w in ws:
            w.kill()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An untrained AICC model of K = 2 with MLP encoder and compute: quick for the workers, which encode
    each group themselves in the shared placement, on a small test host."""
    import torch

    from edgecc.coding.schemes import Scheme
    from edgecc.modelfile import save_model
    from edgecc.nets import AICC

    s = Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("mlp-model") / "mlp.safetensors"
    save_model(path, AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    return str(path)


def master(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecc.cli", "master", "--quiet", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "EDGECC_TOKEN": TOKEN})


def summary(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_indices_decode_the_sample_as_the_images_do_for_a_fraction_of_the_bytes(addresses, model, tmp_path):
    # --limit 999 (998 images: whole groups of K = 2): the master's digest is still the whole sample's, the
    # dataset the workers announce, and indices 0..997 are the images the pixels run sends
    common = ["--workers", addresses, "--model", model, "--placement", "shared", "--encode-precision", "fp32",
              "--limit", "999", "--groups-per-request", "25", "--timeout", "30", "--wait", "60"]
    runs = {how: summary(master(*common, *flag, "--predictions-out", str(tmp_path / f"{how}.npy")))
            for how, flag in (("indices", ["--indices"]), ("images", []))}
    for how, s in runs.items():
        assert s["images"] == 998 and s["requests_failed"] == 0 and s["requests_decoded"] == 20, (how, s)
        assert s["sends"] == how and s["placement"] == "shared"
    assert runs["indices"]["accuracy"] == runs["images"]["accuracy"]
    np.testing.assert_array_equal(np.load(tmp_path / "indices.npy"), np.load(tmp_path / "images.npy"))
    per_image = {how: s["bytes_per_image"] for how, s in runs.items()}
    assert per_image == {how: s["bytes_sent"] / 998 for how, s in runs.items()}
    assert 3 * 4 <= per_image["indices"] < 3 * 8, per_image  # 3 workers × a 4-byte index, plus each frame's headers
    assert per_image["images"] > 3 * 784 and per_image["indices"] * 100 < per_image["images"], per_image


def test_indices_with_the_encoded_placement_are_refused(model):
    from click.testing import CliRunner

    from edgecc.cli import main

    r = CliRunner().invoke(main, ["master", "--workers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--model", model,
                                  "--placement", "encoded", "--indices"], env={"EDGECC_TOKEN": TOKEN})
    assert r.exit_code == 2, r.output
    assert ("--indices: only the shared placement sends dataset indices (--scheme aicc --placement shared" in r.output
            and "this aicc plan's placement is 'encoded'" in r.output), r.output


@pytest.mark.parametrize("source,announced", [
    ("npz:/home/u/data/x.npz?size=32x32", "npz:x.npz?size=32x32"),
    ("folder:/a/b/c", "folder:c"),
    ("folder:/a/b/c/", "folder:c"),
    ("idx:../mnist", "idx:mnist"),
    ("cifar10:C:\\data\\cifar-10-batches-bin", "cifar10:cifar-10-batches-bin"),
    ("cifar100:/d/c100?labels=coarse", "cifar100:c100?labels=coarse"),
    ("fashion-mnist:/usr/share/fm", "fashion-mnist:fm"),
    ("/data/a:b/x.npz", "x.npz"),  # a bare .npz path, a colon in a folder's name
    ("relative/x.npz", "x.npz"),
    ("sample", "sample"), ("sample?size=32x32", "sample?size=32x32"), ("test", "test"), ("train", "train"),
    ("fashion-mnist", "fashion-mnist"),
])
def test_the_announced_dataset_name_has_no_directories(source, announced):
    assert public_source_name(source) == announced
