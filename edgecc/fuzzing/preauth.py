"""The worker fuzzer's pre-authentication cases (one connection each) and probes (slowloris, buffering)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..protocol import auth
from ..protocol.frames import DEFAULT_MAX_FRAME, HEADER, encode_frame, pack_array
from ..protocol.messages import PROTOCOL_VERSION, Auth, Compute, Configured, Error, Hello, Ping, Pong, Result, Welcome
from ..protocol.handshake import ClientHandshake, HandshakeError
from ..protocol.worker_handshake import PREAUTH_MAX_FRAME
from .payloads import MB, flip, lenient_equal, payload_frame, random_msgpack, raw_frame, special_payloads
from .peer import Peer, describe, welcomed
from .procs import proc_status


class PreauthCases:
    """Mixed into WorkerFuzzer: cases that end before or at authentication (§6, §8)."""

    # -- pre-auth cases: one connection each --
    async def preauth_case(self) -> None:
        rng = self.rng
        peer = await Peer.open(self.port, self.findings)
        self.connections += 1
        try:
            hello = await peer.recv(10)
            hs = ClientHandshake(self.token)
            if not isinstance(hello, Hello):
                self.findings.add("no_hello", got=describe(hello))
                return
            try:
                [good_auth] = hs.receive(hello)  # the correct auth, which most cases below mutate
            except HandshakeError as e:
                self.findings.add("bad_hello", why=e)
                return
            nonce, good_mac = good_auth.nonce, good_auth.mac
            good = encode_frame(good_auth.to_wire())
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
                                  Hello(PROTOCOL_VERSION, nonce, {}, None), Error("auth", "x", None), Result(1, pack_array(np.zeros((1, 10))))])
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
                proto = rng.choice([0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, -1, 255, 2**32, 2**63 - 1, -2**63])
                data, expect = encode_frame({"t": "auth", "proto": proto, "nonce": nonce, "mac": good_mac}), "version"
            elif kind == "version_bool":
                data, expect = encode_frame({"t": "auth", "proto": True, "nonce": nonce, "mac": good_mac}), "refused"
            elif kind == "bad_mac":
                mac = rng.choice([rng.randbytes(32), b"\x00" * 32, good_mac[:31], good_mac + b"\x00", b"",
                                  auth.master_mac(b"another-token-0123456789abcdef", hello.nonce, nonce),
                                  auth.master_mac(self.token, nonce, hello.nonce),  # nonces swapped
                                  auth.worker_mac(self.token, hello.nonce, nonce)])  # the worker's prefix
                data, expect = encode_frame({"t": "auth", "proto": PROTOCOL_VERSION, "nonce": nonce, "mac": mac}), "auth"
            elif kind == "replay":
                if not self.replayable:
                    return
                n_old, mac_old = rng.choice(self.replayable)
                data, expect = encode_frame(Auth(PROTOCOL_VERSION, n_old, mac_old).to_wire()), "auth"
            elif kind == "reflect":
                if not self.welcome_macs:
                    return
                data, expect = encode_frame(Auth(PROTOCOL_VERSION, nonce, rng.choice(self.welcome_macs)).to_wire()), "auth"
            elif kind == "bad_nonce":
                n2 = rng.choice([nonce[:31], nonce + b"\x01", b"", nonce * 2])
                data, expect = encode_frame({"t": "auth", "proto": PROTOCOL_VERSION, "nonce": n2, "mac": auth.master_mac(self.token, hello.nonce, n2)}), "refused"
            elif kind == "fields":
                msg = {"t": "auth", "proto": PROTOCOL_VERSION, "nonce": nonce, "mac": good_mac}
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
                if not welcomed(hs, r):
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

