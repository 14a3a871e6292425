"""Several replicas of the service as one: what `edgecc serve --ray` (serve/ray_app.py) shows at
/metrics, /v1/stats and /readyz when each replica holds its own master, batcher and ServiceMetrics.

Ray Serve routes a call to whichever replica it picks; no replica can be asked by name. So each
replica *pushes* a report every PUSH_S seconds (`replica_report`: its Prometheus samples, the
seconds of dashboard history that changed since its last push, its worker links and state) to one
`Board`, which keeps the latest of each and answers for all of them:

- /metrics: every series of the single-process service, once per replica (label `replica="<id>"`)
  and summed over the replicas (`replica="total"`; a `_created` timestamp is the earliest instead);
  a replica that stopped reporting keeps its last counters in the total, so the total never runs
  backwards while one replica dies and another replaces it.
- /v1/stats: the dashboard's document for the sum of the replicas (the same fields as one service's,
  so the dashboard reads it unchanged) and one per replica under "replicas".
- /readyz: ready while one live replica can reach the R workers it needs and is not draining.

Nothing here imports Ray: the board is plain Python, wrapped in a deployment by ray_app.py.
"""

from __future__ import annotations

import collections
import time
from types import SimpleNamespace
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from .metrics import HISTORY_S, ServiceMetrics

PUSH_S = 1.0  # how often a replica reports: the dashboard plots whole seconds
STALE_S = 5.0  # a replica silent this long (killed, its node lost) is shown as gone and no longer counts as ready
FORGET_S = float(HISTORY_S)  # ... and after this long its entry goes; its counters stay in the total
COUNTS = ("images", "errors", "requests")  # a history bucket's counts (summed over replicas)
SAMPLES = ("latency_ms", "queue_ms")  # its per-request values (pooled)
PER_WORKER_SAMPLES, PER_WORKER_COUNTS = ("worker_ms",), ("decoded",)


# -- the replica's side --------------------------------------------------------------------------------

def replica_report(service, replica: str, actor: str, since: int, state: str = "serving",
                   drained: bool | None = None) -> dict[str, Any]:
    """One replica's report: `service` is its serve.app.Service; history buckets from second `since` on
    (the last one pushed may have grown since)."""
    m = service.metrics
    m.queue_depth.set(len(service.batcher.queue))  # as the service's own /metrics does before a scrape
    m.in_flight.set(service.batcher.in_flight)
    families = [(f.name, f.type, f.documentation, f.unit, [(s.name, dict(s.labels), float(s.value)) for s in f.samples])
                for f in m.registry.collect()]
    # copies: the buckets keep changing on this replica's loop while the report is on its way
    history = [{k: ([list(x) for x in v] if k in PER_WORKER_SAMPLES else list(v) if isinstance(v, list) else v)
                for k, v in b.items()} for b in m.history if b["t"] >= since]
    links = [{"index": l.index, "address": l.address, "ready": l.ready.is_set(), "connects": l.connects,
              "last_error": l.last_error} for l in service.master.links]
    plan = service.plan
    ready = {l["index"] for l in links if l["ready"]}
    return {"replica": replica, "actor": actor, "state": state, "drained": drained, "families": families,
            "history": history, "links": links, "N": plan.N, "K": plan.K, "need": plan.need, "scheme": service.scheme,
            "window_s": service.batcher.window_s, "queue_depth": len(service.batcher.queue),
            "in_flight": service.batcher.in_flight, "draining": service.draining, "reachable": plan.reachable(ready),
            "late_results": service.master.stats.get("late_results", 0), "started": m.started}


# -- the board -------------------------------------------------------------------------------------------

class _Link:
    """What ServiceMetrics.snapshot reads of a worker link, from a report."""

    def __init__(self, d: dict[str, Any]):
        self.index, self.address, self.connects, self.last_error = d["index"], d["address"], d["connects"], d["last_error"]
        self.ready = SimpleNamespace(is_set=lambda up=d["ready"]: up)


class _History(ServiceMetrics):
    """ServiceMetrics's dashboard view (`snapshot`) over a pushed history; no registry and no master of
    its own, hence not ServiceMetrics.__init__. snapshot reads history, N, started and the master's
    late_results."""

    def __init__(self, N: int, started: float, history: Iterable[dict[str, Any]], late_results: int):
        self.N, self.started = N, started
        self.history = collections.deque(sorted(history, key=lambda b: b["t"]), maxlen=HISTORY_S)
        self.master = SimpleNamespace(stats={"late_results": late_results})


