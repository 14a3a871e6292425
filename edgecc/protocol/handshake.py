"""The master's side of the session set-up (docs/protocol.md §6, §8) as a sans-I/O state machine.

`ClientHandshake` is fed the worker's messages one at a time (`receive`) and answers with the
messages to send next; it never touches a socket or an event loop, so every client (the master's
links, `edgecc ping`, the benchmarks, the fuzzer) shares one implementation of the rules, and the
rules can be tested without a network. `edgecc.master.handshake` drives it over a stream.

    AWAIT_HELLO --hello--> send auth --> AWAIT_WELCOME --welcome--> [send configure --> AWAIT_CONFIGURED
    --configured-->] DONE;  anything else, at any step --> FAILED (an exception says why)

The configure step is optional: `edgecc ping` and the benchmarks stop once the worker proved the
token; the master passes `configure`, a function of the worker's hello (whether the worker already
holds the bundle decides whether the arrays are sent).
"""

from __future__ import annotations

from typing import Callable

from . import auth
from .compute_spec import NEEDS_TORCH
from .frames import LocalProtocolError, RemoteProtocolError, payload_size
from .messages import PROTOCOL_VERSION, Auth, Configure, Configured, Error, Hello, Message, Welcome, version_mismatch

AWAIT_HELLO, AWAIT_WELCOME, AWAIT_CONFIGURED, DONE, FAILED = "await_hello", "await_welcome", "await_configured", "done", "failed"
HANDSHAKE_TIMEOUT = 5.0  # s for hello, and again for welcome (§10)
CONFIGURE_TIMEOUT = 60.0  # s to send configure and to receive configured: a configure may carry ~30 MB


class HandshakeError(RemoteProtocolError):
    """The worker's answer ends the set-up: not an edgecc worker, another protocol version, the
    placement or compute kind not offered, the configuration refused, or silence."""


class HandshakeAuthError(HandshakeError):
    """Authentication failed: the worker refused our proof (wrong token or version on one side), or
    did not prove that it holds the token."""


class ProtocolVersionError(HandshakeAuthError):
    """The worker speaks another protocol version (its hello says so, or it refused our auth with
    `error version`). Permanent until one side is upgraded; the message names both versions."""


