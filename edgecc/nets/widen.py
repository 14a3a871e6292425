"""Start a wider AICC model from a trained narrower one, computing the same function (ours, not the paper's).

A K=4 R=5 cell underfits at the paper's coefficient-network width 20·K (docs/results.md), and training a
wider one from scratch costs the whole protocol again. Widening keeps what the narrow model learned: each
CL stack's old channels keep their weights and see only old channels; every new channel gets a fresh
variance-preserving draw over all of its inputs, old and new, and nothing reads it yet (its weights into
the next layer and into the 1×1 head are 0). The wide model then gives the narrow one's outputs exactly
(up to the order of float additions), and the first optimizer steps start to use the new channels: the
gradient of a zero weight leaving a live channel is not zero. (Net2Net, Chen et al. 2016, widens by copying
channels instead; fresh channels keep the start exact without dividing weights, and do not start in lockstep
with the channel they copied.)
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DilatedStack, variance_preserving_draw


def widen_into(narrow: nn.Module, wide: nn.Module, seed: int) -> int:
    """Load `narrow`'s weights into `wide`, a model of the same structure whose DilatedStacks may have more
    channels (never fewer); the new channels are drawn from `seed`. Returns how many stacks were widened.
    Raises ValueError where the two differ in anything but stack widths."""
    gen = torch.Generator().manual_seed(seed * 7919 + 2)
    src, dst = dict(narrow.named_modules()), dict(wide.named_modules())
    if src.keys() != dst.keys():
        raise ValueError("the models differ in structure, not only in their stacks' widths")
    stacks = {name for name, m in dst.items() if isinstance(m, DilatedStack)}
    widened = 0
    with torch.no_grad():
        for name in sorted(stacks):
            widened += _widen_stack(src[name], dst[name], gen)
        inside = tuple(f"{s}." for s in stacks)
        src_params = dict(narrow.named_parameters())
        for pname, p in wide.named_parameters():
            if pname.startswith(inside):
                continue
            if src_params[pname].shape != p.shape:
                raise ValueError(f"{pname} has shape {tuple(src_params[pname].shape)}, the wider model's is {tuple(p.shape)}: "
                                 "only the CL stacks' widths may differ")
            p.copy_(src_params[pname])
    return widened


def _widen_stack(old: DilatedStack, new: DilatedStack, gen: torch.Generator) -> int:
    if not isinstance(old, DilatedStack) or old.activation != new.activation or len(old.convs) != len(new.convs):
        raise ValueError("the models' CL stacks differ in more than their width")
    w_old, w_new = old.convs[0].out_channels, new.convs[0].out_channels
    if w_new < w_old or old.convs[0].in_channels != new.convs[0].in_channels or old.head.out_channels != new.head.out_channels:
        raise ValueError(f"a CL stack of width {w_old} can only be widened (to {w_new}: never narrower, same inputs and outputs)")
    for a, b in zip(old.convs, new.convs):
        b.weight.zero_()
        b.weight[:w_old, :a.in_channels] = a.weight  # old channels see old channels only
        b.weight[w_old:] = variance_preserving_draw(b.weight[w_old:].shape, b.weight[0].numel(), new.activation, gen)
        b.bias.zero_()
        b.bias[:w_old] = a.bias
    new.head.weight.zero_()
    new.head.weight[:, :w_old] = old.head.weight  # the head reads old channels only
    new.head.bias.copy_(old.head.bias)
    return int(w_new > w_old)
