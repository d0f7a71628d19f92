"""The answers to the peer's Delete of an IKE SA, kept a while after the SA is gone.

An IKE SA the peer deletes ends when our answer goes out (RFC 7296 §1.4.1).  If that
answer is lost, the peer retransmits its Delete to SPIs we no longer know, and the
INVALID_IKE_SPI it then gets is unauthenticated, so an implementation need not believe it
(§2.21.4): charon 5.9 keeps the IKE SA and its CHILD_SAs and retransmits until it gives
up, tens of seconds.  §2.1 asks a responder to answer a retransmitted request from its
cache; :class:`ClosedAnswers` keeps that cache (the encrypted datagrams only: no keys)
for :data:`LINGER` seconds after the SA ends.

What a stranger can do with it: nothing creates an entry but an authenticated Delete,
the entries are bounded (:data:`CAPACITY`, oldest first out), and an entry answers only
its own request (the same SPIs, message ID, source address and bytes) at most
:data:`ANSWERS` times, each answer the size of the one already sent.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass, field

from ipsecd.crypto.digests import sha256
from ipsecd.ike.events import Address
from ipsecd.ike.sa import CachedResponse

LINGER = 60.0  # seconds: charon's first four retransmissions (4, 7.2, 13, 23.3 s apart)
CAPACITY = 1024  # entries, all peers together
ANSWERS = 4  # resends per entry


@dataclass
class ClosedAnswer:
    """Our answer to the request that deleted an IKE SA (the SA's cache, sent from
    ``local``)."""

    remote_spi: int
    cached: CachedResponse
    local: Address
    expires: float
    answers_left: int = field(default=ANSWERS)


class ClosedAnswers:
    """The answers of recently deleted IKE SAs, by our SPI (see the module docstring)."""

    def __init__(self, linger: float = LINGER, capacity: int = CAPACITY) -> None:
        self.linger = linger
        self.capacity = capacity
        self._answers: OrderedDict[int, ClosedAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def keep(
        self,
        local_spi: int,
        remote_spi: int,
        cached: CachedResponse,
        local: Address,
        now: float,
    ) -> None:
        """Remember the answer to the Delete of the IKE SA ``local_spi`` (its cached
        response); one to a fragmented request (no digest) is not kept."""
        self.expire(now)
        if not cached.digest or not cached.datagrams:
            return
        self._answers.pop(local_spi, None)
        while len(self._answers) >= self.capacity:
            self._answers.popitem(last=False)
        self._answers[local_spi] = ClosedAnswer(remote_spi, cached, local, now + self.linger)

    def expire(self, now: float) -> None:
        """Drop the entries whose time is up (all entries linger equally: oldest first)."""
        while self._answers:
            spi, first = next(iter(self._answers.items()))
            if first.expires > now:
                return
            del self._answers[spi]

    def answer(
        self,
        local_spi: int,
        remote_spi: int,
        message_id: int,
        data: bytes,
        source: Address,
        now: float,
    ) -> tuple[str, ClosedAnswer | None]:
        """Whether ``data`` retransmits the request an entry answered: a counter name and
        the entry to resend (``None``: send nothing).  ``"unknown_spi"`` when no entry is
        about this request at all, so that the caller goes on as for any unknown SPI."""
        self.expire(now)
        entry = self._answers.get(local_spi)
        if entry is None or entry.remote_spi != remote_spi or entry.cached.message_id != message_id:
            return "unknown_spi", None
        if source != entry.cached.source:
            return "retransmit_wrong_source", None
        if not hmac.compare_digest(sha256(data), entry.cached.digest):
            return "retransmit_mismatch", None
        if entry.answers_left <= 0:
            return "retransmit_rate_limited", None
        entry.answers_left -= 1
        return "closed_retransmit_answered", entry
