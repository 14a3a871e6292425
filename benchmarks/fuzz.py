#!/usr/bin/env python
"""Fuzz a live edgecc worker, and the master's result path, with random and mutated frames.

    python benchmarks/fuzz.py [--frames 100000] [--master-frames F] [--seed S] [--out results/fuzz.json]

Worker side: one real `edgecc worker` process (token in $EDGECC_TOKEN) on 127.0.0.1. Over many TCP
connections (several at a time) it receives
  * before authentication: raw garbage, whole frames of garbage, oversized and truncated length
    headers, valid messages of the wrong type, `auth` with the wrong protocol version, wrong or
    malformed MACs, an `auth` replayed from an earlier connection, byte-flipped `auth` frames,
    byte-by-byte fragmented correct `auth` (must still work);
  * after a correct handshake + configure (an affine map A, b drawn here): `compute` with wrong
    shapes, dtypes and byte lengths, NaN/Inf, empty and oversized batches, negative/huge ids,
    duplicate ids, bursts beyond max_in_flight, unknown message types and fields, random msgpack
    values, extension types, invalid UTF-8, deep nesting, byte-flipped frames, refused `configure`s
    (the previous configuration must stay), pings with extreme sequence numbers, and sessions
    ended by an oversized header, a truncated frame or an abrupt close with work in flight.
Checked per session: every whole frame gets exactly one reply, every reply is a valid message,
structured cases get the reply the protocol prescribes (docs/protocol.md §3-§9), results are
A·x + b. Every --check-every frames a fresh session verifies the worker still computes correctly;
RSS (/proc/PID/status) and open file descriptors are sampled. Two probes: a pre-auth "slowloris"
(one byte per half handshake timeout) and pre-auth buffering (how much an unauthenticated peer can
make the worker hold).

Master side: a real Master (CodedPlan, tiny untrained AICC with Scheme(K=2, G=1), N=3, R=2) with two
honest worker processes and one fake worker served in-process that handshakes correctly (mostly:
some handshakes are wrong on purpose) and then answers `compute` with invalid results (wrong
shape/dtype/length, NaN/Inf, unknown or duplicate ids, errors) and garbage frames. Every request
must decode to the in-process logits; the master must not raise, lose a link task or leak pending
requests. (Valid-looking but wrong values are out of scope: with byzantine=0 they are undetectable
by design; see tests/test_runtime.py for the byzantine mode.)

Writes OUT (JSON) and prints a one-line summary. Importable: `fuzz_worker`, `fuzz_master`, `run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from edgecc.bundle import digest as array_digest
from edgecc.protocol import auth
from edgecc.protocol.frames import DEFAULT_MAX_FRAME, HEADER, RemoteProtocolError, decode_payload, encode_frame, pack_array, unpack_array
from edgecc.protocol.messages import (PROTOCOL_VERSION, Auth, Compute, Configure, Configured, Error, Hello, Ping, Pong, Result,
                                      Welcome, parse)

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
MAX_EXAMPLES = 40  # finding examples kept per run
# Values nested ~1000 deep (msgpack allows < 1024) whose repr() in an error message raises RecursionError.
# --no-deep leaves them out, to explore past that bug.
DEEP = True


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


def _die_with_parent() -> None:  # runs in the child: never outlive the benchmark, even if it is SIGKILLed
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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
        cmd = [sys.executable, "-m", "edgecc.cli", "worker", "--listen", f"127.0.0.1:{self.port}", "--port-file", str(self.port_file),
               "--log-level", self.log_level, *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=_die_with_parent)
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


# --- frame building -------------------------------------------------------------------------------
def payload_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class _RawMap(bytes):
    """A msgpack map already encoded (to splice in values msgpack-python would not write, e.g. deep nesting)."""


def raw_frame(obj: Any) -> bytes:
    """Any msgpack value as a frame, no validation (packb with bin type, as the reference does)."""
    if isinstance(obj, _RawMap):
        return payload_frame(bytes(obj))
    return payload_frame(msgpack.packb(obj, use_bin_type=True))


def flip(data: bytes, rng: random.Random, n: int | None = None) -> bytes:
    """A copy with 1-4 bytes XORed with a non-zero mask."""
    b = bytearray(data)
    for _ in range(n or rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= rng.randint(1, 255)
    return bytes(b)


def random_msgpack(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack value (scalars, str/bin, lists, maps with str keys)."""
    kinds = ["int", "neg", "big", "float", "str", "bin", "nil", "bool"] + (["list", "map"] if depth < 4 else [])
    k = rng.choice(kinds)
    if k == "int":
        return rng.randint(0, 300)
    if k == "neg":
        return -rng.randint(1, 2**63)
    if k == "big":
        return rng.randint(0, 2**64 - 1)
    if k == "float":
        return rng.choice([0.5, -1e308, float("nan"), float("inf"), rng.random()])
    if k == "str":
        return "".join(rng.choice("tabcdefxy_é∑") for _ in range(rng.randint(0, 12)))
    if k == "bin":
        return rng.randbytes(rng.randint(0, 40))
    if k == "nil":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "list":
        return [random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["t", "id", "x", "v", "seq", "dtype", "shape", "data", "mac", "nonce", "proto", "zz"]
    return {rng.choice(keys): random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def deep_list(depth: int = 1000) -> bytes:
    """msgpack bytes of [[[...nil...]]] nested `depth` deep (msgpack itself allows < 1024)."""
    return b"\x91" * depth + b"\xc0"


def special_payloads(rng: random.Random) -> list[tuple[str, bytes]]:
    """Payloads that are not valid frames, each for its own reason (§4)."""
    ping = msgpack.packb({"t": "ping", "seq": 1}, use_bin_type=True)
    return [
        ("empty_payload", b""),
        ("trailing_bytes", ping + b"\x00"),
        ("invalid_utf8", b"\x82\xa1t\xa4ping\xa3seq\xa2\xff\xfe"),
        ("int_key", msgpack.packb({1: "ping", "t": "ping"}, use_bin_type=True)),
        ("bin_key", b"\x82\xc4\x01t\xa4ping\xa3seq\x01"),
        ("nested_int_key", msgpack.packb({"t": "ping", "seq": {2: 3}}, use_bin_type=True)),
        ("ext_type", msgpack.packb({"t": "ping", "seq": msgpack.ExtType(5, b"abc")}, use_bin_type=True)),
        ("timestamp", msgpack.packb({"t": "ping", "seq": msgpack.Timestamp(1, 0)}, use_bin_type=True)),
        ("map_count_lie", b"\xdf\xff\xff\xff\xff\xa1t"),
        ("str_length_lie", b"\x81\xa1t\xdb\x7f\xff\xff\xff"),
        ("array_count_lie", b"\xdd\x7f\xff\xff\xff\x01"),
        ("stack_overflow", b"\x91" * 5000 + b"\xc0"),
        *([("deep_t", b"\x81\xa1t" + deep_list())] if DEEP else []),
        ("t_is_bin", b"\x82\xa1t\xc4\x04ping\xa3seq\x01"),
        ("duplicate_key", b"\x83\xa1t\xa4ping\xa3seq\x01\xa3seq\x02"),
        ("random_bytes", rng.randbytes(rng.randint(1, 64))),
    ]


def lenient_equal(a: bytes, b: bytes) -> bool:
    """Do two payloads decode to the same msgpack value (ignoring encoding choices)?"""
    try:
        return msgpack.unpackb(a, raw=False, strict_map_key=False) == msgpack.unpackb(b, raw=False, strict_map_key=False)
    except Exception:
        return False


# Findings that are reported but are not failures (a hardening note).
from edgecc.modelfile import atomic_write  # noqa: E402
from edgecc.runtime.local import memory_status  # noqa: E402
from edgecc.runtime.worker import PREAUTH_MAX_FRAME  # noqa: E402  (frames before auth are capped)

INFO_FINDINGS = {"PREAUTH_BUFFERING"}


class Findings:
    """Counts of things that should not happen, with a few examples."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: list[dict] = []

    def add(self, kind: str, **detail: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, **{k: (v if isinstance(v, (int, float, bool, type(None))) else str(v)[:400])
                                                  for k, v in detail.items()}})

    def total(self) -> int:
        return sum(self.counts.values())

    def critical(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k not in INFO_FINDINGS}


# --- a raw client connection -------------------------------------------------------------------------
class Peer:
    """A TCP connection that sends arbitrary bytes and reads the worker's frames (validated)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, findings: Findings):
        self.reader, self.writer, self.findings = reader, writer, findings
        self.closed = False

    @classmethod
    async def open(cls, port: int, findings: Findings, timeout: float = 10.0) -> "Peer":
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)
        return cls(r, w, findings)

    async def send(self, data: bytes, pieces: int = 1) -> bool:
        """False when the connection is gone. `pieces` > 1 splits the write at random points."""
        if self.closed:
            return False
        try:
            if pieces <= 1 or len(data) < 2:
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), 20)
            else:
                cuts = sorted(random.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
                for a, b in zip([0, *cuts], [*cuts, len(data)]):
                    self.writer.write(data[a:b])
                    await asyncio.wait_for(self.writer.drain(), 20)
                    await asyncio.sleep(0)
            return True
        except (OSError, asyncio.TimeoutError, RuntimeError):
            self.closed = True
            return False

    async def recv(self, timeout: float) -> Any:
        """The next message (a Message, or an ("invalid", why) tuple); None at EOF; TimeoutError."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
            (n,) = HEADER.unpack(head)
            if n > DEFAULT_MAX_FRAME:
                self.findings.add("worker_sent_oversized_frame", length=n)
                return ("invalid", "oversized")
            payload = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        except asyncio.TimeoutError:  # (a subclass of OSError since Python 3.11: keep this first)
            raise
        except asyncio.IncompleteReadError as e:
            if e.partial:
                self.findings.add("worker_sent_truncated_frame", partial=len(e.partial))
            return None
        except (ConnectionError, OSError):
            return None
        try:
            return parse(decode_payload(payload))
        except RemoteProtocolError as e:
            self.findings.add("worker_sent_invalid_message", why=e, payload=payload[:80])
            return ("invalid", str(e))

    async def wait_eof(self, timeout: float) -> tuple[bool, list]:
        """(closed by the peer within timeout, frames received before that)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, got
            try:
                m = await self.recv(left)
            except asyncio.TimeoutError:
                return False, got
            if m is None:
                return True, got
            got.append(m)

    def abort(self) -> None:
        self.closed = True
        if not self.writer.transport.is_closing():
            self.writer.transport.abort()


def describe(m: Any) -> str:
    if m is None:
        return "EOF"
    if isinstance(m, tuple):
        return f"invalid({m[1][:60]})"
    if isinstance(m, Error):
        return f"error:{m.code}:{m.id}"
    return m.TYPE


# --- the worker fuzzer -----------------------------------------------------------------------------
class WorkerFuzzer:
    def __init__(self, port: int, pid: int, token: bytes, seed: int, frames: int, *, check_every: int = 5000,
                 concurrency: int = 4, handshake_timeout: float = 2.0, max_batch: int = 4096, max_in_flight: int = 256,
                 huge_batch_prob: float = 0.001):
        self.port, self.pid, self.token, self.budget = port, pid, token, frames
        self.rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        self.A = (nrng.normal(size=(10, 784)) * 0.05).astype(np.float32)
        self.b = nrng.normal(size=10).astype(np.float32)
        self.arrays = {"affine.weight": self.A, "affine.bias": self.b}
        self.digest = array_digest(self.arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in self.arrays.items()}
        self.check_every, self.concurrency = check_every, concurrency
        self.handshake_timeout, self.max_batch, self.max_in_flight = handshake_timeout, max_batch, max_in_flight
        self.huge_batch_prob = huge_batch_prob
        self.sent = 0  # frames thrown
        self.cases: Counter = Counter()
        self.outcomes: Counter = Counter()  # replies checked against an expectation, by kind
        self.connections = 0
        self.sessions = 0
        self.findings = Findings()
        self.replayable: list[tuple[bytes, bytes]] = []  # (nonce_m, mac) of earlier good handshakes
        self.welcome_macs: list[bytes] = []
        self.next_id = 1 << 40  # structured ids; mutated/random ids stay below 2**32
        self.next_check = check_every
        self.checks: list[dict] = []
        self.rss: list[dict] = []
        self.check_lock = asyncio.Lock()
        self.stop = False
        self.replies = 0

    # -- helpers --
    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def ref(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64).reshape(x.shape[0], 784) @ self.A.T.astype(np.float64) + self.b

    def count(self, case: str, n: int = 1) -> None:
        self.cases[case] += n
        self.sent += n

    def worker_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie still answers kill(0)
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def configure_frame(self, wire_dtype: str = "f4", **override: Any) -> bytes:
        msg = Configure(0, 0.5, {"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl", "compute_arch": "cl"},
                        "encoded", wire_dtype, self.digest, self.wire_arrays, None).to_wire()
        msg.update(override)
        return raw_frame(msg)

    async def handshake(self, peer: Peer, *, pieces: int = 1) -> tuple[Hello | None, bool]:
        """Read hello, authenticate correctly. (hello, welcomed)."""
        hello = await peer.recv(10)
        if not isinstance(hello, Hello):
            self.findings.add("no_hello", got=describe(hello))
            return None, False
        if hello.proto != PROTOCOL_VERSION or len(hello.nonce) != 32:
            self.findings.add("bad_hello", hello=hello)
        nonce = auth.new_nonce()
        mac = auth.master_mac(self.token, hello.nonce, nonce)
        self.count("auth_correct" if pieces == 1 else "auth_fragmented")
        await peer.send(encode_frame(Auth(PROTOCOL_VERSION, nonce, mac).to_wire()), pieces)
        w = await peer.recv(10)
        if not isinstance(w, Welcome) or not auth.verify(auth.worker_mac(self.token, nonce, hello.nonce), w.mac):
            self.findings.add("correct_auth_refused", got=describe(w))
            return hello, False
        self.replayable = (self.replayable + [(nonce, mac)])[-8:]
        self.welcome_macs = (self.welcome_macs + [w.mac])[-8:]
        return hello, True

    async def configure(self, peer: Peer, wire_dtype: str) -> bool:
        self.count("configure_valid")
        await peer.send(self.configure_frame(wire_dtype))
        r = await peer.recv(30)
        if not (isinstance(r, Configured) and r.digest == self.digest):
            self.findings.add("valid_configure_refused", got=describe(r))
            return False
        return True

    # -- pre-auth cases: one connection each --
    async def preauth_case(self) -> None:
        rng = self.rng
        peer = await Peer.open(self.port, self.findings)
        self.connections += 1
        try:
            hello = await peer.recv(10)
            if not isinstance(hello, Hello):
                self.findings.add("no_hello", got=describe(hello))
                return
            nonce = auth.new_nonce()
            good_mac = auth.master_mac(self.token, hello.nonce, nonce)
            good = encode_frame(Auth(PROTOCOL_VERSION, nonce, good_mac).to_wire())
            kind = rng.choice(["garbage", "garbage_frame", "oversized", "truncated", "wrong_type", "random_msgpack", "special",
                               "version", "version_bool", "bad_mac", "replay", "reflect", "bad_nonce", "fields", "flip", "flip",
                               "fragmented", "close_now", "auth_then_garbage"])
            # "welcome"; "version" / "auth": that error, then closed; "refused": any other handshake failure,
            # answered with `error auth` then closed (docs/protocol.md §8, §9); "open": the worker waits for
            # more bytes; "any_but_welcome": an error or nothing, then closed
            expect: str
            data: bytes = b""
            if kind == "garbage":
                data = rng.randbytes(rng.randint(1, 300))
                if len(data) < 4:
                    expect = "open"
                else:
                    (n,) = HEADER.unpack_from(data)
                    expect = "refused" if n > PREAUTH_MAX_FRAME or 4 + n <= len(data) else "open"
                    if expect == "refused" and len(data) > 4 + min(n, PREAUTH_MAX_FRAME):
                        # bytes the worker never reads: its close becomes a TCP reset, which may destroy
                        # the error frame before we read it
                        expect = "refused_or_reset"
            elif kind == "garbage_frame":
                data, expect = payload_frame(rng.randbytes(rng.randint(0, 200))), "refused"
            elif kind == "oversized":
                data, expect = HEADER.pack(rng.randint(DEFAULT_MAX_FRAME + 1, 2**32 - 1)), "refused"
            elif kind == "truncated":
                full = good if rng.random() < 0.5 else raw_frame(random_msgpack(rng))
                data, expect = full[:rng.randint(1, len(full) - 1)], "open"
            elif kind == "wrong_type":
                msg = rng.choice([Ping(1), Pong(1), Compute(1, None, None, None, None), Welcome(good_mac), Configured(self.digest),
                                  Hello(1, nonce, {}, None), Error("auth", "x", None), Result(1, pack_array(np.zeros((1, 10))))])
                data, expect = encode_frame(msg.to_wire()), "refused"
                if isinstance(msg, Configured):
                    data = self.configure_frame()
            elif kind == "random_msgpack":
                data, expect = raw_frame(random_msgpack(rng)), "refused"
            elif kind == "special":
                name, p = rng.choice(special_payloads(rng))
                kind = f"special_{name}"
                data, expect = payload_frame(p), "refused"
            elif kind == "version":
                proto = rng.choice([0, 2, -1, 255, 2**32, 2**63 - 1, -2**63])
                data, expect = encode_frame({"t": "auth", "proto": proto, "nonce": nonce, "mac": good_mac}), "version"
            elif kind == "version_bool":
                data, expect = encode_frame({"t": "auth", "proto": True, "nonce": nonce, "mac": good_mac}), "refused"
            elif kind == "bad_mac":
                mac = rng.choice([rng.randbytes(32), b"\x00" * 32, good_mac[:31], good_mac + b"\x00", b"",
                                  auth.master_mac(b"another-token-0123456789abcdef", hello.nonce, nonce),
                                  auth.master_mac(self.token, nonce, hello.nonce),  # nonces swapped
                                  auth.worker_mac(self.token, hello.nonce, nonce)])  # the worker's prefix
                data, expect = encode_frame({"t": "auth", "proto": 1, "nonce": nonce, "mac": mac}), "auth"
            elif kind == "replay":
                if not self.replayable:
                    return
                n_old, mac_old = rng.choice(self.replayable)
                data, expect = encode_frame(Auth(1, n_old, mac_old).to_wire()), "auth"
            elif kind == "reflect":
                if not self.welcome_macs:
                    return
                data, expect = encode_frame(Auth(1, nonce, rng.choice(self.welcome_macs)).to_wire()), "auth"
            elif kind == "bad_nonce":
                n2 = rng.choice([nonce[:31], nonce + b"\x01", b"", nonce * 2])
                data, expect = encode_frame({"t": "auth", "proto": 1, "nonce": n2, "mac": auth.master_mac(self.token, hello.nonce, n2)}), "refused"
            elif kind == "fields":
                msg = {"t": "auth", "proto": 1, "nonce": nonce, "mac": good_mac}
                if rng.random() < 0.5:
                    msg["extra"] = rng.choice([0, None, "x"])
                else:
                    del msg[rng.choice(["proto", "nonce", "mac"])]
                data, expect = raw_frame(msg), "refused"
            elif kind == "flip":
                payload = flip(good[4:], rng)
                data, expect = payload_frame(payload), ("welcome" if lenient_equal(payload, good[4:]) else "any_but_welcome")
            elif kind == "fragmented":
                self.count("preauth_fragmented")
                if not await peer.send(good, pieces=min(len(good), rng.randint(2, 40))):
                    self.findings.add("preauth_unexpected", case=kind, got="send failed")
                    return
                r = await peer.recv(10)
                if not isinstance(r, Welcome) or not auth.verify(auth.worker_mac(self.token, nonce, hello.nonce), r.mac):
                    self.findings.add("correct_auth_refused", case=kind, got=describe(r))
                return
            elif kind == "close_now":
                self.count("preauth_close_now")
                return
            else:  # auth_then_garbage: correct auth + a garbage frame in the same write: welcome, then bad_request
                self.count("preauth_auth_then_garbage", 2)
                await peer.send(good + payload_frame(b"\xc1"))
                r1, r2 = await peer.recv(10), await peer.recv(10)
                if not isinstance(r1, Welcome) or not (isinstance(r2, Error) and r2.code == "bad_request" and r2.id is None):
                    self.findings.add("preauth_unexpected", case=kind, got=f"{describe(r1)}, {describe(r2)}")
                return
            self.count(f"preauth_{kind}")
            pieces = 1 if rng.random() < 0.8 else rng.randint(2, 6)
            if pieces > 1 and expect == "refused":
                expect = "refused_or_reset"  # pieces sent after the worker closed make it reset the connection
            await peer.send(data, pieces=pieces)
            if expect == "open":
                await asyncio.sleep(0.05)
                try:
                    m = await peer.recv(0.15)
                except asyncio.TimeoutError:
                    return
                if m is not None:
                    self.findings.add("preauth_unexpected", case=kind, expect=expect, got=describe(m))
                return
            closed, got = await peer.wait_eof(max(5.0, 2 * self.handshake_timeout + 2))
            kinds = [describe(m) for m in got]
            if any(isinstance(m, Welcome) for m in got) and expect != "welcome":
                self.findings.add("AUTH_BYPASS", case=kind, got=kinds, data=data[:120].hex())
                return
            want = {"welcome": ["welcome"], "version": ["error:version:None"], "auth": ["error:auth:None"],
                    "refused": ["error:auth:None"], "reset": []}.get(expect)
            if expect == "welcome":
                return  # a flip that changed nothing: the session is open, we just close it
            if expect == "refused_or_reset":
                expect = "refused" if kinds else "reset"
            if not closed:
                self.findings.add("preauth_not_closed", case=kind, expect=expect, got=kinds)
            elif want is not None and kinds != want:
                self.findings.add("preauth_unexpected", case=kind, expect=expect, got=kinds)
            elif expect == "any_but_welcome" and any(k not in ("error:auth:None", "error:version:None") for k in kinds):
                self.findings.add("preauth_unexpected", case=kind, expect=expect, got=kinds)
        finally:
            peer.abort()

    # -- sessions: a correct handshake + configure, then many mutated frames --
    def session_frame(self, wire_dtype: str, configured: bool) -> tuple[str, bytes, tuple]:
        """(case, frame, expectation). Expectation: ("id", id, allowed kinds, x or None) | ("nil",) |
        ("pong", seq) | ("configured",) | ("any",)."""
        rng = self.rng
        B = rng.choice([1, 1, 2, 3, 8, 17])
        x = rng_array(rng, (B, 28, 28))
        ok_kinds = {"result", "busy"} if configured else {"not_configured"}
        bad_kinds = {"bad_request", "busy"} if configured else {"not_configured"}
        r = rng.random()
        if r < 0.16:  # valid compute (f4 or f2 input); sometimes an edge id
            dt = rng.choice(["f4", "f4", "f2"])
            xs = x.astype(np.float16).astype(np.float32) if dt == "f2" else x
            i = rng.choice([self.new_id()] * 8 + [0, 2**63 - 1])
            return f"compute_valid_{dt}", encode_frame(Compute(i, pack_array(xs, dt), None, None, None).to_wire()), ("id", i, ok_kinds, xs)
        if r < 0.40:  # structurally invalid array for a valid message
            i = self.new_id()
            name, arr = self.bad_array(rng, x)
            if name == "deep_dtype":  # refused whole at the frame layer (nesting limit): no id to answer with
                return f"compute_{name}", raw_frame(compute(i, x=arr)), ("nil",)
            return f"compute_{name}", raw_frame(compute(i, x=arr)), ("id", i, bad_kinds, None)
        if r < 0.46:  # wrong fields for the placement (still a valid message)
            i = self.new_id()
            name, kw = rng.choice([("v_for_hb", {"x": pack_array(x), "v": pack_array(np.stack([x, x], 1))}),
                                   ("images", {"x": pack_array(x), "images": pack_array((x * 255).astype(np.uint8)[:, None], "u1")}),
                                   ("indices", {"x": pack_array(x), "indices": pack_array(np.zeros((B, 2)), "i4")}),
                                   ("x_nil", {}),
                                   ("only_images", {"images": pack_array((x * 255).astype(np.uint8)[:, None].repeat(2, 1), "u1")})])
            return f"compute_{name}", raw_frame(compute(i, **kw)), ("id", i, bad_kinds, None)
        if r < 0.56:  # invalid message: bad id, wrong field types, unknown or missing fields
            d = compute(rng.randrange(2**32), x=pack_array(x))
            name = rng.choice(["id_negative", "id_2^63", "id_2^64-1", "id_bool", "id_float", "id_str", "id_nil", "x_list", "x_bin",
                               "x_int", "unknown_field", "missing_field", "t_unknown", "t_missing", "t_int"])
            if name == "id_negative":
                d["id"] = -rng.randint(1, 2**63)
            elif name == "id_2^63":
                d["id"] = 2**63
            elif name == "id_2^64-1":
                d["id"] = 2**64 - 1
            elif name == "id_bool":
                d["id"] = True
            elif name == "id_float":
                d["id"] = 3.0
            elif name == "id_str":
                d["id"] = "7"
            elif name == "id_nil":
                d["id"] = None
            elif name == "x_list":
                d["x"] = [1, 2]
            elif name == "x_bin":
                d["x"] = b"\x00" * 16
            elif name == "x_int":
                d["x"] = 5
            elif name == "unknown_field":
                d[rng.choice(["extra", "ID", "", "y"])] = rng.choice([0, None, "x"])
            elif name == "missing_field":
                del d[rng.choice(["id", "x", "v", "images", "indices"])]
            elif name == "t_unknown":
                d["t"] = rng.choice(["computee", "", "COMPUTE", "shutdown", "result "])
            elif name == "t_missing":
                del d["t"]
            else:
                d["t"] = 3
            return f"msg_{name}", raw_frame(d), ("nil",)
        if r < 0.62:  # message types a master may not send
            msg = rng.choice([Hello(1, auth.new_nonce(), {}, None), Auth(1, auth.new_nonce(), b"\x00" * 32), Welcome(b"\x00" * 32),
                              Configured(self.digest), Result(1, pack_array(np.zeros((1, 10)))), Error("internal", "x", 3),
                              Error("busy", "x", None), Pong(4)])
            return f"type_{msg.TYPE}", encode_frame(msg.to_wire()), ("nil",)
        if r < 0.68:  # invalid payloads (§4)
            name, p = rng.choice(special_payloads(rng))
            if name == "duplicate_key":  # §4.7: the receiver keeps the last value, so this is ping {seq: 2}
                return f"payload_{name}", payload_frame(p), ("pong", 2)
            return f"payload_{name}", payload_frame(p), ("nil",)
        if r < 0.72:
            return "random_msgpack", raw_frame(random_msgpack(rng)), ("any",)
        if r < 0.78:
            seq = rng.choice([0, 1, -1, 2**63 - 1, -2**63, 2**64 - 1, rng.randrange(2**32)])
            return "ping", encode_frame(Ping(seq).to_wire()), ("pong", seq)
        if r < 0.84:  # configure: refused ones must leave the configuration as it was
            if configured and rng.random() < 0.15:  # (not in an unconfigured session: it would configure it)
                return "configure_same", self.configure_frame(wire_dtype), ("configured",)
            name, frame, exp = self.bad_configure(rng, wire_dtype)
            return f"configure_{name}", frame, exp
        if r < 0.86:
            seq = rng.randrange(2**32)
            return "error_bad_code", raw_frame({"t": "error", "code": "nope", "message": "", "id": seq}), ("nil",)
        # byte flips of a valid compute/ping payload (length prefix kept right): anything but a crash
        base = encode_frame(rng.choice([Compute(rng.randrange(2**32), pack_array(x[:1]), None, None, None),
                                        Ping(rng.randrange(2**16))]).to_wire())
        return "flip", payload_frame(flip(base[4:], rng)), ("any",)

    def bad_array(self, rng: random.Random, x: np.ndarray) -> tuple[str, Any]:
        B = x.shape[0]
        a = pack_array(x)
        a["data"] = bytes(a["data"])
        name = rng.choice(["shape_27", "shape_784", "shape_2d", "shape_4d", "shape_scalar", "dtype_f8", "dtype_u1", "dtype_i4",
                           "dtype_unknown", "dtype_int", "dtype_nil", "short_data", "long_data", "data_str", "nan", "inf", "f2_nan",
                           "f2_inf", "batch_0", "shape_negative", "shape_bool", "shape_float", "shape_str", "shape_nested",
                           "shape_huge", "shape_2^64", "shape_33d", "extra_key", "missing_key", "not_map_keys",
                           "batch_over_max"] + (["deep_dtype"] if DEEP else []))
        if name == "shape_27":
            a["shape"], a["data"] = [B, 28, 27], a["data"][:B * 28 * 27 * 4]
        elif name == "shape_784":
            a["shape"] = [B, 784]
        elif name == "shape_2d":
            a["shape"], a["data"] = [28, 28], a["data"][:784 * 4]
        elif name == "shape_4d":
            a["shape"] = [B, 28, 28, 1]
        elif name == "shape_scalar":
            a["shape"], a["data"] = [], a["data"][:4]
        elif name in ("dtype_f8", "dtype_u1", "dtype_i4"):
            dt = name[-2:]
            a = pack_array(x if dt == "f8" else (x * 100), dt)
        elif name == "dtype_unknown":
            a["dtype"] = rng.choice(["f16", "float32", "", "<f4", "F4", "f4 "])
        elif name == "dtype_int":
            a["dtype"] = 4
        elif name == "dtype_nil":
            a["dtype"] = None
        elif name == "short_data":
            a["data"] = a["data"][:-rng.randint(1, 8)]
        elif name == "long_data":
            a["data"] = a["data"] + rng.randbytes(rng.randint(1, 8))
        elif name == "data_str":
            a["data"] = "abcd" * (B * 784)
        elif name in ("nan", "inf"):
            y = x.copy()
            y.flat[rng.randrange(y.size)] = np.nan if name == "nan" else rng.choice([np.inf, -np.inf])
            a = pack_array(y)
        elif name in ("f2_nan", "f2_inf"):
            y = x.astype(np.float16)
            y.flat[rng.randrange(y.size)] = np.nan if name == "f2_nan" else np.inf
            a = pack_array(y, "f2")
        elif name == "batch_0":
            a["shape"], a["data"] = [0, 28, 28], b""
        elif name == "shape_negative":
            a["shape"] = [-B, 28, 28]
        elif name == "shape_bool":
            a["shape"] = [True, 28, 28] if B == 1 else [B, 28, True]
        elif name == "shape_float":
            a["shape"] = [float(B), 28, 28]
        elif name == "shape_str":
            a["shape"] = "B,28,28"
        elif name == "shape_nested":
            a["shape"] = [[B], 28, 28]
        elif name == "shape_huge":
            a["shape"] = [rng.choice([2**31, 2**40, 2**62]), 28, 28]
        elif name == "shape_2^64":
            a["shape"] = [2**64 - 1, 28, 28]
        elif name == "shape_33d":
            a["shape"] = [1] * 33
        elif name == "extra_key":
            a["order"] = "C"
        elif name == "missing_key":
            del a[rng.choice(["dtype", "shape", "data"])]
        elif name == "not_map_keys":
            a = {"dtype": "f4", "shape": [B, 28, 28], "data": a["data"], "dtype ": "f4"}
        elif name == "deep_dtype":  # a value whose repr overflows Python's recursion limit
            return name, _RawValue(b"\x83\xa5dtype" + deep_list() + b"\xa5shape\x93" + msgpack.packb(B) + b"\x1c\x1c\xa4data"
                                   + msgpack.packb(a["data"], use_bin_type=True))
        elif name == "batch_over_max":
            if rng.random() < self.huge_batch_prob * 30:  # real data: (max_batch + 1) groups = 12.8 MB by default
                big = np.zeros((self.max_batch + 1, 28, 28), np.float32)
                return name, pack_array(big)
            a["shape"], name = [self.max_batch + 1, 28, 28], "batch_over_max_claimed"
        return name, a

    def bad_configure(self, rng: random.Random, wire_dtype: str) -> tuple[str, bytes, tuple]:
        base = Configure(0, 0.5, {"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl", "compute_arch": "cl"}, "encoded",
                         wire_dtype, self.digest, self.wire_arrays, None).to_wire()
        name = rng.choice(["wrong_digest", "nan_array", "wrong_shape", "missing_array", "extra_array_bad_digest", "scheme_unknown_key",
                           "scheme_bad_K", "scheme_hb_P2", "scheme_not_map", "alpha_zero", "alpha_nan", "alpha_huge", "placement_bad",
                           "placement_plain", "placement_shared", "wire_f8", "arrays_nil", "dataset_path", "array_f8",
                           "array_too_many_elements", "digest_not_hex"] + (["deep_scheme"] if DEEP else []))
        d = dict(base)
        arrays = dict(self.wire_arrays)
        exp: tuple = ("nil",)
        if name == "wrong_digest":
            d["digest"] = secrets.token_hex(32)
        elif name == "nan_array":
            A = self.A.copy()
            A[0, 0] = np.nan
            arrays["affine.weight"] = pack_array(A)
            d["arrays"], d["digest"] = arrays, array_digest({"affine.weight": A, "affine.bias": self.b})
        elif name == "wrong_shape":
            A = self.A[:, :700].copy()
            arrays["affine.weight"] = pack_array(A)
            d["arrays"], d["digest"] = arrays, array_digest({"affine.weight": A, "affine.bias": self.b})
        elif name == "missing_array":
            d["arrays"], d["digest"] = {"affine.bias": arrays["affine.bias"]}, array_digest({"affine.bias": self.b})
        elif name == "extra_array_bad_digest":
            arrays["zzz"] = pack_array(np.zeros(3))
            d["arrays"] = arrays
        elif name == "scheme_unknown_key":
            d["scheme"] = {**base["scheme"], "Q": 1}
        elif name == "scheme_bad_K":
            d["scheme"] = {**base["scheme"], "K": rng.choice([0, -1, "2", True, None, 2.0])}
        elif name == "scheme_hb_P2":
            d["scheme"] = {**base["scheme"], "P": 2}
        elif name == "scheme_not_map":
            d["scheme"] = [2, 1]
        elif name == "alpha_zero":
            d["alpha"] = 0
        elif name == "alpha_nan":
            d["alpha"] = rng.choice([float("nan"), float("inf"), -1.0])
        elif name == "alpha_huge":
            d["alpha"] = 2**63
        elif name == "placement_bad":
            d["placement"] = "everywhere"
        elif name == "placement_plain":  # plain needs the MLP arrays: refused
            d["placement"] = "plain"
        elif name == "placement_shared":  # shared needs model.* weights (and torch): refused
            d["placement"] = "shared"
        elif name == "wire_f8":
            d["wire_dtype"] = "f8"
        elif name == "arrays_nil":  # no bundle on this worker: refused
            d["arrays"] = None
        elif name == "dataset_path":
            d["dataset"] = rng.choice(["/etc/passwd", "../sample", "sample\x00"])
            d["placement"] = "shared"
        elif name == "array_f8":
            arrays["affine.bias"] = pack_array(self.b, "f8")
            d["arrays"] = arrays
        elif name == "array_too_many_elements":
            arrays["affine.bias"] = {"dtype": "f4", "shape": [2**25 + 1], "data": b""}
            d["arrays"] = arrays
        elif name == "deep_scheme":  # the scheme's value repr overflows the recursion limit
            frame = _configure_with_raw_scheme_value(d)
            return name, frame, exp
        else:
            d["digest"] = "Z" * 64
        return name, raw_frame(d), exp

    async def session(self, n_frames: int) -> None:
        rng = self.rng
        peer = await Peer.open(self.port, self.findings)
        self.connections += 1
        self.sessions += 1
        replies: list = []
        reader_done = asyncio.Event()

        async def reader() -> None:
            try:
                while True:
                    m = await peer.recv(3600)
                    if m is None:
                        return
                    replies.append(m)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            finally:
                reader_done.set()

        task = None
        try:
            hello, ok = await self.handshake(peer, pieces=1 if rng.random() < 0.9 else rng.randint(2, 12))
            if not ok:
                return
            configured = rng.random() < 0.92
            wire_dtype = "f2" if rng.random() < 0.2 else "f4"
            if configured and not await self.configure(peer, wire_dtype):
                return
            task = asyncio.create_task(reader())
            expectations: list[tuple[str, tuple]] = []
            whole = 0
            batch: list[bytes] = []

            async def flush() -> bool:
                nonlocal batch
                if not batch:
                    return True
                data, batch = b"".join(batch), []
                return await peer.send(data, pieces=1 if rng.random() < 0.85 else rng.randint(2, 8))

            sent_here = 0
            while sent_here < n_frames and not self.stop:
                if rng.random() < 0.01:  # a burst beyond max_in_flight (one frame repeated): busy is allowed
                    i = self.new_id()
                    x = rng_array(rng, (1, 28, 28))
                    f = encode_frame(Compute(i, pack_array(x), None, None, None).to_wire())
                    n = min(self.max_in_flight + 20, max(1, n_frames - sent_here))
                    batch.append(f * n)
                    expectations += [("burst_duplicate_id", ("id", i, {"result", "busy"} if configured else {"not_configured"}, x))] * n
                    self.count("burst_duplicate_id", n)
                    whole += n
                    sent_here += n
                else:
                    case, frame, exp = self.session_frame(wire_dtype, configured)
                    dup = 2 if exp[0] == "id" and "result" in exp[2] and rng.random() < 0.1 else 1
                    for _ in range(dup):
                        batch.append(frame)
                        expectations.append((case, exp))
                    self.count(case if dup == 1 else case + "_dup", dup)
                    whole += dup
                    sent_here += dup
                if len(batch) >= rng.randint(1, 24) and not await flush():
                    break
            barrier = (1 << 62) + self.rng.randrange(1 << 30)  # its pong comes after every non-compute reply
            batch.append(encode_frame(Ping(barrier).to_wire()))
            expectations.append(("barrier_ping", ("pong", barrier)))
            self.count("barrier_ping")
            whole += 1
            if not await flush():
                self.findings.add("session_send_failed", frames=whole)
                return
            # every whole frame gets exactly one reply: wait for them all (computes may finish after the
            # barrier's pong; stop waiting once nothing came for 3 s)
            deadline, last_n, last_t, seen_barrier = time.monotonic() + 60, -1, time.monotonic(), False
            while len(replies) < whole and time.monotonic() < deadline and not reader_done.is_set():
                if len(replies) != last_n:
                    last_n, last_t = len(replies), time.monotonic()
                    seen_barrier = seen_barrier or any(isinstance(m, Pong) and m.seq == barrier for m in replies)
                elif seen_barrier and time.monotonic() - last_t > 3:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.02)
            self.replies += len(replies)
            if reader_done.is_set():  # the worker closed a session that should have continued (§8)
                cases = Counter(c for c, _ in expectations)
                self.findings.add("SESSION_DROPPED_BY_WORKER", frames=whole, replies=len(replies), cases=sorted(cases))
                return
            self.verify_session(expectations, replies, whole, configured, wire_dtype)
            # how the session ends
            end = rng.choice(["close", "close", "oversized", "truncated", "abrupt_with_work"])
            self.count(f"end_{end}")
            if end == "oversized":
                before = len(replies)
                await peer.send(HEADER.pack(rng.randint(DEFAULT_MAX_FRAME + 1, 2**32 - 1)) + rng.randbytes(rng.randint(0, 64)))
                try:
                    await asyncio.wait_for(reader_done.wait(), 10)
                except asyncio.TimeoutError:
                    self.findings.add("oversized_not_closed")
                tail = [describe(m) for m in replies[before:]]
                if tail != ["error:limit:None"]:
                    self.findings.add("oversized_unexpected", got=tail)
            elif end == "truncated":
                f = encode_frame(Compute(self.new_id(), pack_array(rng_array(rng, (2, 28, 28))), None, None, None).to_wire())
                await peer.send(f[:rng.randint(1, len(f) - 1)])
            elif end == "abrupt_with_work":
                x = rng_array(rng, (64, 28, 28))
                await peer.send(b"".join(encode_frame(Compute(self.new_id(), pack_array(x), None, None, None).to_wire()) for _ in range(8)))
        finally:
            peer.abort()
            if task:
                task.cancel()

    def verify_session(self, expectations: list, replies: list, whole: int, configured: bool, wire_dtype: str) -> None:
        if len(replies) != whole:
            self.findings.add("reply_count_mismatch", frames=whole, replies=len(replies),
                              cases=Counter(c for c, _ in expectations).most_common(6))
        by_id: dict[int, list] = {}
        nil_errors = pongs = configured_n = 0
        pong_seqs: Counter = Counter()
        for m in replies:
            if isinstance(m, Result):
                by_id.setdefault(m.id, []).append(m)
            elif isinstance(m, Error):
                if m.id is None:
                    nil_errors += 1
                    if m.code != "bad_request":
                        self.findings.add("nil_error_code", code=m.code, message=m.message)
                else:
                    by_id.setdefault(m.id, []).append(m)
            elif isinstance(m, Pong):
                pongs += 1
                pong_seqs[m.seq] += 1
            elif isinstance(m, Configured):
                configured_n += 1
            else:
                self.findings.add("unexpected_reply", got=describe(m))
        exp_ids: dict[int, list] = {}
        nil_exp = any_n = conf_exp = 0
        for case, e in expectations:
            if e[0] == "id":
                exp_ids.setdefault(e[1], []).append((case, e))
            elif e[0] == "nil":
                nil_exp += 1
            elif e[0] == "pong":
                if pong_seqs[e[1]] > 0:
                    pong_seqs[e[1]] -= 1
                else:
                    self.findings.add("pong_missing", seq=e[1])
            elif e[0] == "configured":
                conf_exp += 1
            else:
                any_n += 1
        if not nil_exp <= nil_errors <= nil_exp + any_n:
            self.findings.add("nil_error_count", expected=nil_exp, extra_allowed=any_n, got=nil_errors)
        if configured_n != conf_exp:
            self.findings.add("configured_count", expected=conf_exp, got=configured_n)
        tol = 2e-2 if wire_dtype == "f2" else 1e-4
        for i, exps in exp_ids.items():
            got = by_id.pop(i, [])
            if len(got) != len(exps):
                self.findings.add("NO_REPLY" if len(got) < len(exps) else "EXTRA_REPLIES", id=i, case=exps[0][0], expected=len(exps),
                                  got=[describe(m) for m in got])
            for (case, e), m in zip(exps, got):
                kind = "result" if isinstance(m, Result) else m.code
                if kind not in e[2]:
                    self.findings.add("VALIDATION_BYPASS" if kind == "result" else "wrong_reply", case=case, expected=sorted(e[2]), got=kind,
                                      message=getattr(m, "message", ""))
                    continue
                self.outcomes[f"{kind}_as_expected"] += 1
                if kind == "result":
                    try:
                        y = unpack_array(m.y, "y", dtypes=(wire_dtype,), shape=(e[3].shape[0], 10)).astype(np.float64)
                    except RemoteProtocolError as err:
                        self.findings.add("bad_result", case=case, why=err)
                        continue
                    want = self.ref(e[3])
                    if not np.allclose(y, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max()))):
                        self.findings.add("WRONG_RESULT", case=case, max_err=float(np.abs(y - want).max()))
                    else:
                        self.outcomes["result_values_verified"] += 1
        for i, got in by_id.items():  # replies to ids nobody structured: fine below 2**32 (mutated frames)
            if i >= 1 << 40 and i != 2**63 - 1:
                self.findings.add("reply_for_unknown_id", id=i, got=[describe(m) for m in got])

    # -- health check: a fresh session must compute correctly --
    async def health_check(self, label: str) -> bool:
        t0 = time.perf_counter()
        ok = False
        why = ""
        try:
            peer = await Peer.open(self.port, self.findings)
            self.connections += 1
            try:
                hello, welcomed = await self.handshake(peer)
                if welcomed and await self.configure(peer, "f4"):
                    x = rng_array(self.rng, (5, 28, 28))
                    i = self.new_id()
                    self.count("check_compute")
                    await peer.send(encode_frame(Compute(i, pack_array(x), None, None, None).to_wire()))
                    r = await peer.recv(30)
                    if isinstance(r, Result) and r.id == i:
                        y = unpack_array(r.y, "y", dtypes=("f4",), shape=(5, 10)).astype(np.float64)
                        want = self.ref(x)
                        ok = bool(np.allclose(y, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max()))))
                        why = "" if ok else f"max error {float(np.abs(y - want).max()):.3g}"
                    else:
                        why = f"got {describe(r)}"
                else:
                    why = "handshake/configure failed"
            finally:
                peer.abort()
        except (OSError, asyncio.TimeoutError) as e:
            why = f"{type(e).__name__}: {e}"
        st = proc_status(self.pid)
        sample = {"label": label, "frames": self.sent, "ok": ok, "why": why, "ms": round((time.perf_counter() - t0) * 1000, 1),
                  "rss_mb": st.get("VmRSS"), "hwm_mb": st.get("VmHWM"), "fds": fd_count(self.pid)}
        self.checks.append(sample)
        if not ok:
            self.findings.add("HEALTH_CHECK_FAILED", label=label, why=why)
        return ok

    async def maybe_check(self) -> None:
        if self.sent >= self.next_check:
            async with self.check_lock:
                if self.sent >= self.next_check:
                    self.next_check = self.sent + self.check_every
                    await self.health_check(f"after {self.sent} frames")

    async def loop(self) -> None:
        while not self.stop and self.sent < self.budget:
            if not self.worker_alive():
                self.stop = True
                return
            try:
                if self.rng.random() < 0.85:  # a pre-auth case is one frame, a session ~50: ~10 % of frames pre-auth
                    await self.preauth_case()
                else:
                    await self.session(min(self.rng.choice([5, 20, 50, 120]), max(1, self.budget - self.sent)))
            except (OSError, asyncio.TimeoutError) as e:
                if self.worker_alive():
                    self.findings.add("connection_error", error=f"{type(e).__name__}: {e}")
            await self.maybe_check()

    # -- probes --
    async def probe_slowloris(self) -> dict:
        """Before auth, trickle one byte of a frame every half handshake timeout: the worker should
        drop the peer after handshake_timeout (§8: auth within handshake_timeout)."""
        ht = self.handshake_timeout
        peer = await Peer.open(self.port, self.findings)
        self.connections += 1
        t0 = time.monotonic()
        try:
            await peer.recv(10)
            frame = HEADER.pack(1000) + b"\x00" * 1000
            i = 0
            closed_after = None
            while time.monotonic() - t0 < 3 * ht + 1:
                if not await peer.send(frame[i:i + 1]):
                    closed_after = time.monotonic() - t0
                    break
                self.count("probe_slowloris_byte")
                i += 1
                try:
                    m = await peer.recv(ht / 2)
                    if m is None:
                        closed_after = time.monotonic() - t0
                        break
                except asyncio.TimeoutError:
                    pass
            alive = closed_after is None
            res = {"handshake_timeout_s": ht, "bytes_trickled": i, "seconds": round(time.monotonic() - t0, 2),
                   "closed_after_s": None if alive else round(closed_after, 2), "still_open": alive}
            if alive:
                self.findings.add("SLOWLORIS_PREAUTH", detail=f"unauthenticated peer still connected after {res['seconds']} s "
                                                              f"(handshake_timeout {ht:g} s) by sending 1 byte per {ht / 2:g} s")
            return res
        finally:
            peer.abort()

    async def probe_preauth_buffer(self, conns: int, mb: int) -> dict:
        """Unauthenticated peers announce a big frame and send `mb` MiB of it: how much RSS does the worker grow?"""
        if conns <= 0 or mb <= 0:
            return {"skipped": True}
        before = proc_status(self.pid).get("VmRSS")
        peers = []
        try:
            for _ in range(conns):
                p = await Peer.open(self.port, self.findings)
                self.connections += 1
                await p.recv(10)
                peers.append(p)
            chunk = b"\x00" * MB
            await asyncio.gather(*(p.send(HEADER.pack(min(DEFAULT_MAX_FRAME, (mb + 1) * MB)) + b"\x00" * 0) for p in peers))
            for _ in range(mb):
                await asyncio.gather(*(p.send(chunk) for p in peers))
            self.count("probe_preauth_buffer", conns)
            await asyncio.sleep(0.3)
            during = proc_status(self.pid).get("VmRSS")
        finally:
            for p in peers:
                p.abort()
        await asyncio.sleep(0.5)
        after = proc_status(self.pid).get("VmRSS")
        res = {"connections": conns, "mib_each": mb, "rss_before_mb": before, "rss_during_mb": during, "rss_after_mb": after,
               "growth_mb": round((during or 0) - (before or 0), 1)}
        if res["growth_mb"] > 0.5 * conns * mb:
            self.findings.add("PREAUTH_BUFFERING", detail=f"{conns} unauthenticated connections x {mb} MiB grew the worker by "
                                                          f"{res['growth_mb']} MiB (the pre-auth frame limit is max_frame)")
        return res


