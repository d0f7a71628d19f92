"""IKE_FOLLOWUP_KE (RFC 9370 §2.2.4): the additional key exchanges of a CREATE_CHILD_SA.

When the proposal a CREATE_CHILD_SA agreed on (a CHILD_SA, new or rekeyed, or the
rekey of the IKE SA) has additional key exchanges, the responder's answer carries
N(ADDITIONAL_KEY_EXCHANGE) with link data, and one IKE_FOLLOWUP_KE exchange per
additional key exchange follows on the same IKE SA::

    HDR(IKE_FOLLOWUP_KE), SK {KEi(n), N(ADDITIONAL_KEY_EXCHANGE)(link)}  -->
              <--  HDR(IKE_FOLLOWUP_KE), SK {KEr(n), [N(ADDITIONAL_KEY_EXCHANGE)(link)]}

The responder's last answer has no link.  Only then are keys derived, from all the
shared secrets in order (SK(0) of the CREATE_CHILD_SA's KE payload first)::

    SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))      (IKE SA)
    KEYMAT   = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))          (CHILD_SA)

(:mod:`ipsecd.ike.additional_ke`): the exchange that started it (:mod:`.create_child`,
:mod:`.rekey`) gets the secrets through :attr:`PendingFollowup.complete` and installs
what it made.
A request whose link matches nothing is answered with STATE_NOT_FOUND; any failure
ends only this exchange (the IKE SA stays), through :attr:`PendingFollowup.abandon`.
"""

from __future__ import annotations

from ipsecd.crypto import mlkem
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.errors import InvalidSyntax, ProtocolError, StateNotFound, notify_name
from ipsecd.ike.exchanges.intermediate import their_key_exchange
from ipsecd.ike.handshake import PendingFollowup
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import KeyExchange, Notify, Payload
from ipsecd.ike.sa import IkeSa, TaskResult

__all__ = ["FollowupKe", "respond", "link_of", "new_link", "link_notify"]

LINK_LEN = 8


def new_link(sa: IkeSa) -> bytes:
    """Link data for N(ADDITIONAL_KEY_EXCHANGE): opaque to the initiator, ours to check."""
    return sa.random_bytes(LINK_LEN)


def link_notify(link: bytes) -> Notify:
    return Notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, link)


def link_of(sa: IkeSa, message: Message, what: str) -> bytes:
    """The link data of a response that announces follow-up exchanges."""
    notify = message.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    if notify is None or not notify.data:
        raise InvalidSyntax(
            f"peer {sa.peer_name} agreed on additional key exchanges for the {what} but sent"
            " no N(ADDITIONAL_KEY_EXCHANGE) to continue with (RFC 9370 §2.2.4)",
            fatal=False,
        )
    return notify.data


class FollowupKe:
    """Initiator: the next additional key exchange of ``state`` (strongSwan's multi-KE
    ``build_i``/``process_i``)."""

    exchange_type = ExchangeType.IKE_FOLLOWUP_KE

    def __init__(self, state: PendingFollowup) -> None:
        self.state = state
        n, alg = state.pending[0]
        self.name = f"IKE_FOLLOWUP_KE (ke{n}_{alg.name}, {state.what})"
        self.key_exchange: mlkem.InitiatorKe | None = None

    def build_request(self, sa: IkeSa, now: float) -> list[Payload]:
        _, alg = self.state.pending[0]
        self.key_exchange = mlkem.start(alg)
        return [
            KeyExchange(int(alg.transform_id), self.key_exchange.public),
            link_notify(self.state.link),
        ]

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        state = self.state
        error = message.error_notify()
        if error is not None:
            raise ProtocolError(
                f"peer {sa.peer_name} refused {self.name} with {notify_name(error.notify_type)}",
                fatal=False,
            )
        n, alg = state.pending[0]
        ke = their_key_exchange(sa, message, n, alg, fatal=False)
        assert self.key_exchange is not None
        try:
            state.shared.append(self.key_exchange.compute(ke.data))
        except ValueError as exc:
            raise InvalidSyntax(f"peer {sa.peer_name}, {self.name}: {exc}", fatal=False) from None
        state.pending.pop(0)
        sa.count("additional_key_exchanges")
        if state.pending:
            state.link = link_of(sa, message, state.what)
            sa.tasks.insert(0, FollowupKe(state))
        else:
            state.complete(state.shared, now)
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        self.state.abandon(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder: the next additional key exchange of the pending CREATE_CHILD_SA."""
    state = sa.handshake.followup
    notify = message.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    if state is None or notify is None or notify.data != state.link:
        raise StateNotFound(
            f"peer {sa.peer_name} sent an IKE_FOLLOWUP_KE that continues no CREATE_CHILD_SA"
            " of ours (RFC 9370 §2.2.4)",
            fatal=False,
        )
    n, alg = state.pending[0]
    try:
        ke = their_key_exchange(sa, message, n, alg, fatal=False)
        public, shared = mlkem.respond(alg, ke.data)
    except (ProtocolError, ValueError) as exc:
        sa.handshake.followup = None
        reason = exc.reason if isinstance(exc, ProtocolError) else str(exc)
        state.abandon(f"{state.what}: {reason}", now)
        raise InvalidSyntax(
            f"peer {sa.peer_name}, IKE_FOLLOWUP_KE: {reason}", fatal=False
        ) from None
    state.shared.append(shared)
    state.pending.pop(0)
    sa.count("additional_key_exchanges")
    payloads: list[Payload] = [KeyExchange(int(alg.transform_id), public)]
    if state.pending:
        payloads.append(link_notify(state.link))
    else:
        sa.handshake.followup = None
        state.complete(state.shared, now)
    return payloads
