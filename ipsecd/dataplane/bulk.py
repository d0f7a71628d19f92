"""TSO and GRO in userspace for whole runs of TCP segments, with numpy (the bulk path).

The companion of :mod:`ipsecd.dataplane.offload`, which cuts and merges one packet at a
time: here a TCP super-segment read from TUN is cut straight into the rows that ESP
seals (:func:`write_segments`, :func:`seal_segments`), and a run of opened inner packets
(:class:`~ipsecd.esp.rows.PacketRows`) is merged for one GSO write to TUN without being
cut into packets first (:func:`coalesce_rows`).  Every header field that differs per
segment (IP id, length and checksum; TCP sequence number, flags and checksum) is
computed for all segments at once, and the checksums are sums of native-order 16-bit
words, byte-swapped once at the end (RFC 1071 §2(B): the sum does not care for byte
order).  The packets are those of :func:`offload.split_super_segment` and the writes
those of :func:`offload.coalesce` (tests/unit/test_bulk.py holds them to it).

Imported on first use (:func:`ipsecd.dataplane.offload.bulk`): numpy costs memory an
idle gateway does not need.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ipsecd.dataplane.offload import (
    IPPROTO_TCP,
    MAX_IP_PAYLOAD,
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    ZERO_VNET_HDR,
    TcpSuperSegment,
    gso_headers,
    ones_sum,
)
from ipsecd.esp.rows import PacketRows, Rows, open_rows, seal_rows
from ipsecd.esp.udp_encap import DatagramRun

if TYPE_CHECKING:
    from ipsecd.esp.sa import OutboundEspSa

__all__ = [
    "coalesce_rows",
    "open_rows",
    "payload_sums",
    "seal_segments",
    "word_sum",
    "write_segments",
]

_MOD = 0xFFFF
_SWAP = sys.byteorder == "little"  # native 16-bit words are byte-swapped network words
Sums = NDArray[np.uint64]


def _network_order(sums: Sums) -> Sums:
    """Sums of native-order words, reduced mod 0xFFFF and turned into network order."""
    sums = sums % np.uint64(_MOD)
    if _SWAP:
        sums = ((sums & np.uint64(0xFF)) << np.uint64(8)) | (sums >> np.uint64(8))
    return sums


def _fields(total: Sums) -> Sums:
    """Checksum fields for sums of everything but the field (0xFFFF - (s or 0xFFFF))."""
    rest = total % _MOD
    out: Sums = np.where(rest == 0, 0, _MOD - rest).astype(np.uint64)
    return out


def word_sum(data: bytes | memoryview) -> int:
    """RFC 1071 sum of ``data`` (odd length padded with zero), reduced mod 0xFFFF."""
    n = len(data)
    words = np.frombuffer(data, "=u2", n // 2)
    total = _network_order(np.array([words.sum(dtype=np.uint64)], np.uint64))
    return (int(total[0]) + (data[n - 1] << 8 if n & 1 else 0)) % _MOD


def payload_sums(payload: memoryview, mss: int) -> list[int]:
    """RFC 1071 sums (mod 0xFFFF) of each ``mss``-byte slice of ``payload``, the last
    maybe shorter."""
    n = len(payload)
    full = n // mss
    data = np.frombuffer(payload, np.uint8)
    if mss & 1:  # segments start on odd bytes: high and low bytes summed apart
        blocks = data[: full * mss].reshape(full, mss)
        high = blocks[:, 0::2].sum(axis=1, dtype=np.uint64)
        sums = (high << 8) + blocks[:, 1::2].sum(axis=1, dtype=np.uint64)
        out: list[int] = (sums % _MOD).tolist()
    else:
        words = data[: full * mss].view("=u2").reshape(full, mss // 2)
        out = _network_order(words.sum(axis=1, dtype=np.uint64)).tolist()
    if full * mss < n:
        out.append(ones_sum(payload[full * mss :]))
    return out


def _complement(sums: Sums, extra: int) -> Sums:
    """Checksum fields for native-order sums (plus ``extra``) of everything but the field:
    0xFFFF - (s mod 0xFFFF, 0 taken as 0xFFFF), written in native order (RFC 1071 §2(B))."""
    out: Sums = 0xFFFE - (sums + (extra + 0xFFFE) % _MOD) % _MOD
    return out


def _native(value: int) -> int:
    """A network-order sum term in native order, mod 0xFFFF (a byte swap is * 256)."""
    return value * 256 % _MOD if _SWAP else value % _MOD


_STEPS: dict[tuple[int, int], tuple[NDArray[np.uint32], NDArray[np.uint16]]] = {}
_RECORDS: dict[tuple[int, int, int, int], np.dtype[np.void]] = {}


def _steps(count: int, mss: int) -> tuple[NDArray[np.uint32], NDArray[np.uint16]]:
    """Per segment, what its sequence number and IP id add to the first one's: in the
    fields' own widths, so that adding wraps around as they do (one numpy call each)."""
    steps = _STEPS.get((count, mss))
    if steps is None:
        if len(_STEPS) >= 64:
            _STEPS.clear()
        index = np.arange(count, dtype=np.uint64)
        seq = ((index * mss) & 0xFFFFFFFF).astype(np.uint32)
        steps = _STEPS[(count, mss)] = (seq, (index & 0xFFFF).astype(np.uint16))
    return steps


