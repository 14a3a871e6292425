"""Decoding in the presence of lying (Byzantine) workers, numpy only.

Worker outputs are values of one degree-(R-1) polynomial D(α). With n = R + 2E results, at most
E of them wrong, the true polynomial is the only one that R + E of the points fit: any (R+E)-subset
containing a liar also contains >= R honest points, which pin D, so the liar's point leaves a
residual. We try every way of leaving E workers out (C(n, E) small least-squares fits, one
projection matrix each, shared by all groups), keep per group the subset that fits best, decode
from it, and name the workers whose points sit far from the fitted polynomial.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import DecodeError


@dataclass(frozen=True)
class RobustResult:
    logits: np.ndarray  # (B, K, V) float64
    suspects: np.ndarray  # (n, B) bool: worker i's value for group b is off the fitted polynomial
    workers: tuple[int, ...]  # worker index of each row of `suspects`


def robust_decode(alphas: Sequence[float], betas: Sequence[float], R: int, E: int, results: dict[int, np.ndarray],
                  rel_tol: float = 1e-3) -> RobustResult:
    """Decode {worker index: (B, V)} (indices into `alphas`) with up to E wrong results among them.

    Needs at least R + 2E results. A point is a suspect when its distance to the fitted polynomial
    exceeds rel_tol times the group's largest honest |value| (float32 workers sit ~1e-6 off)."""
    workers = tuple(sorted(results))
    n = len(workers)
    if n < R + 2 * E:
        raise DecodeError(f"cannot correct {E} wrong result(s): {n} received, need R + 2E = {R + 2 * E}")
    a = np.array([alphas[w] for w in workers], dtype=np.float64)
    Y = np.stack([np.asarray(results[w], dtype=np.float64) for w in workers])  # (n, B, V)
    if not np.all(np.isfinite(Y)):
        Y = np.where(np.isfinite(Y), Y, 1e300)  # a liar's NaN is just a very wrong value
    B = Y.shape[1]
    best_res = np.full(B, np.inf)
    best_keep = np.zeros((B, n), dtype=bool)
    for drop in itertools.combinations(range(n), E):
        keep = np.ones(n, dtype=bool)
        keep[list(drop)] = False
        V = np.vander(a[keep], R, increasing=True)  # (n-E, R)
        proj = V @ np.linalg.pinv(V)  # least-squares projection onto degree-(R-1) polynomials
        resid = np.abs(np.einsum("ij,jbv->ibv", proj, Y[keep]) - Y[keep]).max(axis=(0, 2))  # (B,)
        better = resid < best_res
        best_res[better] = resid[better]
        best_keep[better] = keep
    logits = np.empty((B, len(betas), Y.shape[2]))
    suspects = np.zeros((n, B), dtype=bool)
    for keep in np.unique(best_keep, axis=0):  # groups sharing the same honest subset decode together
        rows = np.all(best_keep == keep, axis=1)
        idx = np.flatnonzero(keep)
        sub = Y[idx][:, rows]  # (n-E, b, V)
        coef = np.einsum("rj,jbv->rbv", np.linalg.pinv(np.vander(a[idx], R, increasing=True)), sub)
        logits[rows] = np.einsum("kr,rbv->bkv", np.vander(np.asarray(betas, dtype=np.float64), R, increasing=True), coef)
        fit_all = np.einsum("ir,rbv->ibv", np.vander(a, R, increasing=True), coef)  # every worker's expected value
        scale = np.abs(sub).max(axis=(0, 2)) + 1e-12
        dev = np.abs(fit_all - Y[:, rows]).max(axis=2) / scale
        suspects[:, rows] = dev > rel_tol
    return RobustResult(logits, suspects, workers)


