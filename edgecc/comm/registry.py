"""Transports by address scheme, and `connect`/`listen`, which pick one from an address.

A backend makes Comms and Listeners for the locations of its scheme; `register_backend` adds one (a
serial link, QUIC, a test double) without touching the runtime. The built-in schemes: tcp, tls
(comm/tcp.py), mem (comm/memory.py) and ray (comm/ray.py), each imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from ..protocol.frames import DEFAULT_MAX_FRAME
from .addressing import AddressError, split_address
from .core import Comm, Handler, Listener


class Backend(Protocol):
    async def connect(self, location: str, *, timeout: float, ssl_context, max_frame: int) -> Comm: ...

    async def listen(self, location: str, handler: Handler, *, ssl_context, max_frame: int,
                     handshake_timeout: float) -> Listener: ...


# scheme -> (module, attribute) of a built-in backend, imported when first asked for (ray://: Ray
# actors, comm/ray.py; only that module imports ray, an optional extra)
_BUILTIN = {"tcp": (".tcp", "TCP"), "tls": (".tcp", "TLS"), "mem": (".memory", "MEMORY"), "ray": (".ray", "RAY")}
_backends: dict[str, Backend] = {}


def register_backend(scheme: str, backend: Backend) -> None:
    """Make `scheme://...` addresses reach `backend` (replacing any backend of that scheme)."""
    _backends[scheme.lower()] = backend


def get_backend(scheme: str) -> Backend:
    scheme = scheme.lower()
    if scheme not in _backends and scheme in _BUILTIN:
        module, name = _BUILTIN[scheme]
        _backends[scheme] = getattr(importlib.import_module(module, __package__), name)
    try:
        return _backends[scheme]
    except KeyError:
        known = ", ".join(sorted(set(_BUILTIN) | set(_backends)))
        raise AddressError(f"unknown address scheme {scheme!r} (known schemes: {known})") from None


def backend_for(address: str, ssl_context=None) -> tuple[Backend, str]:
    """(backend, location) for `address`. A bare HOST:PORT is tls when a TLS context is given, tcp
    otherwise; an explicit tcp:// with a TLS context, or tls:// without one, is refused rather than
    quietly run another way."""
    scheme, location = split_address(address, "tls" if ssl_context is not None else "tcp")
    if scheme == "tcp" and ssl_context is not None:
        raise AddressError(f"{address!r} is plain TCP but TLS was asked for: use tls://{location}")
    if scheme == "tls" and ssl_context is None:
        raise AddressError(f"{address!r} needs TLS settings (a CA on the master, a certificate and key on the worker)")
    return get_backend(scheme), location


async def connect(address: str, *, timeout: float = 5.0, ssl_context=None, max_frame: int = DEFAULT_MAX_FRAME) -> Comm:
    """A Comm to `address` through the backend of its scheme (a bare HOST:PORT is tcp, or tls when
    `ssl_context` is given). CommClosedError when nobody answers there."""
    backend, location = backend_for(address, ssl_context)
    return await backend.connect(location, timeout=timeout, ssl_context=ssl_context, max_frame=max_frame)


async def listen(address: str, handler: Handler, *, ssl_context=None, max_frame: int = DEFAULT_MAX_FRAME,
                 handshake_timeout: float = 5.0) -> Listener:
    """Start accepting at `address`; each connection runs `handler(comm)` in its own task."""
    backend, location = backend_for(address, ssl_context)
    return await backend.listen(location, handler, ssl_context=ssl_context, max_frame=max_frame,
                                handshake_timeout=handshake_timeout)
