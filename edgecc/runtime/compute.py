"""What a worker computes, numpy only: importing this never imports torch.

Encoded-only placement: the worker receives X̃_n = E(α_n) (and, for H_S, V_0..V_P) and applies
the collapsed affine map. Shared-dataset placement needs the encoder networks and lives in
`shared_compute.py`, which is the only worker module that loads torch.
"""

from __future__ import annotations

import numpy as np

from ..coding.schemes import Scheme
from ..errors import ConfigError


class EncodedCompute:
    """y = A·vec(S) + b with S = X̃ (H_B) or S = Σ_p V_p ⊙ X̃^p (H_S)."""

    def __init__(self, scheme: Scheme, arrays: dict[str, np.ndarray]):
        try:
            A, b = arrays["affine.weight"], arrays["affine.bias"]
        except KeyError as e:
            raise ConfigError(f"worker arrays lack {e}") from None
        if A.shape != (10, 784) or b.shape != (10,):
            raise ConfigError(f"affine map has shapes {A.shape}/{b.shape}, expected (10, 784)/(10,)")
        self.scheme = scheme
        self.At = np.ascontiguousarray(A.T, dtype=np.float32)  # (784, 10): x @ At is one GEMM
        self.b = b.astype(np.float32)

    def __call__(self, xt: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        """xt (B, 28, 28) float32, v (B, P+1, 28, 28) for H_S -> (B, 10) float32."""
        if self.scheme.computation == "hs":
            if v is None:
                raise ConfigError("H_S needs V_p with every request")
            s = v[:, -1]
            for p in range(self.scheme.P - 1, -1, -1):  # Horner's rule, as in nets/aicc.py
                s = s * xt + v[:, p]
            xt = s
        return xt.reshape(xt.shape[0], 784) @ self.At + self.b


class PlainCompute:
    """The comparators' worker: the centralized MLP (784-200-100-10, ReLU) on raw images."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        try:
            self.layers = [(arrays[f"mlp.mlp.fc{i}.weight"].T.astype(np.float32), arrays[f"mlp.mlp.fc{i}.bias"].astype(np.float32))
                           for i in (1, 2, 3)]
        except KeyError as e:
            raise ConfigError(f"plain worker arrays lack {e}") from None
        shapes = [w.shape for w, _ in self.layers]
        if shapes != [(784, 200), (200, 100), (100, 10)]:
            raise ConfigError(f"plain worker MLP has shapes {shapes}")

    def __call__(self, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        h = x.reshape(x.shape[0], 784)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < 2:
                h = np.maximum(h, 0.0)
        return h
