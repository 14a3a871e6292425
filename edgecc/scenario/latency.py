"""Per-worker behaviour models: injected latency and failures, deterministic from a seed.

The kernel here has no `netem` (SPEC §6), so each worker delays its own answers. A
`WorkerBehaviour` says, for request `r` at `t` seconds after the worker started, how long to
wait before answering, or that it must not answer at all. `delay()` is a pure function of
(seed, worker_index, request_id, elapsed_s): every scheme in a scenario, and every rerun, meets
the very same stragglers, so their latencies compare like for like.

Plain-dict format (as it comes from TOML or JSON):

    {"latency": {"dist": "exponential", "mean": 0.05},      # seconds; see LATENCY_KINDS
     "failure": [{"kind": "crash_at", "at_s": 2.0}],        # one table, a list, or absent
     "slowdown": 1.0}                                       # multiplies every sampled delay

Invalid values raise `FieldError` (a `ConfigError`) naming the field, e.g. `latency.mean`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np

from edgecc.errors import ConfigError

# Separate random streams per purpose, so adding e.g. crash_probability to a worker does not
# change the delays its surviving requests get.
_LATENCY_STREAM = 0
_FAILURE_STREAM = 1


class FieldError(ConfigError):
    """A configuration value is invalid; `field` is its dotted path, e.g. `latency.mean`."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def under(self, prefix: str) -> FieldError:
        """The same error one level down, e.g. `latency.mean` → `workers[2].latency.mean`."""
        if not self.field:
            return FieldError(prefix, self.reason)
        sep = "" if self.field.startswith("[") else "."  # list indices attach directly
        return FieldError(f"{prefix}{sep}{self.field}", self.reason)


# --- small validators shared with spec.py -------------------------------------------------


def as_number(value: Any, field: str, *, minimum: float | None = None,
              above: float | None = None, maximum: float | None = None) -> float:
    """`value` as a finite float; `minimum` is inclusive, `above` exclusive."""
    # TOML booleans are Python bools, which are ints: refuse them explicitly.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, f"must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise FieldError(field, f"must be finite, got {value!r}")
    if minimum is not None and x < minimum:
        raise FieldError(field, f"must be >= {minimum:g}, got {value!r}")
    if above is not None and x <= above:
        raise FieldError(field, f"must be > {above:g}, got {value!r}")
    if maximum is not None and x > maximum:
        raise FieldError(field, f"must be <= {maximum:g}, got {value!r}")
    return x


def as_int(value: Any, field: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise FieldError(field, f"must be >= {minimum}, got {value!r}")
    return value


def as_table(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be a table, got {value!r}")
    return value


def check_keys(d: Mapping[str, Any], allowed: set[str] | frozenset[str],
               required: set[str] | frozenset[str] = frozenset()) -> None:
    """Reject unknown keys (a typo must not silently become a default) and missing ones."""
    for key in d:
        if key not in allowed:
            raise FieldError(str(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in d:
            raise FieldError(key, "missing")


# --- latency distributions (all in seconds) ------------------------------------------------


@dataclass(frozen=True)
class Constant:
    kind: ClassVar[str] = "constant"
    value: float

    def __post_init__(self) -> None:
        as_number(self.value, "value", minimum=0)

    def sample(self, rng: np.random.Generator, request_id: int) -> float:
        return self.value

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "value": self.value}


@dataclass(frozen=True)
class Exponential:
    kind: ClassVar[str] = "exponential"
    mean: float

    def __post_init__(self) -> None:
        as_number(self.mean, "mean", above=0)

    def sample(self, rng: np.random.Generator, request_id: int) -> float:
        return float(rng.exponential(self.mean))

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "mean": self.mean}


@dataclass(frozen=True)
class ShiftedExponential:
    """`shift + Exp(mean)`: the usual straggler model (fixed work plus a random tail)."""

    kind: ClassVar[str] = "shifted_exponential"
    shift: float
    mean: float  # of the exponential part only; the total mean is shift + mean

    def __post_init__(self) -> None:
        as_number(self.shift, "shift", minimum=0)
        as_number(self.mean, "mean", above=0)

    def sample(self, rng: np.random.Generator, request_id: int) -> float:
        return self.shift + float(rng.exponential(self.mean))

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "shift": self.shift, "mean": self.mean}


@dataclass(frozen=True)
class LogNormal:
    kind: ClassVar[str] = "lognormal"
    median: float  # exp(mu): easier to pick than mu itself
    sigma: float

    def __post_init__(self) -> None:
        as_number(self.median, "median", above=0)
        as_number(self.sigma, "sigma", minimum=0)

    def sample(self, rng: np.random.Generator, request_id: int) -> float:
        return float(rng.lognormal(math.log(self.median), self.sigma))

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "median": self.median, "sigma": self.sigma}


