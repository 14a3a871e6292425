"""A scheme from another package runs end to end with no edit of edgecc: declared in the package's
`edgecc.schemes` entry point (or passed to `register()`), it runs in-process over mem:// workers, and in
`edgecc master`, `edgecc serve` and a scenario over real worker processes.

`sum-code` (PLUGIN below, written to a temporary directory as the package `sumcode_scheme` with
a dist-info declaring its entry point) is a complete scheme the package has never seen: an
MDS-style linear code for a linear classifier. Worker n receives x̃_n = Σ_k C[n, k] x_k (each row of
C sums to 1, so the bias passes through: A·x̃_n + b = Σ_k C[n, k] (A·x_k + b)), and any K answers
decode by solving the K × K system. Its workers run the existing "affine" compute kind, so the
worker, the protocol, the link and the master are used as they are. Its own option `seed` picks
the classifier's weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgecc.data import load_sample
from edgecc.errors import ConfigError
from edgecc.launch.inprocess import InProcessWorkers
from edgecc.master.master import Master
from edgecc.schemes import registry
from edgecc.worker.server import Worker

from .conftest import TOKEN, WorkerProcess

PLUGIN = '''
"""sum-code: any K of N results of a linear classifier decode all K images exactly."""

import numpy as np

from edgecc.bundle import digest
from edgecc.protocol import compute_spec
from edgecc.protocol.frames import pack_array
from edgecc.schemes import Option, Plan, SchemeDef
from edgecc.schemes.base import kth_fastest


def classifier(seed):
    """The (10, 784) weights and (10,) bias every worker holds."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(10, 784)).astype(np.float32), rng.normal(size=10).astype(np.float32)


class SumCode(Plan):
    placement, wire_dtype = "encoded", "f4"

    def __init__(self, K, N, seed, name="sum-code"):
        self.name, self.K, self.N = name, K, N
        self.C = np.vander(np.arange(1, N + 1, dtype=np.float64) / N, K, increasing=True)  # any K rows independent
        self.C /= self.C.sum(axis=1, keepdims=True)
        A, b = classifier(seed)
        self.digest = digest({"affine.weight": A, "affine.bias": b})
        self.wire_arrays = {"affine.weight": pack_array(A), "affine.bias": pack_array(b)}
        self.need = f"any {K} of {N}"

    def compute_spec(self, index):
        return compute_spec.affine()

    def scheme_params(self, index):
        return {"K": self.K, "row": [float(c) for c in self.C[index]]}

    def payloads(self, images):
        x = images.astype(np.float64) / 255.0  # (B, K, 28, 28)
        coded = np.einsum("nk,bkij->nbij", self.C, x).astype(np.float32)
        return [{"x": pack_array(coded[n])} for n in range(self.N)]

    def complete(self, answered):
        return len(answered) >= self.K

    def reachable(self, possible):
        return len(possible) >= self.K

    def decoded(self, results):
        used = sorted(results)[: self.K]
        Y = np.stack([np.asarray(results[n], np.float64) for n in used])  # (K, B, 10)
        Z = np.linalg.solve(self.C[used], Y.reshape(self.K, -1)).reshape(Y.shape)
        return Z.transpose(1, 0, 2), {"subset": used}

    def oracle(self, delays):
        return kth_fastest(delays, self.K)


def build(N, K, *, seed):
    if N < K:
        raise ValueError(f"sum-code needs N >= K = {K} workers, got {N}")
    return SumCode(K, N, seed)


SCHEME = SchemeDef("sum-code", build, "any K of N results of a linear classifier decode all K images exactly",
                   options=(Option("seed", 5, "seed of the classifier's weights", type=int, minimum=0),))
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """A directory holding the package `sumcode_scheme` and the dist-info that declares its entry point,
    as pip would install it: put it on sys.path (or PYTHONPATH) and edgecc finds the scheme."""
    d = tmp_path_factory.mktemp("site")
    (d / "sumcode_scheme").mkdir()
    (d / "sumcode_scheme" / "__init__.py").write_text(PLUGIN)
    info = d / "sumcode_scheme-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sumcode-scheme\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edgecc.schemes]\nsum-code = sumcode_scheme:SCHEME\n")
    return d


