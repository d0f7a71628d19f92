"""Received IKE datagrams waiting for the IKE layer: checked cheaply, bounded, in two queues.

The shell reads UDP in bursts; ESP in a burst is handled at once, while its IKE
datagrams only pass the cheap checks here and wait in :class:`IkeInbox` until the
shell gives the IKE layer a slice of time (:meth:`IkeManager.process_queued`).  So
IKE work, which an attacker can make expensive, never holds up the ESP of the same
burst or of later ones (issue 12, item 2).

Cheap checks, in order, before anything is decoded:

1. the datagram is at most ``gateway.max_ike_datagram`` bytes (default 10 000, like
   strongSwan's ``charon.max_packet``); RFC 7383 fragments are checked one by one,
   their reassembly has its own budget (:mod:`ipsecd.ike.fragments`);
2. the 28-byte IKE header parses and its length is the datagram's (RFC 7296 §3.1).

Messages for an IKE SA we hold (by our SPI, or retransmissions of a half-open SA's
IKE_SA_INIT) go to the *known* queue, everything else (new IKE_SA_INIT requests, unknown
SPIs) to the *new* one.  Each queue holds at most :data:`QUEUE_DATAGRAMS` datagrams and
:data:`QUEUE_BYTES` bytes; beyond, datagrams are dropped and counted (``ike_queue_full``),
so a flood of new requests cannot crowd out the messages of existing IKE SAs.  Both are
served in the order the datagrams arrived: the order of an IKE_SA_INIT request and the
answer to our own crossing it decides which IKE SA carries N(INITIAL_CONTACT) first
(RFC 7296 §2.4), as it would without the queues; a flood in the new queue delays a known
message by little, as the share below drops what it cannot afford at a few microseconds
each.

Work for the new queue (anyone can send it) may keep the daemon busy at most
:data:`NEW_WORK_SHARE` of the time: the time each such message takes, read from the
shell's work clock (elapsed, not CPU time: being preempted in the middle of IKE work
keeps ESP waiting just as much, so a loaded machine gets less of it), is charged to a
token bucket refilled by the clock the shell passes as ``now``.  While that budget is in
debt *and the daemon is under pressure*, new datagrams are dropped as they arrive
(``ike_busy_dropped``), before any work.  Under pressure means: the half-open table
demands cookies (its threshold reached, or its calm-down not over: the ``pressure``
callback), or at least :data:`NEW_BACKLOG_PRESSURE` datagrams wait in the new queue.
Without pressure the share is charged but not enforced: one handshake takes 1-2 ms, as
much as the whole burst, and one preempted for a few hundred milliseconds put the budget
in debt for seconds (20 times as long at 5 %), so that a peer's next reauthentication's
IKE_SA_INIT was dropped and waited for its retransmission.  A flood turns cookies on
within ``cookie_threshold`` half-open SAs, or fills the queue, and so still gets the share.
A daemon flooded with IKE_SA_INIT then still sleeps most of the time, and the kernel
wakes it at once for the next ESP packet instead of queueing it behind a busy process
(measured in docs/security.md).  Meanwhile the shell stops reading the IKE port,
which carries only new requests once IKE floated to the NAT-T port (:meth:`paused_for`):
the kernel then drops the flood at no cost to the daemon.  The backlog counts only from
128 on: from 16, a legitimate burst of 250 initiators (the operator having raised
``cookie_threshold``) ran at the share, 150 handshakes a second instead of 1000-1500.

An IKE_SA_INIT that carries a valid COOKIE (RFC 7296 §2.6) comes from an address that
received our answer: no spoofed flood can send it. It is not held to the 5 % of the
anonymous requests; like a known SA's message it is bounded by the queue, the half-open
limits and the IKE slices alone (one slice per turn of the event loop, after the ESP
burst: ESP keeps at least half the daemon when both press). Held to the 5 %, 250 peers
coming back at once (a hub restarting) got their cookies, then only about 50
Diffie-Hellman computations a second, every synchronized retransmission wave dropped
again: 7.5-15 s for 250 tunnels instead of 1.5.

And the COOKIE answers themselves must not wait behind the 5 %: when the share is used up,
an IKE_SA_INIT without a valid cookie (demanded, as the share is enforced only under
pressure) is still let in for its answer, up to :data:`COOKIE_ANSWER_RATE` a second in bursts of
:data:`COOKIE_ANSWER_BURST` (tens of microseconds each: a few per cent of a core at most,
not charged to the share, whose debt would keep the IKE port unread for the initiators'
returns), so a wave of initiators gets all its cookies at once instead of 40 per
retransmission.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ipsecd.ike import message as codec
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.errors import MalformedMessage
from ipsecd.ike.events import Address
from ipsecd.ratelimit import TokenBucket

DEFAULT_MAX_IKE_DATAGRAM = 10_000  # bytes, strongSwan's charon.max_packet
QUEUE_DATAGRAMS = 1024  # per queue (QUEUE_BYTES bounds the memory)
QUEUE_BYTES = 2 * 1024 * 1024  # per queue
NEW_WORK_SHARE = 0.05  # seconds per second: the daemon busy with the new queue at most
NEW_WORK_BURST = 0.002  # seconds of it at once: short bursts keep the daemon a light sleeper
NEW_BACKLOG_PRESSURE = 128  # datagrams in the new queue from which on the share is enforced
COOKIE_ANSWER_RATE = 2000.0  # IKE_SA_INIT per second let past a used-up share for a COOKIE
COOKIE_ANSWER_BURST = 1000.0  # of them at once (in the 2 ms IKE slices between ESP bursts)


def is_init_request(header: codec.Header) -> bool:
    """A new IKE_SA_INIT request (SPIr 0), not an answer to ours (which may have SPIr 0
    too: COOKIE, INVALID_KE_PAYLOAD); under pressure it is answered with a COOKIE."""
    return (
        header.exchange_type == ExchangeType.IKE_SA_INIT
        and not header.response
        and header.spi_r == 0
    )


@dataclass(frozen=True)
class Received:
    """One IKE datagram (without non-ESP marker) that passed the cheap checks."""

    data: bytes
    header: codec.Header
    local: Address
    remote: Address
    verified: bool = False  # an IKE_SA_INIT with a valid cookie: not held to the share


class _Queue:
    __slots__ = ("items", "bytes")

    def __init__(self) -> None:
        # (arrival number, datagram, whether the share is checked for it)
        self.items: deque[tuple[int, Received, bool]] = deque()
        self.bytes = 0


class IkeInbox:
    """The two bounded queues of received IKE datagrams; see the module docstring."""

    def __init__(
        self,
        counters: dict[str, int],
        max_datagram: int,
        now: float,
        work_clock: Callable[[], float] | None = None,
        pressure: Callable[[float], bool] = lambda _now: False,
    ) -> None:
        """``work_clock``: how long the new queue's work takes (None: no share limit);
        ``pressure(now)``: whether new requests are pressing besides a deep backlog (the
        half-open table demands cookies), so that the share is enforced."""
        self.counters = counters
        self.max_datagram = max_datagram
        self._known = _Queue()
        self._new = _Queue()
        self._arrivals = 0
        self._clock = work_clock
        self._new_work = TokenBucket(NEW_WORK_SHARE, NEW_WORK_BURST, now) if work_clock else None
        self._cookie_answers = TokenBucket(COOKIE_ANSWER_RATE, COOKIE_ANSWER_BURST, now)
        self._pressure = pressure

    def __len__(self) -> int:
        return len(self._known.items) + len(self._new.items)

    def only_known(self) -> bool:
        """Messages wait, all for IKE SAs we hold (no new request among them)."""
        return bool(self._known.items) and not self._new.items

    def check(self, data: bytes | memoryview) -> codec.Header | None:
        """The header of an acceptable datagram, or None (dropped and counted)."""
        if len(data) > self.max_datagram:
            self._count("oversized")
            return None
        try:
            return codec.parse_header(data)
        except MalformedMessage:
            self._count("malformed")
            return None

    def offer(self, item: Received, known: bool, now: float) -> None:
        """Queue a checked datagram (``known``: for an IKE SA we hold)."""
        checked = not known and not item.verified
        if checked and self._over_budget(now):
            if not self._cookie_answer(item, now):
                self._count("ike_busy_dropped")
                return
            checked = False  # let past for its COOKIE answer
        queue = self._known if known else self._new
        if len(queue.items) >= QUEUE_DATAGRAMS or queue.bytes + len(item.data) > QUEUE_BYTES:
            self._count("ike_queue_full")
            return
        self._arrivals += 1
        queue.items.append((self._arrivals, item, checked))
        queue.bytes += len(item.data)

    def paused_for(self, now: float) -> float:
        """Seconds the shell may leave a socket that carries only new requests (the IKE
        port) unread (0: none): while the share is in debt under pressure, and until half
        a burst is back, so that a flooded daemon sleeps in long stretches, not between
        datagrams."""
        bucket = self._new_work
        if bucket is None or not self._over_budget(now):
            return 0.0
        return (bucket.burst / 2 - bucket.tokens) / bucket.rate

    def backlogged(self) -> bool:
        """Whether new requests pile up: NEW_BACKLOG_PRESSURE of them or more wait."""
        return len(self._new.items) >= NEW_BACKLOG_PRESSURE

    def under_pressure(self, now: float) -> bool:
        """Whether the share is enforced: cookies demanded, or a deep new queue."""
        return self.backlogged() or self._pressure(now)

    def _cookie_answer(self, item: Received, now: float) -> bool:
        """Whether ``item``, over the share under pressure, is let past for the COOKIE
        answer it gets then (an IKE_SA_INIT request without a valid cookie), within
        COOKIE_ANSWER_RATE; not charged to the share."""
        return is_init_request(item.header) and self._cookie_answers.take(now)

    def _over_budget(self, now: float) -> bool:
        bucket = self._new_work
        return bucket is not None and not bucket.available(now) and self.under_pressure(now)

    def take(self) -> tuple[Received, bool] | None:
        """The datagram that arrived first, and whether the share is checked for it (not
        for a known SA's, a verified one's, or one let past for a COOKIE answer)."""
        known, new = self._known.items, self._new.items
        if not known and not new:
            return None
        queue = self._known if known and (not new or known[0][0] < new[0][0]) else self._new
        _, item, checked = queue.items.popleft()
        queue.bytes -= len(item.data)
        return item, checked

    def drain(
        self,
        handle: Callable[[Received], None],
        more: Callable[[], bool],
        now: float,
        known_now: Callable[[Received], bool] = lambda _item: False,
    ) -> int:
        """Hand queued datagrams to ``handle`` while ``more()`` (at least one); returns
        how many were handled.  The new queue's work is charged to its budget;
        ``known_now`` says whether a new one has become known meanwhile (the second copy
        of an IKE_SA_INIT whose first copy, in the same burst, made a half-open SA)."""
        handled = 0
        while (taken := self.take()) is not None:
            item, checked = taken
            bucket = self._new_work
            if bucket is None or self._clock is None or not checked:
                handle(item)  # a known SA's, a verified one's, or let past for a COOKIE answer
            elif self._over_budget(now) and not known_now(item):
                if self._cookie_answer(item, now):
                    handle(item)  # queued before the share ran out: let past all the same
                else:
                    self._count("ike_busy_dropped")  # queued before the share ran out
                    continue
            else:
                start = self._clock()
                handle(item)
                bucket.spend(self._clock() - start, now)
            handled += 1
            if not more():
                break
        return handled

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
