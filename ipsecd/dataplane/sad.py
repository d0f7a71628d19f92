"""The SA database: which CHILD_SA a packet belongs to (RFC 4301 §4.4.2, SPD + SAD).

Inbound ESP is found by SPI.  Outbound packets are matched by their inner
source and destination against each installed SA's negotiated traffic
selectors, the most specific selector pair first (the narrowest remote range,
then the narrowest local range: a CHILD_SA for 10.2.5.0/24 wins over one for
10.2.0.0/16 of the same or another child, RFC 4301 §4.4.1 ordering), and among
equally specific ones the most recently installed first, so a rekeyed SA takes
over the moment it is installed (make-before-break) while the old one keeps
decrypting until it is removed.  Sans-I/O: no sockets, only objects and ints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ipsecd.ah.sa import InboundAhSa, OutboundAhSa
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.selectors import TrafficSelector

Address = tuple[str, int]
Inbound = InboundEspSa | InboundAhSa
Outbound = OutboundEspSa | OutboundAhSa


@dataclass(eq=False)
class InstalledChildSa:
    """A CHILD_SA as the data plane holds it (RFC 7296 §2.17, RFC 4301 §4.1).

    A CHILD_SA is a pair of unidirectional ESP (or AH) SAs: ``inbound`` opens what the
    peer sends (found by its SPI), ``outbound`` seals what we send (found by the
    negotiated traffic selectors ``local_ts`` -> ``remote_ts``).  ``local``/``remote`` are
    the UDP endpoints of ESP-in-UDP (RFC 3948); ``remote`` follows the peer behind a NAT.
    ``mode`` is ``tunnel`` or ``transport`` (RFC 4301 §4.1), ``protocol`` ``esp`` or
    ``ah``; ``encap`` False sends directly over IP (protocol 50/51) from ``local[0]`` to
    ``remote[0]``.  ``max_inner`` is the largest packet from TUN whose ESP/AH packet fits
    the path (larger ones get ICMP "too big" or are fragmented first).
    Built by :func:`ipsecd.daemon.core.child_sa` from the negotiated (or manual)
    parameters; the IKE side of the same CHILD_SA is :class:`ipsecd.ike.child.ChildSa`.
    """

    peer: str
    inbound: Inbound
    outbound: Outbound
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: Address  # our UDP endpoint (address, port) for ESP-in-UDP
    remote: Address  # the peer's UDP endpoint
    installed_at: float = 0.0
    name: str = ""  # the configured child (peers[].children[].name)
    mode: str = "tunnel"
    protocol: str = "esp"
    encap: bool = True
    max_inner: int = 65535
    nat: bool = False  # transport mode across a NAT: TCP/UDP checksums get fixed
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

    def allows_inbound(self, version: int, src: int, dst: int) -> bool:
        """A packet from the peer is inside the selectors: ``remote_ts`` -> ``local_ts``
        (RFC 4301 §5.2; what InboundEspSa checks itself in tunnel mode)."""
        return self.matches(version, dst, src)

    @property
    def fast(self) -> bool:
        """Tunnel-mode ESP in UDP: the burst path (``seal_burst`` / ``open_burst``)."""
        return self.mode == "tunnel" and self.protocol == "esp" and self.encap

    @property
    def algorithm(self) -> str:
        """The transform as shown: ``aes256gcm16``, ``aes128-sha256``, ``ah-sha256``."""
        out = self.outbound
        if isinstance(out, OutboundAhSa):
            return f"ah-{out.integ.name}"
        return out.encr.name + (f"-{out.integ.name}" if out.integ is not None else "")


class SaDatabase:
    """Installed CHILD_SAs, by inbound SPI and by outbound selectors."""

    def __init__(self) -> None:
        self.by_spi: dict[int, InstalledChildSa] = {}
        self._outbound: list[InstalledChildSa] = []  # newest first
        # Every outbound selector pair, most specific first (see the module docstring).
        self._rules: list[tuple[tuple[int, int, int, int, int, int], InstalledChildSa]] = []
        self._cache: dict[tuple[int, int, int], InstalledChildSa | None] = {}

    def _outbound_changed(self) -> None:
        """Re-sort the selector pairs after an SA started or stopped sending."""
        ranked = [
            ((m[4] - m[3], m[2] - m[1], newest), m, sa)
            for newest, sa in enumerate(self._outbound)
            for m in sa._match
        ]
        ranked.sort(key=lambda r: r[0])
        self._rules = [(m, sa) for _, m, sa in ranked]
        self._cache.clear()

    def install(self, sa: InstalledChildSa, outbound: bool = True) -> None:
        """Install inbound first, then let the outbound side take over (RFC 7296 §2.8).

        ``outbound=False`` installs the inbound SA only (a rekey responder keeps
        sending on the old SA); :meth:`activate_outbound` adds the outbound side later.
        """
        self.by_spi[sa.inbound.spi] = sa
        if outbound:
            self._outbound.insert(0, sa)
            self._outbound_changed()

    def activate_outbound(self, spi_in: int) -> InstalledChildSa | None:
        """Start sending with an SA installed with ``outbound=False``."""
        sa = self.by_spi.get(spi_in)
        if sa is not None and all(s is not sa for s in self._outbound):
            self._outbound.insert(0, sa)
            self._outbound_changed()
        return sa

    def remove(self, spi_in: int) -> InstalledChildSa | None:
        sa = self.by_spi.pop(spi_in, None)
        if sa is not None:
            self._outbound = [s for s in self._outbound if s is not sa]
            self._outbound_changed()
        return sa

    def remove_peer(self, peer: str) -> list[InstalledChildSa]:
        gone = [s for s in self.by_spi.values() if s.peer == peer]
        for sa in gone:
            self.remove(sa.inbound.spi)
        return gone

    def lookup_outbound(self, version: int, src: int, dst: int) -> InstalledChildSa | None:
        key = (version, src, dst)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next(
            (
                sa
                for (v, ls, le, rs, re, _), sa in self._rules
                if v == version and ls <= src <= le and rs <= dst <= re
            ),
            None,
        )
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[key] = found
        return found

    def lookup_inbound(self, spi: int) -> InstalledChildSa | None:
        return self.by_spi.get(spi)

    def for_peer(self, peer: str) -> list[InstalledChildSa]:
        """The peer's SAs, the ones in outbound use first (newest first), then inbound-only."""
        sending = [s for s in self._outbound if s.peer == peer]
        seen = {id(s) for s in sending}
        return sending + [s for s in self.by_spi.values() if s.peer == peer and id(s) not in seen]

    def __iter__(self) -> Iterator[InstalledChildSa]:
        seen = {id(s) for s in self._outbound}  # identity, one look-up each (not a list scan)
        return iter([*self._outbound, *(s for s in self.by_spi.values() if id(s) not in seen)])

    def __len__(self) -> int:
        return len(self.by_spi)
