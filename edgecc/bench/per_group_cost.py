"""Sections 4-5 of `edgecc bench`: what the master and a worker spend per group, in process."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import costs
from .config import BenchConfig, in_thread, log, side_by_side_pool, timeit, torch_threads
from .machine import bench_precisions
from .models import make_groups


# -- 4. master cost per group -------------------------------------------------------------------
def bench_master(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, N: int = 3,
                 threads: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Per-group master cost at each torch thread count in `threads` (the Master encodes with 1 thread per
    op, several requests in parallel; torch's default is one op on all cores)."""
    import torch

    from ..master.master import COALESCE_GROUPS
    from ..nets import CentralizedCNN
    from ..schemes.registry import build_plan

    precisions = bench_precisions()
    torch.manual_seed(0)
    cnn = CentralizedCNN().eval()
    out: dict[str, Any] = {"N": N, "models": []}
    for key in cfg.models:
        m = models[key]
        model, info, s = m["model"], m["info"], m["scheme"]
        t0 = time.perf_counter()
        plan = build_plan("aicc", N, model=(model, info), placement="encoded")
        plan_build_s = time.perf_counter() - t0
        shared = build_plan("aicc", N, model=(model, info), placement="shared")
        row: dict[str, Any] = {"model": key, "label": m["label"], "source": m["source"], "plan_build_s": plan_build_s,
                               "plan_encode_precision": plan.encode_precision, "by_batch": []}
        rng = np.random.default_rng(0)
        # 64 groups (a large request), COALESCE_GROUPS (the most the master encodes of waiting small requests
        # at once) and 1 (a lone small request): the per-group price of each
        for B, nthreads in [(B, n) for B in dict.fromkeys((cfg.batch, COALESCE_GROUPS, 1)) for n in dict.fromkeys(threads)]:
            imgs = make_groups(images, s.K, B)
            x = torch.from_numpy(imgs.astype(np.float32) / 255.0)
            xc = x.reshape(B * s.K, 28, 28)
            results = {i: rng.standard_normal((B, 10)).astype(np.float32) for i in range(s.R)}

            def encode(precision: str = "fp32") -> None:
                with torch.inference_mode():
                    model.encode(x, plan.alphas, precision)

            def central() -> None:
                with torch.inference_mode():
                    cnn(xc)

            with torch_threads(nthreads):
                cases = {
                    "encode": encode,
                    **({"encode_bf16": lambda: encode("bf16")} if "bf16" in precisions else {}),
                    "payloads_encoded": lambda: plan.payloads(imgs),
                    "payloads_shared": lambda: shared.payloads(imgs),
                    "decode": lambda: plan.decode(results),
                    "centralized_cnn": central,
                }
                t = {name: in_thread(timeit, fn, cfg.repeats, cfg.min_time)["median_s"] / B for name, fn in cases.items()}
            enc_total = t["payloads_encoded"] + t["decode"]
            sh_total = t["payloads_shared"] + t["decode"]
            row["by_batch"].append({
                "groups": B, "torch_threads": nthreads, "seconds_per_group": t,
                "encoded_total": enc_total, "shared_total": sh_total,
                "encoded_over_centralized_cnn": enc_total / t["centralized_cnn"],
                "shared_over_centralized_cnn": sh_total / t["centralized_cnn"],
                "encode_gflops": costs.master_encode_flops(s, N) / t["encode"] / 1e9,
                "centralized_cnn_gflops": s.K * costs.cnn_baseline_flops() / t["centralized_cnn"] / 1e9,
            })
        with torch_threads(1):
            row["one_group"] = one_group_price(plan, make_groups(images, s.K, 1), make_groups(images, s.K, cfg.batch),
                                               max(5, cfg.repeats), cfg.min_time)
        log(f"master {m['label']}: encode {row['by_batch'][0]['seconds_per_group']['encode'] * 1e3:.2f} ms/group at B={cfg.batch}; "
            f"one group alone {row['one_group']['ratio']:.2f}x its share of {cfg.batch}")
        out["models"].append(row)
    return out


IDLE_S, IDLE_CALLS = 0.02, 30  # one_group_price's lone group after idling


def one_group_price(plan, one: np.ndarray, many: np.ndarray, rounds: int, min_time: float) -> dict[str, Any]:
    """What a lone group's plan.payloads costs over its per-group share of a large request, the sizes timed in
    alternation, round by round (each a median of >= min_time samples), and the median of the rounds' ratios:
    this VM's speed drifts by 2x within minutes, and timing the two sizes minutes apart measured the drift.
    The lone group both ways: its encoder networks one after the other, and side by side on the other cores
    (one torch thread each), as the Master encodes a lone small request."""
    from ..schemes.base import side_by_side as plan_side_by_side

    pool = side_by_side_pool()  # None on one core: then the networks run one after the other

    def side_by_side() -> None:  # as the Master encodes a lone small request (Master._side_by_side)
        with plan_side_by_side(plan, pool):
            plan.payloads(one)

    # the same lone group after the machine idled, as a master between sparse requests meets it (a sleeping
    # thread woken on an idle virtual CPU, its caches cold): each call after IDLE_S of sleep
    def after_idle() -> list[float]:
        times = []
        for _ in range(IDLE_CALLS):
            time.sleep(IDLE_S)
            t0 = time.perf_counter()
            side_by_side()
            times.append(time.perf_counter() - t0)
        return times

    per_round = []
    try:
        for _ in range(rounds):
            t1 = in_thread(timeit, lambda: plan.payloads(one), 3, min_time)["median_s"]
            ts = in_thread(timeit, side_by_side, 3, min_time)["median_s"] if pool is not None else None
            tb = in_thread(timeit, lambda: plan.payloads(many), 3, min_time)["median_s"] / many.shape[0]
            per_round.append({"one_s": t1, "side_by_side_s": ts, "share_s": tb, "ratio": t1 / tb,
                              "ratio_side_by_side": None if ts is None else ts / tb})
        idle = in_thread(after_idle)
    finally:
        if pool is not None:
            pool.shutdown()
    ratios = sorted(r["ratio"] for r in per_round)
    out = {"groups": many.shape[0], "rounds": per_round, "ratio": float(np.median(ratios)),
           "ratio_min": ratios[0], "ratio_max": ratios[-1],
           "after_idle": {"idle_s": IDLE_S, "calls": IDLE_CALLS, "p50_s": float(np.median(idle)),
                          "p99_s": float(np.percentile(idle, 99))}}
    if per_round[0]["ratio_side_by_side"] is not None:
        side = sorted(r["ratio_side_by_side"] for r in per_round)
        out.update(ratio_side_by_side=float(np.median(side)), ratio_side_by_side_min=side[0], ratio_side_by_side_max=side[-1])
    return out


