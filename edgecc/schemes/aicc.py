"""AICC (Tang et al., arXiv 2307.04915) as a runtime scheme: the master's side (`CodedPlan`).

Encoded placement: the master runs Γ (and Λ for H_S) and ships X̃_n = E(α_n) to worker n. Shared
placement: workers hold the encoder; the master ships raw images. A request is complete once the
results in hand decode with an error bound under the tolerance (at least R of them;
coding/conditioning.py): R well-placed results usually suffice, clustered ones wait for more.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..bundle import digest
from ..coding.conditioning import DEFAULT_TOLERANCE, Choice, choose, chosen_alphas, worst_subset
from ..coding.lagrange import Decoder
from ..errors import ConfigError, DecodeError
from ..coding.robust import robust_decode
from ..coding.schemes import SYSTEMATIC, Scheme, check_workers, default_alphas
from ..export import PLACEMENTS, worker_arrays
from ..nets import encode_precision as resolve_precision
from ..protocol import compute_spec
from ..protocol.compute_spec import ComputeSpec
from ..protocol.frames import pack_array
from ..protocol.images import PAPER_CLASSES, PAPER_IMAGE, dims
from ..worker.compute import encoded_spec
from .base import Plan, check_groups, kth_fastest, load_model_option, set_shape


CALIBRATION_GROUPS = 32  # groups of the shipped sample whose results size each worker's error before any request
HEADROOM = 2.0  # the bound uses twice the largest error measured on them, for inputs the sample does not cover
POLICIES = ("bound", "first-r")
_NP_WIRE = {"f4": np.float32, "f2": np.float16, "f8": np.float64}


@torch.inference_mode()
def calibration_inputs(model, scheme: Scheme, images: np.ndarray, precision: str = "fp32") -> tuple[torch.Tensor, np.ndarray | None]:
    """(encoder coefficients C_g, V_p or None) for grouped uint8 `images` (B, K, *dims(image)): the networks run once."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    v = model.lambdas(x, precision).numpy() if scheme.computation == "hs" else None
    return model.coefficients(x, precision), v


@torch.inference_mode()
def result_errors(model, scheme: Scheme, arrays: dict[str, np.ndarray], points, calibration, wire: str,
                  placement: str = "encoded", image=PAPER_IMAGE, classes: int = PAPER_CLASSES) -> np.ndarray:
    """Per point α_n: the largest |result − exact value| over the calibration groups (`calibration_inputs`), in logits.

    The result is made as the runtime makes it: the master evaluates E(α_n) in fp32 and rounds it (and V_p)
    to the wire dtype (encoded placement; shared-placement workers evaluate E themselves in fp32), the worker
    runs its fp32 affine map (worker/compute.EncodedCompute) and rounds the result to the wire dtype. The
    exact value is the same map in float64 on E(α_n) evaluated in float64 from the same coefficients, so
    the measured error is exactly what decoding amplifies (the coefficients are shared by every worker)."""
    from ..worker.compute import EncodedCompute

    coef, v = calibration
    xt = model.evaluate_encoder(coef, list(points)).numpy()  # (B, n, *dims(image)) fp32, as the master encodes
    c64 = coef.double().numpy()
    vand = model.encoder_matrix(points)  # (n, G+1): the powers of α (AICC), the Lagrange basis (systematic)
    xt64 = np.einsum("ng,bg...->bn...", vand, c64)
    wire_np = _NP_WIRE[wire]
    compute = EncodedCompute(scheme, arrays, image, classes)
    A, bias = arrays["affine.weight"].astype(np.float64), arrays["affine.bias"].astype(np.float64)
    errs = np.zeros(len(points))
    B = xt.shape[0]
    for n in range(len(points)):
        xin, vin = xt[:, n], v
        if placement == "encoded":
            xin = xin.astype(wire_np).astype(np.float32)
            vin = None if v is None else v.astype(wire_np).astype(np.float32)
        y = compute(xin, vin).astype(wire_np).astype(np.float64)
        s = xt64[:, n]
        if v is not None:
            v64 = v.astype(np.float64)
            x64 = s if scheme.map_count == 1 else s[:, None]  # every map reads the same encoded input
            s = v64[:, -1]
            for p in range(scheme.P - 1, -1, -1):
                s = s * x64 + v64[:, p]
        exact = s.reshape(B, -1) @ A.T + bias
        errs[n] = np.abs(y - exact).max()
    return errs


