"""The master classifying alone with the centralized model: no workers, nothing on the wire.

Not a straggler-mitigation scheme but the baseline every one of them must beat to be worth its
workers: where the master can run the model itself faster than it can encode, send and decode,
coding does not pay. The master runs the same computation a plain worker runs
(worker/plain_cnn.plain_compute: the numpy MLP, or the CNN with torch) in its encode pool; with
N = 0 the master sends nothing and the request completes as soon as that returns (`at_master`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bundle import digest
from ..errors import ConfigError, DecodeError
from ..protocol.images import dims
from .base import CENTRALIZED, Plan, base_arrays, check_groups, load_model_option, set_shape


class LocalPlan(Plan):
    """K images per group classified at the master by a centralized model."""

    name = "local"
    placement = "master"  # no worker: what a worker would have to offer is moot
    N = 0
    wire_dtype = "f4"  # nothing is sent; kept so that the plan reads like every other
    need = "the master's own classification"

    def __init__(self, model, info: dict[str, Any], K: int):
        from ..worker.plain_cnn import plain_compute

        if info["kind"] not in CENTRALIZED:
            raise ConfigError(f"the local scheme runs a centralized model, not {info['kind']!r}")
        self.K, self.info = K, info
        set_shape(self, info)
        self.arrays = base_arrays(model, info)
        self.compute = plain_compute(self.arrays, self.image, self.classes)  # exactly what a plain worker would compute
        self.digest = digest(self.arrays)
        self.wire_arrays: dict[str, Any] = {}
        self.kind = info["kind"]

    def compute_spec(self, index: int):
        raise ConfigError("the local scheme has no workers to configure")

    def scheme_params(self, index: int) -> dict[str, Any]:
        raise ConfigError("the local scheme has no workers to configure")

    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        return []

    def at_master(self, images: np.ndarray) -> np.ndarray:
        """(B, K, classes) float64 logits of the centralized model on groups `images` (B, K, *dims(image)) uint8."""
        check_groups(self, images)
        B = images.shape[0]
        y = self.compute(images.reshape(B * self.K, *dims(self.image)).astype(np.float32) / 255.0)
        return np.asarray(y, dtype=np.float64).reshape(B, self.K, -1)

    def complete(self, answered) -> bool:
        return True

    def reachable(self, possible) -> bool:
        return True

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        raise DecodeError("the local scheme has no results to decode: the master classifies in at_master")

    def oracle(self, delays) -> float | None:
        return 0.0  # no worker to wait for

    def summary(self) -> dict[str, Any]:
        return {"model_kind": self.kind}


def build(N: int, K: int, *, model) -> LocalPlan:
    """The registry's builder: the run's workers, if any, stay unused."""
    return LocalPlan(*load_model_option(model, CENTRALIZED, "local"), K)
