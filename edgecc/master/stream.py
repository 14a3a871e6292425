"""Stream a labelled image set through a master, request by request, and summarise what came back:
accuracy, latency percentiles, failures by reason, bytes and the links' counters (`edgecc master`).
With `indices`, the workers hold the images (Remark 1's shared dataset) and only their indices travel."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import numpy as np

from ..errors import EdgeccError
from ..protocol.images import dims
from ..schemes.base import plan_shape
from .master import Master, RequestFailed

log = logging.getLogger("edgecc.master")


async def run_stream(master: Master, images: np.ndarray, labels: np.ndarray, groups_per_request: int = 64,
                     in_flight: int = 8, progress: Callable[[int], None] | None = None, *,
                     indices: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Stream `images` through the master; returns (summary, predictions with -1 where a request failed).

    With `indices`, `images` are the first images of the dataset every worker holds, the one the master
    was made with (`Master(dataset=digest)`), and each request sends their positions in it
    (`Master.infer_indices`) instead of their pixels."""
    K = master.plan.K
    n = images.shape[0] - images.shape[0] % K
    if indices:
        if master.dataset is None:
            raise EdgeccError("run_stream(indices=True) needs a Master made with dataset=DIGEST, the dataset every "
                              "worker holds (`edgecc worker --dataset SOURCE`)")
        groups = np.arange(n).reshape(-1, K)  # each group's images' positions in the workers' dataset
        infer = master.infer_indices
    else:
        groups = images[:n].reshape(-1, K, *dims(plan_shape(master.plan)[0]))
        infer = master.infer
    preds = np.full(n, -1, dtype=np.int64)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(in_flight)
    t0 = time.perf_counter()

    async def one(start: int) -> None:
        async with sem:
            batch = groups[start : start + groups_per_request]
            t = time.perf_counter()
            try:
                logits = await infer(batch)
            except RequestFailed as e:
                reason = str(e).split(": ", 1)[-1].split(" (")[0]
                failures[reason] = failures.get(reason, 0) + 1
                log.warning("%s", e)
            else:
                latencies.append((time.perf_counter() - t) * 1000)
                preds[start * K : (start + batch.shape[0]) * K] = logits.argmax(-1).reshape(-1)
            if progress:
                progress(batch.shape[0] * K)

    await asyncio.gather(*(one(s) for s in range(0, groups.shape[0], groups_per_request)))
    elapsed = time.perf_counter() - t0
    done = preds >= 0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    summary = {
        "images": int(n), "scheme": master.plan.name, "N": master.plan.N, "K": K, "need": master.plan.need,
        "placement": master.plan.placement,
        "plan": master.plan.summary(),  # the scheme's own figures (AICC's encoder precision, groups a code rebuilt)
        "accuracy": 100.0 * float((preds[done] == labels[:n][done]).mean()) if done.any() else 0.0,
        "accuracy_all_images": 100.0 * float((preds == labels[:n]).mean()),
        "requests_decoded": len(latencies), "requests_failed": sum(failures.values()), "failure_reasons": failures,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                       "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())},
        "elapsed_s": elapsed, "images_per_s": n / elapsed if elapsed > 0 else 0.0,
        **{k: master.stats[k] for k in ("bytes_sent", "late_results", "bad_results", "worker_errors", "shed",
                                        "deadline_failures", "waited_extra")},
        # every request's frames to every worker (failed requests included) over the images streamed, and what
        # they carried: the shared placement's images or dataset indices, else the placement's own inputs
        "bytes_per_image": master.stats["bytes_sent"] / n if n else 0.0,
        "sends": "indices" if indices else ("images" if master.plan.placement == "shared" else master.plan.placement),
        "groups_per_request": groups_per_request, "in_flight": in_flight,
        "workers": [{**ls, **master.plan.worker_summary(ls["index"])} for ls in master.link_stats()],
    }
    return summary, preds
