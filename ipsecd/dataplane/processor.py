"""The packet pipeline between TUN and UDP, sans-I/O.

``from_tun`` takes a burst of inner IP packets and returns ESP datagrams grouped
by UDP endpoint pair; ``from_udp`` takes a burst of datagrams received on the
NAT-T port and returns inner packets for TUN plus IKE messages for the IKE
layer (RFC 3948 §2.2 demultiplexing).  The asyncio shell only moves bytes.

A packet from TUN that no SA covers goes to the ``no_sa`` hook (on-demand tunnels,
:mod:`ipsecd.dataplane.trap`); it is counted as a ``no_sa`` drop unless the hook
takes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import NamedTuple, cast

from ipsecd.dataplane.offload import TcpSuperSegment, ToTun, TunRead, bulk
from ipsecd.dataplane.sad import Address, InstalledChildSa, SaDatabase
from ipsecd.dataplane.udp import Received
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import SequenceNumberExhausted
from ipsecd.esp.udp_encap import DatagramKind, DatagramRun, classify

Outgoing = bytes | DatagramRun  # an ESP or IKE datagram, or the bulk path's run of them

# (packet, ip version, src, dst) -> True if taken (queued for an on-demand tunnel).
NoSaHook = Callable[[bytes, int, int, int], bool]


class PacketProcessor:
    """Moves packets through the SA database and counts every packet it drops."""

    def __init__(self, sad: SaDatabase) -> None:
        self.sad = sad
        self.drops: Counter[str] = Counter()
        self.keepalives_received = 0
        self.no_sa: NoSaHook | None = None  # where a packet without SA goes (start: trap)

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
        for packet in packets:
            if not isinstance(packet, bytes):  # a super-segment for the bulk path
                if run:
                    self._seal(run_sa, run, out)  # type: ignore[arg-type]  # a run has its SA
                    run = []
                last = None
                self._seal_segment(packet, out)
                continue
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
            run.append(packet)
        if run:
            self._seal(run_sa, run, out)  # type: ignore[arg-type]  # a run has its SA
        return out

    def _seal_segment(
        self, seg: TcpSuperSegment, out: dict[tuple[Address, Address], list[Outgoing]]
    ) -> None:
        """A TCP super-segment: cut and sealed as one run where its SA allows (an AEAD),
        else packet by packet like any burst."""
        addrs = seg.addresses()
        half = len(addrs) // 2
        src, dst = int.from_bytes(addrs[:half], "big"), int.from_bytes(addrs[half:], "big")
        sa = self.sad.lookup_outbound(seg.version, src, dst)
        if sa is None:
            for packet in seg.packets():
                self._no_sa(packet, seg.version, src, dst)
            return
        fast = bulk()
        try:
            sealed = None if fast is None else fast.seal_segment(sa.outbound, seg)
        except SequenceNumberExhausted:
            self.drops["sequence_exhausted"] += seg.count
            return
        if sealed is None:
            self._seal(sa, seg.packets(), out)
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

    def _seal(
        self,
        sa: InstalledChildSa,
        run: list[bytes],
        out: dict[tuple[Address, Address], list[Outgoing]],
    ) -> None:
        bucket = out.setdefault((sa.local, sa.remote), [])
        try:
            # seal_burst only appends bytes; the bucket may also hold the bulk path's runs.
            sa.outbound.seal_burst(run, cast(list[bytes], bucket))
        except SequenceNumberExhausted:
            self.drops["sequence_exhausted"] += len(run)

    def from_udp(
        self, datagrams: Iterable[tuple[Received, Address]]
    ) -> tuple[list[ToTun], list[tuple[bytes, Address]], list[tuple[InstalledChildSa, Address]]]:
        """Demultiplex and decapsulate datagrams received on the NAT-T port.

        Returns (inner packets for TUN, IKE messages without the non-ESP
        marker, SAs whose authenticated packets came from a new address).
        Consecutive GRO runs of one sender and one datagram size are opened as
        one by the bulk path; what it declines goes datagram by datagram.
        """
        out = _Received([], [], [])
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
        fast = bulk()
        opened = None if sa is None or fast is None else fast.open_rows(sa.inbound, runs)
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
        if sa is None:
            self.drops[DropReason.UNKNOWN_SPI] += len(run)
            return
        # open_burst only appends bytes; to_tun may also hold the bulk path's rows.
        delivered = sa.inbound.open_burst(run, cast(list[bytes], out.to_tun))
        if delivered and remote != sa.remote:
            out.moved.extend([(sa, remote)] * delivered)


class _Received(NamedTuple):
    """What :meth:`PacketProcessor.from_udp` collects."""

    to_tun: list[ToTun]
    ike: list[tuple[bytes, Address]]
    moved: list[tuple[InstalledChildSa, Address]]


MAX_RUN_ROWS = 256  # datagrams opened as one run at most


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
