"""Seed variance of one Table 2/3 cell: train it with other seeds by the same protocol and summarise.

    python benchmarks/seeds.py learned-code-conv --seeds 1 2 [--table 2] [--threads 1]
    python benchmarks/seeds.py cnn+cnn-hs --seeds 1 2 --recipe anneal [--compile]
    python benchmarks/seeds.py k8-r4-hb-g3p1-he --table k8 --seeds 1 2 --compile

Each seed trains in its own results folder (results/seeds/CELL/seedN, with its checkpoint) and run
folder (runs/seeds/CELL/seedN, or --runs-dir), resumably; the committed row of results/table{N}[-RECIPE].json is seed 0.
The anneal recipe continues the seed's own paper-protocol model, so that seed trains by the paper
protocol first (its paper row is kept in the seed's folder too). A widened cell (Cell.widened_from) continues
its source cell's annealed model of the same seed: run this for the source cell first.
Writes results/seeds/CELL[-RECIPE].json: every seed's accuracy, the mean and the sample standard deviation.
`edgecc reproduce render` shows every cell with two or more seeds in docs/results.md (edgecc.reproduce.render_seeds),
from the rows themselves, so a seed counts there as soon as it finishes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from edgecc.modelfile import atomic_write
from edgecc.reproduce import TABLES, read_rows, reproduce, seed_results_dir, table_key
from edgecc.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--table", type=table_key, default=2, metavar="{2,3,k8}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training steps (TrainConfig.compile)")
    ap.add_argument("--recipe", default="paper", choices=("paper", "anneal"))
    ap.add_argument("--results", default="results")
    ap.add_argument("--runs-dir", default="runs/seeds",
                    help="where each seed's resumable checkpoints live (RUNS_DIR/CELL/seedN)")
    args = ap.parse_args()
    cell = next((c for c in TABLES[args.table] if c.name == args.cell), None)
    if cell is None:
        raise SystemExit(f"unknown cell {args.cell!r}")
    if not cell.trains_by(args.recipe):
        raise SystemExit(f"{cell.name} starts from {cell.widened_from}'s annealed model: --recipe anneal")
    if 0 in args.seeds:
        raise SystemExit("seed 0 is the row of the cell's own table: train it with `edgecc reproduce run`")
    results = Path(args.results)
    runs = {}
    main_rows = read_rows(results, args.table, args.recipe) or {}
    if args.cell in main_rows:
        runs[main_rows[args.cell]["seed"]] = main_rows[args.cell]["accuracy"]
    for seed in args.seeds:
        out = seed_results_dir(results, args.cell, seed)
        base = out / "checkpoints" / "table2" / "baseline-mlp.safetensors"  # the learned code's frozen base model
        base.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results / "checkpoints" / "table2" / "baseline-mlp.safetensors", base)
        runs_dir = Path(args.runs_dir) / args.cell / f"seed{seed}"
        for recipe in [r for r in ("paper", "anneal")[: 2 if args.recipe == "anneal" else 1] if cell.trains_by(r)]:
            cfg = TrainConfig.for_recipe(recipe, seed=seed, threads=args.threads, compile=args.compile)
            (row,) = reproduce(args.table, [args.cell], cfg, out, runs_dir)
        runs[seed] = row["accuracy"]
        base.unlink()  # the copy is not part of this seed's results
    accs = [runs[s] for s in sorted(runs)]
    summary = {"cell": args.cell, "table": args.table, "paper": cell.paper,
               "accuracy_by_seed": {str(s): runs[s] for s in sorted(runs)}, "mean": statistics.mean(accs),
               "stdev": statistics.stdev(accs) if len(accs) > 1 else None, "seeds": len(accs)}
    name = args.cell if args.recipe == "paper" else f"{args.cell}-{args.recipe}"
    summary["recipe"] = args.recipe
    atomic_write(results / "seeds" / f"{name}.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
