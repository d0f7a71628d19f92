"""A packet that does not fit the tunnel: ICMP "too big" to its sender, or fragments.

A gateway that encapsulates is a router for the inner packet (RFC 4301 §8.1): when the
ESP/AH packet of an inner packet would not fit the path, the inner sender is told so, as
a router tells it about a smaller link:

* IPv6 (RFC 8201, RFC 4443 §3.2): ICMPv6 Packet Too Big with the MTU the tunnel can
  carry (never below 1280, the IPv6 minimum);
* IPv4 with DF (RFC 1191, RFC 792): Destination Unreachable, "fragmentation needed and
  DF set", with the next-hop MTU;
* IPv4 without DF: the inner packet is fragmented before encapsulation (RFC 791), so the
  outer packet never needs to be (RFC 4459 §3, pre-fragmentation).

The ICMP message leaves from the inner packet's destination address and goes back into
the TUN device: that address is routed into the tunnel, so the kernel's reverse-path
check accepts it, where the gateway's own addresses would be refused as martians.
Errors are never sent about ICMP errors, non-first fragments, or to unspecified,
multicast or broadcast sources (RFC 1122 §3.2.2, RFC 4443 §2.4).  Sans-I/O.
"""

from __future__ import annotations

import struct

from ipsecd.esp.transport import internet_checksum

__all__ = ["IPV6_MIN_MTU", "fragment_ipv4", "too_big"]

IPV6_MIN_MTU = 1280  # RFC 8200 §5
IPV4_MIN_MTU = 68  # RFC 791
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2
_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})  # RFC 792 / RFC 1122 §3.2.2
_IPV4_DF = 0x4000
_IPV4_MF = 0x2000
_IPV4_OFFSET = 0x1FFF
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_U16 = struct.Struct("!H")


def too_big(packet: bytes, mtu: int) -> bytes | None:
    """The ICMP "too big" message for ``packet`` (an IPv4 or IPv6 packet from TUN), or
    None where none may be sent.  ``mtu`` is the largest packet the tunnel carries."""
    if packet[0] >> 4 == 4:
        return _frag_needed(packet, mtu)
    return _packet_too_big(packet, mtu)


def _frag_needed(packet: bytes, mtu: int) -> bytes | None:
    ihl = (packet[0] & 0x0F) * 4
    src, dst = packet[12:16], packet[16:20]
    if _U16.unpack_from(packet, 6)[0] & _IPV4_OFFSET:
        return None  # not the first fragment
    if src[0] == 0 or src[0] >= 224 or src[0] == 127 or dst[0] >= 224:
        return None  # unspecified, loopback, multicast or broadcast (RFC 1122 §3.2.2)
    if packet[9] == 1 and len(packet) > ihl and packet[ihl] in _ICMP_ERRORS:
        return None  # never an error about an error
    quoted = packet[: 576 - 20 - 8]  # as much as fits 576 bytes (RFC 1812 §4.3.2.3)
    icmp = bytearray(
        struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, max(mtu, IPV4_MIN_MTU))
    )
    icmp += quoted
    _U16.pack_into(icmp, 2, internet_checksum(icmp))
    header = bytearray(_IPV4.pack(0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, dst, src))
    _U16.pack_into(header, 10, internet_checksum(header))
    return bytes(header + icmp)


def _packet_too_big(packet: bytes, mtu: int) -> bytes | None:
    src, dst = packet[8:24], packet[24:40]
    if src == bytes(16) or src[0] == 0xFF:
        return None  # unspecified or multicast source (RFC 4443 §2.4 e.3)
    if packet[6] == 58 and len(packet) > 40 and packet[40] < 128:
        return None  # an ICMPv6 error message (§2.4 e.1); extension headers not walked
    source = dst if dst[0] != 0xFF else None
    if source is None:
        return None  # to multicast: allowed by §2.4 e.2, but no unicast source to send from
    quoted = packet[: IPV6_MIN_MTU - 40 - 8]
    icmp = bytearray(struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, max(mtu, IPV6_MIN_MTU)))
    icmp += quoted
    pseudo = source + src + struct.pack("!I3xB", len(icmp), 58)
    _U16.pack_into(icmp, 2, internet_checksum(pseudo + icmp))
    header = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 64, source, src)
    return header + bytes(icmp)


def fragment_ipv4(packet: bytes, size: int) -> list[bytes]:
    """``packet`` (IPv4, DF clear) as fragments of at most ``size`` bytes (RFC 791 §3.2).

    The first fragment keeps every option, the others only those with the copy flag.
    A packet that is already a fragment is cut further (offsets and MF kept right).
    """
    ihl = (packet[0] & 0x0F) * 4
    flags = _U16.unpack_from(packet, 6)[0]
    base = (flags & _IPV4_OFFSET) * 8
    more = bool(flags & _IPV4_MF)
    header, data = packet[:ihl], packet[ihl:]
    later_header = header[:20] + _copied_options(header[20:])
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        front = header if offset == 0 else later_header
        room = (size - len(front)) // 8 * 8
        if room <= 0:
            raise ValueError(f"cannot fragment an IPv4 packet to {size} bytes")
        chunk = data[offset : offset + room]
        last = offset + len(chunk) >= len(data)
        h = bytearray(front)
        h[0] = 0x40 | (len(front) // 4)
        frag = ((base + offset) // 8) | (0 if last and not more else _IPV4_MF)
        _U16.pack_into(h, 2, len(front) + len(chunk))
        _U16.pack_into(h, 6, frag)
        h[10:12] = b"\x00\x00"
        _U16.pack_into(h, 10, internet_checksum(h))
        out.append(bytes(h) + chunk)
        offset += len(chunk)
    return out


def _copied_options(options: bytes) -> bytes:
    """The options with the copy flag (0x80), padded to 4 bytes (RFC 791 §3.1)."""
    out = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of list
            break
        if kind == 1:  # no-operation
            i += 1
            continue
        length = options[i + 1] if i + 1 < len(options) else 0
        if length < 2:
            break
        if kind & 0x80:
            out += options[i : i + length]
        i += length
    out += bytes(-len(out) % 4)
    return bytes(out)


def may_fragment(packet: bytes) -> bool:
    """An IPv4 packet without DF: a router may fragment it (RFC 791)."""
    return packet[0] >> 4 == 4 and not _U16.unpack_from(packet, 6)[0] & _IPV4_DF
