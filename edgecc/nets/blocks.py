"""Building blocks of Table 1 (SPEC §2).

`CoefNets` runs n independent coefficient networks (Γ_0..Γ_G, Λ_0..Λ_P) on the same K images.
The MLP form is one batched matmul over the n networks. The CL form stays n separate stacks in
channels-last layout: measured on a 2-core AVX-512 CPU, a grouped convolution (groups = n) was
1.2-2.8x slower than separate convolutions, and channels-last made bf16 convolutions ~1.4x faster.
"""

from __future__ import annotations

import math

import torch
from torch import nn

M = 28  # image side
PIX = M * M
DILATIONS = (1, 1, 2, 4, 8, 1)  # the six 3×3 layers of the CL stack; padding = dilation keeps 28×28


class DilatedStack(nn.Module):
    """The CL stack: six 3×3 convs with DILATIONS (ReLU after each), then a 1×1 conv to one channel.

    in: (B, in_ch, 28, 28) -> out: (B, 1, 28, 28). With `activation=False` it is affine (CNN-H_B).
    """

    def __init__(self, in_ch: int, width: int, activation: bool = True):
        super().__init__()
        self.activation = activation
        layers, c = [], in_ch
        for d in DILATIONS:
            layers.append(nn.Conv2d(c, width, 3, padding=d, dilation=d))
            c = width
        self.convs = nn.ModuleList(layers)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.activation:
                x = torch.relu(x)
        return self.head(x)


class GroupedLinear(nn.Module):
    """n independent Linear(in→out) layers applied to n inputs: (B, n, in) -> (B, n, out)."""

    def __init__(self, n: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(n, fan_out))
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, per network
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias


class CoefNets(nn.Module):
    """n coefficient networks of one architecture, each mapping K images to one 28×28 matrix.

    x: (B, K, 28, 28) -> (B, n, 28, 28)
    mlp: Linear(K·784→K·784), ReLU, Linear(K·784→784).  cl: DilatedStack(K channels, width 20·K).
    """

    def __init__(self, arch: str, K: int, n: int):
        super().__init__()
        self.arch, self.K, self.n = arch, K, n
        if arch == "mlp":
            self.fc1 = GroupedLinear(n, K * PIX, K * PIX)
            self.fc2 = GroupedLinear(n, K * PIX, PIX)
        elif arch == "cl":
            self.stacks = nn.ModuleList(DilatedStack(K, 20 * K) for _ in range(n))
        else:
            raise ValueError(f"unknown architecture {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.arch == "mlp":
            h = x.reshape(B, 1, -1).expand(B, self.n, self.K * PIX)
            return self.fc2(torch.relu(self.fc1(h))).reshape(B, self.n, M, M)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.cat([stack(x) for stack in self.stacks], dim=1)

    @torch.no_grad()
    def forward_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """Inference in bf16 with float32 output. The MLP's weights are cast once and kept (autocast would
        cast all ~30 MB on every call, which costs more than a one-group GEMV); the CL stacks run under autocast."""
        if self.arch != "mlp":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self(x).float()
        key = tuple((p.data_ptr(), p._version) for p in (self.fc1.weight, self.fc2.weight))
        if getattr(self, "_bf16", (None,))[0] != key:  # training (or loading) changed the weights
            self._bf16 = (key, self.fc1.weight.to(torch.bfloat16), self.fc2.weight.to(torch.bfloat16))
        _, w1, w2 = self._bf16
        B = x.shape[0]
        h = x.reshape(B, 1, -1).expand(B, self.n, self.K * PIX).to(torch.bfloat16)
        h = torch.relu(torch.einsum("bni,nio->bno", h, w1).float() + self.fc1.bias)
        y = torch.einsum("bni,nio->bno", h.to(torch.bfloat16), w2).float() + self.fc2.bias
        return y.reshape(B, self.n, M, M)


class BaseMLP(nn.Module):
    """784 → 200 → 100 → 10; with activation=False it is the affine Ω / MLP-H_B."""

    def __init__(self, activation: bool = False, l1: int = 200, l2: int = 100, classes: int = 10):
        super().__init__()
        self.activation = activation
        self.fc1, self.fc2, self.fc3 = nn.Linear(PIX, l1), nn.Linear(l1, l2), nn.Linear(l2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape[:-2], PIX)  # (..., 28, 28) -> (..., 784)
        act = torch.relu if self.activation else (lambda t: t)
        return self.fc3(act(self.fc2(act(self.fc1(x)))))
