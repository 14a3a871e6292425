"""Berrut rational interpolation for ApproxIFER (Soleymani et al., AAAI 2022), numpy only.

Berrut's first barycentric form through nodes x_0 < ... < x_{n-1} (any monotone order) with values f_i:

    r(z) = Σ_i w_i f_i / (z − x_i)  /  Σ_i w_i / (z − x_i),      w_i = (−1)^i,

interpolates (r(x_i) = f_i), has no pole on the real line for any n, and is well conditioned on
Chebyshev-like nodes. It is linear in the values, so encoding K inputs to N workers and decoding
K outputs from whichever workers answered are each one small weight matrix.

ApproxIFER: the K queries X_j sit at α_j = cos((2j+1)π/2K); the encoder is the Berrut interpolant
u(z) of (α_j, X_j) evaluated at the N worker nodes z_i; worker i returns f(u(z_i)) with the
unmodified model f; the master Berrut-interpolates whatever workers answered, at the α_j. Nothing
is exact unless f is constant: accuracy degrades gracefully with the nonlinearity of f.

With E lying workers the master waits for 2K + 2E − 1 results. `robust_decode` tries every way of
leaving E of them out; a subset is scored by leave-one-out prediction — each kept worker's value
predicted by the Berrut interpolant of the other kept workers — so a liar in the subset shows as a
large miss, while honest subsets miss only by Berrut's approximation error.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DecodeError
from .lagrange import interpolation_points
from .robust import RobustResult

WORKER_POINT_SETS = ("n", "n-1")  # cos(iπ/N) (the published workstation scripts), cos(iπ/(N−1)) (their AWS script)


def query_points(K: int) -> np.ndarray:
    """α_j = cos((2j+1)π/2K), j = 0..K−1: Chebyshev points of the first kind (decreasing)."""
    if K < 1:
        raise ConfigError(f"K must be >= 1, got {K}")
    return np.cos((2 * np.arange(K) + 1) * np.pi / (2 * K))


def worker_points(N: int, kind: str = "n") -> np.ndarray:
    """The N workers' nodes (decreasing): cos(iπ/N) for kind "n", cos(iπ/(N−1)) for kind "n-1", i = 0..N−1."""
    if kind not in WORKER_POINT_SETS:
        raise ConfigError(f"worker point set must be one of {WORKER_POINT_SETS}, got {kind!r}")
    if N < 1 or (kind == "n-1" and N < 2):
        raise ConfigError(f"N={N} is too few workers for point set {kind!r}")
    return np.cos(np.arange(N) * np.pi / (N if kind == "n" else N - 1))


def berrut_weights(nodes: Sequence[float], targets: Sequence[float]) -> np.ndarray:
    """(len(targets), len(nodes)) float64 matrix M with r(targets) = M @ values.

    Signs alternate in the nodes' sorted order (what keeps r pole-free), whatever order they are given
    in; a target equal to a node takes that node's value exactly."""
    x, t = interpolation_points(nodes, targets)
    sign = np.empty(x.size)
    sign[np.argsort(x)] = (-1.0) ** np.arange(x.size)
    diff = t[:, None] - x[None, :]  # (T, n)
    hit = np.isclose(diff, 0.0, rtol=0.0, atol=1e-14)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = sign / diff
    c[hit] = 0.0
    M = c / c.sum(axis=1, keepdims=True)
    rows = hit.any(axis=1)
    M[rows] = hit[rows].astype(np.float64)  # exactly at a node: that node's value
    return M


