"""Uncoded and replication, the comparators without a code: every worker runs the centralized model
("plain" placement) on one image of each group, image n mod K for worker n. Uncoded: N = K workers,
wait for all. Replication: N workers, the first copy of each image wins. The model is one the master
sends, or with model "worker" the base each worker's operator loaded (`edgecc worker --base`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..protocol.frames import pack_array
from .base import CENTRALIZED, WORKER_BASE, PlainWorkers, check_groups, load_base_option, set_base


class ReplicatedPlan(PlainWorkers):
    """Worker n runs the centralized model on image n mod K; `name` is the scheme that built it."""

    def __init__(self, model, info: dict[str, Any], K: int, N: int, wire_dtype: str = "f4", name: str = "replication"):
        if info["kind"] not in (*CENTRALIZED, WORKER_BASE):
            raise ConfigError(f"uncoded and replication workers run a centralized model, not {info['kind']!r}")
        if N < K:
            raise ConfigError(f"{N} workers cannot hold one copy of each of K={K} images")
        self.model, self.info, self.name = model, info, name
        self.K, self.N, self.wire_dtype = K, N, wire_dtype
        set_base(self, model, info)
        self.copies = [[n for n in range(N) if n % K == k] for k in range(K)]

    @property
    def need(self) -> str:
        return "one answer per image"

    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        check_groups(self, images)
        x = images.astype(np.float32) / 255.0
        return [{"x": pack_array(x[:, n % self.K], self.wire_dtype)} for n in range(self.N)]

    def complete(self, answered) -> bool:
        return all(any(n in answered for n in c) for c in self.copies)

    def oracle(self, delays) -> float | None:
        best = [min((delays[n] for n in c if delays.get(n) is not None), default=None) for c in self.copies]
        return None if any(b is None for b in best) else max(best)

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, K, classes): image k's logits from the first of its copies to arrive (dicts keep arrival order)."""
        first = {}
        for n, y in results.items():
            first.setdefault(n % self.K, y)
        return np.stack([first[k] for k in range(self.K)], axis=1).astype(np.float64)

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits, report): the copies that answered first for each image."""
        first: dict[int, int] = {}
        for n in results:
            first.setdefault(n % self.K, int(n))
        return self.decode(results), {"subset": sorted(first.values())}


def build_uncoded(N: int, K: int, *, model, wire_dtype: str) -> ReplicatedPlan:
    """The registry's builder of "uncoded": the run's first K workers, one image each."""
    if N < K:
        raise ConfigError(f"uncoded needs K={K} workers, the run has {N}")
    return ReplicatedPlan(*load_base_option(model, "uncoded"), K, K, wire_dtype, "uncoded")


def build_replication(N: int, K: int, *, model, wire_dtype: str) -> ReplicatedPlan:
    """The registry's builder of "replication": all N workers, image n mod K on worker n."""
    return ReplicatedPlan(*load_base_option(model, "replication"), K, N, wire_dtype, "replication")
