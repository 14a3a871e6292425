"""The training remedies beyond the paper's recipe (TrainConfig.warmup_steps, .clip_norm; docs/k8.md): what they
do to one step, and that with both off a step is exactly the paper's plain Adam step."""

import math

import pytest
import torch

from edgecc.coding.schemes import Scheme
from edgecc.train import TrainConfig, _identity, _start, lr_at, set_lr, step_loss, train, train_step

SCHEME = Scheme(K=2, G=1, computation="hb", encoder="mlp", compute_arch="mlp")  # the smallest AICC


def _batch(K: int = 2, groups: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(groups * K, 28, 28, generator=g), torch.randint(10, (groups * K,), generator=g)


def _fresh(cfg: TrainConfig):
    _, K, _, model, opt = _start("aicc", SCHEME, cfg, None)
    return K, model, opt


def test_warmup_ramps_the_lr_from_small_to_lr_over_warmup_steps():
    cfg = TrainConfig(lr=1e-3, warmup_steps=100)
    lrs = [lr_at(cfg, s, 10_000) for s in range(150)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[0] <= cfg.lr / 100  # step 0: lr / warmup_steps
    assert lrs[:100] == sorted(lrs[:100]) and len(set(lrs[:100])) == 100  # a linear ramp, rising every step
    assert lrs[99] == pytest.approx(cfg.lr) and all(lr == cfg.lr for lr in lrs[100:])  # lr from warmup_steps on
    assert lr_at(TrainConfig(lr=1e-3), 0, 10_000) == 1e-3  # off: the paper's constant lr from the first step

    # set_lr gives the optimizer that lr; without warm-up (the paper's recipe) it leaves the optimizer alone
    K, model, opt = _fresh(cfg)
    set_lr(opt, cfg, 0, 10_000)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-5)]
    set_lr(opt, cfg, 100, 10_000)
    assert [g["lr"] for g in opt.param_groups] == [1e-3]
    opt.param_groups[0]["lr"] = 0.123
    set_lr(opt, TrainConfig(), 0, 10_000)
    assert opt.param_groups[0]["lr"] == 0.123


def test_clip_norm_bounds_the_gradient_adam_steps_with():
    cfg = TrainConfig(precision="fp32", clip_norm=1e-3, threads=1)  # far below this model's first gradient norm
    K, model, opt = _fresh(cfg)
    xb, yb = _batch(K)
    seen = []
    step = opt.step

    def recording_step(*a, **kw):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(*a, **kw)

    opt.step = recording_step
    train_step(model, opt, "aicc", xb, yb, K, cfg, torch.Generator().manual_seed(0))
    assert seen and seen[0] <= cfg.clip_norm * (1 + 1e-5)

    # the same step unclipped had a larger gradient: the clip did something
    K, model, opt = _fresh(TrainConfig(precision="fp32", threads=1))
    step_loss(model, "aicc", xb, yb, K, cfg, torch.Generator().manual_seed(0)).backward()
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]) > 10 * cfg.clip_norm


def test_with_both_off_a_step_is_the_plain_adam_step():
    cfg = TrainConfig(precision="fp32", threads=1)
    K, model, opt = _fresh(cfg)
    xb, yb = _batch(K)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, opt, "aicc", xb, yb, K, cfg, torch.Generator().manual_seed(0))

    # the step as train_step ran it before the remedies existed: loss, backward, Adam
    K, ref, ref_opt = _fresh(cfg)
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())
    loss = step_loss(ref, "aicc", xb, yb, K, cfg, torch.Generator().manual_seed(0))
    ref_opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    ref_opt.step()
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    # and Adam's first step by its formula: p - lr * g / (|g| + eps) (bias-corrected moments are g and g²)
    for n, p in model.named_parameters():
        g = grads[n]
        expect = before[n] - cfg.lr * g / (g.abs() + 1e-8)
        assert torch.allclose(p.detach(), expect, atol=1e-7, rtol=1e-5), n


