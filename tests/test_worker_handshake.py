"""The worker's handshake state machine (edgecc.protocol.worker_handshake) without sockets, and against
the master's (edgecc.protocol.handshake): every message goes through the wire encoding as it would on
a connection. The same machine runs in the worker (worker/server.py) and in the master fuzzer's
fake worker (fuzzing/master_fuzzer.py); tests/test_conformance.py checks the real worker's replies."""

from __future__ import annotations

import pytest

from edgecc.protocol import auth
from edgecc.protocol.frames import FrameDecoder, LocalProtocolError, RemoteProtocolError, encode_frame
from edgecc.protocol.handshake import ClientHandshake
from edgecc.protocol.limits import Limits
from edgecc.protocol.messages import PROTOCOL_MINOR, PROTOCOL_VERSION, Auth, Error, Hello, Message, Ping, Welcome, parse
from edgecc.protocol.worker_handshake import (AWAIT_AUTH, DONE, FAILED, PREAUTH_MAX_FRAME, START, HandshakeRefused,
                                              WorkerHandshake, worker_caps)

TOKEN = b"0123456789abcdef0123456789abcdef"
W_NONCE = bytes(range(32))
M_NONCE = bytes(range(32, 64))
CAPS = worker_caps(Limits(), torch=False)


def wire(msg: Message) -> Message:
    dec = FrameDecoder()
    dec.feed(encode_frame(msg.to_wire()))
    return parse(dec.next())


def started(**kw) -> WorkerHandshake:
    hs = WorkerHandshake(TOKEN, CAPS, nonce=W_NONCE, **kw)
    hs.start()
    return hs


def auth_msg(proto: int = PROTOCOL_VERSION, token: bytes = TOKEN, mac: bytes | None = None) -> Auth:
    return wire(Auth(proto, M_NONCE, auth.master_mac(token, W_NONCE, M_NONCE) if mac is None else mac))


def test_hello_then_welcome_with_the_spec_test_vector():
    hs = WorkerHandshake(TOKEN, CAPS, nonce=W_NONCE, bundle="ab" * 32)
    assert hs.state == START and hs.read_limit == PREAUTH_MAX_FRAME == 4096
    [h] = hs.start()
    assert wire(h) == Hello(PROTOCOL_VERSION, W_NONCE, CAPS, "ab" * 32) and hs.state == AWAIT_AUTH
    assert hs.read_limit == PREAUTH_MAX_FRAME  # still unauthenticated
    [w] = hs.receive(auth_msg())
    assert isinstance(w, Welcome)
    assert w.mac.hex() == "6b0548aeea3cf3e7aa2199dc664d88b22e52f791f0a0a24c48db3ab6803168c2"  # docs/protocol.md §6
    assert hs.done and hs.read_limit is None and hs.auth.nonce == M_NONCE


def test_the_caps_are_the_documented_ones():
    limits = Limits(max_frame=1 << 20, max_batch=8, max_in_flight=3)
    assert worker_caps(limits, torch=False) == {
        "placements": ["encoded", "plain"], "wire_dtypes": ["f4", "f2"], "torch": False, "max_frame": 1 << 20, "max_batch": 8,
        "max_in_flight": 3, "proto_minor": PROTOCOL_MINOR, "computes": ["affine", "affine-hs", "mlp"]}
    caps = worker_caps(limits, torch=True)
    assert caps["placements"] == ["encoded", "plain", "shared"] and caps["computes"][-3:] == ["cnn", "resnet18", "aicc-shared"]


def test_the_masters_machine_and_the_workers_complete_each_other():
    w = WorkerHandshake(TOKEN, CAPS)
    m = ClientHandshake(TOKEN, placement="encoded")
    [h] = w.start()
    [a] = m.receive(wire(h))
    [welcome] = w.receive(wire(a))
    assert m.receive(wire(welcome)) == [] and m.done and w.done


@pytest.mark.parametrize("msg, code, reason, message", [
    (auth_msg(proto=1), "version", "unsupported protocol version", "upgrade the master"),
    (auth_msg(proto=3), "version", "unsupported protocol version", "upgrade this worker"),
    (auth_msg(token=b"another-token-of-sufficient-length"), "auth", "wrong token", "authentication failed"),
    (auth_msg(mac=auth.master_mac(TOKEN, M_NONCE, W_NONCE)), "auth", "wrong token", "authentication failed"),  # nonces swapped
    (auth_msg(mac=auth.worker_mac(TOKEN, M_NONCE, W_NONCE)), "auth", "wrong token", "authentication failed"),  # reflected welcome
    (Ping(1), "auth", "expected auth, got ping", "expected auth, got ping"),
])
def test_refusals_say_why_and_carry_the_documented_error(msg, code, reason, message):
    hs = started()
    with pytest.raises(HandshakeRefused, match=reason) as e:
        hs.receive(msg)
    assert isinstance(e.value.reply, Error) and e.value.reply.code == code and e.value.reply.id is None
    assert message in e.value.reply.message
    assert hs.state == FAILED and hs.error is e.value
    with pytest.raises(LocalProtocolError):  # a failed machine takes nothing more
        hs.receive(auth_msg())


def test_the_version_is_checked_before_the_mac():
    with pytest.raises(HandshakeRefused) as e:
        started().receive(auth_msg(proto=1, mac=bytes(32)))
    assert e.value.reply.code == "version"


def test_silence_garbage_and_a_closed_peer():
    hs = started(handshake_timeout=1.5)
    assert hs.timeout == 1.5
    e = hs.timed_out()
    assert str(e) == "no authentication within 1.5 s" and e.reply.code == "auth" and hs.state == FAILED
    e = started().invalid(RemoteProtocolError("frame of 5000 bytes"))
    assert "invalid handshake frame: frame of 5000 bytes" in str(e) and e.reply.code == "auth"
    e = started().closed()
    assert e.reply is None and "closed" in str(e)


def test_start_once_and_receive_only_after():
    hs = WorkerHandshake(TOKEN, CAPS)
    with pytest.raises(LocalProtocolError):
        hs.receive(auth_msg())
    hs.start()
    with pytest.raises(LocalProtocolError):
        hs.start()
    assert len(hs.nonce) == 32 and hs.nonce != WorkerHandshake(TOKEN, CAPS).nonce  # fresh per connection