def _records(stride: int, col: int, cs: int, version: int) -> np.dtype[np.void]:
    """The per-segment header fields of a row as a numpy record: IPv4 total length, id and
    header checksum (IPv6 payload length), TCP sequence number and checksum; checksums in
    native order (computed from native-order sums)."""
    key = (stride, col, cs, version)
    record = _RECORDS.get(key)
    if record is None:
        t = col + cs
        fields = {"seq": (">u4", t + 4), "tcp_check": ("=u2", t + 16)}
        if version == 4:
            fields |= {
                "total": (">u2", col + 2),
                "id": (">u2", col + 4),
                "ip_check": ("=u2", col + 10),
            }
        else:
            fields["total"] = (">u2", col + 4)
        record = _RECORDS[key] = np.dtype(
            {
                "names": list(fields),
                "formats": [f for f, _ in fields.values()],
                "offsets": [o for _, o in fields.values()],
                "itemsize": stride,
            }
        )
    return record


def write_segments(segs: Sequence[TcpSuperSegment], rows: Rows, col: int) -> None:
    """Cut ``segs`` into their packets, one after the other, packet ``i`` at
    ``rows[i, col:]`` (TSO in userspace).

    The same packets as :meth:`TcpSuperSegment.packets` of each: each with its IP id,
    length and header checksum, sequence number, flags (CWR on a super-segment's first
    only, FIN and PSH on its last only) and a full TCP checksum.  Several super-segments
    (a stream's, read in one burst) must join (:meth:`TcpSuperSegment.joins`): then
    their rows are of one length but the very last, and everything but the copies of
    their headers and payloads is done once for all (issue 17: a fixed cost per numpy
    call).  Rows must hold a packet and 3 bytes more (payloads are summed in 4-byte
    words, zero-padded).  The checksums are the complements of native-order word sums
    over the rows as written, so that sequence numbers, flags and options need no
    arithmetic of their own.
    """
    seg = segs[0]
    mss, hlen, cs, version = seg.gso_size, seg.hlen, seg.csum_start, seg.version
    count = sum(s.count for s in segs)
    full = count - 1
    last = segs[-1].last_size
    words = (mss + 3) & ~3
    out = rows[:count, col : col + hlen + words]
    body = out[:, hlen:]
    fields = rows.reshape(-1).view(_records(rows.shape[1], col, cs, version))
    seq_steps, id_steps = _steps(max(s.count for s in segs), mss)
    seqs, ids = fields["seq"], fields["id"] if version == 4 else None
    at = 0
    for seg in segs:
        packet = seg.packet
        n = seg.count
        end = at + n
        template = bytearray(packet[:hlen])
        template[cs + 16 : cs + 18] = b"\0\0"  # the checksums are summed as zero
        if version == 4:
            template[10:12] = b"\0\0"
        out[at:end, :hlen] = np.frombuffer(template, np.uint8)
        source = np.frombuffer(packet, np.uint8)
        whole = n if end < count else n - 1  # rows of mss bytes (all but the run's last)
        body[at : at + whole, :mss] = source[hlen : hlen + whole * mss].reshape(whole, mss)
        # Flags: CWR on the first segment only, FIN and PSH on the last only.
        flags = packet[cs + 13]
        first = flags & ~(TCP_FIN | TCP_PSH)
        out[at:end, cs + 13] = first & ~TCP_CWR
        out[at, cs + 13] = first if n > 1 else flags
        out[end - 1, cs + 13] = flags & ~TCP_CWR if n > 1 else flags
        seqs[at:end] = seq_steps[:n] + np.uint32(int.from_bytes(packet[cs + 4 : cs + 8], "big"))
        if ids is not None:
            ids[at:end] = id_steps[:n] + np.uint16(int.from_bytes(packet[4:6], "big"))
        at = end
    body[:full, mss:] = 0
    body[full, :last] = np.frombuffer(segs[-1].packet, np.uint8)[-last:]
    body[full, last:] = 0
    tcp_len = seg.tcp_hlen + mss
    total = fields["total"]
    if version == 4:
        total[:count] = cs + tcp_len
        total[full] = cs + seg.tcp_hlen + last
        ip_sums = rows[:count, col : col + cs].view("=u4").sum(axis=1, dtype=np.uint64)
        fields["ip_check"][:count] = _complement(ip_sums, 0)
        addrs = seg.packet[12:20]
    else:
        total[:count] = cs - 40 + tcp_len
        total[full] = cs - 40 + seg.tcp_hlen + last
        addrs = seg.packet[8:40]
    # TCP: the segment as written, plus the pseudo header (RFC 9293 §3.1, RFC 8200 §8.1).
    sums = out[:, cs:].view("=u4").sum(axis=1, dtype=np.uint64)
    sums[full] += _native(last - mss)  # the last segment's TCP length
    pseudo = int.from_bytes(addrs, "big") + IPPROTO_TCP + tcp_len
    fields["tcp_check"][:count] = _complement(sums, _native(pseudo))


