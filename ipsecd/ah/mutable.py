"""The IP header as the AH ICV sees it (RFC 4302 §3.3.3.1).

Fields a router may change are zeroed; fields that change predictably are set
to the value they will have at the receiver; everything else is covered as is.

IPv4 (§3.3.3.1.1): DSCP+ECN, flags, fragment offset, TTL and header checksum
zeroed.  Options (Appendix A): the immutable ones (End of List, NOP, Security,
Extended/Commercial Security, Router Alert, SDMDD) are covered; every other
option is zeroed whole, type and length included (unknown ones too, the safe
side).  With a loose/strict source route that still has hops to go, the
destination address is the last address of the route (mutable but
predictable).

IPv6 (§3.3.3.1.2): traffic class, flow label and hop limit zeroed.  In
hop-by-hop and destination options, an option whose type has the
"may change en route" bit (0x20, RFC 8200 §4.2) has its data zeroed.  A routing
header of type 0 (RFC 2460) or 2 (RFC 6275) is written as the receiver will see
it: segments left 0, the final address as destination, the addresses shifted.
Other routing types with segments left cannot be predicted here and are
refused (:class:`UnsupportedRoutingHeader`).  On receipt the headers are used
as they arrived: the packet has reached the state the sender predicted.
"""

from __future__ import annotations

from ipsecd.esp.transport import (
    IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IpFront,
    TransportFramingError,
)

__all__ = ["IMMUTABLE_IPV4_OPTIONS", "UnsupportedRoutingHeader", "icv_header"]

# RFC 4302 Appendix A.1, by the whole option type byte (copy, class, number).
IMMUTABLE_IPV4_OPTIONS = frozenset({0, 1, 130, 133, 134, 148, 149})
IPV4_LSRR = 131
IPV4_SSRR = 137
OPTION_CHANGES_EN_ROUTE = 0x20  # RFC 8200 §4.2, third-highest bit of the option type
ROUTING_TYPES_PREDICTABLE = frozenset({0, 2})


class UnsupportedRoutingHeader(ValueError):
    """An IPv6 routing header whose look at the receiver AH cannot predict."""


def icv_header(front: IpFront, sending: bool) -> bytearray:
    """``front.header`` with mutable fields zeroed and predictable ones set (§3.3.3.1).

    ``front`` must already carry the final lengths and next header (51).
    Raises :class:`TransportFramingError` for malformed options and
    :class:`UnsupportedRoutingHeader` when sending with an unpredictable routing header.
    """
    h = bytearray(front.header)
    if front.version == 4:
        _zero_ipv4(h)
    else:
        _zero_ipv6(h, sending)
    return h


def _zero_ipv4(h: bytearray) -> None:
    h[1] = 0  # DSCP + ECN
    h[6:9] = b"\x00\x00\x00"  # flags, fragment offset, TTL
    h[10:12] = b"\x00\x00"  # header checksum
    end = len(h)
    i = 20
    final_destination = None
    while i < end:
        kind = h[i]
        if kind == 0:  # End of Option List: the rest is padding, covered as sent
            break
        if kind == 1:  # No Operation
            i += 1
            continue
        if i + 2 > end or h[i + 1] < 2 or i + h[i + 1] > end:
            raise TransportFramingError(f"IPv4 option {kind} at offset {i} overruns the header")
        length = h[i + 1]
        if kind in (IPV4_LSRR, IPV4_SSRR) and length >= 7 and h[i + 2] <= length:
            # Hops left: the receiver will see the route's last address (RFC 791 §3.1).
            last = i + 3 + ((length - 3) // 4 - 1) * 4
            final_destination = bytes(h[last : last + 4])
        if kind not in IMMUTABLE_IPV4_OPTIONS:
            h[i : i + length] = bytes(length)
        i += length
    if final_destination is not None:
        h[16:20] = final_destination


def _zero_ipv6(h: bytearray, sending: bool) -> None:
    h[0] &= 0xF0  # keep the version, zero the traffic class's high nibble
    h[1:4] = b"\x00\x00\x00"  # rest of the traffic class, flow label
    h[7] = 0  # hop limit
    nh = h[6]
    offset = 40
    while offset < len(h):
        length = (h[offset + 1] + 1) * 8
        if nh in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
            _zero_options(h, offset + 2, offset + length)
        elif nh == IPPROTO_ROUTING and sending:
            _predict_routing(h, offset, length)
        nh = h[offset]
        offset += length


def _zero_options(h: bytearray, i: int, end: int) -> None:
    """Zero the data of options that may change en route (RFC 4302 §3.3.3.1.2.2)."""
    while i < end:
        kind = h[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 2 > end or i + 2 + h[i + 1] > end:
            raise TransportFramingError(f"IPv6 option {kind} overruns its extension header")
        data_len = h[i + 1]
        if kind & OPTION_CHANGES_EN_ROUTE:
            h[i + 2 : i + 2 + data_len] = bytes(data_len)
        i += 2 + data_len


def _predict_routing(h: bytearray, offset: int, length: int) -> None:
    """Rewrite a routing header and the destination as the receiver will see them."""
    routing_type = h[offset + 2]
    segments_left = h[offset + 3]
    if segments_left == 0:
        return
    if routing_type not in ROUTING_TYPES_PREDICTABLE:
        raise UnsupportedRoutingHeader(
            f"IPv6 routing header type {routing_type} with {segments_left} segments left: "
            "AH cannot predict the destination at the receiver (RFC 4302 §3.3.3.1.2.2); "
            "only types 0 and 2 are handled"
        )
    count = (length - 8) // 16
    if (length - 8) % 16 or segments_left > count:
        raise TransportFramingError(
            f"IPv6 routing header type {routing_type}: {segments_left} segments left "
            f"of {count} addresses"
        )
    # Each remaining hop swaps the destination with the next address (RFC 2460 §4.4).
    start = offset + 8 + (count - segments_left) * 16
    end = offset + 8 + count * 16
    final = bytes(h[end - 16 : end])
    h[start + 16 : end] = h[start : end - 16]
    h[start : start + 16] = h[24:40]
    h[24:40] = final
    h[offset + 3] = 0
