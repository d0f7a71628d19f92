"""TCP segmentation and coalescing for a TUN device with virtio-net headers, sans-I/O.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (TSO4/TSO6/CSUM) the kernel hands the
TUN reader whole TCP "super-segments" of up to 64 KiB behind a 10-byte
``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h), and accepts the
same on write.  One read then carries ~45 MSS-sized packets and one write
delivers a whole burst to the kernel's forwarding path: the per-packet system
calls and skb work that dominate a userspace tunnel disappear.  This is the
technique of wireguard-go's ``tun/offload_linux.go``:

* :func:`split_super_segment` (read side, "TSO in userspace"): cut a
  super-segment into ordinary IP packets with their own IP id / length /
  header checksum, TCP sequence number, flags (CWR only on the first, FIN and
  PSH only on the last) and a *full* TCP checksum, because the ESP peer (say
  strongSwan) expects ordinary packets;
* :func:`coalesce` (write side, "GRO in userspace"): merge consecutive
  in-order TCP segments of one flow into one super-segment whose header asks
  the kernel to segment it again (GSO) and to fill in the checksum
  (``NEEDS_CSUM``); segments are merged only if their own checksums verify.

Checksums use RFC 1071's ones'-complement sum.  The sum of 16-bit words is
congruent to the data read as one big-endian integer modulo 0xFFFF (because
2**16 ≡ 1), so ``int.from_bytes(data, "big") % 0xFFFF`` computes it at C speed;
the per-segment payload sums of a super-segment are taken in one numpy call.
"""

from __future__ import annotations

import importlib
import os
import struct
from types import ModuleType
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ipsecd.esp.rows import PacketRows

__all__ = [
    "VNET_HDR",
    "VNET_HDR_LEN",
    "ZERO_VNET_HDR",
    "TcpSuperSegment",
    "ToTun",
    "TunRead",
    "bulk",
    "complete_checksum",
    "checksum_ok",
    "coalesce",
    "ones_sum",
    "parse_read",
    "split_super_segment",
]

# struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
# (native byte order: TUN's default, TUNSETVNETLE/BE not used).
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)  # "nothing to do": an ordinary, complete packet

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1  # checksum from csum_start, stored at csum_start+csum_offset
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

IPPROTO_TCP = 6
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
TCP_CSUM_OFFSET = 16  # offset of the checksum in the TCP header (RFC 9293 §3.1)
MAX_IP_PAYLOAD = 65535  # IPv4 total length / IPv6 payload length (no jumbograms)

_IPV4_HEAD = struct.Struct("!BBHHHBBH")  # ver/ihl, tos, total, id, frag, ttl, proto, check
_U16 = struct.Struct("!H")
# TCP header up to the checksum: ports, seq, ack, data offset, flags, window, checksum.
_TCP_HEAD = struct.Struct("!4sI4sBB2sH")
_MOD = 0xFFFF


_bulk: ModuleType | None | bool = False  # not tried yet


def bulk() -> ModuleType | None:
    """:mod:`ipsecd.dataplane.bulk`, the numpy-backed bulk path, imported on first use.

    numpy costs some 13 MB of memory that a gateway without bulk traffic never needs, so
    the first super-segment or GRO run imports it, not the start-up.  None, from then
    on, where it cannot be imported (numpy missing, or an installation the service
    account may not read after the privilege drop): every burst then takes the
    one-packet paths, which need no numpy.
    """
    global _bulk
    if _bulk is False:
        # numpy's OpenBLAS would start a thread per core that the data plane never uses:
        # memory, and a spin on the first burst.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            _bulk = importlib.import_module("ipsecd.dataplane.bulk")
        except ImportError:
            _bulk = None
    return _bulk  # type: ignore[return-value]  # the module or None once tried


BULK_STATES = ("not-loaded", "loaded", "unavailable")  # what bulk_state() says


