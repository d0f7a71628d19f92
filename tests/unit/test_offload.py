"""TSO/GRO in userspace: cutting TUN super-segments and merging TCP segments for GSO writes.

Checksums are checked with scapy, which computes them on its own; sequence
numbers, flags and IP ids are compared with what the kernel's own TCP GSO
(tcp_gso_segment) produces.
"""

from __future__ import annotations

import os
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsecd.dataplane import offload
from ipsecd.dataplane.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    ZERO_VNET_HDR,
    checksum_ok,
    coalesce,
    complete_checksum,
    ones_sum,
    split_super_segment,
)

TS_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]


def tcp_ip(version: int, payload: bytes, seq: int = 1000, flags: str = "A", **ip_kw) -> bytes:
    """A TCP packet with timestamps and a correct checksum, as a host would send it."""
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=777, flags=flags, options=TS_OPTIONS)
    if version == 4:
        ip = IP(src="10.1.0.2", dst="10.2.0.2", id=ip_kw.pop("id", 100), **ip_kw)
    else:
        ip = IPv6(src="fd00:1::2", dst="fd00:2::2", **ip_kw)
    return bytes(ip / tcp / payload)


def as_super_segment(packet: bytes, mss: int) -> tuple[bytes, bytes]:
    """The kernel's view of an un-segmented packet: partial checksum and a GSO header."""
    version = packet[0] >> 4
    ip_hlen = 20 if version == 4 else 40
    pkt = IP(packet) if version == 4 else IPv6(packet)
    tcp_len = len(packet) - ip_hlen
    addrs = packet[12:20] if version == 4 else packet[8:40]
    # CHECKSUM_PARTIAL: the field holds the folded (not inverted) pseudo-header sum.
    pseudo = (int.from_bytes(addrs, "big") + 6 + tcp_len) % 0xFFFF or 0xFFFF
    pkt[TCP].chksum = pseudo
    raw = bytes(pkt)
    hlen = ip_hlen + (raw[ip_hlen + 12] >> 4) * 4
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, hlen, mss, ip_hlen, 16), raw


def scapy_checksums_ok(packet: bytes) -> bool:
    """True if scapy, recomputing them, gets the same IP and TCP checksums."""
    if packet[0] >> 4 == 4:
        pkt = IP(packet)
        rebuilt = IP(packet)
        del rebuilt.chksum
        del rebuilt[TCP].chksum
        rebuilt = IP(bytes(rebuilt))
        return pkt.chksum == rebuilt.chksum and _same_tcp_sum(pkt[TCP].chksum, rebuilt)
    pkt = IPv6(packet)
    rebuilt = IPv6(packet)
    del rebuilt[TCP].chksum
    rebuilt = IPv6(bytes(rebuilt))
    return _same_tcp_sum(pkt[TCP].chksum, rebuilt)


def _same_tcp_sum(ours: int, rebuilt) -> bool:
    # 0x0000 and 0xFFFF are the same ones'-complement number; a receiver accepts both.
    theirs = rebuilt[TCP].chksum
    return ours == theirs or {ours, theirs} == {0, 0xFFFF}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("mss", [1000, 1386, 999])
def test_super_segment_is_cut_like_the_kernel_does(version: int, mss: int) -> None:
    data = os.urandom(mss * 7 + 123)
    original = tcp_ip(version, data, seq=0xFFFFF000, flags="PA" if version == 4 else "FPA")
    header, raw = as_super_segment(original, mss)
    segments = split_super_segment(header, raw)
    assert segments is not None and len(segments) == 8
    payloads = []
    for i, seg in enumerate(segments):
        assert scapy_checksums_ok(seg), i
        pkt = IP(seg) if version == 4 else IPv6(seg)
        tcp = pkt[TCP]
        assert tcp.seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF  # wraps like TCP does
        assert (
            tcp.ack == 777 and tcp.options == (IP if version == 4 else IPv6)(original)[TCP].options
        )
        last = i == len(segments) - 1
        assert bool(tcp.flags & 0x08) == last  # PSH only on the last segment
        assert bool(tcp.flags & 0x01) == (last and version == 6)  # FIN only on the last
        assert tcp.flags & 0x10  # ACK everywhere
        if version == 4:
            assert pkt.id == 100 + i and pkt.len == len(seg)
        else:
            assert pkt.plen == len(seg) - 40
        assert len(bytes(tcp.payload)) == (mss if not last else 123)
        payloads.append(bytes(tcp.payload))
        assert checksum_ok(seg, 20 if version == 4 else 40)
    assert b"".join(payloads) == data


