"""How wrong can a decoded logit be, and which results should decode it. Numpy only.

Decoding evaluates at β_k the degree-(R-1) polynomial through the workers' results y_i = D(α_i).
In exact arithmetic any R results give D(β_k); in floating point each y_i carries an error |δ_i| <= e_i
(the master's fp32 evaluation of E(α_i), the wire rounding of the worker's inputs and of its result, the
worker's fp32 arithmetic), and the decoded value Σ_i w_ki y_i is off by at most Σ_i |w_ki| e_i.

The per-result bounds e_i come from the plan (schemes/plan.result_errors: measured as the runtime
computes, against float64, with headroom). Here: the weights for many subsets at once, the worst
subset's amplification, the choice of weights over the results in hand that minimises each β_k's
bound, and evaluation points for N workers whose worst R-subset amplifies the least.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DecodeError

# Default tolerance on the decoded logits. A prediction can only change when some logit moves by half
# the gap between the top two; results/numerics.md gives, per Table 3 checkpoint, the share of test
# images whose gap is below 2 × this tolerance (the most accuracy a decode within it could change).
DEFAULT_TOLERANCE = 0.01


def weights_many(alphas: np.ndarray, betas: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Lagrange weights for many subsets at once: (S, R) indices into `alphas` -> (S, K, R) float64."""
    a = alphas[subsets]  # (S, R)
    S, R = a.shape
    W = np.ones((S, betas.size, R))
    for i in range(R):
        for j in range(R):
            if j != i:
                W[:, :, i] *= (betas[None, :] - a[:, j : j + 1]) / (a[:, i : i + 1] - a[:, j : j + 1])
    return W


def amplification(W: np.ndarray) -> float:
    """max_k Σ_i |w_ki|: the decoded error per unit of (uniform) result error."""
    return float(np.abs(W).sum(axis=-1).max())


def worst_subset(alphas: Sequence[float], betas: Sequence[float], R: int, scale: Sequence[float] | None = None,
                 limit: int = 500_000) -> tuple[float, tuple[int, ...]]:
    """(max over R-subsets of max_k Σ_i |w_ki| scale_i, that subset): every subset, in chunks."""
    a, b = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    s = np.ones(a.size) if scale is None else np.asarray(scale, np.float64)
    if math.comb(a.size, R) > limit:
        raise ConfigError(f"C({a.size}, {R}) subsets is too many to enumerate (limit {limit})")
    worst, arg = -1.0, ()
    it = itertools.combinations(range(a.size), R)
    while chunk := list(itertools.islice(it, 20000)):
        idx = np.array(chunk)
        amp = (np.abs(weights_many(a, b, idx)) * s[idx][:, None, :]).sum(-1).max(-1)
        j = int(amp.argmax())
        if amp[j] > worst:
            worst, arg = float(amp[j]), tuple(int(x) for x in idx[j])
    return worst, arg


# -- choosing weights for the results in hand ------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """Decode matrix over the workers in hand and its error bound."""

    workers: tuple[int, ...]  # worker index of each column of W
    W: np.ndarray  # (K, n) float64; row k may use any of the workers
    bounds: np.ndarray  # (K,) Σ_i |w_ki| e_i
    method: str  # "subset": each row from its best R-subset; "lstsq": weighted least squares over all n

    # computed once: a plan caches its choices and asks for these on every result of every request
    @cached_property
    def bound(self) -> float:
        return float(self.bounds.max())

    @cached_property
    def _used(self) -> tuple[int, ...]:
        return tuple(w for w, col in zip(self.workers, np.abs(self.W).max(axis=0)) if col > 0)

    @property
    def used(self) -> list[int]:
        return list(self._used)


EXHAUSTIVE_LIMIT = 4096  # up to this many R-subsets per decision, try them all; beyond, a swap search


def _best_rows_exhaustive(a: np.ndarray, b: np.ndarray, e: np.ndarray, R: int) -> tuple[np.ndarray, np.ndarray]:
    n = a.size
    idx = np.array(list(itertools.combinations(range(n), R)))
    Wm = weights_many(a, b, idx)  # (S, K, R)
    cost = (np.abs(Wm) * e[idx][:, None, :]).sum(-1)  # (S, K)
    best = cost.argmin(axis=0)  # per k
    W = np.zeros((b.size, n))
    for k, s in enumerate(best):
        W[k, idx[s]] = Wm[s, k]
    return W, cost[best, np.arange(b.size)]


