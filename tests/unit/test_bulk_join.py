"""Super-segments of one burst sealed as one run, and runs that leave as views of the
workspace they were sealed or opened in (issue 17), against the paths they replace.

A stream's kernel hands the TUN reader several super-segments per burst; those that join
(TcpSuperSegment.joins) are cut into one row array and sealed in one pass.  The datagrams
must be byte for byte those of the old path: each super-segment cut by
TcpSuperSegment.packets() and sealed by seal_burst in turn, with the same sequence
numbers, and the same drops at the end of the sequence space.
"""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from ipsecd.crypto.registry import ENCRYPTION
from ipsecd.dataplane import bulk
from ipsecd.dataplane.offload import TcpSuperSegment, parse_read
from ipsecd.dataplane.processor import MAX_RUN_ROWS, PacketProcessor
from ipsecd.dataplane.sad import InstalledChildSa, SaDatabase
from ipsecd.esp.rows import PacketRows, open_rows
from ipsecd.esp.sa import MAX_SEQ_32, InboundEspSa, OutboundEspSa
from ipsecd.esp.udp_encap import DatagramRun
from ipsecd.selectors import TrafficSelector
from tests.lab.packets import ipv4
from tests.unit.test_offload import as_super_segment

GCM = ENCRYPTION["aes128gcm16"]
LOCAL, REMOTE = ("192.0.2.1", 4500), ("192.0.2.2", 4500)
SITES = {
    4: (TrafficSelector.from_prefix("10.1.0.0/24"), TrafficSelector.from_prefix("10.2.0.0/24")),
    6: (TrafficSelector.from_prefix("fd00:1::/64"), TrafficSelector.from_prefix("fd00:2::/64")),
}
HOSTS = {4: ("10.1.0.{}", "10.2.0.2"), 6: ("fd00:1::{}", "fd00:2::2")}


def seg(
    version: int,
    mss: int,
    total: int,
    seq: int,
    flags: str = "PA",
    tsval: int = 1,
    host: int = 2,
    sport: int = 40000,
    ip_id: int = 100,
    options: bool = True,
) -> TcpSuperSegment:
    """A super-segment as the kernel hands it over: ``total`` bytes of payload in packets
    of ``mss`` bytes, its own timestamp (the headers differ from the next one's)."""
    src, dst = HOSTS[version][0].format(host), HOSTS[version][1]
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (tsval, 7))] if options else []
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=777, flags=flags, options=opts)
    ip = IP(src=src, dst=dst, id=ip_id) if version == 4 else IPv6(src=src, dst=dst)
    header, raw = as_super_segment(bytes(ip / tcp / os.urandom(total)), mss)
    read = parse_read(header, raw)
    assert isinstance(read, TcpSuperSegment)
    return read


def stream(version: int, mss: int, reads: int, seq: int = 1000, last: int = 0) -> list:
    """``reads`` super-segments of whole MSS multiples, PSH and a new timestamp each, the
    sequence numbers and IP ids following on; ``last`` bytes short at the very end."""
    out = []
    for i in range(reads):
        count = 5 + i
        total = count * mss - (last if i == reads - 1 else 0)
        out.append(seg(version, mss, total, seq, tsval=i + 1, ip_id=(0xFFF0 + 6 * i) & 0xFFFF))
        seq = (seq + total) & 0xFFFFFFFF
    return out


def twins(esn: bool = False) -> tuple[OutboundEspSa, OutboundEspSa]:
    key = os.urandom(GCM.keymat_len)
    return OutboundEspSa(0x1234, GCM, None, key, esn=esn), OutboundEspSa(
        0x1234, GCM, None, key, esn=esn
    )


def one_by_one(sa: OutboundEspSa, segs: list[TcpSuperSegment]) -> list[bytes]:
    """The old path: each super-segment cut into packets and sealed in turn."""
    out: list[bytes] = []
    for s in segs:
        sa.seal_burst(s.packets(), out)
    return out


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("last", [0, 1, 700])
def test_rows_of_joined_segments_are_their_packets_in_turn(version: int, last: int) -> None:
    segs = stream(version, 1000, 3, seq=0xFFFFF000, last=last)  # sequence numbers wrap
    assert all(a.joins(b) for a, b in zip(segs, segs[1:], strict=False))
    packets = [p for s in segs for p in s.packets()]
    rows = bulk.np.zeros((len(packets), segs[0].length() + 40), bulk.np.uint8)
    bulk.write_segments(segs, rows, 16)
    for i, packet in enumerate(packets):
        assert rows[i, 16 : 16 + len(packet)].tobytes() == packet, i


