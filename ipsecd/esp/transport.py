"""Transport-mode framing for ESP and AH, sans-I/O (RFC 4303 §3.1.1, RFC 4302 §3.1.1).

In transport mode the IP header of the host's own packet stays in front and
ESP or AH goes between it and what it protects::

    IPv4:  IP header (+ options)                     | ESP/AH | TCP, UDP, ...
    IPv6:  IPv6 header + hop-by-hop, dest-opts (only
           when a routing header follows), routing   | ESP/AH | dest-opts, TCP, ...

The IPv6 placement follows the RFC 8200 §4.1 header order (destination
options meant for the final destination come after ESP/AH, so ESP hides them,
RFC 4303 §3.1.1).  Linux and scapy keep a lone destination-options header in
front instead; both layouts are read on the way in.

This module does the byte work around the SA objects, which stay mode-blind
(``OutboundEspSa.encapsulate(payload, next_header)`` with the upper protocol
as next header):

* :func:`split_for_transport` — outbound: an IP packet from the host becomes
  ``(front, next_header, payload)``;
* :meth:`IpFront.build` — the front with next header, total/payload length and
  the IPv4 header checksum set, followed by a body (ESP/AH outbound, the opened
  payload inbound);
* :func:`locate_ipsec_header` — inbound: where ESP (50) or AH (51) starts;
* :meth:`IpFront.synthesize` — a plain header from addresses, for a packet that
  arrived over UDP (RFC 3948) where the socket keeps the IP header;
* :func:`fix_transport_checksum` — RFC 3948 §3.1.2: after a NAT, the TCP/UDP
  checksum still covers the sender's original addresses.  Incremental update
  (RFC 1624) when the original addresses are known (IKEv2 gives them in the
  traffic selectors, RFC 7296 §2.23.1), full recompute otherwise.

Fragments are refused both ways: ESP/AH apply to whole datagrams in transport
mode (RFC 4301 §7, RFC 4302 §3.4.1); the caller reassembles first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsecd.esp.counters import DropReason

__all__ = [
    "IPPROTO_AH",
    "IPPROTO_ESP",
    "IpFront",
    "TransportFramingError",
    "fix_transport_checksum",
    "internet_checksum",
    "locate_ipsec_header",
    "split_for_transport",
]

IPPROTO_HOPOPTS = 0  # IPv6 hop-by-hop options (RFC 8200 §4.3)
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43  # RFC 8200 §4.4
IPPROTO_FRAGMENT = 44  # RFC 8200 §4.5
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_DSTOPTS = 60  # RFC 8200 §4.6

MAX_IP_LENGTH = 0xFFFF  # IPv4 total length / IPv6 payload length (no jumbograms)
IPV4_MIN_HEADER = 20
IPV6_HEADER = 40

# Extension headers with the common "next header, length in 8-octet units - 1" layout.
_OPTION_LIKE = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})
_U16 = struct.Struct("!H")
_MOD = 0xFFFF
_IPV4_MF_OFFSET = 0x3FFF  # More Fragments flag + fragment offset


class TransportFramingError(ValueError):
    """A packet cannot be framed for (or unframed from) transport mode.

    ``reason`` is the drop counter the receive path counts it under.
    """

    def __init__(self, message: str, reason: DropReason = DropReason.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum field value for ``data`` (odd length padded with zero)."""
    return _field(_sum(data))


