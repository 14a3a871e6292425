"""Which plan runs each straggler-mitigation scheme: one registry for scenarios, the HTTP service and
`edgecc master --scheme`.

A scheme is a name and a builder. A builder takes a `PlanRequest` — K (from the AICC model the run
is about, or given), the number of workers N, and the run's options — and returns a plan: the
master's side of the scheme (what to send each worker, when results suffice, how to decode; see
schemes/plan.py) and each worker's role: `name`, `compute_spec(index)` (what the worker runs, a
protocol/compute_spec.py kind) and `scheme_params(index)` (the scheme's own parameters, for the
worker's log), which `configure_message` puts on the wire. Adding a scheme is its plan module plus
one line in SCHEMES. Builders import their plans lazily, so reading the registry (scenario files
are validated against it) loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from ..protocol.messages import Configure

BASELINE = "default-mlp"  # the shipped centralized MLP: what the comparators' workers run


@dataclass(frozen=True)
class PlanRequest:
    N: int  # workers
    model: Any = None  # the AICC network (aicc), None for the schemes that only need K
    info: dict[str, Any] | None = None  # its model-file header
    K: int | None = None  # images per group; default: the AICC model's
    placement: str = "encoded"  # aicc only: "encoded" or "shared"
    wire_dtype: str = "f4"  # results (and encoded inputs) on the wire
    encode_precision: str = "auto"  # aicc: the master's encoder arithmetic
    byzantine: int = 0  # liars to decode around (aicc, approxifer)
    tolerance: float | None = None  # aicc: decoded-logit error bound (None: the plan's default)
    baseline: str = BASELINE  # the centralized model uncoded/replication/approxifer workers run
    learned_code_model: str = "learned-code"  # the learned code's model file
    points: str = "n"  # approxifer: worker points cos(iπ/N) ("n") or cos(iπ/(N−1)) ("n-1")

    @property
    def k(self) -> int:
        if self.K is not None:
            return self.K
        if self.info is None:
            raise ConfigError("a scheme needs K: give an AICC model or K")
        return int(self.info["scheme"]["K"])


def _aicc(r: PlanRequest):
    from .plan import CodedPlan

    if r.model is None or r.info is None or r.info.get("kind") != "aicc":
        raise ConfigError("the aicc scheme needs an AICC model")
    extra = {} if r.tolerance is None else {"tolerance": r.tolerance}
    return CodedPlan(r.model, r.info, r.N, r.placement, r.wire_dtype, r.byzantine, r.encode_precision, **extra)


def _replicated(copies_all: bool) -> Callable[[PlanRequest], Any]:
    def build(r: PlanRequest):
        from ..modelfile import load_model
        from .plan import ReplicatedPlan

        net, info = load_model(r.baseline)
        return ReplicatedPlan(net, info, r.k, r.N if copies_all else r.k, r.wire_dtype)

    return build


def _learned_code(r: PlanRequest):
    from ..modelfile import load_model
    from .plan import LearnedCodePlan

    plan = LearnedCodePlan(*load_model(r.learned_code_model), r.wire_dtype)
    if plan.N > r.N:  # its k+1 workers are the run's first k+1
        raise ConfigError(f"the learned code needs {plan.N} workers, the run has {r.N}")
    return plan


def _approxifer(r: PlanRequest):
    from ..modelfile import load_model
    from .approxifer import ApproxIFERPlan

    net, info = load_model(r.baseline)
    return ApproxIFERPlan(net, info, r.k, r.N, r.points, r.wire_dtype, r.byzantine)


SCHEMES: dict[str, Callable[[PlanRequest], Any]] = {
    "aicc": _aicc,  # the learned polynomial code: any R of N (schemes/plan.py CodedPlan)
    "uncoded": _replicated(False),  # K workers, one image each: wait for all
    "replication": _replicated(True),  # N workers, image n mod K each: the first copy wins
    "learned-code": _learned_code,  # Kosaian et al.: k data workers + 1 learned parity
    "approxifer": _approxifer,  # Soleymani et al.: Berrut-coded inputs to the centralized model (schemes/approxifer.py)
}


def build_plan(scheme: str, request: PlanRequest):
    """The plan for `scheme`, or ConfigError naming the schemes there are."""
    try:
        builder = SCHEMES[scheme]
    except KeyError:
        raise ConfigError(f"unknown scheme {scheme!r}; the schemes are {', '.join(SCHEMES)}") from None
    return builder(request)


def configure_message(plan, index: int, arrays: dict | None, dataset: str | None = None) -> Configure:
    """The `configure` of worker `index` of any plan; `arrays` nil when the worker preloaded the bundle."""
    return Configure(index, plan.name, plan.scheme_params(index), plan.compute_spec(index).to_wire(), plan.wire_dtype,
                     plan.digest, arrays, dataset)
