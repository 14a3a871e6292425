"""Shared-secret authentication: HMAC-SHA256 challenge-response over both peers' nonces.

The worker sends a nonce; the master answers with its own nonce and
HMAC(token, "edgecc-master|" + worker_nonce + master_nonce); the worker checks it and proves itself
with HMAC(token, "edgecc-worker|" + master_nonce + worker_nonce). Fresh nonces on both sides make
replayed handshakes useless; the token never crosses the wire. The token comes from
$EDGECC_TOKEN or the file named by $EDGECC_TOKEN_FILE (or --token-file), never from argv.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ..errors import ConfigError
from .messages import NONCE_BYTES

MIN_TOKEN_BYTES = 16


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def master_mac(token: bytes, worker_nonce: bytes, master_nonce: bytes) -> bytes:
    return hmac.new(token, b"edgecc-master|" + worker_nonce + master_nonce, hashlib.sha256).digest()


def worker_mac(token: bytes, master_nonce: bytes, worker_nonce: bytes) -> bytes:
    return hmac.new(token, b"edgecc-worker|" + master_nonce + worker_nonce, hashlib.sha256).digest()


def verify(expected: bytes, got: bytes) -> bool:
    return hmac.compare_digest(expected, got)


def load_token(token_file: str | os.PathLike | None = None) -> bytes:
    """The shared secret: --token-file, else $EDGECC_TOKEN_FILE, else $EDGECC_TOKEN."""
    path = token_file or os.environ.get("EDGECC_TOKEN_FILE")
    if path:
        try:
            token = Path(path).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
    elif os.environ.get("EDGECC_TOKEN"):
        token = os.environ["EDGECC_TOKEN"].strip().encode()
    else:
        raise ConfigError("no shared token: set EDGECC_TOKEN, or EDGECC_TOKEN_FILE / --token-file to a file holding it "
                          "(generate one with `edgecc token`)")
    if len(token) < MIN_TOKEN_BYTES:
        raise ConfigError(f"the shared token must be at least {MIN_TOKEN_BYTES} bytes long")
    return token