def bulk_state() -> str:
    """For the status: ``not-loaded`` (no bulk traffic yet), ``loaded`` or
    ``unavailable`` (bursts take the one-packet paths, see :func:`bulk`)."""
    not_loaded, loaded, unavailable = BULK_STATES
    return not_loaded if _bulk is False else (loaded if _bulk else unavailable)


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 sum of ``data`` (odd length padded with a zero byte), reduced mod 0xFFFF."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % _MOD


def _csum_field(total: int) -> int:
    """The checksum field for a sum (any non-negative int) of everything but the field."""
    return 0xFFFF - ((total % _MOD) or 0xFFFF)


def _pseudo_sum(packet: bytes | memoryview, version: int, length: int, proto: int) -> int:
    """Sum of the TCP/UDP pseudo header (RFC 9293 §3.1, RFC 8200 §8.1), not reduced."""
    addrs = packet[12:20] if version == 4 else packet[8:40]
    return int.from_bytes(addrs, "big") + proto + length


def checksum_ok(packet: bytes, l4_start: int) -> bool:
    """True if the TCP checksum of an IP packet (L4 header at ``l4_start``) verifies."""
    version = packet[0] >> 4
    length = len(packet) - l4_start
    total = _pseudo_sum(packet, version, length, IPPROTO_TCP) + ones_sum(
        memoryview(packet)[l4_start:]
    )
    return total % _MOD == 0


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes | None:
    """Fill in a partial checksum (``NEEDS_CSUM``, the kernel's CHECKSUM_PARTIAL).

    The field already holds the folded pseudo-header sum; the result is the
    complement of the sum from ``csum_start`` to the end, 0 sent as 0xFFFF
    (as the kernel's skb_checksum_help does).  None if the offsets do not fit.
    """
    at = csum_start + csum_offset
    if at + 2 > len(packet) or csum_start < 20:
        return None
    check = _csum_field(ones_sum(memoryview(packet)[csum_start:])) or 0xFFFF
    return b"".join((packet[:at], _U16.pack(check), packet[at + 2 :]))


def _payload_sums(payload: memoryview, mss: int) -> list[int]:
    """Ones'-complement sums (reduced mod 0xFFFF) of each ``mss``-sized slice of ``payload``."""
    fast = bulk()
    if fast is not None:
        sums: list[int] = fast.payload_sums(payload, mss)
        return sums
    return [ones_sum(payload[i : i + mss]) for i in range(0, len(payload), mss)]


