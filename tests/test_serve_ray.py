"""`edgecc serve --ray`: the service on Ray Serve (serve/ray_app.py), replicas that each hold a master,
behind Ray Serve's HTTP proxy, sharing one pool of workers; their reports summed (serve/aggregate.py).

The board's sums are checked without Ray. The rest runs on one local Ray instance (2 CPUs) with Ray
Serve's proxy on a free port: `edgecc serve --ray --replicas 2 --workers ray:3` as a process answers
through the proxy and drains on SIGTERM; a deployment of two replicas answers what the single-process
service answers (its table of bad requests included), reports per replica and in total, loses no
request when a replica is killed under load (the ingress sends it to the other) nor when a redeploy
replaces every replica under load (each drains first). Without ray installed those tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="edgecc serve needs the serve extra (pip install 'edgecc[serve]')")
pytest.importorskip("prometheus_client", reason="edgecc serve needs the serve extra (pip install 'edgecc[serve]')")

from edgecc.data import load_sample  # noqa: E402
from edgecc.serve.inputs import encode_png  # noqa: E402

from .conftest import TOKEN  # noqa: E402
from .test_serve import BAD, CLIENT_TOKEN, call, classify, free_port  # noqa: E402

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'edgecc[ray]'; CI installs it)")
DELAY = json.dumps({"latency": {"dist": "constant", "value": 0.15}})  # every worker: requests stay in flight a while


# -- without Ray ----------------------------------------------------------------------------------------

def test_without_ray_the_service_says_what_to_install(monkeypatch):
    from edgecc.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "edgecc.serve.ray_app", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'edgecc\[ray\]'"):
        importlib.import_module("edgecc.serve.ray_app")


def test_ray_options_need_ray_and_a_port():
    from click.testing import CliRunner

    from edgecc.cli import main

    r = CliRunner().invoke(main, ["serve", "--replicas", "2", "--workers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"],
                           env={"EDGECC_TOKEN": TOKEN})
    assert r.exit_code == 2 and "--replicas: only with --ray" in r.output
    r = CliRunner().invoke(main, ["serve", "--ray", "--listen", "127.0.0.1:0", "--workers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"],
                           env={"EDGECC_TOKEN": TOKEN})
    assert r.exit_code == 2 and "needs a port of its own" in r.output


class _Link(SimpleNamespace):
    pass


def _service(N: int = 3):
    """A stand-in for serve.app.Service with real ServiceMetrics (what replica_report reads)."""
    from edgecc.serve.metrics import ServiceMetrics

    links = [_Link(index=i, address=f"127.0.0.1:{7700 + i}", connects=1, last_error=None,
                   ready=SimpleNamespace(is_set=lambda: True)) for i in range(N)]
    master = SimpleNamespace(links=links, stats={"late_results": 0})
    plan = SimpleNamespace(N=N, K=2, need="R=2", reachable=lambda ready: len(ready) >= 2)
    return SimpleNamespace(metrics=ServiceMetrics(master, N), master=master, plan=plan, scheme="aicc", draining=False,
                           batcher=SimpleNamespace(queue=[], in_flight=0, window_s=0.002))


def _traffic(svc, requests: int) -> None:
    for _ in range(requests):
        svc.metrics.observe_group({"groups": 1, "padding_slots": 0, "decoded_by": [0, 2], "error_bound": 1e-4,
                                   "encode_ms": 1.0}, {"result_ms": {0: 2.0, 1: 40.0, 2: 3.0}}, [0.5, 0.5])
        svc.metrics.observe_request(200, 0.01, 2, [0.5, 0.5])
    svc.metrics.observe_request(503, 0, 0, [])


def test_the_board_reports_each_replica_and_their_sum():
    from prometheus_client.parser import text_string_to_metric_families

    from edgecc.serve.aggregate import FORGET_S, STALE_S, Board, replica_report

    now = [100.0]
    board = Board(clock=lambda: now[0])
    assert board.ready() == (False, "no replica has reported yet")
    a, b = _service(), _service()
    _traffic(a, 3)
    _traffic(b, 5)
    board.push(replica_report(a, "a", "actor-a", 0))
    board.push(replica_report(b, "b", "actor-b", 0))
    _traffic(b, 1)  # the next report carries the same second again, grown: it replaces, never adds twice
    board.push(replica_report(b, "b", "actor-b", max(x["t"] for x in b.metrics.history)))

    def requests(text: bytes) -> dict[tuple[str, str], float]:
        fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
        return {(s.labels["replica"], s.labels["code"]): s.value for s in fams["edgecc_serve_requests"].samples
                if s.name.endswith("_total")}

    got = requests(board.prometheus())
    assert got[("a", "200")] == 3 and got[("b", "200")] == 6 and got[("total", "200")] == 9
    assert got[("total", "503")] == 3  # one per _traffic
    stats = board.stats()
    assert [r["replica"] for r in stats["replicas"]] == ["a", "b"] and stats["replicas_alive"] == 2
    assert sum(s["images"] for s in stats["series"]) == 18  # 9 requests of 2 images, all replicas
    assert sum(s["images"] for s in stats["replicas"][1]["series"]) == 12
    assert [w["state"] for w in stats["workers"]] == ["ok", "straggler", "ok"]  # worker 1: 40 ms against 2-3 ms
    assert board.ready() == (True, "2 of 2 replicas ready")
    # a replica that stops reporting is gone (not ready), then forgotten; the total keeps its counts
    now[0] += STALE_S + 1
    board.push(replica_report(b, "b", "actor-b", 0))
    assert [r["state"] for r in board.stats()["replicas"]] == ["gone", "serving"]
    now[0] += FORGET_S
    board.push(replica_report(b, "b", "actor-b", 0))
    got = requests(board.prometheus())
    assert ("a", "200") not in got and got[("total", "200")] == 9
    b.draining = True
    board.push(replica_report(b, "b", "actor-b", 0))
    assert board.ready() == (False, "every replica is draining")


# -- on Ray -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_serve():
    """A local Ray instance (2 CPUs) with Ray Serve's proxy on a free port, for the module."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    yield SimpleNamespace(gcs=ray.get_runtime_context().gcs_address, port=port, url=f"http://127.0.0.1:{port}")
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while call(url + "/readyz", token=None)[0] != 200:
        assert time.monotonic() < deadline, call(url + "/readyz", token=None)
        time.sleep(0.1)


