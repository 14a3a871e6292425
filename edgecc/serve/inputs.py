"""Request bodies to (n, *dims) uint8 images of the model's shape (C, H, W): PNG or JPEG, raw bytes or
JSON; anything else is a clear 4xx. dims is (H, W) for a gray model, (3, H, W) for a colour one
(protocol/images.py); the paper's model takes 28 × 28 gray images.

An encoded image (PNG or JPEG) of any size and colour mode is converted to the model's: to 8-bit
gray ("L") or RGB, then resized to W × H (bilinear) when its size differs. Its header is read first,
so an image larger than MAX_SIDE pixels a side (a decompression bomb) is refused before a single
pixel is inflated. Raw bytes and JSON are the model's pixels exactly: no conversion, the shape must match.
"""

from __future__ import annotations

import io
import json

import numpy as np

from ..protocol.images import PAPER_IMAGE, dims, pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_SIDE = 8192  # pixels per side of an uploaded image, before it is resized to the model's
ENCODED = {"image/png": ("PNG", PNG_MAGIC), "image/jpeg": ("JPEG", JPEG_MAGIC)}


class BadInput(Exception):
    """The request cannot be classified; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _shape_text(image) -> str:
    c, h, w = image
    return f"{w}x{h} {'gray' if c == 1 else 'RGB'}"


def decode_image(data: bytes, image=PAPER_IMAGE, fmt: str = "PNG") -> np.ndarray:
    """One PNG or JPEG of any size and mode as the model's (*dims) uint8: converted and resized."""
    from PIL import Image, UnidentifiedImageError

    magic = dict(ENCODED.values())[fmt]
    if not data.startswith(magic):
        raise BadInput(400, f"body is not a {fmt} (bad signature)")
    c, h, w = image
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            if max(im.size) > MAX_SIDE:
                raise BadInput(422, f"{fmt} is {im.size[0]}x{im.size[1]}, more than {MAX_SIDE} pixels a side")
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except BadInput:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its pixel limit
        raise BadInput(422, f"{fmt} too large to decode: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadInput(400, f"cannot decode {fmt}: {e}") from None
    return (a if c == 1 else a.transpose(2, 0, 1)).copy()


def decode_raw(data: bytes, image=PAPER_IMAGE) -> np.ndarray:
    """n images as n·C·H·W bytes, row-major (channels first), one byte per pixel."""
    n = pixels(image)
    if not data or len(data) % n:
        raise BadInput(400, f"raw body of {len(data)} bytes is not a whole number of {n}-byte images "
                            f"(the model takes {_shape_text(image)})")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, *dims(image)).copy()


def decode_json(data: bytes, image=PAPER_IMAGE) -> np.ndarray:
    """{"images": [...]} or a bare list: each image C·H·W integers 0..255, flat or nested as (*dims)."""
    n, shape = pixels(image), dims(image)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(400, f"invalid JSON: {e}") from None
    if isinstance(doc, dict):
        if set(doc) != {"images"}:
            raise BadInput(400, 'a JSON object body must be {"images": [...]} and nothing else')
        doc = doc["images"]
    if not isinstance(doc, list) or not doc:
        raise BadInput(400, "expected a non-empty JSON array of images")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc):
        doc = [doc]  # one flat image
    out = np.empty((len(doc), n), dtype=np.uint8)
    for i, img in enumerate(doc):
        if not isinstance(img, list):
            raise BadInput(400, f"image {i}: expected an array, got {type(img).__name__}")
        flat = _flatten(img, shape)
        if flat is None:
            raise BadInput(400, f"image {i}: expected {n} values, flat or nested as {list(shape)} "
                                f"(the model takes {_shape_text(image)})")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in flat):
            raise BadInput(400, f"image {i}: pixels must be integers 0..255")
        out[i] = flat
    return out.reshape(-1, *shape)


def _flatten(img: list, shape: tuple[int, ...]) -> list | None:
    """The image's values in row-major order if it is flat with prod(shape) values or nested exactly as
    `shape`; None otherwise."""
    if len(img) == int(np.prod(shape)) and not any(isinstance(v, list) for v in img):
        return img
    if len(img) != shape[0] or len(shape) == 1 or not all(isinstance(r, list) for r in img):
        return None
    rows = [_flatten(r, shape[1:]) if len(r) == shape[1] else None for r in img]
    return None if any(r is None for r in rows) else [v for r in rows for v in r]


def decode_body(content_type: str, data: bytes, max_images: int, image=PAPER_IMAGE) -> np.ndarray:
    """Dispatch on the Content-Type; (n, *dims) uint8 with 1 <= n <= max_images."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in ENCODED:
        images = decode_image(data, image, ENCODED[ct][0])[None]
    elif ct == "application/octet-stream":
        images = decode_raw(data, image)
    elif ct == "application/json":
        images = decode_json(data, image)
    else:
        raise BadInput(415, f"unsupported Content-Type {ct or '(none)'!r}; send image/png, image/jpeg, "
                            f"application/octet-stream ({pixels(image)} bytes per image) or application/json")
    if images.shape[0] > max_images:
        raise BadInput(413, f"{images.shape[0]} images in one request, the limit is {max_images}")
    return images


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) or (3, H, W) uint8 as a gray or RGB PNG (the sample endpoint, the load generator)."""
    from PIL import Image

    a = np.ascontiguousarray(image, dtype=np.uint8)
    if a.ndim == 3:
        a = np.ascontiguousarray(a.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()