def _sum(data: bytes | bytearray | memoryview) -> int:
    """Ones'-complement sum of 16-bit words, reduced mod 0xFFFF (2^16 = 1 mod 0xFFFF)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % _MOD


def _field(total: int) -> int:
    """The checksum field that makes the whole sum 0xFFFF (0 kept as 0)."""
    return _MOD - ((total % _MOD) or _MOD)


@dataclass(frozen=True, slots=True)
class IpFront:
    """The IP header (and the options/extension headers kept with it) in front of ESP/AH.

    ``nh_offset`` is the index in ``header`` of the byte naming what follows:
    the IPv4 Protocol field, or the Next Header byte of the IPv6 header or of
    the last extension header kept in front.
    """

    version: int
    header: bytes
    nh_offset: int

    @property
    def next_header(self) -> int:
        return self.header[self.nh_offset]

    @property
    def source(self) -> bytes:
        return self.header[12:16] if self.version == 4 else self.header[8:24]

    @property
    def destination(self) -> bytes:
        return self.header[16:20] if self.version == 4 else self.header[24:40]

    @classmethod
    def synthesize(cls, source: bytes, destination: bytes, hop_limit: int = 64) -> IpFront:
        """A plain header between two addresses (4 or 16 bytes each), no options.

        For a transport-mode packet that arrived UDP-encapsulated: the socket
        kept the IP header, so the receiver rebuilds one from the addresses it
        saw (RFC 3948 §3.1.2 then fixes the TCP/UDP checksum).
        """
        if len(source) == 4 and len(destination) == 4:
            header = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, hop_limit, 0, 0, source, destination
            )
            return cls(4, header, 9)
        if len(source) == 16 and len(destination) == 16:
            header = struct.pack("!IHBB16s16s", 0x60000000, 0, 0, hop_limit, source, destination)
            return cls(6, header, 6)
        raise TransportFramingError("addresses must be both IPv4 (4 bytes) or both IPv6 (16 bytes)")

    @classmethod
    def parse(cls, header: bytes) -> IpFront:
        """An outer header built by the caller (tunnel mode): all of ``header`` is header.

        IPv4: exactly IHL*4 bytes.  IPv6: the fixed header plus any hop-by-hop,
        routing and destination-options headers, ending exactly at the end.
        """
        version = header[0] >> 4 if header else 0
        if version == 4:
            if len(header) < IPV4_MIN_HEADER or (header[0] & 0x0F) * 4 != len(header):
                raise TransportFramingError(
                    f"outer IPv4 header of {len(header)} bytes does not match its IHL"
                )
            return cls(4, bytes(header), 9)
        if version == 6:
            nh_offset, offset = 6, IPV6_HEADER
            while offset < len(header):
                if header[nh_offset] not in _OPTION_LIKE:
                    raise TransportFramingError(
                        f"outer IPv6 header: extension header {header[nh_offset]} not allowed here"
                    )
                nh_offset, offset = offset, offset + _ext_len(header, offset)
            if offset != len(header):
                raise TransportFramingError("outer IPv6 extension headers overrun the header")
            return cls(6, bytes(header), nh_offset)
        raise TransportFramingError(f"outer header is not IPv4 or IPv6 (version {version})")

    def build(self, next_header: int, body: bytes) -> bytes:
        """``header`` with next header, length (and IPv4 checksum) set, then ``body``."""
        h = bytearray(self.header)
        h[self.nh_offset] = next_header
        total = len(h) + len(body)
        if self.version == 4:
            if total > MAX_IP_LENGTH:
                raise TransportFramingError(f"IPv4 packet of {total} bytes exceeds 65535")
            _U16.pack_into(h, 2, total)
            h[10:12] = b"\x00\x00"
            _U16.pack_into(h, 10, internet_checksum(h))
        else:
            if total - IPV6_HEADER > MAX_IP_LENGTH:
                raise TransportFramingError(
                    f"IPv6 payload of {total - IPV6_HEADER} bytes exceeds 65535"
                )
            _U16.pack_into(h, 4, total - IPV6_HEADER)
        return bytes(h) + body


def _ext_len(packet: bytes | bytearray, offset: int) -> int:
    """Length of the hop-by-hop/routing/dest-opts header at ``offset`` (RFC 8200 §4)."""
    if offset + 2 > len(packet):
        raise TransportFramingError("IPv6 extension header truncated", DropReason.TOO_SHORT)
    return (packet[offset + 1] + 1) * 8


def _check_ipv4(packet: bytes) -> int:
    """IHL*4 after checking the IPv4 header lengths and that it is not a fragment."""
    n = len(packet)
    if n < IPV4_MIN_HEADER:
        raise TransportFramingError(f"IPv4 packet of {n} bytes", DropReason.TOO_SHORT)
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or ihl > n:
        raise TransportFramingError(f"IPv4 IHL {ihl} does not fit a {n}-byte packet")
    total = _U16.unpack_from(packet, 2)[0]
    if total != n:
        raise TransportFramingError(
            f"IPv4 total length {total} but {n} bytes", _length_reason(total, n)
        )
    if _U16.unpack_from(packet, 6)[0] & _IPV4_MF_OFFSET:
        raise TransportFramingError(
            "IPv4 fragment: ESP/AH transport mode takes whole datagrams (RFC 4301 §7)",
            DropReason.FRAGMENT,
        )
    return ihl


def _check_ipv6(packet: bytes) -> None:
    n = len(packet)
    if n < IPV6_HEADER:
        raise TransportFramingError(f"IPv6 packet of {n} bytes", DropReason.TOO_SHORT)
    plen = _U16.unpack_from(packet, 4)[0]
    if plen + IPV6_HEADER != n:
        raise TransportFramingError(
            f"IPv6 payload length {plen} but {n - IPV6_HEADER} bytes",
            _length_reason(plen + IPV6_HEADER, n),
        )


def _length_reason(claimed: int, received: int) -> DropReason:
    """Fewer bytes than the header claims: truncated; more: malformed."""
    return DropReason.TOO_SHORT if claimed > received else DropReason.MALFORMED


def _fragment_error() -> TransportFramingError:
    return TransportFramingError(
        "IPv6 fragment header: ESP/AH transport mode takes whole datagrams (RFC 4301 §7)",
        DropReason.FRAGMENT,
    )


def split_for_transport(packet: bytes) -> tuple[IpFront, int, bytes]:
    """Outbound: ``(front, next_header, payload)`` for an IP packet from the host.

    ESP/AH goes after the IPv4 header and its options, or after the IPv6
    header, a leading hop-by-hop header and everything up to and including the
    last routing header (RFC 8200 §4.1, RFC 4302 §3.1.1, RFC 4303 §3.1.1).
    Raises :class:`TransportFramingError` for anything that is not a whole,
    well-formed IPv4/IPv6 datagram.
    """
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        ihl = _check_ipv4(packet)
        return IpFront(4, packet[:ihl], 9), packet[9], packet[ihl:]
    if version != 6:
        raise TransportFramingError(f"not an IPv4/IPv6 packet (version {version})")
    _check_ipv6(packet)
    # Walk the extension headers; remember where the front ends.
    cut_nh, cut = 6, IPV6_HEADER
    nh_offset, offset = 6, IPV6_HEADER
    first = True
    while True:
        nh = packet[nh_offset]
        if nh == IPPROTO_FRAGMENT:
            raise _fragment_error()
        if nh not in _OPTION_LIKE:
            break
        nh_offset, offset = offset, offset + _ext_len(packet, offset)
        if offset > len(packet):
            raise TransportFramingError(
                "IPv6 extension header overruns the packet", DropReason.TOO_SHORT
            )
        if nh == IPPROTO_ROUTING or (nh == IPPROTO_HOPOPTS and first):
            cut_nh, cut = nh_offset, offset
        first = False
    return IpFront(6, packet[:cut], cut_nh), packet[cut_nh], packet[cut:]


def locate_ipsec_header(packet: bytes, protocol: int) -> tuple[IpFront, int]:
    """Inbound: the front and the offset where the ESP (50) or AH (51) header starts.

    Checks the IP lengths strictly (total/payload length equal to the bytes
    received) and walks IPv6 hop-by-hop, routing and destination-options
    headers.  Raises :class:`TransportFramingError` (with the drop reason) for
    a fragment, a truncated or inconsistent packet, or no such header.
    """
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        ihl = _check_ipv4(packet)
        if packet[9] != protocol:
            raise TransportFramingError(f"IPv4 protocol {packet[9]}, expected {protocol}")
        return IpFront(4, packet[:ihl], 9), ihl
    if version != 6:
        raise TransportFramingError(f"not an IPv4/IPv6 packet (version {version})")
    _check_ipv6(packet)
    nh_offset, offset = 6, IPV6_HEADER
    while True:
        nh = packet[nh_offset]
        if nh == protocol:
            return IpFront(6, packet[:offset], nh_offset), offset
        if nh == IPPROTO_FRAGMENT:
            raise _fragment_error()
        if nh not in _OPTION_LIKE:
            raise TransportFramingError(f"IPv6 next header {nh} before protocol {protocol}")
        nh_offset, offset = offset, offset + _ext_len(packet, offset)
        if offset > len(packet):
            raise TransportFramingError(
                "IPv6 extension header overruns the packet", DropReason.TOO_SHORT
            )


def _upper_layer(packet: bytes) -> tuple[int, int] | None:
    """``(protocol, offset)`` of the upper-layer header of a whole IP packet, if found."""
    if packet[0] >> 4 == 4:
        return packet[9], (packet[0] & 0x0F) * 4
    nh, offset = packet[6], IPV6_HEADER
    while nh in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
        if offset + 2 > len(packet):
            return None
        nh, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
    return nh, offset


def fix_transport_checksum(
    packet: bytes, original_source: bytes | None = None, original_destination: bytes | None = None
) -> bytes:
    """Make the TCP/UDP checksum of a decapsulated transport-mode packet valid again.

    RFC 3948 §3.1.2: across a NAT the sender's checksum covers its own
    addresses, while the rebuilt packet carries the addresses seen on the
    wire.  With both original addresses (from IKE: the traffic selectors,
    RFC 7296 §2.23.1) the checksum is updated incrementally (RFC 1624 eqn. 3:
    out with the original addresses, in with the received ones), so a packet
    corrupted before ESP stays detectably corrupt; without them it is
    recomputed over the pseudo header (the ESP/AH ICV already vouches for the
    payload).  An IPv4 UDP checksum of 0 ("none", RFC 768) is left alone;
    other protocols and truncated headers pass unchanged.
    """
    upper = _upper_layer(packet)
    if upper is None:
        return packet
    protocol, start = upper
    if protocol == IPPROTO_TCP:
        at = start + 16
    elif protocol == IPPROTO_UDP:
        at = start + 6
    else:
        return packet
    if at + 2 > len(packet):
        return packet
    version = packet[0] >> 4
    old = _U16.unpack_from(packet, at)[0]
    if protocol == IPPROTO_UDP and version == 4 and old == 0:
        return packet
    src, dst = (packet[12:16], packet[16:20]) if version == 4 else (packet[8:24], packet[24:40])
    if original_source is not None and original_destination is not None:
        before = _sum(original_source) + _sum(original_destination)
        total = (_MOD - old) - before + _sum(src) + _sum(dst)
    else:
        body = bytearray(packet[start:])
        body[at - start : at - start + 2] = b"\x00\x00"
        total = _sum(src) + _sum(dst) + protocol + len(body) + _sum(body)
    check = _field(total)
    if protocol == IPPROTO_UDP:
        check = check or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    return b"".join((packet[:at], _U16.pack(check), packet[at + 2 :]))
