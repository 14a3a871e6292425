"""The light master's classifier (a design of ours, not the paper's): an MLP whose hidden activations are
quadratics, σ(h) = h + c ⊙ h² with c learned per unit, so that with one hidden layer f(x) = W2 σ(W1 x + b1) + b2
is a polynomial of degree 2 in x (2^L for L hidden layers). Workers run it on Lagrange-coded inputs and any
R = deg·(K − 1) + 1 answers decode f of every image exactly (schemes/light_master.py,
benchmarks/light_master_poly.py).

The weights are named as the centralized MLP's (mlp.fc{i}.weight, mlp.fc{i}.bias) plus mlp.c{i} per hidden
layer: prefixed with "mlp." they are the "mlp" compute kind's arrays with act "quad" (protocol/compute_spec.py),
which worker/compute.PlainCompute runs in numpy. Model-file kind "poly-mlp" (modelfile.py), header
{"kind": "poly-mlp", "hidden": [h1, ...], "image": [C, H, W], "classes": n}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..protocol.images import PAPER_IMAGE


class PolyLayers(nn.Module):
    """fc1 … fc{L} (nn.Linear) with the quadratic activation's c1 … c{L-1} between them."""

    def __init__(self, widths: Sequence[int], c0: float = 0.1):
        super().__init__()
        self.depth = len(widths) - 1
        for i in range(1, self.depth + 1):
            setattr(self, f"fc{i}", nn.Linear(widths[i - 1], widths[i]))
            if i < self.depth:
                setattr(self, f"c{i}", nn.Parameter(torch.full((widths[i],), float(c0))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for i in range(1, self.depth + 1):
            h = getattr(self, f"fc{i}")(h)
            if i < self.depth:
                h = h + getattr(self, f"c{i}") * h * h
        return h


class PolyMLP(nn.Module):
    """x (B, *dims(image)) -> (B, classes): prod(image) → *hidden (σ(h) = h + c ⊙ h² after each) → classes."""

    def __init__(self, image: Sequence[int] = PAPER_IMAGE, classes: int = 10, hidden: Sequence[int] = (512,),
                 c0: float = 0.1):
        super().__init__()
        self.image, self.classes, self.hidden = tuple(image), int(classes), tuple(int(h) for h in hidden)
        self.mlp = PolyLayers([math.prod(self.image), *self.hidden, self.classes], c0)

    @property
    def degree(self) -> int:
        """Its degree as a polynomial in x."""
        return 2 ** len(self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def info(self, **extra) -> dict:
        """The model-file header of this network (modelfile.save_model)."""
        return {"kind": "poly-mlp", "hidden": list(self.hidden), "activation": "h + c*h^2", "image": list(self.image),
                "classes": self.classes, **extra}
