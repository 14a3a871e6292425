"""The systematic encoder (ours, not the paper's) as an AICC model: no learned Γ, no training.

The master runs a centralized CNN up to its last hidden layer, φ(x) (100 features: the ReLU after Base-MLP's
fc2), and for a group of K images encodes E(α) = Σ_k ℓ_k(α) φ(x_k), ℓ_k the Lagrange basis on the K points β_k
the scheme records (Chebyshev nodes). Worker n computes H_B = the CNN's last affine layer fc3 on E(α_n). H_B
is affine and Σ_k ℓ_k = 1, so D(α) = H_B(E(α)) = Σ_k ℓ_k(α) fc3(φ(x_k)) is a polynomial of degree K−1 in α:
any R = K answers decode D(β_k) = the CNN's own logits for image k (benchmarks/systematic_encoder.py measured
it on the test set: 91.83%, the CNN's accuracy, from every 8 of 9 workers).

The coded features travel zero-padded to the image's shape, so the worker runs AICC's collapsed affine map
(export.worker_arrays, worker/compute.EncodedCompute) unchanged: a classes × CHW matrix whose columns past the
features are zero. The price: CHW floats up per worker instead of 100 (784 for Fashion-MNIST).

The module has AICC's interface (nets/aicc.AICC) as the runtime uses it: coefficients (here the K padded
feature vectors, the polynomial's values at β: its coefficients in the Lagrange basis), evaluate_encoder,
encoder_matrix, encode, compute, hb and forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..coding.lagrange import lagrange_basis
from ..coding.schemes import SYSTEMATIC, SYSTEMATIC_LABEL, Scheme
from ..errors import ConfigError
from ..protocol.images import PAPER_IMAGE, dims, pixels
from .aicc import PRECISIONS
from .baselines import CentralizedCNN


class PaddedHead(nn.Module):
    """H_B: the base's last affine layer on the first F entries of a coded input (B, n, *dims) -> (B, n, classes);
    the other entries are the zero padding and do not count."""

    def __init__(self, fc: nn.Linear, image: Sequence[int]):
        super().__init__()
        self.fc, self.image = fc, tuple(image)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        nd = len(dims(self.image))
        flat = xt.reshape(*xt.shape[: xt.dim() - nd], pixels(self.image))
        return self.fc(flat[..., : self.fc.in_features])


class SystematicAICC(nn.Module):
    """The systematic encoder around a centralized CNN (`cnn`, its weights as trained: the model file holds them)."""

    def __init__(self, scheme: Scheme, image: Sequence[int] = PAPER_IMAGE, classes: int = 10):
        super().__init__()
        if scheme.encoder != SYSTEMATIC:
            raise ConfigError(f"SystematicAICC runs the {SYSTEMATIC_LABEL}, not encoder {scheme.encoder!r}")
        self.scheme, self.image, self.classes = scheme, tuple(image), classes
        self.cnn = CentralizedCNN(image=image, classes=classes)
        if pixels(self.image) < self.features:
            raise ConfigError(f"the {SYSTEMATIC_LABEL} sends {self.features} features padded to the image's "
                              f"{pixels(self.image)} values: images of {'×'.join(map(str, self.image))} are too small")
        self._betas = np.asarray(scheme.betas(), dtype=np.float64)  # the decode's β: the scheme's own, float64

    @property
    def features(self) -> int:
        return self.cnn.mlp.fc3.in_features

    @property
    def hb(self) -> nn.Module:
        # built on demand, not registered: the model file holds fc3 once, under cnn.
        return PaddedHead(self.cnn.mlp.fc3, self.image)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN up to its last hidden layer: (B, *dims) -> (B, F), as CentralizedCNN.forward computes it."""
        B, mlp = x.shape[0], self.cnn.mlp
        h = torch.relu(self.cnn.stack(x.reshape(B, *self.image))).reshape(B, mlp.pix)
        return torch.relu(mlp.fc2(torch.relu(mlp.fc1(h))))

    def coefficients(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """φ(x_k) zero-padded to the image's shape: (B, K, *dims) -> (B, K, *dims) float32, E's values at β.
        "bf16" runs φ under bf16 autocast (as AICC's Γ); the result is float32 either way."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        B, K = x.shape[:2]
        flat = x.reshape(B * K, *x.shape[2:])
        if precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                f = self.phi(flat).float()
        else:
            f = self.phi(flat)
        out = torch.zeros(B * K, pixels(self.image), dtype=f.dtype, device=f.device)
        out[:, : self.features] = f
        return out.reshape(B, K, *dims(self.image))

    def lambdas(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        raise ConfigError(f"the {SYSTEMATIC_LABEL} is H_B: it has no V_p")

    def encoder_matrix(self, points: Sequence[float]) -> np.ndarray:
        """(n, K) float64: E(points) = this matrix @ the coefficients, ℓ_k(point) on the scheme's β."""
        return lagrange_basis(self._betas, np.asarray(points, dtype=np.float64))

    def evaluate_encoder(self, coef: torch.Tensor, points: Sequence[float] | torch.Tensor) -> torch.Tensor:
        # The Lagrange weights in float64, then rounded once to the features' dtype (the benchmark's numerics);
        # at β they are exactly the identity, so E(β_k) = φ(x_k) bit for bit.
        pts = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else points
        L = torch.from_numpy(self.encoder_matrix(pts)).to(dtype=coef.dtype, device=coef.device)
        return torch.einsum("nk,bk...->bn...", L, coef)

    def encode(self, x: torch.Tensor, points: Sequence[float] | torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """E(α) at each point: (B, K, *dims) -> (B, n, *dims)."""
        return self.evaluate_encoder(self.coefficients(x, precision), points)

    def compute(self, xt: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        return self.hb(xt)

    def forward(self, x: torch.Tensor, points: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """D(point) = H_B(E(point)) (default: β_1..β_K, the CNN's logits): (B, K, *dims) -> (B, n, classes)."""
        return self.at_points(self.coefficients(x), None, points)

    def at_points(self, coef: torch.Tensor, v: torch.Tensor | None = None,
                  points: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """D(point) from the features already computed (AICC.at_points)."""
        return self.compute(self.evaluate_encoder(coef, self._betas if points is None else points))

    @classmethod
    def from_base(cls, cnn: CentralizedCNN, K: int, image: Sequence[int] = PAPER_IMAGE, classes: int = 10) -> SystematicAICC:
        """The systematic encoder around a trained centralized CNN (its weights copied), K images per group."""
        if not isinstance(cnn, CentralizedCNN):
            raise ConfigError(f"the {SYSTEMATIC_LABEL} is built on a centralized CNN, not a {type(cnn).__name__}")
        model = cls(systematic_scheme(K), image, classes)
        model.cnn.load_state_dict(cnn.state_dict())
        return model.eval()


def systematic_scheme(K: int) -> Scheme:
    """K images per group, G = K−1, H_B, the Chebyshev β's and the workers' cos(nπ/(N−1)) recorded."""
    from ..coding.schemes import chebyshev_points

    if not isinstance(K, int) or isinstance(K, bool) or K < 2:
        raise ConfigError(f"the {SYSTEMATIC_LABEL} needs an integer K >= 2 images per group, got K={K!r}")
    return Scheme(K=K, G=K - 1, P=1, computation="hb", encoder=SYSTEMATIC, compute_arch="mlp",
                  **chebyshev_points(K))
