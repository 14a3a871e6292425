"""workers/Containerfile built with podman and the worker run from the image against a master.

The image is built from a context holding only what the Containerfile copies (pyproject.toml and
edgecc/), on the base named by $EDGECC_CONTAINER_BASE, default localhost/edgecc-base:bookworm: a
Debian 12 minbase with python3 imported into podman by `workers/pi-standin.sh base` (where a
registry is reachable, BASE=docker.io/library/python:3.11-slim builds the same way). Three
containers run the image's ENTRYPOINT (with `buildah run`: plain `podman run` needs cgroups this
kind of machine may not give) with the bundle and token mounted read-only as the README says; an
x86 master in the test process decodes through them. The build must also refuse a base whose
Python has torch.

Needs root, podman and buildah, and the base image (`sudo ./run.sh pi-test` makes it); skips with
that reason otherwise (EDGECC_PI_TESTS=1 runs them and turns a skip into a failure).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from .pi_board import free_port, pi_tests_skipped, wait_port

REPO = Path(__file__).resolve().parent.parent
BASE = os.environ.get("EDGECC_CONTAINER_BASE", "localhost/edgecc-base:bookworm")
IMAGE = "localhost/edgecc-worker:test"
TOKEN = os.urandom(32).hex()


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building and running the worker image needs root (podman/buildah with chroot isolation)"
    for tool in ("podman", "buildah"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found (apt-get install podman buildah)"
    if subprocess.run(["podman", "image", "exists", BASE], capture_output=True, timeout=60).returncode != 0:
        return (f"no container base image {BASE} (no registry needed: `sudo ./run.sh pi-test` builds it with "
                "mmdebstrap; or set EDGECC_CONTAINER_BASE to an image with python3 >= 3.11)")
    return None


_why = pi_tests_skipped() or _unavailable()
if _why and os.environ.get("EDGECC_PI_TESTS") == "1":
    raise RuntimeError(f"EDGECC_PI_TESTS=1 but the container test cannot run: {_why}")
pytestmark = [pytest.mark.skipif(_why is not None, reason=_why or ""), pytest.mark.slow]


def podman_build(context: Path, tag: str, base: str, *extra: str) -> subprocess.CompletedProcess:
    # pip in the build trusts what pip here trusts (a TLS-inspecting proxy's CA, if this host has one)
    ca = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    ca_args = ["-v", f"{ca}:/run/host-ca.pem:ro", "--build-arg", "PIP_CERT=/run/host-ca.pem"] if ca and Path(ca).is_file() else []
    return subprocess.run(["nice", "-n", "10", "podman", "build", "--isolation", "chroot", "--network", "host", *ca_args,
                           *extra, "--build-arg", f"BASE={base}", "-f", str(REPO / "workers" / "Containerfile"), "-t", tag,
                           str(context)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """The worker image, built from pyproject.toml + edgecc/ (podman's layer cache makes a rebuild quick)."""
    ctx = tmp_path_factory.mktemp("container-context")
    shutil.copy(REPO / "pyproject.toml", ctx / "pyproject.toml")
    shutil.copytree(REPO / "edgecc", ctx / "edgecc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    before = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE], capture_output=True, text=True)
    r = podman_build(ctx, IMAGE, BASE)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    if before.returncode == 0 and before.stdout.strip() != inspect(IMAGE)["Id"]:
        # the tag moved to the new build: drop the old image rather than leave it behind untagged
        subprocess.run(["podman", "rmi", before.stdout.strip()], capture_output=True, timeout=120)
    return IMAGE


def inspect(image: str) -> dict:
    r = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(r.stdout)[0]


class ImageWorker:
    """One container from the image running its ENTRYPOINT on 127.0.0.1:PORT (host network), files mounted :ro."""

    def __init__(self, image: str, tmp: Path, bundle: Path, token: Path):
        self.name = f"edgecc-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.log = tmp / f"{self.name}.log"
        cfg = inspect(image)["Config"]
        r = subprocess.run(["buildah", "from", "--name", self.name, image], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # the image's own entrypoint; a later --listen wins over its 0.0.0.0:7700 (click keeps the last)
        argv = [*cfg["Entrypoint"], *cfg["Cmd"], "--listen", f"127.0.0.1:{self.port}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["buildah", "run", "--isolation", "chroot", "--network", "host",
                 "-v", f"{bundle}:/opt/edgecc/bundle.safetensors:ro", "-v", f"{token}:/run/secrets/edgecc_token:ro",
                 "--env", "EDGECC_TOKEN_FILE=/run/secrets/edgecc_token", self.name, "--", *argv],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, 90, self.proc, "the worker in the container")
        except RuntimeError as e:
            self.close()
            raise AssertionError(f"{e}: {self.log.read_text(errors='replace')[-3000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=120)


@pytest.fixture
def token_file(tmp_path) -> Path:
    p = tmp_path / "token"
    p.write_text(TOKEN)
    # the image's user is uid 10001; the file is mounted read-only, as the README's docker recipe does
    os.chown(p, 10001, 10001)
    p.chmod(0o400)
    return p


def test_image_is_worker_only_non_root_and_small(image):
    info = inspect(image)
    cfg = info["Config"]
    assert cfg["User"] == "edgecc:edgecc"
    assert cfg["Entrypoint"] == ["edgecc", "worker", "--listen", "0.0.0.0:7700"]
    assert "7700/tcp" in cfg.get("ExposedPorts", {})
    name = f"edgecc-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["buildah", "from", "--name", name, image], capture_output=True, text=True, timeout=120, check=True)
    try:
        r = subprocess.run(["buildah", "run", "--isolation", "chroot", name, "--", "python", "-c",
                            "import importlib.util, json, os, sys, numpy; print(json.dumps({'uid': os.getuid(),"
                            " 'torch': importlib.util.find_spec('torch') is not None, 'py': sys.version_info[:2],"
                            " 'prefix': sys.prefix}))"], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {"uid": 10001, "torch": False, "py": got["py"], "prefix": "/opt/edgecc/venv"} and got["py"] >= [3, 11]
    assert info["Size"] < 400 * 2**20, f"worker image is {info['Size'] / 2**20:.0f} MiB"


def test_master_decodes_through_three_workers_from_the_image(image, tmp_path, token_file):
    from edgecc.data import load_sample

    bundle = tmp_path / "bundle.safetensors"
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "export", "default", "--out", str(bundle)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    sha = json.loads(r.stdout.strip().splitlines()[-1])["sha256"]
    bundle.chmod(0o644)
    workers = []
    try:
        for _ in range(3):
            workers.append(ImageWorker(image, tmp_path, bundle, token_file))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECC_")}
        env.update(EDGECC_TOKEN_FILE=str(token_file), OMP_NUM_THREADS="1")
        hello = subprocess.run([sys.executable, "-m", "edgecc.cli", "ping", f"127.0.0.1:{workers[0].port}"],
                               capture_output=True, text=True, timeout=60, env=env)
        assert hello.returncode == 0, hello.stderr
        info = json.loads(hello.stdout)
        assert info["bundle"] == sha and info["caps"]["torch"] is False
        r = subprocess.run([sys.executable, "-m", "edgecc.cli", "master", "--workers",
                            ",".join(f"127.0.0.1:{w.port}" for w in workers), "--model", "default", "--images", "sample",
                            "--encode-precision", "fp32", "--quiet", "--json-out", str(tmp_path / "s.json"),
                            "--predictions-out", str(tmp_path / "p.npy")],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:] + "".join(w.log.read_text(errors="replace")[-1000:] for w in workers)
        summary = json.loads((tmp_path / "s.json").read_text())
        preds = np.load(tmp_path / "p.npy")
        _, labels = load_sample()
        assert summary["requests_failed"] == 0 and (preds >= 0).all()
        assert summary["accuracy"] == pytest.approx(100 * float((preds == labels[:len(preds)]).mean()))
        assert summary["accuracy"] > 80, summary  # the shipped model's accuracy on the sample, not chance
    finally:
        for w in workers:
            w.close()


def test_build_refuses_a_base_with_torch(tmp_path):
    """A base whose Python already has torch must not become a worker image (the Containerfile's check)."""
    fake_base = f"localhost/edgecc-torch-base:{uuid.uuid4().hex[:8]}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # BASE with a package named torch on its PYTHONPATH, as an ML base image would carry it
    (ctx / "Containerfile").write_text(f"FROM {BASE}\nRUN mkdir -p /opt/extra/torch && touch /opt/extra/torch/__init__.py\n"
                                       "ENV PYTHONPATH=/opt/extra\n")
    r = subprocess.run(["podman", "build", "--isolation", "chroot", "--layers=false", "-t", fake_base, str(ctx)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    try:
        src = tmp_path / "src"
        src.mkdir()
        shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
        shutil.copytree(REPO / "edgecc", src / "edgecc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # --layers=false: a failed build then leaves no intermediate images behind
        r = podman_build(src, f"localhost/edgecc-refused:{uuid.uuid4().hex[:8]}", fake_base, "--layers=false")
        assert r.returncode != 0
        assert "torch must not be in the worker image" in r.stdout + r.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", fake_base], capture_output=True, timeout=120)
