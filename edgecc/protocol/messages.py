"""Message types and their validation: a frame's map becomes a frozen dataclass or an error.

Every message is a map with "t" (its type) and the fields listed below; unknown types, missing
or unknown fields and wrong field types are RemoteProtocolErrors. Arrays stay as wire maps here and
are checked against the worker's configuration by `frames.unpack_array` where the shape is known.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .compute_spec import ComputeSpec
from .frames import RemoteProtocolError

# 2: `configure` carries a compute spec and the scheme's own parameters (1: AICC's Scheme, alpha, placement).
PROTOCOL_VERSION = 2
# Minor versions add messages an old peer can do without; each side learns the other's from the
# handshake (a worker offers caps["proto_minor"], a master sends newer messages only to workers that
# offer them). 1: `cancel` (master -> worker: skip a request whose result nobody needs). A major
# version keeps the minor numbers of the one before: minor 1 means `cancel` in version 2 as in 1.
PROTOCOL_MINOR = 1
NONCE_BYTES = 32
MAX_PARAMS = 64  # configure.params entries
MAX_TEXT = 256  # bytes of UTF-8 in a configure.params key or string value
ERROR_CODES = ("version", "auth", "bad_request", "not_configured", "busy", "limit", "internal")


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    # field name -> accepted python types after msgpack decoding; None in the tuple allows nil
    TYPES: ClassVar[dict[str, tuple]] = {}

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TYPE, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "Message":
        names = cls.TYPES.keys()  # the dataclass fields (asserted below MESSAGES)
        if len(d) - ("t" in d) != len(names) or any(n not in d for n in names):
            keys = set(d) - {"t"}
            missing, extra = sorted(set(names) - keys), sorted(map(str, keys - set(names)))
            raise RemoteProtocolError(f"{cls.TYPE}: missing fields {missing}, unknown fields {extra}")
        for name, ok in cls.TYPES.items():
            v = d[name]
            if not ((v is None and None in ok) or any(t is not None and isinstance(v, t) and not (t is int and isinstance(v, bool)) for t in ok)):
                raise RemoteProtocolError(f"{cls.TYPE}.{name}: unexpected value of type {type(v).__name__}")
        msg = cls(**{k: d[k] for k in names})
        msg.check()
        return msg

    def check(self) -> None:
        """Per-type semantic checks beyond field types."""


def version_mismatch(local: str, peer: str, peer_version: Any) -> str:
    """The one text for a protocol version mismatch, from either side: both versions and what to upgrade."""
    if isinstance(peer_version, int) and not isinstance(peer_version, bool) and peer_version > PROTOCOL_VERSION:
        fix = f"upgrade this {local} to an edgecc release that speaks protocol {peer_version}"
    else:
        fix = f"upgrade the {peer} to an edgecc release that speaks protocol {PROTOCOL_VERSION}"
    return f"this {local} speaks protocol version {PROTOCOL_VERSION}, the {peer} speaks version {peer_version!r}: {fix}"


def _nonce(name: str, v: bytes) -> None:
    if len(v) != NONCE_BYTES:
        raise RemoteProtocolError(f"{name} must be {NONCE_BYTES} bytes, got {len(v)}")


@dataclass(frozen=True)
class Hello(Message):
    """Worker -> master, first frame: version, capabilities, a fresh nonce to authenticate against."""
    TYPE = "hello"
    TYPES = {"proto": (int,), "nonce": (bytes,), "caps": (dict,), "bundle": (str, None)}
    proto: int
    nonce: bytes
    caps: dict
    bundle: str | None

    def check(self) -> None:
        _nonce("hello.nonce", self.nonce)
        # known capabilities must have their types (a master does `placement in caps["placements"]`
        # before authenticating the worker); unknown capabilities are ignored
        for key, ok in (("placements", _str_list), ("wire_dtypes", _str_list), ("torch", _is_bool),
                        ("max_frame", _count), ("max_batch", _count), ("max_in_flight", _count), ("proto_minor", _count),
                        ("computes", _str_list)):
            if key in self.caps and not ok(self.caps[key]):
                raise RemoteProtocolError(f"hello.caps.{key}: unexpected value of type {type(self.caps[key]).__name__}")
        if "dataset" in self.caps:
            _check_dataset_cap(self.caps["dataset"])
        if "base" in self.caps:
            _check_base_cap(self.caps["base"])


# -- hello.caps.dataset: the images a worker holds (Remark 1's shared dataset) -----------------------
DATASET_CAP_KEYS = ("name", "images", "shape", "digest")
DIGEST_HEX = 64  # SHA-256, lowercase hex


def dataset_digest(images: Any) -> str:
    """Lowercase hex SHA-256 of a dataset's uint8 images as they lie in memory, C order (n, C, H, W):
    what a worker announces in `hello.caps.dataset.digest` and a master compares with its own copy's.
    `images` must be C-contiguous (numpy.ascontiguousarray); reshaping it does not change the digest."""
    import hashlib

    return hashlib.sha256(memoryview(images).cast("B")).hexdigest()


def dataset_cap(name: str, images: Any) -> dict[str, Any]:
    """`hello.caps.dataset` for uint8 `images` (n, C, H, W) read from the source `name`: the name (for
    messages; at most MAX_TEXT bytes), the number of images, one image's (C, H, W) and the digest."""
    n, *shape = images.shape
    short = name if _utf8_len(name) <= MAX_TEXT else name.encode("utf-8", "surrogatepass")[:MAX_TEXT].decode("utf-8", "ignore")
    return {"name": short, "images": int(n), "shape": [int(d) for d in shape], "digest": dataset_digest(images)}


