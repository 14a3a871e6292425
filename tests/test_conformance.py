"""docs/protocol.md, promise by promise, against a real worker process over real TCP.

One row per documented error case or promise (§3-§10): the state a fresh connection is brought to
(before authentication, authenticated, configured), the frames the row sends, and the documented
reply: the message type or error code, the `id` (a number or nil), and whether the worker then
closes the connection. A row that keeps the session open is followed by a `ping`, whose `pong` must
be the next frame: this proves both that the session continues and that nothing else was sent.

The worker runs with small limits so that every limit is reachable quickly (handshake timeout 1 s,
idle timeout 3 s, max_in_flight 2, max_batch 4, max_frame 1 MiB) and delays every answer by
DELAY s, so that requests stay in flight long enough to be duplicated, counted or cancelled.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import numpy as np
import pytest

from edgecc.bundle import digest as array_digest
from edgecc.protocol import auth
from edgecc.protocol.frames import HEADER, FrameDecoder, encode_frame, pack_array, unpack_array
from edgecc.protocol.handshake import ClientHandshake
from edgecc.protocol.messages import PROTOCOL_VERSION, Configured, Error, Hello, Message, Pong, Result, Welcome, parse
from edgecc.launch.local import LocalWorker

from .conftest import REPO, TOKEN

DELAY = 0.6  # seconds the worker holds every valid compute
HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, MAX_IN_FLIGHT, MAX_BATCH, MAX_FRAME = 1.0, 3.0, 2, 4, 1 << 20
PREAUTH_MAX_FRAME = 4096  # §3: documented, not imported, so that a change in the code shows up here
CLOSED = "closed"

RNG = np.random.default_rng(7)
A = RNG.normal(size=(10, 784)).astype(np.float32)
B = RNG.normal(size=10).astype(np.float32)
ARRAYS = {"affine.weight": A, "affine.bias": B}
SCHEME = {"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl", "compute_arch": "cl"}
AFFINE = {"kind": "affine", "in_shape": [28, 28], "out": 10}
SHARED = {"kind": "aicc-shared", "in_shape": [28, 28], "out": 10, **SCHEME, "alpha": 0.5}
V1_SCHEME = SCHEME  # the version 1 configure's "scheme" field

@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = LocalWorker(tmp_path_factory.mktemp("conformance"), "w",
                    ["--log-level", "info", "--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT),
                     "--max-in-flight", str(MAX_IN_FLIGHT), "--max-batch", str(MAX_BATCH), "--max-frame", str(MAX_FRAME),
                     "--behaviour", json.dumps({"latency": {"dist": "constant", "value": DELAY}})], token=TOKEN)
    w.start()
    yield w
    w.kill()


# -- a raw client: any bytes out, validated messages in ------------------------------------------
class Conn:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.decoder = FrameDecoder(MAX_FRAME)
        self.hs: ClientHandshake | None = None  # set by a row that authenticates itself

    def send(self, data: bytes | dict) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else raw(data))

    def recv(self, timeout: float = 5.0) -> Message | str:
        """The next message, CLOSED when the worker closed the connection; TimeoutError if neither."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.decoder.next()
            if payload is not None:
                return parse(payload)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within {timeout:g} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return CLOSED
            if not data:
                return CLOSED
            self.decoder.feed(data)

    def quiet(self, seconds: float) -> bool:
        """True when nothing arrives (and the connection stays up) for `seconds`."""
        try:
            self.recv(seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def raw(msg: Any) -> bytes:
    """Any msgpack value as a frame, without the reference's validation (so that invalid messages can be sent)."""
    payload = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def f4(a: np.ndarray) -> dict:
    return pack_array(np.asarray(a, dtype=np.float32), "f4")


def compute(i: Any, x: Any = None, **fields: Any) -> dict:
    msg = {"t": "compute", "id": i, "x": f4(RNG.random((1, 28, 28))) if x is None else x, "v": None, "images": None,
           "indices": None}
    msg.update(fields)
    return msg


def configure(arrays: dict[str, np.ndarray] | None = None, **fields: Any) -> dict:
    arrays = ARRAYS if arrays is None else arrays
    msg = {"t": "configure", "index": 0, "scheme": "aicc", "params": {**SCHEME, "alpha": 0.5}, "compute": AFFINE,
           "wire_dtype": "f4", "digest": array_digest(arrays), "arrays": {k: f4(v) for k, v in arrays.items()}, "dataset": None}
    msg.update(fields)
    return msg


# -- bringing a connection to a state ------------------------------------------------------------
def open_conn(port: int, state: str) -> tuple[Conn, Hello]:
    """'preauth': hello read, nothing sent; 'ready': authenticated; 'configured': configured with A, b."""
    c = Conn(port)
    hello = c.recv()
    assert isinstance(hello, Hello)
    if state == "preauth":
        return c, hello
    hs = ClientHandshake(TOKEN.encode())
    for out in hs.receive(hello):
        c.send(encode_frame(out.to_wire()))
    hs.receive(c.recv())
    assert hs.done
    if state == "configured":
        c.send(configure())
        assert c.recv() == Configured(array_digest(ARRAYS))
    return c, hello


def good_auth(hello: Hello, **fields: Any) -> dict:
    nonce = auth.new_nonce()
    msg = {"t": "auth", "proto": PROTOCOL_VERSION, "nonce": nonce, "mac": auth.master_mac(TOKEN.encode(), hello.nonce, nonce)}
    msg.update(fields)
    return msg


# -- the table -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    name: str
    ref: str  # where docs/protocol.md promises it
    state: str  # "preauth" | "ready" | "configured"
    send: Callable[[Conn, Hello], None]
    reply: str | None  # message type, "error:<code>", or None: no reply at all
    id: int | None = None  # the reply's id (error or result); None: nil
    closed: bool = False  # the worker closes the connection after the reply
    within: float = 5.0  # seconds the reply may take
    then: Callable[[Conn], None] | None = None  # further checks before the liveness ping
    log: str | None = None  # a line the worker must log for this row (the reason it closed)
    then_reply: str | None = None  # text the reply's message must contain
    check: Callable[[Message], None] | None = None  # further checks on the reply itself (a result's values)


def version_message(master_version: int) -> str:
    """§9, §11: the worker's `error version` names both versions and what to upgrade."""
    upgrade = "the master" if master_version < PROTOCOL_VERSION else "this worker"
    return (f"this worker speaks protocol version {PROTOCOL_VERSION}, the master speaks version {master_version}: "
            f"upgrade {upgrade} to an edgecc release that speaks protocol {max(master_version, PROTOCOL_VERSION)}")


def send_hs_without_v(c: Conn, h: Hello) -> None:
    c.send(configure(compute={"kind": "affine-hs", "in_shape": [28, 28], "out": 10, "P": 2}))
    assert c.recv() == Configured(array_digest(ARRAYS))
    c.send(compute(47))


def x_rowmajor() -> np.ndarray:
    return np.arange(784, dtype=np.float32).reshape(1, 28, 28) / 784.0


def check_values(c: Conn, r: Result) -> None:
    y = unpack_array(r.y, "y", shape=(1, 10))
    want = x_rowmajor().reshape(1, 784) @ A.T + B  # vec() is row-major (§7.1)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-3)
    assert not np.allclose(y, x_rowmajor().transpose(0, 2, 1).reshape(1, 784) @ A.T + B, atol=1e-2)  # column-major is not


def then_result(i: int) -> Callable[[Conn], None]:
    def check(c: Conn) -> None:
        r = c.recv(DELAY + 5)
        assert isinstance(r, Result) and r.id == i, r
    return check


def then_quiet(c: Conn) -> None:
    assert c.quiet(DELAY + 0.7), "a cancelled request was answered"


def send_busy(c: Conn, h: Hello) -> None:
    for i in range(MAX_IN_FLIGHT + 1):  # ids 0, 1 wait DELAY s; id 2 finds the connection full
        c.send(compute(i))


def then_busy_results(c: Conn) -> None:
    got = {c.recv(DELAY + 5).id for _ in range(MAX_IN_FLIGHT)}
    assert got == set(range(MAX_IN_FLIGHT))


def send_reuse(c: Conn, h: Hello) -> None:
    c.send(compute(11))
    r = c.recv(DELAY + 5)
    assert isinstance(r, Result) and r.id == 11
    c.send(compute(11))  # answered: the id may be used again


def send_refused_then_compute(c: Conn, h: Hello) -> None:
    c.send(configure(digest="00" * 32))
    e = c.recv()
    assert isinstance(e, Error) and e.code == "bad_request" and e.id is None
    c.send(compute(12))


def send_cancel_in_flight(c: Conn, h: Hello) -> None:
    c.send(compute(13))
    c.send({"t": "cancel", "id": 13})


def send_duplicate(c: Conn, h: Hello) -> None:
    c.send(compute(14))
    c.send(compute(14))


def send_correct_auth(c: Conn, h: Hello) -> None:
    c.hs = ClientHandshake(TOKEN.encode())  # the reference client; the runner checks the welcome's MAC with it
    [a] = c.hs.receive(h)
    c.send(encode_frame(a.to_wire()))


# -- the rows that settle what the document once left open ------------------------------------------
A2 = RNG.normal(size=(10, 784)).astype(np.float32)  # a second role, to tell two configurations apart
B2 = RNG.normal(size=10).astype(np.float32)
HS = {"kind": "affine-hs", "in_shape": [28, 28], "out": 10, "P": 2}


def affine_result(i: int, x: np.ndarray, a: np.ndarray = A, b: np.ndarray = B) -> Callable[[Message], None]:
    """Check that a reply is request i's result A·vec(x) + b."""
    def check(r: Message) -> None:
        assert isinstance(r, Result) and r.id == i, r
        want = x.reshape(len(x), 784).astype(np.float64) @ a.T + b
        np.testing.assert_allclose(unpack_array(r.y, "y", shape=(len(x), 10)), want, rtol=1e-4, atol=1e-3)
    return check


X_FIRST, X_AGAIN = RNG.random((1, 28, 28)).astype(np.float32), RNG.random((1, 28, 28)).astype(np.float32)


def send_cancel_frees_id_and_slot(c: Conn, h: Hello) -> None:
    c.send(compute(60, f4(X_FIRST)))
    c.send(compute(61))  # both slots of max_in_flight = 2 are held
    c.send({"t": "cancel", "id": 60})
    c.send(compute(60, f4(X_AGAIN)))  # neither busy nor a duplicate: a new request


def then_the_new_request_60(c: Conn) -> None:
    affine_result(60, X_AGAIN)(c.recv(DELAY + 5))  # the cancelled one never answers, this one does


X_SPAN = RNG.random((1, 28, 28)).astype(np.float32)


def send_request_across_a_reconfigure(c: Conn, h: Hello) -> None:
    c.send(compute(62, f4(X_SPAN)))  # held for DELAY s by the worker, under the first configuration
    c.send(configure({"affine.weight": A2, "affine.bias": B2}))


def then_old_and_new_configuration(c: Conn) -> None:
    affine_result(62, X_SPAN)(c.recv(DELAY + 5))  # read before the configure: computed with A, b
    c.send(compute(63, f4(X_SPAN)))
    affine_result(63, X_SPAN, A2, B2)(c.recv(DELAY + 5))  # read after it: A2, b2


X_HS = RNG.random((1, 28, 28)).astype(np.float32)
V_HS = (RNG.integers(-8, 8, size=(1, 3, 28, 28)) / 8).astype(np.float16)  # exact in f2


def hs_reference(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, v = x.astype(np.float64), v.astype(np.float64)
    s = v[:, 0] + v[:, 1] * x + v[:, 2] * x * x  # Σ_p V_p ⊙ x^p (§7.1)
    return s.reshape(len(s), 784) @ A.T + B


def send_compute_behind_configure(c: Conn, h: Hello) -> None:
    c.send(configure(compute=HS))  # and, without waiting for `configured`, a request only H_S takes
    c.send(compute(64, f4(X_HS), v=pack_array(V_HS, "f2")))


def then_result_under_the_new_configure(c: Conn) -> None:
    r = c.recv(DELAY + 5)
    assert isinstance(r, Result) and r.id == 64, r
    np.testing.assert_allclose(unpack_array(r.y, "y", shape=(1, 10)), hs_reference(X_HS, V_HS), rtol=1e-4, atol=1e-3)


def send_cancel_behind_configure(c: Conn, h: Hello) -> None:
    c.send(configure())
    c.send(compute(65))
    c.send({"t": "cancel", "id": 65})


def send_hs_mixed_dtypes(c: Conn, h: Hello) -> None:
    c.send(configure(compute=HS))
    assert c.recv() == Configured(array_digest(ARRAYS))
    c.send(compute(66, f4(X_HS), v=pack_array(V_HS, "f2")))


def check_hs_mixed(r: Message) -> None:
    assert isinstance(r, Result) and r.id == 66, r
    np.testing.assert_allclose(unpack_array(r.y, "y", shape=(1, 10)), hs_reference(X_HS, V_HS), rtol=1e-4, atol=1e-3)


def send_frame_in_pieces_beyond_idle_timeout(c: Conn, h: Hello) -> None:
    """A ping whose bytes take longer than idle_timeout to arrive, but never stop for that long."""
    data = raw({"t": "ping", "seq": 2**40})  # 25 bytes: the last 8 come one every 0.6 s
    c.send(data[:-8])
    t0 = time.monotonic()
    for i in range(len(data) - 8, len(data)):
        time.sleep(0.6)
        c.send(data[i:i + 1])
    assert time.monotonic() - t0 > IDLE_TIMEOUT + 1


def frame_of_payload(n: int) -> bytes:
    """A whole frame of exactly n payload bytes: a ping with an unknown field `pad` (so: bad_request)."""
    over = len(msgpack.packb({"t": "ping", "seq": 1, "pad": bytes(1 << 17)}, use_bin_type=True)) - (1 << 17)
    data = raw({"t": "ping", "seq": 1, "pad": bytes(n - over)})
    assert len(data) == 4 + n
    return data


def params_configure(params: dict) -> dict:
    return configure(params=params)


GOOD_X = f4(RNG.random((1, 28, 28)))
ROWS = [
    # before authentication (§3, §6, §8 AWAIT_AUTH, §9)
    Row("correct auth gets welcome with the worker's MAC", "§6", "preauth", send_correct_auth, "welcome"),
    Row("auth of protocol version 1 (an old master)", "§6.3, §9 version, §11", "preauth",
        lambda c, h: c.send(good_auth(h, proto=1)), "error:version", closed=True, then_reply=version_message(1),
        log="unsupported protocol version"),
    Row("auth of protocol version 3 (a newer master)", "§6.3, §9 version, §11", "preauth",
        lambda c, h: c.send(good_auth(h, proto=3)), "error:version", closed=True, then_reply=version_message(3)),
    Row("auth with a wrong MAC", "§6.3, §9 auth", "preauth", lambda c, h: c.send(good_auth(h, mac=bytes(32))), "error:auth",
        closed=True),
    Row("auth with the nonces swapped", "§6", "preauth",
        lambda c, h: c.send(good_auth(h, mac=auth.master_mac(TOKEN.encode(), bytes(32), h.nonce), nonce=bytes(32))),
        "error:auth", closed=True),
    Row("auth with a 31-byte nonce", "§6", "preauth", lambda c, h: c.send(good_auth(h, nonce=bytes(31))), "error:auth",
        closed=True),
    Row("auth whose proto is a boolean", "§4.5", "preauth", lambda c, h: c.send(good_auth(h, proto=True)), "error:auth",
        closed=True),
    Row("auth with an extra field", "§4.1", "preauth", lambda c, h: c.send(good_auth(h, extra=1)), "error:auth", closed=True),
    Row("first message is not auth", "§8 AWAIT_AUTH", "preauth", lambda c, h: c.send({"t": "ping", "seq": 1}), "error:auth",
        closed=True),
    Row("invalid frame before auth", "§8 AWAIT_AUTH", "preauth", lambda c, h: c.send(raw(7)), "error:auth", closed=True),
    Row("frame over the 4,096-byte pre-auth limit (header only)", "§3, §8, §10", "preauth",
        lambda c, h: c.send(HEADER.pack(PREAUTH_MAX_FRAME + 1)), "error:auth", closed=True),
    Row("silence after hello", "§8 AWAIT_AUTH, §10 handshake_timeout", "preauth", lambda c, h: None, "error:auth",
        closed=True, within=HANDSHAKE_TIMEOUT + 3, log="no authentication within"),
    # authenticated, not configured (§7.2, §8 READY)
    Row("ping", "§5.9", "ready", lambda c, h: c.send({"t": "ping", "seq": 2**40}), "pong"),
    Row("compute before configure", "§7.3, §9 not_configured", "ready", lambda c, h: c.send(compute(21)),
        "error:not_configured", id=21),
    Row("a message a master may not send (hello)", "§8, §9", "ready",
        lambda c, h: c.send({"t": "hello", "proto": PROTOCOL_VERSION, "nonce": bytes(32), "caps": {}, "bundle": None}), "error:bad_request"),
    Row("a result from the master", "§8", "ready", lambda c, h: c.send({"t": "result", "id": 1, "y": f4(np.zeros((1, 10)))}),
        "error:bad_request"),
    Row("an error from the master", "§9", "ready", lambda c, h: c.send({"t": "error", "code": "auth", "message": "", "id": None}),
        "error:bad_request"),
    Row("an error with an unknown code", "§5.8", "ready",
        lambda c, h: c.send({"t": "error", "code": "teapot", "message": "", "id": None}), "error:bad_request"),
    Row("a frame that is not a map", "§3, §4.1", "ready", lambda c, h: c.send(raw([1, 2])), "error:bad_request"),
    Row("an unknown message type", "§8", "ready", lambda c, h: c.send({"t": "bogus"}), "error:bad_request"),
    Row("an integer map key", "§4.2", "ready", lambda c, h: c.send(raw({"t": "ping", "seq": 1, 5: 1})), "error:bad_request"),
    Row("an extension type", "§4.4", "ready",
        lambda c, h: c.send(raw({"t": "ping", "seq": msgpack.ExtType(1, b"x")})), "error:bad_request"),
    Row("trailing bytes after the map", "§4.6", "ready",
        lambda c, h: c.send(HEADER.pack(14) + msgpack.packb({"t": "ping", "seq": 1}) + b"\x00"), "error:bad_request"),
    Row("configure whose arrays do not match the digest", "§7.2", "ready", lambda c, h: c.send(configure(digest="00" * 32)),
        "error:bad_request"),
    Row("configure without arrays and no bundle", "§7.2", "ready", lambda c, h: c.send({**configure(), "arrays": None}),
        "error:bad_request"),
    Row("configure with a wrongly shaped affine map", "§7.2", "ready",
        lambda c, h: c.send(configure({"affine.weight": A[:, :700], "affine.bias": B})), "error:bad_request"),
    Row("configure with an array over 2^25 elements", "§4.1, §5.4", "ready",
        lambda c, h: c.send({**configure(), "arrays": {**configure()["arrays"],
                                                       "big": {"dtype": "f4", "shape": [2**25 + 1], "data": bytes(4)}}}),
        "error:bad_request"),
    Row("configure with an unknown compute kind", "§5.4", "ready",
        lambda c, h: c.send(configure(compute={**AFFINE, "kind": "sideways"})), "error:bad_request"),
    Row("configure with an unknown compute spec key", "§5.4", "ready",
        lambda c, h: c.send(configure(compute={**AFFINE, "Q": 1})), "error:bad_request"),
    Row("configure whose compute in_shape does not fit the affine map", "§5.4, §7.2", "ready",
        lambda c, h: c.send(configure(compute={**AFFINE, "in_shape": [28, 27]})), "error:bad_request"),
    Row("configure of the mlp kind with the affine arrays", "§5.4, §7.2", "ready",
        lambda c, h: c.send(configure(compute={"kind": "mlp", "in_shape": [28, 28], "hidden": [200, 100], "out": 10})),
        "error:bad_request"),
    Row("configure of aicc-shared without the network's weights", "§5.4, §7.2", "ready",
        lambda c, h: c.send(configure(compute=SHARED)), "error:bad_request"),
    Row("configure with a nested scheme parameter", "§5.4", "ready",
        lambda c, h: c.send(configure(params={"alpha": {"x": 1}})), "error:bad_request"),
    Row("configure with a dataset for the affine kind", "§5.4", "ready",
        lambda c, h: c.send(configure(dataset="sample")), "error:bad_request"),
    Row("a version 1 configure (alpha, scheme map, placement)", "§5.4, §11", "ready",
        lambda c, h: c.send({"t": "configure", "index": 0, "alpha": 0.5, "scheme": V1_SCHEME, "placement": "encoded",
                             "wire_dtype": "f4", "digest": array_digest(ARRAYS), "arrays": {k: f4(v) for k, v in ARRAYS.items()},
                             "dataset": None}), "error:bad_request"),
    Row("configure with an affine-hs map, then compute without v", "§7.3", "ready", send_hs_without_v,
        "error:bad_request", id=47),
    Row("configure with extra arrays is accepted", "§5.4", "ready",
        lambda c, h: c.send(configure({**ARRAYS, "notes.extra": np.ones(3, np.float32)})), "configured"),
    Row("cancel of an id the worker does not hold", "§5.6a", "ready", lambda c, h: c.send({"t": "cancel", "id": 99}), None),
    Row("frame over max_frame", "§3, §9 limit", "ready", lambda c, h: c.send(HEADER.pack(MAX_FRAME + 1)), "error:limit",
        closed=True),
    Row("no frame for idle_timeout", "§8, §10 idle_timeout", "ready", lambda c, h: None, CLOSED, closed=True,
        within=IDLE_TIMEOUT + 3, log="dropping idle master"),
    # configured (§7.3, §9)
    Row("valid compute: result = A·vec(x) + b, vec row-major", "§5.7, §7.1", "configured",
        lambda c, h: c.send(compute(31, f4(x_rowmajor()))), "result", id=31, within=DELAY + 5),
    Row("compute with x as f2", "§7.3", "configured",
        lambda c, h: c.send(compute(32, pack_array(RNG.random((1, 28, 28)), "f2"))), "result", id=32, within=DELAY + 5),
    Row("compute missing a field: not a valid message, id nil", "§7.3", "configured",
        lambda c, h: c.send({k: v for k, v in compute(33).items() if k != "v"}), "error:bad_request"),
    Row("compute with an extra field: id nil", "§7.3", "configured", lambda c, h: c.send(compute(34, extra=0)),
        "error:bad_request"),
    Row("compute id 2^63: id nil", "§5.6, §7.3", "configured", lambda c, h: c.send(compute(2**63)), "error:bad_request"),
    Row("compute id negative: id nil", "§5.6, §7.3", "configured", lambda c, h: c.send(compute(-1)), "error:bad_request"),
    Row("compute with x of the wrong type: id nil", "§7.3", "configured", lambda c, h: c.send(compute(35, "x")),
        "error:bad_request"),
    Row("compute x of the wrong shape", "§7.3", "configured",
        lambda c, h: c.send(compute(36, f4(np.zeros((1, 28, 27))))), "error:bad_request", id=36),
    Row("compute x with NaN", "§4.1, §7.3", "configured",
        lambda c, h: c.send(compute(37, f4(np.full((1, 28, 28), np.nan)))), "error:bad_request", id=37),
    Row("compute x with Inf", "§4.1, §7.3", "configured",
        lambda c, h: c.send(compute(38, f4(np.full((1, 28, 28), np.inf)))), "error:bad_request", id=38),
    Row("compute x of dtype u1", "§7.3", "configured",
        lambda c, h: c.send(compute(39, pack_array(np.zeros((1, 28, 28)), "u1"))), "error:bad_request", id=39),
    Row("compute x with a wrong byte length", "§4.1", "configured",
        lambda c, h: c.send(compute(40, {**GOOD_X, "data": bytes(GOOD_X["data"])[:-4]})), "error:bad_request", id=40),
    Row("compute array map with an extra key", "§4.1", "configured",
        lambda c, h: c.send(compute(41, {**GOOD_X, "data": bytes(GOOD_X["data"]), "order": "C"})), "error:bad_request", id=41),
    Row("compute x over the 2^26 element limit", "§4.1", "configured",
        lambda c, h: c.send(compute(46, {"dtype": "f4", "shape": [2**26 // 784 + 1, 28, 28], "data": bytes(4)})),
        "error:bad_request", id=46),
    Row("compute with images for the affine kind", "§7.3", "configured",
        lambda c, h: c.send(compute(42, images=pack_array(np.zeros((1, 2, 28, 28)), "u1"))), "error:bad_request", id=42),
    Row("compute with v for the affine kind (H_B)", "§7.3", "configured",
        lambda c, h: c.send(compute(43, v=f4(np.zeros((1, 2, 28, 28))))), "error:bad_request", id=43),
    Row("compute with B > max_batch", "§7.3, §10", "configured",
        lambda c, h: c.send(compute(44, f4(np.zeros((MAX_BATCH + 1, 28, 28))))), "error:bad_request", id=44),
    Row("compute with B = 0", "§7.3", "configured", lambda c, h: c.send(compute(45, f4(np.zeros((0, 28, 28))))),
        "error:bad_request", id=45),
    Row("compute whose id is still in flight", "§7.3, §8", "configured", send_duplicate, "error:bad_request", id=14,
        then=then_result(14)),
    Row("compute beyond max_in_flight", "§7.3, §9 busy", "configured", send_busy, "error:busy", id=MAX_IN_FLIGHT,
        then=then_busy_results),
    Row("an id may be reused once answered", "§7.3", "configured", send_reuse, "result", id=11, within=DELAY + 5),
    Row("cancel of a request in flight: no result, no error", "§5.6a", "configured", send_cancel_in_flight, None,
        then=then_quiet),
    Row("a refused configure keeps the previous configuration", "§7.2", "configured", send_refused_then_compute, "result",
        id=12, within=DELAY + 5),
    # what the document once left open, settled (§3, §4, §5.4, §5.6a, §7.2, §7.3, §10)
    Row("a cancel frees the request's id and its place in max_in_flight at once", "§5.6a, §7.3, §9 busy", "configured",
        send_cancel_frees_id_and_slot, "result", id=61, within=DELAY + 5, then=then_the_new_request_60),
    Row("a request read before a configure is computed with the configuration it was checked against", "§7.2",
        "configured", send_request_across_a_reconfigure, "configured", then=then_old_and_new_configuration),
    Row("a compute sent right behind a configure is checked against that configure", "§7.2", "configured",
        send_compute_behind_configure, "configured", then=then_result_under_the_new_configure),
    Row("a cancel of a request waiting behind a configure: no result", "§5.6a, §7.2", "configured",
        send_cancel_behind_configure, "configured", then=then_quiet),
    Row("x f4 with v f2: each is checked on its own and widened", "§7.3", "ready", send_hs_mixed_dtypes, "result", id=66,
        within=DELAY + 5, check=check_hs_mixed),
    Row("ping whose seq is an integral float (1.0)", "§4.5", "ready", lambda c, h: c.send({"t": "ping", "seq": 1.0}),
        "error:bad_request"),
    Row("compute whose id is an integral float (3.0): id nil", "§4.5, §7.3", "configured",
        lambda c, h: c.send(compute(3.0)), "error:bad_request"),
    Row("compute x whose shape holds an integral float", "§4.5, §4.1", "configured",
        lambda c, h: c.send(compute(67, {**GOOD_X, "data": bytes(GOOD_X["data"]), "shape": [1, 28.0, 28]})),
        "error:bad_request", id=67),
    Row("configure whose compute in_shape holds an integral float", "§4.5, §5.4.1", "ready",
        lambda c, h: c.send(configure(compute={**AFFINE, "in_shape": [28.0, 28]})), "error:bad_request"),
    Row("a frame still arriving keeps the session past idle_timeout", "§8, §10 idle_timeout", "ready",
        send_frame_in_pieces_beyond_idle_timeout, "pong", within=5.0),
    Row("aicc-shared with an encoder that is not a str", "§5.4.1", "ready",
        lambda c, h: c.send(configure(compute={**SHARED, "encoder": 1})), "error:bad_request", then_reply="encoder"),
    Row("aicc-shared with an encoder that is neither mlp nor cl", "§5.4.1", "ready",
        lambda c, h: c.send(configure(compute={**SHARED, "encoder": "conv"})), "error:bad_request", then_reply="encoder"),
    Row("params string of 200 characters but 400 bytes", "§4.8, §5.4", "ready",
        lambda c, h: c.send(params_configure({"note": "é" * 200})), "error:bad_request", then_reply="configure.params"),
    Row("params key of 257 bytes", "§4.8, §5.4", "ready",
        lambda c, h: c.send(params_configure({"k" * 257: 1})), "error:bad_request", then_reply="configure.params"),
    Row("params key and string of exactly 256 bytes are accepted", "§4.8, §5.4", "ready",
        lambda c, h: c.send(params_configure({"é" * 128: "é" * 127 + "xx"})), "configured"),
    Row("scheme name of 33 characters but 66 bytes", "§4.8, §5.4", "ready",
        lambda c, h: c.send(configure(scheme="é" * 33)), "error:bad_request", then_reply="configure.scheme"),
    Row("a frame of exactly hello.caps.max_frame bytes is read, not refused", "§3, §5.1", "ready",
        lambda c, h: c.send(frame_of_payload(h.caps["max_frame"])), "error:bad_request", then_reply="pad"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_documented_reply(worker, row: Row):
    logged = worker.logs().count(row.log) if row.log else 0
    c, hello = open_conn(worker.port, row.state)
    try:
        row.send(c, hello)
        if row.reply is not None:
            got = c.recv(row.within)
            if row.reply == CLOSED:
                assert got == CLOSED, f"expected the worker to close without a frame, got {got}"
            elif row.reply.startswith("error:"):
                assert isinstance(got, Error) and got.code == row.reply[6:], got
                assert got.id == row.id, f"error id {got.id}, documented {row.id}"
                assert row.then_reply is None or row.then_reply in got.message, got.message
            else:
                assert isinstance(got, Message) and got.TYPE == row.reply, got
                if isinstance(got, Result):
                    assert got.id == row.id
                    if row.id == 31:
                        check_values(c, got)
                if row.check is not None:
                    row.check(got)
                if isinstance(got, Welcome):
                    c.hs.receive(got)  # raises unless the MAC proves the worker holds the token
                    assert c.hs.done
        if row.then is not None:
            row.then(c)
        if row.closed:
            if row.reply != CLOSED:
                assert c.recv(3.0) == CLOSED, "the worker kept the connection open"
        else:  # the session continues, and nothing else was sent first
            c.send({"t": "ping", "seq": 5})
            nxt = c.recv()
            assert nxt == Pong(5), nxt
        if row.log:  # closed for the documented reason, not as a lost connection
            deadline = time.monotonic() + 3
            while worker.logs().count(row.log) == logged and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.logs().count(row.log) > logged, f"worker log lacks {row.log!r}"
    finally:
        c.close()


def test_hello_announces_the_documented_capabilities(worker):
    c, hello = open_conn(worker.port, "preauth")
    c.close()
    assert hello.proto == 2 and len(hello.nonce) == 32 and hello.bundle is None
    caps = hello.caps
    assert set(caps["placements"]) >= {"encoded", "plain"} and caps["wire_dtypes"] == ["f4", "f2"]
    assert (caps["max_frame"], caps["max_batch"], caps["max_in_flight"]) == (MAX_FRAME, MAX_BATCH, MAX_IN_FLIGHT)
    assert caps["proto_minor"] == 1 and isinstance(caps["torch"], bool)
    assert caps["computes"] == (["affine", "affine-hs", "mlp", "cnn", "resnet18", "aicc-shared"] if caps["torch"] else ["affine", "affine-hs", "mlp"])


def test_the_digest_escapes_del_and_non_ascii_as_documented():
    """§7.2: names are hashed as json.dumps writes them: DEL and non-ASCII as lowercase \\uXXXX."""
    import hashlib

    arrays = {"a\x7fé": np.zeros(1, np.float32)}
    h = hashlib.sha256(b'["a\\u007f\\u00e9", "<f4", [1]]' + bytes(4)).hexdigest()
    assert array_digest(arrays) == h


def test_error_frames_carry_exactly_the_documented_fields(worker):
    c, _ = open_conn(worker.port, "ready")
    try:
        c.send(compute(1))
        payload = None
        c.sock.settimeout(5)
        while payload is None:
            c.decoder.feed(c.sock.recv(1 << 16))
            payload = c.decoder.next()
        assert set(payload) == {"t", "code", "message", "id"}
        assert payload["t"] == "error" and payload["code"] == "not_configured" and payload["id"] == 1
    finally:
        c.close()


# -- the client side (§8, master table), through the one handshake every client uses ----------------
async def test_a_client_with_the_wrong_token_is_told_so(worker):
    from edgecc.errors import EdgeccError
    from edgecc.master.probe import probe

    with pytest.raises(EdgeccError, match="refused the handshake: auth"):
        await probe(worker.address, b"not-the-token-0123456789abcdef")
    info = await probe(worker.address, TOKEN.encode())
    assert info["caps"]["proto_minor"] == 1


async def test_a_silent_peer_fails_the_client_handshake_after_handshake_timeout():
    import asyncio

    from edgecc.errors import EdgeccError
    from edgecc.master.probe import probe

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never speaks
    try:
        t0 = time.monotonic()
        with pytest.raises(EdgeccError, match="no hello from the worker within 0.5 s"):
            await probe(("127.0.0.1", server.sockets[0].getsockname()[1]), TOKEN.encode(), timeout=0.5)
        assert time.monotonic() - t0 < 3
    finally:
        server.close()


# -- the document's own examples -------------------------------------------------------------------
DOC = (REPO / "docs" / "protocol.md").read_text()


def test_the_documented_configure_bytes_are_what_the_reference_encodes():
    """§5.4.1's hex example decodes to the configure it describes, and encodes back to the same bytes."""
    import re

    from edgecc.protocol.messages import Configure

    hexes = re.findall(r"i\.e\. `(000000c5[0-9a-f]+)`", DOC)
    assert len(hexes) == 1
    want = Configure(0, "aicc", {"alpha": 0.5}, AFFINE, "f4", "71008d97918ed4b5f7f8a5950d3cfaaa60ce3f7a6d83925566e635352e088d55",
                     None, None)
    assert encode_frame(want.to_wire()).hex() == hexes[0]
    dec = FrameDecoder()
    dec.feed(bytes.fromhex(hexes[0]))
    assert parse(dec.next()) == want


def test_the_documented_python_master_configures_and_computes(worker):
    """§12.2's two code blocks, run as written (no edgecc import) against the worker: y = A·x + b."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", DOC[DOC.index("### 12.2"):], re.S)
    assert len(blocks) == 2
    env: dict[str, Any] = {"__name__": "protocol_doc"}
    exec(blocks[0], env)  # noqa: S102 — the document's own example
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=DELAY + 5)
    try:
        hello = env["handshake"](sock, TOKEN.encode())
        assert hello["proto"] == 2
        env.update(sock=sock, A=[float(v) for v in A.ravel()], b=[float(v) for v in B])
        exec(blocks[1], env)  # noqa: S102
        want = np.full((1, 784), 0.5, np.float32) @ A.T + B
        np.testing.assert_allclose(np.array(env["y"]), want[0], rtol=1e-4, atol=1e-3)
    finally:
        sock.close()
