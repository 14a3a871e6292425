"""The learned code (Kosaian et al. [10], SPEC §4) as a runtime scheme: workers 0..k-1 run the frozen
base MLP on data image n of each group, worker k on the parity image the learned encoder makes from
all k. Any k answers decode: all data slots are the base model's own outputs; with one data slot
missing, the learned decoder rebuilds it from the others and the parity output (degraded mode,
approximate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DecodeError
from ..protocol.frames import pack_array
from .base import PlainWorkers, base_arrays, check_groups, kth_fastest, load_model_option


class LearnedCodePlan(PlainWorkers):
    """k data workers and one parity worker over the base MLP; any k of the k + 1 decode."""

    name = "learned-code"

    def __init__(self, model, info: dict[str, Any], wire_dtype: str = "f4"):
        if info["kind"] != "learned-code":
            raise ConfigError(f"a learned-code plan needs a learned-code model, got {info['kind']!r}")
        self.model, self.info = model.eval(), info
        self.k = int(info["code"]["k"])
        # the base MLP takes the learned-code model file's images: mlp_spec refuses weights of another size
        self._configure_plain(base_arrays(model.base, {"kind": "centralized-mlp"}), self.k, self.k + 1, wire_dtype, info)
        self.rebuilt_groups = 0  # groups answered in degraded mode (one data slot decoded)

    @property
    def need(self) -> str:
        return f"any {self.k} of {self.N} (one straggler)"

    @torch.inference_mode()
    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        check_groups(self, images)
        x = images.astype(np.float32) / 255.0
        parity = self.model.encoder(torch.from_numpy(x)).numpy()  # (B, *dims(image))
        return [{"x": pack_array(x[:, n], self.wire_dtype)} for n in range(self.k)] + [{"x": pack_array(parity, self.wire_dtype)}]

    def complete(self, answered) -> bool:
        return len(answered) >= self.k

    def oracle(self, delays) -> float | None:
        return kth_fastest(delays, self.k)

    def summary(self) -> dict[str, Any]:
        return {"rebuilt_groups": self.rebuilt_groups}

    @torch.inference_mode()
    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, k, classes) float64: the data workers' outputs, with at most one slot rebuilt by the decoder."""
        missing = [n for n in range(self.k) if n not in results]
        if not missing:
            return np.stack([results[n] for n in range(self.k)], axis=1).astype(np.float64)
        if len(missing) > 1 or self.k not in results:
            raise DecodeError(f"the learned code rebuilds one data slot from the other {self.k}; got workers {sorted(results)}")
        B = results[self.k].shape[0]
        outs = np.zeros((B, self.k + 1, self.classes), dtype=np.float32)  # the missing slot stays zero, as in training
        for n, y in results.items():
            outs[:, n] = y
        rebuilt = self.model.decoder(torch.from_numpy(outs)).numpy().astype(np.float64)  # (B, k, classes)
        out = outs[:, : self.k].astype(np.float64)
        out[:, missing[0]] = rebuilt[:, missing[0]]
        self.rebuilt_groups += B
        return out

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits, report): the workers decoded from; "rebuilt" names a data slot the learned decoder rebuilt."""
        missing = [n for n in range(self.k) if n not in results]
        logits = self.decode(results)
        used = list(range(self.k)) if not missing else sorted(n for n in results if n <= self.k)
        return logits, {"subset": used, "rebuilt": missing[0] if missing else None}


def build(N: int, K: int, *, model, wire_dtype: str) -> LearnedCodePlan:
    """The registry's builder: k + 1 workers, the run's first (K must be the model's k)."""
    plan = LearnedCodePlan(*load_model_option(model, ("learned-code",), "learned-code"), wire_dtype)
    if plan.k != K:
        raise ConfigError(f"the learned-code model groups k={plan.k} images; the run has K={K}")
    if plan.N > N:
        raise ConfigError(f"the learned code needs {plan.N} workers, the run has {N}")
    return plan
