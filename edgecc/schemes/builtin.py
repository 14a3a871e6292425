"""The schemes edgecc ships, declared: name, options, builder (imported on first build).

The order of BUILTIN is the order in which every list of schemes shows them; DEFAULT_SCHEMES is
what a scenario runs when it names none. Declaring costs no import of torch or of the plans.
"""

from __future__ import annotations

from typing import Any

from ..coding.berrut import WORKER_POINT_SETS
from ..coding.conditioning import DEFAULT_TOLERANCE
from .base import CENTRALIZED, Option, SchemeDef, model_header

BASELINE = "default-mlp"  # the shipped centralized MLP: the model of the schemes without a code of their own
WIRE_DTYPES = ("f4", "f2")


def _model(default: str, kinds: tuple[str, ...]) -> Option:
    return Option("model", default, f"the model it runs ({' or '.join(kinds)}): a shipped name or a model file",
                  model=True)


def _plain_model() -> Option:
    """The model option of the model-agnostic schemes: a centralized model the master sends, or the workers' own."""
    return Option("model", BASELINE, f"the model it runs ({' or '.join(CENTRALIZED)}): a shipped name or a model "
                  "file; or worker[?shape=HxW&classes=C&digest=HEX]: the base each worker's operator loaded "
                  "(`edgecc worker --base MODULE:CALLABLE`), checked at handshake", model=True)


def _wire_dtype() -> Option:
    return Option("wire_dtype", "f4", "dtype of the results (and inputs) on the wire", choices=WIRE_DTYPES)


def _byzantine() -> Option:
    return Option("byzantine", 0, "E: decode around up to E lying workers and name them", type=int, minimum=0)


def aicc_group_size(options: dict[str, Any]) -> int:
    return int(model_header(options["model"], ("aicc",), "aicc")["scheme"]["K"])


def learned_code_group_size(options: dict[str, Any]) -> int:
    return int(model_header(options["model"], ("learned-code",), "learned-code")["code"]["k"])


AICC = SchemeDef(
    "aicc", "edgecc.schemes.aicc:build",
    "the learned polynomial code of Tang et al.: any R of N results decode all K images",
    options=(
        _model("default", ("aicc",)),
        Option("placement", "encoded", "encoded: the master encodes, workers get X̃_n; shared: workers hold the "
               "encoder and get raw images", choices=("encoded", "shared")),
        _wire_dtype(),
        Option("encode_precision", "auto", "the master's encoder arithmetic (auto: bf16 for CNN encoders on CPUs "
               "with native bf16, else fp32)", choices=("auto", "fp32", "bf16")),
        _byzantine(),
        Option("tolerance", DEFAULT_TOLERANCE, "the decoded-logit error bound a request may decode with; a "
               "configuration that cannot reach it is refused at start", type=float),
        Option("policy", "bound", "bound: wait until the results in hand decode within the tolerance; first-r: "
               "decode the first R", choices=("bound", "first-r")),
        Option("points", "chosen", "the workers' evaluation points α: chosen for N (the model's own rule where its file "
               "records one: the systematic encoder's), or uniform n/(N+1)",
               choices=("chosen", "uniform")),
    ),
    model_kinds=("aicc",), group_size=aicc_group_size)

UNCODED = SchemeDef(
    "uncoded", "edgecc.schemes.replicated:build_uncoded",
    "K workers run the centralized model on one image each; wait for all",
    options=(_plain_model(), _wire_dtype()), model_kinds=CENTRALIZED)

REPLICATION = SchemeDef(
    "replication", "edgecc.schemes.replicated:build_replication",
    "N workers run the centralized model, worker n on image n mod K; the first copy wins",
    options=(_plain_model(), _wire_dtype()), model_kinds=CENTRALIZED)

LEARNED_CODE = SchemeDef(
    "learned-code", "edgecc.schemes.learned_code:build",
    "Kosaian et al.: k data workers and one learned parity worker; any k decode",
    options=(_model("learned-code", ("learned-code",)), _wire_dtype()),
    model_kinds=("learned-code",), group_size=learned_code_group_size)

APPROXIFER = SchemeDef(
    "approxifer", "edgecc.schemes.approxifer:build",
    "Soleymani et al.: Berrut-coded inputs to the centralized model; any K of N decode, approximately",
    options=(_plain_model(),
             Option("points", "n", "worker nodes cos(iπ/N) (n) or cos(iπ/(N−1)) (n-1)", choices=WORKER_POINT_SETS),
             _wire_dtype(), _byzantine()),
    model_kinds=CENTRALIZED)

LIGHT_MASTER = SchemeDef(
    "light-master", "edgecc.schemes.light_master:build",
    "ours, not the paper's: Lagrange-coded inputs to a quadratic-activation MLP; any R = 2(K−1)+1 of N decode exactly",
    options=(_model("poly-mlp", ("poly-mlp",)), _wire_dtype()),
    model_kinds=("poly-mlp",))

LOCAL = SchemeDef(
    "local", "edgecc.schemes.local:build",
    "the master classifies with the centralized model itself, no workers: the baseline for when coding pays",
    options=(_model(BASELINE, CENTRALIZED),), model_kinds=CENTRALIZED)

BUILTIN = (AICC, UNCODED, REPLICATION, LEARNED_CODE, APPROXIFER, LOCAL, LIGHT_MASTER)
DEFAULT_SCHEMES = ("aicc", "uncoded", "replication")  # the learned code, ApproxIFER, the light master and local run where named
