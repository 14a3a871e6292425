"""Transports by address scheme (edgecc/comm): tcp://, tls://, mem:// and a backend registered from
outside, each carrying the real worker and master; and clear errors for addresses that name none."""

from __future__ import annotations

import numpy as np
import pytest

from edgecc.comm import AddressError, CommClosedError, connect, listen, register_backend, split_address
from edgecc.comm.addressing import parse_address, parse_host_port
from edgecc.comm.registry import get_backend
from edgecc.comm.tcp import client_ssl_context, server_ssl_context
from edgecc.data import load_sample
from edgecc.master.master import Master
from edgecc.master.probe import probe
from edgecc.modelfile import load_model
from edgecc.protocol.messages import PROTOCOL_VERSION
from edgecc.schemes.aicc import CodedPlan
from edgecc.worker.server import Worker

from .conftest import TOKEN

TOK = TOKEN.encode()


def test_addresses_split_into_scheme_and_location():
    assert split_address("tcp://10.0.0.2:7701") == ("tcp", "10.0.0.2:7701")
    assert split_address("TLS://board:7701") == ("tls", "board:7701")
    assert split_address("mem://w0") == ("mem", "w0")
    assert split_address("10.0.0.2:7701") == ("tcp", "10.0.0.2:7701")  # a bare HOST:PORT is TCP
    assert split_address("10.0.0.2:7701", "tls") == ("tls", "10.0.0.2:7701")
    assert parse_host_port("[::1]:7702") == ("::1", 7702)
    assert parse_address("tls://board") == ("board", 7700)
    for bad in ("", "  ", "://x", "t cp://x:1"):
        with pytest.raises(AddressError):
            split_address(bad)
    for bad in ("host:port", "host:70000", ":7700"):
        with pytest.raises(AddressError):
            parse_host_port(bad)
    with pytest.raises(AddressError, match="not a TCP address"):
        parse_address("mem://w0")


async def test_an_unknown_scheme_is_named_with_the_schemes_there_are():
    with pytest.raises(AddressError, match=r"unknown address scheme 'quic' \(known schemes: .*mem.*tcp.*tls"):
        await connect("quic://board:7701")
    with pytest.raises(AddressError, match="unknown address scheme 'udp'"):
        await listen("udp://0.0.0.0:7701", lambda comm: None)


async def test_tls_is_never_quietly_dropped_or_assumed(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with pytest.raises(AddressError, match="needs TLS settings"):
        await connect("tls://127.0.0.1:1")
    with pytest.raises(AddressError, match="plain TCP but TLS was asked for: use tls://127.0.0.1:1"):
        await connect("tcp://127.0.0.1:1", ssl_context=client_ssl_context(str(tmp_path / "ca.pem")))


async def test_nobody_listening_is_a_closed_comm_on_every_transport():
    with pytest.raises(CommClosedError, match="nothing listens there"):
        await connect("mem://nobody-here")
    with pytest.raises(CommClosedError, match="cannot connect"):
        await connect("tcp://127.0.0.1:1", timeout=2.0)


async def _one_request(addresses: list[str], ssl_context=None) -> np.ndarray:
    model, info = load_model("default")
    plan = CodedPlan(model, info, 3)
    images, labels = load_sample()
    m = Master(plan, addresses, TOK, ssl_context=ssl_context)
    try:
        await m.start(wait_ready=20)
        logits = await m.infer(images[:16].reshape(8, 2, 28, 28))
    finally:
        await m.close()
    assert (logits.argmax(-1).reshape(-1) == labels[:16]).mean() >= 0.75
    return logits


async def test_the_same_worker_serves_over_tcp_and_in_memory():
    workers = [Worker(TOK) for _ in range(3)]
    try:
        tcp = [await w.start("tcp://127.0.0.1:0") for w in workers]
        assert all(a.startswith("tcp://127.0.0.1:") and not a.endswith(":0") for a in tcp)
        by_tcp = await _one_request(tcp)
    finally:
        for w in workers:
            await w.close()
    workers = [Worker(TOK) for _ in range(3)]
    try:
        mem = [await w.start("mem://") for w in workers]
        assert len(set(mem)) == 3 and all(a.startswith("mem://") for a in mem)
        by_mem = await _one_request(mem)
        assert (await probe(mem[0], TOK))["proto"] == PROTOCOL_VERSION
    finally:
        for w in workers:
            await w.close()
    np.testing.assert_array_equal(by_tcp, by_mem)  # the transport changes nothing a request computes
    with pytest.raises(CommClosedError):  # a closed worker's name is free and unreachable
        await connect(mem[0])


async def test_tls_addresses_carry_the_worker_and_the_master(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "w.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "w.key"))
    workers = [Worker(TOK, ssl_context=server_ssl_context(str(tmp_path / "w.pem"), str(tmp_path / "w.key")))
               for _ in range(3)]
    try:
        addresses = [await w.start("tls://127.0.0.1:0") for w in workers]
        assert all(a.startswith("tls://") for a in addresses)
        await _one_request(addresses, ssl_context=client_ssl_context(str(tmp_path / "ca.pem")))
    finally:
        for w in workers:
            await w.close()


class CountingBackend:
    """A transport of a test's own, registered under its own scheme: TCP underneath, counting."""

    def __init__(self):
        self.tcp = get_backend("tcp")
        self.connects = 0
        self.accepted = 0

    async def connect(self, location, **kw):
        self.connects += 1
        return await self.tcp.connect(location, **kw)

    async def listen(self, location, handler, **kw):
        async def counted(comm):
            self.accepted += 1
            await handler(comm)

        return CountedListener(await self.tcp.listen(location, counted, **kw))


class CountedListener:
    def __init__(self, tcp):
        self.tcp = tcp

    @property
    def address(self) -> str:
        return "counted://" + self.tcp.address.split("://", 1)[1]

    async def stop(self) -> None:
        await self.tcp.stop()


async def test_a_backend_registered_from_outside_carries_workers_with_no_change_to_the_runtime():
    backend = CountingBackend()
    register_backend("counted", backend)
    workers = [Worker(TOK) for _ in range(3)]
    try:
        addresses = [await w.start("counted://127.0.0.1:0") for w in workers]
        assert all(a.startswith("counted://127.0.0.1:") for a in addresses)
        await _one_request(addresses)
    finally:
        for w in workers:
            await w.close()
    assert backend.connects >= 3 and backend.accepted >= 3


async def test_a_refusal_reaches_the_peer_in_memory_as_over_tcp():
    """A worker writes its `error` and drops the connection at once: the bytes written before the drop
    still arrive (as a socket's, already in the kernel, do), so the master learns why."""
    for address in ("mem://", "tcp://127.0.0.1:0"):
        w = Worker(TOK)
        try:
            bound = await w.start(address)
            with pytest.raises(Exception, match="authentication failed"):
                await probe(bound, b"not-the-token-0123456789abcdef", timeout=5.0)
        finally:
            await w.close()
