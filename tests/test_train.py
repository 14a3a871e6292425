"""Short real training runs on real Fashion-MNIST images (the full protocol lives in benchmarks)."""

import json
import subprocess
import sys

import torch

from edgecc.coding.schemes import Scheme
from edgecc.data import load_split
from edgecc.evaluate import evaluate
from edgecc.modelfile import load_model
from edgecc.train import TrainConfig, train

SCHEME = Scheme(K=2, G=1, computation="hb", encoder="mlp", compute_arch="mlp")


def test_short_training_clearly_beats_chance_and_decodes(tmp_path):
    cfg = TrainConfig(epochs=2, limit=6000, threads=1)
    info = train("aicc", SCHEME, cfg, tmp_path / "m.safetensors")
    assert info["training"]["history"][-1]["test_accuracy_direct"] > 40.0  # chance is 10%
    model, info = load_model(tmp_path / "m.safetensors")
    x, y = load_split("test")
    res = evaluate(model, info, x[:2000], y[:2000], N=3)
    assert res["accuracy_direct"] > 40.0
    assert abs(res["accuracy_decoded_min"] - res["accuracy_direct"]) <= 0.05
    assert res["subsets_evaluated"] == 3


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    straight = TrainConfig(epochs=2, limit=2000, threads=1, seed=3)
    train("aicc", SCHEME, straight, tmp_path / "a.safetensors")
    train("aicc", SCHEME, TrainConfig(epochs=1, limit=2000, threads=1, seed=3), tmp_path / "b.safetensors",
          run_dir=tmp_path / "b.run")
    train("aicc", SCHEME, straight, tmp_path / "b.safetensors", run_dir=tmp_path / "b.run", resume=True)
    a, _ = load_model(tmp_path / "a.safetensors")
    b, info = load_model(tmp_path / "b.safetensors")
    assert [h["epoch"] for h in info["training"]["history"]] == [1, 2]
    for (k, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(wa, wb), k


def test_resume_refuses_a_different_configuration(tmp_path):
    import pytest

    train("aicc", SCHEME, TrainConfig(epochs=1, limit=1000, threads=1), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="different configuration"):
        train("aicc", SCHEME, TrainConfig(epochs=2, limit=1000, threads=1, lr=5e-4), tmp_path / "m.safetensors", resume=True)


def test_train_cli_centralized_baseline(tmp_path):
    out = tmp_path / "mlp.safetensors"
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "train", "--kind", "centralized-mlp", "--epochs", "1",
                        "--limit", "3000", "--threads", "1", "--quiet", "--out", str(out)], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout.splitlines()[-1])["test_accuracy_direct"] > 60.0
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "eval", str(out), "--images", "sample", "--json"],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["kind"] == "centralized-mlp"
