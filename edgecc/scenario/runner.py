"""`edgecc scenario run`: start N local workers with injected behaviour, drive each scheme with the
same request stream and the same per-(worker, request) delays, and write the report.

Every scheme gets freshly started workers, so time-based failures (crash at t, flapping) hit each
scheme at the same moments of its run. Delays are injected by the workers themselves (this kernel
has no netem); the oracle is computed from the same pure behaviour functions.

With `shared_data = "indices"`, a shared-placement plan sends dataset indices instead of pixels
(Remark 1): its workers start with `--dataset <the scenario's images>` and the master with that
dataset's digest; each scheme's report says what it sent per image (`bytes_per_image`).

A scenario with links (spec.LinkSpec) runs each worker in its own network namespace behind a
tc-shaped veth pair (links.py); link events run on a timer from the workers' start, and the report
adds each link as configured and as measured from the interface counters.
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

from ..datasets import load_arrays
from ..errors import ConfigError, EdgeccError
from ..launch.local import LocalWorker, process_cpu_s
from ..master.master import Overloaded
from .links import LinkSet, LinkTimeline, kernel_features, require, tcp_congestion_control
from .report import RequestRecord, links_markdown, write_report
from .spec import Scenario

STAGES = ("queue", "encode", "workers", "decode")  # Master.infer's info timings, "<stage>_ms"
WARMUP_ID = 2**40  # request id of the unmeasured warm-up request (outside every scenario's range)


class LocalWorkers:
    """The scenario's N workers as local processes with their behaviours, all started together; with
    `links`, worker i runs in link i's namespace and listens on its address there."""

    def __init__(self, scenario: Scenario, token: str, log_dir: Path, links: LinkSet | None = None,
                 dataset: str | None = None):
        """`dataset`: the source every worker holds (`edgecc worker --dataset`), or None."""
        held = ["--dataset", dataset] if dataset is not None else []
        self.workers = [
            LocalWorker(log_dir, f"worker{i}", ["--behaviour", json.dumps(beh.to_dict()), "--seed", str(scenario.seed),
                                                "--index", str(i), "--log-level", "warning", *held], token=token,
                        **({"host": links.endpoints[i].worker_ip, "netns": links.endpoints[i].netns} if links else {}))
            for i, beh in enumerate(scenario.behaviours())]
        self.started_at: list[float] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [w.address for w in self.workers]

    def start(self) -> None:
        """Launch all, then wait for each: they boot in parallel. A worker's start (the zero of its
        time-based failures and link events) is when the runner sees it listening."""
        try:
            for w in self.workers:
                w.launch()
            for w in self.workers:
                w.wait_started()
                self.started_at.append(time.monotonic())
        except EdgeccError:
            self.stop()
            raise

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


def _plan(scheme: str, scenario: Scenario, K: int):
    """The scheme's plan from the registry (schemes/registry.py): the scenario's N workers, the run's K,
    the scheme's options from the scenario."""
    from ..schemes.registry import build_plan

    return build_plan(scheme, scenario.N, K, **scenario.scheme_options(scheme))


