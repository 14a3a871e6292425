"""Local worker processes (edgecc.launch.local): none outlives the process that started it.

A scenario, benchmark or test killed with SIGKILL runs no cleanup; its workers must still go, or
they keep their ports and CPU until someone finds them.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

# Starts one worker from a thread that ends at once (a launcher whose *thread* is gone must not take
# its workers with it), reports the worker's pid, then lives until it is killed.
LAUNCHER = """
import sys, threading, time
from edgecc.launch.local import LocalWorker

workers = []
t = threading.Thread(target=lambda: workers.append(LocalWorker(sys.argv[1], "w", ["--log-level", "warning"],
                                                               token=sys.argv[2]).start()))
t.start()
t.join()
print(workers[0].pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (its new parent may be slow to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_a_local_worker_exits_when_its_launcher_is_killed(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), secrets.token_hex(24)],
                                stdout=subprocess.PIPE, text=True)
    try:
        pid = int(launcher.stdout.readline())
        time.sleep(1.5)  # three of the worker's parent checks
        assert _running(pid), "the worker exited while its launcher was alive"
        launcher.kill()
        launcher.wait(10)
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(pid), "the worker outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "the process that started it has exited" in (tmp_path / "w.log").read_text()