def test_cwr_stays_on_the_first_segment_only() -> None:
    original = tcp_ip(4, os.urandom(3000), flags="AC")
    header, raw = as_super_segment(original, 1000)
    segments = split_super_segment(header, raw)
    assert [bool(IP(s)[TCP].flags & 0x80) for s in segments] == [True, False, False]


def test_packet_without_gso_needing_a_checksum_gets_a_full_one() -> None:
    pkt = IP(src="10.1.0.2", dst="10.2.0.2") / UDP(sport=1, dport=2) / b"hello world"
    raw = bytearray(bytes(pkt))
    pseudo = (int.from_bytes(raw[12:20], "big") + 17 + len(raw) - 20) % 0xFFFF
    raw[26:28] = pseudo.to_bytes(2, "big")
    header = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 20, 6)
    (done,) = split_super_segment(header, bytes(raw))
    assert done == bytes(pkt)
    assert complete_checksum(bytes(raw), 20, 6) == bytes(pkt)


def test_ordinary_packet_passes_unchanged() -> None:
    packet = tcp_ip(4, b"x" * 10)
    assert split_super_segment(ZERO_VNET_HDR, packet) == [packet]


@pytest.mark.parametrize(
    "header, packet",
    [
        (b"\x00" * 9, tcp_ip(4, b"x")),  # short header
        (VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_TCPV4, 52, 100, 20, 16), b"\x45" + bytes(10)),
        (VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_TCPV4, 52, 100, 24, 16), tcp_ip(4, b"x" * 500)),
        (VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_TCPV6, 72, 100, 40, 16), tcp_ip(4, b"x" * 500)),
        (VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_TCPV4, 52, 0, 20, 16), tcp_ip(4, b"x" * 500)),
        (VNET_HDR.pack(1, 3, 28, 100, 20, 6), tcp_ip(4, b"x" * 500)),  # UFO: not enabled
        (VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 2000, 6), tcp_ip(4, b"x")),
    ],
)
def test_malformed_reads_are_refused(header: bytes, packet: bytes) -> None:
    assert split_super_segment(header, packet) is None


def test_random_reads_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        header = bytes(rng.getrandbits(8) for _ in range(10))
        packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        if rng.random() < 0.5 and packet:
            packet = bytes([0x45 if rng.random() < 0.5 else 0x60]) + packet[1:]
        split_super_segment(header, packet)
        coalesce([packet, packet])


def segments_of(version: int, mss: int, total: int, flags: str = "A") -> list[bytes]:
    header, raw = as_super_segment(tcp_ip(version, os.urandom(total), flags=flags), mss)
    out = split_super_segment(header, raw)
    assert out is not None
    return out


@pytest.mark.parametrize("version", [4, 6])
def test_coalesced_write_segments_back_into_the_same_packets(version: int) -> None:
    segments = segments_of(version, 1386, 1386 * 40 + 17, flags="PA")
    (write,) = coalesce(segments)
    header, packet = write[0], b"".join(write[1:])
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(header)
    ip_hlen = 20 if version == 4 else 40
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert gso_type == (VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6)
    assert (hdr_len, gso_size, csum_start, csum_offset) == (ip_hlen + 32, 1386, ip_hlen, 16)
    if version == 4:
        assert IP(packet).len == len(packet)
        del_ip = IP(packet)
        del del_ip.chksum
        assert IP(bytes(del_ip)).chksum == IP(packet).chksum
    else:
        assert IPv6(packet).plen == len(packet) - 40
    # What the kernel does with it: GSO cuts it into exactly the original segments.
    assert split_super_segment(header, packet) == segments


def test_single_and_non_tcp_packets_are_written_alone_with_a_zero_header() -> None:
    udp = bytes(IP(src="10.1.0.2", dst="10.2.0.2") / UDP() / b"x")
    one = tcp_ip(4, b"y" * 100)
    syn = tcp_ip(4, b"", flags="S")
    assert coalesce([udp, one, syn]) == [
        [ZERO_VNET_HDR, udp],
        [ZERO_VNET_HDR, one],
        [ZERO_VNET_HDR, syn],
    ]
    for alone in (one, udp):  # a burst of one (an idle tunnel's packet)
        assert coalesce([alone]) == [[ZERO_VNET_HDR, alone]]


