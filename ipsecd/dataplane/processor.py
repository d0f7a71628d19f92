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

from ipsecd.dataplane.sad import Address, SaDatabase, TunnelSa
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import SequenceNumberExhausted

# (packet, ip version, src, dst) -> True if taken (queued for an on-demand tunnel).
NoSaHook = Callable[[bytes, int, int, int], bool]

IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
_NON_ESP_MARKER = b"\x00\x00\x00\x00"


class PacketProcessor:
    """Moves packets through the SA database and counts every packet it drops."""

    def __init__(self, sad: SaDatabase) -> None:
        self.sad = sad
        self.drops: Counter[str] = Counter()
        self.keepalives_received = 0
        self.no_sa: NoSaHook | None = None  # where a packet without SA goes (start: trap)

    def from_tun(self, packets: Iterable[bytes]) -> dict[tuple[Address, Address], list[bytes]]:
        """Encapsulate inner packets; returns {(local, remote): [esp, ...]}."""
        out: dict[tuple[Address, Address], list[bytes]] = {}
        lookup = self.sad.lookup_outbound
        no_sa = self.no_sa
        from_bytes = int.from_bytes
        for packet in packets:
            n = len(packet)
            if n < 20:
                self.drops[DropReason.MALFORMED] += 1
                continue
            version = packet[0] >> 4
            if version == 4:
                src = from_bytes(packet[12:16], "big")
                dst = from_bytes(packet[16:20], "big")
                next_header = IPPROTO_IPIP
            elif version == 6 and n >= 40:
                src = from_bytes(packet[8:24], "big")
                dst = from_bytes(packet[24:40], "big")
                next_header = IPPROTO_IPV6
            else:
                self.drops[DropReason.MALFORMED] += 1
                continue
            sa = lookup(version, src, dst)
            if sa is None:
                if no_sa is None or not no_sa(packet, version, src, dst):
                    self.drops[DropReason.NO_SA] += 1
                continue
            try:
                esp = sa.outbound.encapsulate(packet, next_header)
            except SequenceNumberExhausted:
                self.drops["sequence_exhausted"] += 1
                continue
            key = (sa.local, sa.remote)
            bucket = out.get(key)
            if bucket is None:
                out[key] = [esp]
            else:
                bucket.append(esp)
        return out

    def from_udp(
        self, datagrams: Iterable[tuple[bytes, Address]]
    ) -> tuple[list[bytes], list[tuple[bytes, Address]], list[tuple[TunnelSa, Address]]]:
        """Demultiplex and decapsulate datagrams received on the NAT-T port.

        Returns (inner packets for TUN, IKE messages without the non-ESP
        marker, SAs whose authenticated packets came from a new address).
        """
        to_tun: list[bytes] = []
        ike: list[tuple[bytes, Address]] = []
        moved: list[tuple[TunnelSa, Address]] = []
        by_spi = self.sad.by_spi
        from_bytes = int.from_bytes
        for data, remote in datagrams:
            n = len(data)
            if n < 8:
                if n == 1 and data[0] == 0xFF:  # NAT-keepalive, RFC 3948 §2.3
                    self.keepalives_received += 1
                else:
                    self.drops[DropReason.TOO_SHORT] += 1
                continue
            spi = from_bytes(data[:4], "big")
            if spi == 0:  # non-ESP marker: an IKE message (RFC 3948 §2.2)
                ike.append((data[4:], remote))
                continue
            sa = by_spi.get(spi)
            if sa is None:
                self.drops[DropReason.UNKNOWN_SPI] += 1
                continue
            result = sa.inbound.decapsulate(data)
            if result is None:
                continue  # counted by the SA
            to_tun.append(result[1])
            if remote != sa.remote:
                moved.append((sa, remote))
        return to_tun, ike, moved
