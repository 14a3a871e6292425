#!/usr/bin/env python
"""Footprint of the torch-free edgecc worker (what a Raspberry Pi runs), measured on this machine.

    python benchmarks/worker_footprint.py [--out results/worker_footprint.json] [--venv DIR] [--budget S]
    python benchmarks/worker_footprint.py --summary results/worker_footprint.json   # reprint, measure nothing

Measures
  (a) install size: a fresh worker-only venv (pyproject's base dependencies, no torch), du of its
      site-packages and the size of each installed distribution; torch's size for comparison;
  (b) RSS (/proc/PID/status VmRSS, VmHWM) of torch-free workers run from that venv: idle, idle with
      the H_B bundle loaded (--bundle), after a master configured them, after a 64- and a 1024-group
      request;
  (c) per-group compute time of EncodedCompute (the collapsed H_B map, numpy, in the worker venv;
      1 BLAS thread and the default) and of SharedCompute (the shared-dataset worker: E(α_n) and
      the H_B CNN in torch, 1 thread) for batches of 1, 64 and 1024 groups, median of many runs;
  (d) RSS of shared-dataset workers (main venv, with torch), same points as (b);
then writes OUT (JSON) and prints a Markdown summary with a labelled Raspberry Pi 4 estimate.

Runs from the main venv (it needs torch for the master side). Needs the package index once to
build the worker-only venv, unless --venv names an existing one (e.g. one kept with --keep-venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BATCHES = (1, 64, 1024)
MB = 1024 * 1024

# --- Raspberry Pi 4 figures: sources, stated so the estimate can be checked -----------------------
PI4 = {
    "cpu": "Broadcom BCM2711, 4x Cortex-A72 @ 1.5 GHz (1.8 GHz on boards from late 2020 / Pi 400), NEON",
    "ram_gb": [1, 2, 4, 8],
    # Cortex-A72: two 64-bit-wide FP/NEON pipes, so one 4-wide fp32 FMA per cycle = 8 fp32 FLOP/cycle/core
    # (vfpbench on a 2.0 GHz Cortex-A72 measured 15.9 single-thread fp32 GFLOP/s = 8 x 2.0 GHz:
    #  https://wlog.flatlib.jp/2015/10/30/n1787/ ; ARM Cortex-A72 Software Optimization Guide, UAN 0016A)
    "peak_gflops_fp32_per_core": 8 * 1.5,
    # What a BLAS sustains on it: HPL (fp64, 4 cores, 64-bit Raspberry Pi OS) ~8 GFLOP/s on a Pi 4
    # (https://feiereisen.net/?page_id=924), i.e. ~2 GFLOP/s fp64 per core = ~1/3 of the 6 GFLOP/s fp64 peak.
    # For fp32 the same efficiency gives ~4 GFLOP/s per core; a large, well-blocked SGEMM reaches 50-65 %
    # (~6-8). Our GEMM is skinny ((B x 784) @ (784 x 10)), which blocks badly: we take 2-6 GFLOP/s.
    "sustained_gflops_fp32_per_core": {"low": 2.0, "high": 6.0},
    "hpl_source": "https://feiereisen.net/?page_id=924 (HPL ~8 GFLOP/s fp64, 4 cores)",
    "peak_source": "https://wlog.flatlib.jp/2015/10/30/n1787/ (vfpbench, Cortex-A72: 8 fp32 FLOP/cycle)",
    # Gigabit Ethernet (the Pi 4's is not on USB): ~940 Mbit/s of TCP payload in iperf3-style tests.
    "ethernet_mbit": 940,
    # Ratio of single-thread Python/numpy call overhead, this EPYC core vs a 1.5 GHz A72: a guess
    # from clock (~2x) and IPC (~2x); used only to scale the measured per-call overhead (B=1).
    "overhead_ratio": {"low": 3.0, "high": 6.0},
}


# --- helpers -------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "mem_total_mb": _meminfo().get("MemTotal", 0) // 1024, "loadavg_start": os.getloadavg()}


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def proc_mem(pid: int) -> dict:
    """VmRSS/VmHWM in MiB, and whether any torch library is mapped into the process."""
    st = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
            k, v = line.split(":", 1)
            st[k] = round(int(v.split()[0]) / 1024, 1)
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {"rss_mb": st.get("VmRSS"), "hwm_mb": st.get("VmHWM"), "rss_anon_mb": st.get("RssAnon"),
            "rss_file_mb": st.get("RssFile"), "torch_loaded": "libtorch" in maps}


def dir_size_mb(path: Path) -> float:
    """du -sk (disk usage, blocks) in MiB."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[0]) / 1024, 1)


