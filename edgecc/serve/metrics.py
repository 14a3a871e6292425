"""What the service measures: Prometheus metrics (/metrics) and a rolling per-second history that
the dashboard plots (/v1/stats). Both are fed from the same observations."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Latency buckets from 1 ms to 30 s: a lone image can wait out the window, a straggler adds seconds.
BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .15, .2, .3, .5, .75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
HISTORY_S = 300  # seconds the dashboard can look back
STRAGGLER_WINDOW_S = 10  # a worker is judged on its last 10 s of results


class ServiceMetrics:
    def __init__(self, master, N: int):
        self.master, self.N = master, N
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edgecc_serve_requests", "HTTP classify requests by response code", ["code"], registry=r)
        self.images = Counter("edgecc_serve_images", "images classified", registry=r)
        self.latency = Histogram("edgecc_serve_request_seconds", "classify request latency, arrival to answer",
                                 buckets=BUCKETS, registry=r)
        self.stage = Histogram("edgecc_serve_stage_seconds", "per-image time in each stage (queue = batching wait)",
                               ["stage"], buckets=BUCKETS, registry=r)
        self.worker_latency = Histogram("edgecc_serve_worker_result_seconds", "send to result, per worker",
                                        ["worker"], buckets=BUCKETS, registry=r)
        self.first_r = Counter("edgecc_serve_worker_decoded", "requests whose decode used this worker's result "
                               "(it was among the first R)", ["worker"], registry=r)
        self.groups = Counter("edgecc_serve_groups", "groups of K sent to the workers", registry=r)
        self.worker_requests = Counter("edgecc_serve_worker_requests", "requests sent to the workers", registry=r)
        self.padding = Counter("edgecc_serve_padding_slots", "blank images padding partial groups", registry=r)
        self.bound = Histogram("edgecc_serve_decode_error_bound", "bound on the decoded logits' error",
                               buckets=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0), registry=r)
        self.shed = Counter("edgecc_serve_shed_images", "images refused or failed, by reason", ["reason"], registry=r)
        self.queue_depth = Gauge("edgecc_serve_queue_depth", "images waiting to be grouped", registry=r)
        self.in_flight = Gauge("edgecc_serve_requests_in_flight", "requests at the workers", registry=r)
        r.register(_MasterCollector(master))
        # dashboard history: one bucket per second
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_S)
        self.started = time.time()

    def _bucket(self) -> dict[str, Any]:
        sec = int(time.time())
        if not self.history or self.history[-1]["t"] != sec:
            self.history.append({"t": sec, "images": 0, "latency_ms": [], "queue_ms": [], "errors": 0,
                                 "worker_ms": [[] for _ in range(self.N)], "decoded": [0] * self.N, "requests": 0})
        return self.history[-1]

    def observe_group(self, shared: dict[str, Any], info: dict[str, Any], queue_ms: list[float]) -> None:
        """One worker request answered: stage times, per-worker result times, who decoded it."""
        self.worker_requests.inc()
        self.groups.inc(shared["groups"])
        self.padding.inc(shared["padding_slots"])
        b = self._bucket()
        b["requests"] += 1
        for q in queue_ms:
            self.stage.labels("queue").observe(q / 1000)
        for stage in ("master_queue", "encode", "workers", "decode"):
            if shared.get(f"{stage}_ms") is not None:
                self.stage.labels(stage).observe(shared[f"{stage}_ms"] / 1000)
        for w, ms in (info.get("result_ms") or {}).items():
            w = int(w)
            self.worker_latency.labels(str(w)).observe(ms / 1000)
            if 0 <= w < self.N:
                b["worker_ms"][w].append(ms)
        for w in shared.get("decoded_by") or []:
            self.first_r.labels(str(w)).inc()
            if 0 <= int(w) < self.N:
                b["decoded"][int(w)] += 1
        if shared.get("error_bound") is not None:
            self.bound.observe(shared["error_bound"])

    def observe_request(self, code: int, seconds: float, images: int, queue_ms: list[float]) -> None:
        self.requests.labels(str(code)).inc()
        b = self._bucket()
        if code == 200:
            self.images.inc(images)
            self.latency.observe(seconds)
            b["images"] += images
            b["latency_ms"].append(1000 * seconds)
            b["queue_ms"].extend(queue_ms)
        else:
            b["errors"] += 1

    # -- the dashboard's view ------------------------------------------------------------------------
    def snapshot(self, links, window_s: float) -> dict[str, Any]:
        now = int(time.time())
        by_t = {b["t"]: b for b in self.history if b["t"] > now - HISTORY_S}
        # every second from the first with traffic to now, so that idle seconds plot as 0 images/s and gaps
        start = min(by_t, default=now)
        hist = [by_t.get(t) or {"t": t, "images": 0, "latency_ms": [], "queue_ms": [], "errors": 0, "requests": 0,
                                "worker_ms": [[] for _ in range(self.N)], "decoded": [0] * self.N}
                for t in range(start, now + 1)]
        series = [{"t": b["t"], "images": b["images"], "errors": b["errors"], "p50_ms": _pct(b["latency_ms"], 50),
                   "p99_ms": _pct(b["latency_ms"], 99), "queue_p50_ms": _pct(b["queue_ms"], 50),
                   "worker_p50_ms": [_pct(w, 50) for w in b["worker_ms"]], "requests": b["requests"],
                   "decoded": b["decoded"]} for b in hist]
        recent = [b for b in hist if b["t"] > now - STRAGGLER_WINDOW_S]
        reqs = sum(b["requests"] for b in recent)
        workers = []
        for link in links:
            i = link.index
            ms = [m for b in recent for m in b["worker_ms"][i]]
            workers.append({"index": i, "address": link.address, "ready": link.ready.is_set(), "connects": link.connects,
                            "last_error": link.last_error, "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99),
                            "results": len(ms), "decoded_share": sum(b["decoded"][i] for b in recent) / reqs if reqs else None})
        _mark_stragglers(workers, reqs)
        last = [b for b in hist if now - 60 < b["t"] < now]  # whole seconds only
        lat = [m for b in last for m in b["latency_ms"]]
        return {"time": time.time(), "uptime_s": time.time() - self.started, "workers": workers, "series": series,
                "window_ms": 1000 * window_s, "last_minute": {"images_per_s": sum(b["images"] for b in last) / 60,
                                                              "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)},
                "late_results": self.master.stats.get("late_results", 0)}


def _mark_stragglers(workers: list[dict[str, Any]], reqs: int) -> None:
    """A straggler right now: down, or its recent median result time is 1.5x the others' median and 20 ms
    above it, or (when result times are not reported) it was among the decoders in under half of the
    requests that the others were."""
    p50s = [w["p50_ms"] for w in workers if w["ready"] and w["p50_ms"] is not None]
    typical = float(np.median(p50s)) if p50s else None
    shares = [w["decoded_share"] for w in workers if w["ready"] and w["decoded_share"] is not None]
    for w in workers:
        if not w["ready"]:
            w["state"] = "down"
        elif typical is not None and w["p50_ms"] is not None and w["p50_ms"] > max(1.5 * typical, typical + 20):
            w["state"] = "straggler"
        elif typical is None and reqs >= 5 and shares and w["decoded_share"] is not None and w["decoded_share"] < 0.5 * max(shares):
            w["state"] = "straggler"
        else:
            w["state"] = "ok"


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class _MasterCollector:
    """The master's own counters and its links' state, read at scrape time."""

    def __init__(self, master):
        self.master = master

    def collect(self):
        m = self.master
        for key, value in sorted(m.stats.items()):  # late_results, bad_results, bytes_sent, shed, ...
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                c = CounterMetricFamily(f"edgecc_serve_master_{key}", f"the master's {key.replace('_', ' ')} counter")
                c.add_metric([], value)
                yield c
        ready = GaugeMetricFamily("edgecc_serve_worker_ready", "1 while the worker link is up", labels=["worker", "address"])
        conns = CounterMetricFamily("edgecc_serve_worker_connects", "successful (re)connections", labels=["worker", "address"])
        for link in m.links:
            ready.add_metric([str(link.index), link.address], 1.0 if link.ready.is_set() else 0.0)
            conns.add_metric([str(link.index), link.address], link.connects)
        yield ready
        yield conns
