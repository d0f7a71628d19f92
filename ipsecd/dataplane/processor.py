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

from ipsecd.dataplane.sad import Address, InstalledChildSa, SaDatabase
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import SequenceNumberExhausted
from ipsecd.esp.udp_encap import DatagramKind, classify

# (packet, ip version, src, dst) -> True if taken (queued for an on-demand tunnel).
NoSaHook = Callable[[bytes, int, int, int], bool]


class PacketProcessor:
    """Moves packets through the SA database and counts every packet it drops."""

    def __init__(self, sad: SaDatabase) -> None:
        self.sad = sad
        self.drops: Counter[str] = Counter()
        self.keepalives_received = 0
        self.no_sa: NoSaHook | None = None  # where a packet without SA goes (start: trap)

    def from_tun(self, packets: Iterable[bytes]) -> dict[tuple[Address, Address], list[bytes]]:
        """Encapsulate inner packets; returns {(local, remote): [esp, ...]}.

        Consecutive packets between the same two addresses (the segments of
        one TCP super-segment, typically) share one SA lookup and are sealed
        as one burst.
        """
        out: dict[tuple[Address, Address], list[bytes]] = {}
        lookup = self.sad.lookup_outbound
        from_bytes = int.from_bytes
        src = dst = 0
        run: list[bytes] = []
        run_sa: InstalledChildSa | None = None
        last: bytes | None = None
        for packet in packets:
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
        out: dict[tuple[Address, Address], list[bytes]],
    ) -> None:
        key = (sa.local, sa.remote)
        bucket = out.get(key)
        if bucket is None:
            bucket = out[key] = []
        try:
            sa.outbound.seal_burst(run, bucket)
        except SequenceNumberExhausted:
            self.drops["sequence_exhausted"] += len(run)

    def from_udp(
        self, datagrams: Iterable[tuple[bytes | memoryview, Address]]
    ) -> tuple[list[bytes], list[tuple[bytes, Address]], list[tuple[InstalledChildSa, Address]]]:
        """Demultiplex and decapsulate datagrams received on the NAT-T port.

        Returns (inner packets for TUN, IKE messages without the non-ESP
        marker, SAs whose authenticated packets came from a new address).
        """
        to_tun: list[bytes] = []
        ike: list[tuple[bytes, Address]] = []
        moved: list[tuple[InstalledChildSa, Address]] = []
        run: list[bytes | memoryview] = []
        run_key: tuple[bytes | memoryview, Address] | None = None
        esp = DatagramKind.ESP
        for data, remote in datagrams:
            kind, payload = classify(data)  # RFC 3948 §2.2
            if kind is not esp:
                if kind is DatagramKind.IKE:
                    ike.append((bytes(payload), remote))
                elif kind is DatagramKind.KEEPALIVE:
                    self.keepalives_received += 1
                else:
                    self.drops[DropReason.TOO_SHORT] += 1
                continue
            spi = data[:4]
            key = (spi, remote)
            if key != run_key:
                if run:
                    self._open(run_key, run, to_tun, moved)  # type: ignore[arg-type]  # a run has its key
                    run = []
                run_key = key
            run.append(data)
        if run:
            self._open(run_key, run, to_tun, moved)  # type: ignore[arg-type]  # a run has its key
        return to_tun, ike, moved

    def _open(
        self,
        key: tuple[bytes | memoryview, Address],
        run: list[bytes | memoryview],
        to_tun: list[bytes],
        moved: list[tuple[InstalledChildSa, Address]],
    ) -> None:
        """Decapsulate consecutive datagrams with one SPI from one sender."""
        spi, remote = key
        sa = self.sad.by_spi.get(int.from_bytes(spi, "big"))
        if sa is None:
            self.drops[DropReason.UNKNOWN_SPI] += len(run)
            return
        delivered = sa.inbound.open_burst(run, to_tun)
        if delivered and remote != sa.remote:
            moved.extend([(sa, remote)] * delivered)


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
