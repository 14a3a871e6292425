"""What a worker computes: the compute specs of `configure.compute` (docs/protocol.md §5.4, §7.1).

A spec is a small map whose `kind` names one computation; its other keys size it. The spec says
which arrays the configuration must carry and which inputs every `compute` request must set, with
their shape per group, so a worker validates requests against the spec alone, whatever scheme the
master runs. Sans-I/O and numpy-free: a spec is validated here, computed in edgecc/worker/.

  kind          placement  torch  arrays                                   inputs per group
  affine        encoded    no     affine.weight (out, n), affine.bias      x: in_shape   (n = prod(in_shape))
  affine-hs     encoded    no     affine.weight (out, maps·n), affine.bias x: in_shape, v: (P+1, *in_shape),
                                                                           or (P+1, maps, *in_shape) with maps > 1
  mlp           plain      no     mlp.mlp.fc{1..L}.{weight,bias}           x: in_shape   (widths n, *hidden, out)
                                  (+ mlp.mlp.c{1..L-1} with act "quad")
  cnn           plain      yes    cnn.* (the centralized CNN, Table 2)     x: in_shape
  resnet18      plain      yes    resnet.* (nets/resnet.ResNet18)          x: in_shape
  aicc-shared   shared     yes    model.* (the AICC network) + affine.*    images: (K, *in_shape) u1, or indices: (K,) i4
  user          plain      yes    none: the worker's own base model        x: in_shape
                                  (`edgecc worker --base`, announced in hello.caps.base; configure.digest names it)

Optional keys (OPTIONAL) may be left out, with the meaning of their default: the mlp kind's `act`, the hidden
activation, "relu" (absent: what every master sent before the key existed) or "quad", σ(h) = h + c ⊙ h² with
one array mlp.mlp.c{i} of shape (hidden[i-1],) per hidden layer (the light master's degree-2 network);
`maps` of affine-hs and aicc-shared, the maps H_S forms from each encoded input (absent: 1, the paper's);
`coef_width` of aicc-shared, its coefficient networks' channels (absent: the paper's 20·K).

in_shape is one image's layout, (H, W) for one channel or (C, H, W) with C = 3 (protocol/images.py);
the paper's is (28, 28).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .frames import RemoteProtocolError
from .images import PAPER_IMAGE, dims

IMAGE = dims(PAPER_IMAGE)  # the paper's images: the default in_shape


@dataclass(frozen=True)
class Input:
    """One `compute` field a kind reads: its name, the shape of one group (B is prepended), its dtypes."""
    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...] = ("f4", "f2")


def _uint(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _shape(v: Any) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= 3 and all(_uint(1, 4096)(d) for d in v)
            and math.prod(v) <= 1 << 20)


def _widths(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 8 and all(_uint(1, 1 << 16)(d) for d in v)


def _alpha(v: Any) -> bool:  # any real point: a model may place its workers in [−1, 1] (Scheme.worker_points)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and -1.0e6 < float(v) < 1.0e6


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in names


_OUT = _uint(1, 4096)
# kind -> {key: check}; every key is required and no other key is allowed (as in messages, §4)
KEYS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "affine": {"in_shape": _shape, "out": _OUT},
    "affine-hs": {"in_shape": _shape, "out": _OUT, "P": _uint(1, 64)},
    "mlp": {"in_shape": _shape, "hidden": _widths, "out": _OUT},
    "cnn": {"in_shape": _shape, "out": _OUT},
    "resnet18": {"in_shape": _shape, "out": _OUT},
    "aicc-shared": {"in_shape": _shape, "out": _OUT, "K": _uint(1, 64), "G": _uint(1, 64), "P": _uint(1, 64),
                    "computation": _one_of("hb", "hs"), "encoder": _one_of("mlp", "cl"),
                    "compute_arch": _one_of("mlp", "cl"), "alpha": _alpha},
    "user": {"in_shape": _shape, "out": _OUT},
}
# kind -> {key: (check, default)}: keys a spec may leave out; absent, the default holds (and is not sent)
MLP_ACTIVATIONS = ("relu", "quad")
OPTIONAL: dict[str, dict[str, tuple[Callable[[Any], bool], Any]]] = {
    "mlp": {"act": (_one_of(*MLP_ACTIVATIONS), "relu")},
    "affine-hs": {"maps": (_uint(1, 64), 1)},
    "aicc-shared": {"maps": (_uint(1, 64), 1), "coef_width": (_uint(1, 4096), None)},
}
KINDS = tuple(KEYS)
PLACEMENT = {"affine": "encoded", "affine-hs": "encoded", "mlp": "plain", "cnn": "plain", "resnet18": "plain",
             "user": "plain", "aicc-shared": "shared"}
NEEDS_TORCH = {"cnn", "resnet18", "user", "aicc-shared"}
IMAGE_KINDS = {"cnn", "resnet18", "user", "aicc-shared"}  # convolutional networks: in_shape must be an image, (H, W) or (3, H, W)


@dataclass(frozen=True)
class ComputeSpec:
    """A validated `configure.compute` map."""
    kind: str
    fields: dict[str, Any]

    @classmethod
    def from_wire(cls, d: Any) -> "ComputeSpec":
        if not isinstance(d, dict):
            raise RemoteProtocolError(f"configure.compute must be a map, got {type(d).__name__}")
        kind = d.get("kind")
        if not isinstance(kind, str) or kind not in KEYS:
            raise RemoteProtocolError(f"configure.compute.kind must be one of {KINDS}, got {kind!r}")
        keys, optional = KEYS[kind], OPTIONAL.get(kind, {})
        given = set(d) - {"kind"}
        if not set(keys) <= given <= set(keys) | set(optional):
            raise RemoteProtocolError(f"compute kind {kind!r}: missing keys {sorted(set(keys) - given)}, "
                                      f"unknown keys {sorted(map(str, given - set(keys) - set(optional)))}")
        for key, ok in keys.items():
            if not ok(d[key]):
                raise RemoteProtocolError(f"configure.compute.{key} of kind {kind!r}: invalid value {d[key]!r}")
        for key, (ok, _) in optional.items():
            if key in d and not ok(d[key]):
                choices = f" (one of {', '.join(MLP_ACTIVATIONS)})" if (kind, key) == ("mlp", "act") else ""
                raise RemoteProtocolError(f"configure.compute.{key} of kind {kind!r}: invalid value {d[key]!r}"
                                          f"{choices}")
        shape = d["in_shape"]
        if kind in IMAGE_KINDS and not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 3)):
            raise RemoteProtocolError(f"compute kind {kind!r} takes images: in_shape [H, W] (gray) or [3, H, W] "
                                      f"(colour), got {shape}")
        if kind == "aicc-shared" and d["computation"] == "hb" and (d["P"] != 1 or d.get("maps", 1) != 1):
            raise RemoteProtocolError("compute kind 'aicc-shared' with computation 'hb' needs P = 1 and one map")
        return cls(kind, {k: d[k] for k in (*keys, *optional) if k in d})

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.fields}

    def __getitem__(self, key: str) -> Any:
        if key not in self.fields and key in OPTIONAL.get(self.kind, {}):
            return OPTIONAL[self.kind][key][1]  # an optional key left out: its default
        return self.fields[key]

    @property
    def placement(self) -> str:
        return PLACEMENT[self.kind]

    @property
    def needs_torch(self) -> bool:
        return self.kind in NEEDS_TORCH

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.fields["in_shape"])

    @property
    def out(self) -> int:
        return int(self.fields["out"])

    def inputs(self) -> tuple[tuple[Input, ...], ...]:
        """The sets of `compute` fields a request may set (exactly one set, every other field nil)."""
        x = Input("x", self.in_shape)
        if self.kind == "affine-hs":
            maps = self["maps"]
            return ((x, Input("v", (self["P"] + 1, *((maps,) if maps > 1 else ()), *self.in_shape))),)
        if self.kind == "aicc-shared":
            K = self.fields["K"]
            return ((Input("images", (K, *self.in_shape), ("u1",)),), (Input("indices", (K,), ("i4",)),))
        return ((x,),)

    def describe_inputs(self) -> str:
        """E.g. 'x (B, 28, 28) and v (B, 3, 28, 28)', for error messages."""
        return " or ".join(" and ".join(f"{i.name} (B, {', '.join(map(str, i.shape))})" for i in alt) for alt in self.inputs())


# -- the specs the plans send -----------------------------------------------------------------------
def affine(in_shape: tuple[int, ...] = IMAGE, out: int = 10, P: int | None = None, maps: int = 1) -> ComputeSpec:
    """The collapsed affine map H_B (P None) or H_S of degree P in the encoded input, forming `maps` maps (one is
    sent without the key, as masters did before it existed)."""
    if P is None:
        if maps != 1:
            raise ValueError("H_B forms one map: maps needs H_S (P)")
        return ComputeSpec.from_wire({"kind": "affine", "in_shape": list(in_shape), "out": out})
    extra = {} if maps == 1 else {"maps": maps}
    return ComputeSpec.from_wire({"kind": "affine-hs", "in_shape": list(in_shape), "out": out, "P": P, **extra})


def mlp(hidden: list[int], out: int = 10, in_shape: tuple[int, ...] = IMAGE, act: str = "relu") -> ComputeSpec:
    """An MLP of widths prod(in_shape), *hidden, out with activation `act` between layers: "relu", or "quad"
    (h + c ⊙ h², arrays mlp.mlp.c{i}). ReLU is sent without `act`, as masters did before the key existed."""
    extra = {} if act == "relu" else {"act": act}
    return ComputeSpec.from_wire({"kind": "mlp", "in_shape": list(in_shape), "hidden": list(hidden), "out": out, **extra})


def cnn(in_shape: tuple[int, ...] = IMAGE, out: int = 10) -> ComputeSpec:
    """The centralized CNN (Table 2's CNN-baseline) for images of `in_shape`."""
    return ComputeSpec.from_wire({"kind": "cnn", "in_shape": list(in_shape), "out": out})


def resnet18(in_shape: tuple[int, ...] = IMAGE, out: int = 10) -> ComputeSpec:
    """ResNet-18 for small images (nets/resnet.py) on images of `in_shape`."""
    return ComputeSpec.from_wire({"kind": "resnet18", "in_shape": list(in_shape), "out": out})


def user(in_shape: tuple[int, ...] = IMAGE, out: int = 10) -> ComputeSpec:
    """The base model the worker's operator loaded (`edgecc worker --base`), x (B, *in_shape) -> (B, out)."""
    return ComputeSpec.from_wire({"kind": "user", "in_shape": list(in_shape), "out": out})


def aicc_shared(scheme: dict[str, Any], alpha: float, in_shape: tuple[int, ...] = IMAGE, out: int = 10) -> ComputeSpec:
    """The AICC network's E(α) and H on raw images; `scheme` is AICC's K, G, P, computation, encoder, compute_arch,
    and coef_width and maps where set."""
    return ComputeSpec.from_wire({"kind": "aicc-shared", "in_shape": list(in_shape), "out": out, **scheme,
                                  "alpha": float(alpha)})
