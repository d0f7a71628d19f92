"""ESP in transport mode (and tunnel mode straight over IP) against scapy, both directions.

Matrix: {transport IPv4, IPv6, IPv6 with hop-by-hop + routing, IPv6 with a lone
destination-options header} x {directly over IP (protocol 50), UDP/4500
(RFC 3948)} x {AES-GCM-16 128/256, ChaCha20-Poly1305, AES-CBC 128/256 with
HMAC-SHA-256/384/512} x {32-bit sequence numbers, ESN}: scapy decrypts what
ipsecd frames (ipsecd.esp.transport + OutboundEspSa), ipsecd opens and
rebuilds what scapy builds, and with the same IV both give the same bytes
where they place ESP at the same spot.  Tunnel mode directly over IP (no UDP,
the outer header from IpFront) is checked the same way; tunnel mode over UDP
is tests/unit/test_esp_scapy.py.  RFC 3948 §3.1.2 (checksum fix-up behind a
NAT) is checked at the end, with scapy recomputing the checksums.

scapy notes: like Linux, scapy keeps a lone IPv6 destination-options header in
front of ESP; ipsecd puts it behind ESP where it is encrypted (RFC 4303
§3.1.1, RFC 8200 §4.1).  Both open either layout; only the bytes differ.
scapy does not UDP-encapsulate IPv6 packets with extension headers correctly
(see SCAPY_NO_EXT_HEADERS_WITH_UDP), so those run directly over IP only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest

scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")

from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw  # noqa: E402

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY  # noqa: E402
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa  # noqa: E402
from ipsecd.esp.transport import (  # noqa: E402
    IPPROTO_ESP,
    IpFront,
    fix_transport_checksum,
    locate_ipsec_header,
    split_for_transport,
)
from ipsecd.esp.udp_encap import DatagramKind, classify  # noqa: E402
from tests.unit.test_esp_scapy import (  # noqa: E402  (the same transform tables)
    SCAPY_ENCR,
    SCAPY_INTEG,
    TRANSFORMS,
    transform_id,
)

ESP = scapy_ipsec.ESP
SecurityAssociation = scapy_ipsec.SecurityAssociation
SEQS = [(False, 7), (True, (3 << 32) | 7)]
SPI = 0x7E57
IPPROTO_UDP = 17


def v4() -> bytes:
    ip = IP(src="192.0.2.1", dst="198.51.100.2", ttl=40, options=[IPOption_Router_Alert()])
    return bytes(ip / TCP(sport=1234, dport=80, flags="PA") / Raw(b"GET / HTTP/1.0\r\n\r\n"))


def v6() -> bytes:
    return bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9, dport=7) / Raw(b"e" * 41)
    )


def v6_routed() -> bytes:
    hbh = IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x3E, optdata=b"abcd")])
    rt = IPv6ExtHdrRouting(addresses=["2001:db8::99"], segleft=0)
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / hbh / rt / TCP() / Raw(b"r" * 9))


def v6_destopt() -> bytes:
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP() / b"d")


PACKETS: dict[str, tuple[Callable[[], bytes], bool]] = {
    # name: (builder, ESP at the same spot as scapy)
    "v4": (v4, True),
    "v6": (v6, True),
    "v6-hbh-routing": (v6_routed, True),
    "v6-destopt": (v6_destopt, False),
}


# scapy cannot UDP-encapsulate IPv6 with extension headers: encrypt leaves the last
# extension header's next header at 50 in front of the UDP header, and decrypt
# drops every extension header (``ip_header.remove_payload()`` on the base header).
SCAPY_NO_EXT_HEADERS_WITH_UDP = {"v6-hbh-routing", "v6-destopt"}


class Pair:
    def __init__(self, transform: tuple[str, str | None], esn: bool, seq: int) -> None:
        self.encr = ENCRYPTION[transform[0]]
        self.integ = INTEGRITY[transform[1]] if transform[1] else None
        self.esn, self.seq = esn, seq
        self.keymat = os.urandom(self.encr.keymat_len)
        self.integ_key = os.urandom(self.integ.key_len) if self.integ else b""

    def scapy_sa(self, udp: bool, tunnel: IP | IPv6 | None = None) -> SecurityAssociation:
        return SecurityAssociation(
            ESP,
            spi=SPI,
            seq_num=self.seq & 0xFFFFFFFF,
            crypt_algo=SCAPY_ENCR[self.encr.name],
            crypt_key=self.keymat,
            auth_algo=SCAPY_INTEG[self.integ.name] if self.integ else None,
            auth_key=self.integ_key if self.integ else None,
            tunnel_header=tunnel,
            nat_t_header=UDP(sport=4500, dport=4500) if udp else None,
            esn_en=self.esn,
            esn=self.seq >> 32,
        )

    def outbound(self) -> OutboundEspSa:
        out = OutboundEspSa(SPI, self.encr, self.integ, self.keymat, self.integ_key, self.esn)
        out.seq = self.seq - 1
        return out

    def inbound(self) -> InboundEspSa:
        inb = InboundEspSa(SPI, self.encr, self.integ, self.keymat, self.integ_key, self.esn)
        inb.replay.update(self.seq - 1)
        return inb


def udp4500(esp: bytes) -> bytes:
    """RFC 3948 §2.1 UDP header (checksum 0, as scapy's nat_t_header) and the ESP packet."""
    return struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) + esp