def test_remedies_are_validated_and_recorded_only_when_set(tmp_path):
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="clip_norm"):
        TrainConfig(clip_norm=0.0)
    # off: the recorded configuration is what it was before the fields existed (old checkpoints still resume)
    assert not {"warmup_steps", "clip_norm"} & set(_identity(TrainConfig()))
    on = _identity(TrainConfig(warmup_steps=5, clip_norm=1.0))
    assert (on["warmup_steps"], on["clip_norm"]) == (5, 1.0)

    cfg = TrainConfig(epochs=1, limit=256, threads=1, warmup_steps=5, clip_norm=1.0)
    info = train("aicc", SCHEME, cfg, tmp_path / "m.safetensors")
    t = info["training"]
    assert (t["warmup_steps"], t["clip_norm"]) == (5, 1.0) and math.isfinite(t["history"][-1]["loss"])
    # a run with the remedies is a different run from one without: its checkpoint does not resume as the paper's
    with pytest.raises(ValueError, match=r"clip_norm: 1.0 there, None here, warmup_steps: 5 there, None here"):
        train("aicc", SCHEME, TrainConfig(epochs=2, limit=256, threads=1), tmp_path / "m.safetensors", resume=True)
    paper = train("aicc", SCHEME, TrainConfig(epochs=1, limit=256, threads=1), tmp_path / "p.safetensors")
    assert not {"warmup_steps", "clip_norm"} & set(paper["training"])


CL_SCHEME = Scheme(K=2, G=1, computation="hb", encoder="cl", compute_arch="cl")  # CL stacks in Γ and H_B


def _spread(model, K: int = 2) -> float:
    """How much the encoder's coefficients vary across 16 random groups (their std over the groups, mean over pixels)."""
    x = torch.rand(16, K, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.coefficients(x).std(0).mean().item()


def test_variance_init_keeps_the_input_in_the_encoders_output_and_is_recorded(tmp_path):
    """weight_init "variance" (beyond the paper): under PyTorch's default init the CL stack's seven layers leave
    its output almost independent of its input; the He init keeps the input's scale."""
    _, _, _, default, _ = _start("aicc", CL_SCHEME, TrainConfig(threads=1), None)
    _, _, _, he, _ = _start("aicc", CL_SCHEME, TrainConfig(threads=1, weight_init="variance"), None)
    _, _, _, again, _ = _start("aicc", CL_SCHEME, TrainConfig(threads=1, weight_init="variance"), None)
    _, _, _, other, _ = _start("aicc", CL_SCHEME, TrainConfig(threads=1, weight_init="variance", seed=1), None)
    assert _spread(default) < 2e-3 and _spread(he) > 50 * _spread(default)  # (measured: 4e-4 and ~0.1)
    first = he.gamma.stacks[0].convs[0]
    assert torch.equal(first.weight, again.gamma.stacks[0].convs[0].weight)  # the seed decides the draw
    assert not torch.equal(first.weight, other.gamma.stacks[0].convs[0].weight)
    assert all(float(c.bias.detach().abs().max()) == 0 for s in he.modules() if hasattr(s, "convs") for c in s.convs)
    # the ReLU layers at std sqrt(2 / fan_in), the affine head and H_B stack at sqrt(1 / fan_in)
    assert first.weight.std().item() == pytest.approx((2 / first.weight[0].numel()) ** 0.5, rel=0.05)
    hb_conv = he.hb.stack.convs[3]
    assert hb_conv.weight.std().item() == pytest.approx((1 / hb_conv.weight[0].numel()) ** 0.5, rel=0.05)

    with pytest.raises(ValueError, match="weight_init"):
        TrainConfig(weight_init="he")
    with pytest.raises(ValueError, match="has none"):  # an MLP-only model: nothing to re-draw, said, not ignored
        _start("aicc", SCHEME, TrainConfig(threads=1, weight_init="variance"), None)
    assert "weight_init" not in _identity(TrainConfig())
    assert _identity(TrainConfig(weight_init="variance"))["weight_init"] == "variance"


def test_edgecc_train_takes_weight_init_and_records_it(tmp_path):
    from click.testing import CliRunner

    from edgecc import cli
    from edgecc.data import load_sample
    from edgecc.modelfile import read_header

    from .test_reproduce import write_idx_dir

    images, labels = load_sample()  # 64 real training and 16 test images on disk: the run's test pass stays short
    data = write_idx_dir(tmp_path / "data", images[:64], labels[:64], images[64:80], labels[64:80])
    out = tmp_path / "m.safetensors"
    args = ["train", "--K", "2", "--encoder", "cnn", "--compute", "cnn", "--epochs", "1", "--data-dir", str(data),
            "--threads", "1", "--quiet", "--out", str(out)]
    r = CliRunner().invoke(cli.main, args + ["--weight-init", "variance"])
    assert r.exit_code == 0, r.output
    assert read_header(str(out))["training"]["weight_init"] == "variance"
    r = CliRunner().invoke(cli.main, args + ["--weight-init", "he"])
    assert r.exit_code == 2 and "'he' is not one of" in r.output


def _centralized_file(tmp_path, data, name="teacher.safetensors", seed=0):
    """A centralized MLP trained one epoch on the 64 on-disk images: a real teacher's file."""
    out = tmp_path / name
    train("centralized-mlp", None, TrainConfig(epochs=1, threads=1, data_dir=str(data), seed=seed), out)
    return out


def _sample_data(tmp_path):
    from edgecc.data import load_sample

    from .test_reproduce import write_idx_dir

    images, labels = load_sample()
    return write_idx_dir(tmp_path / "data", images[:64], labels[:64], images[64:80], labels[64:80])


def test_distillation_mixes_cross_entropy_with_the_teachers_softened_predictions(tmp_path):
    """teacher (beyond the paper): loss = (1 − w)·CE + w·T²·KL(teacher ‖ model) at temperature T."""
    import torch.nn.functional as F

    from edgecc.modelfile import load_model

    data = _sample_data(tmp_path)
    teacher_file = _centralized_file(tmp_path, data)
    teacher, _ = load_model(teacher_file)
    student, _ = load_model(teacher_file)  # the same network: nothing to learn from the teacher, KL = 0
    other, _ = load_model(_centralized_file(tmp_path, data, "other.safetensors", seed=1))
    x, y = _batch(groups=16, K=1)
    gen = torch.Generator()
    cfg = lambda w, T=4.0: TrainConfig(precision="fp32", teacher=str(teacher_file), distill_weight=w, distill_temperature=T)
    with torch.no_grad():
        ce = F.cross_entropy(student(x), y)
        plain = step_loss(student, "centralized-mlp", x, y, 1, TrainConfig(precision="fp32"), gen)
        assert step_loss(student, "centralized-mlp", x, y, 1, cfg(0.3), gen, teacher) == pytest.approx((0.7 * ce).item(), rel=1e-5)
        assert plain == pytest.approx(ce.item(), rel=1e-6)
        # a different network: w = 1 leaves T²·KL alone, computed here from its definition
        T = 2.0
        p, q = F.softmax(teacher(x) / T, -1), F.log_softmax(other(x) / T, -1)
        kl = (p * (p.log() - q)).sum(-1).mean()
        got = step_loss(other, "centralized-mlp", x, y, 1, cfg(1.0, T), gen, teacher)
        assert got.item() == pytest.approx((T * T * kl).item(), rel=1e-4) and got.item() > 0

    # AICC: the teacher sees each image of a group; the student's D(β_k) rows line up with them
    K, model, _ = _fresh(TrainConfig(threads=1, precision="fp32"))
    xa, ya = _batch(K=2, groups=8)
    loss = step_loss(model, "aicc", xa, ya, K, cfg(0.5), gen, teacher)
    loss.backward()  # gradients reach the model, not the frozen teacher
    assert math.isfinite(loss.item()) and all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in model.parameters())


