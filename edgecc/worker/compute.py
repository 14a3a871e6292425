"""What a worker computes, numpy only: importing this never imports torch.

`AffineCompute` runs the "affine" and "affine-hs" compute kinds (protocol/compute_spec.py): AICC's
encoded placement, where the worker receives X̃_n = E(α_n) (and, for H_S, V_0..V_P) and applies the
collapsed affine map. `PlainCompute` runs the "mlp" kind: a centralized MLP on whatever image it is
sent (the uncoded/replication comparators, the learned code, ApproxIFER's MLP base; with act "quad",
the light master's degree-2 network on Lagrange-coded inputs). The kinds that
need torch live in `plain_cnn.py` ("cnn") and `shared_compute.py` ("aicc-shared").

Every compute class has `from_spec(spec, arrays)` (the worker's configure step) and is called with
the request's validated inputs in the order of `spec.inputs()`, returning (B, out) float32.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..protocol import compute_spec
from ..protocol.compute_spec import ComputeSpec
from ..protocol.images import PAPER_IMAGE, dims, pixels


class AffineCompute:
    """y = A·vec(S) + b with S = x ("affine": H_B) or S = Σ_p V_p ⊙ x^p ("affine-hs": H_S, degree P; with
    `maps` > 1, S holds that many maps, each from its own V_p and the same x)."""

    def __init__(self, spec: ComputeSpec, arrays: dict[str, np.ndarray]):
        if spec.kind not in ("affine", "affine-hs"):
            raise ConfigError(f"AffineCompute runs the affine kinds, not {spec.kind!r}")
        try:
            A, b = arrays["affine.weight"], arrays["affine.bias"]
        except KeyError as e:
            raise ConfigError(f"worker arrays lack {e}") from None
        self.P = spec["P"] if spec.kind == "affine-hs" else None
        self.maps = spec["maps"] if spec.kind == "affine-hs" else 1
        self.n, out = self.maps * math.prod(spec.in_shape), spec.out
        if A.shape != (out, self.n) or b.shape != (out,):
            raise ConfigError(f"affine map has shapes {A.shape}/{b.shape}, expected {(out, self.n)}/{(out,)}")
        self.At = np.ascontiguousarray(A.T, dtype=np.float32)  # (n, out): x @ At is one GEMM
        self.b = b.astype(np.float32)

    @classmethod
    def from_spec(cls, spec: ComputeSpec, arrays: dict[str, np.ndarray]) -> "AffineCompute":
        return cls(spec, arrays)

    def __call__(self, xt: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        """xt (B, *in_shape) float32, v (B, P+1, *in_shape) for H_S, or (B, P+1, maps, *in_shape) -> (B, out) float32."""
        if self.P is not None:
            if v is None:
                raise ConfigError("H_S needs V_p with every request")
            x = xt if self.maps == 1 else xt[:, None]  # every map reads the same encoded input
            s = v[:, -1]
            for p in range(self.P - 1, -1, -1):  # Horner's rule, as in nets/aicc.py
                s = s * x + v[:, p]
            xt = s
        return xt.reshape(xt.shape[0], self.n) @ self.At + self.b


class EncodedCompute(AffineCompute):
    """AICC's encoded-placement worker for an AICC `Scheme` (anything with `computation` and `P`): the
    master's calibration, evaluation and the benchmarks build the worker's map this way."""

    def __init__(self, scheme, arrays: dict[str, np.ndarray], image=PAPER_IMAGE, classes: int = 10):
        super().__init__(encoded_spec(scheme, image, classes), arrays)


def encoded_spec(scheme, image=PAPER_IMAGE, classes: int = 10) -> ComputeSpec:
    """The affine compute spec of an AICC `Scheme`'s encoded-placement workers."""
    if scheme.computation != "hs":
        return compute_spec.affine(dims(image), classes)
    return compute_spec.affine(dims(image), classes, P=scheme.P, maps=scheme.map_count)


