"""Section 8 of `edgecc bench`: small requests under load, the master encoding the requests that wait
together (Master.coalesce_groups) against each one alone, side by side on the same workers.

Closed loop: `concurrency` clients each send a one-group request as soon as their last one is answered,
for `small_seconds` per cell; the two settings alternate within each round, so both meet the same
background load. The workers answer at once (no injected delay): the master is what is measured.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cluster import LocalWorkers, connected_master, run_coroutine
from .config import BenchConfig, log
from .models import make_groups

CONCURRENCY = (1, 4, 16)


def bench_small_requests(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, tmp: Path,
                         token: str, N: int = 3) -> list[dict[str, Any]]:
    from ..master.master import COALESCE_GROUPS
    from ..schemes.registry import build_plan

    settings = {"alone": 1, "coalesced": COALESCE_GROUPS}
    rows = []
    with LocalWorkers(N, tmp, token, tag="small") as workers:
        for key in cfg.models:
            m = models[key]
            plan = build_plan("aicc", N, model=(m["model"], m["info"]), placement="encoded")
            groups = make_groups(images, m["scheme"].K, 64)
            cells: dict[tuple[str, int], list[dict[str, float]]] = {}
            for _ in range(cfg.small_rounds):
                for conc in CONCURRENCY:
                    for name, coalesce in settings.items():
                        cells.setdefault((name, conc), []).append(
                            run_coroutine(_closed_loop(plan, workers.addresses(N), token, groups, conc, coalesce,
                                                       cfg.small_seconds)))
            for conc in CONCURRENCY:
                row: dict[str, Any] = {"model": key, "label": m["label"], "N": N, "concurrency": conc,
                                       "rounds": cfg.small_rounds, "seconds_per_cell": cfg.small_seconds}
                for name in settings:
                    runs = cells[(name, conc)]
                    row[name] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
                row["coalesced_over_alone"] = row["coalesced"]["images_per_s"] / row["alone"]["images_per_s"]
                rows.append(row)
                log(f"small requests {m['label']} x{conc}: {row['alone']['images_per_s']:.0f} -> "
                    f"{row['coalesced']['images_per_s']:.0f} images/s (x{row['coalesced_over_alone']:.2f}), p99 "
                    f"{row['alone']['p99_ms']:.1f} -> {row['coalesced']['p99_ms']:.1f} ms")
    return rows


async def _closed_loop(plan, addresses, token: str, groups: np.ndarray, concurrency: int, coalesce: int,
                       seconds: float) -> dict[str, float]:
    master = await connected_master(plan, addresses, token.encode(), coalesce_groups=coalesce)
    latencies: list[float] = []
    try:
        for i in range(3):  # warm-up, unmeasured
            await master.infer(groups[i: i + 1])
        calls0, encoded0 = master.stats["encoder_calls"], master.stats["requests_encoded"]
        cpu0, t0 = time.process_time(), time.perf_counter()
        end = t0 + seconds

        async def client(c: int) -> None:
            i = c
            while time.perf_counter() < end:
                s = time.perf_counter()
                await master.infer(groups[i % groups.shape[0]: i % groups.shape[0] + 1])
                latencies.append(time.perf_counter() - s)
                i += concurrency

        await asyncio.gather(*(client(c) for c in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        requests = master.stats["requests_encoded"] - encoded0
        lat = np.array(latencies)
        return {"images_per_s": len(latencies) * plan.K / wall, "p50_ms": float(np.percentile(lat, 50)) * 1e3,
                "p99_ms": float(np.percentile(lat, 99)) * 1e3,
                "requests_per_encoder_call": requests / max(1, master.stats["encoder_calls"] - calls0),
                # the master process's CPU (encoder threads and event loop) per image; the workers are apart
                "master_cpu_ms_per_image": cpu * 1e3 / max(1, len(latencies) * plan.K)}
    finally:
        await master.close()
