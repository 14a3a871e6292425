"""Shared-dataset placement (Remark 1), the "aicc-shared" compute kind: the worker holds the images
and runs E(α_n) and H itself.

This is the only worker module that needs torch. The encoder (and Λ for H_S) runs in torch; H's
affine part is the same collapsed map the encoded-only worker applies (1.6x fewer FLOPs than the
uncollapsed CNN H_B).
"""

from __future__ import annotations

import numpy as np

from ..coding.schemes import Scheme
from ..errors import ConfigError
from ..protocol import compute_spec
from ..protocol.compute_spec import IMAGE, ComputeSpec
from ..protocol.images import image_of
from .compute import AffineCompute, encoded_spec

SCHEME_KEYS = ("K", "G", "P", "computation", "encoder", "compute_arch")  # the AICC Scheme inside the spec
OPTIONAL_SCHEME_KEYS = ("coef_width", "maps")  # ... and its fields a spec carries only where the scheme sets them


class SharedCompute:
    def __init__(self, scheme: Scheme, arrays: dict[str, np.ndarray], alpha: float, in_shape=IMAGE, out: int = 10):
        import torch

        from ..nets import AICC

        self.torch = torch
        self.alpha = float(alpha)
        self.scheme = scheme
        self.model = AICC(scheme, image_of(in_shape), out).eval()
        state = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"shared-dataset weights do not fit the scheme: {str(e)[:300]}") from None
        self.affine = AffineCompute(encoded_spec(scheme, image_of(in_shape), out), arrays)

    @classmethod
    def from_spec(cls, spec: ComputeSpec, arrays: dict[str, np.ndarray]) -> "SharedCompute":
        scheme = {k: spec[k] for k in SCHEME_KEYS} | {k: spec.fields[k] for k in OPTIONAL_SCHEME_KEYS if k in spec.fields}
        return cls(Scheme.from_dict(scheme), arrays, spec["alpha"], spec.in_shape, spec.out)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images (B, K, *in_shape) uint8 -> (B, out) float32 = H(E(α_n))."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images.astype(np.float32) / 255.0)
            xt = self.model.encode(x, [self.alpha])[:, 0].numpy()
            v = self.model.lambdas(x).numpy() if self.scheme.computation == "hs" else None
        return self.affine(xt, v)

