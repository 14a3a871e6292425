"""Sections 1-3 of `edgecc bench`: the machine, its matmul rate, and training throughput."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..nets.aicc import native_bf16
from . import costs
from .config import BenchConfig, loadavg, log, timeit


# -- 1. machine ---------------------------------------------------------------------------------
def bench_machine(cfg: BenchConfig) -> dict[str, Any]:
    import torch

    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count(), "cores_usable": affinity,
        "isa": sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "bf16_native": native_bf16("cpu"), "loadavg": loadavg(),
    }


def bench_precisions() -> tuple[str, ...]:
    """The precisions the training and master sections time. Emulated bf16 (no native kernels) is what
    "auto" never picks, and a CNN step in it takes nearly a minute; the dense-matmul line still shows its rate."""
    return ("fp32", "bf16") if native_bf16("cpu") else ("fp32",)


# -- 2. matmul rate -----------------------------------------------------------------------------
def bench_matmul(cfg: BenchConfig) -> dict[str, Any]:
    import torch

    n = cfg.matmul_n
    flops = 2 * n ** 3
    out: dict[str, Any] = {"n": n, "flops_per_matmul": flops}
    g = torch.Generator().manual_seed(0)
    a32, b32 = torch.rand(n, n, generator=g), torch.rand(n, n, generator=g)
    cases = {
        "torch_fp32": (lambda: torch.mm(a32, b32)),
        "torch_bf16": (lambda a=a32.bfloat16(), b=b32.bfloat16(): torch.mm(a, b)),
        "numpy_fp32": (lambda a=a32.numpy(), b=b32.numpy(): a @ b),
    }
    for name, fn in cases.items():
        t = timeit(fn, cfg.repeats, min_time=cfg.min_time)
        out[name] = {"gflops": flops / t["median_s"] / 1e9, "seconds": t["median_s"], "samples": t["samples"]}
    return out


# -- 3. training throughput ---------------------------------------------------------------------
def _train_configs(cfg: BenchConfig):
    from ..coding.schemes import Scheme

    configs = [("K2 CNN+CNN H_B", Scheme(K=2, G=1), 64),
               ("K2 MLP+MLP H_B", Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp"), 64)]
    if cfg.train_k4:
        configs.append(("K4 G1 P4 CNN+CNN H_S", Scheme(K=4, G=1, P=4, computation="hs"), 32))
    return configs


def bench_training(cfg: BenchConfig, matmul: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Steps as train.py runs them (its train_step: autocast bf16 forward, fp32 loss, backward, Adam); data
    loading excluded. The fp32 and bf16 models step alternately, so both see the same background load."""
    import torch

    from ..nets import AICC
    from ..train import TrainConfig, make_optimizer, train_step

    rows = []
    for name, scheme, batch in _train_configs(cfg):
        xb = torch.rand(batch * scheme.K, 28, 28)
        yb = torch.randint(0, 10, (batch * scheme.K,))
        gen = torch.Generator().manual_seed(0)
        steps: dict[str, Callable[[], Any]] = {}
        for dtype in bench_precisions():
            torch.manual_seed(0)
            model = AICC(scheme).train()
            tcfg = TrainConfig(precision=dtype)
            opt = make_optimizer(model, tcfg, cuda=False)
            steps[dtype] = lambda model=model, opt=opt, tcfg=tcfg, K=scheme.K: train_step(model, opt, "aicc", xb, yb, K, tcfg, gen)
        times: dict[str, list[float]] = {d: [] for d in steps}
        warmup = 2  # rounds that warm up (oneDNN primitives, autocast caches, allocator)
        for i in range(cfg.train_steps + warmup):
            for dtype in steps:
                t0 = time.perf_counter()
                steps[dtype]()
                if i >= warmup:
                    times[dtype].append(time.perf_counter() - t0)
        flops = costs.train_step_flops(scheme, batch)
        for dtype, ts in times.items():
            t = statistics.median(ts)
            achieved = flops / t / 1e9
            ref = (matmul or {}).get(f"torch_{dtype}", {}).get("gflops")
            rows.append({"name": name, "scheme": scheme.label(), "dtype": dtype, "batch": batch,
                         "step_s": t, "groups_per_s": batch / t, "images_per_s": batch * scheme.K / t, "steps": len(ts),
                         "step_samples": ts, "flops_per_step": flops, "achieved_gflops": achieved,
                         "matmul_gflops": ref, "fraction_of_matmul": achieved / ref if ref else None})
            log(f"training {name} {dtype}: {batch / t:.1f} groups/s")
        del steps, model, opt
        gc.collect()
    return rows
