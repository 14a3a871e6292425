"""Centralized (not distributable) baselines of Table 2: Base-MLP and CL stack + Base-MLP, with ReLU."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import BaseMLP, DilatedStack


class CentralizedMLP(nn.Module):
    """MLP-baseline: Base-MLP with ReLU. x (B, 28, 28) -> (B, 10)."""

    def __init__(self):
        super().__init__()
        self.mlp = BaseMLP(activation=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class CentralizedCNN(nn.Module):
    """CNN-baseline: CL stack (1 input channel, width 40) with ReLU, then Base-MLP with ReLU."""

    def __init__(self, width: int = 40):
        super().__init__()
        self.stack = DilatedStack(1, width, activation=True)
        self.mlp = BaseMLP(activation=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        return self.mlp(torch.relu(self.stack(x.reshape(B, 1, 28, 28))).reshape(B, 28, 28))
