#!/usr/bin/env bash
# The AICC master's per-request price (issue #33), measured the way README and docs/results.md report it:
#   1. `edgecc bench --quick` (all sections; master: one group alone against its share of 16 and 64 groups;
#      small_requests: one-group requests at concurrency 1/4/16 with the waiting ones encoded alone and together,
#      side by side; latency: single-request overhead over 3 rounds; end_to_end: N=3 and N=10 with the CPU split)
#      -> results/bench.{json,md}
#   2. the one-straggler scenario (150 requests, every scheme) -> results/scenarios/one-straggler/
#   3. a load sweep of AICC, the learned code and uncoded on a rate grid of steps <= 1.5x, with the CPU split at each rate
#      (scenarios/load-n3-fine.toml) -> results/scenarios/load-n3-fine-sweep/
# Run from the repository root with the venv set up (./run.sh setup); about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m edgecc.cli bench --quick --out results/bench.json
$PY -m edgecc.cli scenario run scenarios/one-straggler.toml --out results/scenarios --quiet
$PY -m edgecc.cli scenario sweep scenarios/load-n3-fine.toml --rates 100,150,225,340,500,600,750,1000 --duration 5 \
    --out results/scenarios --quiet