def seal_segments(sa: OutboundEspSa, segs: Sequence[TcpSuperSegment]) -> DatagramRun | None:
    """The ESP datagrams of the packets of ``segs`` (super-segments that join, see
    :func:`write_segments`), cut and sealed in one run (:func:`ipsecd.esp.rows.seal_rows`);
    None where that does not apply."""
    seg = segs[0]
    return seal_rows(
        sa,
        sum(s.count for s in segs),
        seg.length(),
        segs[-1].length(last=True),
        4 if seg.version == 4 else 41,
        lambda rows, col: write_segments(segs, rows, col),
    )


# Header bytes that may differ between segments of one flow: IPv4 id and checksum; TCP
# sequence number, flags and checksum.  Everything else must be equal (the rows of a
# PacketRows have one length, so the IP length is equal too).
_VARYING_V4 = {4, 5, 10, 11}
_VARYING_TCP = {4, 5, 6, 7, 13, 16, 17}
_SHAPE_V4 = np.array([0, 2, 3, 6, 7, 9, 32], np.intp)  # 0x45, length, no fragment, TCP
_SHAPE_V6 = np.array([4, 5, 6, 52], np.intp)  # payload length, TCP, data offset
_same_columns: dict[tuple[int, int], NDArray[np.intp]] = {}


