"""The Raspberry Pi deploy path run for real on an emulated arm64 Debian 12 board (tests/pi_board.py).

- setup-pi.sh runs as root inside a fresh board (systemd start left to the caller: --no-restart),
  then the installed unit's ExecStart is started directly, three times on three ports, and an x86
  `edgecc master` on the host decodes the shipped sample through those three aarch64 workers at the
  model's accuracy; then an update (new bundle) and a token rotation by re-running setup-pi.sh.
- `./run.sh deploy` over real ssh (sshd on 127.0.0.1, sessions chrooted into the board) into three
  fresh boards, whose `+` steps equal its --dry-run's; the master decodes through them; a redeploy
  with a new token reaches a board and the old token stops working there.

The workers use Debian 12's own python3-numpy 1.24, python3-msgpack 1.0.3, python3-click 8.1.3,
python3-threadpoolctl 3.1.0 and python3-uvloop 0.17, with safetensors 0.4.0 from a wheel: the
oldest versions pyproject.toml allows, checked here.

They take minutes under emulation, so the default test run skips them, saying so; `sudo ./run.sh
pi-test` builds the board once (about 6 min, cached) and runs them with EDGECC_PI_TESTS=1, under
which a missing piece (root, binfmt_misc, the cached board) is a failure rather than a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .pi_board import Board, free_port, pi_tests_skipped, unavailable, wait_port

REPO = Path(__file__).resolve().parent.parent
EDGECC = [sys.executable, "-m", "edgecc.cli"]
# The oldest versions the worker supports, which the board runs: Debian 12's packages (bookworm,
# arm64) and, for what Debian lacks, the wheel pi-standin.sh puts in the board's wheelhouse
DEBIAN_12 = {"numpy": "1.24", "msgpack": "1.0.3", "click": "8.1.3", "threadpoolctl": "3.1", "uvloop": "0.17"}
FROM_PIP = {"safetensors": "0.4.0"}

_why = pi_tests_skipped() or unavailable()
if _why and os.environ.get("EDGECC_PI_TESTS") == "1":
    raise RuntimeError(f"EDGECC_PI_TESTS=1 but the arm64 stand-in board cannot run: {_why}")
pytestmark = [pytest.mark.skipif(_why is not None, reason=_why or ""), pytest.mark.slow]


def host_env(token_file: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECC_")}
    env.update(EDGECC_TOKEN_FILE=str(token_file), OMP_NUM_THREADS="1", EDGECC_CACHE="")
    return env


def new_token(path: Path) -> Path:
    path.write_text(os.urandom(32).hex())
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_models):
    """The files a deploy ships: an edgecc wheel, two bundles (the shipped default, a tiny model), tokens."""
    d = tmp_path_factory.mktemp("pi-artifacts")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(d), str(REPO)],
                       capture_output=True, text=True, timeout=300, cwd=d)
    assert r.returncode == 0, r.stderr
    wheel = next(d.glob("edgecc-*.whl"))
    out = {"wheel": wheel, "dir": d, "tiny_model": tiny_models["hb"]}
    for name, model in (("default", "default"), ("tiny", str(tiny_models["hb"]))):
        r = subprocess.run([*EDGECC, "export", model, "--out", str(d / f"{name}.safetensors")], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        out[name] = d / f"{name}.safetensors"
        out[f"{name}_sha"] = json.loads(r.stdout.strip().splitlines()[-1])["sha256"]
    out["token"] = new_token(d / "token")
    out["token2"] = new_token(d / "token2")
    return out


@pytest.fixture(scope="module")
def default_accuracy():
    """The shipped default model's own predictions on the shipped sample, in this process (fp32)."""
    import torch

    from edgecc.data import load_sample
    from edgecc.modelfile import load_model

    model, info = load_model("default")
    images, labels = load_sample()
    K = info["scheme"]["K"]
    n = images.shape[0] - images.shape[0] % K
    with torch.inference_mode():
        logits = model(torch.from_numpy(images[:n].reshape(-1, K, 28, 28).astype(np.float32) / 255.0)).numpy()
    return logits.argmax(-1).reshape(-1), labels[:n]


def run_master(workers: list[int], token_file: Path, out: Path, model: str = "default", limit: int | None = None):
    """The x86 `edgecc master` CLI on this host against workers on 127.0.0.1: (summary, predictions)."""
    cmd = [*EDGECC, "master", "--workers", ",".join(f"127.0.0.1:{p}" for p in workers), "--model", model,
           "--images", "sample", "--encode-precision", "fp32", "--timeout", "60", "--wait", "60", "--quiet",
           "--json-out", str(out / "summary.json"), "--predictions-out", str(out / "preds.npy")]
    if limit:
        cmd += ["--limit", str(limit)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=host_env(token_file))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), np.load(out / "preds.npy")


def ping(port: int, token_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGECC, "ping", f"127.0.0.1:{port}", "--timeout", "20"], capture_output=True, text=True,
                          timeout=60, env=host_env(token_file))


