"""The data plane's burst paths: ESP seal/open bursts and UDP GSO/GRO framing.

The burst paths inline the per-packet work for speed; these tests hold them to
the same results and the same checks as the one-packet API.
"""

from __future__ import annotations

import os
import struct

import pytest

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.dataplane.udp import gso_runs, split_gro
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa, SequenceNumberExhausted
from ipsecd.selectors import TrafficSelector
from tests.lab import packets

SITE_A = (TrafficSelector.from_prefix("10.1.0.0/24"),)
SITE_B = (TrafficSelector.from_prefix("10.2.0.0/24"),)


def ipv4(src: str = "10.1.0.2", dst: str = "10.2.0.2", size: int = 100) -> bytes:
    """An IPv4 packet of ``size`` bytes in all, random payload numbered TCP."""
    return packets.ipv4(src, dst, os.urandom(size - 20), proto=packets.TCP)


def ipv6(size: int = 100) -> bytes:
    """An IPv6 packet of ``size`` bytes in all, random payload numbered TCP."""
    return packets.ipv6("fd00::1", "fd00::2", os.urandom(size - 40), next_header=packets.TCP)


def sa_pair(
    name: str = "aes128gcm16", esn: bool = False, selectors: bool = True
) -> tuple[OutboundEspSa, OutboundEspSa, InboundEspSa]:
    """Two identical senders (burst vs one-by-one) and a receiver, sharing keys."""
    encr = ENCRYPTION[name]
    integ = None if encr.aead else INTEGRITY["sha256"]
    keymat = os.urandom(encr.keymat_len)
    ikey = os.urandom(integ.key_len) if integ else b""
    out1 = OutboundEspSa(0x1234, encr, integ, keymat, ikey, esn=esn)
    out2 = OutboundEspSa(0x1234, encr, integ, keymat, ikey, esn=esn)
    kw = {"src_selectors": SITE_A, "dst_selectors": SITE_B} if selectors else {}
    inb = InboundEspSa(0x1234, encr, integ, keymat, ikey, esn=esn, **kw)
    return out1, out2, inb


@pytest.mark.parametrize("name", ["aes128gcm16", "aes256gcm16", "chacha20poly1305"])
@pytest.mark.parametrize("esn", [False, True])
def test_sealed_burst_is_byte_for_byte_what_encapsulate_builds(name: str, esn: bool) -> None:
    burst_sa, single_sa, inb = sa_pair(name, esn)
    if esn:
        burst_sa.seq = single_sa.seq = (1 << 32) - 3  # cross the 32-bit boundary
        inb.replay.top = (1 << 32) - 3
    inners = [ipv4(size=s) for s in (20, 21, 22, 23, 1400)] + [ipv6(60)]
    out: list[bytes] = []
    burst_sa.seal_burst(inners, out)
    expected = [single_sa.encapsulate(p, 41 if p[0] >> 4 == 6 else 4) for p in inners]
    assert out == expected
    assert (burst_sa.seq, burst_sa.packets, burst_sa.bytes) == (
        single_sa.seq,
        single_sa.packets,
        single_sa.bytes,
    )
    opened: list[bytes] = []
    assert inb.open_burst([memoryview(p) for p in out], opened) == len(inners) - 1
    assert opened == inners[:-1]  # the IPv6 packet is outside the IPv4 selectors
    assert inb.drops[DropReason.OUTSIDE_SELECTORS] == 1
    assert inb.packets == len(inners) - 1


def test_cbc_bursts_take_the_one_packet_path() -> None:
    out_sa, _, inb = sa_pair("aes128", selectors=False)
    inners = [ipv4(size=s) for s in (40, 41, 1000)]
    out: list[bytes] = []
    out_sa.seal_burst(inners, out)
    opened: list[bytes] = []
    assert inb.open_burst(out, opened) == 3 and opened == inners


def test_burst_that_does_not_fit_the_sequence_space_sends_nothing() -> None:
    out_sa, _, _ = sa_pair()
    out_sa.seq = out_sa.max_seq - 1
    out: list[bytes] = []
    with pytest.raises(SequenceNumberExhausted):
        out_sa.seal_burst([ipv4(), ipv4()], out)
    assert out == [] and out_sa.seq == out_sa.max_seq - 1


def test_open_burst_checks_replay_within_and_across_bursts() -> None:
    out_sa, _, inb = sa_pair()
    packets: list[bytes] = []
    out_sa.seal_burst([ipv4() for _ in range(5)], packets)
    opened: list[bytes] = []
    assert inb.open_burst([packets[0], packets[2], packets[2], packets[1]], opened) == 3
    assert inb.drops[DropReason.REPLAY] == 1
    assert inb.open_burst(packets, opened) == 2  # 1-3 seen; 4 and 5 are new
    assert inb.drops[DropReason.REPLAY] == 4
    assert inb.replay.top == 5


def test_forged_packet_never_moves_the_window() -> None:
    out_sa, _, inb = sa_pair()
    packets: list[bytes] = []
    out_sa.seal_burst([ipv4() for _ in range(3)], packets)
    forged = packets[0][:4] + struct.pack("!I", 100000) + packets[0][8:]
    tampered = packets[1][:-1] + bytes([packets[1][-1] ^ 1])
    opened: list[bytes] = []
    assert inb.open_burst([forged, tampered, packets[0], packets[2], packets[1]], opened) == 3
    assert inb.drops[DropReason.BAD_ICV] == 2
    assert inb.replay.top == 3


def test_open_burst_counts_hostile_input_and_goes_on() -> None:
    out_sa, _, inb = sa_pair()
    good: list[bytes] = []
    out_sa.seal_burst([ipv4()], good)
    other_spi = b"\x00\x00\x99\x99" + good[0][4:]
    short = good[0][:20]
    zero_seq = good[0][:4] + bytes(4) + good[0][8:]
    opened: list[bytes] = []
    inb.open_burst([short, other_spi, zero_seq, b"", good[0]], opened)
    assert len(opened) == 1
    assert inb.drops[DropReason.TOO_SHORT] == 2
    assert inb.drops[DropReason.UNKNOWN_SPI] == 1
    assert inb.drops[DropReason.REPLAY] == 1


def test_dummy_packets_are_dropped_silently() -> None:
    out_sa, _, inb = sa_pair()
    dummy = out_sa.encapsulate(b"", 59)
    opened: list[bytes] = []
    assert inb.open_burst([dummy], opened) == 0
    assert inb.drops[DropReason.DUMMY] == 1


def test_gso_runs_cut_where_the_kernel_needs_them() -> None:
    a, b, short = b"a" * 100, b"b" * 100, b"s" * 40
    runs = gso_runs([a, b, short, a, b"big" * 50, a])
    assert runs == [(100, [a, b, short]), (100, [a]), (150, [b"big" * 50, a])]
    assert [len(r) for _, r in gso_runs([a] * 130)] == [64, 64, 2]
    assert [len(r) for _, r in gso_runs([a] * 10, max_bytes=450)] == [4, 4, 2]
    assert gso_runs([]) == []
    flat = [d for _, run in gso_runs([a, short, b, b, short, short]) for d in run]
    assert flat == [a, short, b, b, short, short]


def test_split_gro_gives_back_the_datagrams() -> None:
    data = b"".join(bytes([i]) * 100 for i in range(5)) + b"last"
    parts = split_gro(data, 100)
    assert [bytes(p) for p in parts] == [bytes([i]) * 100 for i in range(5)] + [b"last"]
    assert [bytes(p) for p in split_gro(b"single", 0)] == [b"single"]
    assert [bytes(p) for p in split_gro(b"x" * 50, 100)] == [b"x" * 50]
