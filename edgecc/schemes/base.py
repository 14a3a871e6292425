"""What a scheme is to the rest of edgecc: a `Plan` (the master's side of one configured run) and a
`SchemeDef` (its name, its own options and how to build its plan), plus what several schemes share.

The master, the links, `run_stream`, scenarios and the HTTP service use a plan only through the
members of `Plan`; the registry (schemes/registry.py) builds plans from `SchemeDef`s and checks
that what a builder returns has every member. A plan class may subclass `Plan` to inherit the
defaults of its optional members (`oracle`, `at_master`, `summary`, `worker_summary`).

Nothing here imports torch: reading the registry, and validating a scenario against it, stays
light; the plans that need torch import it in their own modules.
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..protocol.images import PAPER_CLASSES, PAPER_IMAGE, dims, model_classes, model_image

if TYPE_CHECKING:
    from ..protocol.compute_spec import ComputeSpec


@runtime_checkable
class Plan(Protocol):
    """The master's side of a scheme, configured for one run: no I/O, shared by concurrent requests.

    Results are keyed by worker index (0..N-1); `answered`/`possible` are collections of indices,
    `results` a dict index -> (B, classes) array in arrival order; images arrive as B groups of K,
    (B, K, *dims(image)) uint8; logits leave as (B, K, classes) float64."""

    # -- the run's shape
    image: tuple[int, int, int] = PAPER_IMAGE  # (C, H, W) of one image, from the model file (protocol/images.py)
    classes: int = PAPER_CLASSES  # logits per image
    name: str  # the scheme's registry name; sent to the workers in configure.scheme (for their log)
    K: int  # images per group
    N: int  # workers: the run's first N. 0: the master classifies alone (`at_master`), nothing is sent
    need: str  # what completes a request, in words: errors and summaries quote it
    # -- what each worker is configured with
    placement: str  # "encoded", "shared", "plain" ("master" when N = 0): a worker must offer it in its hello
    wire_dtype: str  # dtype of the results (and the inputs the master packs): "f4" or "f2"
    digest: str  # of the arrays every worker holds; a worker whose preloaded bundle has it gets none sent
    wire_arrays: dict[str, Any]  # those arrays packed for configure (protocol/frames.pack_array)

    def compute_spec(self, index: int) -> "ComputeSpec":
        """What worker `index` computes: a kind of protocol/compute_spec.py, built with its helpers."""
        ...

    def scheme_params(self, index: int) -> dict[str, Any]:
        """The scheme's own parameters for worker `index` (configure.params: logged, never interpreted)."""
        ...

    # -- one request
    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        """One dict of compute fields ("x", "v", "images") per worker for groups `images` (runs in the
        master's encode pool; a payload object listed for several workers is packed once)."""
        ...

    def complete(self, answered) -> bool:
        """Can a request decode from the workers in `answered` now?"""
        ...

    def reachable(self, possible) -> bool:
        """Could it still, if every worker in `possible` (answered or still expected) answers?"""
        ...

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits (B, K, classes) float64, report) once `complete`; the report names the workers used ("subset")
        and whatever else the scheme measures. DecodeError when the results cannot give a right answer."""
        ...

    # -- optional members: a subclass of Plan inherits these defaults
    def oracle(self, delays: Mapping[int, float | None]) -> float | None:
        """The best latency the workers' injected delays allow (seconds; None: a worker set that never
        completes, or unknown), for scenario reports."""
        return None

    def payloads_many(self, batches: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        """`payloads` for several requests at once (the master encodes the small requests waiting together):
        one list per batch, each as `payloads(batch)` would give it. A plan whose encoder costs less per
        group on more groups at a time (AICC's networks) runs it once over all of them."""
        return [self.payloads(b) for b in batches]

    def side_by_side(self, pool: Executor) -> contextlib.AbstractContextManager:
        """The context in which `payloads` may run the plan's independent encoder networks at the same time,
        the others on `pool`'s threads (the master enters it for a lone small request, whose latency it pays in
        full, when it has idle cores). Default: one after the other, as always."""
        return contextlib.nullcontext()

    def at_master(self, images: np.ndarray) -> np.ndarray:
        """(B, K, classes) logits the master computes itself, in its encode pool: called instead of `payloads`
        when N = 0 (the request then completes at once); plans with workers never are."""
        raise NotImplementedError(f"the {self.name} plan has workers: the master computes no logits itself")

    def summary(self) -> dict[str, Any]:
        """The plan's own figures for run summaries and reports (e.g. the encoder's precision, or how many
        groups a code rebuilt); plain JSON values."""
        return {}

    def worker_summary(self, index: int) -> dict[str, Any]:
        """Worker `index`'s part in the plan for summaries (e.g. its evaluation point, groups it lied in)."""
        return {}


def payloads_many(plan: Plan, batches: list[np.ndarray]) -> list[list[dict[str, Any]]]:
    """plan.payloads_many where the plan has it: a plan class written against the members the registry
    checks (PLAN_MEMBERS), without subclassing Plan, encodes each request on its own."""
    many = getattr(plan, "payloads_many", None)
    return many(batches) if many is not None else [plan.payloads(b) for b in batches]


def side_by_side(plan: Plan, pool: Executor) -> contextlib.AbstractContextManager:
    """plan.side_by_side(pool) where the plan has it (a plan written without subclassing Plan may not)."""
    fn = getattr(plan, "side_by_side", None)
    return fn(pool) if fn is not None else contextlib.nullcontext()


# Every member the registry checks a built plan for (the annotated ones and the methods above, but for the
# later payloads_many and side_by_side, which the functions of those names supply for plans without them).
PLAN_MEMBERS = ("name", "K", "N", "need", "placement", "wire_dtype", "digest", "wire_arrays", "compute_spec",
                "scheme_params", "payloads", "complete", "reachable", "decoded", "oracle", "at_master", "summary",
                "worker_summary")


# -- a scheme's declaration --------------------------------------------------------------------------

Loaded = tuple[Any, dict[str, Any]]  # (torch module, model-file header) of a model already in memory


@dataclass(frozen=True)
class Option:
    """One option a scheme takes. Values come from the CLI as strings, from scenario files as TOML
    values and from Python as they are; `parse` turns each into the declared type or raises ConfigError.

    `model`: the value names a model: a shipped model's name (modelfile.SHIPPED), a path to a model
    file (relative to the scenario file that gives it), or from Python a loaded (module, header) pair."""
    name: str
    default: Any
    help: str
    type: type = str  # str, int, float or bool
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    model: bool = False

    def parse(self, value: Any, scheme: str) -> Any:
        where = f"scheme {scheme!r}: option {self.name}"
        if self.model:
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
                return value
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} must name a model (a shipped name or a model file), got {value!r}")
            return value
        if self.type is bool:
            got = {"true": True, "false": False}.get(value.lower()) if isinstance(value, str) else value
            if not isinstance(got, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            return got
        if self.type in (int, float):
            if isinstance(value, bool):
                raise ConfigError(f"{where} must be a number, got {value!r}")
            try:
                got = self.type(value) if isinstance(value, str) else value
            except ValueError:
                got = None
            if self.type is float and isinstance(got, int):
                got = float(got)
            if not isinstance(got, self.type) or (self.type is float and not math.isfinite(got)):
                raise ConfigError(f"{where} must be {'an integer' if self.type is int else 'a finite number'}, got {value!r}")
            if self.minimum is not None and got < self.minimum:
                raise ConfigError(f"{where} must be >= {self.minimum:g}, got {got!r}")
            value = got
        elif not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        return value


@dataclass(frozen=True)
class SchemeDef:
    """A scheme as the registry knows it.

    `build(N, K, **options)` returns the plan for a run of N workers and K images per group, called
    with every declared option (defaults filled in, values parsed). A "module:function" string is
    imported on first use, so declaring a scheme loads nothing heavy.
    `group_size(options)` (optional, likewise "module:function" or a callable, and torch-free): the K
    the scheme's options fix (an AICC model's K), or None when it takes any K.
    `model_kinds`: the model-file kinds its `model` option runs (`edgecc master --scheme auto` picks
    the one scheme that runs a model's kind)."""
    name: str
    build: Callable[..., Plan] | str
    summary: str
    options: tuple[Option, ...] = ()
    model_kinds: tuple[str, ...] = ()
    group_size: Callable[[dict[str, Any]], int | None] | str | None = None

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


# -- what several schemes share ----------------------------------------------------------------------

def kth_fastest(delays: Mapping[int, float | None], k: int) -> float | None:
    """The k-th smallest of the workers' delays (None: the worker never answers), or None if fewer than k answer."""
    ok = sorted(d for d in delays.values() if d is not None)
    return ok[k - 1] if len(ok) >= k else None


def _check_kind(value: str | Loaded, info: dict[str, Any], kinds: tuple[str, ...], scheme: str) -> None:
    if info.get("kind") not in kinds:
        shown = "the loaded model" if isinstance(value, tuple) else repr(value)
        listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
        raise ConfigError(f"scheme {scheme!r} runs models of kind {listed}; {shown} is of kind "
                          f"{info.get('kind')!r}")


def model_header(value: str | Loaded, kinds: tuple[str, ...], scheme: str) -> dict[str, Any]:
    """The header of a model option's model, read without torch; ConfigError unless of one of `kinds`."""
    if isinstance(value, tuple):
        info = value[1]
    else:
        from ..modelfile import read_header

        info = read_header(value)
    _check_kind(value, info, kinds, scheme)
    return info


def load_model_option(value: str | Loaded, kinds: tuple[str, ...], scheme: str) -> Loaded:
    """(module, header) of a model option's model; ConfigError unless of one of `kinds`."""
    if isinstance(value, tuple):
        net, info = value
    else:
        from ..modelfile import load_model

        net, info = load_model(value)
    _check_kind(value, info, kinds, scheme)
    return net, info


def base_arrays(model, info: dict[str, Any]) -> dict[str, np.ndarray]:
    """The wire arrays of a centralized model for a plain worker: "mlp.*" (numpy), "cnn.*" or "resnet.*" (torch)."""
    if info["kind"] == "centralized-mlp":
        return {f"mlp.{k}": v.detach().float().numpy() for k, v in model.state_dict().items()}
    if info["kind"] == "centralized-cnn":
        from ..worker.plain_cnn import cnn_arrays

        return cnn_arrays(model)
    if info["kind"] == "centralized-resnet18":
        from ..worker.plain_cnn import resnet_arrays

        return resnet_arrays(model)
    raise ConfigError(f"plain workers run a centralized model ({', '.join(CENTRALIZED)}), not {info['kind']!r}")


CENTRALIZED = ("centralized-mlp", "centralized-cnn", "centralized-resnet18")

# -- the workers' own base model (`edgecc worker --base MODULE:CALLABLE`) ------------------------------
WORKER_BASE = "worker"  # the model option's value that names it (with ?shape=...&classes=...&digest=...)


@dataclass(frozen=True)
class WorkerBase:
    """A model option of "worker[?shape=HxW&classes=C&digest=HEX]": the plain workers run the base model their
    operators loaded (`edgecc worker --base`, announced in hello.caps.base) instead of one the master sends.
    `in_shape` is one image's shape, (H, W) or (3, H, W) (default the paper's 28×28), `classes` the logits per
    image (default 10); `digest`, when given, pins the base's weights (worker/user_base.weights_digest),
    otherwise every worker must announce the digest the first one to answer announced (master/master.py)."""
    in_shape: tuple[int, ...] = tuple(dims(PAPER_IMAGE))
    classes: int = PAPER_CLASSES
    digest: str | None = None

    @classmethod
    def parse(cls, value: Any, scheme: str) -> "WorkerBase | None":
        """The WorkerBase `value` names, None when it names a model file (ConfigError when malformed)."""
        if isinstance(value, WorkerBase):
            return value
        if not isinstance(value, str) or value.partition("?")[0] != WORKER_BASE:
            return None
        where = f"scheme {scheme!r}: model {value!r}"
        got: dict[str, Any] = {}
        for item in filter(None, value.partition("?")[2].split("&")):
            key, _, text = item.partition("=")
            try:
                if key == "shape":
                    got["in_shape"] = tuple(int(d) for d in text.lower().split("x"))
                elif key == "classes":
                    got["classes"] = int(text)
                elif key == "digest":
                    got["digest"] = text.lower()
                else:
                    raise ConfigError(f"{where}: unknown option {key!r} (shape=HxW or 3xHxW, classes=C, digest=HEX)")
            except ValueError:
                raise ConfigError(f"{where}: {key} must be {'HxW or 3xHxW' if key == 'shape' else 'an integer'}, "
                                  f"got {text!r}") from None
        base = cls(**got)
        shape = base.in_shape
        if not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 3)) or not all(1 <= d <= 4096 for d in shape):
            raise ConfigError(f"{where}: shape must be HxW (one channel) or 3xHxW")
        if not 1 <= base.classes <= 4096:
            raise ConfigError(f"{where}: classes must be 1..4096, got {base.classes}")
        if base.digest is not None and (len(base.digest) != 64 or any(c not in "0123456789abcdef" for c in base.digest)):
            raise ConfigError(f"{where}: digest must be 64 hex digits (the SHA-256 a worker announces)")
        return base


