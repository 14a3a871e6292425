"""Limits every node enforces, with safe defaults; all configurable from the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import DEFAULT_MAX_FRAME


@dataclass(frozen=True)
class Limits:
    max_frame: int = DEFAULT_MAX_FRAME  # bytes per frame, checked before buffering
    max_batch: int = 4096  # groups per compute request
    max_in_flight: int = 256  # compute requests a worker runs or queues per connection
    handshake_timeout: float = 5.0  # seconds a peer gets to authenticate; slow peers are dropped
    idle_timeout: float = 600.0  # seconds without any frame before a worker drops a master
    connect_timeout: float = 5.0  # seconds per connection attempt (master)