def _best_rows_swap(a: np.ndarray, b: np.ndarray, e: np.ndarray, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Per β_k, start from R points spread over the sorted α's; try every single swap at once and keep the best
    while the cost drops (a local optimum; exhaustive search takes over where subsets are few)."""
    n = a.size
    order = np.argsort(a)
    W = np.zeros((b.size, n))
    costs = np.zeros(b.size)
    for k in range(b.size):
        bk = b[k : k + 1]
        cur = np.sort(order[np.round(np.linspace(0, n - 1, R)).astype(int)])
        w = weights_many(a, bk, cur[None])[0, 0]
        c = float((np.abs(w) * e[cur]).sum())
        while True:
            outside = np.setdiff1d(np.arange(n), cur)
            trials = np.array([np.sort(np.r_[np.delete(cur, p), q]) for p in range(R) for q in outside])
            tw = weights_many(a, bk, trials)[:, 0]
            tc = (np.abs(tw) * e[trials]).sum(-1)
            j = int(tc.argmin())
            if not tc[j] < c * (1 - 1e-12):
                break
            cur, w, c = trials[j], tw[j], float(tc[j])
        W[k, cur] = w
        costs[k] = c
    return W, costs


def _lstsq_rows(a: np.ndarray, b: np.ndarray, e: np.ndarray, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares over all n results (weights 1/e_i): W = V(β) · pinv(diag(1/e) V(α)) · diag(1/e)."""
    V = np.vander(a, R, increasing=True) / e[:, None]
    W = np.vander(b, R, increasing=True) @ np.linalg.pinv(V) / e[None, :]
    return W, (np.abs(W) * e[None, :]).sum(axis=1)


def choose(alphas: Sequence[float], betas: Sequence[float], R: int, workers: Sequence[int], errors: Sequence[float]) -> Choice:
    """Weights over `workers` (indices into alphas, each with result error bound errors[i]) minimising each
    β_k's bound: the best R-subset per row (all subsets when few, a swap search otherwise) or, where smaller,
    the weighted least-squares fit over all of them (it also averages independent rounding errors)."""
    workers = tuple(int(w) for w in workers)
    if len(workers) < R:
        raise DecodeError(f"cannot decode: {len(workers)} result(s) received, recovery threshold is R={R}")
    a = np.array([alphas[w] for w in workers], dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if e.shape != a.shape or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise DecodeError(f"result error bounds must be positive and finite, one per worker; got {e}")
    if math.comb(a.size, R) <= EXHAUSTIVE_LIMIT:
        W, cost = _best_rows_exhaustive(a, b, e, R)
    else:
        W, cost = _best_rows_swap(a, b, e, R)
    method = "subset"
    if a.size > R:
        Wl, cl = _lstsq_rows(a, b, e, R)
        take = cl < cost
        if take.any():
            W[take], cost[take], method = Wl[take], cl[take], "lstsq" if take.all() else "mixed"
    return Choice(workers, W, cost, method)


# -- evaluation points ------------------------------------------------------------------------
def _window_subsets(N: int, R: int, spread: int = 2) -> np.ndarray:
    """R-subsets of sorted points within windows of R + spread neighbours: where the worst subsets live
    (clustered points, far from some β). `worst_subset` checks the choice over every subset."""
    subs = set()
    for s in range(N - R + 1):
        subs.update(itertools.combinations(range(s, min(N, s + R + spread)), R))
    return np.array(sorted(subs))


def growth(alphas: np.ndarray, R: int) -> np.ndarray:
    """How a result's size (and so its rounding error) grows with α: D has degree R-1, so |D(α)| can grow as
    |α|^(R-1) beyond 1. Points beyond 1 pay for it in the search below."""
    return np.maximum(1.0, np.abs(alphas)) ** (R - 1)


@lru_cache(maxsize=64)
def chosen_alphas(N: int, R: int, betas: tuple[float, ...], iterations: int = 1500) -> tuple[float, ...]:
    """N positive evaluation points minimising the worst R-subset's max_k Σ_i |w_ki| · growth(α_i).

    Deterministic: the uniform spread n/(N+1) and the uniform spread over the β's widened by half a gap
    are the starts; a seeded random local search moves one point at a time and keeps improvements."""
    from .schemes import default_alphas

    if N <= R:  # every result is needed: there is only one subset and nothing to choose
        return tuple(default_alphas(N))
    b = np.asarray(betas, dtype=np.float64)
    subsets = _window_subsets(N, R)

    def cost(x: np.ndarray) -> float:
        xs = np.sort(x)
        Wm = weights_many(xs, b, subsets)
        return float((np.abs(Wm) * growth(xs, R)[subsets][:, None, :]).sum(-1).max())

    lo, hi = float(b.min()), float(b.max())
    starts = [np.asarray(default_alphas(N)), np.linspace(max(lo / 2, 1e-3), hi + (hi - lo) / (2 * max(1, b.size - 1)), N)]
    x = min(starts, key=cost)
    best = cost(x)
    rng = np.random.default_rng(1000 * N + R)
    step = 0.05
    for it in range(iterations):
        y = x.copy()
        y[rng.integers(N)] += rng.normal() * step
        y.sort()
        if y[0] <= 1e-3 or np.min(np.diff(y)) < 1e-4:  # positive and distinct (the protocol wants 0 < α)
            continue
        c = cost(y)
        if c < best:
            x, best = y, c
        if it % 300 == 299:
            step *= 0.6
    return tuple(float(v) for v in np.round(np.sort(x), 6))
