"""The bulk path (numpy) against the one-packet paths it stands in for.

write_segments must cut a super-segment into the bytes TcpSuperSegment.packets() gives
(which test_offload.py holds to the kernel's TCP GSO and to scapy), seal_segments must
give the datagrams seal_burst gives for those packets, open_rows what open_burst gives
(inner packets, counters, replay window) or decline, and coalesce_rows writes that cut
back into the same packets.
"""

from __future__ import annotations

import os
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.dataplane import bulk
from ipsecd.dataplane.offload import (
    ZERO_VNET_HDR,
    TcpSuperSegment,
    coalesce,
    parse_read,
    split_super_segment,
)
from ipsecd.esp.counters import DropReason
from ipsecd.esp.rows import PacketRows, open_rows
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.esp.udp_encap import DatagramRun
from ipsecd.selectors import TrafficSelector
from tests.unit.test_offload import as_super_segment, tcp_ip

SITE_A = (TrafficSelector.from_prefix("10.1.0.0/24"),)
SITE_B = (TrafficSelector.from_prefix("10.2.0.0/24"),)
SITE_A6 = (TrafficSelector.from_prefix("fd00:1::/64"),)
SITE_B6 = (TrafficSelector.from_prefix("fd00:2::/64"),)


def super_segment(
    version: int, mss: int, total: int, seq: int = 1000, flags: str = "A", ip_id: int = 100
) -> TcpSuperSegment:
    kw = {"id": ip_id} if version == 4 else {}
    header, raw = as_super_segment(tcp_ip(version, os.urandom(total), seq, flags, **kw), mss)
    seg = parse_read(header, raw)
    assert isinstance(seg, TcpSuperSegment)
    return seg


def sas(
    name: str = "aes128gcm16", esn: bool = False, version: int = 4
) -> tuple[OutboundEspSa, OutboundEspSa, InboundEspSa, InboundEspSa]:
    """Two identical senders and two identical receivers (bulk vs one by one)."""
    encr = ENCRYPTION[name]
    integ = None if encr.aead else INTEGRITY["sha256"]
    keymat = os.urandom(encr.keymat_len)
    ikey = os.urandom(integ.key_len) if integ else b""
    out = [OutboundEspSa(0x1234, encr, integ, keymat, ikey, esn=esn) for _ in range(2)]
    src, dst = (SITE_A, SITE_B) if version == 4 else (SITE_A6, SITE_B6)
    inb = [
        InboundEspSa(
            0x1234, encr, integ, keymat, ikey, esn=esn, src_selectors=src, dst_selectors=dst
        )
        for _ in range(2)
    ]
    return out[0], out[1], inb[0], inb[1]


CASES = [
    (4, 1386, 1386 * 46 + 700, 1000, "A"),
    (4, 1386, 1386 * 3, 0xFFFFF000, "PA"),  # sequence numbers wrap; the last one full
    (4, 999, 999 * 7 + 1, 5, "CPA"),  # odd MSS, CWR first, PSH last
    (4, 536, 536 * 20 + 535, 7, "FA"),
    (6, 1000, 1000 * 9 + 13, 1 << 31, "FPA"),
    (6, 1367, 1367 * 5 + 2, 77, "A"),
]


@pytest.mark.parametrize("version, mss, total, seq, flags", CASES)
def test_rows_hold_the_packets_the_one_packet_cut_gives(
    version: int, mss: int, total: int, seq: int, flags: str
) -> None:
    seg = super_segment(version, mss, total, seq, flags, ip_id=0xFFFE)
    packets = seg.packets()
    stride = seg.length() + 40
    rows = bulk.np.zeros((seg.count, stride), bulk.np.uint8)
    bulk.write_segments([seg], rows, 16)
    assert len(packets) == seg.count
    for i, packet in enumerate(packets):
        assert rows[i, 16 : 16 + len(packet)].tobytes() == packet, i


@pytest.mark.parametrize("version, mss, total, seq, flags", CASES)
@pytest.mark.parametrize("esn", [False, True])
def test_sealed_segment_is_what_seal_burst_gives(
    version: int, mss: int, total: int, seq: int, flags: str, esn: bool
) -> None:
    seg = super_segment(version, mss, total, seq, flags)
    bulk_sa, one_sa, _, _ = sas(esn=esn)
    if esn:
        bulk_sa.seq = one_sa.seq = (1 << 32) - 5  # the high half changes inside the run
    run = bulk.seal_segments(bulk_sa, [seg])
    expected: list[bytes] = []
    one_sa.seal_burst(seg.packets(), expected)
    assert run is not None and [bytes(d) for d in run.datagrams()] == expected
    assert (bulk_sa.seq, bulk_sa.packets, bulk_sa.bytes) == (
        one_sa.seq,
        one_sa.packets,
        one_sa.bytes,
    )


