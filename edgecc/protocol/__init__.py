"""The wire protocol, sans I/O: bytes in, validated messages out (see docs/protocol.md)."""
