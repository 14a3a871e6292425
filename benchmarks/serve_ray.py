"""`edgecc load` against `edgecc serve` and `edgecc serve --ray` with 1, 2, ... replicas, back to back.

    .venv/bin/python benchmarks/serve_ray.py                       # the committed results (~7 min on 2 cores)
    .venv/bin/python benchmarks/serve_ray.py --replicas 1,2,4,8 --rates 200,400,800,1600   # a bigger machine
    .venv/bin/python benchmarks/serve_ray.py --quick               # a smoke run (~2 min)

Three TCP worker processes (the default model, K=2, N=3; no injected delay, so that the service tier
is what saturates) serve every configuration in turn: the single-process service (`edgecc serve`),
then `edgecc serve --ray --replicas R` for each R, each the real command with its own local Ray
instance on this machine's cores. Against each, `edgecc load`'s open-loop generator (Poisson
arrivals, one PNG per request unless --images-per-request, from this process) at each rate (images/s),
after WARMUP_S of unmeasured load.
The whole sequence runs `--rounds` times (configurations in the same order each round), so that
each configuration meets the machine's other load at several times; cells are medians over rounds.

Per configuration: the time from launch to ready (every replica reaching every worker), and the
resident memory of the command's whole process tree (with Ray: its local instance and replicas).
Per rate: answered/sent and p50/p99 latency as the client sees it; the highest rate each sustained
(every request answered 200, p99 within SLO_MS); CPU time per request, by part (HTTP proxy, ingress,
master replicas, Ray's own processes, workers, load generator), at --cpu-rate.

Writes results/serve-ray.json and results/serve-ray.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgecc.launch.local import LocalWorker  # noqa: E402
from edgecc.serve.load import run_load  # noqa: E402

WARMUP_S = 2.0
SLO_MS = 1000.0  # "sustained": every request answered, p99 within this
OVERLOADED_MS = 5000.0  # a configuration whose p99 passed this at one rate is not offered the higher ones


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root: int) -> set[int]:
    """`root` and every process below it (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found


def role(pid: int) -> str:
    """Which part of the service a process is, from its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if pid == os.getpid():
        return "load generator"
    for key, name in (("EdgeccIngress", "Serve: ingress"), ("EdgeccMaster", "Serve: master replicas"),
                      ("EdgeccBoard", "Serve: board"), ("ProxyActor", "Serve: HTTP proxy"),
                      ("edgecc.cli worker", "workers"), ("edgecc.cli serve", "serve command")):
        if key in cmd:
            return name
    return "Ray's own processes"


def cpu_ticks(pids) -> dict[int, int]:
    out = {}
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = int(f[11]) + int(f[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return out


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and every process below it, in MB."""
    kb = 0
    for p in tree(root):
        try:
            kb += next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return kb / 1024


def start_service(name: str, replicas: int | None, workers, token: str, tmp: Path) -> tuple[subprocess.Popen, str, float]:
    """`edgecc serve` (replicas None) or `edgecc serve --ray --replicas R`; returns (process, url, seconds to ready)."""
    port_file = tmp / f"{name}.port"
    port_file.unlink(missing_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "edgecc.cli", "serve", "--workers", ",".join(f"127.0.0.1:{w.port}" for w in workers),
           "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file), "--wait", "60"]
    if replicas is not None:
        cmd += ["--ray", "--replicas", str(replicas)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray instance of its own
    env["EDGECC_TOKEN"] = token
    t0 = time.monotonic()
    with open(tmp / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = t0 + 300
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {(tmp / f'{name}.log').read_text()[-3000:]}")
            try:
                if port_file.exists() and port_file.read_text():
                    stats = json.load(urllib.request.urlopen(url + "/v1/stats", timeout=5))
                    views = stats.get("replicas") or [stats]
                    if len(views) >= (replicas or 1) and all(w["ready"] for v in views for w in v["workers"]):
                        return proc, url, time.monotonic() - t0
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
    except BaseException:  # not started, or this script interrupted: leave no service behind
        proc.kill()
        proc.wait()
        raise


def stop_service(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # the command alone: it drains, and its Ray instance ends with it
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def one_config(name: str, replicas: int | None, workers, token: str, rates, duration: float, tmp: Path,
               per_request: int = 1, cpu_rate: float | None = None) -> dict:
    proc, url, ready_s = start_service(name, replicas, workers, token, tmp)
    rows = []
    cpu: dict[str, float] = {}
    try:
        rss = tree_rss_mb(proc.pid)
        for rate in rates:
            if rows and rows[-1]["latency_ms"]["p99"] is not None and rows[-1]["latency_ms"]["p99"] > OVERLOADED_MS:
                break  # overloaded already: a higher rate only lengthens the backlog it drains for minutes
            sampler = None
            if rate == cpu_rate:  # CPU per request, by part, over this rate's measured seconds
                pids = tree(proc.pid) | {w.proc.pid for w in workers} | {os.getpid()}
                ticks: list[dict[int, int]] = []

                def sample() -> None:
                    time.sleep(WARMUP_S)
                    ticks.append(cpu_ticks(pids))
                    time.sleep(duration)
                    ticks.append(cpu_ticks(pids))

                sampler = threading.Thread(target=sample)
                sampler.start()
            s = asyncio.run(run_load(url, rate, duration, warmup=WARMUP_S, seed=int(rate), timeout=60,
                                     images_per_request=per_request, fmt="png" if per_request == 1 else "raw"))
            s["config"] = name
            if sampler is not None:
                sampler.join()
                hz = os.sysconf("SC_CLK_TCK")
                for p, t in ticks[1].items():
                    part = role(p)
                    cpu[part] = cpu.get(part, 0.0) + 1000 * (t - ticks[0].get(p, t)) / hz / max(1, s["requests"])
                s["cpu_ms_per_request"] = {k: round(v, 2) for k, v in sorted(cpu.items())}
            rows.append(s)
            print(f"{name:16s} {rate:5g} img/s  answered {s['achieved_images_per_s']:7.1f}/s  ok {s['ok']}/{s['requests']}"
                  f"  p50 {s['latency_ms']['p50'] or float('nan'):7.1f}  p99 {s['latency_ms']['p99'] or float('nan'):8.1f}"
                  f"  {s['status']}", flush=True)
        rss_loaded = tree_rss_mb(proc.pid)
    finally:
        code = stop_service(proc)
    return {"config": name, "replicas": replicas, "ready_s": ready_s, "rss_mb_idle": rss, "rss_mb_after": rss_loaded,
            "exit_code": code, "rows": rows}


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (configuration, rate) that ran: medians over the rounds, and each round's p99."""
    out = []
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        for rate in dict.fromkeys(row["rate_images_per_s"] for m in mine for row in m["rows"]):
            rs = [row for m in mine for row in m["rows"] if row["rate_images_per_s"] == rate]
            med = lambda f: float(np.median([v for v in map(f, rs) if v is not None])) if any(f(r) is not None for r in rs) else None
            out.append({"config": name, "replicas": mine[0]["replicas"], "rate": rate, "rounds": len(rs),
                        "ok": sum(r["ok"] for r in rs), "requests": sum(r["requests"] for r in rs),
                        "p50": med(lambda r: r["latency_ms"]["p50"]), "p99": med(lambda r: r["latency_ms"]["p99"]),
                        "p99_rounds": [r["latency_ms"]["p99"] for r in rs],
                        "status": {k: sum(r["status"].get(k, 0) for r in rs) for k in sorted({k for r in rs for k in r["status"]})}})
    return out


def doc_cpu_rate(mine: list[dict]) -> float | None:
    return next((r["rate_images_per_s"] for m in mine for r in m["rows"] if "cpu_ms_per_request" in r), None)


def summary(runs: list[dict], agg: list[dict]) -> list[dict]:
    """Per configuration: the highest offered rate it sustained (every request answered 200, p99 within
    SLO_MS, medians over rounds), CPU per request by part at the first rate, start time and memory."""
    out = []
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        cells = [a for a in agg if a["config"] == name]
        kept = [a for a in cells if a["rounds"] == len(mine) and a["ok"] == a["requests"] and a["p99"] is not None
                and a["p99"] <= SLO_MS]
        first = [r["cpu_ms_per_request"] for m in mine for r in m["rows"] if "cpu_ms_per_request" in r]
        parts = sorted({k for c in first for k in c})
        cpu = {k: float(np.median([c.get(k, 0.0) for c in first])) for k in parts}
        out.append({"config": name, "replicas": mine[0]["replicas"],
                    "sustained": max((a["rate"] for a in kept), default=None),
                    "cpu_rate": doc_cpu_rate(mine), "cpu_ms_per_request": cpu,
                    "cpu_ms_service": sum(v for k, v in cpu.items() if k not in ("load generator", "workers")),
                    "ready_s": float(np.median([m["ready_s"] for m in mine])),
                    "rss_mb": float(np.median([m["rss_mb_after"] for m in mine])),
                    "exit_codes": [m["exit_code"] for m in mine]})
    return out


def markdown(doc: dict) -> str:
    f = lambda v: "—" if v is None else f"{v:.1f}"
    lines = [
        "# `edgecc load` against `edgecc serve` and `edgecc serve --ray`",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']['cpus']} CPUs ({doc['machine']['platform']}), Python "
        f"{doc['machine']['python']}, Ray {doc['machine']['ray']}; shared with other jobs while it ran. Everything on "
        "this one machine: 3 TCP worker processes (default model, K=2, N=3, no injected delay), the service, and the "
        f"load generator ({'one PNG' if doc['images_per_request'] == 1 else str(doc['images_per_request']) + ' raw images'} "
        "per request, Poisson arrivals; "
        f"{doc['warmup_s']:g} s unmeasured, then {doc['duration_s']:g} s measured per rate). Configurations ran one "
        f"after another against the same workers, the whole sequence {doc['rounds']} times; cells are medians over "
        "the rounds. A configuration whose p99 passed "
        f"{OVERLOADED_MS / 1000:g} s at one rate was not offered the higher ones (it was overloaded already).",
        "",
        "| configuration | offered images/s | rounds | ok/sent | p50 ms | p99 ms | p99 per round | other answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in doc["aggregate"]:
        other = {k: v for k, v in a["status"].items() if k != "200"}
        lines.append(f"| {a['config']} | {a['rate']:g} | {a['rounds']} | {a['ok']}/{a['requests']} | {f(a['p50'])} | "
                     f"{f(a['p99'])} | {', '.join(f(v) for v in a['p99_rounds'])} | "
                     f"{', '.join(f'{k}: {v}' for k, v in other.items()) or '—'} |")
    lines += ["", f"Sustained: the highest offered rate at which every request was answered 200 with p99 within "
              f"{SLO_MS:g} ms (medians over rounds; only the offered rates above were tried).", "",
              "| configuration | sustained images/s | launch to ready s | resident MB, whole process tree | exit codes |",
              "|---|---|---|---|---|"]
    for s in doc["summary"]:
        sustained = "—" if s["sustained"] is None else f"{s['sustained']:g}"
        lines.append(f"| {s['config']} | {sustained} | {f(s['ready_s'])} | "
                     f"{s['rss_mb']:.0f} | {', '.join(map(str, s['exit_codes']))} |")
    parts = list(dict.fromkeys(k for s in doc["summary"] for k in s["cpu_ms_per_request"]))
    lines += ["", f"CPU time per HTTP request (ms), by part, over the measured seconds at {doc['summary'][0]['cpu_rate']:g} "
              "images/s (utime + stime from /proc; medians over rounds); *service* is everything but the workers and "
              "the load generator:", "",
              "| configuration | " + " | ".join(parts) + " | service |", "|---" * (len(parts) + 2) + "|"]
    for s in doc["summary"]:
        lines.append(f"| {s['config']} | " + " | ".join(f"{s['cpu_ms_per_request'].get(k, 0.0):.2f}" for k in parts)
                     + f" | {s['cpu_ms_service']:.2f} |")
    lines += ["", "Exit code 0: the command drained on SIGTERM with nothing accepted left unanswered."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,2", help="replica counts for `edgecc serve --ray`")
    ap.add_argument("--rates", default="25,50,75,100,150,200,300", help="offered images/s, increasing")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per rate")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images-per-request", type=int, default=1, help="1: one PNG per request; more: raw images")
    ap.add_argument("--cpu-rate", type=float, default=50.0, help="the offered rate (one of --rates) at which CPU "
                    "per request is measured: background work is spread over the requests, so not too low")
    ap.add_argument("--quick", action="store_true", help="one round, 3 s per rate")
    ap.add_argument("--out", default=str(REPO / "results" / "serve-ray.json"))
    args = ap.parse_args()
    import ray

    rates = [float(r) for r in args.rates.split(",")]
    if args.cpu_rate not in rates:
        ap.error(f"--cpu-rate {args.cpu_rate:g} is not one of --rates")
    duration, rounds = (3.0, 1) if args.quick else (args.duration, args.rounds)
    configs = [("edgecc serve", None)] + [(f"--ray --replicas {r}", int(r)) for r in args.replicas.split(",")]
    token = secrets.token_hex(32)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgecc-serve-ray-") as d:
        tmp = Path(d)
        workers = [LocalWorker(tmp, f"w{i}", ["--log-level", "warning"], token=token).launch() for i in range(3)]
        try:
            for w in workers:
                w.wait_started()
            for rnd in range(rounds):
                for name, replicas in configs:
                    run = one_config(name, replicas, workers, token, rates, duration, tmp, args.images_per_request,
                                     args.cpu_rate)
                    run["round"] = rnd
                    runs.append(run)
                    print(f"{name}: ready in {run['ready_s']:.1f} s, {run['rss_mb_after']:.0f} MB, exit {run['exit_code']}",
                          flush=True)
        finally:
            for w in workers:
                w.stop()
    agg = aggregate(runs)
    argv = " ".join(sys.argv[1:])
    doc = {"command": "python benchmarks/serve_ray.py" + (f" {argv}" if argv else ""), "runs": runs, "aggregate": agg,
           "summary": summary(runs, agg), "rounds": rounds, "warmup_s": WARMUP_S, "duration_s": duration,
           "images_per_request": args.images_per_request,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "ray": ray.__version__},
           "date": time.strftime("%Y-%m-%d", time.gmtime())}
    out = Path(args.out)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
