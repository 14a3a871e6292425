"""Test-set accuracy of a trained model, directly and through the real decode path.

Direct: argmax of D(β_k) = H(E(β_k)). Decoded: the N workers' outputs H(E(α_n)), interpolated from
every R-subset of workers (or a sample of subsets that always includes the worst-conditioned one)
with the cached float64 Lagrange matrices of edgecc.coding, exactly as the master decodes.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import torch

from .coding.lagrange import Decoder
from .coding.schemes import Scheme, check_workers, default_alphas


def group(images: np.ndarray, labels: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) -> (n // K, K, 28, 28); a ragged tail that cannot fill a group is dropped."""
    n = images.shape[0] - images.shape[0] % K
    return images[:n].reshape(-1, K, 28, 28), labels[:n].reshape(-1, K)


@torch.inference_mode()
def aicc_outputs(model, info: dict[str, Any], x: np.ndarray, alphas: list[float], batch: int = 256,
                 encode_precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(direct logits (G, K, 10), worker outputs (G, N, 10)) in float32 for grouped images x.

    Worker outputs are computed exactly as workers do: E(α_n) (and V_p) by the torch encoder, then
    the collapsed affine map of edgecc.runtime.compute; `encode_precision` as the master's CodedPlan."""
    from .export import worker_arrays
    from .runtime.compute import EncodedCompute

    scheme = Scheme.from_dict(info["scheme"])
    worker = EncodedCompute(scheme, worker_arrays(model, info, "encoded"))
    direct, workers = [], []
    for i in range(0, x.shape[0], batch):
        xb = torch.from_numpy(x[i : i + batch])
        direct.append(model(xb).numpy())
        xt = model.encode(xb, alphas, encode_precision).numpy()  # (b, N, 28, 28)
        v = model.lambdas(xb, encode_precision).numpy() if scheme.computation == "hs" else None
        workers.append(np.stack([worker(xt[:, n], v) for n in range(len(alphas))], axis=1))
    return np.concatenate(direct), np.concatenate(workers)


def subsets(N: int, R: int, max_subsets: int | None, decoder: Decoder, seed: int = 0) -> list[tuple[int, ...]]:
    """All R-subsets of range(N), or a random sample plus the worst-conditioned subset."""
    all_subsets = list(itertools.combinations(range(N), R))
    if max_subsets is None or len(all_subsets) <= max_subsets:
        return all_subsets
    worst = max(all_subsets, key=lambda s: np.abs(decoder.weights(s)).sum(axis=1).max())
    sample = random.Random(seed).sample(all_subsets, max_subsets - 1)
    return sorted(set(sample) | {worst})


def evaluate(model, info: dict[str, Any], images: np.ndarray, labels: np.ndarray, N: int,
             max_subsets: int | None = 200, encode_precision: str = "fp32") -> dict[str, Any]:
    """Accuracy (percent) of an AICC model directly and decoded from R-subsets of N workers.

    `encode_precision`: "fp32" (the reference, what results/ report), "bf16" or "auto" (the master's default)."""
    from .data import to_float

    scheme = Scheme.from_dict(info["scheme"])
    check_workers(scheme, N)
    K, R = scheme.K, scheme.R
    x, y = group(to_float(images), labels.astype(np.int64), K)
    alphas = default_alphas(N)
    from .nets import encode_precision as resolve_precision

    precision = resolve_precision(encode_precision)
    direct, worker_out = aicc_outputs(model, info, x, alphas, encode_precision=precision)
    decoder = Decoder(alphas, scheme.betas(), R)
    accs, worst_err, worst_amp = [], 0.0, 0.0
    for s in subsets(N, R, max_subsets, decoder):
        W = decoder.weights(s)
        logits = np.einsum("kr,grv->gkv", W, worker_out[:, list(s)].astype(np.float64))
        accs.append(100.0 * float((logits.argmax(-1) == y).mean()))
        worst_err = max(worst_err, float(np.abs(logits - direct).max()))
        worst_amp = max(worst_amp, float(np.abs(W).sum(axis=1).max()))
    return {
        "accuracy_direct": 100.0 * float((direct.argmax(-1) == y).mean()),
        "accuracy_decoded_min": min(accs),
        "accuracy_decoded_max": max(accs),
        "accuracy_decoded_mean": float(np.mean(accs)),
        "subsets_evaluated": len(accs),
        "max_abs_logit_error": worst_err,
        "worst_decode_amplification": worst_amp,
        "R": R, "N": N, "K": K, "G": scheme.G, "P": scheme.P,
        "scheme": scheme.label(),
        "encode_precision": precision,
        "images": int(y.size),
        "params": sum(p.numel() for p in model.parameters()),
    }


@torch.inference_mode()
def evaluate_centralized(model, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from .data import to_float

    logits = model(torch.from_numpy(to_float(images))).numpy()
    return {"accuracy_direct": 100.0 * float((logits.argmax(-1) == labels).mean()), "images": int(labels.size),
            "params": sum(p.numel() for p in model.parameters())}


def evaluate_learned_code(model, info: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The learned code [10]: degraded-mode accuracy (each data slot erased in turn, scored on that slot,
    as Table 2 reports it) and the accuracy when no slot is missing (the base model's own outputs)."""
    from .data import to_float
    from .train import accuracy_direct

    k = info["code"]["k"]
    x, y = torch.from_numpy(to_float(images)), torch.from_numpy(labels.astype(np.int64))
    with torch.inference_mode():
        complete = 100.0 * (model.base(x).argmax(-1) == y).sum().item() / y.numel()
    return {"accuracy_degraded": accuracy_direct(model, "learned-code", x, y, k), "accuracy_no_straggler": complete,
            "k": k, "images": int(y.numel() - y.numel() % k),
            "params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("base."))}
