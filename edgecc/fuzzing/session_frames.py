"""The worker fuzzer's in-session frames: each mutated frame with the reply the protocol prescribes for it."""

from __future__ import annotations

import random
import secrets
from typing import Any

import msgpack
import numpy as np

from ..bundle import digest as array_digest
from ..protocol import auth
from ..protocol.frames import encode_frame, pack_array
from ..protocol.messages import PROTOCOL_VERSION, Auth, Compute, Configured, Error, Hello, Ping, Pong, Result, Welcome
from . import payloads
from .payloads import RawValue, compute, configure_with_deep_value, deep_list, flip, payload_frame, random_msgpack, raw_frame, rng_array, special_payloads


class SessionFrames:
    """Mixed into WorkerFuzzer: the frames of an authenticated session and the reply each must get (§7, §8)."""

    # -- sessions: a correct handshake + configure, then many mutated frames --
    def session_frame(self, wire_dtype: str, configured: bool, used: set[int] | None = None) -> tuple[str, bytes, tuple]:
        """(case, frame, expectation). Expectation: ("id", id, allowed kinds, x or None) | ("nil",) |
        ("pong", seq) | ("configured",) | ("any",). `used`: the edge ids this session sent already."""
        rng = self.rng
        B = rng.choice([1, 1, 2, 3, 8, 17])
        x = rng_array(rng, (B, 28, 28))
        ok_kinds = {"result", "busy"} if configured else {"not_configured"}
        bad_kinds = {"bad_request", "busy"} if configured else {"not_configured"}
        r = rng.random()
        if r < 0.16:  # valid compute (f4 or f2 input); sometimes an edge id
            dt = rng.choice(["f4", "f4", "f2"])
            xs = x.astype(np.float16).astype(np.float32) if dt == "f2" else x
            # each edge id once per session: a second request with it would be a duplicate (§7.3) whenever
            # the first is still held, e.g. behind a configure (§7.2), and get bad_request
            edge = [j for j in (0, 2**63 - 1) if used is None or j not in used]
            i = rng.choice([self.new_id()] * 8 + edge)
            if used is not None:
                used.add(i)
            return f"compute_valid_{dt}", encode_frame(Compute(i, pack_array(xs, dt), None, None, None).to_wire()), ("id", i, ok_kinds, xs)
        if r < 0.40:  # structurally invalid array for a valid message
            i = self.new_id()
            name, arr = self.bad_array(rng, x)
            if name == "deep_dtype":  # refused whole at the frame layer (nesting limit): no id to answer with
                return f"compute_{name}", raw_frame(compute(i, x=arr)), ("nil",)
            return f"compute_{name}", raw_frame(compute(i, x=arr)), ("id", i, bad_kinds, None)
        if r < 0.46:  # wrong fields for the placement (still a valid message)
            i = self.new_id()
            name, kw = rng.choice([("v_for_hb", {"x": pack_array(x), "v": pack_array(np.stack([x, x], 1))}),
                                   ("images", {"x": pack_array(x), "images": pack_array((x * 255).astype(np.uint8)[:, None], "u1")}),
                                   ("indices", {"x": pack_array(x), "indices": pack_array(np.zeros((B, 2)), "i4")}),
                                   ("x_nil", {}),
                                   ("only_images", {"images": pack_array((x * 255).astype(np.uint8)[:, None].repeat(2, 1), "u1")})])
            return f"compute_{name}", raw_frame(compute(i, **kw)), ("id", i, bad_kinds, None)
        if r < 0.56:  # invalid message: bad id, wrong field types, unknown or missing fields
            d = compute(rng.randrange(2**32), x=pack_array(x))
            name = rng.choice(["id_negative", "id_2^63", "id_2^64-1", "id_bool", "id_float", "id_str", "id_nil", "x_list", "x_bin",
                               "x_int", "unknown_field", "missing_field", "t_unknown", "t_missing", "t_int"])
            if name == "id_negative":
                d["id"] = -rng.randint(1, 2**63)
            elif name == "id_2^63":
                d["id"] = 2**63
            elif name == "id_2^64-1":
                d["id"] = 2**64 - 1
            elif name == "id_bool":
                d["id"] = True
            elif name == "id_float":
                d["id"] = 3.0
            elif name == "id_str":
                d["id"] = "7"
            elif name == "id_nil":
                d["id"] = None
            elif name == "x_list":
                d["x"] = [1, 2]
            elif name == "x_bin":
                d["x"] = b"\x00" * 16
            elif name == "x_int":
                d["x"] = 5
            elif name == "unknown_field":
                d[rng.choice(["extra", "ID", "", "y"])] = rng.choice([0, None, "x"])
            elif name == "missing_field":
                del d[rng.choice(["id", "x", "v", "images", "indices"])]
            elif name == "t_unknown":
                d["t"] = rng.choice(["computee", "", "COMPUTE", "shutdown", "result "])
            elif name == "t_missing":
                del d["t"]
            else:
                d["t"] = 3
            return f"msg_{name}", raw_frame(d), ("nil",)
        if r < 0.62:  # message types a master may not send
            msg = rng.choice([Hello(PROTOCOL_VERSION, auth.new_nonce(), {}, None), Auth(PROTOCOL_VERSION, auth.new_nonce(), b"\x00" * 32), Welcome(b"\x00" * 32),
                              Configured(self.digest), Result(1, pack_array(np.zeros((1, 10)))), Error("internal", "x", 3),
                              Error("busy", "x", None), Pong(4)])
            return f"type_{msg.TYPE}", encode_frame(msg.to_wire()), ("nil",)
        if r < 0.68:  # invalid payloads (§4)
            name, p = rng.choice(special_payloads(rng))
            if name == "duplicate_key":  # §4.7: the receiver keeps the last value, so this is ping {seq: 2}
                return f"payload_{name}", payload_frame(p), ("pong", 2)
            return f"payload_{name}", payload_frame(p), ("nil",)
        if r < 0.72:
            return "random_msgpack", raw_frame(random_msgpack(rng)), ("any",)
        if r < 0.78:
            seq = rng.choice([0, 1, -1, 2**63 - 1, -2**63, 2**64 - 1, rng.randrange(2**32)])
            return "ping", encode_frame(Ping(seq).to_wire()), ("pong", seq)
        if r < 0.84:  # configure: refused ones must leave the configuration as it was
            if configured and rng.random() < 0.15:  # (not in an unconfigured session: it would configure it)
                return "configure_same", self.configure_frame(wire_dtype), ("configured",)
            name, frame, exp = self.bad_configure(rng, wire_dtype)
            return f"configure_{name}", frame, exp
        if r < 0.86:
            seq = rng.randrange(2**32)
            return "error_bad_code", raw_frame({"t": "error", "code": "nope", "message": "", "id": seq}), ("nil",)
        # byte flips of a valid compute/ping payload (length prefix kept right): anything but a crash
        base = encode_frame(rng.choice([Compute(rng.randrange(2**32), pack_array(x[:1]), None, None, None),
                                        Ping(rng.randrange(2**16))]).to_wire())
        return "flip", payload_frame(flip(base[4:], rng)), ("any",)

    def bad_array(self, rng: random.Random, x: np.ndarray) -> tuple[str, Any]:
        B = x.shape[0]
        a = pack_array(x)
        a["data"] = bytes(a["data"])
        name = rng.choice(["shape_27", "shape_784", "shape_2d", "shape_4d", "shape_scalar", "dtype_f8", "dtype_u1", "dtype_i4",
                           "dtype_unknown", "dtype_int", "dtype_nil", "short_data", "long_data", "data_str", "nan", "inf", "f2_nan",
                           "f2_inf", "batch_0", "shape_negative", "shape_bool", "shape_float", "shape_str", "shape_nested",
                           "shape_huge", "shape_2^64", "shape_33d", "extra_key", "missing_key", "not_map_keys",
                           "batch_over_max"] + (["deep_dtype"] if payloads.DEEP else []))
        if name == "shape_27":
            a["shape"], a["data"] = [B, 28, 27], a["data"][:B * 28 * 27 * 4]
        elif name == "shape_784":
            a["shape"] = [B, 784]
        elif name == "shape_2d":
            a["shape"], a["data"] = [28, 28], a["data"][:784 * 4]
        elif name == "shape_4d":
            a["shape"] = [B, 28, 28, 1]
        elif name == "shape_scalar":
            a["shape"], a["data"] = [], a["data"][:4]
        elif name in ("dtype_f8", "dtype_u1", "dtype_i4"):
            dt = name[-2:]
            a = pack_array(x if dt == "f8" else (x * 100), dt)
        elif name == "dtype_unknown":
            a["dtype"] = rng.choice(["f16", "float32", "", "<f4", "F4", "f4 "])
        elif name == "dtype_int":
            a["dtype"] = 4
        elif name == "dtype_nil":
            a["dtype"] = None
        elif name == "short_data":
            a["data"] = a["data"][:-rng.randint(1, 8)]
        elif name == "long_data":
            a["data"] = a["data"] + rng.randbytes(rng.randint(1, 8))
        elif name == "data_str":
            a["data"] = "abcd" * (B * 784)
        elif name in ("nan", "inf"):
            y = x.copy()
            y.flat[rng.randrange(y.size)] = np.nan if name == "nan" else rng.choice([np.inf, -np.inf])
            a = pack_array(y)
        elif name in ("f2_nan", "f2_inf"):
            y = x.astype(np.float16)
            y.flat[rng.randrange(y.size)] = np.nan if name == "f2_nan" else np.inf
            a = pack_array(y, "f2")
        elif name == "batch_0":
            a["shape"], a["data"] = [0, 28, 28], b""
        elif name == "shape_negative":
            a["shape"] = [-B, 28, 28]
        elif name == "shape_bool":
            a["shape"] = [True, 28, 28] if B == 1 else [B, 28, True]
        elif name == "shape_float":
            a["shape"] = [float(B), 28, 28]
        elif name == "shape_str":
            a["shape"] = "B,28,28"
        elif name == "shape_nested":
            a["shape"] = [[B], 28, 28]
        elif name == "shape_huge":
            a["shape"] = [rng.choice([2**31, 2**40, 2**62]), 28, 28]
        elif name == "shape_2^64":
            a["shape"] = [2**64 - 1, 28, 28]
        elif name == "shape_33d":
            a["shape"] = [1] * 33
        elif name == "extra_key":
            a["order"] = "C"
        elif name == "missing_key":
            del a[rng.choice(["dtype", "shape", "data"])]
        elif name == "not_map_keys":
            a = {"dtype": "f4", "shape": [B, 28, 28], "data": a["data"], "dtype ": "f4"}
        elif name == "deep_dtype":  # a value whose repr overflows Python's recursion limit
            return name, RawValue(b"\x83\xa5dtype" + deep_list() + b"\xa5shape\x93" + msgpack.packb(B) + b"\x1c\x1c\xa4data"
                                   + msgpack.packb(a["data"], use_bin_type=True))
        elif name == "batch_over_max":
            if rng.random() < self.huge_batch_prob * 30:  # real data: (max_batch + 1) groups = 12.8 MB by default
                big = np.zeros((self.max_batch + 1, 28, 28), np.float32)
                return name, pack_array(big)
            a["shape"], name = [self.max_batch + 1, 28, 28], "batch_over_max_claimed"
        return name, a

    def bad_configure(self, rng: random.Random, wire_dtype: str) -> tuple[str, bytes, tuple]:
        base = self.configure_message(wire_dtype).to_wire()
        name = rng.choice(["wrong_digest", "nan_array", "wrong_shape", "missing_array", "extra_array_bad_digest", "spec_unknown_key",
                           "spec_bad_out", "spec_bad_in_shape", "spec_hs_without_P", "spec_shared_hb_P2", "spec_not_map", "kind_bad",
                           "kind_mlp", "kind_shared", "kind_cnn_wrong_shape", "params_nested", "params_too_many", "scheme_empty",
                           "index_negative", "wire_f8", "arrays_nil", "dataset_path", "dataset_not_shared", "array_f8",
                           "array_too_many_elements", "digest_not_hex"] + (["deep_compute"] if payloads.DEEP else []))
        d = dict(base)
        arrays = dict(self.wire_arrays)
        spec = base["compute"]
        shared = {"kind": "aicc-shared", "in_shape": [28, 28], "out": 10, "K": 2, "G": 1, "P": 1, "computation": "hb",
                  "encoder": "cl", "compute_arch": "cl", "alpha": 0.5}
        exp: tuple = ("nil",)
        if name == "wrong_digest":
            d["digest"] = secrets.token_hex(32)
        elif name == "nan_array":
            A = self.A.copy()
            A[0, 0] = np.nan
            arrays["affine.weight"] = pack_array(A)
            d["arrays"], d["digest"] = arrays, array_digest({"affine.weight": A, "affine.bias": self.b})
        elif name == "wrong_shape":
            A = self.A[:, :700].copy()
            arrays["affine.weight"] = pack_array(A)
            d["arrays"], d["digest"] = arrays, array_digest({"affine.weight": A, "affine.bias": self.b})
        elif name == "missing_array":
            d["arrays"], d["digest"] = {"affine.bias": arrays["affine.bias"]}, array_digest({"affine.bias": self.b})
        elif name == "extra_array_bad_digest":
            arrays["zzz"] = pack_array(np.zeros(3))
            d["arrays"] = arrays
        elif name == "spec_unknown_key":
            d["compute"] = {**spec, "Q": 1}
        elif name == "spec_bad_out":
            d["compute"] = {**spec, "out": rng.choice([0, -1, "10", True, None, 10.0, 11])}
        elif name == "spec_bad_in_shape":  # invalid, or valid but not the affine map's 784 columns
            d["compute"] = {**spec, "in_shape": rng.choice([[], [0], [28, 27], [5000], [1, 1, 1, 1], "28x28", [28, -28]])}
        elif name == "spec_hs_without_P":
            d["compute"] = {**spec, "kind": "affine-hs"}
        elif name == "spec_shared_hb_P2":
            d["compute"] = {**shared, "P": 2}
        elif name == "spec_not_map":
            d["compute"] = rng.choice([[2, 1], "affine", None, 7])
        elif name == "kind_bad":
            d["compute"] = {**spec, "kind": rng.choice(["everywhere", "", "AFFINE", 1])}
        elif name == "kind_mlp":  # the MLP needs mlp.* arrays: refused
            d["compute"] = {"kind": "mlp", "in_shape": [28, 28], "hidden": [200, 100], "out": 10}
        elif name == "kind_shared":  # needs model.* weights (and torch): refused
            d["compute"] = shared
        elif name == "kind_cnn_wrong_shape":
            d["compute"] = {"kind": "cnn", "in_shape": [32, 32], "out": 10}
        elif name == "params_nested":
            d["params"] = {"alpha": {"deep": [1, {"x": 2}]}}
        elif name == "params_too_many":
            d["params"] = {f"p{i}": i for i in range(65)}
        elif name == "scheme_empty":
            d["scheme"] = rng.choice(["", "x" * 65])
        elif name == "index_negative":
            d["index"] = -1
        elif name == "wire_f8":
            d["wire_dtype"] = "f8"
        elif name == "arrays_nil":  # no bundle on this worker: refused
            d["arrays"] = None
        elif name == "dataset_path":
            d["dataset"] = rng.choice(["/etc/passwd", "../sample", "sample\x00"])
            d["compute"] = shared
        elif name == "dataset_not_shared":
            d["dataset"] = "sample"
        elif name == "array_f8":
            arrays["affine.bias"] = pack_array(self.b, "f8")
            d["arrays"] = arrays
        elif name == "array_too_many_elements":
            arrays["affine.bias"] = {"dtype": "f4", "shape": [2**25 + 1], "data": b""}
            d["arrays"] = arrays
        elif name == "deep_compute":  # a value whose repr overflows the recursion limit
            frame = configure_with_deep_value(d, "compute")
            return name, frame, exp
        else:
            d["digest"] = "Z" * 64
        return name, raw_frame(d), exp

