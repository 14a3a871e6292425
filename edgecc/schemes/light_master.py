"""The light master as a runtime scheme (a design of ours, not the paper's): Lagrange-coded inputs to workers
that each run a whole polynomial classifier, decoded exactly (benchmarks/light_master_poly.py measures it).

The classifier f is a quadratic-activation MLP (nets/poly_mlp.PolyMLP, model-file kind "poly-mlp"):
f(x) = W2 σ(W1 x + b1) + b2 with σ(h) = h + c ⊙ h², of degree d = 2 in x (2^L with L hidden layers). For a
group of K images x_k the master sends worker n the Lagrange-coded input X̃_n = Σ_k ℓ_k(α_n) x_k (ℓ_k the
Lagrange basis on the points β_k: K Chebyshev nodes scaled by 0.9; α_n: the N Chebyshev nodes), a few
multiply-adds per pixel. Every worker runs f on what it gets ("plain" placement, the "mlp" compute kind with
act "quad": worker/compute.PlainCompute, numpy). f(Σ_k ℓ_k(α) x_k) is a polynomial of degree d(K − 1) in α,
so any R = d(K − 1) + 1 results determine it, and evaluating it at β_k gives f(x_k): exact up to float
rounding. One straggler needs N = R + 1.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any

import numpy as np

from ..bundle import digest
from ..coding.conditioning import EXHAUSTIVE_LIMIT, weights_many
from ..coding.lagrange import chebyshev, decode_weights, lagrange_basis
from ..errors import ConfigError, DecodeError
from ..protocol import compute_spec
from ..protocol.compute_spec import ComputeSpec
from ..protocol.frames import pack_array
from ..protocol.images import dims
from .base import Plan, check_groups, kth_fastest, load_model_option, set_shape

KINDS = ("poly-mlp",)
BETA_SCALE = 0.9  # the β's inside the α's span: decoding interpolates, never extrapolates


def light_master_points(K: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """(α (N,), β (K,)) float64: the workers' and the images' points."""
    return chebyshev(N), chebyshev(K, BETA_SCALE)


@lru_cache(maxsize=1024)
def _subset_weights(alphas: tuple[float, ...], betas: tuple[float, ...], R: int) -> tuple[tuple[int, ...], np.ndarray]:
    """(positions of the R best-conditioned points among `alphas`, their K×R decode weights): the R-subset whose
    decode amplifies rounding the least (max_k Σ_i |w_ki|), over every subset while they are few; beyond, the
    first R (the first to answer)."""
    a, b = np.asarray(alphas), np.asarray(betas)
    if len(a) == R or math.comb(len(a), R) > EXHAUSTIVE_LIMIT:
        pick = tuple(range(R))
    else:
        idx = np.array(list(itertools.combinations(range(len(a)), R)))
        amp = np.abs(weights_many(a, b, idx)).sum(-1).max(-1)  # (S,)
        pick = tuple(int(i) for i in idx[int(amp.argmin())])
    W = decode_weights(a[list(pick)], b)
    W.setflags(write=False)  # shared between requests through the cache
    return pick, W


class LightMasterPlan(Plan):
    """K images per group on N ≥ R = d(K − 1) + 1 workers running the polynomial classifier; any R decode."""

    placement = "plain"
    name = "light-master"

    def __init__(self, model, info: dict[str, Any], K: int, N: int, wire_dtype: str = "f4"):
        if info.get("kind") not in KINDS:
            raise ConfigError(f"the light master runs a poly-mlp model, not {info.get('kind')!r}")
        if K < 1:
            raise ConfigError(f"K must be >= 1, got {K}")
        hidden = [int(h) for h in info["hidden"]]
        self.degree = 2 ** len(hidden)
        self.R = self.degree * (K - 1) + 1
        if N < self.R:
            raise ConfigError(f"light-master with K={K} needs N >= R = {self.degree}(K−1)+1 = {self.R} workers "
                              f"(any R answers decode), got N={N}")
        if wire_dtype != "f4":
            # The decode is an extrapolation that amplifies each result's rounding by up to Σ|w| (~20 at K=8,
            # benchmarks/light_master_poly.py); that is measured for float32 results only: refuse rather than
            # return logits nobody has checked.
            raise ConfigError(f"light-master decodes exactly from float32 results only (its decode amplifies their "
                              f"rounding; {wire_dtype} results are not measured): use --wire-dtype f4")
        self.model, self.info = model.eval(), info
        self.K, self.N, self.wire_dtype = K, N, wire_dtype
        set_shape(self, info)
        self.alphas, self.betas = light_master_points(K, N)
        self.enc = lagrange_basis(self.betas, self.alphas).astype(np.float32)  # (N, K): X̃_n = Σ_k ℓ_k(α_n) x_k
        self.arrays = {f"mlp.{k}": v.detach().float().numpy() for k, v in model.state_dict().items()}
        self.spec = compute_spec.mlp(hidden, self.classes, dims(self.image), act="quad")
        self.digest = digest(self.arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in self.arrays.items()}

    def compute_spec(self, index: int) -> ComputeSpec:
        return self.spec  # every worker runs the same classifier, on its own coded input

    def scheme_params(self, index: int) -> dict[str, Any]:
        return {"K": self.K, "N": self.N, "R": self.R, "alpha": float(self.alphas[index])}

    def worker_summary(self, index: int) -> dict[str, Any]:
        return {"alpha": float(self.alphas[index])}

    def summary(self) -> dict[str, Any]:
        return {"R": self.R, "degree": self.degree, "betas": [float(b) for b in self.betas]}

    @property
    def need(self) -> str:
        return f"any R={self.R} of {self.N}"

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, N, *dims(image)) float32 coded inputs of groups `images` (B, K, *dims(image)) uint8."""
        check_groups(self, images)
        x = images.reshape(images.shape[0], self.K, -1).astype(np.float32) / 255.0
        wx = np.einsum("nk,bkp->bnp", self.enc, x)
        return wx.reshape(images.shape[0], self.N, *dims(self.image))

    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Worker n gets x = X̃_n (B, *dims(image)) float32, in [0, 1] pixel units."""
        wx = self.encode(images)
        return [{"x": pack_array(np.ascontiguousarray(wx[:, n]), self.wire_dtype)} for n in range(self.N)]

    def complete(self, answered) -> bool:
        return len(answered) >= self.R

    def reachable(self, possible) -> bool:
        return len(possible) >= self.R

    def oracle(self, delays: dict[int, float | None]) -> float | None:
        """Best possible latency given each worker's injected delay: the R-th fastest answer."""
        return kth_fastest(delays, self.R)

    def weights(self, workers) -> tuple[list[int], np.ndarray]:
        """(the R workers decoded from, their K×R float64 Lagrange weights at the β's) among `workers` in hand:
        the best-conditioned R of them."""
        workers = [int(w) for w in workers]
        if len(workers) < self.R:
            raise DecodeError(f"cannot decode: {len(workers)} result(s) received, light-master needs R={self.R}")
        if any(not 0 <= w < self.N for w in workers) or len(set(workers)) != len(workers):
            raise DecodeError(f"worker indices must be distinct, in 0..{self.N - 1}; got {workers}")
        pick, W = _subset_weights(tuple(float(self.alphas[w]) for w in workers), tuple(float(b) for b in self.betas),
                                  self.R)
        return [workers[i] for i in pick], W

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        return self.decoded(results)[0]

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits (B, K, classes) float64, report): f(x_k) = Σ_r W[k, r] f(X̃_r) over the chosen R results."""
        used, W = self.weights(list(results))
        Y = np.stack([np.asarray(results[w], dtype=np.float64) for w in used])  # (R, B, classes)
        if not np.all(np.isfinite(Y)):
            raise DecodeError("worker results contain NaN or Inf")
        logits = np.einsum("kr,rbv->bkv", W, Y)
        return logits, {"subset": sorted(used), "amplification": float(np.abs(W).sum(axis=1).max())}


def build(N: int, K: int, *, model, wire_dtype: str) -> LightMasterPlan:
    """The registry's builder (schemes/builtin.py declares the options)."""
    return LightMasterPlan(*load_model_option(model, KINDS, "light-master"), K, N, wire_dtype)
