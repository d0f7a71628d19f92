"""Interoperability of AH with scapy's independent implementation (scapy.layers.ipsec).

Matrix: {tunnel 4-in-4, 6-in-4, 4-in-6, 6-in-6; transport IPv4 with options,
IPv6 plain, IPv6 with hop-by-hop + routing type 0, IPv6 with a lone
destination-options header} x {HMAC-SHA-256-128, 384-192, 512-256} x {32-bit
sequence numbers, ESN with high halves > 0}, both directions: scapy verifies
and strips what ipsecd builds, ipsecd verifies what scapy builds.  Between
the two, the packet is changed the way routers change it (TTL/hop limit,
DSCP/ECN, DF, flow label, an en-route IPv6 option, the routing header walked
to its last hop), so the mutable-field rules of both sides are exercised.
Where both place AH at the same spot the packets must be byte-identical.

scapy notes (scapy 2.5-2.8 source, scapy/layers/ipsec.py):
* ``split_for_transport`` keeps a lone IPv6 destination-options header in
  front of AH (as Linux does); ipsecd puts it behind AH (RFC 8200 §4.1 order).
  Both verify, but the bytes differ, so that layout skips the identity check.
* ``zero_mutable_fields`` matches IPv4 options by option number (5 bits),
  ipsecd by the whole type byte (RFC 4302 Appendix A); same result for every
  option used here.  It does not handle IPv4 source-route options (ipsecd's
  known-answer tests cover those).
* ``seq_num or self.seq_num`` / ``esn or self.esn``: the SA is built with the
  wanted values so a low half or high half of 0 is not replaced.
* No AES-GMAC for AH in scapy: not covered here (ipsecd does not offer it).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw  # noqa: E402

from ipsecd.ah.sa import InboundAhSa, OutboundAhSa, ah_spi  # noqa: E402
from ipsecd.crypto.registry import INTEGRITY  # noqa: E402
from tests.unit.test_esp_scapy import SCAPY_INTEG  # noqa: E402

AH = scapy_ipsec.AH
SecurityAssociation = scapy_ipsec.SecurityAssociation

SPI = 0xA11CE
SEQS = [
    (False, 1),
    (False, 0xFFFFFFFF),
    (True, 1),
    (True, (1 << 32) | 1),
    (True, (0xFFFF << 32) | 9),
]
V4_OUTER = ("192.0.2.1", "198.51.100.2")
V6_OUTER = ("2001:db8::1", "2001:db8::2")


def inner4() -> bytes:
    return bytes(IP(src="10.1.0.1", dst="10.2.0.1", ttl=33) / ICMP() / Raw(b"ping" * 5))


def inner6() -> bytes:
    return bytes(IPv6(src="fd00:1::1", dst="fd00:2::1") / UDP(sport=5, dport=6) / Raw(b"x" * 29))


def transport4() -> bytes:
    opts = [IPOption_Router_Alert(), IPOption_RR(routers=["0.0.0.0"])]
    ip = IP(src="192.0.2.1", dst="198.51.100.2", tos=0x28, ttl=40, flags="DF", options=opts)
    return bytes(ip / TCP(sport=1234, dport=80, flags="PA") / Raw(b"GET / HTTP/1.0\r\n\r\n"))


def transport6() -> bytes:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x2E, fl=0x12345, hlim=50)
    return bytes(ip / TCP(sport=4321, dport=22) / Raw(os.urandom(77)))


def transport6_routed() -> bytes:
    hbh = IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x3E, optdata=b"abcd")])
    rt = IPv6ExtHdrRouting(addresses=["2001:db8::99", "2001:db8::ff"])
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / hbh / rt / UDP() / Raw(b"r" * 9))


def transport6_destopt() -> bytes:
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP() / b"d")


class Layout:
    """One packet shape: how to build it, and how scapy and ipsecd each get it through AH."""

    def __init__(self, name: str, make: Callable[[], bytes], outer: tuple[str, str] | None,
                 same_bytes: bool = True) -> None:  # fmt: skip
        self.name = name
        self.make = make
        self.outer = outer  # tunnel mode: outer addresses; None: transport mode
        self.same_bytes = same_bytes

    @property
    def outer_v6(self) -> bool:
        return self.outer is not None and ":" in self.outer[0]

    def scapy_outer(self) -> IP | IPv6 | None:
        if self.outer is None:
            return None
        return (IPv6 if self.outer_v6 else IP)(src=self.outer[0], dst=self.outer[1])


LAYOUTS = [
    Layout("tunnel-4in4", inner4, V4_OUTER),
    Layout("tunnel-6in4", inner6, V4_OUTER),
    Layout("tunnel-4in6", inner4, V6_OUTER),
    Layout("tunnel-6in6", inner6, V6_OUTER),
    Layout("transport-v4-options", transport4, None),
    Layout("transport-v6", transport6, None),
    Layout("transport-v6-hbh-routing0", transport6_routed, None),
    Layout("transport-v6-destopt", transport6_destopt, None, same_bytes=False),
]


def scapy_class(packet: bytes) -> type[IP] | type[IPv6]:
    return IP if packet[0] >> 4 == 4 else IPv6


def en_route(wire: bytes) -> bytes:
    """What routers do to a packet (test's own code): mutable fields, routing header walked."""
    p = bytearray(wire)
    if p[0] >> 4 == 4:
        p[1] ^= 0x03  # ECN marked
        p[6] &= ~0x40 & 0xFF  # DF cleared
        p[8] -= 5  # TTL
        ip = IP(bytes(p))
        del ip.chksum  # redone, as a router does
        return bytes(ip)
    p[1] ^= 0x0F  # traffic class / flow label changed
    p[3] ^= 0xAA
    p[7] -= 3  # hop limit
    nh, off = p[6], 40
    while nh in (0, 43, 60):
        length = (p[off + 1] + 1) * 8
        if nh in (0, 60):
            i = off + 2
            while i < off + length:
                if p[i] == 0:
                    i += 1
                    continue
                if p[i] & 0x20:
                    p[i + 2 : i + 2 + p[i + 1]] = b"\xee" * p[i + 1]
                i += 2 + p[i + 1]
        if nh == 43:  # RFC 2460 type 0: each hop swaps the destination with the next address
            n = p[off + 1] // 2
            while p[off + 3]:
                a = off + 8 + (n - p[off + 3]) * 16
                p[24:40], p[a : a + 16] = p[a : a + 16], p[24:40]
                p[off + 3] -= 1
        nh, off = p[off], off + length
    return bytes(p)


class Pair:
    def __init__(self, integ: str, esn: bool, seq: int) -> None:
        self.integ = INTEGRITY[integ]
        self.esn = esn
        self.seq = seq
        self.key = os.urandom(self.integ.key_len)

    def scapy_sa(self, layout: Layout) -> SecurityAssociation:
        return SecurityAssociation(
            AH,
            spi=SPI,
            seq_num=self.seq & 0xFFFFFFFF,
            auth_algo=SCAPY_INTEG[self.integ.name],
            auth_key=self.key,
            tunnel_header=layout.scapy_outer(),
            esn_en=self.esn,
            esn=self.seq >> 32,
        )

    def ours(self, layout: Layout, packet: bytes) -> bytes:
        out = OutboundAhSa(SPI, self.integ, self.key, self.esn)
        out.seq = self.seq - 1
        if layout.outer is None:
            return out.encapsulate_transport(packet)
        outer = layout.scapy_outer()
        return out.encapsulate_tunnel(bytes(outer), packet)

    def inbound(self) -> InboundAhSa:
        inb = InboundAhSa(SPI, self.integ, self.key, self.esn)
        if self.seq > 1:
            inb.replay.update(self.seq - 1)  # the window as after earlier traffic
        return inb


CASES = [(lay, integ, esn, seq) for lay in LAYOUTS for integ in SCAPY_INTEG for esn, seq in SEQS]
IDS = [f"{lay.name}-{i}-{'esn' if e else 'seq32'}-{s:#x}" for lay, i, e, s in CASES]


def drops(inb: InboundAhSa) -> dict[str, int]:
    return {str(k): v for k, v in inb.drops.items() if v}


@pytest.mark.parametrize(("layout", "integ", "esn", "seq"), CASES, ids=IDS)
def test_scapy_verifies_ipsecd(layout: Layout, integ: str, esn: bool, seq: int) -> None:
    pair = Pair(integ, esn, seq)
    packet = layout.make()
    wire = en_route(pair.ours(layout, packet))
    pkt = scapy_class(wire)(wire)
    assert pkt.haslayer(AH) and pkt[AH].seq == seq & 0xFFFFFFFF
    opened = pair.scapy_sa(layout).decrypt(pkt)  # raises IPSecIntegrityError on a bad ICV
    if layout.outer is not None:
        assert bytes(opened) == packet
    else:
        assert bytes(opened) == en_route(packet)


@pytest.mark.parametrize(("layout", "integ", "esn", "seq"), CASES, ids=IDS)
def test_ipsecd_verifies_scapy(layout: Layout, integ: str, esn: bool, seq: int) -> None:
    pair = Pair(integ, esn, seq)
    packet = layout.make()
    sent = pair.scapy_sa(layout).encrypt(scapy_class(packet)(packet), seq_num=seq & 0xFFFFFFFF)
    wire = en_route(bytes(sent))
    assert ah_spi(wire) == SPI
    inb = pair.inbound()
    if layout.outer is not None:
        nh = 4 if packet[0] >> 4 == 4 else 41
        assert inb.decapsulate(wire) == (nh, packet), drops(inb)
    else:
        restored = inb.decapsulate_transport(wire)
        assert restored is not None, drops(inb)
        assert restored == en_route(packet)
    assert inb.replay.top == seq
    assert inb.decapsulate(wire) is None and drops(inb) == {"replay": 1}


@pytest.mark.parametrize(
    ("layout", "integ", "esn", "seq"),
    [c for c in CASES if c[0].same_bytes],
    ids=[i for c, i in zip(CASES, IDS, strict=True) if c[0].same_bytes],
)
def test_same_packet_bytes(layout: Layout, integ: str, esn: bool, seq: int) -> None:
    """AH is deterministic: both sides must produce the very same packet."""
    pair = Pair(integ, esn, seq)
    packet = layout.make()
    theirs = pair.scapy_sa(layout).encrypt(scapy_class(packet)(packet), seq_num=seq & 0xFFFFFFFF)
    assert pair.ours(layout, packet) == bytes(theirs)


def test_every_integrity_algorithm_is_covered() -> None:
    assert set(SCAPY_INTEG) == set(INTEGRITY)