def load_base_option(value: str | Loaded, scheme: str) -> tuple[Any, dict[str, Any]]:
    """A plain scheme's model option: (WorkerBase, {"kind": "worker"}) for "worker[?...]", else (module, header)
    of a centralized model (load_model_option)."""
    base = WorkerBase.parse(value, scheme)
    if base is not None:
        return base, {"kind": WORKER_BASE}
    return load_model_option(value, CENTRALIZED, scheme)


def set_base(plan: Any, model: Any, info: dict[str, Any]) -> None:
    """A plain plan's base: its image, classes, compute spec, arrays (packed: wire_arrays), their digest and
    `worker_base` (the WorkerBase, or None for a centralized model whose weights the master sends)."""
    from ..bundle import digest
    from ..protocol import compute_spec
    from ..protocol.frames import pack_array
    from ..protocol.images import image_of
    from ..worker.plain_cnn import plain_spec

    if isinstance(model, WorkerBase):  # nothing to send: the configure names the digest the workers announce
        plan.worker_base, plan.image, plan.classes = model, image_of(model.in_shape), model.classes
        plan.arrays, plan.wire_arrays, plan.digest = {}, {}, model.digest or ""
        plan.spec = compute_spec.user(model.in_shape, model.classes)
        return
    plan.worker_base = None
    model.eval()
    set_shape(plan, info)
    plan.arrays = base_arrays(model, info)
    plan.spec = plain_spec(plan.arrays, plan.image, plan.classes)
    plan.digest = digest(plan.arrays)
    plan.wire_arrays = {k: pack_array(v, "f4") for k, v in plan.arrays.items()}


