"""`edgecc scenario sweep`: tail latency against offered load, for every scheme of a scenario.

The scenario is run once per arrival rate with open-loop Poisson arrivals (same seeds, so every
scheme meets the same arrival times and the same injected delays at every rate). For each scheme
and rate: p50, p99 and p99.9 of the decoded requests, and how many requests were shed or failed.
A scheme's *saturation throughput* is the first offered load at which its p99 exceeds 10x its
unloaded p99 (the p99 at the lowest rate swept), or at which it decodes fewer than 99% of requests —
past that point it no longer keeps up. This is how a user compares schemes under load (the method
of ParM, Kosaian et al., SOSP 2019).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence


from ..errors import ConfigError
from ..fileio import atomic_write
from .report import percentile
from .spec import Arrival, Scenario

SATURATION_FACTOR = 10.0  # p99 above this multiple of the unloaded p99 counts as saturated
MIN_DECODED = 0.99  # ... as does decoding fewer than this fraction of the requests


def rate_scenario(scenario: Scenario, rate: float, duration_s: float | None) -> Scenario:
    """The scenario with Poisson arrivals at `rate` requests/s (and `rate * duration_s` requests)."""
    if not rate > 0:
        raise ConfigError(f"rates must be > 0 requests/s, got {rate!r}")
    requests = scenario.requests if duration_s is None else max(20, int(round(rate * duration_s)))
    return replace(scenario, name=f"{scenario.name}@{rate:g}", requests=requests, arrival=Arrival("poisson", rate=rate))


def latency_row(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99/p99.9 of the decoded requests, and the outcome counts, from requests.json records."""
    lat = [r["latency_ms"] for r in records if r["latency_ms"] is not None]
    outcomes: dict[str, int] = {}
    for r in records:
        kind = r.get("outcome") or ("decoded" if r["latency_ms"] is not None else "failed")
        outcomes[kind] = outcomes.get(kind, 0) + 1
    return {"requests": len(records), "decoded": len(lat), "decoded_fraction": len(lat) / max(1, len(records)),
            "outcomes": outcomes, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "p999_ms": percentile(lat, 99.9)}


def cpu_row(stats: dict[str, Any]) -> dict[str, Any]:
    """Where the CPU went at one rate, in cores busy (CPU seconds over the run's wall time): the master's
    encoder, its event loop (and the request driver), the workers; {} for a run that did not measure it."""
    cpu, elapsed = stats.get("cpu_s"), stats.get("elapsed_s")
    if not cpu or not elapsed:
        return {}
    return {"cpu_cores": {k: None if v is None else v / elapsed for k, v in cpu.items()}}


