"""Conditioning-aware decoding end to end: N=20 real worker processes on loopback, the worst-conditioned R
answering first (injected delays), Table 3's K=4 R=5 checkpoint on the shipped sample."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from edgecc.coding.conditioning import worst_subset
from edgecc.data import load_sample
from edgecc.errors import ConfigError
from edgecc.modelfile import load_model
from edgecc.master.master import Master
from edgecc.schemes.aicc import CodedPlan

from .conftest import REPO, TOKEN, WorkerProcess

MODEL = REPO / "results" / "checkpoints" / "table3" / "k4-r5-hs-g1p4.safetensors"
N = 20
pytestmark = pytest.mark.skipif(not MODEL.exists(), reason=f"{MODEL.name} is not in this checkout")


class RecordingPlan(CodedPlan):
    """The real plan; keeps each request's decode report so the test can see which results decoded it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reports: list[dict] = []

    def decoded(self, results):
        logits, report = super().decoded(results)
        self.reports.append(report)
        return logits, report


def direct_accuracy(model, images, labels, K):
    with torch.inference_mode():
        x = torch.from_numpy(images.reshape(-1, K, 28, 28).astype(np.float32) / 255.0)
        return 100.0 * float((model(x).numpy().argmax(-1).reshape(-1) == labels).mean())


def test_f2_results_at_n20_are_refused_before_any_request():
    model, info = load_model(MODEL)
    with pytest.raises(ConfigError, match=r"N=20 workers with f2 results.*off by .*--wire-dtype f4"):
        CodedPlan(model, info, N, wire_dtype="f2", encode_precision="fp32")


async def test_worst_conditioned_five_first_of_twenty_decode_like_direct(tmp_path):
    model, info = load_model(MODEL)
    plan = RecordingPlan(model, info, N, wire_dtype="f4", encode_precision="fp32")
    worst = set(worst_subset(plan.alphas, plan.decoder.betas, plan.R)[1])
    # the worst-conditioned five answer at once, the others 150 ms later, each 10 ms after the previous
    later = iter(range(N))
    delays = {n: 0.0 if n in worst else 0.15 + 0.01 * next(later) for n in range(N)}
    workers = [WorkerProcess(tmp_path, f"w{n}", ["--behaviour", json.dumps({"latency": {"dist": "constant", "value": d}})])
               for n, d in delays.items()]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: w.start(), workers))
        images, labels = load_sample()
        images, labels = images[:400], labels[:400]
        m = Master(plan, [w.address for w in workers], TOKEN.encode(), request_timeout=20.0)
        await m.start(wait_ready=30)
        assert await m.wait_all_ready(30)
        try:
            logits = np.concatenate([await m.infer(images[i : i + 80].reshape(-1, 4, 28, 28)) for i in range(0, 400, 80)])
        finally:
            await m.close()
    finally:
        for w in workers:
            w.kill()
    decoded = 100.0 * float((logits.argmax(-1).reshape(-1) == labels).mean())
    assert abs(decoded - direct_accuracy(model, images, labels, 4)) <= 0.3
    assert len(plan.reports) == 5
    for r in plan.reports:  # the five alone were too ill-conditioned: every request waited for better results
        assert r["waited_extra"] > 0 and r["bound"] <= plan.tolerance
        assert not set(r["subset"]) <= worst
