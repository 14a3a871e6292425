"""Real, shaped links for scenarios: one network namespace per worker behind a veth pair.

The master stays in the root namespace; worker i runs in namespace `edgecc-<pid>-<tag>-w<i>` and
listens on its end of a veth pair (10.a.b.c/30). Each end's egress is shaped with `tc tbf`, so
both directions (requests to the worker, results back) see the configured rate. A link event
changes the tbf rate (`tc qdisc change`) or takes the worker's end down (`ip link set down`: the
master's end loses carrier and drops what it sends, a silent cut as on a dead radio link, not a
connection reset).

What is real and what is not: rate, burst, queueing and cuts happen in the kernel on real TCP.
Propagation delay and loss are not shaped (that takes `netem`, which many kernels lack, this
project's test VM's included); a worker's latency distribution is injected by the worker process
itself. `kernel_features()` says which qdiscs the kernel offers, and the report records it.

Everything needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2; `missing_requirements()` names
what is absent, and a scenario with links is refused rather than run unshaped. Namespaces are removed on
every exit path (deleting a namespace deletes its veth pair); those left by a killed run are
swept at the next start (their names carry the owner's pid).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeccError
from .spec import LinkSpec

NETNS_PREFIX = "edgecc-"
LOCK_FILE = Path("/run/lock/edgecc-links.lock") if Path("/run/lock").is_dir() else Path("/tmp/edgecc-links.lock")
SAMPLE_S = 0.1  # interface counters are read this often while a scheme runs
_NETNS_NAME = re.compile(r"^edgecc-(\d+)-([0-9a-f]+)-w\d+$")


class LinksUnavailable(EdgeccError):
    """This machine or user cannot create shaped links."""


_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}  # veth and tc; `ip netns add` (unshare + mount)


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return -1 if os.geteuid() == 0 else 0  # no /proc: trust the uid


def missing_requirements() -> list[str]:
    """What this process lacks to build links ([] = nothing): root's capabilities, `ip`, `tc`."""
    missing = []
    lacking = [name for name, bit in _CAPS.items() if not _effective_caps() >> bit & 1]
    if lacking:
        missing.append(f"root ({' and '.join(lacking)} to create network namespaces and veth pairs; this process "
                       f"runs as uid {os.geteuid()} without {'them' if len(lacking) > 1 else 'it'})")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` from iproute2 (not on PATH)")
    return missing


def require(what: str) -> None:
    """Raise LinksUnavailable naming every missing requirement for `what` (e.g. a scenario)."""
    missing = missing_requirements()
    if missing:
        raise LinksUnavailable(f"{what} shapes real links (network namespaces, veth pairs, tc tbf) and needs "
                               f"{' and '.join(missing)}; it is not run unshaped. Run it as root with iproute2 "
                               f"installed, or remove the `link` tables to run on loopback without shaping.")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise LinksUnavailable(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete edgecc namespaces whose creating process is gone (a run killed with SIGKILL)."""
    r = _run("ip", "netns", "list", check=False)
    removed = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NETNS_NAME.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_inside(name)  # orphaned workers would keep the namespace and its veth alive
            if _run("ip", "netns", "del", name, check=False).returncode == 0:
                removed.append(name)
    return removed


def _kill_inside(netns: str) -> None:
    """SIGKILL every process still in `netns` (`ip netns pids`)."""
    for pid in _run("ip", "netns", "pids", netns, check=False).stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


@dataclass(frozen=True)
class Endpoint:
    """Worker i's link: its namespace, the two veth ends and their addresses."""
    index: int
    netns: str
    host_if: str  # in the root namespace, the master's side
    worker_if: str  # in `netns`
    host_ip: str
    worker_ip: str

    def counters(self) -> tuple[int, int]:
        """(bytes to the worker, bytes from the worker), from the master side's interface counters."""
        base = Path("/sys/class/net") / self.host_if / "statistics"
        return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())


def _tbf(rate_mbit: float, spec: LinkSpec) -> list[str]:
    # rate in bit/s (integer) so fractional Mbit/s stay exact; latency bounds the queue
    return ["tbf", "rate", f"{int(round(rate_mbit * 1e6))}bit", "burst", str(spec.burst_bytes),
            "latency", f"{spec.queue_ms:g}ms"]


class LinkSet:
    """N namespaces with veth pairs; a context manager that always removes them again."""

    def __init__(self, n: int):
        self.n = n
        self.tag = secrets.token_hex(3)
        self.endpoints: list[Endpoint] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> "LinkSet":
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def create(self) -> None:
        sweep_stale()
        # The lock makes choosing a free 10.x.y.0 block and claiming it one step across concurrent runs.
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            blocks = _free_blocks((self.n + 63) // 64)
            for i in range(self.n):
                a, b = blocks[i // 64]
                c = 4 * (i % 64)
                ep = Endpoint(i, f"{NETNS_PREFIX}{os.getpid()}-{self.tag}-w{i}", f"ec{self.tag}h{i}", f"ec{self.tag}w{i}",
                              f"10.{a}.{b}.{c + 1}", f"10.{a}.{b}.{c + 2}")
                _run("ip", "netns", "add", ep.netns)
                self._namespaces.append(ep.netns)
                _run("ip", "link", "add", ep.host_if, "type", "veth", "peer", "name", ep.worker_if, "netns", ep.netns)
                _run("ip", "addr", "add", f"{ep.host_ip}/30", "dev", ep.host_if)
                _run("ip", "link", "set", ep.host_if, "up")
                _run("ip", "-n", ep.netns, "addr", "add", f"{ep.worker_ip}/30", "dev", ep.worker_if)
                _run("ip", "-n", ep.netns, "link", "set", ep.worker_if, "up")
                _run("ip", "-n", ep.netns, "link", "set", "lo", "up")
                self.endpoints.append(ep)

    def close(self) -> None:
        """Remove every namespace (and with it its veth pair); safe to call twice, never raises.
        A process left inside (a worker that outlived its stop) is killed: it would keep both alive."""
        for ns in self._namespaces:
            _kill_inside(ns)
            _run("ip", "netns", "del", ns, check=False)
        for ep in self.endpoints:  # normally gone with the namespace; a veth moved elsewhere is not
            if Path("/sys/class/net", ep.host_if).exists():
                _run("ip", "link", "del", ep.host_if, check=False)
        self._namespaces.clear()

    # -- shaping ---------------------------------------------------------------------------------
    def configure(self, i: int, spec: LinkSpec | None) -> None:
        """Put link i in its initial state: up, shaped to spec.rate_mbit (None: unshaped)."""
        ep = self.endpoints[i]
        self.set_up(i, True)
        if spec is None:
            _run("tc", "qdisc", "del", "dev", ep.host_if, "root", check=False)
            _run("tc", "-n", ep.netns, "qdisc", "del", "dev", ep.worker_if, "root", check=False)
            return
        _run("tc", "qdisc", "replace", "dev", ep.host_if, "root", *_tbf(spec.rate_mbit, spec))
        _run("tc", "-n", ep.netns, "qdisc", "replace", "dev", ep.worker_if, "root", *_tbf(spec.rate_mbit, spec))

    def set_rate(self, i: int, rate_mbit: float, spec: LinkSpec) -> None:
        """A new rate on both ends; packets already queued stay queued (`change`, not `replace`)."""
        ep = self.endpoints[i]
        _run("tc", "qdisc", "change", "dev", ep.host_if, "root", *_tbf(rate_mbit, spec))
        _run("tc", "-n", ep.netns, "qdisc", "change", "dev", ep.worker_if, "root", *_tbf(rate_mbit, spec))

    def set_up(self, i: int, up: bool) -> None:
        ep = self.endpoints[i]
        _run("ip", "-n", ep.netns, "link", "set", ep.worker_if, "up" if up else "down")

    def shaped(self, i: int) -> str:
        """`tc qdisc show` of both ends of link i (for the report: what the kernel really has)."""
        ep = self.endpoints[i]
        host = _run("tc", "qdisc", "show", "dev", ep.host_if, check=False).stdout.strip()
        worker = _run("tc", "-n", ep.netns, "qdisc", "show", "dev", ep.worker_if, check=False).stdout.strip()
        return f"{host} | {worker}"


def _free_blocks(count: int) -> list[tuple[int, int]]:
    """`count` 10.a.b.0/24 blocks that no address or route on this machine touches."""
    text = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route", "show", "table", "all").stdout
    used = set(re.findall(r"\b10\.(\d+)\.", text))
    free = [a for a in range(100, 255) if str(a) not in used]
    if not free:
        raise LinksUnavailable("no free 10.a.0.0/16 block for the scenario's links (every 10.100-254 block is in use)")
    a = free[secrets.randbelow(len(free))]
    return [(a, b) for b in range(count)]


_FEATURES: dict[str, bool] | None = None


def kernel_features(links: LinkSet) -> dict[str, bool]:
    """Which qdiscs this kernel offers, probed once on link 0: tbf (rate) and netem (delay, loss)."""
    global _FEATURES
    if _FEATURES is None:
        ep = links.endpoints[0]
        netem = _run("tc", "-n", ep.netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
        if netem.returncode == 0:
            _run("tc", "-n", ep.netns, "qdisc", "del", "dev", "lo", "root", check=False)
        tbf = _run("tc", "-n", ep.netns, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1gbit", "burst", "64k",
                   "latency", "10ms", check=False)
        if tbf.returncode == 0:
            _run("tc", "-n", ep.netns, "qdisc", "del", "dev", "lo", "root", check=False)
        _FEATURES = {"tbf": tbf.returncode == 0, "netem": netem.returncode == 0}
    return _FEATURES


def tcp_congestion_control() -> str | None:
    """The root namespace's TCP congestion control (the master's sends): it decides how TCP meets a
    shaped link (e.g. BBR paces at its bandwidth estimate and probes upwards only slowly)."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return None


class LinkTimeline:
    """A background thread that applies each link's events on time and samples its byte counters.

    Events run on a timer from each worker's start, like the injected failures. A thread rather than
    the master's event loop: a busy master must not delay a cut or a rate change."""

    def __init__(self, links: LinkSet, specs: list[LinkSpec | None], started_at: list[float], sample_s: float = SAMPLE_S):
        self.links, self.specs, self.started_at, self.sample_s = links, specs, started_at, sample_s
        self.t0 = min(started_at)
        self.events = sorted(((started_at[i] + e.at_s, i, e) for i, s in enumerate(specs) if s for e in s.events()),
                             key=lambda x: x[0])
        self.applied: list[dict[str, Any]] = []
        self.samples: list[tuple[float, list[tuple[int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgecc-links", daemon=True)
        self.error: str | None = None

    def start(self) -> "LinkTimeline":
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), [ep.counters() for ep in self.links.endpoints]))

    def _loop(self) -> None:
        pending = list(self.events)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    at, i, e = pending.pop(0)
                    if e.kind == "rate":
                        self.links.set_rate(i, e.rate_mbit, self.specs[i])
                    else:
                        self.links.set_up(i, e.kind == "up")
                    done = time.monotonic()
                    self.applied.append({"worker": i, "kind": e.kind, "rate_mbit": e.rate_mbit, "at_s": e.at_s,
                                         "applied_at_s": round(done - self.started_at[i], 4),  # on worker i's clock
                                         "applied_t_s": round(done - self.t0, 4)})  # on the requests' clock (t_s)
                self._sample()
                wait = self.sample_s if not pending else min(self.sample_s, max(0.0, pending[0][0] - time.monotonic()))
                self._stop.wait(wait)
        except Exception as e:  # reported, and the run fails: results on a wrongly shaped link would mislead
            self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        self._sample()
        if self.error:
            raise LinksUnavailable(f"a link event failed: {self.error}")
        return self.measured()

    def measured(self, bin_s: float = 1.0) -> dict[str, Any]:
        """Per link: bytes each way, mean and peak rate (over `bin_s` windows), a per-bin timeline,
        and the events as applied. Times are seconds from the first worker's start (the clock of the
        requests' t_s), except each event's at_s and applied_at_s, which count from its own worker's
        start (started_at_s says when that was)."""
        out = []
        t_first, c_first = self.samples[0]
        t_last, c_last = self.samples[-1]
        span = max(t_last - t_first, 1e-9)
        for i, ep in enumerate(self.links.endpoints):
            to_w = c_last[i][0] - c_first[i][0]
            from_w = c_last[i][1] - c_first[i][1]
            tl_to, tl_from = _binned(self.samples, i, t_first, bin_s)
            out.append({
                "worker": i, "address": ep.worker_ip, "configured": self.specs[i].to_dict() if self.specs[i] else None,
                "started_at_s": round(self.started_at[i] - self.t0, 4),  # its events' clock starts here
                "bytes_to_worker": to_w, "bytes_from_worker": from_w,
                "mean_mbit_to_worker": to_w * 8 / span / 1e6, "mean_mbit_from_worker": from_w * 8 / span / 1e6,
                "peak_mbit_to_worker": max(tl_to, default=0.0), "peak_mbit_from_worker": max(tl_from, default=0.0),
                "timeline_mbit_to_worker": [round(x, 4) for x in tl_to],
                "timeline_mbit_from_worker": [round(x, 4) for x in tl_from],
                "events_applied": [a for a in self.applied if a["worker"] == i],
            })
        return {"sampled_from_s": round(t_first - self.t0, 3), "sampled_for_s": round(span, 3), "bin_s": bin_s,
                "links": out}


def _binned(samples: list[tuple[float, list[tuple[int, int]]]], i: int, t0: float, bin_s: float) -> tuple[list[float], list[float]]:
    """Mbit/s in each direction per bin, from counter samples. Each interval's bytes are spread over
    the bins it overlaps in proportion to the overlap, so a late sample (a busy CPU) does not move
    bytes into the next bin."""
    span = samples[-1][0] - t0
    n_bins = int(span / bin_s) + 1
    sums = [[0.0] * n_bins, [0.0] * n_bins]
    for (ta, ca), (tb, cb) in zip(samples, samples[1:]):
        a, b = ta - t0, tb - t0
        if b <= a:
            continue
        for d in (0, 1):
            delta = cb[i][d] - ca[i][d]
            for k in range(int(a / bin_s), min(int(b / bin_s), n_bins - 1) + 1):
                overlap = min(b, (k + 1) * bin_s) - max(a, k * bin_s)
                if overlap > 0:
                    sums[d][k] += delta * overlap / (b - a)
    widths = [bin_s] * n_bins
    widths[-1] = span - bin_s * (n_bins - 1)  # the last bin is partial
    if widths[-1] < bin_s / 2 and n_bins > 1:  # too short to be a rate: it joins the bin before
        for d in (0, 1):
            last_bin = sums[d].pop()
            sums[d][-1] += last_bin
        last_width = widths.pop()
        widths[-1] += last_width
    return tuple([x * 8 / max(w, 1e-9) / 1e6 for x, w in zip(sums[d], widths)] for d in (0, 1))