@pytest.mark.parametrize("name", ["aes256gcm16", "chacha20poly1305"])
def test_other_aeads_seal_the_same(name: str) -> None:
    seg = super_segment(4, 1386, 1386 * 10 + 3)
    bulk_sa, one_sa, _, _ = sas(name)
    run = bulk.seal_segments(bulk_sa, [seg])
    expected: list[bytes] = []
    one_sa.seal_burst(seg.packets(), expected)
    assert run is not None and [bytes(d) for d in run.datagrams()] == expected


def test_cbc_segments_are_left_to_the_one_packet_path() -> None:
    bulk_sa, _, _, _ = sas("aes128")
    assert bulk.seal_segments(bulk_sa, [super_segment(4, 1000, 5000)]) is None
    assert bulk_sa.seq == 0


def sealed(sa: OutboundEspSa, packets: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    sa.seal_burst(packets, out)
    return out


def gro_runs(datagrams: list[bytes], per: int) -> list[DatagramRun]:
    """The datagrams as GRO hands them over: runs of one size (the last maybe shorter)."""
    size = len(datagrams[0])
    return [
        DatagramRun(b"".join(datagrams[i : i + per]), size) for i in range(0, len(datagrams), per)
    ]


def opened_alike(
    inb_bulk: InboundEspSa, inb_one: InboundEspSa, runs: list[DatagramRun]
) -> PacketRows | list[bytes] | None:
    """open_rows on ``runs``, checked against open_burst on the same datagrams."""
    result = open_rows(inb_bulk, runs)
    expected: list[bytes] = []
    inb_one.open_burst([d for run in runs for d in run.datagrams()], expected)
    if result is None:  # declined: nothing may have changed
        assert inb_bulk.packets == 0 and inb_bulk.replay.top == 0
        return None
    got = result.packets() if isinstance(result, PacketRows) else result
    assert got == expected
    assert inb_bulk.drops == inb_one.drops
    assert (inb_bulk.packets, inb_bulk.bytes) == (inb_one.packets, inb_one.bytes)
    assert (inb_bulk.replay.top, inb_bulk.replay._bitmap) == (
        inb_one.replay.top,
        inb_one.replay._bitmap,
    )
    return result


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("esn", [False, True])
def test_opened_rows_are_what_open_burst_gives(version: int, esn: bool) -> None:
    out_sa, _, inb_bulk, inb_one = sas(esn=esn, version=version)
    if esn:
        out_sa.seq = (1 << 32) + 7
        inb_bulk.replay.top = inb_one.replay.top = (1 << 32) + 7
    seg = super_segment(version, 1386, 1386 * 40 + 100)
    datagrams = sealed(out_sa, seg.packets())
    result = opened_alike(inb_bulk, inb_one, gro_runs(datagrams, 22))
    assert isinstance(result, PacketRows) and len(result) == 41


def test_runs_of_uneven_inner_lengths_are_checked_one_by_one() -> None:
    out_sa, _, inb_bulk, inb_one = sas()
    # 1395 to 1398 bytes all pad to the same ESP length: one GRO run.
    packets = [tcp_ip(4, os.urandom(1343 + i % 4)) for i in range(12)]
    datagrams = sealed(out_sa, packets)
    assert len({len(d) for d in datagrams}) == 1
    result = opened_alike(inb_bulk, inb_one, gro_runs(datagrams, 12))
    assert isinstance(result, list) and result == packets


def test_packets_outside_the_selectors_are_dropped_together() -> None:
    out_sa, _, inb_bulk, inb_one = sas()
    packets = [tcp_ip(4, os.urandom(1000)) for _ in range(5)]
    packets = [p[:12] + bytes([10, 9, 0, 2]) + p[16:] for p in packets]  # from 10.9.0.2
    datagrams = sealed(out_sa, packets)
    assert opened_alike(inb_bulk, inb_one, gro_runs(datagrams, 5)) == []
    assert inb_bulk.drops[DropReason.OUTSIDE_SELECTORS] == 5


def test_dummy_packets_are_dropped_one_by_one() -> None:
    out_sa, _, inb_bulk, inb_one = sas()
    out: list[bytes] = []
    out_sa.seal_burst([os.urandom(1000)] * 4, out, next_headers=[59] * 4)
    result = opened_alike(inb_bulk, inb_one, gro_runs(out, 4))
    assert result == [] and inb_bulk.drops[DropReason.DUMMY] == 4


def test_replays_bad_icvs_and_gaps_are_declined() -> None:
    out_sa, _, inb_bulk, _ = sas()
    datagrams = sealed(out_sa, [tcp_ip(4, os.urandom(1000)) for _ in range(6)])
    assert open_rows(inb_bulk, gro_runs(datagrams[:3] + datagrams[4:], 6)) is None  # a gap
    tampered = datagrams[:2] + [datagrams[2][:-1] + bytes([datagrams[2][-1] ^ 1])]
    assert open_rows(inb_bulk, gro_runs(tampered, 3)) is None
    other_spi = [datagrams[0], b"\x00\x00\x99\x99" + datagrams[1][4:]]
    assert open_rows(inb_bulk, gro_runs(other_spi, 2)) is None
    assert inb_bulk.replay.top == 0 and inb_bulk.packets == 0
    assert open_rows(inb_bulk, gro_runs(datagrams, 6)) is not None
    assert open_rows(inb_bulk, gro_runs(datagrams, 6)) is None  # every one a replay
    assert inb_bulk.replay.top == 6


def test_window_moves_past_a_whole_run_far_ahead() -> None:
    out_sa, _, inb_bulk, inb_one = sas()
    inb_bulk.replay.top = inb_one.replay.top = 10
    inb_bulk.replay._bitmap = inb_one.replay._bitmap = 0b1011
    out_sa.seq = 5000
    datagrams = sealed(out_sa, [tcp_ip(4, os.urandom(1000)) for _ in range(8)])
    assert opened_alike(inb_bulk, inb_one, gro_runs(datagrams, 8)) is not None


def test_coalesced_rows_cut_back_into_the_packets() -> None:
    seg = super_segment(4, 1386, 1386 * 46 + 500, flags="PA")
    packets = seg.packets()
    rows = PacketRows(
        bulk.np.frombuffer(b"".join(p + b"\x01\x02" for p in packets[:-1]), bulk.np.uint8).reshape(
            len(packets) - 1, len(packets[0]) + 2
        ),
        len(packets[0]),
        packets[-1],
    )
    writes = bulk.coalesce_rows(rows)
    assert writes is not None and len(writes) == 1
    (write,) = writes
    assert split_super_segment(write[0], b"".join(bytes(b) for b in write[1:])) == packets
    assert writes_as_packets(writes) == writes_as_packets(coalesce(packets))


def writes_as_packets(writes: list[list[bytes | memoryview]]) -> list[bytes]:
    out: list[bytes] = []
    for write in writes:
        if write[0] is ZERO_VNET_HDR:
            out.append(bytes(write[1]))
        else:
            cut = split_super_segment(bytes(write[0]), b"".join(bytes(b) for b in write[1:]))
            assert cut is not None
            out += cut
    return out


@pytest.mark.parametrize("version", [4, 6])
def test_rows_over_64k_become_several_writes(version: int) -> None:
    # 60 segments of one flow: more than one GSO write holds.
    first = super_segment(version, 1386, 1386 * 40, seq=1000)
    packets = (
        first.packets()
        + super_segment(version, 1386, 1386 * 20, seq=1000 + 1386 * 40, ip_id=140).packets()
    )
    width = len(packets[0])
    rows = PacketRows(
        bulk.np.frombuffer(b"".join(packets), bulk.np.uint8).reshape(-1, width), width
    )
    writes = bulk.coalesce_rows(rows)
    assert writes is not None and len(writes) == 2
    assert writes_as_packets(writes) == packets


def test_a_bad_checksum_or_a_gap_is_left_to_the_one_packet_merge() -> None:
    seg = super_segment(4, 1000, 1000 * 8)
    packets = seg.packets()
    width = len(packets[0])
    broken = list(packets)
    broken[3] = broken[3][:-1] + bytes([broken[3][-1] ^ 0xFF])
    rows = bulk.np.frombuffer(b"".join(broken), bulk.np.uint8).reshape(-1, width)
    assert bulk.coalesce_rows(PacketRows(rows, width)) is None
    # A gap ends a group: the segments on either side are merged apart.
    gap = packets[:3] + packets[4:]
    rows = bulk.np.frombuffer(b"".join(gap), bulk.np.uint8).reshape(-1, width)
    writes = bulk.coalesce_rows(PacketRows(rows, width))
    assert writes is not None and len(writes) == 2
    assert writes_as_packets(writes) == gap


def restamped(packet: bytes, tsval: int = 0, sport: int = 40000, flags: str = "") -> bytes:
    """``packet`` with another timestamp, source port or flags (checksums redone)."""
    pkt = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    tcp = pkt[TCP]
    tcp.options = [("NOP", None), ("NOP", None), ("Timestamp", (tsval, 0))]
    tcp.sport = sport
    if flags:
        tcp.flags = flags
    del tcp.chksum
    if packet[0] >> 4 == 4:
        del pkt.chksum
    return bytes(pkt)


def segments(version: int, mss: int, count: int, seq: int, **kw: object) -> list[bytes]:
    """A sender's super-segment of ``count`` full segments (PSH on the last), cut."""
    seg = super_segment(version, mss, mss * count, seq=seq, flags="PA")
    return [restamped(p, **kw) for p in seg.packets()]  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [4, 6])