def plan_shape(plan: Any) -> tuple[tuple[int, int, int], int]:
    """(image, classes) of a plan: a plan class that does not subclass Plan and names neither runs the paper's."""
    return tuple(getattr(plan, "image", PAPER_IMAGE)), int(getattr(plan, "classes", PAPER_CLASSES))  # type: ignore[return-value]


def set_shape(plan: Any, info: dict[str, Any]) -> None:
    """The plan's image and classes from its model file's header (the paper's when the file predates them)."""
    try:
        plan.image, plan.classes = model_image(info), model_classes(info)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_groups(plan: Any, images: np.ndarray) -> None:
    """ConfigError unless `images` are groups (B, K, *dims(image)) of the plan's images."""
    want = (plan.K, *dims(plan.image))
    if images.ndim != len(want) + 1 or images.shape[1:] != want:
        raise ConfigError(f"expected groups of shape (B, {', '.join(map(str, want))}) "
                          f"({'×'.join(map(str, plan.image))} images), got {images.shape}")


class PlainWorkers(Plan):
    """Plans whose N workers all run one centralized model (the "mlp" or "cnn" kind) on what they are sent."""

    placement = "plain"

    def _configure_plain(self, arrays: dict[str, np.ndarray], K: int, N: int, wire_dtype: str,
                         info: dict[str, Any] | None = None) -> None:
        from ..bundle import digest
        from ..protocol.frames import pack_array
        from ..worker.plain_cnn import plain_spec

        self.K, self.N, self.wire_dtype = K, N, wire_dtype
        self.arrays = arrays
        if info is not None:
            set_shape(self, info)
        self.spec = plain_spec(arrays, self.image, self.classes)
        self.digest = digest(arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in arrays.items()}

    def compute_spec(self, index: int) -> "ComputeSpec":
        return self.spec  # every worker runs the same model

    def scheme_params(self, index: int) -> dict[str, Any]:
        return {"K": self.K, "N": self.N}

    def reachable(self, possible) -> bool:
        return self.complete(possible)
