"""ApproxIFER as a runtime scheme: the master's side (coding/berrut.py does the math).

Every worker runs the unmodified centralized model ("plain" placement: the MLP on the numpy path,
worker/compute.PlainCompute; the CNN with torch, worker/plain_cnn.PlainTorchCompute) on the Berrut
combination u(z_n) of the K images of each group. The master decodes from whichever K workers answer
first (N = K + S tolerates S stragglers); with `byzantine` = E it waits for 2K + 2E − 1 answers and
decodes around up to E wrong ones, naming them (N = 2K + S + 2E − 1).

Workers get the "mlp", "cnn" or "resnet18" compute spec (protocol/compute_spec.py), or with model
"worker" the "user" one: the base each worker's operator loaded (`edgecc worker --base`). The Berrut
node z_n of worker n travels in its configure's scheme parameters, for the worker's log: the code
lives here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..coding.berrut import WORKER_POINT_SETS, BerrutCode, needed_results
from ..errors import ConfigError
from ..protocol.compute_spec import ComputeSpec
from ..protocol.frames import pack_array
from .base import Plan, check_groups, kth_fastest, load_base_option, set_base


class ApproxIFERPlan(Plan):
    """K images per group on N workers; any K answers decode (2K + 2E − 1 with E liars)."""

    placement = "plain"
    name = "approxifer"

    def __init__(self, model, info: dict[str, Any], K: int, N: int, points: str = "n", wire_dtype: str = "f4",
                 byzantine: int = 0):
        if points not in WORKER_POINT_SETS:
            raise ConfigError(f"points must be one of {WORKER_POINT_SETS}, got {points!r}")
        if byzantine < 0:
            raise ConfigError(f"byzantine must be >= 0, got {byzantine}")
        self.threshold = needed_results(K, byzantine)
        if N < self.threshold:
            raise ConfigError(f"ApproxIFER with K={K}" + (f" and E={byzantine} liar(s)" if byzantine else "")
                              + f" needs N >= {self.threshold}, got N={N}")
        self.model, self.info = model, info
        self.K, self.N, self.byzantine, self.wire_dtype = K, N, byzantine, wire_dtype
        self.code = BerrutCode(K, N, points)
        self.points = [float(z) for z in self.code.z]
        self.point_set = points
        set_base(self, model, info)
        self.suspect_groups = [0] * N  # per worker: groups where its result was located as a lie

    def compute_spec(self, index: int) -> ComputeSpec:
        return self.spec  # every worker runs the unmodified centralized model

    def worker_summary(self, index: int) -> dict[str, Any]:
        return {"z": self.points[index], "suspect_groups": self.suspect_groups[index]}

    def scheme_params(self, index: int) -> dict[str, Any]:
        return {"K": self.K, "N": self.N, "E": self.byzantine, "points": self.point_set, "z": self.points[index]}

    @property
    def need(self) -> str:
        if self.byzantine:
            return f"2K + 2E − 1 = {self.threshold} (E={self.byzantine})"
        return f"any K={self.K} of {self.N}"

    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Per-worker compute fields for groups `images` (B, K, *dims(image)) uint8: u(z_n), float in [0, 1] units."""
        check_groups(self, images)
        wx = self.code.encode(images.astype(np.float32) / 255.0)  # (B, N, *dims(image))
        return [{"x": pack_array(np.ascontiguousarray(wx[:, n]), self.wire_dtype)} for n in range(self.N)]

    def complete(self, answered) -> bool:
        return len(answered) >= self.threshold

    def reachable(self, possible) -> bool:
        return len(possible) >= self.threshold

    def oracle(self, delays: dict[int, float | None]) -> float | None:
        """Best possible latency given each worker's injected delay: the threshold-th fastest answer."""
        return kth_fastest(delays, self.threshold)

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        return self.decoded(results)[0]

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits (B, K, classes) float64, report): every result given is used (the first K or 2K + 2E − 1 to
        arrive, when the master calls at completion); with liars, report["suspects"] names located ones."""
        if not self.byzantine:
            return self.code.decode(results), {"subset": sorted(int(w) for w in results)}
        res = self.code.robust_decode(self.byzantine, results)
        for row, w in enumerate(res.workers):
            self.suspect_groups[w] += int(res.suspects[row].sum())
        suspects = sorted(int(w) for row, w in enumerate(res.workers) if res.suspects[row].any())
        return res.logits, {"subset": sorted(int(w) for w in res.workers), "suspects": suspects}


def build(N: int, K: int, *, model, points: str, wire_dtype: str, byzantine: int) -> ApproxIFERPlan:
    """The registry's builder (schemes/builtin.py declares the options)."""
    return ApproxIFERPlan(*load_base_option(model, "approxifer"), K, N, points, wire_dtype, byzantine)
