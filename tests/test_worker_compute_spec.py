"""A real worker process runs what `configure.compute` declares (docs/protocol.md §5.4, §7.1, §7.3).

The worker knows no scheme: it validates each request against the compute spec's declared inputs
and shapes and computes the declared map. The specs here use shapes no shipped scheme has (4 x 4
inputs, 3 outputs), so only the spec can have told the worker what to expect.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgecc.bundle import digest
from edgecc.protocol.frames import pack_array, unpack_array
from edgecc.protocol.handshake import ClientHandshake
from edgecc.protocol.messages import Compute, Configure, Configured, Error, Result
from edgecc.master.handshake import client_handshake
from edgecc.comm import connect

from .conftest import TOKEN
from .test_runtime import BLOCK_TORCH  # a sitecustomize that makes `import torch` fail

RNG = np.random.default_rng(3)


async def session(worker, spec: dict, arrays: dict[str, np.ndarray]):
    """An authenticated connection to `worker` configured with `spec`; returns (comm, reply to configure)."""
    comm = await connect("%s:%d" % worker.address)
    await client_handshake(comm, ClientHandshake(TOKEN.encode()))
    await comm.write(Configure(0, "test", {"note": "shapes of no shipped scheme"}, spec, "f4", digest(arrays),
                               {k: pack_array(v) for k, v in arrays.items()}, None))
    return comm, await comm.read(timeout=30)


async def ask(comm, i: int, x=None, v=None):
    await comm.write(Compute(i, None if x is None else pack_array(x), None if v is None else pack_array(v), None, None))
    return await comm.read(timeout=10)


async def test_mlp_kind_of_any_declared_shape(spawn_workers):
    w1 = RNG.normal(size=(8, 16)).astype(np.float32)
    w2 = RNG.normal(size=(3, 8)).astype(np.float32)
    arrays = {"mlp.mlp.fc1.weight": w1, "mlp.mlp.fc1.bias": np.ones(8, np.float32),
              "mlp.mlp.fc2.weight": w2, "mlp.mlp.fc2.bias": np.zeros(3, np.float32)}
    [w] = spawn_workers(1)
    comm, reply = await session(w, {"kind": "mlp", "in_shape": [4, 4], "hidden": [8], "out": 3}, arrays)
    try:
        assert isinstance(reply, Configured)
        x = RNG.random((5, 4, 4)).astype(np.float32)
        r = await ask(comm, 1, x)
        assert isinstance(r, Result)
        want = np.maximum(x.reshape(5, 16) @ w1.T + 1, 0) @ w2.T
        np.testing.assert_allclose(unpack_array(r.y, "y", shape=(5, 3)), want, rtol=1e-5, atol=1e-5)
        r = await ask(comm, 2, RNG.random((5, 28, 28)).astype(np.float32))  # the shipped image shape: not what was declared
        assert isinstance(r, Error) and r.code == "bad_request" and r.id == 2 and "x" in r.message and "shape" in r.message
        r = await ask(comm, 3, x, v=RNG.random((5, 2, 4, 4)).astype(np.float32))
        assert isinstance(r, Error) and r.id == 3 and "the 'mlp' compute takes x (B, 4, 4), got v, x" in r.message
    finally:
        await comm.close()
    # the widths the spec declares must be the arrays' own
    comm, reply = await session(w, {"kind": "mlp", "in_shape": [4, 4], "hidden": [9], "out": 3}, arrays)
    await comm.close()
    assert isinstance(reply, Error) and reply.code == "bad_request" and "expected widths [16, 9, 3]" in reply.message


async def test_affine_hs_kind_needs_v_of_the_declared_degree(spawn_workers):
    A = RNG.normal(size=(2, 3)).astype(np.float32)
    b = RNG.normal(size=2).astype(np.float32)
    [w] = spawn_workers(1)
    comm, reply = await session(w, {"kind": "affine-hs", "in_shape": [3], "out": 2, "P": 2}, {"affine.weight": A, "affine.bias": b})
    try:
        assert isinstance(reply, Configured)
        x = RNG.random((4, 3)).astype(np.float32)
        v = RNG.random((4, 3, 3)).astype(np.float32)  # V_0, V_1, V_2
        r = await ask(comm, 1, x, v)
        s = v[:, 0] + v[:, 1] * x + v[:, 2] * x * x
        np.testing.assert_allclose(unpack_array(r.y, "y", shape=(4, 2)), s @ A.T + b, rtol=1e-5, atol=1e-5)
        r = await ask(comm, 2, x)
        assert isinstance(r, Error) and r.id == 2 and "takes x (B, 3) and v (B, 3, 3), got x" in r.message
        r = await ask(comm, 3, x, v[:, :2])
        assert isinstance(r, Error) and r.id == 3 and r.code == "bad_request"
    finally:
        await comm.close()


async def test_a_torch_free_worker_offers_only_the_numpy_kinds(spawn_workers, tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_TORCH)
    [w] = spawn_workers(1, env={"PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])})
    comm = await connect("%s:%d" % w.address)
    try:
        hs = await client_handshake(comm, ClientHandshake(TOKEN.encode()))
        assert hs.hello.caps["torch"] is False and hs.hello.caps["computes"] == ["affine", "affine-hs", "mlp"]
        arrays = {"cnn.stack.head.weight": np.zeros((10, 4), np.float32)}
        await comm.write(Configure(0, "approxifer", {}, {"kind": "cnn", "in_shape": [28, 28], "out": 10}, "f4", digest(arrays),
                                   {k: pack_array(v) for k, v in arrays.items()}, None))
        r = await comm.read(timeout=10)
        assert isinstance(r, Error) and "'cnn' compute needs torch on the worker" in r.message
    finally:
        await comm.close()


@pytest.mark.parametrize("name", ["aicc", "uncoded", "replication", "learned-code", "approxifer"])
def test_every_registered_plan_declares_a_valid_spec_for_each_worker(name):
    """What a scheme sends (schemes/registry.configure_message) passes the worker's own message validation."""
    from edgecc.protocol.frames import FrameDecoder, encode_frame
    from edgecc.protocol.messages import parse
    from edgecc.schemes.registry import build_plan, configure_message

    plan = build_plan(name, 3)
    for i in range(plan.N):
        dec = FrameDecoder()
        dec.feed(encode_frame(configure_message(plan, i, None).to_wire()))
        c = parse(dec.next())
        assert c.scheme == name and c.spec().placement == plan.placement and c.spec().out == 10
