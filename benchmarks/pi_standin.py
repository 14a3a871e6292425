#!/usr/bin/env python
"""The worker on the emulated arm64 Raspberry Pi stand-in against the same install on x86, same host.

    sudo .venv/bin/python benchmarks/pi_standin.py [--out results/pi-standin.json] [--repeats 3] [--budget S]
    .venv/bin/python benchmarks/pi_standin.py --summary results/pi-standin.json     # reprint, measure nothing

Two fresh boards from workers/pi-standin.sh: the Debian 12 arm64 root (run under qemu-user, so every
arm64 time here is EMULATED, not a Pi's) and a Debian 12 amd64 root with the same packages (numpy
1.24, msgpack 1.0.3, click 8.1.3, threadpoolctl 3.1 from Debian; safetensors 0.4.0, uvloop 0.18.0
and edgecc from wheels).
On both, workers/setup-pi.sh installs the same wheel and bundle, and the installed unit's ExecStart
is started directly (tests/pi_board.py). Measured on each, side by side in one run:
  - setup-pi.sh wall time (first install, then a rerun with nothing changed);
  - worker start time: process start to the port accepting connections, with the bundle (median);
  - worker RSS (/proc/PID/status VmRSS, VmHWM): idle with the bundle, and after serving a master
    (1000 shipped images through 3 workers); under qemu-user this includes the emulator's own memory;
  - per-group compute time of the worker's EncodedCompute (1 BLAS thread; B = 1, 64, 1024 groups);
  - an x86 `edgecc master` on the host decoding the 1000 shipped images through 3 such workers;
then the arm64/x86 ratios, written to OUT with the machine, and printed as Markdown.
Also the worker image's size when localhost/edgecc-worker:test exists (tests/test_container.py builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.worker_footprint import ENCODED_TIMING  # noqa: E402
from tests.pi_board import CACHE, STANDIN, Board, free_port, wait_port  # noqa: E402

X86ROOT = CACHE / "amd64-root"
BATCHES = (1, 64, 1024)
MiB = 2**20


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{cmd[:4]} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def memory(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":", 1)
            out[k] = round(int(v.split()[0]) / 1024, 1)
    return out


def prepare(board: Board, wheel: Path, bundle: Path, token: Path, x86: bool) -> dict:
    """setup-pi.sh on the board (timed, twice); returns the timings."""
    stage = board.path("/root/deploy")
    stage.mkdir(mode=0o700)
    for f in ("setup-pi.sh", "edgecc-worker.service", "worker.env.example"):
        shutil.copy(REPO / "workers" / f, stage / f)
    for f in (wheel, bundle, token):
        shutil.copy(f, stage / f.name)
    if x86:  # the amd64 root gets what pi-standin.sh gives the arm64 one: offline wheels of the same versions
        wheels = board.path("/srv/wheels")
        wheels.mkdir(parents=True, exist_ok=True)
        # into a plain folder first: pip resolves the /proc/PID/root path to the host's view, outside the board
        dl = Path(sh(["mktemp", "-d"]).stdout.strip())
        sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--platform",
            "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp", "-d", str(dl),
            "safetensors==0.4.0", "uvloop==0.18.0"], timeout=300)  # the versions the arm64 board has
        for w in dl.glob("*.whl"):
            shutil.copy(w, wheels / w.name)
        shutil.rmtree(dl)
        board.path("/etc/pip.conf").write_text("[global]\nno-index = true\nfind-links = /srv/wheels\n")
    args = ["bash", "/root/deploy/setup-pi.sh", "--no-restart", "--bundle", f"/root/deploy/{bundle.name}",
            "--token-file", f"/root/deploy/{token.name}", f"/root/deploy/{wheel.name}"]
    times = []
    for _ in range(2):
        t = time.perf_counter()
        board.run(args, timeout=1800, check=True)
        times.append(round(time.perf_counter() - t, 1))
    return {"setup_pi_first_s": times[0], "setup_pi_rerun_s": times[1]}


def start_worker(runner, port: int, log: Path):
    t = time.perf_counter()
    with open(log, "ab") as f:
        p = subprocess.Popen(runner.command({"EDGECC_LISTEN": f"127.0.0.1:{port}", "OPENBLAS_NUM_THREADS": "1"}),
                         stdout=f, stderr=subprocess.STDOUT)
    wait_port(port, 300, p, "worker")
    return p, time.perf_counter() - t


def stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def master_run(ports: list[int], token: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECC_")}
    env.update(EDGECC_TOKEN_FILE=str(token), OMP_NUM_THREADS="1")
    t = time.perf_counter()
    sh([sys.executable, "-m", "edgecc.cli", "master", "--workers", ",".join(f"127.0.0.1:{p}" for p in ports),
        "--model", "default", "--images", "sample", "--encode-precision", "fp32", "--timeout", "120", "--wait", "120",
        "--quiet", "--json-out", str(out)], timeout=1200, env=env)
    wall = time.perf_counter() - t
    s = json.loads(out.read_text())
    return {"wall_s": round(wall, 2), "accuracy": s["accuracy"], "requests_failed": s["requests_failed"],
            "summary": {k: s[k] for k in s if k.startswith(("latency", "throughput", "requests", "images"))}}


def measure_board(name: str, board: Board, token: Path, repeats: int, budget: float, tmp: Path) -> dict:
    runner = board.start_service_runner()
    res: dict = {}
    starts, idle = [], []
    for i in range(repeats):  # start time and idle RSS: one worker at a time, so they do not compete
        p, dt = start_worker(runner, free_port(), tmp / f"{name}-start.log")
        time.sleep(1)
        starts.append(dt)
        idle.append(memory(p.pid))
        stop([p])
    res["start_s"] = {"median": round(statistics.median(starts), 2), "all": [round(s, 2) for s in starts]}
    res["idle_with_bundle_mib"] = {"VmRSS": max(m["VmRSS"] for m in idle), "VmHWM": max(m["VmHWM"] for m in idle)}
    ports = [free_port() for _ in range(3)]
    procs = [start_worker(runner, port, tmp / f"{name}-w{port}.log")[0] for port in ports]
    try:
        res["master"] = master_run(ports, token, tmp / f"{name}-summary.json")
        mems = [memory(p.pid) for p in procs]
        res["after_master_mib"] = {"VmRSS": max(m["VmRSS"] for m in mems), "VmHWM": max(m["VmHWM"] for m in mems)}
    finally:
        stop(procs)
    return res


def compute_timing(board: Board, budget: float) -> dict:
    r = board.run(["/opt/edgecc/venv/bin/python", "-c", ENCODED_TIMING, "/opt/edgecc/bundle.safetensors", str(budget),
                   ",".join(map(str, BATCHES))], env={"OPENBLAS_NUM_THREADS": "1"}, timeout=1200, check=True)
    got = json.loads(r.stdout)
    return {str(B): statistics.median(ts) / int(B) for B, ts in got["times"].items()}, got["numpy"]


def image_size() -> dict | None:
    if shutil.which("podman") is None:
        return None
    r = subprocess.run(["podman", "image", "inspect", "localhost/edgecc-worker:test"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    info = json.loads(r.stdout)[0]
    base = subprocess.run(["podman", "image", "inspect", "localhost/edgecc-base:bookworm"], capture_output=True, text=True)
    out = {"image": "localhost/edgecc-worker:test", "size_mib": round(info["Size"] / MiB, 1)}
    if base.returncode == 0:
        out["base"] = "localhost/edgecc-base:bookworm"
        out["base_size_mib"] = round(json.loads(base.stdout)[0]["Size"] / MiB, 1)
    return out


def markdown(res: dict) -> str:
    a, x = res["arm64"], res["amd64"]
    lines = [f"Host: {res['machine']['cpu']}, {res['machine']['cores']} cores; arm64 = Debian 12 arm64 under "
             f"qemu-user {res['machine']['qemu']} (EMULATED); x86 = Debian 12 amd64, same packages. "
             f"{res['repeats']} repeats; the host was shared (load average {res['load_before']} before).", "",
             "| | arm64 (emulated) | x86 | arm64 / x86 |", "|---|---:|---:|---:|"]

    def row(label, av, xv, unit=""):
        ratio = f"{av / xv:.1f}x" if xv else "-"
        lines.append(f"| {label} | {av:g}{unit} | {xv:g}{unit} | {ratio} |")

    row("setup-pi.sh, first install (s)", a["setup_pi_first_s"], x["setup_pi_first_s"])
    row("setup-pi.sh, rerun, nothing changed (s)", a["setup_pi_rerun_s"], x["setup_pi_rerun_s"])
    row("worker start to listening, with bundle (s, median)", a["start_s"]["median"], x["start_s"]["median"])
    row("worker VmRSS idle, bundle loaded (MiB)", a["idle_with_bundle_mib"]["VmRSS"], x["idle_with_bundle_mib"]["VmRSS"])
    row("worker VmHWM after a master's 1000 images (MiB)", a["after_master_mib"]["VmHWM"], x["after_master_mib"]["VmHWM"])
    for B in map(str, BATCHES):
        row(f"compute per group, B={B}, 1 BLAS thread (µs)", round(a["us_per_group"][B], 3), round(x["us_per_group"][B], 3))
    row("x86 master, 1000 sample images through 3 workers (s)", a["master"]["wall_s"], x["master"]["wall_s"])
    lines.append(f"| accuracy on the sample (%) | {a['master']['accuracy']} | {x['master']['accuracy']} | |")
    if res.get("image"):
        im = res["image"]
        lines += ["", f"Worker image {im['image']}: {im['size_mib']} MiB (base {im.get('base', '?')}: "
                  f"{im.get('base_size_mib', '?')} MiB)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "pi-standin.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per batch size (x86; arm64 the same)")
    ap.add_argument("--summary", type=Path, help="print the Markdown of an existing result file and exit")
    args = ap.parse_args()
    if args.summary:
        print(markdown(json.loads(args.summary.read_text())))
        return
    if os.geteuid() != 0:
        sys.exit("needs root (binfmt_misc, chroot, mount namespaces)")
    sh(["nice", "-n", "10", "bash", str(STANDIN), "root"], timeout=3600)
    sh(["nice", "-n", "10", "bash", str(STANDIN), "x86root"], timeout=3600)
    tmp = Path(sh(["mktemp", "-d"]).stdout.strip())
    try:
        sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(REPO)],
           timeout=600)
        wheel = next(tmp.glob("edgecc-*.whl"))
        bundle = tmp / "bundle.safetensors"
        sh([sys.executable, "-m", "edgecc.cli", "export", "default", "--out", str(bundle)], timeout=600)
        token = tmp / "token"
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)
        qemu = sh(["qemu-aarch64-static", "--version"]).stdout.split("\n")[0].split("version", 1)[-1].strip()
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        res = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "qemu": qemu},
               "load_before": round(os.getloadavg()[0], 2), "repeats": args.repeats, "budget_s": args.budget,
               "command": "sudo .venv/bin/python benchmarks/pi_standin.py", "emulated": "arm64 runs under qemu-user"}
        boards = {"arm64": Board(), "amd64": Board(base=X86ROOT)}
        try:
            for name, b in boards.items():
                res[name] = prepare(b, wheel, bundle, token, x86=name == "amd64")
                r = b.run(["/opt/edgecc/venv/bin/python", "-c", "import json, platform, numpy, msgpack, click, uvloop, "
                           "safetensors; print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
                           " 'numpy': numpy.__version__, 'msgpack': '.'.join(map(str, msgpack.version)),"
                           " 'click': click.__version__, 'uvloop': uvloop.__version__, 'safetensors': safetensors.__version__}))"],
                          check=True)
                res[name]["versions"] = json.loads(r.stdout)
            for name, b in boards.items():
                res[name].update(measure_board(name, b, token, args.repeats, args.budget, tmp))
            # compute timings interleaved, so both sides see the same background load
            per: dict = {"arm64": [], "amd64": []}
            for _ in range(args.repeats):
                for name, b in boards.items():
                    t, numpy_version = compute_timing(b, args.budget)
                    per[name].append(t)
            for name in boards:
                res[name]["us_per_group"] = {str(B): round(statistics.median(t[str(B)] for t in per[name]) * 1e6, 3)
                                             for B in BATCHES}
        finally:
            for b in boards.values():
                b.close()
        res["ratio_arm64_over_x86"] = {
            "start": round(res["arm64"]["start_s"]["median"] / res["amd64"]["start_s"]["median"], 2),
            **{f"compute_B{B}": round(res["arm64"]["us_per_group"][str(B)] / res["amd64"]["us_per_group"][str(B)], 2)
               for B in BATCHES},
            "master_wall": round(res["arm64"]["master"]["wall_s"] / res["amd64"]["master"]["wall_s"], 2)}
        res["image"] = image_size()
        res["load_after"] = round(os.getloadavg()[0], 2)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(markdown(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
