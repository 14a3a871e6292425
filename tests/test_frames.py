"""Framing and array encoding (edgecc.protocol.frames), with property-based fuzzing."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecc.protocol.frames import (DEFAULT_MAX_FRAME, HEADER, WIRE_DTYPES, FatalProtocolError, FrameDecoder,
                                    LocalProtocolError, RemoteProtocolError, decode_payload, encode_frame, pack_array,
                                    unpack_array)
from edgecc.protocol.messages import MESSAGES, parse

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def drain(dec: FrameDecoder) -> list[dict]:
    out = []
    while (m := dec.next()) is not None:
        out.append(m)
    return out


def wire(a: dict) -> dict:
    """What the peer sees: pack_array's memoryview arrives as bytes."""
    return {**a, "data": bytes(a["data"])}


# -- frames ---------------------------------------------------------------------------------------

def test_ping_frame_bytes():
    assert encode_frame({"t": "ping", "seq": 1}).hex() == "0000000d82a174a470696e67a373657101"


def test_round_trip_with_bytes_and_nesting():
    msg = {"t": "x", "b": b"\x00\xff" * 10, "n": None, "f": 1.5, "i": -3, "big": 2**64 - 1, "l": [1, "a", [True]],
           "m": {"k": {"z": b""}}, "u": "héllo"}
    dec = FrameDecoder()
    dec.feed(encode_frame(msg))
    assert dec.next() == msg
    assert dec.next() is None and dec.buffered == 0


def test_bytes_travel_as_bin_and_str_as_str():
    payload = encode_frame({"b": b"ab", "s": "ab"})[4:]
    assert b"\xc4\x02ab" in payload and b"\xa2ab" in payload


def test_byte_by_byte():
    msgs = [{"t": "ping", "seq": i} for i in range(3)]
    data = b"".join(encode_frame(m) for m in msgs)
    dec, got = FrameDecoder(), []
    for i in range(len(data)):
        dec.feed(data[i:i + 1])
        got += drain(dec)
    assert got == msgs and dec.buffered == 0


def test_several_frames_in_one_chunk_and_a_partial_tail():
    msgs = [{"t": "a", "v": b"x" * n} for n in (0, 1, 300, 70000)]
    data = b"".join(encode_frame(m) for m in msgs)
    tail = encode_frame({"t": "tail"})
    dec = FrameDecoder()
    dec.feed(data + tail[:7])
    assert drain(dec) == msgs
    assert dec.buffered == 7
    dec.feed(tail[7:])
    assert drain(dec) == [{"t": "tail"}]


def test_partial_header_waits():
    dec = FrameDecoder()
    dec.feed(b"\x00\x00")
    assert dec.next() is None


def test_oversize_refused_before_payload_arrives():
    dec = FrameDecoder(max_frame=100)
    dec.feed(HEADER.pack(101))  # only the header: nothing of the payload is buffered yet
    with pytest.raises(FatalProtocolError, match="101 bytes"):
        dec.next()
    assert dec.buffered == 4
    with pytest.raises(RemoteProtocolError):  # FatalProtocolError is a RemoteProtocolError
        dec.next()


def test_oversize_default_limit():
    dec = FrameDecoder()
    dec.feed(HEADER.pack(DEFAULT_MAX_FRAME + 1))
    with pytest.raises(FatalProtocolError):
        dec.next()
    dec = FrameDecoder()
    dec.feed(HEADER.pack(DEFAULT_MAX_FRAME))  # exactly the limit is allowed: waits for the payload
    assert dec.next() is None


def test_frame_at_limit_accepted():
    msg = {"t": "x", "d": b"a" * 50}
    payload_len = len(encode_frame(msg)) - 4
    dec = FrameDecoder(max_frame=payload_len)
    dec.feed(encode_frame(msg, max_frame=payload_len))
    assert dec.next() == msg


def test_encode_refuses_oversize():
    with pytest.raises(LocalProtocolError):
        encode_frame({"t": "x", "d": b"a" * 200}, max_frame=100)


