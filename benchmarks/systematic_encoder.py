"""The systematic encoder — a design of ours, not the paper's — on the full Fashion-MNIST test set (issue #35).

No training. The master runs the centralized CNN (results/checkpoints/table2/baseline-cnn.safetensors, the
schemes table's 'cnn' base, 91.83%) up to its 100-feature layer φ (the ReLU after Base-MLP's fc2), and for
each group of K images encodes E(α) = Σ_k ℓ_k(α) φ(x_k), ℓ_k the Lagrange basis on the K Chebyshev nodes
β_k = cos((2k+1)π/(2K)), at the N workers' points α_n = cos(nπ/(N−1)) (edgecc.scheme_map.systematic_points).
Worker n computes H_B(E(α_n)) with the CNN's last affine layer fc3 (100 → 10) in float32. H_B is affine and
Σ_k ℓ_k = 1, so D(α) = H_B(E(α)) = Σ_k ℓ_k(α) fc3(φ(x_k)) has degree K−1: any K answers give the K
outputs D(β_k) by Lagrange interpolation (R = K).

Numerics as a master would run them: φ and the encoding in float32 (the encode matrix cast to float32),
the workers' layer in float32, the decode weights in float64 on the float32 answers (as edgecc's Decoder).

For K=8 N=9 and K=2 N=3 (S=1), over the 10,000 test images grouped in order and every straggler set of S:
the worst and mean accuracy, the largest Σ|decode weight|, the largest |decoded − centralized| logit, and
how many argmaxes differ from the centralized CNN's; the costs per image (edgecc.scheme_map.systematic_costs).
Writes results/systematic-encoder.json, which `edgecc compare-map` reads as the design's point.

    nice python benchmarks/systematic_encoder.py [--out results/systematic-encoder.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CNN = "results/checkpoints/table2/baseline-cnn.safetensors"  # edgecc.schemes_table.CNN_BASE
CELLS = ((8, 1), (2, 1))  # (K, S)


def features(model, x: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """φ(x) (n, 100) float32, the logits fc3(φ(x)) (n, 10) and the CNN's own forward's logits (n, 10), float32."""
    import torch

    from edgecc.protocol.images import dims

    feats = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], chunk):
            xb = torch.from_numpy(x[i : i + chunk])
            B = xb.shape[0]
            h = torch.relu(model.stack(xb.reshape(B, *model.image))).reshape(B, *dims(model.image))
            mlp = model.mlp
            h = h.reshape(B, mlp.pix)
            feats.append(torch.relu(mlp.fc2(torch.relu(mlp.fc1(h)))).numpy())
        phi = np.concatenate(feats).astype(np.float32)
        logits = model.mlp.fc3(torch.from_numpy(phi)).numpy()
        # the split is the model: the same logits as the CNN's own forward, to float32 rounding
        full = np.concatenate([model(torch.from_numpy(x[i : i + chunk])).numpy() for i in range(0, x.shape[0], chunk)])
    return phi, logits, full


def cell(K: int, S: int, phi: np.ndarray, logits: np.ndarray, y: np.ndarray, W3: np.ndarray, b3: np.ndarray) -> dict:
    from edgecc.scheme_map import (
        systematic_costs,
        systematic_decode_weights,
        systematic_encode,
        systematic_points,
    )

    N = K + S
    G = phi.shape[0] // K
    fg, yg, ref = phi[: G * K].reshape(G, K, -1), y[: G * K].reshape(G, K), logits[: G * K].reshape(G, K, -1)
    coded = systematic_encode(fg, K, N)  # (G, N, 100) float32
    out = (coded @ W3.T + b3).astype(np.float32)  # each worker's fc3, float32
    rows = []
    for stragglers in itertools.combinations(range(N), S):
        answered = [n for n in range(N) if n not in stragglers]
        W = systematic_decode_weights(K, N, answered)
        dec = np.einsum("kr,grv->gkv", W, out[:, answered].astype(np.float64))
        pred = dec.argmax(-1)
        rows.append({"stragglers": list(stragglers), "accuracy": float((pred == yg).mean()),
                     "abs_weight_sum": float(np.abs(W).sum(axis=1).max()),
                     "max_abs_logit_error": float(np.abs(dec - ref).max()),
                     "argmax_differs": int((pred != ref.argmax(-1)).sum())})
    worst = min(rows, key=lambda r: r["accuracy"])
    betas, alphas = systematic_points(K, N)
    return {"K": K, "S": S, "N": N, "R": K, "betas": betas.tolist(), "alphas": alphas.tolist(),
            "overall_worst": worst["accuracy"], "worst_stragglers": worst["stragglers"],
            "overall_mean": float(np.mean([r["accuracy"] for r in rows])),
            "centralized_same_images": float((ref.argmax(-1) == yg).mean()),
            "max_abs_weight_sum": max(r["abs_weight_sum"] for r in rows),
            "max_abs_logit_error": max(r["max_abs_logit_error"] for r in rows),
            "argmax_differs_max": max(r["argmax_differs"] for r in rows),
            "straggler_sets": len(rows), "images": int(yg.size), "per_straggler_set": rows,
            **systematic_costs(K, N)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=CNN)
    ap.add_argument("--out", default="results/systematic-encoder.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from edgecc.bench import costs
    from edgecc.data import load_split, to_float
    from edgecc.modelfile import atomic_write, load_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, info = load_model(args.model)
    if info["kind"] != "centralized-cnn":
        raise SystemExit(f"{args.model} holds a {info['kind']!r} model, not the centralized CNN")
    model.eval()
    x_u8, y = load_split("test")
    x = to_float(x_u8)
    phi, logits, full = features(model, x)
    W3 = model.mlp.fc3.weight.detach().numpy().astype(np.float32)
    b3 = model.mlp.fc3.bias.detach().numpy().astype(np.float32)
    result = {
        "design": "systematic encoder (ours, not the paper's): E(α) = Σ_k ℓ_k(α) φ(x_k), φ the centralized CNN "
                  "up to its 100-feature layer, workers run its last affine layer, Lagrange decode from any K",
        "model": args.model, "images": int(y.size),
        "centralized_accuracy": float((full.argmax(-1) == y).mean()),
        "split_vs_forward_max_abs": float(np.abs(full - logits).max()),
        "cnn_flops_per_image": costs.cnn_baseline_flops(),
        "numerics": "φ, encode matrix and workers' fc3 float32; decode weights float64",
        "command": "nice python benchmarks/systematic_encoder.py" + (f" --threads {args.threads}" if args.threads != 1 else ""),
        "cells": [cell(K, S, phi, logits, y, W3, b3) for K, S in CELLS],
        "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__, "machine": platform.machine(),
    }
    atomic_write(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"centralized CNN {100 * result['centralized_accuracy']:.2f}% ({result['images']} images)")
    for c in result["cells"]:
        print(f"K={c['K']} N={c['N']}: worst {100 * c['overall_worst']:.2f}% mean {100 * c['overall_mean']:.2f}% "
              f"max Σ|w| {c['max_abs_weight_sum']:.2f}  max |Δlogit| {c['max_abs_logit_error']:.2e}  "
              f"argmax differs ≤ {c['argmax_differs_max']}  master {c['master_flops_per_image']:,.0f} FLOPs/img  "
              f"worker {c['worker_flops']:,} FLOPs/call  up {c['up_bytes_per_image']:.1f} B/img")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
