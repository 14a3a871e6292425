"""The benchmark harness behind `edgecc bench`: what the code costs on this machine, side by side.

Every number is a median over repeats; every ratio compares two things measured in the same run
(interleaved where it matters), so background load hurts both sides alike. The machine's load
average is recorded before and after: on a 2-core box shared with a training job the absolute
numbers move, the ratios much less.

Sections (keys of the result): machine, matmul, training, master, worker, end_to_end, latency,
memory, costs (the analytic who-computes-what table, `edgecc.bench.costs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..nets.aicc import native_bf16
from ..runtime.local import LocalWorker, memory_status
from . import costs
from .markdown import render_markdown

SECTIONS = ("machine", "matmul", "training", "master", "worker", "end_to_end", "latency", "memory", "costs")


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
    e2e_images: int = 2000  # images streamed per end-to-end run (fewer and startup dominates the ratio)
    e2e_repeats: int = 2
    e2e_Ns: tuple[int, ...] = (3, 10)
    in_flight: int = 4
    latency_requests: int = 100
    latency_rounds: int = 3  # single-request latency: rounds with fresh workers; the p50 reported is their median
    memory_requests: int = 64
    memory_delay: float = 0.5  # seconds each worker holds every answer (raised if encoding all requests takes longer)

    @classmethod
    def for_mode(cls, quick: bool) -> "BenchConfig":
        if quick:
            return cls()
        return cls(quick=False, repeats=7, min_time=0.05, matmul_n=2048, train_steps=5, train_k4=True,
                   e2e_images=4000, e2e_repeats=3, latency_requests=200, memory_requests=256)


def _log(msg: str) -> None:
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
    return _POOL.submit(fn, *args).result()


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


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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
        "bf16_native": native_bf16("cpu"), "loadavg": _loadavg(),
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
            _log(f"training {name} {dtype}: {batch / t:.1f} groups/s")
        del steps, model, opt
        gc.collect()
    return rows


# -- models -------------------------------------------------------------------------------------
def _save_load(model, info: dict[str, Any], tmp: Path, name: str):
    from ..modelfile import load_model, save_model

    path = tmp / f"{name}.safetensors"
    save_model(path, model, info)
    return load_model(path)


def load_bench_models(tmp: Path, keys: tuple[str, ...] = ("cnn", "mlp", "hs")) -> dict[str, dict[str, Any]]:
    """'cnn': the shipped default model, or an untrained K=2 G=1 CNN+CNN H_B when it is not there yet;
    'mlp': an untrained K=2 G=1 MLP+MLP H_B (timing does not depend on the weights); 'hs': an untrained
    K=2 G=1 P=1 CNN+CNN H_S (worker cost only)."""
    import torch

    from ..coding.schemes import Scheme
    from ..modelfile import load_model, resolve
    from ..nets import AICC

    out: dict[str, dict[str, Any]] = {}
    if "cnn" in keys:
        try:
            model, info = load_model("default")
            out["cnn"] = {"model": model, "info": info, "source": f"shipped default ({resolve('default').name})"}
        except Exception as e:  # not trained yet (ModelFileError) or unreadable
            torch.manual_seed(0)
            s = Scheme(K=2, G=1)
            model, info = _save_load(AICC(s), {"kind": "aicc", "scheme": s.to_dict()}, tmp, "fallback-cnn")
            out["cnn"] = {"model": model, "info": info,
                          "source": f"untrained fallback, shipped default unavailable ({type(e).__name__})"}
    for key, s in (("mlp", Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")),
                   ("hs", Scheme(K=2, G=1, P=1, computation="hs"))):
        if key in keys:
            torch.manual_seed(0)
            model, info = _save_load(AICC(s), {"kind": "aicc", "scheme": s.to_dict()}, tmp, key)
            out[key] = {"model": model, "info": info, "source": "untrained"}
    for m in out.values():
        m["scheme"] = Scheme.from_dict(m["info"]["scheme"])
        m["label"] = m["scheme"].label()
    return out


class _CollapseMemo:
    """While active, edgecc.export.collapse_affine computes each network's affine map once per bench run
    (CodedPlan and worker_arrays call it on every construction) and records how long the real call took."""

    def __init__(self):
        self.cache: dict[int, tuple[Any, tuple[np.ndarray, np.ndarray]]] = {}
        self.seconds: list[dict[str, Any]] = []

    def __enter__(self) -> "_CollapseMemo":
        from .. import export

        self.export, self.original = export, export.collapse_affine

        def memo(net):
            hit = self.cache.get(id(net))
            if hit is not None and hit[0] is net:
                return hit[1]
            t0 = time.perf_counter()
            r = self.original(net)
            self.seconds.append({"net": type(net).__name__, "params": sum(p.numel() for p in net.parameters()),
                                 "seconds": time.perf_counter() - t0})
            self.cache[id(net)] = (net, r)
            return r

        export.collapse_affine = memo
        return self

    def __exit__(self, *exc) -> None:
        self.export.collapse_affine = self.original
        self.cache.clear()


def _groups(images: np.ndarray, K: int, B: int) -> np.ndarray:
    n = B * K
    reps = -(-n // images.shape[0])
    return np.tile(images, (reps, 1, 1))[:n].reshape(B, K, 28, 28)


# -- 4. master cost per group -------------------------------------------------------------------
def bench_master(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, N: int = 3,
                 threads: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Per-group master cost at each torch thread count in `threads` (the Master encodes with 1 thread per
    op, several requests in parallel; torch's default is one op on all cores)."""
    import torch

    from ..nets import CentralizedCNN
    from ..runtime.plan import CodedPlan

    precisions = bench_precisions()
    torch.manual_seed(0)
    cnn = CentralizedCNN().eval()
    out: dict[str, Any] = {"N": N, "models": []}
    for key in cfg.models:
        m = models[key]
        model, info, s = m["model"], m["info"], m["scheme"]
        t0 = time.perf_counter()
        plan = CodedPlan(model, info, N, "encoded")
        plan_build_s = time.perf_counter() - t0
        shared = CodedPlan(model, info, N, "shared")
        row: dict[str, Any] = {"model": key, "label": m["label"], "source": m["source"], "plan_build_s": plan_build_s,
                               "plan_encode_precision": plan.encode_precision, "by_batch": []}
        rng = np.random.default_rng(0)
        for B, nthreads in [(B, n) for B in (cfg.batch, 1) for n in dict.fromkeys(threads)]:
            imgs = _groups(images, s.K, B)
            x = torch.from_numpy(imgs.astype(np.float32) / 255.0)
            xc = x.reshape(B * s.K, 28, 28)
            results = {i: rng.standard_normal((B, 10)).astype(np.float32) for i in range(s.R)}

            def encode(precision: str = "fp32") -> None:
                with torch.inference_mode():
                    model.encode(x, plan.alphas, precision)

            def central() -> None:
                with torch.inference_mode():
                    cnn(xc)

            with torch_threads(nthreads):
                cases = {
                    "encode": encode,
                    **({"encode_bf16": lambda: encode("bf16")} if "bf16" in precisions else {}),
                    "payloads_encoded": lambda: plan.payloads(imgs),
                    "payloads_shared": lambda: shared.payloads(imgs),
                    "decode": lambda: plan.decode(results),
                    "centralized_cnn": central,
                }
                t = {name: in_thread(timeit, fn, cfg.repeats, cfg.min_time)["median_s"] / B for name, fn in cases.items()}
            enc_total = t["payloads_encoded"] + t["decode"]
            sh_total = t["payloads_shared"] + t["decode"]
            row["by_batch"].append({
                "groups": B, "torch_threads": nthreads, "seconds_per_group": t,
                "encoded_total": enc_total, "shared_total": sh_total,
                "encoded_over_centralized_cnn": enc_total / t["centralized_cnn"],
                "shared_over_centralized_cnn": sh_total / t["centralized_cnn"],
                "encode_gflops": costs.master_encode_flops(s, N) / t["encode"] / 1e9,
                "centralized_cnn_gflops": s.K * costs.cnn_baseline_flops() / t["centralized_cnn"] / 1e9,
            })
        _log(f"master {m['label']}: encode {row['by_batch'][0]['seconds_per_group']['encode'] * 1e3:.2f} ms/group at B={cfg.batch}")
        out["models"].append(row)
    return out


