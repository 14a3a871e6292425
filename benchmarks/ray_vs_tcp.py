"""Workers as Ray actors vs TCP worker processes, side by side in one run (docs/ray.md).

    .venv/bin/python benchmarks/ray_vs_tcp.py [scenarios/one-straggler.toml] [--schemes aicc,approxifer,uncoded]

1. The scenario (default: the one-straggler scenario) on each backend, scheme by scheme, the two
   backends back to back (tcp, then ray) so that both meet the same load on this shared machine:
   the same requests, images and injected delays. Per scheme: p50/p99 latency, accuracy, decoded,
   and the overhead per request: request by request, Ray's latency minus TCP's (the same request
   meets the same injected delays on both).
2. The round trip without injected delays (the transport alone): AICC, one group per request,
   requests one after another, over 3 TCP worker processes, over 3 Ray actors (ray://), and the
   floor a design without edgecc's protocol would pay: one Ray actor call per worker per request,
   the first 2 of 3 refs awaited (what `ray.wait(refs, num_returns=2)` gives), each call the same
   GEMM on the same 784-float coded image a worker computes.
3. What each costs to start and to keep: a local Ray instance's start, 3 actors' start and 3 worker
   processes' start; each worker's resident memory.

Writes results/ray-vs-tcp.json and .md. Ray runs a local instance on this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def pct(xs, q) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if len(xs) else None


def scenario_side_by_side(path: str, schemes: list[str], requests: int | None) -> list[dict]:
    from edgecc.scenario.runner import run_scenario
    from edgecc.scenario.spec import load_scenario

    sc = load_scenario(path)
    if requests:
        sc = dataclasses.replace(sc, requests=requests)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-vs-tcp-") as tmp:
        for scheme in schemes:
            recs = {}
            for backend in ("tcp", "ray"):
                out = Path(tmp) / f"{scheme}-{backend}"
                t = time.perf_counter()
                summary = run_scenario(dataclasses.replace(sc, schemes=(scheme,), backend=backend), out)[scheme]
                recs[backend] = json.loads((out / "requests.json").read_text())[scheme]
                stage = [r["stages_ms"]["workers"] for r in recs[backend] if r.get("stages_ms")]
                row = {"scenario": sc.name, "scheme": scheme, "backend": backend, "requests": summary["requests"],
                       "decoded": summary["decoded_fraction"], "failed": summary["failed"],
                       "p50_ms": round(summary["p50_ms"], 1), "p99_ms": round(summary["p99_ms"], 1),
                       "mean_ms": round(summary["mean_ms"], 1), "accuracy": summary["accuracy"],
                       "oracle_p50_ms": summary["oracle_p50_ms"], "workers_stage_p50_ms": pct(stage, 50),
                       "workers_stage_p99_ms": pct(stage, 99), "seconds": round(time.perf_counter() - t, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            diff = [b["latency_ms"] - a["latency_ms"] for a, b in zip(recs["tcp"], recs["ray"])
                    if a["latency_ms"] is not None and b["latency_ms"] is not None]
            rows[-1]["overhead_per_request_ms"] = {"p50": pct(diff, 50), "p99": pct(diff, 99), "mean": round(float(np.mean(diff)), 2)}
            rows[-1]["same_correct_per_request"] = [r["correct"] for r in recs["ray"]] == [r["correct"] for r in recs["tcp"]]
            print(json.dumps({"scheme": scheme, "overhead_per_request_ms": rows[-1]["overhead_per_request_ms"]}), flush=True)
    return rows


async def _round_trips(addresses, n: int) -> dict:
    from edgecc.data import load_sample
    from edgecc.master.master import Master
    from edgecc.schemes.registry import build_plan

    images, _ = load_sample()
    token = _round_trips.token
    m = Master(build_plan("aicc", 3, 2), addresses, token)
    try:
        await m.start(wait_ready=30)
        await m.wait_all_ready(10)
        for r in range(20):  # warm-up
            await m.infer(images[:2].reshape(1, 2, 28, 28))
        total, stage = [], []
        for r in range(n):
            info: dict = {}
            t = time.perf_counter()
            await m.infer(images[2 * (r % 500): 2 * (r % 500) + 2].reshape(1, 2, 28, 28), info=info)
            total.append((time.perf_counter() - t) * 1000)
            stage.append(info["workers_ms"])
    finally:
        await m.close()
    return {"request_p50_ms": pct(total, 50), "request_p99_ms": pct(total, 99),
            "workers_stage_p50_ms": pct(stage, 50), "workers_stage_p99_ms": pct(stage, 99)}


def bare_ray_first_2_of_3(n: int) -> dict:
    """One actor call per worker per request, the first 2 of 3 awaited: no protocol, no encode, no decode."""
    import ray

    @ray.remote
    class Gemm:
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w, self.b = rng.standard_normal((10, 784), np.float32), rng.standard_normal(10).astype(np.float32)

        async def compute(self, x):
            return x @ self.w.T + self.b

    actors = [Gemm.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    x = np.random.default_rng(1).standard_normal((1, 784), np.float32)
    ray.get([a.compute.remote(x) for a in actors])

    async def run() -> list[float]:
        lat = []
        for r in range(n + 20):
            t = time.perf_counter()
            futures = [asyncio.ensure_future(a.compute.remote(x)) for a in actors]
            done: set = set()
            pending = set(futures)
            while len(done) < 2:
                d, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                done |= d
            for f in pending:
                f.cancel()  # the third result is not awaited
            if r >= 20:
                lat.append((time.perf_counter() - t) * 1000)
        return lat

    try:
        lat = asyncio.run(run())
    finally:
        for a in actors:
            ray.kill(a)
    return {"workers_stage_p50_ms": pct(lat, 50), "workers_stage_p99_ms": pct(lat, 99)}


def transport_and_costs(n: int) -> dict:
    import ray

    from edgecc.comm.ray import ensure_ray
    from edgecc.launch.local import LocalWorker, memory_status
    from edgecc.launch.ray_workers import RayWorkers

    token = secrets.token_hex(32)
    _round_trips.token = token.encode()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="ray-vs-tcp-") as tmp:
        t = time.perf_counter()
        tcp = [LocalWorker(tmp, f"w{i}", ["--log-level", "warning"], token=token).launch() for i in range(3)]
        for w in tcp:
            w.wait_started()
        out["tcp_workers_start_s"] = round(time.perf_counter() - t, 2)
        try:
            t = time.perf_counter()
            ensure_ray(log_to_driver=False)
            out["ray_local_instance_start_s"] = round(time.perf_counter() - t, 2)
            rw = RayWorkers(3, token.encode())
            t = time.perf_counter()
            rw.start()
            out["ray_actors_start_s"] = round(time.perf_counter() - t, 2)
            try:
                for _ in range(2):  # alternate, twice: both meet the same background load
                    for name, addresses in (("tcp", [f"tcp://127.0.0.1:{w.port}" for w in tcp]), ("ray", rw.addresses)):
                        res = asyncio.run(_round_trips(addresses, n))
                        out.setdefault(name, []).append(res)
                        print(json.dumps({name: res}), flush=True)
                out["tcp_worker_rss_mb"] = [round(memory_status(w.pid).get("VmRSS", 0) / 2**20, 1) for w in tcp]
                out["ray_actor_rss_mb"] = [round(memory_status(p["pid"]).get("VmRSS", 0) / 2**20, 1) for p in rw.placement]
            finally:
                rw.stop()
            for _ in range(2):
                res = bare_ray_first_2_of_3(n)
                out.setdefault("bare_ray", []).append(res)
                print(json.dumps({"bare_ray": res}), flush=True)
            out["ray_version"] = ray.__version__
        finally:
            for w in tcp:
                w.stop()
    return out


def markdown(meta: dict, rows: list[dict], rt: dict) -> str:
    md = ["# Workers as Ray actors vs TCP worker processes", "",
          f"Generated by `{meta['command']}` on {meta['machine']}, Ray {rt['ray_version']} (a local instance), "
          f"{meta['date']}. {meta['note']}", "",
          "## The scenario, on each backend", "",
          "Each scheme ran on TCP worker processes, then on Ray actors, with the same requests, images and injected "
          "delays. Overhead per request: request by request, the latency on Ray actors minus the latency on TCP workers.", "",
          "| scheme | backend | requests | decoded | p50 ms | p99 ms | accuracy % | workers stage p50 / p99 ms | overhead per request p50 / p99 / mean ms | same answers |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r.get("overhead_per_request_ms")
        md.append(f"| {r['scheme']} | {r['backend']} | {r['requests']} | {100 * r['decoded']:.0f}% | {r['p50_ms']} | "
                  f"{r['p99_ms']} | {r['accuracy']:.2f} | {r['workers_stage_p50_ms']} / {r['workers_stage_p99_ms']} | "
                  + (f"{o['p50']} / {o['p99']} / {o['mean']} | {'yes' if r['same_correct_per_request'] else 'no'} |" if o else " | |"))
    md += ["", "## The transport alone (no injected delay; AICC, N=3, one group per request, one request at a time)", "",
           "workers stage: from the request's first send to the R-th result (the master's `workers_ms`). Bare Ray: "
           "one actor call per worker with the same coded image and GEMM, the first 2 of 3 awaited; no protocol, "
           "encode or decode, so it is the floor of a ref-per-request design, not a master.", "",
           "| path | round | request p50 / p99 ms | workers stage p50 / p99 ms |", "|---|---|---|---|"]
    for name in ("tcp", "ray", "bare_ray"):
        for i, r in enumerate(rt[name]):
            req = f"{r['request_p50_ms']} / {r['request_p99_ms']}" if "request_p50_ms" in r else "-"
            md.append(f"| {dict(tcp='TCP workers', ray='Ray actors (ray://)', bare_ray='bare Ray calls')[name]} | {i + 1} | "
                      f"{req} | {r['workers_stage_p50_ms']} / {r['workers_stage_p99_ms']} |")
    md += ["", "## Starting and keeping them", "",
           f"- 3 TCP worker processes: {rt['tcp_workers_start_s']} s to start; resident memory "
           f"{', '.join(map(str, rt['tcp_worker_rss_mb']))} MB each.",
           f"- a local Ray instance: {rt['ray_local_instance_start_s']} s to start; 3 actors then "
           f"{rt['ray_actors_start_s']} s; resident memory {', '.join(map(str, rt['ray_actor_rss_mb']))} MB per actor "
           "(plus Ray's own processes: GCS, raylet, ...).", ""]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(REPO / "scenarios" / "one-straggler.toml"))
    ap.add_argument("--schemes", default="aicc,approxifer,uncoded")
    ap.add_argument("--requests", type=int, default=None, help="override the scenario's request count")
    ap.add_argument("--round-trips", type=int, default=300, help="requests per transport-alone measurement")
    ap.add_argument("--out", default=str(REPO / "results" / "ray-vs-tcp"))
    a = ap.parse_args()
    t0 = time.time()
    rt = transport_and_costs(a.round_trips)  # starts the local Ray instance the scenario's Ray runs then use
    rows = scenario_side_by_side(a.scenario, a.schemes.split(","), a.requests)
    cmd = "benchmarks/ray_vs_tcp.py " + " ".join(
        [os.path.relpath(a.scenario, REPO), f"--schemes {a.schemes}"] + ([f"--requests {a.requests}"] if a.requests else []))
    meta = {"command": f".venv/bin/python {cmd}", "machine": f"{platform.machine()}, {os.cpu_count()} cores "
            f"({platform.platform()})", "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0),
            "note": "The CPU is shared with other jobs: compare the backends run back to back, not absolute times."}
    Path(a.out + ".json").write_text(json.dumps({"meta": meta, "scenario": rows, "transport": rt}, indent=1) + "\n")
    Path(a.out + ".md").write_text(markdown(meta, rows, rt))
    print(f"wrote {a.out}.json and .md ({meta['seconds']} s)")


if __name__ == "__main__":
    main()
