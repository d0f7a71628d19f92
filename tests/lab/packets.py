"""Packet builders for tests: IPv4 (RFC 791), IPv6 (RFC 8200) and UDP (RFC 768) headers.

One set for every test that needs raw packets, instead of a ``struct.pack`` per test file::

    ipv4("10.1.0.2", "10.2.0.2", udp(500, 500, ike_message))
    ipv6("fd00::1", "fd00::2", payload, next_header=6)

IPv4 headers carry their real total length and a valid header checksum; UDP checksums
are 0 ("none", allowed over IPv4 only).
"""

from __future__ import annotations

import ipaddress
import struct

UDP = 17
TCP = 6


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's complement of the one's complement sum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: str | int,
    dst: str | int,
    payload: bytes = b"",
    proto: int = UDP,
    ident: int = 1,
    ttl: int = 64,
) -> bytes:
    """An IPv4 packet without options: 20-byte header (checksum filled in), then ``payload``."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, IHL 5
        0,
        20 + len(payload),
        ident & 0xFFFF,
        0,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + payload


def ipv6(
    src: str | int,
    dst: str | int,
    payload: bytes = b"",
    next_header: int = UDP,
    hop_limit: int = 64,
) -> bytes:
    """An IPv6 packet without extension headers: the 40-byte header, then ``payload``."""
    header = struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
    src_b, dst_b = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return header + src_b + dst_b + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP datagram with checksum 0 (none; IPv4 only)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
