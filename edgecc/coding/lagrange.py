"""Lagrange decoding: from any R results (α_i, y_i) evaluate the degree-(R-1) polynomial at β_k.

The decoder for a subset of workers is one K×R matrix W with
    W[k, i] = Π_{j≠i} (β_k − α_j) / (α_i − α_j),
so decoding a batch is one matmul. Matrices are computed in float64 and cached per subset:
the master sees the same few subsets over and over.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import DecodeError


def interpolation_points(nodes: Sequence[float], targets: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """float64 (nodes, targets) for an interpolation, or DecodeError: non-empty 1-D, distinct nodes."""
    a = np.asarray(nodes, dtype=np.float64)
    b = np.asarray(targets, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or a.size == 0:
        raise DecodeError("evaluation points and targets must be non-empty 1-D sequences")
    if np.unique(a).size != a.size:
        raise DecodeError(f"evaluation points must be distinct, got {list(a)}")
    return a, b


def decode_weights(alphas: Sequence[float], betas: Sequence[float]) -> np.ndarray:
    """K×R Lagrange weights mapping values at `alphas` to values at `betas` (float64)."""
    a, b = interpolation_points(alphas, betas)
    R = a.size
    W = np.ones((b.size, R), dtype=np.float64)
    for i in range(R):
        for j in range(R):
            if j != i:
                W[:, i] *= (b - a[j]) / (a[i] - a[j])
    return W


def chebyshev(n: int, scale: float = 1.0) -> np.ndarray:
    """n Chebyshev nodes of the first kind on [-scale, scale], increasing (float64): they keep interpolation
    well conditioned (the light master's α's and β's, schemes/light_master.py)."""
    return np.sort(scale * np.cos((2 * np.arange(n) + 1) * np.pi / (2 * n)))


def lagrange_basis(nodes: Sequence[float], at: Sequence[float]) -> np.ndarray:
    """(len(at), len(nodes)) float64 matrix L with L[i, j] = ℓ_j(at_i), the Lagrange basis on `nodes`:
    L @ values at the nodes = the interpolating polynomial's values at `at` (= decode_weights(nodes, at))."""
    return decode_weights(nodes, at)


@lru_cache(maxsize=4096)
def _cached_weights(alphas: tuple[float, ...], betas: tuple[float, ...]) -> np.ndarray:
    W = decode_weights(alphas, betas)
    W.setflags(write=False)  # shared between callers through the cache
    return W


def max_amplification(N: int, R: int, betas: Sequence[float], alphas: Sequence[float] | None = None) -> float:
    """max_k Σ_i |w_ki| over the worst R-subset: how much worker float error the decoder can amplify."""
    from .schemes import default_alphas

    alphas = list(alphas) if alphas is not None else default_alphas(N)
    worst = 0.0
    for subset in itertools.combinations(alphas, R):
        W = decode_weights(subset, betas)
        worst = max(worst, float(np.abs(W).sum(axis=1).max()))
    return worst


class Decoder:
    """Decodes K results per group from any R of the N workers' outputs.

    `alphas` are the N workers' points, `betas` the K decoding points, `R` the recovery threshold.
    """

    def __init__(self, alphas: Sequence[float], betas: Sequence[float], R: int):
        if R < 1:
            raise DecodeError(f"recovery threshold must be >= 1, got {R}")
        if len(alphas) < R:
            raise DecodeError(f"{len(alphas)} workers cannot reach the recovery threshold R={R}")
        self.alphas = tuple(float(a) for a in alphas)
        self.betas = tuple(float(b) for b in betas)
        self.R = R

    @property
    def N(self) -> int:
        return len(self.alphas)

    @property
    def K(self) -> int:
        return len(self.betas)

    def weights(self, workers: Sequence[int]) -> np.ndarray:
        """K×R decode matrix for the given worker indices (0-based, first R are used)."""
        workers = tuple(workers)
        if len(workers) < self.R:
            raise DecodeError(
                f"cannot decode: {len(workers)} result(s) received, recovery threshold is R={self.R}"
            )
        chosen = workers[: self.R]
        for w in chosen:
            if not 0 <= w < self.N:
                raise DecodeError(f"worker index {w} out of range for N={self.N}")
        return _cached_weights(tuple(self.alphas[w] for w in chosen), self.betas)

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """Decode {worker index: (B, V) outputs} into (B, K, V) float64 logits.

        Uses the first R workers in ascending index order; refuses fewer than R results.
        """
        if len(results) < self.R:
            raise DecodeError(
                f"cannot decode: {len(results)} result(s) received, recovery threshold is R={self.R}"
            )
        workers = sorted(results)[: self.R]
        W = self.weights(workers)
        Y = np.stack([np.asarray(results[w], dtype=np.float64) for w in workers])  # (R, B, V)
        if not np.all(np.isfinite(Y)):
            raise DecodeError("worker results contain NaN or Inf")
        return np.einsum("kr,rbv->bkv", W, Y)
