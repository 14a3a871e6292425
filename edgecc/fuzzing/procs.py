"""Worker processes for fuzzing and soaking, and what /proc says about them (memory, open files)."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


from ..launch.local import memory_status


# --- machine, processes, /proc ---------------------------------------------------------------------
def machine() -> dict:
    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        mem = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1]) // 1024
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "mem_total_mb": mem, "loadavg_start": list(os.getloadavg())}


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB; {} when the process is gone."""
    return {k: round(v / 2**20, 1) for k, v in memory_status(pid).items()}


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class WorkerProc:
    """`edgecc worker` on 127.0.0.1 in its own process: port 0 on the first start, the same port after."""

    def __init__(self, workdir: Path, name: str, token: str, extra: list[str] | None = None, log_level: str = "warning"):
        self.workdir, self.name, self.token, self.extra, self.log_level = Path(workdir), name, token, extra or [], log_level
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / f"{name}.log"
        self.port_file = self.workdir / f"{name}.port"
        self.starts = 0

    def _spawn(self) -> None:
        self.port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "EDGECC_TOKEN_FILE"}
        env["EDGECC_TOKEN"] = self.token
        # --exit-with-parent: never outlive the benchmark, even one killed with SIGKILL (launch/local.watch_parent)
        cmd = [sys.executable, "-m", "edgecc.cli", "worker", "--listen", f"127.0.0.1:{self.port}", "--port-file", str(self.port_file),
               "--exit-with-parent", "--log-level", self.log_level, *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1

    def _poll_started(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
        text = self.port_file.read_text() if self.port_file.exists() else ""
        if text.strip():
            self.port = int(text)
            return True
        return False

    def _started_by(self, deadline: float, timeout: float) -> bool:
        """Whether the worker is up; kills it and raises once `deadline` has passed."""
        if self._poll_started():
            return True
        if time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"worker {self.name} did not start within {timeout:g} s: {self.log_tail()}")
        return False

    def start(self, timeout: float = 60.0) -> "WorkerProc":
        self._spawn()
        deadline = time.monotonic() + timeout
        while not self._started_by(deadline, timeout):
            time.sleep(0.05)
        return self

    async def astart(self, timeout: float = 60.0) -> "WorkerProc":
        """start() without blocking the event loop (restarts during a run)."""
        self._spawn()
        deadline = time.monotonic() + timeout
        while not self._started_by(deadline, timeout):
            await asyncio.sleep(0.05)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies of SIGKILL too, but be tidy
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def log_problems(self) -> dict[str, Any]:
        """Unexpected exceptions the worker caught and logged (it never lets one take the server down)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = text.splitlines()
        idx = [i for i, l in enumerate(lines) if "unexpected error" in l or "Traceback" in l or "never retrieved" in l]
        examples = []
        for i in idx[:3]:
            examples.append("\n".join(lines[i:i + 12])[-1200:])
        excs = Counter(l.strip()[:160] for i, l in enumerate(lines) if i > 0 and lines[i - 1].startswith("  ")
                       and not l.startswith(" ") and ("Error" in l.split(":")[0] or "Exception" in l.split(":")[0]))
        return {"exceptions": dict(excs.most_common(10)), "unexpected_error_lines": sum("unexpected error" in l for l in lines),
                "traceback_lines": sum("Traceback" in l for l in lines),
                "never_retrieved_lines": sum("never retrieved" in l for l in lines), "examples": examples}

