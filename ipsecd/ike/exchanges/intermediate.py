"""IKE_INTERMEDIATE (RFC 9242): one additional key exchange each (RFC 9370 §2.2.2).

After IKE_SA_INIT, for every ADDKEn the chosen proposal names (``ke1_mlkem768``),
in order of n::

    HDR(IKE_INTERMEDIATE), SK {KEi(n)}  -->
                     <--  HDR(IKE_INTERMEDIATE), SK {KEr(n)}

The messages are protected with the keys in force (those of IKE_SA_INIT, then of
the previous additional exchange); once the exchange is done both sides derive the
next generation with :func:`~ipsecd.ike.additional_ke.derive_after_additional_ke`:
the initiator when the response arrives, the responder once its response is
encoded (``sa.after_response``), keeping the keys before it for a retransmitted
request.  Every request and response also goes into the IntAuth chain
(RFC 9242 §3.3.2), each with the SK_pi/SK_pr that protected it, so that both AUTH
payloads of IKE_AUTH cover them.  With an ML-KEM method the initiator sends the
encapsulation key and the responder the ciphertext (draft-ietf-ipsecme-ikev2-mlkem,
:mod:`ipsecd.crypto.mlkem`); large messages go out as RFC 7383 fragments like any
other SK-protected message.

Deadlines: the initiator's state INTERMEDIATE_SENT and the responder's HALF_OPEN
(restarted by each answered exchange) come from :mod:`ipsecd.ike.lifecycle`.
"""

from __future__ import annotations

from ipsecd.crypto import mlkem
from ipsecd.crypto.registry import KeAlgorithm
from ipsecd.ike.additional_ke import IntAuthChain, derive_after_additional_ke
from ipsecd.ike.constants import (
    IKE_MAJOR_VERSION,
    ExchangeType,
    HeaderFlag,
    PayloadType,
)
from ipsecd.ike.errors import InvalidSyntax, ProtocolError, notify_name
from ipsecd.ike.lifecycle import IkeEvent, IkeState
from ipsecd.ike.message import Header, Message, encode_payload_chain
from ipsecd.ike.payloads import KeyExchange, Payload
from ipsecd.ike.sa import IkeSa, TaskResult

__all__ = ["IkeIntermediate", "respond", "int_auth_parts", "their_key_exchange"]


def int_auth_parts(
    sa: IkeSa, message_id: int, response: bool, payloads: list[Payload]
) -> tuple[bytes, bytes]:
    """IntAuth's A prefix and P of an IKE_INTERMEDIATE message we send (RFC 9242 §3.3.2):
    the IKE header and SK payload header it has unfragmented (lengths are rewritten by
    :func:`~ipsecd.ike.additional_ke.int_auth_octets`), and the inner payloads."""
    flags = (HeaderFlag.INITIATOR if sa.initiator else 0) | (HeaderFlag.RESPONSE if response else 0)
    header = Header(
        sa.spi_i,
        sa.spi_r,
        PayloadType.SK,
        IKE_MAJOR_VERSION,
        0,
        ExchangeType.IKE_INTERMEDIATE,
        flags,
        message_id,
        0,
    )
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    return header.encode() + bytes([first, 0, 0, 0]), encode_payload_chain(payloads)


def _chain(sa: IkeSa) -> IntAuthChain:
    chain = sa.handshake.int_auth
    assert chain is not None  # planned with the exchanges in IKE_SA_INIT
    return chain


def their_key_exchange(
    sa: IkeSa, message: Message, n: int, alg: KeAlgorithm, *, fatal: bool = True
) -> KeyExchange:
    """The KE payload of an additional key exchange ``n`` with method ``alg`` (RFC 9370),
    or INVALID_SYNTAX naming what came instead (``fatal``: the IKE SA ends with it)."""
    ke = message.find(KeyExchange)
    if ke is None or ke.group != alg.transform_id:
        got = f"a KE payload for method {ke.group}" if ke is not None else "no KE payload"
        raise InvalidSyntax(
            f"peer {sa.peer_name} sent {got} in {ExchangeType(message.exchange_type).name},"
            f" expected {alg.name} (ADDKE{n}, RFC 9370)",
            fatal=fatal,
        )
    return ke


