"""Master memory with many requests in flight, measured in a fresh process.

`python -m edgecc.bench.memory '{"requests": 256, "groups": 64, "N": 3, "min_delay": 0.5, "tmp": DIR}'`
(token in $EDGECC_TOKEN) prints one JSON line. N workers hold every answer for a constant delay, long
enough that all requests are encoded and sent before the first answer returns; the master's peak RSS
over the flood, minus its RSS after one warm request, is compared with the encoded payloads it must
keep (requests × N × groups × 784 × 4 bytes). The model is an untrained K=2 G=1 MLP+MLP H_B: encoding
is cheap, and memory does not depend on the weights.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..launch.local import memory_status
from .config import BenchConfig


def bench_memory(cfg: BenchConfig, tmp: Path, token: str, N: int = 3, timeout: float = 900.0) -> dict[str, Any]:
    """In a fresh process (`python -m edgecc.bench.memory`), so that memory freed by earlier sections and
    kept by the allocator cannot hide the growth (`measure`, below)."""
    args = {"requests": cfg.memory_requests, "groups": cfg.batch, "N": N, "min_delay": cfg.memory_delay, "tmp": str(tmp)}
    env = {**os.environ, "EDGECC_TOKEN": token}
    env.pop("EDGECC_TOKEN_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "edgecc.bench.memory", json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class RssSampler(threading.Thread):
    """Polls this process's VmRSS every `period` seconds and keeps the maximum."""

    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, memory_status().get("VmRSS", 0))
            self.stop.wait(self.period)


def reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) so it measures from now (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(requests: int, groups: int, N: int, min_delay: float, tmp: Path, token: str) -> dict[str, Any]:
    import torch

    from ..coding.schemes import Scheme
    from ..data import load_sample
    from ..nets import AICC
    from ..schemes.registry import build_plan
    from . import costs
    from .cluster import LocalWorkers, connected_master, run_coroutine
    from .models import make_groups

    s = Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")
    torch.manual_seed(0)
    plan = build_plan("aicc", N, model=(AICC(s), {"kind": "aicc", "scheme": s.to_dict()}), placement="encoded")
    batch = make_groups(load_sample()[0], s.K, groups)
    plan.payloads(batch)
    t0 = time.perf_counter()
    for _ in range(3):
        plan.payloads(batch)
    per_request = (time.perf_counter() - t0) / 3
    # every request must still be waiting when the last one is sent: hold answers longer than encoding all takes
    delay = round(max(min_delay, 2.0 * requests * per_request + 0.5), 2)
    behaviour = {"latency": {"dist": "constant", "value": delay}}

    with LocalWorkers(N, tmp, token, behaviour, tag="mem") as workers:
        async def flood() -> dict[str, Any]:
            master = await connected_master(plan, workers.addresses(N), token.encode(), request_timeout=delay + 300)
            max_pending = 0

            async def watch() -> None:
                nonlocal max_pending
                while True:
                    max_pending = max(max_pending, len(master.pending))
                    await asyncio.sleep(0.01)

            try:
                await master.infer(batch)  # warm: the first request allocates lasting buffers
                gc.collect()
                workers_before = workers.status()
                base = memory_status()
                reset = reset_hwm()
                sampler = RssSampler()
                sampler.start()
                watcher = asyncio.create_task(watch())
                t0 = time.perf_counter()
                results = await asyncio.gather(*(master.infer(batch) for _ in range(requests)), return_exceptions=True)
                elapsed = time.perf_counter() - t0
                sampler.stop.set()
                sampler.join()
                watcher.cancel()
                after = memory_status()
                failed = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
                del results
                gc.collect()
                settled = memory_status()
                peak = max(sampler.peak, after.get("VmHWM", 0) if reset else 0)
                return {"rss_before": base.get("VmRSS"), "rss_peak": peak, "peak_delta": peak - base.get("VmRSS", 0),
                        "rss_after_gc": settled.get("VmRSS"), "hwm_reset": reset, "elapsed_s": elapsed,
                        "failed": len(failed), "failures": failed[:3], "max_pending": max_pending,
                        "workers_before": workers_before, "workers_after": workers.status()}
            finally:
                await master.close()

        r = run_coroutine(flood())
    payload = requests * N * groups * costs.up_payload_per_worker(s, "encoded")
    w_peak = [w.get("VmHWM", 0) - b.get("VmRSS", 0) for w, b in zip(r.pop("workers_after"), r.pop("workers_before"))]
    return {"model": "mlp", "label": s.label(), "N": N, "requests": requests, "groups_per_request": groups,
            "answer_delay_s": delay, "encode_s_per_request": per_request, **r,
            "payload_bytes_in_flight": payload, "peak_delta_over_payload": r["peak_delta"] / payload,
            "peak_delta_per_request": r["peak_delta"] / requests, "worker_peak_delta": w_peak,
            "worker_peak_delta_per_request": max(w_peak) / requests if w_peak else None}


def _main() -> None:
    args = json.loads(sys.argv[1])
    token = os.environ["EDGECC_TOKEN"]
    out = measure(int(args["requests"]), int(args["groups"]), int(args["N"]), float(args["min_delay"]), Path(args["tmp"]), token)
    print(json.dumps(out))


if __name__ == "__main__":
    _main()