def _check_dataset_cap(v: Any) -> None:
    ok = (isinstance(v, dict) and set(v) == set(DATASET_CAP_KEYS) and isinstance(v["name"], str)
          and _utf8_len(v["name"]) <= MAX_TEXT and _count(v["images"]) and isinstance(v["shape"], list)
          and len(v["shape"]) == 3 and all(_count(d) and d >= 1 for d in v["shape"]) and _is_digest(v["digest"]))
    if not ok:
        raise RemoteProtocolError("hello.caps.dataset must be a map of name (str), images (uint), shape ([C, H, W] "
                                  "uints) and digest (64 lowercase hex digits)")


# -- hello.caps.base: the worker's own base model (`edgecc worker --base module:callable`) ---------------
BASE_CAP_KEYS = ("name", "in_shape", "classes", "digest")
MAX_CLASSES = 4096  # as a compute spec's `out`


def base_cap(name: str, in_shape: Any, classes: int, digest: str) -> dict[str, Any]:
    """`hello.caps.base` of a base model loaded from `name` (its spec without directories; at most MAX_TEXT
    bytes): one image's in_shape, [H, W] or [3, H, W], the logits per image, and the SHA-256 of its weights."""
    short = name if _utf8_len(name) <= MAX_TEXT else name.encode("utf-8", "surrogatepass")[:MAX_TEXT].decode("utf-8", "ignore")
    return {"name": short, "in_shape": [int(d) for d in in_shape], "classes": int(classes), "digest": digest}


def _check_base_cap(v: Any) -> None:
    ok = (isinstance(v, dict) and set(v) == set(BASE_CAP_KEYS) and isinstance(v["name"], str)
          and _utf8_len(v["name"]) <= MAX_TEXT and isinstance(v["in_shape"], list)
          and (len(v["in_shape"]) == 2 or (len(v["in_shape"]) == 3 and v["in_shape"][0] == 3))
          and all(_count(d) and 1 <= d <= 4096 for d in v["in_shape"]) and _count(v["classes"])
          and 1 <= v["classes"] <= MAX_CLASSES and _is_digest(v["digest"]))
    if not ok:
        raise RemoteProtocolError("hello.caps.base must be a map of name (str), in_shape ([H, W] or [3, H, W] uints), "
                                  f"classes (1..{MAX_CLASSES}) and digest (64 lowercase hex digits)")


