"""Received IKE datagrams waiting for the IKE layer: checked cheaply, bounded, known SAs first.

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

Messages for an IKE SA we hold (by our SPI) go to the *known* queue, everything else
(new IKE_SA_INIT requests, unknown SPIs) to the *new* one; the known queue is served
first, so a flood of new requests cannot delay the exchanges of established peers.
Each queue holds at most :data:`QUEUE_DATAGRAMS` datagrams and :data:`QUEUE_BYTES`
bytes; beyond, datagrams are dropped and counted (``ike_queue_full``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ipsecd.ike import message as codec
from ipsecd.ike.errors import MalformedMessage
from ipsecd.ike.events import Address

DEFAULT_MAX_IKE_DATAGRAM = 10_000  # bytes, strongSwan's charon.max_packet
QUEUE_DATAGRAMS = 256  # per queue
QUEUE_BYTES = 2 * 1024 * 1024  # per queue


@dataclass(frozen=True)
class Received:
    """One IKE datagram (without non-ESP marker) that passed the cheap checks."""

    data: bytes
    header: codec.Header
    local: Address
    remote: Address


class _Queue:
    __slots__ = ("items", "bytes")

    def __init__(self) -> None:
        self.items: deque[Received] = deque()
        self.bytes = 0


class IkeInbox:
    """The two bounded queues of received IKE datagrams; see the module docstring."""

    def __init__(self, counters: dict[str, int], max_datagram: int) -> None:
        self.counters = counters
        self.max_datagram = max_datagram
        self._known = _Queue()
        self._new = _Queue()

    def __len__(self) -> int:
        return len(self._known.items) + len(self._new.items)

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

    def offer(
        self,
        data: bytes,
        header: codec.Header,
        local: Address,
        remote: Address,
        known: bool,
    ) -> None:
        """Queue a checked datagram (``known``: for an IKE SA we hold)."""
        queue = self._known if known else self._new
        if len(queue.items) >= QUEUE_DATAGRAMS or queue.bytes + len(data) > QUEUE_BYTES:
            self._count("ike_queue_full")
            return
        queue.items.append(Received(data, header, local, remote))
        queue.bytes += len(data)

    def take(self) -> Received | None:
        """The next datagram: known SAs first, then the oldest."""
        for queue in (self._known, self._new):
            if queue.items:
                item = queue.items.popleft()
                queue.bytes -= len(item.data)
                return item
        return None

    def drain(self, handle: Callable[[Received], None], more: Callable[[], bool]) -> int:
        """Hand queued datagrams to ``handle`` while ``more()`` (at least one); returns
        how many were handled."""
        handled = 0
        while (item := self.take()) is not None:
            handle(item)
            handled += 1
            if not more():
                break
        return handled

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
