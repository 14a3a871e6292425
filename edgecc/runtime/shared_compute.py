"""Shared-dataset placement (Remark 1): the worker holds the images and runs E(α_n) and H itself.

This is the only worker module that needs torch.
"""

from __future__ import annotations

import numpy as np

from ..coding.schemes import Scheme
from ..errors import ConfigError


class SharedCompute:
    def __init__(self, scheme: Scheme, arrays: dict[str, np.ndarray], alpha: float):
        import torch

        from ..nets import AICC

        self.torch = torch
        self.alpha = float(alpha)
        self.model = AICC(scheme).eval()
        state = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"shared-dataset weights do not fit the scheme: {str(e)[:300]}") from None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images (B, K, 28, 28) uint8 -> (B, 10) float32 = H(E(α_n))."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images.astype(np.float32) / 255.0)
            return self.model(x, [self.alpha])[:, 0].numpy()
