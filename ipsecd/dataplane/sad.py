"""The SA database: which CHILD_SA a packet belongs to (RFC 4301 §4.4.2, SPD + SAD).

Inbound ESP is found by SPI.  Outbound packets are matched by their inner
source and destination against each installed SA's negotiated traffic
selectors, most recently installed first, so a rekeyed SA takes over the
moment it is installed (make-before-break) while the old one keeps decrypting
until it is removed.  Sans-I/O: no sockets, only objects and ints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.selectors import TrafficSelector

Address = tuple[str, int]


@dataclass(eq=False)
class TunnelSa:
    """One installed CHILD_SA pair with the data the packet loop needs."""

    peer: str
    inbound: InboundEspSa
    outbound: OutboundEspSa
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: Address  # our UDP endpoint (address, port) for ESP-in-UDP
    remote: Address  # the peer's UDP endpoint
    installed_at: float = 0.0
    # (version, start, end) tuples flattened for a fast outbound match.
    _match: tuple[tuple[int, int, int, int, int, int], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._match = tuple(
            (lt.version, lt.start, lt.end, rt.start, rt.end, 0)
            for lt in self.local_ts
            for rt in self.remote_ts
            if lt.version == rt.version
        )

    def matches(self, version: int, src: int, dst: int) -> bool:
        for v, ls, le, rs, re, _ in self._match:
            if v == version and ls <= src <= le and rs <= dst <= re:
                return True
        return False


class SaDatabase:
    """Installed tunnel SAs, by inbound SPI and by outbound selectors."""

    def __init__(self) -> None:
        self.by_spi: dict[int, TunnelSa] = {}
        self._outbound: list[TunnelSa] = []  # newest first
        self._cache: dict[tuple[int, int, int], TunnelSa | None] = {}

    def install(self, sa: TunnelSa, outbound: bool = True) -> None:
        """Install inbound first, then let the outbound side take over (RFC 7296 §2.8).

        ``outbound=False`` installs the inbound SA only (a rekey responder keeps
        sending on the old SA); :meth:`activate_outbound` adds the outbound side later.
        """
        self.by_spi[sa.inbound.spi] = sa
        if outbound:
            self._outbound.insert(0, sa)
            self._cache.clear()

    def activate_outbound(self, spi_in: int) -> TunnelSa | None:
        """Start sending with an SA installed with ``outbound=False``."""
        sa = self.by_spi.get(spi_in)
        if sa is not None and all(s is not sa for s in self._outbound):
            self._outbound.insert(0, sa)
            self._cache.clear()
        return sa

    def remove(self, spi_in: int) -> TunnelSa | None:
        sa = self.by_spi.pop(spi_in, None)
        if sa is not None:
            self._outbound = [s for s in self._outbound if s is not sa]
            self._cache.clear()
        return sa

    def remove_peer(self, peer: str) -> list[TunnelSa]:
        gone = [s for s in self.by_spi.values() if s.peer == peer]
        for sa in gone:
            self.remove(sa.inbound.spi)
        return gone

    def lookup_outbound(self, version: int, src: int, dst: int) -> TunnelSa | None:
        key = (version, src, dst)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next((s for s in self._outbound if s.matches(version, src, dst)), None)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[key] = found
        return found

    def lookup_inbound(self, spi: int) -> TunnelSa | None:
        return self.by_spi.get(spi)

    def for_peer(self, peer: str) -> list[TunnelSa]:
        """The peer's SAs, the ones in outbound use first (newest first), then inbound-only."""
        sending = [s for s in self._outbound if s.peer == peer]
        return sending + [s for s in self.by_spi.values() if s.peer == peer and s not in sending]

    def __iter__(self):
        sending = list(self._outbound)
        return iter(sending + [s for s in self.by_spi.values() if s not in sending])

    def __len__(self) -> int:
        return len(self.by_spi)
