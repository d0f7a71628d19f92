"""IKE_AUTH with the first CHILD_SA (RFC 7296 §1.2, §2.15, §2.9, §1.3).

strongSwan's ``ike_auth`` + ``child_create`` tasks for the IKE_AUTH message::

    HDR, SK {IDi, [CERT+,] [CERTREQ,] [N(INITIAL_CONTACT),] AUTH,
             [N(PPK_IDENTITY), [N(NO_PPK_AUTH)],] SAi2, TSi, TSr}  -->
                  <--  HDR, SK {IDr, [CERT+,] AUTH, [N(PPK_IDENTITY),] SAr2, TSi, TSr}

Each side authenticates by a pre-shared key (AUTH method 2) or by a signature
with its certificate's key (RFC 7427 method 14, or 1/9/10/11 for peers without
SIGNATURE_HASH_ALGORITHMS), as its ``local_auth`` says; :mod:`ipsecd.ike.peer_auth`
builds and checks the AUTH payloads, certificates included.  The peer's ID must be
the configured ``remote_id`` (and be in its certificate, RFC 4945 §3.1).  When
IKE_INTERMEDIATE exchanges took place, both AUTH payloads also cover IntAuth
(RFC 9242 §3.3.2); IKE_AUTH before every agreed additional key exchange is done is
refused (no downgrade of RFC 9370's hybrid).

PPK (RFC 8784): with USE_PPK from both sides, the initiator sends
N(PPK_IDENTITY) and an AUTH made with SK_pi mixed with its PPK, plus, unless
``ppk_required``, N(NO_PPK_AUTH) with the AUTH data made without it.  A responder
that has the PPK answers with the mixed keys and N(PPK_IDENTITY); one that has not
(and does not require it) checks NO_PPK_AUTH instead.  SK_d of the IKE SA is the
mixed one exactly when the PPK was used.

A failure of the CHILD_SA part does not undo IKE authentication in the protocol
(§1.2: the responder sends the error notify instead of SAr2/TS), but we never leave
an IKE SA without its first CHILD_SA standing: the initiator deletes it again and
reports why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ipsecd.config.schema import AuthConfig, ChildConfig
from ipsecd.crypto.proposals import Proposal
from ipsecd.ike import keys as ike_keys
from ipsecd.ike.additional_ke import (
    PpkIdentity,
    PpkKeys,
    child_keymat_with_additional,
    mix_ppk,
    same_ppk_id,
)
from ipsecd.ike.candidates import first_with_id
from ipsecd.ike.child import (
    ChildAlgorithms,
    ChildSa,
    check_ah_without_nat,
    check_mode_answer,
    check_narrowed_as_initiator,
    child_params,
    keymat_length,
    new_child_spi,
    responder_mode,
    select_child,
    transport_nat_selectors,
)
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.errors import (
    AUTHENTICATION_FAILED,
    AuthenticationFailed,
    InvalidSyntax,
    NoProposalChosen,
    ProtocolError,
    notify_name,
)
from ipsecd.ike.events import ChildSaNarrowed, NegotiationFailed
from ipsecd.ike.exchanges.informational import DeleteIkeSa
from ipsecd.ike.handshake import AuthRecord
from ipsecd.ike.keys import IkeKeys
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
from ipsecd.ike.peer_auth import (
    PeerAuthenticated,
    cert_payloads,
    certreq_payload,
    our_auth,
    psk_auth_value,
    refusal_hint,
    same_id,
    verify_peer,
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
from ipsecd.selectors import TrafficSelector, format_selectors, uncovered

Selectors = tuple[TrafficSelector, ...]


def without_ke(proposals: tuple[Proposal, ...]) -> tuple[Proposal, ...]:
    """ESP/AH proposals for IKE_AUTH: no KE transforms, additional ones neither (RFC 7296
    §1.2, RFC 9370 §2.2.3: the first CHILD_SA's keys come from the IKE SA's exchanges)."""
    return tuple(replace(p, ke=(), additional_ke=()) for p in proposals)


def transport_notify(mode: str) -> list[Payload]:
    """N(USE_TRANSPORT_MODE) for a transport-mode CHILD_SA, in a request or its answer
    (RFC 7296 §1.3.1); nothing for tunnel mode."""
    return [Notify(NotifyType.USE_TRANSPORT_MODE)] if mode == "transport" else []


def transport_requested(message: Message) -> bool:
    """The message carries N(USE_TRANSPORT_MODE) (RFC 7296 §1.3.1)."""
    return message.notify(NotifyType.USE_TRANSPORT_MODE) is not None


def auth_value(sa: IkeSa, key: bytes, of_initiator: bool, id_type: int, id_data: bytes) -> bytes:
    """The PSK AUTH value of one side without IntAuth or PPK (RFC 7296 §2.15; tests)."""
    assert sa.keys is not None
    return psk_auth_value(sa, sa.keys, key, of_initiator, (id_type, id_data), b"")


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
    additional: Sequence[bytes] = (),
    name: str = "",
    mode: str = "tunnel",
) -> ChildSa:
    """The CHILD_SA an exchange agreed on, with its keys (RFC 7296 §2.17).

    KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), with the secrets of additional key
    exchanges after the nonces (RFC 9370 §2.2.4); ``chosen.spi`` is the SPI the peer
    receives with (our outbound SPI); ``name`` the configured child it is for.  Shared by
    IKE_AUTH and CREATE_CHILD_SA, both roles.  ``mode`` is the agreed one (RFC 7296
    §1.3.1); ESP goes in UDP or directly over IP as :attr:`IkeSa.udp_encap` says.
    """
    assert sa.keys is not None
    algs = ChildAlgorithms.from_chosen(chosen)
    spi_out = int.from_bytes(chosen.spi, "big")
    if additional:
        keymat = child_keymat_with_additional(
            sa.keys, [shared, *additional], *nonces, keymat_length(algs)
        )
    else:
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
        name=name,
        local=sa.local,
        mode=mode,
        encap=sa.udp_encap,
        nat=sa.nat_local or sa.nat_remote,
    )
    return ChildSa(
        spi_in=spi_in,
        spi_out=spi_out,
        local_ts=local_ts,
        remote_ts=remote_ts,
        name=name,
        algorithms=algs,
        mode=mode,
        created_at=now,
        params=params,
    )


def report_narrowing(
    sa: IkeSa, name: str, config: ChildConfig, local_ts: Selectors, remote_ts: Selectors
) -> None:
    """Initiator: the responder narrowed a CHILD_SA (RFC 7296 §2.9) so that traffic of the
    configured child has no SA: say which prefixes (status and log, ChildSaNarrowed)."""
    local = uncovered(config.local_ts, local_ts)
    remote = uncovered(config.remote_ts, remote_ts)
    if local or remote:
        sa.count("child_sa_narrowed")
        sa.events.append(ChildSaNarrowed(sa.peer_name, name, local, remote))


def _selectors(message: Message) -> tuple[Selectors, Selectors] | None:
    tsi = message.find(TrafficSelectorsInitiator)
    tsr = message.find(TrafficSelectorsResponder)
    if tsi is None or tsr is None:
        return None
    return tuple(tsi.selectors), tuple(tsr.selectors)


def _first_child(sa: IkeSa) -> ChildConfig:
    """The child IKE_AUTH carries: the first one wanted, unless it is AH, IKE found a NAT
    and another wanted child can cross it. The AH child then fails alone, named, when its
    CREATE_CHILD_SA comes (an IKE SA is not given up for it)."""
    wanted = [sa.child_config(name) for name in sa.wanted_children] or [sa.child_config("")]
    if sa.nat_local or sa.nat_remote:
        return next((c for c in wanted if c.protocol != "ah"), wanted[0])
    return wanted[0]


def _initial_contact(message: Message) -> bool:
    return message.notify(NotifyType.INITIAL_CONTACT) is not None


def _auth_record(
    auth: AuthConfig, ours: str, theirs: PeerAuthenticated, their_id: str, ppk: bool
) -> AuthRecord:
    return AuthRecord(
        local=ours,
        remote=theirs.method,
        local_id=str(auth.local_id),
        remote_id=their_id,
        remote_certificate=theirs.certificate,
        ppk=ppk,
    )


def _ppk_id_text(auth: AuthConfig) -> str:
    assert auth.ppk is not None
    return auth.ppk.ppk_id.decode(errors="replace")


class IkeAuth:
    """Initiator side: authenticate (PSK or certificate, with PPK) and ask for the first
    CHILD_SA."""

    exchange_type = ExchangeType.IKE_AUTH
    name = "IKE_AUTH"

    def __init__(self) -> None:
        self.child_spi = 0
        self.child: ChildConfig | None = None  # the configured child set up with IKE_AUTH
        self.local_ts: Selectors = ()
        self.remote_ts: Selectors = ()
        self.child_proposals: tuple[Proposal, ...] = ()  # ESP or AH (RFC 7296 §3.3.1)
        self.int_auth = b""
        self.ppk: PpkKeys | None = None  # the keys mixed with our PPK, if we offered it
        self.our_method = ""

    def build_request(self, sa: IkeSa, now: float) -> list[Payload]:
        peer = sa.peer
        auth = peer.auth
        assert auth is not None and sa.keys is not None
        handshake = sa.handshake
        self.int_auth = handshake.int_auth_octets(sa.next_request_id)
        keys: IkeKeys = sa.keys
        if auth.ppk is not None and handshake.use_ppk:
            self.ppk = mix_ppk(sa.keys, auth.ppk.ppk)
            keys = self.ppk.keys
        elif auth.ppk is not None and auth.ppk.required:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} did not announce USE_PPK (RFC 8784) and ppk_required is"
                f" set: not going on without the post-quantum preshared key"
                f" '{_ppk_id_text(auth)}'"
            )
        auth_payload, self.our_method = our_auth(sa, auth, keys, True, self.int_auth)
        ppk_notifies: list[Payload] = []
        if self.ppk is not None and auth.ppk is not None:
            ppk_notifies.append(
                Notify(NotifyType.PPK_IDENTITY, PpkIdentity(auth.ppk.ppk_id).encode())
            )
            if not auth.ppk.required:  # the AUTH for a responder without the PPK (§3)
                fallback, _ = our_auth(sa, auth, self.ppk.without_ppk, True, self.int_auth)
                ppk_notifies.append(Notify(NotifyType.NO_PPK_AUTH, fallback.data))
        self.child_spi = new_child_spi(sa.random_bytes, sa.children)
        # The first child the IKE SA was started for (the rest follow, CREATE_CHILD_SA).
        self.child = child = _first_child(sa)
        # No IKE SA without its first CHILD_SA: AH through a NAT (every wanted child AH)
        # fails here, named.
        check_ah_without_nat(child.protocol, sa.nat_local, sa.nat_remote, peer.name)
        self.local_ts = child.local_ts
        self.remote_ts = child.remote_ts
        self.child_proposals = without_ke(child.child_proposals)  # no KE in IKE_AUTH
        sa.transition(IkeEvent.AUTH_SENT, now)
        # RFC 7296 §2.4: "we have no other IKE SA with you; forget any you still hold".
        contact = [Notify(NotifyType.INITIAL_CONTACT)] if sa.send_initial_contact else []
        certreq = certreq_payload(auth.trust) if auth.remote_auth == "pubkey" else []
        return [
            IdentificationInitiator(auth.local_id.id_type, auth.local_id.data),
            *cert_payloads(auth),
            *certreq,
            *contact,
            auth_payload,
            *ppk_notifies,
            *transport_notify(child.mode),
            sa_payload(self.child_proposals, spi=self.child_spi.to_bytes(4, "big")),
            TrafficSelectorsInitiator(self.local_ts),
            TrafficSelectorsResponder(self.remote_ts),
        ]

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        auth = sa.peer.auth
        assert auth is not None
        if message.notify(AUTHENTICATION_FAILED) is not None:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} rejected our authentication: AUTHENTICATION_FAILED"
                f" ({refusal_hint(sa, auth)})"
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
            keys, verified, ppk_used = self._verify_responder(
                sa, auth, ident, auth_payload, message
            )
        except AuthenticationFailed:
            # Our keys are valid and the peer thinks the SA is up: tell it (RFC 7296 §2.21.2).
            sa.send_one_way_informational([Notify(AUTHENTICATION_FAILED)])
            raise
        sa.keys = keys  # PPK-mixed SK_d when the PPK was used (RFC 8784 §3)
        their_id = format_identity(ident.id_type, ident.data)
        sa.handshake.authenticated(
            _auth_record(auth, self.our_method, verified, their_id, ppk_used)
        )
        sa.established(now, initial_contact=_initial_contact(message))
        assert self.child is not None
        name = self.child.name
        try:
            child = self._child(sa, message, now)
        except ProtocolError as exc:
            reason = f"CHILD_SA {name} with peer {sa.peer_name} failed: {exc.reason}"
            sa.last_error = reason
            sa.events.append(NegotiationFailed(sa.peer_name, reason, child=name))
            sa.wanted_children = tuple(c for c in sa.wanted_children if c != name)
            if not sa.wanted_children:
                # No IKE SA without a CHILD_SA: report and delete (RFC 7296 §1.4.1); with
                # more children wanted it stays for them (strongSwan keeps it too).
                sa.tasks.insert(0, DeleteIkeSa(reason))
            return TaskResult.DONE
        report_narrowing(sa, name, self.child, child.local_ts, child.remote_ts)
        sa.install_child(child, now)
        return TaskResult.DONE

    def _verify_responder(
        self,
        sa: IkeSa,
        auth: AuthConfig,
        ident: IdentificationResponder,
        auth_payload: Authentication,
        message: Message,
    ) -> tuple[IkeKeys, PeerAuthenticated, bool]:
        """The responder's identity and AUTH; the keys of the IKE SA from now on and
        whether they are mixed with the PPK."""
        assert sa.keys is not None
        theirs = (ident.id_type, ident.data)
        if not same_id(auth.remote_id, theirs):
            raise AuthenticationFailed(
                f"peer {sa.peer_name} (responder) identified as"
                f" {format_identity(*theirs)}, but remote_id is {auth.remote_id}"
            )
        keys, ppk_used = sa.keys, False
        if self.ppk is not None:
            if message.notify(NotifyType.PPK_IDENTITY) is not None:
                keys, ppk_used = self.ppk.keys, True
            elif auth.ppk is not None and auth.ppk.required:
                raise AuthenticationFailed(
                    f"peer {sa.peer_name} did not use the post-quantum preshared key"
                    f" '{_ppk_id_text(auth)}' (no PPK_IDENTITY in its IKE_AUTH response) and"
                    " ppk_required is set"
                )
        verified = verify_peer(sa, auth, keys, False, theirs, auth_payload, message, self.int_auth)
        return keys, verified, ppk_used

    def _child(self, sa: IkeSa, message: Message, now: float) -> ChildSa:
        assert self.child is not None
        error = message.error_notify()
        protocol, mode = self.child.protocol, self.child.mode
        if error is not None:
            raise ProtocolError(
                f"peer refused the CHILD_SA with {notify_name(error.notify_type)}; we proposed"
                f" {protocol.upper()} {format_proposals(self.child_proposals)}"
                f" in {mode} mode,"
                f" TSi={format_selectors(self.local_ts)} TSr={format_selectors(self.remote_ts)}"
            )
        chosen = check_answer(
            message.find(SecurityAssociation),
            self.child_proposals,
            protocol,
            sa.peer_name,
            fatal=False,
        )
        check_mode_answer(mode, transport_requested(message), sa.peer_name)
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
            name=self.child.name,
            mode=mode,
        )

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder side: find the peer by its ID, verify its AUTH (and certificate), then
    authenticate ourselves and set up the first CHILD_SA."""
    ident = message.find(IdentificationInitiator)
    auth_payload = message.find(Authentication)
    if ident is None or auth_payload is None:
        raise InvalidSyntax(f"IKE_AUTH request from {sa.remote[0]} lacks IDi or AUTH")
    theirs = (ident.id_type, ident.data)
    their_id = format_identity(*theirs)
    candidates = sa.candidates or (sa.peer,)
    peer = first_with_id(candidates, theirs)
    if peer is None or peer.auth is None:
        expected = ", ".join(
            f"{p.name}: {p.auth.remote_id}" for p in candidates if p.auth is not None
        )
        raise AuthenticationFailed(
            f"initiator at {sa.remote[0]} identified as {their_id}, which matches no"
            f" configured remote_id ({expected})"
        )
    sa.peer = peer
    auth = peer.auth
    handshake = sa.handshake
    if handshake.pending:
        missing = ", ".join(f"ke{n}_{alg.name}" for n, alg in handshake.pending)
        raise InvalidSyntax(
            f"peer {peer.name} started IKE_AUTH before the additional key exchange(s) {missing}"
            " it agreed to in IKE_SA_INIT (RFC 9370): refused, no downgrade"
        )
    int_auth = handshake.int_auth_octets(message.message_id)
    keys, no_ppk_auth, ppk_used = _responder_ppk(sa, auth, message)
    verified = verify_peer(
        sa, auth, keys, True, theirs, auth_payload, message, int_auth, auth_data=no_ppk_auth
    )
    ours, how = our_auth(sa, auth, keys, False, int_auth)
    sa.keys = keys  # PPK-mixed SK_d when the PPK was used (RFC 8784 §3)
    response: list[Payload] = [
        IdentificationResponder(auth.local_id.id_type, auth.local_id.data),
        *cert_payloads(auth),
        ours,
        *([Notify(NotifyType.PPK_IDENTITY)] if ppk_used else []),
    ]
    handshake.authenticated(_auth_record(auth, how, verified, their_id, ppk_used))
    sa.established(now, initial_contact=_initial_contact(message))
    try:
        child, child_payloads = respond_child(sa, message, sa.nonce_i, sa.nonce_r, b"", now)
    except ProtocolError as exc:
        reason = f"CHILD_SA with peer {peer.name} refused: {exc.reason}"
        sa.last_error = reason
        sa.events.append(NegotiationFailed(peer.name, reason))
        return response + [Notify(exc.notify_type, exc.notify_data)]
    sa.install_child(child, now)
    return response + child_payloads


