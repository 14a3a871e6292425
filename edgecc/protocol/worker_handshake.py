"""The worker's side of the session set-up (docs/protocol.md §6, §8 AWAIT_AUTH) as a sans-I/O state machine.

`WorkerHandshake` is the counterpart of the master's `ClientHandshake` (protocol/handshake.py): it
says what to send (`start`: the hello) and is fed the master's messages (`receive`: the welcome to
send); it never touches a socket or an event loop. The worker (worker/server.py) drives it over a
Comm, and the master fuzzer's fake worker (fuzzing/master_fuzzer.py) over its own stream, so both
apply one implementation of the rules.

    START --start()--> send hello --> AWAIT_AUTH --auth: proto 2, MAC right--> send welcome --> DONE
    anything else --> FAILED: HandshakeRefused says why (to log) and carries the error frame to send

Every refusal is answered (§9): `error version` for another protocol version, `error auth` for
anything else (wrong MAC, wrong first message, invalid or oversized frame, silence), except a peer
that closed, which gets nothing.
"""

from __future__ import annotations

from typing import Any

from . import auth
from .compute_spec import KINDS, NEEDS_TORCH
from .frames import LocalProtocolError, RemoteProtocolError
from .limits import Limits
from .messages import PROTOCOL_MINOR, PROTOCOL_VERSION, Auth, Error, Hello, Message, Welcome, version_mismatch

START, AWAIT_AUTH, DONE, FAILED = "start", "await_auth", "done", "failed"
PREAUTH_MAX_FRAME = 4096  # §3: payload limit until welcome is sent; an auth frame is ~100 bytes


class HandshakeRefused(RemoteProtocolError):
    """The master's side of the set-up failed. str(e) is the reason the worker logs; `reply` is the
    error frame to send before closing (None: send nothing, the peer is gone)."""

    def __init__(self, reason: str, reply: Error | None):
        super().__init__(reason)
        self.reply = reply


def worker_caps(limits: Limits, torch: bool, dataset: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`hello.caps` (§5.1) of a worker with these limits, with or without torch; `dataset`: the images
    its operator gave it (messages.dataset_cap), announced as `caps.dataset` (absent when None, so a
    worker without one says exactly what it said before); `base`: the base model its operator loaded
    (messages.base_cap, `edgecc worker --base`), announced as `caps.base`, and only then the "user"
    compute in `caps.computes`."""
    caps = {"placements": ["encoded", "plain", "shared"] if torch else ["encoded", "plain"], "wire_dtypes": ["f4", "f2"],
            "torch": torch, "max_frame": limits.max_frame, "max_batch": limits.max_batch,
            "max_in_flight": limits.max_in_flight, "proto_minor": PROTOCOL_MINOR,
            "computes": [k for k in KINDS if (torch or k not in NEEDS_TORCH) and (k != "user" or base is not None)]}
    if dataset is not None:
        caps["dataset"] = dataset
    if base is not None:
        caps["base"] = base
    return caps


class WorkerHandshake:
    """One connection's hello -> auth -> welcome, worker side."""

    def __init__(self, token: bytes, caps: dict[str, Any], *, bundle: str | None = None, nonce: bytes | None = None,
                 handshake_timeout: float = Limits.handshake_timeout):
        """`bundle`: the digest of the preloaded bundle, announced in hello. `nonce`: the worker's
        nonce (tests pass the §6 test vector; None draws a fresh one)."""
        self.token, self.caps, self.bundle = token, caps, bundle
        self.nonce = nonce if nonce is not None else auth.new_nonce()
        self.handshake_timeout = handshake_timeout
        self.state = START
        self.hello: Hello | None = None
        self.auth: Auth | None = None  # the master's, once accepted
        self.error: HandshakeRefused | None = None

    # -- what the driver needs -------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def timeout(self) -> float:
        """Seconds the master's auth may take to arrive, whole, after the hello."""
        return self.handshake_timeout

    @property
    def read_limit(self) -> int | None:
        """The largest frame payload to accept now: PREAUTH_MAX_FRAME until welcome is sent, then
        None (the session's own max_frame)."""
        return None if self.state == DONE else PREAUTH_MAX_FRAME

    def timed_out(self) -> HandshakeRefused:
        """The refusal for silence (the driver raises it); the machine fails."""
        return self._fail(f"no authentication within {self.handshake_timeout:g} s", "auth")

    def invalid(self, e: Exception) -> HandshakeRefused:
        """The refusal for a frame that is not a valid message, or one over the pre-auth limit."""
        return self._fail(f"invalid handshake frame: {e}", "auth")

    def closed(self) -> HandshakeRefused:
        """The peer closed before authenticating: nothing to answer."""
        return self._fail("closed during the handshake", None)

    # -- the rules ---------------------------------------------------------------------------------
    def start(self) -> list[Message]:
        """The hello that opens every connection."""
        if self.state != START:
            raise LocalProtocolError(f"the handshake is {self.state}; it has started")
        self.hello = Hello(PROTOCOL_VERSION, self.nonce, self.caps, self.bundle)
        self.state = AWAIT_AUTH
        return [self.hello]

    def receive(self, msg: Message) -> list[Message]:
        """Take the master's next message; returns the messages to send (the welcome). Raises
        HandshakeRefused and moves to FAILED on anything but a correct auth of this version."""
        if self.state != AWAIT_AUTH:
            raise LocalProtocolError(f"the handshake is {self.state}; it takes no message")
        if not isinstance(msg, Auth):
            raise self._fail(f"expected auth, got {msg.TYPE}", "auth")
        if msg.proto != PROTOCOL_VERSION:  # checked first (§6.3): a master of another version gets told so
            why = version_mismatch("worker", "master", msg.proto)
            raise self._fail(f"unsupported protocol version: {why}", "version", why)
        if not auth.verify(auth.master_mac(self.token, self.nonce, msg.nonce), msg.mac):
            raise self._fail("wrong token (HMAC mismatch)", "auth", "authentication failed")
        self.auth = msg
        self.state = DONE
        return [Welcome(auth.worker_mac(self.token, msg.nonce, self.nonce))]

    def _fail(self, reason: str, code: str | None, message: str | None = None) -> HandshakeRefused:
        reply = None if code is None else Error(code, (message or reason)[:1000], None)
        self.state, self.error = FAILED, HandshakeRefused(reason, reply)
        return self.error