class CodedPlan(Plan):
    """`tolerance`: the largest decoded-logit error bound a request may decode with (coding/conditioning);
    `policy` "bound" waits for results until the bound is under it, "first-r" decodes the first R (for
    comparison); `points` "chosen" places α for N (coding/conditioning.chosen_alphas), "uniform" at n/(N+1)."""

    def __init__(self, model, info: dict[str, Any], N: int, placement: str = "encoded", wire_dtype: str = "f4",
                 byzantine: int = 0, encode_precision: str = "auto", tolerance: float = DEFAULT_TOLERANCE,
                 policy: str = "bound", points: str = "chosen"):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if points not in ("chosen", "uniform"):
            raise ValueError(f"points must be 'chosen' or 'uniform', got {points!r}")
        if not (np.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")
        self.model, self.info = model.eval(), info
        set_shape(self, info)
        self.scheme = Scheme.from_dict(info["scheme"])
        check_workers(self.scheme, N)
        self.N, self.placement, self.wire_dtype = N, placement, wire_dtype
        self.tolerance, self.policy, self.points = float(tolerance), policy, points
        # the master's encoder precision (nets.encode_precision); shared-placement workers always encode in fp32
        self.encode_precision = resolve_precision(encode_precision) if placement == "encoded" else "fp32"
        if placement == "shared" and self.scheme.encoder == SYSTEMATIC:
            raise ConfigError(f"the {self.scheme.label()} encodes at the master only (its workers run one affine "
                              "layer, not the CNN): use --placement encoded")
        betas = tuple(self.scheme.betas())  # the model's own β where its file records them
        self.alphas = self._points(N, points)
        self.decoder = Decoder(self.alphas, betas, self.scheme.R)
        self.arrays = worker_arrays(model, info, placement)
        self.digest = digest(self.arrays)
        self.wire_arrays = {k: pack_array(v, "f4") for k, v in self.arrays.items()}
        # byzantine = E: wait for R + 2E results and decode around up to E wrong ones (coding/robust.py)
        self.byzantine = byzantine
        if N < self.R + 2 * byzantine:
            raise ValueError(f"correcting {byzantine} liar(s) needs N >= R + 2E = {self.R + 2 * byzantine}, got N={N}")
        self.suspect_groups = [0] * N  # per worker: groups where its result was off the polynomial
        # -- each worker's result error, measured on the shipped sample as the runtime computes it
        if self.image == PAPER_IMAGE:
            from ..data import load_sample

            images, _ = load_sample()
        else:
            # No sample of the model's own data ships: the Fashion-MNIST sample resized to its (C, H, W)
            # (channels differing) stands in. The bound keeps HEADROOM over the errors measured on it; the
            # model's own images may reach other encoder outputs, so it is an estimate, as for any input
            # the sample does not cover.
            from ..datasets import load as load_images

            c, h, w = self.image
            images = load_images(f"sample?size={h}x{w}&channels={c}").images
        n = CALIBRATION_GROUPS * self.K
        self._calibration = calibration_inputs(self.model, self.scheme,
                                               np.asarray(images[:n]).reshape(-1, self.K, *dims(self.image)),
                                               self.encode_precision)
        self._errors = self.errors_for(wire_dtype)
        self._choices: dict[tuple, Choice] = {}
        self.best_case = self.choice(range(N))  # every worker answered: the smallest bound this plan can reach
        if self.policy == "bound" and not byzantine and self.best_case.bound > self.tolerance:
            raise ConfigError(self._refusal())

    def _points(self, N: int, points: str) -> list[float]:
        """The N workers' α: "chosen" places them for N (coding/conditioning.chosen_alphas), or by the model's own
        rule where its file records one (the systematic encoder's cos(nπ/(N−1))); "uniform" at n/(N+1)."""
        if points == "uniform":
            return default_alphas(N)
        own = self.scheme.alphas(N)
        return own if own is not None else list(chosen_alphas(N, self.scheme.R, tuple(self.scheme.betas())))

    @property
    def K(self) -> int:
        return self.scheme.K

    @property
    def R(self) -> int:
        return self.scheme.R

    name = "aicc"

    def compute_spec(self, index: int) -> ComputeSpec:
        """What worker `index` runs: the collapsed affine map (encoded), or E(α_index) and H (shared)."""
        if self.placement == "shared":
            return compute_spec.aicc_shared(self._shared_scheme(), self.alphas[index], dims(self.image), self.classes)
        return encoded_spec(self.scheme, self.image, self.classes)

    def _shared_scheme(self) -> dict[str, Any]:
        """The scheme fields a shared-placement worker evaluates E(α_n) with: β's are the master's, not its."""
        from ..worker.shared_compute import OPTIONAL_SCHEME_KEYS, SCHEME_KEYS

        return {k: v for k, v in self.scheme.to_dict().items() if k in SCHEME_KEYS + OPTIONAL_SCHEME_KEYS}

    def scheme_params(self, index: int) -> dict[str, Any]:
        """AICC's own parameters for worker `index` (configure.params: logged by the worker)."""
        return {**self.scheme.to_dict(), "N": self.N, "alpha": float(self.alphas[index])}

    def errors(self) -> np.ndarray:
        """(N,) bound on each worker's result error in logits: HEADROOM × the largest error measured."""
        return self._errors

    def errors_for(self, wire: str, points=None) -> np.ndarray:
        pts = self.alphas if points is None else points
        return HEADROOM * result_errors(self.model, self.scheme, self.arrays, pts, self._calibration, wire, self.placement,
                                        self.image, self.classes)

    def choice(self, workers) -> Choice:
        """Best decode weights over `workers` with the current error bounds (cached per worker set)."""
        key = tuple(sorted(int(w) for w in workers))
        got = self._choices.get(key)
        if got is None:
            if len(self._choices) > 4096:
                self._choices.clear()
            e = self.errors()
            got = choose(self.alphas, self.decoder.betas, self.R, key, e[list(key)])
            self._choices[key] = got
        return got

    def _refusal(self) -> str:
        """The error for a configuration no set of results can decode within tolerance: its numbers and what would."""
        worst = worst_subset(self.alphas, self.decoder.betas, self.R)[0] if math.comb(self.N, self.R) <= 200_000 else None
        msg = (f"{self.scheme.label()} on N={self.N} workers with {self.wire_dtype} results cannot decode within the "
               f"tolerance: even from all {self.N} results the decoded logits may be off by {self.best_case.bound:.3g} "
               f"(tolerance {self.tolerance:g}; per-result error up to {self.errors().max():.3g} logits"
               + (f", worst {self.R}-subset amplification {worst:.3g}" if worst else "") + ")")
        hints = []
        if self.wire_dtype != "f4":
            b4 = choose(self.alphas, self.decoder.betas, self.R, range(self.N), self.errors_for("f4")).bound
            hints.append(f"--wire-dtype f4 (bound {b4:.3g})")
        fewer = None  # the largest N that decodes within tolerance, scanning up from R (it fails fast when none does)
        for n in range(self.R, self.N):
            pts = self._points(n, "chosen")
            if choose(pts, self.decoder.betas, self.R, range(n), self.errors_for(self.wire_dtype, pts)).bound > self.tolerance:
                break
            fewer = n
        if fewer:
            hints.append(f"at most N={fewer} workers")
        hints.append("a larger tolerance if the model's logit margins allow it")
        return (msg + "; use " + ", or ".join(hints)
                + ("" if fewer else f" (with {self.wire_dtype} results no N >= R={self.R} decodes within it)"))

    @torch.inference_mode()
    def payloads(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Per-worker compute fields for a batch of groups `images` (B, K, *dims(image)) uint8; with the shared
        placement, or (B, K) integer indices into the dataset every worker holds (Master.infer_indices)."""
        if self.placement == "shared":
            if images.ndim == 2 and images.dtype.kind in "iu" and images.shape[1] == self.K:  # Remark 1: only indices travel
                shared = {"indices": pack_array(images, "i4")}
            else:
                check_groups(self, images)
                shared = {"images": pack_array(images, "u1")}
            return [shared] * self.N  # the same payload for every worker: Master._frames packs it once
        check_groups(self, images)
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        xt = self.model.encode(x, self.alphas, self.encode_precision).numpy()  # (B, N, *dims(image))
        extra = {}
        if self.scheme.computation == "hs":
            extra["v"] = pack_array(self.model.lambdas(x, self.encode_precision).numpy(), self.wire_dtype)  # same V_p for every worker
        return [{"x": pack_array(xt[:, n], self.wire_dtype), **extra} for n in range(self.N)]

    def side_by_side(self, pool):
        """Γ_0..Γ_G (and Λ) run at the same time on `pool` inside (nets.blocks.stacks_on): the same coefficients
        bit for bit, in less wall time for a lone group."""
        from ..nets.blocks import stacks_on

        return stacks_on(pool)

    @torch.inference_mode()
    def payloads_many(self, batches: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        """`payloads` of each batch, from one run of the encoder networks over all their groups: per group
        they cost less at 8 groups a call than at 1 (`edgecc bench`, section master). Decoding stays exact: every
        worker's input for a group still comes from that group's one set of coefficients. Those coefficients are
        the ones the group gets encoded alone, bit for bit in bf16; in fp32 oneDNN may block a larger batch
        differently, ~1e-6 apart (tests/test_encode_batching.py)."""
        if self.placement == "shared" or len(batches) == 1:
            return [self.payloads(b) for b in batches]
        for b in batches:
            check_groups(self, b)
        x = torch.from_numpy(np.concatenate(batches).astype(np.float32) / 255.0)
        xt = self.model.encode(x, self.alphas, self.encode_precision).numpy()  # (ΣB, N, *dims(image))
        v = self.model.lambdas(x, self.encode_precision).numpy() if self.scheme.computation == "hs" else None
        out, start = [], 0
        for b in batches:
            rows = slice(start, start + b.shape[0])
            start = rows.stop
            extra = {} if v is None else {"v": pack_array(v[rows], self.wire_dtype)}
            out.append([{"x": pack_array(xt[rows, n], self.wire_dtype), **extra} for n in range(self.N)])
        return out

    def complete(self, answered) -> bool:
        """R results (R + 2E with liars); under the "bound" policy, only once some weights over them decode
        within the tolerance, or every worker has answered (decode then fails with the bound)."""
        n = len(answered)
        if self.byzantine or self.policy == "first-r":
            return n >= self.R + 2 * self.byzantine
        return n >= self.R and (n >= self.N or self.choice(answered).bound <= self.tolerance)

    def reachable(self, possible) -> bool:
        """Can workers `possible` (answered or still expected) still complete a request?"""
        if len(possible) < self.R + 2 * self.byzantine:
            return False
        return self.byzantine > 0 or self.policy == "first-r" or self.choice(possible).bound <= self.tolerance

    @property
    def need(self) -> str:
        if self.byzantine:
            return f"R + 2E = {self.R + 2 * self.byzantine} (E={self.byzantine})"
        if self.policy == "first-r":
            return f"R={self.R}"
        return f"R={self.R} results decoding within {self.tolerance:g} logits"

    def oracle(self, delays: dict[int, float | None]) -> float | None:
        """Best possible latency given each worker's injected delay: the R-th fastest answer (the first answer
        at which the bound is met, under the "bound" policy)."""
        if self.byzantine or self.policy == "first-r":
            return kth_fastest(delays, self.R)
        order = sorted((d, n) for n, d in delays.items() if d is not None)
        for i in range(self.R, len(order) + 1):
            if self.choice([n for _, n in order[:i]]).bound <= self.tolerance:
                return order[i - 1][0]
        return None

    def summary(self) -> dict[str, Any]:
        return {"encode_precision": self.encode_precision}

    def worker_summary(self, index: int) -> dict[str, Any]:
        return {"alpha": float(self.alphas[index]), "suspect_groups": self.suspect_groups[index]}

    def decode(self, results: dict[int, np.ndarray]) -> np.ndarray:
        """(B, K, classes) float64 logits from {worker index: (B, classes)} (R + 2E with liars)."""
        return self.decoded(results)[0]

    def decoded(self, results: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """(logits, report). The report names the workers decoded from ("subset"), the decoded-logit error bound,
        the tolerance, the results used beyond the threshold ("waited_extra") and how the weights were chosen.
        Under the "bound" policy a bound above the tolerance raises DecodeError instead of returning logits."""
        need = self.R + 2 * self.byzantine
        if len(results) < need:
            raise DecodeError(f"cannot decode: {len(results)} result(s) received, need {self.need}")
        Y = np.stack([np.asarray(results[w], dtype=np.float64) for w in sorted(results)])  # (n, B, V)
        if self.byzantine:
            res = robust_decode(self.alphas, self.decoder.betas, self.R, self.byzantine, results)
            for row, w in enumerate(res.workers):
                self.suspect_groups[w] += int(res.suspects[row].sum())
            return res.logits, {"subset": sorted(int(w) for w in res.workers), "bound": None,
                                "waited_extra": max(0, len(results) - need)}
        if not np.all(np.isfinite(Y)):
            raise DecodeError("worker results contain NaN or Inf")
        if self.policy == "first-r":
            c = self.choice(list(results)[: self.R])  # the first R to arrive, as before conditioning-aware decoding
        else:
            c = self.choice(results)
        report = {"subset": c.used, "bound": c.bound, "tolerance": self.tolerance,
                  "waited_extra": len(results) - self.R if self.policy == "bound" else 0, "method": c.method}
        if self.policy == "bound" and c.bound > self.tolerance:
            raise DecodeError(f"all {len(results)} results in hand decode with an error bound of {c.bound:.3g} logits, "
                              f"above the tolerance {self.tolerance:g}: refusing to return logits that may be wrong")
        cols = [sorted(results).index(w) for w in c.workers]
        return np.einsum("kr,rbv->bkv", c.W, Y[cols]), report


def build(N: int, K: int, *, model, placement: str, wire_dtype: str, encode_precision: str, byzantine: int,
          tolerance: float, policy: str, points: str) -> CodedPlan:
    """The registry's builder (schemes/builtin.py declares the options)."""
    net, info = load_model_option(model, ("aicc",), "aicc")
    if int(info["scheme"]["K"]) != K:  # before the calibration, which costs a second or so
        raise ConfigError(f"the AICC model groups K={info['scheme']['K']} images; the run has K={K}")
    return CodedPlan(net, info, N, placement, wire_dtype, byzantine, encode_precision, tolerance, policy, points)
