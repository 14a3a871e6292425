"""Training by the paper's protocol (SPEC §1), readable in one sitting.

Each epoch draws every training image exactly once, in groups of K without replacement; the loss is
cross-entropy of D(β_k) = H(E(β_k)) against image k's label, averaged over the batch and k.
A checkpoint is written atomically after every epoch and, inside an epoch, every `checkpoint_every_s`
seconds of training (an epoch of a K=8 cell takes about an hour on a 2-core CPU: a run killed mid-epoch
loses at most that much); `resume=True` continues from it and gives the same result as an uninterrupted
run (the epoch's permutation derives from the seed and the epoch, and a mid-epoch checkpoint holds the
step, the loss so far and the state of the generator that draws the step's randomness).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .coding.schemes import Scheme
from .modelfile import atomic_write, build_model, content_id, save_model
from .nets.aicc import resolve_precision
from .nets.blocks import variance_preserving_init
from .protocol.images import PAPER_IMAGE, dims, model_image


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # paper: 20
    batch: int | None = None  # groups per step; None = the paper's 64 for K=2, 32 for K=4 (128 // K)
    lr: float = 1e-3  # Adam, paper: 1e-3
    seed: int = 0  # model init and per-epoch permutations
    weight_decay: float = 0.0  # Adam weight decay (paper: none; the learned-code baseline [10] uses 1e-5)
    # "bf16" autocast for matmuls/convs (2.2x faster on an AVX-512 BF16 CPU), "fp32", or "auto": bf16 where
    # cfg.device runs it natively, else fp32 (emulated bf16 is far slower); resolved when the config is made
    precision: str = "auto"
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads; None = torch default
    limit: int | None = None  # use only the first `limit` training images (tests, smoke runs)
    data: str = "fashion-mnist"  # the image source (datasets/sources.py): its train split trains, its test split tests
    data_dir: str | None = None  # where the fashion-mnist source looks when it names no folder
    # "paper": constant lr, no augmentation; "best": warmup + cosine lr; "augment": best + shifts/flips;
    # "anneal": warmup + cosine from the weights in `init` (RECIPES)
    recipe: str = "paper"
    init: str | None = None  # model file whose weights training starts from (same kind and scheme)
    # Remedies beyond the paper's recipe, off by default (docs/k8.md: K=8 AICC collapses under Adam at lr 1e-3
    # in its first ~40 steps). warmup_steps: the lr ramps linearly from lr/warmup_steps to lr over the first
    # warmup_steps optimizer steps of the run (on top of the recipe's own schedule), so Adam's first updates,
    # made with still-noisy moment estimates, are small. clip_norm: the gradient of all parameters is scaled
    # to at most this global L2 norm before each step, so one spiking batch cannot throw the encoder off.
    warmup_steps: int = 0
    clip_norm: float | None = None
    # weight_init "variance": the CL stacks' convolutions start from a variance-preserving (He) init instead of
    # PyTorch's default (nets.blocks.variance_preserving_init); at K=8 this lets Adam at lr 1e-4 leave chance
    # within ~40 steps; with the default init it is still at chance after 150 (docs/k8.md).
    weight_init: str = "default"
    # teacher: a centralized model file (same images and classes) whose predictions the model also learns, beyond
    # the paper: the loss is (1 − w)·cross-entropy + w·T²·KL(teacher's softmax at temperature T ‖ the model's),
    # w = distill_weight, T = distill_temperature (knowledge distillation; the teacher runs on the same, possibly
    # augmented, images each step, without gradients). The distillation settings are recorded only with a teacher.
    teacher: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    # torch.compile the module the optimizer steps run through (inductor; on a CPU it needs a C++ compiler):
    # losses within 2e-4 of eager's, steps 1.06x (K=4 G=1 P=4) to 1.55x (K=8) faster on one CPU thread
    # (benchmarks/train_compile.py, results/train-compile.json) after a one-off compile of 5-20 s. How a run
    # computes, not what: like threads, it is not part of a run's identity, so a run may switch between
    # compiled and eager across resumes.
    compile: bool = False

    def __post_init__(self) -> None:  # validates; rows, checkpoints and resume checks record what actually ran
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device))
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {self.weight_init!r}")
        if self.compile and torch.device(self.device).type == "cpu" and not _cxx_compiler():
            raise ValueError("compile on a CPU needs a C++ compiler (g++, clang++ or $CXX) for torch's inductor; "
                             "install one or train without compile")

    def batch_for(self, K: int) -> int:
        return self.batch if self.batch is not None else max(1, 128 // K)

    @classmethod
    def for_recipe(cls, recipe: str = "paper", **settings: Any) -> "TrainConfig":
        """The recipe's defaults (best and augment: BEST's epochs and peak lr; anneal: ANNEAL's), then every
        setting that is not None."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        defaults = {"paper": {}, "anneal": ANNEAL}.get(recipe, {"epochs": BEST["epochs"], "lr": BEST["lr"]})
        return cls(recipe=recipe, **{**defaults, **{k: v for k, v in settings.items() if v is not None}})


