"""Training steps eager against torch.compile'd (TrainConfig.compile, `--compile`), side by side in one run.

For each cell, two models from the same seed take the same optimizer steps on the same real training
batches (epoch 0's first groups, as `edgecc.train.train` draws them), alternating step by step so that
a noisy machine slows both alike. Reports the compile's one-off cost (the first step), the median step
time after two warm-up steps, the speed-up, and the largest difference between the two runs' losses.

    python benchmarks/train_compile.py [--steps 9] [--threads 1] [--cells cnn+cnn-hs k4-r5-hs-g1p4 k8-r4-hb-g3p1-he]

Writes results/train-compile.json (one run; the machine's CPU, torch and load average recorded with it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_CELLS = ("cnn+cnn-hs", "k4-r5-hs-g1p4", "k8-r4-hb-g3p1-he")  # the K=2 default's sibling, the K=4 R=5 best, the K=8 cell


def compare(cell_name: str, steps: int, threads: int) -> dict:
    import numpy as np
    import torch

    from edgecc import data
    from edgecc.reproduce import TABLES, _cell_config
    from edgecc.train import TrainConfig, _start, stepping, train_step

    cell = next(c for t in TABLES.values() for c in t if c.name == cell_name)
    runs = {}
    for compiled in (False, True):
        cfg = _cell_config(cell, TrainConfig(threads=threads, compile=compiled))
        _, K, _, model, opt = _start(cell.kind, cell.scheme, cfg, cell.code)
        runs[compiled] = (cfg, stepping(model, cfg), opt)
    x_np, y_np = data.load_split("train")
    x, y = torch.from_numpy(data.to_float(x_np)), torch.from_numpy(y_np.astype(np.int64))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 1_000_003))
    batch = cfg.batch_for(K)
    seconds = {False: [], True: []}
    losses = {False: [], True: []}
    for s in range(steps):
        idx = perm[s * batch * K : (s + 1) * batch * K]
        for compiled, (cfg, stepper, opt) in runs.items():
            gen = torch.Generator().manual_seed(s)  # the same draws (augmentation, erasures) for both
            t0 = time.perf_counter()
            losses[compiled].append(train_step(stepper, opt, cell.kind, x[idx], y[idx], K, cfg, gen).item())
            seconds[compiled].append(time.perf_counter() - t0)
    eager, comp = (statistics.median(seconds[c][2:]) for c in (False, True))
    return {"cell": cell_name, "K": K, "batch_groups": batch, "precision": cfg.precision, "steps": steps,
            "eager_step_s": round(eager, 4), "compiled_step_s": round(comp, 4), "speedup": round(eager / comp, 3),
            "first_step_s": {"eager": round(seconds[False][0], 2), "compiled": round(seconds[True][0], 2)},
            "max_loss_difference": max(abs(a - b) for a, b in zip(losses[False], losses[True])),
            "losses_eager": [round(v, 5) for v in losses[False]], "losses_compiled": [round(v, 5) for v in losses[True]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=9, help="steps per model (the first two are not timed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS))
    ap.add_argument("--out", default="results/train-compile.json")
    args = ap.parse_args()
    if args.steps < 3:
        raise SystemExit("--steps must be at least 3 (two warm-up steps, then the timed ones)")
    import torch

    torch.set_num_threads(args.threads)
    from edgecc.bench.config import BenchConfig
    from edgecc.bench.machine import bench_machine

    rows = []
    for name in args.cells:
        rows.append(compare(name, args.steps, args.threads))
        r = rows[-1]
        print(f"{name:20s} eager {r['eager_step_s']:.3f} s/step  compiled {r['compiled_step_s']:.3f} s/step  "
              f"x{r['speedup']:.2f}  compile {r['first_step_s']['compiled']:.0f} s  max |loss diff| {r['max_loss_difference']:.1e}",
              flush=True)
    out = {"command": "python " + " ".join(["benchmarks/train_compile.py", *sys.argv[1:]]), "runs": 1,
           "machine": bench_machine(BenchConfig()), "threads": args.threads, "cells": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