class TcpSuperSegment:
    """One TUN read carrying a TCP super-segment (GSO_TCPV4/V6), parsed but not yet cut.

    ``count`` packets of ``gso_size`` bytes of payload each but the last
    (``last_size``), behind copies of the ``hlen`` bytes of IP and TCP header
    (``csum_start`` of them IP).  :meth:`packets` cuts it one packet at a time;
    the bulk path writes the packets straight into the rows it seals
    (``ipsecd.dataplane.bulk.write_segments``).
    """

    __slots__ = (
        "packet",
        "version",
        "csum_start",
        "tcp_hlen",
        "hlen",
        "gso_size",
        "count",
        "last_size",
    )

    def __init__(
        self, packet: bytes | memoryview, version: int, csum_start: int, gso_size: int
    ) -> None:
        self.packet = packet
        self.version = version
        self.csum_start = csum_start
        self.tcp_hlen = (packet[csum_start + 12] >> 4) * 4
        self.hlen = csum_start + self.tcp_hlen
        self.gso_size = gso_size
        payload = len(packet) - self.hlen
        self.count = -(-payload // gso_size)
        self.last_size = payload - (self.count - 1) * gso_size

    def length(self, last: bool = False) -> int:
        """The length of each packet but the last, or of the last one."""
        return self.hlen + (self.last_size if last else self.gso_size)

    def joins(self, seg: TcpSuperSegment) -> bool:
        """True if ``seg``'s packets may follow this one's in one run of rows sealed
        together (``ipsecd.dataplane.bulk.write_segments``): this one's last packet is
        full, and both have the same addresses (so one SA, one pseudo-header sum) and
        header and segment sizes.  A stream's super-segments, read in one burst, do."""
        return (
            self.last_size == self.gso_size == seg.gso_size
            and self.hlen == seg.hlen
            and self.csum_start == seg.csum_start
            and self.version == seg.version
            and self.addresses() == seg.addresses()
        )

    def addresses(self) -> bytes | memoryview:
        """Source and destination address, as the outbound SA lookup reads them."""
        return self.packet[12:20] if self.version == 4 else self.packet[8:40]

    def packets(self) -> list[bytes]:
        """The ordinary IP packets, each with its own IP id / length / header checksum,
        sequence number, flags (CWR only on the first, FIN and PSH only on the last) and a
        full TCP checksum (what the kernel's tcp_gso_segment produces)."""
        return _cut(self)


def parse_read(
    header: bytes | memoryview, packet: bytes | memoryview
) -> bytes | TcpSuperSegment | None:
    """One TUN read (virtio header + IP packet): a packet, or a super-segment to cut.

    ``packet`` may be a view into the read (a super-segment is not copied again).

    A GSO_NONE packet comes back as it is, with its checksum completed when the
    header says ``NEEDS_CSUM``.  A TCP super-segment (GSO_TCPV4/V6) comes back
    as a :class:`TcpSuperSegment`.  None for anything malformed or of a GSO type
    we did not enable (the caller counts it and drops it).
    """
    if len(header) != VNET_HDR_LEN:
        return None
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(header)
    kind = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    n = len(packet)
    if kind == VIRTIO_NET_HDR_GSO_NONE:
        packet = packet if isinstance(packet, bytes) else bytes(packet)
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return complete_checksum(packet, csum_start, csum_offset)
        return packet
    if kind == VIRTIO_NET_HDR_GSO_TCPV4:
        if n < 40 or packet[0] >> 4 != 4 or (packet[0] & 0x0F) * 4 != csum_start:
            return None
        if packet[9] != IPPROTO_TCP:
            return None
        version = 4
    elif kind == VIRTIO_NET_HDR_GSO_TCPV6:
        if n < 60 or packet[0] >> 4 != 6 or csum_start < 40:
            return None
        version = 6
    else:
        return None
    if csum_start + 20 > n or gso_size == 0:
        return None
    tcp_hlen = (packet[csum_start + 12] >> 4) * 4
    if tcp_hlen < 20 or csum_start + tcp_hlen >= n:
        return None
    return TcpSuperSegment(packet, version, csum_start, gso_size)


# What a TUN read gives: packets, and super-segments the bulk path seals whole.
TunRead: TypeAlias = "bytes | TcpSuperSegment"
# What a TUN write takes: packets, and the bulk path's opened rows.
ToTun: TypeAlias = "bytes | PacketRows"


def split_super_segment(header: bytes | memoryview, packet: bytes) -> list[bytes] | None:
    """Turn one TUN read (virtio header + IP packet) into ordinary IP packets
    (:func:`parse_read`, then :meth:`TcpSuperSegment.packets`)."""
    read = parse_read(header, packet)
    if read is None or isinstance(read, bytes):
        return None if read is None else [read]
    return read.packets()


def _cut(seg: TcpSuperSegment) -> list[bytes]:
    """:meth:`TcpSuperSegment.packets`, one packet at a time."""
    packet = seg.packet
    version = seg.version
    csum_start = seg.csum_start
    tcp_hlen = seg.tcp_hlen
    hlen = seg.hlen
    gso_size = seg.gso_size
    n = len(packet)
    view = memoryview(packet)
    payload = view[hlen:]
    sums = _payload_sums(payload, gso_size)
    count = len(sums)

    # TCP header: everything but seq, the flags word and the checksum is shared.
    ports, seq0, ack, doff, tcp_flags, window, _ = _TCP_HEAD.unpack_from(packet, csum_start)
    tcp_tail = bytes(view[csum_start + 18 : hlen])
    shared = ones_sum(ports + ack + window) + ones_sum(tcp_tail)
    shared += int.from_bytes(view[12:20] if version == 4 else view[8:40], "big") + IPPROTO_TCP
    first_flags = tcp_flags & ~(TCP_FIN | TCP_PSH)
    middle_flags = first_flags & ~TCP_CWR
    last_flags = tcp_flags & ~TCP_CWR if count > 1 else tcp_flags
    doff_word = doff << 8

    seg_flags = [middle_flags] * count
    seg_flags[0] = first_flags if count > 1 else tcp_flags
    if count > 1:
        seg_flags[-1] = last_flags
    out: list[bytes] = []
    append = out.append
    start = hlen
    if version == 4:
        b0, tos, _total, ip_id, frag, ttl, proto, _ = _IPV4_HEAD.unpack_from(packet, 0)
        ip_tail = bytes(view[12:csum_start])  # addresses (and options)
        ip_shared = ones_sum(_IPV4_HEAD.pack(b0, tos, 0, 0, frag, ttl, proto, 0)) + ones_sum(
            ip_tail
        )
        # One pack per segment builds both headers (the constant parts are arguments).
        pack = struct.Struct(f"!BBHHHBBH{len(ip_tail)}s4sI4sBB2sH{len(tcp_tail)}s").pack
        for i, payload_sum in enumerate(sums):
            end = start + gso_size
            seg_len = gso_size if end <= n else n - start
            tcp_len = tcp_hlen + seg_len
            seq = (seq0 + i * gso_size) & 0xFFFFFFFF
            flags_i = seg_flags[i]
            check = 0xFFFF - (
                (
                    shared
                    + tcp_len
                    + (seq >> 16)
                    + (seq & 0xFFFF)
                    + doff_word
                    + flags_i
                    + payload_sum
                )
                % _MOD
                or 0xFFFF
            )
            total = csum_start + tcp_len
            seg_id = (ip_id + i) & 0xFFFF
            ip_check = 0xFFFF - ((ip_shared + total + seg_id) % _MOD or 0xFFFF)
            head = pack(b0, tos, total, seg_id, frag, ttl, proto, ip_check, ip_tail, ports, seq,
                        ack, doff, flags_i, window, check, tcp_tail)  # fmt: skip
            append(head + view[start:end])
            start = end
        return out
    ip_front = bytes(view[:4])
    ip_tail = bytes(view[6:csum_start])
    pack = struct.Struct(f"!4sH{len(ip_tail)}s4sI4sBB2sH{len(tcp_tail)}s").pack
    for i, payload_sum in enumerate(sums):
        end = start + gso_size
        seg_len = gso_size if end <= n else n - start
        tcp_len = tcp_hlen + seg_len
        seq = (seq0 + i * gso_size) & 0xFFFFFFFF
        flags_i = seg_flags[i]
        check = _csum_field(
            shared + tcp_len + (seq >> 16) + (seq & 0xFFFF) + doff_word + flags_i + payload_sum
        )
        plen = csum_start - 40 + tcp_len
        head = pack(ip_front, plen, ip_tail, ports, seq, ack, doff, flags_i, window, check,
                    tcp_tail)  # fmt: skip
        append(head + view[start:end])
        start = end
    return out


class _Run:
    """Consecutive in-order segments of one TCP flow waiting to be merged."""

    __slots__ = (
        "packets",
        "ip_hlen",
        "hlen",
        "gso_size",
        "next_seq",
        "length",
        "ip_same",
        "ack_doff",
        "window",
        "tail",
        "fast",
    )

    def __init__(self, packet: bytes, ip_hlen: int, hlen: int, seq: int, ip_same: object) -> None:
        t = ip_hlen
        self.packets = [packet]
        self.ip_hlen = ip_hlen
        self.hlen = hlen
        self.gso_size = len(packet) - hlen
        self.next_seq = (seq + self.gso_size) & 0xFFFFFFFF
        self.length = len(packet)
        self.ip_same = ip_same
        self.ack_doff = packet[t + 8 : t + 13]
        self.window = packet[t + 14 : t + 16]
        self.tail = packet[t + 18 : hlen]
        # IPv4 fast path: flags..protocol, then ACK, data offset, flags = ACK, window.
        self.fast = (packet[1], packet[6:10], packet[28:33] + bytes((TCP_ACK,)) + packet[34:36])


def coalesce(packets: list[bytes]) -> list[list[bytes | memoryview]]:
    """Group a burst of IP packets for writing to a TUN with virtio headers.

    Returns one buffer list per write (the virtio header first).  Consecutive
    in-order TCP segments of a flow (same addresses, ports, ACK number, window,
    options, TTL/TOS; ACK or ACK|PSH only; all but the last of ``gso_size``
    bytes; IPv4 without options or fragmentation, IPv6 without extension
    headers) become one GSO write; everything else is written alone with a
    zero header.  A flow's packets never overtake each other.
    """
    if len(packets) == 1:  # nothing to coalesce (an idle tunnel's packet): skip the flow logic
        return [[ZERO_VNET_HDR, packets[0]]]
    order: list[_Run | bytes] = []
    open_runs: dict[bytes, _Run] = {}
    from_bytes = int.from_bytes
    for packet in packets:
        n = len(packet)
        if n > 40 and packet[0] == 0x45 and packet[9] == IPPROTO_TCP:
            key = packet[12:24]
            run = open_runs.get(key)
            if run is not None:
                # The common case, checked with few slices: the next IPv4 segment of an
                # open run (same headers, flags exactly ACK, the expected sequence number).
                hlen = run.hlen
                size = n - hlen
                tos, ip_fast, tcp_same = run.fast
                if (
                    0 < size <= run.gso_size
                    and packet[28:36] == tcp_same
                    and packet[38:hlen] == run.tail
                    and packet[6:10] == ip_fast
                    and packet[1] == tos
                    and (packet[2] << 8 | packet[3]) == n
                    and from_bytes(packet[24:28], "big") == run.next_seq
                    and run.length + size <= MAX_IP_PAYLOAD
                ):
                    run.packets.append(packet)
                    run.length += size
                    run.next_seq = (run.next_seq + size) & 0xFFFFFFFF
                    if size < run.gso_size:
                        del open_runs[key]
                    continue
            if packet[6] & 0x3F or packet[7] or (packet[2] << 8 | packet[3]) != n:
                order.append(packet)  # a fragment, or lengths that do not add up
                open_runs.pop(key, None)
                continue
            t = 20
            ip_same: object = packet[1] | packet[6] << 8 | packet[8] << 16  # TOS, DF, TTL
        elif n > 60 and packet[0] >> 4 == 6 and packet[6] == IPPROTO_TCP:
            key = packet[8:44]
            if (packet[4] << 8 | packet[5]) != n - 40:
                order.append(packet)
                open_runs.pop(key, None)
                continue
            t = 40
            ip_same = packet[:4] + packet[7:8]  # class, flow label, hop limit
        else:
            order.append(packet)
            if open_runs:
                _close_flow(open_runs, packet)
            continue
        hlen = t + (packet[t + 12] >> 4) * 4
        flags = packet[t + 13]
        size = n - hlen
        if size <= 0 or hlen < t + 20 or (flags | TCP_PSH) != (TCP_ACK | TCP_PSH):
            order.append(packet)  # SYN, FIN, RST, URG, ECE/CWR, no payload: alone
            open_runs.pop(key, None)
            continue
        seq = from_bytes(packet[t + 4 : t + 8], "big")
        run = open_runs.get(key)
        if (
            run is not None
            and run.next_seq == seq
            and run.hlen == hlen
            and size <= run.gso_size
            and run.length + size <= MAX_IP_PAYLOAD
            and run.ip_same == ip_same
            and packet[t + 8 : t + 13] == run.ack_doff
            and packet[t + 14 : t + 16] == run.window
            and packet[t + 18 : hlen] == run.tail
        ):
            run.packets.append(packet)
            run.length += size
            run.next_seq = (seq + size) & 0xFFFFFFFF
            if size < run.gso_size or flags & TCP_PSH:
                del open_runs[key]
            continue
        run = _Run(packet, t, hlen, seq, ip_same)
        order.append(run)
        if flags & TCP_PSH:
            open_runs.pop(key, None)
        else:
            open_runs[key] = run
    out: list[list[bytes | memoryview]] = []
    for item in order:
        if isinstance(item, bytes):
            out.append([ZERO_VNET_HDR, item])
        elif len(item.packets) == 1:
            out.append([ZERO_VNET_HDR, item.packets[0]])
        else:
            out.extend(_merge(item))
    return out


def _close_flow(open_runs: dict[bytes, _Run], packet: bytes) -> None:
    """A TCP packet that cannot be merged (e.g. IP options): later ones must not overtake it."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 24 and packet[9] == IPPROTO_TCP:
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) >= ihl + 4:
            open_runs.pop(packet[12:20] + packet[ihl : ihl + 4], None)
    elif version == 6 and len(packet) >= 44 and packet[6] == IPPROTO_TCP:
        open_runs.pop(packet[8:44], None)


def _merge(run: _Run) -> list[list[bytes | memoryview]]:
    """One GSO write for a run whose checksums all verify, else each packet alone."""
    packets = run.packets
    ip_hlen = run.ip_hlen
    hlen = run.hlen
    first = packets[0]
    addr_sum = int.from_bytes(first[12:20] if ip_hlen == 20 else first[8:40], "big")
    count = len(packets)
    length = run.length
    payload = b"".join([memoryview(p)[hlen:] for p in packets])
    # Verify every segment's checksum with one reduction: each valid segment sums
    # to 0 mod 0xFFFF, so their total does; the payloads are summed in one go.
    from_bytes = int.from_bytes
    total = count * (addr_sum + IPPROTO_TCP + hlen - ip_hlen) + length - hlen
    for p in packets:
        total += from_bytes(p[ip_hlen:hlen], "big")
    fast = bulk()
    if run.gso_size & 1 or fast is None:
        for p in packets:
            total += ones_sum(memoryview(p)[hlen:])
    else:
        total += fast.word_sum(payload)
    if total % _MOD:
        return [[ZERO_VNET_HDR, p] for p in packets]
    psh = packets[-1][ip_hlen + 13] & TCP_PSH
    return [[*gso_headers(first, ip_hlen, hlen, length, run.gso_size, psh), payload]]


def gso_headers(
    first: bytes | memoryview, ip_hlen: int, hlen: int, length: int, gso_size: int, psh: int
) -> list[bytes]:
    """Virtio header, IP and TCP header of one GSO write of ``length`` bytes in all, built
    from the first segment's headers (``hlen`` bytes, ``ip_hlen`` of them IP) with the
    total length, ``psh`` added to the flags and the TCP checksum left to the kernel
    (``NEEDS_CSUM``: the field holds the folded pseudo-header sum)."""
    tcp_len = length - ip_hlen
    if ip_hlen == 20:
        b0, tos, _total, ip_id, frag, ttl, proto, _ = _IPV4_HEAD.unpack_from(first, 0)
        addrs = bytes(first[12:20])
        head = _IPV4_HEAD.pack(b0, tos, length, ip_id, frag, ttl, proto, 0)
        ip_check = _csum_field(ones_sum(head) + ones_sum(addrs))
        ip_head = _IPV4_HEAD.pack(b0, tos, length, ip_id, frag, ttl, proto, ip_check) + addrs
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        addrs = bytes(first[8:40])
        ip_head = b"".join((first[:4], _U16.pack(tcp_len), first[6:40]))
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    pseudo = (int.from_bytes(addrs, "big") + IPPROTO_TCP + tcp_len) % _MOD or 0xFFFF
    tcp_head = b"".join(
        (
            first[ip_hlen : ip_hlen + 13],
            bytes((first[ip_hlen + 13] | psh,)),
            first[ip_hlen + 14 : ip_hlen + 16],
            _U16.pack(pseudo),
            first[ip_hlen + 18 : hlen],
        )
    )
    vnet = VNET_HDR.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hlen, gso_size, ip_hlen, TCP_CSUM_OFFSET
    )
    return [vnet, ip_head, tcp_head]
