"""The arm64 stand-in board for the Raspberry Pi tests: a fresh copy of the cached Debian 12 arm64 root.

`workers/pi-standin.sh` builds the root once (minutes: mmdebstrap runs the package scripts under
qemu-user) into $EDGECC_PI_CACHE/arm64-root. Each `Board` is a throwaway overlay on top of it, so
a test starts from a board that never saw edgecc and the cache is never changed.

Everything the board mounts (the overlay, /proc, /dev, /sys, a tmpfs /run) lives in a private
mount namespace held by one `unshare` process; every program on the board enters it with
`nsenter`. When that process and its guests end, the kernel drops the mounts: nothing can be left
mounted on the host, even if the test process is killed.

What stands in for what on a real Pi:
- the CPU: aarch64 code runs through qemu-user (binfmt_misc), so times are emulated, not a Pi's;
- ssh: a real OpenSSH sshd on 127.0.0.1 (throwaway host and user keys), with `ChrootDirectory`
  set to the board, so a login's shell, sudo, scp (internal-sftp) and setup-pi.sh all run
  inside the arm64 root;
- systemd: there is no systemd as PID 1 in a root. `ServiceRunner` does its part for the worker
  unit: it reads the *installed* unit (User, Group, Environment, EnvironmentFile,
  WorkingDirectory, StateDirectory, ExecStart with systemd's `${VAR}`/`$VAR` expansion) and runs
  ExecStart in the board as that user. The board's `systemctl` (workers/standin-systemctl) hands
  it start/stop/restart. The unit's sandboxing and resource limits are not applied.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGECC_PI_CACHE", "/var/cache/edgecc"))
ROOTFS = CACHE / "arm64-root"
STANDIN = REPO / "workers" / "pi-standin.sh"
UNIT = "/etc/systemd/system/edgecc-worker.service"
BUILD_HINT = "`sudo ./run.sh pi-test` builds it once (about 5 min) and runs these tests"


def pi_tests_skipped() -> str | None:
    """The reason the default test run leaves these tests out: minutes of emulated arm64 and image builds."""
    if os.environ.get("EDGECC_PI_TESTS") == "1":
        return None
    return ("the emulated-arm64 board and container tests take minutes (qemu-user, podman builds): run them with "
            "`sudo ./run.sh pi-test`, which builds the stand-ins once (about 6 min) and sets EDGECC_PI_TESTS=1")


def unavailable() -> str | None:
    """Why the arm64 stand-in board cannot run here, or None when it can (binfmt is registered on the way)."""
    if os.geteuid() != 0:
        return "the arm64 stand-in board needs root (binfmt_misc, chroot, mount namespaces)"
    for tool in ("unshare", "nsenter", "chroot", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found (apt-get install util-linux coreutils qemu-user-static)"
    if not (ROOTFS / ".edgecc-standin").is_file():
        return f"no cached arm64 stand-in board in {ROOTFS}: {BUILD_HINT}"
    r = subprocess.run(["bash", str(STANDIN), "binfmt"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"cannot run aarch64 programs here (binfmt_misc): {r.stderr.strip()[-300:]}"
    return None


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the process (thread) that started it dies, so an interrupted
    test leaves no sshd or worker behind (the kernel clears this when a child changes its uid)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}) before listening on {port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port} within {timeout:g} s")
            time.sleep(0.1)


class Board:
    """A fresh arm64 board: an overlay on the cached root, in a private mount namespace."""

    def __init__(self, base: Path = ROOTFS):
        (CACHE / "boards").mkdir(parents=True, exist_ok=True)
        # under CACHE, not /tmp: sshd's ChrootDirectory refuses a path with a world-writable component
        self.dir = Path(tempfile.mkdtemp(prefix="board-", dir=CACHE / "boards"))
        self.root = self.dir / "merged"
        for d in ("upper", "work", "merged", "logs"):
            (self.dir / d).mkdir()
        mounts = (f"mount -t overlay overlay -o lowerdir={base},upperdir={self.dir}/upper,workdir={self.dir}/work {self.root}"
                  f" && mount -t proc proc {self.root}/proc && mount --rbind /dev {self.root}/dev"
                  f" && mount -t sysfs -o ro sysfs {self.root}/sys && mount -t tmpfs -o mode=0755 tmpfs {self.root}/run"
                  " && echo ready && exec cat >/dev/null")
        # stdin is a pipe from this process: when it closes (also when this process dies), the holder exits
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "ready":
            err = self.holder.stderr.read()
            self.holder.wait()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"could not mount the stand-in board: {err.strip()[-500:]}")
        self.sshd: subprocess.Popen | None = None
        self.runner: ServiceRunner | None = None
        # the current systemctl front (pi-standin.sh puts one in the cached root; this one may be newer)
        shutil.copy(REPO / "workers" / "standin-systemctl", self.path("/usr/local/sbin/systemctl"))

    # --- running things on the board ---
    def nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", *argv]

    def chroot(self, argv: list[str], userspec: str | None = None) -> list[str]:
        opts = [f"--userspec={userspec}", f"--groups={userspec.split(':')[1]}"] if userspec else []
        return self.nsenter(["chroot", *opts, str(self.root), *argv])

    def run(self, argv: list[str], timeout: float = 300, check: bool = False, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run argv on the board as root, with a board-like environment (PATH, HOME=/root, LANG=C.UTF-8)."""
        board_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                     "LANG": "C.UTF-8", **(env or {})}
        r = subprocess.run(self.chroot(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in board_env.items()), *argv]),
                           capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{argv} failed on the board ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def path(self, p: str) -> Path:
        """A path inside the board as this process can open it (through the holder's view of the mounts)."""
        return Path(f"/proc/{self.holder.pid}/root") / str(self.root).lstrip("/") / p.lstrip("/")

    def ids(self, user: str, group: str | None = None) -> tuple[int, int]:
        """uid, gid of a user (and optionally a group) from the board's own passwd/group files."""
        uid = gid = None
        for line in self.path("/etc/passwd").read_text().splitlines():
            f = line.split(":")
            if f[0] == user:
                uid, gid = int(f[2]), int(f[3])
        if group is not None:
            for line in self.path("/etc/group").read_text().splitlines():
                f = line.split(":")
                if f[0] == group:
                    gid = int(f[2])
        if uid is None or gid is None:
            raise RuntimeError(f"no user {user!r} / group {group!r} on the board")
        return uid, gid

    # --- ssh into the board ---
    def start_sshd(self) -> dict:
        """A real sshd on 127.0.0.1 whose sessions land in the board as root. Returns the client side:
        {'port', 'config' (an ssh_config for ssh/scp), 'target' ('root@127.0.0.1')}."""
        d = self.dir / "ssh"
        d.mkdir(mode=0o700)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True,
                           capture_output=True, timeout=60)
        shutil.copy(d / "user_key.pub", d / "authorized_keys")
        port = free_port()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nAllowUsers root\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPrintMotd no\n"
            "X11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\n"
            # the board's own programs after login; scp (sftp protocol) served by sshd itself
            f"ChrootDirectory {self.root}\nSubsystem sftp internal-sftp\n")
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text().split(' ', 2)[0]} "
                                       f"{(d / 'host_key.pub').read_text().split(' ', 2)[1]}\n")
        (d / "ssh_config").write_text(
            f"Host 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
            "  ConnectTimeout 20\n  LogLevel ERROR\n")
        self.sshd = subprocess.Popen(self.nsenter(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")]),
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "logs" / "sshd.log", "ab"),
                                     preexec_fn=die_with_parent)
        wait_port(port, 30, self.sshd, "sshd")
        return {"port": port, "config": d / "ssh_config", "target": "root@127.0.0.1"}

    def start_service_runner(self) -> "ServiceRunner":
        self.runner = ServiceRunner(self)
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()
        # sessions sshd left behind are still in the namespace: end them before the holder
        for pid in self._guests():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.holder.stdin.close()
        try:
            self.holder.wait(10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _guests(self) -> list[int]:
        """Processes other than the holder inside the board's mount namespace."""
        try:
            ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        except OSError:
            return []
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and int(p.name) != self.holder.pid:
                try:
                    if os.readlink(p / "ns" / "mnt") == ns:
                        out.append(int(p.name))
                except OSError:
                    pass
        return out


def _systemd_words(value: str, env: dict[str, str]) -> list[str]:
    """ExecStart's variable rules: `${VAR}` stays one word, a word that is only `$VAR` splits on whitespace."""
    words = []
    for w in shlex.split(value):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
        if m:
            words.extend(env.get(m.group(1), "").split())
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda g: env.get(g.group(1), ""), w))
    return words


