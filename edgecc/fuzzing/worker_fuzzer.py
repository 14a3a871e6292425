"""Fuzz a live worker process: one real `edgecc worker` (token in its environment) on 127.0.0.1.

Over many TCP connections, several at a time, it receives
  * before authentication (`preauth`): raw garbage, whole frames of garbage, oversized and
    truncated length headers, valid messages of the wrong type, `auth` with the wrong protocol
    version, wrong or malformed MACs, an `auth` replayed from an earlier connection, byte-flipped
    `auth` frames, byte-by-byte fragmented correct `auth` (must still work);
  * after a correct handshake + configure (`session_frames`): `compute` with wrong shapes, dtypes
    and byte lengths, NaN/Inf, empty and oversized batches, negative/huge ids, duplicate ids,
    bursts beyond max_in_flight, unknown message types and fields, random msgpack values,
    extension types, invalid UTF-8, deep nesting, byte-flipped frames, refused `configure`s (the
    previous configuration must stay), pings with extreme sequence numbers, and sessions ended by
    an oversized header, a truncated frame or an abrupt close with work in flight.
Checked per session: every whole frame gets exactly one reply, every reply is a valid message,
structured cases get the reply docs/protocol.md prescribes, results are A·x + b. A fresh session
every `check_every` frames verifies the worker still computes correctly; RSS and open file
descriptors are sampled. Two probes: a pre-auth slowloris and pre-auth buffering.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import digest as array_digest
from ..protocol import compute_spec
from ..protocol.frames import DEFAULT_MAX_FRAME, HEADER, RemoteProtocolError, encode_frame, pack_array, unpack_array
from ..protocol.messages import Compute, Configure, Configured, Error, Hello, Ping, Pong, Result
from ..protocol.handshake import ClientHandshake, HandshakeError
from ..master.handshake import client_handshake
from ..comm import CommClosedError
from .payloads import raw_frame, rng_array
from .peer import Findings, Peer, PeerStream, describe
from .preauth import PreauthCases
from .session_frames import SessionFrames
from .procs import WorkerProc, fd_count, proc_status


# A valid compute sent twice in a row: the worker answers the first at once when it computes inline, so
# the second is a new request (result or busy); while the first is still held (it waits behind a
# configure, §7.2, or for the compute thread) the second is a duplicate (bad_request, §7.3). Either
# copy's reply may come first. Unconfigured, the first copy gets not_configured, and so does the
# second unless the first still waits behind a (refused) configure: a duplicate is refused on arrival.
DUPLICATE_KINDS = frozenset({"result", "busy", "bad_request"})
UNCONFIGURED_DUPLICATE_KINDS = frozenset({"not_configured", "bad_request"})


class WorkerFuzzer(PreauthCases, SessionFrames):
    """Throws frames at one worker process over many connections and checks every reply against
    what docs/protocol.md prescribes; counts cases, outcomes and findings."""

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

    def configure_message(self, wire_dtype: str = "f4") -> Configure:
        """An honest configure of the fuzzer's affine map (H_B)."""
        return Configure(0, "aicc", {"K": 2, "G": 1, "P": 1, "alpha": 0.5}, compute_spec.affine().to_wire(), wire_dtype,
                         self.digest, self.wire_arrays, None)

    def configure_frame(self, wire_dtype: str = "f4", **override: Any) -> bytes:
        msg = self.configure_message(wire_dtype).to_wire()
        msg.update(override)
        return raw_frame(msg)

    async def handshake(self, peer: Peer, *, pieces: int = 1) -> tuple[Hello | None, bool]:
        """Read hello, authenticate correctly (the auth frame split into `pieces` writes). (hello, welcomed)."""
        hs = ClientHandshake(self.token, handshake_timeout=10.0)
        self.count("auth_correct" if pieces == 1 else "auth_fragmented")
        try:
            await client_handshake(PeerStream(peer, pieces), hs)
        except HandshakeError as e:
            if hs.hello is None:
                self.findings.add("no_hello", got=str(e))
            else:
                self.findings.add("correct_auth_refused", got=str(e))
            return hs.hello, False
        except (CommClosedError, RemoteProtocolError) as e:
            self.findings.add("no_hello" if hs.hello is None else "correct_auth_refused", got=str(e))
            return hs.hello, False
        self.replayable = (self.replayable + [(hs.auth.nonce, hs.auth.mac)])[-8:]
        self.welcome_macs = (self.welcome_macs + [hs.welcome.mac])[-8:]
        return hs.hello, True

    async def configure(self, peer: Peer, wire_dtype: str) -> bool:
        self.count("configure_valid")
        await peer.send(self.configure_frame(wire_dtype))
        r = await peer.recv(30)
        if not (isinstance(r, Configured) and r.digest == self.digest):
            self.findings.add("valid_configure_refused", got=describe(r))
            return False
        return True

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
            edge_ids: set[int] = set()
            while sent_here < n_frames and not self.stop:
                if rng.random() < 0.01:  # a burst beyond max_in_flight (one frame repeated): busy is allowed
                    i = self.new_id()
                    x = rng_array(rng, (1, 28, 28))
                    f = encode_frame(Compute(i, pack_array(x), None, None, None).to_wire())
                    n = min(self.max_in_flight + 20, max(1, n_frames - sent_here))
                    batch.append(f * n)
                    kinds = DUPLICATE_KINDS if configured else UNCONFIGURED_DUPLICATE_KINDS
                    expectations += [("burst_duplicate_id", ("id", i, kinds, x))] * n
                    self.count("burst_duplicate_id", n)
                    whole += n
                    sent_here += n
                else:
                    case, frame, exp = self.session_frame(wire_dtype, configured, edge_ids)
                    dup = 2 if exp[0] == "id" and "result" in exp[2] and rng.random() < 0.1 else 1
                    if dup == 2:
                        exp = (exp[0], exp[1], DUPLICATE_KINDS, *exp[3:])
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
            # warm up: a refused aicc-shared configure (no model.* weights) makes the worker import torch once,
            # so that the RSS baseline includes it
            await fz.health_check("start")
            peer = await Peer.open(w.port, fz.findings)
            _, ok = await fz.handshake(peer)
            if ok:
                fz.count("configure_aicc_shared")
                shared = compute_spec.aicc_shared({"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl", "compute_arch": "cl"}, 0.5)
                await peer.send(fz.configure_frame(compute=shared.to_wire()))
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

