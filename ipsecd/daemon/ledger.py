"""What the status remembers between two calls: totals that outlive a CHILD_SA.

An installed CHILD_SA counts its own packets, bytes and drops
(:class:`~ipsecd.esp.sa.InboundEspSa`, :class:`~ipsecd.esp.sa.OutboundEspSa`) and
its counters go with it when it is rekeyed (RFC 7296 §2.8) or deleted.  The
:class:`Ledger` keeps, per peer and for the life of the daemon:

* the transfer of every CHILD_SA that is gone (:class:`Transfer`), so a peer's
  totals are those plus the installed SAs' and never go down across rekeys;
* when each installed SA last carried a packet each way, sampled whenever the
  core looks (when it is installed, when the IKE timer reports usage — every
  ``USAGE_INTERVAL`` second while CHILD_SAs exist — and at each status request):
  a packet is dated to the look that first saw its counter move;
* the handshake failures (``NegotiationFailed``) and when the last one happened.

Sans-I/O: it is told the time and shown the SA objects; the core calls
:meth:`Ledger.watch` and :meth:`Ledger.retire` as SAs come and go (O(1) per IKE
event) and :meth:`Ledger.observe` (O(SAs)) at most once per ``USAGE_INTERVAL``
and before it reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ipsecd.dataplane.sad import InstalledChildSa
from ipsecd.esp.counters import DropReason
from ipsecd.ike import events as ev


@dataclass(frozen=True, slots=True)
class Transfer:
    """Packets and inner bytes each way (``in``: opened from the peer, ``out``: sealed to it)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0

    @classmethod
    def of(cls, sa: InstalledChildSa) -> Transfer:
        inbound, outbound = sa.inbound, sa.outbound
        return cls(inbound.packets, inbound.bytes, outbound.packets, outbound.bytes)

    def __add__(self, other: Transfer) -> Transfer:
        return Transfer(
            self.packets_in + other.packets_in,
            self.bytes_in + other.bytes_in,
            self.packets_out + other.packets_out,
            self.bytes_out + other.bytes_out,
        )


def sa_drops(sa: InstalledChildSa) -> dict[str, int]:
    """The inbound SA's drops, every reason present (zeros included)."""
    drops = sa.inbound.drops
    return {str(reason): drops.get(reason, 0) for reason in DropReason}


@dataclass
class _Watched:
    """An installed SA as last seen: its packet counts and when each last moved."""

    sa: InstalledChildSa
    packets_in: int
    packets_out: int
    last_in: float | None
    last_out: float | None


@dataclass(frozen=True, slots=True)
class LastError:
    message: str
    at: float  # the core's clock


@dataclass(slots=True)
class _Peer:
    retired: Transfer = Transfer()
    retired_drops: Counter[str] = field(default_factory=Counter)
    handshake_failures: int = 0
    last_error: LastError | None = None


class Ledger:
    """Per-peer totals and activity times for the life of the daemon; see the module doc."""

    def __init__(self) -> None:
        self._watched: dict[int, _Watched] = {}  # by id() of the SA object, which it holds
        self._peers: dict[str, _Peer] = {}

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _Peer()
        return peer

    def observe(self, installed: Iterable[InstalledChildSa], now: float) -> None:
        """Look at the installed SAs: retire the ones gone, date the counters that moved.

        A retired SA's final counts are read from its own (no longer used) objects,
        so nothing it carried is lost however long ago the last look was.
        """
        live = {id(sa): sa for sa in installed}
        for key in [k for k in self._watched if k not in live]:
            sa = self._watched.pop(key).sa
            peer = self._peer(sa.peer)
            peer.retired += Transfer.of(sa)
            peer.retired_drops.update(sa_drops(sa))
        for sa in live.values():
            self.moved(sa, now)

    def moved(self, sa: InstalledChildSa, now: float) -> None:
        """Date ``sa``'s counters that moved since the last look, or start watching it
        (:meth:`observe` does this for every SA; the core's usage pass for the SAs that
        moved only)."""
        seen = self._watched.get(id(sa))
        if seen is None or seen.sa is not sa:
            self._watched.pop(id(sa), None)
            self.watch(sa, now)
            return
        packets_in, packets_out = sa.inbound.packets, sa.outbound.packets
        if packets_in != seen.packets_in:
            seen.packets_in, seen.last_in = packets_in, now
        if packets_out != seen.packets_out:
            seen.packets_out, seen.last_out = packets_out, now

    def watch(self, sa: InstalledChildSa, now: float) -> None:
        """``sa`` was just installed: date its counters from now (what :meth:`observe`
        does for a new SA, without looking at every other one)."""
        if id(sa) not in self._watched:
            packets_in, packets_out = sa.inbound.packets, sa.outbound.packets
            self._watched[id(sa)] = _Watched(
                sa,
                packets_in,
                packets_out,
                now if packets_in else None,
                now if packets_out else None,
            )

    def retire(self, sa: InstalledChildSa) -> None:
        """``sa`` was removed: its final counts join its peer's totals."""
        seen = self._watched.get(id(sa))
        if seen is not None and seen.sa is sa:
            del self._watched[id(sa)]
            peer = self._peer(sa.peer)
            peer.retired += Transfer.of(sa)
            peer.retired_drops.update(sa_drops(sa))

    def event(self, event: ev.Event, now: float) -> None:
        """Count what the status reports per peer from the IKE layer's events."""
        if isinstance(event, ev.NegotiationFailed):
            peer = self._peer(event.peer)
            peer.handshake_failures += 1
            peer.last_error = LastError(event.reason, now)

    # -- what the status reads --------------------------------------------------------------
    def last_packets(self, sa: InstalledChildSa) -> tuple[float | None, float | None]:
        """When ``sa`` last carried a packet (in, out) as of the last look; None: never."""
        seen = self._watched.get(id(sa))
        if seen is None or seen.sa is not sa:
            return None, None
        return seen.last_in, seen.last_out

    def transfer(self, peer: str, installed: Iterable[InstalledChildSa]) -> Transfer:
        """The peer's transfer since the daemon started: retired SAs plus ``installed``."""
        total = self._peer(peer).retired
        for sa in installed:
            total += Transfer.of(sa)
        return total

    def drops(self, peer: str, installed: Iterable[InstalledChildSa]) -> dict[str, int]:
        """The peer's inbound drops since the daemon started, every reason present."""
        total = Counter(self._peer(peer).retired_drops)
        for sa in installed:
            total.update(sa_drops(sa))
        return {str(reason): total[str(reason)] for reason in DropReason}

    def handshake_failures(self, peer: str) -> int:
        return self._peer(peer).handshake_failures

    def last_error(self, peer: str) -> LastError | None:
        return self._peer(peer).last_error
