"""Worker addresses: `SCHEME://LOCATION`, where the scheme picks the transport (comm/registry.py).

    tcp://HOST:PORT   plain TCP          tls://HOST:PORT   TCP with TLS
    mem://NAME        in this process    HOST:PORT         tcp://HOST:PORT (or tls:// with a TLS context)

The scheme is the only thing the runtime reads from an address; the location means whatever its
backend says it means. Pure string handling: no sockets, no event loop.
"""

from __future__ import annotations

from ..errors import EdgeccError

DEFAULT_PORT = 7700


class AddressError(EdgeccError):
    """An address that names no transport, or a location its transport cannot read."""


def split_address(address: str, default_scheme: str = "tcp") -> tuple[str, str]:
    """'tls://h:p' -> ('tls', 'h:p'); a bare 'h:p' -> (default_scheme, 'h:p')."""
    if not isinstance(address, str) or not address.strip():
        raise AddressError(f"bad address {address!r}; expected SCHEME://LOCATION or HOST:PORT")
    address = address.strip()
    scheme, sep, location = address.partition("://")
    if not sep:
        return default_scheme, address
    if not scheme or not scheme.isascii() or not scheme.replace("+", "").replace("-", "").isalnum():
        raise AddressError(f"bad address {address!r}: {scheme!r} is not a scheme name")
    return scheme.lower(), location


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    try:
        p = int(port)
    except ValueError:
        raise AddressError(f"bad port in address {text!r}") from None
    if not host or not 0 <= p < 65536:
        raise AddressError(f"bad address {text!r}; expected HOST:PORT")
    return host, p


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """A TCP or TLS address (with or without its scheme) -> (host, port)."""
    scheme, location = split_address(text)
    if scheme not in ("tcp", "tls"):
        raise AddressError(f"{text!r} is not a TCP address (scheme {scheme!r})")
    return parse_host_port(location, default_port)
