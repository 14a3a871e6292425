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

The same holds for H_S with more maps (Scheme.maps): each Λ_p's head gains the new maps' outputs, drawn
fresh over all of its stack's channels, and Ω's first layer gains zero weights reading them, so the model
starts from the one-map model's outputs and its new maps get gradient through Ω from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DilatedStack, variance_preserving_draw


def widen_into(narrow: nn.Module, wide: nn.Module, seed: int) -> int:
    """Load `narrow`'s weights into `wide`, a model of the same structure whose DilatedStacks may have more
    channels (never fewer) and, for H_S, more maps; the new channels and maps are drawn from `seed`. Returns how
    many stacks were widened. Raises ValueError where the two differ in anything else."""
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
        omega_in = "omega.fc1.weight"  # Ω's first layer, whose inputs grow with the maps
        for pname, p in wide.named_parameters():
            if pname.startswith(inside):
                continue
            old = src_params[pname]
            if pname == omega_in and old.shape != p.shape and old.shape[0] == p.shape[0] and p.shape[1] % old.shape[1] == 0:
                p.zero_()
                p[:, : old.shape[1]] = old  # map 0 is the old map: Ω reads it as before, the new maps not yet
                continue
            if old.shape != p.shape:
                raise ValueError(f"{pname} has shape {tuple(old.shape)}, the wider model's is {tuple(p.shape)}: "
                                 "only the CL stacks' widths and H_S's maps may differ")
            p.copy_(old)
    return widened


def _widen_stack(old: DilatedStack, new: DilatedStack, gen: torch.Generator) -> int:
    if not isinstance(old, DilatedStack) or old.activation != new.activation or len(old.convs) != len(new.convs):
        raise ValueError("the models' CL stacks differ in more than their width")
    w_old, w_new = old.convs[0].out_channels, new.convs[0].out_channels
    o_old, o_new = old.head.out_channels, new.head.out_channels
    if w_new < w_old or old.convs[0].in_channels != new.convs[0].in_channels or o_new < o_old or o_new % o_old:
        raise ValueError(f"a CL stack of width {w_old} can only be widened (to {w_new}: never narrower, the same inputs, "
                         f"its {o_old} outputs kept as the first of a multiple of them, got {o_new})")
    for a, b in zip(old.convs, new.convs):
        b.weight.zero_()
        b.weight[:w_old, :a.in_channels] = a.weight  # old channels see old channels only
        b.weight[w_old:] = variance_preserving_draw(b.weight[w_old:].shape, b.weight[0].numel(), new.activation, gen)
        b.bias.zero_()
        b.bias[:w_old] = a.bias
    new.head.weight.zero_()
    new.head.weight[:o_old, :w_old] = old.head.weight  # the old outputs read old channels only
    new.head.weight[o_old:] = variance_preserving_draw(new.head.weight[o_old:].shape, w_new, False, gen)  # new maps
    new.head.bias.zero_()
    new.head.bias[:o_old] = old.head.bias
    return int(w_new > w_old or o_new > o_old)
