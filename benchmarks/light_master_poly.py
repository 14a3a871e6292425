"""A light-master exact design (ours, not the paper's): Lagrange-coded inputs, workers that run a whole
polynomial classifier, exact decoding — placed on the accuracy-versus-master-cost map (issue #35).

The classifier f is an MLP whose one hidden activation is a quadratic, σ(h) = h + c·h² (c learned per unit):
f(x) = W2 σ(W1 x + b1) + b2 has degree 2 in x. The master encodes a group of K images as Lagrange-coded
inputs X̃_n = Σ_k ℓ_k(α_n) x_k (ℓ_k the Lagrange basis on the points β_k), a few multiply-adds per pixel;
worker n computes f(X̃_n). f(E(α)) is then a polynomial of degree 2(K−1) in α, so any R = 2(K−1) + 1 of
the N results determine it, and evaluating it at β_k gives f(x_k) exactly (up to float rounding): the
workers do the model's work, the master only mixes pixels and logits. With one straggler, N = R + 1.

Trains f on the Fashion-MNIST training set (fp32, CPU, seeded), then decodes the full test set at K = 2, 4, 8
from every set of N − 1 workers (each worker the straggler in turn): the worst and mean accuracy over those
choices, f's own (direct) accuracy, the largest |decoded − direct| logit, the largest Σ|decode weights|, and
the master's and workers' FLOPs and the bytes sent per image. Writes results/light-master.json and the trained
f as results/checkpoints/poly-mlp.safetensors, a model file of kind "poly-mlp" (edgecc.modelfile.save_model:
safetensors, no pickle; edgecc.nets.poly_mlp.PolyMLP). The runtime scheme `light-master`
(edgecc/schemes/light_master.py) runs the shipped copy, edgecc/assets/poly-mlp.safetensors (model "poly-mlp"):
copy a retrained checkpoint there to ship it. The points and the Lagrange basis are edgecc.coding.lagrange's.

    python benchmarks/light_master_poly.py [--hidden 512] [--epochs 20] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from edgecc.coding.lagrange import chebyshev, lagrange_basis  # shared with the scheme (schemes/light_master.py)


def build(hidden: int):
    """784 → hidden (σ(h) = h + c·h², c per unit) → 10: a polynomial of degree 2 in its input."""
    from edgecc.nets.poly_mlp import PolyMLP

    return PolyMLP(hidden=(hidden,))


def train(hidden: int, epochs: int, seed: int, lr: float):
    import torch

    from edgecc import data

    torch.manual_seed(seed)
    x_np, y_np = data.load_split("train")
    x, y = torch.from_numpy(data.to_float(x_np)).reshape(-1, 784), torch.from_numpy(y_np.astype(np.int64))
    model = build(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (x.shape[0] // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for s in range(x.shape[0] // 128):
            idx = perm[s * 128:(s + 1) * 128]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # the quadratic can spike early
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def evaluate(model, K: int, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Lagrange-coded inference of the test set in groups of K, every worker the straggler in turn."""
    import torch

    R = 2 * (K - 1) + 1
    N = R + 1
    alphas, betas = chebyshev(N), chebyshev(K, 0.9)  # β inside the α's span: decoding interpolates
    enc = lagrange_basis(betas, alphas).astype(np.float32)  # (N, K): X̃_n = Σ_k ℓ_k(α_n) x_k
    groups = x_test.shape[0] // K
    X = x_test[: groups * K].reshape(groups, K, 784)
    labels = y_test[: groups * K].reshape(groups, K)
    with torch.inference_mode():
        direct = model(torch.from_numpy(X.reshape(-1, 784))).numpy().reshape(groups, K, 10)
        coded = np.einsum("nk,bkp->bnp", enc, X)  # the master's encoding, float32
        results = model(torch.from_numpy(np.ascontiguousarray(coded.reshape(-1, 784)))).numpy().reshape(groups, N, 10)
    per_straggler, worst_err, worst_w = [], 0.0, 0.0
    for straggler in range(N):
        used = [n for n in range(N) if n != straggler]
        W = lagrange_basis(alphas[used], betas)  # (K, R): f(x_k) = Σ_r W[k, r] f(X̃_r)
        worst_w = max(worst_w, float(np.abs(W).sum(axis=1).max()))
        decoded = np.einsum("kr,brv->bkv", W, results[:, used].astype(np.float64))
        worst_err = max(worst_err, float(np.abs(decoded - direct).max()))
        per_straggler.append(float((decoded.argmax(-1) == labels).mean()))
    H = model.mlp.fc1.out_features
    worker_flops = 2 * (784 * H + H * 10) + 3 * H  # one coded image: both layers and the quadratic
    return {"K": K, "R": R, "N": N, "S": 1, "alphas": alphas.tolist(), "betas": betas.tolist(),
            "direct_accuracy": float((direct.argmax(-1) == labels).mean()),
            "worst_straggler_accuracy": min(per_straggler), "mean_straggler_accuracy": float(np.mean(per_straggler)),
            "no_straggler_accuracy": None, "largest_logit_error": worst_err, "largest_sum_abs_weights": worst_w,
            # per image: encoding N·K·784 multiply-adds per group and decoding K·R·10 per group, over K images
            "master_flops_per_image": 2 * (N * K * 784 + K * R * 10) / K,
            "worker_flops_per_coded_image": worker_flops, "worker_flops_per_image": worker_flops * N / K,
            "up_bytes_per_image": N * 784 * 4 / K, "images": int(groups * K)}


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "light-master.json"))
    ap.add_argument("--checkpoint", default=str(ROOT / "results" / "checkpoints" / "poly-mlp.safetensors"))
    args = ap.parse_args()
    import torch

    from edgecc import data
    from edgecc.bench import costs
    from edgecc.modelfile import save_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = train(args.hidden, args.epochs, args.seed, args.lr)
    train_s = time.perf_counter() - t0
    x_np, y_np = data.load_split("test")
    x_test = data.to_float(x_np).reshape(-1, 784)
    with torch.inference_mode():
        direct = float((model(torch.from_numpy(x_test)).argmax(-1).numpy() == y_np).mean())
    Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    save_model(args.checkpoint, model, model.info(training={"epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                                                            "dataset": "fashion-mnist train"},
                                                  metrics={"test_accuracy": direct}))
    cnn = costs.cnn_baseline_flops()
    rows = []
    for K in (2, 4, 8):
        r = evaluate(model, K, x_test, y_test=y_np)
        r["master_share_of_centralized_cnn"] = r["master_flops_per_image"] / cnn
        rows.append(r)
        print(f"K={K} N={r['N']} R={r['R']}: worst straggler {100 * r['worst_straggler_accuracy']:.2f}% "
              f"(direct {100 * r['direct_accuracy']:.2f}%), largest logit error {r['largest_logit_error']:.2e}, "
              f"Σ|w| {r['largest_sum_abs_weights']:.1f}, master {r['master_flops_per_image']:.0f} FLOPs/img "
              f"({100 * r['master_share_of_centralized_cnn']:.4f}% of the CNN)", flush=True)
    out = {"design": "light master (ours): Lagrange-coded inputs, quadratic-activation MLP on the workers, exact decoding",
           "command": "python benchmarks/light_master_poly.py " + " ".join(sys.argv[1:]),
           "model": {"hidden": args.hidden, "activation": "h + c*h^2 (degree 2)", "epochs": args.epochs, "lr": args.lr,
                     "seed": args.seed, "train_seconds": round(train_s, 1), "checkpoint": _shown(args.checkpoint)},
           "centralized_cnn_flops_per_image": cnn, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": args.threads, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
