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
   answered with and without a cookie in turn.  They are also demanded while
   new requests pile up in the inbox (``backlogged``: at least
   ``inbox.NEW_BACKLOG_PRESSURE`` waiting), whatever ``cookie_threshold`` says:
   the inbox then limits anonymous requests to a small share of the daemon's
   time, and a cookie answer is what costs least in it, while the requests that
   come back with the cookie have a share of their own (:mod:`ipsecd.ike.inbox`).

Cheap checks first (issue 12): before any of this the request passed the
size and header checks of :mod:`ipsecd.ike.inbox`; admission then reads only
the generic payload headers (:func:`scan_init`: at most
:data:`MAX_INIT_PAYLOADS` of them, bodies skipped but for the nonce and the
first COOKIE notify) and decodes the whole message only once it is accepted.
A request with an unknown critical payload is answered with
UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296 §2.5), statelessly, cookies or not.

No amplification: nothing is sent in answer to an unauthenticated request
that is larger than the request, except the IKE_SA_INIT answer and a COOKIE
(at most :data:`AMPLIFICATION_FACTOR` times the request): error notifies
(INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN, INVALID_SYNTAX,
UNSUPPORTED_CRITICAL_PAYLOAD) are held to 1x (:func:`answer_limit`).  An
answer beyond its bound is dropped and counted (``amplification_refused``) and
leaves no SA behind.  Half-open SAs expire after
``RetransmitPolicy.half_open_timeout`` (30 s).

