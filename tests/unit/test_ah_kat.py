"""Known-answer tests for the AH ICV (RFC 4302 §3.3.3) over headers with mutable fields.

Each expected value is computed here, independently of ipsecd: the ICV input
is written out field by field as RFC 4302 §3.3.3.1 says the receiver sees it
(mutable fields zero, predictable ones at their final value), then run through
the standard library's hmac.  The packet on the wire is written out the same
way, so a change in either the layout or the zeroing shows up as a byte diff.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ipsecd.ah.header import AhHeader, ah_length
from ipsecd.ah.mutable import UnsupportedRoutingHeader
from ipsecd.ah.sa import InboundAhSa, OutboundAhSa
from ipsecd.crypto.registry import INTEGRITY
from ipsecd.esp.counters import DropReason

KEY = {name: bytes(range(alg.key_len)) for name, alg in INTEGRITY.items()}
HASH = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
SPI = 0x01020304
SRC4, DST4 = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
HOP1, HOP2 = bytes([203, 0, 113, 7]), bytes([203, 0, 113, 9])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")
VIA6 = bytes.fromhex("20010db8000000000000000000000099")
FINAL6 = bytes.fromhex("20010db80000000000000000000000ff")
PAYLOAD = b"\x12\x34\x56\x78" + b"upper layer data"


def ones_complement_checksum(data: bytes) -> bytes:
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return (0xFFFF - total).to_bytes(2, "big")


def ipv4(tos: int, ident: int, frag: int, ttl: int, proto: int, dst: bytes, options: bytes,
         total: int) -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    head = (
        bytes([0x40 | ihl, tos]) + total.to_bytes(2, "big") + ident.to_bytes(2, "big")
        + frag.to_bytes(2, "big") + bytes([ttl, proto]) + b"\x00\x00" + SRC4 + dst + options
    )  # fmt: skip
    return head[:10] + ones_complement_checksum(head) + head[12:]


def icv(integ: str, data: bytes) -> bytes:
    return hmac.new(KEY[integ], data, HASH[integ]).digest()[: INTEGRITY[integ].icv_len]


@pytest.mark.parametrize("integ", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("esn", [False, True])
def test_ipv4_transport_mutable_fields_and_options(integ: str, esn: bool) -> None:
    icv_len = INTEGRITY[integ].icv_len
    ah_len = 12 + icv_len  # 28, 36, 44: already 32-bit aligned, no padding
    seq = (7 << 32) | 9 if esn else 9
    router_alert = bytes([148, 4, 0, 0])  # immutable: covered
    record_route = bytes([7, 7, 4]) + HOP1  # mutable: zeroed whole
    nop = bytes([1])
    options = router_alert + record_route + nop
    total = 20 + len(options) + ah_len + len(PAYLOAD)
    original = ipv4(0xB8, 0x1234, 0x4000, 17, 6, DST4, options, 20 + len(options) + len(PAYLOAD))
    original += PAYLOAD

    ah_fixed = bytes([6, ah_len // 4 - 2, 0, 0]) + SPI.to_bytes(4, "big")
    ah_fixed += (seq & 0xFFFFFFFF).to_bytes(4, "big")
    icv_input = (
        bytes([0x48, 0x00])  # version/IHL, DSCP+ECN zeroed
        + total.to_bytes(2, "big")  # total length with AH
        + bytes.fromhex("1234")  # identification
        + bytes.fromhex("0000")  # flags (DF) + fragment offset zeroed
        + bytes([0, 51])  # TTL zeroed, protocol AH
        + b"\x00\x00"  # header checksum zeroed
        + SRC4 + DST4
        + router_alert + bytes(7) + nop  # record route zeroed, type and length too
        + ah_fixed
        + bytes(icv_len)
        + PAYLOAD
        + ((seq >> 32).to_bytes(4, "big") if esn else b"")  # ESN high half, not sent
    )  # fmt: skip
    expected_icv = icv(integ, icv_input)
    expected = (
        ipv4(0xB8, 0x1234, 0x4000, 17, 51, DST4, options, total)
        + ah_fixed
        + expected_icv + PAYLOAD
    )  # fmt: skip

    out = OutboundAhSa(SPI, INTEGRITY[integ], KEY[integ], esn)
    out.seq = seq - 1
    assert out.encapsulate_transport(original) == expected

    inb = InboundAhSa(SPI, INTEGRITY[integ], KEY[integ], esn)
    inb.replay.update(seq - 1)
    # En route: TOS, TTL, DF and the record-route slot change; the ICV still holds.
    arrived = bytearray(expected)
    arrived[1] = 0x04
    arrived[8] = 3
    arrived[6] = 0x00
    arrived[24 + 3 : 24 + 7] = HOP2
    arrived[10:12] = b"\x00\x00"
    arrived[10:12] = ones_complement_checksum(bytes(arrived[:32]))
    restored = inb.decapsulate_transport(bytes(arrived))
    assert restored is not None, {k: v for k, v in inb.drops.items() if v}
    assert restored[32:] == PAYLOAD and restored[9] == 6
    assert restored[2:4] == len(original).to_bytes(2, "big")
    assert ones_complement_checksum(restored[:32]) == b"\x00\x00"


def test_ipv4_loose_source_route_uses_final_destination() -> None:
    """With hops left, the ICV takes the route's last address as destination (§3.3.3.1.1.1)."""
    lsrr_sent = bytes([131, 11, 4]) + HOP2 + DST4 + bytes([1])  # pointer 4: two hops to go
    options = lsrr_sent
    ah_len = 28
    total = 20 + len(options) + ah_len + len(PAYLOAD)
    original = ipv4(0, 7, 0, 64, 17, HOP1, options, total - ah_len) + PAYLOAD
    icv_input = (
        bytes([0x48, 0]) + total.to_bytes(2, "big") + bytes.fromhex("0007") + b"\x00\x00"
        + bytes([0, 51]) + b"\x00\x00" + SRC4 + DST4  # final destination, not the first hop
        + bytes(11) + bytes([1])
        + bytes([17, 5, 0, 0]) + SPI.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(16)
        + PAYLOAD
    )  # fmt: skip
    out = OutboundAhSa(SPI, INTEGRITY["sha256"], KEY["sha256"])
    wire = out.encapsulate_transport(original)
    assert AhHeader.parse(wire, 32).icv == icv("sha256", icv_input)
    # At the receiver: destination is the final one, the route recorded, pointer past the end.
    arrived = bytearray(wire)
    arrived[16:20] = DST4
    arrived[20:32] = bytes([131, 11, 12]) + HOP1 + HOP2 + bytes([1])
    arrived[8] = 60
    arrived[10:12] = b"\x00\x00"
    arrived[10:12] = ones_complement_checksum(bytes(arrived[:32]))
    inb = InboundAhSa(SPI, INTEGRITY["sha256"], KEY["sha256"])
    assert inb.decapsulate(bytes(arrived)) == (17, PAYLOAD)


