"""Section "codec" of `edgecc bench`: what receiving one request frame costs, with glibc's default
allocator settings and with freed frame memory kept (process.keep_frame_memory).

A sender process writes Compute frames of B groups (f4) over loopback TCP as fast as the receiver
takes them; the receiver reads them with the runtime's `Comm.read` (socket read, framing, msgpack,
message validation) and reports its CPU time (user + system) per frame. The floor beside it: the
same bytes taken by a plain blocking socket into one preallocated buffer (the kernel's copy and TCP
processing, no Python per frame). Each allocator setting runs
in a fresh process (`python -m edgecc.bench.codec '{"keep": true, "frames": 2000}'` prints its rows as
one JSON line): the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

from .config import BenchConfig, log

GROUPS = (1, 64, 256)  # groups per request: one group, the e2e requests, a large frame
FRAME_BUDGET = 600_000_000  # bytes received per size (fewer frames of the large sizes)


def _frame(B: int) -> bytes:
    from ..protocol.frames import encode_frame, pack_array
    from ..protocol.messages import Compute

    x = np.random.default_rng(B).standard_normal((B, 28, 28)).astype(np.float32)
    return encode_frame(Compute(1, x=pack_array(x, "f4"), v=None, images=None, indices=None).to_wire())


def _send(port: int, B: int, count: int) -> None:
    frame = _frame(B)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(count):
            s.sendall(frame)


async def _receive(B: int, count: int) -> dict[str, Any]:
    from ..comm.stream import READ_CHUNK, StreamComm as Comm

    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    async def serve(reader, writer) -> None:
        comm = Comm(reader, writer)
        try:
            await comm.read(timeout=30)  # the first frame: connection set-up is not timed
            t0, w0 = os.times(), time.perf_counter()
            for _ in range(count - 1):
                await comm.read(timeout=30)
            t1, wall = os.times(), time.perf_counter() - w0
            done.set_result({"user": t1.user - t0.user, "system": t1.system - t0.system, "wall": wall})
        except Exception as e:
            done.set_exception(e)
        finally:
            comm.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=READ_CHUNK)
    port = server.sockets[0].getsockname()[1]
    sender = multiprocessing.get_context("fork").Process(target=_send, args=(port, B, count), daemon=True)
    sender.start()
    try:
        got = await asyncio.wait_for(done, 300)
    finally:
        sender.join(10)
        server.close()
    n = count - 1
    return {"groups": B, "frame_bytes": len(_frame(B)), "frames": n,
            "cpu_us_per_frame": (got["user"] + got["system"]) / n * 1e6,
            "user_us_per_frame": got["user"] / n * 1e6, "system_us_per_frame": got["system"] / n * 1e6,
            "wall_us_per_frame": got["wall"] / n * 1e6}


def _receive_raw(B: int, count: int) -> float:
    """Receiver CPU seconds per frame for `count` frames read with recv_into into one reused buffer."""
    size = len(_frame(B))
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        sender = multiprocessing.get_context("fork").Process(target=_send, args=(ls.getsockname()[1], B, count), daemon=True)
        sender.start()
        conn, _ = ls.accept()
        with conn:
            buf = memoryview(bytearray(1 << 20))
            got = conn.recv_into(buf)  # the first bytes: connection set-up is not timed
            t0 = os.times()
            while got < size * count:
                n = conn.recv_into(buf)
                if not n:
                    break
                got += n
            t1 = os.times()
        sender.join(10)
    return (t1.user - t0.user + t1.system - t0.system) / count


def bench_codec(cfg: BenchConfig, timeout: float = 900.0) -> dict[str, Any]:
    """{"default_allocator": rows, "frame_memory_kept": rows, "kept": whether the setting took effect}."""
    out: dict[str, Any] = {}
    budget = FRAME_BUDGET // 2 if cfg.quick else FRAME_BUDGET
    for key, keep in (("default_allocator", False), ("frame_memory_kept", True)):
        args = {"keep": keep, "budget": budget}
        proc = subprocess.run([sys.executable, "-m", "edgecc.bench.codec", json.dumps(args)], capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"codec benchmark exited {proc.returncode}: {proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        out[key] = got["rows"]
        if keep:
            out["kept"] = got["kept"]
    for d, k in zip(out["default_allocator"], out["frame_memory_kept"]):
        log(f"codec {d['groups']} group(s), {d['frame_bytes']} B frames: Comm.read {d['cpu_us_per_frame']:.0f} µs CPU "
            f"per frame, {k['cpu_us_per_frame']:.0f} µs with freed frame memory kept; socket floor {k['socket_floor_us_per_frame']:.0f} µs")
    return out


def _main() -> None:
    args = json.loads(sys.argv[1])
    kept = False
    if args["keep"]:  # before any frame is allocated: the sender processes fork from here, unaffected either way
        from ..process import keep_frame_memory

        kept = keep_frame_memory()
    try:  # the runtime's loop, without process.run (which would keep frame memory in both settings)
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    rows = []
    with asyncio.Runner(loop_factory=factory) as runner:
        for B in GROUPS:
            count = max(200, min(20000, int(args["budget"]) // len(_frame(B))))
            row = runner.run(_receive(B, count))
            row["socket_floor_us_per_frame"] = _receive_raw(B, count) * 1e6
            rows.append(row)
    print(json.dumps({"kept": kept, "rows": rows}))


if __name__ == "__main__":
    _main()
