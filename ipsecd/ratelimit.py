"""Token buckets: how often something an attacker can trigger may happen (sans-I/O).

:class:`TokenBucket` allows ``burst`` events at once and ``rate`` per second on
average; the caller passes the clock.  :class:`SourceLimiter` keeps one bucket per
source address in a bounded table (least recently seen evicted first) behind one
bucket for all sources, so that neither one address nor many forged ones can make
an unbounded number of events; it counts what it refused per source and hands
the counts out as summaries ("N messages from X suppressed").

Every layer may import this module: it imports nothing of ipsecd.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; :meth:`take` spends one.

    For a cost known only afterwards (CPU time, say) use :meth:`available` before and
    :meth:`spend` after: the bucket may go into debt, which the refill pays off first.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:  # a clock going backwards refills nothing
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def available(self, now: float) -> bool:
        """Whether anything is left (not in debt)."""
        self._refill(now)
        return self.tokens > 0.0

    def spend(self, cost: float, now: float) -> None:
        """Spend ``cost`` tokens, into debt if need be."""
        self._refill(now)
        self.tokens -= cost


@dataclass(frozen=True)
class Suppressed:
    """``count`` events from ``source`` were refused since the last summary.

    ``source`` is None for the sources the bounded table no longer (or never) held;
    ``sources`` says how many addresses that line covers.
    """

    source: str | None
    count: int
    sources: int = 1

    def __str__(self) -> str:
        if self.source is not None:
            return f"{self.count} messages from {self.source} suppressed"
        return f"{self.count} messages from {self.sources} other sources suppressed"


class SourceLimiter:
    """A token bucket per source address (at most ``max_sources``) and one for all.

    :meth:`allow` says whether one more event from ``source`` may happen now.
    :meth:`summaries` returns, at most every ``summary_interval`` seconds, what was
    refused since the last time: one :class:`Suppressed` for each of the
    ``max_summary_lines`` busiest sources and one for all the others together.
    """

    def __init__(
        self,
        now: float,
        *,
        rate: float = 1.0,
        burst: float = 5.0,
        total_rate: float = 20.0,
        total_burst: float = 50.0,
        max_sources: int = 256,
        summary_interval: float = 10.0,
        max_summary_lines: int = 5,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.max_sources = max_sources
        self.summary_interval = summary_interval
        self.max_summary_lines = max_summary_lines
        self._total = TokenBucket(total_rate, total_burst, now)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._refused: dict[str, int] = {}  # by source, since the last summary
        self._refused_others = 0  # sources evicted from (or never in) the table
        self._others: set[str] = set()  # counted up to max_sources, then only a count
        self._other_sources = 0
        self._last_summary = now

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[source] = bucket
            while len(self._buckets) > self.max_sources:
                evicted, _ = self._buckets.popitem(last=False)
                self._fold_into_others(evicted)
        else:
            self._buckets.move_to_end(source)
        if bucket.take(now) and self._total.take(now):
            return True
        if source in self._buckets and len(self._refused) < self.max_sources:
            self._refused[source] = self._refused.get(source, 0) + 1
        else:
            self._count_other(source, 1)
        return False

    def _fold_into_others(self, source: str) -> None:
        count = self._refused.pop(source, 0)
        if count:
            self._count_other(source, count)

    def _count_other(self, source: str, count: int) -> None:
        self._refused_others += count
        if len(self._others) < self.max_sources:
            if source not in self._others:
                self._others.add(source)
                self._other_sources += 1
        else:
            self._other_sources += 1  # an estimate once the set is full

    def summary_due(self) -> float | None:
        """When :meth:`summaries` has something to say (None: nothing was refused)."""
        if not self._refused and not self._refused_others:
            return None
        return self._last_summary + self.summary_interval

    def summaries(self, now: float) -> list[Suppressed]:
        """What was refused since the last summary, if one is due (else nothing)."""
        due = self.summary_due()
        if due is None or now < due:
            return []
        self._last_summary = now
        busiest = sorted(self._refused.items(), key=lambda item: -item[1])
        lines = [Suppressed(s, n) for s, n in busiest[: self.max_summary_lines]]
        rest = busiest[self.max_summary_lines :]
        others = self._refused_others + sum(n for _, n in rest)
        sources = self._other_sources + len(rest)
        if others:
            lines.append(Suppressed(None, others, sources))
        self._refused.clear()
        self._refused_others = 0
        self._others.clear()
        self._other_sources = 0
        return lines
