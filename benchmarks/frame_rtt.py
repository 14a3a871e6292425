"""Round trips of large compute frames to one worker: is there a latency mode that is not the work?

A client authenticates to one local `edgecc worker`, configures the encoded H_B placement, then sends
one B-group compute request at a time and waits for its result, for each B. Prints and writes p50,
p90, p99 and p99/p50 per B, and the worker process's CPU time per request (user + system, from
/proc): what one request costs a worker that has a core to itself. With numpy's BLAS thread pool a 256-group request (an 800 kB frame) had
a sharp 8 ms mode, the pool waking for a 0.5 ms product; workers now run BLAS on one thread
(blas.py).

    python benchmarks/frame_rtt.py [--groups 16 64 256 1024] [--requests 500] [--out results/frame-rtt.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import tempfile
import time

import numpy as np

from edgecc.bundle import digest
from edgecc.protocol import compute_spec
from edgecc.protocol.frames import encode_frame, pack_array
from edgecc.protocol.handshake import ClientHandshake
from edgecc.protocol.messages import Compute, Configure, Result
from edgecc.master.handshake import client_handshake
from edgecc.launch.local import LocalWorker, process_cpu_s
from edgecc.comm import connect
from edgecc.process import run



async def round_trips(port: int, token: bytes, groups: list[int], requests: int,
                      worker_pid: int) -> tuple[dict[int, list[float]], dict[int, float]]:
    rng = np.random.default_rng(0)
    arrays = {"affine.weight": rng.random((10, 784), dtype=np.float32), "affine.bias": np.zeros(10, np.float32)}

    def configure(hello):
        return Configure(0, "aicc", {"K": 2, "alpha": 0.5}, compute_spec.affine().to_wire(), "f4", digest(arrays),
                         {k: pack_array(v) for k, v in arrays.items()}, None)

    comm = await connect(f"127.0.0.1:{port}")
    try:
        await client_handshake(comm, ClientHandshake(token, placement="encoded", configure=configure))
        out, cpu = {}, {}
        for B in groups:
            x = pack_array(rng.random((B, 28, 28), dtype=np.float32))
            times = []
            for i in range(requests + 20):  # the first 20 warm up
                if i == 20:
                    cpu0 = process_cpu_s(worker_pid)
                frame = encode_frame(Compute(i, x, None, None, None).to_wire())
                t = time.perf_counter()
                comm.send(frame)
                if comm.backed_up:
                    await comm.writable()
                reply = await comm.read(timeout=30)
                if not isinstance(reply, Result):
                    raise RuntimeError(f"worker answered {reply}")
                if i >= 20:
                    times.append((time.perf_counter() - t) * 1000)
            out[B] = times
            cpu[B] = (process_cpu_s(worker_pid) - cpu0) / requests
        return out, cpu
    finally:
        await comm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--out", default="results/frame-rtt.json")
    args = ap.parse_args()
    token = secrets.token_hex(32)
    with tempfile.TemporaryDirectory() as tmp:
        worker = LocalWorker(tmp, "rtt", ["--log-level", "warning"], token=token).start()
        try:
            got, cpu = run(round_trips(worker.port, token.encode(), args.groups, args.requests, worker.pid))
        finally:
            worker.stop()
    rows = []
    for B, t in got.items():
        a = np.array(t)
        p50, p90, p99 = (float(np.percentile(a, q)) for q in (50, 90, 99))
        rows.append({"groups": B, "frame_bytes": B * 3136, "requests": len(t), "p50_ms": p50, "p90_ms": p90,
                     "p99_ms": p99, "p99_over_p50": p99 / p50, "worker_cpu_us_per_request": cpu[B] * 1e6})
        print(f"B={B:5d} ({B * 3136 / 1e3:7.0f} kB): p50 {p50:.3f} ms, p90 {p90:.3f}, p99 {p99:.3f}, p99/p50 {p99 / p50:.2f}, "
              f"worker CPU {cpu[B] * 1e6:.0f} µs/request")
    result = {"benchmark": "frame_rtt", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                   "loadavg": list(os.getloadavg())},
              "requests_per_size": args.requests, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
