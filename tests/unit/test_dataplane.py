"""The sans-I/O packet pipeline: SA lookup, encapsulation, demultiplexing, drops."""

from __future__ import annotations

import os
import struct

import pytest

from ipsecd.crypto.proposals import parse_proposal
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.dataplane.mtu import max_inner_size, tun_mtu
from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import InstalledChildSa, SaDatabase
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.selectors import TrafficSelector
from tests.lab.packets import ipv4

SITE_A = (TrafficSelector.from_prefix("10.1.0.0/24"),)
SITE_B = (TrafficSelector.from_prefix("10.2.0.0/24"),)
GCM = ENCRYPTION["aes128gcm16"]


def tunnel_pair(
    spi_ab: int = 0x1001, spi_ba: int = 0x2002
) -> tuple[InstalledChildSa, InstalledChildSa]:
    """Two mirrored SA pairs, as gateway A and gateway B would install them."""
    k_ab, k_ba = os.urandom(20), os.urandom(20)
    a = InstalledChildSa(
        "b",
        InboundEspSa(spi_ba, GCM, None, k_ba, b"", src_selectors=SITE_B, dst_selectors=SITE_A),
        OutboundEspSa(spi_ab, GCM, None, k_ab, b""),
        SITE_A,
        SITE_B,
        ("192.0.2.1", 4500),
        ("192.0.2.2", 4500),
    )
    b = InstalledChildSa(
        "a",
        InboundEspSa(spi_ab, GCM, None, k_ab, b"", src_selectors=SITE_A, dst_selectors=SITE_B),
        OutboundEspSa(spi_ba, GCM, None, k_ba, b""),
        SITE_B,
        SITE_A,
        ("192.0.2.2", 4500),
        ("192.0.2.1", 4500),
    )
    return a, b


def test_packet_crosses_from_tun_to_tun() -> None:
    a_sa, b_sa = tunnel_pair()
    sad_a, sad_b = SaDatabase(), SaDatabase()
    sad_a.install(a_sa)
    sad_b.install(b_sa)
    pa, pb = PacketProcessor(sad_a), PacketProcessor(sad_b)
    inner = ipv4("10.1.0.2", "10.2.0.2")
    out = pa.from_tun([inner])
    assert list(out) == [(("192.0.2.1", 4500), ("192.0.2.2", 4500))]
    (datagrams,) = out.values()
    to_tun, ike, moved = pb.from_udp([(d, ("192.0.2.1", 4500)) for d in datagrams])
    assert to_tun == [inner]
    assert ike == [] and moved == []


def test_packet_without_sa_is_counted() -> None:
    a_sa, _ = tunnel_pair()
    sad = SaDatabase()
    sad.install(a_sa)
    proc = PacketProcessor(sad)
    assert proc.from_tun([ipv4("10.1.0.2", "10.9.0.2")]) == {}
    assert proc.drops[DropReason.NO_SA] == 1
    assert proc.from_tun([b"\x45" * 10, b"\x00" * 30]) == {}
    assert proc.drops[DropReason.MALFORMED] == 2


def test_udp_demultiplexing_rfc3948() -> None:
    a_sa, b_sa = tunnel_pair()
    sad = SaDatabase()
    sad.install(b_sa)
    proc = PacketProcessor(sad)
    peer = ("192.0.2.1", 4500)
    ike_message = os.urandom(40)
    to_tun, ike, _ = proc.from_udp(
        [
            (b"\xff", peer),  # NAT keepalive
            (b"\x00\x00\x00\x00" + ike_message, peer),  # non-ESP marker
            (struct.pack("!II", 0xDEAD, 1) + os.urandom(40), peer),  # unknown SPI
            (b"\x01\x02", peer),  # too short
        ]
    )
    assert to_tun == []
    assert ike == [(ike_message, peer)]
    assert proc.keepalives_received == 1
    assert proc.drops[DropReason.UNKNOWN_SPI] == 1
    assert proc.drops[DropReason.TOO_SHORT] == 1


def test_forged_replayed_and_foreign_packets_do_not_stop_forwarding() -> None:
    a_sa, b_sa = tunnel_pair()
    sad_a, sad_b = SaDatabase(), SaDatabase()
    sad_a.install(a_sa)
    sad_b.install(b_sa)
    pa, pb = PacketProcessor(sad_a), PacketProcessor(sad_b)
    peer = ("192.0.2.1", 4500)
    good = next(iter(pa.from_tun([ipv4("10.1.0.2", "10.2.0.2")]).values()))[0]
    flipped = bytearray(good)
    flipped[-1] ^= 1
    to_tun, _, _ = pb.from_udp([(bytes(flipped), peer), (good, peer), (good, peer)])
    assert len(to_tun) == 1
    assert b_sa.inbound.drops[DropReason.BAD_ICV] == 1
    assert b_sa.inbound.drops[DropReason.REPLAY] == 1
    # An authentic packet whose inner source lies outside the SA's selectors.
    spoofed = next(iter(pa_spoof(a_sa).values()))[0]
    to_tun, _, _ = pb.from_udp([(spoofed, peer)])
    assert to_tun == []
    assert b_sa.inbound.drops[DropReason.OUTSIDE_SELECTORS] == 1
    # Forwarding continues.
    later = next(iter(pa.from_tun([ipv4("10.1.0.3", "10.2.0.9")]).values()))
    assert len(pb.from_udp([(d, peer) for d in later])[0]) == 1


