"""`edgecc scenario run`: start N local workers with injected behaviour, drive each scheme with the
same request stream and the same per-(worker, request) delays, and write the report.

Every scheme gets freshly started workers, so time-based failures (crash at t, flapping) hit each
scheme at the same moments of its run. Delays are injected by the workers themselves (this kernel
has no netem); the oracle is computed from the same pure behaviour functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import load_images
from ..errors import EdgeccError
from ..modelfile import load_model
from ..runtime.local import LocalWorker
from .report import RequestRecord, write_report
from .spec import Scenario

BASELINE = "default-mlp"
WARMUP_ID = 2**40  # request id of the unmeasured warm-up request (outside every scenario's range)  # the shipped centralized MLP the comparators' workers run


class LocalWorkers:
    """The scenario's N workers as local processes with their behaviours, all started together."""

    def __init__(self, scenario: Scenario, token: str, log_dir: Path):
        self.workers = [
            LocalWorker(log_dir, f"worker{i}", ["--behaviour", json.dumps(beh.to_dict()), "--seed", str(scenario.seed),
                                                "--index", str(i), "--log-level", "warning"], token=token)
            for i, beh in enumerate(scenario.behaviours())]
        self.started_at: list[float] = []

    @property
    def ports(self) -> list[int]:
        return [w.port for w in self.workers]

    def start(self) -> None:
        try:
            for w in self.workers:
                w.start()
                self.started_at.append(time.monotonic())
        except EdgeccError:
            self.stop()
            raise

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


def _plan(scheme: str, scenario: Scenario, model, info, baseline):
    from ..runtime.plan import CodedPlan, LearnedCodePlan, ReplicatedPlan

    K = info["scheme"]["K"]
    if scheme == "aicc":
        return CodedPlan(model, info, scenario.N, scenario.placement, encode_precision=scenario.encode_precision)
    if scheme == "learned-code":  # its k+1 workers are the scenario's first k+1
        plan = LearnedCodePlan(*load_model(scenario.learned_code_model))
        if plan.N > scenario.N:
            raise EdgeccError(f"the learned code needs {plan.N} workers, the scenario has {scenario.N}")
        return plan
    if scheme == "approxifer":  # the centralized baseline on Berrut combinations; any K of the scenario's N
        from ..runtime.approxifer import ApproxIFERPlan

        return ApproxIFERPlan(*baseline, K, scenario.N)
    bnet, binfo = baseline
    return ReplicatedPlan(bnet, binfo, K, K if scheme == "uncoded" else scenario.N)


async def _drive(master, plan, scenario: Scenario, images: np.ndarray, labels: np.ndarray, started_at: list[float],
                 progress: Callable[[int], None] | None) -> list[RequestRecord]:
    """Send scenario.requests requests (closed loop or Poisson arrivals); one record per request."""
    K, gpr = plan.K, scenario.groups_per_request
    n_groups = images.shape[0] // K
    groups, glabels = images[: n_groups * K].reshape(n_groups, K, 28, 28), labels[: n_groups * K].reshape(n_groups, K)
    behaviours = scenario.behaviours()
    records: list[RecordBox] = []

    async def one(r: int) -> None:
        idx = np.arange(r * gpr, (r + 1) * gpr) % n_groups
        now = time.monotonic()
        delays = {n: behaviours[n].delay(r, now - started_at[n]) for n in range(plan.N)}
        oracle = plan.oracle(delays)
        sent0 = master.stats["bytes_sent"]
        t = time.perf_counter()
        try:
            logits = await master.infer(groups[idx], req_id=r)
        except EdgeccError:
            rec = RequestRecord(r, None, 0, gpr * K, None if oracle is None else oracle * 1000, 0)
        else:
            ms = (time.perf_counter() - t) * 1000
            correct = int((logits.argmax(-1) == glabels[idx]).sum())
            rec = RequestRecord(r, ms, correct, gpr * K, None if oracle is None else oracle * 1000, 0)
        records.append(RecordBox(rec, master.stats["bytes_sent"] - sent0))
        if progress:
            progress(1)

    arr = scenario.arrival
    if arr.process == "closed":
        queue = iter(range(scenario.requests))

        async def loop() -> None:
            for r in queue:
                await one(r)

        await asyncio.gather(*(loop() for _ in range(arr.concurrency)))
    else:
        rng = np.random.default_rng([scenario.seed, 0xA441])
        gaps = rng.exponential(1.0 / arr.rate, scenario.requests)
        t0, tasks = time.monotonic(), []
        for r, at in enumerate(np.cumsum(gaps)):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            tasks.append(asyncio.create_task(one(r)))
        await asyncio.gather(*tasks)
    return [b.record_with_bytes() for b in sorted(records, key=lambda b: b.record.request)]


