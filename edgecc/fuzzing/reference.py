"""The reference every decoded request is checked against: a tiny deterministic AICC model and its
in-process logits (the fuzzers and the soak compare what the master decodes with these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_model(path: Path, K: int = 2, G: int = 1, seed: int = 1):
    """An untrained, deterministic AICC model file (as tests/conftest.py tiny_models), loaded back."""
    import torch

    from edgecc.coding.schemes import Scheme
    from edgecc.modelfile import load_model, save_model
    from edgecc.nets import AICC

    s = Scheme(K=K, G=G)
    torch.manual_seed(seed)
    save_model(path, AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    return load_model(path)


def direct_logits(model, groups: np.ndarray) -> np.ndarray:
    """In-process (B, K, 10) logits for groups (B, K, 28, 28) uint8."""
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(groups.astype(np.float32) / 255.0)).numpy()


def compare(got: np.ndarray, want: np.ndarray) -> tuple[str, float]:
    """("correct" | "wrong" | "prediction_mismatch", max abs error) of decoded vs in-process logits.
    Predictions are compared where the top two logits are clearly apart (exact near-ties may flip)."""
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * scale):
        return "wrong", err
    top2 = np.sort(want, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4 * scale
    if (got.argmax(-1) != want.argmax(-1))[clear].any():
        return "prediction_mismatch", err
    return "correct", err