def test_a_gap_in_sequence_numbers_starts_a_new_run() -> None:
    segments = segments_of(4, 1000, 6000)
    writes = coalesce(segments[:2] + segments[3:])
    assert len(writes) == 2
    assert [VNET_HDR.unpack(w[0])[1] for w in writes] == [VIRTIO_NET_HDR_GSO_TCPV4] * 2
    assert split_super_segment(writes[0][0], b"".join(writes[0][1:])) == segments[:2]
    assert split_super_segment(writes[1][0], b"".join(writes[1][1:])) == segments[3:]


def test_interleaved_flows_are_merged_separately() -> None:
    a = segments_of(4, 1000, 4000)
    b = [_with_port(s, 40001) for s in segments_of(4, 1000, 4000)]
    mixed = [p for pair in zip(a, b, strict=True) for p in pair]
    writes = coalesce(mixed)
    assert len(writes) == 2
    assert split_super_segment(writes[0][0], b"".join(writes[0][1:])) == a
    assert split_super_segment(writes[1][0], b"".join(writes[1][1:])) == b


def _with_port(packet: bytes, sport: int) -> bytes:
    pkt = IP(packet)
    pkt[TCP].sport = sport
    del pkt[TCP].chksum
    return bytes(pkt)


def test_a_segment_with_a_bad_checksum_is_never_merged_or_repaired() -> None:
    segments = segments_of(4, 1000, 5000)
    broken = bytearray(segments[2])
    broken[-1] ^= 0xFF
    segments[2] = bytes(broken)
    writes = coalesce(segments)
    assert all(w[0] == ZERO_VNET_HDR for w in writes)
    assert [w[1] for w in writes] == segments


def test_psh_and_a_short_segment_end_a_run_and_a_fin_is_not_overtaken() -> None:
    data = segments_of(4, 1000, 3500)  # 1000, 1000, 1000, 500
    more = segments_of(4, 1000, 2000)
    # Same flow, continuing after the short segment: must not join the finished run.
    seq = IP(data[-1])[TCP].seq + 500
    follow = []
    for s in more:
        pkt = IP(s)
        pkt[TCP].seq = seq + IP(s)[TCP].seq - IP(more[0])[TCP].seq
        del pkt[TCP].chksum
        follow.append(bytes(pkt))
    fin = IP(follow[-1])
    fin[TCP].flags = "FA"
    fin[TCP].seq += 1000
    fin[TCP].remove_payload()
    del fin[TCP].chksum
    del fin.len, fin.chksum
    writes = coalesce(data + follow + [bytes(fin)])
    assert len(writes) == 3
    assert split_super_segment(writes[0][0], b"".join(writes[0][1:])) == data
    assert split_super_segment(writes[1][0], b"".join(writes[1][1:])) == follow
    assert writes[2] == [ZERO_VNET_HDR, bytes(fin)]


def test_different_ack_or_window_does_not_merge() -> None:
    segments = segments_of(4, 1000, 3000)
    pkt = IP(segments[1])
    pkt[TCP].window = 1
    del pkt[TCP].chksum
    writes = coalesce([segments[0], bytes(pkt), segments[2]])
    assert all(w[0] == ZERO_VNET_HDR for w in writes) and len(writes) == 3


def test_ones_sum_matches_rfc1071_word_sum() -> None:
    rng = random.Random(1)
    for n in (0, 1, 2, 3, 1399, 1400):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        padded = data + b"\x00" * (n & 1)
        words = sum(int.from_bytes(padded[i : i + 2], "big") for i in range(0, len(padded), 2))
        assert ones_sum(data) == words % 0xFFFF


def test_bulk_state_says_whether_the_bulk_path_loaded(monkeypatch):
    """The status field an operator reads when bulk traffic is slow (docs/security.md)."""
    monkeypatch.setattr(offload, "_bulk", False)
    assert offload.bulk_state() == "not-loaded"
    monkeypatch.setattr(offload.importlib, "import_module", _unreadable)
    assert offload.bulk() is None and offload.bulk_state() == "unavailable"
    monkeypatch.undo()
    monkeypatch.setattr(offload, "_bulk", False)
    assert offload.bulk() is not None and offload.bulk_state() == "loaded"


def _unreadable(name: str) -> object:
    raise ImportError(f"{name}: permission denied")
