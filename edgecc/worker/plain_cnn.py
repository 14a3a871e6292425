"""Plain workers that run a convolutional centralized model on whatever image they are sent: the
centralized CNN (Table 2's CNN-baseline, the "cnn" compute kind) or ResNet-18 ("resnet18").

ApproxIFER's, replication's and uncoded's workers run the unmodified centralized model on a
(combination of) image(s); with a convolutional base that model needs torch, so these computes load
it (only when a master sends such weights: the MLP plain worker stays numpy-only). Arrays: the
model's state dict under "cnn." or "resnet."; the network is built for the spec's in_shape and out.
`TorchModelCompute` runs any torch network so, the worker operator's own base too (worker/user_base.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..protocol import compute_spec
from ..protocol.compute_spec import ComputeSpec
from ..protocol.images import PAPER_IMAGE, dims, image_of

PREFIX = "cnn."
RESNET_PREFIX = "resnet."


def is_cnn(arrays: dict[str, np.ndarray]) -> bool:
    return any(k.startswith(PREFIX) for k in arrays)


def is_resnet(arrays: dict[str, np.ndarray]) -> bool:
    return any(k.startswith(RESNET_PREFIX) for k in arrays)


def plain_compute(arrays: dict[str, np.ndarray], image=PAPER_IMAGE, classes: int = 10):
    """The plain-placement compute these arrays describe: ResNet-18, the centralized CNN or MLP."""
    if is_resnet(arrays):
        return PlainTorchCompute("resnet18", arrays, image, classes)
    if is_cnn(arrays):
        return PlainTorchCompute("cnn", arrays, image, classes)
    from .compute import PlainCompute

    return PlainCompute(arrays)


def plain_spec(arrays: dict[str, np.ndarray], image=PAPER_IMAGE, classes: int = 10) -> ComputeSpec:
    """The compute spec a plan sends with a centralized model's arrays: "resnet18", "cnn", or "mlp" with its widths."""
    if is_resnet(arrays):
        return compute_spec.resnet18(dims(image), classes)
    if is_cnn(arrays):
        return compute_spec.cnn(dims(image), classes)
    from .compute import mlp_spec

    return mlp_spec(arrays, image)


class TorchModelCompute:
    """x (B, *in_shape) float32 -> (B, classes) float32 logits of a torch network in eval mode, fp32 on the CPU,
    in inference mode, `batch` groups at a time: a plain worker's computation, whatever the network."""

    def __init__(self, model, classes: int, batch: int = 256):
        import torch

        self.torch, self.model, self.classes, self.batch = torch, model, classes, batch

    def __call__(self, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        if v is not None:
            raise ConfigError("a plain worker takes no v")
        out = []
        with self.torch.inference_mode():
            for i in range(0, x.shape[0], self.batch):
                xb = np.array(x[i : i + self.batch], dtype=np.float32)  # a copy: arrays from frames are read-only
                out.append(self.model(self.torch.from_numpy(xb)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.classes), np.float32)


class PlainTorchCompute(TorchModelCompute):
    """The centralized CNN or ResNet-18, built for the spec's in_shape and out, with the weights a master sent."""

    def __init__(self, kind: str, arrays: dict[str, np.ndarray], image=PAPER_IMAGE, classes: int = 10, batch: int = 256):
        try:
            import torch
        except ImportError:
            raise ConfigError(f"the {kind!r} plain worker needs torch (pip install 'edgecc[ml]')") from None
        if kind == "resnet18":
            from ..nets.resnet import ResNet18

            prefix, model = RESNET_PREFIX, ResNet18(tuple(image), classes)
        else:
            from ..nets.baselines import CentralizedCNN

            prefix, model = PREFIX, CentralizedCNN(image=tuple(image), classes=classes)
        super().__init__(model, classes, batch)
        self.kind = kind
        # integer buffers (batch-norm's step count) travel as f4 like every array; cast back to their dtype
        dtypes = {k: v.dtype for k, v in self.model.state_dict().items()}
        state = {k[len(prefix):]: torch.from_numpy(np.array(v, dtype=np.float32)).to(dtypes.get(k[len(prefix):], torch.float32))
                 for k, v in arrays.items() if k.startswith(prefix)}
        self.model.eval()
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"{kind} worker weights do not fit a {kind} of {'×'.join(map(str, image))} images and "
                              f"{classes} classes: {str(e)[:300]}") from None

    @classmethod
    def from_spec(cls, spec: ComputeSpec, arrays: dict[str, np.ndarray]) -> "PlainTorchCompute":
        return cls(spec.kind, arrays, image_of(spec.in_shape), spec.out)


def cnn_arrays(model) -> dict[str, np.ndarray]:
    """The wire arrays of a CentralizedCNN for the "cnn" kind."""
    return {PREFIX + k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def resnet_arrays(model) -> dict[str, np.ndarray]:
    """The wire arrays of a ResNet18 for the "resnet18" kind (batch-norm buffers included)."""
    return {RESNET_PREFIX + k: v.detach().float().numpy() for k, v in model.state_dict().items()}
