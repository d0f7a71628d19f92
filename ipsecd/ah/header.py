"""The AH header (RFC 4302 §2)::

    Next Header(1) | Payload Len(1) | Reserved(2) | SPI(4) | Sequence Number(4) | ICV (+ padding)

Payload Len is the AH length in 32-bit words minus 2 (§2.2).  The ICV field is
padded so AH is a multiple of 4 bytes in IPv4 and 8 bytes in IPv6 (§2.6,
§3.3.3.2.1), with only as much padding as that takes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["AH_FIXED", "AH_FIXED_LEN", "AhHeader", "ah_length"]

AH_FIXED_LEN = 12  # next header .. sequence number
# Next header, payload len, reserved, SPI, sequence number (§2).
AH_FIXED = struct.Struct("!BBHII")


def ah_length(icv_len: int, version: int) -> int:
    """Bytes of an AH header carrying an ``icv_len``-byte ICV over IPv4 or IPv6 (§3.3.3.2.1)."""
    n = AH_FIXED_LEN + icv_len
    return n + (-n % (8 if version == 6 else 4))


@dataclass(frozen=True, slots=True)
class AhHeader:
    """One AH header; ``icv`` is the whole ICV field, padding included."""

    next_header: int
    spi: int
    seq: int  # low 32 bits of the sequence number (the high half is never sent, §2.5.1)
    icv: bytes
    reserved: int = 0

    @property
    def length(self) -> int:
        return AH_FIXED_LEN + len(self.icv)

    @property
    def payload_len(self) -> int:
        """The Payload Len field: length in 32-bit words minus 2 (§2.2)."""
        return self.length // 4 - 2

    def pack(self) -> bytes:
        if len(self.icv) % 4:
            raise ValueError(f"AH ICV field of {len(self.icv)} bytes is not a multiple of 4")
        fixed = AH_FIXED.pack(self.next_header, self.payload_len, self.reserved, self.spi, self.seq)
        return fixed + self.icv

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> AhHeader:
        """Read an AH header at ``offset``; ValueError if it does not fit in ``data``."""
        if offset + AH_FIXED_LEN > len(data):
            raise ValueError(f"AH header truncated: {len(data) - offset} bytes")
        next_header, payload_len, reserved, spi, seq = AH_FIXED.unpack_from(data, offset)
        end = offset + (payload_len + 2) * 4
        if payload_len < 1 or end > len(data):
            raise ValueError(
                f"AH payload length {payload_len} does not fit {len(data) - offset} bytes"
            )
        return cls(next_header, spi, seq, bytes(data[offset + AH_FIXED_LEN : end]), reserved)
