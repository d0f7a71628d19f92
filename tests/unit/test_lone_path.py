"""The lone-packet path (issue 17): ``seal_one``, ``PacketProcessor.seal_lone`` and
``open_lone``, held to what the burst paths make and decide, and to leaving alone
(None, nothing changed) what they must hand to the burst paths."""

from __future__ import annotations

import dataclasses

import pytest

from ipsecd.dataplane.offload import TcpSuperSegment
from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import InstalledChildSa, SaDatabase
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import SequenceNumberExhausted
from tests.lab.packets import ipv4
from tests.unit.test_dataplane import tunnel_pair
from tests.unit.test_esp_burst import ipv6, sa_pair

A_ESP = ("192.0.2.1", 4500)
B_ESP = ("192.0.2.2", 4500)


@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305", "aes128"])
@pytest.mark.parametrize("esn", [False, True])
def test_seal_one_is_byte_for_byte_a_burst_of_one(name: str, esn: bool) -> None:
    lone_sa, burst_sa, inb = sa_pair(name, esn, selectors=False)
    if esn:
        lone_sa.seq = burst_sa.seq = (1 << 32) - 2  # cross the 32-bit boundary
        inb.replay.top = (1 << 32) - 2
    for inner in (ipv4("10.1.0.2", "10.2.0.2", b"x" * 31), ipv6(60), ipv4("10.1.0.2", "10.2.0.2")):
        sealed = lone_sa.seal_one(inner)
        burst: list[bytes] = []
        burst_sa.seal_burst([inner], burst)
        if name == "aes128":  # a random IV per packet: the same header and size, and it opens
            opened: list[bytes] = []
            assert inb.open_burst([sealed], opened) == 1 and opened == [inner]
            assert (sealed[:8], len(sealed)) == (burst[0][:8], len(burst[0]))
        else:
            assert [sealed] == burst
    assert (lone_sa.seq, lone_sa.packets, lone_sa.bytes) == (
        burst_sa.seq,
        burst_sa.packets,
        burst_sa.bytes,
    )


def test_seal_one_past_the_sequence_space_raises_and_sends_nothing() -> None:
    out_sa, _, _ = sa_pair()
    out_sa.seq = out_sa.max_seq
    with pytest.raises(SequenceNumberExhausted):
        out_sa.seal_one(ipv4("10.1.0.2", "10.2.0.2"))
    assert (out_sa.seq, out_sa.packets) == (out_sa.max_seq, 0)


def gateways() -> tuple[PacketProcessor, PacketProcessor, InstalledChildSa, InstalledChildSa]:
    a_sa, b_sa = tunnel_pair()
    sad_a, sad_b = SaDatabase(), SaDatabase()
    sad_a.install(a_sa)
    sad_b.install(b_sa)
    return PacketProcessor(sad_a), PacketProcessor(sad_b), a_sa, b_sa


def test_lone_packet_crosses_as_the_burst_path_carries_it() -> None:
    pa, pb, a_sa, b_sa = gateways()
    inner = ipv4("10.1.0.2", "10.2.0.2", b"ping")
    sealed = pa.seal_lone(inner)
    assert sealed is not None
    local, remote, datagram = sealed
    assert (local, remote) == (A_ESP, B_ESP)
    assert a_sa.outbound.packets == 1
    assert pb.open_lone(datagram, A_ESP) == [inner]
    assert b_sa.inbound.packets == 1
    # The burst path opens what the lone path sealed next, and the reverse.
    datagrams = pa.from_tun([inner])[(A_ESP, B_ESP)]
    assert pb.open_lone(datagrams[0], A_ESP) == [inner]
    to_tun, _, _ = pb.from_udp([(pa.seal_lone(inner)[2], A_ESP)])  # type: ignore[index]  # sealed
    assert to_tun == [inner]


def test_open_lone_counts_what_it_drops() -> None:
    pa, pb, _, b_sa = gateways()
    sealed = pa.seal_lone(ipv4("10.1.0.2", "10.2.0.2"))
    assert sealed is not None
    datagram = sealed[2]
    assert pb.open_lone(datagram, A_ESP) != []
    assert pb.open_lone(datagram, A_ESP) == []  # a replay
    fresh = pa.seal_lone(ipv4("10.1.0.2", "10.2.0.2"))
    assert fresh is not None
    forged = fresh[2][:-1] + bytes([fresh[2][-1] ^ 1])
    assert pb.open_lone(forged, A_ESP) == []
    assert pb.open_lone(fresh[2], A_ESP) != []  # the window did not move for the forgery
    drops = b_sa.inbound.drops
    assert (drops[DropReason.REPLAY], drops[DropReason.BAD_ICV]) == (1, 1)


def test_selectors_still_hold_across_lone_packets() -> None:
    """The selector check is skipped only for the addresses that last passed it."""
    pa, pb, a_sa, b_sa = gateways()
    inside = ipv4("10.1.0.2", "10.2.0.2")
    outside = ipv4("10.9.0.2", "10.2.0.2")  # the peer may not send from 10.9.0.0/24
    for inner in (inside, outside, inside, outside):
        datagram = a_sa.outbound.seal_one(inner)  # type: ignore[union-attr]  # ESP
        opened = pb.open_lone(datagram, A_ESP)
        assert opened == ([inner] if inner is inside else [])
    assert b_sa.inbound.drops[DropReason.OUTSIDE_SELECTORS] == 2


def test_seal_lone_leaves_to_the_burst_path_what_it_does_not_take() -> None:
    pa, _, a_sa, _ = gateways()
    a_sa.max_inner = 100
    too_big = ipv4("10.1.0.2", "10.2.0.2", bytes(81))
    segment = object.__new__(TcpSuperSegment)  # never looked into
    for packet in (
        ipv4("10.9.0.2", "10.2.0.2"),  # no SA
        too_big,
        b"\x45" + bytes(10),  # too short
        b"\x15" + bytes(40),  # neither IPv4 nor IPv6
        segment,
    ):
        assert pa.seal_lone(packet) is None
    assert a_sa.outbound.packets == 0 and not pa.drops
    a_sa.outbound.seq = a_sa.outbound.max_seq
    assert pa.seal_lone(ipv4("10.1.0.2", "10.2.0.2")) is None
    assert not pa.drops  # from_tun counts it


def test_seal_lone_leaves_transport_mode_and_raw_esp_alone() -> None:
    for change in ({"mode": "transport"}, {"encap": False}, {"protocol": "ah"}):
        a_sa, _ = tunnel_pair()
        sad = SaDatabase()
        sad.install(dataclasses.replace(a_sa, **change))
        assert PacketProcessor(sad).seal_lone(ipv4("10.1.0.2", "10.2.0.2")) is None


def test_open_lone_leaves_to_the_burst_path_what_it_does_not_take() -> None:
    pa, pb, _, b_sa = gateways()
    sealed = pa.seal_lone(ipv4("10.1.0.2", "10.2.0.2"))
    assert sealed is not None
    for data, sender in (
        (bytes(4) + b"IKE message", A_ESP),  # the non-ESP marker (RFC 3948 §2.2)
        (b"\xff", A_ESP),  # a NAT-T keepalive
        ((0x7777).to_bytes(4, "big") + bytes(40), A_ESP),  # an unknown SPI
        (sealed[2], ("203.0.113.7", 34567)),  # the peer behind a new address
        (memoryview(sealed[2]), A_ESP),  # a GRO piece: the burst path's
    ):
        assert pb.open_lone(data, sender) is None
    assert b_sa.inbound.packets == 0 and b_sa.inbound.replay.top == 0
