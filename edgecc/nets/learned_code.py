"""The learned-code baseline [10] (Kosaian, Rashmi, Venkataraman; SPEC §4), for k data images + r=1 parity.

The encoder makes one parity image from the k images; all k+1 workers run the same frozen,
pre-trained base model (Base-MLP with ReLU); the decoder MLP rebuilds the k outputs from the k+1
output vectors with the missing one zeroed. It tolerates exactly one straggler. Accuracy is measured
in degraded mode: on the erased data slot only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..protocol.images import PAPER_IMAGE, dims, pixels
from .blocks import DilatedStack


class ParityEncoder(nn.Module):
    """(B, k, *dims) -> (B, *dims). mlp: Linear(k·CHW→k·CHW), ReLU, Linear(k·CHW→CHW); conv: CL stack, width 20·k
    (the paper's images: CHW = 784)."""

    def __init__(self, arch: str, k: int, image: Sequence[int] = PAPER_IMAGE):
        super().__init__()
        self.arch, self.k, self.image, self.dims = arch, k, tuple(image), dims(image)
        pix = pixels(image)
        if arch == "mlp":
            self.net = nn.Sequential(nn.Linear(k * pix, k * pix), nn.ReLU(), nn.Linear(k * pix, pix))
        elif arch == "cl":
            self.net = DilatedStack(k * image[0], 20 * k, out_ch=image[0])
        else:
            raise ValueError(f"unknown encoder architecture {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.arch == "mlp":
            return self.net(x.reshape(B, -1)).reshape(B, *self.dims)
        c, h, w = self.image
        x = x.reshape(B, self.k * c, h, w).contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(B, *self.dims)


class OutputDecoder(nn.Module):
    """(B, k+1, 10) with the missing slot zeroed -> (B, k, 10)."""

    def __init__(self, k: int, classes: int = 10):
        super().__init__()
        n = (k + 1) * classes
        self.k, self.classes = k, classes
        self.net = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, k * classes), nn.ReLU(), nn.Linear(k * classes, k * classes))

    def forward(self, outs: torch.Tensor) -> torch.Tensor:
        return self.net(outs.reshape(outs.shape[0], -1)).reshape(-1, self.k, self.classes)


class LearnedCode(nn.Module):
    """Encoder + decoder around a frozen base model (kept as a submodule so one file holds everything)."""

    def __init__(self, arch: str, k: int, base: nn.Module, image: Sequence[int] = PAPER_IMAGE, classes: int = 10):
        super().__init__()
        self.k, self.image, self.classes = k, tuple(image), classes
        self.encoder = ParityEncoder(arch, k, image)
        self.decoder = OutputDecoder(k, classes)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, erased: torch.Tensor) -> torch.Tensor:
        """x (B, k, *dims), erased (B,) index of the unavailable data slot -> decoded (B, k, classes)."""
        B, k = x.shape[:2]
        parity = self.encoder(x)  # (B, *dims)
        outs = self.base(torch.cat([x, parity[:, None]], dim=1).reshape(B * (k + 1), *dims(self.image)))
        outs = outs.reshape(B, k + 1, self.classes)
        mask = torch.ones(B, k + 1, 1, device=x.device, dtype=outs.dtype)
        mask[torch.arange(B), erased] = 0
        return self.decoder(outs * mask)
