"""What a coded scheme is: K, G, P, its computation kind, and the recovery threshold.

Imports nothing heavy: workers without torch read schemes from model files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from fractions import Fraction

from ..errors import ConfigError

ARCHS = ("mlp", "cl")
COMPUTATIONS = ("hb", "hs")
# Not a learned Γ: the systematic encoder (ours, not the paper's; nets/systematic.py) Lagrange-combines the K
# images' features from a centralized CNN at the master. Only an AICC model's `encoder` may name it.
SYSTEMATIC = "systematic"
OURS = "(ours, not the paper's)"  # how a label marks a design, init or recipe beyond the paper
SYSTEMATIC_LABEL = f"systematic encoder {OURS}"
# Rules that place the N workers' points α from N alone, so that a model file can record them whatever N a run
# picks: "chebyshev-extreme" is α_n = cos(nπ/(N−1)), n = 0..N−1 (the systematic encoder's, from 1 down to −1).
WORKER_POINT_RULES = ("chebyshev-extreme",)
OPTIONAL_FIELDS = ("data_points", "worker_points", "coef_width", "maps")  # left out of to_dict() when unset: older files stay as they were


@dataclass(frozen=True)
class Scheme:
    """One AICC configuration (SPEC §1-§2)."""

    K: int = 2  # images per group
    G: int = 1  # degree of the encoder polynomial E
    P: int = 1  # degree of H_S in the encoded input (must be 1 for H_B)
    computation: str = "hb"  # "hb": affine H_B on the encoded input only; "hs": H_S uses V_p = Λ_p(X)
    encoder: str = "cl"  # architecture of Γ_g: "mlp" or "cl" (dilated CNN)
    compute_arch: str = "cl"  # architecture of Λ_p (H_S) or of the H_B stack before Base-MLP
    # The model's own points, recorded in its file because decoding depends on them (unset: the paper's k/K and
    # the master's choice of α). data_points: the K points β_k at which D gives image k's logits;
    # worker_points: a rule of WORKER_POINT_RULES placing the workers' α for any N.
    data_points: tuple[float, ...] | None = None
    worker_points: str | None = None
    # Channels of the master's CL coefficient networks (Γ_g with a CNN encoder, Λ_p with a CNN H_S); unset: the
    # paper's 20·K. Wider is ours, not the paper's: a K=4 R=5 cell underfits at 20·K (docs/results.md), and a
    # wider master changes neither R nor what a worker computes, only the master's encoding work.
    coef_width: int | None = None
    # Maps H_S forms from each encoded input (H_S only; unset: the paper's one): s_m = Σ_p V_pm ⊙ X̃^p for
    # m = 1..maps, each Λ_p giving `maps` images, and the affine Ω reads all of them. Ours, not the paper's: an
    # affine Ω on one map per image is the structure a K=4 R=5 cell is left with once wider Γ/Λ stop helping
    # (docs/results.md). The degree in α, so R, is the paper's; a worker's V_p and Horner work grow `maps`-fold.
    maps: int | None = None

    def __post_init__(self) -> None:
        for name in ("K", "G", "P"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"scheme field {name} must be an integer >= 1, got {v!r}")
        if self.computation not in COMPUTATIONS:
            raise ConfigError(f"scheme computation must be one of {COMPUTATIONS}, got {self.computation!r}")
        if self.encoder not in ARCHS + (SYSTEMATIC,):
            raise ConfigError(f"scheme encoder must be one of {ARCHS + (SYSTEMATIC,)}, got {self.encoder!r}")
        if self.compute_arch not in ARCHS:
            raise ConfigError(f"scheme compute_arch must be one of {ARCHS}, got {self.compute_arch!r}")
        if self.computation == "hb" and self.P != 1:
            raise ConfigError("H_B is affine in the encoded input: P must be 1")
        if self.data_points is not None:
            object.__setattr__(self, "data_points", _data_points(self.data_points, self.K))
        if self.coef_width is not None:
            if not isinstance(self.coef_width, int) or isinstance(self.coef_width, bool) or self.coef_width < 1:
                raise ConfigError(f"scheme coef_width must be an integer >= 1, got {self.coef_width!r}")
            if self.encoder != "cl" and not (self.computation == "hs" and self.compute_arch == "cl"):
                raise ConfigError("scheme coef_width sets the CL coefficient networks' channels, and this scheme has "
                                  "none (a CNN encoder Γ, or H_S with CNN Λ)")
        if self.maps is not None:
            if not isinstance(self.maps, int) or isinstance(self.maps, bool) or not 1 <= self.maps <= 64:
                raise ConfigError(f"scheme maps must be an integer from 1 to 64, got {self.maps!r}")
            if self.computation != "hs":
                raise ConfigError("scheme maps counts the maps H_S forms from V_p; H_B has no V_p (use computation 'hs')")
        if self.worker_points is not None and self.worker_points not in WORKER_POINT_RULES:
            raise ConfigError(f"scheme worker_points must be one of {WORKER_POINT_RULES}, got {self.worker_points!r}")
        if self.encoder == SYSTEMATIC:
            # E(α) = Σ_k ℓ_k(α) φ(x_k) has degree K−1 in α and H_B is affine: anything else would decode wrong
            if self.K < 2:
                raise ConfigError(f"the {SYSTEMATIC_LABEL} needs K >= 2 images per group, got K={self.K} "
                                  "(one image per group is replication: use the replication scheme)")
            if self.computation != "hb" or self.G != self.K - 1 or self.compute_arch != "mlp":
                raise ConfigError(f"the {SYSTEMATIC_LABEL} is H_B (compute_arch 'mlp': the base's last affine layer) "
                                  f"with G = K−1 = {self.K - 1}, got computation={self.computation!r} G={self.G} "
                                  f"compute_arch={self.compute_arch!r}")
            if self.data_points is None or self.worker_points is None:
                raise ConfigError(f"the {SYSTEMATIC_LABEL} records its points: data_points (K β's) and worker_points")

    @property
    def degree(self) -> int:
        """Degree of the composite polynomial D = H ∘ E in α."""
        return self.G * self.P if self.computation == "hs" else self.G

    @property
    def R(self) -> int:
        """Recovery threshold: any R worker results determine D."""
        return self.degree + 1

    @property
    def width(self) -> int:
        """Channels of the CL coefficient networks Γ_g and Λ_p: coef_width, else the paper's 20·K."""
        return self.coef_width if self.coef_width is not None else 20 * self.K

    @property
    def map_count(self) -> int:
        """Maps H_S forms per encoded input: `maps`, else the paper's 1 (H_B: 1)."""
        return self.maps if self.maps is not None else 1

    def betas(self) -> list[float]:
        """The K decoding points: the model's own where its scheme records them, else the paper's k/K."""
        return list(self.data_points) if self.data_points is not None else default_betas(self.K)

    def alphas(self, N: int) -> list[float] | None:
        """The N workers' points by the model's own rule, or None when it records none (the master chooses)."""
        if self.worker_points is None:
            return None
        return worker_point_rule(self.worker_points, N)

    def label(self) -> str:
        if self.encoder == SYSTEMATIC:
            return f"K={self.K} G={self.G} {SYSTEMATIC_LABEL}, H_B = the base CNN's last affine layer"
        arch = {"mlp": "MLP", "cl": "CNN"}
        return (f"K={self.K} G={self.G} P={self.P} {arch[self.encoder]}+{arch[self.compute_arch]} "
                f"{'H_S' if self.computation == 'hs' else 'H_B'}"
                + (f", coefficient networks of width {self.coef_width} {OURS}" if self.coef_width is not None else "")
                + (f", {self.maps} maps per encoded input {OURS}" if self.maps is not None else "")
                + (f", its own points β_k{' and α_n ' + self.worker_points if self.worker_points else ''} {OURS}"
                   if self.data_points is not None else ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in OPTIONAL_FIELDS:
            if d[name] is None:
                del d[name]
            elif isinstance(d[name], tuple):
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scheme":
        if not isinstance(d, dict):
            raise ConfigError(f"scheme must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown scheme fields: {sorted(unknown)}")
        return cls(**d)


def default_betas(K: int) -> list[float]:
    """Decoding points β_k = k/K (fixed for training and test)."""
    return [float(Fraction(k, K)) for k in range(1, K + 1)]


def _data_points(v, K: int) -> tuple[float, ...]:
    """K distinct finite numbers as a tuple of floats, or ConfigError (a file's β's are checked as it loads)."""
    if (not isinstance(v, (list, tuple)) or len(v) != K
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in v)):
        raise ConfigError(f"scheme data_points must be a list of K={K} finite numbers, got {v!r}")
    pts = tuple(float(b) for b in v)
    if len(set(pts)) != K:
        raise ConfigError(f"scheme data_points must be distinct, got {list(pts)}")
    return pts


def worker_point_rule(rule: str, N: int) -> list[float]:
    """The N workers' points of a WORKER_POINT_RULES rule."""
    if rule == "chebyshev-extreme":
        if N < 2:
            raise ConfigError(f"the chebyshev-extreme points cos(nπ/(N−1)) need N >= 2 workers, got N={N}")
        import numpy as np  # the same expression as edgecc.scheme_map.systematic_points, so the same bits

        return [float(a) for a in np.cos(np.arange(N) * np.pi / (N - 1))]
    raise ConfigError(f"unknown worker point rule {rule!r} (one of {WORKER_POINT_RULES})")


def systematic_betas(K: int) -> list[float]:
    """The systematic encoder's β_k = cos((2k+1)π/(2K)), k = 0..K−1: the K Chebyshev nodes, from ~1 down to ~−1."""
    import numpy as np  # as edgecc.scheme_map.systematic_points computes them (benchmarks/systematic_encoder.py)

    return [float(b) for b in np.cos((2 * np.arange(K) + 1) * np.pi / (2 * K))]


def chebyshev_points(K: int) -> dict:
    """The Scheme fields of a model read at its own points in [−1, 1]: β_k the K Chebyshev nodes (systematic_betas)
    and the workers' α_n = cos(nπ/(N−1)) for any N."""
    return {"data_points": tuple(systematic_betas(K)), "worker_points": "chebyshev-extreme"}


def default_alphas(N: int) -> list[float]:
    """Worker evaluation points α_n = n/(N+1), n = 1..N."""
    if N < 1:
        raise ConfigError(f"N must be >= 1, got {N}")
    return [float(Fraction(n, N + 1)) for n in range(1, N + 1)]


def check_workers(scheme: Scheme, N: int) -> None:
    if N < scheme.R:
        raise ConfigError(f"N={N} workers cannot reach the recovery threshold R={scheme.R} of {scheme.label()}")
