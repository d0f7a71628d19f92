"""ipsecd.esp.transport: where ESP/AH goes, how the packet is rebuilt, what is refused.

Packets are written out byte by byte here (no scapy) so each expectation is
visible: RFC 8200 §4.1 header order for the split, strict lengths, fragments
refused with their own drop reason.
"""

from __future__ import annotations

import struct

import pytest

from ipsecd.esp.counters import DropReason
from ipsecd.esp.transport import (
    IPPROTO_AH,
    IPPROTO_ESP,
    IpFront,
    TransportFramingError,
    internet_checksum,
    locate_ipsec_header,
    split_for_transport,
)

SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")
UDP = struct.pack("!HHHH", 1, 2, 12, 0) + b"data"


def ipv4(payload: bytes, proto: int = 17, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), 9, frag, 64, proto, 0,
        bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]),
    ) + options  # fmt: skip
    return head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:] + payload


def ipv6(first_nh: int, rest: bytes) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(rest), first_nh, 64) + SRC6 + DST6 + rest


def ext(nh: int, body: bytes = b"\x01\x04\x00\x00\x00\x00") -> bytes:
    """A hop-by-hop / destination-options / routing header of 8 bytes."""
    return bytes([nh, 0]) + body


HBH, RT, FRAG, DST, UDP_P = 0, 43, 44, 60, 17


@pytest.mark.parametrize(
    ("chain", "front_len", "next_header"),
    [
        ([], 40, UDP_P),
        ([HBH], 48, UDP_P),
        ([DST], 40, DST),  # lone destination options: final destination's, behind ESP/AH
        ([HBH, DST], 48, DST),
        ([HBH, DST, RT], 64, UDP_P),  # dest-opts before routing stay in front
        ([HBH, DST, RT, DST], 64, DST),  # the one after routing goes behind
        ([RT, DST, RT], 64, UDP_P),
    ],
    ids=["none", "hbh", "destopt", "hbh-destopt", "hbh-destopt-rt", "hbh-dst-rt-dst", "rt-dst-rt"],
)
def test_ipv6_split_follows_rfc8200_order(
    chain: list[int], front_len: int, next_header: int
) -> None:
    rest = b"".join(ext(nh) for nh in [*chain[1:], UDP_P]) + UDP
    packet = ipv6(chain[0] if chain else UDP_P, rest if chain else UDP)
    front, nh, payload = split_for_transport(packet)
    assert (len(front.header), nh) == (front_len, next_header)
    assert front.header + payload == packet
    rebuilt = front.build(IPPROTO_ESP, b"E" * 24)
    assert rebuilt[front.nh_offset] == IPPROTO_ESP
    assert struct.unpack_from("!H", rebuilt, 4)[0] == len(rebuilt) - 40
    assert locate_ipsec_header(rebuilt, IPPROTO_ESP) == (
        IpFront(6, rebuilt[:front_len], front.nh_offset),
        front_len,
    )
    assert front.build(nh, payload) == packet  # inbound rebuild restores the original


def test_ipv4_split_keeps_options_and_rebuilds_checksum() -> None:
    packet = ipv4(UDP, options=bytes([148, 4, 0, 0]))
    front, nh, payload = split_for_transport(packet)
    assert (len(front.header), nh, payload) == (24, 17, UDP)
    wire = front.build(IPPROTO_AH, b"A" * 28 + payload)
    assert wire[9] == IPPROTO_AH and struct.unpack_from("!H", wire, 2)[0] == len(wire)
    assert internet_checksum(wire[:24]) == 0
    assert front.build(nh, payload) == packet


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", DropReason.MALFORMED),
        (b"\x45" + bytes(10), DropReason.TOO_SHORT),
        (ipv4(UDP)[:-1], DropReason.TOO_SHORT),  # total length says one more byte
        (ipv4(UDP, frag=0x2000), DropReason.FRAGMENT),  # more fragments
        (ipv4(UDP, frag=0x0001), DropReason.FRAGMENT),  # offset
        (b"\x44" + ipv4(UDP)[1:], DropReason.MALFORMED),  # IHL 4
        (ipv6(UDP_P, UDP)[:39], DropReason.TOO_SHORT),
        (ipv6(UDP_P, UDP) + b"x", DropReason.MALFORMED),  # payload length too small
        (ipv6(FRAG, bytes([17, 0, 0, 0, 0, 0, 0, 1]) + UDP), DropReason.FRAGMENT),
        (ipv6(HBH, bytes([17, 9]) + bytes(6)), DropReason.TOO_SHORT),  # header overruns
        (b"\x10" + bytes(40), DropReason.MALFORMED),
    ],
    ids=[
        "empty",
        "short-v4",
        "v4-length",
        "v4-mf",
        "v4-offset",
        "v4-ihl",
        "short-v6",
        "v6-length",
        "v6-fragment",
        "v6-ext-overrun",
        "version-1",
    ],  # fmt: skip
)
def test_refused_with_reason(packet: bytes, reason: DropReason) -> None:
    with pytest.raises(TransportFramingError) as out:
        split_for_transport(packet)
    assert out.value.reason == reason
    with pytest.raises(TransportFramingError) as inb:
        locate_ipsec_header(packet, IPPROTO_ESP)
    assert inb.value.reason == reason


def test_locate_needs_the_protocol() -> None:
    with pytest.raises(TransportFramingError, match="protocol 17, expected 50"):
        locate_ipsec_header(ipv4(UDP), IPPROTO_ESP)
    with pytest.raises(TransportFramingError, match="next header 17 before protocol 51"):
        locate_ipsec_header(ipv6(HBH, ext(UDP_P) + UDP), IPPROTO_AH)


def test_build_refuses_oversize() -> None:
    front = IpFront.synthesize(bytes(4), bytes(4))
    assert len(front.build(17, bytes(65535 - 20))) == 65535
    with pytest.raises(TransportFramingError, match="exceeds 65535"):
        front.build(17, bytes(65535 - 19))
    front6 = IpFront.synthesize(SRC6, DST6)
    assert len(front6.build(17, bytes(65535))) == 65535 + 40
    with pytest.raises(TransportFramingError, match="exceeds 65535"):
        front6.build(17, bytes(65536))


def test_synthesize_and_parse() -> None:
    four = IpFront.synthesize(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), hop_limit=7)
    assert (four.version, four.source, four.destination, four.header[8]) == (
        4, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 7,
    )  # fmt: skip
    assert IpFront.parse(four.header) == four
    six = IpFront.synthesize(SRC6, DST6)
    assert (six.source, six.destination) == (SRC6, DST6)
    with_hbh = ipv6(HBH, ext(59))
    assert IpFront.parse(with_hbh) == IpFront(6, with_hbh, 40)
    with pytest.raises(TransportFramingError):
        IpFront.synthesize(bytes(4), bytes(16))
    with pytest.raises(TransportFramingError, match="IHL"):
        IpFront.parse(four.header + bytes(4))
    with pytest.raises(TransportFramingError, match="not allowed"):
        IpFront.parse(ipv6(FRAG, bytes(8)))
    with pytest.raises(TransportFramingError, match="overrun"):
        IpFront.parse(ipv6(HBH, bytes([59, 1]) + bytes(6)))
