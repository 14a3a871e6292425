"""Centralized (not distributable) baselines of Table 2: Base-MLP and CL stack + Base-MLP, with ReLU."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..protocol.images import PAPER_IMAGE, dims
from .blocks import BaseMLP, DilatedStack


class CentralizedMLP(nn.Module):
    """MLP-baseline: Base-MLP with ReLU. x (B, *dims) -> (B, classes)."""

    def __init__(self, image: Sequence[int] = PAPER_IMAGE, classes: int = 10):
        super().__init__()
        self.image = tuple(image)
        self.mlp = BaseMLP(activation=True, classes=classes, image=image)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class CentralizedCNN(nn.Module):
    """CNN-baseline: CL stack (the image's channels in and out, width 40) with ReLU, then Base-MLP with ReLU."""

    def __init__(self, width: int = 40, image: Sequence[int] = PAPER_IMAGE, classes: int = 10):
        super().__init__()
        self.image = tuple(image)
        self.stack = DilatedStack(image[0], width, activation=True, out_ch=image[0])
        self.mlp = BaseMLP(activation=True, classes=classes, image=image)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        return self.mlp(torch.relu(self.stack(x.reshape(B, *self.image))).reshape(B, *dims(self.image)))