def test_flags_of_each_segment_stay_its_own() -> None:
    """CWR on each super-segment's first packet, FIN and PSH on its last only; the
    segments of other flows (ports) between the same hosts join too."""
    segs = [
        seg(4, 999, 999 * 4, 5, flags="CA", ip_id=0xFFFF),  # odd MSS, IP id wraps
        seg(4, 999, 999 * 3, 9, flags="PA", sport=40001, tsval=9),
        seg(4, 999, 999 * 2 + 5, 70_000, flags="FPA", tsval=3),
    ]
    assert segs[0].joins(segs[1]) and segs[1].joins(segs[2])
    a, b = twins()
    run = bulk.seal_segments(a, segs)
    assert run is not None and [bytes(d) for d in run.datagrams()] == one_by_one(b, segs)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("esn", [False, True])
def test_joined_segments_seal_to_the_datagrams_of_each_in_turn(version: int, esn: bool) -> None:
    segs = stream(version, 1348, 3, last=100)
    a, b = twins(esn)
    if esn:
        a.seq = b.seq = (1 << 32) - 8  # the high half changes inside the run
    run = bulk.seal_segments(a, segs)
    assert run is not None and [bytes(d) for d in run.datagrams()] == one_by_one(b, segs)
    assert (a.seq, a.packets, a.bytes) == (b.seq, b.packets, b.bytes)


def test_segments_that_do_not_join() -> None:
    first = seg(4, 1000, 4500, 1000)  # its last packet is short
    assert not first.joins(seg(4, 1000, 5000, 5500))
    whole = seg(4, 1000, 5000, 1000)
    assert whole.joins(seg(4, 1000, 3000, 6000, tsval=2))
    assert not whole.joins(seg(4, 1000, 5000, 6000, host=3))  # other addresses
    assert not whole.joins(seg(4, 900, 5000, 6000))  # another MSS
    assert not whole.joins(seg(4, 1000, 5000, 6000, options=False))  # another header length
    assert not whole.joins(seg(6, 1000, 5000, 6000))


def processor(esn: bool = False) -> tuple[PacketProcessor, OutboundEspSa]:
    """A gateway's processor with one tunnel-mode SA for both address families' sites,
    and a twin of its outbound SA for the old path."""
    out, twin = twins(esn)
    inbound = InboundEspSa(0x4321, GCM, None, os.urandom(GCM.keymat_len))
    local = (SITES[4][0], SITES[6][0])
    remote = (SITES[4][1], SITES[6][1])
    sad = SaDatabase()
    sad.install(InstalledChildSa("b", inbound, out, local, remote, LOCAL, REMOTE))
    return PacketProcessor(sad), twin


def sent(out: dict) -> tuple[list[bytes], int]:
    """The datagrams for the peer in order, and how many sends (runs or datagrams)."""
    items = out.get((LOCAL, REMOTE), [])
    flat = [
        bytes(d)
        for item in items
        for d in (item.datagrams() if isinstance(item, DatagramRun) else [item])
    ]
    return flat, len(items)


def test_a_stream_in_one_burst_leaves_as_one_run() -> None:
    proc, twin = processor()
    segs = stream(4, 1348, 3, last=1)
    datagrams, sends = sent(proc.from_tun(segs))
    assert datagrams == one_by_one(twin, segs)
    assert sends == 1


def test_interleaved_flows_and_packets_keep_their_order() -> None:
    """Hosts 2 and 3 interleaved (other addresses: never joined), a lone ACK between
    super-segments, a short last packet in the middle, IPv6 after IPv4: the datagrams
    are those of the old path, in the same order."""
    proc, twin = processor()
    a1, a2 = seg(4, 1000, 3000, 1000), seg(4, 1000, 2000, 4000, tsval=2)
    b1 = seg(4, 1000, 3000, 50, host=3)
    a3 = seg(4, 1000, 2500, 6000, tsval=3)  # short last: a4 cannot join it
    a4 = seg(4, 1000, 2000, 8500, tsval=4)
    ack = ipv4("10.1.0.2", "10.2.0.2")
    v6 = stream(6, 1000, 2)
    burst = [a1, a2, b1, a3, a4, ack, *v6]
    expected: list[bytes] = []
    for item in burst:
        twin.seal_burst(item.packets() if isinstance(item, TcpSuperSegment) else [item], expected)
    datagrams, sends = sent(proc.from_tun(burst))
    assert datagrams == expected
    assert sends == 6  # a1+a2, b1, a3, a4, the ACK, both IPv6 super-segments


@pytest.mark.parametrize("spare", [0, 3, 12])
def test_the_end_of_the_sequence_space_drops_what_it_dropped_before(spare: int) -> None:
    """Near MAX_SEQ_32 the super-segments that still fit are sealed (as they were one at
    a time), the rest dropped and counted; a run that fits exactly goes whole."""
    proc, twin = processor()
    segs = stream(4, 1000, 3)  # 5 + 6 + 7 packets
    start = MAX_SEQ_32 - (18 - spare if spare else 18)
    proc.sad.by_spi[0x4321].outbound.seq = twin.seq = start  # type: ignore[union-attr]
    datagrams, _ = sent(proc.from_tun(segs))
    expected: list[bytes] = []
    dropped = 0
    for s in segs:
        if twin.seq + s.count > twin.max_seq:
            dropped += s.count
        else:
            twin.seal_burst(s.packets(), expected)
    assert datagrams == expected
    assert proc.drops["sequence_exhausted"] == dropped
    assert (dropped > 0) == (spare > 0)