REMEDIES_OFF = {"warmup_steps": 0, "clip_norm": None, "weight_init": "default"}  # fields beyond the paper, and their off values
DISTILLATION = ("teacher", "distill_weight", "distill_temperature")  # recorded only where a teacher is set
WEIGHT_INITS = ("default", "variance")


# The improved recipes: same networks, same data per epoch, same recovery threshold.
# "best": twice the epochs; Adam's lr peaks at 2e-3 after a 5% linear warmup and decays on a cosine to 0.
# "augment": best, and every training image is shifted by up to BEST["shift"] pixels and mirrored with
# probability 1/2 (Fashion-MNIST classes are mirror-symmetric), independently within a group.
# "anneal": the cell's paper-protocol model (init), trained ANNEAL["epochs"] more with the paper's lr as the
# peak of the same warmup + cosine schedule (fresh Adam moments, hence the warmup): 30 epochs in all, the
# first 20 the paper's, so the cells that cost hours per run on a CPU get an improved column for half a run.
# Measured on mlp+mlp-hb (seed 0): paper 84.93, best 87.6, augment 83.67 (an MLP encoder cannot use
# shifted inputs); augment is kept to be measured on the CNN cells.
RECIPES = ("paper", "best", "augment", "anneal")
BEST = {"epochs": 40, "lr": 2e-3, "warmup": 0.05, "shift": 2}
ANNEAL = {"epochs": 10, "lr": 1e-3}


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of global step `step` of `total` (a pure function: resuming needs no state)."""
    ramp = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0  # cfg.warmup_steps (off: 1)
    if cfg.recipe == "paper":
        return cfg.lr * ramp
    warm = max(1, int(BEST["warmup"] * total))
    if step < warm:
        return ramp * cfg.lr * (step + 1) / warm
    return ramp * 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, total: int) -> None:
    """Give the optimizer global step `step`'s lr where it varies; the paper's constant lr (no warm-up) is left
    as make_optimizer set it, untouched."""
    if cfg.recipe != "paper" or cfg.warmup_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, total)


def augment(x: torch.Tensor, gen: torch.Generator, image: tuple[int, int, int] = PAPER_IMAGE) -> torch.Tensor:
    """Random shifts (zero fill) and mirror flips of images x (..., *dims), one draw per image (every
    channel of an image moves together), vectorized."""
    shape, s = x.shape, BEST["shift"]
    c, h, w = image
    x = x.reshape(-1, c, h, w)
    n = x.shape[0]
    dy, dx = (torch.randint(0, 2 * s + 1, (n,), generator=gen).to(x.device) for _ in range(2))
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (s, s, s, s))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                  rows, cols].reshape(shape)


def _autocast(cfg: TrainConfig):
    if cfg.precision != "bf16":
        return contextlib.nullcontext()  # also where autocast has no such device (the meta device of the tests)
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16)


GROUPED = ("aicc", "learned-code")  # kinds whose samples are groups of K images
PROGRESS_EVERY = 20  # steps between progress reports (each reads the loss back from the device)


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that determine each epoch's result (not threads, where the data lies, or, for the
    paper recipe, how many epochs: a finished run may be resumed with a larger --epochs; the best
    recipe's lr schedule spans all epochs, so there they count)."""
    ident = asdict(replace(cfg, threads=None, data_dir=None, epochs=cfg.epochs if cfg.recipe != "paper" else 0,
                           init=content_id(cfg.init) if cfg.init else None,
                           teacher=content_id(cfg.teacher) if cfg.teacher else None))
    del ident["compile"]  # how the steps run, not what they compute
    if cfg.teacher is None:
        for key in DISTILLATION:
            del ident[key]
    # the remedies beyond the paper are recorded only when set: a run without them records (and its model file
    # and checkpoints hold) exactly what a run from before they existed did, and such checkpoints still resume
    for key, off in REMEDIES_OFF.items():
        if ident[key] == off:
            del ident[key]
    return ident