@dataclass(frozen=True)
class Pareto:
    """Classic Pareto: never below `scale`; infinite mean for alpha <= 1."""

    kind: ClassVar[str] = "pareto"
    scale: float
    alpha: float

    def __post_init__(self) -> None:
        as_number(self.scale, "scale", above=0)
        as_number(self.alpha, "alpha", above=0)

    def sample(self, rng: np.random.Generator, request_id: int) -> float:
        # numpy's pareto() is Lomax (starts at 0); shifting by 1 gives the classic form.
        return self.scale * (1.0 + float(rng.pareto(self.alpha)))

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "scale": self.scale, "alpha": self.alpha}


@dataclass(frozen=True)
class Trace:
    """Recorded delays (ms), replayed cyclically: request r gets values_ms[r % len]."""

    kind: ClassVar[str] = "trace"
    values_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values_ms:
            raise FieldError("values_ms", "must hold at least one delay")
        for i, v in enumerate(self.values_ms):
            as_number(v, f"values_ms[{i}]", minimum=0)

    def sample(self, rng: np.random.Generator, request_id: int) -> float:
        return self.values_ms[request_id % len(self.values_ms)] / 1000.0

    def to_dict(self) -> dict[str, Any]:
        # Inline values, not the path: the dict is what a remote worker receives.
        return {"dist": self.kind, "values_ms": list(self.values_ms)}


Distribution = Union[Constant, Exponential, ShiftedExponential, LogNormal, Pareto, Trace]

# dist name -> (class, its numeric parameters)
LATENCY_KINDS: dict[str, tuple[type, tuple[str, ...]]] = {
    "constant": (Constant, ("value",)),
    "exponential": (Exponential, ("mean",)),
    "shifted_exponential": (ShiftedExponential, ("shift", "mean")),
    "lognormal": (LogNormal, ("median", "sigma")),
    "pareto": (Pareto, ("scale", "alpha")),
}


def load_trace(path: Path) -> tuple[float, ...]:
    """One delay in ms per line; blank lines and `#` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FieldError("path", f"cannot read trace file {str(path)!r}: {e.strerror}") from e
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            v = float(line)
        except ValueError:
            raise FieldError("path", f"{path}:{lineno}: not a number: {line!r}") from None
        if not math.isfinite(v) or v < 0:
            raise FieldError("path", f"{path}:{lineno}: delay must be finite and >= 0, got {line!r}")
        values.append(v)
    if not values:
        raise FieldError("path", f"trace file {str(path)!r} holds no delays")
    return tuple(values)


def parse_latency(d: Any, base_dir: Path | None = None) -> Distribution:
    """A latency table → a distribution. Errors name fields relative to the table."""
    d = as_table(d, "")
    dist = d.get("dist")
    if dist == "trace":
        check_keys(d, {"dist", "path", "values_ms"})
        if ("path" in d) == ("values_ms" in d):
            raise FieldError("path", "a trace needs exactly one of `path` or `values_ms`")
        if "path" in d:
            if not isinstance(d["path"], str):
                raise FieldError("path", f"must be a string, got {d['path']!r}")
            p = Path(d["path"])
            # Relative trace paths are relative to the scenario file, not the current dir.
            return Trace(load_trace(base_dir / p if base_dir and not p.is_absolute() else p))
        if not isinstance(d["values_ms"], (list, tuple)):
            raise FieldError("values_ms", f"must be a list of numbers, got {d['values_ms']!r}")
        return Trace(tuple(d["values_ms"]))
    if dist not in LATENCY_KINDS:
        kinds = ", ".join([*LATENCY_KINDS, "trace"])
        raise FieldError("dist", f"must be one of {kinds}; got {dist!r}")
    cls, params = LATENCY_KINDS[dist]
    check_keys(d, {"dist", *params}, required=set(params))
    return cls(*(d[p] for p in params))


# --- failure models ----------------------------------------------------------------------


@dataclass(frozen=True)
class CrashAt:
    """From `at_s` seconds after the worker started, it never answers again."""

    kind: ClassVar[str] = "crash_at"
    at_s: float

    def __post_init__(self) -> None:
        as_number(self.at_s, "at_s", minimum=0)

    def fails(self, rng: np.random.Generator, elapsed_s: float) -> bool:
        return elapsed_s >= self.at_s

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "at_s": self.at_s}


@dataclass(frozen=True)
class CrashProbability:
    """Each request is independently dropped with probability `p`."""

    kind: ClassVar[str] = "crash_probability"
    p: float

    def __post_init__(self) -> None:
        as_number(self.p, "p", minimum=0, maximum=1)

    def fails(self, rng: np.random.Generator, elapsed_s: float) -> bool:
        return bool(rng.random() < self.p)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "p": self.p}


@dataclass(frozen=True)
class Flapping:
    """Down for the last `down_s` of every `period_s`; `offset_s` shifts the cycle so that
    several workers need not flap in unison."""

    kind: ClassVar[str] = "flapping"
    period_s: float
    down_s: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        as_number(self.period_s, "period_s", above=0)
        as_number(self.down_s, "down_s", above=0)
        if self.down_s >= self.period_s:
            raise FieldError("down_s", f"must be < period_s ({self.period_s:g}), got {self.down_s!r}")
        as_number(self.offset_s, "offset_s", minimum=0)

    def fails(self, rng: np.random.Generator, elapsed_s: float) -> bool:
        phase = (elapsed_s + self.offset_s) % self.period_s
        return phase >= self.period_s - self.down_s

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "period_s": self.period_s, "down_s": self.down_s,
                "offset_s": self.offset_s}


Failure = Union[CrashAt, CrashProbability, Flapping]

FAILURE_KINDS: dict[str, tuple[type, tuple[str, ...], tuple[str, ...]]] = {
    # kind -> (class, required parameters, optional parameters)
    "crash_at": (CrashAt, ("at_s",), ()),
    "crash_probability": (CrashProbability, ("p",), ()),
    "flapping": (Flapping, ("period_s", "down_s"), ("offset_s",)),
}


def _parse_one_failure(d: Any) -> Failure | None:
    d = as_table(d, "")
    kind = d.get("kind")
    if kind == "none":
        check_keys(d, {"kind"})
        return None
    if kind not in FAILURE_KINDS:
        raise FieldError("kind", f"must be one of none, {', '.join(FAILURE_KINDS)}; got {kind!r}")
    cls, required, optional = FAILURE_KINDS[kind]
    check_keys(d, {"kind", *required, *optional}, required=set(required))
    return cls(**{k: v for k, v in d.items() if k != "kind"})


def parse_failures(value: Any) -> tuple[Failure, ...]:
    """A failure table, or a list of them (the worker fails if any one says so)."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        f = _parse_one_failure(value)
        return () if f is None else (f,)
    if not isinstance(value, (list, tuple)):
        raise FieldError("", f"must be a table or a list of tables, got {value!r}")
    out = []
    for i, item in enumerate(value):
        try:
            f = _parse_one_failure(item)
        except FieldError as e:
            raise e.under(f"[{i}]") from None
        if f is not None:
            out.append(f)
    return tuple(out)


