"""Scenario files: TOML in, a frozen, validated `Scenario` out.

A scenario fixes everything an experiment needs so that every scheme meets the same stragglers:
the model, the images, the request stream, and how each of the N workers behaves. Schema
(every key optional except that N must follow from `N` or `[[workers]]`):

    name = "one-straggler"     # default: the file name without .toml
    seed = 7                   # default 0; fixes every injected delay and failure
    images = "sample"          # "sample" (shipped 1000 images), "test", or a path to a .npz
    requests = 200             # default 100; each request is `groups_per_request` groups of K images
    groups_per_request = 1
    schemes = ["aicc", "uncoded", "replication"]   # the default (schemes.registry.DEFAULT_SCHEMES); any
                               # registered scheme (`edgecc schemes` lists them); same delays for all
    K = 2                      # images per group; default: the K the schemes' models fix (the AICC model's), else 2
    timeout_s = 5.0            # per-request deadline at the master
    backend = "tcp"            # where the workers run: "tcp", local processes; "ray", Ray actors
                               # (pip install 'edgecc[ray]'; docs/ray.md)
    N = 3                      # number of workers; may be left out when [[workers]] are listed
    shared_data = "images"     # what a shared-placement plan sends: "images" (the pixels), or "indices"
                               # into `images`, which every worker then holds (`edgecc worker --dataset`;
                               # Remark 1); other placements ignore it

    [options.aicc]             # a scheme's own options (schemes/builtin.py declares each one's), for
    model = "default"          # one of the schemes listed: e.g. AICC's model ("default": the shipped
    placement = "encoded"      # K=2 G=1 model, or a .safetensors path), placement ("encoded": the master
    encode_precision = "auto"  # encodes; "shared": workers hold the encoder) and encoder precision
    [options.learned-code]
    model = "learned-code"     # the shipped learned code, or a .safetensors path

    [arrival]
    process = "closed"         # "closed": `concurrency` requests in flight; "poisson": open loop
    concurrency = 1            # closed loop only
    rate = 50.0                # requests/s; required for poisson, ignored for closed

    [defaults]                 # applied to every worker; a worker's own key replaces it whole
    latency = { dist = "constant", value = 0.005 }

    [[workers]]                # exactly N tables when both are given
    latency = { dist = "exponential", mean = 0.050 }   # seconds; see latency.py for every dist
    failure = { kind = "crash_at", at_s = 2.0 }        # or a list of failure tables
    slowdown = 1.0             # multiplies the worker's sampled delays
    link = { rate_mbit = 2.0 } # a real, shaped link (needs root and iproute2; see below)

    [workers.link]             # the same as an inline table; every key but rate_mbit optional
    rate_mbit = 2.0            # tc tbf rate, both directions (master -> worker and back)
    burst = 32768              # bytes sent at line rate before the rate applies; default: 10 ms at
                               # the link's fastest rate, at least 3028 (two full frames)
    queue_ms = 100.0           # how long a packet may wait in the shaper before it is dropped (default 100)
    down_at_s = [6.0]          # the link goes down (a silent cut: no carrier, packets lost) at these
    up_at_s = [12.0]           # ...and up again at these; both seconds from the worker's start
    rate_changes = [{ at_s = 4.0, rate_mbit = 0.5 }]   # the rate from at_s on

    also_all_fast = true       # top level: also run every scheme with every link at the fastest rate

A scenario with a `link` on any worker runs every worker in its own network namespace behind a
veth pair (edgecc.scenario.links): real TCP, shaped by the kernel. Workers without a link get an
unshaped veth. Such a scenario needs root and iproute2 and is refused otherwise; scenarios without
links run on loopback, unprivileged. A `bandwidth_mbit` key (found in older scenario files; it
shaped nothing) is refused with the `link` table to write instead.

Relative paths (model, images, trace files) are relative to the scenario file. Unknown keys and
bad values raise `ConfigError("<file>:<line>: <field path>: <reason>")`, e.g. the field path
`workers[2].latency.mean`; the line is found by searching the text, so it is best-effort.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecc.errors import ConfigError
from edgecc.schemes import registry
from edgecc.scenario.latency import (
    Constant, Distribution, Failure, FieldError, WorkerBehaviour, as_int, as_number, as_table,
    check_keys, parse_failures, parse_latency,
)

DEFAULT_SCHEMES = registry.DEFAULT_SCHEMES  # what a scenario runs when it names no schemes
ARRIVAL_PROCESSES = ("closed", "poisson")
SHARED_DATA = ("images", "indices")  # what a shared-placement plan sends (Scenario.shared_data)
BACKENDS = ("tcp", "ray")  # worker processes on this machine (launch/local.py), Ray actors (launch/ray_workers.py)

_TOP_KEYS = {"name", "seed", "N", "K", "images", "requests", "groups_per_request", "schemes", "options", "timeout_s",
             "arrival", "defaults", "workers", "also_all_fast", "backend", "shared_data"}
_WORKER_KEYS = {"latency", "failure", "slowdown", "link", "bandwidth_mbit"}
_LINK_KEYS = {"rate_mbit", "burst", "queue_ms", "down_at_s", "up_at_s", "rate_changes"}
MIN_BURST = 3028  # two full Ethernet frames: tbf drops any packet larger than its bucket


@dataclass(frozen=True)
class Arrival:
    process: str = "closed"  # "closed" or "poisson"
    concurrency: int = 1  # requests kept in flight (closed loop)
    rate: float | None = None  # requests/s (poisson; required there)


@dataclass(frozen=True)
class LinkEvent:
    at_s: float  # seconds after the worker started
    kind: str  # "down", "up" or "rate"
    rate_mbit: float | None = None  # kind "rate" only


@dataclass(frozen=True)
class LinkSpec:
    """One worker's link to the master, shaped in the kernel (tc tbf) in both directions."""
    rate_mbit: float
    burst: int | None = None  # bytes; None: max(MIN_BURST, 10 ms at the highest rate)
    queue_ms: float = 100.0  # tbf latency: the longest a packet waits before it is dropped
    outages: tuple[tuple[float, float | None], ...] = ()  # (down_at_s, up_at_s or None = stays down)
    rate_changes: tuple[tuple[float, float], ...] = ()  # (at_s, rate_mbit)

    @property
    def peak_rate_mbit(self) -> float:
        return max([self.rate_mbit, *(r for _, r in self.rate_changes)])

    @property
    def burst_bytes(self) -> int:
        return self.burst if self.burst is not None else max(MIN_BURST, int(self.peak_rate_mbit * 1e6 / 8 * 0.010))

    def events(self) -> list[LinkEvent]:
        """Every change after the start, in time order (at equal times: rate, then down, then up)."""
        out = [LinkEvent(at, "rate", r) for at, r in self.rate_changes]
        for down, up in self.outages:
            out.append(LinkEvent(down, "down"))
            if up is not None:
                out.append(LinkEvent(up, "up"))
        order = {"rate": 0, "down": 1, "up": 2}
        return sorted(out, key=lambda e: (e.at_s, order[e.kind]))

    def to_dict(self) -> dict[str, Any]:
        return {"rate_mbit": self.rate_mbit, "burst": self.burst_bytes, "queue_ms": self.queue_ms,
                "events": [{"at_s": e.at_s, "kind": e.kind, **({"rate_mbit": e.rate_mbit} if e.kind == "rate" else {})}
                           for e in self.events()]}