class _RawValue:
    """Pre-encoded msgpack bytes to splice into a frame (see `compute`)."""

    def __init__(self, data: bytes):
        self.data = data


def rng_array(rng: random.Random, shape: tuple) -> np.ndarray:
    return np.random.default_rng(rng.randrange(2**32)).random(shape, dtype=np.float32)


def compute(i: Any, x: Any = None, v: Any = None, images: Any = None, indices: Any = None) -> Any:
    """A compute map; a _RawValue for x is spliced in as raw msgpack bytes (then a _RawMap)."""
    if isinstance(x, _RawValue):
        head = msgpack.packb({"t": "compute", "id": i, "v": v, "images": images, "indices": indices}, use_bin_type=True)
        # 0x85 -> 0x86: one more entry, then "x" and the raw value
        assert head[0] == 0x85
        return _RawMap(bytes([0x86]) + head[1:] + b"\xa1x" + x.data)
    return {"t": "compute", "id": i, "x": x, "v": v, "images": images, "indices": indices}


def _configure_with_raw_scheme_value(d: dict) -> bytes:
    d = dict(d)
    d["scheme"] = {"K": 0}
    body = msgpack.packb(d, use_bin_type=True)
    marker = msgpack.packb({"K": 0}, use_bin_type=True)
    i = body.index(marker)
    return payload_frame(body[:i] + b"\x81\xa1K" + deep_list() + body[i + len(marker):])