def test_a_run_in_flight_keeps_its_bytes_while_others_are_sealed() -> None:
    """Sealed runs are views of a sealing workspace, not copies: a workspace is taken
    again only when no view of its last run is left, so what waits to be sent never
    changes, however many runs are sealed meanwhile (more than there are workspaces)."""
    a, b = twins()
    held: list[tuple[object, bytes]] = []
    expected: list[list[bytes]] = []
    for i in range(7):
        segs = [seg(4, 1000, 4000 + i, 1000 * i)]
        run = bulk.seal_segments(a, segs)
        assert run is not None
        # Held as the run, or only as views made from it (the sender's slices).
        held.append((run if i % 2 else run.datagrams(), bytes(run)))
        expected.append(one_by_one(b, segs))
    for (kept, sealed), datagrams in zip(held, expected, strict=True):
        views = kept.datagrams() if isinstance(kept, DatagramRun) else kept
        assert [bytes(v) for v in views] == datagrams
        assert b"".join(datagrams) == sealed
    held.clear()
    run = bulk.seal_segments(a, [seg(4, 1000, 3000, 0)])
    assert run is not None and isinstance(run.data, memoryview)  # a workspace is free again


@pytest.mark.parametrize("version", [4, 6])
def test_a_joined_run_opens_at_the_replay_window_edge_across_the_esn_wrap(version: int) -> None:
    """The peer opens a joined run whose sequence numbers cross 2^32 (ESN), right of a
    window whose top is the number before the run: every inner packet comes out, in
    order, and the window moves to the run's last number."""
    segs = stream(version, 1000, 3, last=10)
    key = os.urandom(GCM.keymat_len)
    out = OutboundEspSa(0x1234, GCM, None, key, esn=True)
    out.seq = (1 << 32) - 7
    run = bulk.seal_segments(out, segs)
    assert run is not None
    src, dst = SITES[version]
    inb = InboundEspSa(0x1234, GCM, None, key, esn=True, src_selectors=(src,), dst_selectors=(dst,))
    inb.replay.top, inb.replay._bitmap = (1 << 32) - 7, 1  # the number before the run
    delivered: list[bytes] = []
    inb.open_burst(run.datagrams(), delivered)
    assert delivered == [p for s in segs for p in s.packets()]
    assert inb.replay.top == out.seq and inb.packets == len(delivered)


def test_opened_rows_in_flight_keep_their_bytes_while_others_are_opened() -> None:
    """Opened rows are views of a workspace too, lent until they are written: rows held
    (as PacketRows, or only as a view made from them) keep their packets however many
    runs are opened meanwhile, and a workspace is lent again once nothing holds it."""
    key = os.urandom(GCM.keymat_len)
    out = OutboundEspSa(0x1234, GCM, None, key)
    src, dst = SITES[4]
    inb = InboundEspSa(0x1234, GCM, None, key, src_selectors=(src,), dst_selectors=(dst,))
    held: list[tuple[object, list[bytes]]] = []
    for i in range(9):
        segs = [seg(4, 1000, 5000 + i, 1000 * i, tsval=i)]
        run = bulk.seal_segments(out, segs)
        assert run is not None
        opened = open_rows(inb, [DatagramRun(bytes(run), run.size)])
        assert isinstance(opened, PacketRows)
        packets = [p for s in segs for p in s.packets()]
        assert opened.packets() == packets
        held.append((opened if i % 2 else opened.rows[1:3, :100], packets))
    for kept, packets in held:
        if isinstance(kept, PacketRows):
            assert kept.packets() == packets
        else:
            assert [bytes(r) for r in kept] == [p[:100] for p in packets[1:3]]
    held.clear()
    run = bulk.seal_segments(out, [seg(4, 1000, 3000, 0)])
    assert run is not None
    opened = open_rows(inb, [DatagramRun(bytes(run), run.size)])
    assert isinstance(opened, PacketRows) and opened.rows.base is not None
    assert not opened.rows.flags.owndata  # lent, not copied: a workspace was free again


def test_a_long_stream_is_cut_into_runs_of_at_most_max_run_rows() -> None:
    """Super-segments join until a run would pass MAX_RUN_ROWS packets (the workspaces'
    size): 6 of 47 packets leave as runs of 235 and 47, the same datagrams in order."""
    proc, twin = processor()
    mss = 1348
    segs = []
    seq = 1000
    for i in range(6):
        segs.append(seg(4, mss, 47 * mss, seq, tsval=i))
        seq += 47 * mss
    datagrams, sends = sent(proc.from_tun(segs))
    assert datagrams == one_by_one(twin, segs)
    assert sends == 2 and MAX_RUN_ROWS == 256
