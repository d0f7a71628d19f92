"""On-demand tunnels (``start: trap``): the first packet without a CHILD_SA starts IKE.

Sans-I/O, like strongSwan's trap policies (``start_action = trap``): the daemon
routes a trap peer's ``remote_ts`` into the TUN device from the start.  A packet
that :class:`~ipsecd.dataplane.processor.PacketProcessor` finds no SA for is offered
here (:meth:`TrapQueue.offer`, the processor's ``no_sa`` hook).  If its source lies
in a watched peer's ``local_ts`` and its destination in its ``remote_ts``:

* an idle peer is triggered once (:meth:`TrapQueue.take_triggers` tells the shell
  to initiate it) and becomes *negotiating*; further packets do not trigger again;
* the packet waits in a bounded per-peer queue (:data:`MAX_PACKETS` packets,
  :data:`MAX_BYTES` bytes); overflow is counted and dropped;
* when the CHILD_SA is installed (:meth:`TrapQueue.installed`) the queue is handed
  back to be sent through it; when the negotiation fails (:meth:`TrapQueue.failed`)
  the queue is dropped (counted) and the peer is idle again;
* once the peer's last CHILD_SA is gone (:meth:`TrapQueue.down`: idle timeout, a
  Delete from the peer), the next packet triggers again.

A peer negotiating for longer than ``retrigger_after`` seconds (its IKE SA vanished
without a verdict, say, ``ipsecctl down`` during the handshake) is triggered again
by its next packet; initiating a peer whose IKE SA is being set up is a no-op.

Packets for an *up* peer that still find no SA (selectors the peer narrowed away)
are not taken: the processor counts them as ``no_sa``.  Counters go to the dict
given at construction (the daemon's own counters).
"""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from enum import Enum

from ipsecd.dataplane.selector_index import SelectorIndex
from ipsecd.selectors import TrafficSelector

MAX_PACKETS = 64
MAX_BYTES = 256 * 1024
RETRIGGER_AFTER = 30.0  # seconds negotiating before the next packet triggers again

__all__ = ["MAX_PACKETS", "MAX_BYTES", "TrapState", "TrapQueue"]


class TrapState(Enum):
    IDLE = "idle"  # armed: the next matching packet triggers IKE
    NEGOTIATING = "negotiating"  # triggered; packets are queued until the CHILD_SA is up
    UP = "up"  # a CHILD_SA is installed


@dataclass
class _Trap:
    name: str
    ranges: tuple[tuple[int, int, int, int, int], ...]  # (version, src lo, hi, dst lo, hi)
    state: TrapState = TrapState.IDLE
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    triggered_at: float = 0.0
    serial: int = 0  # the order of the first watch: the first watched trap wins a packet
    filed: bool = False  # in the index: every trap not UP

    def matches(self, version: int, src: int, dst: int) -> bool:
        for v, sl, sh, dl, dh in self.ranges:
            if v == version and sl <= src <= sh and dl <= dst <= dh:
                return True
        return False


def _ranges(
    local_ts: Iterable[TrafficSelector], remote_ts: Iterable[TrafficSelector]
) -> tuple[tuple[int, int, int, int, int], ...]:
    remote = tuple(remote_ts)
    return tuple(
        (lt.version, lt.start, lt.end, rt.start, rt.end)
        for lt in local_ts
        for rt in remote
        if lt.version == rt.version
    )