def frame(front: IpFront, esp: bytes, udp: bool) -> bytes:
    return front.build(IPPROTO_UDP, udp4500(esp)) if udp else front.build(IPPROTO_ESP, esp)


def esp_of(wire: bytes, udp: bool) -> tuple[IpFront, bytes]:
    """Inbound: the front and the ESP packet, however it came."""
    front, offset = locate_ipsec_header(wire, IPPROTO_UDP if udp else IPPROTO_ESP)
    if not udp:
        return front, wire[offset:]
    kind, esp = classify(wire[offset + 8 :])
    assert kind == DatagramKind.ESP
    return front, esp


def parse(packet: bytes) -> IP | IPv6:
    return IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)


CASES = [
    (name, t, udp, esn, seq)
    for name in PACKETS
    for t in TRANSFORMS
    for udp in (False, True)
    for esn, seq in SEQS
    if not (udp and name in SCAPY_NO_EXT_HEADERS_WITH_UDP)
]
IDS = [
    f"{n}-{transform_id(t)}-{'udp' if u else 'ip'}-{'esn' if e else 'seq32'}"
    for n, t, u, e, _ in CASES
]


@pytest.mark.parametrize(("name", "transform", "udp", "esn", "seq"), CASES, ids=IDS)
def test_scapy_decrypts_ipsecd_transport(
    name: str, transform: tuple[str, str | None], udp: bool, esn: bool, seq: int
) -> None:
    pair = Pair(transform, esn, seq)
    packet = PACKETS[name][0]()
    front, next_header, payload = split_for_transport(packet)
    wire = frame(front, pair.outbound().encapsulate(payload, next_header), udp)
    pkt = parse(wire)
    assert pkt.haslayer(ESP) and pkt[ESP].seq == seq & 0xFFFFFFFF
    assert bytes(pair.scapy_sa(udp).decrypt(pkt)) == packet


@pytest.mark.parametrize(("name", "transform", "udp", "esn", "seq"), CASES, ids=IDS)
def test_ipsecd_opens_scapy_transport(
    name: str, transform: tuple[str, str | None], udp: bool, esn: bool, seq: int
) -> None:
    pair = Pair(transform, esn, seq)
    packet = PACKETS[name][0]()
    wire = bytes(pair.scapy_sa(udp).encrypt(parse(packet), seq_num=seq & 0xFFFFFFFF))
    front, esp = esp_of(wire, udp)
    inb = pair.inbound()
    opened = inb.decapsulate(esp)
    assert opened is not None, {k: v for k, v in inb.drops.items() if v}
    next_header, payload = opened
    assert front.build(next_header, payload) == packet


SAME = [c for c in CASES if PACKETS[c[0]][1]]


@pytest.mark.parametrize(
    ("name", "transform", "udp", "esn", "seq"),
    SAME,
    ids=[i for c, i in zip(CASES, IDS, strict=True) if PACKETS[c[0]][1]],
)
def test_same_iv_same_transport_packet(
    name: str, transform: tuple[str, str | None], udp: bool, esn: bool, seq: int
) -> None:
    pair = Pair(transform, esn, seq)
    packet = PACKETS[name][0]()
    front, next_header, payload = split_for_transport(packet)
    ours = frame(front, pair.outbound().encapsulate(payload, next_header), udp)
    iv_at = len(front.header) + (8 if udp else 0) + 8
    iv = ours[iv_at : iv_at + pair.encr.iv_size]
    theirs = pair.scapy_sa(udp).encrypt(parse(packet), seq_num=seq & 0xFFFFFFFF, iv=iv)
    assert bytes(theirs) == ours


TUNNEL_CASES = [
    (outer, inner, t, esn, seq)
    for outer in (4, 6)
    for inner in (4, 6)
    for t in TRANSFORMS
    for esn, seq in SEQS
]
TUNNEL_IDS = [
    f"{i}in{o}-{transform_id(t)}-{'esn' if e else 'seq32'}" for o, i, t, e, _ in TUNNEL_CASES
]


def outer_header(version: int) -> IP | IPv6:
    if version == 4:
        return IP(src="192.0.2.1", dst="198.51.100.2")
    return IPv6(src="2001:db8::1", dst="2001:db8::2")


