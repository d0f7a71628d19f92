"""IKE_AUTH with the first CHILD_SA (RFC 7296 §1.2, §2.15, §2.9, §1.3).

strongSwan's ``ike_auth`` + ``child_create`` tasks for the IKE_AUTH message::

    HDR, SK {IDi, AUTH, SAi2, TSi, TSr}  -->
                                     <--  HDR, SK {IDr, AUTH, SAr2, TSi, TSr}

Authentication is by pre-shared key only (AUTH method 2, §2.15).  The peer's
ID must equal the configured ``remote_id``.  A failure of the CHILD_SA part
does not undo IKE authentication in the protocol (§1.2: the responder sends
the error notify instead of SAr2/TS), but we never leave an IKE SA without
its first CHILD_SA standing: the initiator deletes it again and reports why.
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from ipsecd.config.schema import Identity
from ipsecd.crypto.proposals import Proposal
from ipsecd.ike import auth as psk
from ipsecd.ike import keys as ike_keys
from ipsecd.ike.child import (
    ChildAlgorithms,
    ChildSa,
    check_narrowed_as_initiator,
    child_params,
    keymat_length,
    narrow_as_responder,
    new_child_spi,
)
from ipsecd.ike.constants import AuthMethod, ExchangeType, NotifyType
from ipsecd.ike.errors import (
    AUTHENTICATION_FAILED,
    AuthenticationFailed,
    InvalidSyntax,
    ProtocolError,
    notify_name,
)
from ipsecd.ike.events import NegotiationFailed
from ipsecd.ike.exchanges.informational import DeleteIkeSa
from ipsecd.ike.lifecycle import IkeEvent
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import (
    Authentication,
    IdentificationInitiator,
    IdentificationResponder,
    KeyExchange,
    Notify,
    Payload,
    SecurityAssociation,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    format_identity,
)
from ipsecd.ike.proposal_codec import (
    ChosenProposal,
    check_answer,
    choose,
    chosen_sa_payload,
    format_proposals,
    sa_payload,
)
from ipsecd.ike.sa import IkeSa, TaskResult
from ipsecd.selectors import TrafficSelector, format_selectors

Selectors = tuple[TrafficSelector, ...]


def without_ke(proposals: tuple[Proposal, ...]) -> tuple[Proposal, ...]:
    """ESP proposals for IKE_AUTH: no KE transforms (RFC 7296 §1.2)."""
    return tuple(replace(p, ke=()) for p in proposals)


def auth_value(sa: IkeSa, key: bytes, of_initiator: bool, id_type: int, id_data: bytes) -> bytes:
    """The PSK AUTH value of the initiator's or the responder's side (RFC 7296 §2.15)."""
    assert sa.keys is not None
    if of_initiator:
        message, nonce = sa.init_request, sa.nonce_r
    else:
        message, nonce = sa.init_response, sa.nonce_i
    return psk.psk_auth(sa.keys, key, of_initiator, message, nonce, id_type, id_data)


def negotiated_child(
    sa: IkeSa,
    chosen: ChosenProposal,
    spi_in: int,
    *,
    exchange_initiator: bool,
    shared: bytes,
    nonces: tuple[bytes, bytes],
    local_ts: Selectors,
    remote_ts: Selectors,
    now: float,
) -> ChildSa:
    """The CHILD_SA an exchange agreed on, with its keys (RFC 7296 §2.17).

    KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); ``chosen.spi`` is the SPI the peer
    receives with (our outbound SPI).  Shared by IKE_AUTH and CREATE_CHILD_SA, both roles.
    """
    assert sa.keys is not None
    algs = ChildAlgorithms.from_chosen(chosen)
    spi_out = int.from_bytes(chosen.spi, "big")
    keymat = ike_keys.child_keymat(sa.keys, shared, *nonces, keymat_length(algs))
    params = child_params(
        spi_in=spi_in,
        spi_out=spi_out,
        algs=algs,
        keymat=keymat,
        exchange_initiator=exchange_initiator,
        local_ts=local_ts,
        remote_ts=remote_ts,
        remote=sa.remote,
    )
    return ChildSa(
        spi_in=spi_in,
        spi_out=spi_out,
        local_ts=local_ts,
        remote_ts=remote_ts,
        algorithms=algs,
        created_at=now,
        params=params,
    )


def _verify(
    sa: IkeSa, key: bytes, of_initiator: bool, identity: tuple[int, bytes], auth: Authentication
) -> bool:
    expected = auth_value(sa, key, of_initiator, *identity)
    return auth.method == AuthMethod.SHARED_KEY_MIC and hmac.compare_digest(auth.data, expected)


def _identity(ident: Identity) -> tuple[int, bytes]:
    return ident.id_type, ident.data


def _selectors(message: Message) -> tuple[Selectors, Selectors] | None:
    tsi = message.find(TrafficSelectorsInitiator)
    tsr = message.find(TrafficSelectorsResponder)
    if tsi is None or tsr is None:
        return None
    return tuple(tsi.selectors), tuple(tsr.selectors)


def _initial_contact(message: Message) -> bool:
    return message.notify(NotifyType.INITIAL_CONTACT) is not None


class IkeAuth:
    """Initiator side: authenticate with the PSK and ask for the first CHILD_SA."""

    exchange_type = ExchangeType.IKE_AUTH
    name = "IKE_AUTH"

    def __init__(self) -> None:
        self.child_spi = 0
        self.local_ts: Selectors = ()
        self.remote_ts: Selectors = ()
        self.esp_proposals: tuple[Proposal, ...] = ()

    def build_request(self, sa: IkeSa, now: float) -> list[Payload]:
        peer = sa.peer
        assert peer.auth is not None
        me = _identity(peer.auth.local_id)
        self.child_spi = new_child_spi(sa.random_bytes, sa.children)
        self.local_ts = peer.local_ts
        self.remote_ts = peer.remote_ts
        self.esp_proposals = without_ke(peer.esp_proposals)  # no KE in IKE_AUTH
        auth_data = auth_value(sa, peer.auth.psk, True, *me)
        sa.transition(IkeEvent.AUTH_SENT, now)
        # RFC 7296 §2.4: "we have no other IKE SA with you; forget any you still hold".
        contact = [Notify(NotifyType.INITIAL_CONTACT)] if sa.send_initial_contact else []
        return [
            IdentificationInitiator(*me),
            *contact,
            Authentication(AuthMethod.SHARED_KEY_MIC, auth_data),
            sa_payload(self.esp_proposals, spi=self.child_spi.to_bytes(4, "big")),
            TrafficSelectorsInitiator(self.local_ts),
            TrafficSelectorsResponder(self.remote_ts),
        ]

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        auth = sa.peer.auth
        assert auth is not None
        if message.notify(AUTHENTICATION_FAILED) is not None:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} rejected our authentication: AUTHENTICATION_FAILED"
                f" (we are {auth.local_id}; check the PSK and the identity the peer expects)"
            )
        ident = message.find(IdentificationResponder)
        auth_payload = message.find(Authentication)
        if ident is None or auth_payload is None:
            error = message.error_notify()
            if error is not None:
                raise ProtocolError(
                    f"peer {sa.peer_name} refused IKE_AUTH with {notify_name(error.notify_type)}"
                )
            raise InvalidSyntax(f"IKE_AUTH response from {sa.peer_name} lacks IDr or AUTH")
        try:
            self._verify_responder(sa, ident, auth_payload)
        except AuthenticationFailed:
            # Our keys are valid and the peer thinks the SA is up: tell it (RFC 7296 §2.21.2).
            sa.send_one_way_informational([Notify(AUTHENTICATION_FAILED)])
            raise
        sa.established(now, initial_contact=_initial_contact(message))
        try:
            child = self._child(sa, message, now)
        except ProtocolError as exc:
            # No IKE SA without its first CHILD_SA: report and delete (RFC 7296 §1.4.1).
            reason = f"CHILD_SA with peer {sa.peer_name} failed: {exc.reason}"
            sa.last_error = reason
            sa.events.append(NegotiationFailed(sa.peer_name, reason))
            sa.tasks.insert(0, DeleteIkeSa(reason))
            return TaskResult.DONE
        sa.install_child(child, now)
        return TaskResult.DONE

    def _verify_responder(
        self, sa: IkeSa, ident: IdentificationResponder, auth_payload: Authentication
    ) -> None:
        auth = sa.peer.auth
        assert auth is not None
        theirs = (ident.id_type, ident.data)
        if theirs != _identity(auth.remote_id):
            raise AuthenticationFailed(
                f"peer {sa.peer_name} (responder) identified as"
                f" {format_identity(*theirs)}, but remote_id is {auth.remote_id}"
            )
        if not _verify(sa, auth.psk, False, theirs, auth_payload):
            raise AuthenticationFailed(
                f"peer {sa.peer_name} (responder, {auth.remote_id}) sent an AUTH"
                " payload that does not verify with our PSK (pre-shared keys differ)"
            )

    def _child(self, sa: IkeSa, message: Message, now: float) -> ChildSa:
        error = message.error_notify()
        if error is not None:
            raise ProtocolError(
                f"peer refused the CHILD_SA with {notify_name(error.notify_type)}; we proposed"
                f" ESP {format_proposals(self.esp_proposals)},"
                f" TSi={format_selectors(self.local_ts)} TSr={format_selectors(self.remote_ts)}"
            )
        chosen = check_answer(
            message.find(SecurityAssociation), self.esp_proposals, "esp", sa.peer_name, fatal=False
        )
        selectors = _selectors(message)
        if selectors is None:
            raise InvalidSyntax("IKE_AUTH response lacks TSi/TSr")
        tsi, tsr = selectors
        check_narrowed_as_initiator(self.local_ts, self.remote_ts, tsi, tsr, sa.peer_name)
        return negotiated_child(
            sa,
            chosen,
            self.child_spi,
            exchange_initiator=True,
            shared=b"",
            nonces=(sa.nonce_i, sa.nonce_r),
            local_ts=tsi,
            remote_ts=tsr,
            now=now,
        )

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder side: find the peer by its ID, verify AUTH, then the first CHILD_SA."""
    ident = message.find(IdentificationInitiator)
    auth_payload = message.find(Authentication)
    if ident is None or auth_payload is None:
        raise InvalidSyntax(f"IKE_AUTH request from {sa.remote[0]} lacks IDi or AUTH")
    theirs = (ident.id_type, ident.data)
    their_id = format_identity(*theirs)
    candidates = sa.candidates or (sa.peer,)
    peer = next(
        (p for p in candidates if p.auth is not None and _identity(p.auth.remote_id) == theirs),
        None,
    )
    if peer is None or peer.auth is None:
        expected = ", ".join(
            f"{p.name}: {p.auth.remote_id}" for p in candidates if p.auth is not None
        )
        raise AuthenticationFailed(
            f"initiator at {sa.remote[0]} identified as {their_id}, which matches no"
            f" configured remote_id ({expected})"
        )
    sa.peer = peer
    if not _verify(sa, peer.auth.psk, True, theirs, auth_payload):
        raise AuthenticationFailed(
            f"peer {peer.name} (initiator, {their_id}) sent an AUTH payload that does not"
            " verify with our PSK (pre-shared keys differ)"
        )
    me = _identity(peer.auth.local_id)
    response: list[Payload] = [
        IdentificationResponder(*me),
        Authentication(AuthMethod.SHARED_KEY_MIC, auth_value(sa, peer.auth.psk, False, *me)),
    ]
    sa.established(now, initial_contact=_initial_contact(message))
    try:
        child, child_payloads = respond_child(
            sa, message, without_ke(peer.esp_proposals), sa.nonce_i, sa.nonce_r, b"", now
        )
    except ProtocolError as exc:
        reason = f"CHILD_SA with peer {peer.name} refused: {exc.reason}"
        sa.last_error = reason
        sa.events.append(NegotiationFailed(peer.name, reason))
        return response + [Notify(exc.notify_type, exc.notify_data)]
    sa.install_child(child, now)
    return response + child_payloads