class Board:
    """The latest report of every replica (and of every ingress replica's counters), and their sum."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.replicas: dict[str, dict[str, Any]] = {}  # id -> latest report + "history" {t: bucket} + "seen"
        self.ingress: dict[str, dict[str, Any]] = {}  # id -> {"counters": {name: value}, "seen"}
        # counters of replicas forgotten (FORGET_S), so that the total keeps them: (family, sample, labels) -> value
        self.retired: dict[tuple, float] = {}
        self.retired_families: dict[str, tuple] = {}

    # -- reports in ---------------------------------------------------------------------------------
    def push(self, report: dict[str, Any]) -> None:
        rid = report["replica"]
        held = self.replicas.get(rid)
        history = held["history"] if held else {}
        for b in report["history"]:
            history[b["t"]] = b  # a replica's bucket for second t only grows: the newest copy is the whole of it
        horizon = max(history, default=0) - HISTORY_S
        for t in [t for t in history if t <= horizon]:
            del history[t]
        self.replicas[rid] = {**report, "history": history, "seen": self.clock()}
        self._forget()

    def push_ingress(self, ingress: str, counters: dict[str, float]) -> None:
        self.ingress[ingress] = {"counters": dict(counters), "seen": self.clock()}

    def _alive(self, r: dict[str, Any]) -> bool:
        return r["state"] == "serving" and self.clock() - r["seen"] < STALE_S

    def _forget(self) -> None:
        now = self.clock()
        for rid in [rid for rid, r in self.replicas.items() if now - r["seen"] > FORGET_S]:
            r = self.replicas.pop(rid)
            for name, typ, doc, unit, samples in r["families"]:
                if typ in ("counter", "histogram"):
                    self.retired_families.setdefault(name, (typ, doc, unit))
                    for sname, labels, value in samples:
                        if not sname.endswith("_created"):
                            key = (name, sname, tuple(sorted(labels.items())))
                            self.retired[key] = self.retired.get(key, 0.0) + value

    # -- readiness ----------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        self._forget()
        alive = [r for r in self.replicas.values() if self._alive(r)]
        serving = [r for r in alive if r["reachable"] and not r["draining"]]
        if serving:
            return True, f"{len(serving)} of {len(alive)} replicas ready"
        if not alive:
            return False, "no replica has reported yet" if not self.replicas else "no live replica"
        r = alive[0]
        up = sum(l["ready"] for l in r["links"])
        return False, (f"no replica ready: replica {r['replica']} has {up} of {r['N']} workers connected, "
                       f"needs {r['need']}" if not r["reachable"] else "every replica is draining")

    # -- the dashboard's document -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        self._forget()
        if not self.replicas:
            return {"replicas": [], "error": "no replica has reported yet"}
        reps = sorted(self.replicas.values(), key=lambda r: (r["started"], r["replica"]))
        per = []
        for r in reps:
            snap = _History(r["N"], r["started"], r["history"].values(), r["late_results"]).snapshot(
                [_Link(l) for l in r["links"]], r["window_s"])
            snap.update(_service_fields(r), replica=r["replica"], actor=r["actor"], state=self._state(r),
                        drained=r["drained"], age_s=self.clock() - r["seen"])
            per.append(snap)
        alive = [r for r in reps if self._alive(r)] or reps[-1:]  # the totals' worker view: live replicas
        first = reps[0]
        merged: dict[int, dict[str, Any]] = {}
        for r in reps:
            for t, b in r["history"].items():
                merged[t] = _merge_bucket(merged.get(t), b)
        total = _History(first["N"], first["started"], merged.values(),
                         sum(r["late_results"] for r in reps)).snapshot(_merged_links(alive), first["window_s"])
        total.update(_service_fields(first), queue_depth=sum(r["queue_depth"] for r in alive),
                     in_flight=sum(r["in_flight"] for r in alive), draining=all(r["draining"] for r in alive),
                     replicas=per, replicas_alive=sum(self._alive(r) for r in reps))
        return total

    def _state(self, r: dict[str, Any]) -> str:
        if r["state"] != "serving":
            return r["state"]
        return "serving" if self._alive(r) else "gone"

    # -- Prometheus ---------------------------------------------------------------------------------
    def prometheus(self) -> bytes:
        self._forget()
        reps = sorted(self.replicas.values(), key=lambda r: r["replica"])
        order: dict[str, tuple] = {}  # family -> (type, doc, unit), in the order the replicas list them
        per: dict[str, list[tuple[str, dict, float]]] = collections.defaultdict(list)
        totals: dict[str, dict[tuple, float]] = collections.defaultdict(dict)
        for r in reps:
            for name, typ, doc, unit, samples in r["families"]:
                order.setdefault(name, (typ, doc, unit))
                for sname, labels, value in samples:
                    per[name].append((sname, {**labels, "replica": r["replica"]}, value))
                    key = (sname, tuple(sorted(labels.items())))
                    have = totals[name].get(key)
                    totals[name][key] = value if have is None else min(have, value) if sname.endswith("_created") else have + value
        for (name, sname, labels), value in self.retired.items():
            order.setdefault(name, self.retired_families[name])
            key = (sname, labels)
            totals[name][key] = totals[name].get(key, 0.0) + value
        families = []
        for name, (typ, doc, unit) in order.items():
            fam = Metric(name, doc, typ, unit)
            for sname, labels, value in per[name]:
                fam.add_sample(sname, labels, value)
            for (sname, labels), value in totals[name].items():
                fam.add_sample(sname, {**dict(labels), "replica": "total"}, value)
            families.append(fam)
        families += self._own_families(reps)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        return generate_latest(registry)

    def _own_families(self, reps: list[dict[str, Any]]) -> list[Metric]:
        """What only the Ray service has: its replicas by state, and the ingress's retries."""
        states = Metric("edgecc_serve_replicas", "master replicas by state (serving, gone: silent for "
                        f"{STALE_S:g} s, stopped: drained and closed)", "gauge")
        for s in ("serving", "gone", "stopped"):
            states.add_sample("edgecc_serve_replicas", {"state": s}, float(sum(self._state(r) == s for r in reps)))
        out = [states]
        names = sorted({n for i in self.ingress.values() for n in i["counters"]})
        for n in names:
            help_ = INGRESS_COUNTERS.get(n, n.replace("_", " "))
            fam = Metric(f"edgecc_serve_ingress_{n}", help_, "counter")
            total = 0.0
            for iid, i in sorted(self.ingress.items()):
                v = float(i["counters"].get(n, 0))
                total += v
                fam.add_sample(f"edgecc_serve_ingress_{n}_total", {"ingress": iid}, v)
            fam.add_sample(f"edgecc_serve_ingress_{n}_total", {"ingress": "total"}, total)
            out.append(fam)
        return out


