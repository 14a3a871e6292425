"""Request bodies to (n, 28, 28) uint8 images: PNG, raw bytes or JSON; anything else is a clear 4xx.

PNGs are decoded with Pillow after checking the header's size, so a decompression bomb is refused
before a single pixel is inflated.
"""

from __future__ import annotations

import io
import json

import numpy as np

SIDE = 28
PIXELS = SIDE * SIDE
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadInput(Exception):
    """The request cannot be classified; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_png(data: bytes) -> np.ndarray:
    """One 28x28 PNG (any colour mode; converted to 8-bit grayscale) as (28, 28) uint8."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(PNG_MAGIC):
        raise BadInput(400, "body is not a PNG (bad signature)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.size != (SIDE, SIDE):
                raise BadInput(422, f"PNG is {im.size[0]}x{im.size[1]}, expected {SIDE}x{SIDE}")
            im.load()
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadInput(400, f"cannot decode PNG: {e}") from None


def decode_raw(data: bytes) -> np.ndarray:
    """n images as n*784 bytes, row-major, one byte per pixel."""
    if not data or len(data) % PIXELS:
        raise BadInput(400, f"raw body of {len(data)} bytes is not a whole number of {PIXELS}-byte images")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, SIDE, SIDE).copy()


def decode_json(data: bytes) -> np.ndarray:
    """{"images": [...]} or a bare list: each image 784 numbers or 28 rows of 28, integers 0..255."""
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
    out = np.empty((len(doc), PIXELS), dtype=np.uint8)
    for i, img in enumerate(doc):
        if not isinstance(img, list):
            raise BadInput(400, f"image {i}: expected an array, got {type(img).__name__}")
        if len(img) == SIDE and all(isinstance(r, list) for r in img):
            if any(len(r) != SIDE for r in img):
                raise BadInput(400, f"image {i}: rows must have {SIDE} pixels")
            img = [v for r in img for v in r]
        if len(img) != PIXELS:
            raise BadInput(400, f"image {i}: {len(img)} values, expected {PIXELS} or {SIDE} rows of {SIDE}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in img):
            raise BadInput(400, f"image {i}: pixels must be integers 0..255")
        out[i] = img
    return out.reshape(-1, SIDE, SIDE)


def decode_body(content_type: str, data: bytes, max_images: int) -> np.ndarray:
    """Dispatch on the Content-Type; (n, 28, 28) uint8 with 1 <= n <= max_images."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct == "image/png":
        images = decode_png(data)[None]
    elif ct == "application/octet-stream":
        images = decode_raw(data)
    elif ct == "application/json":
        images = decode_json(data)
    else:
        raise BadInput(415, f"unsupported Content-Type {ct or '(none)'!r}; send image/png, application/octet-stream "
                            f"({PIXELS} bytes per image) or application/json")
    if images.shape[0] > max_images:
        raise BadInput(413, f"{images.shape[0]} images in one request, the limit is {max_images}")
    return images


def encode_png(image: np.ndarray) -> bytes:
    """(28, 28) uint8 as a grayscale PNG (the sample endpoint, the load generator)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