@needs_ray
def test_edgecc_serve_ray_answers_through_rays_proxy_and_drains_on_sigterm(ray_serve, sample, tmp_path):
    """First in the module: the command's application takes the proxy's route "/" while it runs."""
    import ray

    (tmp_path / "client.token").write_text(CLIENT_TOKEN + "\n")
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "edgecc.cli", "serve", "--ray", "--replicas", "2", "--replica-cpus", "0.25",
           "--workers", "ray:3", "--listen", f"127.0.0.1:{ray_serve.port}", "--app-name", "cli",
           "--client-token-file", str(tmp_path / "client.token"), "--port-file", str(tmp_path / "port"), "--wait", "60"]
    env = {**os.environ, "EDGECC_TOKEN": TOKEN, "RAY_ADDRESS": ray_serve.gcs}  # the module's instance and Serve
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "port").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        svc = SimpleNamespace(url=ray_serve.url, ctx=None)
        png = encode_png(sample[0][3])
        status, doc, _ = call(svc.url + "/v1/classify", png, "image/png")
        assert status == 200, doc
        assert doc["results"][0]["label"] == int(np.argmax(doc["results"][0]["scores"]))
        assert len(doc["results"][0]["decoded_by"]) == 2  # AICC: any R = 2 of the 3 Ray workers
        stats = call(svc.url + "/v1/stats")[1]
        assert len(stats["replicas"]) == 2 and all(w["address"].startswith("ray://") for w in stats["workers"]), stats
        # SIGTERM while a client keeps sending: each request is answered, or refused before it is taken
        codes: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                codes.append(classify(svc, sample[0][:2], timeout=60)[0])

        t = threading.Thread(target=client)
        t.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
        stop.set()
        t.join()
        assert "edgecc serve: stopped" in log.read_text()
        assert codes.count(200) >= 1 and set(codes) <= {200, 503, 404}, codes  # 503: draining; 404: the route is gone
        apps = ray.serve.status().applications
        assert "cli" not in apps and "cli-masters" not in apps
        assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("edgecc-worker-")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def service(ray_serve, tmp_path_factory):
    """Two master replicas on three TCP worker processes (each answering after 150 ms)."""
    from edgecc.serve.ray_app import Scaling, ServiceConfig, deploy, shutdown

    from .conftest import WorkerProcess

    tmp = tmp_path_factory.mktemp("serve-ray")
    workers = [WorkerProcess(tmp, f"w{i}", ["--behaviour", DELAY]).launch() for i in range(3)]
    for w in workers:
        w.wait_started()
    config = ServiceConfig("aicc", tuple(f"127.0.0.1:{w.port}" for w in workers), TOKEN.encode(),
                           client_token=CLIENT_TOKEN.encode(), wait=60)
    deploy(config, Scaling(replicas=2, replica_cpus=0.5), "t", log_level="warning")
    svc = SimpleNamespace(url=ray_serve.url, ctx=None, config=config)
    _wait_ready(svc.url)
    yield svc
    shutdown("t")
    for w in workers:
        w.kill()