# -- 5. worker cost per group -------------------------------------------------------------------
def bench_worker(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, N: int = 3) -> dict[str, Any]:
    """Per-group worker cost, single-threaded as `edgecc worker` runs (it sets OMP_NUM_THREADS=1)."""
    with torch_threads(1):
        return _bench_worker(cfg, models, images, N)


def _bench_worker(cfg: BenchConfig, models: dict[str, dict[str, Any]], images: np.ndarray, N: int) -> dict[str, Any]:
    import torch

    from ..coding.schemes import default_alphas
    from ..export import worker_arrays
    from ..protocol.frames import decode_payload, encode_frame, pack_array, unpack_array
    from ..protocol.messages import Compute, Result, parse
    from ..worker.compute import EncodedCompute
    from ..worker.shared_compute import SharedCompute

    alpha = default_alphas(N)[0]
    rng = np.random.default_rng(0)
    rows = []
    for B in (cfg.batch, 1):
        xt = rng.random((B, 28, 28), dtype=np.float32)
        for key in (*cfg.models, "hs"):
            m = models[key]
            s = m["scheme"]
            comp = EncodedCompute(s, worker_arrays(m["model"], m["info"], "encoded"))
            v = rng.random((B, s.P + 1, 28, 28), dtype=np.float32) if s.computation == "hs" else None
            t = in_thread(timeit, lambda: comp(xt, v), cfg.repeats, cfg.min_time)["median_s"]
            rows.append({"what": f"encoded {'H_S' if v is not None else 'H_B'} (collapsed affine, numpy)",
                         "model": key, "label": m["label"], "groups": B, "seconds_per_group": t / B,
                         "flops_per_group": costs.encoded_worker_flops(s)})
        for key in cfg.models:
            m = models[key]
            s, model = m["scheme"], m["model"]
            imgs = make_groups(images, s.K, B)
            sc = SharedCompute(s, worker_arrays(model, m["info"], "shared"), alpha)
            t = in_thread(timeit, lambda: sc(imgs), cfg.repeats, cfg.min_time)["median_s"]
            rows.append({"what": "shared E+H (SharedCompute, torch, H uncollapsed)", "model": key, "label": m["label"],
                         "groups": B, "seconds_per_group": t / B, "flops_per_group": costs.shared_worker_flops(s, False)})
            comp = EncodedCompute(s, worker_arrays(model, m["info"], "encoded"))

            def collapsed() -> None:
                with torch.inference_mode():
                    x = torch.from_numpy(imgs.astype(np.float32) / 255.0)
                    comp(model.encode(x, [alpha])[:, 0].numpy())

            t = in_thread(timeit, collapsed, cfg.repeats, cfg.min_time)["median_s"]
            rows.append({"what": "shared E + collapsed H (what SharedCompute could run)", "model": key, "label": m["label"],
                         "groups": B, "seconds_per_group": t / B, "flops_per_group": costs.shared_worker_flops(s, True)})
    # the protocol's per-request cost on each side: frame encode (master) / decode + unpack (worker)
    proto = []
    for B in (cfg.batch, 1):
        x = rng.random((B, 28, 28), dtype=np.float32)
        y = rng.random((B, 10), dtype=np.float32)
        up = Compute(1000, pack_array(x, "f4"), None, None, None)
        frame = encode_frame(up.to_wire())
        down = encode_frame(Result(1000, pack_array(y, "f4")).to_wire())

        def worker_side() -> None:
            msg = parse(decode_payload(frame[4:]))
            unpack_array(msg.x, "x", shape=(None, 28, 28)).astype(np.float32)
            encode_frame(Result(msg.id, pack_array(y, "f4")).to_wire())

        def master_side() -> None:
            encode_frame(Compute(1000, pack_array(x, "f4"), None, None, None).to_wire())
            msg = parse(decode_payload(down[4:]))
            unpack_array(msg.y, "y", shape=(B, 10))

        for name, fn in (("worker: decode compute frame + unpack + encode result", worker_side),
                         ("master: encode compute frame + decode result (per worker)", master_side)):
            t = in_thread(timeit, fn, cfg.repeats, cfg.min_time)["median_s"]
            proto.append({"what": name, "groups": B, "seconds_per_request": t, "seconds_per_group": t / B,
                          "frame_bytes": len(frame)})
    return {"N": N, "alpha": alpha, "torch_threads": torch.get_num_threads(), "compute": rows, "protocol": proto}