def pa_spoof(a_sa: InstalledChildSa) -> dict:
    """Encrypt a packet from 10.66.0.1 with A's outbound SA, bypassing A's selector lookup."""
    return {("x", 0): [a_sa.outbound.encapsulate(ipv4("10.66.0.1", "10.2.0.2"), 4)]}


def test_new_sa_takes_over_outbound_old_keeps_decrypting() -> None:
    old_a, old_b = tunnel_pair(0x1001, 0x2002)
    new_a, new_b = tunnel_pair(0x3003, 0x4004)
    sad = SaDatabase()
    sad.install(old_a)
    sad.install(new_a)
    proc = PacketProcessor(sad)
    (datagrams,) = proc.from_tun([ipv4("10.1.0.2", "10.2.0.2")]).values()
    assert struct.unpack("!I", datagrams[0][:4])[0] == 0x3003
    # An in-flight packet under the old SA still decrypts until the old SA is removed.
    late = old_b.outbound.encapsulate(ipv4("10.2.0.2", "10.1.0.2"), 4)
    assert len(proc.from_udp([(late, ("192.0.2.2", 4500))])[0]) == 1
    sad.remove(0x2002)
    assert proc.from_udp([(late, ("192.0.2.2", 4500))])[0] == []
    assert proc.drops[DropReason.UNKNOWN_SPI] == 1


def child(spi: int, local: str, remote: str) -> InstalledChildSa:
    """An outbound CHILD_SA of peer b for ``local`` -> ``remote`` (prefixes)."""
    lts, rts = (TrafficSelector.from_prefix(local),), (TrafficSelector.from_prefix(remote),)
    key = os.urandom(20)
    return InstalledChildSa(
        "b",
        InboundEspSa(spi + 1, GCM, None, key, b"", src_selectors=rts, dst_selectors=lts),
        OutboundEspSa(spi, GCM, None, key, b""),
        lts,
        rts,
        ("192.0.2.1", 4500),
        ("192.0.2.2", 4500),
    )


def test_the_most_specific_child_sa_wins_whatever_the_order_of_installation() -> None:
    """RFC 4301 §4.4.1: a CHILD_SA for 10.2.5.0/24 takes its traffic from one for 10.2.0.0/16
    (two children, or two CHILD_SAs a peer proposed for one child), installed before or after;
    by remote range first, then by local range."""
    wide, narrow = (
        child(0x1000, "10.1.0.0/24", "10.2.0.0/16"),
        child(0x2000, "10.1.0.0/24", "10.2.5.0/24"),
    )
    narrow_src = child(0x3000, "10.1.0.128/25", "10.2.0.0/16")
    for order in ((wide, narrow, narrow_src), (narrow_src, narrow, wide)):
        sad = SaDatabase()
        for sa in order:
            sad.install(sa)
        assert sad.lookup_outbound(4, 0x0A010005, 0x0A020507) is narrow
        assert sad.lookup_outbound(4, 0x0A010085, 0x0A020507) is narrow  # dst first
        assert sad.lookup_outbound(4, 0x0A010085, 0x0A020607) is narrow_src
        assert sad.lookup_outbound(4, 0x0A010005, 0x0A020607) is wide
    sad.remove(0x2001)  # narrow's inbound SPI: its traffic falls back to the wider one
    assert sad.lookup_outbound(4, 0x0A010005, 0x0A020507) is wide


def test_remote_address_change_is_reported() -> None:
    a_sa, b_sa = tunnel_pair()
    sad = SaDatabase()
    sad.install(b_sa)
    proc = PacketProcessor(sad)
    esp = a_sa.outbound.encapsulate(ipv4("10.1.0.2", "10.2.0.2"), 4)
    _, _, moved = proc.from_udp([(esp, ("203.0.113.7", 34567))])
    assert moved == [(b_sa, ("203.0.113.7", 34567))]


@pytest.mark.parametrize(
    ("encr", "integ", "outer", "expected"),
    [
        ("aes128gcm16", None, 4, 1438),  # 1500-20-8-8-8-16 = 1440 -> 1440-2
        ("aes128gcm16", None, 6, 1418),
        ("aes128", "sha256", 4, 1422),  # 1500-20-8-8-16-16 = 1432 -> 1424-2
        ("aes256", "sha512", 4, 1406),  # 1500-20-8-8-16-32 = 1416 -> 1408-2
    ],
)
def test_mtu_fits_path(encr: str, integ: str | None, outer: int, expected: int) -> None:
    e = ENCRYPTION[encr]
    icv = e.icv_size if e.aead else INTEGRITY[integ].icv_len
    assert max_inner_size(e.block_size, e.iv_size, icv, outer) == expected
    # Encapsulating a packet of exactly that size gives an outer packet <= 1500.
    sa = OutboundEspSa(
        0x100,
        e,
        INTEGRITY[integ] if integ else None,
        os.urandom(e.keymat_len),
        os.urandom(INTEGRITY[integ].key_len) if integ else b"",
    )
    esp = sa.encapsulate(ipv4("10.1.0.1", "10.2.0.1", b"p" * (expected - 20)), 4)
    assert len(esp) + 8 + (20 if outer == 4 else 40) <= 1500


def test_tun_mtu_takes_worst_proposal() -> None:
    props = [parse_proposal("aes128gcm16", "esp"), parse_proposal("aes256-sha512", "esp")]
    assert tun_mtu(props, 4) == 1406
