"""The master's handshake state machine (edgecc.protocol.handshake) without sockets: every message
goes through the wire encoding (encode_frame -> FrameDecoder -> parse) as it would on a connection."""

from __future__ import annotations

import asyncio

import pytest

from edgecc.protocol import auth
from edgecc.protocol.frames import FrameDecoder, LocalProtocolError, encode_frame
from edgecc.protocol.handshake import (AWAIT_CONFIGURED, AWAIT_HELLO, AWAIT_WELCOME, DONE, FAILED, ClientHandshake,
                                       HandshakeAuthError, HandshakeError, ProtocolVersionError)
from edgecc.protocol.messages import PROTOCOL_VERSION, Auth, Configure, Configured, Error, Hello, Message, Ping, Welcome, parse
from edgecc.master.handshake import client_handshake

TOKEN = b"0123456789abcdef0123456789abcdef"
W_NONCE = bytes(range(32))
M_NONCE = bytes(range(32, 64))
CAPS = {"placements": ["encoded", "plain"], "proto_minor": 1}
DIGEST = "ab" * 32


def wire(msg: Message) -> Message:
    """The message as the other side reads it off the wire."""
    dec = FrameDecoder()
    dec.feed(encode_frame(msg.to_wire()))
    return parse(dec.next())


def hello(proto: int = PROTOCOL_VERSION, caps: dict | None = None, bundle: str | None = None) -> Hello:
    return wire(Hello(proto, W_NONCE, CAPS if caps is None else caps, bundle))


def welcome(token: bytes = TOKEN) -> Welcome:
    return wire(Welcome(auth.worker_mac(token, M_NONCE, W_NONCE)))


def configure(h: Hello, kind: str = "affine") -> Configure:
    spec = {"kind": kind, "in_shape": [28, 28], "out": 10} if kind in ("affine", "cnn") else {"kind": kind}
    return Configure(0, "aicc", {"K": 2}, spec, "f4", DIGEST, None if h.bundle == DIGEST else {}, None)


def test_auth_answers_hello_with_the_spec_test_vector():
    hs = ClientHandshake(TOKEN, nonce=M_NONCE)
    assert hs.state == AWAIT_HELLO
    [a] = hs.receive(hello())
    assert isinstance(a, Auth) and a.proto == PROTOCOL_VERSION == 2 and a.nonce == M_NONCE
    assert a.mac.hex() == "7c92210e162d1eeb468214552e711ea16c63a0a914c35ccc6a3057b6b0a3aeed"  # docs/protocol.md §6
    assert hs.state == AWAIT_WELCOME
    assert hs.receive(welcome()) == [] and hs.done and hs.minor == 1


def test_a_worker_without_the_token_is_refused():
    hs = ClientHandshake(TOKEN, nonce=M_NONCE)
    hs.receive(hello())
    with pytest.raises(HandshakeAuthError, match="prove the shared token"):
        hs.receive(welcome(b"another-token-of-sufficient-length"))
    assert hs.state == FAILED and isinstance(hs.error, HandshakeAuthError)
    with pytest.raises(LocalProtocolError):  # a failed machine takes nothing more
        hs.receive(welcome())


def test_a_reflected_master_mac_is_not_a_welcome():
    hs = ClientHandshake(TOKEN, nonce=M_NONCE)
    [a] = hs.receive(hello())
    with pytest.raises(HandshakeAuthError):
        hs.receive(wire(Welcome(a.mac)))


@pytest.mark.parametrize("msg, err, match", [
    (Error("auth", "authentication failed", None), HandshakeAuthError, "refused"),
    (Ping(1), HandshakeError, "expected hello, got ping"),
    (Hello(1, W_NONCE, CAPS, None), ProtocolVersionError,
     "this master speaks protocol version 2, the worker speaks version 1: upgrade the worker to an edgecc release that speaks protocol 2"),
    (Hello(3, W_NONCE, CAPS, None), ProtocolVersionError,
     "the worker speaks version 3: upgrade this master to an edgecc release that speaks protocol 3"),
    (Hello(2, W_NONCE, {"placements": ["plain"]}, None), HandshakeError, "'encoded' placement"),
    (Hello(2, W_NONCE, {}, None), HandshakeError, "'encoded' placement"),
])
def test_hello_refusals(msg, err, match):
    hs = ClientHandshake(TOKEN, placement="encoded")
    with pytest.raises(err, match=match):
        hs.receive(wire(msg))
    assert hs.state == FAILED and hs.auth is None  # nothing was sent


