"""Torch modules: coefficient networks Γ/Λ, worker computations H_S/H_B, baselines."""

from .aicc import AICC, encode_precision
from .baselines import CentralizedCNN, CentralizedMLP
from .poly_mlp import PolyMLP

__all__ = ["AICC", "encode_precision", "CentralizedCNN", "CentralizedMLP", "PolyMLP"]
