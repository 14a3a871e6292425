"""Shared-token HMAC handshake and token loading (edgecc.protocol.auth)."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys

import pytest

from edgecc.errors import ConfigError
from edgecc.protocol import auth
from edgecc.protocol.messages import NONCE_BYTES

TOKEN = b"0123456789abcdef0123456789abcdef"
W_NONCE = bytes(range(32))
M_NONCE = bytes(range(32, 64))


def test_nonces_are_fresh_and_sized():
    a, b = auth.new_nonce(), auth.new_nonce()
    assert len(a) == len(b) == NONCE_BYTES == 32 and a != b


def test_macs_match_the_spec_test_vector():
    # the byte strings of docs/protocol.md §6, computed independently of edgecc
    assert auth.master_mac(TOKEN, W_NONCE, M_NONCE) == hmac.new(TOKEN, b"edgecc-master|" + W_NONCE + M_NONCE,
                                                                hashlib.sha256).digest()
    assert auth.worker_mac(TOKEN, M_NONCE, W_NONCE) == hmac.new(TOKEN, b"edgecc-worker|" + M_NONCE + W_NONCE,
                                                                hashlib.sha256).digest()
    assert auth.master_mac(TOKEN, W_NONCE, M_NONCE).hex() == \
        "7c92210e162d1eeb468214552e711ea16c63a0a914c35ccc6a3057b6b0a3aeed"
    assert auth.worker_mac(TOKEN, M_NONCE, W_NONCE).hex() == \
        "6b0548aeea3cf3e7aa2199dc664d88b22e52f791f0a0a24c48db3ab6803168c2"


def test_full_handshake_verifies_with_the_right_token():
    wn, mn = auth.new_nonce(), auth.new_nonce()
    # worker checks the master's MAC, master checks the worker's
    assert auth.verify(auth.master_mac(TOKEN, wn, mn), auth.master_mac(TOKEN, wn, mn))
    assert auth.verify(auth.worker_mac(TOKEN, mn, wn), auth.worker_mac(TOKEN, mn, wn))
    assert len(auth.master_mac(TOKEN, wn, mn)) == 32


def test_wrong_token_fails():
    other = b"0123456789abcdef0123456789abcdeF"
    assert not auth.verify(auth.master_mac(TOKEN, W_NONCE, M_NONCE), auth.master_mac(other, W_NONCE, M_NONCE))
    assert not auth.verify(auth.worker_mac(TOKEN, M_NONCE, W_NONCE), auth.worker_mac(other, M_NONCE, W_NONCE))


def test_swapped_nonces_fail():
    assert not auth.verify(auth.master_mac(TOKEN, W_NONCE, M_NONCE), auth.master_mac(TOKEN, M_NONCE, W_NONCE))
    assert not auth.verify(auth.worker_mac(TOKEN, M_NONCE, W_NONCE), auth.worker_mac(TOKEN, W_NONCE, M_NONCE))


def test_master_and_worker_macs_differ():
    # a worker cannot reflect the master's MAC back as its own (different prefix and nonce order)
    assert auth.master_mac(TOKEN, W_NONCE, M_NONCE) != auth.worker_mac(TOKEN, M_NONCE, W_NONCE)
    assert auth.master_mac(TOKEN, W_NONCE, M_NONCE) != auth.worker_mac(TOKEN, W_NONCE, M_NONCE)


def test_verify_rejects_other_lengths():
    mac = auth.master_mac(TOKEN, W_NONCE, M_NONCE)
    assert not auth.verify(mac, mac[:-1]) and not auth.verify(mac, mac + b"\x00") and not auth.verify(mac, b"")


# -- load_token -----------------------------------------------------------------------------------

@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("EDGECC_TOKEN", raising=False)
    monkeypatch.delenv("EDGECC_TOKEN_FILE", raising=False)
    return monkeypatch


def test_token_from_env(no_env):
    no_env.setenv("EDGECC_TOKEN", "  env-token-0123456789abcdef\n")
    assert auth.load_token() == b"env-token-0123456789abcdef"


def test_token_from_env_file(no_env, tmp_path):
    f = tmp_path / "token"
    f.write_bytes(b"\n file-token-0123456789abcdef \r\n\t")
    no_env.setenv("EDGECC_TOKEN_FILE", str(f))
    no_env.setenv("EDGECC_TOKEN", "env-token-0123456789abcdef")  # the file wins over the variable
    assert auth.load_token() == b"file-token-0123456789abcdef"


def test_token_from_explicit_file(no_env, tmp_path):
    f = tmp_path / "explicit"
    f.write_bytes(b"explicit-token-0123456789abcdef\n")
    other = tmp_path / "other"
    other.write_bytes(b"other-token-0123456789abcdef\n")
    no_env.setenv("EDGECC_TOKEN_FILE", str(other))
    no_env.setenv("EDGECC_TOKEN", "env-token-0123456789abcdef")
    assert auth.load_token(f) == b"explicit-token-0123456789abcdef"  # --token-file wins over both
    assert auth.load_token(str(f)) == b"explicit-token-0123456789abcdef"


def test_token_file_may_hold_binary(no_env, tmp_path):
    f = tmp_path / "bin"
    f.write_bytes(bytes(range(1, 9)) + bytes(range(0x80, 0x90)))
    assert auth.load_token(f) == bytes(range(1, 9)) + bytes(range(0x80, 0x90))


def test_non_ascii_env_token_is_utf8(no_env):
    no_env.setenv("EDGECC_TOKEN", "jeton-ééééééééé")
    assert auth.load_token() == "jeton-ééééééééé".encode()


@pytest.mark.parametrize("token", ["short", "x" * (auth.MIN_TOKEN_BYTES - 1), "   " + "y" * 15 + "   "])
def test_too_short_env_token(no_env, token):
    no_env.setenv("EDGECC_TOKEN", token)
    with pytest.raises(ConfigError, match=f"at least {auth.MIN_TOKEN_BYTES} bytes"):
        auth.load_token()


def test_too_short_file_token(no_env, tmp_path):
    f = tmp_path / "t"
    f.write_bytes(b"   \n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        auth.load_token(f)


def test_min_length_token_is_accepted(no_env):
    no_env.setenv("EDGECC_TOKEN", "z" * auth.MIN_TOKEN_BYTES)
    assert auth.load_token() == b"z" * auth.MIN_TOKEN_BYTES


@pytest.mark.parametrize("value", [None, ""])
def test_missing_token_names_the_env_vars(no_env, value):
    if value is not None:
        no_env.setenv("EDGECC_TOKEN", value)
    with pytest.raises(ConfigError) as e:
        auth.load_token()
    assert "EDGECC_TOKEN" in str(e.value) and "EDGECC_TOKEN_FILE" in str(e.value) and "--token-file" in str(e.value)


def test_empty_token_file_variable_falls_back_to_env(no_env):
    no_env.setenv("EDGECC_TOKEN_FILE", "")
    no_env.setenv("EDGECC_TOKEN", "env-token-0123456789abcdef")
    assert auth.load_token() == b"env-token-0123456789abcdef"


def test_missing_file_is_a_clear_error(no_env, tmp_path):
    missing = tmp_path / "nope" / "token"
    no_env.setenv("EDGECC_TOKEN", "env-token-0123456789abcdef")  # must not silently fall back
    with pytest.raises(ConfigError, match=r"cannot read token file .*nope.*token: No such file or directory"):
        auth.load_token(missing)
    no_env.setenv("EDGECC_TOKEN_FILE", str(missing))
    with pytest.raises(ConfigError, match="cannot read token file"):
        auth.load_token()


def test_directory_is_a_clear_error(no_env, tmp_path):
    with pytest.raises(ConfigError, match="cannot read token file"):
        auth.load_token(tmp_path)


@pytest.mark.skipif(sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="file permissions do not stop root")
def test_unreadable_file_is_a_clear_error(no_env, tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(b"secret-token-0123456789abcdef")
    f.chmod(0)
    try:
        with pytest.raises(ConfigError, match=r"cannot read token file .*secret: Permission denied"):
            auth.load_token(f)
    finally:
        f.chmod(0o600)


def test_permission_error_is_a_clear_error(no_env, tmp_path, monkeypatch):
    """The same as above where the tests run as root: simulate EACCES."""
    f = tmp_path / "secret"
    f.write_bytes(b"secret-token-0123456789abcdef")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(f), "read_bytes", denied)
    with pytest.raises(ConfigError, match=r"cannot read token file .*secret: Permission denied") as e:
        auth.load_token(f)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no OSError traceback for the user


def test_path_through_a_file_is_a_clear_error(no_env, tmp_path):
    f = tmp_path / "plain"
    f.write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot read token file .*Not a directory"):
        auth.load_token(f / "token")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
