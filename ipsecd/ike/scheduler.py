"""Everything an IKE SA does by the clock: retransmits, deadlines, lifetimes, DPD, keepalives.

strongSwan's scheduler jobs for one IKE SA, sans-I/O:

* retransmissions and the deadline of each lifecycle state (:meth:`IkeSa.handle_timer`);
* CHILD_SA and IKE SA rekeying at the soft lifetime (``rekey_time`` minus random
  jitter of up to ``rand_time``), deleting CHILD_SAs at the hard lifetime, and
  deleting an IKE SA that was replaced by a rekey the peer never finished
  (RFC 7296 §2.8, §2.18), or by a reauthentication whose old IKE SA the peer never
  deleted; reauthenticating at ``reauth_time`` (§2.8.3: the manager sets up the new
  IKE SA on :class:`~ipsecd.ike.sa.ReauthDue`);
* the liveness check of an idle peer (RFC 7296 §2.4, :mod:`ipsecd.ike.dpd`);
* NAT-keepalives from the side behind a NAT (RFC 3948 §4).

Each IKE SA has one due time in a :class:`TimerHeap`, recomputed whenever the
manager has touched the SA, so finding the next timer and firing one costs
O(log n) in the number of SAs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from ipsecd.config.schema import ChildLifetime
from ipsecd.ike import dpd
from ipsecd.ike.child import ChildSa
from ipsecd.ike.events import OutgoingDatagram
from ipsecd.ike.exchanges.informational import DeleteChildSa, DeleteIkeSa
from ipsecd.ike.exchanges.rekey import RekeyChildSa, RekeyIkeSa, random_unit
from ipsecd.ike.lifecycle import LIVE_STATES, ChildState, IkeState
from ipsecd.ike.reauth import CROSSING_GRACE, REAUTH_GRACE
from ipsecd.ike.sa import IkeSa, RandomBytes, ReauthDue

NAT_KEEPALIVE_INTERVAL = 20.0  # RFC 3948 §4: default 20 seconds
REKEYED_IKE_GRACE = 30.0  # a replaced IKE SA the peer does not delete is deleted by us
MAX_SEQ_32 = 2**32 - 1
MAX_SEQ_64 = 2**64 - 1

K = TypeVar("K", bound=Hashable)


def replaced_delete_at(sa: IkeSa) -> float | None:
    """When we delete ``sa``, replaced by a rekey or a reauthentication, ourselves (the
    peer should have deleted it by then)."""
    if sa.rekeyed_to is None or sa.rekeyed_at is None:
        return None
    if sa.crossed:
        return sa.rekeyed_at + CROSSING_GRACE
    return sa.rekeyed_at + (REAUTH_GRACE if sa.reauthenticated else REKEYED_IKE_GRACE)


def rekey_under_way(child: ChildSa) -> bool:
    """A rekey of ``child`` is queued or outstanding: its hard lifetime waits for it."""
    return child.rekey_queued or child.state is ChildState.REKEYING


def seq_rekey_threshold(esn: bool) -> int:
    """Outbound sequence number at which a CHILD_SA is rekeyed: 7/8 of the space (RFC 4303
    §3.3.3 forbids wrapping; the SA must be replaced well before the last number)."""
    top = MAX_SEQ_64 if esn else MAX_SEQ_32
    return top - top // 8


class TimerHeap(Generic[K]):
    """One due time per key; a binary heap with lazy deletion of outdated entries."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._serial = 0  # ties in time never compare keys

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: K, when: float | None) -> None:
        """``key`` is due at ``when`` (None: never); replaces its previous time."""
        if when is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == when:
            return
        self._due[key] = when
        self._serial += 1
        heapq.heappush(self._heap, (when, self._serial, key))
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._due):
            self._compact()

    def _compact(self) -> None:
        """Drop the outdated entries at once (amortized O(1) per set)."""
        self._heap = [(when, n, key) for n, (key, when) in enumerate(self._due.items())]
        heapq.heapify(self._heap)
        self._serial = len(self._heap)

    def _drop_outdated(self) -> None:
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)

    def next(self) -> float | None:
        self._drop_outdated()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int | None = None) -> list[K]:
        """The keys due at ``now`` or earlier, earliest first, at most ``limit`` of them;
        they are unscheduled (the rest stay due)."""
        due: list[K] = []
        while limit is None or len(due) < limit:
            self._drop_outdated()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._due[key]
            due.append(key)
        return due