def check_decoded(summary, preds, want_preds, labels):
    """The arm64 run decodes every request, and its predictions are the model's (a near-tie may flip: ≤ 0.2%)."""
    assert summary["requests_failed"] == 0
    assert preds.shape == want_preds.shape
    differ = int((preds != want_preds).sum())
    assert differ <= len(want_preds) // 500, f"{differ} of {len(want_preds)} predictions differ from the model's"
    assert summary["accuracy"] == pytest.approx(100 * float((want_preds == labels).mean()), abs=0.2)


def setup_pi(board: Board, art: dict, *args: str) -> subprocess.CompletedProcess:
    """Copy the deploy files into /root/deploy on the board and run setup-pi.sh there as root."""
    stage = board.path("/root/deploy")
    stage.mkdir(mode=0o700, exist_ok=True)
    for f in ("setup-pi.sh", "edgecc-worker.service", "worker.env.example"):
        shutil.copy(REPO / "workers" / f, stage / f)
    shutil.copy(art["wheel"], stage / art["wheel"].name)
    return board.run(["bash", "/root/deploy/setup-pi.sh", *args, f"/root/deploy/{art['wheel'].name}"], timeout=900)


def stage_file(board: Board, src: Path, name: str) -> str:
    shutil.copy(src, board.path(f"/root/deploy/{name}"))
    return f"/root/deploy/{name}"