INGRESS_COUNTERS = {
    "retried": "classify requests sent again to another replica because the replica holding them died",
    "unanswered": "classify requests answered 503 after every replica tried for them died",
}


class _Fixed:
    """A collector of families built elsewhere (generate_latest formats them)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


def _service_fields(r: dict[str, Any]) -> dict[str, Any]:
    """The fields Service.stats adds to a snapshot (the dashboard reads them)."""
    return {"scheme": r["scheme"], "N": r["N"], "K": r["K"], "need": r["need"], "queue_depth": r["queue_depth"],
            "in_flight": r["in_flight"], "draining": r["draining"]}


def _merge_bucket(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Two replicas' buckets for the same second as one (counts added, per-request values pooled)."""
    if a is None:
        return {k: ([list(x) for x in v] if k in PER_WORKER_SAMPLES else list(v) if isinstance(v, list) else v)
                for k, v in b.items()}
    for k, v in b.items():
        if k == "t":
            continue
        if k in PER_WORKER_SAMPLES or k in PER_WORKER_COUNTS:  # per worker: values pooled, counts added
            a[k] = [x + y for x, y in zip(a[k], v)]
        elif isinstance(v, list):  # SAMPLES and any list a newer ServiceMetrics adds: pooled
            a[k] = a.get(k, []) + list(v)
        elif isinstance(v, (int, float)):  # COUNTS and any new count
            a[k] = a.get(k, 0) + v
    return a


def _merged_links(reps: list[dict[str, Any]]) -> list[_Link]:
    """One row per worker for the total: up only while every live replica reaches it (one replica that
    cannot is worth the alarm), connections summed, the first error any replica saw."""
    rows = []
    for i, first in enumerate(reps[0]["links"]):
        links = [r["links"][i] for r in reps if i < len(r["links"])]
        rows.append(_Link({"index": first["index"], "address": first["address"], "ready": all(l["ready"] for l in links),
                           "connects": sum(l["connects"] for l in links),
                           "last_error": next((l["last_error"] for l in links if l["last_error"]), None)}))
    return rows
