"""A compact Markdown rendering of a benchmark result (for the README). Missing sections are skipped."""

from __future__ import annotations

import statistics
from typing import Any


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    for f, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= f:
            return f"{x / f:.3g} {p}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def _t(seconds: float | None) -> str:
    """Seconds with a readable unit."""
    if seconds is None:
        return "–"
    s = abs(seconds)
    if s >= 1:
        return f"{seconds:.2f} s"
    if s >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _n(x: float | None, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), ""]


def render_markdown(result: dict[str, Any]) -> str:
    out: list[str] = ["## Benchmarks", ""]
    meta = result.get("meta", {})
    mach = result.get("machine")
    if mach:
        out += [f"Machine: {mach.get('cpu_model')}, {mach.get('cores')} cores ({', '.join(mach.get('isa') or []) or 'no AVX-512'}), "
                f"torch {mach.get('torch')} ({mach.get('torch_threads')} threads), numpy {mach.get('numpy')}"
                + ("; no native bf16 kernels, so bf16 training and encoding are not timed (emulated; see the dense matmul)"
                   if mach.get("bf16_native") is False else "") + ". "
                f"{'Quick run' if meta.get('quick') else 'Full run'}; load average {meta.get('loadavg_before')} before, "
                f"{meta.get('loadavg_after')} after. Medians over repeats; ratios measured side by side in the same run.", ""]
    models = meta.get("models")
    if models:
        out += ["Models: " + "; ".join(f"{k}: {v['label']} ({v['source']})" for k, v in models.items()) + ".", ""]

    mm = result.get("matmul")
    if mm:
        out += [f"**Dense matmul** ({mm['n']}×{mm['n']}): "
                + ", ".join(f"{k.replace('_', ' ')} {mm[k]['gflops']:.0f} GFLOP/s" for k in ("torch_fp32", "torch_bf16", "numpy_fp32") if k in mm),
                ""]

    tr = result.get("training")
    if tr:
        out += ["**Training throughput** (one step as train.py runs it: forward, fp32 loss, backward, Adam; data loading excluded)", ""]
        out += _table(["model", "dtype", "batch", "step", "groups/s", "GFLOP/step", "achieved GFLOP/s", "of matmul rate"],
                      [[r["name"], r["dtype"], str(r["batch"]), _t(r["step_s"]), f"{r['groups_per_s']:.1f}",
                        f"{r['flops_per_step'] / 1e9:.1f}", f"{r['achieved_gflops']:.0f}",
                        "–" if r.get("fraction_of_matmul") is None else f"{100 * r['fraction_of_matmul']:.0f}%"] for r in tr])

    ms = result.get("master")
    if ms:
        out += [f"**Master cost per group** (N={ms['N']}; encode in fp32 and in bf16 (bf16 autocast for Γ, fp32 "
                f"polynomial); encoded = plan.payloads (encode in the plan's precision + pack) + decode, "
                f"shared = decode only; vs the centralized CNN (fp32) on the same K images)", ""]
        rows = []
        for r in ms["models"]:
            for b in r["by_batch"]:
                t = b["seconds_per_group"]
                bf16 = f"{_t(t['encode_bf16'])} ({t['encode'] / t['encode_bf16']:.2f}×)" if "encode_bf16" in t else "–"
                rows.append([r["label"], str(b["groups"]), str(b.get("torch_threads", "–")), _t(t["encode"]), bf16,
                             r.get("plan_encode_precision", "fp32"), _t(t["payloads_encoded"]), _t(t["decode"]),
                             _t(b["encoded_total"]), _t(b["shared_total"]), _t(t["centralized_cnn"]),
                             f"{b['encoded_over_centralized_cnn']:.2g}", f"{b['shared_over_centralized_cnn']:.2g}"])
        out += _table(["model", "groups/batch", "torch threads", "encode fp32", "encode bf16 (speed-up)", "plan precision",
                       "payloads", "decode", "encoded total", "shared total", "centralized CNN", "encoded ÷ CNN", "shared ÷ CNN"], rows)
        ratios = []
        for r in ms["models"]:  # what a lone group pays over its share of the largest batch, one thread, the plan's payloads
            if "one_group" in r:  # timed in alternation: the ratio a drifting machine cannot skew
                o = r["one_group"]
                text = (f"{r['label']}: {o['ratio']:.2f}× its per-group cost at {o['groups']} groups "
                        f"(median of {len(o['rounds'])} alternating rounds, range {o['ratio_min']:.2f}–{o['ratio_max']:.2f}; "
                        f"{_t(statistics.median(x['one_s'] for x in o['rounds']))} vs "
                        f"{_t(statistics.median(x['share_s'] for x in o['rounds']))})")
                if "ratio_side_by_side" in o:
                    text += (f", {o['ratio_side_by_side']:.2f}× with its networks side by side as the master runs a lone "
                             f"small request (range {o['ratio_side_by_side_min']:.2f}–{o['ratio_side_by_side_max']:.2f}; "
                             f"{_t(statistics.median(x['side_by_side_s'] for x in o['rounds']))})")
                if "after_idle" in o:
                    a = o["after_idle"]
                    text += (f"; after {a['idle_s'] * 1e3:g} ms idle, as sparse requests meet it, {_t(a['p50_s'])} p50, "
                             f"{_t(a['p99_s'])} p99 ({a['calls']} calls)")
                ratios.append(text)
                continue
            one = {b["groups"]: b for b in r["by_batch"] if b.get("torch_threads") == 1}
            if 1 in one and len(one) > 1:
                most = max(one)
                ratios.append(f"{r['label']}: {one[1]['seconds_per_group']['payloads_encoded'] / one[most]['seconds_per_group']['payloads_encoded']:.2f}× "
                              f"its per-group cost at {most} groups")
        if ratios:
            out += ["", "One group alone (1 torch thread, plan.payloads): " + "; ".join(ratios) + "."]

    wk = result.get("worker")
    if wk:
        out += [f"**Worker cost per group** (torch threads {wk.get('torch_threads', '–')}, as `edgecc worker` runs)", ""]
        out += _table(["computation", "model", "groups/batch", "time/group", "FLOPs/group"],
                      [[r["what"], r["label"], str(r["groups"]), _t(r["seconds_per_group"]), _si(r["flops_per_group"])]
                       for r in wk["compute"]]
                      + [[r["what"], "–", str(r["groups"]), _t(r["seconds_per_group"]), "–"] for r in wk.get("protocol", [])])

    cd = result.get("codec")
    if cd:
        out += ["**Receiving a request frame** (Comm.read over loopback from a sender process: socket read, framing, msgpack, "
                "validation; the receiver's CPU per frame) with glibc's default allocator settings and with freed frame "
                f"memory kept, as every edgecc process runs (process.keep_frame_memory{'' if cd.get('kept') else '; not in effect here'})", ""]
        out += _table(["groups", "frame", "CPU/frame, defaults", "CPU/frame, memory kept", "of which system, kept",
                       "socket floor (recv_into one buffer)"],
                      [[str(d["groups"]), _si(d["frame_bytes"], "B"), _t(d["cpu_us_per_frame"] / 1e6), _t(k["cpu_us_per_frame"] / 1e6),
                        _t(k["system_us_per_frame"] / 1e6), _t(k.get("socket_floor_us_per_frame", float("nan")) / 1e6)]
                       for d, k in zip(cd["default_allocator"], cd["frame_memory_kept"])])

    e2e = result.get("end_to_end")
    if e2e:
        out += [f"**End-to-end throughput** over loopback ({e2e[0]['images']} images, {e2e[0]['groups_per_request']} groups/request, "
                f"{e2e[0]['in_flight']} in flight; workers on the same cores) vs in-process on the same images "
                f"({e2e[0].get('inprocess_torch_threads', '–')} torch threads): "
                "'model' = model(x, α) in fp32 + decode (H uncollapsed, what `edgecc eval` runs), 'collapsed' = encode "
                "in the master's precision + N affine maps + decode (the distributed run's arithmetic)", ""]
        out += _table(["model", "N", "e2e img/s", "in-process model img/s", "in-process collapsed img/s",
                       "e2e ÷ model", "e2e ÷ collapsed", "bytes sent vs expected"],
                      [[r["label"], str(r["N"]), f"{r['e2e_images_per_s']:.0f}", f"{r['inprocess_model_images_per_s']:.0f}",
                        f"{r['inprocess_collapsed_images_per_s']:.0f}", f"{r['e2e_over_inprocess_model']:.2f}",
                        f"{r['e2e_over_inprocess_collapsed']:.2f}",
                        "–" if not r.get("bytes_sent_expected") else f"{r['bytes_sent'] / r['bytes_sent_expected']:.4f}"]
                       for r in e2e])
        if all("cpu_ms" in r for r in e2e):
            out += [f"CPU per run (ms; medians over the repeats) and the ceiling it puts on e2e ÷ collapsed with every one of the "
                    f"{e2e[0].get('cores', '–')} cores busy: in-process wall time ÷ (distributed CPU ÷ cores)", ""]
            out += _table(["model", "N", "master encode", "master event loop", "workers", "distributed total", "in-process",
                           "ceiling on e2e ÷ collapsed"],
                          [[r["label"], str(r["N"]), f"{r['cpu_ms']['master_encode']:.0f}", f"{r['cpu_ms']['master_loop']:.0f}",
                            f"{r['cpu_ms']['workers']:.0f}", f"{r['cpu_ms']['distributed']:.0f}",
                            f"{r['cpu_ms']['inprocess_collapsed']:.0f}", f"{r['cpu_bound_ratio']:.2f}"] for r in e2e])

    lat = result.get("latency")
    if lat:
        out += ["**Single-request latency** (one group per request, sequential, no injected delay; overhead = e2e − in-process "
                "encode (in the master's precision, its networks side by side as the master runs a lone request) + H + decode of the same group, measured alternately, per pair; "
                f"{lat[0].get('rounds', 1)} rounds with fresh workers, overhead p50 = the median of the rounds' p50s (each in brackets); "
                "ping = Ping/Pong round trip on one authenticated connection, the transport alone)", ""]
        rounds = lambda r: " (" + ", ".join(f"{x:.2f}" for x in r["overhead_ms"].get("p50_rounds", [])) + ")" if r["overhead_ms"].get("p50_rounds") else ""
        idle = next((list(r["ping_after_idle_ms"]) for r in lat if "ping_after_idle_ms" in r), None)
        out += _table(["model", "N", "requests", "e2e p50", "e2e p99", "in-process", "overhead p50", "overhead p99", "ping p50 / p99",
                       "ping p50 after " + (" / ".join(idle) + " ms idle" if idle else "idle")],
                      [[r["label"], str(r["N"]), str(r["requests"]), f"{r['e2e_ms']['p50']:.2f} ms", f"{r['e2e_ms']['p99']:.2f} ms",
                        f"{r['inprocess_ms']['total']:.2f} ms", f"{r['overhead_ms']['p50']:.2f} ms{rounds(r)}", f"{r['overhead_ms']['p99']:.2f} ms",
                        "–" if "ping_rtt_ms" not in r else f"{r['ping_rtt_ms']['p50']:.2f} / {r['ping_rtt_ms']['p99']:.2f} ms",
                        "–" if "ping_after_idle_ms" not in r else
                        " / ".join(f"{v['p50']:.2f}" for v in r["ping_after_idle_ms"].values()) + " ms"]
                       for r in lat])
        staged = [r for r in lat if "stages_p50_ms" in r]
        if staged:
            out += ["", "Where a request's time went (p50 of each stage, ms, from Master.infer's timings): queued for the "
                    "encoder; encode (its thread's start until the event loop holds the frames: both thread hops and the "
                    "framing included) against the in-process encode; from the sends to the first and to the R-th result "
                    "against the in-process H and the ping; decode; the rest (the awaiting task's wake-ups)", ""]
            out += _table(["model", "queue", "encode (in-process)", "first result", "R-th result (in-process H)", "decode", "rest"],
                          [[r["label"], f"{st['queue']:.3f}", f"{st['encode']:.2f} ({r['inprocess_ms']['encode']:.2f})",
                            f"{st['first_result']:.2f}", f"{st['rth_result']:.2f} ({r['inprocess_ms']['worker_compute']:.3f})",
                            f"{st['decode']:.3f}", f"{st['rest']:.3f}"] for r in staged for st in [r["stages_p50_ms"]]])

    small = result.get("small_requests")
    if small:
        out += [f"**Small requests under load** (one group per request, closed loop: `concurrency` clients, "
                f"{small[0]['seconds_per_cell']:g} s per cell, median of {small[0]['rounds']} rounds, both settings "
                "alternating on the same workers; 'alone' encodes each request by itself, 'coalesced' encodes the "
                "requests waiting for the encoder in one call (Master.coalesce_groups); master CPU = the master "
                "process's CPU time per image)", ""]
        cell = lambda c: (f"{c['images_per_s']:.0f} img/s, p50 {c['p50_ms']:.1f} / p99 {c['p99_ms']:.1f} ms, "
                          f"{c['master_cpu_ms_per_image']:.2f} ms CPU, {c['requests_per_encoder_call']:.1f} req/call")
        out += _table(["model", "N", "concurrency", "alone", "coalesced", "coalesced ÷ alone (img/s)"],
                      [[r["label"], str(r["N"]), str(r["concurrency"]), cell(r["alone"]), cell(r["coalesced"]),
                        f"{r['coalesced_over_alone']:.2f}"] for r in small])

    mem = result.get("memory")
    if mem:
        out += [f"**Master memory**: {mem['requests']} requests × {mem['groups_per_request']} groups in flight "
                f"(max {mem['max_pending']} pending at once; workers hold each answer {mem['answer_delay_s']} s; {mem['label']}, N={mem['N']}): "
                f"peak RSS +{_si(mem['peak_delta'], 'B')} = {mem['peak_delta_over_payload']:.2f}× the encoded payloads "
                f"({_si(mem['payload_bytes_in_flight'], 'B')}), {_si(mem['peak_delta_per_request'], 'B')} per request; "
                f"{mem['failed']} failed; worker peak +{_si(max(mem['worker_peak_delta'] or [0]), 'B')}.", ""]

    cs = result.get("costs")
    if cs:
        out += ["**Who computes what** (per group of K images; FLOPs = 2×MACs; bytes = float32 payload, "
                "frame overhead spread over 64-group requests in the 'framed' column; shared-placement worker FLOPs as "
                "SharedCompute runs them, with the collapsed-H figure in brackets)", ""]
        rows = []
        for r in cs["rows"]:
            if r["N"] != 3 and any(o["name"] == r["name"] and o["N"] == 3 for o in cs["rows"]):
                continue
            f, b = r["flops"], r["bytes"]
            worker = _si(f["worker"]) + ("" if f["worker_if_collapsed"] == f["worker"] else f" ({_si(f['worker_if_collapsed'])})")
            rows.append([r["name"], r["placement"], str(r["N"]), _si(f["master"]), worker, _si(f["centralized_cnn"]),
                         _si(b["up_per_worker"], "B"), f"{b['up_per_worker_framed']:.0f} B", _si(b["down_per_worker"], "B"),
                         _si(b["wire_total"], "B"), _si(r["weights_bytes"]["master"], "B"), _si(r["weights_bytes"]["worker"], "B")])
        out += _table(["scheme", "placement", "N", "master FLOPs", "worker FLOPs", "centralized CNN FLOPs",
                       "up/worker", "up/worker framed", "down/worker", "wire total", "master weights", "worker weights"], rows)
    errors = meta.get("errors")
    if errors:
        out += ["Sections that failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), ""]
    return "\n".join(out)
