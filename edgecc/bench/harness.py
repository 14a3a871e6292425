"""The benchmark harness behind `edgecc bench`: what the code costs on this machine, side by side.

Every number is a median over repeats; every ratio compares two things measured in the same run
(interleaved where it matters), so background load hurts both sides alike. The machine's load
average is recorded before and after: on a 2-core box shared with a training job the absolute
numbers move, the ratios much less.

Sections (keys of the result), each in its own module: machine, matmul, training (`machine`);
master, worker (`per_group_cost`); codec; end_to_end; latency (`request_latency`); small_requests; memory; costs (the
analytic who-computes-what table, `costs`, tabulated here). This module runs them in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import costs
from .codec import bench_codec
from .config import SECTIONS, BenchConfig, jsonable, loadavg, log, timeit
from .end_to_end import bench_end_to_end
from .machine import bench_machine, bench_matmul, bench_precisions, bench_training  # noqa: F401  (bench_precisions: for tests)
from .markdown import render_markdown
from .memory import bench_memory
from .models import CollapseMemo, load_bench_models
from .per_group_cost import bench_master, bench_worker
from .request_latency import bench_latency
from .small_requests import bench_small_requests


# -- 9. who computes what -----------------------------------------------------------------------
def bench_costs(cfg: BenchConfig, e2e: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rows = costs.cost_table(wire_dtype="f4", groups_per_request=cfg.batch)
    checks = []
    for r in e2e or []:
        if r.get("bytes_sent") and r.get("bytes_sent_expected"):
            checks.append({"model": r["model"], "N": r["N"], "bytes_sent": r["bytes_sent"],
                           "expected": r["bytes_sent_expected"], "ratio": r["bytes_sent"] / r["bytes_sent_expected"],
                           "per_group_per_worker": r["bytes_sent_per_group_per_worker"]})
    return {"conventions": "FLOPs = 2 x multiply-adds (biases/activations not counted); bytes = array payload, "
                           "'framed' adds the msgpack frame overhead of one request spread over its groups; "
                           "worker FLOPs of the shared placement are what SharedCompute runs (H uncollapsed), "
                           "'worker_if_collapsed' what it would run with the affine map",
            "rows": rows, "bytes_check": checks,
            "reference": {"cnn_baseline_flops_per_image": costs.cnn_baseline_flops(),
                          "mlp_baseline_flops_per_image": costs.mlp_baseline_flops(),
                          "cnn_baseline_params": costs.cnn_baseline_params()}}


# -- driver -------------------------------------------------------------------------------------
def run(cfg: BenchConfig, out: str | os.PathLike | None = None, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Run `sections` (in dependency order) and write the JSON to `out` when given."""
    from ..data import load_sample, load_split

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    import torch

    threads0 = torch.get_num_threads()
    started = time.time()
    result: dict[str, Any] = {"meta": {"torch_threads_default": threads0, "quick": cfg.quick, "config": asdict(cfg), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "loadavg_before": loadavg(), "section_seconds": {}, "errors": {}}}
    token = secrets.token_hex(24)
    sample_x, sample_y = load_sample()

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            return
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # one broken section must not lose the others
            result[name] = None
            result["meta"]["errors"][name] = f"{type(e).__name__}: {e}"
            log(f"{name} failed: {traceback.format_exc()}")
        finally:
            torch.set_num_threads(threads0)  # a Master sets 1 thread process-wide; every section starts at the default
        result["meta"]["section_seconds"][name] = round(time.perf_counter() - t0, 2)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecc-bench-")))
        section("machine", lambda: bench_machine(cfg))
        section("matmul", lambda: bench_matmul(cfg))
        section("training", lambda: bench_training(cfg, result.get("matmul")))
        models: dict[str, Any] = {}
        if set(sections) & {"master", "worker", "end_to_end", "latency", "small_requests", "memory"}:
            keys = tuple(dict.fromkeys((*cfg.models, "mlp", "hs")))  # memory uses 'mlp', worker 'hs'
            models = load_bench_models(tmp, keys)
            result["meta"]["models"] = {k: {"label": v["label"], "source": v["source"]} for k, v in models.items()}
        memo = stack.enter_context(CollapseMemo())
        result["meta"]["collapse_affine"] = memo.seconds  # the real (first) call per network, as CodedPlan pays it
        section("master", lambda: bench_master(cfg, models, sample_x, threads=(threads0, 1)))
        section("worker", lambda: bench_worker(cfg, models, sample_x))
        section("codec", lambda: bench_codec(cfg))
        if "end_to_end" in sections:
            x, y, src = sample_x, sample_y, "sample"
            if cfg.e2e_images > sample_x.shape[0]:
                try:
                    x, y = load_split("test")
                    src = "test"
                except Exception:
                    reps = -(-cfg.e2e_images // sample_x.shape[0])
                    x, y, src = np.tile(sample_x, (reps, 1, 1)), np.tile(sample_y, reps), "sample (tiled)"
            x, y = x[: cfg.e2e_images], y[: cfg.e2e_images]
            result["meta"]["e2e_images_source"] = src
            section("end_to_end", lambda: bench_end_to_end(cfg, models, x, y, tmp, token, threads0))
        section("latency", lambda: bench_latency(cfg, tmp, token))
        section("small_requests", lambda: bench_small_requests(cfg, models, sample_x, tmp, token))
        section("memory", lambda: bench_memory(cfg, tmp, token))
        section("costs", lambda: bench_costs(cfg, result.get("end_to_end")))
    result["meta"]["loadavg_after"] = loadavg()
    result["meta"]["elapsed_s"] = round(time.time() - started, 1)
    result = jsonable(result)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return result


def main(quick: bool = True, out: str = "results/bench.json", sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Run the benchmark's `sections` (default all; quick: fewer repeats, smaller sizes) and write the JSON to `out`."""
    return run(BenchConfig.for_mode(quick), out, sections)


__all__ = ["BenchConfig", "SECTIONS", "main", "render_markdown", "run", "timeit"]