@torch.inference_mode()
def accuracy_direct(model, kind: str, images: torch.Tensor, labels: torch.Tensor, K: int, batch: int = 512) -> float:
    """Test accuracy of D(β_k) (AICC) or of the baseline, groups in dataset order; fp32 unless the caller
    runs it under autocast."""
    model.eval()
    grouped = kind in GROUPED
    n = images.shape[0] - images.shape[0] % K if grouped else images.shape[0]
    item = tuple(images.shape[1:])  # one image's dims
    correct, total = 0, 0
    step = batch * (K if grouped else 1)
    for i in range(0, n, step):
        xb, yb = images[i : min(i + step, n)], labels[i : min(i + step, n)]
        if grouped:
            xb, yb = xb.reshape(-1, K, *item), yb.reshape(-1, K)
        if kind == "learned-code":  # degraded mode: each slot erased in turn, scored on that slot
            rows = torch.arange(xb.shape[0])
            for e in range(K):
                erased = torch.full((xb.shape[0],), e, dtype=torch.long)
                correct += (model(xb, erased)[rows, e].argmax(-1) == yb[:, e]).sum().item()
                total += xb.shape[0]
        else:
            correct += (model(xb).argmax(-1) == yb).sum().item()
            total += yb.numel()
    model.train()
    return 100.0 * correct / total


def _start_from(model, info: dict[str, Any], init: str, seed: int = 0) -> int:
    """Load the weights of model file `init` into `model` (it must be the same kind, scheme or code, or the same
    AICC scheme with narrower coefficient networks or fewer H_S maps, which are widened: nets/widen.py); the
    number of epochs it was trained for."""
    from .modelfile import load_model
    from .nets.widen import widen_into

    src, src_info = load_model(init)
    widen = _widens(src_info, info)
    for key in ("kind", "scheme", "code"):
        if src_info.get(key) != info.get(key) and not (key == "scheme" and widen):
            raise ValueError(f"{init} is a different model ({key} {src_info.get(key)!r}, training needs {info.get(key)!r})")
    if widen:
        widen_into(src, model, seed)
    else:
        model.load_state_dict(src.state_dict())
    trained = src_info.get("training", {})
    return int(trained.get("epochs", 0)) + int(trained.get("init_epochs", 0))


