"""Injected faults (worker/faults.py) around an honest worker: delays, requests never answered, lies.

The worker below is the real Worker over an in-memory stream pair (launch/inprocess.py) with a `Faults`
attached; its computation itself stays honest, which the last test checks by calling it directly.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edgecc.bundle import digest
from edgecc.protocol import compute_spec
from edgecc.protocol.frames import pack_array, unpack_array
from edgecc.protocol.handshake import ClientHandshake
from edgecc.protocol.messages import Compute, Configure, Result
from edgecc.master.handshake import client_handshake
from edgecc.worker.compute import AffineCompute
from edgecc.worker.faults import LIES, Faults, lie
from edgecc.comm import connect
from edgecc.launch.inprocess import InProcessWorkers
from edgecc.worker.server import Worker, WorkerState

TOKEN = b"f" * 32
RNG = np.random.default_rng(11)
A = RNG.normal(size=(10, 784)).astype(np.float32)
B = RNG.normal(size=10).astype(np.float32)
ARRAYS = {"affine.weight": A, "affine.bias": B}


def honest(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), 784) @ A.T + B


async def configured(worker: Worker):
    linked = InProcessWorkers([worker])
    comm = await connect((await linked.start())[0])
    configure = Configure(0, "aicc", {"alpha": 0.5}, compute_spec.affine().to_wire(), "f4", digest(ARRAYS),
                          {k: pack_array(v) for k, v in ARRAYS.items()}, None)
    await client_handshake(comm, ClientHandshake(TOKEN, configure=lambda h: configure))
    return linked, comm


async def test_delays_failures_and_lies_come_from_the_faults_alone():
    delays = {0: 0.3, 1: None, 2: 0.0}  # request 1 is never answered
    worker = Worker(TOKEN, faults=Faults(delay=lambda r, t: delays[r], lie="scale"))
    linked, comm = await configured(worker)
    try:
        x = RNG.random((3, 28, 28)).astype(np.float32)
        t0 = time.monotonic()
        for i in range(3):
            await comm.write(Compute(i, pack_array(x), None, None, None))
        got = {}
        with pytest.raises(asyncio.TimeoutError):
            while True:
                r = await comm.read(timeout=1.0)
                assert isinstance(r, Result)
                got[r.id] = (time.monotonic() - t0, unpack_array(r.y, "y", shape=(3, 10)))
        assert sorted(got) == [0, 2]  # 1 never answered
        assert got[2][0] < got[0][0] and got[0][0] >= 0.3  # 0 waited its injected delay; 2 did not wait behind it
        for i in (0, 2):
            np.testing.assert_allclose(got[i][1], -2.0 * honest(x), rtol=1e-4, atol=1e-3)  # the "scale" lie
        assert worker.stats["requests"] == 3
    finally:
        await comm.close()
        await linked.close()


async def test_the_compute_step_stays_honest_under_faults():
    worker = Worker(TOKEN, faults=Faults(lie="adversarial"))
    linked, comm = await configured(worker)
    try:
        x = RNG.random((2, 28, 28)).astype(np.float32)
        await comm.write(Compute(7, pack_array(x), None, None, None))
        r = await comm.read(timeout=5)
        sent = unpack_array(r.y, "y", shape=(2, 10))
        np.testing.assert_allclose(sent, lie("adversarial", honest(x).astype(np.float32), 7), rtol=1e-4, atol=1e-3)
        assert not np.allclose(sent, honest(x), atol=1e-2)
        # the worker's compute step on the same inputs: the lie is not in it
        spec = compute_spec.affine()
        state = WorkerState(spec, "aicc", {}, "f4", AffineCompute(spec, ARRAYS))
        np.testing.assert_allclose(await worker._compute(state, (x,)), honest(x), rtol=1e-4, atol=1e-3)
    finally:
        await comm.close()
        await linked.close()


async def test_hold_and_tamper():
    f = Faults(delay=lambda r, t: {0: 0.05, 1: None}.get(r, 0.0))
    t0 = time.monotonic()
    assert await f.hold(0) and time.monotonic() - t0 >= 0.05
    assert not await f.hold(1)
    assert await f.hold(2) and f.waits
    y = np.arange(20, dtype=np.float32).reshape(2, 10)
    assert f.tamper(3, y) is y  # no lie configured
    assert not Faults().waits and await Faults().hold(5)
    for kind in LIES:
        out = Faults(lie=kind).tamper(3, y)
        assert out.shape == y.shape and out.dtype == np.float32 and not np.allclose(out, y)
    with pytest.raises(ValueError, match="lie must be one of"):
        Faults(lie="sometimes")
