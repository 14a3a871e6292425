"""The master's side of a scheme: what to send each worker, when a request is complete, how to decode.

CodedPlan (AICC). Encoded placement: the master runs Γ (and Λ for H_S) and ships X̃_n = E(α_n)
to worker n. Shared placement: workers hold the encoder; the master ships raw images.
Complete once any R workers answered.

ReplicatedPlan (the comparators). Worker n classifies image n mod K of each group with the
centralized MLP ("plain" placement). Uncoded: N = K workers, wait for all. Replication: N workers,
the first copy of each image wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..bundle import digest
from ..coding.lagrange import Decoder
from ..errors import DecodeError
from ..coding.robust import robust_decode
from ..coding.schemes import Scheme, check_workers, default_alphas
from ..export import PLACEMENTS, worker_arrays
from ..nets import encode_precision as resolve_precision
from ..protocol.frames import pack_array


def kth_fastest(delays: dict[int, float | None], k: int) -> float | None:
    """The k-th smallest of the workers' delays (None: the worker never answers), or None if fewer than k answer."""
    ok = sorted(d for d in delays.values() if d is not None)
    return ok[k - 1] if len(ok) >= k else None


class CodedPlan:
    def __init__(self, model, info: dict[str, Any], N: int, placement: str = "encoded", wire_dtype: str = "f4",
                 byzantine: int = 0, encode_precision: str = "auto"):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}")
        self.model, self.info = model.eval(), info
        self.scheme = Scheme.from_dict(info["scheme"])
        check_workers(self.scheme, N)
        self.N, self.placement, self.wire_dtype = N, placement, wire_dtype
        # the master's encoder precision (nets.encode_precision); shared-placement workers always encode in fp32
        self.encode_precision = resolve_precision(encode_precision) if placement == "encoded" else "fp32"
        self.alphas = default_alphas(N)
        self.decoder = Decoder(self.alphas, self.scheme.betas(), self.scheme.R)
        self.arrays = worker_arrays(model, info, placement)
        self.digest = digest(self.arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in self.arrays.items()}
        # byzantine = E: wait for R + 2E results and decode around up to E wrong ones (coding/robust.py)
        self.byzantine = byzantine
        if N < self.R + 2 * byzantine:
            raise ValueError(f"correcting {byzantine} liar(s) needs N >= R + 2E = {self.R + 2 * byzantine}, got N={N}")
        self.suspect_groups = [0] * N  # per worker: groups where its result was off the polynomial

    @property
    def K(self) -> int:
        return self.scheme.K

    @property
    def R(self) -> int:
        return self.scheme.R

    @torch.inference_mode()
    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Per-worker compute fields for a batch of groups `images` (B, K, 28, 28) uint8."""
        if self.placement == "shared":
            shared = {"images": pack_array(images, "u1")}
            return [shared] * self.N
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        xt = self.model.encode(x, self.alphas, self.encode_precision).numpy()  # (B, N, 28, 28)
        extra = {}
        if self.scheme.computation == "hs":
            extra["v"] = pack_array(self.model.lambdas(x, self.encode_precision).numpy(), self.wire_dtype)  # same V_p for every worker
        return [{"x": pack_array(xt[:, n], self.wire_dtype), **extra} for n in range(self.N)]

    def complete(self, answered) -> bool:
        return len(answered) >= self.R + 2 * self.byzantine

    def reachable(self, possible) -> bool:
        """Can workers `possible` (answered or still expected) still complete a request?"""
        return len(possible) >= self.R + 2 * self.byzantine

    @property
    def need(self) -> str:
        return f"R={self.R}" if not self.byzantine else f"R + 2E = {self.R + 2 * self.byzantine} (E={self.byzantine})"

    def oracle(self, delays: dict[int, float | None]) -> float | None:
        """Best possible latency given each worker's injected delay: the R-th fastest answer."""
        return kth_fastest(delays, self.R)

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, K, 10) float64 logits from any R of {worker index: (B, 10)} (R + 2E with liars)."""
        return self.decoded(results)[0]

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits, report): report names the workers decoded from, the decoded-logit error bound and how many
        results beyond the threshold were waited for."""
        need = self.R + 2 * self.byzantine
        if self.byzantine:
            res = robust_decode(self.alphas, self.scheme.betas(), self.R, self.byzantine, results)
            for row, w in enumerate(res.workers):
                self.suspect_groups[w] += int(res.suspects[row].sum())
            return res.logits, {"subset": sorted(int(w) for w in res.workers), "bound": None,
                                "waited_extra": max(0, len(results) - need)}
        workers = sorted(results)[: self.R]
        W = self.decoder.weights(workers)
        eps = {"f4": 2.0**-24, "f2": 2.0**-11}.get(self.wire_dtype, 2.0**-24)
        err = np.array([eps * float(np.abs(results[w]).max()) for w in workers])
        bound = float((np.abs(W) @ err).max())
        return self.decoder.decode(results), {"subset": workers, "bound": bound,
                                              "waited_extra": max(0, len(results) - need)}


