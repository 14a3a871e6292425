"""The first training steps of a table-k8 cell at several Adam learning rates: does the encoder survive?

Trains the cell's model exactly as `edgecc reproduce run --table k8` does (edgecc.train.train_step: the same
networks, batch 128 // K = 16 groups of real training images, bf16 autocast where native), for --steps steps
from a fresh model, and prints every 10 steps the mean training loss, its largest value, and how much the
encoder's coefficients C_g = Γ_g(X) vary across 16 fixed groups (their standard deviation over the groups,
averaged over pixels). A collapsed encoder gives the same C_g for every input: the loss sits at ln 10 = 2.303
and the test accuracy at 10%, and plain Adam does not bring it back.

--warmup N and --clip X probe remedies beyond the paper's recipe (TrainConfig.warmup_steps, .clip_norm): a
linear lr warm-up over the first N steps (the lr of each step set as `edgecc.train.train` sets it), and the
gradient of all parameters clipped to global norm X before each Adam step. Without them the steps are the
paper recipe's. Results: results/table-k8-remedies.txt, docs/k8.md.

    python benchmarks/k8_first_steps.py [--cell k8-r4-hb-g3p1] [--lr 1e-3 1e-4] [--seed 0] [--steps 100]
                                        [--warmup N] [--clip X]

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


def first_steps(cell_name: str, lr: float, seed: int, steps: int, threads: int = 1, every: int = 10,
                warmup: int = 0, clip: float | None = None) -> Iterator[dict]:
    """Every `every` steps, that stretch's numbers, as they come (a slow probe shows its progress)."""
    import torch

    from edgecc import data
    from edgecc.reproduce import TABLE_K8
    from edgecc.train import TrainConfig, _start, set_lr, train_step

    cell = next(c for c in TABLE_K8 if c.name == cell_name)
    cfg = TrainConfig(seed=seed, lr=lr, threads=threads, warmup_steps=warmup, clip_norm=clip)
    _, K, _, model, opt = _start(cell.kind, cell.scheme, cfg, None)
    x_np, y_np = data.load_split("train")
    x, y = torch.from_numpy(data.to_float(x_np)), torch.from_numpy(y_np.astype(np.int64))
    gen = torch.Generator().manual_seed(seed * 1_000_003)  # epoch 0's permutation, as train() draws it
    perm = torch.randperm(x.shape[0], generator=gen)
    probe = x[: 16 * K].reshape(16, K, 28, 28)
    batch = cfg.batch_for(K)
    losses, t0 = [], time.perf_counter()
    for s in range(steps):
        idx = perm[s * batch * K : (s + 1) * batch * K]
        set_lr(opt, cfg, s, steps)  # the warm-up's lr for this step; the paper's constant lr is left untouched
        losses.append(train_step(model, opt, cell.kind, x[idx], y[idx], K, cfg, gen).item())
        if (s + 1) % every == 0:
            with torch.no_grad():
                spread = model.coefficients(probe).std(0).mean().item()
            yield {"step": s + 1, "loss": float(np.mean(losses[-every:])), "loss_max": max(losses[-every:]),
                   "coef_spread": spread, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="k8-r4-hb-g3p1")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 1e-4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0, help="linear lr warm-up over this many steps (beyond the paper; 0 = off)")
    ap.add_argument("--clip", type=float, default=None, help="clip the gradient's global norm to this (beyond the paper; default off)")
    args = ap.parse_args()
    remedies = ([f"lr warm-up over {args.warmup} steps"] if args.warmup else []) + \
        ([f"gradient norm clipped to {args.clip:g}"] if args.clip is not None else [])
    remedy = "remedy beyond the paper: " + " + ".join(remedies) if remedies else "no remedy (the paper's recipe)"
    print(f"{args.cell}, seed {args.seed}, {remedy}: mean loss / largest loss / encoder output spread across inputs, every 10 steps")
    for lr in args.lr:
        for r in first_steps(args.cell, lr, args.seed, args.steps, args.threads, warmup=args.warmup, clip=args.clip):
            print(f"lr {lr:g} step {r['step']:4d}: loss {r['loss']:.3f} max {r['loss_max']:6.2f} "
                  f"coef spread {r['coef_spread']:.2e} ({r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
