"""Interoperability with scapy's independent ESP implementation (scapy.layers.ipsec).

For every transform, with and without ESN, in tunnel mode over UDP/4500
(RFC 3948): scapy opens what ipsecd builds, ipsecd opens what scapy builds, and
when both use the same IV the two ESP packets are byte-identical.  ESN cases run
with sequence numbers above 2^32 so the (unsent) high half really is exercised.

scapy notes (checked against scapy 2.5-2.8 source):
* names: "AES-GCM" / "CHACHA20-POLY1305" take key || 4-byte salt like RFC 4106;
  "AES-CBC" with "SHA2-256-128" / "SHA2-384-192" / "SHA2-512-256".
* ESN: ``esn_en=True`` and ``esn=<high 32 bits>``; the packet's seq field is the
  low half.  scapy falls back to the SA's value when passed 0 (``esn or self.esn``,
  ``seq_num or self.seq_num``), so the SA is built with the wanted values.
"""

from __future__ import annotations

import os

import pytest

scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")

from scapy.layers.inet import ICMP, IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY  # noqa: E402
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa  # noqa: E402
from ipsecd.esp.udp_encap import DatagramKind, classify  # noqa: E402

ESP = scapy_ipsec.ESP
SecurityAssociation = scapy_ipsec.SecurityAssociation

SCAPY_ENCR = {
    "aes128gcm16": "AES-GCM",
    "aes256gcm16": "AES-GCM",
    "chacha20poly1305": "CHACHA20-POLY1305",
    "aes128": "AES-CBC",
    "aes256": "AES-CBC",
}
SCAPY_INTEG = {"sha256": "SHA2-256-128", "sha384": "SHA2-384-192", "sha512": "SHA2-512-256"}

TRANSFORMS = [
    ("aes128gcm16", None),
    ("aes256gcm16", None),
    ("chacha20poly1305", None),
    *[(e, i) for e in ("aes128", "aes256") for i in ("sha256", "sha384", "sha512")],
]

# Sequence numbers tried: small, near the 32-bit edge, and (ESN only) high halves > 0.
SEQS_32 = [1, 2, 1000, 0xFFFFFFFE, 0xFFFFFFFF]
SEQS_ESN = [1, 0xFFFFFFFF, (1 << 32) | 1, (5 << 32) | 0x1234, (0xFFFFFFFF << 32) | 7]

OUTER_SRC, OUTER_DST = "192.0.2.1", "198.51.100.2"
SPI = 0xC0FFEE01


def transform_id(t: tuple[str, str | None]) -> str:
    return t[0] if t[1] is None else f"{t[0]}-{t[1]}"


def inner_packets() -> list[bytes]:
    return [
        bytes(IP(src="10.1.0.1", dst="10.2.0.1") / ICMP() / Raw(b"ping" * 3)),
        bytes(IP(src="10.1.0.2", dst="10.2.0.9") / UDP(sport=1, dport=2) / Raw(os.urandom(333))),
        bytes(IPv6(src="fd00:1::1", dst="fd00:2::1") / UDP(sport=5, dport=6) / Raw(b"x" * 17)),
    ]


class Pair:
    """Keys for one SA, shared by ipsecd and scapy."""

    def __init__(self, encr: str, integ: str | None, esn: bool) -> None:
        self.encr = ENCRYPTION[encr]
        self.integ = INTEGRITY[integ] if integ else None
        self.esn = esn
        self.keymat = os.urandom(self.encr.keymat_len)
        self.integ_key = os.urandom(self.integ.key_len) if self.integ else b""

    def scapy_sa(self, seq: int) -> SecurityAssociation:
        return SecurityAssociation(
            ESP,
            spi=SPI,
            seq_num=seq & 0xFFFFFFFF,
            crypt_algo=SCAPY_ENCR[self.encr.name],
            crypt_key=self.keymat,
            auth_algo=SCAPY_INTEG[self.integ.name] if self.integ else None,
            auth_key=self.integ_key if self.integ else None,
            tunnel_header=IP(src=OUTER_SRC, dst=OUTER_DST),
            nat_t_header=UDP(sport=4500, dport=4500),
            esn_en=self.esn,
            esn=seq >> 32,
        )

    def outbound(self) -> OutboundEspSa:
        return OutboundEspSa(SPI, self.encr, self.integ, self.keymat, self.integ_key, self.esn)

    def inbound(self) -> InboundEspSa:
        return InboundEspSa(SPI, self.encr, self.integ, self.keymat, self.integ_key, self.esn)