async def _drive(master, plan, scenario: Scenario, images: np.ndarray, labels: np.ndarray, started_at: list[float],
                 progress: Callable[[int], None] | None, indices: bool = False) -> list[RequestRecord]:
    """Send scenario.requests requests (closed loop or Poisson arrivals); one record per request.

    A request's deadline (timeout_s) counts from its arrival: time spent queueing for the master
    counts against it. Its bytes are the ones the master put on the wire for it alone. With `indices`
    the master sends the images' indices in the dataset its workers hold (Master.infer_indices)."""
    K, gpr = plan.K, scenario.groups_per_request
    n_groups = images.shape[0] // K
    groups, glabels = images[: n_groups * K].reshape(n_groups, K, *images.shape[1:]), labels[: n_groups * K].reshape(n_groups, K)
    positions = np.arange(n_groups * K).reshape(n_groups, K)  # each group's images' indices in the dataset
    infer = master.infer_indices if indices else master.infer
    inputs = positions if indices else groups
    behaviours = scenario.behaviours()
    t_first = min(started_at)
    records: list[RequestRecord] = []

    async def one(r: int) -> None:
        idx = np.arange(r * gpr, (r + 1) * gpr) % n_groups
        now = time.monotonic()
        delays = {n: behaviours[n].delay(r, now - started_at[n]) for n in range(plan.N)}
        oracle = plan.oracle(delays)
        oracle_ms = None if oracle is None else oracle * 1000
        info: dict[str, Any] = {}
        t = time.perf_counter()
        latency_ms, correct, outcome = None, 0, "decoded"
        try:
            logits = await infer(inputs[idx], req_id=r, deadline=now + scenario.timeout_s, info=info)
        except Overloaded:
            outcome = "shed"
        except EdgeccError:
            outcome = "failed"
        else:
            latency_ms = (time.perf_counter() - t) * 1000
            correct = int((logits.argmax(-1) == glabels[idx]).sum())
        subset = info.get("decode", {}).get("subset") if outcome == "decoded" else None
        stages = {k: round(float(info[f"{k}_ms"]), 3) for k in STAGES if f"{k}_ms" in info} if outcome == "decoded" else {}
        records.append(RequestRecord(r, latency_ms, correct, gpr * K, oracle_ms, int(info.get("bytes_sent", 0)),
                                     outcome=outcome, t_s=round(now - t_first, 4),
                                     workers=None if subset is None else [int(w) for w in subset],
                                     stages_ms=stages or None))
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
    return sorted(records, key=lambda rec: rec.request)


async def _run_scheme(scheme: str, scenario: Scenario, K: int, read_images: Callable, log_dir: Path,
                      progress, links: LinkSet | None) -> tuple[list[RequestRecord], dict[str, Any], dict[str, Any] | None]:
    from ..master.master import Master
    from ..protocol.messages import dataset_digest
    from ..schemes.base import plan_shape

    plan = _plan(scheme, scenario, K)
    images, labels = read_images(plan_shape(plan)[0])  # the scenario's images in the shape the plan's model takes
    # Remark 1: the workers hold the scenario's images and the master sends indices (shared placement only)
    indices = scenario.shared_data == "indices" and plan.placement == "shared"
    digest = dataset_digest(np.ascontiguousarray(images)) if indices else None
    token = secrets.token_hex(32)
    specs = [w.link for w in scenario.workers]
    if links is not None:  # every scheme starts from the links' initial state, like it starts fresh workers
        for i, spec in enumerate(specs):
            links.configure(i, spec)
    workers = (_ray_workers(scenario, token) if scenario.backend == "ray"
               else LocalWorkers(scenario, token, log_dir, links, scenario.images if indices else None))
    timeline = None
    workers.start()
    try:
        if links is not None:
            timeline = LinkTimeline(links, specs, workers.started_at).start()
        # only the workers this scheme uses (uncoded: the first K; local: none)
        master = Master(plan, workers.addresses[: plan.N], token.encode(), request_timeout=scenario.timeout_s, dataset=digest)
        try:
            await master.start(wait_ready=60 if links else 30)  # a slow link carries the model to its worker first
            await master.wait_all_ready(60 if links else 10)
            # One unmeasured request first: the first encode pays one-off library initialisation
            # (tens of ms), which a long-running master pays once, not per request.
            warmup: dict[str, Any] = {}
            with contextlib.suppress(EdgeccError):
                if indices:
                    await master.infer_indices(np.arange(plan.K).reshape(1, plan.K), req_id=WARMUP_ID, info=warmup)
                else:
                    await master.infer(images[: plan.K].reshape(1, plan.K, *images.shape[1:]), req_id=WARMUP_ID, info=warmup)
            t0, cpu0 = time.perf_counter(), _cpu_now(master, workers)
            records = await _drive(master, plan, scenario, images, labels, workers.started_at, progress, indices)
            elapsed = time.perf_counter() - t0
            sent_images = sum(r.total for r in records)
            stats = {**master.stats, "elapsed_s": elapsed, "workers_used": plan.N,
                     "cpu_s": _cpu_split(cpu0, _cpu_now(master, workers)),
                     "plan": plan.summary(),
                     # what the master sent, over every request (failed ones included), per image asked for
                     "bytes_per_image": sum(r.bytes_sent for r in records) / sent_images if sent_images else 0.0,
                     "sends": "indices" if indices else ("images" if plan.placement == "shared" else plan.placement),
                     "warmup_bytes_sent": int(warmup.get("bytes_sent", 0)),  # in bytes_sent, not in any request's
                     "connects": [l.connects for l in master.links]}
        finally:
            await master.close()
    finally:
        workers.stop()
        measured = timeline.stop() if timeline is not None else None
    return records, stats, measured