@pytest.mark.parametrize("payload", [
    b"",  # empty payload
    b"\xc1",  # never-used msgpack byte
    b"\x92\x01",  # truncated array
    b"\xa3ab",  # truncated str
    b"\xa2\xff\xfe",  # invalid UTF-8
    msgpack.packb({"t": "ping"}) + b"\x00",  # trailing data
    msgpack.packb([1, 2]),  # not a map
    msgpack.packb(3),
    msgpack.packb("t"),
    msgpack.packb(None),
    msgpack.packb({1: 2}),  # int key
    msgpack.packb({b"t": "ping"}, use_bin_type=True),  # bin key
    msgpack.packb({"t": "x", "m": {"a": {b"k": 1}}}, use_bin_type=True),  # nested bin key
    msgpack.packb({"t": msgpack.ExtType(5, b"abc")}),  # ext type
    b"\x82\xa1t\xa1x\xa1l\x91\x91\xd4\xf9\x00",  # {"t": "x", "l": [[ext -7]]}: nested reserved ext type
    msgpack.packb({"t": "ping", "seq": msgpack.Timestamp(1, 0)}),  # timestamp ext (-1) bypasses ext_hook
    msgpack.packb({"t": "x", "l": [{"ts": msgpack.Timestamp(1, 5)}]}),
    bytes([0xd4, 0xff, 0x00]),  # fixext 1 of type -1: invalid timestamp
])
def test_garbage_payloads(payload):
    with pytest.raises(RemoteProtocolError) as e:
        decode_payload(payload)
    assert not isinstance(e.value, FatalProtocolError)
    dec = FrameDecoder()
    dec.feed(frame(payload) + encode_frame({"t": "ok"}))
    with pytest.raises(RemoteProtocolError):
        dec.next()
    assert dec.next() == {"t": "ok"}  # the bad frame was consumed whole: the stream stays in sync


def test_deep_nesting_is_an_error_not_a_crash():
    payload = b"\x91" * 100_000 + b"\x00"
    with pytest.raises(RemoteProtocolError):
        decode_payload(payload)
    ok = msgpack.packb({"t": "x", "d": [[[[[[[[[[1]]]]]]]]]]})
    assert decode_payload(ok)["d"][0][0][0][0][0][0][0][0][0] == [1]


# -- arrays ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", sorted(WIRE_DTYPES))
def test_array_round_trip(dt):
    rng = np.random.default_rng(0)
    if dt in ("u1", "i4"):
        info = np.iinfo(WIRE_DTYPES[dt])
        a = rng.integers(info.min, info.max, (3, 4, 5), endpoint=True).astype(WIRE_DTYPES[dt])
    else:
        a = (rng.standard_normal((3, 4, 5)) * 50).astype(WIRE_DTYPES[dt])
    w = pack_array(a, dt)
    assert w["dtype"] == dt and w["shape"] == [3, 4, 5] and len(bytes(w["data"])) == a.nbytes
    b = unpack_array(wire(w), "a", dtypes=(dt,))
    assert b.dtype == np.dtype(WIRE_DTYPES[dt]).newbyteorder("<") and b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    assert not b.flags.writeable
    # and through a whole frame
    dec = FrameDecoder()
    dec.feed(encode_frame({"t": "x", "a": w}))
    np.testing.assert_array_equal(unpack_array(dec.next()["a"], "a", dtypes=(dt,)), a)


def test_wire_bytes_are_little_endian_c_order():
    w = pack_array(np.array([[1.0, -2.0], [0.5, 3.0]], dtype=">f4").T, "f4")  # big-endian, Fortran view
    assert w["shape"] == [2, 2]
    assert bytes(w["data"]) == struct.pack("<4f", 1.0, 0.5, -2.0, 3.0)
    assert bytes(pack_array(np.array([1, 258], np.int32), "i4")["data"]) == bytes.fromhex("0100000002010000")


def test_array_converts_dtype():
    w = pack_array(np.array([1.5, 2.25], np.float64), "f2")
    np.testing.assert_array_equal(unpack_array(wire(w), "a"), np.array([1.5, 2.25], np.float16))


@pytest.mark.parametrize("shape", [(), (0,), (0, 10), (3, 0, 2)])
def test_scalar_and_empty_arrays(shape):
    a = np.full(shape, 7, np.float32)
    w = pack_array(a, "f4")
    assert w["shape"] == list(shape)
    b = unpack_array(wire(w), "a")
    assert b.shape == shape
    np.testing.assert_array_equal(b, a)


def test_pack_array_refuses_unknown_dtype():
    with pytest.raises(LocalProtocolError):
        pack_array(np.zeros(2), "f16")


