"""Model files: one safetensors file holding the weights and, in its metadata, the config as JSON.

No pickle anywhere: safetensors stores raw tensors, the metadata is plain strings. The same file is
readable from torch (`load_model`) and from numpy alone (`read_arrays`), so torch-free workers can
open what training wrote. Writes are atomic (temp file + os.replace).

Storage: float32; float16 (halves the file); or "q8" for checkpoints that must fit a repository's file
limit: every weight matrix as int8 with one float32 scale per output row (`NAME#scale`), the rest float16.
Whatever is stored, loading gives float32, so a file evaluates the same wherever it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFileError
from .fileio import atomic_write  # noqa: F401  (re-exported: callers import it from here)

FORMAT = "edgecc-model"
VERSION = 1
KINDS = ("aicc", "centralized-mlp", "centralized-cnn", "centralized-resnet18", "learned-code", "poly-mlp")
STORAGES = ("f32", "f16", "q8")
SCALE = "#scale"  # suffix of the per-row float32 scales of an int8 ("q8") tensor


# Models shipped in the package, by name: the default AICC model (Table 2's CNN+CNN H_B cell) and the
# centralized MLP that the uncoded / replication comparators' workers run; the light master's quadratic MLP.
SHIPPED = {"default": "default-k2-cnn-cnn-hb.safetensors", "default-mlp": "centralized-mlp.safetensors",
           "learned-code": "learned-code-conv.safetensors",  # Table 2's [10] with the conv parity encoder (1 MB)
           "poly-mlp": "poly-mlp.safetensors"}  # the light master's (ours): benchmarks/light_master_poly.py (1.6 MB)


def resolve(name: str | os.PathLike) -> Path:
    """A shipped model's name ('default', 'default-mlp', 'learned-code', 'poly-mlp') or a path."""
    if str(name) in SHIPPED:
        from importlib import resources

        return Path(str(resources.files("edgecc.assets").joinpath(SHIPPED[str(name)])))
    return Path(name)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a model file (kind, scheme, training, metrics), validated."""
    from safetensors import safe_open

    path = resolve(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except Exception as e:  # safetensors raises its own error types for garbage
        raise ModelFileError(f"{path}: not a valid safetensors model file ({e})") from None
    return _parse_meta(meta, path)


def _parse_meta(meta: dict[str, str], path: Any) -> dict[str, Any]:
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an edgecc model file (format {meta.get('format')!r})")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise ModelFileError(f"{path}: unreadable format version {meta.get('version')!r}") from None
    if version != VERSION:
        raise ModelFileError(f"{path}: model file version {version} is not supported (this edgecc reads {VERSION})")
    try:
        info = json.loads(meta["info"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        raise ModelFileError(f"{path}: unknown model kind {info.get('kind') if isinstance(info, dict) else info!r}")
    return info


def read_arrays(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, {name: float32 array}) using numpy only."""
    from safetensors.numpy import load_file

    path = resolve(path)
    info = read_header(path)
    try:
        arrays = load_file(str(path))
    except Exception as e:
        raise ModelFileError(f"{path}: corrupt tensor data ({e})") from None
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if name.endswith(SCALE):
            if name[: -len(SCALE)] not in arrays or arrays[name[: -len(SCALE)]].dtype != np.int8:
                raise ModelFileError(f"{path}: scale {name} belongs to no int8 tensor")
            continue
        if a.dtype == np.int8:
            a = _dequantize(path, name, a, arrays.get(name + SCALE))
        elif a.dtype not in (np.float32, np.float16):
            raise ModelFileError(f"{path}: tensor {name} has dtype {a.dtype}; model files hold float32, float16 "
                                 "or int8 with per-row scales")
        if not np.all(np.isfinite(a)):
            raise ModelFileError(f"{path}: tensor {name} contains NaN or Inf")
        out[name] = a.astype(np.float32, copy=False)
    return info, out



def _dequantize(path: Any, name: str, q: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    if q.ndim < 2 or scale is None or scale.dtype != np.float32 or scale.shape != (q.shape[0],):
        raise ModelFileError(f"{path}: int8 tensor {name} needs a float32 scale {name}{SCALE} with one value per row")
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise ModelFileError(f"{path}: scale {name}{SCALE} holds negative, NaN or Inf values")
    return q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1))