def _responder_ppk(
    sa: IkeSa, auth: AuthConfig, message: Message
) -> tuple[IkeKeys, bytes | None, bool]:
    """RFC 8784 §3 as responder: the keys to verify and answer with, the NO_PPK_AUTH data
    to verify instead of the AUTH payload's (None: the AUTH payload), and whether the PPK
    is used.  Raises :class:`AuthenticationFailed` when the PPK is required and missing."""
    assert sa.keys is not None
    required = auth.ppk is not None and auth.ppk.required
    if not sa.handshake.use_ppk:
        if required:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} did not announce USE_PPK (RFC 8784) and ppk_required is"
                f" set: refused without the post-quantum preshared key '{_ppk_id_text(auth)}'"
            )
        return sa.keys, None, False
    notify = message.notify(NotifyType.PPK_IDENTITY)
    offered = None
    if notify is not None:
        try:
            offered = PpkIdentity.decode(notify.data)
        except ValueError as exc:
            raise InvalidSyntax(f"peer {sa.peer_name}: {exc}") from None
    if (
        offered is not None
        and auth.ppk is not None
        and same_ppk_id(offered.ppk_id, auth.ppk.ppk_id)
    ):
        return mix_ppk(sa.keys, auth.ppk.ppk).keys, None, True
    shown = offered.ppk_id.decode(errors="replace") if offered is not None else None
    if required:
        said = f"offered PPK '{shown}'" if shown is not None else "sent no PPK_IDENTITY"
        raise AuthenticationFailed(
            f"peer {sa.peer_name} {said}, but ppk_required is set for PPK"
            f" '{_ppk_id_text(auth)}': refused (RFC 8784)"
        )
    if offered is None:
        return sa.keys, None, False
    fallback = message.notify(NotifyType.NO_PPK_AUTH)
    if fallback is None:
        raise AuthenticationFailed(
            f"peer {sa.peer_name} authenticated with PPK '{shown}', which we do not have, and"
            " sent no NO_PPK_AUTH (it requires the PPK): configure the same ppk_id/ppk_file"
        )
    return sa.keys, fallback.data, False


