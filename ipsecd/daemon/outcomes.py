"""The outcome of ``ipsecctl up|down|rekey``: what a waiting control command is answered.

A command that waits registers a :class:`Waiter` for its peer; the IKE events the daemon
core applies resolve it, or its deadline on the core's clock does.  Nothing here does
I/O: the core hands answers to the shell by ticket (:meth:`Outcomes.answers`), and the
shell answers the control connection that waits for that ticket.

Which event settles which command (``rekey-ike`` is ``rekey --ike``):

=========  =====================================  ===================================
command    succeeds on                             fails on
=========  =====================================  ===================================
up         CHILD_SA established (outbound)         negotiation failed, IKE SA deleted
down       IKE SA deleted                          (never: a Delete nobody answers
                                                   still ends the SA here)
rekey      as many CHILD_SAs established as the    negotiation failed, IKE SA deleted
           peer had when asked
rekey-ike  IKE SA established (the new one)        negotiation failed, IKE SA deleted
=========  =====================================  ===================================

"IKE SA deleted" counts when no IKE SA of the peer is left: a duplicate of crossing
initiations, or the old SA of a rekey, may go while the peer stays up.

Every waiter also ends at its deadline (``outcome: timeout``): a waiter never outlives
the wait its client asked for, and at most :data:`MAX_WAITERS` exist at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

COMMANDS = ("up", "down", "rekey", "rekey-ike")
MAX_WAIT = 3600.0  # seconds a command may wait for its outcome
MAX_WAITERS = 64
Summary = dict[str, Any]  # an IKE SA or CHILD_SA, as plain data (see DaemonCore)


@dataclass
class Waiter:
    """One control command waiting for its outcome."""

    ticket: int
    command: str  # one of COMMANDS
    peer: str
    started: float
    deadline: float
    children: int = 1  # rekey: CHILD_SAs to see established
    ike_sa: Summary | None = None  # up: the IKE SA seen established on the way
    child_sas: list[Summary] = field(default_factory=list)


class Outcomes:
    """The waiting commands of one daemon, and their answers by ticket."""

    def __init__(self) -> None:
        self._waiting: dict[int, Waiter] = {}
        self._answers: list[tuple[int, dict[str, Any]]] = []
        self._next_ticket = 1

    # -- registering ------------------------------------------------------------------------
    def ticket(self) -> int:
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        return ticket

    def wait(
        self, ticket: int, command: str, peer: str, now: float, timeout: float, *, children: int = 1
    ) -> Waiter | None:
        """Wait for ``command``'s outcome, or answer at once (None) when too many wait."""
        if len(self._waiting) >= MAX_WAITERS:
            self.answer(ticket, {"ok": False, "error": f"{MAX_WAITERS} commands already wait"})
            return None
        waiter = Waiter(ticket, command, peer, now, now + timeout, children=children)
        self._waiting[ticket] = waiter
        return waiter

    def answer(self, ticket: int, response: dict[str, Any]) -> None:
        """Answer ``ticket`` now (an immediate error or outcome; ends its wait if any)."""
        self._waiting.pop(ticket, None)
        self._answers.append((ticket, response))

    def answers(self) -> list[tuple[int, dict[str, Any]]]:
        out, self._answers = self._answers, []
        return out

    def waiting(self, peer: str) -> bool:
        return any(w.peer == peer for w in self._waiting.values())

    def deadline(self) -> float | None:
        return min((w.deadline for w in self._waiting.values()), default=None)

    # -- what resolves them -----------------------------------------------------------------
    def ike_established(self, peer: str, ike_sa: Summary, now: float) -> None:
        for w in self._for(peer):
            if w.command == "rekey-ike":
                self.succeed(w, "rekeyed", now, ike_sa=ike_sa)
            elif w.command == "up":
                w.ike_sa = ike_sa

    def child_established(
        self,
        peer: str,
        child_sa: Summary,
        outbound: bool,
        ike_sa: Callable[[], Summary | None],
        now: float,
    ) -> None:
        """``ike_sa``: the peer's IKE SA now, for a waiter that did not see it established."""
        for w in self._for(peer):
            if w.command == "up" and outbound:
                self.succeed(w, "up", now, ike_sa=w.ike_sa or ike_sa(), child_sas=[child_sa])
            elif w.command == "rekey":
                w.child_sas.append(child_sa)
                if len(w.child_sas) >= w.children:
                    self.succeed(w, "rekeyed", now, ike_sa=ike_sa(), child_sas=w.child_sas)

    def failed(self, peer: str, reason: str, now: float) -> None:
        for w in self._for(peer):
            if w.command != "down":
                self.fail(w, "failed", reason, now)

    def ike_deleted(self, peer: str, reason: str, gone: bool, now: float) -> None:
        """An IKE SA of ``peer`` was deleted; ``gone``: none of the peer's is left."""
        if not gone:  # a duplicate or a rekeyed IKE SA went; the peer's own is still there
            return
        for w in self._for(peer):
            if w.command == "down":
                self.succeed(w, "down", now, reason=reason)
            else:
                self.fail(w, "failed", f"IKE SA deleted: {reason}", now)

    def expire(self, now: float, describe: Callable[[str], str]) -> None:
        """Answer every waiter whose deadline passed; ``describe(peer)`` says where its
        peer stands (the negotiation goes on after the client stops waiting)."""
        for w in [w for w in self._waiting.values() if now >= w.deadline]:
            waited = w.deadline - w.started
            self.fail(
                w,
                "timeout",
                f"no outcome within {waited:g} s ({describe(w.peer)}); ipsecd goes on:"
                " see ipsecctl status or ipsecctl log",
                now,
            )

    def cancel_all(self, reason: str, now: float) -> None:
        """The daemon stops: answer everyone."""
        for w in list(self._waiting.values()):
            self.fail(w, "failed", reason, now)

    def _for(self, peer: str) -> list[Waiter]:
        return [w for w in self._waiting.values() if w.peer == peer]

    # -- answers ----------------------------------------------------------------------------
    def succeed(self, w: Waiter, outcome: str, now: float, **details: Any) -> None:
        """Answer ``w`` with success (once: a settled waiter stays settled)."""
        if self._waiting.get(w.ticket) is w:
            self.answer(w.ticket, {"ok": True, **_base(w, outcome, now), **details})

    def fail(self, w: Waiter, outcome: str, error: str, now: float) -> None:
        """Answer ``w`` with failure (``failed`` or ``timeout``), once."""
        if self._waiting.get(w.ticket) is w:
            self.answer(w.ticket, {"ok": False, **_base(w, outcome, now), "error": error})


def _base(w: Waiter, outcome: str, now: float) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "command": w.command,
        "peer": w.peer,
        "seconds": round(now - w.started, 3),
    }