class UnitWorkers:
    """The installed unit's ExecStart, started directly (no systemd on the board), once per port."""

    def __init__(self, board: Board, ports: list[int]):
        self.board, self.ports, self.procs = board, ports, []
        self.runner = board.start_service_runner()

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            log = open(self.board.dir / "logs" / f"unit-{port}.log", "ab")
            self.procs.append(subprocess.Popen(self.runner.command({"EDGECC_LISTEN": f"0.0.0.0:{port}"}),
                                               stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for p, port in zip(self.procs, self.ports):
            try:
                wait_port(port, 120, p, "the arm64 worker")
            except RuntimeError as e:
                raise RuntimeError(f"{e}:\n{self.logs()}") from None

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def logs(self) -> str:
        return "\n".join((self.board.dir / "logs" / f"unit-{p}.log").read_text(errors="replace")
                         for p in self.ports if (self.board.dir / "logs" / f"unit-{p}.log").exists())


@pytest.fixture
def board():
    b = Board()
    try:
        yield b
    finally:
        b.close()


def test_setup_pi_on_arm64_board_then_update_and_token_rotation(board, artifacts, default_accuracy, tmp_path):
    art = artifacts
    board.path("/root/deploy").mkdir(mode=0o700)
    bundle = stage_file(board, art["default"], "bundle.safetensors")
    token = stage_file(board, art["token"], "token")
    ports = [free_port() for _ in range(3)]
    r = setup_pi(board, art, "--no-restart", "--bundle", bundle, "--token-file", token, "--port", str(ports[0]))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "Debian packages already installed" in out and "creating venv /opt/edgecc/venv" in out
    assert "creating system user edgecc" in out and f"installing {art['wheel'].name}" in out

    # what it installed, as the board sees it
    tok = board.path("/etc/edgecc/token")
    uid, gid = board.ids("edgecc")
    assert (tok.stat().st_mode & 0o777, tok.stat().st_uid, tok.stat().st_gid) == (0o600, uid, gid)
    assert tok.read_bytes() == art["token"].read_bytes()
    assert board.path("/opt/edgecc/bundle.safetensors").read_bytes() == art["default"].read_bytes()
    assert board.path("/etc/systemd/system/edgecc-worker.service").read_text() == (REPO / "workers" / "edgecc-worker.service").read_text()
    assert board.path("/etc/systemd/system/multi-user.target.wants/edgecc-worker.service").is_symlink()  # enabled
    assert re.search(rf"^EDGECC_LISTEN=0\.0\.0\.0:{ports[0]}$", board.path("/etc/edgecc/worker.env").read_text(), re.M)

    # the venv runs aarch64 Python on Debian 12's packages (the oldest versions pyproject allows), and no torch
    r = board.run(["/opt/edgecc/venv/bin/python", "-c",
                   "import json, platform, importlib.util, numpy, msgpack, click, threadpoolctl, uvloop, safetensors, edgecc;"
                   "print(json.dumps({'machine': platform.machine(), 'numpy': numpy.__version__, 'uvloop': uvloop.__version__,"
                   " 'msgpack': '.'.join(map(str, msgpack.version)), 'click': click.__version__,"
                   " 'safetensors': safetensors.__version__, 'threadpoolctl': threadpoolctl.__version__,"
                   " 'torch': importlib.util.find_spec('torch') is not None,"
                   " 'files': {m.__name__: m.__file__ for m in (numpy, msgpack, click, threadpoolctl, uvloop, safetensors)}}))"], check=True)
    got = json.loads(r.stdout)
    assert got["machine"] == "aarch64" and got["torch"] is False
    for name, version in DEBIAN_12.items():
        assert got[name].startswith(version), (name, got[name])
        assert got["files"][name].startswith("/usr/lib/python3/dist-packages/"), f"{name} must be Debian's, not a wheel"
    for name, version in FROM_PIP.items():
        assert got[name] == version, (name, got[name])
        assert got["files"][name].startswith("/opt/edgecc/venv/"), name
    check_lower_bounds(got)

    # systemd's part, done directly: the unit's ExecStart on three ports; the x86 master decodes through them
    workers = UnitWorkers(board, ports)
    try:
        workers.start()
        want_preds, labels = default_accuracy
        summary, preds = run_master(ports, art["token"], tmp_path)
        check_decoded(summary, preds, want_preds, labels)
        logs = workers.logs()
        assert "torch available: False" in logs
        workers.stop()

        # update: a new bundle and a new token, by re-running setup-pi.sh (the package is unchanged)
        bundle = stage_file(board, art["tiny"], "bundle.safetensors")
        token = stage_file(board, art["token2"], "token")
        r = setup_pi(board, art, "--no-restart", "--bundle", bundle, "--token-file", token, "--port", str(ports[0]))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "edgecc package unchanged" in r.stdout and "venv /opt/edgecc/venv exists" in r.stdout
        assert "installing bundle /opt/edgecc/bundle.safetensors" in r.stdout
        assert "installing the shared token" in r.stdout
        workers.start()
        hello = ping(ports[0], art["token2"])
        assert hello.returncode == 0, hello.stderr
        assert json.loads(hello.stdout)["bundle"] == art["tiny_sha"]  # the new model is loaded
        old = ping(ports[1], art["token"])
        assert old.returncode != 0, "the rotated-out token still opens the worker"
        summary, preds = run_master(ports, art["token2"], tmp_path, model=str(art["tiny_model"]), limit=256)
        assert summary["requests_failed"] == 0 and preds.shape == (256,) and (preds >= 0).all()
    finally:
        workers.stop()


def check_lower_bounds(got: dict) -> None:
    """pyproject's lower bounds admit exactly what ran here: the versions on the board satisfy them."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        m = re.match(r"([A-Za-z0-9_-]+)>=([0-9.]+)", d)
        assert m, f"no lower bound: {d}"
        name, low = m.group(1).lower(), m.group(2)
        if name in got:
            assert got[name].startswith(low), f"pyproject says {d}, but the oldest version tested is {name} {got[name]}"


def deploy(ssh: dict, art: dict, bundle: Path, token: Path, port: int, home: Path, *extra: str) -> subprocess.CompletedProcess:
    """`./run.sh deploy` to a board over its sshd (ssh and scp read the board's ssh_config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECC_")}
    env.update(HOME=str(home), EDGECC_SSH_CONFIG=str(ssh["config"]), EDGECC_TOKEN_FILE=str(token),
               EDGECC_BIN=str(Path(sys.executable).parent / "edgecc"))
    return subprocess.run(["bash", str(REPO / "run.sh"), "deploy", ssh["target"], "--bundle", str(bundle),
                           "--wheel", str(art["wheel"]), "--port", str(port), *extra], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)


def steps(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("+ ")]


def test_run_sh_deploy_over_ssh_to_three_boards_then_redeploy(artifacts, default_accuracy, tmp_path):
    art = artifacts
    home = tmp_path / "home"
    home.mkdir()
    boards: list[Board] = []
    try:
        for _ in range(3):
            boards.append(Board())
        sshs = [b.start_sshd() for b in boards]
        for b in boards:
            b.start_service_runner()
        ports = [free_port() for _ in boards]

        dry = [deploy(s, art, art["default"], art["token"], p, home, "--dry-run") for s, p in zip(sshs, ports)]
        for r in dry:
            assert r.returncode == 0, r.stderr
        # the real deploys, side by side as one would run them for a fleet
        with ThreadPoolExecutor(3) as pool:
            real = list(pool.map(lambda sp: deploy(sp[0], art, art["default"], art["token"], sp[1], home), zip(sshs, ports)))
        for b, d, r, p in zip(boards, dry, real, ports):
            assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{b.runner.logs()[-2000:]}"
            assert steps(r.stdout) == steps(d.stdout), "the dry run does not print what the real run does"
            assert f"worker on 127.0.0.1:{p} is up" in r.stdout
            assert b.runner.starts == 1 and b.runner.active()  # started once, by the deploy's `systemctl restart`
            assert not b.path("/root/edgecc-deploy").exists(), "the staging folder (with the token) was left behind"
            assert b.path("/etc/edgecc/token").read_bytes() == art["token"].read_bytes()

        want_preds, labels = default_accuracy
        summary, preds = run_master(ports, art["token"], tmp_path)
        check_decoded(summary, preds, want_preds, labels)

        # redeploy one board with a new model and a rotated token: same package, restarted once more
        r = deploy(sshs[0], art, art["tiny"], art["token2"], ports[0], home)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "edgecc package unchanged" in r.stdout and "installing the shared token" in r.stdout
        assert boards[0].runner.starts == 2
        hello = ping(ports[0], art["token2"])
        assert hello.returncode == 0 and json.loads(hello.stdout)["bundle"] == art["tiny_sha"]
        assert ping(ports[0], art["token"]).returncode != 0, "the old token still opens the redeployed worker"
        assert ping(ports[1], art["token"]).returncode == 0  # the other boards are untouched
    finally:
        for b in boards:
            b.close()
