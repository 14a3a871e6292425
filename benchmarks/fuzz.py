#!/usr/bin/env python
"""Fuzz a live edgecc worker, and the master's result path, with random and mutated frames.

    python benchmarks/fuzz.py [--frames 100000] [--master-frames F] [--seed S] [--out results/fuzz.json]

Worker side: one real `edgecc worker` process (token in $EDGECC_TOKEN) on 127.0.0.1. Over many TCP
connections (several at a time) it receives
  * before authentication: raw garbage, whole frames of garbage, oversized and truncated length
    headers, valid messages of the wrong type, `auth` with the wrong protocol version, wrong or
    malformed MACs, an `auth` replayed from an earlier connection, byte-flipped `auth` frames,
    byte-by-byte fragmented correct `auth` (must still work);
  * after a correct handshake + configure (an affine map A, b drawn here): `compute` with wrong
    shapes, dtypes and byte lengths, NaN/Inf, empty and oversized batches, negative/huge ids,
    duplicate ids, bursts beyond max_in_flight, unknown message types and fields, random msgpack
    values, extension types, invalid UTF-8, deep nesting, byte-flipped frames, refused `configure`s
    (the previous configuration must stay), pings with extreme sequence numbers, and sessions
    ended by an oversized header, a truncated frame or an abrupt close with work in flight.
Checked per session: every whole frame gets exactly one reply, every reply is a valid message,
structured cases get the reply the protocol prescribes (docs/protocol.md §3-§9), results are
A·x + b. Every --check-every frames a fresh session verifies the worker still computes correctly;
RSS (/proc/PID/status) and open file descriptors are sampled. Two probes: a pre-auth "slowloris"
(one byte per half handshake timeout) and pre-auth buffering (how much an unauthenticated peer can
make the worker hold).

Master side: a real Master (CodedPlan, tiny untrained AICC with Scheme(K=2, G=1), N=3, R=2) with two
honest worker processes and one fake worker served in-process that handshakes correctly (mostly:
some handshakes are wrong on purpose) and then answers `compute` with invalid results (wrong
shape/dtype/length, NaN/Inf, unknown or duplicate ids, errors) and garbage frames. Every request
must decode to the in-process logits; the master must not raise, lose a link task or leak pending
requests. (Valid-looking but wrong values are out of scope: with byzantine=0 they are undetectable
by design; see tests/test_runtime.py for the byzantine mode.)

Writes OUT (JSON) and prints a one-line summary. The fuzzers are the library edgecc.fuzzing
(`fuzz_worker`, `fuzz_master`); tests/test_fuzz_live.py runs short versions of both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from edgecc.fileio import atomic_write
from edgecc.fuzzing import payloads
from edgecc.fuzzing.master_fuzzer import fuzz_master
from edgecc.fuzzing.peer import INFO_FINDINGS
from edgecc.fuzzing.procs import machine
from edgecc.fuzzing.worker_fuzzer import fuzz_worker


async def run(frames: int = 100_000, master_frames: int | None = None, seed: int = 0, *, check_every: int = 5000,
              concurrency: int = 4, preauth_conns: int = 4, preauth_mb: int = 16, slowloris: bool = True, log: bool = True) -> dict:
    t0 = time.perf_counter()
    mach = machine()
    worker = await fuzz_worker(frames, seed, check_every=check_every, concurrency=concurrency, preauth_conns=preauth_conns,
                               preauth_mb=preauth_mb, slowloris=slowloris, log=log)
    master = await fuzz_master(master_frames if master_frames is not None else max(200, frames // 10), seed, log=log)
    master_crash = bool(master["exceptions"] or master["link_crashes"] or master["loop_errors"])
    return {
        "benchmark": "fuzz", "seed": seed,
        "frames": {"worker": worker["frames"], "master": master["frames"]},
        "crashes": {"worker_process_exited": worker["crashed"], "worker_exit_code": worker["exit_code"],
                    "worker_unexpected_errors_logged": worker["logged_unexpected_errors"],
                    "master_exceptions": sum(master["exceptions"].values()), "master_link_tasks_died": len(master["link_crashes"]),
                    "master_loop_errors": master["loop_errors"], "master_crashed": master_crash},
        "correct_after": {"worker": worker["correct_after"], "master": master["correct_after"],
                          "master_all_requests_correct": master["all_correct"]},
        "findings": {"worker": worker["critical_findings"], "master": master["findings"],
                     "informational": {k: v for k, v in worker["findings"].items() if k in INFO_FINDINGS}},
        "peak_rss_mb": {"worker": worker["rss_mb"]["peak_hwm"], "master_process": master["rss_mb"]["peak_hwm"]},
        "worker": worker, "master": master,
        "duration_s": round(time.perf_counter() - t0, 2), "machine": {**mach, "loadavg_end": list(os.getloadavg())},
    }


def summary_line(r: dict) -> str:
    w, m = r["worker"], r["master"]
    return (f"fuzz: worker {w['frames']} frames over {w['connections']} connections: "
            f"{'CRASHED' if w['crashed'] else 'no crash'}, {w['logged_unexpected_errors']} unexpected errors logged, "
            f"findings {w['critical_findings'] or 'none'}, correct after: {w['correct_after']}, "
            f"peak RSS {w['rss_mb']['peak_hwm']} MiB | master {m['frames']} frames, {m['requests']} requests "
            f"{m['outcomes']}, {sum(m['exceptions'].values())} exceptions, {len(m['link_crashes'])} dead links"
            f"{' (stalled)' if m['stalled'] else ''}, findings {m['findings'] or 'none'}, "
            f"{m['loop_errors']} loop errors, correct after: {m['correct_after']}, peak RSS {m['rss_mb']['peak_hwm']} MiB "
            f"| {r['duration_s']} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames to throw at the worker")
    ap.add_argument("--master-frames", type=int, default=None, help="frames the fake worker throws at the master [frames/10, >= 200]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-every", type=int, default=5000, help="health check (and RSS sample) every this many frames")
    ap.add_argument("--concurrency", type=int, default=4, help="fuzzing connections at a time")
    ap.add_argument("--preauth-conns", type=int, default=4, help="pre-auth buffering probe: connections (0 = skip)")
    ap.add_argument("--preauth-mb", type=int, default=16, help="pre-auth buffering probe: MiB sent on each")
    ap.add_argument("--no-slowloris", action="store_true", help="skip the pre-auth slowloris probe")
    ap.add_argument("--no-deep", action="store_true", help="leave out values nested ~1000 deep (RecursionError in repr)")
    ap.add_argument("--out", default="results/fuzz.json")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    payloads.DEEP = not a.no_deep
    r = asyncio.run(run(a.frames, a.master_frames, a.seed, check_every=a.check_every, concurrency=a.concurrency,
                        preauth_conns=a.preauth_conns, preauth_mb=a.preauth_mb, slowloris=not a.no_slowloris, log=not a.quiet))
    atomic_write(a.out, (json.dumps(r, indent=2, default=str) + "\n").encode())
    print(summary_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
