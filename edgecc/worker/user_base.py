"""A worker operator's own base model (`edgecc worker --base module:callable`): the "user" compute kind.

The model-agnostic schemes (uncoded, replication, ApproxIFER) run an unmodified classifier on the
workers. Besides the bases edgecc ships, whose weights a master sends, a worker can run its
operator's own: `module:callable` names a Python callable on the operator's PYTHONPATH that returns
a torch.nn.Module (or a module attribute that is one). The worker imports it once at its start, puts
it in eval mode in float32 on the CPU, and announces it in `hello.caps.base` (name, in_shape,
classes, digest); a master configures the "user" kind naming that digest and sends no arrays.
Code travels only by the operator's hands, as with `--dataset`: a master names the model a worker
announced, never a module, and nothing here unpickles anything.

`?shape=HxW` (or `3xHxW`) after the spec gives one image's shape when the model has no `in_shape`
attribute; the paper's 28×28 otherwise. `classes` is what the model returns for one image.

TorchScript files (`torch.jit.load`) are not taken: their loader unpickles the archive's data (torch's
own documentation warns that malicious data can run arbitrary code during `torch.jit.load`), and the
operator's Python module does the same job without a second file format to trust.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..protocol.compute_spec import IMAGE, KEYS, ComputeSpec
from ..protocol.messages import MAX_CLASSES, base_cap

SHAPE_OK = KEYS["user"]["in_shape"]


def parse_spec(spec: str) -> tuple[str, str, tuple[int, ...] | None]:
    """'pkg.mod:make?shape=3x32x32' -> ('pkg.mod', 'make', (3, 32, 32)); ConfigError when malformed."""
    text, _, query = spec.strip().partition("?")
    module, colon, attr = text.partition(":")
    if not colon or not module or not attr or "/" in module or "\\" in module or module.endswith(".py"):
        raise ConfigError(f"--base {spec!r}: expected MODULE:CALLABLE (a Python module on the PYTHONPATH and a "
                          "callable in it returning a torch.nn.Module), e.g. mymodels:make_net")
    shape = None
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key != "shape":
            raise ConfigError(f"--base {spec!r}: unknown option {key!r} (only ?shape=HxW or ?shape=3xHxW)")
        try:
            shape = tuple(int(d) for d in value.lower().split("x"))
        except ValueError:
            shape = ()
        if not _image_shape(shape):
            raise ConfigError(f"--base {spec!r}: shape must be HxW (one channel) or 3xHxW, got {value!r}")
    return module, attr, shape


def _image_shape(shape: Any) -> bool:
    shape = list(shape)
    return SHAPE_OK(shape) and (len(shape) == 2 or (len(shape) == 3 and shape[0] == 3))


def weights_digest(model) -> str:
    """Lowercase hex SHA-256 of a module's state_dict, tensor by tensor in name order: for each, its name
    (UTF-8), a NUL, its dtype and shape as text ('torch.float32 (8, 1, 3, 3)'), a NUL, then its bytes as
    they lie in memory (C order, native byte order: little-endian on every platform torch ships for)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype} {tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class UserBase:
    """The base model a worker's operator loaded, as it announces it (`cap`) and runs it (`compute`)."""
    spec: str  # as the operator gave it
    model: Any  # torch.nn.Module, eval mode, float32, CPU
    in_shape: tuple[int, ...]
    classes: int
    cap: dict  # hello.caps.base

    @property
    def digest(self) -> str:
        return self.cap["digest"]

    @classmethod
    def load(cls, spec: str) -> "UserBase":
        """Import `spec`'s callable, build the model, check it on one zero image. ConfigError says what is wrong."""
        module_name, attr, shape = parse_spec(spec)
        try:
            import torch
        except ImportError:
            raise ConfigError("--base needs torch on the worker (pip install 'edgecc[ml]')") from None
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"--base {spec!r}: cannot import module {module_name!r} ({e}); it must be on this "
                              "worker's PYTHONPATH") from None
        except Exception as e:  # the module's own code failed, or a name import_module does not take ('..m')
            raise ConfigError(f"--base {spec!r}: importing module {module_name!r} failed: {type(e).__name__}: "
                              f"{str(e)[:300]}") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigError(f"--base {spec!r}: module {module_name!r} has no {attr!r}")
            obj = getattr(obj, part)
        if isinstance(obj, torch.nn.Module):
            model = obj
        elif callable(obj):
            try:
                model = obj()
            except Exception as e:
                raise ConfigError(f"--base {spec!r}: {attr}() failed: {type(e).__name__}: {e}") from None
            if not isinstance(model, torch.nn.Module):
                raise ConfigError(f"--base {spec!r}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
        else:
            raise ConfigError(f"--base {spec!r}: {attr} is a {type(obj).__name__}, neither a torch.nn.Module nor a "
                              "callable returning one")
        model = model.float().cpu().eval()
        if shape is None:
            given = getattr(model, "in_shape", IMAGE)
            shape = tuple(given) if isinstance(given, (tuple, list)) else (given,)
            if not _image_shape(shape):
                raise ConfigError(f"--base {spec!r}: the model's in_shape {shape} is not (H, W) or (3, H, W)")
        try:
            with torch.inference_mode():
                y = model(torch.zeros((2, *shape), dtype=torch.float32))
        except Exception as e:
            raise ConfigError(f"--base {spec!r}: the model fails on a batch of {'×'.join(map(str, shape))} images "
                              f"(give their shape with ?shape=HxW or ?shape=3xHxW): {type(e).__name__}: "
                              f"{str(e)[:300]}") from None
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != 2 or not 1 <= y.shape[1] <= MAX_CLASSES \
                or not y.is_floating_point():
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ConfigError(f"--base {spec!r}: the model must map (B, {', '.join(map(str, shape))}) images to (B, "
                              f"classes) float logits with 1 <= classes <= {MAX_CLASSES}; it returned {got}")
        classes = int(y.shape[1])
        cap = base_cap(spec.strip(), shape, classes, weights_digest(model))
        return cls(spec, model, tuple(shape), classes, cap)

    def compute(self, spec: ComputeSpec, digest: str):
        """The compute a "user" configure asks for: this model, when the configure names it. ConfigError otherwise."""
        if digest != self.digest:
            raise ConfigError(f"configure names base {digest[:12]}…; this worker runs {self.describe()}")
        if spec.in_shape != self.in_shape or spec.out != self.classes:
            raise ConfigError(f"the compute takes {'×'.join(map(str, spec.in_shape))} images to {spec.out} logits; "
                              f"this worker's base {self.describe()} takes {'×'.join(map(str, self.in_shape))} to "
                              f"{self.classes}")
        from .plain_cnn import TorchModelCompute

        return TorchModelCompute(self.model, self.classes)

    def describe(self) -> str:
        return (f"{self.cap['name']!r} ({'×'.join(map(str, self.in_shape))} images, {self.classes} classes, "
                f"{sum(math.prod(p.shape) for p in self.model.parameters())} parameters, digest {self.digest[:12]}…)")