async def fuzz_worker(frames: int = 100_000, seed: int = 0, *, check_every: int = 5000, concurrency: int = 4,
                      handshake_timeout: float = 2.0, preauth_conns: int = 4, preauth_mb: int = 16, slowloris: bool = True,
                      workdir: str | Path | None = None, log: bool = True) -> dict:
    """Start a worker process and throw `frames` frames at it. Returns the worker half of the report."""
    token = secrets.token_hex(24)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgecc-fuzz-") as tmp:
        wdir = Path(workdir or tmp)
        w = WorkerProc(wdir, "fuzz-worker", token, ["--handshake-timeout", str(handshake_timeout)], log_level="error")
        w.start()
        try:
            fz = WorkerFuzzer(w.port, w.pid, token.encode(), seed, frames, check_every=check_every, concurrency=concurrency,
                              handshake_timeout=handshake_timeout)
            # warm up: a refused shared-placement configure makes the worker import torch once, so that the
            # RSS baseline includes it
            await fz.health_check("start")
            peer = await Peer.open(w.port, fz.findings)
            _, ok = await fz.handshake(peer)
            if ok:
                fz.count("configure_placement_shared")
                await peer.send(fz.configure_frame(placement="shared"))
                await peer.recv(60)
            peer.abort()
            await fz.health_check("baseline")
            fd_start = fd_count(w.pid)
            probes: dict[str, Any] = {}
            slow = asyncio.create_task(fz.probe_slowloris()) if slowloris else None
            loops = [asyncio.create_task(fz.loop()) for _ in range(concurrency)]
            last_log = time.monotonic()
            while not all(t.done() for t in loops):
                await asyncio.sleep(0.5)
                if log and time.monotonic() - last_log > 10:
                    last_log = time.monotonic()
                    print(f"  worker fuzz: {fz.sent}/{frames} frames, {fz.findings.total()} findings, "
                          f"rss {proc_status(w.pid).get('VmRSS')} MiB", file=sys.stderr)
            for t in loops:
                if t.exception():
                    fz.findings.add("fuzzer_error", error=repr(t.exception()))
            if slow:
                probes["slowloris"] = await slow
            if fz.worker_alive():
                probes["preauth_buffer"] = await fz.probe_preauth_buffer(preauth_conns, preauth_mb)
            crashed = not fz.worker_alive()
            correct_after = (not crashed) and await fz.health_check("final")
            await asyncio.sleep(1.0)  # let the worker close what we aborted
            fd_end = fd_count(w.pid)
            st = proc_status(w.pid)
            rss = [c["rss_mb"] for c in fz.checks if c["rss_mb"] is not None]
            if fd_start is not None and fd_end is not None and fd_end > fd_start + 2:
                fz.findings.add("FD_LEAK", start=fd_start, end=fd_end)
            problems = w.log_problems()
            exit_code = w.proc.poll()
        finally:
            w.kill()
    return {
        "frames": fz.sent, "connections": fz.connections, "sessions": fz.sessions, "replies_checked": fz.replies,
        "cases": dict(sorted(fz.cases.items())), "checked_replies": dict(sorted(fz.outcomes.items())),
        "crashed": crashed, "exit_code": exit_code,
        "logged_unexpected_errors": problems["unexpected_error_lines"], "logged_tracebacks": problems["traceback_lines"],
        "logged_never_retrieved": problems["never_retrieved_lines"], "log_examples": problems["examples"],
        "findings": dict(fz.findings.counts), "finding_examples": fz.findings.examples,
        "critical_findings": fz.findings.critical(),
        "logged_exceptions": problems["exceptions"],
        "health_checks": len(fz.checks), "health_failures": sum(not c["ok"] for c in fz.checks), "correct_after": bool(correct_after),
        "rss_mb": {"first": rss[0] if rss else None, "baseline": fz.checks[1]["rss_mb"] if len(fz.checks) > 1 else None,
                   "max": max(rss) if rss else None, "last": rss[-1] if rss else None, "peak_hwm": st.get("VmHWM")},
        "rss_samples": [{k: c[k] for k in ("frames", "rss_mb", "fds", "ms")} for c in fz.checks],
        "fds": {"start": fd_start, "end": fd_end}, "probes": probes,
        "duration_s": round(time.perf_counter() - t0, 2),
    }


