"""Byte-level helpers that the fast-client tests share for building MQTT packets."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """MQTT's variable-length integer (the remaining-length field)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
