"""Workers as Ray actors (comm/ray.py, launch/ray_workers.py): the real worker inside each actor, the
real master's links at ray://NAME, so a Ray run gives what a TCP run gives; a killed actor is
restarted by Ray and used again; `edgecc master --workers ray:N` and `backend = "ray"` in a scenario.

One local Ray instance (2 CPUs) serves the whole module. Without ray installed every test that needs it
skips, saying so, and the one that checks the error a user then gets still runs.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgecc.comm import AddressError, CommClosedError, connect
from edgecc.data import load_sample
from edgecc.errors import EdgeccError
from edgecc.master.master import Master
from edgecc.schemes.registry import build_plan
from edgecc.worker.faults import Faults
from edgecc.worker.server import Worker

from .conftest import TOKEN

TOK = TOKEN.encode()
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'edgecc[ray]'; CI installs it)")


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance for this module: 2 CPUs, a small object store, no dashboard."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# worker 1 answers last, so every run decodes from the same workers (a lambda travels to the actor by
# value: the actor need not import this module)
FAULTS = [None, Faults(delay=lambda request_id, elapsed_s: 0.2), None]


@pytest.fixture(scope="module")
def ray_workers(ray_instance):
    """Three workers as Ray actors (worker 1 a mild straggler), shared by the tests that do not kill them."""
    from edgecc.launch.ray_workers import RayWorkers

    workers = RayWorkers(3, TOK, prefix="test-shared", faults=FAULTS)
    workers.start()
    yield workers
    workers.stop()


def test_ray_addresses_say_what_is_missing_without_ray(monkeypatch):
    from edgecc.comm import registry

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "edgecc.comm.ray", raising=False)
    monkeypatch.delitem(registry._backends, "ray", raising=False)
    with pytest.raises(AddressError, match=r"pip install 'edgecc\[ray\]'"):
        registry.backend_for("ray://worker-0")


@needs_ray
def test_the_tcp_worker_and_master_never_import_ray():
    code = ("import sys, edgecc.cli, edgecc.cli.nodes, edgecc.worker.server, edgecc.master.master, edgecc.comm.tcp, "
            "edgecc.launch.local, edgecc.scenario.runner; from edgecc.comm.registry import backend_for; "
            "backend_for('tcp://127.0.0.1:1'); assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@needs_ray
async def test_ray_locations_are_actor_names_and_refused_clearly():
    from edgecc.comm.ray import parse_location

    assert parse_location("worker-0") == ("edgecc", "worker-0")
    assert parse_location("team/worker-0") == ("team", "worker-0")
    with pytest.raises(AddressError, match="names a Ray cluster, not an actor"):
        parse_location("10.0.0.2:10001")  # how Ray spells a Ray Client address
    with pytest.raises(AddressError, match="expected ray://NAME"):
        parse_location("")
    with pytest.raises(AddressError, match="no TLS over ray://"):
        await connect("ray://worker-0", ssl_context=object())


@needs_ray
async def test_no_actor_of_that_name_is_a_closed_comm(ray_instance):
    with pytest.raises(CommClosedError, match="no actor named 'nobody-here' in namespace 'edgecc'"):
        await connect("ray://nobody-here")


async def _infer_all(addresses, scheme: str, groups: np.ndarray, token: bytes = TOK, **options) -> tuple[np.ndarray, Master]:
    plan = build_plan(scheme, 3, 2, **options)
    m = Master(plan, addresses[: plan.N], token, request_timeout=20)
    try:
        await m.start(wait_ready=30)
        assert await m.wait_all_ready(10)  # else the first request goes to the R workers ready first
        logits = await m.infer(groups)
    finally:
        await m.close()
    return logits, m


@needs_ray
async def test_ray_workers_compute_what_tcp_workers_compute(ray_workers):
    images, labels = load_sample()
    groups = images[:64].reshape(32, 2, 28, 28)
    tcp = [Worker(TOK, faults=copy.deepcopy(f)) for f in FAULTS]
    try:
        tcp_addresses = [await w.start("tcp://127.0.0.1:0") for w in tcp]
        for scheme in ("aicc", "approxifer", "uncoded"):
            by_tcp, _ = await _infer_all(tcp_addresses, scheme, groups)
            by_ray, m = await _infer_all(ray_workers.addresses, scheme, groups)
            np.testing.assert_array_equal(by_ray, by_tcp, err_msg=scheme)  # the transport changes nothing computed
            assert (by_ray.argmax(-1).reshape(-1) == labels[:64]).mean() >= 0.5, scheme  # ApproxIFER: ~65%
    finally:
        for w in tcp:
            await w.close()
    # each actor's worker served a real session per master (handshake and all), and none is left open
    stats = [ray_workers.actors[i].server_stats.remote() for i in range(3)]
    import ray

    assert all(s["connections"] >= 2 for s in ray.get(stats))
    deadline = time.monotonic() + 10
    while sum(ray.get([a.sessions.remote() for a in ray_workers.actors])) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert sum(ray.get([a.sessions.remote() for a in ray_workers.actors])) == 0


@needs_ray
async def test_a_master_with_the_wrong_token_is_refused_by_a_ray_worker(ray_workers):
    plan = build_plan("aicc", 3, 2)
    m = Master(plan, ray_workers.addresses, b"not-the-token-" * 3)
    try:
        with pytest.raises(EdgeccError, match="authentication failed"):  # the worker's own words, as over TCP
            await m.start(wait_ready=2)
    finally:
        await m.close()


@needs_ray
async def test_a_killed_actor_is_restarted_by_ray_and_used_again_without_a_failed_request(ray_instance):
    import ray

    from edgecc.launch.ray_workers import RayWorkers

    # worker 1 straggles by 0.3 s: the requests it is too late for are cancelled on it
    workers = RayWorkers(3, TOK, prefix="test-kill", faults=[None, Faults(delay=lambda r, t: 0.3), None])
    workers.start()
    images, labels = load_sample()
    m = Master(build_plan("aicc", 3, 2), workers.addresses, TOK, request_timeout=10, heartbeat_s=0.5)
    try:
        await m.start(wait_ready=30)
        await m.wait_all_ready(10)
        correct, victim = 0, workers.placement[0]["pid"]
        for r in range(60):
            if r == 15:
                os.kill(victim, signal.SIGKILL)  # worker 0 crashes mid-stream
            g = images[2 * r: 2 * r + 2].reshape(1, 2, 28, 28)
            logits = await m.infer(g)  # any failure raises RequestFailed here
            correct += int((logits.argmax(-1).reshape(-1) == labels[2 * r: 2 * r + 2]).sum())
            await asyncio.sleep(0.03)
        assert correct >= 0.7 * 120
        deadline = time.monotonic() + 30
        while m.links[0].connects < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert m.links[0].connects == 2, m.links[0].last_error  # reconnected to the restarted actor
        assert [l.connects for l in m.links[1:]] == [1, 1]
        now = ray.get(workers.actors[0].ready.remote())
        assert now["pid"] != victim and now["address"] == workers.addresses[0]
        for r in range(5):  # worker 1 straggles: every request is decoded from workers 0 and 2
            await m.infer(images[:2].reshape(1, 2, 28, 28), info=(info := {}))
            assert sorted(info["decode"]["subset"]) == [0, 2]
        restarted, straggler = ray.get([workers.actors[0].server_stats.remote(), workers.actors[1].server_stats.remote()])
        assert restarted["requests"] >= 5  # the restarted worker is used again
        assert straggler["cancelled"] > 0  # late requests were cancelled on the straggler, not computed
    finally:
        await m.close()
        workers.stop()


@needs_ray
def test_edgecc_master_runs_on_ray_actors_and_matches_tcp_workers(ray_instance, ray_workers, tmp_path):
    import ray

    from .conftest import WorkerProcess

    env = {**os.environ, "RAY_ADDRESS": ray_instance}  # the module's instance: no second one to start
    common = ["--limit", "200", "--groups-per-request", "4", "--in-flight", "2", "--quiet", "--wait", "30"]

    def master(workers: str, name: str, *extra: str) -> tuple[dict, np.ndarray]:
        out = tmp_path / f"{name}.npy"
        r = subprocess.run([sys.executable, "-m", "edgecc.cli", "master", "--workers", workers, *common, *extra,
                            "--predictions-out", str(out)], capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out)

    # ray:N: N actors started by the command, and ended with it
    summary, _ = master("ray:3", "ray-n")
    assert summary["requests_failed"] == 0 and summary["requests_decoded"] == 25
    assert all(w["address"].startswith("ray://edgecc-worker-") for w in summary["workers"])
    deadline = time.monotonic() + 10
    while any(a["name"].startswith("edgecc-worker-") for a in ray.util.list_named_actors(all_namespaces=True)):
        assert time.monotonic() < deadline, ray.util.list_named_actors(all_namespaces=True)
        time.sleep(0.2)
    # actors someone else started (worker 1 straggling), against TCP worker processes with the same straggler
    tcp = [WorkerProcess(tmp_path, f"w{i}", ["--behaviour", json.dumps({"latency": {"dist": "constant", "value": 0.2}})]
                         if FAULTS[i] else []) for i in range(3)]
    try:
        for w in tcp:
            w.start()
        for scheme in ("aicc", "approxifer"):  # uncoded's worker call is approxifer's; the scenario test below runs all three
            on_ray, ray_preds = master(",".join(ray_workers.addresses), f"ray-{scheme}", "--scheme", scheme)
            on_tcp, tcp_preds = master(",".join(f"127.0.0.1:{w.port}" for w in tcp), f"tcp-{scheme}", "--scheme", scheme)
            assert on_ray["requests_failed"] == on_tcp["requests_failed"] == 0, scheme
            assert on_ray["accuracy"] == on_tcp["accuracy"], scheme
            np.testing.assert_array_equal(ray_preds, tcp_preds, err_msg=scheme)
    finally:
        for w in tcp:
            w.kill()


SCENARIO = """
name = "ray-vs-tcp"
seed = 3
images = "sample"
requests = 10
groups_per_request = 2
schemes = ["aicc", "approxifer", "uncoded"]
timeout_s = 10.0
backend = "{backend}"
[arrival]
process = "closed"
concurrency = 2
[defaults]
latency = {{ dist = "constant", value = 0.002 }}
[[workers]]
[[workers]]
latency = {{ dist = "shifted_exponential", shift = 0.1, mean = 0.05 }}   # always the last to answer
[[workers]]
"""


@needs_ray
def test_a_scenario_on_ray_actors_reports_what_it_reports_on_tcp_workers(ray_instance, tmp_path):
    from edgecc.scenario.runner import run_scenario
    from edgecc.scenario.spec import load_scenario

    (tmp_path / "s.toml").write_text(SCENARIO.format(backend="ray"))
    on_ray = load_scenario(tmp_path / "s.toml")
    assert on_ray.backend == "ray"
    runs = {b: run_scenario(dataclasses.replace(on_ray, backend=b), tmp_path / b) for b in ("tcp", "ray")}
    requests = {b: json.loads((tmp_path / b / "requests.json").read_text()) for b in runs}
    for scheme in ("aicc", "approxifer", "uncoded"):
        for b in runs:
            assert runs[b][scheme]["decoded_fraction"] == 1.0 and runs[b][scheme]["failed"] == 0, (b, scheme)
        assert runs["ray"][scheme]["accuracy"] == runs["tcp"][scheme]["accuracy"], scheme
        # the same images, the same stragglers: each request decoded from the same workers, as correctly
        same = [(r["correct"], r["workers"]) for r in requests["ray"][scheme]]
        assert same == [(r["correct"], r["workers"]) for r in requests["tcp"][scheme]], scheme
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["scenario"]["backend"] == "ray"


def test_a_scenario_refuses_an_unknown_backend_and_ray_with_shaped_links(tmp_path):
    from edgecc.errors import ConfigError
    from edgecc.scenario.spec import load_scenario

    for backend, extra, why in (("kubernetes", "", "backend: must be one of tcp, ray"),
                                ("ray", "link = { rate_mbit = 2.0 }\n", "shaped links runs TCP worker processes")):
        text = SCENARIO.format(backend=backend).replace("[[workers]]\n[[workers]]", f"[[workers]]\n{extra}[[workers]]", 1)
        (tmp_path / "s.toml").write_text(text)
        with pytest.raises(ConfigError, match=why):
            load_scenario(tmp_path / "s.toml")
