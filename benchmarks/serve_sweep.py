"""Latency of `edgecc serve` under open-loop load, per scheme, batching window and arrival rate.

Three local workers with the one-straggler scenario's behaviours (scenarios/one-straggler.toml:
every worker answers in 100 ms, worker 1 adds an exponential delay with a 500 ms mean), an
`edgecc serve` process in front of them, and `edgecc load`'s generator (Poisson arrivals, one PNG
per request) at 10, 50 and 200 images/s. Every (scheme, window) gets fresh workers and a fresh
service, and the whole sweep runs twice (rounds) because the host is shared: cells are medians.
The default window is the one with the lowest worst-case p99 over the three rates for AICC
(ties: the shorter window).

    .venv/bin/python benchmarks/serve_sweep.py            # the committed results (~25 min)
    .venv/bin/python benchmarks/serve_sweep.py --quick --rounds 1   # a smoke run (~2 min)

Writes results/serve-sweep.json and results/serve-sweep.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgecc.launch.local import LocalWorker  # noqa: E402
from edgecc.scenario.spec import load_scenario  # noqa: E402
from edgecc.serve.load import run_load  # noqa: E402

RATES = (10, 50, 200)
# seconds of measured load per rate: at least ~300 images at each rate
DURATION = {10: 30.0, 50: 10.0, 200: 6.0}
WARMUP_S = 2.0


def start_service(workers, token: str, tmp: Path, scheme: str, window_ms: float) -> tuple[subprocess.Popen, str]:
    port_file = tmp / f"serve-{scheme}-{window_ms}.port"
    port_file.unlink(missing_ok=True)  # a previous round's
    log = open(tmp / f"serve-{scheme}-{window_ms}.log", "ab")
    cmd = [sys.executable, "-m", "edgecc.cli", "serve", "--workers", ",".join(f"127.0.0.1:{w.port}" for w in workers),
           "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--scheme", scheme, "--window-ms", str(window_ms),
           "--wait", "30"]
    proc = subprocess.Popen(cmd, env={**os.environ, "EDGECC_TOKEN": token}, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"serve did not start: {(tmp / f'serve-{scheme}-{window_ms}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    while True:  # every worker connected, so that no run starts degraded
        try:
            stats = json.load(urllib.request.urlopen(url + "/v1/stats", timeout=5))
            if all(w["ready"] for w in stats["workers"]):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not all connect")
        time.sleep(0.1)
    return proc, url


def one_config(scenario, scheme: str, window_ms: float, rates, durations, tmp: Path) -> list[dict]:
    token = secrets.token_hex(32)
    workers = [LocalWorker(tmp, f"{scheme}-{window_ms}-w{i}", ["--behaviour", json.dumps(b.to_dict()), "--seed",
                                                                str(scenario.seed), "--index", str(i), "--log-level", "warning"],
                           token=token) for i, b in enumerate(scenario.behaviours())]
    rows = []
    try:
        for w in workers:
            w.start()
        proc, url = start_service(workers, token, tmp, scheme, window_ms)
        try:
            for rate in rates:
                s = asyncio.run(run_load(url, rate, durations[rate], warmup=WARMUP_S, seed=rate))
                s.update(scheme=scheme, window_ms=window_ms)
                rows.append(s)
                print(f"{scheme:11s} window {window_ms:5g} ms  {rate:4d} img/s  p50 {s['latency_ms']['p50']:7.1f}  "
                      f"p99 {s['latency_ms']['p99']:7.1f}  wait p50 {s['queue_wait_ms']['p50']:6.1f} p99 "
                      f"{s['queue_wait_ms']['p99']:6.1f}  ok {s['ok']}/{s['requests']}  pad {s['padding_share']:.2f}",
                      flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        for w in workers:
            w.stop()
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (scheme, window, rate): medians over the rounds, and each round's p99."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scheme"], r["window_ms"], r["rate_images_per_s"]), []).append(r)
    med = lambda rs, k, q: float(np.median([r[k][q] for r in rs if r[k][q] is not None])) if any(r[k][q] is not None for r in rs) else None
    out = []
    for (scheme, window, rate), rs in groups.items():
        out.append({"scheme": scheme, "window_ms": window, "rate": rate, "rounds": len(rs),
                    "ok": sum(r["ok"] for r in rs), "requests": sum(r["requests"] for r in rs),
                    "p50": med(rs, "latency_ms", "p50"), "p99": med(rs, "latency_ms", "p99"),
                    "p99_rounds": [r["latency_ms"]["p99"] for r in rs],
                    "wait_p50": med(rs, "queue_wait_ms", "p50"), "wait_p99": med(rs, "queue_wait_ms", "p99"),
                    "infer_p50": med(rs, "infer_ms", "p50"), "infer_p99": med(rs, "infer_ms", "p99"),
                    "padding": float(np.median([r["padding_share"] for r in rs if r["padding_share"] is not None] or [np.nan])),
                    "accuracy": float(np.median([r["accuracy"] for r in rs if r["accuracy"] is not None] or [np.nan]))})
    return out


def choose_window(agg: list[dict]) -> float:
    """The AICC window whose worst p99 over the rates (median over rounds) is lowest; ties: the shorter."""
    worst: dict[float, float] = {}
    for a in agg:
        if a["scheme"] == "aicc":
            p99 = a["p99"] if a["ok"] == a["requests"] else float("inf")
            worst[a["window_ms"]] = max(worst.get(a["window_ms"], 0.0), p99)
    return min(worst, key=lambda w: (round(worst[w], 0), w))


def markdown(doc: dict) -> str:
    f = lambda v: "—" if v is None else f"{v:.1f}"
    pad = lambda v: "—" if v is None else f"{v:.2f}"
    lines = [
        f"# `edgecc serve` under open-loop load, scenario {doc['scenario']}",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']['cpus']} CPUs ({doc['machine']['platform']}), shared "
        "with other jobs while it ran, so absolute numbers are noisy; the schemes and windows ran one after another "
        f"in one run. Scenario: the worker behaviours of scenarios/{doc['scenario']}.toml, default model (K=2, N=3), "
        "one PNG per request, Poisson arrivals; "
        f"{doc['warmup_s']:g} s of unmeasured load first, then {', '.join(f'{d:g} s at {r}/s' for r, d in doc['durations'].items())}.",
        "",
        "Latency is per request as the client sees it (HTTP included); *wait* is the batching wait (arrival to "
        "dispatch to the master), *infer* the master's part (its queue, encode, workers, decode). *pad* is the share "
        "of group slots that were blank padding.",
        "",
        f"Each cell is the median over {doc['rounds']} rounds (the whole sweep repeated); *p99 per round* shows the spread.",
        "",
        "| scheme | window ms | images/s | ok/sent | p50 ms | p99 ms | p99 per round | wait p50 | wait p99 | infer p50 | infer p99 | pad | accuracy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in sorted(doc["aggregate"], key=lambda a: (["aicc", "uncoded", "replication"].index(a["scheme"]), a["window_ms"], a["rate"])):
        lines.append(f"| {a['scheme']} | {a['window_ms']:g} | {a['rate']:g} | {a['ok']}/{a['requests']} | {f(a['p50'])} | "
                     f"{f(a['p99'])} | {', '.join(f(v) for v in a['p99_rounds'])} | {f(a['wait_p50'])} | {f(a['wait_p99'])} | "
                     f"{f(a['infer_p50'])} | {f(a['infer_p99'])} | {pad(a['padding'])} | {f(a['accuracy'])} |")
    failed = [r for r in doc["rows"] if r["ok"] != r["requests"]]
    if failed:
        lines += ["", "Requests that did not get a 200 (they count against their window in the choice below):", ""]
        lines += [f"- {r['scheme']}, window {r['window_ms']:g} ms, {r['rate_images_per_s']:g}/s, round {r['round'] + 1}: "
                  f"{r['status']}; first error: {r['errors'][0] if r['errors'] else '—'}" for r in failed]
    lines += ["", f"Default window: **{doc['chosen_window_ms']:g} ms**, the AICC window with the lowest worst-case p99 "
              "over the three rates (ties go to the shorter window); a window with failed requests counts as infinite."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, two windows")
    ap.add_argument("--windows", default="0,2,5,10,20,50", help="AICC windows to sweep (ms)")
    ap.add_argument("--baseline-windows", default="0,5", help="windows for uncoded/replication (ms)")
    ap.add_argument("--rounds", type=int, default=2, help="repeat the whole sweep; cells report the median")
    ap.add_argument("--scenario", default=str(REPO / "scenarios" / "one-straggler.toml"),
                    help="any scenario file: its workers' behaviours (latency, failures) are what the service meets")
    ap.add_argument("--out", default=str(REPO / "results" / "serve-sweep.json"))
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    durations = {r: (4.0 if args.quick else DURATION[r]) for r in RATES}
    windows = [0.0, 10.0] if args.quick else [float(w) for w in args.windows.split(",")]
    base = [float(w) for w in args.baseline_windows.split(",")]
    rows: list[dict] = []
    partial = Path(args.out).with_suffix(".partial.json")  # every finished configuration, in case the run dies
    with tempfile.TemporaryDirectory(prefix="edgecc-serve-sweep-") as d:
        tmp = Path(d)
        for rnd in range(args.rounds):
            for w in windows:
                rows += [{**r, "round": rnd} for r in one_config(scenario, "aicc", w, RATES, durations, tmp)]
                partial.write_text(json.dumps(rows))
            for scheme in ("uncoded", "replication"):
                for w in base:
                    rows += [{**r, "round": rnd} for r in one_config(scenario, scheme, w, RATES, durations, tmp)]
                    partial.write_text(json.dumps(rows))
    agg = aggregate(rows)
    chosen = choose_window(agg)
    doc = {"command": "python benchmarks/serve_sweep.py" + (" --quick" if args.quick else ""), "rows": rows,
           "aggregate": agg, "rounds": args.rounds,
           "scenario": scenario.name,
           "chosen_window_ms": chosen, "warmup_s": WARMUP_S, "durations": {str(r): d for r, d in durations.items()},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "date": time.strftime("%Y-%m-%d", time.gmtime())}
    out = Path(args.out)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # re-render the markdown from a finished run's JSON
        out = Path(sys.argv[2])
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
    else:
        main()