def saturation(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """First offered load (requests/s) at which a scheme saturates, and the last it sustained."""
    base = next((r["p99_ms"] for r in rows if r["p99_ms"] is not None), None)
    sustained = None
    for r in rows:
        bad = (r["p99_ms"] is None or base is None or r["p99_ms"] > SATURATION_FACTOR * base
               or r["decoded_fraction"] < MIN_DECODED)
        if bad:
            return {"unloaded_p99_ms": base, "saturated_at_rate": r["rate"], "sustained_rate": sustained}
        sustained = r["rate"]
    return {"unloaded_p99_ms": base, "saturated_at_rate": None, "sustained_rate": sustained}


def run_sweep(scenario: Scenario, rates: Sequence[float], out_dir: str | Path, duration_s: float | None = None,
              progress_factory=None) -> dict[str, Any]:
    """Run `scenario` at each rate; write sweep.json, sweep.md and sweep.png into `out_dir`."""
    from .runner import run_scenario

    rates = sorted(float(r) for r in rates)
    if not rates:
        raise ConfigError("a sweep needs at least one rate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, list[dict[str, Any]]] = {}
    images_per_request = None
    for rate in rates:
        sc = rate_scenario(scenario, rate, duration_s)
        run_dir = out / f"rate-{rate:g}"
        run_scenario(sc, run_dir, progress_factory)
        per_request = json.loads((run_dir / "requests.json").read_text())
        stats = json.loads((run_dir / "report.json").read_text())["scenario"]["master_stats"]
        for scheme, records in per_request.items():
            if images_per_request is None and records:
                images_per_request = records[0]["total"]
            table.setdefault(scheme, []).append({"rate": rate, **latency_row(records), **cpu_row(stats.get(scheme, {}))})
    result = {
        "scenario": scenario.name, "source": scenario.source, "rates": rates, "duration_s": duration_s,
        "images_per_request": images_per_request, "cpus": os.cpu_count(), "schemes": table,
        "saturation": {s: saturation(rows) for s, rows in table.items()},
        "saturation_rule": f"p99 > {SATURATION_FACTOR:g}x the p99 at the lowest rate, or < {MIN_DECODED:.0%} decoded",
    }
    atomic_write(out / "sweep.json", json.dumps(result, indent=1).encode())
    atomic_write(out / "sweep.md", render_markdown(result).encode())
    plot_sweep(result, out / "sweep.png")
    return result


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def render_markdown(result: dict[str, Any]) -> str:
    ipr = result["images_per_request"] or 1
    lines = [f"## Load sweep: {result['scenario']}", "",
             "| scheme | requests/s | images/s | p50 ms | p99 ms | p99.9 ms | decoded | shed | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scheme, rows in result["schemes"].items():
        for r in rows:
            o = r["outcomes"]
            lines.append(f"| {scheme} | {r['rate']:g} | {r['rate'] * ipr:g} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
                         f"| {_fmt(r['p999_ms'])} | {r['decoded']}/{r['requests']} | {o.get('shed', 0)} | {o.get('failed', 0)} |")
    if any("cpu_cores" in r for rows in result["schemes"].values() for r in rows):
        cpus = result.get("cpus")
        lines += ["", "CPU at each rate, in cores busy (CPU seconds over the run's wall time"
                  + (f"; the machine has {cpus}" if cpus else "") + "): the master's encoder threads, the rest of the "
                  "master process (event loop: framing, sends, results, decoding; and the request driver), the workers.", "",
                  "| scheme | requests/s | encoder | event loop | workers | total |", "|---|---|---|---|---|---|"]
        for scheme, rows in result["schemes"].items():
            for r in rows:
                c = r.get("cpu_cores")
                if c:
                    parts = [c["encoder"], c["event_loop"], c["workers"]]
                    total = sum(p for p in parts if p is not None)
                    lines.append(f"| {scheme} | {r['rate']:g} | " + " | ".join("–" if p is None else f"{p:.2f}" for p in parts)
                                 + f" | {total:.2f} |")
    lines += ["", f"Saturation ({result['saturation_rule']}):", "",
              "| scheme | unloaded p99 ms | sustained up to (requests/s) | saturated at (requests/s) |", "|---|---|---|---|"]
    for scheme, s in result["saturation"].items():
        sat = "not within the sweep" if s["saturated_at_rate"] is None else f"{s['saturated_at_rate']:g}"
        sus = "–" if s["sustained_rate"] is None else f"{s['sustained_rate']:g}"
        lines.append(f"| {scheme} | {_fmt(s['unloaded_p99_ms'])} | {sus} | {sat} |")
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """p50 (dotted), p99 (solid) and p99.9 (dashed) against offered load, one colour per scheme."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report extra is optional; the table carries the same numbers
        return
    ipr = result["images_per_request"] or 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (scheme, rows) in enumerate(result["schemes"].items()):
        color = f"C{i}"
        x = [r["rate"] * ipr for r in rows]
        for key, style, label in (("p50_ms", ":", "p50"), ("p99_ms", "-", "p99"), ("p999_ms", "--", "p99.9")):
            pts = [(a, r[key]) for a, r in zip(x, rows) if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o", ms=3, label=f"{scheme} {label}")
    ax.set_xlabel("offered load (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Load sweep: {result['scenario']}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
