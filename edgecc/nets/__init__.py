"""Torch modules: coefficient networks Γ/Λ, worker computations H_S/H_B, baselines."""

from .aicc import AICC, encode_precision
from .baselines import CentralizedCNN, CentralizedMLP

__all__ = ["AICC", "encode_precision", "CentralizedCNN", "CentralizedMLP"]
