"""The IKE SA: message ids, retransmissions, the exchange queue and its lifecycle.

Sans-I/O in the style of aioquic's connection: :class:`IkeSa` is fed datagrams
and a clock value, and leaves datagrams in :attr:`IkeSa.outgoing`, events for
the shell in :attr:`IkeSa.events` and signals for its manager in
:attr:`IkeSa.signals`.

Exchanges are tasks, as in strongSwan's libcharon (``sa/ikev2/tasks``): each
module in :mod:`ipsecd.ike.exchanges` builds the request and processes the
response as initiator (:class:`InitiatorTask`) and answers a request as
responder (the :data:`Responder` of its exchange type, from the ``responders``
table the manager hands in: ``ipsecd.ike.exchanges.RESPONDERS``).  The IKE SA runs one
request at a time (window size 1, RFC 7296 §2.3) from a FIFO of tasks.

Every state change goes through :mod:`ipsecd.ike.lifecycle`, which also gives
each state its deadline (enforced in :meth:`IkeSa.handle_timer`).

Retransmissions (RFC 7296 §2.1): only the requester retransmits, with
exponential backoff (:class:`~ipsecd.ike.lifecycle.RetransmitPolicy`); the
responder answers a retransmitted request from its cached response and never
processes it twice.  A peer that answers nothing for about two minutes is
declared dead.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from itertools import count
from typing import Protocol

from ipsecd.addresses import format_address
from ipsecd.config.schema import ChildConfig, PeerConfig
from ipsecd.crypto.digests import sha256
from ipsecd.ike import message as codec
from ipsecd.ike import trace
from ipsecd.ike.child import ChildSa
from ipsecd.ike.constants import ExchangeType, NotifyType, PayloadType
from ipsecd.ike.errors import (
    INVALID_KE_PAYLOAD,
    TEMPORARY_FAILURE,
    MalformedMessage,
    ProtocolError,
    UnsupportedCriticalPayload,
)
from ipsecd.ike.events import (
    Address,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaOutboundActivated,
    Event,
    IkeRetransmit,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    OutgoingDatagram,
    PeerAddressChanged,
    UnauthenticatedFailure,
)
from ipsecd.ike.fragments import (
    Reassembler,
    ReassemblyBudget,
    default_fragment_size,
    fragment,
    fragment_number,
    open_fragment,
)
from ipsecd.ike.handshake import Handshake
from ipsecd.ike.keys import IkeKeys
from ipsecd.ike.lifecycle import (
    LIVE_STATES,
    ChildEvent,
    ChildState,
    IkeEvent,
    IkeState,
    RetransmitPolicy,
    ike_deadline,
    next_ike_state,
)
from ipsecd.ike.payloads import Notify, Payload
from ipsecd.ike.proposal_codec import ChosenProposal
from ipsecd.ratelimit import TokenBucket

__all__ = [
    "IkeSa",
    "SaContext",
    "IkeState",
    "RetransmitPolicy",
    "InitiatorTask",
    "Responder",
    "TaskResult",
    "RandomBytes",
    "SaSignal",
    "Authenticated",
    "PeerUnresponsive",
    "RestartHint",
    "Successor",
    "ChildExpired",
    "PeerDeletedChild",
    "PeerDeletedIkeSa",
    "ReauthDue",
    "ReauthComplete",
    "new_ike_spi",
]

NON_ESP_MARKER_LEN = 4  # RFC 3948 §2.2: counts against fragment_size on the NAT-T port
# Answers to retransmitted requests (RFC 7296 §2.1): a burst, then one per second per IKE SA.
RETRANSMIT_ANSWER_BURST = 3
RETRANSMIT_ANSWER_RATE = 1.0

RandomBytes = Callable[[int], bytes]
WallClock = Callable[[], datetime]  # UTC, for certificate validity (the SA clock is monotonic)


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_ike_spi(random_bytes: RandomBytes) -> int:
    """A random, non-zero 8-octet IKE SPI (RFC 7296 §2.6)."""
    while True:
        spi = int.from_bytes(random_bytes(8), "big")
        if spi:
            return spi


def _digest(data: bytes) -> bytes:
    """What a retransmitted request is compared by (RFC 7296 §2.1: the same message)."""
    return sha256(data)


def is_invalid_ike_spi(data: bytes) -> bool:
    """An unprotected INFORMATIONAL carrying N(INVALID_IKE_SPI) (RFC 7296 §2.21.4)."""
    try:
        msg = codec.parse_message(data)
    except MalformedMessage:
        return False
    return msg.exchange_type == ExchangeType.INFORMATIONAL and bool(
        msg.notifies(NotifyType.INVALID_IKE_SPI)
    )


# ---- what an IKE SA tells its manager (typed signals, never seen by the shell) ----


class SaSignal:
    """Base of the internal events an IKE SA raises for the manager to act on."""

    __slots__ = ()


@dataclass(frozen=True)
class Authenticated(SaSignal):
    """IKE_AUTH done (RFC 7296 §1.2): look for duplicates, honour N(INITIAL_CONTACT)."""

    initial_contact: bool


@dataclass(frozen=True)
class PeerUnresponsive(SaSignal):
    """An exchange of the established SA went unanswered (RFC 7296 §2.4): dpd_action."""


@dataclass(frozen=True)
class RestartHint(SaSignal):
    """INVALID_IKE_SPI answered our request (RFC 7296 §2.21.4): the peer may have restarted."""


@dataclass(frozen=True)
class Successor(SaSignal):
    """A new IKE SA made by a rekey of this one (RFC 7296 §2.18), for the SA table."""

    sa: IkeSa


@dataclass(frozen=True)
class ChildExpired(SaSignal):
    """A CHILD_SA stayed REKEYED past its deadline: the peer never deleted it (§2.8)."""

    spi_in: int


@dataclass(frozen=True)
class PeerDeletedChild(SaSignal):
    """The peer deleted a CHILD_SA of the configured child ``name`` of this IKE SA (RFC 7296
    §1.4.1): that child's ``close_action`` if none of its CHILD_SAs is left."""

    name: str = ""


