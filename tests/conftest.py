"""Shared fixtures: a token, real worker processes on loopback, small models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789abcdef0123456789"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _token_env(monkeypatch):
    monkeypatch.setenv("EDGECC_TOKEN", TOKEN)
    monkeypatch.delenv("EDGECC_TOKEN_FILE", raising=False)


class WorkerProcess:
    """`edgecc worker` in its own process on 127.0.0.1 (port 0 on first start, same port on restart)."""

    def __init__(self, tmp: Path, name: str, extra: list[str] | None = None, env: dict | None = None):
        self.tmp, self.name, self.extra, self.env = tmp, name, extra or [], env
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"{name}.log"

    def start(self, timeout: float = 30.0) -> "WorkerProcess":
        port_file = self.tmp / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "EDGECC_TOKEN": TOKEN, **(self.env or {})}
        cmd = [sys.executable, "-m", "edgecc.cli", "worker", "--listen", f"127.0.0.1:{self.port}",
               "--port-file", str(port_file), "--log-level", "info", *self.extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def spawn_workers(tmp_path):
    started: list[WorkerProcess] = []

    def spawn(n: int, extra: list[str] | None = None, env: dict | None = None) -> list[WorkerProcess]:
        ws = [WorkerProcess(tmp_path, f"w{len(started) + i}", extra, env) for i in range(n)]
        for w in ws:
            w.start()
        started.extend(ws)
        return ws

    yield spawn
    for w in started:
        w.kill()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Untrained-but-deterministic AICC model files of several schemes (for exactness tests)."""
    import torch

    from edgecc.coding.schemes import Scheme
    from edgecc.modelfile import save_model
    from edgecc.nets import AICC

    out = {}
    d = tmp_path_factory.mktemp("models")
    for name, s in {"hb": Scheme(K=2, G=1), "hs": Scheme(K=2, G=1, P=2, computation="hs")}.items():
        torch.manual_seed(1)
        m = AICC(s)
        path = d / f"{name}.safetensors"
        save_model(path, m, {"kind": "aicc", "scheme": s.to_dict()})
        out[name] = path
    return out