def next_header(inner: bytes) -> int:
    return 4 if inner[0] >> 4 == 4 else 41


def udp_datagram(esp: bytes) -> IP:
    """An outer IP/UDP(4500) packet carrying ``esp``, re-dissected by scapy."""
    return IP(bytes(IP(src=OUTER_DST, dst=OUTER_SRC) / UDP(sport=4500, dport=4500) / Raw(esp)))


def cases() -> list[tuple[tuple[str, str | None], bool, int]]:
    out = []
    for t in TRANSFORMS:
        out += [(t, False, s) for s in SEQS_32]
        out += [(t, True, s) for s in SEQS_ESN]
    return out


CASES = cases()
IDS = [f"{transform_id(t)}-{'esn' if esn else 'seq32'}-{seq:#x}" for t, esn, seq in CASES]


@pytest.mark.parametrize(("transform", "esn", "seq"), CASES, ids=IDS)
def test_scapy_decrypts_ipsecd(transform: tuple[str, str | None], esn: bool, seq: int) -> None:
    pair = Pair(*transform, esn)
    out = pair.outbound()
    for inner in inner_packets():
        out.seq = seq - 1
        esp = out.encapsulate(inner, next_header(inner))
        assert classify(esp)[0] == DatagramKind.ESP
        pkt = udp_datagram(esp)
        assert pkt.haslayer(ESP), "scapy did not dissect UDP/4500 as ESP"
        assert pkt[ESP].seq == seq & 0xFFFFFFFF
        decrypted = pair.scapy_sa(seq).decrypt(pkt)
        assert bytes(decrypted) == inner


@pytest.mark.parametrize(("transform", "esn", "seq"), CASES, ids=IDS)
def test_ipsecd_decrypts_scapy(transform: tuple[str, str | None], esn: bool, seq: int) -> None:
    pair = Pair(*transform, esn)
    sa = pair.scapy_sa(seq)
    for i, inner in enumerate(inner_packets()):
        inb = pair.inbound()
        if seq > 1:
            inb.replay.update(seq - 1 - i)  # window as after earlier traffic
        wire = sa.encrypt(
            IP(inner) if inner[0] >> 4 == 4 else IPv6(inner), seq_num=seq & 0xFFFFFFFF
        )
        assert wire.haslayer(UDP) and wire[UDP].dport == 4500
        esp = bytes(wire[UDP].payload)
        assert inb.decapsulate(esp) == (next_header(inner), inner), {
            k: v for k, v in inb.drops.items() if v
        }
        assert inb.replay.top == max(seq, seq - 1 - i)


@pytest.mark.parametrize(("transform", "esn", "seq"), CASES, ids=IDS)
def test_same_iv_gives_identical_packets(
    transform: tuple[str, str | None], esn: bool, seq: int
) -> None:
    """With scapy told to use ipsecd's IV, both produce the very same bytes."""
    pair = Pair(*transform, esn)
    out = pair.outbound()
    iv_len = pair.encr.iv_size
    for inner in inner_packets():
        out.seq = seq - 1
        ours = out.encapsulate(inner, next_header(inner))
        iv = ours[8 : 8 + iv_len]
        theirs = pair.scapy_sa(seq).encrypt(
            IP(inner) if inner[0] >> 4 == 4 else IPv6(inner), seq_num=seq & 0xFFFFFFFF, iv=iv
        )
        assert bytes(theirs[UDP].payload) == ours


def test_every_transform_is_covered() -> None:
    """Guard: the table above must list every ESP transform ipsecd offers."""
    covered = {e for e, _ in TRANSFORMS}
    assert covered == set(ENCRYPTION)
    cbc_integs = {i for e, i in TRANSFORMS if i}
    assert cbc_integs == set(INTEGRITY)