class _PlainWorkers:
    """Plans whose N workers all run the centralized MLP (runtime/compute.PlainCompute) on one image each."""

    placement = "plain"

    def _configure_plain(self, mlp, K: int, N: int, wire_dtype: str) -> None:
        self.K, self.N, self.wire_dtype = K, N, wire_dtype
        self.scheme = Scheme(K=K, G=1)  # tells plain workers K; no polynomial coding happens
        self.alphas = [float(n + 1) for n in range(N)]  # unused by plain workers, distinct for the protocol
        self.arrays = {f"mlp.{k}": v.detach().float().numpy() for k, v in mlp.state_dict().items()}
        self.digest = digest(self.arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in self.arrays.items()}

    def reachable(self, possible) -> bool:
        return self.complete(possible)


class ReplicatedPlan(_PlainWorkers):
    """Uncoded (N = K) or replication (N > K): worker n runs the centralized MLP on image n mod K."""

    def __init__(self, model, info: dict[str, Any], K: int, N: int, wire_dtype: str = "f4"):
        if info["kind"] != "centralized-mlp":
            raise ValueError("uncoded and replication workers run the centralized MLP baseline")
        if N < K:
            raise ValueError(f"{N} workers cannot hold one copy of each of K={K} images")
        self.model, self.info = model.eval(), info
        self._configure_plain(model, K, N, wire_dtype)
        self.copies = [[n for n in range(N) if n % K == k] for k in range(K)]

    @property
    def need(self) -> str:
        return "one answer per image"

    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        x = images.astype(np.float32) / 255.0
        return [{"x": pack_array(x[:, n % self.K], self.wire_dtype)} for n in range(self.N)]

    def complete(self, answered) -> bool:
        return all(any(n in answered for n in c) for c in self.copies)

    def oracle(self, delays: dict[int, float | None]) -> float | None:
        best = [min((delays[n] for n in c if delays.get(n) is not None), default=None) for c in self.copies]
        return None if any(b is None for b in best) else max(best)

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, K, 10): image k's logits from the first of its copies to arrive (dicts keep arrival order)."""
        first = {}
        for n, y in results.items():
            first.setdefault(n % self.K, y)
        return np.stack([first[k] for k in range(self.K)], axis=1).astype(np.float64)

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits, report): the copies that answered first for each image."""
        first: dict[int, int] = {}
        for n in results:
            first.setdefault(n % self.K, int(n))
        return self.decode(results), {"subset": sorted(first.values())}


class LearnedCodePlan(_PlainWorkers):
    """The learned code [10] (SPEC §4) as a runtime scheme: workers 0..k-1 run the frozen base MLP on data
    image n of each group, worker k on the parity image the learned encoder makes from all k. Any k
    answers decode: all data slots are the base model's own outputs; with one data slot missing, the
    learned decoder rebuilds it from the others and the parity output (degraded mode, approximate)."""

    def __init__(self, model, info: dict[str, Any], wire_dtype: str = "f4"):
        if info["kind"] != "learned-code":
            raise ValueError(f"a learned-code plan needs a learned-code model, got {info['kind']!r}")
        self.model, self.info = model.eval(), info
        self.k = int(info["code"]["k"])
        self._configure_plain(model.base, self.k, self.k + 1, wire_dtype)
        self.rebuilt_groups = 0  # groups answered in degraded mode (one data slot decoded)

    @property
    def need(self) -> str:
        return f"any {self.k} of {self.N} (one straggler)"

    @torch.inference_mode()
    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        x = images.astype(np.float32) / 255.0
        parity = self.model.encoder(torch.from_numpy(x)).numpy()  # (B, 28, 28)
        return [{"x": pack_array(x[:, n], self.wire_dtype)} for n in range(self.k)] + [{"x": pack_array(parity, self.wire_dtype)}]

    def complete(self, answered) -> bool:
        return len(answered) >= self.k

    def oracle(self, delays: dict[int, float | None]) -> float | None:
        return kth_fastest(delays, self.k)

    @torch.inference_mode()
    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, k, 10) float64: the data workers' outputs, with at most one slot rebuilt by the decoder."""
        missing = [n for n in range(self.k) if n not in results]
        if not missing:
            return np.stack([results[n] for n in range(self.k)], axis=1).astype(np.float64)
        if len(missing) > 1 or self.k not in results:
            raise DecodeError(f"the learned code rebuilds one data slot from the other {self.k}; got workers {sorted(results)}")
        B = results[self.k].shape[0]
        outs = np.zeros((B, self.k + 1, 10), dtype=np.float32)  # the missing slot stays zero, as in training
        for n, y in results.items():
            outs[:, n] = y
        rebuilt = self.model.decoder(torch.from_numpy(outs)).numpy().astype(np.float64)  # (B, k, 10)
        out = outs[:, : self.k].astype(np.float64)
        out[:, missing[0]] = rebuilt[:, missing[0]]
        self.rebuilt_groups += B
        return out

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits, report): the workers decoded from; "rebuilt" names a data slot the learned decoder rebuilt."""
        missing = [n for n in range(self.k) if n not in results]
        logits = self.decode(results)
        used = list(range(self.k)) if not missing else sorted(n for n in results if n <= self.k)
        return logits, {"subset": used, "rebuilt": missing[0] if missing else None}
