"""Test-set accuracy of a trained model, directly and through the real decode path.

Direct: argmax of D(β_k) = H(E(β_k)). Decoded: the N workers' outputs H(E(α_n)), made as the runtime
makes them (inputs and results rounded to the wire dtype, fp32 worker arithmetic), then
  - interpolated from every R-subset of workers (or a sample that always includes the worst-conditioned
    one) with float64 Lagrange matrices: what decoding the first R results to arrive returns;
  - decoded as the master decodes (schemes/plan.CodedPlan, coding/conditioning): results arrive in an
    order (the worst-conditioned R first, then seeded random orders), the request completes once the
    results in hand decode within the tolerance, and the report counts the results waited for beyond R.
A configuration the master would refuse at start is reported as refused, with the first-R numbers
showing what it would have returned.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import numpy as np
import torch

from .coding.conditioning import DEFAULT_TOLERANCE, worst_subset
from .coding.lagrange import Decoder
from .coding.schemes import Scheme, check_workers, default_alphas
from .errors import ConfigError

_NP_WIRE = {"f4": np.float32, "f2": np.float16}


def group(images: np.ndarray, labels: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, *dims) -> (n // K, K, *dims) for images of any shape; a ragged tail that cannot fill a group is dropped."""
    n = images.shape[0] - images.shape[0] % K
    return images[:n].reshape(-1, K, *images.shape[1:]), labels[:n].reshape(-1, K)


@torch.inference_mode()
def aicc_outputs(model, info: dict[str, Any], x: np.ndarray, alphas: list[float], batch: int = 256,
                 encode_precision: str = "fp32", wire_dtype: str = "f4") -> tuple[np.ndarray, np.ndarray]:
    """(direct logits (G, K, 10), worker outputs (G, N, 10)) in float32 for grouped images x.

    Worker outputs are computed exactly as workers do: E(α_n) (and V_p) by the torch encoder, rounded to
    `wire_dtype` as frames.pack_array sends them, then the collapsed affine map of edgecc.worker.compute,
    and the result rounded to `wire_dtype` again; `encode_precision` as the master's CodedPlan."""
    from .export import worker_arrays
    from .worker.compute import EncodedCompute

    scheme = Scheme.from_dict(info["scheme"])
    from .protocol.images import model_classes, model_image

    worker = EncodedCompute(scheme, worker_arrays(model, info, "encoded"), model_image(info), model_classes(info))
    wire = _NP_WIRE[wire_dtype]

    def sent(a: np.ndarray) -> np.ndarray:  # what arrives: the wire dtype, widened to float32 by the worker
        return a.astype(wire).astype(np.float32)

    hs = scheme.computation == "hs"
    direct, workers = [], []
    for i in range(0, x.shape[0], batch):
        xb = torch.from_numpy(x[i : i + batch])
        coef, v = model.coefficients(xb), model.lambdas(xb) if hs else None  # the fp32 reference's
        direct.append(model.at_points(coef, v).numpy())  # = model(xb), without running the encoder twice
        if encode_precision != "fp32":  # the master's coefficients, in its precision
            coef, v = model.coefficients(xb, encode_precision), model.lambdas(xb, encode_precision) if hs else None
        xt = sent(model.evaluate_encoder(coef, alphas).numpy())  # (b, N, *dims(image))
        v = sent(v.numpy()) if hs else None
        workers.append(np.stack([sent(worker(xt[:, n], v)) for n in range(len(alphas))], axis=1))
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
             max_subsets: int | None = 200, encode_precision: str = "fp32", wire_dtype: str = "f4",
             points: str = "chosen", tolerance: float = DEFAULT_TOLERANCE, orders: int = 20) -> dict[str, Any]:
    """Accuracy (percent) of an AICC model directly, decoded from R-subsets of N workers, and decoded as the
    master decodes (conditioning-aware) for the worst-conditioned R answering first and `orders` random orders.

    `encode_precision`: "fp32" (the reference, what results/ report), "bf16" or "auto" (the master's default);
    `points`: "chosen" (the master's default, coding/conditioning.chosen_alphas) or "uniform" (n/(N+1))."""
    from .data import to_float
    from .nets import encode_precision as resolve_precision
    from .schemes.registry import build_plan

    scheme = Scheme.from_dict(info["scheme"])
    check_workers(scheme, N)
    K, R = scheme.K, scheme.R
    precision = resolve_precision(encode_precision)
    refused = None
    options = dict(model=(model, info), wire_dtype=wire_dtype, encode_precision=precision, tolerance=tolerance,
                   points=points)
    try:
        plan = build_plan("aicc", N, K, **options)
    except ConfigError as e:  # the master would refuse to start: say so, and show what first-R decoding returns
        refused = str(e)
        plan = build_plan("aicc", N, K, **options, policy="first-r")
    x, y = group(to_float(images), labels.astype(np.int64), K)
    alphas = plan.alphas
    direct, worker_out = aicc_outputs(model, info, x, alphas, encode_precision=precision, wire_dtype=wire_dtype)
    decoder = Decoder(alphas, scheme.betas(), R)
    accs, worst_err, worst_amp = [], 0.0, 0.0
    for s in subsets(N, R, max_subsets, decoder):
        W = decoder.weights(s)
        logits = np.einsum("kr,grv->gkv", W, worker_out[:, list(s)].astype(np.float64))
        accs.append(100.0 * float((logits.argmax(-1) == y).mean()))
        worst_err = max(worst_err, float(np.abs(logits - direct).max()))
        worst_amp = max(worst_amp, float(np.abs(W).sum(axis=1).max()))
    betas = scheme.betas()
    enumerable = math.comb(N, R) <= 200_000
    res = {
        "accuracy_direct": 100.0 * float((direct.argmax(-1) == y).mean()),
        "accuracy_decoded_min": min(accs),
        "accuracy_decoded_max": max(accs),
        "accuracy_decoded_mean": float(np.mean(accs)),
        "subsets_evaluated": len(accs),
        "max_abs_logit_error": worst_err,
        "worst_decode_amplification": worst_amp,
        "amplification_uniform_points": worst_subset(default_alphas(N), betas, R)[0] if enumerable else None,
        "amplification_chosen_points": worst_subset(list(plan.alphas), betas, R)[0] if enumerable else None,
        "points": f"the model's own ({scheme.worker_points})" if scheme.worker_points else points,
        "alphas": [float(a) for a in alphas],
        "wire_dtype": wire_dtype, "tolerance": tolerance,
        "refused": refused,
        "best_case_bound": plan.best_case.bound,
        "max_result_error_bound": float(plan.errors().max()),
    }
    if refused is None:
        res.update(_aware(plan, worker_out, direct, y, orders))
    return {**res,
            "R": R, "N": N, "K": K, "G": scheme.G, "P": scheme.P,
            "scheme": scheme.label(),
            "encode_precision": precision,
            "images": int(y.size),
            "params": sum(p.numel() for p in model.parameters())}