Counters (in the manager's ``counters``): ``cookies_sent``,
``cookies_valid``, ``cookies_invalid`` (``cookies_stale`` for the stale
ones among them), ``half_open_dropped`` (global limit),
``half_open_source_dropped`` (per-source limit), ``init_replays``,
``init_request_mismatch``, ``amplification_refused``, ``malformed``,
``unsupported_critical_payload``.
"""

from __future__ import annotations

import hmac
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ipsecd.config.schema import GatewayConfig
from ipsecd.crypto.digests import sha256
from ipsecd.ike import message as codec
from ipsecd.ike.constants import (
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    NONCE_MAX_LEN,
    NONCE_MIN_LEN,
    ExchangeType,
    NotifyType,
    PayloadType,
)
from ipsecd.ike.cookies import CookieCheck, CookieSecrets
from ipsecd.ike.errors import MalformedMessage
from ipsecd.ike.payloads import Notify
from ipsecd.ike.sa import IkeSa

DEFAULT_COOKIE_THRESHOLD = 10  # like strongSwan's charon.cookie_threshold
DEFAULT_HALF_OPEN_PER_SOURCE = 5  # like charon.block_threshold
DEFAULT_HALF_OPEN_LIMIT = 1000
AMPLIFICATION_FACTOR = 3  # an IKE_SA_INIT answer or COOKIE: at most 3x the request
ERROR_ANSWER_FACTOR = 1  # an error notify answering an unauthenticated request: at most 1x
MAX_INIT_PAYLOADS = 64  # payloads an IKE_SA_INIT request may carry (charon sends ~15)
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
    reply_notify: int = 0  # the one notify type the reply carries (for the trace)

    @property
    def drop(self) -> bool:
        return self.retransmit_of is None and self.reply is None and not self.accept


DROP = Admission()
ACCEPT = Admission(accept=True)


def answer_limit(request_len: int, *, error: bool) -> int:
    """The largest answer to an unauthenticated request of ``request_len`` bytes."""
    return request_len * (ERROR_ANSWER_FACTOR if error else AMPLIFICATION_FACTOR)


def amplifies(request_len: int, answers: list[bytes], *, error: bool = False) -> bool:
    """True if any answer is larger than :func:`answer_limit` allows."""
    limit = answer_limit(request_len, error=error)
    return any(len(a) > limit for a in answers)


def _stateless_answer(spi_i: int, message_id: int, notify: Notify) -> bytes:
    return codec.encode(
        codec.Message(
            spi_i=spi_i,
            spi_r=0,
            exchange_type=ExchangeType.IKE_SA_INIT,
            message_id=message_id,
            response=True,
            payloads=(notify,),
        )
    )


def cookie_answer(spi_i: int, message_id: int, cookie: bytes) -> bytes:
    """``HDR(SPIi, 0), N(COOKIE)``: the whole stateless answer (RFC 7296 §2.6)."""
    return _stateless_answer(spi_i, message_id, Notify(NotifyType.COOKIE, cookie))


def unsupported_critical_answer(spi_i: int, message_id: int, payload_type: int) -> bytes:
    """``HDR(SPIi, 0), N(UNSUPPORTED_CRITICAL_PAYLOAD, type)`` (RFC 7296 §2.5, §3.10.1)."""
    notify = Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([payload_type & 0xFF]))
    return _stateless_answer(spi_i, message_id, notify)


@dataclass(frozen=True)
class InitScan:
    """What admission needs of an IKE_SA_INIT request, read from its payload headers."""

    nonce: bytes | None  # Ni, the first Nonce payload's body
    cookie: bytes | None  # the data of the first N(COOKIE)
    complete: bool  # SA, KE and Nonce are all there (RFC 7296 §1.2)
    unsupported_critical: int | None  # the first unknown payload marked critical (§2.5)


def _cookie_first(data: bytes) -> bool:
    """The header announces a Notify first, and that Notify's type is COOKIE (RFC 7296
    §3.1, §3.10: next payload at byte 16; the Notify's type at bytes 6-7 of its body)."""
    at = IKE_HEADER_LEN + 4  # the Notify's generic header, then protocol and SPI size
    return (
        len(data) >= at + 4
        and data[16] == PayloadType.NOTIFY
        and int.from_bytes(data[at + 2 : at + 4], "big") == NotifyType.COOKIE
    )


def _nonce_fits(nonce: bytes) -> bool:
    """The Ni a cookie is computed over has the lengths RFC 7296 §3.9 allows."""
    return NONCE_MIN_LEN <= len(nonce) <= NONCE_MAX_LEN


def scan_init(data: bytes) -> InitScan:
    """Walk the payload chain of an IKE_SA_INIT request by its generic headers only.

    Reads the body of the first Nonce and of Notify payloads up to their type, nothing
    else: the cost is bounded by :data:`MAX_INIT_PAYLOADS`, not by the datagram's size.
    Raises :class:`MalformedMessage` for a chain that does not fit, too many payloads,
    or an IKE major version other than 2 (§2.5).
    """
    header = codec.parse_header(data)
    if header.major_version != IKE_MAJOR_VERSION:
        raise MalformedMessage(f"IKE major version {header.major_version}, expected 2")
    nonce: bytes | None = None
    cookie: bytes | None = None
    seen: set[int] = set()
    critical: int | None = None
    chain = codec.walk_chain(data, IKE_HEADER_LEN, header.next_payload, MAX_INIT_PAYLOADS)
    for h in chain:
        kind = h.payload_type
        seen.add(kind)
        if kind == PayloadType.NONCE and nonce is None:
            nonce = bytes(data[h.start : h.end])
        elif kind == PayloadType.NOTIFY and cookie is None and h.end - h.start >= 4:
            spi_size, notify_type = (
                data[h.start + 1],
                int.from_bytes(data[h.start + 2 : h.start + 4]),
            )
            if notify_type == NotifyType.COOKIE and h.start + 4 + spi_size <= h.end:
                cookie = bytes(data[h.start + 4 + spi_size : h.end])
        elif h.unknown_critical and critical is None:
            critical = kind
    complete = {PayloadType.SA, PayloadType.KE, PayloadType.NONCE} <= seen
    return InitScan(nonce, cookie, complete, critical)


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
        # Requests of SAs that were established: by SPIi, (digest, remembered until).
        self._replays: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
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

    def cookies_required_at(self, now: float) -> bool:
        """Whether a new request must carry a COOKIE, the calm-down judged at ``now``."""
        self._now = max(self._now, now)
        return self.cookies_required

    def _update_cookies(self, now: float, backlogged: bool = False) -> bool:
        self._now = max(self._now, now)
        if backlogged or len(self._sas) >= self.limits.cookie_threshold:
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

    def admit(
        self,
        data: bytes,
        spi_i: int,
        message_id: int,
        source: str,
        now: float,
        *,
        backlogged: bool = False,
    ) -> Admission:
        """Decide about one IKE_SA_INIT request (SPIr 0) before anything is computed
        (``backlogged``: new requests pile up in the inbox; cookies are demanded)."""
        key = (source, spi_i)
        # Hashing waits until an SPI matches: a flood of new SPIs costs no SHA-256.
        existing = self._sas.get(key)
        if existing is not None and existing.alive:
            if hmac.compare_digest(self._digests[key], sha256(data)):
                return Admission(retransmit_of=existing)
            self._count("init_request_mismatch")
            return DROP
        if self._replayed(spi_i, data, now):
            self._count("init_replays")
            return DROP
        if len(self._sas) >= self.limits.half_open_limit:
            self._count("half_open_dropped")
            return DROP
        if self._per_source[source] >= self.limits.half_open_per_source:
            self._count("half_open_source_dropped")
            return DROP
        try:
            scan = scan_init(data)
        except MalformedMessage:
            self._count("malformed")  # nothing kept, nothing answered (§2.21.1)
            return DROP
        if scan.unsupported_critical is not None:
            return self._stateless(
                data,
                unsupported_critical_answer(spi_i, message_id, scan.unsupported_critical),
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                error=True,
            )
        if not self._update_cookies(now, backlogged):
            return ACCEPT
        nonce = scan.nonce
        if nonce is None or not scan.complete or not _nonce_fits(nonce):
            self._count("malformed")
            return DROP
        if scan.cookie is not None:
            check = self.cookies.check(scan.cookie, nonce, source, spi_i, now)
            if check is CookieCheck.VALID:
                self._count("cookies_valid")
                return ACCEPT
            self._count("cookies_invalid")
            if check is CookieCheck.STALE:
                self._count("cookies_stale")
        answer = cookie_answer(spi_i, message_id, self.cookies.make(nonce, source, spi_i, now))
        return self._stateless(data, answer, NotifyType.COOKIE, error=False)

    def carries_valid_cookie(self, data: bytes, spi_i: int, source: str, now: float) -> bool:
        """Whether an IKE_SA_INIT request brings a valid COOKIE (asked while they are demanded):
        its source is real, so the inbox gives it the verified share. A scan and an HMAC,
        nothing kept or counted (:meth:`admit` decides and counts when it is handled).

        Only a request whose first payload is N(COOKIE), where RFC 7296 §2.6 puts it, is
        scanned: the rest of a flood costs a look at two fields (a request with the
        COOKIE elsewhere is still admitted by :meth:`admit`, without the verified share).
        """
        if not _cookie_first(data):
            return False
        try:
            scan = scan_init(data)
        except MalformedMessage:
            return False
        if scan.cookie is None or scan.nonce is None or not _nonce_fits(scan.nonce):
            return False
        check = self.cookies.check(scan.cookie, scan.nonce, source, spi_i, now)
        return check is CookieCheck.VALID

    def _stateless(self, request: bytes, answer: bytes, notify: int, *, error: bool) -> Admission:
        """Send ``answer`` and keep nothing, unless it is larger than its bound allows."""
        if self.refuse_amplification(request, [answer], error=error):
            return DROP
        self._count(
            "cookies_sent" if notify == NotifyType.COOKIE else "unsupported_critical_payload"
        )
        return Admission(reply=answer, reply_notify=notify)

    def refuse_amplification(
        self, request: bytes, answers: list[bytes], *, error: bool = False
    ) -> bool:
        """Count and report an answer beyond :func:`answer_limit` (the caller drops it)."""
        if amplifies(len(request), answers, error=error):
            self._count("amplification_refused")
            return True
        return False

    # ---- bookkeeping --------------------------------------------------------

    def add(self, sa: IkeSa, request: bytes, source: str) -> None:
        """``sa`` answered ``request`` and waits for IKE_AUTH."""
        key = (source, sa.spi_i)
        self._sas[key] = sa
        self._digests[key] = sha256(request)
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
        self._replays[sa.spi_i] = (digest, now + REPLAY_MEMORY_TIME)
        self._replays.move_to_end(sa.spi_i)
        while len(self._replays) > REPLAY_MEMORY_SIZE:
            self._replays.popitem(last=False)

    def _replayed(self, spi_i: int, data: bytes, now: float) -> bool:
        while self._replays:  # oldest first: drop what has expired
            oldest, (_, until) = next(iter(self._replays.items()))
            if until > now:
                break
            del self._replays[oldest]
        known = self._replays.get(spi_i)
        return known is not None and hmac.compare_digest(known[0], sha256(data))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