def test_super_segments_of_a_stream_are_merged_each_apart(version: int) -> None:
    # What a bulk receiver sees: full segments only, a new timestamp and PSH at the end
    # of each sender's super-segment, then another flow's, then the first again.
    mss = 1000
    packets = (
        segments(version, mss, 5, 1000, tsval=1)
        + segments(version, mss, 7, 1000 + 5 * mss, tsval=2)
        + segments(version, mss, 3, 9, tsval=2, sport=40001)
        + segments(version, mss, 1, 1000 + 12 * mss, tsval=3)
        + segments(version, mss, 4, 1000 + 13 * mss, tsval=3)
    )
    width = len(packets[0])
    rows = bulk.np.frombuffer(b"".join(packets), bulk.np.uint8).reshape(-1, width)
    tail = segments(version, mss, 1, 1000 + 17 * mss, tsval=3)[0]
    writes = bulk.coalesce_rows(PacketRows(rows, width, tail))
    assert writes is not None
    assert [w[0] is ZERO_VNET_HDR for w in writes] == [False, False, False, True, False, True]
    assert writes_as_packets(writes) == [*packets, tail]
    assert writes_as_packets(writes) == writes_as_packets(coalesce([*packets, tail]))


def test_a_tail_joins_the_last_write_of_its_flow() -> None:
    packets = segments(4, 1000, 6, 1000, tsval=1)
    packets[-1] = restamped(packets[-1], tsval=1, flags="A")
    tail = restamped(tcp_ip(4, b"t" * 300, seq=7000, flags="PA", id=106), tsval=1)
    width = len(packets[0])
    rows = bulk.np.frombuffer(b"".join(packets), bulk.np.uint8).reshape(-1, width)
    writes = bulk.coalesce_rows(PacketRows(rows, width, tail))
    assert writes is not None and len(writes) == 1
    assert writes_as_packets(writes) == [*packets, tail]


