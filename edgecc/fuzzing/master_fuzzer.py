"""Fuzz the master's result path: a real Master (CodedPlan, tiny untrained AICC with Scheme(K=2, G=1),
N=3, R=2) with two honest worker processes and one `FakeWorker` served in-process, which handshakes
through the worker's own state machine (protocol/worker_handshake.py; some handshakes are broken on
purpose) and then answers `compute` with invalid results (wrong shape/dtype/length, NaN/Inf, unknown
or duplicate ids, errors) and garbage frames.
Every request must decode to the in-process logits; the master must not raise, lose a link task or
leak pending requests. Valid-looking but wrong values are out of scope: with byzantine=0 they are
undetectable by design (tests/test_runtime.py covers the byzantine mode).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from ..bundle import digest as array_digest
from ..protocol import auth
from ..protocol.frames import DEFAULT_MAX_FRAME, HEADER, RemoteProtocolError, encode_frame, pack_array, unpack_array
from ..protocol.messages import PROTOCOL_VERSION, Auth, Compute, Configure, Configured, Error, Hello, Ping, Pong, Result, Welcome
from ..protocol.worker_handshake import HandshakeRefused, WorkerHandshake
from . import payloads
from .payloads import deep_list, payload_frame, random_msgpack, raw_frame, special_payloads
from .peer import Findings
from .procs import WorkerProc, proc_status
from .reference import compare, direct_logits, make_tiny_model


class FakeWorker:
    """An in-process worker that handshakes (mostly) correctly, then answers with invalid results."""

    ACTIONS = {"honest": 24, "slow_honest": 4, "refused": 4, "shape": 5, "nan": 4, "inf": 2, "dtype": 4, "byte_length": 3,
               "unknown_id": 4, "duplicate_honest": 4, "invalid_then_honest": 4, "honest_then_invalid": 3, "error_id": 5,
               "error_nil": 3, "array_map_bad": 3, "deep_dtype": 1, "deep_t": 1, "error_bad_code": 1, "result_extra_field": 1,
               "y_not_map": 1, "garbage_frame": 1, "special_payload": 1, "oversized": 1, "truncated": 1, "unexpected_type": 1,
               "random_msgpack": 1, "unsolicited_pong": 2}
    HANDSHAKES = {"good": 60, "good_extra_caps": 6, "hello_old_proto": 2, "hello_no_placement": 2, "hello_bad_caps": 2,
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
        from edgecc.comm import CommClosedError
        from edgecc.comm.stream import StreamComm as Comm

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
        if not payloads.DEEP:
            table = {k: v for k, v in table.items() if "deep" not in k}
        return self.rng.choices(list(table), weights=list(table.values()))[0]

    async def _session(self, comm, writer) -> None:
        rng = self.rng
        mode = "good" if self.stop_fuzzing else self.pick(self.HANDSHAKES)
        self.handshakes[mode] += 1
        # minor version 0 (no proto_minor): the master sends no cancel, which this fake does not take
        caps = {"placements": ["encoded"], "wire_dtypes": ["f4", "f2"], "torch": False, "max_frame": DEFAULT_MAX_FRAME,
                "max_batch": 4096, "max_in_flight": 256}
        hs = WorkerHandshake(self.token, caps)  # the worker's own rules; the modes below break them on purpose
        [hello_msg] = hs.start()
        hello = hello_msg.to_wire()
        if mode == "good_extra_caps":
            hello["caps"] = {**caps, "future_cap": {"x": [1, 2]}, "gpu": True}
            hello["bundle"] = secrets.token_hex(32)
        elif mode == "hello_old_proto":  # a worker of the previous version: refused before auth
            hello["proto"] = PROTOCOL_VERSION - 1
        elif mode == "hello_no_placement":
            hello["caps"] = {**caps, "placements": ["shared"]}
        elif mode == "hello_bad_caps":
            hello["caps"] = {**caps, rng.choice(["placements", "max_frame", "torch"]): rng.choice(["encoded", -1, 1.5, None])}
        elif mode == "hello_short_nonce":
            hello["nonce"] = hs.nonce[:31]
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
        if not isinstance(a, Auth) or a.proto != PROTOCOL_VERSION:
            self.findings.add("master_bad_auth", got=a.TYPE)
            return
        try:
            [welcome] = hs.receive(a)
        except HandshakeRefused:  # the only refusal left for an auth of this version: its MAC
            self.findings.add("MASTER_WRONG_MAC")
            return
        good_mac = welcome.mac
        welcome_ok = True
        if mode == "welcome_bad_mac":
            self.write(writer, encode_frame(Welcome(rng.randbytes(32)).to_wire()))
            welcome_ok = False
        elif mode == "welcome_replayed":
            self.write(writer, encode_frame(Welcome(rng.choice(self.welcome_macs) if self.welcome_macs else b"\x00" * 32).to_wire()))
            welcome_ok = False
        elif mode == "welcome_master_prefix":
            self.write(writer, encode_frame(Welcome(auth.master_mac(self.token, a.nonce, hs.nonce)).to_wire()))
            welcome_ok = False
        elif mode == "welcome_error":
            self.write(writer, encode_frame(Error("auth", "authentication failed", None).to_wire()))
            welcome_ok = False
        elif mode == "welcome_extra_field":
            self.write(writer, raw_frame({"t": "welcome", "mac": good_mac, "extra": 1}))
            welcome_ok = False
        else:
            self.write(writer, encode_frame(welcome.to_wire()))
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
            msg = rng.choice([Ping(1), Hello(PROTOCOL_VERSION, auth.new_nonce(), {}, None), Welcome(b"\x00" * 32), Configured("0" * 64),
                              Auth(PROTOCOL_VERSION, auth.new_nonce(), b"\x00" * 32), Compute(i, None, None, None, None)])
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
    from edgecc.protocol.limits import Limits
    from edgecc.master.master import Master, RequestFailed
    from edgecc.schemes.aicc import CodedPlan

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
            link_stats = [dict(l.stats, connects=l.connects) for l in master.links]
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
        "findings": dict(fake.findings.counts), "finding_examples": fake.findings.examples, "master_stats": stats, "link_stats": link_stats,
        "correct_after": bool(correct_after),
        "all_correct": set(outcomes) <= {"correct"},
        "latency_s": {"max": round(max(lat), 3) if lat else None, "mean": round(float(np.mean(lat)), 4) if lat else None},
        "rss_mb": {"first": rss[0] if rss else None, "max": max(r for r in rss if r) if rss else None, "last": rss[-1] if rss else None,
                   "peak_hwm": st.get("VmHWM")},
        "honest_worker_log_problems": [p["unexpected_error_lines"] + p["traceback_lines"] for p in honest_problems],
        "duration_s": round(time.perf_counter() - t0, 2),
    }