def _widens(src_info: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether a model of src_info starts one of info by widening: the same AICC scheme but for wider
    coefficient networks, more H_S maps, or both (never fewer of either)."""
    if src_info.get("kind") != "aicc" or info.get("kind") != "aicc" or src_info.get("scheme") == info.get("scheme"):
        return False
    a, b = Scheme.from_dict(src_info["scheme"]), Scheme.from_dict(info["scheme"])
    same = replace(a, coef_width=None, maps=None) == replace(b, coef_width=None, maps=None)
    maps_ok = b.map_count == a.map_count or b.compute_arch == "cl"  # widen.py adds maps to CL heads only
    return (same and maps_ok and b.width >= a.width and b.map_count >= a.map_count
            and (b.width, b.map_count) != (a.width, a.map_count))


def _teacher(path: str, kind: str, image: tuple[int, int, int], classes: tuple[str, ...], dev: torch.device):
    """The frozen centralized model of file `path`, on dev, checked against what the run trains."""
    from .modelfile import load_model

    if kind == "learned-code":
        raise ValueError("distillation trains AICC and centralized models; the learned code is trained on one erased slot")
    model, info = load_model(path)
    if not info["kind"].startswith("centralized"):
        raise ValueError(f"the teacher must be a centralized model; {path} is {info['kind']!r}")
    if model_image(info) != tuple(image) or tuple(info.get("classes", data.CLASSES)) != tuple(classes):
        raise ValueError(f"the teacher {path} takes {model_image(info)} images in {len(info.get('classes', data.CLASSES))} "
                         f"classes; the training data has {tuple(image)} in {len(classes)}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(dev).eval()


def step_loss(model, kind: str, xb: torch.Tensor, yb: torch.Tensor, K: int, cfg: TrainConfig,
              gen: torch.Generator, teacher: torch.nn.Module | None = None) -> torch.Tensor:
    """The training loss of one batch of images xb (B·K, *dims) with labels yb, on xb's device (with `teacher`,
    cfg's distillation loss). Random draws come from the CPU generator `gen` and move to the device (tested on
    the meta device: no CPU tensor mixes in)."""
    image = tuple(getattr(model, "image", PAPER_IMAGE))
    if cfg.recipe == "augment":
        xb = augment(xb, gen, image)
    images = xb  # one image per row, as the teacher takes them
    if kind in GROUPED:
        xb, yb = xb.reshape(-1, K, *xb.shape[1:]), yb.reshape(-1, K)  # (B, K, *dims), (B, K)
    if kind == "learned-code":  # one data slot erased at random; trained on that slot's label
        erased = torch.randint(K, (xb.shape[0],), generator=gen).to(xb.device)
        rows = torch.arange(xb.shape[0], device=xb.device)
        with _autocast(cfg):
            logits = model(xb, erased)[rows, erased]
        yb = yb[rows, erased]
    else:
        with _autocast(cfg):
            logits = model(xb)
    logits = logits.float().reshape(-1, logits.shape[-1])  # image i's row: AICC's D(β_k) in group order
    ce = F.cross_entropy(logits, yb.reshape(-1))
    if teacher is None:
        return ce
    with torch.no_grad(), _autocast(cfg):
        target = teacher(images)
    T, w = cfg.distill_temperature, cfg.distill_weight
    kd = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(target.float() / T, -1), log_target=True,
                  reduction="batchmean")
    return (1 - w) * ce + w * T * T * kd  # T²: the soft targets' gradients shrink as 1/T²


def _describe(kind: str, scheme: Scheme | None, code: dict[str, Any] | None,
              image: tuple[int, int, int] = PAPER_IMAGE, classes: tuple[str, ...] = data.CLASSES) -> tuple[dict[str, Any], int]:
    """The model file's info for this model, and how many images one sample groups. The image shape and
    the class names are recorded where they are not the paper's (Fashion-MNIST, 1×28×28, 10 classes), so
    a paper model's file and checkpoints stay what they were."""
    info: dict[str, Any] = {"kind": kind}
    if tuple(image) != PAPER_IMAGE or tuple(classes) != data.CLASSES:
        info["image"], info["classes"] = list(image), list(classes)
    if kind == "aicc":
        info["scheme"] = scheme.to_dict()
    if kind == "learned-code":
        info["code"] = dict(code or {"arch": "mlp", "k": 2})
    K = scheme.K if kind == "aicc" else info["code"]["k"] if kind == "learned-code" else 1
    return info, K


