"""How master and workers reach each other, whatever carries the bytes.

`Comm` (a stream of whole protocol messages) and `Listener` are the only things the master's links
and the worker's sessions see (comm/core.py). `connect(address)` and `listen(address, handler)`
(comm/registry.py) pick the transport from the address's scheme: `tcp://HOST:PORT` (a bare HOST:PORT too), `tls://HOST:PORT`,
`mem://NAME` (in this process); `register_backend` adds another (comm/registry.py).
"""

from .addressing import AddressError, parse_address, split_address
from .core import Comm, CommClosedError, Handler, Listener
from .registry import connect, listen, register_backend

__all__ = ["AddressError", "Comm", "CommClosedError", "Handler", "Listener", "connect", "listen", "parse_address",
           "register_backend", "split_address"]
