"""The per-epoch test pass of training in fp32 and under bf16 autocast, side by side on committed checkpoints.

    python benchmarks/test_pass_precision.py [--threads 1] [--cells table3/k2-r3-hs-g1p2 ...]

For each checkpoint: the direct test accuracy (train.accuracy_direct over the 10,000 test images) in fp32
and in bf16, and the seconds each took, the two timed alternately (fp32, bf16, fp32, bf16) so background
load hits both alike. Writes results/test-pass-precision.json. The trained weights do not depend on it:
this pass only reports an accuracy per epoch; each row of results/ is evaluated afterwards in fp32
through the decode path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from edgecc import data
from edgecc.bench.harness import BenchConfig, bench_machine
from edgecc.modelfile import atomic_write, load_model
from edgecc.train import GROUPED, accuracy_direct

DEFAULT = ("table3/k2-r3-hb-g2p1", "table3/k2-r3-hs-g1p2", "table2/cnn+cnn-hb", "table2/cnn+cnn-hs", "table2/baseline-cnn",
           "table2/mlp+mlp-hb")


def timed(model, kind: str, xt, yt, K: int, bf16: bool) -> tuple[float, float]:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        acc = accuracy_direct(model, kind, xt, yt, K)
    return acc, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=DEFAULT, help="TABLE/CELL under results/checkpoints")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="results/test-pass-precision.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xt, yt = data.load_split("test")
    xt, yt = torch.from_numpy(data.to_float(xt)), torch.from_numpy(yt.astype(np.int64))
    rows = []
    for cell in args.cells:
        model, info = load_model(Path("results/checkpoints") / f"{cell}.safetensors")
        kind = info["kind"]
        K = info["scheme"]["K"] if kind in GROUPED else 1
        got = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for prec in ("fp32", "bf16"):
                got[prec].append(timed(model, kind, xt, yt, K, prec == "bf16"))
        acc32, acc16 = got["fp32"][0][0], got["bf16"][0][0]
        s32, s16 = (min(t for _, t in got[p]) for p in ("fp32", "bf16"))
        rows.append({"cell": cell, "accuracy_fp32": acc32, "accuracy_bf16": acc16, "delta": round(acc16 - acc32, 2),
                     "seconds_fp32": round(s32, 2), "seconds_bf16": round(s16, 2), "speedup": round(s32 / s16, 2)})
        r = rows[-1]
        print(f"{cell:24s} fp32 {acc32:6.2f} in {s32:5.1f} s   bf16 {acc16:6.2f} in {s16:5.1f} s   "
              f"Δ {r['delta']:+.2f}   {r['speedup']:.2f}x", flush=True)
    host = bench_machine(BenchConfig())
    doc = {"machine": host["cpu_model"], "cores": host["cores"], "torch": torch.__version__, "threads": args.threads,
           "rounds": args.rounds, "note": "seconds: the faster of the rounds; accuracy is deterministic per precision",
           "rows": rows}
    atomic_write(args.out, (json.dumps(doc, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
