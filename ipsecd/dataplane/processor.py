"""The packet pipeline between TUN and UDP (or raw IP), sans-I/O.

``from_tun`` takes a burst of inner IP packets and returns ESP datagrams grouped
by UDP endpoint pair; ``from_udp`` takes a burst of datagrams received on the
NAT-T port and returns inner packets for TUN plus IKE messages for the IKE
layer (RFC 3948 §2.2 demultiplexing).  The asyncio shell only moves bytes.

Tunnel-mode ESP in UDP is the burst path (``seal_burst``/``open_burst``).  The other
CHILD_SAs take one packet at a time (:attr:`InstalledChildSa.fast` is False):

* transport mode (RFC 4303 §3.1.1, RFC 4302 §3.1.1): ESP/AH goes behind the host's
  own IP header (:mod:`ipsecd.esp.transport`); over UDP the receiver rebuilds the
  header from the addresses and, behind a NAT, fixes the TCP/UDP checksum (RFC 3948
  §3.1.2); the selectors are checked on the rebuilt packet;
* AH (RFC 4302), tunnel or transport, always directly over IP;
* ESP directly over IP (protocol 50): whole IP packets for the raw sockets, collected
  in :meth:`raw_to_send`; :meth:`from_raw` opens what they received.

A packet larger than its SA can carry within the path MTU gets an ICMP "too big"
back into TUN (IPv6, IPv4 with DF) or is fragmented first (IPv4 without DF, tunnel
mode): :mod:`ipsecd.dataplane.icmp`, collected in :meth:`packets_to_tun`.

A packet from TUN that no SA covers goes to the ``no_sa`` hook (on-demand tunnels,
:mod:`ipsecd.dataplane.trap`); it is counted as a ``no_sa`` drop unless the hook
takes it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, cast

from ipsecd.ah.sa import InboundAhSa, OutboundAhSa
from ipsecd.dataplane.icmp import IPV6_MIN_MTU, fragment_ipv4, may_fragment, too_big
from ipsecd.dataplane.offload import TcpSuperSegment, ToTun, TunRead, bulk
from ipsecd.dataplane.rawip import OuterHeader, own_identification
from ipsecd.dataplane.sad import Address, InstalledChildSa, SaDatabase
from ipsecd.dataplane.udp import Received
from ipsecd.esp.counters import DropReason
from ipsecd.esp.inner import next_header_for
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa, SequenceNumberExhausted
from ipsecd.esp.transport import (
    IPPROTO_AH,
    IPPROTO_ESP,
    IpFront,
    TransportFramingError,
    fix_transport_checksum,
    locate_ipsec_header,
    split_for_transport,
)
from ipsecd.esp.udp_encap import DatagramKind, DatagramRun, classify

Outgoing = bytes | DatagramRun  # an ESP or IKE datagram, or the bulk path's run of them

# (packet, ip version, src, dst) -> True if taken (queued for an on-demand tunnel).
NoSaHook = Callable[[bytes, int, int, int], bool]
#: Packets for a raw socket: (local address, IP protocol 50/51, remote address).
RawKey = tuple[str, int, str]

ICMP_RATE = 100.0  # "too big" messages per second, in bursts of ICMP_BURST (RFC 4443 §2.4 f)
ICMP_BURST = 20.0
TOO_BIG = "too_big"  # drops: larger than the tunnel carries (an ICMP went back)


def packed(address: str) -> bytes:
    """An address as it sits in an IP header (4 or 16 bytes)."""
    return ipaddress.ip_address(address).packed


class PacketProcessor:
    """Moves packets through the SA database and counts every packet it drops."""

    def __init__(self, sad: SaDatabase, clock: Callable[[], float] | None = None) -> None:
        self.sad = sad
        self.drops: Counter[str] = Counter()
        self.keepalives_received = 0
        self.no_sa: NoSaHook | None = None  # where a packet without SA goes (start: trap)
        self.outer = OuterHeader()  # outer headers (IPv4 Identification) directly over IP
        self._raw: dict[RawKey, list[bytes]] = {}
        self._to_tun: list[bytes] = []  # ICMP "too big" for inner senders
        self._clock = clock  # None: "too big" messages are not rate limited
        self._icmp_tokens = ICMP_BURST
        self._icmp_at = 0.0

    def raw_to_send(self) -> dict[RawKey, list[bytes]]:
        """Whole IP packets (ESP/AH directly over IP) sealed since the last call."""
        out, self._raw = self._raw, {}
        return out

    def packets_to_tun(self) -> list[bytes]:
        """ICMP messages for inner senders produced since the last call."""
        out, self._to_tun = self._to_tun, []
        return out

    def seal_lone(self, packet: TunRead) -> tuple[Address, Address, bytes] | None:
        """A packet that came alone from TUN (a ping, an ACK), sealed on the shortest
        path: ``(local, remote, ESP datagram)``.  None, with nothing changed, for what
        the shortest path does not take (a super-segment, no SA, too big, not tunnel-mode
        ESP in UDP, a sequence space used up): :meth:`from_tun` handles and counts it.

        Between the packets of an idle tunnel the process goes cold, and each step of the
        next packet then costs many times its warm price (issue 17): this path takes the
        same decisions as :meth:`from_tun` in as few steps as it can.
        """
        if not isinstance(packet, bytes):  # a super-segment: the bulk path's
            return None
        n = len(packet)
        if n < 20:
            return None
        version = packet[0] >> 4
        if version == 4:
            src = int.from_bytes(packet[12:16], "big")
            dst = int.from_bytes(packet[16:20], "big")
        elif version == 6 and n >= 40:
            src = int.from_bytes(packet[8:24], "big")
            dst = int.from_bytes(packet[24:40], "big")
        else:
            return None
        sa = self.sad.lookup_outbound(version, src, dst)
        if sa is None or n > sa.max_inner or not sa.fast:
            return None
        try:
            datagram = sa.outbound.seal_one(packet)  # type: ignore[union-attr]  # fast: ESP
        except SequenceNumberExhausted:
            return None
        return sa.local, sa.remote, datagram

    def open_lone(self, data: Received, remote: Address) -> list[bytes] | None:
        """A datagram that came alone to the NAT-T port: the inner packets it carried for
        TUN (none if it was dropped, and counted).  None, with nothing changed, for what
        the shortest path does not take (IKE, keepalives, an unknown SPI, transport mode,
        a sender at a new address): :meth:`from_udp` handles it."""
        if not isinstance(data, bytes) or len(data) < 8:
            return None
        sa = self.sad.by_spi.get(int.from_bytes(data[:4], "big"))
        if sa is None or remote != sa.remote or not sa.fast:
            return None
        out: list[bytes] = []
        sa.inbound.open_burst((data,), out)  # type: ignore[union-attr]  # fast: ESP
        return out

    def from_tun(self, packets: Iterable[TunRead]) -> dict[tuple[Address, Address], list[Outgoing]]:
        """Encapsulate inner packets; returns {(local, remote): [esp, ...]}.

        Consecutive packets between the same two addresses (the segments of
        one TCP super-segment, typically) share one SA lookup and are sealed
        as one burst; a :class:`TcpSuperSegment` is cut and sealed in one go
        by the bulk path and leaves as one :class:`DatagramRun`.
        """
        out: dict[tuple[Address, Address], list[Outgoing]] = {}
        lookup = self.sad.lookup_outbound
        from_bytes = int.from_bytes
        src = dst = 0
        run: list[bytes] = []
        run_sa: InstalledChildSa | None = None
        last: bytes | None = None
        segs: list[TcpSuperSegment] = []  # super-segments that join, sealed as one run
        rows = 0  # their packets
        for packet in packets:
            if not isinstance(packet, bytes):  # a super-segment for the bulk path
                if run:
                    self._seal(run_sa, run, out)  # type: ignore[arg-type]  # a run has its SA
                    run = []
                last = None
                if segs and (not segs[-1].joins(packet) or rows + packet.count > MAX_RUN_ROWS):
                    self._seal_segments(segs, out)
                    segs, rows = [], 0
                segs.append(packet)
                rows += packet.count
                continue
            if segs:
                self._seal_segments(segs, out)
                segs, rows = [], 0
            n = len(packet)
            if n < 20:
                self.drops[DropReason.MALFORMED] += 1
                continue
            version = packet[0] >> 4
            if version == 4:
                addrs = packet[12:20]
            elif version == 6 and n >= 40:
                addrs = packet[8:40]
            else:
                self.drops[DropReason.MALFORMED] += 1
                continue
            if addrs != last:
                if run:
                    self._seal(run_sa, run, out)  # type: ignore[arg-type]  # a run has its SA
                    run = []
                half = len(addrs) // 2
                src, dst = from_bytes(addrs[:half], "big"), from_bytes(addrs[half:], "big")
                run_sa = lookup(version, src, dst)
                last = addrs
            if run_sa is None:
                self._no_sa(packet, version, src, dst)
                continue
            if n > run_sa.max_inner:
                self._too_big(run_sa, packet, run)
                continue
            run.append(packet)
        if segs:
            self._seal_segments(segs, out)
        if run:
            self._seal(run_sa, run, out)  # type: ignore[arg-type]  # a run has its SA
        return out

    def _seal_segments(
        self, segs: list[TcpSuperSegment], out: dict[tuple[Address, Address], list[Outgoing]]
    ) -> None:
        """TCP super-segments that join (:meth:`TcpSuperSegment.joins`: one SA): cut and
        sealed as one run where their SA allows (an AEAD), else packet by packet like any
        burst.  The datagrams are those of sealing each super-segment in turn."""
        seg = segs[0]
        addrs = seg.addresses()
        half = len(addrs) // 2
        src, dst = int.from_bytes(addrs[:half], "big"), int.from_bytes(addrs[half:], "big")
        sa = self.sad.lookup_outbound(seg.version, src, dst)
        if sa is None:
            for s in segs:
                for packet in s.packets():
                    self._no_sa(packet, seg.version, src, dst)
            return
        fast = bulk() if sa.fast and seg.length() <= sa.max_inner else None
        if fast is None:  # transport mode, AH, raw IP, too big: packet by packet
            for s in segs:
                run: list[bytes] = []
                for packet in s.packets():
                    if len(packet) > sa.max_inner:
                        self._too_big(sa, packet, run)
                    else:
                        run.append(packet)
                if run:
                    self._seal(sa, run, out)
            return
        outbound = sa.outbound
        assert isinstance(outbound, OutboundEspSa)  # fast: ESP
        if len(segs) > 1 and outbound.seq + sum(s.count for s in segs) > outbound.max_seq:
            # The sequence space ends inside the run: each super-segment alone, so that
            # those before the end still go (as they would one read at a time).
            for s in segs:
                self._seal_segments([s], out)
            return
        try:
            sealed = fast.seal_segments(outbound, segs)
        except SequenceNumberExhausted:
            self.drops["sequence_exhausted"] += seg.count
            return
        if sealed is None:
            for s in segs:
                self._seal(sa, s.packets(), out)
        else:
            out.setdefault((sa.local, sa.remote), []).append(sealed)

    def _no_sa(self, packet: bytes, version: int, src: int, dst: int) -> None:
        """An outbound packet that no installed SA covers (RFC 4301 §5.1).

        The one place for it: the ``no_sa`` hook (start: trap) may take it;
        otherwise it is dropped and counted.  Link-scoped IPv6 the kernel sends on
        the device by itself is counted apart (``ipv6_link_local``): it says nothing
        about a tunnel being down.
        """
        if version == 6 and _link_scoped(src, dst):
            self.drops[DropReason.IPV6_LINK_LOCAL] += 1  # never a trigger for a tunnel
            return
        no_sa = self.no_sa
        if no_sa is None or not no_sa(packet, version, src, dst):
            self.drops[DropReason.NO_SA] += 1

    def _too_big(self, sa: InstalledChildSa, packet: bytes, run: list[bytes]) -> None:
        """``packet`` does not fit ``sa`` within the path: fragment it (IPv4 without DF,
        tunnel mode), pass it (IPv6 up to 1280 bytes, which must always get through: the
        kernel fragments the outer packet) or send ICMP "too big" back (RFC 4301 §8.1)."""
        limit = sa.max_inner
        if sa.mode == "tunnel" and may_fragment(packet):
            run.extend(fragment_ipv4(packet, limit))
            return
        if packet[0] >> 4 == 6 and len(packet) <= IPV6_MIN_MTU:
            run.append(packet)
            return
        self.drops[TOO_BIG] += 1
        if not self._icmp_allowed():
            return
        message = too_big(packet, limit)
        if message is not None:
            self._to_tun.append(message)

    def _icmp_allowed(self) -> bool:
        """Token bucket for ICMP errors (RFC 4443 §2.4 f, RFC 1812 §4.3.2.8)."""
        if self._clock is None:
            return True
        now = self._clock()
        self._icmp_tokens = min(ICMP_BURST, self._icmp_tokens + (now - self._icmp_at) * ICMP_RATE)
        self._icmp_at = now
        if self._icmp_tokens < 1.0:
            self.drops["icmp_rate_limited"] += 1
            return False
        self._icmp_tokens -= 1.0
        return True

    def _seal(
        self,
        sa: InstalledChildSa,
        run: list[bytes],
        out: dict[tuple[Address, Address], list[Outgoing]],
    ) -> None:
        if not sa.fast:
            self._seal_one_by_one(sa, run, out)
            return
        bucket = out.get((sa.local, sa.remote))
        if bucket is None:
            bucket = out[sa.local, sa.remote] = []
        try:
            # seal_burst only appends bytes; the bucket may also hold the bulk path's runs.
            sa.outbound.seal_burst(run, cast(list[bytes], bucket))  # type: ignore[union-attr]  # fast: ESP
        except SequenceNumberExhausted:
            self.drops["sequence_exhausted"] += len(run)

    def _seal_one_by_one(
        self,
        sa: InstalledChildSa,
        run: list[bytes],
        out: dict[tuple[Address, Address], list[Outgoing]],
    ) -> None:
        """Transport mode, AH, ESP directly over IP: one packet at a time."""
        bucket: list[bytes]
        if sa.encap:  # only bytes go in; the bucket may also hold the bulk path's runs
            bucket = cast(list[bytes], out.setdefault((sa.local, sa.remote), []))
        else:
            bucket = self._raw.setdefault((sa.local[0], _protocol(sa), sa.remote[0]), [])
        seal = self._sealer(sa)
        for packet in run:
            try:
                bucket.append(seal(packet))
            except SequenceNumberExhausted:
                self.drops["sequence_exhausted"] += 1
            except TransportFramingError as exc:  # a fragment (RFC 4301 §7), a bad header
                self.drops[exc.reason] += 1
            except ValueError:  # an IPv6 routing header AH cannot predict (RFC 4302 §3.3.3.1)
                self.drops[DropReason.MALFORMED] += 1

    def _sealer(self, sa: InstalledChildSa) -> Callable[[bytes], bytes]:
        """What turns one packet from TUN into what ``sa`` sends (a UDP payload or a whole
        IP packet for a raw socket)."""
        out = sa.outbound
        if isinstance(out, OutboundAhSa):
            ah = out
            if sa.mode == "transport":
                return lambda p: ah.encapsulate_transport(own_identification(p, self.outer))
            local, remote = packed(sa.local[0]), packed(sa.remote[0])
            return lambda p: ah.encapsulate(
                self.outer.front(local, remote), next_header_for(p) or 0, p
            )
        esp: OutboundEspSa = out
        if sa.mode == "transport":

            def transport(p: bytes) -> bytes:
                front, next_header, payload = split_for_transport(p)
                sealed = esp.encapsulate(payload, next_header)
                return sealed if sa.encap else front.build(IPPROTO_ESP, sealed)

            return transport
        local, remote = packed(sa.local[0]), packed(sa.remote[0])
        return lambda p: self.outer.front(local, remote).build(
            IPPROTO_ESP, esp.encapsulate(p, next_header_for(p) or 0)
        )

    def from_udp(
        self, datagrams: Sequence[tuple[Received, Address]]
    ) -> tuple[list[ToTun], list[tuple[bytes, Address]], list[tuple[InstalledChildSa, Address]]]:
        """Demultiplex and decapsulate datagrams received on the NAT-T port.

        Returns (inner packets for TUN, IKE messages without the non-ESP
        marker, SAs whose authenticated packets came from a new address).
        Consecutive GRO runs of one sender and one datagram size are opened as
        one by the bulk path; what it declines goes datagram by datagram.
        """
        out = _Received([], [], [])
        if len(datagrams) == 1:  # a lone datagram (a ping, an ACK): the shortest path
            data, remote = datagrams[0]
            if not isinstance(data, DatagramRun):
                if classify(data)[0] is DatagramKind.ESP:
                    self._open((data[:4], remote), [data], out)
                else:
                    self._datagrams([(data, remote)], out)
                return out.to_tun, out.ike, out.moved
        singles: list[tuple[bytes | memoryview, Address]] = []
        runs: list[DatagramRun] = []
        runs_from: Address | None = None
        for data, remote in datagrams:
            if isinstance(data, DatagramRun):
                if singles:
                    self._datagrams(singles, out)
                    singles = []
                if runs and (remote != runs_from or not _continues(runs, data)):
                    self._runs(runs, runs_from, out)  # type: ignore[arg-type]  # runs have a sender
                    runs = []
                runs.append(data)
                runs_from = remote
                continue
            if runs:
                self._runs(runs, runs_from, out)  # type: ignore[arg-type]  # runs have a sender
                runs = []
            singles.append((data, remote))
        if runs:
            self._runs(runs, runs_from, out)  # type: ignore[arg-type]  # runs have a sender
        if singles:
            self._datagrams(singles, out)
        return out.to_tun, out.ike, out.moved

    def _runs(self, runs: list[DatagramRun], remote: Address, out: _Received) -> None:
        """GRO runs from one sender: opened as one where the bulk path takes them."""
        spi = int.from_bytes(runs[0].data[:4], "big")
        sa = self.sad.by_spi.get(spi) if spi else None
        fast = bulk() if sa is not None and sa.fast else None  # tunnel-mode ESP in UDP
        opened = None if fast is None else fast.open_rows(sa.inbound, runs)  # type: ignore[union-attr]
        if opened is None:
            self._datagrams([(d, remote) for run in runs for d in run.datagrams()], out)
            return
        assert sa is not None
        if isinstance(opened, list):
            out.to_tun.extend(opened)
        elif opened:
            out.to_tun.append(opened)
        if opened and remote != sa.remote:
            out.moved.extend([(sa, remote)] * len(opened))

    def _datagrams(
        self, datagrams: list[tuple[bytes | memoryview, Address]], out: _Received
    ) -> None:
        """Datagram by datagram: IKE, keepalives, and ESP in runs of one SPI and sender."""
        run: list[bytes | memoryview] = []
        run_key: tuple[bytes | memoryview, Address] | None = None
        esp = DatagramKind.ESP
        for data, remote in datagrams:
            kind, payload = classify(data)  # RFC 3948 §2.2
            if kind is not esp:
                if kind is DatagramKind.IKE:
                    out.ike.append((bytes(payload), remote))
                elif kind is DatagramKind.KEEPALIVE:
                    self.keepalives_received += 1
                else:
                    self.drops[DropReason.TOO_SHORT] += 1
                continue
            spi = data[:4]
            key = (spi, remote)
            if key != run_key:
                if run:
                    self._open(run_key, run, out)  # type: ignore[arg-type]  # a run has its key
                    run = []
                run_key = key
            run.append(data)
        if run:
            self._open(run_key, run, out)  # type: ignore[arg-type]  # a run has its key

    def _open(
        self,
        key: tuple[bytes | memoryview, Address],
        run: list[bytes | memoryview],
        out: _Received,
    ) -> None:
        """Decapsulate consecutive datagrams with one SPI from one sender."""
        spi, remote = key
        sa = self.sad.by_spi.get(int.from_bytes(spi, "big"))
        if sa is None or sa.protocol != "esp":  # AH never travels in UDP (RFC 3948)
            self.drops[DropReason.UNKNOWN_SPI] += len(run)
            return
        # Both only append bytes; to_tun may also hold the bulk path's rows.
        to_tun = cast(list[bytes], out.to_tun)
        if sa.mode == "transport":
            delivered = self._open_transport_udp(sa, run, remote, to_tun)
        else:
            delivered = sa.inbound.open_burst(run, to_tun)  # type: ignore[union-attr]  # ESP
        if delivered and remote != sa.remote:
            out.moved.extend([(sa, remote)] * delivered)

    def _open_transport_udp(
        self,
        sa: InstalledChildSa,
        run: list[bytes | memoryview],
        remote: Address,
        to_tun: list[bytes],
    ) -> int:
        """Transport-mode ESP from UDP: the IP header is rebuilt from the addresses the
        socket saw.  Across a NAT the TCP/UDP checksum covers the addresses the sender
        had, which neither side may know (each names itself, RFC 7296 §2.23.1): it is
        recomputed, which RFC 3948 §3.1.2 allows since the ESP ICV vouches for the
        payload.  Without a NAT the rebuilt packet must lie inside the selectors."""
        inbound = sa.inbound
        assert isinstance(inbound, InboundEspSa)
        source, destination = packed(remote[0]), packed(sa.local[0])
        front = IpFront.synthesize(source, destination)
        natted = sa.nat or remote != sa.remote
        delivered = 0
        for data in run:
            opened = inbound.decapsulate(bytes(data))
            if opened is None:
                continue
            next_header, payload = opened
            try:
                packet = front.build(next_header, payload)
            except TransportFramingError:
                inbound.drops[DropReason.MALFORMED] += 1
                continue
            if natted:
                packet = fix_transport_checksum(packet)
            elif not _inside(sa, packet):
                inbound.drops[DropReason.OUTSIDE_SELECTORS] += 1
                continue
            to_tun.append(packet)
            delivered += 1
        return delivered

    def from_raw(self, packets: Iterable[bytes], protocol: int) -> list[bytes]:
        """Open whole IP packets a raw socket received for ``protocol`` (50 ESP, 51 AH);
        returns the packets for TUN.  Never raises on packet input."""
        to_tun: list[bytes] = []
        for packet in packets:
            try:
                front, offset = locate_ipsec_header(packet, protocol)
            except TransportFramingError as exc:
                self.drops[exc.reason] += 1
                continue
            if offset + 12 > len(packet):
                self.drops[DropReason.TOO_SHORT] += 1
                continue
            at = offset + 4 if protocol == IPPROTO_AH else offset  # AH: SPI after 4 bytes
            sa = self.sad.by_spi.get(int.from_bytes(packet[at : at + 4], "big"))
            if sa is None or _protocol(sa) != protocol:
                self.drops[DropReason.UNKNOWN_SPI] += 1
                continue
            opened = self._open_raw(sa, packet, front, offset)
            if opened is not None:
                to_tun.append(opened)
        return to_tun

    def _open_raw(
        self, sa: InstalledChildSa, packet: bytes, front: IpFront, offset: int
    ) -> bytes | None:
        """One ESP/AH packet directly over IP for ``sa``: the packet for TUN, or None."""
        inbound = sa.inbound
        if isinstance(inbound, InboundAhSa):
            opened = inbound.open(packet)
            if opened is None:
                return None
            front, next_header, payload = opened
        else:
            result = inbound.decapsulate(packet[offset:])
            if result is None:
                return None
            next_header, payload = result
        if sa.mode == "tunnel":
            if isinstance(inbound, InboundEspSa):
                return payload  # the inner packet, its selectors checked by the SA
            inner = payload
        else:
            try:
                inner = front.build(next_header, payload)
            except TransportFramingError:
                inbound.drops[DropReason.MALFORMED] += 1
                return None
        if next_header_for(inner) is None or not _inside(sa, inner):
            inbound.drops[DropReason.OUTSIDE_SELECTORS] += 1
            return None
        return inner


class _Received(NamedTuple):
    """What :meth:`PacketProcessor.from_udp` collects."""

    to_tun: list[ToTun]
    ike: list[tuple[bytes, Address]]
    moved: list[tuple[InstalledChildSa, Address]]


MAX_RUN_ROWS = 256  # datagrams sealed or opened as one run at most (the workspaces' size)


def _continues(runs: list[DatagramRun], nxt: DatagramRun) -> bool:
    """True if ``nxt`` may be opened with ``runs`` as one: the same datagram size and SPI,
    the runs before it whole (no short last datagram), not too many rows."""
    prev = runs[-1]
    size = prev.size
    return (
        nxt.size == size
        and not len(prev.data) % size
        and nxt.data[:4] == prev.data[:4]
        and sum(len(r) for r in runs) + len(nxt) <= MAX_RUN_ROWS
    )


def _protocol(sa: InstalledChildSa) -> int:
    return IPPROTO_AH if sa.protocol == "ah" else IPPROTO_ESP


def _inside(sa: InstalledChildSa, packet: bytes) -> bool:
    """The packet from the peer lies inside the SA's selectors (RFC 4301 §5.2)."""
    if packet[0] >> 4 == 4:
        if len(packet) < 20:
            return False
        src, dst = int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
        return sa.allows_inbound(4, src, dst)
    if len(packet) < 40:
        return False
    src, dst = int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
    return sa.allows_inbound(6, src, dst)


def _link_scoped(src: int, dst: int) -> bool:
    """An IPv6 packet that must not leave its link (RFC 4291 §2.5.6, §2.7): source
    unspecified (``::``, MLD before any address) or link-local, destination link-local
    or interface/link-scope multicast (``ff01::/16``, ``ff02::/16``)."""
    return (
        src == 0
        or src >> 118 == 0x3FA  # fe80::/10
        or dst >> 118 == 0x3FA
        or (dst >> 120 == 0xFF and (dst >> 112) & 0xF in (1, 2))
    )