class RecordBox:
    """A record plus the bytes this request put on the wire (concurrent requests share the counter,
    so per-request bytes are approximate; the scheme's total is exact)."""

    def __init__(self, record: RequestRecord, sent: int):
        self.record, self.sent = record, sent

    def record_with_bytes(self) -> RequestRecord:
        r = self.record
        return RequestRecord(r.request, r.latency_ms, r.correct, r.total, r.oracle_ms, self.sent)


async def _run_scheme(scheme: str, scenario: Scenario, model, info, baseline, images, labels, log_dir: Path,
                      progress) -> tuple[list[RequestRecord], dict[str, Any]]:
    from ..runtime.master import Master

    plan = _plan(scheme, scenario, model, info, baseline)
    token = secrets.token_hex(32)
    workers = LocalWorkers(scenario, token, log_dir)
    workers.start()
    try:
        # only the workers this scheme uses (uncoded: the first K)
        addrs = [("127.0.0.1", p) for p in workers.ports[: plan.N]]
        master = Master(plan, addrs, token.encode(), request_timeout=scenario.timeout_s)
        try:
            await master.start(wait_ready=30)
            await master.wait_all_ready(10)
            # One unmeasured request first: the first encode pays one-off library initialisation
            # (tens of ms), which a long-running master pays once, not per request.
            with contextlib.suppress(EdgeccError):
                await master.infer(images[: plan.K].reshape(1, plan.K, 28, 28), req_id=WARMUP_ID)
            t0 = time.perf_counter()
            records = await _drive(master, plan, scenario, images, labels, workers.started_at, progress)
            stats = {**master.stats, "elapsed_s": time.perf_counter() - t0, "workers_used": plan.N,
                     "encode_precision": getattr(plan, "encode_precision", None)}
        finally:
            await master.close()
    finally:
        workers.stop()
    return records, stats


def run_scenario(scenario: Scenario, out_dir: str | Path, progress_factory=None) -> dict[str, Any]:
    """Run every scheme of `scenario` and write report.json, report.md and plots into `out_dir`."""
    from ..runtime.transport import run

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, info = load_model(scenario.model)
    if info["kind"] != "aicc":
        raise EdgeccError(f"{scenario.model}: a scenario's model must be an AICC model")
    baseline = load_model(BASELINE) if {"uncoded", "replication", "approxifer"} & set(scenario.schemes) else None
    images, labels = load_images(scenario.images)
    results, stats = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgecc-scenario-") as logs:
        for scheme in scenario.schemes:
            progress = progress_factory(scheme) if progress_factory else None
            results[scheme], stats[scheme] = run(_run_scheme(scheme, scenario, model, info, baseline, images, labels,
                                                             Path(logs), progress))
    meta = {**scenario.to_dict(), "machine": _machine(), "master_stats": stats}
    summaries = write_report(results, out, title=f"Scenario {scenario.name}", meta=meta)
    from ..modelfile import atomic_write

    per_request = {name: [r.__dict__ for r in recs] for name, recs in results.items()}
    atomic_write(out / "requests.json", json.dumps(per_request).encode())
    return {name: s.__dict__ for name, s in summaries.items()}


def _machine() -> dict[str, Any]:
    import platform

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