def _module(plugin: Path):
    """The plugin's module, loaded from its file (for its classifier, and for register())."""
    spec = importlib.util.spec_from_file_location("sumcode_for_test", plugin / "sumcode_scheme" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def expected_logits(plugin: Path, seed: int, images: np.ndarray) -> np.ndarray:
    A, b = _module(plugin).classifier(seed)
    return (images.astype(np.float64) / 255.0).reshape(len(images), 784) @ A.T.astype(np.float64) + b


async def _decode_in_process(plan, images):
    workers = [Worker(TOKEN.encode()) for _ in range(plan.N)]
    linked = InProcessWorkers(workers)
    m = Master(plan, await linked.start(), TOKEN.encode())
    try:
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
        return await m.infer(images), [w.stats["requests"] for w in workers]
    finally:
        await m.close()
        await linked.close()


async def test_an_entry_point_is_listed_without_import_and_loaded_when_used(plugin, monkeypatch):
    assert "sum-code" not in registry.names()
    monkeypatch.syspath_prepend(str(plugin))
    names = registry.names()
    assert names[-1] == "sum-code" and names[:6] == ("aicc", "uncoded", "replication", "learned-code", "approxifer", "local")
    assert "sumcode_scheme" not in sys.modules  # listing reads only the dist-info
    with pytest.raises(ConfigError, match="scheme 'sum-code' has no option wire_dtype; its options are seed"):
        registry.build_plan("sum-code", 4, 3, wire_dtype="f2")
    with pytest.raises(ConfigError, match="scheme 'sum-code': sum-code needs N >= K = 3 workers, got 2"):
        registry.build_plan("sum-code", 2, 3)
    plan = registry.build_plan("sum-code", 4, 3, seed="7")  # a string, as from the command line
    images = np.random.default_rng(5).integers(0, 256, size=(5, 3, 28, 28), dtype=np.uint8)
    logits, served = await _decode_in_process(plan, images)
    want = expected_logits(plugin, 7, images.reshape(-1, 28, 28)).reshape(5, 3, 10)
    np.testing.assert_allclose(logits, want, rtol=1e-3, atol=1e-3)
    assert all(n >= 1 for n in served[:3])


async def test_register_adds_a_scheme_without_any_packaging(plugin):
    mod = _module(plugin)
    scheme = registry.SchemeDef("sum-code-here", lambda N, K, *, seed: mod.SumCode(K, N, seed, "sum-code-here"),
                                "sum-code, registered in process", options=mod.SCHEME.options)
    registry.register(scheme)
    try:
        plan = registry.build_plan("sum-code-here", 4, 2)
        images = np.random.default_rng(6).integers(0, 256, size=(3, 2, 28, 28), dtype=np.uint8)
        logits, _ = await _decode_in_process(plan, images)
        want = expected_logits(plugin, 5, images.reshape(-1, 28, 28)).reshape(3, 2, 10)
        np.testing.assert_allclose(logits, want, rtol=1e-3, atol=1e-3)
    finally:
        registry.unregister("sum-code-here")
    assert "sum-code-here" not in registry.names()


def _env(plugin: Path) -> dict[str, str]:
    return {**os.environ, "EDGECC_TOKEN": TOKEN, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}


def _cli(plugin: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecc.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(plugin))


def _confident(logits: np.ndarray) -> np.ndarray:
    """Images whose top two expected logits are apart by more than the decode's float32 rounding."""
    top = np.sort(logits, axis=-1)
    return top[..., -1] - top[..., -2] > 1e-2


@pytest.fixture
def workers(tmp_path):
    ws = [WorkerProcess(tmp_path, f"w{i}").start() for i in range(4)]
    yield ws
    for w in ws:
        w.kill()


def test_the_entry_point_scheme_runs_in_edgecc_master(plugin, workers, tmp_path):
    listed = _cli(plugin, "schemes")
    assert listed.returncode == 0 and "sum-code: any K of N" in listed.stdout and "seed = 5" in listed.stdout
    addresses = ",".join(f"127.0.0.1:{w.port}" for w in workers)
    r = _cli(plugin, "master", "--scheme", "sum-code", "--k", "3", "-o", "seed=7", "--workers", addresses,
             "--images", "sample", "--limit", "60", "--groups-per-request", "4", "--quiet",
             "--json-out", str(tmp_path / "s.json"), "--predictions-out", str(tmp_path / "p.npy"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["scheme"], summary["N"], summary["K"], summary["options"]) == ("sum-code", 4, 3, {"seed": 7})
    assert summary["requests_failed"] == 0 and summary["images"] == 60
    images, _ = load_sample()
    want = expected_logits(plugin, 7, images[:60])
    preds = np.load(tmp_path / "p.npy")
    sure = _confident(want)
    assert sure.sum() > 50 and (preds[sure] == want.argmax(-1)[sure]).all()
    # an option the scheme does not declare is refused by name before anything starts
    bad = _cli(plugin, "master", "--scheme", "sum-code", "--placement", "shared", "--workers", addresses)
    assert bad.returncode == 2 and "scheme 'sum-code' has no option placement; its options are seed" in bad.stderr


def test_the_entry_point_scheme_runs_in_edgecc_serve(plugin, workers, tmp_path):
    pytest.importorskip("aiohttp", reason="edgecc serve needs the serve extra (pip install 'edgecc[serve]')")
    pytest.importorskip("prometheus_client", reason="edgecc serve needs the serve extra (pip install 'edgecc[serve]')")
    port_file = tmp_path / "serve.port"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgecc.cli", "serve", "--scheme", "sum-code", "--k", "3",
                             "--option", "seed=7", "--workers", ",".join(f"127.0.0.1:{w.port}" for w in workers),
                             "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--window-ms", "5"],
                            env=_env(plugin), stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while not (port_file.exists() and port_file.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, socket.timeout):
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.1)
        images, _ = load_sample()
        req = urllib.request.Request(url + "/v1/classify", data=images[:6].tobytes(),
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            doc = json.loads(resp.read())
        with urllib.request.urlopen(url + "/v1/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert (stats["scheme"], stats["N"], stats["K"]) == ("sum-code", 4, 3)
    got = np.array([r["logits"] for r in doc["results"]])
    np.testing.assert_allclose(got, expected_logits(plugin, 7, images[:6]), atol=2e-3)


SCENARIO = """
name = "plugin"
seed = 3
requests = 8
groups_per_request = 2
schemes = ["sum-code", "local"]
K = 3
N = 4
[options.sum-code]
seed = 7
[arrival]
process = "closed"
concurrency = 2
[defaults]
latency = { dist = "constant", value = 0.002 }
[[workers]]
[[workers]]
latency = { dist = "constant", value = 0.050 }
[[workers]]
[[workers]]
"""


def test_the_entry_point_scheme_runs_in_a_scenario_beside_the_built_in_ones(plugin, tmp_path):
    f = tmp_path / "plugin.toml"
    f.write_text(SCENARIO)
    r = _cli(plugin, "scenario", "run", str(f), "--out", str(tmp_path / "out"), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "plugin" / "report.json").read_text())
    rows = json.loads((tmp_path / "out" / "plugin" / "requests.json").read_text())
    assert report["scenario"]["options"]["sum-code"] == {"seed": 7} and report["scenario"]["K"] == 3
    assert report["schemes"]["sum-code"]["decoded_fraction"] == 1.0 and report["schemes"]["local"]["decoded_fraction"] == 1.0
    # the oracle is the plugin's own (the 3rd fastest of 4 never waits on the 50 ms worker)
    assert all(x["oracle_ms"] == pytest.approx(2.0) and 1 not in x["workers"] for x in rows["sum-code"])
    images, labels = load_sample()
    n = (len(images) // 3) * 3
    want = expected_logits(plugin, 7, images[:n]).argmax(-1).reshape(-1, 3)
    groups = labels[:n].reshape(-1, 3)
    for x in rows["sum-code"]:  # each request's count of right answers is the classifier's own
        idx = np.arange(x["request"] * 2, x["request"] * 2 + 2) % len(groups)
        assert x["correct"] == int((want[idx] == groups[idx]).sum())