@dataclass(frozen=True)
class ChildPlan:
    """A CHILD_SA the responder agreed to, before its keys (RFC 7296 §1.3, §2.9): the
    chosen proposal, our inbound SPI, the narrowed selectors as answered and the mode.

    ``local_ts``/``remote_ts`` are what the data plane installs: ``tsr``/``tsi``, except
    for transport mode across a NAT (RFC 7296 §2.23.1), where the selectors are answered
    unchanged and the SA is installed for the endpoints as this side sees them.
    """

    chosen: ChosenProposal
    spi_in: int
    tsi: Selectors
    tsr: Selectors
    name: str = ""  # the configured child it is for
    mode: str = "tunnel"
    local_ts: Selectors | None = None  # None: tsr
    remote_ts: Selectors | None = None  # None: tsi

    def payloads(self, ke_payload: KeyExchange | None = None) -> list[Payload]:
        """SA (with our SPI), [KEr,] TSi, TSr [, N(USE_TRANSPORT_MODE)] of the answer (the
        caller adds Nr)."""
        out: list[Payload] = [chosen_sa_payload(self.chosen, spi=self.spi_in.to_bytes(4, "big"))]
        if ke_payload is not None:
            out.append(ke_payload)
        return out + [
            TrafficSelectorsInitiator(self.tsi),
            TrafficSelectorsResponder(self.tsr),
            *transport_notify(self.mode),
        ]

    def child(
        self,
        sa: IkeSa,
        shared: bytes,
        nonce_i: bytes,
        nonce_r: bytes,
        now: float,
        additional: Sequence[bytes] = (),
    ) -> ChildSa:
        """The CHILD_SA with its keys from ``shared`` (and additional key exchanges)."""
        return negotiated_child(
            sa,
            self.chosen,
            self.spi_in,
            exchange_initiator=False,
            shared=shared,
            nonces=(nonce_i, nonce_r),
            local_ts=self.tsr if self.local_ts is None else self.local_ts,
            remote_ts=self.tsi if self.remote_ts is None else self.remote_ts,
            now=now,
            additional=additional,
            name=self.name,
            mode=self.mode,
        )