def _is_digest(v: Any) -> bool:
    return isinstance(v, str) and len(v) == DIGEST_HEX and all(c in "0123456789abcdef" for c in v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class Auth(Message):
    """Master -> worker: HMAC over both nonces proves the master holds the token."""
    TYPE = "auth"
    TYPES = {"proto": (int,), "nonce": (bytes,), "mac": (bytes,)}
    proto: int
    nonce: bytes
    mac: bytes

    def check(self) -> None:
        _nonce("auth.nonce", self.nonce)


@dataclass(frozen=True)
class Welcome(Message):
    """Worker -> master: the worker's own HMAC, so the master knows it talks to a real worker."""
    TYPE = "welcome"
    TYPES = {"mac": (bytes,)}
    mac: bytes


@dataclass(frozen=True)
class Configure(Message):
    """Master -> worker: this worker's role. `compute` is the compute spec (protocol/compute_spec.py):
    what the worker runs and what each request carries; `scheme` and `params` name the scheme and its
    own parameters for this worker (α_n, K, ...), which the worker logs but never computes from.
    `arrays` may be nil when the worker holds `digest`. `dataset` (aicc-shared only) names the images
    that `compute.indices` index: the digest the worker announced in `hello.caps.dataset` (or, from
    masters of before that, one of the built-in names "sample", "test", "train")."""
    TYPE = "configure"
    TYPES = {"index": (int,), "scheme": (str,), "params": (dict,), "compute": (dict,), "wire_dtype": (str,),
             "digest": (str,), "arrays": (dict, None), "dataset": (str, None)}
    index: int
    scheme: str
    params: dict
    compute: dict
    wire_dtype: str
    digest: str
    arrays: dict | None
    dataset: str | None

    def check(self) -> None:
        if self.index < 0:
            raise RemoteProtocolError(f"configure.index must be >= 0, got {self.index}")
        if not 1 <= _utf8_len(self.scheme) <= 64:
            raise RemoteProtocolError("configure.scheme must be a name of 1 to 64 bytes (UTF-8)")
        if len(self.params) > MAX_PARAMS or not all(_utf8_len(k) <= MAX_TEXT and _param(v) for k, v in self.params.items()):
            raise RemoteProtocolError(f"configure.params: at most {MAX_PARAMS} entries, each key a string of at most "
                                      f"{MAX_TEXT} bytes and each value a number, string (at most {MAX_TEXT} bytes), "
                                      "boolean, nil or a list of at most 256 of those")
        spec = self.spec()
        if self.wire_dtype not in ("f4", "f2"):
            raise RemoteProtocolError(f"configure.wire_dtype must be 'f4' or 'f2', got {self.wire_dtype!r}")
        if self.dataset is not None and spec.kind != "aicc-shared":
            raise RemoteProtocolError(f"configure.dataset is for the 'aicc-shared' compute only, not {spec.kind!r}")
        if spec.kind == "user" and self.arrays:
            raise RemoteProtocolError("configure.arrays must be nil for the 'user' compute: the worker holds its base")
        if self.dataset is not None and not 1 <= _utf8_len(self.dataset) <= DIGEST_HEX:
            raise RemoteProtocolError(f"configure.dataset must be a digest or a name of 1 to {DIGEST_HEX} bytes")

    def spec(self) -> ComputeSpec:
        return ComputeSpec.from_wire(self.compute)


def _utf8_len(s: str) -> int:
    """The length §4 counts for a string: its UTF-8 bytes, as the msgpack str header carries them."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) and not (isinstance(v, str) and _utf8_len(v) > MAX_TEXT)


def _param(v: Any) -> bool:
    return _scalar(v) or (isinstance(v, list) and len(v) <= 256 and all(_scalar(x) for x in v))


@dataclass(frozen=True)
class Configured(Message):
    TYPE = "configured"
    TYPES = {"digest": (str,)}
    digest: str


@dataclass(frozen=True)
class Compute(Message):
    """Master -> worker: one request of B groups. Exactly the inputs the configured compute spec names
    are set (compute_spec.ComputeSpec.inputs): x (B, *in_shape) [+ v (B, P+1, *in_shape) for affine-hs],
    or, for aicc-shared, images (B, K, 28, 28) u1 or indices (B, K) i4."""
    TYPE = "compute"
    TYPES = {"id": (int,), "x": (dict, None), "v": (dict, None), "images": (dict, None), "indices": (dict, None)}
    id: int
    x: dict | None
    v: dict | None
    images: dict | None
    indices: dict | None

    def check(self) -> None:
        if not 0 <= self.id < 2**63:
            raise RemoteProtocolError(f"compute.id out of range: {self.id}")


@dataclass(frozen=True)
class Cancel(Message):
    """Master -> worker (minor version 1): request `id` is decoded or failed; skip it if it has not
    run yet, and send no result. Unknown or finished ids are ignored: a cancel races the result."""
    TYPE = "cancel"
    TYPES = {"id": (int,)}
    id: int

    def check(self) -> None:
        if not 0 <= self.id < 2**63:
            raise RemoteProtocolError(f"cancel.id out of range: {self.id}")


@dataclass(frozen=True)
class Result(Message):
    """Worker -> master: y (B, 10) = H(E(α_n)) for the request `id`."""
    TYPE = "result"
    TYPES = {"id": (int,), "y": (dict,)}
    id: int
    y: dict


@dataclass(frozen=True)
class Error(Message):
    """Either way: `id` names the failed request, or nil for a connection-level error (then close)."""
    TYPE = "error"
    TYPES = {"code": (str,), "message": (str,), "id": (int, None)}
    code: str
    message: str
    id: int | None

    def check(self) -> None:
        if self.code not in ERROR_CODES:
            raise RemoteProtocolError(f"error.code {self.code!r} is not one of {ERROR_CODES}")


@dataclass(frozen=True)
class Ping(Message):
    TYPE = "ping"
    TYPES = {"seq": (int,)}
    seq: int


@dataclass(frozen=True)
class Pong(Message):
    TYPE = "pong"
    TYPES = {"seq": (int,)}
    seq: int


MESSAGES: dict[str, type[Message]] = {m.TYPE: m for m in (Hello, Auth, Welcome, Configure, Configured, Compute, Cancel, Result, Error, Ping, Pong)}
assert all(list(m.TYPES) == [f.name for f in fields(m)] for m in MESSAGES.values()), "TYPES must list each message's fields"


def parse(d: dict[str, Any]) -> Message:
    t = d.get("t")
    if not isinstance(t, str) or t not in MESSAGES:
        raise RemoteProtocolError(f"unknown message type {t!r}")
    return MESSAGES[t].from_wire(d)
