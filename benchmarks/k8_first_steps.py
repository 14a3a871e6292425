"""The first training steps of a table-k8 cell at several Adam learning rates: does the encoder survive?

Trains the cell's model exactly as `edgecc reproduce run --table k8` does (edgecc.train.train_step: the same
networks, batch 128 // K = 16 groups of real training images, bf16 autocast where native), for --steps steps
from a fresh model, and prints every 10 steps the mean training loss, its largest value, and how much the
encoder's coefficients C_g = Γ_g(X) vary across 16 fixed groups (their standard deviation over the groups,
averaged over pixels). A collapsed encoder gives the same C_g for every input: the loss sits at ln 10 = 2.303
and the test accuracy at 10%, and plain Adam does not bring it back.

--warmup N and --clip X probe remedies beyond the paper's recipe (TrainConfig.warmup_steps, .clip_norm): a
linear lr warm-up over the first N steps (the lr of each step set as `edgecc.train.train` sets it), and the
gradient of all parameters clipped to global norm X before each Adam step. --init variance re-draws the CL
stacks' convolutions with a variance-preserving (He) init (TrainConfig.weight_init), and --norm puts a
GroupNorm before every ReLU of the encoder (a probe only; both beyond the paper). Without them the steps
are the paper recipe's. Every row also gives the share of the encoder's ReLU channels that are zero on every probe input (dead), and the last row the
direct test accuracy on the first 2,000 test images. Results: results/table-k8-remedies.txt, docs/k8.md.

    python benchmarks/k8_first_steps.py [--cell k8-r4-hb-g3p1] [--lr 1e-3 1e-4] [--seed 0] [--steps 100]
                                        [--warmup N] [--clip X] [--init variance] [--norm]

Slow on a CPU: about 2.5 s per step per learning rate on one thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def group_normed(model, groups: int = 8) -> None:
    """Put a GroupNorm (`groups` groups, learned scale and shift) before every ReLU of the encoder's CL stacks:
    a remedy beyond the paper's architecture. Each sample is normalised on its own, so one group at inference
    sees what it saw in training."""
    import types

    import torch
    from torch import nn

    from edgecc.nets.blocks import DilatedStack

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x)))
        return self.head(x)

    for stack in (m for m in model.gamma.modules() if isinstance(m, DilatedStack)):
        stack.norms = nn.ModuleList(nn.GroupNorm(groups, conv.out_channels) for conv in stack.convs)
        stack.forward = types.MethodType(forward, stack)


def dead_channels(model, probe) -> float:
    """The share of the encoder stacks' ReLU channels that are zero at every pixel of every probe group: a
    channel dead on all inputs passes no gradient, and a stack whose channels all die outputs its bias alone."""
    import torch

    from edgecc.nets.blocks import DilatedStack

    dead, total = 0, 0
    B, K = probe.shape[:2]
    with torch.no_grad():
        for stack in (m for m in model.gamma.modules() if isinstance(m, DilatedStack)):
            x = probe.reshape(B, K, *probe.shape[2:])
            for i, conv in enumerate(stack.convs):
                x = conv(x)
                if hasattr(stack, "norms"):
                    x = stack.norms[i](x)
                x = torch.relu(x)
                alive = x.amax(dim=(0, 2, 3)) > 0
                dead, total = dead + int((~alive).sum()), total + alive.numel()
    return dead / total


def coef_spread(model, probe) -> float:
    """How much the encoder's coefficients C_g vary across the probe groups: std over the groups, mean over pixels."""
    import torch

    with torch.no_grad():
        return model.coefficients(probe).std(0).mean().item()


def test_accuracy(model, K: int, images: int = 2000) -> float:
    """Direct accuracy D(β_k) on the first `images` test images, as `edgecc eval` reports it (all groups)."""
    import torch

    from edgecc import data

    x_np, y_np = data.load_split("test")
    x = torch.from_numpy(data.to_float(x_np[:images])).reshape(-1, K, 28, 28)
    y = torch.from_numpy(y_np[:images].astype(np.int64)).reshape(-1, K)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 50]).argmax(-1) for i in range(0, x.shape[0], 50)])
    model.train()
    return 100.0 * (pred == y).float().mean().item()


