"""Turn a trained torch model into worker arrays: affine maps collapsed, encoders as plain weights.

H_B (and Ω of H_S) has no activations, so the whole worker network is one affine map
y = A·vec(X̃) + b. We read A and b off the network in float64 (b = H(0), row j = ∇ of output j):
a Raspberry Pi then runs one (classes × CHW) matmul — 10 × 784 for the paper's images — instead of
seven convolutions.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .coding.schemes import Scheme
from .nets.aicc import omega_image
from .protocol.images import PAPER_IMAGE, dims, model_image

PLACEMENTS = ("encoded", "shared")


def collapse_affine(net: torch.nn.Module, image: tuple[int, int, int] = PAPER_IMAGE) -> tuple[np.ndarray, np.ndarray]:
    """(A (classes, CHW), b (classes,)) in float64 of an affine net mapping (1, n, *dims)-shaped input
    to (..., classes).

    b = net(0); row j of A is the gradient of output j, constant because the net is affine. Ten
    backward passes of one image cost ~80x less than pushing 784 basis images forward."""
    with torch.inference_mode(False), torch.enable_grad():  # callers may be in inference mode
        net = copy.deepcopy(net).double().eval()
        x = torch.zeros(1, 1, *dims(image), dtype=torch.float64, requires_grad=True)
        y = net(x).reshape(-1)
        rows = [torch.autograd.grad(y[j], x, retain_graph=j < y.numel() - 1)[0].reshape(-1) for j in range(y.numel())]
        return torch.stack(rows).detach().numpy(), y.detach().numpy()


def worker_arrays(model, info: dict[str, Any], placement: str) -> dict[str, np.ndarray]:
    """The arrays a worker of `placement` needs (float32; the affine map is collapsed in float64 first)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    scheme = Scheme.from_dict(info["scheme"])
    image = model_image(info)
    if scheme.computation == "hb":
        A, b = collapse_affine(model.hb, image)
    else:  # Ω reads the maps·C channels H_S forms
        A, b = collapse_affine(model.omega, omega_image(scheme, image))
    arrays = {"affine.weight": A.astype(np.float32), "affine.bias": b.astype(np.float32)}
    if placement == "shared":  # the worker runs E(α_n) (and Λ_p) itself
        arrays.update({f"model.{k}": v.detach().float().numpy() for k, v in model.state_dict().items()})
    return arrays


def bundle_info(info: dict[str, Any], placement: str) -> dict[str, Any]:
    shape = {k: info[k] for k in ("image", "classes") if k in info}  # a paper-shaped model's bundle stays as it was
    return {"kind": info["kind"], "scheme": info["scheme"], "placement": placement, **shape}
