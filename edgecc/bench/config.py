"""The benchmark's configuration and the measuring helpers every section uses (timing, threads, load)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np



SECTIONS = ("machine", "matmul", "training", "master", "worker", "codec", "end_to_end", "latency", "small_requests", "memory", "costs")


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = True
    repeats: int = 3  # samples per micro-benchmark (median reported)
    min_time: float = 0.02  # seconds per sample: tiny operations are looped until they take this long
    matmul_n: int = 1024
    train_steps: int = 3  # timed steps per training configuration (after one warm-up step)
    train_k4: bool = False  # also time K=4 G=1 P=4 H_S CL (slow: ~3 s a step)
    batch: int = 64  # groups per batch for master/worker costs (and the e2e requests)
    models: tuple[str, ...] = ("cnn", "mlp")  # 'cnn': shipped default (CNN encoder); 'mlp': MLP+MLP H_B
    e2e_images: int = 8000  # images streamed per end-to-end run (fewer and the pipeline's fill and drain weigh in)
    e2e_repeats: int = 2
    e2e_Ns: tuple[int, ...] = (3, 10)
    in_flight: int = 4
    latency_requests: int = 100
    small_rounds: int = 2  # small requests under load: rounds, each running every cell once
    small_seconds: float = 2.0  # per cell
    latency_rounds: int = 3  # single-request latency: rounds with fresh workers; the p50 reported is their median
    memory_requests: int = 64
    memory_delay: float = 0.5  # seconds each worker holds every answer (raised if encoding all requests takes longer)

    @classmethod
    def for_mode(cls, quick: bool) -> "BenchConfig":
        if quick:
            return cls()
        return cls(quick=False, repeats=7, min_time=0.05, matmul_n=2048, train_steps=5, train_k4=True,
                   e2e_images=10000, e2e_repeats=3, latency_requests=200, memory_requests=256)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- timing helpers -----------------------------------------------------------------------------
def timeit(fn: Callable[[], Any], repeats: int, min_time: float = 0.02, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of `fn`: calls are looped so that one sample lasts >= min_time."""
    for _ in range(warmup):
        fn()
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or number >= 1 << 16:
            break
        number *= 10 if dt <= 0 else max(2, min(10, int(min_time / dt * 1.3) + 1))
    samples = [dt / number]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples": len(samples), "calls_per_sample": number}


_POOL: ThreadPoolExecutor | None = None


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in one dedicated thread, as the master's encode_pool and the worker's compute pool
    run torch/numpy: on a loaded 2-core machine a tiny torch op from the main thread (2 OpenMP threads)
    was measured 15x slower than the same op from a pool thread."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecc-bench")
    torch = sys.modules.get("torch")
    if torch is None:
        return _POOL.submit(fn, *args).result()
    # torch.set_num_threads in the caller (torch_threads) does not reach a thread that already ran a torch op:
    # that thread keeps the count it started with (measured: 2 in the pool while the caller had set 1), so the
    # pool thread takes the caller's count for this call
    threads = torch.get_num_threads()

    def with_threads() -> Any:
        torch.set_num_threads(threads)
        return fn(*args)

    return _POOL.submit(with_threads).result()


def side_by_side_pool() -> ThreadPoolExecutor | None:
    """Threads for an encoder's other networks (Plan.side_by_side), one torch thread each, on the cores a lone
    request leaves idle, as the Master's stack_pool; None on one core. The caller shuts it down."""
    import torch

    cores = os.cpu_count() or 1
    return ThreadPoolExecutor(cores - 1, initializer=torch.set_num_threads, initargs=(1,)) if cores > 1 else None


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to n inside, restored after (Master() sets it to 1 process-wide)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- results as JSON -------------------------------------------------------------------------------------
def jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o