def test_distillation_is_validated_and_recorded_only_with_a_teacher(tmp_path):
    from click.testing import CliRunner

    from edgecc import cli
    from edgecc.modelfile import content_id, read_header

    with pytest.raises(ValueError, match="distill_weight"):
        TrainConfig(distill_weight=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(distill_temperature=0.0)
    assert not {"teacher", "distill_weight", "distill_temperature"} & set(_identity(TrainConfig(distill_weight=0.2)))

    data = _sample_data(tmp_path)
    teacher = _centralized_file(tmp_path, data)
    out = tmp_path / "m.safetensors"
    args = ["train", "--K", "2", "--encoder", "mlp", "--compute", "mlp", "--epochs", "1", "--data-dir", str(data),
            "--threads", "1", "--quiet", "--out", str(out)]
    r = CliRunner().invoke(cli.main, args + ["--teacher", str(teacher), "--distill-weight", "0.7"])
    assert r.exit_code == 0, r.output
    t = read_header(str(out))["training"]
    assert (t["teacher"], t["distill_weight"], t["distill_temperature"]) == (content_id(teacher), 0.7, 4.0)
    assert t["teacher_file"] == str(teacher)
    # a teacher must be a centralized model of the same images: an AICC model file is refused, with a message
    r = CliRunner().invoke(cli.main, args + ["--teacher", str(out), "--out", str(tmp_path / "n.safetensors")])
    assert r.exit_code == 2 and "the teacher must be a centralized model" in r.output
    r = CliRunner().invoke(cli.main, args + ["--distill-weight", "2"])
    assert r.exit_code == 2 and "distill_weight must be in [0, 1]" in r.output