# -- 5. worker cost per group -------------------------------------------------------------------
def bench_worker(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, N: int = 3) -> dict[str, Any]:
    """Per-group worker cost, single-threaded as `edgecc worker` runs (it sets OMP_NUM_THREADS=1)."""
    with torch_threads(1):
        return _bench_worker(cfg, models, images, N)


def _bench_worker(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, N: int) -> dict[str, Any]:
    import torch

    from ..coding.schemes import default_alphas
    from ..export import worker_arrays
    from ..protocol.frames import decode_payload, encode_frame, pack_array, unpack_array
    from ..protocol.messages import Compute, Result, parse
    from ..runtime.compute import EncodedCompute
    from ..runtime.shared_compute import SharedCompute

    alpha = default_alphas(N)[0]
    rng = np.random.default_rng(0)
    rows = []
    for B in (cfg.batch, 1):
        xt = rng.random((B, 28, 28), dtype=np.float32)
        for key in (*cfg.models, "hs"):
            m = models[key]
            s = m["scheme"]
            comp = EncodedCompute(s, worker_arrays(m["model"], m["info"], "encoded"))
            v = rng.random((B, s.P + 1, 28, 28), dtype=np.float32) if s.computation == "hs" else None
            t = in_thread(timeit, lambda: comp(xt, v), cfg.repeats, cfg.min_time)["median_s"]
            rows.append({"what": f"encoded {'H_S' if v is not None else 'H_B'} (collapsed affine, numpy)",
                         "model": key, "label": m["label"], "groups": B, "seconds_per_group": t / B,
                         "flops_per_group": costs.affine_flops() + (costs.horner_flops(s.P) if v is not None else 0)})
        for key in cfg.models:
            m = models[key]
            s, model = m["scheme"], m["model"]
            imgs = _groups(images, s.K, B)
            sc = SharedCompute(s, worker_arrays(model, m["info"], "shared"), alpha)
            t = in_thread(timeit, lambda: sc(imgs), cfg.repeats, cfg.min_time)["median_s"]
            rows.append({"what": "shared E+H (SharedCompute, torch, H uncollapsed)", "model": key, "label": m["label"],
                         "groups": B, "seconds_per_group": t / B, "flops_per_group": costs.shared_worker_flops(s, False)})
            comp = EncodedCompute(s, worker_arrays(model, m["info"], "encoded"))

            def collapsed() -> None:
                with torch.inference_mode():
                    x = torch.from_numpy(imgs.astype(np.float32) / 255.0)
                    comp(model.encode(x, [alpha])[:, 0].numpy())

            t = in_thread(timeit, collapsed, cfg.repeats, cfg.min_time)["median_s"]
            rows.append({"what": "shared E + collapsed H (what SharedCompute could run)", "model": key, "label": m["label"],
                         "groups": B, "seconds_per_group": t / B, "flops_per_group": costs.shared_worker_flops(s, True)})
    # the protocol's per-request cost on each side: frame encode (master) / decode + unpack (worker)
    proto = []
    for B in (cfg.batch, 1):
        x = rng.random((B, 28, 28), dtype=np.float32)
        y = rng.random((B, 10), dtype=np.float32)
        up = Compute(1000, pack_array(x, "f4"), None, None, None)
        frame = encode_frame(up.to_wire())
        down = encode_frame(Result(1000, pack_array(y, "f4")).to_wire())

        def worker_side() -> None:
            msg = parse(decode_payload(frame[4:]))
            unpack_array(msg.x, "x", shape=(None, 28, 28)).astype(np.float32)
            encode_frame(Result(msg.id, pack_array(y, "f4")).to_wire())

        def master_side() -> None:
            encode_frame(Compute(1000, pack_array(x, "f4"), None, None, None).to_wire())
            msg = parse(decode_payload(down[4:]))
            unpack_array(msg.y, "y", shape=(B, 10))

        for name, fn in (("worker: decode compute frame + unpack + encode result", worker_side),
                         ("master: encode compute frame + decode result (per worker)", master_side)):
            t = in_thread(timeit, fn, cfg.repeats, cfg.min_time)["median_s"]
            proto.append({"what": name, "groups": B, "seconds_per_request": t, "seconds_per_group": t / B,
                          "frame_bytes": len(frame)})
    return {"N": N, "alpha": alpha, "torch_threads": torch.get_num_threads(), "compute": rows, "protocol": proto}


