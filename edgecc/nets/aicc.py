"""The AICC model: encoder E(α) = Σ_g Γ_g(X) α^g and worker computation H_S or H_B.

Shapes: x (B, K, *dims) images of one group per row; encoded inputs (B, n, *dims) at n points;
logits (B, n, classes). dims is (H, W) for gray images, (C, H, W) for colour (protocol/images.py);
the paper's are 28 × 28 gray. Training evaluates D(β_k) = H(E(β_k)) directly; the distributed path evaluates
H(E(α_n)) on workers and interpolates (edgecc.coding.lagrange).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..coding.schemes import Scheme
from ..protocol.images import PAPER_IMAGE, dims
from .blocks import BaseMLP, CoefNets, DilatedStack


def powers(points: torch.Tensor, degree: int) -> torch.Tensor:
    """Vandermonde matrix (n, degree+1): points[i] ** g."""
    return points.unsqueeze(1) ** torch.arange(degree + 1, device=points.device, dtype=points.dtype)


PRECISIONS = ("fp32", "bf16")


def encode_precision(requested: str = "auto") -> str:
    """The master's encoder precision. "auto": bf16 where the CPU has native bf16 kernels, else fp32.
    Measured on a 2-core AVX-512 VM, one thread: the CL encoder 1.5x faster for one group and 2.2x for
    64 (default model 88.40 -> 88.36%); the MLP encoder, with its weights cast once and kept, 1.2x for
    one group and 1.8x for 64 (mlp+mlp-hb 84.93 -> 84.96%), and half the bytes through the cache."""
    return resolve_precision(requested, "cpu")


def resolve_precision(requested: str = "auto", device: str = "cpu") -> str:
    """"fp32" or "bf16" as given; "auto": bf16 where `device` runs it natively, else fp32 (the master's
    encoder and training both resolve it here)."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {('auto', *PRECISIONS)}, got {requested!r}")
    return requested


def native_bf16(device: str = "cpu") -> bool:
    """Whether `device` runs bf16 matmuls and convolutions natively (CPUs: AVX-512 BF16 or AMX). Elsewhere
    torch emulates them: a training step 5-13x slower than in fp32 on an AVX2-only EPYC (README, the training
    precision paragraph), so "auto" must not pick bf16 there."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _bf16(precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16"


def omega_image(scheme: Scheme, image: Sequence[int]) -> tuple[int, int, int]:
    """The (C, H, W) Ω of H_S reads: the image's, or its `maps` maps as maps·C channels."""
    c, h, w = image
    return (scheme.map_count * c, h, w)


class HB(nn.Module):
    """Affine worker computation on the encoded input only: [CL stack without ReLU] + Base-MLP without ReLU."""

    def __init__(self, scheme: Scheme, image: Sequence[int] = PAPER_IMAGE, classes: int = 10):
        super().__init__()
        self.image = tuple(image)
        c = image[0]
        self.stack = DilatedStack(c, 20 * scheme.K, activation=False, out_ch=c) if scheme.compute_arch == "cl" else None
        self.omega = BaseMLP(activation=False, classes=classes, image=image)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        # xt: (B, n, *dims) -> (B, n, classes)
        if self.stack is not None:
            B, n = xt.shape[:2]
            xt = xt.reshape(B * n, *self.image)
            # Channels-last only for gray images, where it was measured faster: torch 2.13's oneDNN kills
            # the process (SIGSEGV) in the bf16 backward pass of this activation-free stack in channels-last
            # with 3 output channels (seen at 32×32 with 16 images on an AVX-512 BF16 CPU), so colour
            # images stay in the default layout (and train in fp32 on the CPU: train.py).
            if self.image[0] == 1:
                xt = xt.contiguous(memory_format=torch.channels_last)
            xt = self.stack(xt).reshape(B, n, *dims(self.image))
        return self.omega(xt)