def _cxx_compiler() -> str | None:
    """The C++ compiler torch's inductor would use on a CPU ($CXX, else g++ or clang++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def stepping(model, cfg: TrainConfig):
    """The module the optimizer steps call: the model itself, or (cfg.compile) its torch.compile wrapper, which
    shares its parameters; the model itself is what is tested, checkpointed and saved."""
    return torch.compile(model) if cfg.compile else model


def train_step(model, opt, kind: str, xb: torch.Tensor, yb: torch.Tensor, K: int, cfg: TrainConfig,
               gen: torch.Generator, teacher: torch.nn.Module | None = None) -> torch.Tensor:
    """One optimizer step on a batch; its loss, detached, on the device (not read back: no sync)."""
    loss = step_loss(model, kind, xb, yb, K, cfg, gen, teacher)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_norm is not None:  # all parameters' gradients as one vector (those without a gradient are skipped)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
    opt.step()
    return loss.detach()


def make_optimizer(model, cfg: TrainConfig, cuda: bool) -> torch.optim.Optimizer:
    # on a GPU a step is bound by kernel launches: one fused Adam kernel
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay, fused=True if cuda else None)


def _start(kind: str, scheme: Scheme | None, cfg: TrainConfig, code: dict[str, Any] | None,
           image: tuple[int, int, int] = PAPER_IMAGE, classes: tuple[str, ...] = data.CLASSES):
    """What every run starts from: its info, K, device, a freshly seeded model and its optimizer (weights loaded
    into the model later update the same parameters)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info, K = _describe(kind, scheme, code, image, classes)
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN's fastest dilated convs for these fixed shapes
    torch.manual_seed(cfg.seed)
    model = build_model(info)
    if cfg.weight_init == "variance" and not variance_preserving_init(model, cfg.seed):
        raise ValueError("weight_init 'variance' re-draws CL (CNN) stacks, and this model has none")
    model = model.to(dev).train()
    return info, K, dev, model, make_optimizer(model, cfg, dev.type == "cuda")


