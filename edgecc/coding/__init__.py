"""Pure coding math (numpy only, never torch): scheme configuration and Lagrange decoding."""

from .lagrange import Decoder, decode_weights, max_amplification
from .schemes import Scheme, default_alphas, default_betas

__all__ = ["Decoder", "Scheme", "decode_weights", "default_alphas", "default_betas", "max_amplification"]