class TrapQueue:
    """Trap state and packet queues of every on-demand peer; see the module docstring."""

    def __init__(
        self,
        counters: MutableMapping[str, int] | None = None,
        *,
        max_packets: int = MAX_PACKETS,
        max_bytes: int = MAX_BYTES,
        retrigger_after: float = RETRIGGER_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.retrigger_after = retrigger_after
        self.clock = clock
        self.traps: dict[str, _Trap] = {}
        self._triggers: list[str] = []
        # Every trap not UP, by its selectors: a packet finds its trap in a few dict
        # lookups however many peers are trapped.
        self._index: SelectorIndex[_Trap] = SelectorIndex()
        self._serial = 0
        self._names: list[str] = []  # sorted, for with_prefix

    def _file(self, trap: _Trap) -> None:
        if not trap.filed:
            for i, (v, sl, sh, dl, dh) in enumerate(trap.ranges):
                self._index.add(v, (sl, sh), (dl, dh), (trap.serial, i), trap)
            trap.filed = True

    def _unfile(self, trap: _Trap) -> None:
        if trap.filed:
            for i in range(len(trap.ranges)):
                self._index.remove((trap.serial, i), trap)
            trap.filed = False

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ---- which peers are trapped ----------------------------------------------

    def watch(
        self, name: str, local_ts: Iterable[TrafficSelector], remote_ts: Iterable[TrafficSelector]
    ) -> None:
        """Arm (or re-arm with new selectors) the trap of peer ``name``."""
        old = self.traps.get(name)
        trap = _Trap(name, _ranges(local_ts, remote_ts))
        if old is not None:
            self._unfile(old)
            trap.state, trap.queue, trap.queued_bytes = old.state, old.queue, old.queued_bytes
            trap.triggered_at, trap.serial = old.triggered_at, old.serial
        else:
            self._serial += 1
            trap.serial = self._serial
            insort(self._names, name)
        self.traps[name] = trap
        if trap.state is not TrapState.UP:
            self._file(trap)

    def unwatch(self, name: str) -> None:
        """Forget peer ``name`` (removed from the config); its queue is dropped."""
        trap = self.traps.pop(name, None)
        if trap is not None:
            self._unfile(trap)
            del self._names[bisect_left(self._names, name)]
        if trap is not None and trap.queue:
            self._count("trap_queue_dropped", len(trap.queue))
        self._triggers = [t for t in self._triggers if t != name]

    def with_prefix(self, prefix: str) -> list[str]:
        """The watched names that start with ``prefix`` (one peer's traps), in a bisection
        and not a walk over every trap."""
        names = self._names
        at = bisect_left(names, prefix)
        end = at
        while end < len(names) and names[end].startswith(prefix):
            end += 1
        return names[at:end]

    def state(self, name: str) -> TrapState | None:
        trap = self.traps.get(name)
        return trap.state if trap is not None else None

    def queued(self, name: str) -> int:
        trap = self.traps.get(name)
        return len(trap.queue) if trap is not None else 0

    # ---- packets ------------------------------------------------------------------

    def offer(self, packet: bytes, version: int, src: int, dst: int) -> bool:
        """A packet without SA (the processor's ``no_sa`` hook); True if it was taken.

        Taken means queued, or dropped as queue overflow (counted here); a packet
        not taken is the processor's ``no_sa`` drop.
        """
        trap = self._index.lookup(version, src, dst)
        if trap is None:
            return False
        if trap.state is TrapState.IDLE:
            trap.state = TrapState.NEGOTIATING
            trap.triggered_at = self.clock()
            self._triggers.append(trap.name)
            self._count("trap_triggers")
        elif self.clock() - trap.triggered_at > self.retrigger_after:
            trap.triggered_at = self.clock()
            self._triggers.append(trap.name)
            self._count("trap_retriggers")
        n = len(packet)
        if len(trap.queue) >= self.max_packets or trap.queued_bytes + n > self.max_bytes:
            self._count("trap_queue_overflow")
            return True
        trap.queue.append(packet)
        trap.queued_bytes += n
        self._count("trap_queued")
        return True

    def take_triggers(self) -> list[str]:
        """Peers to initiate now (each once per negotiation)."""
        out, self._triggers = self._triggers, []
        return out

    # ---- IKE outcomes ---------------------------------------------------------------

    def installed(self, name: str) -> list[bytes]:
        """A CHILD_SA of ``name`` is in place: the queued packets, to send through it."""
        trap = self.traps.get(name)
        if trap is None:
            return []
        trap.state = TrapState.UP
        self._unfile(trap)
        packets = list(trap.queue)
        trap.queue.clear()
        trap.queued_bytes = 0
        if packets:
            self._count("trap_queue_sent", len(packets))
        return packets

    def failed(self, name: str) -> None:
        """The negotiation ``name``'s packets triggered failed: drop them, re-arm."""
        trap = self.traps.get(name)
        if trap is None or trap.state is not TrapState.NEGOTIATING:
            return
        if trap.queue:
            self._count("trap_queue_dropped", len(trap.queue))
        trap.queue.clear()
        trap.queued_bytes = 0
        trap.state = TrapState.IDLE

    def down(self, name: str) -> None:
        """``name`` has no CHILD_SA any more: the next packet triggers again."""
        trap = self.traps.get(name)
        if trap is not None and trap.state is TrapState.UP:
            trap.state = TrapState.IDLE
            self._file(trap)