class ClientHandshake:
    """One connection's hello -> auth -> welcome (-> configure -> configured), master side."""

    def __init__(self, token: bytes, *, placement: str | None = None,
                 configure: Callable[[Hello], Configure] | None = None, nonce: bytes | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, configure_timeout: float = CONFIGURE_TIMEOUT):
        """`placement`: refuse a worker whose hello does not offer it (None: any). `nonce`: the
        master's nonce (tests pass the §6 test vector; None draws a fresh one)."""
        self.token, self.placement, self.configure = token, placement, configure
        self.nonce = nonce if nonce is not None else auth.new_nonce()
        self.handshake_timeout, self.configure_timeout = handshake_timeout, configure_timeout
        self.state = AWAIT_HELLO
        self.hello: Hello | None = None
        self.auth: Auth | None = None  # the auth sent (the fuzzer replays it on other connections)
        self.welcome: Welcome | None = None
        self.configure_sent: Configure | None = None
        self.error: HandshakeError | None = None

    # -- what the driver needs -------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def timeout(self) -> float:
        """Seconds the next message may take to arrive in this state."""
        return max(self.handshake_timeout, self.configure_timeout) if self.state == AWAIT_CONFIGURED else self.handshake_timeout

    @property
    def send_timeout(self) -> float:
        """Seconds a message sent from this state may take to leave (a configure can be large)."""
        return self.configure_timeout

    @property
    def peer_max_frame(self) -> int | None:
        """The largest payload the worker reads (its hello's caps.max_frame; None when it does not say):
        a master MUST NOT send it more (docs/protocol.md §3)."""
        m = self.hello.caps.get("max_frame") if self.hello is not None else None
        return m if isinstance(m, int) and not isinstance(m, bool) and m > 0 else None

    @property
    def minor(self) -> int:
        """The worker's protocol minor version (§11; 0 when its hello does not say)."""
        return int(self.hello.caps.get("proto_minor", 0)) if self.hello is not None else 0

    def timed_out(self) -> HandshakeError:
        """The error for silence in the current state (the driver raises it); the machine fails."""
        what = {AWAIT_HELLO: "hello", AWAIT_WELCOME: "welcome", AWAIT_CONFIGURED: "configured"}.get(self.state, "message")
        return self._fail(HandshakeError(f"no {what} from the worker within {self.timeout:g} s"))

    # -- the rules ---------------------------------------------------------------------------------
    def receive(self, msg: Message) -> list[Message]:
        """Take the worker's next message; returns the messages to send, in order. Raises
        HandshakeError (HandshakeAuthError for authentication) and moves to FAILED on any refusal."""
        if self.state == AWAIT_HELLO:
            return self._on_hello(msg)
        if self.state == AWAIT_WELCOME:
            return self._on_welcome(msg)
        if self.state == AWAIT_CONFIGURED:
            return self._on_configured(msg)
        raise LocalProtocolError(f"the handshake is {self.state}; it takes no more messages")

    def _on_hello(self, msg: Message) -> list[Message]:
        if isinstance(msg, Error):
            raise self._fail(self._refused("worker refused", msg))
        if not isinstance(msg, Hello):
            raise self._fail(HandshakeError(f"not an edgecc worker: expected hello, got {msg.TYPE}"))
        if msg.proto != PROTOCOL_VERSION:  # no auth: a worker of another version would not read this one's configure
            raise self._fail(ProtocolVersionError(version_mismatch("master", "worker", msg.proto)))
        offered = msg.caps.get("placements", [])
        if self.placement is not None and self.placement not in offered:
            raise self._fail(HandshakeError(f"worker cannot serve the {self.placement!r} placement (it offers {offered})"))
        self.hello = msg
        self.auth = Auth(PROTOCOL_VERSION, self.nonce, auth.master_mac(self.token, msg.nonce, self.nonce))
        self.state = AWAIT_WELCOME
        return [self.auth]

    def _on_welcome(self, msg: Message) -> list[Message]:
        assert self.hello is not None
        if isinstance(msg, Error):
            raise self._fail(self._refused("worker refused the handshake", msg))
        if not isinstance(msg, Welcome) or not auth.verify(auth.worker_mac(self.token, self.nonce, self.hello.nonce), msg.mac):
            raise self._fail(HandshakeAuthError("worker failed to prove the shared token"))
        self.welcome = msg
        if self.configure is None:
            self.state = DONE
            return []
        self.configure_sent = self.configure(self.hello)
        limit = self.peer_max_frame
        if limit is not None and self.configure_sent.arrays is not None:
            size = payload_size(self.configure_sent.to_wire())
            if size > limit:
                raise self._fail(HandshakeError(
                    f"the configure is {size} bytes, more than the worker reads ({limit}, its max_frame): start "
                    "the worker with a larger --max-frame, or preload its arrays with --bundle (edgecc export) "
                    "so that none are sent"))
        kind, offered = self.configure_sent.compute.get("kind"), self.hello.caps.get("computes")
        if offered is not None and kind not in offered:  # e.g. a torch-free worker asked for the CNN
            hint = "; it needs torch on the worker: pip install 'edgecc[ml]'" if kind in NEEDS_TORCH else ""
            raise self._fail(HandshakeError(f"worker cannot run the {kind!r} compute (it offers {offered}{hint})"))
        self.state = AWAIT_CONFIGURED
        return [self.configure_sent]

    def _on_configured(self, msg: Message) -> list[Message]:
        assert self.configure_sent is not None
        if isinstance(msg, Error):
            raise self._fail(HandshakeError(f"worker refused the configuration: {msg.code}: {msg.message}"))
        if not isinstance(msg, Configured) or msg.digest != self.configure_sent.digest:
            raise self._fail(HandshakeError("worker did not confirm the configuration"))
        self.state = DONE
        return []

    @staticmethod
    def _refused(what: str, msg: Error) -> HandshakeAuthError:
        cls = ProtocolVersionError if msg.code == "version" else HandshakeAuthError
        return cls(f"{what}: {msg.code}: {msg.message}")

    def _fail(self, e: HandshakeError) -> HandshakeError:
        self.state, self.error = FAILED, e
        return e
