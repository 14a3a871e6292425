"""The worker-only install: a fresh venv with the package's base dependencies and no torch.

This is what a Raspberry Pi or the worker container gets (workers/README.md). The venv is built
once per session from a copy of `pyproject.toml` + `edgecc/` (as workers/Containerfile does),
installed with plain `pip install SRC`, so exactly the base `dependencies` of pyproject.toml come
in and nothing from the `ml`/`test` extras. Workers run from that venv's `edgecc` script; the
master runs here, in the test process (which has torch), and its decoded results must equal the
in-process model. Skips, with the reason, when no package index is reachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from edgecc.launch.local import LocalWorker

from .conftest import REPO, TOKEN

TOK = TOKEN.encode()

# pip's answers when the index cannot be reached (these mean "skip", anything else fails the test)
OFFLINE_HINTS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                 "Network is unreachable", "Name or service not known", "ConnectTimeoutError", "ReadTimeoutError",
                 "No matching distribution found", "Could not find a version that satisfies", "ProxyError",
                 "Connection refused", "SSLError")


def base_requirement_names() -> set[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = set()
    for d in deps:
        name = d.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def venv_env() -> dict[str, str]:
    """The environment for the venv's programs: nothing that points back at the main checkout/venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["EDGECC_TOKEN"] = TOKEN
    env.pop("EDGECC_TOKEN_FILE", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="session")
def worker_venv(tmp_path_factory) -> Path:
    """A venv holding `edgecc` + its base dependencies only (built once per session)."""
    root = tmp_path_factory.mktemp("worker-venv")
    src, venv = root / "src", root / "venv"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(REPO / "edgecc", src / "edgecc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"cannot create a venv here (python3 -m venv failed: {r.stderr.strip()[-300:]})")
    # Not --no-deps: pip resolves pyproject's base dependencies itself, which is what is under test.
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--timeout", "20", "--retries", "1",
                        str(src.resolve())], capture_output=True, text=True, timeout=600, env=venv_env(), cwd=root)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        hints = [line.strip() for line in out.splitlines() if any(h in line for h in OFFLINE_HINTS)]
        if hints:
            pytest.skip(f"the package index is not reachable, so the worker-only venv cannot be installed: {hints[-1][-300:]}")
        pytest.fail(f"pip install of the worker-only package failed:\n{out[-4000:]}")
    return venv


def venv_python(venv: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60,
                          env=venv_env(), cwd=venv.parent)


class VenvWorker(LocalWorker):
    """`VENV/bin/edgecc worker` on 127.0.0.1, in an environment that does not point back at the main venv."""

    def __init__(self, venv: Path, tmp: Path, name: str, extra: list[str] | None = None):
        super().__init__(tmp, name, ["--log-level", "info", *(extra or [])], command=[str(venv / "bin" / "edgecc")],
                         base_env=venv_env())


@pytest.fixture
def venv_workers(worker_venv, tmp_path):
    started: list[VenvWorker] = []

    def spawn(n: int, extra: list[str] | None = None) -> list[VenvWorker]:
        ws = [VenvWorker(worker_venv, tmp_path, f"vw{len(started) + i}", extra) for i in range(n)]
        started.extend(ws)
        for w in ws:
            w.start()
        return ws

    yield spawn
    for w in started:
        w.stop()


def direct_logits(model, images: np.ndarray, K: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(images.reshape(-1, K, 28, 28).astype(np.float32) / 255.0)
        return model(x).numpy()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread on the master side: on a small, busy machine two threads make collapsing H_B ~5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hb_plan(tiny_models):
    """The master's plan for the tiny H_B model on N=3 (built once: collapsing H_B runs the CNN on 784 inputs)."""
    from edgecc.modelfile import load_model
    from edgecc.schemes.aicc import CodedPlan

    model, info = load_model(tiny_models["hb"])
    return CodedPlan(model, info, 3, encode_precision="fp32")  # compared with the fp32 model in process


@pytest.fixture(scope="module")
def hb_bundle(tiny_models, tmp_path_factory) -> tuple[Path, str]:
    """`edgecc export` of the tiny H_B model, run in the main venv (with torch): (file, sha256)."""
    out = tmp_path_factory.mktemp("bundle") / "hb.bundle.safetensors"
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "export", str(tiny_models["hb"]), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout.strip().splitlines()[-1])["sha256"]


