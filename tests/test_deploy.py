"""Deployment files: `run.sh deploy`, workers/setup-pi.sh, the systemd unit and env example.

Nothing here touches the network or the system: the scripts run in --dry-run mode with
recording fakes for ssh/scp/edgecc/apt-get/systemctl/... first on PATH, and each test
asserts that no fake was ever called.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_SH = ROOT / "run.sh"
WORKERS = ROOT / "workers"
SETUP_PI = WORKERS / "setup-pi.sh"
UNIT = WORKERS / "edgecc-worker.service"
ENV_EXAMPLE = WORKERS / "worker.env.example"

# Commands that would change something locally or remotely; faked so a slip is recorded.
FAKED = ["ssh", "scp", "edgecc", "python", "apt-get", "useradd", "install",
         "systemctl", "chown", "chmod", "mv", "sed", "sudo", "rsync"]


@pytest.fixture
def sandbox(tmp_path: Path):
    """Fake commands on PATH that append to CALLS, a throwaway HOME, and input files."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    for name in FAKED:
        fake = bindir / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 0\n')
        fake.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECC_")}
    env.update(
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        EDGECC_BIN=str(bindir / "edgecc"),
        PYTHON=str(bindir / "python"),
    )
    wheel = tmp_path / "edgecc-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    bundle = tmp_path / "X.safetensors"
    bundle.write_bytes(b"not really a bundle")

    class S:
        pass

    s = S()
    s.env, s.calls, s.home, s.wheel, s.bundle, s.tmp = env, calls, home, wheel, bundle, tmp_path
    return s


def run_sh(sandbox, *args: str, script: Path = RUN_SH) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=ROOT, env=sandbox.env,
                          capture_output=True, text=True, timeout=60)


def step_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("+ ")]


def assert_in_order(lines: list[str], patterns: list[str]) -> None:
    """Each pattern matches some line, and the first matches come in the given order."""
    where = []
    for pat in patterns:
        hits = [i for i, line in enumerate(lines) if re.search(pat, line)]
        assert hits, f"no step matches {pat!r} in:\n" + "\n".join(lines)
        where.append(hits[0])
    assert where == sorted(where), f"steps out of order {list(zip(patterns, where))}:\n" + "\n".join(lines)


# --- run.sh deploy --dry-run ----------------------------------------------------------------

