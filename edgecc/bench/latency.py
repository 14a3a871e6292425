"""Single-request latency over loopback, measured in a fresh process (see harness.bench_latency).

`python -m edgecc.bench.latency '{"cfg": {"models": ["cnn", "mlp"], "latency_requests": 100,
"latency_rounds": 3}, "tmp": DIR}'` (token in $EDGECC_TOKEN) prints the rows as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _main() -> None:
    from ..data import load_sample
    from .harness import BenchConfig, _jsonable, latency_rows, load_bench_models

    args = json.loads(sys.argv[1])
    c = args["cfg"]
    cfg = BenchConfig(models=tuple(c["models"]), latency_requests=int(c["latency_requests"]),
                      latency_rounds=int(c["latency_rounds"]))
    tmp = Path(args["tmp"])
    models = load_bench_models(tmp, cfg.models)
    rows = latency_rows(cfg, models, load_sample()[0], tmp, os.environ["EDGECC_TOKEN"])
    print(json.dumps(_jsonable(rows)))


if __name__ == "__main__":
    _main()
