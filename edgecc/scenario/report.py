"""Scenario reports: per-request records in; report.json, report.md and two PNG plots out.

report.json also holds each scheme's per-worker usage over time (which workers each decode used),
plotted in usage_over_time.png, when `meta` gives N.

Input: for each scheme name, a list of per-request records (`RequestRecord` or a plain dict
with the same keys):

    {"request": 17,            # request id
     "latency_ms": 12.5,       # end-to-end latency at the master; None = not decoded (failed)
     "correct": 2, "total": 2, # correctly classified images / images in the request
     "oracle_ms": 6.1,         # latency an ideal scheme would get (optional, None = unknown)
     "bytes_sent": 3136,       # bytes the master sent for this request (its own frames only)
     "outcome": "decoded",     # optional: "decoded", "failed", or "shed" (refused by an overloaded master)
     "t_s": 4.2,               # optional: when it arrived, seconds from the first worker's start
     "workers": [0, 2],        # optional: the workers its answer was decoded from
     "stages_ms": {"queue": 0.1, "encode": 3.2, "workers": 6.0, "decode": 0.2}}   # optional

Percentiles use numpy's default (linear interpolation between order statistics). Latency and
accuracy statistics cover decoded requests only; `decoded_fraction` says how many those are.
The plot data come from plain functions (`cdf_points`, `accuracy_p99_points`) so tests check
numbers, not pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..fileio import atomic_write


OUTCOMES = ("decoded", "failed", "shed")


@dataclass(frozen=True)
class RequestRecord:
    request: int
    latency_ms: float | None  # None: the request was never decoded
    correct: int
    total: int
    oracle_ms: float | None = None
    bytes_sent: int = 0
    outcome: str | None = None  # None: "decoded" when latency_ms is set, else "failed"
    t_s: float | None = None
    workers: list[int] | None = None
    stages_ms: dict[str, float] | None = None  # where the time went at the master, e.g. {"queue": 0.1, "encode": 3.2}

    def __post_init__(self) -> None:
        if self.outcome is None:
            object.__setattr__(self, "outcome", "decoded" if self.latency_ms is not None else "failed")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"request {self.request}: outcome must be one of {', '.join(OUTCOMES)}, got {self.outcome!r}")
        if (self.outcome == "decoded") != (self.latency_ms is not None):
            raise ValueError(f"request {self.request}: a {self.outcome} request "
                             f"{'needs' if self.outcome == 'decoded' else 'has no'} latency_ms")
        for name in ("latency_ms", "oracle_ms"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"request {self.request}: {name} must be finite and >= 0, got {v!r}")
        if not 0 <= self.correct <= self.total:
            raise ValueError(f"request {self.request}: need 0 <= correct <= total, "
                             f"got {self.correct}/{self.total}")
        if self.bytes_sent < 0:
            raise ValueError(f"request {self.request}: bytes_sent must be >= 0")

    @property
    def decoded(self) -> bool:
        return self.latency_ms is not None


Record = Union[RequestRecord, Mapping[str, Any]]
Results = Mapping[str, Sequence[Record]]  # scheme name -> records


@dataclass(frozen=True)
class SchemeSummary:
    requests: int
    decoded_fraction: float  # decoded requests / requests
    failed: int  # not decoded within the deadline, or no longer decodable
    shed: int  # refused by an overloaded master (counted apart from failures)
    p50_ms: float | None  # None when nothing was decoded
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    accuracy: float | None  # percent of images correct, over decoded requests
    bytes_sent: int  # total over all requests, failed ones included
    oracle_p50_ms: float | None
    oracle_p99_ms: float | None
    stages_ms: dict[str, dict[str, float]] | None = None  # stage -> {"p50", "p99"} over decoded requests


def as_records(records: Sequence[Record]) -> list[RequestRecord]:
    return [r if isinstance(r, RequestRecord) else RequestRecord(**r) for r in records]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


def summarize(records: Sequence[Record]) -> SchemeSummary:
    recs = as_records(records)
    decoded = [r for r in recs if r.decoded]
    lat = [r.latency_ms for r in decoded]
    oracle = [r.oracle_ms for r in recs if r.oracle_ms is not None]
    total = sum(r.total for r in decoded)
    return SchemeSummary(
        requests=len(recs),
        decoded_fraction=len(decoded) / len(recs) if recs else 0.0,
        failed=sum(r.outcome == "failed" for r in recs),
        shed=sum(r.outcome == "shed" for r in recs),
        p50_ms=percentile(lat, 50),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        mean_ms=float(np.mean(lat)) if lat else None,
        accuracy=100.0 * sum(r.correct for r in decoded) / total if total else None,
        bytes_sent=sum(r.bytes_sent for r in recs),
        oracle_p50_ms=percentile(oracle, 50),
        oracle_p99_ms=percentile(oracle, 99),
        stages_ms=_stages(decoded),
    )


def cdf_points(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF of latency: xs sorted decoded latencies (ms), ys = (i+1)/requests.

    Dividing by all requests, not just decoded ones, makes the curve level off at the decoded
    fraction, so failures stay visible on the plot.
    """
    recs = as_records(records)
    xs = np.sort(np.array([r.latency_ms for r in recs if r.decoded], dtype=float))
    ys = np.arange(1, len(xs) + 1, dtype=float) / max(len(recs), 1)
    return xs, ys