def first_steps(cell_name: str, lr: float, seed: int, steps: int, threads: int = 1, every: int = 10,
                warmup: int = 0, clip: float | None = None, init: str = "default", norm: bool = False,
                start: str | None = None, compile_steps: bool = False) -> Iterator[dict]:
    """Every `every` steps, that stretch's numbers, as they come (a slow probe shows its progress); the last
    row also has the direct test accuracy on the first 2,000 test images. `start`: a training run's
    checkpoint.pt (edgecc.train) to continue from instead of a fresh model, weights and Adam moments, on the
    next epoch's images, at `lr` (step 0 then has its test accuracy too)."""
    import torch

    from edgecc import data
    from edgecc.reproduce import TABLE_K8
    from edgecc.train import TrainConfig, _start, make_optimizer, set_lr, stepping, train_step

    cell = next(c for c in TABLE_K8 if c.name == cell_name)
    cfg = TrainConfig(seed=seed, lr=lr, threads=threads, warmup_steps=warmup, clip_norm=clip, weight_init=init,
                      compile=compile_steps)
    _, K, _, model, opt = _start(cell.kind, cell.scheme, cfg, None)
    if norm:
        group_normed(model)
        opt = make_optimizer(model, cfg, False)  # over the changed model's parameters (no step taken yet)
    epoch = 0
    if start:
        ck = torch.load(start, map_location="cpu", weights_only=True)  # tensors and plain types only: no pickle code
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for group in opt.param_groups:  # the probe's lr, not the run's
            group["lr"] = lr
        epoch = ck["epoch"]  # the run's next epoch: images it has not seen since its last checkpoint's epoch
    stepper = stepping(model, cfg)
    x_np, y_np = data.load_split("train")
    x, y = torch.from_numpy(data.to_float(x_np)), torch.from_numpy(y_np.astype(np.int64))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # that epoch's permutation, as train() draws it
    perm = torch.randperm(x.shape[0], generator=gen)
    probe = x[: 16 * K].reshape(16, K, 28, 28)
    batch = cfg.batch_for(K)
    losses, t0 = [], time.perf_counter()
    yield {"step": 0, "loss": float("nan"), "loss_max": float("nan"), "coef_spread": coef_spread(model, probe),
           "dead": dead_channels(model, probe), "seconds": 0.0, **({"test_accuracy": test_accuracy(model, K)} if start else {})}
    for s in range(steps):
        idx = perm[s * batch * K : (s + 1) * batch * K]
        set_lr(opt, cfg, s, steps)  # the warm-up's lr for this step; the paper's constant lr is left untouched
        losses.append(train_step(stepper, opt, cell.kind, x[idx], y[idx], K, cfg, gen).item())
        if (s + 1) % every == 0 or s + 1 == steps:
            row = {"step": s + 1, "loss": float(np.mean(losses[-every:])), "loss_max": max(losses[-every:]),
                   "coef_spread": coef_spread(model, probe), "dead": dead_channels(model, probe), "seconds": time.perf_counter() - t0}
            if s + 1 == steps:
                row["test_accuracy"] = test_accuracy(model, K)
            yield row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="k8-r4-hb-g3p1")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 1e-4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0, help="linear lr warm-up over this many steps (beyond the paper; 0 = off)")
    ap.add_argument("--clip", type=float, default=None, help="clip the gradient's global norm to this (beyond the paper; default off)")
    from edgecc.train import WEIGHT_INITS

    ap.add_argument("--init", choices=WEIGHT_INITS, default="default",
                    help="variance: He init for the CL stacks' convs (TrainConfig.weight_init; beyond the paper, which keeps "
                    "PyTorch's default)")
    ap.add_argument("--norm", action="store_true", help="GroupNorm before every ReLU of the encoder (beyond the paper's architecture)")
    ap.add_argument("--start", default=None, metavar="CHECKPOINT",
                    help="continue a training run's checkpoint.pt (weights and Adam moments, its next epoch's images) at each --lr "
                    "instead of a fresh model; --seed must be the run's")
    ap.add_argument("--compile", action="store_true", help="torch.compile the steps (TrainConfig.compile: same losses, faster)")
    args = ap.parse_args()
    remedies = ([f"lr warm-up over {args.warmup} steps"] if args.warmup else []) + \
        ([f"gradient norm clipped to {args.clip:g}"] if args.clip is not None else []) + \
        (["variance-preserving (He) init of the CL stacks"] if args.init == "variance" else []) + \
        (["GroupNorm(8) before the encoder's ReLUs"] if args.norm else [])
    remedy = "remedy beyond the paper: " + " + ".join(remedies) if remedies else "no remedy (the paper's recipe)"
    origin = f"continuing {args.start}" if args.start else "from a fresh model"
    print(f"{args.cell}, seed {args.seed}, {origin}, {remedy}: mean loss / largest loss / encoder output spread across inputs / "
          f"share of the encoder's ReLU channels dead on every probe input, every 10 steps (step 0: the starting model)")
    for lr in args.lr:
        for r in first_steps(args.cell, lr, args.seed, args.steps, args.threads, warmup=args.warmup, clip=args.clip,
                             init=args.init, norm=args.norm, start=args.start, compile_steps=args.compile):
            acc = f"; direct test accuracy {r['test_accuracy']:.2f}% (first 2,000 test images)" if "test_accuracy" in r else ""
            print(f"lr {lr:g} step {r['step']:4d}: loss {r['loss']:.3f} max {r['loss_max']:6.2f} "
                  f"coef spread {r['coef_spread']:.2e} dead {r['dead']:.3f} ({r['seconds']:.0f} s){acc}", flush=True)

if __name__ == "__main__":
    main()
