"""Faults a worker injects on purpose, for scenarios and tests: the one place they live.

A worker computes honestly; a `Faults` object attached to it (`Worker(faults=...)`, or `edgecc worker
--behaviour/--lie`) decides, per request, what goes wrong around that computation:

* `hold(request_id)`: before computing, wait the injected delay (a straggler), or return False for a
  request that is never answered (a failure). The delay comes from a behaviour function of (request
  id, seconds since the worker started) -> seconds or None, e.g. `scenario.latency.WorkerBehaviour.delay`,
  so every scheme and every rerun meets the same stragglers.
* `tamper(request_id, y)`: after computing, replace the result by a lie (a Byzantine worker) that the
  master's robust decoding must locate.

numpy only: torch-free workers can run with faults.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# behaviour(request_id, seconds since the worker started) -> injected delay in seconds, or None = never answer
Behaviour = Callable[[int, float], "float | None"]

LIES = ("random", "scale", "adversarial")


def lie(kind: str, y: np.ndarray, req_id: int) -> np.ndarray:
    """A Byzantine worker's answer (for testing detection): noise, a scaled copy, or logits pushed
    towards another class by far more than the honest spread."""
    rng = np.random.default_rng(req_id)
    spread = float(np.abs(y).max()) + 1.0
    if kind == "random":
        return (rng.normal(size=y.shape) * 3 * spread).astype(np.float32)
    if kind == "scale":
        return (-2.0 * y).astype(np.float32)
    top = y.argmax(axis=1)
    push = np.zeros_like(y)
    push[np.arange(len(y)), top] = -spread
    push[np.arange(len(y)), (top + 1) % y.shape[1]] = spread
    return (y + 4 * push).astype(np.float32)


@dataclass
class Faults:
    """`delay`: the straggler behaviour (None: answer at once); `lie`: one of LIES (None: honest)."""
    delay: Behaviour | None = None
    lie: str | None = None
    started: float = field(default_factory=time.monotonic)  # the zero of the behaviour's clock

    def __post_init__(self) -> None:
        if self.lie is not None and self.lie not in LIES:
            raise ValueError(f"lie must be one of {LIES}, got {self.lie!r}")

    @property
    def waits(self) -> bool:
        """Whether `hold` may suspend (the worker then runs the request as a task, never inline)."""
        return self.delay is not None

    async def hold(self, req_id: int) -> bool:
        """Wait the injected delay for request `req_id`; False: never answer it."""
        if self.delay is None:
            return True
        d = self.delay(req_id, time.monotonic() - self.started)
        if d is None:
            return False
        if d > 0:
            await asyncio.sleep(d)
        return True

    def tamper(self, req_id: int, y: np.ndarray) -> np.ndarray:
        """The result the worker sends for `req_id`: `y`, or a lie."""
        return y if self.lie is None else lie(self.lie, y, req_id)
