"""Half-open IKE SAs and the admission of new IKE_SA_INIT requests (RFC 7296 §2.6).

A responder IKE SA is *half-open* from its IKE_SA_INIT answer until IKE_AUTH
completes: it holds a Diffie-Hellman result and a cached response for an
initiator whose address nobody has verified yet.  :class:`HalfOpenTable`
keeps these SAs and decides, for every IKE_SA_INIT request, before any state
is created or any Diffie-Hellman is computed:

1. a retransmission of a request we answered (same source, SPIi *and* the
   same bytes, compared by SHA-256) gets the cached answer; a different
   request with the same source and SPIi is dropped;
2. a request that created an IKE SA which was then established is a replay
   and is dropped (remembered for :data:`REPLAY_MEMORY_TIME`, at most
   :data:`REPLAY_MEMORY_SIZE` requests);
3. at ``half_open_limit`` half-open SAs every new request is dropped; at
   ``half_open_per_source`` half-open SAs from one address, new requests
   from that address are dropped (strongSwan's ``block_threshold``);
4. from ``cookie_threshold`` half-open SAs on, a request without a valid
   COOKIE gets only a COOKIE answer (:mod:`ipsecd.ike.cookies`); cookies
   stay on until no request needed one for :data:`COOKIE_CALMDOWN` seconds
   (as in strongSwan), so the retransmissions of one initiator are not
   answered with and without a cookie in turn.

No amplification: nothing is sent in answer to an unauthenticated request
that is more than :data:`AMPLIFICATION_FACTOR` times its size; such an answer
is dropped and counted (``amplification_refused``) and leaves no SA behind.
Half-open SAs expire after ``RetransmitPolicy.half_open_timeout`` (30 s).

Counters (in the manager's ``counters``): ``cookies_sent``,
``cookies_valid``, ``cookies_invalid`` (``cookies_stale`` for the stale
ones among them), ``half_open_dropped`` (global limit),
``half_open_source_dropped`` (per-source limit), ``init_replays``,
``init_request_mismatch``, ``amplification_refused``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ipsecd.config.schema import GatewayConfig
from ipsecd.ike import message as codec
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.cookies import CookieCheck, CookieSecrets
from ipsecd.ike.errors import MalformedMessage
from ipsecd.ike.payloads import KeyExchange, Nonce, Notify, SecurityAssociation
from ipsecd.ike.sa import IkeSa

DEFAULT_COOKIE_THRESHOLD = 10  # like strongSwan's charon.cookie_threshold
DEFAULT_HALF_OPEN_PER_SOURCE = 5  # like charon.block_threshold
DEFAULT_HALF_OPEN_LIMIT = 1000
AMPLIFICATION_FACTOR = 3  # an answer to an unauthenticated request: at most 3x its size
REPLAY_MEMORY_SIZE = 4096
REPLAY_MEMORY_TIME = 3600.0
COOKIE_CALMDOWN = 10.0  # seconds cookies stay on after the count fell below the threshold

Key = tuple[str, int]  # (source address, SPIi)


@dataclass(frozen=True)
class DosLimits:
    """The gateway's DoS settings (``cookie_threshold``, ``half_open_*``)."""

    cookie_threshold: int = DEFAULT_COOKIE_THRESHOLD
    half_open_per_source: int = DEFAULT_HALF_OPEN_PER_SOURCE
    half_open_limit: int = DEFAULT_HALF_OPEN_LIMIT

    @classmethod
    def from_gateway(cls, gateway: GatewayConfig) -> DosLimits:
        return cls(
            cookie_threshold=gateway.cookie_threshold,
            half_open_per_source=gateway.half_open_per_source,
            half_open_limit=gateway.half_open_limit,
        )


@dataclass(frozen=True)
class Admission:
    """What to do with one IKE_SA_INIT request (exactly one of the three, or drop)."""

    retransmit_of: IkeSa | None = None  # answer from this SA's cache
    reply: bytes | None = None  # send this stateless answer (COOKIE) and keep nothing
    accept: bool = False  # create a responder SA

    @property
    def drop(self) -> bool:
        return self.retransmit_of is None and self.reply is None and not self.accept


DROP = Admission()
ACCEPT = Admission(accept=True)


def amplifies(request_len: int, answers: list[bytes]) -> bool:
    """True if any answer is more than :data:`AMPLIFICATION_FACTOR` times the request."""
    return any(len(a) > AMPLIFICATION_FACTOR * request_len for a in answers)


def cookie_answer(spi_i: int, message_id: int, cookie: bytes) -> bytes:
    """``HDR(SPIi, 0), N(COOKIE)``: the whole stateless answer (RFC 7296 §2.6)."""
    return codec.encode(
        codec.Message(
            spi_i=spi_i,
            spi_r=0,
            exchange_type=ExchangeType.IKE_SA_INIT,
            message_id=message_id,
            response=True,
            payloads=(Notify(NotifyType.COOKIE, cookie),),
        )
    )


def _nonce_and_cookie(data: bytes) -> tuple[bytes, bytes | None] | None:
    """Ni and the COOKIE notify data of a request, or None when it is unusable."""
    try:
        msg = codec.decode(data)
    except MalformedMessage:
        return None
    nonce = msg.find(Nonce)
    if nonce is None or msg.find(KeyExchange) is None or msg.find(SecurityAssociation) is None:
        return None
    if not 16 <= len(nonce.data) <= 256:
        return None
    cookies = msg.notifies(NotifyType.COOKIE)
    return bytes(nonce.data), (bytes(cookies[0].data) if cookies else None)


