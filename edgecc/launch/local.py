"""Worker processes on this machine (scenarios, benchmarks, tests): start, find the port, stop.

The token travels in the child's environment, never in its argv (which `ps` shows to everyone).
Every worker started here runs with `--exit-with-parent` (`watch_parent` below): it exits when the
process that started it is gone, so no scenario, benchmark or test leaves workers behind, even one
killed with SIGKILL, which runs no cleanup.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ..errors import EdgeccError


class LocalWorker:
    """One `edgecc worker` process on `host` (default 127.0.0.1); port 0 on first start, the same port on restart.

    `netns`: run it inside that network namespace (`ip netns exec`, needs root), listening on `host`,
    its address there."""

    def __init__(self, log_dir: str | Path, name: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 command: Sequence[str] | None = None, token: str | None = None, base_env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", netns: str | None = None):
        self.log_dir, self.name, self.args = Path(log_dir), name, list(args)
        self.host, self.netns = host, netns
        self.base_env = base_env  # None: this process's environment
        self.env = dict(env or {})
        if token is not None:
            self.env["EDGECC_TOKEN"] = token
        self.command = list(command) if command else [sys.executable, "-m", "edgecc.cli"]
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.log_dir / f"{name}.log"

    def start(self, timeout: float = 60.0) -> "LocalWorker":
        """Launch the process and wait until it listens (its port file is written)."""
        return self.launch().wait_started(timeout)

    def launch(self) -> "LocalWorker":
        """Start the process without waiting: several workers then boot in parallel (see wait_started)."""
        port_file = self.log_dir / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        env = {**(os.environ if self.base_env is None else self.base_env), **self.env}
        if "EDGECC_TOKEN" in self.env:
            env.pop("EDGECC_TOKEN_FILE", None)
        cmd = [*self.command, "worker", "--listen", f"{self.host}:{self.port}", "--port-file", str(port_file),
               "--exit-with-parent", *self.args]
        if self.netns is not None:  # `ip netns exec` execs the command: the pid is still the worker's
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.log_dir, stdout=subprocess.DEVNULL, stderr=log)
        return self

    def wait_started(self, timeout: float = 60.0) -> "LocalWorker":
        """Wait until the launched process listens; its port is then in `port`."""
        port_file = self.log_dir / f"{self.name}.port"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text()):
            if self.proc.poll() is not None:
                raise EdgeccError(f"worker {self.name} exited ({self.proc.returncode}): {self.logs()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise EdgeccError(f"worker {self.name} did not start within {timeout:g} s: {self.logs()[-2000:]}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to say goodbye (a crash)."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def memory_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in bytes, from /proc; {} when it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def process_cpu_s(pid: int | str = "self") -> float:
    """CPU seconds (user + system) a process has used so far, from /proc; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PARENT_POLL_S = 0.5  # how often an --exit-with-parent worker looks for its parent: it lingers at most this long


async def watch_parent(on_orphaned) -> None:
    """Call `on_orphaned()` once the process that started this one has exited. An orphan is handed to
    init or a subreaper, so its parent pid changes; polling that needs no Linux-only prctl and, unlike
    PR_SET_PDEATHSIG, does not fire when merely the launching *thread* ends. `ip netns exec` and
    `chroot` exec in place, so the parent seen here is the launcher itself."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_POLL_S)
    on_orphaned()
