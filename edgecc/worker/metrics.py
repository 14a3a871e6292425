"""Prometheus metrics for a worker (`edgecc worker --metrics-port`), read from the Worker's counters
at scrape time, served by prometheus-client's own HTTP server on a separate thread so that a scrape
never runs on the worker's event loop."""

from __future__ import annotations

import time

from ..errors import ConfigError

COUNTERS = {  # Worker.stats key -> (metric name, help)
    "connections": ("edgecc_worker_connections", "masters that authenticated"),
    "refused": ("edgecc_worker_refused", "peers refused during the handshake"),
    "requests": ("edgecc_worker_requests", "compute requests received"),
    "errors": ("edgecc_worker_errors", "error answers sent"),
    "cancelled": ("edgecc_worker_cancelled", "requests the master cancelled before they were answered"),
}


class WorkerCollector:
    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = dict(self.worker.stats)  # one consistent copy; the loop thread keeps counting
        for key, (name, doc) in COUNTERS.items():
            m = CounterMetricFamily(name, doc, labels=["worker"])
            m.add_metric([self.worker.name], stats.get(key, 0))
            yield m
        up = GaugeMetricFamily("edgecc_worker_uptime_seconds", "seconds since the worker started", labels=["worker"])
        up.add_metric([self.worker.name], time.monotonic() - self.worker.started)
        yield up


def start_metrics_server(worker, host: str, port: int):
    """Serve /metrics for `worker` on host:port (0 = any free port); returns (server, bound port)."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    except ImportError:
        raise ConfigError("--metrics-port needs prometheus-client: pip install 'edgecc[metrics]'") from None
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_address[1]