def ipv6_wire(tc_fl: int, hlim: int, plen: int, dst: bytes, first_nh: int) -> bytes:
    return (
        (0x6 << 28 | tc_fl).to_bytes(4, "big") + plen.to_bytes(2, "big")
        + bytes([first_nh, hlim]) + SRC6 + dst
    )  # fmt: skip


def hop_by_hop(nh: int, volatile: bytes) -> bytes:
    # Option 0x3E (may change en route) with 4 data bytes, 0x1E (stable) with 2, PadN 2.
    return bytes([nh, 1, 0x3E, 4]) + volatile + bytes([0x1E, 2]) + b"xy" + bytes([1, 2, 0, 0])


def routing0(nh: int, segments_left: int, addresses: list[bytes]) -> bytes:
    return bytes([nh, 2 * len(addresses), 0, segments_left]) + bytes(4) + b"".join(addresses)


@pytest.mark.parametrize("integ", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("esn", [False, True])
def test_ipv6_transport_extension_headers(integ: str, esn: bool) -> None:
    icv_len = INTEGRITY[integ].icv_len
    ah_len = ah_length(icv_len, 6)
    assert ah_len == {16: 32, 24: 40, 32: 48}[icv_len]  # padded to 64 bits
    pad = ah_len - 12 - icv_len
    seq = (0xABCD << 32) | 3 if esn else 3
    dest_opts = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # final-destination options: after AH
    upper = dest_opts + PAYLOAD
    hbh_len, rt_len = 16, 40
    sent_routing = routing0(60, 2, [VIA6, FINAL6])
    original = (
        ipv6_wire(0x2E12345, 9, hbh_len + rt_len + len(upper), DST6, 0)
        + hop_by_hop(43, b"abcd") + sent_routing + upper
    )  # fmt: skip
    plen = hbh_len + rt_len + ah_len + len(upper)
    ah_fixed = bytes([60, ah_len // 4 - 2, 0, 0]) + SPI.to_bytes(4, "big")
    ah_fixed += (seq & 0xFFFFFFFF).to_bytes(4, "big")
    icv_input = (
        bytes.fromhex("60000000")  # version; traffic class and flow label zeroed
        + plen.to_bytes(2, "big") + bytes([0, 0])  # next header HBH, hop limit zeroed
        + SRC6 + FINAL6  # destination as the receiver will see it
        + hop_by_hop(43, bytes(4))  # the en-route option's data zeroed, the rest kept
        + routing0(51, 0, [DST6, VIA6])  # as at the receiver: addresses shifted, 0 left
        + ah_fixed + bytes(icv_len) + bytes(pad)
        + upper
        + ((seq >> 32).to_bytes(4, "big") if esn else b"")
    )  # fmt: skip
    expected = (
        ipv6_wire(0x2E12345, 9, plen, DST6, 0) + hop_by_hop(43, b"abcd")
        + routing0(51, 2, [VIA6, FINAL6]) + ah_fixed + icv(integ, icv_input) + bytes(pad) + upper
    )  # fmt: skip
    out = OutboundAhSa(SPI, INTEGRITY[integ], KEY[integ], esn)
    out.seq = seq - 1
    assert out.encapsulate_transport(original) == expected

    # As it arrives: hop limit, class, flow label, the volatile option and the route moved on.
    arrived = (
        ipv6_wire(0x0000001, 1, plen, FINAL6, 0) + hop_by_hop(43, b"ZZZZ")
        + routing0(51, 0, [DST6, VIA6]) + expected[40 + hbh_len + rt_len :]
    )  # fmt: skip
    inb = InboundAhSa(SPI, INTEGRITY[integ], KEY[integ], esn)
    inb.replay.update(seq - 1)
    opened = inb.open(arrived)
    assert opened is not None, {k: v for k, v in inb.drops.items() if v}
    front, next_header, payload = opened
    assert (next_header, payload) == (60, upper)
    assert front.header == arrived[: 40 + hbh_len + rt_len]


def test_ipv6_tunnel_outer_header_from_caller() -> None:
    inner = (
        bytes.fromhex("4500001c000100004011f77a0a0000010a000002")
        + b"\x00\x35\x00\x35\x00\x08\x00\x00"
    )
    outer = ipv6_wire(0xB800000, 64, 0, DST6, 59)
    wire = OutboundAhSa(SPI, INTEGRITY["sha256"], KEY["sha256"]).encapsulate_tunnel(outer, inner)
    plen = 32 + len(inner)
    ah_fixed = bytes([4, 6, 0, 0]) + SPI.to_bytes(4, "big") + (1).to_bytes(4, "big")
    icv_input = bytes.fromhex("60000000") + plen.to_bytes(2, "big") + bytes([51, 0]) + SRC6 + DST6
    icv_input += ah_fixed + bytes(16) + bytes(4) + inner
    expected = ipv6_wire(0xB800000, 64, plen, DST6, 51) + ah_fixed + icv("sha256", icv_input)
    assert wire == expected + bytes(4) + inner


def test_unpredictable_routing_header_is_refused() -> None:
    srh = bytes([17, 2, 4, 1]) + bytes(4) + FINAL6  # type 4 (segment routing), 1 left
    packet = ipv6_wire(0, 64, len(srh) + len(PAYLOAD), DST6, 43) + srh + PAYLOAD
    out = OutboundAhSa(SPI, INTEGRITY["sha256"], KEY["sha256"])
    with pytest.raises(UnsupportedRoutingHeader, match="type 4 with 1 segments left"):
        out.encapsulate_transport(packet)
    assert out.seq == 0  # nothing was consumed


def test_ipv4_fragment_is_dropped_and_counted() -> None:
    out = OutboundAhSa(SPI, INTEGRITY["sha256"], KEY["sha256"])
    whole = ipv4(0, 1, 0, 64, 17, DST4, b"", 20 + len(PAYLOAD)) + PAYLOAD
    wire = bytearray(out.encapsulate_transport(whole))
    wire[6] = 0x20  # More Fragments
    inb = InboundAhSa(SPI, INTEGRITY["sha256"], KEY["sha256"])
    assert inb.decapsulate(bytes(wire)) is None
    assert inb.drops[DropReason.FRAGMENT] == 1


@pytest.mark.parametrize(
    ("integ", "version", "length", "payload_len"),
    [
        ("sha256", 4, 28, 5),
        ("sha256", 6, 32, 6),
        ("sha384", 4, 36, 7),
        ("sha384", 6, 40, 8),
        ("sha512", 4, 44, 9),
        ("sha512", 6, 48, 10),
    ],
)
def test_header_codec_lengths(integ: str, version: int, length: int, payload_len: int) -> None:
    """§2.2: Payload Len = 32-bit words - 2; ICV padded to 32 (IPv4) / 64 (IPv6) bits."""
    assert ah_length(INTEGRITY[integ].icv_len, version) == length
    header = AhHeader(17, SPI, 42, bytes(range(length - 12)))
    wire = header.pack()
    assert wire[:12] == bytes([17, payload_len, 0, 0]) + SPI.to_bytes(4, "big") + bytes(
        [0, 0, 0, 42]
    )
    assert (header.length, header.payload_len) == (length, payload_len)
    assert AhHeader.parse(b"\x99" + wire + b"tail", 1) == header
    with pytest.raises(ValueError, match="does not fit"):
        AhHeader.parse(wire[:-1])
    with pytest.raises(ValueError, match="truncated"):
        AhHeader.parse(wire[:11])
    with pytest.raises(ValueError, match="multiple of 4"):
        AhHeader(17, SPI, 1, bytes(18)).pack()