class AICC(nn.Module):
    """Γ_0..Γ_G (encoder), Λ_0..Λ_P (H_S only) and Ω or the H_B network."""

    def __init__(self, scheme: Scheme, image: Sequence[int] = PAPER_IMAGE, classes: int = 10):
        super().__init__()
        self.scheme, self.image, self.classes = scheme, tuple(image), classes
        s = scheme
        self.gamma = CoefNets(s.encoder, s.K, s.G + 1, image, s.width)
        if s.computation == "hs":
            self.lam = CoefNets(s.compute_arch, s.K, s.P + 1, image, s.width, maps=s.map_count)
            self.omega = BaseMLP(activation=False, classes=classes, image=omega_image(s, image))
        else:
            self.hb = HB(s, image, classes)
        self.register_buffer("betas", torch.tensor(s.betas(), dtype=torch.float32), persistent=False)

    # -- the pieces, as the runtime places them -------------------------------------------------
    # `precision` "bf16" runs the coefficient networks under bf16 autocast (as training does) and returns
    # float32. The α-polynomial is always evaluated in float32 from those coefficients, so every worker's
    # input stays on one polynomial and decoding stays exact however the coefficients were rounded.
    def coefficients(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """C_g = Γ_g(X): (B, K, *dims) -> (B, G+1, *dims)."""
        if _bf16(precision):
            return self.gamma.forward_bf16(x)
        return self.gamma(x)  # (inside training's autocast this is bf16, as before)

    def lambdas(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """V_p = Λ_p(X): (B, K, *dims) -> (B, P+1, *dims), or (B, P+1, maps, *dims) with several maps. H_S only."""
        if _bf16(precision):
            return self.lam.forward_bf16(x)
        return self.lam(x)

    def encode(self, x: torch.Tensor, points: Sequence[float] | torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """E(α) at each point: (B, K, *dims) -> (B, n, *dims)."""
        return self.evaluate_encoder(self.coefficients(x, precision), points)

    def evaluate_encoder(self, coef: torch.Tensor, points: Sequence[float] | torch.Tensor) -> torch.Tensor:
        pts = torch.as_tensor(points, dtype=coef.dtype, device=coef.device)
        vand = powers(pts, self.scheme.G)  # (n, G+1)
        return torch.einsum("ng,bg...->bn...", vand, coef)

    def encoder_matrix(self, points: Sequence[float]) -> np.ndarray:
        """(n, G+1) float64: E(points) = this matrix @ the coefficients C_g (the powers of each point). The
        master's error bound evaluates E with it in float64 (schemes/aicc.result_errors)."""
        return np.vander(np.asarray(points, np.float64), self.scheme.G + 1, increasing=True)

    def compute(self, xt: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Worker computation H on encoded inputs xt (B, n, *dims); v = Λ(X) (B, P+1, *dims) for H_S."""
        if self.scheme.computation == "hb":
            return self.hb(xt)
        if v is None:
            raise ValueError("H_S needs the coefficients V_p = Λ_p(X)")
        # Σ_p V_p ⊙ xt^p, by Horner's rule in xt: ((V_P xt + V_{P-1}) xt + ...) + V_0. With several maps every
        # map reads the same xt: xt (B, n, 1, *dims) against V_p (B, 1, maps, *dims).
        maps = self.scheme.map_count
        x = xt if maps == 1 else xt.unsqueeze(2)
        s = v[:, None, -1].expand(*x.shape[:2], *v.shape[2:])
        for p in range(self.scheme.P - 1, -1, -1):
            s = s * x + v[:, None, p]
        return self.omega(s.reshape(*xt.shape[:2], *dims(omega_image(self.scheme, self.image))))

    # -- training / direct evaluation ----------------------------------------------------------
    def forward(self, x: torch.Tensor, points: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """D(point) = H(E(point)) for each point (default: β_1..β_K): (B, K, *dims) -> (B, n, classes)."""
        return self.at_points(self.coefficients(x), self.lambdas(x) if self.scheme.computation == "hs" else None, points)

    def at_points(self, coef: torch.Tensor, v: torch.Tensor | None = None,
                  points: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """D(point) from coefficients already computed (C_g, and V_p for H_S): forward without running the
        encoder networks again, for a caller that also needs the coefficients (evaluate)."""
        return self.compute(self.evaluate_encoder(coef, self.betas if points is None else points), v)