class Scheduler:
    """The clock-driven work of the manager's IKE SAs (see the module docstring)."""

    def __init__(
        self,
        *,
        keepalive_interval: float,
        natt_port: int,
        ike_port: int,
        random_bytes: RandomBytes,
        count: Callable[[str], None],
        send: Callable[[OutgoingDatagram], None],
    ) -> None:
        self.keepalive_interval = keepalive_interval
        self.natt_port = natt_port
        self.ike_port = ike_port
        self.random_bytes = random_bytes
        self._count = count
        self._send = send
        self.timers: TimerHeap[int] = TimerHeap()  # by our SPI
        self._with_children: set[int] = set()  # SAs whose CHILD_SA usage the shell reports

    # ---- the heap ---------------------------------------------------------

    def reschedule(self, sa: IkeSa) -> None:
        self.timers.set(sa.local_spi, self.due(sa) if sa.alive else None)
        if sa.children and sa.state is IkeState.ESTABLISHED:
            self._with_children.add(sa.local_spi)
        else:
            self._with_children.discard(sa.local_spi)

    def forget(self, sa: IkeSa) -> None:
        self.timers.set(sa.local_spi, None)
        self._with_children.discard(sa.local_spi)

    @property
    def usage_reported(self) -> bool:
        """Whether any CHILD_SA exists whose usage the shell reports (``child_usage``)."""
        return bool(self._with_children)

    def due(self, sa: IkeSa) -> float | None:
        """The earliest time anything of ``sa`` needs the clock."""
        times = [t for t in (sa.next_timer(), dpd.due(sa)) if t is not None]
        if sa.state is not IkeState.ESTABLISHED:
            return min(times) if times else None
        if sa.nat_local and sa.rekeyed_to is None:
            times.append(sa.last_keepalive + self.keepalive_interval)
        if sa.rekeyed_to is not None:
            # Replaced: nothing but its deletion is due (a reauthentication leaves it
            # its CHILD_SAs, which are neither rekeyed nor expired meanwhile).
            delete_at = replaced_delete_at(sa)
            return min([*times, delete_at] if delete_at is not None else times, default=None)
        if sa.rekey_at is not None and not sa.rekey_queued:
            times.append(sa.rekey_at)
        if sa.reauth_at is not None:
            times.append(sa.reauth_at)
        for child in sa.children.values():
            if (
                child.state is ChildState.INSTALLED
                and child.rekey_at is not None
                and not child.rekey_queued
            ):
                times.append(child.rekey_at)
            if (
                child.expire_at is not None
                and child.state in LIVE_STATES
                and not rekey_under_way(child)  # its end, or its failure, reschedules
            ):
                times.append(child.expire_at)
        return min(times) if times else None

    def run(self, sa: IkeSa, now: float) -> None:
        """Everything of ``sa`` that is due at ``now``."""
        sa.handle_timer(now)
        if (
            sa.state is IkeState.ESTABLISHED
            and sa.nat_local
            and sa.rekeyed_to is None
            and now >= sa.last_keepalive + self.keepalive_interval
        ):
            self.keepalive(sa, now)
        self.lifetimes(sa, now)
        dpd.check(sa, now)

    # ---- lifetimes (RFC 7296 §2.8, §2.18) -----------------------------------

    def schedule_lifetimes(self, sa: IkeSa, now: float) -> None:
        """Soft/hard limits for a new IKE SA or CHILD_SA: ``rekey_time - rand * U[0,1)``."""
        if sa.state is not IkeState.ESTABLISHED or sa.rekeyed_to is not None:
            return
        if sa.collision_pending:
            return
        if not sa.lifetime_set:
            sa.lifetime_set = True
            ike = sa.peer.ike_lifetime
            if ike.rekey_time:
                sa.rekey_at = now + ike.rekey_time - ike.rand_time * random_unit(self.random_bytes)
            if ike.reauth_time and sa.reauth_at is None:  # a rekey successor inherits it
                jitter = ike.rand_time * random_unit(self.random_bytes)
                sa.reauth_at = now + ike.reauth_time - jitter
        for child in sa.children.values():
            if child.lifetime_set or child.state not in LIVE_STATES:
                continue
            child.lifetime_set = True
            limits = sa.child_config(child.name).lifetime
            if limits.rekey_time and child.state is ChildState.INSTALLED:
                jitter = limits.rand_time * random_unit(self.random_bytes)
                child.rekey_at = now + limits.rekey_time - jitter
            if limits.life_time:
                child.expire_at = now + limits.life_time

    def lifetimes(self, sa: IkeSa, now: float) -> None:
        if sa.state is not IkeState.ESTABLISHED:
            return
        if sa.rekeyed_to is not None:
            delete_at = replaced_delete_at(sa)
            if delete_at is not None and now >= delete_at:
                sa.rekeyed_at = None
                if sa.crossed:
                    why = "duplicate IKE SA (both ends initiated)"
                else:
                    how = "a reauthentication" if sa.reauthenticated else "a rekey"
                    why = f"replaced by {how}, not deleted by the peer"
                sa.queue(DeleteIkeSa(why), now)
            return
        for child in list(sa.children.values()):
            # Rekey first: after a stalled event loop the soft and the hard lifetime may
            # both be past, and a rekey replaces the CHILD_SA without a gap where a
            # Delete leaves none.  The hard lifetime deletes it only when no rekey is
            # under way (it failed, or cannot start: redundant, replaced).
            if (
                child.state is ChildState.INSTALLED
                and child.rekey_at is not None
                and now >= child.rekey_at
            ):
                self.rekey_child(sa, child, now)
            if (
                child.expire_at is not None
                and now >= child.expire_at
                and not rekey_under_way(child)
            ):
                child.expire_at = None
                if child.state is not ChildState.DELETING:
                    self._count("child_sa_expired")
                    self.delete_child(sa, child, "hard lifetime (life_time) reached", now)
        if sa.rekey_at is not None and now >= sa.rekey_at and not sa.rekey_queued:
            self.rekey_ike(sa, now)
        if sa.reauth_at is not None and now >= sa.reauth_at:
            sa.reauth_at = None
            sa.signals.append(ReauthDue())

    def rekey_child(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        if child.state is not ChildState.INSTALLED or child.rekey_queued or child.redundant:
            return
        child.rekey_queued = True
        child.rekey_at = None
        proposals = sa.child_config(child.name).child_proposals
        sa.queue(
            RekeyChildSa(
                child.spi_in,
                child.local_ts,
                child.remote_ts,
                proposals,
                name=child.name,
                mode=child.mode,
                protocol=child.protocol,
            ),
            now,
        )

    def rekey_ike(self, sa: IkeSa, now: float) -> None:
        if sa.rekey_queued or sa.rekeyed_to is not None:
            return
        sa.rekey_queued = True
        sa.rekey_at = None
        sa.queue(RekeyIkeSa(sa.peer.ike_proposals), now)

    def delete_child(self, sa: IkeSa, child: ChildSa, reason: str, now: float) -> None:
        sa.queue(DeleteChildSa([child.spi_in], reason), now)

    def child_usage(
        self,
        sa: IkeSa,
        child: ChildSa,
        octets: int,
        packets: int,
        now: float,
        *,
        seq_out: int,
        packets_in: int | None,
    ) -> None:
        """Usage of one CHILD_SA from the data plane: soft and hard volume limits."""
        child.bytes, child.packets = octets, packets
        if packets_in is not None and packets_in > child.packets_in:
            child.packets_in = packets_in
            sa.last_peer_activity = max(sa.last_peer_activity, now)
        limits: ChildLifetime = sa.child_config(child.name).lifetime
        esn = bool(child.algorithms and child.algorithms.esn)
        top = MAX_SEQ_64 if esn else MAX_SEQ_32
        if seq_out >= top and child.state is ChildState.INSTALLED:
            self._count("child_sa_sequence_exhausted")
            self.delete_child(sa, child, "outbound sequence numbers exhausted", now)
        elif (
            (limits.rekey_bytes and octets >= limits.rekey_bytes)
            or (limits.rekey_packets and packets >= limits.rekey_packets)
            or seq_out >= seq_rekey_threshold(esn)
        ):
            self.rekey_child(sa, child, now)

    # ---- NAT-keepalives (RFC 3948 §2.3, §4) ---------------------------------

    def keepalive(self, sa: IkeSa, now: float) -> None:
        """One 0xFF octet on the NAT-T port, no marker."""
        sa.last_keepalive = now
        self._count("nat_keepalives")
        remote_port = sa.remote[1] if sa.remote[1] != self.ike_port else self.natt_port
        self._send(
            OutgoingDatagram(
                b"",
                (sa.local[0], self.natt_port),
                (sa.remote[0], remote_port),
                marker=False,
                keepalive=True,
            )
        )