# -- worker processes ---------------------------------------------------------------------------
class LocalWorkers:
    """n local worker processes (edgecc.runtime.local), optionally with an injected behaviour."""

    def __init__(self, n: int, tmp: Path, token: str, behaviour: dict | None = None, tag: str = "w"):
        extra = ["--behaviour", json.dumps(behaviour)] if behaviour is not None else []
        self.workers = [LocalWorker(tmp, f"{tag}{i}", ["--log-level", "warning", "--index", str(i), *extra], token=token)
                        for i in range(n)]
        self.n = n

    def __enter__(self) -> "LocalWorkers":
        try:
            for w in self.workers:
                w.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def ports(self) -> list[int]:
        return [w.port for w in self.workers]

    def addresses(self, n: int | None = None) -> list[tuple[str, int]]:
        return [w.address for w in self.workers[: n or self.n]]

    def status(self) -> list[dict[str, int]]:
        return [memory_status(w.pid) for w in self.workers]

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()


async def _connected_master(plan, addresses, token: bytes, request_timeout: float = 60.0):
    from ..runtime.master import Master

    m = Master(plan, addresses, token, request_timeout=request_timeout)
    await m.start(wait_ready=30)
    if not await m.wait_all_ready(30):
        await m.close()
        raise RuntimeError(f"only {m.ready_count()} of {plan.N} workers connected")
    return m


