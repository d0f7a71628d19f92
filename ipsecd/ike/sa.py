"""The IKE SA: states, message ids, retransmissions and the exchange queue.

Sans-I/O in the style of aioquic's connection: :class:`IkeSa` is fed decoded
datagrams and a clock value, and leaves datagrams in :attr:`IkeSa.outgoing`
and events in :attr:`IkeSa.events` for its manager to collect.

Exchanges are tasks, as in strongSwan's libcharon (``sa/ikev2/tasks``): each
module in :mod:`ipsecd.ike.exchanges` builds the request and processes the
response as initiator (:class:`InitiatorTask`) and answers a request as
responder.  The IKE SA runs one request at a time (window size 1, RFC 7296
§2.3) from a FIFO of tasks.

Retransmissions (RFC 7296 §2.1): only the requester retransmits, with
exponential backoff (0.5 s doubling, :class:`RetransmitPolicy`); the
responder answers a retransmitted request from its cached response and never
processes it twice.  A peer that answers nothing for about two minutes is
declared dead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ipsecd.ike.errors import INVALID_KE_PAYLOAD, TEMPORARY_FAILURE, ProtocolError
from ipsecd.ike.events import (
    Address,
    ChildSaDeleted,
    Event,
    IkeSaDeleted,
    NegotiationFailed,
    OutgoingDatagram,
)

if TYPE_CHECKING:
    from ipsecd.ike.child import ChildSa
    from ipsecd.ike.fragments import Reassembler, ReassemblyBudget


IKE_SA_INIT_EXCHANGE = 34  # RFC 7296 §3.1 exchange type


class IkeState(Enum):
    """IKE SA states (RFC 7296 §1.2 exchange order)."""

    CREATED = "created"  # initiator: nothing sent yet
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request outstanding
    HALF_OPEN = "half-open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request outstanding
    ESTABLISHED = "established"
    DELETING = "deleting"  # we sent a Delete for the IKE SA
    DELETED = "deleted"  # terminal: gone (deleted, failed or timed out)


# The one table of IKE SA transitions: (state, trigger) -> next state.
IKE_TRANSITIONS: dict[tuple[IkeState, str], IkeState] = {
    (IkeState.CREATED, "init_sent"): IkeState.INIT_SENT,
    (IkeState.INIT_SENT, "init_retry"): IkeState.INIT_SENT,  # COOKIE / INVALID_KE_PAYLOAD
    (IkeState.INIT_SENT, "auth_sent"): IkeState.AUTH_SENT,
    (IkeState.CREATED, "init_answered"): IkeState.HALF_OPEN,
    (IkeState.AUTH_SENT, "auth_done"): IkeState.ESTABLISHED,
    (IkeState.HALF_OPEN, "auth_done"): IkeState.ESTABLISHED,
    (IkeState.ESTABLISHED, "delete_sent"): IkeState.DELETING,
    (IkeState.ESTABLISHED, "delete_received"): IkeState.DELETED,
    (IkeState.DELETING, "delete_received"): IkeState.DELETED,
    (IkeState.DELETING, "deleted"): IkeState.DELETED,
    (IkeState.CREATED, "rekey_done"): IkeState.ESTABLISHED,  # successor of a rekey (§2.18)
    # Failures and timeouts end every state.
    **{(s, "failed"): IkeState.DELETED for s in IkeState},
    **{(s, "timeout"): IkeState.DELETED for s in IkeState},
}


class IllegalTransition(RuntimeError):
    """A bug: the code asked for a transition the table does not have."""


@dataclass(frozen=True)
class RetransmitPolicy:
    """RFC 7296 §2.1 retransmission timing.

    The request is resent ``initial * factor**n`` seconds after the previous
    send, ``max_retransmits`` times; after the last wait the peer is declared
    dead.  Defaults: 0.5, 1, 2, ... 64 s, 7 retransmits, giving up after
    127.5 s.  ``retry_pause`` is how long an initiating peer waits before the
    next connection attempt; ``half_open_timeout`` how long a responder keeps
    an SA that never saw IKE_AUTH.
    """

    initial: float = 0.5
    factor: float = 2.0
    max_retransmits: int = 7
    retry_pause: float = 30.0
    half_open_timeout: float = 30.0

    def give_up_after(self) -> float:
        return sum(self.initial * self.factor**n for n in range(self.max_retransmits + 1))


class TaskResult(Enum):
    DONE = "done"  # exchange complete; move to the next message id
    RETRY = "retry"  # rebuild and resend the request with the same message id (IKE_SA_INIT)


class InitiatorTask(Protocol):
    """One exchange as initiator (strongSwan ``build_i`` / ``process_i``)."""

    exchange_type: int
    name: str

    def build_request(self, sa: IkeSa, now: float) -> list[Any]: ...

    def process_response(self, sa: IkeSa, message: Any, now: float) -> TaskResult: ...

    def failed(self, sa: IkeSa, reason: str, now: float) -> None: ...

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None: ...


# A responder handler: (sa, decoded request, now) -> response payloads.
Responder = Callable[["IkeSa", Any, float], list[Any]]


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


@dataclass
class IkeSa:
    """One IKE SA with one peer (RFC 7296 §2).

    ``initiator`` is the *original* initiator role (fixes SPI order and
    which SK_* keys protect which direction, §2.14); each exchange also has
    its own requester, which is whoever sends the request.
    """

    peer: Any  # PeerConfig (the candidate; may be replaced after IKE_AUTH as responder)
    initiator: bool
    local: Address
    remote: Address
    natt_port: int
    policy: RetransmitPolicy
    created_at: float
    spi_i: int = 0
    spi_r: int = 0
    state: IkeState = IkeState.CREATED
    # Message ids (RFC 7296 §2.2): ours as requester, the peer's as requester.
    next_request_id: int = 0
    expected_request_id: int = 0
    outstanding: _Outstanding | None = None
    tasks: list[InitiatorTask] = field(default_factory=list)
    cached_response: tuple[int, list[bytes]] | None = None  # (message id, datagrams)
    # Negotiated state, filled by the exchanges.
    keys: Any = None
    ike_algorithms: Any = None
    nat_local: bool = False
    nat_remote: bool = False
    established_at: float | None = None
    children: dict[int, ChildSa] = field(default_factory=dict)
    candidates: tuple[Any, ...] = ()  # responder: peers this SA may belong to until IKE_AUTH
    exchange_data: dict[str, Any] = field(default_factory=dict)  # shared between SA_INIT/AUTH
    last_error: str | None = None
    last_keepalive: float = 0.0
    last_peer_activity: float = 0.0
    after_response: Callable[[], None] | None = None  # run once the response is queued
    outgoing: list[OutgoingDatagram] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    # Lifetime and rekeying (RFC 7296 §2.18), scheduled by the manager.
    rekey_at: float | None = None
    lifetime_set: bool = False
    rekey_queued: bool = False
    rekeyed_to: IkeSa | None = None  # the IKE SA that replaced this one
    rekeyed_at: float | None = None
    spawned: list[IkeSa] = field(default_factory=list)  # new IKE SAs for the manager
    # Simultaneous IKE SA rekey (§2.8.2): the SA we created answering the peer's rekey
    # while ours was outstanding, and the lowest nonce of that exchange; decided by the
    # nonce rule once our own exchange ends.
    rekey_collision: tuple[IkeSa, bytes] | None = None
    collision_pending: bool = False  # such an SA, not yet known to survive: not used
    # IKE fragmentation (RFC 7383): the peer announced it in IKE_SA_INIT (and we did).
    fragmentation_peer: bool = False
    gateway_fragment_size: int | None = None  # gateway.fragment_size (None: by family)
    reassembler: Reassembler | None = None  # created at the first fragment received
    reassembly_budget: ReassemblyBudget | None = None  # shared by the manager's IKE SAs
    # Dead peers and restarts (RFC 7296 §2.4), acted on by the manager (ike/dpd.py).
    peer_dead: bool = False  # an exchange of the established SA went unanswered
    send_initial_contact: bool = False  # first IKE SA with this peer: N(INITIAL_CONTACT)
    initial_contact_received: bool = False  # the peer forgot every other IKE SA with us
    restart_hint: bool = False  # an INVALID_IKE_SPI answered our request (§2.21.4)
    replace_others: bool = False  # started on such a hint: replaces the older IKE SAs
    check_duplicates: bool = False  # just authenticated: another IKE SA with the peer?

    # ---- identity --------------------------------------------------------

    @property
    def peer_name(self) -> str:
        return str(self.peer.name)

    @property
    def local_spi(self) -> int:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def remote_spi(self) -> int:
        return self.spi_r if self.initiator else self.spi_i

    @property
    def alive(self) -> bool:
        return self.state is not IkeState.DELETED

    # ---- state table -----------------------------------------------------

    def transition(self, trigger: str) -> IkeState:
        try:
            self.state = IKE_TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise IllegalTransition(
                f"IKE SA {self.peer_name}: no transition {trigger!r} from {self.state.value}"
            ) from None
        return self.state

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

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
        from ipsecd.ike.fragments import default_fragment_size

        size = getattr(self.peer, "fragment_size", None) or self.gateway_fragment_size
        return int(size or default_fragment_size(self.remote[0]))

    @property
    def fragmentation_active(self) -> bool:
        """Both sides announced RFC 7383 support and ours is ``fragmentation: yes``."""
        return self.fragmentation_peer and getattr(self.peer, "fragmentation", "yes") == "yes"

    def encode(
        self, exchange: int, message_id: int, response: bool, payloads: list[Any]
    ) -> list[bytes]:
        """One message as the datagrams to send: itself, or its fragments if too large."""
        from ipsecd.ike.exchanges import base

        return base.encode_datagrams(self, exchange, message_id, response, payloads)

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
            self.send_all(datagrams)

    def resend_outstanding(self, task: InitiatorTask, now: float) -> None:
        """Rebuild the outstanding request with the same message id (COOKIE, INVALID_KE)."""
        assert self.outstanding is not None
        payloads = task.build_request(self, now)
        mid = self.outstanding.message_id
        datagrams = self.encode(task.exchange_type, mid, False, payloads)
        self.outstanding = _Outstanding(
            task,
            self.outstanding.message_id,
            datagrams,
            sent_at=now,
            next_send=now + self.policy.initial,
        )
        self.send_all(datagrams)

    # ---- receiving -------------------------------------------------------

    def receive(
        self, data: bytes, header: Any, local: Address, remote: Address, now: float
    ) -> None:
        """One IKE message for this SA (header already parsed by the manager).

        Requests are checked against the expected message id first (RFC 7296
        §2.2): the previous id is a retransmission answered from the cache,
        anything else is dropped and counted.  Messages that do not decrypt
        or verify are dropped and counted, never answered (§2.21.1).
        """
        from ipsecd.ike.exchanges import base

        if header.response:
            out = self.outstanding
            if out is None or header.message_id != out.message_id:
                self.count("unexpected_response")
                return
            try:
                message = self._decode(data, header, now)
            except base.CriticalPayload as exc:
                self.count("unsupported_critical_payload")
                self._response_failed(out, f"response with {exc}", now)
                return
            except base.DecodeError:
                from ipsecd.ike.dpd import is_invalid_ike_spi

                # An unprotected INVALID_IKE_SPI (§2.21.4) is only a hint: this SA stays;
                # the manager may set up a replacement beside it (dpd_action restart).
                hint = is_invalid_ike_spi(data)
                self.count("invalid_ike_spi_received" if hint else "undecryptable")
                if hint and self.state is IkeState.ESTABLISHED and self.rekeyed_to is None:
                    self.restart_hint = True
                return
            if message is None:  # an IKE fragment; the message is not complete yet
                return
            self._peer_address(local, remote, header, now)
            self.last_peer_activity = now
            self._process_response(out, message, now)
            return
        mid = header.message_id
        if self.cached_response is not None and mid == self.cached_response[0]:
            if header.first_payload == base.SKF:
                # RFC 7383 §2.6.1: answer a fragmented retransmission once, on fragment 1,
                # and only if it is authentic (the answer may be many datagrams).
                if base.fragment_number(data) != 1:
                    self.count("retransmit_fragment_ignored")
                    return
                if not base.fragment_authentic(self, data):
                    self.count("retransmit_fragment_forged")
                    return
            for cached in self.cached_response[1]:
                self.outgoing.append(
                    OutgoingDatagram(cached, local, remote, marker=local[1] == self.natt_port)
                )
            self.count("retransmit_answered")
            return
        if mid != self.expected_request_id:
            self.count("invalid_message_id")
            return
        critical: ProtocolError | None = None
        try:
            message = self._decode(data, header, now)
            if message is None:  # an IKE fragment; the message is not complete yet
                return
        except base.CriticalPayload as exc:
            from ipsecd.ike.errors import UnsupportedCriticalPayload

            self.count("unsupported_critical_payload")
            critical = UnsupportedCriticalPayload(exc.payload_type)
            critical.fatal = False
            message = None
        except base.DecodeError:
            self.count("undecryptable")
            return
        self._peer_address(local, remote, header, now)
        self.last_peer_activity = now
        self._answer_request(header, message, critical, local, remote, now)

    def _decode(self, data: bytes, header: Any, now: float) -> Any:
        """Decode (and verify) one message; SKF fragments go through reassembly first.

        Returns None for a fragment that did not complete its message (RFC 7383).
        """
        from ipsecd.ike.exchanges import base

        if header.first_payload != base.SKF:
            return base.decode(self, data, header)
        if self.reassembler is None:
            from ipsecd.ike.fragments import Reassembler

            self.reassembler = Reassembler(self.counters, budget=self.reassembly_budget)
        return base.reassemble(self, self.reassembler, data, header, now)

    def _answer_request(
        self,
        header: Any,
        message: Any,
        error: ProtocolError | None,
        local: Address,
        remote: Address,
        now: float,
    ) -> None:
        from ipsecd.ike.exchanges import base

        fatal: ProtocolError | None = None
        if error is None:
            handler = base.responder_for(header.exchange)
            if handler is None:
                self.count("unknown_exchange")
                return
            try:
                payloads = handler(self, message, now)
            except ProtocolError as exc:
                error = exc
        if error is not None:
            payloads = [base.p_notify(error.notify_type, error.notify_data)]
            # A refused IKE_SA_INIT leaves no SA behind, whatever the error (§2.6).
            if error.fatal or header.exchange == base.IKE_SA_INIT:
                fatal = error
            elif error.notify_type not in (INVALID_KE_PAYLOAD, TEMPORARY_FAILURE):
                self.last_error = error.reason
                self.events.append(NegotiationFailed(self.peer_name, error.reason))
        responses = self.encode(header.exchange, header.message_id, True, payloads)
        if header.exchange == base.IKE_SA_INIT and error is None:
            # The responder's AUTH signs its own IKE_SA_INIT response (RFC 7296 §2.15).
            self.exchange_data["init_response"] = responses[0]
        self.expected_request_id = header.message_id + 1
        self.cached_response = (header.message_id, responses)
        for response in responses:
            self.outgoing.append(
                OutgoingDatagram(response, local, remote, marker=local[1] == self.natt_port)
            )
        if fatal is not None:
            if fatal.notify_type == INVALID_KE_PAYLOAD:
                self.count("invalid_ke_sent")
                self.state = IkeState.DELETED  # stateless answer, the initiator retries
            else:
                self.fail(fatal.reason, now)
        if self.after_response is not None:
            callback, self.after_response = self.after_response, None
            callback()
        self.kick(now)

    def _peer_address(self, local: Address, remote: Address, header: Any, now: float) -> None:
        """Follow the peer when its address/port changes behind a NAT (RFC 7296 §2.23).

        Only authenticated messages (everything after IKE_SA_INIT) may move the SA.
        """
        if header.exchange == IKE_SA_INIT_EXCHANGE or (local, remote) == (self.local, self.remote):
            return
        self.local, self.remote = local, remote
        self.count("peer_address_updated")
        if self.state is IkeState.ESTABLISHED:
            from ipsecd.ike.events import PeerAddressChanged

            self.events.append(PeerAddressChanged(self.peer_name, local, remote))

    def _response_failed(self, out: _Outstanding, reason: str, now: float) -> None:
        self.outstanding = None
        self.next_request_id += 1
        out.task.failed(self, reason, now)
        self.kick(now)

    def _process_response(self, out: _Outstanding, message: Any, now: float) -> None:
        """A decoded, authenticated response to our outstanding request."""
        try:
            result = out.task.process_response(self, message, now)
        except ProtocolError as exc:
            self._response_failed(out, exc.reason, now)
            return
        if result is TaskResult.RETRY:
            self.resend_outstanding(out.task, now)
            return
        self.outstanding = None
        self.next_request_id += 1
        self.kick(now)

    def send_one_way_informational(self, payloads: list[Any]) -> None:
        """An INFORMATIONAL request we send once and do not wait for (RFC 7296 §2.21.2)."""
        from ipsecd.ike.exchanges import base

        # A new exchange: while a request is outstanding its id is still next_request_id
        # (counted up when it completes), and the peer would take a reuse of that id for a
        # retransmission and answer from its cache (§2.2).
        mid = self.next_request_id
        if self.outstanding is not None:
            mid = max(mid, self.outstanding.message_id + 1)
        datagrams = self.encode(base.INFORMATIONAL, mid, False, payloads)
        self.next_request_id = mid + 1
        self.send_all(datagrams)

    def queue_liveness_check(self, now: float) -> None:
        """An empty INFORMATIONAL request (RFC 7296 §2.4)."""
        from ipsecd.ike.exchanges.informational import LivenessCheck

        self.queue(LivenessCheck(), now)

    def answer_retransmit(self) -> bool:
        """Resend the cached response if nothing else is needed (RFC 7296 §2.1)."""
        if self.cached_response is None:
            return False
        self.send_all(self.cached_response[1])
        self.count("retransmit_answered")
        return True

    def cache_and_send_response(self, message_id: int, datagrams: list[bytes]) -> None:
        self.cached_response = (message_id, list(datagrams))
        self.send_all(datagrams)

    # ---- timers ----------------------------------------------------------

    def next_timer(self) -> float | None:
        times: list[float] = []
        if self.outstanding is not None and self.alive:
            times.append(self.outstanding.next_send)
        if self.state is IkeState.HALF_OPEN:
            times.append(self.created_at + self.policy.half_open_timeout)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.reassembler is not None:
            self.reassembler.expire(now)
        if (
            self.state is IkeState.HALF_OPEN
            and now >= self.created_at + self.policy.half_open_timeout
        ):
            self.count("half_open_expired")
            self.transition("timeout")
            return
        out = self.outstanding
        if out is None or now < out.next_send or not self.alive:
            return
        if out.retransmits >= self.policy.max_retransmits:
            self.outstanding = None
            self.peer_dead = self.state is IkeState.ESTABLISHED and self.rekeyed_to is None
            reason = (
                f"no response from {self.remote[0]}:{self.remote[1]}"
                f" after {out.retransmits} retransmits"
                f" ({out.task.name}, {now - out.sent_at:.1f} s)"
            )
            out.task.timed_out(self, reason, now)
            self.kick(now)
            return
        out.retransmits += 1
        out.next_send = now + self.policy.initial * self.policy.factor**out.retransmits
        self.count("retransmits")
        self.send_all(out.datagrams)  # the same fragments again (RFC 7383 §2.6.1)

    # ---- teardown --------------------------------------------------------

    def fail(self, reason: str, now: float, *, notify_peer: bool = False) -> None:
        """Negotiation or liveness failure: report it and drop everything (no half state)."""
        self.last_error = reason
        was_established = self.state in (IkeState.ESTABLISHED, IkeState.DELETING)
        self.events.append(NegotiationFailed(self.peer_name, reason))
        self.drop_children(reason)
        self.transition("failed")
        self.tasks.clear()
        self.outstanding = None
        if was_established:
            self.events.append(IkeSaDeleted(self.peer_name, reason))

    def drop_children(self, reason: str) -> None:
        for child in list(self.children.values()):
            self.remove_child(child, reason)

    def remove_child(self, child: ChildSa, reason: str) -> None:
        from ipsecd.ike.child import LIVE_STATES, ChildState

        was_installed = child.state in LIVE_STATES
        if child.state is not ChildState.DELETED:
            child.transition("ike_gone")
        self.children.pop(child.spi_in, None)
        if was_installed:
            self.events.append(ChildSaDeleted(self.peer_name, child.spi_in, child.spi_out, reason))
        if child.was_rekeyed:
            self.count("child_sa_rekeyed")
        # A rekey responder starts sending on the new SA once the old one is gone (§2.8).
        for other in self.children.values():
            if other.replaces == child.spi_in:
                other.replaces = None
                if not other.outbound_active and not other.redundant:
                    self.activate_outbound(other)

    def activate_outbound(self, child: ChildSa) -> None:
        from ipsecd.ike.child import LIVE_STATES
        from ipsecd.ike.events import ChildSaOutboundActivated

        if child.outbound_active or child.state not in LIVE_STATES:
            return
        child.outbound_active = True
        self.events.append(ChildSaOutboundActivated(self.peer_name, child.spi_in))

    def deleted(self, reason: str) -> None:
        """The IKE SA ended normally (Delete sent/received, RFC 7296 §1.4.1)."""
        was_established = self.state in (IkeState.ESTABLISHED, IkeState.DELETING)
        self.drop_children(reason)
        self.state = IkeState.DELETED
        self.tasks.clear()
        self.outstanding = None
        if was_established:
            self.events.append(IkeSaDeleted(self.peer_name, reason))
