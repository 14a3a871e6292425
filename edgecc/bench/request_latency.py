"""Section 7 of `edgecc bench`: single-request latency over loopback, measured in a fresh process.

`python -m edgecc.bench.request_latency '{"cfg": {"models": ["cnn", "mlp"], "latency_requests": 100,
"latency_rounds": 3}, "tmp": DIR}'` (token in $EDGECC_TOKEN) prints the rows as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cluster import LocalWorkers, connected_master, run_coroutine
from .config import BenchConfig, in_thread, jsonable, log, side_by_side_pool
from .models import load_bench_models, make_groups


# -- 7. single-request latency ------------------------------------------------------------------
IDLE_GAPS_S = (0.002, 0.02)  # pauses before a ping: a request follows ~2 ms of in-process compute in this section


async def ping_rtts(address: tuple[str, int], token: bytes, count: int, idle_s: float = 0.0) -> list[float]:
    """Round trips of Ping/Pong on an authenticated connection: the transport and framing alone
    (the worker answers pings on its event loop, no compute thread); each after `idle_s` of sleep: on a VM a
    process that slept is woken on an idle virtual CPU, which can cost more than the round trip itself
    (results/bench.md has the numbers beside the back-to-back ping)."""
    from ..protocol.handshake import ClientHandshake
    from ..protocol.messages import Ping, Pong
    from ..master.handshake import client_handshake
    from ..comm import connect
    from ..comm.addressing import format_host_port

    comm = await connect(format_host_port(*address), timeout=5.0)
    try:
        await client_handshake(comm, ClientHandshake(token))
        rtts = []
        for i in range(count + 5):
            if idle_s:
                await asyncio.sleep(idle_s)
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
    """In a fresh process (`python -m edgecc.bench.request_latency`), like the memory section: in one process after
    the other sections, the MLP model's overhead measured 1.07-1.13 ms in 3 runs, alone 0.65-0.79 ms in 4;
    a master process does not carry a benchmark's leftovers."""
    args = {"cfg": {"models": list(cfg.models), "latency_requests": cfg.latency_requests,
                    "latency_rounds": cfg.latency_rounds}, "tmp": str(tmp)}
    env = {**os.environ, "EDGECC_TOKEN": token}
    env.pop("EDGECC_TOKEN_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "edgecc.bench.request_latency", json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"latency benchmark exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def latency_rows(cfg: BenchConfig, models, images: np.ndarray, tmp: Path, token: str, N: int = 3) -> list[dict[str, Any]]:
    """Single-group requests against in-process compute of the same group, in rounds (this process)."""
    rows = []
    ping_all: list[float] = []
    ping_idle: dict[float, list[float]] = {g: [] for g in IDLE_GAPS_S}
    per_model: dict[str, list[tuple[list[float], list[tuple[float, float, float]], list[tuple[float, ...]]]]] = {k: [] for k in cfg.models}
    for rnd in range(cfg.latency_rounds):  # fresh workers each round: one noisy stretch of the machine is one round
        with LocalWorkers(N, tmp, token, tag=f"lat{rnd}") as workers:
            ping_all += run_coroutine(ping_rtts(workers.addresses(1)[0], token.encode(), cfg.latency_requests))
            for gap in IDLE_GAPS_S:
                ping_idle[gap] += run_coroutine(ping_rtts(workers.addresses(1)[0], token.encode(),
                                                          max(10, cfg.latency_requests // 2), gap))
            for key in cfg.models:
                per_model[key].append(latency_round(cfg, models[key], images, workers, token, N))
    ping = np.array(ping_all)
    ms = lambda a: {"p50": float(np.percentile(a, 50)) * 1e3, "p99": float(np.percentile(a, 99)) * 1e3}
    for key in cfg.models:
        m = models[key]
        lat = np.concatenate([np.array(r[0]) for r in per_model[key]])
        inp = np.concatenate([np.array(r[1]) for r in per_model[key]])  # (requests, 3)
        stg = np.concatenate([np.array(r[2]) for r in per_model[key]])  # (requests, len(STAGES))
        inp_total = inp.sum(axis=1)
        diff = lat - inp_total
        rounds = [float(np.percentile(np.array(la) - np.array(ip).sum(axis=1), 50)) * 1e3 for la, ip, _ in per_model[key]]
        rows.append({"model": key, "label": m["label"], "N": N, "requests": int(lat.size), "rounds": len(rounds),
                     "inprocess_torch_threads": 1,  # as the Master runs its encoder
                     "e2e_ms": {**ms(lat), "mean": float(lat.mean()) * 1e3, "min": float(lat.min()) * 1e3},
                     "inprocess_ms": {"encode": float(np.median(inp[:, 0])) * 1e3,
                                      "worker_compute": float(np.median(inp[:, 1])) * 1e3,
                                      "decode": float(np.median(inp[:, 2])) * 1e3, "total": float(np.median(inp_total)) * 1e3,
                                      "p99": float(np.percentile(inp_total, 99)) * 1e3},
                     # p50: the median of the rounds' p50s; every round's p50 is listed beside it
                     "overhead_ms": {"p50": float(np.median(rounds)), "p99": ms(diff)["p99"], "p50_rounds": rounds},
                     "ping_rtt_ms": ms(ping),
                     # the same ping after the machine idled: what waking a sleeping worker costs here
                     "ping_after_idle_ms": {f"{g * 1e3:g}": ms(np.array(v)) for g, v in ping_idle.items()},
                     # where the e2e time went, p50 of each stage (ms); "rest": e2e minus queue, encode, the R-th
                     # result and decode (the awaiting task's wake-ups and the request's bookkeeping)
                     "stages_p50_ms": {**{k: float(np.nanmedian(stg[:, i])) * 1e3 for i, k in enumerate(STAGES)},
                                       "rest": float(np.nanmedian(lat - stg[:, [0, 1, 3, 4]].sum(axis=1))) * 1e3}})
        log(f"latency {m['label']}: p50 {np.percentile(lat, 50) * 1e3:.2f} ms, in-process {np.median(inp_total) * 1e3:.2f} ms, "
             f"paired overhead p50 {np.median(rounds):.2f} ms (rounds {', '.join(f'{r:.2f}' for r in rounds)})")
    return rows


STAGES = ("queue", "encode", "first_result", "rth_result", "decode")


def request_stages(info: dict[str, Any], R: int) -> tuple[float, ...]:
    """A request's time by stage from Master.infer's info, in seconds: queued for the encoder, encoding (from the
    encode thread's start until the loop holds the frames: both thread hops and the framing included), from
    the sends to the first and to the R-th result, and decoding."""
    results = sorted(info.get("result_ms", {}).values())
    rth = results[R - 1] if len(results) >= R else float("nan")
    return (info["queue_ms"] / 1e3, info["encode_ms"] / 1e3, (results[0] if results else float("nan")) / 1e3,
            rth / 1e3, info["decode_ms"] / 1e3)


def latency_round(cfg: BenchConfig, m: dict[str, Any], images: np.ndarray, workers: "LocalWorkers", token: str,
                   N: int) -> tuple[list[float], list[tuple[float, float, float]], list[tuple[float, ...]]]:
    """cfg.latency_requests single-group requests, each right after the same group computed in process."""
    import torch

    from ..export import worker_arrays
    from ..worker.compute import EncodedCompute
    from ..schemes.registry import build_plan

    model, info, s = m["model"], m["info"], m["scheme"]
    plan = build_plan("aicc", N, model=(model, info), placement="encoded")
    comp = EncodedCompute(s, worker_arrays(model, info, "encoded"))
    one = make_groups(images, s.K, 1)
    rng = np.random.default_rng(0)
    res = {i: rng.standard_normal((1, 10)).astype(np.float32) for i in range(s.R)}

    from ..schemes.base import side_by_side

    # the encoder's networks side by side on the other cores, as the Master encodes a lone small request
    pool = side_by_side_pool()

    def inprocess() -> tuple[float, float, float]:
        """One group computed here: encode at the N points, H on one, decode from R (seconds each)."""
        t0 = time.perf_counter()
        with torch.inference_mode(), side_by_side(plan, pool):
            xt = model.encode(torch.from_numpy(one.astype(np.float32) / 255.0), plan.alphas, plan.encode_precision).numpy()
        t1 = time.perf_counter()
        comp(xt[:, 0])
        t2 = time.perf_counter()
        plan.decode(res)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    async def measure() -> tuple[list[float], list[tuple[float, float, float]]]:
        """Alternate one in-process group and one request, so both meet the same background load."""
        master = await connected_master(plan, workers.addresses(N), token.encode())
        loop = asyncio.get_running_loop()
        lat, inp, stages = [], [], []
        try:
            for r in range(cfg.latency_requests + 5):
                parts = await loop.run_in_executor(None, in_thread, inprocess)
                info: dict[str, Any] = {}
                t0 = time.perf_counter()
                await master.infer(one, info=info)
                if r >= 5:  # warm-up
                    lat.append(time.perf_counter() - t0)
                    inp.append(parts)
                    stages.append(request_stages(info, s.R))
        finally:
            await master.close()
        return lat, inp, stages

    try:
        return run_coroutine(measure())
    finally:
        if pool is not None:
            pool.shutdown()


def _main() -> None:
    from ..data import load_sample

    args = json.loads(sys.argv[1])
    c = args["cfg"]
    cfg = BenchConfig(models=tuple(c["models"]), latency_requests=int(c["latency_requests"]),
                      latency_rounds=int(c["latency_rounds"]))
    tmp = Path(args["tmp"])
    models = load_bench_models(tmp, cfg.models)
    rows = latency_rows(cfg, models, load_sample()[0], tmp, os.environ["EDGECC_TOKEN"])
    print(json.dumps(jsonable(rows)))


if __name__ == "__main__":
    _main()