def _run(coro):
    from ..runtime.transport import run

    return run(coro)


# -- 6. end-to-end throughput -------------------------------------------------------------------
def _inprocess(model, scheme, plan, comp, groups: np.ndarray, B: int, collapsed: bool) -> np.ndarray:
    """Predictions for all groups computed in this process, batch by batch, decoded like the master."""
    import torch

    preds = []
    with torch.inference_mode():
        for i in range(0, groups.shape[0], B):
            x = torch.from_numpy(groups[i : i + B].astype(np.float32) / 255.0)
            if collapsed:  # the same arithmetic as the distributed run: encode, N affine maps, decode
                xt = model.encode(x, plan.alphas, plan.encode_precision).numpy()
                results = {n: comp(xt[:, n]) for n in range(plan.N)}
            else:  # the torch model at the N points (H uncollapsed), as evaluate.py does
                y = model(x, plan.alphas).numpy()
                results = {n: y[:, n] for n in range(plan.N)}
            preds.append(plan.decode(results).argmax(-1).reshape(-1))
    return np.concatenate(preds)


def bench_end_to_end(cfg: BenchConfig, models, images: np.ndarray, labels: np.ndarray, tmp: Path,
                     token: str, threads: int) -> list[dict[str, Any]]:
    """In-process runs use torch's default `threads` (as evaluate.py runs); the Master sets its own."""
    from ..export import worker_arrays
    from ..runtime.compute import EncodedCompute
    from ..runtime.master import run_stream
    from ..runtime.plan import CodedPlan

    rows = []
    with LocalWorkers(max(cfg.e2e_Ns), tmp, token, tag="e2e") as workers:
        for key in cfg.models:
            m = models[key]
            model, info, s = m["model"], m["info"], m["scheme"]
            comp = EncodedCompute(s, worker_arrays(model, info, "encoded"))
            n = images.shape[0] - images.shape[0] % s.K
            groups = images[:n].reshape(-1, s.K, 28, 28)
            for N in cfg.e2e_Ns:
                plan = CodedPlan(model, info, N, "encoded")
                e2e, inp_model, inp_coll, agree = [], [], [], []
                summary: dict[str, Any] = {}
                with torch_threads(threads):
                    for collapsed in (False, True):  # warm-up
                        in_thread(_inprocess, model, s, plan, comp, groups[: cfg.batch], cfg.batch, collapsed)
                for _ in range(cfg.e2e_repeats):  # interleaved: both sides see the same background load
                    with torch_threads(threads):
                        t0 = time.perf_counter()
                        ref = in_thread(_inprocess, model, s, plan, comp, groups, cfg.batch, False)
                        inp_model.append(n / (time.perf_counter() - t0))
                        t0 = time.perf_counter()
                        in_thread(_inprocess, model, s, plan, comp, groups, cfg.batch, True)
                        inp_coll.append(n / (time.perf_counter() - t0))

                    async def stream():
                        master = await _connected_master(plan, workers.addresses(N), token.encode())
                        try:
                            return await run_stream(master, images[:n], labels[:n], groups_per_request=cfg.batch,
                                                    in_flight=cfg.in_flight)
                        finally:
                            await master.close()

                    summary, preds = _run(stream())
                    e2e.append(summary["images_per_s"])
                    agree.append(float((preds == ref).mean()))
                # bytes check: every request to every worker is one Compute frame
                sizes = [min(cfg.batch, groups.shape[0] - i) for i in range(0, groups.shape[0], cfg.batch)]
                expected = sum(N * costs.frame_overhead(s, "encoded", b, req_id=i)["compute_frame"]
                               for i, b in enumerate(sizes))  # a fresh Master numbers requests 0, 1, ...
                row = {"model": key, "label": m["label"], "source": m["source"], "N": N, "R": s.R, "images": n,
                       "inprocess_torch_threads": threads,
                       "groups_per_request": cfg.batch, "in_flight": cfg.in_flight, "repeats": cfg.e2e_repeats,
                       "e2e_images_per_s": statistics.median(e2e),
                       "inprocess_model_images_per_s": statistics.median(inp_model),
                       "inprocess_collapsed_images_per_s": statistics.median(inp_coll),
                       "e2e_over_inprocess_model": statistics.median(e2e) / statistics.median(inp_model),
                       "e2e_over_inprocess_collapsed": statistics.median(e2e) / statistics.median(inp_coll),
                       "prediction_agreement": min(agree),
                       "requests_failed": summary.get("requests_failed"), "latency_ms": summary.get("latency_ms"),
                       "bytes_sent": summary.get("bytes_sent"), "bytes_sent_expected": expected,
                       "bytes_sent_per_group_per_worker": summary.get("bytes_sent", 0) / (groups.shape[0] * N),
                       "samples": {"e2e": e2e, "inprocess_model": inp_model, "inprocess_collapsed": inp_coll}}
                _log(f"e2e {m['label']} N={N}: {row['e2e_images_per_s']:.0f} img/s vs in-process "
                     f"{row['inprocess_collapsed_images_per_s']:.0f} (collapsed) / {row['inprocess_model_images_per_s']:.0f} (model)")
                rows.append(row)
    return rows


