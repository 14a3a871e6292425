"""Frames and msgpack payloads that a fuzzer throws: raw, mutated, random, invalid for one reason each (§4)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import numpy as np

from ..protocol.frames import HEADER


MB = 1024 * 1024
# Values nested ~1000 deep (msgpack allows < 1024) whose repr() in an error message raises RecursionError.
# The fuzz benchmark's --no-deep sets this False, to explore past that bug.
DEEP = True

# --- frame building -------------------------------------------------------------------------------
def payload_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class RawMap(bytes):
    """A msgpack map already encoded (to splice in values msgpack-python would not write, e.g. deep nesting)."""


def raw_frame(obj: Any) -> bytes:
    """Any msgpack value as a frame, no validation (packb with bin type, as the reference does)."""
    if isinstance(obj, RawMap):
        return payload_frame(bytes(obj))
    return payload_frame(msgpack.packb(obj, use_bin_type=True))


def flip(data: bytes, rng: random.Random, n: int | None = None) -> bytes:
    """A copy with 1-4 bytes XORed with a non-zero mask."""
    b = bytearray(data)
    for _ in range(n or rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= rng.randint(1, 255)
    return bytes(b)


def random_msgpack(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack value (scalars, str/bin, lists, maps with str keys)."""
    kinds = ["int", "neg", "big", "float", "str", "bin", "nil", "bool"] + (["list", "map"] if depth < 4 else [])
    k = rng.choice(kinds)
    if k == "int":
        return rng.randint(0, 300)
    if k == "neg":
        return -rng.randint(1, 2**63)
    if k == "big":
        return rng.randint(0, 2**64 - 1)
    if k == "float":
        return rng.choice([0.5, -1e308, float("nan"), float("inf"), rng.random()])
    if k == "str":
        return "".join(rng.choice("tabcdefxy_é∑") for _ in range(rng.randint(0, 12)))
    if k == "bin":
        return rng.randbytes(rng.randint(0, 40))
    if k == "nil":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "list":
        return [random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["t", "id", "x", "v", "seq", "dtype", "shape", "data", "mac", "nonce", "proto", "zz"]
    return {rng.choice(keys): random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def deep_list(depth: int = 1000) -> bytes:
    """msgpack bytes of [[[...nil...]]] nested `depth` deep (msgpack itself allows < 1024)."""
    return b"\x91" * depth + b"\xc0"


def special_payloads(rng: random.Random) -> list[tuple[str, bytes]]:
    """Payloads that are not valid frames, each for its own reason (§4)."""
    ping = msgpack.packb({"t": "ping", "seq": 1}, use_bin_type=True)
    return [
        ("empty_payload", b""),
        ("trailing_bytes", ping + b"\x00"),
        ("invalid_utf8", b"\x82\xa1t\xa4ping\xa3seq\xa2\xff\xfe"),
        ("int_key", msgpack.packb({1: "ping", "t": "ping"}, use_bin_type=True)),
        ("bin_key", b"\x82\xc4\x01t\xa4ping\xa3seq\x01"),
        ("nested_int_key", msgpack.packb({"t": "ping", "seq": {2: 3}}, use_bin_type=True)),
        ("ext_type", msgpack.packb({"t": "ping", "seq": msgpack.ExtType(5, b"abc")}, use_bin_type=True)),
        ("timestamp", msgpack.packb({"t": "ping", "seq": msgpack.Timestamp(1, 0)}, use_bin_type=True)),
        ("map_count_lie", b"\xdf\xff\xff\xff\xff\xa1t"),
        ("str_length_lie", b"\x81\xa1t\xdb\x7f\xff\xff\xff"),
        ("array_count_lie", b"\xdd\x7f\xff\xff\xff\x01"),
        ("stack_overflow", b"\x91" * 5000 + b"\xc0"),
        *([("deep_t", b"\x81\xa1t" + deep_list())] if DEEP else []),
        ("t_is_bin", b"\x82\xa1t\xc4\x04ping\xa3seq\x01"),
        ("duplicate_key", b"\x83\xa1t\xa4ping\xa3seq\x01\xa3seq\x02"),
        ("random_bytes", rng.randbytes(rng.randint(1, 64))),
    ]


def lenient_equal(a: bytes, b: bytes) -> bool:
    """Do two payloads decode to the same msgpack value (ignoring encoding choices)?"""
    try:
        return msgpack.unpackb(a, raw=False, strict_map_key=False) == msgpack.unpackb(b, raw=False, strict_map_key=False)
    except Exception:
        return False


class RawValue:
    """Pre-encoded msgpack bytes to splice into a frame (see `compute`)."""

    def __init__(self, data: bytes):
        self.data = data


def rng_array(rng: random.Random, shape: tuple) -> np.ndarray:
    return np.random.default_rng(rng.randrange(2**32)).random(shape, dtype=np.float32)


def compute(i: Any, x: Any = None, v: Any = None, images: Any = None, indices: Any = None) -> Any:
    """A compute map; a RawValue for x is spliced in as raw msgpack bytes (then a RawMap)."""
    if isinstance(x, RawValue):
        head = msgpack.packb({"t": "compute", "id": i, "v": v, "images": images, "indices": indices}, use_bin_type=True)
        # 0x85 -> 0x86: one more entry, then "x" and the raw value
        assert head[0] == 0x85
        return RawMap(bytes([0x86]) + head[1:] + b"\xa1x" + x.data)
    return {"t": "compute", "id": i, "x": x, "v": v, "images": images, "indices": indices}


def configure_with_deep_value(d: dict, field: str) -> bytes:
    """The configure `d` with `field` holding a map whose value nests deeper than Python's recursion limit."""
    d = dict(d)
    d[field] = {"K": 0}
    body = msgpack.packb(d, use_bin_type=True)
    marker = msgpack.packb({"K": 0}, use_bin_type=True)
    i = body.index(marker)
    return payload_frame(body[:i] + b"\x81\xa1K" + deep_list() + body[i + len(marker):])
