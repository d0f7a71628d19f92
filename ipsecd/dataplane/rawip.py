"""ESP and AH directly over IP (protocols 50 and 51), sans-I/O: the framing around the SAs.

When IKE detects no NAT and the peer allows it (``encap: auto``), ESP and AH packets
travel without UDP (RFC 7296 §2.23, RFC 4303 §2, RFC 4302 §2).  The data plane then
hands whole IP packets to raw sockets that send them as they are (``IP_HDRINCL``,
``IPV6_HDRINCL``), because AH's ICV covers the IP header: the header on the wire must
be the one the ICV was computed over.

* :class:`OuterHeader` — the outer header of a tunnel-mode packet, with a non-zero
  IPv4 Identification of our own (RFC 4302 §3.3.3.1.1.1: the Identification is
  immutable, covered by the ICV; left 0, the kernel would fill it in after the ICV);
* :func:`own_identification` — the same for a transport-mode packet of the host;
* :func:`reconstruct_ipv6` — an IPv6 raw socket delivers the packet without its IPv6
  header (RFC 3542 §3); the receiver rebuilds it from the addresses and hop limit the
  socket reports, which is exact unless extension headers preceded ESP/AH (they are not
  reported: such an AH packet then fails its ICV and is counted ``bad_icv``).
"""

from __future__ import annotations

import struct

from ipsecd.esp.transport import IPV6_HEADER, IpFront

__all__ = ["OuterHeader", "own_identification", "reconstruct_ipv6"]

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
DEFAULT_TTL = 64
IPV4_DF = 0x4000  # Don't Fragment: ipsecd fits its packets to the path itself


class OuterHeader:
    """Outer IP headers for tunnel-mode ESP/AH directly over IP, one Identification
    counter per data plane (RFC 791: unique per source, destination and protocol)."""

    def __init__(self, first_identification: int = 1) -> None:
        self._ident = first_identification & 0xFFFF

    def next_identification(self) -> int:
        """The next IPv4 Identification, never 0."""
        self._ident = (self._ident % 0xFFFF) + 1
        return self._ident

    def front(self, source: bytes, destination: bytes) -> IpFront:
        """A header from ``source`` to ``destination`` (4 or 16 bytes each) whose next
        header and lengths :meth:`IpFront.build` sets."""
        if len(source) == 4:
            header = _IPV4.pack(
                0x45, 0, 0, self.next_identification(), IPV4_DF, DEFAULT_TTL, 0, 0, source,
                destination,
            )  # fmt: skip
            return IpFront(4, header, 9)
        return IpFront(6, _IPV6.pack(0x60000000, 0, 0, DEFAULT_TTL, source, destination), 6)


def own_identification(packet: bytes, outer: OuterHeader) -> bytes:
    """``packet`` (IPv4) with a non-zero Identification: the host may send 0 (an atomic
    datagram, RFC 6864), which a raw socket would replace after AH covered it."""
    if packet[0] >> 4 != 4 or packet[4:6] != b"\x00\x00":
        return packet
    return b"".join((packet[:4], _U16.pack(outer.next_identification()), packet[6:]))


def reconstruct_ipv6(
    payload: bytes, source: bytes, destination: bytes, protocol: int, hop_limit: int = 0
) -> bytes:
    """The IPv6 packet an IPv6 raw socket received as ``payload`` (what followed the
    header): version 6, payload length, next header ``protocol``, the addresses.

    Traffic class and flow label are mutable (zero in the AH ICV, RFC 4302
    §3.3.3.1.2) and unknown here: written as 0.
    """
    if len(payload) > 0xFFFF:
        raise ValueError(f"IPv6 payload of {len(payload)} bytes exceeds 65535")
    header = _IPV6.pack(0x60000000, len(payload), protocol, hop_limit, source, destination)
    assert len(header) == IPV6_HEADER
    return header + payload
