"""Short real training runs on real Fashion-MNIST images (the full protocol lives in benchmarks)."""

import json
from dataclasses import replace
import subprocess
import sys

import pytest
import torch

from edgecc.coding.schemes import Scheme
from edgecc.data import load_split, to_float
from edgecc.evaluate import evaluate
from edgecc.modelfile import load_model
from edgecc.train import TrainConfig, _cxx_compiler, accuracy_direct, train

SCHEME = Scheme(K=2, G=1, computation="hb", encoder="mlp", compute_arch="mlp")


def test_short_training_clearly_beats_chance_and_decodes(tmp_path):
    cfg = TrainConfig(epochs=2, limit=6000, threads=1)
    info = train("aicc", SCHEME, cfg, tmp_path / "m.safetensors")
    history = info["training"]["history"]
    assert history[-1]["test_accuracy_direct"] > 40.0  # chance is 10%
    # epochs are monitored under the training's precision (bf16 autocast where native), the last in fp32:
    # what `edgecc eval` reports
    assert [h["test_precision"] for h in history] == [cfg.precision, "fp32"]
    model, info = load_model(tmp_path / "m.safetensors")
    x, y = load_split("test")
    xt, yt = torch.from_numpy(to_float(x)), torch.from_numpy(y.astype("int64"))
    assert accuracy_direct(model, "aicc", xt, yt, 2) == history[-1]["test_accuracy_direct"]
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



@pytest.mark.skipif(not _cxx_compiler(), reason="torch.compile on a CPU needs a C++ compiler (g++ or clang++); none on PATH")
def test_a_compiled_run_continues_an_eager_one_and_computes_the_same(tmp_path):
    """compile is how the steps run, not what they compute: an eager run's checkpoint resumes compiled (not
    refused as another configuration), the model file is the same form (no torch.compile wrapper names), and
    the compiled epoch's loss matches an eager run's."""
    eager = TrainConfig(epochs=2, limit=1000, threads=1, seed=3)
    straight = train("aicc", SCHEME, eager, tmp_path / "a.safetensors")
    train("aicc", SCHEME, replace(eager, epochs=1), tmp_path / "b.safetensors", run_dir=tmp_path / "b.run")
    mixed = train("aicc", SCHEME, replace(eager, compile=True), tmp_path / "b.safetensors", run_dir=tmp_path / "b.run",
                  resume=True)
    assert [h["epoch"] for h in mixed["training"]["history"]] == [1, 2] and "compile" not in mixed["training"]
    a, _ = load_model(tmp_path / "a.safetensors")
    b, _ = load_model(tmp_path / "b.safetensors")
    assert list(a.state_dict()) == list(b.state_dict())
    assert mixed["training"]["history"][0]["loss"] == straight["training"]["history"][0]["loss"]  # epoch 1 ran eager in both
    assert abs(mixed["training"]["history"][1]["loss"] - straight["training"]["history"][1]["loss"]) < 1e-3


def test_compile_without_a_cxx_compiler_is_refused_up_front(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++ or clang++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match="compile on a CPU needs a C\\+\\+ compiler"):
        TrainConfig(compile=True)
    TrainConfig(compile=False)  # eager training needs none


def test_resume_refuses_a_different_configuration(tmp_path):
    train("aicc", SCHEME, TrainConfig(epochs=1, limit=1000, threads=1), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"different configuration \(lr: 0.001 there, 0.0005 here\)"):
        train("aicc", SCHEME, TrainConfig(epochs=2, limit=1000, threads=1, lr=5e-4), tmp_path / "m.safetensors", resume=True)


def test_a_run_from_a_model_resumes_under_any_path_to_it_but_not_from_another_model(tmp_path, monkeypatch):
    """The starting model counts by its content (modelfile.content_id), not its path: a device run may name
    it by an absolute path and the `edgecc reproduce` that resumes it by a relative one."""
    train("aicc", SCHEME, TrainConfig(epochs=1, limit=1000, threads=1), tmp_path / "paper.safetensors")
    monkeypatch.chdir(tmp_path)
    rel = TrainConfig.for_recipe("anneal", epochs=1, limit=1000, threads=1, init="paper.safetensors")
    first = train("aicc", SCHEME, rel, tmp_path / "a.safetensors", run_dir=tmp_path / "a.run")
    again = train("aicc", SCHEME, replace(rel, init=str(tmp_path / "paper.safetensors")), tmp_path / "a.safetensors",
                  run_dir=tmp_path / "a.run", resume=True)
    assert again["training"]["history"] == first["training"]["history"]  # resumed after its last epoch: nothing retrained
    train("aicc", SCHEME, TrainConfig(epochs=1, limit=1000, threads=1, seed=1), tmp_path / "paper.safetensors")
    with pytest.raises(ValueError, match=r"different configuration \(init: 'sha256:[0-9a-f]{16}' there, 'sha256:[0-9a-f]{16}' here\)"):
        train("aicc", SCHEME, rel, tmp_path / "a.safetensors", run_dir=tmp_path / "a.run", resume=True)