def time_training(kind: str, scheme: Scheme | None, cfg: TrainConfig, code: dict[str, Any] | None = None,
                  steps: int = 3, train_images: int = data.SIZES["train"],
                  image: tuple[int, int, int] = PAPER_IMAGE) -> dict[str, Any]:
    """What a training run of this model would cost on cfg.device, measured: the median time of `steps`
    optimizer steps (after one warm-up step) on random images of the run's batch shape, from a fresh model.
    Training steps only; the test pass after each epoch (10,000 images forward) is not included."""
    _, K, dev, model, opt = _start(kind, scheme, cfg, code, image)
    batch = cfg.batch_for(K) if kind in GROUPED else 64
    gen = torch.Generator().manual_seed(cfg.seed)
    xb = torch.rand(batch * K, *dims(image), generator=gen).to(dev)
    yb = torch.randint(10, (batch * K,), generator=gen).to(dev)
    times, stepper = [], stepping(model, cfg)
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = train_step(stepper, opt, kind, xb, yb, K, cfg, gen)
        loss.item()  # waits for the device
        if i:  # the first step pays for allocation, cuDNN's autotuning and, with compile, the compilation
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    per_epoch = -(-(train_images // K) // batch)
    return {"batch": batch, "K": K, "step_seconds": step_s, "steps_per_epoch": per_epoch,
            "epoch_seconds": step_s * per_epoch, "run_seconds": step_s * per_epoch * cfg.epochs,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),  # trained (not [10]'s frozen base)
            "device": cfg.device, "threads": torch.get_num_threads()}


def run_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """What a resumable run has done so far: {epoch, epochs_done (with the fraction of an epoch a mid-epoch
    checkpoint holds), train_seconds (its part included), history}, or None before its first checkpoint.
    Memory-maps the checkpoint, so the weights and optimizer moments are not read."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"epoch": ck["epoch"], "epochs_done": _epochs_done(ck),
            "train_seconds": ck["train_seconds"] + (ck.get("partial") or {}).get("seconds", 0.0), "history": ck["history"]}


def _epochs_done(ck: dict[str, Any]) -> float:
    """The epochs a checkpoint holds, with the fraction of an epoch a mid-epoch checkpoint adds."""
    part = ck.get("partial") or {"step": 0, "steps": 1}
    return ck["epoch"] + part["step"] / part["steps"]


def run_model(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a resumable run at its last checkpoint, in eval mode, and its info: what a model file holds,
    with a "training" entry that names the run and how far it had come ("snapshot": {run, epochs_done}, the
    fraction of an epoch a mid-epoch checkpoint holds included), so the file is never taken for the finished
    run's model. Reads only the checkpoint this code writes (torch's weights-only loader)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet: a run writes one after each epoch and every "
                                "10 minutes of training")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    info = dict(ck["info"])
    model = build_model(info)
    model.load_state_dict(ck["model"])
    info["training"] = {**ck["config"], "epochs": ck["epoch"], "train_seconds": round(ck["train_seconds"], 1),
                        "torch": torch.__version__, "history": ck["history"],
                        "snapshot": {"run": str(run_dir), "epochs_done": round(_epochs_done(ck), 3)}}
    return model.eval(), info


def train(
    kind: str,
    scheme: Scheme | None,
    cfg: TrainConfig,
    out: str | Path,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    code: dict[str, Any] | None = None,
    base: str | Path | None = None,
    checkpoint_every_s: float | None = 600.0,
) -> dict[str, Any]:
    """Train a model of `kind` and save it to `out`: 'aicc' (with `scheme`), a centralized baseline,
    or 'learned-code' (with `code` = {"arch", "k"} around the frozen centralized MLP in file `base`)."""
    if cfg.recipe == "anneal" and not cfg.init:
        raise ValueError("the anneal recipe continues a trained model: give it one (init, --init FILE)")
    from .datasets import load as load_images

    train_set = load_images(cfg.data, "train", cfg.data_dir).head(cfg.limit)
    test_set = load_images(cfg.data, "test", cfg.data_dir)
    if train_set.shape[0] != 1 and cfg.precision == "bf16" and torch.device(cfg.device).type == "cpu":
        # torch 2.13's oneDNN kills the process (SIGSEGV), not on every run, in the bf16 backward pass of
        # the dilated stacks when they have 3 output channels (colour images; seen on an AVX-512 BF16 CPU
        # with a 3×32×32 CNN+CNN H_B model): colour models train in fp32 on the CPU.
        warnings.warn(f"{cfg.data}: colour images train in fp32 on the CPU (bf16 crashes this torch's oneDNN)")
        cfg = replace(cfg, precision="fp32")
    info, K, dev, model, opt = _start(kind, scheme, cfg, code, train_set.shape, train_set.classes)
    item = dims(train_set.shape)
    x_np, y_np = train_set.images.reshape(-1, *item), train_set.labels
    xt_np, yt_np = test_set.images.reshape(-1, *item), test_set.labels
    test_set.expect_shape(train_set.shape, f"a model trained on {cfg.data}'s train split")
    x = torch.from_numpy(data.to_float(x_np)).to(dev)
    y = torch.from_numpy(y_np.astype(np.int64)).to(dev)
    xt = torch.from_numpy(data.to_float(xt_np)).to(dev)
    yt = torch.from_numpy(yt_np.astype(np.int64)).to(dev)

    if kind == "learned-code":
        from .modelfile import load_model

        base_model, base_info = load_model(base or "default-mlp")
        if base_info["kind"] != "centralized-mlp":
            raise ValueError("the learned-code baseline runs the centralized MLP on every worker")
        if model_image(base_info) != train_set.shape:
            raise ValueError(f"the base model takes {model_image(base_info)} images, {cfg.data} gives {train_set.shape}")
        model.base.load_state_dict(base_model.state_dict())
        info["base"] = {"model": str(base or "default-mlp"), "training": base_info.get("training", {}).get("history", [{}])[-1]}
    init_epochs = _start_from(model, info, cfg.init, cfg.seed) if cfg.init else 0
    teacher = _teacher(cfg.teacher, kind, train_set.shape, train_set.classes, dev) if cfg.teacher else None
    batch = cfg.batch_for(K) if kind in GROUPED else 64
    run_dir = Path(run_dir) if run_dir else Path(str(out) + ".run")
    ckpt_path = run_dir / "checkpoint.pt"
    start_epoch, history, seconds, partial = 0, [], 0.0, None
    now = _identity(cfg)  # once per run: it reads the whole init file
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
        saved = {**_identity(TrainConfig()), **ck["config"]}  # checkpoints from before a field existed get its default
        if saved["recipe"] == "paper":
            saved["epochs"] = 0
        if ck["info"] != info or saved != now:
            diff = ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} here" for k in sorted(now | saved)
                             if saved.get(k) != now.get(k))
            raise ValueError(f"{ckpt_path} belongs to a different configuration ({diff or 'another model'}); "
                             "use another run dir")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history, seconds = ck["epoch"], ck["history"], ck["train_seconds"]
        partial = ck.get("partial")  # {step, loss_sum, generator, seconds} when it was written inside an epoch

    def save(epoch_done: int, partial_epoch: dict[str, Any] | None = None) -> None:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch_done,
                    "history": history, "train_seconds": seconds, "info": info,
                    "config": now, "partial": partial_epoch}, buf)
        atomic_write(ckpt_path, buf.getvalue())

    groups, stepper = x.shape[0] // K, stepping(model, cfg)
    steps = -(-groups // batch)
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(x.shape[0], generator=gen)[: groups * K].to(dev)
        first, loss_sum, done_s = 0, torch.zeros((), device=dev), 0.0  # loss summed on the device: no sync per step
        if partial is not None and partial["step"] < steps:  # resume inside this epoch where the checkpoint left it
            first, done_s = partial["step"], partial["seconds"]
            loss_sum = partial["loss_sum"].to(dev)
            gen.set_state(partial["generator"])
        partial = None
        t0 = last_save = time.perf_counter()
        for step in range(first, steps):
            idx = perm[step * batch * K : (step + 1) * batch * K]
            set_lr(opt, cfg, epoch * steps + step, cfg.epochs * steps)
            loss_sum += train_step(stepper, opt, kind, x[idx], y[idx], K, cfg, gen, teacher)
            if progress and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == steps):
                rate = (step + 1 - first) * batch / (time.perf_counter() - t0)
                progress(epoch, step + 1, f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum.item() / (step + 1):.4f} {rate:.0f} groups/s")
            if (checkpoint_every_s is not None and step + 1 < steps
                    and time.perf_counter() - last_save >= checkpoint_every_s):
                save(epoch, {"step": step + 1, "steps": steps, "loss_sum": loss_sum.detach().cpu(), "generator": gen.get_state(),
                             "seconds": done_s + time.perf_counter() - t0})
                last_save = time.perf_counter()
        loss_epoch = loss_sum.item() / steps  # waits for the device's last step
        seconds += done_s + time.perf_counter() - t0
        # monitoring passes run under the training's autocast (2.1-2.7x faster on CNN cells on this CPU, within 0.1 point:
        # benchmarks/test_pass_precision.py); the last epoch's in fp32, as `edgecc eval` reports it
        test_precision = "fp32" if epoch + 1 == cfg.epochs else cfg.precision
        with _autocast(replace(cfg, precision=test_precision)):
            acc = accuracy_direct(model, kind, xt, yt, K)
        history.append({"epoch": epoch + 1, "loss": loss_epoch, "test_accuracy_direct": acc, "test_precision": test_precision})
        save(epoch + 1)
        if progress:
            progress(epoch + 1, 0, f"epoch {epoch + 1} done: loss {loss_epoch:.4f}, test accuracy {acc:.2f}%")

    info["training"] = {**now, "epochs": cfg.epochs, "batch": batch, "train_images": int(x.shape[0]),
                        "train_seconds": round(seconds, 1), "torch": torch.__version__, "history": history,
                        "init": cfg.init, "init_id": now["init"], "init_epochs": init_epochs,
                        **({"teacher_file": cfg.teacher} if cfg.teacher else {})}  # (its content id: "teacher")
    save_model(out, model, info)
    return info
