"""The learned-code baseline [10] (Kosaian, Rashmi, Venkataraman; SPEC §4), for k data images + r=1 parity.

The encoder makes one parity image from the k images; all k+1 workers run the same frozen,
pre-trained base model (Base-MLP with ReLU); the decoder MLP rebuilds the k outputs from the k+1
output vectors with the missing one zeroed. It tolerates exactly one straggler. Accuracy is measured
in degraded mode: on the erased data slot only.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import PIX, DilatedStack


class ParityEncoder(nn.Module):
    """(B, k, 28, 28) -> (B, 28, 28). mlp: Linear(k·784→k·784), ReLU, Linear(k·784→784); conv: CL stack, width 20·k."""

    def __init__(self, arch: str, k: int):
        super().__init__()
        self.arch = arch
        if arch == "mlp":
            self.net = nn.Sequential(nn.Linear(k * PIX, k * PIX), nn.ReLU(), nn.Linear(k * PIX, PIX))
        elif arch == "cl":
            self.net = DilatedStack(k, 20 * k)
        else:
            raise ValueError(f"unknown encoder architecture {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.arch == "mlp":
            return self.net(x.reshape(B, -1)).reshape(B, 28, 28)
        return self.net(x.contiguous(memory_format=torch.channels_last)).reshape(B, 28, 28)


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

    def __init__(self, arch: str, k: int, base: nn.Module):
        super().__init__()
        self.k = k
        self.encoder = ParityEncoder(arch, k)
        self.decoder = OutputDecoder(k)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, erased: torch.Tensor) -> torch.Tensor:
        """x (B, k, 28, 28), erased (B,) index of the unavailable data slot -> decoded (B, k, 10)."""
        B, k = x.shape[:2]
        parity = self.encoder(x)  # (B, 28, 28)
        outs = self.base(torch.cat([x, parity[:, None]], dim=1).reshape(B * (k + 1), 28, 28)).reshape(B, k + 1, 10)
        mask = torch.ones(B, k + 1, 1, device=x.device, dtype=outs.dtype)
        mask[torch.arange(B), erased] = 0
        return self.decoder(outs * mask)
