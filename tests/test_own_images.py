"""A model of another image shape end to end (issue #31): a 3×32×32 data set in the CIFAR-10 binary
format, made from real Fashion-MNIST images, trained with `edgecc train --data`, exported, and run by
real `edgecc worker` processes under `edgecc master --images` and `edgecc serve`; a ResNet-18 base
under ApproxIFER and uncoded likewise."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecc.data import load_sample

from .conftest import TOKEN

pytest.importorskip("aiohttp", reason="edgecc serve needs the serve extra")
pytest.importorskip("prometheus_client", reason="edgecc serve needs the serve extra")

from .test_serve import ServeProcess, call  # noqa: E402

CLASSES = [f"thing{i}" for i in range(10)]


# fp32 training: bf16 autocast's backward on this CPU crashes (SIGSEGV in torch) for 3×32×32 AICC training
TRAIN = ("--precision", "fp32", "--epochs", "1", "--batch", "8", "--quiet")


def edgecc(*args: str, timeout: float = 120) -> dict:
    """Run one edgecc command; its last stdout line as JSON."""
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "EDGECC_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST sample images resized to 32×32 as RGB whose channels differ, in CIFAR-10's binary
    records (label byte, then 1024 bytes per channel): 80 to train, 40 to test."""
    x, y = load_sample()
    n = 120
    rgb = np.empty((n, 3, 32, 32), np.uint8)
    for i in range(n):
        g = np.asarray(Image.fromarray(x[i]).resize((32, 32), Image.Resampling.BILINEAR), np.int32)
        rgb[i] = np.stack([g, 255 - g, (g // 2 + 64)]).clip(0, 255)
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin"
    folder.mkdir()
    records = np.concatenate([y[:n, None].astype(np.uint8), rgb.reshape(n, -1)], axis=1)
    for i in range(5):
        (folder / f"data_batch_{i + 1}.bin").write_bytes(records[i * 16:(i + 1) * 16].tobytes())
    (folder / "test_batch.bin").write_bytes(records[80:].tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")
    return folder


def test_a_colour_aicc_model_trains_exports_and_runs_on_workers_master_and_service(cifar_dir, tmp_path, spawn_workers):
    model, bundle = tmp_path / "c.safetensors", tmp_path / "c.bundle"
    trained = edgecc("train", "--data", f"cifar10:{cifar_dir}", "--kind", "aicc", "--K", "2", "--limit", "40",
                     *TRAIN, "--out", str(model))
    assert trained["epochs"] == 1
    from edgecc.modelfile import read_header

    info = read_header(model)
    assert info["image"] == [3, 32, 32] and info["classes"] == CLASSES
    evaluated = edgecc("eval", str(model), "--images", f"cifar10:{cifar_dir}", "--json")
    assert evaluated["images"] == 40 and evaluated["refused"] is None, evaluated
    exported = edgecc("export", str(model), "--out", str(bundle))
    assert exported["arrays"]["affine.weight"] == [10, 3 * 32 * 32]

    workers = spawn_workers(3, ["--bundle", str(bundle)])
    addresses = ",".join(f"127.0.0.1:{w.port}" for w in workers)
    summary = edgecc("master", "--workers", addresses, "--model", str(model), "--images", f"cifar10:{cifar_dir}",
                     "--groups-per-request", "4", "--quiet")
    assert summary["requests_failed"] == 0 and summary["requests_decoded"] == 5 and summary["images"] == 40, summary

    svc = ServeProcess(tmp_path / "svc", workers, "--model", str(model), "--window-ms", "5")
    try:
        photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8), "RGB")
        buf = io.BytesIO()
        photo.save(buf, format="JPEG")
        status, doc, _ = call(svc.url + "/v1/classify", buf.getvalue(), "image/jpeg")
        assert status == 200, doc
        (result,) = doc["results"]
        assert len(result["logits"]) == 10 and result["class"] == CLASSES[result["label"]]
        # raw bodies are the model's own layout: 3×32×32 bytes per image, and nothing else
        status, doc, _ = call(svc.url + "/v1/classify", bytes(3 * 32 * 32 * 2), "application/octet-stream")
        assert status == 200 and len(doc["results"]) == 2, doc
        status, doc, _ = call(svc.url + "/v1/classify", bytes(784), "application/octet-stream")
        assert status == 400 and "3072" in doc["error"], doc
        status, doc, _ = call(svc.url + "/v1/samples/0.png")
        assert status == 200
        assert Image.open(io.BytesIO(doc["_raw"])).size == (32, 32) and Image.open(io.BytesIO(doc["_raw"])).mode == "RGB"
    finally:
        assert svc.stop() == 0


def test_a_resnet18_base_runs_under_approxifer_and_uncoded(cifar_dir, tmp_path, spawn_workers):
    model = tmp_path / "r.safetensors"
    edgecc("train", "--data", f"cifar10:{cifar_dir}", "--kind", "centralized-resnet18", "--limit", "16",
           *TRAIN, "--out", str(model))
    workers = ",".join(f"127.0.0.1:{w.port}" for w in spawn_workers(3))
    for scheme in ("approxifer", "uncoded"):
        # --wait: each worker builds a ResNet-18 in torch on configure, seconds on a loaded 2-core machine
        summary = edgecc("master", "--workers", workers, "--scheme", scheme, "--model", str(model), "--k", "2",
                         "--images", f"cifar10:{cifar_dir}", "--limit", "8", "--groups-per-request", "2",
                         "--wait", "60", "--quiet")
        assert summary["requests_failed"] == 0 and summary["images"] == 8, (scheme, summary)


def test_every_plan_takes_its_models_image_and_classes():
    """In process: each scheme's plan reads (C, H, W) and classes from the model file, sends specs of that
    shape, refuses groups of another naming the shape it takes, and leaves the paper's plans as they were."""
    import torch

    from edgecc.coding.schemes import Scheme
    from edgecc.errors import ConfigError
    from edgecc.nets import AICC, CentralizedCNN, CentralizedMLP
    from edgecc.schemes.registry import build_plan, run_image

    image, names = (3, 8, 12), ["a", "b", "c", "d"]
    torch.manual_seed(0)
    own = {"image": list(image), "classes": names}
    models = {"aicc": (AICC(Scheme(K=2), image, 4), {"kind": "aicc", "scheme": Scheme(K=2).to_dict(), **own}),
              "approxifer": (CentralizedCNN(image=image, classes=4), {"kind": "centralized-cnn", **own}),
              "uncoded": (CentralizedMLP(image, 4), {"kind": "centralized-mlp", **own}),
              "local": (CentralizedMLP(image, 4), {"kind": "centralized-mlp", **own})}
    groups = np.random.default_rng(0).integers(0, 256, (3, 2, *image), dtype=np.uint8)
    for scheme, loaded in models.items():
        plan = build_plan(scheme, 3, 2, model=loaded)
        assert plan.image == image and plan.classes == 4, scheme
        if plan.N:
            spec = plan.compute_spec(0).to_wire()
            assert spec["in_shape"] == list(image) and spec["out"] == 4, (scheme, spec)
            assert len(plan.payloads(groups)) == plan.N
            with pytest.raises(ConfigError, match=r"expected groups of shape \(B, 2, 3, 8, 12\)"):
                plan.payloads(groups[:, :, 0])
        else:
            assert plan.at_master(groups).shape == (3, 2, 4)
    # the schemes of one run (a scenario) classify the same images: models of different shapes are refused
    assert run_image({"approxifer": {"model": models["approxifer"]}, "local": {"model": models["local"]}}) == image
    with pytest.raises(ConfigError, match=r"take different images \(aicc: 1×28×28, uncoded: 3×8×12\)"):
        run_image({"aicc": {}, "uncoded": {"model": models["uncoded"]}})
    paper = build_plan("uncoded", 2, 2, model="default-mlp")
    assert paper.image == (1, 28, 28) and paper.classes == 10
    assert paper.compute_spec(0).to_wire()["in_shape"] == [28, 28]