def _fixed(ip_hlen: int, hlen: int) -> NDArray[np.intp]:
    """The header columns that must be equal in every segment of a merged write."""
    key = (ip_hlen, hlen)
    cols = _same_columns.get(key)
    if cols is None:
        varying = (_VARYING_V4 if ip_hlen == 20 else set()) | {ip_hlen + i for i in _VARYING_TCP}
        cols = _same_columns[key] = np.array([c for c in range(hlen) if c not in varying], np.intp)
    return cols


def coalesce_rows(packets: PacketRows) -> list[list[bytes | memoryview]] | None:
    """GSO writes for a run of opened packets that are TCP segments.

    The regular case of :func:`offload.coalesce`, for rows of one length: every row a
    TCP segment with ACK or ACK|PSH, IPv4 without options or fragments or IPv6 without
    extension headers, the headers of the first row's length, and a TCP checksum that
    verifies.  The rows fall into groups, each the in-order segments of one flow with
    the same headers (a sender's super-segment: its timestamp option differs from the
    next one's), a PSH ending a group; each group becomes GSO writes of at most
    64 KiB, each one virtio header, IP and TCP header and the payloads in one buffer.
    The tail (if any) joins the last group when it is that flow's next segment, no
    longer.  Rows without payload (ACKs) are written one by one.  None for anything
    else: the caller merges the packets one by one.
    """
    rows, length = packets.rows, packets.length
    first = rows[0]
    if first[0] == 0x45 and first[9] == IPPROTO_TCP and not (first[6] & 0x3F or first[7]):
        ip_hlen, addr = 20, 12
        if (int(first[2]) << 8 | int(first[3])) != length:
            return None
    elif first[0] >> 4 == 6 and first[6] == IPPROTO_TCP:
        ip_hlen, addr = 40, 8
        if (int(first[4]) << 8 | int(first[5])) != length - 40:
            return None
    else:
        return None
    hlen = ip_hlen + (int(first[ip_hlen + 12]) >> 4) * 4
    mss = length - hlen
    if hlen < ip_hlen + 20:
        return None
    if mss <= 0:  # ACKs: nothing to merge, each written as it is
        alone: list[list[bytes | memoryview]] = [[ZERO_VNET_HDR, p] for p in packets.packets()]
        return alone
    flags = rows[:, ip_hlen + 13]
    if not ((flags | TCP_PSH) == TCP_ACK | TCP_PSH).all():
        return None
    # Every segment's TCP checksum verifies: pseudo header + segment = 0 mod 0xFFFF.  The
    # addresses sit right before the TCP header, so one sum per row covers both.
    # 32-bit words: a native u4 is w0 + w1 * 65536, the same as w0 + w1 mod 0xFFFF, so
    # half the elements to widen and add for the same sum (RFC 1071 §2(A)); the sums
    # stay in native order, the constant part is brought to it (RFC 1071 §2(B)).
    span = length - addr
    quads = span & ~3
    sums = rows[:, addr : addr + quads].view("=u4").sum(axis=1, dtype=np.uint64)
    if span & 2:
        sums += rows[:, addr + quads : addr + quads + 2].view("=u2")[:, 0]
    if span & 1:  # the last byte is the high byte of a zero-padded word
        odd = rows[:, length - 1].astype(np.uint64)
        sums += odd if _SWAP else odd << np.uint64(8)
    if ((sums + _native(IPPROTO_TCP + length - ip_hlen)) % _MOD).any():
        return None
    # A group starts where the headers change, the sequence numbers do not follow or
    # the row before carried PSH.
    head = rows[:, _fixed(ip_hlen, hlen)]
    seqs = rows[:, ip_hlen + 4 : ip_hlen + 8].view(">u4")[:, 0].astype(np.uint32)
    breaks = seqs[1:] - seqs[:-1] != mss  # (uint32: wraps as sequence numbers do)
    breaks |= (flags[:-1] & TCP_PSH) != 0
    if not (head == head[0]).all():  # (one flow and one timestamp is the common case)
        breaks |= (head[1:] != head[:-1]).any(axis=1)
    starts = [0, *(np.flatnonzero(breaks) + 1).tolist()]
    if len(starts) > 1:
        # The first row's checks hold for the first of every group, so for all: version,
        # header length, fragment bits, protocol, IP length and TCP data offset.
        shape = _SHAPE_V4 if ip_hlen == 20 else _SHAPE_V6
        leads = rows[starts]
        if not (leads[:, shape] == first[shape]).all():
            return None
        if ip_hlen == 40 and not (leads[:, 0] >> 4 == 6).all():
            return None
    count = len(rows)
    per_write = (MAX_IP_PAYLOAD - hlen) // mss
    payload = rows[:, hlen:length]
    writes: list[list[bytes | memoryview]] = []
    for group, start in enumerate(starts):
        end = starts[group + 1] if group + 1 < len(starts) else count
        for at in range(start, end, per_write):
            stop = min(at + per_write, end)
            if stop - at == 1:
                writes.append([ZERO_VNET_HDR, rows[at, :length].tobytes()])
                continue
            body = np.ascontiguousarray(payload[at:stop]).data
            psh = int(flags[stop - 1]) & TCP_PSH
            size = hlen + (stop - at) * mss
            headers = rows[at, :hlen].tobytes()
            writes.append([*gso_headers(headers, ip_hlen, hlen, size, mss, psh), body])
    tail = packets.tail
    if tail is None:
        return writes
    last = rows[count - 1]
    next_seq = (int(seqs[count - 1]) + mss) & 0xFFFFFFFF
    lead = starts[-1] + (count - starts[-1] - 1) // per_write * per_write  # the last write's
    n = count - lead
    if (
        not flags[count - 1] & TCP_PSH
        and (n + 1) * mss + hlen <= MAX_IP_PAYLOAD
        and _follows(tail, last.tobytes()[:hlen], ip_hlen, hlen, mss, next_seq)
    ):
        psh = tail[ip_hlen + 13] & TCP_PSH
        headers = rows[lead, :hlen].tobytes()
        size = hlen + n * mss + len(tail) - hlen
        body = np.ascontiguousarray(payload[lead:count]).data
        writes[-1] = [*gso_headers(headers, ip_hlen, hlen, size, mss, psh), body, tail[hlen:]]
    else:
        writes.append([ZERO_VNET_HDR, tail])
    return writes


