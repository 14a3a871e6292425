"""A plain worker running the centralized CNN (Table 2's CNN-baseline) on whatever image it is sent.

ApproxIFER's workers run the unmodified centralized model on a Berrut combination of images; with
the CNN base that model needs convolutions, so this compute loads torch (only when a master sends
CNN weights: the MLP plain worker stays numpy-only). Arrays: the CentralizedCNN state dict under
the prefix "cnn.". This is the "cnn" compute kind (protocol/compute_spec.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..protocol import compute_spec
from ..protocol.compute_spec import ComputeSpec

PREFIX = "cnn."


def is_cnn(arrays: dict[str, np.ndarray]) -> bool:
    return any(k.startswith(PREFIX) for k in arrays)


def plain_compute(arrays: dict[str, np.ndarray]):
    """The plain-placement compute these arrays describe: the centralized CNN or the centralized MLP."""
    if is_cnn(arrays):
        return PlainCNNCompute(arrays)
    from .compute import PlainCompute

    return PlainCompute(arrays)


def plain_spec(arrays: dict[str, np.ndarray]) -> ComputeSpec:
    """The compute spec a plan sends with a centralized model's arrays: "cnn", or "mlp" with its widths."""
    if is_cnn(arrays):
        return compute_spec.cnn()
    from .compute import mlp_spec

    return mlp_spec(arrays)


class PlainCNNCompute:
    """x (B, 28, 28) float32 -> (B, 10) float32 logits of the centralized CNN, in fp32 on the CPU."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int = 256):
        try:
            import torch
        except ImportError:
            raise ConfigError("the CNN plain worker needs torch (pip install 'edgecc[ml]')") from None
        from ..nets.baselines import CentralizedCNN

        self.torch, self.batch = torch, batch
        state = {k[len(PREFIX):]: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()
                 if k.startswith(PREFIX)}
        self.model = CentralizedCNN().eval()
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"CNN worker weights do not fit the centralized CNN: {str(e)[:300]}") from None

    @classmethod
    def from_spec(cls, spec: ComputeSpec, arrays: dict[str, np.ndarray]) -> "PlainCNNCompute":
        return cls(arrays)  # the spec's shapes are the CNN's own (compute_spec checks in_shape [28, 28], out 10)

    def __call__(self, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        if v is not None:
            raise ConfigError("the plain CNN worker takes no v")
        out = []
        with self.torch.inference_mode():
            for i in range(0, x.shape[0], self.batch):
                xb = np.array(x[i : i + self.batch], dtype=np.float32)  # a copy: arrays from frames are read-only
                out.append(self.model(self.torch.from_numpy(xb)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


def cnn_arrays(model) -> dict[str, np.ndarray]:
    """The wire arrays of a CentralizedCNN for PlainCNNCompute."""
    return {PREFIX + k: v.detach().float().numpy() for k, v in model.state_dict().items()}