def respond_child(
    sa: IkeSa,
    message: Message,
    proposals: tuple[Proposal, ...],
    nonce_i: bytes,
    nonce_r: bytes,
    shared_secret: bytes,
    now: float,
    ke_payload: KeyExchange | None = None,
) -> tuple[ChildSa, list[Payload]]:
    """Negotiate a CHILD_SA as responder: SA selection, TS narrowing, keys.

    Shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 §1.3).  Raises a
    :class:`ProtocolError` (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE) whose text
    names both sides' offers.
    """
    peer = sa.peer
    chosen = choose(message.find(SecurityAssociation), proposals, "esp", peer.name)
    selectors = _selectors(message)
    if selectors is None:
        raise InvalidSyntax(f"peer {peer.name} proposed a CHILD_SA without TSi/TSr")
    tsi, tsr = selectors
    new_tsi, new_tsr = narrow_as_responder(tsi, tsr, peer.local_ts, peer.remote_ts, peer.name)
    spi_in = new_child_spi(sa.random_bytes, sa.children)
    child = negotiated_child(
        sa,
        chosen,
        spi_in,
        exchange_initiator=False,
        shared=shared_secret,
        nonces=(nonce_i, nonce_r),
        local_ts=new_tsr,
        remote_ts=new_tsi,
        now=now,
    )
    payloads: list[Payload] = [chosen_sa_payload(chosen, spi=spi_in.to_bytes(4, "big"))]
    if ke_payload is not None:
        payloads.append(ke_payload)
    payloads += [TrafficSelectorsInitiator(new_tsi), TrafficSelectorsResponder(new_tsr)]
    return child, payloads