def _metrics(svc) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = call(svc.url + "/metrics")[1]["_raw"].decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@needs_ray
def test_two_replicas_answer_as_the_single_process_service(service, sample):
    images, labels = sample
    status, png, _ = call(service.url + "/v1/samples/3.png")
    assert status == 200 and png["_raw"].startswith(b"\x89PNG")
    status, doc, _ = call(service.url + "/v1/classify", png["_raw"], "image/png")
    assert status == 200 and doc["results"][0]["group"]["padding_slots"] == 1, doc
    for case, (expect, send) in sorted(BAD.items()):  # serve.app's own table, through the proxy and the ingress
        status, doc, headers = send(service, images)
        assert status == expect, (case, doc)
        assert isinstance(doc.get("error"), str) and doc["error"], (case, doc)
        if expect == 401:
            assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer"), case
    status, doc, headers = classify(service, images[:1], headers={"X-Deadline-Ms": "0.5"})
    assert status == 503 and "deadline" in doc["error"] and int(headers["retry-after"]) >= 1, doc
    # many at once: both replicas take some, and each image is answered as the model answers it
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: classify(service, images[2 * i: 2 * i + 2]), range(24)))
    assert all(a[0] == 200 for a in answers), [a[1] for a in answers if a[0] != 200]
    got = np.array([r["label"] for a in answers for r in a[1]["results"]])
    assert (got == labels[:48]).mean() >= 0.75
    time.sleep(1.5)  # a report from each replica (every second)
    fams = _metrics(service)
    by = {(s.labels["replica"], s.labels["code"]): s.value for s in fams["edgecc_serve_requests"].samples
          if s.name.endswith("_total")}
    replicas = {r for r, _ in by} - {"total"}
    assert len(replicas) == 2 and all(by.get((r, "200"), 0) >= 1 for r in replicas), by
    assert by[("total", "200")] == sum(by.get((r, "200"), 0) for r in replicas) >= 25  # 1 + 24
    assert {s.labels["state"]: s.value for s in fams["edgecc_serve_replicas"].samples}["serving"] == 2
    stats = call(service.url + "/v1/stats")[1]
    assert stats["scheme"] == "aicc" and stats["N"] == 3 and len(stats["workers"]) == 3
    assert sorted(r["replica"] for r in stats["replicas"]) == sorted(replicas)
    assert sum(s["images"] for s in stats["series"]) == sum(sum(s["images"] for s in r["series"]) for r in stats["replicas"])
    assert call(service.url + "/", token=None)[1]["_raw"].startswith(b"<!doctype html>")
    assert call(service.url + "/healthz", token=None)[0] == 200


