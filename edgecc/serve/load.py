"""`edgecc load`: an open-loop load generator for `edgecc serve`.

Requests leave on a Poisson schedule whatever the service's answers do (open loop: a slow service
meets the same arrivals, as it would from independent cameras), carrying images from the shipped
Fashion-MNIST sample so that accuracy can be checked against the labels.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import numpy as np

from ..data import load_sample
from .inputs import encode_png


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def _split(values: list[float]) -> dict[str, float | None]:
    return {"p50": _pct(values, 50), "p99": _pct(values, 99), "mean": float(np.mean(values)) if values else None}


async def run_load(url: str, rate: float, duration: float, *, images_per_request: int = 1, fmt: str = "png",
                   token: str | None = None, deadline_ms: float | None = None, warmup: float = 0.0, seed: int = 0,
                   timeout: float = 30.0, ssl=None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Send requests at `rate` images/s for `warmup` + `duration` seconds; summarize the measured part."""
    import aiohttp

    if rate <= 0 or duration <= 0 or images_per_request < 1:
        raise ValueError("rate, duration and images per request must be positive")
    images, labels = load_sample()
    rng = np.random.default_rng(seed)
    n_req = int(np.ceil((warmup + duration) * rate / images_per_request))
    starts = np.cumsum(rng.exponential(images_per_request / rate, n_req))
    starts = starts[starts < warmup + duration]
    picks = rng.integers(0, images.shape[0], size=(len(starts), images_per_request))
    endpoint = url.rstrip("/") + "/v1/classify"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if deadline_ms is not None:
        headers["X-Deadline-Ms"] = str(deadline_ms)
    if fmt == "png" and images_per_request != 1:
        raise ValueError("a PNG request carries one image; use --format raw or json for more")
    pngs: dict[int, bytes] = {}
    records: list[dict[str, Any]] = []

    def body(idx: np.ndarray) -> tuple[bytes, str]:
        if fmt == "png":
            i = int(idx[0])
            if i not in pngs:
                pngs[i] = encode_png(images[i])
            return pngs[i], "image/png"
        if fmt == "raw":
            return images[idx].tobytes(), "application/octet-stream"
        import json

        return json.dumps({"images": images[idx].reshape(len(idx), -1).tolist()}).encode(), "application/json"

    async def one(session, r: int, at: float) -> None:
        data, ctype = body(picks[r])
        t = time.monotonic()
        rec: dict[str, Any] = {"at": at, "measured": at >= warmup}
        try:
            async with session.post(endpoint, data=data, headers={**headers, "Content-Type": ctype}) as resp:
                doc = await resp.json(content_type=None)
                rec["status"] = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            rec["status"], doc = f"client: {type(e).__name__}", None
        rec["ms"] = 1000 * (time.monotonic() - t)
        if rec["status"] == 200 and isinstance(doc, dict):
            res = doc["results"]
            rec["correct"] = sum(int(x["label"] == labels[i]) for x, i in zip(res, picks[r]))
            rec["images"] = len(res)
            rec["split"] = [x["latency_ms"] for x in res]
            rec["padding"] = [x["group"]["padding_cost"] for x in res]
            rec["decoded_by"] = [x["decoded_by"] for x in res]
        elif isinstance(doc, dict):
            rec["error"] = str(doc.get("error"))[:200]
        records.append(rec)
        if progress:
            progress(1)

    connector = aiohttp.TCPConnector(limit=0, ssl=ssl if ssl is not None else True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0, tasks = time.monotonic(), []
        for r, at in enumerate(starts):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            tasks.append(asyncio.create_task(one(session, r, float(at))))
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
    return summarize(records, rate, duration, images_per_request, wall)


def summarize(records: list[dict[str, Any]], rate: float, duration: float, images_per_request: int,
              wall: float) -> dict[str, Any]:
    measured = [r for r in records if r["measured"]]
    ok = [r for r in measured if r["status"] == 200]
    codes: dict[str, int] = {}
    for r in measured:
        codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
    split = [s for r in ok for s in r["split"]]
    stage = lambda k: [s[k] for s in split if s.get(k) is not None]
    images = sum(r["images"] for r in ok)
    return {
        "rate_images_per_s": rate, "duration_s": duration, "images_per_request": images_per_request,
        "requests": len(measured), "ok": len(ok), "status": codes,
        "achieved_images_per_s": images / duration if duration else 0.0,
        "latency_ms": _split([r["ms"] for r in ok]),
        "queue_wait_ms": _split(stage("queue_wait")), "infer_ms": _split(stage("infer")),
        "encode_ms": _split(stage("encode")), "workers_ms": _split(stage("workers")), "decode_ms": _split(stage("decode")),
        "accuracy": 100.0 * sum(r["correct"] for r in ok) / images if images else None,
        "padding_share": float(np.mean([p for r in ok for p in r["padding"]])) if ok else None,
        "errors": sorted({r["error"] for r in measured if "error" in r})[:5],
        "wall_s": wall,
    }