async def decode_through(workers, plan) -> tuple[np.ndarray, dict, np.ndarray]:
    """A real run through `workers` with the shipped images: (logits of the first 32 groups, summary, predictions)."""
    from edgecc.data import load_sample
    from edgecc.master.master import Master
    from edgecc.master.stream import run_stream

    images, labels = load_sample()
    m = Master(plan, [w.address for w in workers], TOK, request_timeout=20.0)
    try:
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
        logits = await m.infer(images[:64].reshape(-1, plan.K, 28, 28))
        summary, preds = await asyncio.wait_for(run_stream(m, images, labels, groups_per_request=16, in_flight=4), 120)
    finally:
        await m.close()
    return logits, summary, preds


def check_against_in_process(model, logits, summary, preds) -> None:
    from edgecc.data import load_sample

    images, labels = load_sample()
    want = direct_logits(model, images, 2)
    np.testing.assert_allclose(logits, want[:32], rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert summary["requests_failed"] == 0
    assert summary["requests_decoded"] == images.shape[0] // (2 * 16) + bool(images.shape[0] % (2 * 16))
    assert np.array_equal(preds, want.argmax(-1).reshape(-1))
    assert summary["accuracy"] == pytest.approx(100 * float((preds == labels).mean()))


def test_worker_venv_holds_base_dependencies_and_no_torch(worker_venv):
    r = venv_python(worker_venv, "import importlib.util, json, importlib.metadata as md, edgecc, sys\n"
                                 "print(json.dumps({'torch': importlib.util.find_spec('torch') is not None,"
                                 " 'edgecc': edgecc.__file__, 'prefix': sys.prefix,"
                                 " 'dists': sorted(d.metadata['Name'].lower().replace('_', '-') for d in md.distributions())}))")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["torch"] is False
    assert Path(got["edgecc"]).resolve().is_relative_to(worker_venv.resolve()), "the venv must use its own installed copy"
    dists = set(got["dists"])
    assert base_requirement_names() <= dists
    assert not dists & {"torch", "torchvision", "matplotlib", "pytest", "nvidia-cublas-cu12"}, dists
    # `import torch` itself fails, and so does anything that needs it
    r = venv_python(worker_venv, "import torch")
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    # the worker path imports without torch
    r = venv_python(worker_venv, "import sys, edgecc.worker.server, edgecc.bundle, edgecc.cli; assert 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr


async def test_master_decodes_through_three_torch_free_workers(hb_plan, venv_workers):
    from edgecc.master.probe import probe

    workers = venv_workers(3)
    hello = await probe(workers[0].address, TOK)
    assert hello["caps"]["torch"] is False
    assert "encoded" in hello["caps"]["placements"] and "shared" not in hello["caps"]["placements"]
    assert hello["bundle"] is None  # no bundle: the master sends the arrays at configure
    logits, summary, preds = await decode_through(workers, hb_plan)
    check_against_in_process(hb_plan.model, logits, summary, preds)
    for w in workers:
        assert w.proc.poll() is None, w.logs()
        assert "torch available: False" in w.logs()


async def test_bundle_from_export_serves_torch_free_workers(hb_plan, hb_bundle, venv_workers):
    from edgecc.master.probe import probe

    bundle, sha = hb_bundle
    assert sha == hb_plan.digest  # export and the master's plan agree on the arrays
    workers = venv_workers(3, ["--bundle", str(bundle)])
    hello = await probe(workers[0].address, TOK)
    assert hello["bundle"] == sha and hello["caps"]["torch"] is False  # so the master does not resend the arrays
    logits, summary, preds = await decode_through(workers, hb_plan)
    check_against_in_process(hb_plan.model, logits, summary, preds)


def test_modified_bundle_is_refused_by_the_torch_free_worker(hb_bundle, worker_venv, tmp_path):
    raw = bytearray(hb_bundle[0].read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header + 100] ^= 0x01  # one bit of one weight: still a valid safetensors file
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(raw))
    port_file = tmp_path / "port"
    r = subprocess.run([str(worker_venv / "bin" / "edgecc"), "worker", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                        "--bundle", str(bad)], capture_output=True, text=True, timeout=60, env=venv_env(), cwd=tmp_path)
    assert r.returncode != 0
    assert "checksum mismatch" in r.stderr and "modified or corrupted" in r.stderr
    assert "Traceback" not in r.stderr
    assert not port_file.exists()  # it never started listening
