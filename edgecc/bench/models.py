"""The models the benchmark times (shipped or untrained stand-ins: timing does not depend on the weights)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


# -- models -------------------------------------------------------------------------------------
def _save_load(model, info: dict[str, Any], tmp: Path, name: str):
    from ..modelfile import load_model, save_model

    path = tmp / f"{name}.safetensors"
    save_model(path, model, info)
    return load_model(path)


def load_bench_models(tmp: Path, keys: tuple[str, ...] = ("cnn", "mlp", "hs")) -> dict[str, dict[str, Any]]:
    """'cnn': the shipped default model, or an untrained K=2 G=1 CNN+CNN H_B when it is not there yet;
    'mlp': an untrained K=2 G=1 MLP+MLP H_B (timing does not depend on the weights); 'hs': an untrained
    K=2 G=1 P=1 CNN+CNN H_S (worker cost only)."""
    import torch

    from ..coding.schemes import Scheme
    from ..modelfile import load_model, resolve
    from ..nets import AICC

    out: dict[str, dict[str, Any]] = {}
    if "cnn" in keys:
        try:
            model, info = load_model("default")
            out["cnn"] = {"model": model, "info": info, "source": f"shipped default ({resolve('default').name})"}
        except Exception as e:  # not trained yet (ModelFileError) or unreadable
            torch.manual_seed(0)
            s = Scheme(K=2, G=1)
            model, info = _save_load(AICC(s), {"kind": "aicc", "scheme": s.to_dict()}, tmp, "fallback-cnn")
            out["cnn"] = {"model": model, "info": info,
                          "source": f"untrained fallback, shipped default unavailable ({type(e).__name__})"}
    for key, s in (("mlp", Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")),
                   ("hs", Scheme(K=2, G=1, P=1, computation="hs"))):
        if key in keys:
            torch.manual_seed(0)
            model, info = _save_load(AICC(s), {"kind": "aicc", "scheme": s.to_dict()}, tmp, key)
            out[key] = {"model": model, "info": info, "source": "untrained"}
    for m in out.values():
        m["scheme"] = Scheme.from_dict(m["info"]["scheme"])
        m["label"] = m["scheme"].label()
    return out


class CollapseMemo:
    """While active, edgecc.export.collapse_affine computes each network's affine map once per bench run
    (CodedPlan and worker_arrays call it on every construction) and records how long the real call took."""

    def __init__(self):
        self.cache: dict[tuple, tuple[Any, tuple[np.ndarray, np.ndarray]]] = {}
        self.seconds: list[dict[str, Any]] = []

    def __enter__(self) -> "CollapseMemo":
        from .. import export

        self.export, self.original = export, export.collapse_affine

        def memo(net, *args, **kwargs):  # collapse_affine's own arguments (the image shape) are part of the key
            key = (id(net), args, tuple(sorted(kwargs.items())))
            hit = self.cache.get(key)
            if hit is not None and hit[0] is net:
                return hit[1]
            t0 = time.perf_counter()
            r = self.original(net, *args, **kwargs)
            self.seconds.append({"net": type(net).__name__, "params": sum(p.numel() for p in net.parameters()),
                                 "seconds": time.perf_counter() - t0})
            self.cache[key] = (net, r)
            return r

        export.collapse_affine = memo
        return self

    def __exit__(self, *exc) -> None:
        self.export.collapse_affine = self.original
        self.cache.clear()


def make_groups(images: np.ndarray, K: int, B: int) -> np.ndarray:
    n = B * K
    reps = -(-n // images.shape[0])
    return np.tile(images, (reps, 1, 1))[:n].reshape(B, K, 28, 28)
