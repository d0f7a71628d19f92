"""Quick reads of the inner IP packet carried in tunnel mode (RFC 4303 §2.3).

Only what the data plane needs per packet: the IP version and the source and
destination addresses as ints, so they can be compared with a
:class:`~ipsecd.selectors.TrafficSelector`'s integer range (RFC 4301 §5.2).
"""

from __future__ import annotations

import struct

IPPROTO_IPIP = 4  # next header for an inner IPv4 packet (RFC 4303 §2.3, tunnel mode)
IPPROTO_IPV6 = 41  # next header for an inner IPv6 packet
IPPROTO_NONE = 59  # "no next header": a dummy/TFC packet (RFC 4303 §2.6)

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40

_V4_ADDRS = struct.Struct("!II")  # at offset 12
_V6_ADDRS = struct.Struct("!QQQQ")  # at offset 8


def next_header_for(packet: bytes) -> int | None:
    """The ESP next header for an inner packet from its version nibble, or None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return IPPROTO_IPIP
    if version == 6:
        return IPPROTO_IPV6
    return None


def inner_addresses(packet: bytes, next_header: int) -> tuple[int, int, int] | None:
    """``(version, src, dst)`` of the inner packet, or None if it is not valid IP.

    ``next_header`` (from the ESP trailer) must agree with the version nibble:
    4 → IPv4 with IHL >= 5, 41 → IPv6.  Lengths are checked before any read.
    """
    n = len(packet)
    if next_header == IPPROTO_IPIP:
        if n < IPV4_HEADER_LEN:
            return None
        b0 = packet[0]
        if b0 >> 4 != 4 or (b0 & 0x0F) < 5 or n < (b0 & 0x0F) * 4:
            return None
        src, dst = _V4_ADDRS.unpack_from(packet, 12)
        return 4, src, dst
    if next_header == IPPROTO_IPV6:
        if n < IPV6_HEADER_LEN or packet[0] >> 4 != 6:
            return None
        s_hi, s_lo, d_hi, d_lo = _V6_ADDRS.unpack_from(packet, 8)
        return 6, (s_hi << 64) | s_lo, (d_hi << 64) | d_lo
    return None