def _cpu_now(master, workers) -> dict[str, Any]:
    """CPU seconds so far: this process (the master and the request driver), its encode threads, and each
    local worker process (None for workers that are not local processes: Ray actors)."""
    procs = getattr(workers, "workers", None)
    return {"process": process_cpu_s(), "encoder": master.encoder_cpu_s(),
            "workers": None if procs is None else [process_cpu_s(w.pid) if w.pid else 0.0 for w in procs]}


def _cpu_split(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Where the CPU went during a scheme's run, in CPU seconds: the master's encoder threads, the rest of the
    master process (its event loop: framing, sends, results, decoding; and the request driver beside it),
    and the workers. A worker gone by the end of the run (killed by its scenario) counts 0: its /proc entry is gone."""
    encoder = after["encoder"] - before["encoder"]
    out = {"encoder": encoder, "event_loop": max(0.0, after["process"] - before["process"] - encoder), "workers": None}
    if before["workers"] is not None:
        out["workers"] = sum(max(0.0, a - b) for a, b in zip(after["workers"], before["workers"]))
    return out


def _ray_workers(scenario: Scenario, token: str):
    """The scenario's workers as Ray actors (backend = "ray", docs/ray.md), started and stopped as
    LocalWorkers are: each runs the behaviour a worker process gets (`edgecc worker --behaviour`),
    injected by the same fault layer (worker/faults.py) inside its worker."""
    from ..launch.ray_workers import RayWorkers
    from ..worker.faults import Faults

    return RayWorkers(scenario.N, token.encode(), faults=[Faults(delay=b.delay) for b in scenario.behaviours()])


def _variants(scenario: Scenario) -> list[tuple[str, Scenario]]:
    """(suffix, scenario) pairs each scheme runs on: the scenario, and its all-fast twin if asked for."""
    return [("", scenario), ("@all-fast", scenario.all_fast())] if scenario.also_all_fast else [("", scenario)]


def run_scenario(scenario: Scenario, out_dir: str | Path, progress_factory=None) -> dict[str, Any]:
    """Run every scheme of `scenario` and write report.json, report.md and plots into `out_dir`."""
    from ..process import run

    if scenario.has_links:  # refused before anything is loaded or written
        require(f"scenario {scenario.name!r}" + (f" ({scenario.source})" if scenario.source else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    K = scenario.group_size()  # every scheme groups the same images
    from ..schemes.registry import run_image

    run_image({s: scenario.scheme_options(s) for s in scenario.schemes})  # ... of one shape: refused before anything runs
    read: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def read_images(image) -> tuple[np.ndarray, np.ndarray]:
        """The scenario's images in the (C, H, W) its plans' models take: read once; every scheme of a
        scenario classifies the same images, so a model of another shape is refused."""
        image = tuple(image)
        if read and image not in read:
            first = next(iter(read))
            raise ConfigError(f"scenario {scenario.name!r}: its schemes' models must take the same images; one takes "
                              f"{'×'.join(map(str, first))}, another {'×'.join(map(str, image))}")
        if image not in read:
            read[image] = load_arrays(scenario.images, image=image)
        return read[image]
    results, stats, measured = {}, {}, {}
    links_meta = None
    with contextlib.ExitStack() as stack:
        links = None
        if scenario.has_links:
            links = stack.enter_context(LinkSet(scenario.N))
            features = kernel_features(links)
            links_meta = {
                "kernel": features,
                "shaped_in_kernel": ["rate (tc tbf, both directions)", "burst", "queueing (tbf latency bound)",
                                     "link down/up (carrier off: silent loss)", "rate changes"],
                "injected_in_worker": ["latency (the worker sleeps before answering)", "failures"],
                "not_modelled": ["propagation delay and packet loss (netem "
                                 + ("available but not used)" if features["netem"] else "missing from this kernel)")],
                "transport": "TCP from the root namespace to one network namespace per worker over a veth pair",
                "tcp_congestion_control": tcp_congestion_control(),
            }
        logs = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecc-scenario-"))
        for scheme in scenario.schemes:
            for suffix, variant in _variants(scenario):
                name = scheme + suffix
                progress = progress_factory(name) if progress_factory else None
                results[name], stats[name], measured[name] = run(_run_scheme(
                    scheme, variant, K, read_images, Path(logs), progress, links))
        if links is not None:
            links_meta["qdiscs"] = [links.shaped(i) for i in range(scenario.N)]  # the last scheme's final state
    meta = {**scenario.to_dict(), "K": K, "machine": _machine(), "master_stats": stats}
    if links_meta is not None:
        meta["links"] = {**links_meta, "measured": measured}
    summaries = write_report(results, out, title=f"Scenario {scenario.name}", meta=meta,
                             extra_markdown=_bytes_markdown(stats) + (
                                 links_markdown([w["link"] for w in meta["workers"]], measured, results,
                                                {name: st.get("connects") for name, st in stats.items()},
                                                _link_notes(links_meta)) if links_meta else ""))
    from ..modelfile import atomic_write

    per_request = {name: [r.__dict__ for r in recs] for name, recs in results.items()}
    atomic_write(out / "requests.json", json.dumps(per_request).encode())
    return {name: s.__dict__ for name, s in summaries.items()}


def _bytes_markdown(stats: dict[str, dict[str, Any]]) -> str:
    """What the master sent per image, per scheme, and what it sent (pixels, encoded inputs, indices)."""
    rows = ["", "## Bytes sent per image", "",
            "Every request's frames to every worker (failed requests included), over the images asked for; "
            "`sends`: the shared placement's images or dataset indices (`shared_data`), else the placement.", "",
            "| scheme | sends | bytes per image |", "|---|---|---|"]
    rows += [f"| {name} | {st.get('sends', '—')} | {st.get('bytes_per_image', 0.0):.1f} |" for name, st in stats.items()]
    return "\n".join(rows) + "\n"


def _link_notes(links_meta: dict[str, Any]) -> list[str]:
    """What was real and what was not, in words for report.md."""
    k = links_meta["kernel"]
    return [f"Transport: {links_meta['transport']}; TCP congestion control {links_meta['tcp_congestion_control'] or 'unknown'}.",
            "Shaped in the kernel: " + "; ".join(links_meta["shaped_in_kernel"]) + ".",
            "Injected in the worker process: " + "; ".join(links_meta["injected_in_worker"]) + ".",
            "Not modelled: " + "; ".join(links_meta["not_modelled"]) + ".",
            f"Kernel qdiscs: tbf {'available' if k['tbf'] else 'missing'}, netem {'available' if k['netem'] else 'missing'}."]


def _machine() -> dict[str, Any]:
    import platform

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