class BerrutCode:
    """ApproxIFER's code for K queries and N workers (N − K stragglers tolerated, or E liars when
    N >= 2K + 2E − 1 + S)."""

    def __init__(self, K: int, N: int, points: str = "n"):
        if N < K:
            raise ConfigError(f"N={N} workers cannot decode K={K} queries")
        self.K, self.N, self.point_set = K, N, points
        self.alphas = query_points(K)
        self.z = worker_points(N, points)
        self.enc = berrut_weights(self.alphas, self.z)  # (N, K)
        self._dec: dict[tuple[int, ...], np.ndarray] = {}

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(B, K, ...) queries -> (B, N, ...) worker inputs u(z_i) (float32 when x is float32)."""
        if x.shape[1] != self.K:
            raise ConfigError(f"expected {self.K} queries per group, got {x.shape[1]}")
        flat = x.reshape(x.shape[0], self.K, -1)
        out = np.einsum("nk,bkd->bnd", self.enc.astype(flat.dtype if flat.dtype == np.float32 else np.float64), flat)
        return out.reshape(x.shape[0], self.N, *x.shape[2:])

    def decode_weights(self, workers: Sequence[int]) -> np.ndarray:
        """(K, len(workers)) Berrut weights at the α_j from the given workers' nodes (cached per subset)."""
        key = tuple(sorted(workers))
        if len(key) < self.K:
            raise DecodeError(f"cannot decode: {len(key)} result(s) received, ApproxIFER needs K={self.K}")
        if key[0] < 0 or key[-1] >= self.N or len(set(key)) != len(key):
            raise DecodeError(f"worker indices {list(key)} invalid for N={self.N}")
        if key not in self._dec:
            self._dec[key] = berrut_weights(self.z[list(key)], self.alphas)
        return self._dec[key]

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """{worker index: (B, V)} from any >= K workers -> (B, K, V) float64, using every result given."""
        workers = sorted(results)
        W = self.decode_weights(workers)
        Y = np.stack([np.asarray(results[w], dtype=np.float64) for w in workers])  # (n, B, V)
        if not np.all(np.isfinite(Y)):
            raise DecodeError("worker results contain NaN or Inf")
        return np.einsum("kn,nbv->bkv", W, Y)

    def robust_decode(self, E: int, results: dict[int, np.ndarray], factor: float = 2.0) -> RobustResult:
        """Decode around up to E wrong results among >= 2K + 2E − 1 of them.

        Per group, the kept subset (all but E) with the smallest leave-one-out miss wins; a worker is a
        suspect in a group when its distance to the winning interpolant exceeds `factor` times that
        subset's own largest leave-one-out miss (the honest approximation error) and 1e-6 of the scale."""
        workers = tuple(sorted(results))
        n, need = len(workers), 2 * self.K + 2 * E - 1
        if E < 1:
            raise DecodeError(f"E must be >= 1 for robust decoding, got {E}")
        if n < need:
            raise DecodeError(f"cannot correct {E} wrong result(s): {n} received, need 2K + 2E − 1 = {need}")
        if math.comb(n, E) > 5000:
            raise DecodeError(f"locating {E} liar(s) among {n} results tries {math.comb(n, E)} subsets: too many")
        z = self.z[list(workers)]
        Y = np.stack([np.asarray(results[w], dtype=np.float64) for w in workers])  # (n, B, V)
        Y = np.where(np.isfinite(Y), Y, 1e300)  # a liar's NaN is just a very wrong value
        B = Y.shape[1]
        best = np.full(B, np.inf)
        best_keep = np.zeros((B, n), dtype=bool)
        best_miss = np.zeros(B)
        for drop in itertools.combinations(range(n), E):
            keep = np.setdiff1d(np.arange(n), drop)
            miss = np.zeros(B)
            for pos, i in enumerate(keep):  # predict kept worker i from the other kept workers
                others = np.delete(keep, pos)
                w = berrut_weights(z[others], z[[i]])[0]
                pred = np.einsum("j,jbv->bv", w, Y[others])
                miss = np.maximum(miss, np.abs(pred - Y[i]).max(axis=1))
            better = miss < best
            best[better], best_miss[better] = miss[better], miss[better]
            best_keep[better] = False
            best_keep[np.ix_(better, keep)] = True
        logits = np.empty((B, self.K, Y.shape[2]))
        suspects = np.zeros((n, B), dtype=bool)
        for keep in np.unique(best_keep, axis=0):  # groups sharing one kept subset decode together
            rows = np.all(best_keep == keep, axis=1)
            idx = np.flatnonzero(keep)
            logits[rows] = np.einsum("kn,nbv->bkv", berrut_weights(z[idx], self.alphas), Y[idx][:, rows])
            fit = np.einsum("in,nbv->ibv", berrut_weights(z[idx], z), Y[idx][:, rows])  # every worker's expected value
            dev = np.abs(fit - Y[:, rows]).max(axis=2)  # (n, b)
            scale = np.abs(Y[idx][:, rows]).max(axis=(0, 2)) + 1e-12
            suspects[:, rows] = (dev > factor * best_miss[rows]) & (dev > 1e-6 * scale)
        return RobustResult(logits, suspects, workers)


def needed_results(K: int, E: int = 0) -> int:
    """Results ApproxIFER waits for: K, or 2K + 2E − 1 to locate E liars."""
    return K if E == 0 else 2 * K + 2 * E - 1


def workers_for(K: int, S: int, E: int = 0) -> int:
    """N for S stragglers (and E liars): K + S, or 2K + S + 2E − 1."""
    return needed_results(K, E) + S