def requested_child(
    sa: IkeSa, message: Message, rekeyed: ChildSa | None = None
) -> tuple[ChildConfig, Selectors, Selectors]:
    """Responder: the configured child a CHILD_SA request is for, with TSi/TSr narrowed
    to its selectors (RFC 7296 §2.9).  A rekey stays with the child of the SA it replaces
    while that child is configured; a new CHILD_SA goes to the child its selectors fit
    (:func:`~ipsecd.ike.child.select_child`), among the children of the mode asked for
    (USE_TRANSPORT_MODE, RFC 7296 §1.3.1) when there are such."""
    peer = sa.peer
    selectors = _selectors(message)
    if selectors is None:
        raise InvalidSyntax(f"peer {peer.name} proposed a CHILD_SA without TSi/TSr")
    tsi, tsr = selectors
    same = peer.child(rekeyed.name) if rekeyed is not None else None
    if same is not None:
        return select_child((same,), tsi, tsr, peer.name)
    wanted = "transport" if transport_requested(message) else "tunnel"
    children = tuple(c for c in peer.children if c.mode == wanted) or peer.children
    return select_child(children, tsi, tsr, peer.name)


def _transport_across_nat(
    sa: IkeSa, message: Message, rekeyed: ChildSa | None
) -> ChildConfig | None:
    """Responder: the transport-mode child a request across a NAT is for (RFC 7296
    §2.23.1), whose selectors name addresses the NAT changed; None when this is not
    such a request."""
    if not (sa.nat_local or sa.nat_remote) or not transport_requested(message):
        return None
    peer = sa.peer
    same = peer.child(rekeyed.name) if rekeyed is not None else None
    candidates = (same,) if same is not None else peer.children
    return next((c for c in candidates if c.mode == "transport"), None)