# --- the master's result path ------------------------------------------------------------------------
def make_tiny_model(path: Path, K: int = 2, G: int = 1, seed: int = 1):
    """An untrained, deterministic AICC model file (as tests/conftest.py tiny_models), loaded back."""
    import torch

    from edgecc.coding.schemes import Scheme
    from edgecc.modelfile import load_model, save_model
    from edgecc.nets import AICC

    s = Scheme(K=K, G=G)
    torch.manual_seed(seed)
    save_model(path, AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    return load_model(path)


def direct_logits(model, groups: np.ndarray) -> np.ndarray:
    """In-process (B, K, 10) logits for groups (B, K, 28, 28) uint8."""
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(groups.astype(np.float32) / 255.0)).numpy()


def compare(got: np.ndarray, want: np.ndarray) -> tuple[str, float]:
    """("correct" | "wrong" | "prediction_mismatch", max abs error) of decoded vs in-process logits.
    Predictions are compared where the top two logits are clearly apart (exact near-ties may flip)."""
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * scale):
        return "wrong", err
    top2 = np.sort(want, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4 * scale
    if (got.argmax(-1) != want.argmax(-1))[clear].any():
        return "prediction_mismatch", err
    return "correct", err


class FakeWorker:
    """An in-process worker that handshakes (mostly) correctly, then answers with invalid results."""

    ACTIONS = {"honest": 24, "slow_honest": 4, "refused": 4, "shape": 5, "nan": 4, "inf": 2, "dtype": 4, "byte_length": 3,
               "unknown_id": 4, "duplicate_honest": 4, "invalid_then_honest": 4, "honest_then_invalid": 3, "error_id": 5,
               "error_nil": 3, "array_map_bad": 3, "deep_dtype": 1, "deep_t": 1, "error_bad_code": 1, "result_extra_field": 1,
               "y_not_map": 1, "garbage_frame": 1, "special_payload": 1, "oversized": 1, "truncated": 1, "unexpected_type": 1,
               "random_msgpack": 1, "unsolicited_pong": 2}
    HANDSHAKES = {"good": 60, "good_extra_caps": 6, "hello_proto2": 2, "hello_no_placement": 2, "hello_bad_caps": 2,
                  "hello_short_nonce": 2, "hello_garbage": 2, "hello_error": 2, "hello_deep_t": 1, "welcome_bad_mac": 3,
                  "welcome_replayed": 2, "welcome_master_prefix": 2, "welcome_error": 2, "welcome_extra_field": 1,
                  "configured_wrong_digest": 2, "configured_error": 2, "configured_garbage": 1}

    def __init__(self, token: bytes, seed: int):
        self.token = token
        self.rng = random.Random(seed)
        self.frames = 0
        self.actions: Counter = Counter()
        self.handshakes: Counter = Counter()
        self.findings = Findings()
        self.sessions = 0
        self.welcome_macs: list[bytes] = []
        self.conns: set = set()
        # After a truncated frame the byte stream is out of step: whatever we wrote next would complete
        # that frame, possibly as a well-formed result with garbage values (a lie no master can detect
        # without byzantine decoding). So such a connection stays silent until the master drops it.
        self.desynced: set = set()
        self.stop_fuzzing = False  # then answer honestly

    def write(self, writer: asyncio.StreamWriter, data: bytes, n: int = 1) -> None:
        if not writer.is_closing() and writer not in self.desynced:
            writer.write(data)
            self.frames += n

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from edgecc.runtime.transport import Comm, CommClosedError

        comm = Comm(reader, writer)
        self.sessions += 1
        self.conns.add(comm)
        try:
            await self._session(comm, writer)
        except (CommClosedError, asyncio.TimeoutError, ConnectionError, OSError):
            pass
        except RemoteProtocolError as e:
            self.findings.add("MASTER_SENT_INVALID_FRAME", why=e)
        except Exception as e:  # the fake must not hide its own bugs
            self.findings.add("fake_worker_error", error=repr(e))
        finally:
            comm.abort()
            self.conns.discard(comm)
            self.desynced.discard(writer)

    def pick(self, table: dict[str, int]) -> str:
        if not DEEP:
            table = {k: v for k, v in table.items() if "deep" not in k}
        return self.rng.choices(list(table), weights=list(table.values()))[0]

    async def _session(self, comm, writer) -> None:
        rng = self.rng
        mode = "good" if self.stop_fuzzing else self.pick(self.HANDSHAKES)
        self.handshakes[mode] += 1
        nonce_w = auth.new_nonce()
        caps = {"placements": ["encoded"], "wire_dtypes": ["f4", "f2"], "torch": False, "max_frame": DEFAULT_MAX_FRAME,
                "max_batch": 4096, "max_in_flight": 256}
        hello = Hello(1, nonce_w, caps, None).to_wire()
        if mode == "good_extra_caps":
            hello["caps"] = {**caps, "future_cap": {"x": [1, 2]}, "gpu": True}
            hello["bundle"] = secrets.token_hex(32)
        elif mode == "hello_proto2":
            hello["proto"] = 2
        elif mode == "hello_no_placement":
            hello["caps"] = {**caps, "placements": ["shared"]}
        elif mode == "hello_bad_caps":
            hello["caps"] = {**caps, rng.choice(["placements", "max_frame", "torch"]): rng.choice(["encoded", -1, 1.5, None])}
        elif mode == "hello_short_nonce":
            hello["nonce"] = nonce_w[:31]
        if mode == "hello_garbage":
            self.write(writer, payload_frame(rng.randbytes(rng.randint(0, 50))))
        elif mode == "hello_error":
            self.write(writer, encode_frame(Error("auth", "no", None).to_wire()))
        elif mode == "hello_deep_t":
            self.write(writer, payload_frame(b"\x81\xa1t" + deep_list()))
        else:
            self.write(writer, raw_frame(hello))
        expect_auth = mode.startswith(("good", "welcome", "configured"))
        try:
            a = await comm.read(timeout=10)
        except asyncio.TimeoutError:
            if expect_auth:
                self.findings.add("master_sent_no_auth", mode=mode)
            return
        if not expect_auth:
            self.findings.add("MASTER_ACCEPTED_BAD_HELLO", mode=mode, got=a.TYPE)
            return
        if not isinstance(a, Auth) or a.proto != 1:
            self.findings.add("master_bad_auth", got=a.TYPE)
            return
        if not auth.verify(auth.master_mac(self.token, nonce_w, a.nonce), a.mac):
            self.findings.add("MASTER_WRONG_MAC")
            return
        good_mac = auth.worker_mac(self.token, a.nonce, nonce_w)
        welcome_ok = True
        if mode == "welcome_bad_mac":
            self.write(writer, encode_frame(Welcome(rng.randbytes(32)).to_wire()))
            welcome_ok = False
        elif mode == "welcome_replayed":
            self.write(writer, encode_frame(Welcome(rng.choice(self.welcome_macs) if self.welcome_macs else b"\x00" * 32).to_wire()))
            welcome_ok = False
        elif mode == "welcome_master_prefix":
            self.write(writer, encode_frame(Welcome(auth.master_mac(self.token, a.nonce, nonce_w)).to_wire()))
            welcome_ok = False
        elif mode == "welcome_error":
            self.write(writer, encode_frame(Error("auth", "authentication failed", None).to_wire()))
            welcome_ok = False
        elif mode == "welcome_extra_field":
            self.write(writer, raw_frame({"t": "welcome", "mac": good_mac, "extra": 1}))
            welcome_ok = False
        else:
            self.write(writer, encode_frame(Welcome(good_mac).to_wire()))
            self.welcome_macs = (self.welcome_macs + [good_mac])[-8:]
        try:
            c = await comm.read(timeout=10)
        except asyncio.TimeoutError:
            if welcome_ok:
                self.findings.add("master_sent_no_configure")
            return
        if not welcome_ok:
            self.findings.add("MASTER_AUTH_BYPASS", mode=mode, got=c.TYPE)
            return
        if not isinstance(c, Configure) or c.arrays is None:
            self.findings.add("master_bad_configure", got=c.TYPE)
            return
        arrays = {k: np.array(unpack_array(v, k, dtypes=("f4",), max_elements=1 << 25)) for k, v in c.arrays.items()}
        if array_digest(arrays) != c.digest:
            self.findings.add("MASTER_DIGEST_MISMATCH")
        A, b = arrays["affine.weight"].astype(np.float64), arrays["affine.bias"].astype(np.float64)
        if mode == "configured_wrong_digest":
            self.write(writer, encode_frame(Configured(secrets.token_hex(32)).to_wire()))
        elif mode == "configured_error":
            self.write(writer, encode_frame(Error("bad_request", "configure refused: no", None).to_wire()))
        elif mode == "configured_garbage":
            self.write(writer, payload_frame(b"\xc1"))
        else:
            self.write(writer, encode_frame(Configured(c.digest).to_wire()))
        if mode.startswith("configured_"):
            try:
                m = await comm.read(timeout=5)
                self.findings.add("MASTER_USED_UNCONFIRMED_WORKER", mode=mode, got=m.TYPE)
            except asyncio.TimeoutError:
                pass
            return
        # session: answer computes
        pending_tasks: set = set()
        try:
            while True:
                m = await comm.read(timeout=30)
                if isinstance(m, Ping):
                    r = rng.random()
                    if r < 0.93:
                        self.write(writer, encode_frame(Pong(m.seq).to_wire()))
                    elif r < 0.97:
                        self.write(writer, encode_frame(Pong(rng.choice([-1, 2**64 - 1, 0])).to_wire()))
                    continue
                if not isinstance(m, Compute):
                    self.findings.add("master_sent_unexpected", got=m.TYPE)
                    continue
                x = unpack_array(m.x, "x", shape=(None, 28, 28)).astype(np.float64)
                y = x.reshape(x.shape[0], 784) @ A.T + b
                action = "honest" if self.stop_fuzzing else self.pick(self.ACTIONS)
                self.actions[action] += 1
                if action == "slow_honest":
                    t = asyncio.create_task(self._later(writer, rng.uniform(0.05, 0.6), encode_frame(Result(m.id, pack_array(y)).to_wire())))
                    pending_tasks.add(t)
                    t.add_done_callback(pending_tasks.discard)
                    continue
                for frame, n in self.answer(action, m.id, y):
                    self.write(writer, frame, n)
                if action == "truncated":
                    self.desynced.add(writer)
                await writer.drain()
        finally:
            for t in pending_tasks:
                t.cancel()

    async def _later(self, writer, delay: float, frame: bytes) -> None:
        await asyncio.sleep(delay)
        self.write(writer, frame)

    def answer(self, action: str, i: int, y: np.ndarray) -> list[tuple[bytes, int]]:
        rng = self.rng
        B = y.shape[0]
        honest = encode_frame(Result(i, pack_array(y)).to_wire())

        def res(arr: Any) -> bytes:
            return raw_frame({"t": "result", "id": i, "y": arr})

        def invalid() -> bytes:
            k = rng.choice(["shape", "nan", "inf", "dtype", "byte_length"])
            return self.answer(k, i, y)[0][0]

        if action == "honest":
            return [(honest, 1)]
        if action == "refused":
            return []
        if action == "shape":
            shape = rng.choice([(B, 9), (B + 1, 10), (10,), (B, 10, 1), (B * 10,), (1, B, 10)])
            z = np.zeros(int(np.prod(shape)), np.float32).reshape(shape)
            if z.size == y.size:
                z = y.astype(np.float32).reshape(shape)
            return [(res(pack_array(z)), 1)]
        if action in ("nan", "inf"):
            z = y.astype(np.float32).copy()
            z.flat[rng.randrange(z.size)] = np.nan if action == "nan" else rng.choice([np.inf, -np.inf])
            return [(res(pack_array(z, rng.choice(["f4", "f2"]))), 1)]
        if action == "dtype":
            dt = rng.choice(["f8", "u1", "i4"])
            return [(res(pack_array(y, dt)), 1)]
        if action == "byte_length":
            a = pack_array(y)
            d = bytes(a["data"])
            a["data"] = d[:-rng.randint(1, 4)] if rng.random() < 0.5 else d + b"\x00" * rng.randint(1, 4)
            return [(res(a), 1)]
        if action == "array_map_bad":
            a = pack_array(y)
            a["data"] = bytes(a["data"])
            k = rng.choice(["extra", "missing", "shape_str", "shape_neg", "shape_huge", "dtype_int", "data_str"])
            if k == "extra":
                a["z"] = 1
            elif k == "missing":
                del a[rng.choice(["dtype", "shape", "data"])]
            elif k == "shape_str":
                a["shape"] = "B,10"
            elif k == "shape_neg":
                a["shape"] = [-B, -10]
            elif k == "shape_huge":
                a["shape"] = [2**62, 10]
            elif k == "dtype_int":
                a["dtype"] = 4
            else:
                a["data"] = "x" * len(a["data"])
            return [(res(a), 1)]
        if action == "deep_dtype":  # repr of the dtype overflows the recursion limit inside unpack_array
            data = msgpack.packb(bytes(pack_array(y)["data"]), use_bin_type=True)
            y_raw = b"\x83\xa5dtype" + deep_list() + b"\xa5shape\x92" + msgpack.packb(B) + b"\x0a\xa4data" + data
            head = msgpack.packb({"t": "result", "id": i}, use_bin_type=True)
            return [(payload_frame(bytes([0x83]) + head[1:] + b"\xa1y" + y_raw), 1)]
        if action == "deep_t":
            return [(payload_frame(b"\x81\xa1t" + deep_list()), 1)]
        if action == "unknown_id":
            j = rng.choice([i + 10**9, 2**63 - 1, 2**64 - 1, -1, -(2**63), rng.randrange(2**40)])
            return [(raw_frame({"t": "result", "id": j, "y": pack_array(y)}), 1)]
        if action == "duplicate_honest":
            return [(honest, 1), (honest, 1)] + ([(honest, 1)] if rng.random() < 0.3 else [])
        if action == "invalid_then_honest":
            return [(invalid(), 1), (honest, 1)]
        if action == "honest_then_invalid":
            late = encode_frame(Result(i, pack_array(-y)).to_wire()) if rng.random() < 0.5 else invalid()  # dropped as late
            return [(honest, 1), (late, 1)]
        if action == "error_id":
            code = rng.choice(["bad_request", "internal", "busy", "not_configured", "limit"])
            return [(encode_frame(Error(code, "fuzz", i).to_wire()), 1)] + ([(honest, 1)] if rng.random() < 0.3 else [])
        if action == "error_nil":
            return [(encode_frame(Error(rng.choice(["bad_request", "internal", "busy"]), "fuzz " * rng.randint(0, 300), None).to_wire()), 1),
                    (honest, 1)]
        if action == "error_bad_code":
            return [(raw_frame({"t": "error", "code": "oops", "message": "", "id": i}), 1)]
        if action == "result_extra_field":
            return [(raw_frame({"t": "result", "id": i, "y": pack_array(y), "worker": 1}), 1)]
        if action == "y_not_map":
            return [(raw_frame({"t": "result", "id": i, "y": rng.choice([[1.0] * 10, b"\x00" * 40, None, 3])}), 1)]
        if action == "garbage_frame":
            return [(payload_frame(rng.randbytes(rng.randint(0, 64))), 1)]
        if action == "special_payload":
            return [(payload_frame(rng.choice(special_payloads(rng))[1]), 1)]
        if action == "oversized":
            return [(HEADER.pack(rng.randint(DEFAULT_MAX_FRAME + 1, 2**32 - 1)), 1)]
        if action == "truncated":
            return [(honest[:rng.randint(1, len(honest) - 1)], 1)]  # the rest never comes; the master's heartbeat drops us
        if action == "unexpected_type":
            msg = rng.choice([Ping(1), Hello(1, auth.new_nonce(), {}, None), Welcome(b"\x00" * 32), Configured("0" * 64),
                              Auth(1, auth.new_nonce(), b"\x00" * 32), Compute(i, None, None, None, None)])
            return [(encode_frame(msg.to_wire()), 1)]
        if action == "random_msgpack":
            return [(raw_frame(random_msgpack(rng)), 1)]
        if action == "unsolicited_pong":
            return [(encode_frame(Pong(rng.randrange(2**32)).to_wire()), 1), (honest, 1)]
        raise ValueError(action)


async def fuzz_master(frames: int = 10_000, seed: int = 0, *, in_flight: int = 4, max_seconds: float = 600.0,
                      stall_s: float = 15.0, workdir: str | Path | None = None, log: bool = True) -> dict:
    """Two honest worker processes + one FakeWorker, a real Master; fuzz until the fake has thrown `frames` frames."""
    from edgecc.data import load_sample
    from edgecc.runtime.limits import Limits
    from edgecc.runtime.master import Master, RequestFailed
    from edgecc.runtime.plan import CodedPlan

    t0 = time.perf_counter()
    token = secrets.token_hex(24)
    rng = random.Random(seed + 1)
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    old_handler = loop.get_exception_handler()

    def on_loop_error(lp, context):
        exc = context.get("exception")
        loop_errors.append(f"{context.get('message')}: {exc!r}"[:400])

    loop.set_exception_handler(on_loop_error)
    edgecc_log = logging.getLogger("edgecc")
    old_level = edgecc_log.level
    edgecc_log.setLevel(logging.CRITICAL)  # the master logs every lost link and worker error: thousands of lines
    with tempfile.TemporaryDirectory(prefix="edgecc-fuzz-master-") as tmp:
        wdir = Path(workdir or tmp)
        model, info = make_tiny_model(wdir / "hb.safetensors")
        plan = CodedPlan(model, info, 3)
        images, _ = load_sample()
        groups = images.reshape(-1, 2, 28, 28)
        want_all = direct_logits(model, groups)
        honest = [WorkerProc(wdir, f"honest{i}", token, log_level="warning").start() for i in range(2)]
        fake = FakeWorker(token.encode(), seed)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        fake_port = server.sockets[0].getsockname()[1]
        fake_index = rng.randrange(3)
        addrs = [w.address for w in honest]
        addrs.insert(fake_index, ("127.0.0.1", fake_port))
        master = Master(plan, addrs, token.encode(), limits=Limits(), request_timeout=10.0, max_backoff=0.3)
        outcomes: Counter = Counter()
        exceptions: Counter = Counter()
        examples: list[str] = []
        lat: list[float] = []
        rss: list[float] = []
        link_crashes: list[str] = []
        try:
            await master.start(wait_ready=30)
            await master.wait_all_ready(10)

            async def one() -> None:
                B = rng.randint(1, 4)
                s = rng.randrange(groups.shape[0] - B)
                t = time.perf_counter()
                try:
                    got = await asyncio.wait_for(master.infer(groups[s:s + B]), 30)
                except RequestFailed as e:
                    outcomes["failed"] += 1
                    if len(examples) < 10:
                        examples.append(str(e)[:300])
                    return
                except Exception as e:  # anything else is a master bug
                    exceptions[type(e).__name__] += 1
                    if len(examples) < 10:
                        examples.append(f"{type(e).__name__}: {e}"[:300])
                    return
                lat.append(time.perf_counter() - t)
                verdict, err = compare(got, want_all[s:s + B])
                outcomes["correct" if verdict == "correct" else verdict.upper()] += 1
                if verdict != "correct" and len(examples) < 10:
                    examples.append(f"request of {B} groups at {s}: {verdict}, max abs error {err:.3g}")

            progress = [fake.frames, time.monotonic()]
            stalled = False

            async def driver() -> None:
                nonlocal stalled
                while fake.frames < frames and time.perf_counter() - t0 < max_seconds:
                    if fake.frames != progress[0]:
                        progress[:] = [fake.frames, time.monotonic()]
                    elif time.monotonic() - progress[1] > stall_s:  # the master stopped talking to the fake worker
                        stalled = True
                        return
                    await one()

            last = time.monotonic()
            tasks = [asyncio.create_task(driver()) for _ in range(in_flight)]
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.25)
                rss.append(proc_status().get("VmRSS"))
                for l in master.links:
                    if l.task.done() and not any(l.address in c for c in link_crashes):
                        exc = l.task.exception() if not l.task.cancelled() else "cancelled"
                        link_crashes.append(f"link {l.index} ({l.address}, {'fake' if l.index == fake_index else 'honest'}) "
                                            f"task ended: {exc!r}"[:400])
                if log and time.monotonic() - last > 10:
                    last = time.monotonic()
                    print(f"  master fuzz: {fake.frames}/{frames} frames, {sum(outcomes.values())} requests", file=sys.stderr)
            for t in tasks:
                if t.exception():
                    exceptions[type(t.exception()).__name__] += 1
            # after fuzzing: the fake answers honestly; the master must still decode correctly
            fake.stop_fuzzing = True
            before = outcomes.copy()
            for _ in range(8):
                await one()
            after = outcomes - before
            correct_after = after.get("correct", 0) == 8
            for l in master.links:
                if l.task.done() and not any(f"link {l.index} " in c for c in link_crashes):
                    exc = l.task.exception() if not l.task.cancelled() else "cancelled"
                    link_crashes.append(f"link {l.index} ({'fake' if l.index == fake_index else 'honest'}) task ended: {exc!r}"[:400])
            leaked_pending = len(master.pending)
            honest_reconnects = [l.connects for l in master.links if l.index != fake_index]
            stats = dict(master.stats)
            fake_connects = master.links[fake_index].connects
        finally:
            await master.close()
            server.close()
            for c in list(fake.conns):
                c.abort()
            await server.wait_closed()
            honest_problems = [w.log_problems() for w in honest]
            for w in honest:
                w.kill()
            await asyncio.sleep(0.05)
            loop.set_exception_handler(old_handler)
            edgecc_log.setLevel(old_level)
    st = proc_status()
    n_req = sum(outcomes.values()) + sum(exceptions.values())
    return {
        "frames": fake.frames, "requests": n_req, "outcomes": dict(outcomes), "exceptions": dict(exceptions),
        "examples": examples, "loop_errors": len(loop_errors), "loop_error_examples": loop_errors[:8],
        "link_crashes": link_crashes, "stalled": stalled, "leaked_pending": leaked_pending, "honest_connects": honest_reconnects,
        "fake_index": fake_index, "fake_connects": fake_connects, "fake_sessions": fake.sessions,
        "actions": dict(sorted(fake.actions.items())), "handshakes": dict(sorted(fake.handshakes.items())),
        "findings": dict(fake.findings.counts), "finding_examples": fake.findings.examples, "master_stats": stats,
        "correct_after": bool(correct_after),
        "all_correct": set(outcomes) <= {"correct"},
        "latency_s": {"max": round(max(lat), 3) if lat else None, "mean": round(float(np.mean(lat)), 4) if lat else None},
        "rss_mb": {"first": rss[0] if rss else None, "max": max(r for r in rss if r) if rss else None, "last": rss[-1] if rss else None,
                   "peak_hwm": st.get("VmHWM")},
        "honest_worker_log_problems": [p["unexpected_error_lines"] + p["traceback_lines"] for p in honest_problems],
        "duration_s": round(time.perf_counter() - t0, 2),
    }


