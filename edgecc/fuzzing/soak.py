"""The chaos soak behind benchmarks/soak.py: N worker processes killed, restarted, paused and resumed
at random while a closed loop of requests runs; every request must end decoded (and correct) or
failed with a reason. benchmarks/soak.py lists what is checked."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .reference import compare, direct_logits, make_tiny_model
from .procs import WorkerProc, machine, proc_status


def reason_of(e: Exception) -> str:
    """A failure reason without request ids and counts, for the histogram."""
    text = re.sub(r"^request \d+: ", "", str(e))
    text = re.sub(r"\(waiting on workers \[[^\]]*\]\)", "(waiting on workers [...])", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "ADDR", text)
    return re.sub(r"\d+(\.\d+)?", "#", text)[:200]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def start_all(workers: list[WorkerProc]) -> None:
    """Spawn every worker at once, then wait for their ports (faster than one by one)."""
    for w in workers:
        w._spawn()
    deadline = time.monotonic() + 90
    pending = list(workers)
    while pending:
        pending = [w for w in pending if not w._poll_started()]
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start: {[w.name for w in pending]}")
        await asyncio.sleep(0.05)


async def soak(seconds: float = 300.0, seed: int = 0, *, N: int = 5, in_flight: int = 4, request_timeout: float = 5.0,
               margin: float = 2.0, max_down: int = 2, extra_down_prob: float = 0.1, chaos_min_s: float = 0.3,
               chaos_max_s: float = 2.5, max_groups: int = 8, final_requests: int = 10, workdir: str | Path | None = None,
               log: bool = True) -> dict:
    from edgecc.data import load_sample
    from edgecc.master.master import Master, RequestFailed
    from edgecc.schemes.aicc import CodedPlan

    t_start = time.perf_counter()
    mach = machine()
    rng = random.Random(seed)
    token = secrets.token_hex(24)
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: loop_errors.append(f"{ctx.get('message')}: {ctx.get('exception')!r}"[:400]))
    edgecc_log = logging.getLogger("edgecc")
    old_level = edgecc_log.level
    edgecc_log.setLevel(logging.CRITICAL)  # every lost link is logged; thousands of lines
    guard = 2 * request_timeout + margin + 10  # beyond this a request counts as hung (and is cancelled)

    with tempfile.TemporaryDirectory(prefix="edgecc-soak-") as tmp:
        wdir = Path(workdir or tmp)
        model, info = make_tiny_model(wdir / "hb-k2g2.safetensors", K=2, G=2)
        plan = CodedPlan(model, info, N)
        images, _ = load_sample()
        groups = images.reshape(-1, plan.K, 28, 28)
        want_all = direct_logits(model, groups)
        workers = [WorkerProc(wdir, f"w{i}", token, log_level="warning") for i in range(N)]
        state = ["up"] * N  # up | stopped | dead | starting
        counts: Counter = Counter()
        reasons: Counter = Counter()
        exceptions: Counter = Counter()
        examples: list[str] = []
        lat_ok: list[float] = []
        lat_fail: list[float] = []
        slowest: list[tuple[float, str]] = []
        events: Counter = Counter()
        timeline: list[tuple[float, str, int, int]] = []
        restart_failures: list[str] = []
        rss: list[tuple[float, float | None]] = []
        down_time = {"beyond_n_minus_r_s": 0.0, "max_down": 0}
        master = None
        try:
            await start_all(workers)
            master = Master(plan, [w.address for w in workers], token.encode(), request_timeout=request_timeout)
            await master.start(wait_ready=60)
            await master.wait_all_ready(30)
            stop = asyncio.Event()
            t0 = time.monotonic()

            def check(got: np.ndarray, want: np.ndarray) -> str:
                verdict, err = compare(got, want)
                if verdict != "correct" and len(examples) < 10:
                    examples.append(f"{verdict}: max abs error {err:.3g}")
                return {"correct": "decoded_correct", "wrong": "decoded_wrong"}.get(verdict, verdict)

            async def request(final: bool = False) -> str:
                B = rng.randint(1, max_groups)
                s = rng.randrange(groups.shape[0] - B)
                counts["final_submitted" if final else "submitted"] += 1
                t = time.perf_counter()
                try:
                    got = await asyncio.wait_for(master.infer(groups[s:s + B]), guard)
                except RequestFailed as e:
                    dt = time.perf_counter() - t
                    lat_fail.append(dt)
                    slowest.append((dt, f"failed: {e}"[:200]))
                    reasons[reason_of(e)] += 1
                    counts["final_failed" if final else "failed"] += 1
                    return "failed"
                except asyncio.TimeoutError:
                    counts["final_hung" if final else "hung"] += 1
                    return "hung"
                except Exception as e:  # a master bug
                    exceptions[type(e).__name__] += 1
                    if len(examples) < 10:
                        examples.append(f"{type(e).__name__}: {e}"[:300])
                    counts["final_crashed" if final else "crashed"] += 1
                    return "crashed"
                dt = time.perf_counter() - t
                lat_ok.append(dt)
                slowest.append((dt, "decoded"))
                outcome = check(got, want_all[s:s + B])
                counts[("final_" if final else "") + outcome] += 1
                counts["final_decoded" if final else "decoded"] += 1
                return outcome

            async def client() -> None:
                while not stop.is_set():
                    if await request() != "decoded_correct":
                        await asyncio.sleep(0.1)  # think time after a failure, so an outage is not a busy loop

            def n_down() -> int:
                return sum(s != "up" for s in state)

            async def chaos() -> None:
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), rng.uniform(chaos_min_s, chaos_max_s))
                        return
                    except asyncio.TimeoutError:
                        pass
                    up = [i for i in range(N) if state[i] == "up"]
                    stopped = [i for i in range(N) if state[i] == "stopped"]
                    dead = [i for i in range(N) if state[i] == "dead"]
                    options = []
                    if up and (n_down() < max_down or rng.random() < extra_down_prob):
                        options += ["kill", "stop"]
                    if stopped:
                        options += ["cont"] + (["kill_stopped"] if rng.random() < 0.2 else [])
                    if dead:
                        options.append("restart")
                    if not options:
                        continue
                    action = rng.choice(options)
                    if action in ("kill", "stop"):
                        i = rng.choice(up)
                    elif action in ("cont", "kill_stopped"):
                        i = rng.choice(stopped)
                    else:
                        i = rng.choice(dead)
                    w = workers[i]
                    if action in ("kill", "kill_stopped"):
                        w.kill()
                        state[i] = "dead"
                    elif action == "stop":
                        w.signal(signal.SIGSTOP)
                        state[i] = "stopped"
                    elif action == "cont":
                        w.signal(signal.SIGCONT)
                        state[i] = "up"
                    else:
                        state[i] = "starting"
                        try:
                            await w.astart()
                            state[i] = "up"
                        except RuntimeError as e:  # e.g. the port was taken: try again later
                            restart_failures.append(str(e)[:300])
                            state[i] = "dead"
                    events[action] += 1
                    timeline.append((round(time.monotonic() - t0, 2), action, i, n_down()))
                    down_time["max_down"] = max(down_time["max_down"], n_down())

            async def down_meter() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.1)
                    if sum(s != "up" for s in state) > N - plan.R:
                        down_time["beyond_n_minus_r_s"] += 0.1

            async def sampler() -> None:
                while not stop.is_set():
                    rss.append((round(time.monotonic() - t0, 1), proc_status().get("VmRSS")))
                    if log and len(rss) % 10 == 0:
                        print(f"  soak {time.monotonic() - t0:.0f}/{seconds:g} s: {counts['submitted']} requests, "
                              f"{counts['decoded']} decoded, {counts['failed']} failed, down {n_down()}, rss {rss[-1][1]} MiB",
                              file=sys.stderr)
                    try:
                        await asyncio.wait_for(stop.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass

            tasks = [asyncio.create_task(client()) for _ in range(in_flight)]
            side = [asyncio.create_task(chaos()), asyncio.create_task(sampler()), asyncio.create_task(down_meter())]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*side)
            await asyncio.gather(*tasks)
            # recovery: everyone back, then requests must decode again
            for i, w in enumerate(workers):
                if state[i] == "stopped":
                    w.signal(signal.SIGCONT)
                    state[i] = "up"
            for i, w in enumerate(workers):
                if state[i] != "up":
                    try:
                        await w.astart()
                        state[i] = "up"
                    except RuntimeError as e:
                        restart_failures.append(str(e)[:300])
            all_ready = await master.wait_all_ready(30)
            final = [await request(final=True) for _ in range(final_requests)]
            link_crashes = [f"link {l.index}: {l.task.exception()!r}"[:300] for l in master.links
                            if l.task.done() and not l.task.cancelled() and l.task.exception()]
            leaked_pending = len(master.pending)
            stats = dict(master.stats)
            connects = [l.connects for l in master.links]
        finally:
            if master is not None:
                await master.close()
            worker_problems = [w.log_problems() for w in workers]
            for w in workers:
                w.kill()
            loop.set_exception_handler(old_handler)
            edgecc_log.setLevel(old_level)

    submitted = counts["submitted"]
    ended = counts["decoded"] + counts["failed"] + counts["hung"] + counts["crashed"]
    all_lat = lat_ok + lat_fail
    bound = request_timeout + margin
    rss_vals = [v for _, v in rss if v is not None]
    step = max(1, len(rss) // 60)
    slowest.sort(reverse=True)
    return {
        "benchmark": "soak", "seed": seed, "seconds": seconds, "N": N, "R": plan.R, "K": plan.K, "G": plan.scheme.G,
        "in_flight": in_flight, "request_timeout_s": request_timeout, "max_down": max_down, "extra_down_prob": extra_down_prob,
        "requests": {"submitted": submitted, "decoded": counts["decoded"], "failed": counts["failed"], "hung": counts["hung"],
                     "crashed": counts["crashed"], "lost": submitted - ended,
                     "decoded_correct": counts["decoded_correct"], "decoded_wrong": counts["decoded_wrong"],
                     "prediction_mismatch": counts["prediction_mismatch"]},
        "failure_reasons": dict(reasons.most_common()),
        "latency_s": {"decoded": {"p50": pct(lat_ok, 50), "p95": pct(lat_ok, 95), "p99": pct(lat_ok, 99),
                                  "max": round(max(lat_ok), 3) if lat_ok else None},
                      "failed": {"p50": pct(lat_fail, 50), "max": round(max(lat_fail), 3) if lat_fail else None},
                      "max": round(max(all_lat), 3) if all_lat else None, "bound": bound,
                      "within_bound": (max(all_lat) < bound) if all_lat else True,
                      "over_bound": sum(x >= bound for x in all_lat), "slowest": [(round(d, 2), w) for d, w in slowest[:5]]},
        "chaos": {"events": dict(events), "max_down_at_once": down_time["max_down"],
                  "seconds_with_more_than_n_minus_r_down": round(down_time["beyond_n_minus_r_s"], 1),
                  "restart_failures": restart_failures, "timeline": timeline[:300]},
        "master": {"exceptions": dict(exceptions), "exception_examples": examples, "loop_errors": len(loop_errors),
                   "loop_error_examples": loop_errors[:8], "link_crashes": link_crashes, "leaked_pending": leaked_pending,
                   "connects": connects, "stats": stats,
                   "rss_mb": {"first": rss_vals[0] if rss_vals else None, "max": max(rss_vals) if rss_vals else None,
                              "last": rss_vals[-1] if rss_vals else None, "peak_hwm": proc_status().get("VmHWM"),
                              "samples": rss[::step]}},
        "recovery": {"all_ready": all_ready, "requests": final_requests, "outcomes": dict(Counter(final)),
                     "recovered": all(o == "decoded_correct" for o in final)},
        "worker_log_problems": [p["unexpected_error_lines"] + p["traceback_lines"] for p in worker_problems],
        "link_cuts": {"done": False, "why": "not attempted: SIGSTOP covers the silent-peer case; real cuts would need a network "
                                            "namespace and veth pair per worker (root, `ip netns`), left out to keep the benchmark "
                                            "side-effect free"},
        "duration_s": round(time.perf_counter() - t_start, 2), "machine": {**mach, "loadavg_end": list(os.getloadavg())},
    }
