"""Message types and their validation (edgecc.protocol.messages)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecc.protocol.frames import FrameDecoder, RemoteProtocolError, encode_frame, pack_array
from edgecc.protocol.messages import (ERROR_CODES, MESSAGES, NONCE_BYTES, PROTOCOL_VERSION, Auth, Cancel, Compute, Configure,
                                      Configured, Error, Hello, Ping, Pong, Result, Welcome, parse)

DIGEST = "0123456789abcdef" * 4
CAPS = {"placements": ["encoded", "shared"], "wire_dtypes": ["f4", "f2"], "torch": False, "max_frame": 1 << 26,
        "max_batch": 4096, "max_in_flight": 256, "proto_minor": 1}
SCHEME = {"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl", "compute_arch": "cl"}
AFFINE = {"kind": "affine", "in_shape": [28, 28], "out": 10}
SHARED = {"kind": "aicc-shared", "in_shape": [28, 28], "out": 10, **SCHEME, "alpha": 0.25}


def arr(shape, dtype="f4"):
    return pack_array(np.zeros(shape), dtype)


EXAMPLES = [
    Hello(PROTOCOL_VERSION, b"\x01" * NONCE_BYTES, CAPS, None),
    Hello(PROTOCOL_VERSION, b"\x02" * NONCE_BYTES, {}, DIGEST),
    Auth(PROTOCOL_VERSION, b"\x03" * NONCE_BYTES, b"\x04" * 32),
    Welcome(b"\x05" * 32),
    Configure(0, "aicc", {**SCHEME, "alpha": 0.25}, AFFINE, "f4", DIGEST, {"affine.weight": arr((10, 784)), "affine.bias": arr((10,))}, None),
    Configure(3, "aicc", {"alpha": 1, "note": None, "points": [0.5, "n", True]}, SHARED, "f2", DIGEST, None, "sample"),
    Configured(DIGEST),
    Compute(0, arr((2, 28, 28)), None, None, None),
    Compute(2**63 - 1, arr((2, 28, 28), "f2"), arr((2, 3, 28, 28), "f2"), None, None),
    Compute(5, None, None, arr((1, 2, 28, 28), "u1"), None),
    Compute(6, None, None, None, arr((1, 2), "i4")),
    Cancel(7),
    Cancel(2**63 - 1),
    Result(9, arr((2, 10))),
    Error("busy", "too many", 4),
    Error("limit", "frame too large", None),
    Ping(1),
    Pong(0),
]


def through_wire(msg):
    dec = FrameDecoder()
    dec.feed(encode_frame(msg.to_wire()))
    return parse(dec.next())


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(msg):
    wire = msg.to_wire()
    assert wire["t"] == msg.TYPE
    assert parse(wire) == msg
    back = through_wire(msg)
    assert type(back) is type(msg)
    for name in wire:  # memoryview array data comes back as bytes: compare the wire maps
        if name != "t":
            got, sent = getattr(back, name), wire[name]
            assert _plain(got) == _plain(sent), name


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, memoryview):
        return v.tobytes()
    return v


def test_every_type_has_an_example():
    assert {m.TYPE for m in EXAMPLES} == set(MESSAGES)
    assert set(MESSAGES) == {"hello", "auth", "welcome", "configure", "configured", "compute", "cancel", "result", "error",
                             "ping", "pong"}


def _wire(t: str) -> dict:
    return next(m for m in EXAMPLES if m.TYPE == t).to_wire()


def _fails(d: dict, *fragments: str) -> None:
    with pytest.raises(RemoteProtocolError) as e:
        parse(d)
    for f in fragments:
        assert f in str(e.value), f"{f!r} not in {str(e.value)!r}"


@pytest.mark.parametrize("t", sorted(MESSAGES))
def test_missing_field(t):
    d = _wire(t)
    name = next(k for k in d if k != "t")
    del d[name]
    _fails(d, t, "missing fields", name)


@pytest.mark.parametrize("t", sorted(MESSAGES))
def test_unknown_field(t):
    _fails({**_wire(t), "colour": "blue"}, t, "unknown fields", "colour")


def test_nil_able_fields_must_still_be_present():
    d = _wire("compute")
    del d["indices"]
    _fails(d, "compute", "missing fields", "indices")


def test_unknown_non_string_keys_are_reported():
    _fails({"t": "ping", "seq": 1, 7: "x", b"k": 1}, "ping", "unknown fields", "7", "b'k'")


@pytest.mark.parametrize("t, field, value", [
    ("hello", "proto", "1"),
    ("hello", "proto", 1.0),
    ("hello", "proto", True),
    ("hello", "nonce", "x" * 32),
    ("hello", "caps", []),
    ("hello", "bundle", b"digest"),
    ("auth", "mac", "mac"),
    ("auth", "proto", False),
    ("welcome", "mac", None),
    ("configure", "index", True),
    ("configure", "index", 0.0),
    ("configure", "scheme", None),
    ("configure", "scheme", {"name": "aicc"}),
    ("configure", "params", None),
    ("configure", "params", [1, 2]),
    ("configure", "compute", None),
    ("configure", "compute", "affine"),
    ("configure", "digest", None),
    ("configure", "arrays", []),
    ("configure", "dataset", 1),
    ("configured", "digest", b"x"),
    ("compute", "id", True),
    ("compute", "id", 1.0),
    ("compute", "id", None),
    ("compute", "x", [1, 2]),
    ("compute", "v", b"raw"),
    ("result", "id", False),
    ("result", "y", None),
    ("error", "code", 1),
    ("error", "message", None),
    ("error", "id", True),
    ("ping", "seq", True),
    ("ping", "seq", "1"),
    ("pong", "seq", None),
    ("pong", "seq", 1.5),
])
def test_wrong_type(t, field, value):
    _fails({**_wire(t), field: value}, f"{t}.{field}", "unexpected value of type", type(value).__name__)


@pytest.mark.parametrize("t", ["hello", "auth"])
@pytest.mark.parametrize("n", [0, 16, NONCE_BYTES - 1, NONCE_BYTES + 1, 64])
def test_bad_nonce_length(t, n):
    _fails({**_wire(t), "nonce": b"\x00" * n}, f"{t}.nonce", f"must be {NONCE_BYTES} bytes, got {n}")


@pytest.mark.parametrize("key, value", [
    ("placements", 5), ("placements", "encoded"), ("placements", ["encoded", 1]), ("placements", None),
    ("wire_dtypes", {"f4": 1}), ("torch", 1), ("torch", "yes"),
    ("max_frame", -1), ("max_frame", 1.5), ("max_batch", True), ("max_in_flight", "8"),
    ("proto_minor", -1), ("proto_minor", "1"), ("proto_minor", True),
])
def test_bad_caps(key, value):
    _fails({**_wire("hello"), "caps": {**CAPS, key: value}}, f"hello.caps.{key}")


def test_unknown_caps_are_ignored():
    assert parse({**_wire("hello"), "caps": {**CAPS, "gpu": {"any": [1, 2]}}}).caps["gpu"] == {"any": [1, 2]}


@pytest.mark.parametrize("spec, fragment", [
    ({"in_shape": [28, 28], "out": 10}, "kind must be one of"),
    ({**AFFINE, "kind": "Affine"}, "kind must be one of"),
    ({**AFFINE, "kind": "encoded"}, "kind must be one of"),
    ({**AFFINE, "P": 2}, "unknown keys ['P']"),
    ({"kind": "affine-hs", "in_shape": [28, 28], "out": 10}, "missing keys ['P']"),
    ({**AFFINE, "in_shape": []}, "in_shape"),
    ({**AFFINE, "in_shape": [28, 0]}, "in_shape"),
    ({**AFFINE, "in_shape": [28, 28.0]}, "in_shape"),
    ({**AFFINE, "in_shape": [1, 1, 1, 1]}, "in_shape"),
    ({**AFFINE, "in_shape": [4096, 4096]}, "in_shape"),  # 2^24 values per group: over the 2^20 limit
    ({**AFFINE, "out": 0}, "out"),
    ({**AFFINE, "out": True}, "out"),
    ({"kind": "mlp", "in_shape": [28, 28], "hidden": [200, -1], "out": 10}, "hidden"),
    ({"kind": "cnn", "in_shape": [2, 32, 32], "out": 10}, "takes images"),
    ({"kind": "resnet18", "in_shape": [784], "out": 10}, "takes images"),
    ({**SHARED, "in_shape": [1, 28, 28]}, "takes images"),
    ({**SHARED, "P": 2}, "needs P = 1"),
    ({**SHARED, "computation": "hx"}, "computation"),
    ({**SHARED, "alpha": -1.0e6}, "alpha"),
    ({**SHARED, "alpha": float("nan")}, "alpha"),
    ({**SHARED, "alpha": 1.0e6}, "alpha"),
    ({**SHARED, "alpha": True}, "alpha"),
])
def test_bad_compute_spec(spec, fragment):
    _fails({**_wire("configure"), "compute": spec}, "compute", fragment)


@pytest.mark.parametrize("spec, placement, inputs", [
    (AFFINE, "encoded", [["x"]]),
    ({"kind": "affine-hs", "in_shape": [28, 28], "out": 10, "P": 2}, "encoded", [["x", "v"]]),
    ({"kind": "mlp", "in_shape": [28, 28], "hidden": [], "out": 10}, "plain", [["x"]]),
    ({"kind": "cnn", "in_shape": [28, 28], "out": 10}, "plain", [["x"]]),
    (SHARED, "shared", [["images"], ["indices"]]),
])
def test_each_kind_declares_its_placement_and_inputs(spec, placement, inputs):
    s = parse({**_wire("configure"), "compute": spec, "dataset": None}).spec()
    assert s.placement == placement and [[i.name for i in alt] for alt in s.inputs()] == inputs
    assert s.to_wire() == spec


def test_a_dataset_is_for_the_shared_compute_only():
    _fails({**_wire("configure"), "dataset": "sample"}, "configure.dataset", "'affine'")


@pytest.mark.parametrize("params", [{"a": {"nested": 1}}, {"a": [[1]]}, {"a": b"raw"}, {"a": list(range(257))},
                                    {f"p{i}": i for i in range(65)}, {"a": "x" * 257}])
def test_bad_params(params):
    _fails({**_wire("configure"), "params": params}, "configure.params")


@pytest.mark.parametrize("name", ["", "x" * 65])
def test_bad_scheme_name(name):
    _fails({**_wire("configure"), "scheme": name}, "configure.scheme")


@pytest.mark.parametrize("value", ["f8", "u1", "F4", ""])
def test_bad_wire_dtype(value):
    _fails({**_wire("configure"), "wire_dtype": value}, "configure.wire_dtype", repr(value))


@pytest.mark.parametrize("code", ["", "Busy", "timeout", "unknown"])
def test_unknown_error_code(code):
    _fails({**_wire("error"), "code": code}, "error.code", repr(code))


@pytest.mark.parametrize("code", ERROR_CODES)
def test_every_error_code(code):
    assert parse({**_wire("error"), "code": code}).code == code


@pytest.mark.parametrize("t", [None, "", "PING", "hello2", "result ", 1, b"ping", ["ping"], {"t": "ping"}])
def test_unknown_message_type(t):
    _fails({"t": t, "seq": 1}, "unknown message type", repr(t))


def test_missing_type():
    _fails({"seq": 1}, "unknown message type None")


@pytest.mark.parametrize("value", [-1, -(2**63), 2**63, 2**64 - 1])
def test_compute_id_out_of_range(value):
    _fails({**_wire("compute"), "id": value}, "compute.id", "out of range", str(value))


@pytest.mark.parametrize("value", [-1, 2**63])
def test_cancel_id_out_of_range(value):
    _fails({**_wire("cancel"), "id": value}, "cancel.id", "out of range", str(value))


def test_compute_id_bounds():
    assert parse({**_wire("compute"), "id": 0}).id == 0
    assert parse({**_wire("compute"), "id": 2**63 - 1}).id == 2**63 - 1


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        Ping(1).seq = 2  # type: ignore[misc]


def test_to_wire_field_order_follows_the_spec():
    assert list(_wire("hello")) == ["t", "proto", "nonce", "caps", "bundle"]
    assert list(_wire("configure")) == ["t", "index", "scheme", "params", "compute", "wire_dtype", "digest", "arrays",
                                        "dataset"]
    assert list(_wire("compute")) == ["t", "id", "x", "v", "images", "indices"]
    assert list(_wire("error")) == ["t", "code", "message", "id"]