def _follows(tail: bytes, head: bytes, ip_hlen: int, hlen: int, mss: int, seq: int) -> bool:
    """True if ``tail`` is the next segment of the flow whose headers are ``head``:
    same headers but the varying fields, sequence number ``seq``, ACK or ACK|PSH, no
    more than ``mss`` bytes of payload and a TCP checksum that verifies."""
    n = len(tail)
    if not hlen < n <= hlen + mss or tail[ip_hlen + 13] | TCP_PSH != TCP_ACK | TCP_PSH:
        return False
    if ip_hlen == 20:
        same = tail[:2] == head[:2] and tail[6:10] == head[6:10] and tail[12:20] == head[12:20]
        same = same and (tail[2] << 8 | tail[3]) == n
    else:
        same = tail[:4] == head[:4] and tail[6:40] == head[6:40]
        same = same and (tail[4] << 8 | tail[5]) == n - 40
    t = ip_hlen
    if not (
        same
        and tail[t : t + 4] == head[t : t + 4]
        and tail[t + 8 : t + 13] == head[t + 8 : t + 13]
        and tail[t + 14 : t + 16] == head[t + 14 : t + 16]
        and tail[t + 18 : hlen] == head[t + 18 : hlen]
        and int.from_bytes(tail[t + 4 : t + 8], "big") == seq
    ):
        return False
    addrs = tail[12:20] if ip_hlen == 20 else tail[8:40]
    total = int.from_bytes(addrs, "big") + IPPROTO_TCP + (n - t) + ones_sum(memoryview(tail)[t:])
    return total % _MOD == 0