# --- the per-worker behaviour ---------------------------------------------------------------


@dataclass(frozen=True)
class WorkerBehaviour:
    seed: int  # scenario seed; with worker_index and request id it fixes every draw
    worker_index: int
    latency: Distribution = Constant(0.0)
    failures: tuple[Failure, ...] = ()
    slowdown: float = 1.0  # per-worker compute slowdown; multiplies every sampled delay

    def __post_init__(self) -> None:
        # default_rng refuses negative seed words, so check here with a clear message.
        as_int(self.seed, "seed", minimum=0)
        as_int(self.worker_index, "worker_index", minimum=0)
        as_number(self.slowdown, "slowdown", above=0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], seed: int, worker_index: int,
                  base_dir: Path | None = None) -> WorkerBehaviour:
        """Build from the plain-dict format above; `base_dir` resolves relative trace paths."""
        d = as_table(d, "")
        check_keys(d, {"latency", "failure", "slowdown"})
        try:
            latency = parse_latency(d.get("latency", {"dist": "constant", "value": 0.0}), base_dir)
        except FieldError as e:
            raise e.under("latency") from None
        try:
            failures = parse_failures(d.get("failure"))
        except FieldError as e:
            raise e.under("failure") from None
        return cls(seed, worker_index, latency, failures, d.get("slowdown", 1.0))

    def to_dict(self) -> dict[str, Any]:
        """Inverse of `from_dict` (seed and worker index travel separately)."""
        return {"latency": self.latency.to_dict(),
                "failure": [f.to_dict() for f in self.failures],
                "slowdown": self.slowdown}

    def delay(self, request_id: int, elapsed_s: float) -> float | None:
        """Seconds to wait before answering `request_id`, or None: never answer it.

        `elapsed_s` is the time since the worker started (drives crash_at and flapping).
        """
        if isinstance(request_id, bool) or not isinstance(request_id, (int, np.integer)) \
                or request_id < 0:
            raise ValueError(f"request_id must be an integer >= 0, got {request_id!r}")
        words = [self.seed, self.worker_index, int(request_id)]
        if self.failures:
            frng = np.random.default_rng([*words, _FAILURE_STREAM])
            if any(f.fails(frng, elapsed_s) for f in self.failures):
                return None
        rng = np.random.default_rng([*words, _LATENCY_STREAM])
        return self.slowdown * self.latency.sample(rng, int(request_id))


def no_behaviour(worker_index: int = 0) -> WorkerBehaviour:
    """A worker that answers at once, always (the default outside scenarios)."""
    return WorkerBehaviour(seed=0, worker_index=worker_index)