def _arr(dtype="f4", shape=(2, 3), data=None):
    n = int(np.prod(shape))
    isz = np.dtype(WIRE_DTYPES.get(dtype, np.float32)).itemsize
    return {"dtype": dtype, "shape": list(shape), "data": bytes(n * isz) if data is None else data}


def test_wrong_byte_length():
    with pytest.raises(RemoteProtocolError, match=r"y: 20 bytes .*\(needs 24\)"):
        unpack_array(_arr(data=bytes(20)), "y")
    with pytest.raises(RemoteProtocolError, match="needs 24"):
        unpack_array(_arr(data=bytes(28)), "y")


def test_shape_against_expected():
    a = _arr(shape=(4, 28, 28))
    assert unpack_array(a, "x", shape=(None, 28, 28)).shape == (4, 28, 28)
    assert unpack_array(a, "x", shape=(4, None, None)).shape == (4, 28, 28)
    for want in [(None, 28, 27), (3, 28, 28), (None, 28), (None, 28, 28, 1)]:
        with pytest.raises(RemoteProtocolError, match=r"x: shape \(4, 28, 28\) does not match"):
            unpack_array(a, "x", shape=want)


def test_shape_message_uses_star_for_wildcards():
    with pytest.raises(RemoteProtocolError, match=r"\(\*, 28, 28\)"):
        unpack_array(_arr(shape=(2, 3)), "x", shape=(None, 28, 28))


@pytest.mark.parametrize("shape", [[-1, 2], [1.5], [True, 2], ["2"], "23", None, [[2]]])
def test_bad_shape_values(shape):
    with pytest.raises(RemoteProtocolError, match="shape must be a list"):
        unpack_array({"dtype": "f4", "shape": shape, "data": b""}, "y")


def test_too_many_elements():
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 100 elements"):
        unpack_array(_arr(shape=(11, 10)), "y", max_elements=100)
    assert unpack_array(_arr(shape=(10, 10)), "y", max_elements=100).shape == (10, 10)


@pytest.mark.parametrize("shape", [
    [2**32, 2**32],  # the int64 product wraps around to 0
    [2**64 - 1],  # the largest msgpack uint
    [2**62, 0],  # zero elements, but numpy cannot build the shape
    [0] * 70,  # more dimensions than numpy allows
    [1] * 33,
])
def test_absurd_shapes_are_protocol_errors(shape):
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        unpack_array({"dtype": "f4", "shape": shape, "data": b""}, "y")


def test_dtype_not_accepted():
    with pytest.raises(RemoteProtocolError, match=r"y: dtype 'f8' not accepted here \(accepted: f4, f2\)"):
        unpack_array(_arr("f8"), "y")
    with pytest.raises(RemoteProtocolError, match="dtype"):
        unpack_array(_arr("f4"), "images", dtypes=("u1",))
    for bad in ("<f4", "float32", None, 4):
        with pytest.raises(RemoteProtocolError, match="dtype"):
            unpack_array({"dtype": bad, "shape": [1], "data": bytes(4)}, "y")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dt", ["f4", "f2", "f8"])
def test_nan_inf_refused(dt, value):
    a = np.zeros((2, 3), WIRE_DTYPES[dt])
    a[1, 2] = value
    w = wire(pack_array(a, dt))
    with pytest.raises(RemoteProtocolError, match="NaN or Inf"):
        unpack_array(w, "y", dtypes=(dt,))
    assert np.isnan(unpack_array(w, "y", dtypes=(dt,), finite=False)[1, 2]) == np.isnan(value)


def test_every_float16_bit_pattern_is_classified_like_numpy():
    """The float16 finite check reads exponent bits: compare it with np.isfinite on all 65,536 patterns."""
    patterns = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2")
    finite = np.isfinite(patterns)
    assert finite.sum() == 63488  # 2 x 31 exponents x 1024 mantissas
    for v, ok in zip(patterns, finite):
        w = wire(pack_array(np.array([0.0, v], np.float16), "f2"))
        if ok:
            unpack_array(w, "y", dtypes=("f2",))
        else:
            with pytest.raises(RemoteProtocolError, match="NaN or Inf"):
                unpack_array(w, "y", dtypes=("f2",))