class PlainCompute:
    """The "mlp" kind: a centralized MLP on raw images; arrays mlp.mlp.fc{1..L}.{weight,bias}. Between layers
    ReLU (act "relu"), or σ(h) = h + c ⊙ h² (act "quad", arrays mlp.mlp.c{1..L-1}: the light master's
    degree-2 network). Without `widths` the layers are read from the arrays; without `act`, "quad" when the
    arrays hold mlp.mlp.c1, else "relu"."""

    def __init__(self, arrays: dict[str, np.ndarray], widths: list[int] | None = None, act: str | None = None):
        count = len(widths) - 1 if widths is not None else len(_mlp_weight_shapes(arrays))
        self.act = act if act is not None else ("quad" if "mlp.mlp.c1" in arrays else "relu")
        if self.act not in compute_spec.MLP_ACTIVATIONS:
            raise ConfigError(f"MLP activation must be one of {', '.join(compute_spec.MLP_ACTIVATIONS)}, got {self.act!r}")
        try:
            self.layers = [(arrays[f"mlp.mlp.fc{i}.weight"].T.astype(np.float32), arrays[f"mlp.mlp.fc{i}.bias"].astype(np.float32))
                           for i in range(1, count + 1)]
        except KeyError as e:
            raise ConfigError(f"plain worker arrays lack {e}") from None
        if not self.layers:
            raise ConfigError("plain worker arrays hold no MLP layer (mlp.mlp.fc1.weight)")
        shapes = [w.shape for w, _ in self.layers]
        want = widths or [shapes[0][0], *(s[1] for s in shapes)]
        if shapes != list(zip(want[:-1], want[1:])) or any(b.shape != (w.shape[1],) for w, b in self.layers):
            raise ConfigError(f"plain worker MLP has shapes {shapes}, expected widths {want}")
        self.c: list[np.ndarray] = []
        if self.act == "quad":  # one c per hidden layer, of its width
            try:
                self.c = [arrays[f"mlp.mlp.c{i}"].astype(np.float32) for i in range(1, count)]
            except KeyError as e:
                raise ConfigError(f"plain worker arrays lack {e} (the quadratic activation's c)") from None
            got, need = [c.shape for c in self.c], [(w,) for w in want[1:-1]]
            if got != need:
                raise ConfigError(f"plain worker MLP's quadratic activations have shapes {got}, expected {need}")
        self.n = want[0]

    @classmethod
    def from_spec(cls, spec: ComputeSpec, arrays: dict[str, np.ndarray]) -> "PlainCompute":
        return cls(arrays, [math.prod(spec.in_shape), *spec["hidden"], spec.out], spec["act"])

    def __call__(self, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        h = x.reshape(x.shape[0], self.n)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = h + self.c[i] * (h * h) if self.c else np.maximum(h, 0.0)
        return h


def mlp_spec(arrays: dict[str, np.ndarray], image=PAPER_IMAGE) -> ComputeSpec:
    """The "mlp" compute spec of these arrays for images of `image` (C, H, W) (a plan sends it with them):
    widths read from the weights; act "quad" when they hold the quadratic activations' mlp.mlp.c1."""
    shapes = _mlp_weight_shapes(arrays)
    if not shapes or shapes[0][1] != pixels(image):
        raise ConfigError(f"an MLP of {'×'.join(map(str, image))} images needs mlp.mlp.fc1.weight of shape "
                          f"(h, {pixels(image)}), got {shapes[:1]}")
    return compute_spec.mlp([s[0] for s in shapes[:-1]], shapes[-1][0], dims(image),
                            "quad" if "mlp.mlp.c1" in arrays else "relu")


def _mlp_weight_shapes(arrays: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    """The shapes of the MLP's layer weights mlp.mlp.fc1.weight, fc2, ... that the arrays hold."""
    return [arrays[f"mlp.mlp.fc{i}.weight"].shape for i in range(1, 10) if f"mlp.mlp.fc{i}.weight" in arrays]
