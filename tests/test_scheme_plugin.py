"""A scheme written outside the package runs end to end from its own module plus one registry line.

`SumCode` below is a complete scheme the package has never seen: an MDS-style linear code for a
linear classifier. Worker n receives x̃_n = Σ_k C[n, k] x_k (each row of C sums to 1, so the bias
passes through: A·x̃_n + b = Σ_k C[n, k] (A·x_k + b)), and any K answers decode by solving the
K × K system. Its workers run the existing "affine" compute kind, so the worker, the protocol, the
link and the master are used as they are: the test adds the plan and one SCHEMES entry, builds the
plan through the registry, and decodes over real Worker objects linked by in-memory stream pairs.
"""

from __future__ import annotations

import numpy as np

from edgecc.bundle import digest
from edgecc.protocol import compute_spec
from edgecc.protocol.frames import pack_array
from edgecc.schemes import registry as schemes
from edgecc.launch.inprocess import InProcessWorkers
from edgecc.master.master import Master
from edgecc.worker.server import Worker

TOKEN = b"p" * 32
RNG = np.random.default_rng(5)
A = RNG.normal(size=(10, 784)).astype(np.float32)
BIAS = RNG.normal(size=10).astype(np.float32)


class SumCode:
    """K images per group on N workers; any K answers decode exactly (up to float32 rounding)."""

    name, placement = "sum-code", "encoded"

    def __init__(self, K: int, N: int):
        self.K, self.N, self.wire_dtype = K, N, "f4"
        self.C = np.vander(np.arange(1, N + 1, dtype=np.float64) / N, K, increasing=True)  # any K rows independent
        self.C /= self.C.sum(axis=1, keepdims=True)
        self.alphas = [float(n + 1) for n in range(N)]
        self.arrays = {"affine.weight": A, "affine.bias": BIAS}
        self.digest = digest(self.arrays)
        self.wire_arrays = {k: pack_array(v) for k, v in self.arrays.items()}
        self.need = f"any {K} of {N}"

    def compute_spec(self, index: int):
        return compute_spec.affine()

    def scheme_params(self, index: int) -> dict:
        return {"K": self.K, "row": [float(c) for c in self.C[index]]}

    def payloads(self, images: np.ndarray) -> list[dict]:
        x = images.astype(np.float64) / 255.0  # (B, K, 28, 28)
        coded = np.einsum("nk,bkij->nbij", self.C, x).astype(np.float32)
        return [{"x": pack_array(coded[n])} for n in range(self.N)]

    def complete(self, answered) -> bool:
        return len(answered) >= self.K

    def reachable(self, possible) -> bool:
        return len(possible) >= self.K

    def decoded(self, results: dict[int, np.ndarray]):
        used = sorted(results)[: self.K]
        Y = np.stack([np.asarray(results[n], np.float64) for n in used])  # (K, B, 10)
        Z = np.linalg.solve(self.C[used], Y.reshape(self.K, -1)).reshape(Y.shape)  # (K, B, 10)
        return Z.transpose(1, 0, 2), {"subset": used}


async def test_a_new_scheme_needs_only_its_plan_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(schemes.SCHEMES, "sum-code", lambda r: SumCode(r.k, r.N))  # the one registry line
    plan = schemes.build_plan("sum-code", schemes.PlanRequest(N=4, K=3))
    workers = [Worker(TOKEN) for _ in range(4)]
    linked = InProcessWorkers(workers)
    m = Master(plan, await linked.start(), TOKEN)
    try:
        await m.start(wait_ready=20)
        assert await m.wait_all_ready(20)
        images = RNG.integers(0, 256, size=(5, 3, 28, 28), dtype=np.uint8)
        logits = await m.infer(images)
        want = (images.astype(np.float64) / 255.0).reshape(5, 3, 784) @ A.T.astype(np.float64) + BIAS
        np.testing.assert_allclose(logits, want, rtol=1e-3, atol=1e-3)
        assert all(w.stats["requests"] >= 1 for w in workers[:3])
    finally:
        await m.close()
        await linked.close()