@dataclass(frozen=True)
class WorkerSpec:
    latency: Distribution = Constant(0.0)  # injected delay before answering
    failures: tuple[Failure, ...] = ()  # the worker fails a request if any of these says so
    slowdown: float = 1.0  # multiplies the sampled delay
    link: LinkSpec | None = None  # None: loopback (no links anywhere) or an unshaped veth


@dataclass(frozen=True)
class Scenario:
    name: str
    N: int  # number of workers
    workers: tuple[WorkerSpec, ...]  # exactly N
    seed: int = 0  # fixes every injected delay and failure
    images: str = "sample"  # "sample", "test" or a resolved .npz path
    requests: int = 100
    groups_per_request: int = 1
    schemes: tuple[str, ...] = DEFAULT_SCHEMES  # run in this order, each with the same delays
    # per scheme of `schemes`: every one of its options, as given or by default (paths resolved)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    K: int | None = None  # images per group; None: the K the schemes' options fix, else the registry's default
    timeout_s: float = 5.0  # per-request deadline at the master
    arrival: Arrival = field(default_factory=Arrival)
    also_all_fast: bool = False  # also run each scheme with every link at the fastest configured rate
    backend: str = "tcp"  # one of BACKENDS: where the workers run
    shared_data: str = "images"  # one of SHARED_DATA: "indices" starts the workers with --dataset `images`
    source: str | None = None  # the file it was loaded from

    @property
    def has_links(self) -> bool:
        """True when any worker has a link: then every worker runs behind a veth in its own namespace."""
        return any(w.link is not None for w in self.workers)

    def all_fast(self) -> "Scenario":
        """The same scenario with every link at the fastest rate any link has, and no link events."""
        fast = max(w.link.peak_rate_mbit for w in self.workers if w.link is not None)
        burst = max(w.link.burst_bytes for w in self.workers if w.link is not None)
        workers = tuple(replace(w, link=LinkSpec(fast, burst, w.link.queue_ms if w.link else 100.0)) for w in self.workers)
        return replace(self, workers=workers, also_all_fast=False)

    def scheme_options(self, scheme: str) -> dict[str, Any]:
        """The options scheme `scheme` runs with (for schemes.registry.build_plan)."""
        return dict(self.options.get(scheme, {}))

    def group_size(self) -> int:
        """K for every scheme of the run (reads the schemes' model headers, not their weights)."""
        return registry.run_group_size({s: self.scheme_options(s) for s in self.schemes}, self.K)

    def behaviours(self) -> list[WorkerBehaviour]:
        """One deterministic behaviour per worker, indexed 0..N-1."""
        return [WorkerBehaviour(self.seed, i, w.latency, w.failures, w.slowdown)
                for i, w in enumerate(self.workers)]

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready description (for reports)."""
        return {
            "name": self.name, "seed": self.seed, "N": self.N, "K": self.K,
            "images": self.images, "requests": self.requests,
            "groups_per_request": self.groups_per_request,
            "schemes": list(self.schemes), "options": {s: dict(o) for s, o in self.options.items()},
            "timeout_s": self.timeout_s,
            "arrival": {"process": self.arrival.process, "concurrency": self.arrival.concurrency,
                        "rate": self.arrival.rate},
            "also_all_fast": self.also_all_fast,
            "backend": self.backend,
            "shared_data": self.shared_data,
            "workers": [{**b.to_dict(), "link": w.link.to_dict() if w.link else None}
                        for w, b in zip(self.workers, self.behaviours())],
        }


# --- parsing ---------------------------------------------------------------------------------


def _in_section(section: str, fn: Any, *args: Any) -> Any:
    """Run a parser, prefixing the field path of any error with `section`."""
    try:
        return fn(*args)
    except FieldError as e:
        raise e.under(section) from None


def _string(value: Any, field_: str) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(field_, f"must be a non-empty string, got {value!r}")
    return value


def _path_or_keyword(value: Any, field_: str, keywords: tuple[str, ...], suffix: str,
                     base_dir: Path | None) -> str:
    s = _string(value, field_)
    if s in keywords:
        return s
    if not s.endswith(suffix):
        raise FieldError(field_, f"must be {' or '.join(map(repr, keywords))} "
                                 f"or a path to a {suffix} file, got {s!r}")
    p = Path(s)
    return str(base_dir / p if base_dir and not p.is_absolute() else p)


def _parse_worker(d: Any, base_dir: Path | None) -> dict[str, Any]:
    """The keys a worker (or [defaults]) sets, parsed; absent keys stay absent."""
    d = as_table(d, "")
    check_keys(d, _WORKER_KEYS)
    out: dict[str, Any] = {}
    if "latency" in d:
        out["latency"] = _in_section("latency", parse_latency, d["latency"], base_dir)
    if "failure" in d:
        out["failures"] = _in_section("failure", parse_failures, d["failure"])
    if "slowdown" in d:
        out["slowdown"] = as_number(d["slowdown"], "slowdown", above=0)
    if "bandwidth_mbit" in d:  # it never shaped anything; say so rather than ignore it
        raise FieldError("bandwidth_mbit", "is not enforced by anything; to shape a real link "
                                           f"write `link = {{ rate_mbit = {d['bandwidth_mbit']!r} }}` (needs root and iproute2)")
    if "link" in d:
        out["link"] = _in_section("link", _parse_link, d["link"])
    return out


def _times(value: Any, field_: str) -> list[float]:
    items = value if isinstance(value, list) else [value]
    return [as_number(v, f"{field_}[{i}]" if isinstance(value, list) else field_, minimum=0)
            for i, v in enumerate(items)]


def _parse_link(d: Any) -> LinkSpec:
    d = as_table(d, "")
    check_keys(d, _LINK_KEYS)
    if "rate_mbit" not in d:
        raise FieldError("rate_mbit", "missing (a link needs its rate in Mbit/s)")
    rate = as_number(d["rate_mbit"], "rate_mbit", above=0)
    burst = None
    if "burst" in d:
        burst = as_int(d["burst"], "burst", minimum=MIN_BURST)
    queue_ms = as_number(d.get("queue_ms", 100.0), "queue_ms", above=0)
    downs = _times(d["down_at_s"], "down_at_s") if "down_at_s" in d else []
    ups = _times(d["up_at_s"], "up_at_s") if "up_at_s" in d else []
    if len(ups) > len(downs) or len(downs) > len(ups) + 1:
        raise FieldError("up_at_s", f"needs one up_at_s per down_at_s (the last may be left out: down for good); "
                                    f"got {len(downs)} down, {len(ups)} up")
    outages = [(dn, ups[i] if i < len(ups) else None) for i, dn in enumerate(downs)]
    last = -1.0
    for i, (dn, up) in enumerate(outages):
        if dn <= last:
            raise FieldError("down_at_s", f"outages must be in time order and not overlap: down at {dn:g} s "
                                          f"comes before the previous up at {last:g} s")
        if up is not None and up <= dn:
            raise FieldError("up_at_s", f"the link comes up at {up:g} s, not after it went down at {dn:g} s")
        last = up if up is not None else float("inf")
    changes = d.get("rate_changes", [])
    if not isinstance(changes, list):
        raise FieldError("rate_changes", "must be a list of { at_s = ..., rate_mbit = ... } tables")
    parsed = []
    for i, c in enumerate(changes):
        c = as_table(c, f"rate_changes[{i}]")
        try:
            check_keys(c, {"at_s", "rate_mbit"})
            for k in ("at_s", "rate_mbit"):
                if k not in c:
                    raise FieldError(k, "missing")
            parsed.append((as_number(c["at_s"], "at_s", minimum=0), as_number(c["rate_mbit"], "rate_mbit", above=0)))
        except FieldError as e:
            raise e.under(f"rate_changes[{i}]") from None
    return LinkSpec(rate, burst, queue_ms, tuple(outages), tuple(sorted(parsed)))


def _parse_arrival(d: Any) -> Arrival:
    d = as_table(d, "")
    check_keys(d, {"process", "concurrency", "rate"})
    process = d.get("process", "closed")
    if process not in ARRIVAL_PROCESSES:
        raise FieldError("process", f"must be one of {', '.join(ARRIVAL_PROCESSES)}; got {process!r}")
    concurrency = as_int(d.get("concurrency", 1), "concurrency", minimum=1)
    rate = as_number(d["rate"], "rate", above=0) if "rate" in d else None
    if process == "poisson" and rate is None:
        raise FieldError("rate", "missing (required when process = \"poisson\")")
    return Arrival(process, concurrency, rate)


def _parse_schemes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise FieldError("schemes", f"must be a non-empty list, got {value!r}")
    known = registry.names()
    for i, s in enumerate(value):
        if s not in known:
            raise FieldError(f"schemes[{i}]", f"must be one of {', '.join(known)}; got {s!r}")
    if len(set(value)) != len(value):
        raise FieldError("schemes", f"lists a scheme twice: {value!r}")
    return tuple(value)


def _parse_options(value: Any, schemes: tuple[str, ...], base_dir: Path | None) -> dict[str, dict[str, Any]]:
    """[options.NAME] tables: each for a scheme the scenario runs, with options that scheme declares;
    every scheme of `schemes` gets all its options (defaults filled in), relative model paths resolved."""
    tables = as_table(value, "options")
    for name, table in tables.items():
        if name not in schemes:
            raise FieldError(f"options.{name}", f"sets options of a scheme the scenario does not run "
                                                f"(schemes = {list(schemes)})")
        as_table(table, f"options.{name}")
    out = {}
    for name in schemes:
        given = dict(tables.get(name, {}))
        try:
            scheme = registry.get(name)  # a plugin's entry point is loaded here
        except ConfigError as e:
            raise FieldError("schemes", str(e)) from None
        for key, v in given.items():
            opt = scheme.option(key)
            try:
                if opt is None:
                    registry.check_options(name, {key: v})  # raises, naming the options the scheme has
                given[key] = opt.parse(_model_path(v, f"options.{name}.{key}", base_dir)
                                       if opt.model and isinstance(v, str) else v, name)
            except FieldError:
                raise
            except ConfigError as e:
                raise FieldError(f"options.{name}.{key}", str(e)) from None
        out[name] = registry.check_options(name, given)
    return out


def _declares(scheme: str, option: str) -> bool:
    try:
        return registry.get(scheme).option(option) is not None
    except ConfigError:  # a plugin that cannot be loaded: reported where its options are read
        return False


def _model_path(value: str, field_: str, base_dir: Path | None) -> str:
    """A model option's value: a shipped model's name, or a .safetensors path (relative to the scenario file)."""
    from edgecc.modelfile import SHIPPED

    if value in SHIPPED:
        return value
    return _path_or_keyword(value, field_, tuple(SHIPPED), ".safetensors", base_dir)


def scenario_from_dict(d: Mapping[str, Any], *, name: str = "scenario",
                       base_dir: Path | None = None, source: str | None = None) -> Scenario:
    """Validate a parsed TOML document. Errors are `FieldError`s with a field path."""
    schemes = _parse_schemes(d.get("schemes", list(DEFAULT_SCHEMES)))
    for key in set(d) - _TOP_KEYS:  # a scheme's option at the top level: say where it goes
        owners = [n for n in schemes if n in registry.names() and _declares(n, key)]
        if owners:
            raise FieldError(key, f"is an option of {', '.join(owners)}: set it in the scheme's [options.NAME] table")
    check_keys(d, _TOP_KEYS)
    defaults = _in_section("defaults", _parse_worker, d.get("defaults", {}), base_dir)

    tables = d.get("workers")
    if tables is not None and not isinstance(tables, list):
        raise FieldError("workers", "must be an array of tables ([[workers]])")
    N = as_int(d["N"], "N", minimum=1) if "N" in d else None
    if tables is None and N is None:
        raise FieldError("N", "missing (give `N = ...` or one [[workers]] table per worker)")
    if tables is not None and N is not None and len(tables) != N:
        raise FieldError("workers", f"lists {len(tables)} workers but N = {N}")
    if N is None:
        N = len(tables)
        if N < 1:
            raise FieldError("workers", "must list at least one worker")
    workers = tuple(
        WorkerSpec(**{**defaults, **_in_section(f"workers[{i}]", _parse_worker, t, base_dir)})
        for i, t in enumerate(tables or [{}] * N))

    return Scenario(
        name=_string(d.get("name", name), "name"),
        N=N,
        workers=workers,
        seed=as_int(d.get("seed", 0), "seed", minimum=0),
        images=_path_or_keyword(d.get("images", "sample"), "images", ("sample", "test"),
                                ".npz", base_dir),
        requests=as_int(d.get("requests", 100), "requests", minimum=1),
        groups_per_request=as_int(d.get("groups_per_request", 1), "groups_per_request", minimum=1),
        schemes=schemes,
        options=_parse_options(d.get("options", {}), schemes, base_dir),
        K=as_int(d["K"], "K", minimum=1) if "K" in d else None,
        timeout_s=as_number(d.get("timeout_s", 5.0), "timeout_s", above=0),
        arrival=_in_section("arrival", _parse_arrival, d.get("arrival", {})),
        also_all_fast=_also_all_fast(d.get("also_all_fast", False), workers),
        backend=_backend(d.get("backend", "tcp"), workers),
        shared_data=_shared_data(d.get("shared_data", "images"), d.get("backend", "tcp")),
        source=source,
    )


def _backend(value: Any, workers: tuple[WorkerSpec, ...]) -> str:
    if value not in BACKENDS:
        raise FieldError("backend", f"must be one of {', '.join(BACKENDS)}; got {value!r}")
    if value == "ray" and any(w.link for w in workers):  # links shape TCP into a namespace per worker process
        raise FieldError("backend", "a scenario with shaped links runs TCP worker processes, not Ray actors")
    return value


def _shared_data(value: Any, backend: Any) -> str:
    if value not in SHARED_DATA:
        raise FieldError("shared_data", f"must be one of {', '.join(SHARED_DATA)}; got {value!r}")
    if value == "indices" and backend == "ray":
        raise FieldError("shared_data", "\"indices\" starts worker processes with --dataset; Ray actors hold no dataset")
    return value


def _also_all_fast(value: Any, workers: tuple[WorkerSpec, ...]) -> bool:
    if not isinstance(value, bool):
        raise FieldError("also_all_fast", f"must be true or false, got {value!r}")
    if value and not any(w.link for w in workers):
        raise FieldError("also_all_fast", "needs at least one worker with a `link` (there is nothing to make fast)")
    return value


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; every problem is a `ConfigError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read scenario file: {e.strerror}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message already gives line and column
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        return scenario_from_dict(data, name=path.stem, base_dir=path.parent, source=str(path))
    except FieldError as e:
        line = find_line(text, e.field)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {e.field}: {e.reason}") from None


# --- best-effort line lookup -------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?")
_SEGMENT = re.compile(r"([A-Za-z0-9_\-]*)(?:\[(\d+)\])?")


def find_line(text: str, field_path: str) -> int | None:
    """The 1-based line where `field_path` (e.g. `workers[2].latency.mean`) is set, or the
    nearest enclosing table's line; None when nothing matches."""
    lines = text.splitlines()
    headers = [i for i, ln in enumerate(lines) if _HEADER.match(ln)]

    def section_end(after: int) -> int:
        return next((h for h in headers if h > after), len(lines))

    start, end, found = 0, section_end(-1), None
    for seg in field_path.split("."):
        m = _SEGMENT.fullmatch(seg)
        if not m or not m.group(1):
            continue
        name, index = m.group(1), int(m.group(2) or 0)
        # A table header ([name], [[name]], [x.name]) at or after the current position...
        hits = [h for h in headers if h >= start
                and _HEADER.match(lines[h]).group(2).split(".")[-1].strip() == name]
        if len(hits) > index:
            found = hits[index]
            start, end = found + 1, section_end(found)
            continue
        # ...or a key `name =`, possibly inside an inline table, in the current section.
        key = re.compile(rf"(^|[{{,\s]){re.escape(name)}\s*=")
        line = next((i for i in range(start, end) if key.search(lines[i])), None)
        if line is None:
            if any(_HEADER.match(lines[h]).group(2).split(".")[0].strip() == name for h in headers if h >= start):
                continue  # only dotted tables under it ([options.aicc] under `options`): look for the next part
            break
        found, start = line, line  # later segments may sit on this same line
    return None if found is None else found + 1