class ServiceRunner:
    """systemd's part for edgecc-worker.service on a board with no systemd: start/stop/restart on request."""

    def __init__(self, board: Board):
        self.board = board
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.requests = board.path("/run/edgecc-standin")
        self.requests.mkdir(mode=0o700)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def unit(self) -> dict:
        """The [Service] keys of the installed unit (later assignments of Environment= add up)."""
        svc, section = {"Environment": []}, None
        for line in self.board.path(UNIT).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line:
                k, v = line.split("=", 1)
                if k == "Environment":
                    svc["Environment"].extend(shlex.split(v))
                else:
                    svc[k] = v
        return svc

    def command(self, overrides: dict[str, str] | None = None) -> list[str]:
        """What systemd would exec for the unit, as a command line for this host (nsenter + chroot + env -i)."""
        svc = self.unit()
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "LANG": "C.UTF-8"}
        env.update(kv.split("=", 1) for kv in svc["Environment"])
        env_file = svc.get("EnvironmentFile", "").lstrip("-")
        if env_file:
            for line in self.board.path(env_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", ";")) and "=" in line:
                    k, v = line.split("=", 1)
                    env[k.strip()] = " ".join(shlex.split(v))
        env.update(overrides or {})
        uid, gid = self.board.ids(svc["User"], svc.get("Group"))
        if "StateDirectory" in svc:  # systemd creates it, owned by the service user
            state = self.board.path(f"/var/lib/{svc['StateDirectory']}")
            state.mkdir(exist_ok=True)
            os.chown(state, uid, gid)
            state.chmod(int(svc.get("StateDirectoryMode", "0755"), 8))
        argv = _systemd_words(svc["ExecStart"], env)
        cwd = svc.get("WorkingDirectory", "/")
        return self.board.chroot(["/usr/bin/env", "-i", "-C", cwd, *(f"{k}={v}" for k, v in env.items()), *argv],
                                 userspec=f"{uid}:{gid}")

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.starts += 1
            log = open(self.board.dir / "logs" / "edgecc-worker.log", "ab")
            log.write(f"-- start {self.starts} --\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            log.close()

    def stop(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()  # SIGTERM, then SIGKILL after TimeoutStopSec as systemd does
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def active(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        f = self.board.dir / "logs" / "edgecc-worker.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                reqs = sorted(p for p in self.requests.iterdir() if re.fullmatch(r"req\.\d+", p.name))
            except OSError:
                return
            for req in reqs:
                verb = req.read_text().strip()
                try:
                    if verb in ("stop", "restart"):
                        self.stop()
                    if verb in ("start", "restart"):
                        self.start()
                    rc = 0 if verb != "is-active" or self.active() else 3
                except Exception as e:  # the board's systemctl reports the failure
                    (self.board.dir / "logs" / "runner.log").open("a").write(f"{verb}: {e!r}\n")
                    rc = 1
                req.unlink()
                part = req.with_name(req.name + ".done.part")
                part.write_text(f"{rc}\n")
                part.rename(req.with_name(req.name + ".done"))
            self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.stop()
