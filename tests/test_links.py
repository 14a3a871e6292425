"""Real links for scenarios: network namespaces, veth pairs shaped with tc tbf, link events, cleanup,
and the refusal without root. Tests that build links skip where this user cannot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgecc.errors import ConfigError
from edgecc.scenario.links import LinkSet, LinkTimeline, LinksUnavailable, missing_requirements, require, sweep_stale
from edgecc.scenario.spec import LinkSpec, load_scenario

MISSING = missing_requirements()
needs_links = pytest.mark.skipif(bool(MISSING), reason=f"building links needs {', '.join(MISSING)}")
SETPRIV = shutil.which("setpriv")


def _ours() -> tuple[set[str], set[str]]:
    """edgecc namespaces and their veth ends currently on this machine."""
    ns = {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
          if line.startswith("edgecc-")}
    links = {p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("ec") and len(p.name) > 8}
    return ns, links


def _unprivileged(argv: list[str]) -> subprocess.CompletedProcess:
    """Run argv without the capabilities namespaces need: as is for a normal user; as root, with
    CAP_NET_ADMIN and CAP_SYS_ADMIN dropped from the bounding set (uid 0 stays, so the venv stays readable)."""
    if os.geteuid() == 0:
        argv = [SETPRIV, "--bounding-set=-net_admin,-sys_admin", "--inh-caps=-net_admin,-sys_admin", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


unprivileged = pytest.mark.skipif(os.geteuid() == 0 and SETPRIV is None,
                                  reason="running as root without setpriv (util-linux): no way to drop the capabilities")

LINKED = """
name = "linked"
requests = {requests}
groups_per_request = 8
schemes = ["aicc"]
timeout_s = 10.0
[arrival]
process = "closed"
concurrency = 2
[defaults]
latency = {{ dist = "constant", value = 0.002 }}
link = {{ rate_mbit = 100.0 }}
[[workers]]
[[workers]]
[[workers]]
link = {{ rate_mbit = 2.0 }}
"""


@unprivileged
def test_link_scenario_is_refused_without_root_naming_what_is_missing(tmp_path):
    f = tmp_path / "linked.toml"
    f.write_text(LINKED.format(requests=5))
    r = _unprivileged([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(f), "--out", str(tmp_path / "out")])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN" in r.stderr, r.stderr
    assert "not run unshaped" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_require_names_each_missing_piece(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LinksUnavailable, match=r"`ip` from iproute2 .*`tc` from iproute2"):
        require("scenario 'x'")


@unprivileged
def test_linkless_scenario_still_runs_unprivileged(tmp_path):
    f = tmp_path / "plain.toml"
    f.write_text('name = "plain"\nrequests = 6\nschemes = ["aicc"]\nN = 3\n'
                 '[defaults]\nlatency = { dist = "constant", value = 0.002 }\n')
    r = _unprivileged([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(f), "--out", str(tmp_path / "out"),
                       "--quiet"])
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "out" / "plain" / "report.json").read_text())
    assert doc["schemes"]["aicc"]["decoded_fraction"] == 1.0
    assert "links" not in doc["scenario"]


class _Sink:
    """A TCP server in a namespace that reads and discards everything."""

    CODE = ("import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind((sys.argv[1],0));s.listen(4);print(s.getsockname()[1],flush=True)\n"
            "while True:\n c,_=s.accept()\n while c.recv(1<<16): pass\n")

    def __init__(self, netns: str, host: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", self.CODE, host],
                                     stdout=subprocess.PIPE, text=True)
        self.address = (host, int(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class _Blast:
    """Send as fast as TCP allows to `address` from a thread, until stopped."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunk = b"\0" * 65536
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.sock.send(chunk)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _sent(ep) -> int:
    return ep.counters()[0]


@needs_links
def test_shaped_link_carries_its_configured_rate_and_follows_events():
    # 1 Mbit/s, then 4 Mbit/s from 1.2 s on. The deep queue (400 ms) lets TCP find the new rate within
    # the test's second: after the losses of a shallow one, BBR (the default here) probes upwards slowly.
    spec = LinkSpec(1.0, queue_ms=400.0, rate_changes=((1.2, 4.0),))
    before = _ours()
    with LinkSet(2) as links:
        links.configure(0, spec)
        links.configure(1, None)
        assert "tbf" in links.shaped(0) and "rate 1Mbit" in links.shaped(0) and "tbf" not in links.shaped(1)
        ep = links.endpoints[0]
        sink = _Sink(ep.netns, ep.worker_ip)
        blast = None
        try:
            blast = _Blast(sink.address)
            start = time.monotonic()
            timeline = LinkTimeline(links, [spec, None], [start, start], sample_s=0.05).start()
            time.sleep(3.3)
            m = timeline.stop()
            tl = m["links"][0]["timeline_mbit_to_worker"]
            assert len(tl) == 3, tl  # 0-1 s, 1-2 s, 2-3.3 s (a short last bin joins the one before)
            assert 0.88 <= tl[0] <= 1.12, tl  # measured on the wire: within 12% of the configured 1 Mbit/s
            # after the change to 4 Mbit/s: never above it; below it only by how fast TCP finds the new rate
            assert 3.0 <= tl[2] <= 4.5, tl
            assert m["links"][0]["peak_mbit_to_worker"] <= 4.5
            applied = m["links"][0]["events_applied"]
            assert [a["kind"] for a in applied] == ["rate"] and abs(applied[0]["applied_at_s"] - 1.2) < 0.1
            assert m["links"][1]["bytes_to_worker"] < 10_000  # nothing was sent on the other link

            # a cut: carrier off, nothing gets through; back up, the same TCP connection carries data again
            links.set_up(0, False)
            time.sleep(0.3)
            cut = _sent(ep)
            time.sleep(0.7)
            assert _sent(ep) - cut < 3000, "bytes crossed a link that is down"
            links.set_up(0, True)
            resumed = _sent(ep)
            deadline = time.monotonic() + 4
            while _sent(ep) - resumed < 50_000 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _sent(ep) - resumed >= 50_000, "the link did not carry data again after coming back up"
        finally:
            if blast:
                blast.close()
            sink.close()
    assert _ours() == before  # namespaces and veths are gone