def test_train_cli_centralized_baseline(tmp_path):
    out = tmp_path / "mlp.safetensors"
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "train", "--kind", "centralized-mlp", "--epochs", "1",
                        "--limit", "3000", "--threads", "1", "--quiet", "--out", str(out)], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout.splitlines()[-1])["test_accuracy_direct"] > 60.0
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "eval", str(out), "--images", "sample", "--json"],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["kind"] == "centralized-mlp"


def test_a_snapshot_of_a_run_is_its_model_so_far_and_says_so(tmp_path):
    """`edgecc snapshot RUN_DIR` writes the run's last checkpoint as a model file: after the run's last epoch it
    holds the same weights as the run's own model file, and its info names the run and the epochs done."""
    train("aicc", SCHEME, TrainConfig(epochs=1, limit=1000, threads=1), tmp_path / "m.safetensors", run_dir=tmp_path / "m.run")
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "snapshot", str(tmp_path / "m.run"), "--out", str(tmp_path / "s.safetensors")],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["epochs_done"] == 1
    final, _ = load_model(tmp_path / "m.safetensors")
    snap, info = load_model(tmp_path / "s.safetensors")
    assert info["training"]["snapshot"] == {"run": str(tmp_path / "m.run"), "epochs_done": 1.0}
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), snap.state_dict().values()))
    (tmp_path / "empty.run").mkdir()
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "snapshot", str(tmp_path / "empty.run"), "--out", str(tmp_path / "e.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "has no checkpoint yet" in r.stderr and not (tmp_path / "e.safetensors").exists()


def test_best_recipe_schedule_and_augmentation():
    import math


    from edgecc.train import BEST, augment, lr_at

    cfg = TrainConfig.for_recipe("best")
    assert (cfg.recipe, cfg.epochs, cfg.lr) == ("best", BEST["epochs"], BEST["lr"])
    assert TrainConfig.for_recipe("best", epochs=3).epochs == 3 and TrainConfig.for_recipe("paper").epochs == 20
    aug = TrainConfig.for_recipe("augment")  # the same schedule, plus augmentation
    assert (aug.epochs, aug.lr) == (cfg.epochs, cfg.lr) and lr_at(aug, 10, 1000) == lr_at(cfg, 10, 1000)
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig.for_recipe("fast")
    total = 1000
    lrs = [lr_at(cfg, s, total) for s in range(total)]
    warm = int(BEST["warmup"] * total)
    assert lrs[:warm] == sorted(lrs[:warm]) and math.isclose(max(lrs), cfg.lr)
    assert lrs[warm:] == sorted(lrs[warm:], reverse=True) and lrs[-1] < 1e-3 * cfg.lr
    assert lr_at(TrainConfig(), 500, total) == 1e-3  # the paper's constant lr

    x = torch.rand(64, 2, 28, 28)
    a = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, x)
    # each image is a shifted (zero-filled) and possibly mirrored copy: pixel mass never grows
    assert (a.flatten(2).sum(-1) <= x.flatten(2).sum(-1) + 1e-4).all()
    s = BEST["shift"]
    one = torch.zeros(1, 28, 28)
    one[0, 14, 10] = 1.0
    moved = augment(one.expand(500, 28, 28).clone(), torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(moved, as_tuple=True)[1:]
    assert moved.sum(dim=(1, 2)).eq(1).all()  # away from the border nothing falls off
    assert ys.min() >= 14 - s and ys.max() <= 14 + s and len(set(ys.tolist())) == 2 * s + 1
    assert set(xs.tolist()) >= {10, 27 - 10}  # mirrored and not


AUGMENT = TrainConfig.for_recipe("augment", epochs=2, limit=2000, threads=1, seed=5)


@pytest.fixture(scope="module")
def augment_straight(tmp_path_factory):
    """A straight (never interrupted) 2-epoch run of the augment recipe: the model the resume tests must equal."""
    path = tmp_path_factory.mktemp("straight") / "a.safetensors"
    train("aicc", SCHEME, AUGMENT, path)
    return path


def test_augment_recipe_resumes_to_the_same_model(tmp_path, augment_straight):
    """The improved recipes' schedule spans all epochs (and augment draws from the epoch's generator): a run
    stopped after epoch 1 and resumed equals a straight one."""

    cfg = AUGMENT

    class Stop(Exception):
        pass

    def stop_after_first_epoch(epoch, step, text):
        if step == 0 and epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train("aicc", SCHEME, cfg, tmp_path / "b.safetensors", run_dir=tmp_path / "b.run", progress=stop_after_first_epoch)
    train("aicc", SCHEME, cfg, tmp_path / "b.safetensors", run_dir=tmp_path / "b.run", resume=True)
    a, _ = load_model(augment_straight)
    b, info = load_model(tmp_path / "b.safetensors")
    assert info["training"]["recipe"] == "augment" and info["training"]["epochs"] == 2
    for (k, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(wa, wb), k
    with pytest.raises(ValueError, match="different configuration .epochs: 2 there, 3 here"):  # another schedule
        train("aicc", SCHEME, TrainConfig.for_recipe("augment", epochs=3, limit=2000, threads=1, seed=5), tmp_path / "b.safetensors",
              run_dir=tmp_path / "b.run", resume=True)


@pytest.mark.parametrize("info", [
    {"kind": "aicc", "scheme": Scheme(K=2, G=1, computation="hb", encoder="cl", compute_arch="cl").to_dict()},
    {"kind": "aicc", "scheme": Scheme(K=4, G=2, P=2, computation="hs", encoder="cl", compute_arch="cl").to_dict()},
    {"kind": "aicc", "scheme": Scheme(K=2, G=1, P=2, computation="hs", encoder="mlp", compute_arch="mlp").to_dict()},
    {"kind": "centralized-mlp"}, {"kind": "centralized-cnn"},
    {"kind": "learned-code", "code": {"arch": "cl", "k": 2}}, {"kind": "learned-code", "code": {"arch": "mlp", "k": 2}},
], ids=lambda i: "-".join(str(v) for v in [i["kind"], *i.get("scheme", i.get("code", {})).values()]))
@pytest.mark.parametrize("recipe", ["paper", "augment"])
def test_a_training_step_keeps_every_tensor_on_the_models_device(info, recipe):
    """The CUDA path without a GPU: on the meta device any tensor left on the CPU fails the step, as it would on
    CUDA, and shapes and dtypes are checked without computing anything."""
    from edgecc.modelfile import build_model
    from edgecc.train import GROUPED, step_loss

    K = Scheme.from_dict(info["scheme"]).K if "scheme" in info else info.get("code", {}).get("k", 1)
    model = build_model(info).to("meta").train()
    n = 8 * (K if info["kind"] in GROUPED else 1)
    xb, yb = torch.rand(n, 28, 28, device="meta"), torch.randint(10, (n,), device="meta")
    cfg = TrainConfig(device="meta", precision="fp32", recipe=recipe)
    loss = step_loss(model, info["kind"], xb, yb, K, cfg, torch.Generator().manual_seed(0))
    assert loss.device.type == "meta" and loss.shape == () and loss.dtype == torch.float32
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.shape == p.shape) == p.requires_grad, name


def test_precision_auto_resolves_to_what_the_device_runs_natively():
    from edgecc.nets.aicc import native_bf16

    assert TrainConfig().precision == ("bf16" if native_bf16("cpu") else "fp32")
    assert TrainConfig(device="meta").precision == "fp32"  # no native bf16 there: never emulated
    assert TrainConfig(precision="bf16", device="meta").precision == "bf16"  # an explicit choice stands
    assert TrainConfig.for_recipe("anneal", precision="fp32").precision == "fp32"
    assert replace(TrainConfig(precision="fp32"), seed=1).precision == "fp32"  # resolved once, kept by replace
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_a_run_killed_inside_an_epoch_resumes_from_its_last_step_to_the_same_model(tmp_path, monkeypatch, augment_straight):
    """Checkpoints inside an epoch (here after every step) hold the step, the loss so far and the generator the
    augment recipe draws from: a run killed in the middle of epoch 2 resumes there and equals a straight run,
    history (the epoch's mean loss) included, without redoing the steps it had done."""
    import edgecc.train as train_module
    from edgecc.train import run_progress

    cfg = AUGMENT

    class Killed(Exception):
        pass

    real_step, calls = train_module.train_step, []

    def dies_at_step_21(*args, **kwargs):  # 16 steps per epoch: the 5th step of epoch 2
        calls.append(1)
        if len(calls) == 21:
            raise Killed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", dies_at_step_21)
    with pytest.raises(Killed):
        train("aicc", SCHEME, cfg, tmp_path / "b.safetensors", run_dir=tmp_path / "b.run", checkpoint_every_s=0)
    progress = run_progress(tmp_path / "b.run")
    assert progress["epoch"] == 1 and progress["epochs_done"] == 1 + 4 / 16
    calls.clear()
    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: (calls.append(1), real_step(*a, **k))[1])
    train("aicc", SCHEME, cfg, tmp_path / "b.safetensors", run_dir=tmp_path / "b.run", resume=True)
    assert len(calls) == 12  # the rest of epoch 2 only
    a, info_a = load_model(augment_straight)
    b, info_b = load_model(tmp_path / "b.safetensors")
    assert [h["loss"] for h in info_b["training"]["history"]] == [h["loss"] for h in info_a["training"]["history"]]
    for (k, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(wa, wb), k
