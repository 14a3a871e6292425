"""Building blocks of Table 1 (SPEC §2).

`CoefNets` runs n independent coefficient networks (Γ_0..Γ_G, Λ_0..Λ_P) on the same K images.
The MLP form is one batched matmul over the n networks. The CL form stays n separate stacks in
channels-last layout: measured on a 2-core AVX-512 CPU, a grouped convolution (groups = n) was
1.2-2.8x slower than separate convolutions, and channels-last made bf16 convolutions ~1.4x faster.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from concurrent.futures import Executor
from typing import Iterator, Sequence

import torch
from torch import nn

from ..protocol.images import PAPER_IMAGE, dims, pixels

DILATIONS = (1, 1, 2, 4, 8, 1)  # the six 3×3 layers of the CL stack; padding = dilation keeps H×W


class DilatedStack(nn.Module):
    """The CL stack: six 3×3 convs with DILATIONS (ReLU after each), then a 1×1 conv to `out_ch`
    channels (the image's: one for the paper's gray images).

    in: (B, in_ch, H, W) -> out: (B, out_ch, H, W). With `activation=False` it is affine (CNN-H_B).
    """

    def __init__(self, in_ch: int, width: int, activation: bool = True, out_ch: int = 1):
        super().__init__()
        self.activation = activation
        layers, c = [], in_ch
        for d in DILATIONS:
            layers.append(nn.Conv2d(c, width, 3, padding=d, dilation=d))
            c = width
        self.convs = nn.ModuleList(layers)
        self.head = nn.Conv2d(width, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.activation:
                x = torch.relu(x)
        return self.head(x)


def variance_preserving_init(model: nn.Module, seed: int) -> int:
    """Re-draw every convolution of `model`'s CL stacks so that a signal keeps its scale through them: std
    sqrt(2 / fan_in) (He et al. 2015) for a conv a ReLU follows, sqrt(1 / fan_in) for one that stays affine
    (the 1×1 heads, the H_B stack), biases 0. A remedy beyond the paper, whose networks keep PyTorch's default
    init (TrainConfig.weight_init; docs/k8.md).

    Why: under the default init (uniform, bound 1/sqrt(fan_in)) a ReLU layer keeps about 1/6 of its input's
    variance, so after a stack's seven layers the encoder's output barely depends on its input (its spread
    across inputs is 4e-4 against the input's 0.26, at every K); at K=8 and Adam's lr 1e-4 the loss is then
    still at chance after 150 steps (docs/k8.md). The draw uses its own generator from `seed`, so it does not depend on how the model was built.
    Returns how many stacks it re-drew."""
    gen = torch.Generator().manual_seed(seed * 7919 + 1)
    stacks = [m for m in model.modules() if isinstance(m, DilatedStack)]
    for stack in stacks:
        for conv in (*stack.convs, stack.head):
            with torch.no_grad():
                conv.weight.copy_(variance_preserving_draw(conv.weight.shape, conv.weight[0].numel(),
                                                           stack.activation and conv is not stack.head, gen))
                conv.bias.zero_()
    return len(stacks)


def variance_preserving_draw(shape: Sequence[int], fan_in: int, relu: bool, gen: torch.Generator) -> torch.Tensor:
    """Weights of std sqrt(2 / fan_in) for a conv a ReLU follows, sqrt(1 / fan_in) for one that stays affine."""
    return torch.randn(shape, generator=gen) * (2.0 if relu else 1.0) ** 0.5 / fan_in ** 0.5


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
    """n coefficient networks of one architecture, each mapping K images to one image of their shape.

    x: (B, K, *dims) -> (B, n, *dims), dims = (H, W) for gray images, (C, H, W) for colour (protocol/images)
    mlp: Linear(K·CHW→K·CHW), ReLU, Linear(K·CHW→CHW).  cl: DilatedStack(K·C channels, `width` (the paper's
    20·K), C out). With `maps` > 1 each network gives that many images: (B, n, maps, *dims), from maps·CHW
    outputs of its last layer (H_S with several maps, Scheme.maps).
    """

    def __init__(self, arch: str, K: int, n: int, image: Sequence[int] = PAPER_IMAGE, width: int | None = None,
                 maps: int = 1):
        super().__init__()
        self.arch, self.K, self.n = arch, K, n
        self.image, self.dims, self.pix = tuple(image), dims(image), pixels(image)
        self.out_dims = self.dims if maps == 1 else (maps, *self.dims)  # one network's output, per group
        if arch == "mlp":
            self.fc1 = GroupedLinear(n, K * self.pix, K * self.pix)
            self.fc2 = GroupedLinear(n, K * self.pix, maps * self.pix)
        elif arch == "cl":
            self.stacks = nn.ModuleList(DilatedStack(K * image[0], width or 20 * K, out_ch=maps * image[0])
                                        for _ in range(n))
        else:
            raise ValueError(f"unknown architecture {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.arch == "mlp":
            h = x.reshape(B, 1, -1).expand(B, self.n, self.K * self.pix)
            return self.fc2(torch.relu(self.fc1(h))).reshape(B, self.n, *self.out_dims)
        c, h, w = self.image
        x = x.reshape(B, self.K * c, h, w).contiguous(memory_format=torch.channels_last)
        return torch.cat([stack(x) for stack in self.stacks], dim=1).reshape(B, self.n, *self.out_dims)

    @torch.no_grad()
    def forward_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """Inference in bf16 with float32 output, the same numbers as under bf16 autocast. The weights are
        cast once and kept (autocast casts every weight on every call: for the MLP all ~30 MB, more than a
        one-group GEMV costs). The CL stacks run as oneDNN convolutions with the ReLU fused in
        (`_fused_stacks`) where this torch has them, else under autocast."""
        if self.arch != "mlp":
            layers = self._fused_stacks(x)
            if layers is None:
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    return self(x).float()
            B = x.shape[0]
            c, h, w = self.image
            x = x.reshape(B, self.K * c, h, w).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            pool = _STACK_POOL.get()
            if pool is None:
                outs = [_run_stack(stack, x) for stack in layers]
            else:  # the other networks on the pool while this thread runs the first (oneDNN releases the GIL)
                others = [pool.submit(_run_stack, stack, x) for stack in layers[1:]]
                outs = [_run_stack(layers[0], x)] + [f.result() for f in others]
            return torch.cat(outs, dim=1).float().reshape(B, self.n, *self.out_dims)
        key = tuple((p.data_ptr(), p._version) for p in (self.fc1.weight, self.fc2.weight))
        if getattr(self, "_bf16", (None,))[0] != key:  # training (or loading) changed the weights
            self._bf16 = (key, self.fc1.weight.to(torch.bfloat16), self.fc2.weight.to(torch.bfloat16))
        _, w1, w2 = self._bf16
        B = x.shape[0]
        h = x.reshape(B, 1, -1).expand(B, self.n, self.K * self.pix).to(torch.bfloat16)
        h = torch.relu(torch.einsum("bni,nio->bno", h, w1).float() + self.fc1.bias)
        y = torch.einsum("bni,nio->bno", h.to(torch.bfloat16), w2).float() + self.fc2.bias
        return y.reshape(B, self.n, *self.out_dims)

    def _fused_stacks(self, x: torch.Tensor):
        """Per stack, its layers as bf16 oneDNN convolutions with the ReLU fused (FusedConv), cast once and
        kept while the weights do not change; None where this torch or device has no such kernel.

        Why: one group (the latency-bound request) is 7 small convolutions per coefficient network, where
        autocast's casts of weights and inputs, the separate ReLU and its copies cost about a fifth of the
        time (measured with `edgecc bench`, section master). The fused op rounds the same fp32 accumulator
        to bf16 once, after the ReLU, which is autocast's result exactly (ReLU commutes with rounding)."""
        if x.device.type != "cpu" or not _HAS_FUSED_CONV:
            return None
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cached = getattr(self, "_fused", None)
        if cached is None or cached[0] != key:  # training (or loading) changed the weights
            cached = (key, [[FusedConv(conv, relu=stack.activation and conv is not stack.head)
                             for conv in (*stack.convs, stack.head)] for stack in self.stacks])
            self._fused = cached
        return cached[1]


def _run_stack(stack: list["FusedConv"], x: torch.Tensor) -> torch.Tensor:
    for conv in stack:
        x = conv(x)
    return x


# The pool `stacks_on` hands to forward_bf16 in this context (thread), None: one network after the other.
_STACK_POOL: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("edgecc_stack_pool", default=None)


@contextlib.contextmanager
def stacks_on(pool: Executor | None) -> Iterator[None]:
    """Inside (in this thread), CoefNets.forward_bf16 runs its coefficient networks at the same time (on its fused
    oneDNN path; under the autocast fallback they stay one after the other): the first
    in the calling thread, the others on `pool` (threads with one torch thread each). For a lone group, whose
    latency a master pays in full: the networks are independent, and one small convolution gains little from
    a second intra-op thread (oneDNN at batch 1 on 28×28), while a second network beside it runs at full speed.
    The results are the networks' own, bit for bit (each is computed as before, only elsewhere)."""
    token = _STACK_POOL.set(pool)
    try:
        yield
    finally:
        _STACK_POOL.reset(token)


# oneDNN's convolution with a fused pointwise op: the kernel torch.compile's CPU backend emits for conv+ReLU,
# callable without compiling. Absent from builds without oneDNN (then forward_bf16 uses autocast).
_HAS_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv:
    """A Conv2d (stride, dilation, padding from the module) as one bf16 channels-last oneDNN call, ReLU fused."""

    def __init__(self, conv: nn.Conv2d, relu: bool):
        self.weight = conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        self.bias = None if conv.bias is None else conv.bias.detach().to(torch.bfloat16)
        self.padding, self.stride, self.dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
        self.groups, self.op = conv.groups, "relu" if relu else "none"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                       self.dilation, self.groups, self.op, [], "")


class BaseMLP(nn.Module):
    """CHW → 200 → 100 → classes (the paper: 784 → 200 → 100 → 10); with activation=False it is the
    affine Ω / MLP-H_B. Takes (..., *dims) images."""

    def __init__(self, activation: bool = False, l1: int = 200, l2: int = 100, classes: int = 10,
                 image: Sequence[int] = PAPER_IMAGE):
        super().__init__()
        self.activation = activation
        self.ndim, self.pix = len(dims(image)), pixels(image)
        self.fc1, self.fc2, self.fc3 = nn.Linear(self.pix, l1), nn.Linear(l1, l2), nn.Linear(l2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape[: x.dim() - self.ndim], self.pix)  # (..., *dims) -> (..., CHW)
        act = torch.relu if self.activation else (lambda t: t)
        return self.fc3(act(self.fc2(act(self.fc1(x)))))