@pytest.mark.parametrize(
    ("outer", "inner", "transform", "esn", "seq"), TUNNEL_CASES, ids=TUNNEL_IDS
)
def test_tunnel_mode_directly_over_ip(
    outer: int, inner: int, transform: tuple[str, str | None], esn: bool, seq: int
) -> None:
    """Protocol 50 without UDP: the outer header framed by IpFront, both directions."""
    pair = Pair(transform, esn, seq)
    packet = v4() if inner == 4 else v6()
    nh = 4 if inner == 4 else 41
    front = IpFront.parse(bytes(outer_header(outer)))
    wire = front.build(IPPROTO_ESP, pair.outbound().encapsulate(packet, nh))
    sa = pair.scapy_sa(udp=False, tunnel=outer_header(outer))
    assert bytes(sa.decrypt(parse(wire))) == packet

    theirs = bytes(sa.encrypt(parse(packet), seq_num=seq & 0xFFFFFFFF))
    _, esp = esp_of(theirs, udp=False)
    assert pair.inbound().decapsulate(esp) == (nh, packet)


# RFC 3948 §3.1.2: transport mode through a NAT.
PRIVATE4, PUBLIC4, SERVER4 = "10.0.0.1", "203.0.113.5", "198.51.100.2"
PRIVATE6, PUBLIC6, SERVER6 = "fd00::1", "2001:db8:ffff::5", "2001:db8::2"


def checksum_valid(packet: bytes) -> bool:
    """scapy recomputes the TCP/UDP checksum; the packet's own must match it."""
    pkt = parse(packet)
    layer = pkt[TCP] if pkt.haslayer(TCP) else pkt[UDP]
    sent = layer.chksum
    del layer.chksum
    return sent == parse(bytes(pkt))[type(layer)].chksum


def upper(kind: str) -> TCP | UDP:
    if kind == "tcp":
        return TCP(sport=40000, dport=443, flags="PA", seq=123456) / Raw(os.urandom(101))
    return UDP(sport=40000, dport=53) / Raw(os.urandom(60))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
@pytest.mark.parametrize("original_known", [True, False], ids=["incremental", "recompute"])
def test_nat_checksum_fixup(version: int, kind: str, original_known: bool) -> None:
    """The sender behind a NAT checksums over its private address; the receiver fixes it."""
    pair = Pair(("aes128gcm16", None), False, 1)
    private, public, server = (
        (PRIVATE4, PUBLIC4, SERVER4) if version == 4 else (PRIVATE6, PUBLIC6, SERVER6)
    )
    ip_cls = IP if version == 4 else IPv6
    sent = bytes(ip_cls(src=private, dst=server) / upper(kind))
    wire = parse(bytes(pair.scapy_sa(udp=True).encrypt(parse(sent))))
    wire.src = public  # what the NAT does to the outer header
    if version == 4:
        del wire.chksum
    wire = bytes(wire)

    front, esp = esp_of(wire, udp=True)
    opened = pair.inbound().decapsulate(esp)
    assert opened is not None
    seen = IpFront.synthesize(front.source, front.destination)
    rebuilt = seen.build(*opened)
    assert not checksum_valid(rebuilt)  # the NAT broke it
    if original_known:
        fixed = fix_transport_checksum(rebuilt, sent[12:16] if version == 4 else sent[8:24],
                                       front.destination)  # fmt: skip
    else:
        fixed = fix_transport_checksum(rebuilt)
    assert checksum_valid(fixed)
    assert parse(fixed).src == public and len(fixed) == len(sent)


def test_fixup_incremental_equals_recompute_and_keeps_corruption_visible() -> None:
    sent = bytes(IP(src=PRIVATE4, dst=SERVER4) / upper("tcp"))
    seen = IpFront.synthesize(bytes([203, 0, 113, 5]), sent[16:20]).build(6, sent[20:])
    incremental = fix_transport_checksum(seen, sent[12:16], sent[16:20])
    assert incremental == fix_transport_checksum(seen)
    corrupt = bytearray(seen)
    corrupt[-1] ^= 1  # damaged before encryption: incremental keeps it detectable
    assert not checksum_valid(fix_transport_checksum(bytes(corrupt), sent[12:16], sent[16:20]))
    assert checksum_valid(fix_transport_checksum(bytes(corrupt)))


def test_fixup_leaves_ipv4_udp_without_checksum_alone() -> None:
    seen = bytes(IP(src=PUBLIC4, dst=SERVER4) / UDP(sport=1, dport=2, chksum=0) / b"abc")
    assert fix_transport_checksum(seen) == seen
    icmp = bytes(IP(src=PUBLIC4, dst=SERVER4, proto=1) / b"\x08\x00\x00\x00")
    assert fix_transport_checksum(icmp) == icmp