def plan_child(
    sa: IkeSa, message: Message, *, in_ike_auth: bool = False, rekeyed: ChildSa | None = None
) -> ChildPlan:
    """Negotiate a CHILD_SA as responder: the configured child its selectors fit (TS
    narrowing), the mode, SA selection among that child's ESP or AH proposals (without
    key exchanges in IKE_AUTH), our SPI.

    Shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 §1.3).  Raises a
    :class:`ProtocolError` (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE) whose text
    names both sides' offers, a mode we cannot answer, or AH across a NAT.
    """
    peer = sa.peer
    local_ts: Selectors | None = None
    remote_ts: Selectors | None = None
    across_nat = _transport_across_nat(sa, message, rekeyed)
    if across_nat is not None:
        selectors = _selectors(message)
        if selectors is None:
            raise InvalidSyntax(f"peer {peer.name} proposed a CHILD_SA without TSi/TSr")
        config, (new_tsi, new_tsr) = across_nat, selectors
        # RFC 7296 §2.23.1: answered unchanged, installed for the endpoints we see.
        local_ts, remote_ts = transport_nat_selectors(
            new_tsi, new_tsr, sa.local[0], sa.remote[0], peer.name
        )
    else:
        config, new_tsi, new_tsr = requested_child(sa, message, rekeyed)
    mode = responder_mode(config.mode, transport_requested(message), peer.name)
    proposals = without_ke(config.child_proposals) if in_ike_auth else config.child_proposals
    chosen = choose(message.find(SecurityAssociation), proposals, config.protocol, peer.name)
    try:
        check_ah_without_nat(chosen.protocol, sa.nat_local, sa.nat_remote, peer.name)
    except ProtocolError as exc:
        raise NoProposalChosen(exc.reason) from None
    spi_in = new_child_spi(sa.random_bytes, sa.children)
    return ChildPlan(chosen, spi_in, new_tsi, new_tsr, config.name, mode, local_ts, remote_ts)


def respond_child(
    sa: IkeSa,
    message: Message,
    nonce_i: bytes,
    nonce_r: bytes,
    shared_secret: bytes,
    now: float,
) -> tuple[ChildSa, list[Payload]]:
    """IKE_AUTH's CHILD_SA: :func:`plan_child` and the CHILD_SA with its keys, and the
    answer's payloads."""
    plan = plan_child(sa, message, in_ike_auth=True)
    return plan.child(sa, shared_secret, nonce_i, nonce_r, now), plan.payloads()
