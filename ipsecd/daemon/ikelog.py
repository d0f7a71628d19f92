"""What the daemon logs about IKE beyond SA events: retransmits, failures of sources that
never authenticated, and the debug trace of every IKE message (issues 12 and 13).

Anyone can send IKE_SA_INIT, so what unauthenticated input makes us log is limited per
source address (:class:`ipsecd.ratelimit.SourceLimiter`: a token bucket per address in
a bounded table behind one for all addresses); what was held back is summed up at most
every ten seconds, ``"N messages from X suppressed"``.  Such failures name the source
as ``ADDR:PORT`` and never a configured peer (:class:`~ipsecd.ike.events.UnauthenticatedFailure`).
Lines are bounded too: a reason longer than :data:`MAX_REASON` characters is cut and
says how much was left out (offered proposal lists are capped where they are written,
:func:`ipsecd.ike.proposal_codec.format_proposals`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipsecd.addresses import format_address
from ipsecd.ike import events as ev
from ipsecd.ratelimit import SourceLimiter

MAX_REASON = 2000  # characters of one failure reason in a log line


def bounded(text: str, limit: int = MAX_REASON) -> str:
    """``text``, or its first ``limit`` characters and how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text) - limit} more characters)"


class IkeLog:
    """The daemon's IKE log lines that do not belong to an SA event; see the module doc."""

    def __init__(self, log: Any, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock  # the time of the call being handled (the core's ``now``)
        now = clock()
        self.failures = SourceLimiter(now)
        self.traces = SourceLimiter(now, rate=5.0, burst=20.0, total_rate=50.0)

    def retransmit(self, event: ev.IkeRetransmit) -> None:
        """charon's ``retransmit 2 of request with message ID 0``, with the next timeout."""
        self.log.info(
            f"retransmit {event.number} of {event.exchange} request {event.message_id}",
            peer=event.peer,
            remote=format_address(event.remote),
            retransmit=event.number,
            retransmits_max=event.limit,
            next_timeout=f"{event.next_timeout:g} s",
        )

    def unauthenticated_failure(self, event: ev.UnauthenticatedFailure) -> None:
        source = format_address(event.source)
        if not self.failures.allow(event.source[0], self.clock()):
            return
        self.log.warning(
            "request from an unauthenticated source refused",
            source=source,
            reason=bounded(event.reason),
        )

    def trace(self, line: str, remote: ev.Address, known: bool) -> None:
        """The IKE layer's trace sink (:data:`ipsecd.ike.trace.Trace`), at debug level."""
        if not known and not self.traces.allow(remote[0], self.clock()):
            return
        self.log.debug(line)

    def next_summary(self) -> float | None:
        """When :meth:`summarize` has something to say."""
        times = [
            t for t in (self.failures.summary_due(), self.traces.summary_due()) if t is not None
        ]
        return min(times) if times else None

    def summarize(self, now: float) -> None:
        """Say what was held back, at the level of what was held back."""
        for summary in self.failures.summaries(now):
            self.log.warning(str(summary), suppressed="warnings", count=summary.count)
        for summary in self.traces.summaries(now):
            self.log.debug(str(summary), suppressed="trace lines", count=summary.count)