def test_empty_float_arrays_pass_the_finite_check():
    for dt in ("f4", "f2"):
        assert unpack_array(wire(pack_array(np.zeros((0, 10)), dt)), "y", dtypes=(dt,)).shape == (0, 10)


def test_integer_arrays_skip_the_finite_check():
    w = wire(pack_array(np.array([[0, 255]], np.uint8), "u1"))
    assert unpack_array(w, "images", dtypes=("u1",)).tolist() == [[0, 255]]


@pytest.mark.parametrize("obj", [
    None, 3, "f4", b"\x00" * 4, [1, 2], ["f4", [1], b"\x00" * 4],
    {"dtype": "f4", "shape": [1]},  # missing data
    {"dtype": "f4", "shape": [1], "data": bytes(4), "order": "C"},  # extra key
    {"type": "f4", "shape": [1], "data": bytes(4)},
])
def test_non_array_objects_refused(obj):
    with pytest.raises(RemoteProtocolError, match="an array must be a map"):
        unpack_array(obj, "x")


@pytest.mark.parametrize("data", ["\x00\x00\x00\x00", None, [0, 0, 0, 0], 0])
def test_data_must_be_binary(data):
    with pytest.raises(RemoteProtocolError, match="data must be binary"):
        unpack_array({"dtype": "f4", "shape": [1], "data": data}, "x")


# -- property-based -------------------------------------------------------------------------------

keys = st.text(max_size=8)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=12)
maps = st.dictionaries(keys, values, max_size=6)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@FUZZ
@given(st.lists(maps, min_size=1, max_size=3), st.lists(st.integers(min_value=0), max_size=12))
def test_prop_round_trip_any_chunking(msgs, cuts):
    data = b"".join(encode_frame(m) for m in msgs)
    dec, got = FrameDecoder(), []
    for chunk in chunked(data, cuts):
        dec.feed(chunk)
        got += drain(dec)
    assert got == msgs
    assert dec.buffered == 0


def _feed_all(dec: FrameDecoder, chunks: list[bytes]) -> None:
    """Feed and read until the decoder raises, like a connection would (any error ends the test)."""
    for chunk in chunks:
        dec.feed(chunk)
        while True:
            try:
                if dec.next() is None:
                    break
            except FatalProtocolError:
                return  # the connection would be closed
            except RemoteProtocolError:
                continue  # the bad frame was consumed; a worker keeps reading


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8),
       st.integers(min_value=0, max_value=700))
def test_prop_random_bytes_only_protocol_errors(data, cuts, max_frame):
    _feed_all(FrameDecoder(max_frame=max_frame), chunked(data, cuts))


@FUZZ
@given(st.binary(max_size=300))
def test_prop_random_payloads(payload):
    try:
        msg = decode_payload(payload)
    except RemoteProtocolError:
        return
    assert isinstance(msg, dict) and all(isinstance(k, str) for k in msg)
    try:
        parse(msg)
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.dictionaries(st.text(max_size=8) | st.sampled_from(["t", "seq", "id", "nonce", "mac", "caps", "y"])
                       | st.integers() | st.binary(max_size=3), values, max_size=8),
       st.sampled_from(["hello", "auth", "welcome", "configure", "configured", "compute", "result", "error",
                        "ping", "pong", "nope", ""]) | values)
def test_prop_parse_arbitrary_dicts(d, t):
    d = {**d, "t": t}
    try:
        parse(d)
    except RemoteProtocolError:
        pass


def _field_values(name: str):
    """Arbitrary values, plus ones close to valid for the field so that per-type checks run."""
    near = {"nonce": st.binary(min_size=30, max_size=34), "mac": st.binary(max_size=40),
            "proto": st.integers(-2, 3), "id": st.integers(-(2**64), 2**64), "alpha": st.floats() | st.integers(),
            "placement": st.sampled_from(["encoded", "shared", "x", ""]), "wire_dtype": st.sampled_from(["f4", "f2", "f8"]),
            "code": st.sampled_from(["busy", "limit", "nope", ""]),
            "caps": st.dictionaries(st.sampled_from(["placements", "wire_dtypes", "torch", "max_frame", "max_batch",
                                                     "max_in_flight", "other"]), values, max_size=4)}
    return near.get(name, st.nothing()) | values