def _aware(plan, worker_out: np.ndarray, direct: np.ndarray, y: np.ndarray, orders: int, seed: int = 0) -> dict[str, Any]:
    """Decode as the master does for arrival orders: the worst-conditioned R first (the rest by index), then
    seeded random orders. Each order completes at the first prefix plan.complete accepts."""
    N, R = plan.N, plan.R
    worst = list(worst_subset(plan.alphas, plan.decoder.betas, R)[1]) if math.comb(N, R) <= 200_000 else list(range(R))
    rng = np.random.default_rng(seed)
    arrivals = [worst + [n for n in range(N) if n not in worst]] + [rng.permutation(N).tolist() for _ in range(orders)]
    accs, extras, errs, failed, first = [], [], [], 0, {}
    for j, order in enumerate(arrivals):
        for i in range(R, N + 1):
            if plan.complete(dict.fromkeys(order[:i])):
                break
        c = plan.choice(order[:i])
        if c.bound > plan.tolerance:
            failed += 1  # the master fails this request with the bound in its reason
            continue
        cols = [worker_out[:, w].astype(np.float64) for w in c.workers]
        logits = np.einsum("kr,rgv->gkv", c.W, np.stack(cols))
        accs.append(100.0 * float((logits.argmax(-1) == y).mean()))
        extras.append(i - R)
        errs.append(float(np.abs(logits - direct).max()))
        if j == 0:
            first = {"accuracy": accs[-1], "extra": extras[-1]}
    return {"aware_orders": len(arrivals), "aware_failed_orders": failed,
            "accuracy_aware_worst_first": first.get("accuracy"),
            "accuracy_aware_min": min(accs) if accs else None,
            "waited_extra_worst_first": first.get("extra"),
            "waited_extra_max": max(extras) if extras else None,
            "waited_extra_mean": float(np.mean(extras)) if extras else None,
            "max_abs_logit_error_aware": max(errs) if errs else None}


@torch.inference_mode()
def evaluate_centralized(model, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> dict[str, Any]:
    """Direct accuracy of a centralized model, in batches: ResNet-18 on 10,000 images at once does not fit in memory."""
    from .data import to_float

    model.eval()
    with torch.inference_mode():
        logits = np.concatenate([model(torch.from_numpy(to_float(images[i : i + batch]))).numpy()
                                 for i in range(0, len(images), batch)]) if len(images) else np.zeros((0, 1))
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
