"""CPU the runtime itself costs per single-group request: the master's and each worker's CPU time over
many sequential requests, with the encoding taken out (the plan hands back payloads made once).

    python benchmarks/master_cpu.py [--requests 2000] [--model mlp|cnn]

Prints wall time, master CPU and each worker's CPU per request (ms). N=3 local workers, loopback.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path

from edgecc.bench.cluster import LocalWorkers, connected_master, run_coroutine
from edgecc.bench.models import load_bench_models, make_groups
from edgecc.data import load_sample
from edgecc.schemes.aicc import CodedPlan


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    args = ap.parse_args()
    tmp, token = Path(tempfile.mkdtemp()), secrets.token_hex(32)
    m = load_bench_models(tmp, (args.model,))[args.model]
    one = make_groups(load_sample()[0], 2, 1)
    plan = CodedPlan(m["model"], m["info"], 3, "encoded")
    made = plan.payloads(one)
    plan.payloads = lambda images: made  # the encoder is measured elsewhere (edgecc bench)

    async def run(workers: LocalWorkers) -> None:
        master = await connected_master(plan, workers.addresses(3), token.encode())
        try:
            for _ in range(50):  # warm-up
                await master.infer(one)
            pids = [w.pid for w in workers.workers]
            w0, m0, t0 = [cpu_seconds(p) for p in pids], time.process_time(), time.perf_counter()
            for _ in range(args.requests):
                await master.infer(one)
            wall, mcpu = time.perf_counter() - t0, time.process_time() - m0
            wcpu = [cpu_seconds(p) - a for p, a in zip(pids, w0)]
        finally:
            await master.close()
        n = args.requests
        print(f"per request ({m['label']}, N=3, {n} requests): wall {wall / n * 1e3:.3f} ms, master CPU "
              f"{mcpu / n * 1e3:.3f} ms, worker CPU " + ", ".join(f"{c / n * 1e3:.3f}" for c in wcpu) + " ms")

    with LocalWorkers(3, tmp, token, tag="cpu") as workers:
        run_coroutine(run(workers))


if __name__ == "__main__":
    main()