@dataclass(frozen=True)
class PeerDeletedIkeSa(SaSignal):
    """The peer deleted this IKE SA (RFC 7296 §1.4.1): ``close_action`` unless another IKE
    SA of the peer (a rekey, a reauthentication) took its place."""


@dataclass(frozen=True)
class ReauthDue(SaSignal):
    """``reauth_time`` passed: set up the IKE SA that replaces this one (RFC 7296 §2.8.3)."""


@dataclass(frozen=True)
class ReauthComplete(SaSignal):
    """This IKE SA, a reauthentication of ``old``, re-created its CHILD_SAs: delete ``old``
    (make-before-break, strongSwan's ``ike_reauth_complete``)."""

    old: IkeSa


# A replaced IKE SA (rekeyed, reauthenticated, redundant after a collision) has only its
# Delete left to send, a courtesy: the peer lives on the successor, or has already dropped
# this SA unannounced (charon 5.9 after a rekey collision whose answer it ignored). Three
# retransmissions (0.5 + 1 + 2 + 4 s by default), not the full budget of a live SA.
REPLACED_SA_RETRANSMITS = 3
# The Delete of a crossing's loser that the peer initiated, when ours carried
# N(INITIAL_CONTACT) (IkeManager._delete_duplicates): the peer dropped it on that notify
# and answers nothing, or was still setting it up and ignored a first Delete that came
# before our IKE_AUTH answer (charon: "ignoring INFORMATIONAL in IKE_SA state
# CONNECTING"); one retransmission serves the second case without keeping a dead SA
# shown for the first.
DUPLICATE_DELETE_RETRANSMITS = 1


class TaskResult(Enum):
    DONE = "done"  # exchange complete; move to the next message id
    RETRY = "retry"  # rebuild and resend the request with the same message id (IKE_SA_INIT)
    STALE = "stale"  # an answer to an earlier copy of the request: keep waiting for ours


class InitiatorTask(Protocol):
    """One exchange as initiator (strongSwan ``build_i`` / ``process_i``)."""

    @property
    def exchange_type(self) -> ExchangeType: ...

    @property
    def name(self) -> str: ...

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None: ...

    def process_response(self, sa: IkeSa, message: codec.Message, now: float) -> TaskResult: ...

    def failed(self, sa: IkeSa, reason: str, now: float) -> None: ...

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None: ...


# A responder: (sa, decoded request, now) -> response payloads (ike/exchanges/__init__.py).
Responder = Callable[["IkeSa", codec.Message, float], list[Payload]]


@dataclass
class _Outstanding:
    task: InitiatorTask
    message_id: int
    datagrams: list[bytes]  # one message, or its RFC 7383 fragments (resent as they are)
    sent_at: float
    retransmits: int = 0
    next_send: float = 0.0

    @property
    def data(self) -> bytes:
        """The request as one datagram (IKE_SA_INIT is never fragmented)."""
        return self.datagrams[0]


@dataclass(frozen=True)
class CachedResponse:
    """Our answer to the peer's last request, kept for its retransmissions (RFC 7296 §2.1).

    A retransmission is answered only when it comes from ``source`` (address and port of
    the request) and is the same request: the same bytes (SHA-256 ``digest``), or for an
    RFC 7383 fragmented request its first fragment, verified with the SA's keys.
    """

    message_id: int
    datagrams: list[bytes]
    source: Address
    digest: bytes


@dataclass(frozen=True)
class SaContext:
    """What every IKE SA of one manager shares (and a rekey passes on, RFC 7296 §2.18)."""

    natt_port: int = 4500
    policy: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    responders: Mapping[int, Responder] = field(default_factory=dict, repr=False)
    random_bytes: RandomBytes = field(default=os.urandom, repr=False)
    counters: dict[str, int] = field(default_factory=dict, repr=False)
    # Serial numbers that order the SAs' beginnings and establishments (INITIAL_CONTACT).
    sequence: Iterator[int] = field(default_factory=count, repr=False)
    gateway_fragment_size: int | None = None  # gateway.fragment_size (None: by family)
    reassembly_budget: ReassemblyBudget = field(default_factory=ReassemblyBudget, repr=False)
    wall_clock: WallClock = field(default=utc_now, repr=False)
    trace: trace.Trace | None = field(default=None, repr=False)  # debug trace sink (trace.py)