@FUZZ
@given(st.sampled_from(sorted(MESSAGES)).flatmap(lambda t: st.fixed_dictionaries(
    {"t": st.just(t), **{f: _field_values(f) for f in MESSAGES[t].TYPES}},
    optional={"extra": values})))
def test_prop_parse_typed_fields(d):
    try:
        msg = parse(d)
    except RemoteProtocolError:
        return
    assert msg.to_wire() == d


def _valid_frames() -> list[bytes]:
    from edgecc.protocol.messages import (Auth, Compute, Configure, Configured, Error, Hello, Ping, Pong, Result,
                                          Welcome)
    arr = pack_array(np.ones((2, 28, 28), np.float32))
    msgs = [Hello(2, b"n" * 32, {"placements": ["encoded"], "max_batch": 4}, None), Auth(2, b"m" * 32, b"c" * 32),
            Welcome(b"w" * 32), Configure(0, "aicc", {"K": 2}, {"kind": "affine", "in_shape": [28, 28], "out": 10}, "f4", "ab" * 32,
                                         {"w": pack_array(np.ones(3))}, None),
            Configured("ab" * 32), Compute(1, arr, None, None, None), Result(1, pack_array(np.ones((2, 10)))),
            Error("busy", "m", 3), Ping(1), Pong(2)]
    return [encode_frame(m.to_wire()) for m in msgs]


VALID_FRAMES = _valid_frames()


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_prop_mutated_frames(original, data):
    buf = bytearray(original)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["truncate", "flip", "extend", "set"]))
        if op == "truncate":
            del buf[data.draw(st.integers(min_value=0, max_value=len(buf))):]
        elif op == "extend":
            buf += data.draw(st.binary(min_size=1, max_size=20))
        elif buf:
            i = data.draw(st.integers(min_value=0, max_value=len(buf) - 1))
            if op == "flip":
                buf[i] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
            else:
                buf[i] = data.draw(st.integers(min_value=0, max_value=255))
    dec = FrameDecoder(max_frame=1 << 16)
    dec.feed(bytes(buf))
    while True:
        try:
            raw = dec.next()
        except FatalProtocolError:
            break
        except RemoteProtocolError:
            continue
        if raw is None:
            break
        try:
            msg = parse(raw)
        except RemoteProtocolError:
            continue
        # a message that parses may still carry a broken array: that too must be a protocol error
        for name in ("x", "v", "images", "indices", "y"):
            if isinstance(getattr(msg, name, None), dict):
                try:
                    unpack_array(getattr(msg, name), name, dtypes=tuple(WIRE_DTYPES))
                except RemoteProtocolError:
                    pass


@FUZZ
@given(st.sampled_from(sorted(WIRE_DTYPES)), st.lists(st.integers(min_value=0, max_value=4), max_size=4), st.data())
def test_prop_pack_unpack(dt, shape, data):
    n = int(np.prod(shape))
    if dt in ("u1", "i4"):
        info = np.iinfo(WIRE_DTYPES[dt])
        elems = st.integers(min_value=int(info.min), max_value=int(info.max))
    else:
        elems = st.floats(allow_nan=False, allow_infinity=False, width=np.dtype(WIRE_DTYPES[dt]).itemsize * 8)
    a = np.array(data.draw(st.lists(elems, min_size=n, max_size=n)), dtype=WIRE_DTYPES[dt]).reshape(shape)
    dec = FrameDecoder()
    dec.feed(encode_frame({"a": pack_array(a, dt)}))
    np.testing.assert_array_equal(unpack_array(dec.next()["a"], "a", dtypes=(dt,), shape=tuple(shape)), a)


@FUZZ
@given(st.fixed_dictionaries({"dtype": values, "shape": values, "data": values}) | values,
       st.lists(st.none() | st.integers(min_value=0, max_value=3), max_size=3) | st.none())
def test_prop_unpack_array_arbitrary_objects(obj, shape):
    try:
        unpack_array(obj, "a", dtypes=tuple(WIRE_DTYPES), shape=None if shape is None else tuple(shape))
    except RemoteProtocolError:
        pass


def test_deeply_nested_values_are_refused_without_recursion():
    """A list nested ~1000 deep used to make repr() in error messages raise RecursionError."""
    payload = b"\x81\xa1t" + b"\x91" * 1000 + b"\xc0"
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        decode_payload(payload)