class HalfOpenTable:
    """Responder SAs waiting for IKE_AUTH, by (source address, SPIi); see the module doc."""

    def __init__(self, limits: DosLimits, counters: dict[str, int], now: float) -> None:
        self.limits = limits
        self.counters = counters
        self.cookies = CookieSecrets(now)
        self._sas: dict[Key, IkeSa] = {}
        self._digests: dict[Key, bytes] = {}
        self._keys: dict[int, Key] = {}  # by our (responder) SPI
        self._per_source: Counter[str] = Counter()
        self._replays: OrderedDict[bytes, float] = OrderedDict()
        self._cookies_until = float("-inf")  # calm-down: cookies stay on until then
        self._now = now

    # ---- the mapping view (tests, status) -------------------------------------

    def __len__(self) -> int:
        return len(self._sas)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._sas)

    def __contains__(self, key: object) -> bool:
        return key in self._sas

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self._sas == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mutable mapping view: unhashable

    def get(self, key: Key) -> IkeSa | None:
        return self._sas.get(key)

    def holds(self, sa: IkeSa) -> bool:
        """Whether ``sa`` is half-open (answered IKE_SA_INIT, not authenticated yet)."""
        key = self._keys.get(sa.local_spi)
        return key is not None and self._sas.get(key) is sa

    def per_source(self, address: str) -> int:
        return self._per_source.get(address, 0)

    @property
    def cookies_required(self) -> bool:
        """Whether a new request must carry a COOKIE (as of the last request or clock)."""
        return len(self._sas) >= self.limits.cookie_threshold or self._now < self._cookies_until

    def _update_cookies(self, now: float) -> bool:
        self._now = max(self._now, now)
        if len(self._sas) >= self.limits.cookie_threshold:
            self._cookies_until = self._now + COOKIE_CALMDOWN
            return True
        return self._now < self._cookies_until

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The gateway part of ``ipsecctl status`` (``now``: the calm-down is judged by the
        clock, not only as of the last request)."""
        if now is not None:
            self._now = max(self._now, now)
        return {
            "half_open": len(self._sas),
            "cookies_required": self.cookies_required,
            "cookie_threshold": self.limits.cookie_threshold,
            "half_open_per_source": self.limits.half_open_per_source,
            "half_open_limit": self.limits.half_open_limit,
        }

    # ---- admission ----------------------------------------------------------

    def admit(self, data: bytes, spi_i: int, message_id: int, source: str, now: float) -> Admission:
        """Decide about one IKE_SA_INIT request (SPIr 0) before anything is computed."""
        key = (source, spi_i)
        digest = hashlib.sha256(data).digest()
        existing = self._sas.get(key)
        if existing is not None and existing.alive:
            if hmac.compare_digest(self._digests[key], digest):
                return Admission(retransmit_of=existing)
            self._count("init_request_mismatch")
            return DROP
        if self._replayed(digest, now):
            self._count("init_replays")
            return DROP
        if len(self._sas) >= self.limits.half_open_limit:
            self._count("half_open_dropped")
            return DROP
        if self._per_source[source] >= self.limits.half_open_per_source:
            self._count("half_open_source_dropped")
            return DROP
        if not self._update_cookies(now):
            return ACCEPT
        parsed = _nonce_and_cookie(data)
        if parsed is None:
            self._count("malformed")
            return DROP
        nonce, cookie = parsed
        if cookie is not None:
            check = self.cookies.check(cookie, nonce, source, spi_i, now)
            if check is CookieCheck.VALID:
                self._count("cookies_valid")
                return ACCEPT
            self._count("cookies_invalid")
            if check is CookieCheck.STALE:
                self._count("cookies_stale")
        answer = cookie_answer(spi_i, message_id, self.cookies.make(nonce, source, spi_i, now))
        if amplifies(len(data), [answer]):
            self._count("amplification_refused")
            return DROP
        self._count("cookies_sent")
        return Admission(reply=answer)

    def refuse_amplification(self, request: bytes, answers: list[bytes]) -> bool:
        """Count and report an answer that would amplify (the caller drops it)."""
        if amplifies(len(request), answers):
            self._count("amplification_refused")
            return True
        return False

    # ---- bookkeeping --------------------------------------------------------

    def add(self, sa: IkeSa, request: bytes, source: str) -> None:
        """``sa`` answered ``request`` and waits for IKE_AUTH."""
        key = (source, sa.spi_i)
        self._sas[key] = sa
        self._digests[key] = hashlib.sha256(request).digest()
        self._keys[sa.local_spi] = key
        self._per_source[source] += 1

    def discard(self, sa: IkeSa) -> bytes | None:
        """Forget ``sa`` (established, failed or expired); returns its request digest."""
        key = self._keys.pop(sa.local_spi, None)
        if key is None or self._sas.get(key) is not sa:
            return None
        del self._sas[key]
        self._per_source[key[0]] -= 1
        if self._per_source[key[0]] <= 0:
            del self._per_source[key[0]]
        return self._digests.pop(key)

    def established(self, sa: IkeSa, now: float) -> None:
        """IKE_AUTH done: the SA is no longer half-open; its request must not come back."""
        digest = self.discard(sa)
        if digest is None:
            return
        self._replays[digest] = now + REPLAY_MEMORY_TIME
        self._replays.move_to_end(digest)
        while len(self._replays) > REPLAY_MEMORY_SIZE:
            self._replays.popitem(last=False)

    def _replayed(self, digest: bytes, now: float) -> bool:
        while self._replays:  # oldest first: drop what has expired
            oldest, until = next(iter(self._replays.items()))
            if until > now:
                break
            del self._replays[oldest]
        return digest in self._replays

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