def accuracy_p99_points(summaries: Mapping[str, SchemeSummary]) -> list[tuple[str, float, float]]:
    """(scheme, p99_ms, accuracy) per scheme; schemes that decoded nothing have no point."""
    return [(name, s.p99_ms, s.accuracy) for name, s in summaries.items()
            if s.p99_ms is not None and s.accuracy is not None]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _stages(decoded: Sequence[RequestRecord]) -> dict[str, dict[str, float]] | None:
    names = sorted({k for r in decoded if r.stages_ms for k in r.stages_ms})
    out = {}
    for k in names:
        v = [r.stages_ms[k] for r in decoded if r.stages_ms and k in r.stages_ms]
        out[k] = {"p50": percentile(v, 50), "p99": percentile(v, 99)}
    return out or None


def stages_markdown(summaries: Mapping[str, SchemeSummary]) -> str:
    """Where decoded requests spent their time at the master (p50 / p99 per stage); "" without data."""
    names = [k for k in ("queue", "encode", "workers", "decode")
             if any(s.stages_ms and k in s.stages_ms for s in summaries.values())]
    if not names:
        return ""
    rows = ["", "## Where the time went (decoded requests, p50 / p99 ms)", "",
            "queue: waiting for the master to take it; encode: the master's encoding; workers: from the first "
            "send until enough answers were in; decode: the master's decoding.", "",
            "| scheme | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, s in summaries.items():
        cells = [f"{_fmt(s.stages_ms[k]['p50'])} / {_fmt(s.stages_ms[k]['p99'])}" if s.stages_ms and k in s.stages_ms
                 else "—" for k in names]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def render_markdown(summaries: Mapping[str, SchemeSummary], title: str = "Scenario report") -> str:
    head = ("| scheme | requests | decoded | failed | shed | p50 ms | p95 ms | p99 ms | mean ms | accuracy % "
            "| oracle p50 ms | oracle p99 ms | bytes sent |")
    rows = [f"# {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in summaries.items():
        rows.append(
            f"| {name} | {s.requests} | {100 * s.decoded_fraction:.1f}% | {s.failed} | {s.shed} | {_fmt(s.p50_ms)} "
            f"| {_fmt(s.p95_ms)} | {_fmt(s.p99_ms)} | {_fmt(s.mean_ms)} | {_fmt(s.accuracy, 2)} "
            f"| {_fmt(s.oracle_p50_ms)} | {_fmt(s.oracle_p99_ms)} | {s.bytes_sent} |")
    return "\n".join(rows) + "\n"


def _save_figure(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())


def plot_latency_cdf(results: Results, path: Path) -> None:
    # Figure + Agg canvas, not pyplot: no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_xs = []
    for name, records in results.items():
        xs, ys = cdf_points(records)
        all_xs.extend(xs)
        ax.step(xs, ys, where="post", label=name)
    if all_xs and min(all_xs) > 0:
        ax.set_xscale("log")  # straggler tails span decades
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests decoded")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_accuracy_vs_p99(summaries: Mapping[str, SchemeSummary], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, p99, acc in accuracy_p99_points(summaries):
        ax.scatter([p99], [acc], label=name)
    if ax.collections:
        ax.legend()  # a legend, not labels at the points: schemes often land on one spot
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def usage_timeline(records: Sequence[Record], n_workers: int, bin_s: float = 1.0) -> dict[str, Any]:
    """Per `bin_s` bin of arrival time (t_s): requests decoded, and per worker how many of them were
    decoded from its answer. Records without t_s or workers are left out."""
    recs = [r for r in as_records(records) if r.t_s is not None and r.workers is not None]
    n_bins = int(max((r.t_s for r in recs), default=0.0) / bin_s) + 1 if recs else 0
    decoded = [0] * n_bins
    used = [[0] * n_bins for _ in range(n_workers)]
    for r in recs:
        b = int(r.t_s / bin_s)
        decoded[b] += 1
        for w in r.workers:
            if 0 <= w < n_workers:
                used[w][b] += 1
    return {"bin_s": bin_s, "decoded": decoded, "used_by_worker": used}


def phase_usage(records: Sequence[Record], worker: int, bounds: Sequence[float]) -> list[tuple[float, float, int, int]]:
    """(start_s, end_s, decoded requests arriving then, how many used `worker`) per phase between `bounds`."""
    edges = [0.0, *sorted(bounds), math.inf]
    recs = [r for r in as_records(records) if r.t_s is not None and r.workers is not None]
    out = []
    for a, b in zip(edges, edges[1:]):
        inside = [r for r in recs if a <= r.t_s < b]
        out.append((a, b, len(inside), sum(worker in r.workers for r in inside)))
    return out


def links_markdown(links: Sequence[Mapping[str, Any] | None], measured: Mapping[str, Mapping[str, Any] | None],
                   results: Results, connects: Mapping[str, Sequence[int]] | None = None,
                   notes: Sequence[str] = ()) -> str:
    """Markdown for a scenario with real links: `notes` (e.g. what is shaped in the kernel and what is
    injected), each link as configured and as measured per scheme (with how often the master connected
    to that worker, when `connects` gives it), and, for links with events, how often each scheme
    decoded from that worker before, during and after."""
    rows = ["", "## Links", "", *(f"- {n}" for n in notes), *([""] if notes else []),
            "Configured: tc tbf rate both ways. Measured: the master-side veth's byte counters (includes TCP/IP headers "
            "and acks), mean over the scheme's run and the busiest 1 s. Connects: connections the master made to "
            "the worker (1 = never dropped).", "",
            "| scheme | worker | configured Mbit/s | events | mean to / from Mbit/s | peak 1 s to / from Mbit/s "
            "| MB to / from | connects |", "|---|---|---|---|---|---|---|---|"]
    for name, m in measured.items():
        if not m:
            continue
        counts = list((connects or {}).get(name) or [])
        for link in m["links"]:
            w = link["worker"]
            n_conn = str(counts[w]) if w < len(counts) else "—"  # uncoded talks to only K of the N
            cfg = link["configured"]
            events = ", ".join(f"{e['kind']}{' ' + format(e['rate_mbit'], 'g') if e.get('rate_mbit') else ''} "
                               f"@{e['at_s']:g}s (applied {e['applied_at_s']:.2f}s)" for e in link["events_applied"])
            rows.append(f"| {name} | {link['worker']} | {'unshaped' if cfg is None else format(cfg['rate_mbit'], 'g')} "
                        f"| {events or '—'} | {link['mean_mbit_to_worker']:.3f} / {link['mean_mbit_from_worker']:.3f} "
                        f"| {link['peak_mbit_to_worker']:.3f} / {link['peak_mbit_from_worker']:.3f} "
                        f"| {link['bytes_to_worker'] / 1e6:.2f} / {link['bytes_from_worker'] / 1e6:.2f} | {n_conn} |")
    with_events = [(i, cfg) for i, cfg in enumerate(links) if cfg and cfg["events"]]
    for i, cfg in with_events:
        times = sorted({e["at_s"] for e in cfg["events"]})
        at = {t: " + ".join(e["kind"] for e in cfg["events"] if e["at_s"] == t) for t in times}
        labels = ([f"before {at[times[0]]}"] + [f"{at[a]} to {at[b]}" for a, b in zip(times, times[1:])]
                  + [f"after {at[times[-1]]}"])
        rows += ["", f"### Worker {i}: decodes that used it, by arrival time (events: "
                 + ", ".join(f"{e['kind']} at {e['at_s']:g} s" for e in cfg["events"]) + " after its start)", "",
                 "Phases on the worker's own clock: its events' times plus when it started (when the runner saw it "
                 "listening).", "",
                 "| scheme | worker started at s | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for name, recs in results.items():
            offset = _started_at(measured.get(name), i)
            cells = [f"{used}/{n}" for _, _, n, used in phase_usage(recs, i, [t + offset for t in times])]
            rows.append(f"| {name} | {offset:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _started_at(measured: Mapping[str, Any] | None, worker: int) -> float:
    """When `worker` started, in seconds from the first worker's start (0 when not measured)."""
    for link in (measured or {}).get("links", []):
        if link["worker"] == worker:
            return float(link.get("started_at_s", 0.0))
    return 0.0


def plot_usage(usage: Mapping[str, Mapping[str, Any]], path: Path,
               events: Mapping[str, Sequence[tuple[float, str]]] | None = None) -> None:
    """One panel per scheme: per worker, the fraction of each bin's decoded requests that used its
    answer, over arrival time; dashed lines at that scheme's link events (seconds, label)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.2 * len(usage) + 0.6))
    FigureCanvasAgg(fig)
    for row, (name, u) in enumerate(usage.items()):
        ax = fig.add_subplot(len(usage), 1, row + 1)
        decoded = np.array(u["decoded"], dtype=float)
        xs = (np.arange(len(decoded)) + 0.5) * u["bin_s"]
        for w, used in enumerate(u["used_by_worker"]):
            frac = np.divide(np.array(used, dtype=float), decoded, out=np.full(len(decoded), np.nan), where=decoded > 0)
            if np.nansum(frac) > 0:
                ax.plot(xs, frac, marker=".", label=f"worker {w}")
        for at, label in (events or {}).get(name, ()):
            ax.axvline(at, color="k", linestyle="--", alpha=0.5)
            ax.annotate(label, (at, 1.02), fontsize=7, ha="center")
        ax.set_ylim(-0.02, 1.1)
        ax.set_ylabel(f"{name}\nshare of decodes")
        ax.grid(True, alpha=0.3)
        if row == 0:
            ax.legend(fontsize=7, ncol=5, loc="lower left")
    ax.set_xlabel("request arrival (s from the workers' start)")
    fig.tight_layout()
    _save_figure(fig, path)


def all_fast_markdown(summaries: Mapping[str, SchemeSummary]) -> str:
    """For each scheme run both on the scenario's links and as "<scheme>@all-fast": p50 and p99 side by
    side, and the p99 ratio; "" when no scheme has an all-fast twin."""
    pairs = [(name, summaries[name], summaries[f"{name}@all-fast"]) for name in summaries
             if f"{name}@all-fast" in summaries]
    if not pairs:
        return ""
    rows = ["", "## The scenario's links against all links fast (same run, back to back)", "",
            "| scheme | p50 ms | p50 ms all fast | p99 ms | p99 ms all fast | p99 / p99 all fast "
            "| p99 - (1.5 x p99 all fast + 20 ms) |", "|---|---|---|---|---|---|---|"]
    for name, slow, fast in pairs:
        ratio = slow.p99_ms / fast.p99_ms if slow.p99_ms is not None and fast.p99_ms else None
        margin = slow.p99_ms - (1.5 * fast.p99_ms + 20) if slow.p99_ms is not None and fast.p99_ms is not None else None
        rows.append(f"| {name} | {_fmt(slow.p50_ms)} | {_fmt(fast.p50_ms)} | {_fmt(slow.p99_ms)} | {_fmt(fast.p99_ms)} "
                    f"| {_fmt(ratio, 2)} | {_fmt(margin)} |")
    return "\n".join(rows) + "\n"


def _plot_events(meta: Mapping[str, Any], names: Sequence[str]) -> dict[str, list[tuple[float, str]]]:
    """Per scheme, (time on the requests' clock, label) of each link event: as applied where the run
    measured its links, else as configured."""
    measured = (meta.get("links") or {}).get("measured") or {}
    out = {}
    for name in names:
        if measured.get(name):
            out[name] = [(e["applied_t_s"], f"w{link['worker']} {e['kind']}") for link in measured[name]["links"]
                         for e in link["events_applied"] if "applied_t_s" in e]
        else:
            out[name] = sorted({(e["at_s"], f"w{i} {e['kind']}") for i, w in enumerate(meta.get("workers") or [])
                                if isinstance(w, Mapping) and w.get("link") for e in w["link"]["events"]})
    return out


def write_report(results: Results, out_dir: str | Path, *, title: str = "Scenario report",
                 meta: Mapping[str, Any] | None = None, extra_markdown: str = "") -> dict[str, SchemeSummary]:
    """Write report.json, report.md, latency_cdf.png and accuracy_vs_p99.png into `out_dir`.

    `meta` (e.g. `Scenario.to_dict()`) is stored as-is under "scenario" in report.json; when it
    gives N, report.json also holds each scheme's per-worker usage over time. `extra_markdown` is
    appended to report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {name: summarize(recs) for name, recs in results.items()}
    doc = {"title": title, "scenario": dict(meta) if meta else None,
           "schemes": {name: asdict(s) for name, s in summaries.items()}}
    if meta and "N" in meta:
        doc["usage"] = {name: usage_timeline(recs, int(meta["N"])) for name, recs in results.items()}
        if any(u["decoded"] for u in doc["usage"].values()):
            plot_usage(doc["usage"], out / "usage_over_time.png", _plot_events(meta, list(results)))
    # allow_nan=False: the file must stay valid JSON for any reader.
    atomic_write(out / "report.json",
                  (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    atomic_write(out / "report.md", (render_markdown(summaries, title) + all_fast_markdown(summaries)
                                      + stages_markdown(summaries) + extra_markdown).encode())
    plot_latency_cdf(results, out / "latency_cdf.png")
    plot_accuracy_vs_p99(summaries, out / "accuracy_vs_p99.png")
    return summaries