@pytest.mark.parametrize("msg", [Error("auth", "authentication failed", None), Error("version", "v2", None), Ping(3),
                                 Configured(DIGEST)])
def test_anything_but_welcome_after_auth_is_an_authentication_failure(msg):
    hs = ClientHandshake(TOKEN, nonce=M_NONCE)
    hs.receive(hello())
    with pytest.raises(HandshakeAuthError):
        hs.receive(wire(msg))


def test_a_version_error_after_auth_is_a_protocol_version_error():
    hs = ClientHandshake(TOKEN, nonce=M_NONCE)
    hs.receive(hello())
    with pytest.raises(ProtocolVersionError, match="version: this worker speaks protocol version 3"):
        hs.receive(wire(Error("version", "this worker speaks protocol version 3, the master speaks version 2: ...", None)))


def test_a_compute_kind_the_worker_does_not_offer_is_refused_before_configure():
    hs = ClientHandshake(TOKEN, nonce=M_NONCE, configure=lambda h: configure(h, "cnn"))
    hs.receive(hello(caps={**CAPS, "torch": False, "computes": ["affine", "affine-hs", "mlp"]}))
    with pytest.raises(HandshakeError, match="cannot run the 'cnn' compute .* needs torch"):
        hs.receive(welcome())
    assert hs.state == FAILED and hs.configure_sent is not None  # built, never sent: the driver sends only what receive returns
    ok = ClientHandshake(TOKEN, nonce=M_NONCE, configure=configure)  # a worker that does not say (no "computes") is asked
    ok.receive(hello())
    assert [m.TYPE for m in ok.receive(welcome())] == ["configure"]


def test_configure_step_sends_arrays_unless_the_worker_holds_the_bundle():
    for bundle, arrays in ((None, {}), (DIGEST, None)):
        hs = ClientHandshake(TOKEN, nonce=M_NONCE, configure=configure)
        hs.receive(hello(bundle=bundle))
        [c] = hs.receive(welcome())
        assert isinstance(c, Configure) and c.arrays == arrays and hs.state == AWAIT_CONFIGURED
        assert hs.timeout == 60.0  # a configure may be large; hello and welcome get handshake_timeout
        assert hs.receive(wire(Configured(DIGEST))) == [] and hs.state == DONE


@pytest.mark.parametrize("msg, match", [(Configured("cd" * 32), "did not confirm"),
                                        (Error("bad_request", "configure refused: x", None), "refused the configuration"),
                                        (Ping(1), "did not confirm")])
def test_configure_refusals(msg, match):
    hs = ClientHandshake(TOKEN, nonce=M_NONCE, configure=configure)
    hs.receive(hello())
    hs.receive(welcome())
    with pytest.raises(HandshakeError, match=match) as e:
        hs.receive(wire(msg))
    assert not isinstance(e.value, HandshakeAuthError)


def test_timeouts_per_state():
    hs = ClientHandshake(TOKEN, handshake_timeout=2.0)
    assert hs.timeout == 2.0
    e = hs.timed_out()
    assert isinstance(e, HandshakeError) and "no hello" in str(e) and hs.state == FAILED


class ScriptedStream:
    """The worker's side as a list of messages; records what the driver sends. No socket."""

    def __init__(self, replies: list[Message | None]):
        self.replies, self.sent, self.timeouts = list(replies), [], []

    async def read(self, timeout=None):
        self.timeouts.append(timeout)
        r = self.replies.pop(0)
        if r is None:
            raise TimeoutError()
        return r

    async def write(self, msg, timeout=None):
        self.sent.append(msg)


def test_driver_runs_the_machine_and_turns_silence_into_a_handshake_error():
    s = ScriptedStream([hello(), welcome(), wire(Configured(DIGEST))])
    hs = asyncio.run(client_handshake(s, ClientHandshake(TOKEN, nonce=M_NONCE, configure=configure, handshake_timeout=3.0)))
    assert hs.done and [m.TYPE for m in s.sent] == ["auth", "configure"] and s.timeouts == [3.0, 3.0, 60.0]
    s = ScriptedStream([hello(), None])
    with pytest.raises(HandshakeError, match="no welcome"):
        asyncio.run(client_handshake(s, ClientHandshake(TOKEN, nonce=M_NONCE)))