@dataclass
class IkeSa:
    """One IKE SA with one peer (RFC 7296 §2).

    ``initiator`` is the *original* initiator role (fixes SPI order and
    which SK_* keys protect which direction, §2.14); each exchange also has
    its own requester, which is whoever sends the request.
    """

    peer: PeerConfig  # the candidate; may be replaced after IKE_AUTH as responder
    initiator: bool
    local: Address
    remote: Address
    context: SaContext
    created_at: float
    spi_i: int = 0
    spi_r: int = 0
    # Written by transition() only; the deadline is when the state ends (lifecycle.py).
    state: IkeState = field(default=IkeState.CREATED, init=False)
    deadline: float | None = field(default=None, init=False)
    # Message ids (RFC 7296 §2.2): ours as requester, the peer's as requester.
    next_request_id: int = 0
    expected_request_id: int = 0
    outstanding: _Outstanding | None = None
    tasks: list[InitiatorTask] = field(default_factory=list)
    cached_response: CachedResponse | None = None
    retransmit_answers: TokenBucket | None = field(default=None, repr=False)
    # Negotiated state, filled by the exchanges.
    keys: IkeKeys | None = field(default=None, repr=False)
    ike_algorithms: ChosenProposal | None = None
    nat_local: bool = False
    nat_remote: bool = False
    established_at: float | None = None
    children: dict[int, ChildSa] = field(default_factory=dict)
    candidates: tuple[PeerConfig, ...] = ()  # responder: peers it may belong to until IKE_AUTH
    # Initiator: the configured children to set up, the first with IKE_AUTH, the others
    # with CREATE_CHILD_SA once it is established (RFC 7296 §1.3.1).
    wanted_children: tuple[str, ...] = ()
    # IKE_SA_INIT as sent and received, for the AUTH payloads of IKE_AUTH (RFC 7296 §2.15).
    init_request: bytes = field(default=b"", repr=False)
    init_response: bytes = field(default=b"", repr=False)
    nonce_i: bytes = field(default=b"", repr=False)
    nonce_r: bytes = field(default=b"", repr=False)
    # Announcements, additional key exchanges, IntAuth and auth results (ike/handshake.py).
    handshake: Handshake = field(default_factory=Handshake, repr=False)
    last_error: str | None = None
    last_keepalive: float = 0.0
    last_peer_activity: float = 0.0
    after_response: Callable[[], None] | None = None  # run once the response is queued
    outgoing: list[OutgoingDatagram] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    signals: list[SaSignal] = field(default_factory=list)
    # Lifetime and rekeying (RFC 7296 §2.18), scheduled by the manager.
    rekey_at: float | None = None
    lifetime_set: bool = False
    rekey_queued: bool = False
    rekeyed_to: IkeSa | None = None  # the IKE SA that replaced this one
    rekeyed_at: float | None = None
    # Reauthentication (RFC 7296 §2.8.3): when ours is due; the SA an IKE SA of ours
    # was started to replace; and whether ``rekeyed_to`` is a reauthentication's new
    # IKE SA (whose CHILD_SAs are its own: ours stay here until this SA is deleted).
    reauth_at: float | None = None
    reauth_of: IkeSa | None = None
    reauthenticated: bool = False
    # Replaced because it lost a crossing that we decided as the new SA's responder
    # (ike/reauth.py rule 2): deleted after reauth.CROSSING_GRACE unless the peer does.
    crossed: bool = False
    # In which order this SA began and was established among the manager's SAs (serial
    # numbers of ``context.sequence``): an N(INITIAL_CONTACT) can only mean the IKE SAs
    # established before the SA carrying it began (RFC 7296 §2.4; ike/reauth.py).
    began_seq: int = field(default=0, init=False)
    established_seq: int | None = field(default=None, init=False)
    # Deleted as the peer's half of a crossing we won with INITIAL_CONTACT: its Delete
    # is retransmitted DUPLICATE_DELETE_RETRANSMITS times, silence is no sign of death.
    duplicate_delete: bool = False
    # Simultaneous IKE SA rekey (§2.8.2): the SA we created answering the peer's rekey
    # while ours was outstanding, and the lowest nonce of that exchange; decided by the
    # nonce rule once our own exchange ends.
    rekey_collision: tuple[IkeSa, bytes] | None = None
    collision_pending: bool = False  # such an SA, not yet known to survive: not used
    # IKE fragmentation (RFC 7383): the peer announced it in IKE_SA_INIT (and we did).
    fragmentation_peer: bool = False
    reassembler: Reassembler | None = None  # created at the first fragment received
    # Dead peers and restarts (RFC 7296 §2.4): settings of this SA, not one-shot flags.
    send_initial_contact: bool = False  # first IKE SA with this peer: N(INITIAL_CONTACT)
    replace_others: bool = False  # started on a restart hint: replaces the older IKE SAs

    def __post_init__(self) -> None:
        self.deadline = self._deadline_for(self.state, self.created_at)
        self.began_seq = next(self.context.sequence)

    # ---- shared with the manager's other SAs -------------------------------

    @property
    def natt_port(self) -> int:
        return self.context.natt_port

    @property
    def policy(self) -> RetransmitPolicy:
        return self.context.policy

    @property
    def counters(self) -> dict[str, int]:
        return self.context.counters

    @property
    def random_bytes(self) -> RandomBytes:
        return self.context.random_bytes

    # ---- identity --------------------------------------------------------

    @property
    def peer_name(self) -> str:
        return self.peer.name

    @property
    def local_spi(self) -> int:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def remote_spi(self) -> int:
        return self.spi_r if self.initiator else self.spi_i

    def child_config(self, name: str) -> ChildConfig:
        """The peer's configured child ``name``; its first child if there is none (any
        more, after a reload, or an SA that predates children)."""
        return self.peer.child(name) or self.peer.children[0]

    @property
    def alive(self) -> bool:
        return self.state is not IkeState.DELETED

    @property
    def peer_known(self) -> bool:
        """Whether the other end is the configured peer: we initiated to it, or it
        authenticated (IKE_AUTH, or a rekey of an authenticated SA).  Before that a
        responder SA only knows a source address (issue 12: no blame on a peer)."""
        return self.initiator or self.established_at is not None

    @property
    def who(self) -> str:
        """The other end in messages: ``peer NAME``, or ``ADDR:PORT`` while unknown."""
        return f"peer {self.peer_name}" if self.peer_known else format_address(self.remote)

    def failure_event(self, reason: str) -> Event:
        """A failure's event: the peer's, or the source address's before authentication."""
        if self.peer_known:
            return NegotiationFailed(self.peer_name, reason)
        return UnauthenticatedFailure(self.remote, reason)

    # ---- lifecycle (the only writer of ``state``) -------------------------

    def _deadline_for(self, state: IkeState, now: float) -> float | None:
        seconds = ike_deadline(state, self.policy)
        return None if seconds is None else now + seconds

    def transition(self, event: IkeEvent, now: float) -> IkeState:
        """Apply ``event`` by the lifecycle table; entering a state sets its deadline."""
        self.state = next_ike_state(self.state, event, self.peer_name)
        self.deadline = self._deadline_for(self.state, now)
        return self.state

    def child_transition(self, child: ChildSa, event: ChildEvent, now: float) -> None:
        child.transition(event, now, self.policy)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def established(self, now: float, *, initial_contact: bool) -> None:
        """IKE_AUTH verified (RFC 7296 §1.2): tell the shell and the manager."""
        self.transition(IkeEvent.AUTH_DONE, now)
        self.established_at = now
        self.established_seq = next(self.context.sequence)
        self.last_error = None
        self.events.append(self._established_event())
        self.signals.append(Authenticated(initial_contact))

    def _established_event(self) -> IkeSaEstablished:
        auth = self.handshake.auth
        return IkeSaEstablished(
            self.peer_name,
            self.local_spi,
            self.remote_spi,
            self.local,
            self.remote,
            self.nat_local,
            self.nat_remote,
            algorithm=str(self.ike_algorithms) if self.ike_algorithms is not None else "",
            auth=auth.summary() if auth is not None else "",
        )

    # ---- codec -------------------------------------------------------------

    def _message(
        self, exchange: ExchangeType, message_id: int, response: bool, payloads: list[Payload]
    ) -> codec.Message:
        return codec.Message(
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            exchange_type=exchange,
            initiator=self.initiator,
            response=response,
            message_id=message_id,
            payloads=payloads,
        )

    def encode(
        self, exchange: ExchangeType, message_id: int, response: bool, payloads: list[Payload]
    ) -> list[bytes]:
        """One message as the datagrams to send: itself, or its RFC 7383 fragments.

        SK-protected unless IKE_SA_INIT (RFC 7296 §3.14), which is never fragmented
        (RFC 7383 §2.5.3).  :attr:`fragment_size` bounds the whole UDP payload, the
        non-ESP marker included.
        """
        msg = self._message(exchange, message_id, response, payloads)
        if exchange == ExchangeType.IKE_SA_INIT:
            return [codec.encode(msg)]
        keys = self._keys()
        data = codec.encode(msg, keys=keys, sender_is_initiator=self.initiator)
        if not self.fragmentation_active:
            return [data]
        limit = self.fragment_size - (NON_ESP_MARKER_LEN if self.local[1] == self.natt_port else 0)
        if len(data) <= limit:
            return [data]
        out = fragment(msg, keys.sk_keys(self.initiator), limit)
        self.count("fragmented_messages_sent")
        self.counters["fragments_sent"] = self.counters.get("fragments_sent", 0) + len(out)
        return out

    def _keys(self) -> IkeKeys:
        if self.keys is None:
            raise MalformedMessage("encrypted message before keys")
        return self.keys

    def _decode(self, data: bytes, header: codec.Header, now: float) -> codec.Message | None:
        """Decode (and verify) one message; SKF fragments go through reassembly first.

        Returns None for a fragment that did not complete its message (RFC 7383).
        Raises :class:`MalformedMessage` (or its subclass
        :class:`UnsupportedCriticalPayload`, RFC 7296 §2.5).
        """
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            return codec.decode(data)
        keys = self._keys()
        if header.next_payload != PayloadType.SKF:
            return codec.decode(data, keys=keys, sender_is_initiator=not self.initiator)
        if self.reassembler is None:
            self.reassembler = Reassembler(self.counters, budget=self.context.reassembly_budget)
        done = self.reassembler.add(data, keys.sk_keys(not self.initiator), now)
        if done is None:
            return None
        if done.unsupported_critical is not None:
            raise UnsupportedCriticalPayload(done.unsupported_critical)
        return codec.Message.from_header(
            header, done.payloads, encrypted=True, inner=done.inner, sk_prefix=done.sk_prefix
        )

    def _fragment_authentic(self, data: bytes) -> bool:
        """An RFC 7383 fragment from the peer whose ICV verifies with this SA's keys, or
        with the keys before the last IKE_INTERMEDIATE (its retransmitted request)."""
        for keys in (self.keys, self.handshake.previous_keys):
            if keys is not None:
                opened = open_fragment(data, keys.sk_keys(not self.initiator))
                if not isinstance(opened, str):
                    return True
        return False

    # ---- sending ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue one IKE message for the shell, framed for the port we use."""
        self.outgoing.append(
            OutgoingDatagram(data, self.local, self.remote, marker=self.local[1] == self.natt_port)
        )

    def send_all(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            self.send(data)

    @property
    def fragment_size(self) -> int:
        """Largest UDP payload we send (RFC 7383 §2.5.1): peer, gateway, or by family."""
        size = self.peer.fragment_size or self.context.gateway_fragment_size
        return int(size or default_fragment_size(self.remote[0]))

    @property
    def fragmentation_active(self) -> bool:
        """Both sides announced RFC 7383 support and ours is ``fragmentation: yes``."""
        return self.fragmentation_peer and self.peer.fragmentation == "yes"

    @property
    def udp_encap(self) -> bool:
        """ESP in UDP (RFC 3948): the peer's ``encap: always``, or a NAT detected (RFC 7296
        §2.23, which is also what a peer forcing encapsulation makes us see)."""
        return self.peer.encap == "always" or self.nat_local or self.nat_remote

    def float_to_natt(self) -> None:
        """Move IKE to the NAT-T port after IKE_SA_INIT (RFC 7296 §2.23, RFC 3948).

        We always float: ESP only travels UDP-encapsulated in this daemon.
        """
        if self.local[1] != self.natt_port:
            self.local = (self.local[0], self.natt_port)
            self.remote = (self.remote[0], self.natt_port)

    def queue(self, task: InitiatorTask, now: float) -> None:
        """Append an exchange; it is started when no other request is outstanding."""
        self.tasks.append(task)
        self.kick(now)

    def kick(self, now: float) -> None:
        """Start the next queued task if the window (size 1) is free."""
        while self.outstanding is None and self.tasks and self.alive:
            task = self.tasks.pop(0)
            try:
                payloads = task.build_request(self, now)
            except ProtocolError as exc:
                task.failed(self, exc.reason, now)
                continue
            if payloads is None:  # task decided there is nothing to do
                continue
            mid = self.next_request_id
            datagrams = self.encode(task.exchange_type, mid, False, payloads)
            self.outstanding = _Outstanding(
                task, mid, datagrams, sent_at=now, next_send=now + self.policy.initial
            )
            self._trace_out(task.exchange_type, mid, False, payloads, datagrams=datagrams)
            self.send_all(datagrams)

    def resend_outstanding(self, task: InitiatorTask, now: float) -> None:
        """Rebuild the outstanding request with the same message id (COOKIE, INVALID_KE)."""
        assert self.outstanding is not None
        payloads = task.build_request(self, now) or []
        mid = self.outstanding.message_id
        datagrams = self.encode(task.exchange_type, mid, False, payloads)
        self.outstanding = _Outstanding(
            task, mid, datagrams, sent_at=now, next_send=now + self.policy.initial
        )
        self._trace_out(task.exchange_type, mid, False, payloads, datagrams=datagrams)
        self.send_all(datagrams)

    def send_one_way_informational(self, payloads: list[Payload]) -> None:
        """An INFORMATIONAL request we send once and do not wait for (RFC 7296 §2.21.2)."""
        # A new exchange: while a request is outstanding its id is still next_request_id
        # (counted up when it completes), and the peer would take a reuse of that id for a
        # retransmission and answer from its cache (§2.2).
        mid = self.next_request_id
        if self.outstanding is not None:
            mid = max(mid, self.outstanding.message_id + 1)
        datagrams = self.encode(ExchangeType.INFORMATIONAL, mid, False, payloads)
        self.next_request_id = mid + 1
        self._trace_out(ExchangeType.INFORMATIONAL, mid, False, payloads, datagrams=datagrams)
        self.send_all(datagrams)

    # ---- the debug trace (ipsecd.ike.trace) ------------------------------------

    def _trace_out(
        self,
        exchange: int,
        message_id: int,
        response: bool,
        payloads: list[Payload],
        local: Address | None = None,
        remote: Address | None = None,
        datagrams: list[bytes] | None = None,
    ) -> None:
        sink = self.context.trace
        if sink is None:
            return
        to = remote or self.remote
        line = trace.describe(
            "sending",
            exchange,
            response,
            message_id,
            trace.payload_labels(payloads),
            local or self.local,
            to,
            fragments=len(datagrams or ()),
        )
        sink(line, to, self.peer_known)

    def _trace_in(
        self, header: codec.Header, message: codec.Message, local: Address, remote: Address
    ) -> None:
        sink = self.context.trace
        if sink is None:
            return
        labels = trace.payload_labels(message.payloads)
        line = trace.describe(
            "received", header.exchange_type, header.response, header.message_id, labels,
            local, remote,
        )  # fmt: skip
        sink(line, remote, self.peer_known)

    # ---- receiving -------------------------------------------------------

    def receive(
        self, data: bytes, header: codec.Header, local: Address, remote: Address, now: float
    ) -> None:
        """One IKE message for this SA (header already parsed by the manager).

        Requests are checked against the expected message id first (RFC 7296
        §2.2): the previous id is a retransmission answered from the cache
        (:meth:`_answer_retransmit`), anything else is dropped and counted.
        Messages that do not decrypt or verify are dropped and counted, never
        answered (§2.21.1).
        """
        if header.response:
            self._receive_response(data, header, local, remote, now)
            return
        mid = header.message_id
        if self.cached_response is not None and mid == self.cached_response.message_id:
            self._answer_retransmit(self.cached_response, data, header, local, remote, now)
            return
        if mid != self.expected_request_id:
            self.count("invalid_message_id")
            return
        # Only a whole message is compared on retransmission; fragments by their ICV.
        digest = b"" if header.next_payload == PayloadType.SKF else _digest(data)
        try:
            message = self._decode(data, header, now)
        except UnsupportedCriticalPayload as exc:
            self.count("unsupported_critical_payload")
            self._peer_address(local, remote, header)
            self.last_peer_activity = now
            self._answer_request(header, None, exc.non_fatal(), local, remote, now, digest)
            return
        except MalformedMessage:
            self.count("undecryptable")
            return
        if message is None:  # an IKE fragment; the message is not complete yet
            return
        self._trace_in(header, message, local, remote)
        self._peer_address(local, remote, header)
        self.last_peer_activity = now
        self._answer_request(header, message, None, local, remote, now, digest)

    def _answer_retransmit(
        self,
        cached: CachedResponse,
        data: bytes,
        header: codec.Header,
        local: Address,
        remote: Address,
        now: float,
    ) -> None:
        """Resend our cached answer (RFC 7296 §2.1) only to the request's own source,
        only for the same request, and at most :data:`RETRANSMIT_ANSWER_RATE` per
        second after a burst: a forged or replayed "retransmission" from elsewhere must
        not make us send anything to anyone (issue 12, reflection)."""
        if remote != cached.source:
            self.count("retransmit_wrong_source")
            return
        if header.next_payload == PayloadType.SKF:
            # RFC 7383 §2.6.1: answer a fragmented retransmission once, on fragment 1,
            # and only if it is authentic (the answer may be many datagrams).
            if fragment_number(data) != 1:
                self.count("retransmit_fragment_ignored")
                return
            if not self._fragment_authentic(data):
                self.count("retransmit_fragment_forged")
                return
        elif not hmac.compare_digest(_digest(data), cached.digest):
            self.count("retransmit_mismatch")
            return
        if self.retransmit_answers is None:
            self.retransmit_answers = TokenBucket(
                RETRANSMIT_ANSWER_RATE, RETRANSMIT_ANSWER_BURST, now
            )
        if not self.retransmit_answers.take(now):
            self.count("retransmit_rate_limited")
            return
        for datagram in cached.datagrams:
            self.outgoing.append(
                OutgoingDatagram(datagram, local, remote, marker=local[1] == self.natt_port)
            )
        self.count("retransmit_answered")

    def _receive_response(
        self, data: bytes, header: codec.Header, local: Address, remote: Address, now: float
    ) -> None:
        out = self.outstanding
        if out is None or header.message_id != out.message_id:
            self.count("unexpected_response")
            return
        try:
            message = self._decode(data, header, now)
        except UnsupportedCriticalPayload as exc:
            self.count("unsupported_critical_payload")
            self._response_failed(out, f"response with {exc.reason}", now)
            return
        except MalformedMessage:
            # An unprotected INVALID_IKE_SPI (§2.21.4) is only a hint: this SA stays;
            # the manager may set up a replacement beside it (dpd_action restart).
            hint = is_invalid_ike_spi(data)
            self.count("invalid_ike_spi_received" if hint else "undecryptable")
            if hint and self.state is IkeState.DELETING:
                # The peer no longer has the SA we are deleting: done.  A forged hint
                # can only hasten what we asked for (RFC 7296 §1.4.1, §2.21.4).
                self.deleted("deleted (the peer no longer had it: INVALID_IKE_SPI)", now)
            elif hint and self.state is IkeState.ESTABLISHED and self.rekeyed_to is None:
                self.signals.append(RestartHint())
            return
        if message is None:  # an IKE fragment; the message is not complete yet
            return
        self._trace_in(header, message, local, remote)
        self._peer_address(local, remote, header)
        self.last_peer_activity = now
        self._process_response(out, message, now)

    def _answer_request(
        self,
        header: codec.Header,
        message: codec.Message | None,
        error: ProtocolError | None,
        local: Address,
        remote: Address,
        now: float,
        digest: bytes,
    ) -> None:
        fatal: ProtocolError | None = None
        payloads: list[Payload] = []
        if error is None and message is not None:
            handler = self.context.responders.get(header.exchange_type)
            if handler is None:
                self.count("unknown_exchange")
                return
            try:
                payloads = handler(self, message, now)
            except ProtocolError as exc:
                error = exc
        is_init = header.exchange_type == ExchangeType.IKE_SA_INIT
        if error is not None:
            payloads = [Notify(error.notify_type, error.notify_data)]
            # A refused IKE_SA_INIT leaves no SA behind, whatever the error (§2.6).
            if error.fatal or is_init:
                fatal = error
            elif error.notify_type not in (INVALID_KE_PAYLOAD, TEMPORARY_FAILURE):
                self.last_error = error.reason
                self.events.append(self.failure_event(error.reason))
        exchange = ExchangeType(header.exchange_type)
        responses = self.encode(exchange, header.message_id, True, payloads)
        if is_init and error is None:
            # The responder's AUTH signs its own IKE_SA_INIT response (RFC 7296 §2.15).
            self.init_response = responses[0]
        self.expected_request_id = header.message_id + 1
        self.cached_response = CachedResponse(header.message_id, responses, remote, digest)
        self._trace_out(exchange, header.message_id, True, payloads, local, remote, responses)
        for response in responses:
            self.outgoing.append(
                OutgoingDatagram(response, local, remote, marker=local[1] == self.natt_port)
            )
        if fatal is not None:
            if fatal.notify_type == INVALID_KE_PAYLOAD:
                self.count("invalid_ke_sent")
                self.transition(IkeEvent.DELETED, now)  # stateless answer, the peer retries
            else:
                self.fail(fatal.reason, now)
        if self.after_response is not None:
            callback, self.after_response = self.after_response, None
            callback()
        self.kick(now)

    def _peer_address(self, local: Address, remote: Address, header: codec.Header) -> None:
        """Follow the peer when its address/port changes behind a NAT (RFC 7296 §2.23).

        Only authenticated messages (everything after IKE_SA_INIT) may move the SA.
        """
        if header.exchange_type == ExchangeType.IKE_SA_INIT or (local, remote) == (
            self.local,
            self.remote,
        ):
            return
        self.local, self.remote = local, remote
        self.count("peer_address_updated")
        if self.state is IkeState.ESTABLISHED:
            self.events.append(PeerAddressChanged(self.peer_name, local, remote))

    def _response_failed(self, out: _Outstanding, reason: str, now: float) -> None:
        self.outstanding = None
        self.next_request_id += 1
        out.task.failed(self, reason, now)
        self.kick(now)

    def _process_response(self, out: _Outstanding, message: codec.Message, now: float) -> None:
        """A decoded, authenticated response to our outstanding request."""
        try:
            result = out.task.process_response(self, message, now)
        except ProtocolError as exc:
            self._response_failed(out, exc.reason, now)
            return
        if result is TaskResult.RETRY:
            self.resend_outstanding(out.task, now)
            return
        if result is TaskResult.STALE:
            return  # the request stays outstanding; its retransmission timer runs on
        self.outstanding = None
        self.next_request_id += 1
        self.kick(now)

    # ---- timers ----------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest of: retransmission, the state's deadline, a CHILD_SA deadline,
        the expiry of a partial fragment set."""
        if not self.alive:
            return None
        times = [t for t in (self.deadline, self._retransmit_due()) if t is not None]
        times += [c.deadline for c in self.children.values() if c.deadline is not None]
        if self.reassembler is not None and (expiry := self.reassembler.next_expiry()):
            times.append(expiry)
        return min(times) if times else None

    def _retransmit_due(self) -> float | None:
        return self.outstanding.next_send if self.outstanding is not None else None

    def handle_timer(self, now: float) -> None:
        if self.reassembler is not None:
            self.reassembler.expire(now)
        if self.deadline is not None and now >= self.deadline:
            self._deadline_passed(now)
            return
        for child in list(self.children.values()):
            if child.deadline is not None and now >= child.deadline:
                self._child_deadline_passed(child, now)
        out = self.outstanding
        if out is None or now < out.next_send or not self.alive:
            return
        limit = self.policy.max_retransmits
        if self.rekeyed_to is not None:
            limit = min(limit, REPLACED_SA_RETRANSMITS)
        if self.duplicate_delete:
            limit = min(limit, DUPLICATE_DELETE_RETRANSMITS)
        if out.retransmits >= limit:
            self.outstanding = None
            if (
                self.state is IkeState.ESTABLISHED
                and self.rekeyed_to is None
                and not self.duplicate_delete
            ):
                self.signals.append(PeerUnresponsive())
            reason = (
                f"no response from {self.remote[0]}:{self.remote[1]}"
                f" after {out.retransmits} retransmits"
                f" ({out.task.name}, {now - out.sent_at:.1f} s)"
            )
            out.task.timed_out(self, reason, now)
            self.kick(now)
            return
        out.retransmits += 1
        timeout = self.policy.initial * self.policy.factor**out.retransmits
        out.next_send = now + timeout
        self.count("retransmits")
        self.events.append(
            IkeRetransmit(
                self.peer_name,
                trace.exchange_name(out.task.exchange_type),
                out.message_id,
                out.retransmits,
                self.policy.max_retransmits,
                timeout,
                self.remote,
            )
        )
        self.send_all(out.datagrams)  # the same fragments again (RFC 7383 §2.6.1)

    def _deadline_passed(self, now: float) -> None:
        """The current state outlived its deadline (lifecycle.ike_deadline)."""
        state = self.state
        if state is IkeState.HALF_OPEN:
            # Never authenticated: nothing to report to anyone (RFC 7296 §2.6).
            self.count("half_open_expired")
            self.transition(IkeEvent.TIMEOUT, now)
            return
        self.count("ike_sa_deadline_expired")
        reason = f"IKE SA stayed {state.value} too long"
        if state is IkeState.DELETING:
            self.deleted(f"{reason} (the peer never confirmed our Delete)", now)
        else:
            self.fail(reason, now)

    def _child_deadline_passed(self, child: ChildSa, now: float) -> None:
        if child.state is ChildState.REKEYED:
            # The peer initiated the surviving rekey but never deleted this pair (§2.8).
            child.deadline = now + self.policy.exchange_deadline
            self.signals.append(ChildExpired(child.spi_in))
            return
        self.count("child_sa_deadline_expired")
        reason = f"CHILD_SA stayed {child.state.value} too long"
        self.remove_child(child, reason, now, ChildEvent.TIMEOUT)

    # ---- teardown --------------------------------------------------------

    def fail(self, reason: str, now: float) -> None:
        """Negotiation or liveness failure: report it and drop everything (no half state)."""
        self.last_error = reason
        self.events.append(self.failure_event(reason))
        self._end(IkeEvent.FAILED, reason, now)

    def deleted(self, reason: str, now: float) -> None:
        """The IKE SA ended normally (Delete sent/received, RFC 7296 §1.4.1)."""
        self._end(IkeEvent.DELETED, reason, now)

    def _end(self, event: IkeEvent, reason: str, now: float) -> None:
        was_established = self.state in (IkeState.ESTABLISHED, IkeState.DELETING)
        self.drop_children(reason, now)
        self.transition(event, now)
        self.tasks.clear()
        self.outstanding = None
        if was_established:
            self.events.append(IkeSaDeleted(self.peer_name, reason))

    def drop_children(self, reason: str, now: float) -> None:
        for child in list(self.children.values()):
            self.remove_child(child, reason, now)

    def install_child(self, child: ChildSa, now: float) -> None:
        """The child is fully negotiated: record it and tell the shell (no half-installed SA)."""
        self.child_transition(child, ChildEvent.ESTABLISHED, now)
        self.children[child.spi_in] = child
        assert child.params is not None
        self.events.append(ChildSaEstablished(self.peer_name, child.params, child.outbound_active))

    def remove_child(
        self,
        child: ChildSa,
        reason: str,
        now: float,
        event: ChildEvent = ChildEvent.IKE_GONE,
    ) -> None:
        """Forget ``child`` after ``event`` (default: its IKE SA ends, RFC 7296 §1.4.1)."""
        was_installed = child.state in LIVE_STATES
        if child.state is not ChildState.DELETED:
            self.child_transition(child, event, now)
        self.children.pop(child.spi_in, None)
        if was_installed:
            self.events.append(
                ChildSaDeleted(
                    self.peer_name,
                    child.spi_in,
                    child.spi_out,
                    reason,
                    child.name,
                    # (not when the IKE SA ends: everything it made goes with it)
                    rekeyed=child.was_rekeyed and event is not ChildEvent.IKE_GONE,
                )
            )
        if child.was_rekeyed:
            self.count("child_sa_rekeyed")
        # A rekey responder starts sending on the new SA once the old one is gone (§2.8).
        for other in self.children.values():
            if other.replaces == child.spi_in:
                other.replaces = None
                if not other.outbound_active and not other.redundant:
                    self.activate_outbound(other)

    def activate_outbound(self, child: ChildSa) -> None:
        if child.outbound_active or child.state not in LIVE_STATES:
            return
        child.outbound_active = True
        self.events.append(ChildSaOutboundActivated(self.peer_name, child.spi_in))

    # ---- IKE SA rekey (RFC 7296 §2.18) ------------------------------------

    def successor(
        self,
        *,
        initiator: bool,
        spi_i: int,
        spi_r: int,
        keys: IkeKeys,
        chosen: ChosenProposal,
        now: float,
    ) -> IkeSa:
        """The IKE SA replacing this one (§2.18), established, without children yet."""
        new = IkeSa(self.peer, initiator, self.local, self.remote, self.context, now)
        new.spi_i, new.spi_r = spi_i, spi_r
        new.keys, new.ike_algorithms = keys, chosen
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        # Fragmentation (RFC 7383) is negotiated only in IKE_SA_INIT: the new SA keeps it.
        new.fragmentation_peer = self.fragmentation_peer
        new.handshake = self.handshake.carried_over()
        new.last_keepalive = self.last_keepalive
        new.last_peer_activity = new.established_at = now
        new.reauth_at = self.reauth_at  # a rekey does not postpone the reauthentication
        new.established_seq = next(self.context.sequence)
        new.transition(IkeEvent.REKEY_DONE, now)
        return new

    def adopt_successor(self, new: IkeSa, now: float) -> None:
        """Move every CHILD_SA to ``new`` and hand it to the manager (§2.18)."""
        new.children, self.children = self.children, {}
        self.rekeyed_to = new
        self.rekeyed_at = now
        self.signals.append(Successor(new))
        self.count("ike_sa_rekeyed")
        new.events.append(new._established_event())

    def yield_to(self, theirs: IkeSa, now: float) -> None:
        """The SA the peer's rekey created replaces this one (the peer deletes this one)."""
        theirs.collision_pending = False
        self.adopt_successor(theirs, now)
        theirs.tasks, self.tasks = self.tasks, []