def _load(url: str, rate: float, duration: float, seed: int, out: dict) -> threading.Thread:
    from edgecc.serve.load import run_load

    def go() -> None:
        out["summary"] = asyncio.run(run_load(url, rate, duration, seed=seed, timeout=60, token=CLIENT_TOKEN))

    t = threading.Thread(target=go)
    t.start()
    return t


@needs_ray
def test_a_replica_killed_under_load_loses_no_request(service, sample):
    import ray

    retried_before = _metrics(service)["edgecc_serve_ingress_retried"].samples
    retried_before = next(s.value for s in retried_before if s.labels["ingress"] == "total")
    out: dict = {}
    t = _load(service.url, 30, 6, 1, out)
    time.sleep(2)
    victim = next(r for r in call(service.url + "/v1/stats")[1]["replicas"] if r["state"] == "serving")
    # a burst just before the kill, so that the victim certainly holds requests (each takes >= 150 ms)
    with ThreadPoolExecutor(12) as pool:
        burst = [pool.submit(classify, service, sample[0][i: i + 1], timeout=60) for i in range(12)]
        time.sleep(0.05)
        ray.kill(ray.get_actor(victim["actor"], namespace="serve"))
        burst = [f.result() for f in burst]
    t.join()
    s = out["summary"]
    assert [b[0] for b in burst] == [200] * 12, [b[1] for b in burst if b[0] != 200]
    assert s["status"] == {"200": s["requests"]} and s["requests"] >= 100, s
    time.sleep(1.5)
    fams = _metrics(service)
    retried = next(x.value for x in fams["edgecc_serve_ingress_retried"].samples if x.labels["ingress"] == "total")
    assert retried > retried_before  # the victim held requests, and they were answered by the other replica
    # Ray Serve replaces it; the board counts the new one serving and the victim gone
    deadline = time.monotonic() + 60
    while True:
        states = {r["replica"]: r["state"] for r in call(service.url + "/v1/stats")[1]["replicas"]}
        if states.get(victim["replica"]) == "gone" and list(states.values()).count("serving") == 2:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


@needs_ray
def test_more_replicas_than_the_cluster_can_place_are_refused(service):
    from edgecc.errors import EdgeccError
    from edgecc.serve.ray_app import Scaling, deploy

    with pytest.raises(EdgeccError, match="need 5 CPUs; this Ray cluster has 2"):
        deploy(service.config, Scaling(replicas=5), "t")  # Serve would wait for them forever


@needs_ray
def test_a_redeploy_under_load_drains_every_replica_first(service):
    """Deploying again replaces every replica (Ray Serve's rolling update): each old one stops taking
    requests, answers what it holds, closes its master; nothing is lost meanwhile."""
    from edgecc.serve.ray_app import Scaling, deploy

    before = {r["replica"] for r in call(service.url + "/v1/stats")[1]["replicas"] if r["state"] == "serving"}
    out: dict = {}
    t = _load(service.url, 20, 6, 2, out)
    time.sleep(1.5)
    deploy(service.config, Scaling(replicas=1, replica_cpus=0.5), "t", log_level="warning")
    t.join()
    s = out["summary"]
    assert s["status"] == {"200": s["requests"]} and s["requests"] >= 60, s
    deadline = time.monotonic() + 30  # each old replica's last report comes once it has closed its master
    while True:
        reps = {r["replica"]: r for r in call(service.url + "/v1/stats")[1]["replicas"]}
        # the board is its own application, which the redeploy leaves in place: each old replica's last
        # report ("stopped", drained) lands where the new replica reports
        if all(reps.get(r, {}).get("state") == "stopped" for r in before) and [r["state"] for r in reps.values()].count("serving") == 1:
            break
        assert time.monotonic() < deadline, reps
        time.sleep(0.5)
    assert all(reps[r]["drained"] is True for r in before), reps


@needs_ray
def test_the_single_process_service_never_imports_ray():
    code = ("import sys, edgecc.cli, edgecc.cli.serving, edgecc.serve.app, edgecc.serve.aggregate, edgecc.serve.load; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
