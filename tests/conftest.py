"""Shared fixtures: a token, real worker processes on loopback, small models."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecc.launch.local import LocalWorker

TOKEN = "test-token-0123456789abcdef0123456789"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _token_env(monkeypatch):
    monkeypatch.setenv("EDGECC_TOKEN", TOKEN)
    monkeypatch.delenv("EDGECC_TOKEN_FILE", raising=False)


class WorkerProcess(LocalWorker):
    """A worker for tests: info-level logs in tmp, the test token."""

    def __init__(self, tmp: Path, name: str, extra: list[str] | None = None, env: dict | None = None):
        super().__init__(tmp, name, ["--log-level", "info", *(extra or [])], {"EDGECC_TOKEN": TOKEN, **(env or {})})


async def until_lost(master, index: int) -> None:
    """Wait (up to 5 s) until `master` has noticed that worker `index` is gone."""
    import asyncio

    for _ in range(100):
        if not master.links[index].ready.is_set():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the master never noticed worker {index} died")


def started_together(tmp: Path, args: dict[str, list[str]], env: dict | None = None):
    """Named workers (name -> extra arguments), launched in parallel and yielded once all listen; killed
    after. For module-scoped fixtures: `yield from started_together(...)`."""
    ws = {name: WorkerProcess(tmp, name, extra, env) for name, extra in args.items()}
    try:
        for w in ws.values():
            w.launch()
        for w in ws.values():
            w.wait_started()
        yield ws
    finally:
        for w in ws.values():
            w.kill()


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
    """Untrained-but-deterministic model files: AICC of several schemes (for exactness tests) and a learned code."""
    import torch

    from edgecc.coding.schemes import Scheme, systematic_betas
    from edgecc.modelfile import save_model
    from edgecc.nets import AICC

    out = {}
    d = tmp_path_factory.mktemp("models")
    schemes = {"hb": Scheme(K=2, G=1), "hs": Scheme(K=2, G=1, P=2, computation="hs"),
               # H_S with several maps and narrower coefficient networks: both travel in the shared placement's spec
               "hs-maps": Scheme(K=2, G=1, P=2, computation="hs", maps=3, coef_width=24),
               # its own points in [−1, 1]: with N=3 the workers sit at α = 1, 0, −1
               "hs-cheb": Scheme(K=2, G=1, P=2, computation="hs", data_points=tuple(systematic_betas(2)),
                                 worker_points="chebyshev-extreme")}
    for name, s in schemes.items():
        torch.manual_seed(1)
        m = AICC(s)
        path = d / f"{name}.safetensors"
        save_model(path, m, {"kind": "aicc", "scheme": s.to_dict()})
        out[name] = path
    from edgecc.nets import CentralizedMLP
    from edgecc.nets.learned_code import LearnedCode

    torch.manual_seed(3)  # "lc": the learned code [10], conv parity encoder, k=2, around a random base MLP
    out["lc"] = d / "lc.safetensors"
    save_model(out["lc"], LearnedCode("cl", 2, CentralizedMLP()), {"kind": "learned-code", "code": {"arch": "cl", "k": 2}})
    return out
