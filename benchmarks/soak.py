#!/usr/bin/env python
"""Soak the runtime under chaos: N=5 worker processes, R=3, a closed loop of requests, and a chaos
loop that SIGKILLs and restarts workers and SIGSTOPs / SIGCONTs them at random intervals.

    python benchmarks/soak.py [--seconds 300] [--seed S] [--out results/soak.json]

The model is an untrained, deterministic AICC with Scheme(K=2, G=2) (H_B, degree 2, so R=3); its
in-process logits are the reference every decoded request is compared with. Usually at most
--max-down workers (default 2 = N-R) are down at once; with probability --extra-down-prob the chaos
loop takes one more down, so that some requests must fail.

Checked: every submitted request ends decoded or failed with a reason (reasons histogram), none lost
or hung (each is guarded by a generous outer timeout; the max observed latency must stay under
request timeout + --margin), decoded logits equal the in-process ones, the master raises nothing
but RequestFailed, no link task dies, no pending request leaks, the master's RSS stays bounded
(first/max/last), and after the chaos stops and every worker is back, requests decode again.

Real link cuts (network namespaces) are not done: SIGSTOP already gives the master a silent peer
whose kernel still accepts bytes, which is what a cut link looks like until buffers fill; see the
"link_cuts" note in the output.

Writes OUT (JSON) and prints a one-line summary. The soak itself is `edgecc.fuzzing.soak`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


from edgecc.fileio import atomic_write
from edgecc.fuzzing.soak import soak


def summary_line(r: dict) -> str:
    q, lat, m = r["requests"], r["latency_s"], r["master"]
    return (f"soak {r['seconds']:g} s, N={r['N']} R={r['R']}: {q['submitted']} requests, {q['decoded']} decoded "
            f"({q['decoded_wrong']} wrong, {q['prediction_mismatch']} mismatched), {q['failed']} failed, {q['hung']} hung, "
            f"{q['lost']} lost, {q['crashed']} crashed | chaos {r['chaos']['events']}, max down {r['chaos']['max_down_at_once']} "
            f"| max latency {lat['max']} s (bound {lat['bound']:g} s) | master RSS {m['rss_mb']['first']} -> max {m['rss_mb']['max']} "
            f"-> {m['rss_mb']['last']} MiB | recovered: {r['recovery']['recovered']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=5, help="N (R=3 for the K=2, G=2 model)")
    ap.add_argument("--in-flight", type=int, default=4, help="requests in flight (closed loop)")
    ap.add_argument("--timeout", type=float, default=5.0, help="the master's request deadline (s)")
    ap.add_argument("--margin", type=float, default=2.0, help="allowed latency beyond the deadline (s)")
    ap.add_argument("--max-down", type=int, default=2, help="workers usually down at most at once")
    ap.add_argument("--extra-down-prob", type=float, default=0.1, help="chance to take one more down anyway")
    ap.add_argument("--out", default="results/soak.json")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    r = asyncio.run(soak(a.seconds, a.seed, N=a.workers, in_flight=a.in_flight, request_timeout=a.timeout, margin=a.margin,
                         max_down=a.max_down, extra_down_prob=a.extra_down_prob, log=not a.quiet))
    atomic_write(a.out, (json.dumps(r, indent=2, default=str) + "\n").encode())
    print(summary_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