@needs_links
def test_scenario_on_shaped_links_decodes_and_reports_links(tmp_path):
    before = _ours()
    f = tmp_path / "linked.toml"
    f.write_text(LINKED.format(requests=24))
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(f), "--out", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "linked" / "report.json").read_text())
    aicc = doc["schemes"]["aicc"]
    assert aicc["decoded_fraction"] == 1.0 and aicc["accuracy"] >= 75  # the shipped model: ~90% on the sample
    links = doc["scenario"]["links"]
    assert links["kernel"]["tbf"] and "injected_in_worker" in links
    measured = links["measured"]["aicc"]["links"]
    assert [m["configured"]["rate_mbit"] for m in measured] == [100.0, 100.0, 2.0]
    # the fast workers got every request's encoding (8 groups of 784 values each); the slow one what its link
    # carried (the master drops frames of requests decoded before they reach a socket)
    assert all(m["bytes_to_worker"] > 24 * 8 * 784 for m in measured[:2]) and measured[2]["bytes_to_worker"] > 0
    assert measured[2]["peak_mbit_to_worker"] <= 2.3  # the kernel held the slow link to its rate
    assert "2.0 Mbit" not in links["qdiscs"][0] and "rate 2Mbit" in links["qdiscs"][2]
    assert sum(doc["usage"]["aicc"]["decoded"]) == 24
    assert doc["scenario"]["master_stats"]["aicc"]["connects"] == [1, 1, 1]  # the 2 Mbit/s link is slow, never dropped
    rows = json.loads((tmp_path / "linked" / "requests.json").read_text())["aicc"]
    assert all(len(x["workers"]) == 2 and x["bytes_sent"] > 0 for x in rows)
    md = (tmp_path / "linked" / "report.md").read_text()
    assert "## Links" in md and "Shaped in the kernel: rate (tc tbf, both directions)" in md
    assert f"netem {'available' if links['kernel']['netem'] else 'missing'}" in md
    assert "Not modelled: propagation delay and packet loss" in md
    assert _ours() == before


@needs_links
def test_sigterm_mid_run_removes_namespaces_and_workers(tmp_path):
    before = _ours()
    f = tmp_path / "linked.toml"
    f.write_text(LINKED.format(requests=100000))
    p = subprocess.Popen([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(f), "--out", str(tmp_path), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            if len(workers) == 3 and any(n.startswith(f"edgecc-{p.pid}-") for n in _ours()[0]):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the scenario never started its three workers")
        time.sleep(1.0)  # requests in flight
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert "Traceback" not in p.stderr.read()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _ours() == before


@needs_links
def test_stale_namespaces_of_dead_runs_are_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = f"edgecc-{dead.pid}-abcdef-w0", f"edgecc-{os.getpid()}-abcdef-w0"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])  # a worker whose runner was SIGKILLed
    try:
        deadline = time.monotonic() + 5
        while not subprocess.run(["ip", "netns", "pids", stale], capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline, "the orphan never entered the namespace"
            time.sleep(0.05)
        assert stale in sweep_stale()
        assert orphan.wait(5) == -signal.SIGKILL
        names = _ours()[0]
        assert stale not in names and live in names
    finally:
        if orphan.poll() is None:
            orphan.kill()
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_link_scenario_file_loads_without_root(tmp_path):
    f = tmp_path / "linked.toml"
    f.write_text(LINKED.format(requests=5))
    s = load_scenario(f)  # loading needs no privileges; running does
    assert s.has_links and [w.link.rate_mbit for w in s.workers] == [100.0, 100.0, 2.0]
    with pytest.raises(ConfigError):
        f.write_text(LINKED.format(requests=5).replace("rate_mbit = 2.0", "rate_mbit = -2.0"))
        load_scenario(f)


def test_counter_samples_become_rates_per_bin():
    from edgecc.scenario.links import _binned

    # 2000 bytes over 1.2 s: the 0.2 s tail is too short for a bin of its own
    to_w, from_w = _binned([(0.0, [(0, 0)]), (0.5, [(1000, 10)]), (1.2, [(2000, 20)])], 0, 0.0, 1.0)
    assert to_w == pytest.approx([2000 * 8 / 1.2 / 1e6]) and from_w == pytest.approx([20 * 8 / 1.2 / 1e6])
    # an interval across a bin edge (a late sample) splits its bytes by overlap: 1000 B over 0.5-1.7 s
    to_w, _ = _binned([(0.0, [(0, 0)]), (0.5, [(1000, 0)]), (1.7, [(2000, 0)])], 0, 0.0, 1.0)
    assert to_w == pytest.approx([(1000 + 1000 * 0.5 / 1.2) * 8 / 1e6, 1000 * 0.7 / 1.2 * 8 / 0.7 / 1e6])