def test_acks_are_written_one_by_one() -> None:
    acks = [tcp_ip(4, b"", seq=1000) for _ in range(3)]
    rows = bulk.np.frombuffer(b"".join(acks), bulk.np.uint8).reshape(3, -1)
    writes = bulk.coalesce_rows(PacketRows(rows[:2], len(acks[0]), acks[2]))
    assert writes == [[ZERO_VNET_HDR, p] for p in acks]


def test_rows_unlike_the_first_are_left_to_the_one_packet_merge() -> None:
    packets = segments(4, 1000, 4, 1000, tsval=1)
    width = len(packets[0])
    fragment = bytearray(packets[2])
    fragment[6] |= 0x20  # more fragments
    for odd in (bytes(fragment), restamped(packets[2], tsval=1, flags="FA")):
        rows = bulk.np.frombuffer(b"".join([*packets[:2], odd, packets[3]]), bulk.np.uint8).reshape(
            -1, width
        )
        assert bulk.coalesce_rows(PacketRows(rows, width)) is None


def test_a_tail_that_does_not_follow_is_written_alone() -> None:
    seg = super_segment(4, 1000, 1000 * 5)
    packets = seg.packets()
    width = len(packets[0])
    other = tcp_ip(4, b"x" * 10, seq=1)
    rows = bulk.np.frombuffer(b"".join(packets), bulk.np.uint8).reshape(-1, width)
    writes = bulk.coalesce_rows(PacketRows(rows, width, other))
    assert writes is not None and writes[-1] == [ZERO_VNET_HDR, other]
    assert writes_as_packets(writes) == [*packets, other]


def test_word_sums_agree_with_the_big_int_sum() -> None:
    from ipsecd.dataplane.offload import ones_sum

    for n in (0, 1, 2, 3, 7, 1386, 1387):
        data = os.urandom(n)
        assert bulk.word_sum(data) == ones_sum(data)
        mss = 100 if n < 500 else 333
        payload = memoryview(data)
        assert bulk.payload_sums(payload, mss) == [
            ones_sum(payload[i : i + mss]) for i in range(0, n, mss)
        ]


def test_datagram_run_views() -> None:
    run = DatagramRun(bytes(range(10)), 4)
    assert len(run) == 3 and [bytes(d) for d in run.datagrams()] == [
        bytes(range(4)),
        bytes(range(4, 8)),
        bytes(range(8, 10)),
    ]
    assert bytes(run) == bytes(range(10))
    assert struct.calcsize("!I") == 4
