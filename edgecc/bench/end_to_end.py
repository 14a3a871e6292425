"""Section 6 of `edgecc bench`: end-to-end throughput over loopback against the same work in process."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import costs
from .cluster import LocalWorkers, connected_master, run_coroutine
from ..launch.local import process_cpu_s
from .config import BenchConfig, in_thread, log, torch_threads


MODEL_IMAGES = 2000  # images the uncollapsed in-process model runs on (its rate only)


def _self_cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


# -- 6. end-to-end throughput -------------------------------------------------------------------
def _inprocess(model, scheme, plan, comp, groups: np.ndarray, B: int, collapsed: bool) -> np.ndarray:
    """Predictions for all groups computed in this process, batch by batch, decoded like the master."""
    import torch

    preds = []
    with torch.inference_mode():
        for i in range(0, groups.shape[0], B):
            x = torch.from_numpy(groups[i : i + B].astype(np.float32) / 255.0)
            if collapsed:  # the same arithmetic as the distributed run: encode, N affine maps, decode
                xt = model.encode(x, plan.alphas, plan.encode_precision).numpy()
                results = {n: comp(xt[:, n]) for n in range(plan.N)}
            else:  # the torch model at the N points (H uncollapsed), as evaluate.py does
                y = model(x, plan.alphas).numpy()
                results = {n: y[:, n] for n in range(plan.N)}
            preds.append(plan.decode(results).argmax(-1).reshape(-1))
    return np.concatenate(preds)


def bench_end_to_end(cfg: BenchConfig, models, images: np.ndarray, labels: np.ndarray, tmp: Path,
                     token: str, threads: int) -> list[dict[str, Any]]:
    """In-process runs use torch's default `threads` (as evaluate.py runs); the Master sets its own."""
    from ..export import worker_arrays
    from ..worker.compute import EncodedCompute
    from ..master.stream import run_stream
    from ..schemes.registry import build_plan

    rows = []
    with LocalWorkers(max(cfg.e2e_Ns), tmp, token, tag="e2e") as workers:
        for key in cfg.models:
            m = models[key]
            model, info, s = m["model"], m["info"], m["scheme"]
            comp = EncodedCompute(s, worker_arrays(model, info, "encoded"))
            n = images.shape[0] - images.shape[0] % s.K
            groups = images[:n].reshape(-1, s.K, 28, 28)
            for N in cfg.e2e_Ns:
                plan = build_plan("aicc", N, model=(model, info), placement="encoded")
                e2e, inp_model, inp_coll, agree = [], [], [], []
                cpu: dict[str, list[float]] = {"inprocess_collapsed": [], "master_loop": [], "master_encode": [], "workers": []}
                pids = [w.pid for w in workers.workers[:N]]
                summary: dict[str, Any] = {}
                with torch_threads(threads):
                    for collapsed in (False, True):  # warm-up
                        in_thread(_inprocess, model, s, plan, comp, groups[: cfg.batch], cfg.batch, collapsed)
                for _ in range(cfg.e2e_repeats):  # interleaved: both sides see the same background load
                    with torch_threads(threads):
                        # the uncollapsed model is ~30x slower: its rate comes from the first MODEL_IMAGES
                        t0 = time.perf_counter()
                        ref = in_thread(_inprocess, model, s, plan, comp, groups[: MODEL_IMAGES // s.K], cfg.batch, False)
                        inp_model.append(ref.size / (time.perf_counter() - t0))
                        t0, c0 = time.perf_counter(), _self_cpu_s()
                        in_thread(_inprocess, model, s, plan, comp, groups, cfg.batch, True)
                        inp_coll.append(n / (time.perf_counter() - t0))
                        cpu["inprocess_collapsed"].append(_self_cpu_s() - c0)

                    async def stream():
                        master = await connected_master(plan, workers.addresses(N), token.encode())
                        try:
                            # one unmeasured request first, as the in-process side gets a warm-up call: the
                            # first encode pays one-off library initialisation that a running master pays once
                            await master.infer(groups[: cfg.batch])  # request id 0; the stream's are 1, 2, ...
                            master.stats["bytes_sent"] = 0  # the bytes check counts the measured stream only
                            # CPU of the run: this thread runs the event loop; the master's other busy threads encode
                            w0, p0, l0 = sum(map(process_cpu_s, pids)), _self_cpu_s(), _self_cpu_s(resource.RUSAGE_THREAD)
                            got = await run_stream(master, images[:n], labels[:n], groups_per_request=cfg.batch,
                                                   in_flight=cfg.in_flight)
                            loop_s = _self_cpu_s(resource.RUSAGE_THREAD) - l0
                            cpu["master_loop"].append(loop_s)
                            cpu["master_encode"].append(_self_cpu_s() - p0 - loop_s)
                            cpu["workers"].append(sum(map(process_cpu_s, pids)) - w0)
                            return got
                        finally:
                            await master.close()

                    summary, preds = run_coroutine(stream())
                    e2e.append(summary["images_per_s"])
                    agree.append(float((preds[: ref.size] == ref).mean()))
                # bytes check: every request to every worker is one Compute frame
                sizes = [min(cfg.batch, groups.shape[0] - i) for i in range(0, groups.shape[0], cfg.batch)]
                expected = sum(N * costs.frame_overhead(s, "encoded", b, req_id=i + 1)["compute_frame"]
                               for i, b in enumerate(sizes))  # after the warm-up request 0: 1, 2, ...
                row = {"model": key, "label": m["label"], "source": m["source"], "N": N, "R": s.R, "images": n,
                       "inprocess_torch_threads": threads,
                       "groups_per_request": cfg.batch, "in_flight": cfg.in_flight, "repeats": cfg.e2e_repeats,
                       "e2e_images_per_s": statistics.median(e2e),
                       "inprocess_model_images_per_s": statistics.median(inp_model),
                       "inprocess_collapsed_images_per_s": statistics.median(inp_coll),
                       "e2e_over_inprocess_model": statistics.median(e2e) / statistics.median(inp_model),
                       "e2e_over_inprocess_collapsed": statistics.median(e2e) / statistics.median(inp_coll),
                       "prediction_agreement": min(agree),
                       "requests_failed": summary.get("requests_failed"), "latency_ms": summary.get("latency_ms"),
                       "bytes_sent": summary.get("bytes_sent"), "bytes_sent_expected": expected,
                       "bytes_sent_per_group_per_worker": summary.get("bytes_sent", 0) / (groups.shape[0] * N),
                       "cpu_ms": {k: statistics.median(v) * 1e3 for k, v in cpu.items()},
                       "samples": {"e2e": e2e, "inprocess_model": inp_model, "inprocess_collapsed": inp_coll,
                                   "cpu_s": cpu}}
                # CPU per run, medians over the repeats: the distributed run's work (encode, event loop, workers)
                # against the in-process run's. Spread over every core with none idle, that work could not take
                # less wall time than distributed CPU / cores: the ceiling on e2e ÷ collapsed on this machine.
                c = row["cpu_ms"]
                c["distributed"] = c["master_loop"] + c["master_encode"] + c["workers"]
                row["cores"] = os.cpu_count()
                row["cpu_bound_ratio"] = (n / row["inprocess_collapsed_images_per_s"] * 1e3) / (c["distributed"] / row["cores"])
                log(f"e2e {m['label']} N={N}: {row['e2e_images_per_s']:.0f} img/s vs in-process "
                     f"{row['inprocess_collapsed_images_per_s']:.0f} (collapsed) / {row['inprocess_model_images_per_s']:.0f} (model); "
                     f"CPU ms: encode {c['master_encode']:.0f}, loop {c['master_loop']:.0f}, workers {c['workers']:.0f}, "
                     f"in-process {c['inprocess_collapsed']:.0f}; ceiling {row['cpu_bound_ratio']:.2f}")
                rows.append(row)
    return rows