async def run(frames: int = 100_000, master_frames: int | None = None, seed: int = 0, *, check_every: int = 5000,
              concurrency: int = 4, preauth_conns: int = 4, preauth_mb: int = 16, slowloris: bool = True, log: bool = True) -> dict:
    t0 = time.perf_counter()
    mach = machine()
    worker = await fuzz_worker(frames, seed, check_every=check_every, concurrency=concurrency, preauth_conns=preauth_conns,
                               preauth_mb=preauth_mb, slowloris=slowloris, log=log)
    master = await fuzz_master(master_frames if master_frames is not None else max(200, frames // 10), seed, log=log)
    master_crash = bool(master["exceptions"] or master["link_crashes"] or master["loop_errors"])
    return {
        "benchmark": "fuzz", "seed": seed,
        "frames": {"worker": worker["frames"], "master": master["frames"]},
        "crashes": {"worker_process_exited": worker["crashed"], "worker_exit_code": worker["exit_code"],
                    "worker_unexpected_errors_logged": worker["logged_unexpected_errors"],
                    "master_exceptions": sum(master["exceptions"].values()), "master_link_tasks_died": len(master["link_crashes"]),
                    "master_loop_errors": master["loop_errors"], "master_crashed": master_crash},
        "correct_after": {"worker": worker["correct_after"], "master": master["correct_after"],
                          "master_all_requests_correct": master["all_correct"]},
        "findings": {"worker": worker["critical_findings"], "master": master["findings"],
                     "informational": {k: v for k, v in worker["findings"].items() if k in INFO_FINDINGS}},
        "peak_rss_mb": {"worker": worker["rss_mb"]["peak_hwm"], "master_process": master["rss_mb"]["peak_hwm"]},
        "worker": worker, "master": master,
        "duration_s": round(time.perf_counter() - t0, 2), "machine": {**mach, "loadavg_end": list(os.getloadavg())},
    }


def summary_line(r: dict) -> str:
    w, m = r["worker"], r["master"]
    return (f"fuzz: worker {w['frames']} frames over {w['connections']} connections: "
            f"{'CRASHED' if w['crashed'] else 'no crash'}, {w['logged_unexpected_errors']} unexpected errors logged, "
            f"findings {w['critical_findings'] or 'none'}, correct after: {w['correct_after']}, "
            f"peak RSS {w['rss_mb']['peak_hwm']} MiB | master {m['frames']} frames, {m['requests']} requests "
            f"{m['outcomes']}, {sum(m['exceptions'].values())} exceptions, {len(m['link_crashes'])} dead links"
            f"{' (stalled)' if m['stalled'] else ''}, findings {m['findings'] or 'none'}, "
            f"{m['loop_errors']} loop errors, correct after: {m['correct_after']}, peak RSS {m['rss_mb']['peak_hwm']} MiB "
            f"| {r['duration_s']} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames to throw at the worker")
    ap.add_argument("--master-frames", type=int, default=None, help="frames the fake worker throws at the master [frames/10, >= 200]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-every", type=int, default=5000, help="health check (and RSS sample) every this many frames")
    ap.add_argument("--concurrency", type=int, default=4, help="fuzzing connections at a time")
    ap.add_argument("--preauth-conns", type=int, default=4, help="pre-auth buffering probe: connections (0 = skip)")
    ap.add_argument("--preauth-mb", type=int, default=16, help="pre-auth buffering probe: MiB sent on each")
    ap.add_argument("--no-slowloris", action="store_true", help="skip the pre-auth slowloris probe")
    ap.add_argument("--no-deep", action="store_true", help="leave out values nested ~1000 deep (RecursionError in repr)")
    ap.add_argument("--out", default="results/fuzz.json")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    global DEEP
    DEEP = not a.no_deep
    r = asyncio.run(run(a.frames, a.master_frames, a.seed, check_every=a.check_every, concurrency=a.concurrency,
                        preauth_conns=a.preauth_conns, preauth_mb=a.preauth_mb, slowloris=not a.no_slowloris, log=not a.quiet))
    atomic_write(a.out, (json.dumps(r, indent=2, default=str) + "\n").encode())
    print(summary_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
