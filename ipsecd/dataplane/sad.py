"""The SA database: which CHILD_SA a packet belongs to (RFC 4301 §4.4.2, SPD + SAD).

Inbound ESP is found by SPI.  Outbound packets are matched by their inner
source and destination against each installed SA's negotiated traffic
selectors, the most specific selector pair first (the narrowest remote range,
then the narrowest local range: a CHILD_SA for 10.2.5.0/24 wins over one for
10.2.0.0/16 of the same or another child, RFC 4301 §4.4.1 ordering), and among
equally specific ones the most recently installed first, so a rekeyed SA takes
over the moment it is installed (make-before-break) while the old one keeps
decrypting until it is removed.  A rekeyed SA's inbound side outlives its Delete by
:data:`REKEYED_INBOUND_GRACE` seconds (:meth:`SaDatabase.retire`): what the peer sent on
it before it switched may still be on the way.  Sans-I/O: no sockets, only objects and ints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ipsecd.ah.sa import InboundAhSa, OutboundAhSa
from ipsecd.dataplane.selector_index import SelectorIndex
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.selectors import TrafficSelector

Address = tuple[str, int]
Inbound = InboundEspSa | InboundAhSa
Outbound = OutboundEspSa | OutboundAhSa

#: Seconds a rekeyed CHILD_SA still decrypts after its Delete (strongSwan's
#: ``charon.delete_rekeyed_delay``, 5 s by default): a peer that sends from a queue (charon's
#: libipsec) can put packets on the old SA after the exchange that ended it.
REKEYED_INBOUND_GRACE = 5.0


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
    # (inbound, outbound) packets when the usage was last told to IKE (DaemonCore).
    usage_told: tuple[int, int] = field(default=(0, 0), repr=False)
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
    """Installed CHILD_SAs, by inbound SPI and by outbound selectors.

    The outbound selector pairs are filed by destination prefix as SAs come and go
    (:class:`~ipsecd.dataplane.selector_index.SelectorIndex`: a lookup asks a few dicts,
    however many SAs there are): each pair's rank is (remote range width, local range
    width, -serial, index), where ``serial`` counts the SAs that began sending, so the
    newest of equally specific pairs comes first.
    """

    def __init__(self) -> None:
        self.by_spi: dict[int, InstalledChildSa] = {}
        self._sending: dict[InstalledChildSa, int] = {}  # SA -> serial; oldest first
        self._serial = 0
        self._index: SelectorIndex[InstalledChildSa] = SelectorIndex()
        self._cache: dict[tuple[int, int, int], InstalledChildSa | None] = {}
        # Inbound-only SAs kept after a rekey's Delete, by inbound SPI -> (until, SA); the
        # grace is the same for all, so insertion order is expiry order.
        self._retiring: dict[int, tuple[float, InstalledChildSa]] = {}

    @staticmethod
    def _rank(
        m: tuple[int, int, int, int, int, int], serial: int, index: int
    ) -> tuple[int, int, int, int]:
        return (m[4] - m[3], m[2] - m[1], -serial, index)

    def _start_sending(self, sa: InstalledChildSa) -> None:
        """File ``sa``'s selector pairs as the newest sender."""
        self._stop_sending(sa)
        self._serial += 1
        self._sending[sa] = self._serial
        for index, m in enumerate(sa._match):
            rank = self._rank(m, self._serial, index)
            self._index.add(m[0], (m[1], m[2]), (m[3], m[4]), rank, sa)
        self._cache.clear()

    def _stop_sending(self, sa: InstalledChildSa) -> None:
        serial = self._sending.pop(sa, None)
        if serial is None:
            return
        for index, m in enumerate(sa._match):
            self._index.remove(self._rank(m, serial, index), sa)
        self._cache.clear()

    def install(self, sa: InstalledChildSa, outbound: bool = True) -> None:
        """Install inbound first, then let the outbound side take over (RFC 7296 §2.8).

        ``outbound=False`` installs the inbound SA only (a rekey responder keeps
        sending on the old SA); :meth:`activate_outbound` adds the outbound side later.
        """
        self.by_spi[sa.inbound.spi] = sa
        self._retiring.pop(sa.inbound.spi, None)
        if outbound:
            self._start_sending(sa)

    def activate_outbound(self, spi_in: int) -> InstalledChildSa | None:
        """Start sending with an SA installed with ``outbound=False``."""
        sa = self.by_spi.get(spi_in)
        if sa is not None and sa not in self._sending:
            self._start_sending(sa)
        return sa

    def remove(self, spi_in: int) -> InstalledChildSa | None:
        sa = self.by_spi.pop(spi_in, None)
        if sa is not None:
            self._stop_sending(sa)
            self._retiring.pop(spi_in, None)
        return sa

    def retire(self, spi_in: int, now: float) -> InstalledChildSa | None:
        """The CHILD_SA was rekeyed and deleted: stop sending with it at once, keep opening
        what arrives for it until ``now + REKEYED_INBOUND_GRACE`` (:meth:`expire`)."""
        sa = self.by_spi.get(spi_in)
        if sa is not None:
            self._stop_sending(sa)
            self._retiring.pop(spi_in, None)  # (re-inserted: expiry order stays)
            self._retiring[spi_in] = (now + REKEYED_INBOUND_GRACE, sa)
        return sa

    def retiring(self, spi_in: int) -> bool:
        return spi_in in self._retiring

    def next_expiry(self) -> float | None:
        """When the oldest retired SA's grace ends, None with none."""
        for until, _ in self._retiring.values():
            return until
        return None

    def expire(self, now: float) -> list[InstalledChildSa]:
        """Remove the retired SAs whose grace is over; the ones removed."""
        gone: list[InstalledChildSa] = []
        # Every retiring SPI is in by_spi with that SA: install() and remove() end its grace.
        while self._retiring:
            spi, (until, sa) = next(iter(self._retiring.items()))
            if until > now:
                break
            del self._retiring[spi], self.by_spi[spi]
            gone.append(sa)
        return gone

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
        found = self._index.lookup(version, src, dst)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[key] = found
        return found

    def lookup_inbound(self, spi: int) -> InstalledChildSa | None:
        return self.by_spi.get(spi)

    def for_peer(self, peer: str) -> list[InstalledChildSa]:
        """The peer's SAs, the ones in outbound use first (newest first), then inbound-only
        (not the retired ones)."""
        return [s for s in self if s.peer == peer]

    def __iter__(self) -> Iterator[InstalledChildSa]:
        """The SAs in outbound use (newest first), then the inbound-only ones; not the
        retired ones (:meth:`retire`), which IKE and the status know no more."""
        sending, retiring = self._sending, self._retiring
        return iter(
            [
                *reversed(sending),
                *(s for spi, s in self.by_spi.items() if s not in sending and spi not in retiring),
            ]
        )

    def with_retired(self) -> Iterator[InstalledChildSa]:
        """Every SA that still opens packets: :meth:`__iter__`'s, then the retired ones."""
        yield from self
        for _, sa in self._retiring.values():
            yield sa

    def retired_of(self, peer: str) -> list[InstalledChildSa]:
        """The peer's retired SAs (a few at most: each lasts the grace)."""
        return [sa for _, sa in self._retiring.values() if sa.peer == peer]

    def __len__(self) -> int:
        return len(self.by_spi) - len(self._retiring)
