"""What a coded scheme is: K, G, P, its computation kind, and the recovery threshold.

Imports nothing heavy: workers without torch read schemes from model files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction

from ..errors import ConfigError

ARCHS = ("mlp", "cl")
COMPUTATIONS = ("hb", "hs")


@dataclass(frozen=True)
class Scheme:
    """One AICC configuration (SPEC §1-§2)."""

    K: int = 2  # images per group
    G: int = 1  # degree of the encoder polynomial E
    P: int = 1  # degree of H_S in the encoded input (must be 1 for H_B)
    computation: str = "hb"  # "hb": affine H_B on the encoded input only; "hs": H_S uses V_p = Λ_p(X)
    encoder: str = "cl"  # architecture of Γ_g: "mlp" or "cl" (dilated CNN)
    compute_arch: str = "cl"  # architecture of Λ_p (H_S) or of the H_B stack before Base-MLP

    def __post_init__(self) -> None:
        for name in ("K", "G", "P"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"scheme field {name} must be an integer >= 1, got {v!r}")
        if self.computation not in COMPUTATIONS:
            raise ConfigError(f"scheme computation must be one of {COMPUTATIONS}, got {self.computation!r}")
        for name in ("encoder", "compute_arch"):
            if getattr(self, name) not in ARCHS:
                raise ConfigError(f"scheme {name} must be one of {ARCHS}, got {getattr(self, name)!r}")
        if self.computation == "hb" and self.P != 1:
            raise ConfigError("H_B is affine in the encoded input: P must be 1")

    @property
    def degree(self) -> int:
        """Degree of the composite polynomial D = H ∘ E in α."""
        return self.G * self.P if self.computation == "hs" else self.G

    @property
    def R(self) -> int:
        """Recovery threshold: any R worker results determine D."""
        return self.degree + 1

    def betas(self) -> list[float]:
        return default_betas(self.K)

    def label(self) -> str:
        arch = {"mlp": "MLP", "cl": "CNN"}
        return (f"K={self.K} G={self.G} P={self.P} {arch[self.encoder]}+{arch[self.compute_arch]} "
                f"{'H_S' if self.computation == 'hs' else 'H_B'}")

    def to_dict(self) -> dict:
        return asdict(self)

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


def default_alphas(N: int) -> list[float]:
    """Worker evaluation points α_n = n/(N+1), n = 1..N."""
    if N < 1:
        raise ConfigError(f"N must be >= 1, got {N}")
    return [float(Fraction(n, N + 1)) for n in range(1, N + 1)]


def check_workers(scheme: Scheme, N: int) -> None:
    if N < scheme.R:
        raise ConfigError(f"N={N} workers cannot reach the recovery threshold R={scheme.R} of {scheme.label()}")