def _quantize(w):
    """int8 per output row, symmetric: w ≈ q * scale with |q| <= 127 (max error scale/2 per weight)."""
    import torch

    rows = w.reshape(w.shape[0], -1)
    scale = rows.abs().amax(dim=1) / 127
    q = torch.round(rows / torch.where(scale > 0, scale, 1)[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale.float()


def save_model(path: str | os.PathLike, model, info: dict[str, Any], storage: str = "f32") -> None:
    """Write `model`'s weights and `info` (must contain 'kind'; JSON-serialisable) atomically.

    storage "f16" halves the file (committed checkpoints of the 30-60 MB MLP-encoder cells), "q8" quarters
    it (the one cell over the repository's 20 MB limit even in float16); loading always gives float32."""
    from safetensors.torch import save

    if info.get("kind") not in KINDS:
        raise ModelFileError(f"unknown model kind {info.get('kind')!r}")
    if storage not in STORAGES:
        raise ModelFileError(f"storage must be one of {STORAGES}, got {storage!r}")
    import torch

    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().cpu()
        if storage == "q8" and v.ndim >= 2 and v.numel() >= 4096:
            tensors[k], tensors[k + SCALE] = _quantize(v)
        else:
            tensors[k] = v.to(torch.float32 if storage == "f32" else torch.float16)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "version": str(VERSION), "info": json.dumps(info, sort_keys=True)}
    atomic_write(path, canonical_bytes(save(tensors, metadata=meta)))


def canonical_bytes(blob: bytes) -> bytes:
    """A safetensors file with its JSON header rewritten in one fixed form (keys sorted, no spaces).

    safetensors writes the metadata keys in a per-process hash order, so the same weights and info saved
    twice gave different bytes: a finished run that was saved again no longer matched the content id a
    run started from it had recorded, and a committed model changed on every re-save. The tensor data
    is untouched (offsets count from the end of the header, so its length may change freely)."""
    if len(blob) < 8:
        raise ModelFileError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ModelFileError(f"not a safetensors file: header length {n} runs past the end ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"not a safetensors file: unreadable header ({e})") from None
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces, so the data stays aligned
    return struct.pack("<Q", len(text)) + text + blob[8 + n :]


def content_id(path: str | os.PathLike) -> str:
    """A model file by its content (weights and info), not its name or the order its header was written
    in: what a run started from a file records, and what resuming that run compares."""
    path = resolve(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    return "sha256:" + hashlib.sha256(canonical_bytes(blob)).hexdigest()[:16]


def build_model(info: dict[str, Any]):
    """An untrained torch module of the kind, scheme and image shape `info` describes (files that predate
    `image` and `classes` hold the paper's 1×28×28 images and 10 classes)."""
    from .coding.schemes import SYSTEMATIC, Scheme
    from .nets import AICC, CentralizedCNN, CentralizedMLP
    from .protocol.images import model_classes, model_image

    kind = info["kind"]
    try:
        image, classes = model_image(info), model_classes(info)
    except ValueError as e:
        raise ModelFileError(str(e)) from None
    if kind == "aicc":
        scheme = Scheme.from_dict(info["scheme"])  # validates the scheme's own points, where it records them
        if scheme.encoder == SYSTEMATIC:  # ours, not the paper's: a centralized CNN's features, Lagrange-coded
            from .nets.systematic import SystematicAICC

            return SystematicAICC(scheme, image, classes)
        return AICC(scheme, image, classes)
    if kind == "learned-code":
        from .nets.learned_code import LearnedCode

        code = info.get("code", {})
        if code.get("arch") not in ("mlp", "cl") or not isinstance(code.get("k"), int) or code["k"] < 1:
            raise ModelFileError(f"learned-code model needs code.arch in (mlp, cl) and an integer code.k, got {code!r}")
        return LearnedCode(code["arch"], code["k"], CentralizedMLP(image, classes), image, classes)
    if kind == "poly-mlp":
        from .nets.poly_mlp import PolyMLP

        hidden = info.get("hidden")
        if (not isinstance(hidden, list) or not 1 <= len(hidden) <= 7
                or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 1 << 16 for h in hidden)):
            raise ModelFileError(f"poly-mlp model needs hidden: a list of 1 to 7 layer widths, got {hidden!r}")
        return PolyMLP(image, classes, hidden)
    if kind == "centralized-resnet18":
        from .nets.resnet import ResNet18

        return ResNet18(image, classes)
    return CentralizedMLP(image, classes) if kind == "centralized-mlp" else CentralizedCNN(image=image, classes=classes)


def load_model(path: str | os.PathLike):
    """(torch module in eval mode, info). Shapes are checked against the declared config."""
    import torch

    path = resolve(path)
    info, arrays = read_arrays(path)
    model = build_model(info)
    state = model.state_dict()
    if set(arrays) != set(state):
        missing, extra = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
        raise ModelFileError(f"{path}: weights do not match the declared model (missing {missing[:3]}, extra {extra[:3]})")
    for name, a in arrays.items():
        if tuple(a.shape) != tuple(state[name].shape):
            raise ModelFileError(f"{path}: {name} has shape {a.shape}, the model needs {tuple(state[name].shape)}")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    return model.eval(), info