class IkeIntermediate:
    """Initiator: the additional key exchange ``n`` with method ``alg``."""

    exchange_type = ExchangeType.IKE_INTERMEDIATE

    def __init__(self, n: int, alg: KeAlgorithm) -> None:
        self.n, self.alg = n, alg
        self.name = f"IKE_INTERMEDIATE (ke{n}_{alg.name})"
        self.key_exchange: mlkem.InitiatorKe | None = None
        self.request = (b"", b"")  # IntAuth A and P of our request

    def build_request(self, sa: IkeSa, now: float) -> list[Payload]:
        self.key_exchange = mlkem.start(self.alg)
        payloads: list[Payload] = [
            KeyExchange(int(self.alg.transform_id), self.key_exchange.public)
        ]
        self.request = int_auth_parts(sa, sa.next_request_id, False, payloads)
        sa.transition(IkeEvent.INTERMEDIATE_SENT, now)
        return payloads

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        error = message.error_notify()
        if error is not None:
            raise ProtocolError(
                f"peer {sa.peer_name} refused {self.name} with {notify_name(error.notify_type)}"
            )
        ke = their_key_exchange(sa, message, self.n, self.alg)
        assert self.key_exchange is not None and sa.keys is not None
        try:
            shared = self.key_exchange.compute(ke.data)
        except ValueError as exc:
            raise InvalidSyntax(f"peer {sa.peer_name}, {self.name}: {exc}") from None
        chain = _chain(sa)
        chain.add_initiator_message(sa.keys.sk_pi, *self.request)
        chain.add_responder_message(sa.keys.sk_pr, message.sk_prefix, message.inner)
        sa.keys = derive_after_additional_ke(
            sa.keys, shared, sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r
        )
        _done(sa, self.n, self.alg)
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def _done(sa: IkeSa, n: int, alg: KeAlgorithm) -> None:
    handshake = sa.handshake
    if handshake.pending and handshake.pending[0] == (n, alg):
        handshake.pending.pop(0)
    handshake.done.append(f"ke{n}_{alg.name}")
    sa.count("additional_key_exchanges")


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder: the next pending additional key exchange (RFC 9370 §2.2.2).

    Any problem ends the IKE SA being set up (an error notify in IKE_INTERMEDIATE is
    fatal); a stray request on an established IKE SA is refused and that is all.
    """
    handshake = sa.handshake
    if sa.state is not IkeState.HALF_OPEN or not handshake.pending:
        raise InvalidSyntax(
            f"peer {sa.peer_name} sent an IKE_INTERMEDIATE request, but no additional key"
            " exchange (RFC 9370) is pending",
            fatal=sa.state is not IkeState.ESTABLISHED,
        )
    n, alg = handshake.pending[0]
    ke = their_key_exchange(sa, message, n, alg)
    try:
        public, shared = mlkem.respond(alg, ke.data)
    except ValueError as exc:
        raise InvalidSyntax(
            f"peer {sa.peer_name}, IKE_INTERMEDIATE ke{n}_{alg.name}: {exc}"
        ) from None
    keys = sa.keys
    assert keys is not None and message.sk_prefix
    payloads: list[Payload] = [KeyExchange(int(alg.transform_id), public)]
    chain = _chain(sa)
    chain.add_initiator_message(keys.sk_pi, message.sk_prefix, message.inner)
    chain.add_responder_message(keys.sk_pr, *int_auth_parts(sa, message.message_id, True, payloads))
    new = derive_after_additional_ke(keys, shared, sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r)
    _done(sa, n, alg)

    def update() -> None:  # the response went out with the keys before this exchange
        handshake.previous_keys, sa.keys = sa.keys, new

    sa.after_response = update
    sa.transition(IkeEvent.INTERMEDIATE_ANSWERED, now)
    return payloads