# -- 7. single-request latency ------------------------------------------------------------------
async def _ping_rtts(address: tuple[str, int], token: bytes, count: int) -> list[float]:
    """Round trips of Ping/Pong on an authenticated connection: the transport and framing alone
    (the worker answers pings on its event loop, no compute thread)."""
    from ..protocol import auth
    from ..protocol.messages import PROTOCOL_VERSION, Auth, Hello, Ping, Pong, Welcome
    from ..runtime.transport import connect

    comm = await connect(*address, timeout=5.0)
    try:
        hello = await comm.read(timeout=5.0)
        if not isinstance(hello, Hello):
            raise RuntimeError(f"expected hello, got {hello.TYPE}")
        nonce = auth.new_nonce()
        await comm.write(Auth(PROTOCOL_VERSION, nonce, auth.master_mac(token, hello.nonce, nonce)))
        if not isinstance(await comm.read(timeout=5.0), Welcome):
            raise RuntimeError("worker refused the handshake")
        rtts = []
        for i in range(count + 5):
            t0 = time.perf_counter()
            await comm.write(Ping(i))
            while not isinstance(await comm.read(timeout=5.0), Pong):
                pass
            if i >= 5:
                rtts.append(time.perf_counter() - t0)
        return rtts
    finally:
        await comm.close()