def clean_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "EDGECC_TOKEN_FILE")}
    env.update({"EDGECC_TOKEN": token, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return env


def build_worker_venv(root: Path) -> tuple[Path, float]:
    """A venv with the package and pyproject's base dependencies only (as workers/Containerfile installs it)."""
    src, venv = root / "src", root / "venv"
    src.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(REPO / "edgecc", src / "edgecc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(src.resolve())],
                       capture_output=True, text=True, env=clean_env("unused"), cwd=root)
    if r.returncode != 0:
        sys.exit(f"pip install of the worker-only package failed (is the package index reachable?):\n{r.stderr[-3000:]}")
    return venv, round(time.perf_counter() - t0, 1)


DIST_SIZES = r"""
import importlib.metadata as md, json, os, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
out = {}
for d in md.distributions():
    total = 0
    for f in d.files or ():
        p = f.locate()
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    out[d.metadata["Name"]] = {"version": d.version, "bytes": total}
print(json.dumps({"site_packages": site, "dists": out,
                  "torch_importable": __import__("importlib.util").util.find_spec("torch") is not None}))
"""


def install_size(venv: Path, install_s: float | None) -> dict:
    r = subprocess.run([str(venv / "bin" / "python"), "-c", DIST_SIZES], capture_output=True, text=True, check=True,
                       env=clean_env("unused"), cwd=venv.parent)
    got = json.loads(r.stdout)
    dists = {k: {"version": v["version"], "mb": round(v["bytes"] / MB, 2)}
             for k, v in sorted(got["dists"].items(), key=lambda kv: -kv[1]["bytes"])}
    tools = {"pip", "setuptools", "wheel"}
    # torch as it is installed here (CPU build, x86-64), for comparison
    torch_mb = None
    try:
        import importlib.metadata as md

        torch_mb = round(sum(os.path.getsize(f.locate()) for f in md.distribution("torch").files or () if os.path.exists(f.locate())) / MB, 1)
    except Exception:
        pass
    main_site = Path(np.__file__).resolve().parent.parent
    return {"venv_total_mb": dir_size_mb(venv), "site_packages_du_mb": dir_size_mb(Path(got["site_packages"])),
            "runtime_mb": round(sum(v["mb"] for k, v in dists.items() if k.lower() not in tools), 1),
            "packaging_tools_mb": round(sum(v["mb"] for k, v in dists.items() if k.lower() in tools), 1),
            "dists": dists, "torch_importable": got["torch_importable"], "install_seconds": install_s,
            "torch_cpu_wheel_installed_mb_here": torch_mb, "main_venv_site_packages_du_mb": dir_size_mb(main_site)}


class Worker:
    def __init__(self, cmd: list[str], env: dict, tmp: Path, name: str):
        self.port_file, self.log = tmp / f"{name}.port", tmp / f"{name}.log"
        self.proc = subprocess.Popen([*cmd, "--listen", "127.0.0.1:0", "--port-file", str(self.port_file), "--log-level", "warning"],
                                     env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 60
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"worker {name} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.address = ("127.0.0.1", int(self.port_file.read_text()))

    def mem(self) -> dict:
        return proc_mem(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _mean_mem(ws: list[Worker]) -> dict:
    ms = [w.mem() for w in ws]
    return {"rss_mb": round(max(m["rss_mb"] for m in ms), 1), "hwm_mb": round(max(m["hwm_mb"] for m in ms), 1),
            "rss_anon_mb": round(max(m["rss_anon_mb"] for m in ms), 1), "torch_loaded": any(m["torch_loaded"] for m in ms)}


def worker_rss(cmd: list[str], env: dict, tmp: Path, plan, token: str, images: np.ndarray, tag: str) -> dict:
    """Three workers: RSS idle, after a master configured them, after a 64-group request (the master's default
    --groups-per-request), after a 1024-group one (max over the three)."""
    from edgecc.master.master import Master

    ws = [Worker(cmd, env, tmp, f"{tag}{i}") for i in range(3)]
    try:
        time.sleep(1.0)
        out = {"idle": _mean_mem(ws)}

        async def go():
            m = Master(plan, [w.address for w in ws], token.encode(), request_timeout=120.0)
            try:
                await m.start(wait_ready=60)
                assert await m.wait_all_ready(60), "not all workers configured"
                await asyncio.sleep(0.5)
                out["configured"] = _mean_mem(ws)
                groups = images.reshape(-1, plan.K, 28, 28)
                groups = np.concatenate([groups, groups, groups])
                for B in (64, 1024):
                    await m.infer(groups[:B])
                    await asyncio.sleep(0.5)  # the third worker's (late) result
                    out[f"after_{B}_group_request"] = _mean_mem(ws)
            finally:
                await m.close()

        asyncio.run(go())
        return out
    finally:
        for w in ws:
            w.stop()


ENCODED_TIMING = r"""
import json, statistics, sys, time
import numpy as np
from edgecc.bundle import load_bundle
from edgecc.coding.schemes import Scheme
from edgecc.worker.compute import EncodedCompute
info, arrays, _ = load_bundle(sys.argv[1])
comp = EncodedCompute(Scheme.from_dict(info["scheme"]), arrays)
budget = float(sys.argv[2]); out = {}
rng = np.random.default_rng(0)
for B in map(int, sys.argv[3].split(",")):
    x = rng.random((B, 28, 28), dtype=np.float32)
    for _ in range(3):
        comp(x)
    ts, end = [], time.perf_counter() + budget
    while len(ts) < 20 or (time.perf_counter() < end and len(ts) < 200000):
        t = time.perf_counter(); comp(x); ts.append(time.perf_counter() - t)
    out[B] = ts
print(json.dumps({"numpy": np.__version__, "times": out}))
"""


def summarize(ts: list[float], B: int) -> dict:
    med = statistics.median(ts)
    q = statistics.quantiles(ts, n=10) if len(ts) >= 10 else [min(ts)] * 9
    return {"runs": len(ts), "median_call_us": round(med * 1e6, 2), "p10_call_us": round(q[0] * 1e6, 2),
            "p90_call_us": round(q[-1] * 1e6, 2), "median_us_per_group": round(med * 1e6 / B, 3),
            "gflops": round(2 * 784 * 10 * B / med / 1e9, 2)}


def encoded_timing(venv: Path, bundle: Path, budget: float) -> dict:
    res = {}
    for label, threads in (("1_thread", "1"), ("default_threads", None)):
        env = clean_env("unused")
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(k, None)
            if threads:
                env[k] = threads
        r = subprocess.run([str(venv / "bin" / "python"), "-c", ENCODED_TIMING, str(bundle), str(budget),
                            ",".join(map(str, BATCHES))], capture_output=True, text=True, env=env, cwd=venv.parent)
        if r.returncode != 0:
            sys.exit(f"encoded timing failed: {r.stderr[-2000:]}")
        got = json.loads(r.stdout)
        res[label] = {str(B): summarize(ts, int(B)) for B, ts in got["times"].items()}
        res["numpy"] = got["numpy"]
    return res


def shared_timing(plan, budget: float) -> dict:
    import torch

    from edgecc.worker.shared_compute import SharedCompute

    comp = SharedCompute(plan.scheme, plan.arrays, float(plan.alphas[0]))
    rng = np.random.default_rng(0)
    res = {"torch": torch.__version__}
    before = torch.get_num_threads()
    try:
        # one thread only: the CNNs make a 1024-group call take seconds here, and a second thread on this
        # busy 2-core machine only adds contention (the encoded numbers show both)
        for label, n in (("1_thread", 1),):
            torch.set_num_threads(n)
            res[label] = {}
            for B in BATCHES:
                x = rng.integers(0, 256, (B, plan.K, 28, 28), dtype=np.uint8)
                if B == 1:
                    comp(x)  # warm-up
                ts, end = [], time.perf_counter() + budget
                while len(ts) < {1: 20, 64: 5}.get(B, 3) or (time.perf_counter() < end and len(ts) < 20000):
                    t = time.perf_counter()
                    comp(x)
                    ts.append(time.perf_counter() - t)
                s = summarize(ts, B)
                s.pop("gflops")  # not the H_B FLOP count: the encoder and the CNN run here
                res[label][str(B)] = s
    finally:
        torch.set_num_threads(before)
    return res


def forward_mflops(model) -> dict:
    """FLOPs per group (torch's counter, multiply-add = 2) of what each kind of worker computes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = {"encoded_hb_collapsed": 2 * 784 * 10 / 1e6}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            model.hb(torch.rand(1, 1, 28, 28))
        out["hb_cnn_uncollapsed"] = round(fc.get_total_flops() / 1e6, 2)
        with FlopCounterMode(display=False) as fc:
            model(torch.rand(1, model.scheme.K, 28, 28), [0.25])
        out["shared_worker_encoder_plus_hb"] = round(fc.get_total_flops() / 1e6, 2)
    return out


def pi4_estimate(size: dict, rss_enc: dict, rss_sh: dict, enc: dict, mflops: dict) -> dict:
    flops = 2 * 784 * 10  # one (784 -> 10) affine map per group: 784*10 multiply-adds
    lo, hi = PI4["sustained_gflops_fp32_per_core"]["low"], PI4["sustained_gflops_fp32_per_core"]["high"]
    us_hi, us_lo = flops / (lo * 1e9) * 1e6, flops / (hi * 1e9) * 1e6  # slow / fast
    call_here = enc["1_thread"]["1"]["median_call_us"]
    overhead = {"low": round(call_here * PI4["overhead_ratio"]["low"], 1), "high": round(call_here * PI4["overhead_ratio"]["high"], 1)}
    bytes_f4, bytes_f2 = 784 * 4, 784 * 2
    net_f4 = bytes_f4 * 8 / (PI4["ethernet_mbit"] * 1e6) * 1e6
    net_f2 = bytes_f2 * 8 / (PI4["ethernet_mbit"] * 1e6) * 1e6
    worst_rss = max(rss_enc["after_1024_group_request"]["hwm_mb"], rss_enc["configured"]["rss_mb"])
    shared_rss = rss_sh["after_1024_group_request"]["hwm_mb"]
    shared_64 = rss_sh["after_64_group_request"]["hwm_mb"]
    sh_flops = mflops.get("shared_worker_encoder_plus_hb")
    return {
        "flops_per_group": flops,
        "compute_us_per_group": {"at_gflops": [lo, hi], "slow": round(us_hi, 2), "fast": round(us_lo, 2)},
        "groups_per_s_per_core": {"slow": round(1e6 / us_hi), "fast": round(1e6 / us_lo)},
        "call_overhead_us_estimate": overhead,
        "input_per_group_bytes": {"f4": bytes_f4, "f2": bytes_f2},
        "network_us_per_group_gbe": {"f4": round(net_f4, 1), "f2": round(net_f2, 1)},
        "encoded_worker_ram_mb_measured_here": worst_rss,
        "shared_worker_ram_mb_measured_here": shared_rss,
        "shared_worker_ram_mb_64_groups_measured_here": shared_64,
        "ram_share_percent": {f"{g}GB": {"encoded": round(100 * worst_rss / (g * 1024), 1), "shared": round(100 * shared_rss / (g * 1024), 1)}
                              for g in PI4["ram_gb"]},
        "shared_worker_ms_per_group": None if sh_flops is None else
        {"slow": round(sh_flops * 1e6 / (lo * 1e9) * 1e3, 1), "fast": round(sh_flops * 1e6 / (hi * 1e9) * 1e3, 1)},
        "install_runtime_mb_here": size["runtime_mb"], "install_venv_mb_here": size["venv_total_mb"],
        "sd_card_share_percent_8GB": round(100 * size["venv_total_mb"] / (8 * 1000 * 1000 * 1000 / MB), 2),
        "assumptions": PI4,
    }


def markdown(r: dict) -> str:
    m, s, enc, sh, re_, rs, pi = (r["machine"], r["install"], r["compute_encoded"], r["compute_shared"],
                                   r["rss_encoded_worker"], r["rss_shared_worker"], r["pi4_estimate"])
    L = [f"# edgecc worker footprint ({r['date']})", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_total_mb']} MiB RAM, Python {m['python']}; "
         f"load average {m['loadavg_start'][0]:.1f} at start, {r['loadavg_end'][0]:.1f} at end (other jobs were running: timings are upper bounds). "
         f"Model: {r['model']}.", "",
         "## Install (worker-only venv: pyproject base dependencies, no torch)", "",
         f"- venv on disk: **{s['venv_total_mb']} MiB** (site-packages {s['site_packages_du_mb']} MiB); "
         f"runtime packages **{s['runtime_mb']} MiB** + pip/setuptools {s['packaging_tools_mb']} MiB; torch importable: {s['torch_importable']}",
         f"- for comparison, torch {r['compute_shared']['torch']} (CPU wheel, x86-64) alone: {s['torch_cpu_wheel_installed_mb_here']} MiB; "
         f"the main (master, with torch) venv's site-packages: {s['main_venv_site_packages_du_mb']} MiB", "",
         "| package | version | MiB |", "|---|---|---:|"]
    L += [f"| {k} | {v['version']} | {v['mb']} |" for k, v in s["dists"].items()]
    L += ["", "## Worker memory (max over 3 workers; MiB)", "",
          "| worker | idle | idle, bundle loaded | configured | after a 64-group request (RSS / peak) | after a 1024-group request (RSS / peak) | torch mapped |",
          "|---|---:|---:|---:|---:|---:|---|"]
    L.append(f"| encoded H_B, worker venv (no torch) | {r['rss_encoded_idle_no_bundle']['rss_mb']} | {re_['idle']['rss_mb']} | "
             f"{re_['configured']['rss_mb']} | {re_['after_64_group_request']['rss_mb']} / {re_['after_64_group_request']['hwm_mb']} | "
             f"{re_['after_1024_group_request']['rss_mb']} / {re_['after_1024_group_request']['hwm_mb']} | {re_['after_1024_group_request']['torch_loaded']} |")
    L.append(f"| shared dataset, main venv (torch) | {rs['idle']['rss_mb']} | – | {rs['configured']['rss_mb']} | "
             f"{rs['after_64_group_request']['rss_mb']} / {rs['after_64_group_request']['hwm_mb']} | "
             f"{rs['after_1024_group_request']['rss_mb']} / {rs['after_1024_group_request']['hwm_mb']} | {rs['after_1024_group_request']['torch_loaded']} |")
    L += ["", "## Compute per group (median of many calls; µs)", "",
          "| batch B | encoded H_B (numpy), 1 BLAS thread: µs/group (µs/call, runs, GFLOP/s) | encoded H_B, default BLAS threads: µs/group | shared (torch), 1 thread: µs/group (ms/call, runs) |",
          "|---:|---:|---:|---:|"]
    for B in map(str, BATCHES):
        e1, e2, s1 = enc["1_thread"][B], enc["default_threads"][B], sh["1_thread"][B]
        L.append(f"| {B} | {e1['median_us_per_group']} ({e1['median_call_us']}, {e1['runs']}, {e1['gflops']}) | "
                 f"{e2['median_us_per_group']} | {s1['median_us_per_group']:.0f} ({s1['median_call_us'] / 1000:.1f}, {s1['runs']}) |")
    f = r["mflops_per_group"]
    L += ["", f"FLOP per group: collapsed H_B {f['encoded_hb_collapsed'] * 1e6:.0f}; the uncollapsed H_B CNN {f['hb_cnn_uncollapsed']} M; "
          f"a shared-dataset worker (encoder E(α_n) + H_B CNN) {f['shared_worker_encoder_plus_hb']} M."]
    c, n = pi["compute_us_per_group"], pi["network_us_per_group_gbe"]
    a = pi["assumptions"]
    L += ["", "## Raspberry Pi 4 (estimate, not measured)", "",
          f"- CPU: {a['cpu']}. Peak fp32 per core = 8 FLOP/cycle (one 4-wide NEON FMA per cycle) x 1.5 GHz = "
          f"{a['peak_gflops_fp32_per_core']:g} GFLOP/s ({a['peak_source']}). Sustained by a BLAS: HPL reaches ~8 GFLOP/s fp64 on 4 cores "
          f"({a['hpl_source']}), ~1/3 of peak; for our skinny fp32 GEMM we assume **{c['at_gflops'][0]:g}-{c['at_gflops'][1]:g} GFLOP/s on one core**.",
          f"- H_B costs 2 x 784 x 10 = {pi['flops_per_group']} FLOP per group, so {pi['flops_per_group']} / ({c['at_gflops'][1]:g}e9 .. {c['at_gflops'][0]:g}e9) = "
          f"**{c['fast']}-{c['slow']} µs per group** on one core ({pi['groups_per_s_per_core']['fast']:,}-{pi['groups_per_s_per_core']['slow']:,} groups/s); "
          f"plus a per-call overhead of ~{pi['call_overhead_us_estimate']['low']}-{pi['call_overhead_us_estimate']['high']} µs "
          f"(this machine's B=1 call, {enc['1_thread']['1']['median_call_us']} µs, x {a['overhead_ratio']['low']:g}-{a['overhead_ratio']['high']:g}), which dominates at B=1 and vanishes at B>=64.",
          f"- The input is the bottleneck, not the compute: one group is {pi['input_per_group_bytes']['f4']} B (f4) / {pi['input_per_group_bytes']['f2']} B (f2); "
          f"at ~{a['ethernet_mbit']} Mbit/s that is **{n['f4']} µs (f4) / {n['f2']} µs (f2) per group** on gigabit Ethernet, ~{n['f4'] / c['slow']:.0f}-{n['f4'] / c['fast']:.0f}x the GEMM.",
          f"- RAM: the torch-free worker peaked at {pi['encoded_worker_ram_mb_measured_here']} MiB here (x86-64; aarch64 is similar) = "
          + ", ".join(f"{v['encoded']}% of {k}" for k, v in pi["ram_share_percent"].items())
          + f"; the shared-dataset (torch) worker peaked at {pi['shared_worker_ram_mb_measured_here']} MiB = "
          + ", ".join(f"{v['shared']}% of {k}" for k, v in pi["ram_share_percent"].items()) + ". "
          f"workers/edgecc-worker.service caps the service at MemoryMax=512M: the torch worker peaked at {pi['shared_worker_ram_mb_64_groups_measured_here']} MiB "
          f"with 64-group requests (the master's default), {pi['shared_worker_ram_mb_measured_here']} MiB with 1024-group ones "
          f"({'above' if pi['shared_worker_ram_mb_measured_here'] > 512 else 'under'} the cap).",
          f"- Contrast: a shared-dataset worker computes {r['mflops_per_group']['shared_worker_encoder_plus_hb']} MFLOP per group, "
          f"i.e. ~{pi['shared_worker_ms_per_group']['fast']}-{pi['shared_worker_ms_per_group']['slow']} ms per group on one Pi core at the same "
          f"{c['at_gflops'][0]:g}-{c['at_gflops'][1]:g} GFLOP/s (and it needs torch on the board).",
          f"- Disk: the worker-only venv is {s['venv_total_mb']} MiB here ({pi['sd_card_share_percent_8GB']}% of an 8 GB SD card); "
          "on the Pi, setup-pi.sh uses Debian's numpy/msgpack/click/uvloop (--system-site-packages), so the venv itself holds little more than edgecc and safetensors.",
          ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "results" / "worker_footprint.json"))
    ap.add_argument("--venv", default=None, help="reuse this worker-only venv instead of building one")
    ap.add_argument("--keep-venv", default=None, help="build the worker-only venv here and keep it")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per (kind, threads, batch)")
    ap.add_argument("--summary", default=None, metavar="JSON", help="print the Markdown summary of an earlier run and exit")
    args = ap.parse_args()
    if args.summary:
        print(markdown(json.loads(Path(args.summary).read_text())))
        return

    import torch

    from edgecc.bundle import save_bundle
    from edgecc.data import load_sample
    from edgecc.export import bundle_info
    from edgecc.modelfile import load_model, resolve, save_model
    from edgecc.schemes.aicc import CodedPlan

    torch.set_num_threads(1)  # the master side: one thread keeps collapsing H_B quick on a busy 2-core machine
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    token = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="edgecc-footprint-") as tmpd:
        tmp = Path(tmpd)
        if args.venv:
            venv, install_s = Path(args.venv), None
        else:
            root = Path(args.keep_venv) if args.keep_venv else tmp / "worker"
            print(f"building the worker-only venv in {root} ...", file=sys.stderr)
            venv, install_s = build_worker_venv(root)
        result["install"] = install_size(venv, install_s)

        if resolve("default").exists():
            model_path, result["model"] = resolve("default"), "shipped default (K=2, G=1, CNN encoder, CNN H_B)"
        else:  # same architecture as the default, untrained: sizes and times do not depend on the weights
            from edgecc.coding.schemes import Scheme
            from edgecc.nets import AICC

            torch.manual_seed(0)
            s = Scheme(K=2, G=1)
            model_path = tmp / "untrained.safetensors"
            save_model(model_path, AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
            result["model"] = "untrained K=2, G=1, CNN/CNN H_B (the default's architecture; the shipped default was not there yet)"
        model, info = load_model(model_path)
        result["mflops_per_group"] = forward_mflops(model)
        print("collapsing H_B ...", file=sys.stderr)
        plan_enc = CodedPlan(model, info, 3, "encoded")
        plan_sh = CodedPlan(model, info, 3, "shared")
        bundle = tmp / "hb.bundle.safetensors"
        save_bundle(bundle, bundle_info(info, "encoded"), plan_enc.arrays)  # what `edgecc export` writes
        result["bundle_bytes"] = bundle.stat().st_size
        result["shared_arrays_bytes"] = int(sum(v.nbytes for v in plan_sh.arrays.values()))
        images, _ = load_sample()

        print("worker memory ...", file=sys.stderr)
        env = clean_env(token)
        venv_cmd = [str(venv / "bin" / "edgecc"), "worker"]
        w = Worker(venv_cmd, env, tmp, "bare")
        time.sleep(1.0)
        result["rss_encoded_idle_no_bundle"] = w.mem()
        w.stop()
        result["rss_encoded_worker"] = worker_rss([*venv_cmd, "--bundle", str(bundle)], env, tmp, plan_enc, token, images, "enc")
        result["rss_shared_worker"] = worker_rss([sys.executable, "-m", "edgecc.cli", "worker"], env, tmp, plan_sh, token, images, "sh")

        print("compute timing ...", file=sys.stderr)
        result["compute_encoded"] = encoded_timing(venv, bundle, args.budget)
        result["compute_shared"] = shared_timing(plan_sh, args.budget)
    result["loadavg_end"] = os.getloadavg()
    result["pi4_estimate"] = pi4_estimate(result["install"], result["rss_encoded_worker"], result["rss_shared_worker"],
                                          result["compute_encoded"], result["mflops_per_group"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
