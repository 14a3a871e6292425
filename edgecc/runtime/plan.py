"""The master's side of a coded model: what to send each worker, and how to decode (torch + numpy).

Encoded placement: the master runs Γ (and Λ for H_S) and ships X̃_n = E(α_n) to worker n.
Shared placement: workers hold the encoder; the master ships raw images (or dataset indices).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..bundle import digest
from ..coding.lagrange import Decoder
from ..coding.schemes import Scheme, check_workers, default_alphas
from ..export import PLACEMENTS, worker_arrays
from ..protocol.frames import pack_array


class CodedPlan:
    def __init__(self, model, info: dict[str, Any], N: int, placement: str = "encoded", wire_dtype: str = "f4"):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}")
        self.model, self.info = model.eval(), info
        self.scheme = Scheme.from_dict(info["scheme"])
        check_workers(self.scheme, N)
        self.N, self.placement, self.wire_dtype = N, placement, wire_dtype
        self.alphas = default_alphas(N)
        self.decoder = Decoder(self.alphas, self.scheme.betas(), self.scheme.R)
        self.arrays = worker_arrays(model, info, placement)
        self.digest = digest(self.arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in self.arrays.items()}

    @property
    def K(self) -> int:
        return self.scheme.K

    @property
    def R(self) -> int:
        return self.scheme.R

    @torch.inference_mode()
    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Per-worker compute fields for a batch of groups `images` (B, K, 28, 28) uint8."""
        if self.placement == "shared":
            shared = {"images": pack_array(images, "u1")}
            return [shared] * self.N
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        xt = self.model.encode(x, self.alphas).numpy()  # (B, N, 28, 28)
        extra = {}
        if self.scheme.computation == "hs":
            extra["v"] = pack_array(self.model.lambdas(x).numpy(), self.wire_dtype)  # same V_p for every worker
        return [{"x": pack_array(xt[:, n], self.wire_dtype), **extra} for n in range(self.N)]

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, K, 10) float64 logits from any R of {worker index: (B, 10)}."""
        return self.decoder.decode(results)