def bench_latency(cfg: BenchConfig, tmp: Path, token: str, timeout: float = 1800.0) -> list[dict[str, Any]]:
    """In a fresh process (`python -m edgecc.bench.latency`), like the memory section: in one process after
    the other sections, the MLP model's overhead measured 1.07-1.13 ms in 3 runs, alone 0.65-0.79 ms in 4;
    a master process does not carry a benchmark's leftovers."""
    args = {"cfg": {"models": list(cfg.models), "latency_requests": cfg.latency_requests,
                    "latency_rounds": cfg.latency_rounds}, "tmp": str(tmp)}
    env = {**os.environ, "EDGECC_TOKEN": token}
    env.pop("EDGECC_TOKEN_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "edgecc.bench.latency", json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"latency benchmark exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def latency_rows(cfg: BenchConfig, models, images: np.ndarray, tmp: Path, token: str, N: int = 3) -> list[dict[str, Any]]:
    """Single-group requests against in-process compute of the same group, in rounds (this process)."""
    rows = []
    ping_all: list[float] = []
    per_model: dict[str, list[tuple[list[float], list[tuple[float, float, float]]]]] = {k: [] for k in cfg.models}
    for rnd in range(cfg.latency_rounds):  # fresh workers each round: one noisy stretch of the machine is one round
        with LocalWorkers(N, tmp, token, tag=f"lat{rnd}") as workers:
            ping_all += _run(_ping_rtts(workers.addresses(1)[0], token.encode(), cfg.latency_requests))
            for key in cfg.models:
                per_model[key].append(_latency_round(cfg, models[key], images, workers, token, N))
    ping = np.array(ping_all)
    ms = lambda a: {"p50": float(np.percentile(a, 50)) * 1e3, "p99": float(np.percentile(a, 99)) * 1e3}
    for key in cfg.models:
        m = models[key]
        lat = np.concatenate([np.array(r[0]) for r in per_model[key]])
        inp = np.concatenate([np.array(r[1]) for r in per_model[key]])  # (requests, 3)
        inp_total = inp.sum(axis=1)
        diff = lat - inp_total
        rounds = [float(np.percentile(np.array(la) - np.array(ip).sum(axis=1), 50)) * 1e3 for la, ip in per_model[key]]
        rows.append({"model": key, "label": m["label"], "N": N, "requests": int(lat.size), "rounds": len(rounds),
                     "inprocess_torch_threads": 1,  # as the Master runs its encoder
                     "e2e_ms": {**ms(lat), "mean": float(lat.mean()) * 1e3, "min": float(lat.min()) * 1e3},
                     "inprocess_ms": {"encode": float(np.median(inp[:, 0])) * 1e3,
                                      "worker_compute": float(np.median(inp[:, 1])) * 1e3,
                                      "decode": float(np.median(inp[:, 2])) * 1e3, "total": float(np.median(inp_total)) * 1e3,
                                      "p99": float(np.percentile(inp_total, 99)) * 1e3},
                     # p50: the median of the rounds' p50s; every round's p50 is listed beside it
                     "overhead_ms": {"p50": float(np.median(rounds)), "p99": ms(diff)["p99"], "p50_rounds": rounds},
                     "ping_rtt_ms": ms(ping)})
        _log(f"latency {m['label']}: p50 {np.percentile(lat, 50) * 1e3:.2f} ms, in-process {np.median(inp_total) * 1e3:.2f} ms, "
             f"paired overhead p50 {np.median(rounds):.2f} ms (rounds {', '.join(f'{r:.2f}' for r in rounds)})")
    return rows


def _latency_round(cfg: BenchConfig, m: dict[str, Any], images: np.ndarray, workers: "LocalWorkers", token: str,
                   N: int) -> tuple[list[float], list[tuple[float, float, float]]]:
    """cfg.latency_requests single-group requests, each right after the same group computed in process."""
    import torch

    from ..export import worker_arrays
    from ..runtime.compute import EncodedCompute
    from ..runtime.plan import CodedPlan

    model, info, s = m["model"], m["info"], m["scheme"]
    plan = CodedPlan(model, info, N, "encoded")
    comp = EncodedCompute(s, worker_arrays(model, info, "encoded"))
    one = _groups(images, s.K, 1)
    rng = np.random.default_rng(0)
    res = {i: rng.standard_normal((1, 10)).astype(np.float32) for i in range(s.R)}

    def inprocess() -> tuple[float, float, float]:
        """One group computed here: encode at the N points, H on one, decode from R (seconds each)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            xt = model.encode(torch.from_numpy(one.astype(np.float32) / 255.0), plan.alphas, plan.encode_precision).numpy()
        t1 = time.perf_counter()
        comp(xt[:, 0])
        t2 = time.perf_counter()
        plan.decode(res)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    async def measure() -> tuple[list[float], list[tuple[float, float, float]]]:
        """Alternate one in-process group and one request, so both meet the same background load."""
        master = await _connected_master(plan, workers.addresses(N), token.encode())
        loop = asyncio.get_running_loop()
        lat, inp = [], []
        try:
            for r in range(cfg.latency_requests + 5):
                parts = await loop.run_in_executor(None, in_thread, inprocess)
                t0 = time.perf_counter()
                await master.infer(one)
                if r >= 5:  # warm-up
                    lat.append(time.perf_counter() - t0)
                    inp.append(parts)
        finally:
            await master.close()
        return lat, inp

    return _run(measure())


# -- 8. master memory with many requests in flight -------------------------------------------------
def bench_memory(cfg: BenchConfig, tmp: Path, token: str, N: int = 3, timeout: float = 900.0) -> dict[str, Any]:
    """In a fresh process (`python -m edgecc.bench.memory`), so that memory freed by earlier sections and
    kept by the allocator cannot hide the growth: see edgecc/bench/memory.py."""
    args = {"requests": cfg.memory_requests, "groups": cfg.batch, "N": N, "min_delay": cfg.memory_delay, "tmp": str(tmp)}
    env = {**os.environ, "EDGECC_TOKEN": token}
    env.pop("EDGECC_TOKEN_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "edgecc.bench.memory", json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _RssSampler(threading.Thread):
    """Polls this process's VmRSS every `period` seconds and keeps the maximum."""

    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, memory_status().get("VmRSS", 0))
            self.stop.wait(self.period)


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) so it measures from now (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


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
                                       "loadavg_before": _loadavg(), "section_seconds": {}, "errors": {}}}
    token = secrets.token_hex(24)
    sample_x, sample_y = load_sample()

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            return
        _log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # one broken section must not lose the others
            result[name] = None
            result["meta"]["errors"][name] = f"{type(e).__name__}: {e}"
            _log(f"{name} failed: {traceback.format_exc()}")
        finally:
            torch.set_num_threads(threads0)  # a Master sets 1 thread process-wide; every section starts at the default
        result["meta"]["section_seconds"][name] = round(time.perf_counter() - t0, 2)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecc-bench-")))
        section("machine", lambda: bench_machine(cfg))
        section("matmul", lambda: bench_matmul(cfg))
        section("training", lambda: bench_training(cfg, result.get("matmul")))
        models: dict[str, Any] = {}
        if set(sections) & {"master", "worker", "end_to_end", "latency", "memory"}:
            keys = tuple(dict.fromkeys((*cfg.models, "mlp", "hs")))  # memory uses 'mlp', worker 'hs'
            models = load_bench_models(tmp, keys)
            result["meta"]["models"] = {k: {"label": v["label"], "source": v["source"]} for k, v in models.items()}
        memo = stack.enter_context(_CollapseMemo())
        result["meta"]["collapse_affine"] = memo.seconds  # the real (first) call per network, as CodedPlan pays it
        section("master", lambda: bench_master(cfg, models, sample_x, threads=(threads0, 1)))
        section("worker", lambda: bench_worker(cfg, models, sample_x))
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
        section("memory", lambda: bench_memory(cfg, tmp, token))
        section("costs", lambda: bench_costs(cfg, result.get("end_to_end")))
    result["meta"]["loadavg_after"] = _loadavg()
    result["meta"]["elapsed_s"] = round(time.time() - started, 1)
    result = _jsonable(result)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return result


def main(quick: bool = True, out: str = "results/bench.json") -> dict[str, Any]:
    """Run the whole benchmark (quick: fewer repeats, smaller sizes) and write the JSON to `out`."""
    return run(BenchConfig.for_mode(quick), out)


__all__ = ["BenchConfig", "SECTIONS", "main", "render_markdown", "run", "timeit"]
