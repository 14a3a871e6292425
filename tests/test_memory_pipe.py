"""The in-memory stream pair behaves as TCP does where the runtime looks: order, flow control, close, reset."""

import asyncio

import pytest

from edgecc.comm.memory_pipe import DELIVERY_CHUNK, HIGH_WATER, memory_streams
from edgecc.comm import CommClosedError
from edgecc.comm.stream import StreamComm as Comm
from edgecc.protocol.messages import Ping, Pong


async def test_bytes_arrive_in_order_and_in_pieces():
    (ra, wa), (rb, wb) = memory_streams()
    payload = bytes(range(256)) * 1024  # 256 KiB: several delivery chunks
    wa.write(payload)
    got = bytearray()
    reads = 0
    while len(got) < len(payload):
        got += await rb.read(1 << 20)
        reads += 1
    assert bytes(got) == payload
    assert reads >= len(payload) // DELIVERY_CHUNK  # never one huge read, as over TCP
    wb.write(b"back")
    assert await ra.readexactly(4) == b"back"


async def test_a_reader_that_stops_reading_backs_up_its_writer():
    (ra, wa), (rb, wb) = memory_streams(limit=2 ** 16)
    big = b"x" * (4 * 2 ** 20)
    wa.write(big)
    for _ in range(200):  # let deliveries run: the reader's buffer fills and pauses its peer
        await asyncio.sleep(0)
    buffered = wa.transport.get_write_buffer_size()
    assert buffered > HIGH_WATER  # the bytes wait at the writer, as in a socket's send buffer
    drained = asyncio.ensure_future(wa.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()  # a writer above its high-water mark waits for the reader
    got = 0
    while got < len(big):
        got += len(await rb.read(1 << 20))
    await asyncio.wait_for(drained, 1.0)
    assert wa.transport.get_write_buffer_size() == 0


async def test_close_delivers_what_was_written_then_end_of_stream():
    (ra, wa), (rb, wb) = memory_streams()
    wa.write(b"a" * 200_000)
    wa.close()  # more than the reader's buffer holds: the rest goes out as the reader takes it
    data = await asyncio.wait_for(rb.read(-1), 2.0)
    assert data == b"a" * 200_000
    assert rb.at_eof()
    await asyncio.wait_for(wa.wait_closed(), 1.0)


async def test_abort_resets_the_peer_and_comm_reports_it():
    (ra, wa), (rb, wb) = memory_streams()
    a, b = Comm(ra, wa), Comm(rb, wb)
    await a.write(Ping(1))
    assert isinstance(await b.read(timeout=1.0), Ping)
    await b.write(Pong(1))
    assert isinstance(await a.read(timeout=1.0), Pong)
    assert a.kernel_backlog() == 0  # no kernel queue in memory: the write buffer is the whole backlog
    a.abort()
    with pytest.raises(CommClosedError):
        await b.read(timeout=1.0)


async def test_writes_after_close_are_dropped_like_a_socket_transport():
    (ra, wa), (rb, wb) = memory_streams()
    wa.close()
    wa.write(b"late")
    await wa.wait_closed()
    assert await rb.read(-1) == b""