def test_deploy_dry_run_prints_every_step_in_order_and_runs_nothing(sandbox):
    r = run_sh(sandbox, "deploy", "pi@board1", "--bundle", str(sandbox.bundle),
               "--wheel", str(sandbox.wheel), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = step_lines(r.stdout)
    assert_in_order(lines, [
        r"^\+ scp \S*edgecc-0\.1\.0-py3-none-any\.whl pi@board1:",          # wheel copy
        r"^\+ scp \S*X\.safetensors pi@board1:\S*bundle\.safetensors$",     # bundle copy
        r"^\+ scp \S*workers/setup-pi\.sh \S*workers/edgecc-worker\.service "
        r"\S*workers/worker\.env\.example pi@board1:",                       # scripts + unit + env
        r"^\+ ssh (-t )?pi@board1 sudo bash \S*setup-pi\.sh .*edgecc-0\.1\.0-py3-none-any\.whl$",
        r"^\+ ssh (-t )?pi@board1 sudo systemctl restart edgecc-worker\.service$",
        r"^\+ \S*edgecc ping board1:7700$",
    ])
    assert not any("pip wheel" in line for line in lines), "a wheel was given: no build step"
    assert not sandbox.calls.exists(), "dry run executed: " + sandbox.calls.read_text()
    # the token it would create is only announced
    assert not (sandbox.home / ".config" / "edgecc" / "token").exists()


def test_deploy_dry_run_builds_a_wheel_when_none_is_given(sandbox):
    r = run_sh(sandbox, "deploy", "pi@board1", "--bundle", str(sandbox.bundle), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = step_lines(r.stdout)
    assert_in_order(lines, [
        r" -m pip wheel --no-deps -w dist \.$",
        r"^\+ scp \S*dist/edgecc-\S*\.whl pi@board1:",
        r"^\+ \S*edgecc ping board1:7700$",
    ])
    assert not sandbox.calls.exists(), "dry run executed: " + sandbox.calls.read_text()


def test_deploy_port_option_reaches_setup_and_ping(sandbox):
    r = run_sh(sandbox, "deploy", "pi@board1", "--bundle", str(sandbox.bundle),
               "--wheel", str(sandbox.wheel), "--port", "7801", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = step_lines(r.stdout)
    assert any(re.search(r"setup-pi\.sh .*--port 7801 ", line) for line in lines)
    assert lines[-1].endswith("edgecc ping board1:7801")


def test_deploy_ssh_config_reaches_every_ssh_and_scp(sandbox):
    cfg = sandbox.tmp / "fleet_ssh_config"
    cfg.write_text("Host board1\n  Port 2222\n")
    sandbox.env["EDGECC_SSH_CONFIG"] = str(cfg)
    r = run_sh(sandbox, "deploy", "pi@board1", "--bundle", str(sandbox.bundle), "--wheel", str(sandbox.wheel), "--dry-run")
    assert r.returncode == 0, r.stderr
    remote = [line for line in step_lines(r.stdout) if line.startswith(("+ ssh ", "+ scp "))]
    assert len(remote) == 8, remote
    assert all(line.split()[2:4] == ["-F", str(cfg)] for line in remote), remote
    assert not sandbox.calls.exists()


def test_deploy_never_prints_a_token_from_the_environment(sandbox):
    secret = "deadbeef" * 8
    sandbox.env["EDGECC_TOKEN"] = secret
    r = run_sh(sandbox, "deploy", "pi@board1", "--bundle", str(sandbox.bundle),
               "--wheel", str(sandbox.wheel), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert not sandbox.calls.exists()


def test_deploy_without_target_fails_with_usage(sandbox):
    r = run_sh(sandbox, "deploy", "--bundle", str(sandbox.bundle), "--dry-run")
    assert r.returncode != 0
    assert "usage:" in r.stderr and "USER@HOST" in r.stderr
    assert not sandbox.calls.exists()


@pytest.mark.parametrize("args, message", [
    ([], "missing --bundle"),
    (["--bundle", "/nonexistent/b.safetensors"], "bundle not found"),
    (["--bundle", "BUNDLE", "--wheel", "/nonexistent/edgecc.whl"], "wheel not found"),
    (["--bundle", "BUNDLE", "--port", "70000"], "bad --port"),
    (["--bundle", "BUNDLE", "--bogus"], "unknown option"),
])
def test_deploy_rejects_bad_arguments(sandbox, args, message):
    args = [str(sandbox.bundle) if a == "BUNDLE" else a for a in args]
    r = run_sh(sandbox, "deploy", "pi@board1", *args, "--dry-run")
    assert r.returncode != 0
    assert message in r.stderr
    assert not sandbox.calls.exists()


def test_run_sh_unknown_or_missing_command_fails(sandbox):
    assert run_sh(sandbox).returncode != 0
    r = run_sh(sandbox, "no-such-command")
    assert r.returncode != 0 and "unknown command" in r.stderr
    assert run_sh(sandbox, "help").returncode == 0


# --- shell syntax --------------------------------------------------------------------------

SCRIPTS = sorted(WORKERS.glob("*.sh")) + [RUN_SH]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


# --- systemd unit and env example -------------------------------------------------------------

def read_unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(UNIT.read_text(), source=str(UNIT))
    return cp


def test_unit_has_the_required_keys():
    unit = read_unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    svc = unit["Service"]
    assert svc["User"] == "edgecc"
    assert svc["EnvironmentFile"] == "/etc/edgecc/worker.env"
    assert svc["ExecStart"].startswith(
        "/opt/edgecc/venv/bin/edgecc worker --listen ${EDGECC_LISTEN} "
        "--bundle /opt/edgecc/bundle.safetensors")
    assert svc["Restart"] == "always"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["ProtectHome"] == "yes"
    assert svc["PrivateTmp"] == "yes"
    assert re.fullmatch(r"\d+[KMG]", svc["MemoryMax"])
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_unit_holds_no_token():
    text = UNIT.read_text()
    assert "EDGECC_TOKEN=" not in text
    assert "--token" not in read_unit()["Service"]["ExecStart"]
    assert not re.search(r"[0-9a-fA-F]{32,}", text), "something that looks like a secret"


def test_env_example():
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            values[key] = value
    assert values["EDGECC_LISTEN"] == "0.0.0.0:7700"
    assert values["EDGECC_TOKEN_FILE"] == "/etc/edgecc/token"
    assert "EDGECC_TOKEN" not in values


def test_containerfile_is_worker_only_and_non_root():
    text = (WORKERS / "Containerfile").read_text()
    # the base is a build argument whose default is the official slim image
    assert re.search(r"^ARG BASE=(docker\.io/library/)?python:3\.1[1-9]-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE\}$", text, re.M)
    installs = [line for line in text.splitlines() if "pip install" in line and not line.startswith("#")]
    assert installs, "no pip install in the Containerfile"
    for line in installs:  # the base dependencies only: no torch, no `ml`/`test` extra
        assert "torch" not in line and "[" not in line, line
    assert re.search(r"^USER (?!root)", text, re.M)
    assert re.search(r"^EXPOSE 7700$", text, re.M)
    assert '["edgecc", "worker", "--listen", "0.0.0.0:7700"]' in text


# --- setup-pi.sh --dry-run ------------------------------------------------------------------

def test_setup_pi_dry_run_prints_the_changes_and_makes_none(sandbox):
    r = run_sh(sandbox, "--dry-run", "--bundle", str(sandbox.bundle), "--port", "7801",
               str(sandbox.wheel), script=SETUP_PI)
    assert r.returncode == 0, r.stderr
    lines = step_lines(r.stdout)
    assert_in_order(lines, [
        r"/opt/edgecc/venv/bin/python -m pip .* install \S*edgecc-0\.1\.0-py3-none-any\.whl$",
        r"^\+ systemctl daemon-reload$",
        r"^\+ systemctl enable edgecc-worker\.service$",
        r"^\+ systemctl restart edgecc-worker\.service$",
    ])
    assert not sandbox.calls.exists(), "dry run executed: " + sandbox.calls.read_text()


def test_setup_pi_no_restart_and_missing_package(sandbox):
    r = run_sh(sandbox, "--dry-run", "--no-restart", str(sandbox.wheel), script=SETUP_PI)
    assert r.returncode == 0, r.stderr
    assert not any("systemctl restart" in line for line in step_lines(r.stdout))

    r = run_sh(sandbox, "--dry-run", script=SETUP_PI)
    assert r.returncode != 0
    assert "usage:" in r.stderr and "missing PACKAGE" in r.stderr
    assert not sandbox.calls.exists()
