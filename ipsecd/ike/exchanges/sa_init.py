"""IKE_SA_INIT (RFC 7296 §1.2): SA, KE, nonces and NAT detection.

strongSwan's ``ike_init`` + ``ike_natd`` tasks in one module::

    HDR, [N(COOKIE),] SAi1, KEi, Ni, N(NATD_SRC), N(NATD_DST)  -->
                                <--  HDR, SAr1, KEr, Nr, N(NATD_SRC), N(NATD_DST)

The initiator answers a COOKIE (§2.6) or INVALID_KE_PAYLOAD (§1.3) by
sending the request again with the same message id (0) and the same nonce;
the cookie stays in later retries (a retry after INVALID_KE_PAYLOAD keeps it,
the §2.6 short form) and the KE value stays unless the group changes.  The
responder's side of cookies and half-open limits is in
:mod:`ipsecd.ike.halfopen`.

IKE fragmentation (RFC 7383 §2.3): both roles add
N(IKEV2_FRAGMENTATION_SUPPORTED) unless the peer's ``fragmentation`` is ``no``
(the responder only when the request carried it); messages after this one
are fragmented when both sides sent it.

NAT-T (§2.23): with the peer's ``encap: always`` (the default) ESP travels
UDP-encapsulated whatever the path, so both roles send a
NAT_DETECTION_SOURCE_IP that cannot match (a random hash, as strongSwan does
with ``encap = yes``): the peer then believes a NAT is present and
encapsulates too.  With ``encap: auto`` the hash is the real one, and ESP
(or AH) goes directly over IP unless a NAT is detected
(:attr:`IkeSa.udp_encap`).  The detection result is computed from the peer's
hashes and reported as ``nat_local`` / ``nat_remote``; IKE floats to port
4500 after this exchange in every case.

What IKE_AUTH and the exchanges before it need is announced here and recorded in
``sa.handshake`` (:mod:`ipsecd.ike.handshake`):

* N(INTERMEDIATE_EXCHANGE_SUPPORTED) (RFC 9242 §3) when our IKE proposals have
  additional key exchanges (RFC 9370, ``keN_``); the responder answers it when
  the request carried it, and selects an additional key exchange only then;
  each one chosen becomes an IKE_INTERMEDIATE exchange
  (:mod:`ipsecd.ike.exchanges.intermediate`) before IKE_AUTH;
* N(SIGNATURE_HASH_ALGORITHMS) (RFC 7427 §4) when a side authenticates with a
  certificate (the responder: when the request carried it);
* CERTREQ with our trust anchors' key hashes (RFC 7296 §3.7) from the responder
  whose candidate peers check certificates (the initiator sends its CERTREQ in
  IKE_AUTH);
* N(USE_PPK) (RFC 8784 §3) when a PPK is configured (the responder: when the
  request carried it and a candidate peer has one).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from ipsecd.config.schema import PeerConfig
from ipsecd.crypto import keyexchange
from ipsecd.crypto.prf import Prf
from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import KeAlgorithm
from ipsecd.ike import keys, nat
from ipsecd.ike.additional_ke import IntAuthChain
from ipsecd.ike.candidates import auths_of, certificate_auths_of
from ipsecd.ike.constants import NONCE_MAX_LEN, NONCE_MIN_LEN, ExchangeType, NotifyType
from ipsecd.ike.errors import (
    INVALID_KE_PAYLOAD,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    notify_name,
)
from ipsecd.ike.exchanges.auth import IkeAuth
from ipsecd.ike.exchanges.intermediate import IkeIntermediate
from ipsecd.ike.hash_algorithms import decode_hash_algorithms, encode_hash_algorithms
from ipsecd.ike.lifecycle import IkeEvent, IkeState
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import KeyExchange, Nonce, Notify, Payload, SecurityAssociation
from ipsecd.ike.peer_auth import certreq_payload_of, peer_certreq
from ipsecd.ike.proposal_codec import (
    ChosenProposal,
    check_answer,
    choose,
    chosen_sa_payload,
    format_proposals,
    sa_payload,
)
from ipsecd.ike.sa import IkeSa, TaskResult, new_ike_spi

NONCE_LEN = 32  # at least half the PRF key size, >= 16 octets (RFC 7296 §2.10)
MAX_INIT_RETRIES = 5  # COOKIE + INVALID_KE_PAYLOAD round trips before giving up
MAX_COOKIE_LEN = 64  # RFC 7296 §2.6


def natd_payloads(sa: IkeSa, spi_i: int, spi_r: int) -> list[Payload]:
    """Our NAT_DETECTION_* notifies; the source hash is faked with ``encap: always``."""
    if sa.peer.encap == "always":
        source = sa.random_bytes(20)
    else:
        source = nat.natd_hash(spi_i, spi_r, sa.local[0], sa.local[1])
    real_destination = nat.natd_hash(spi_i, spi_r, sa.remote[0], sa.remote[1])
    return [
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, source),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, real_destination),
    ]


def detect_nat(sa: IkeSa, message: Message, local: tuple[str, int]) -> None:
    """Real NAT detection from the peer's hashes (RFC 7296 §2.23).

    ``nat_local``: the peer saw a destination that is not our address/port,
    so a NAT sits in front of us.  ``nat_remote``: none of the peer's source
    hashes is the address we received from (this is also True when the peer
    fakes its hash to force encapsulation, like we do).
    """
    sources = [n.data for n in message.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
    dests = [n.data for n in message.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
    if not sources and not dests:
        return
    # The hashes use the SPIs of the message that carried them (SPIr = 0 in a request).
    if dests:
        expected = nat.natd_hash(message.spi_i, message.spi_r, local[0], local[1])
        sa.nat_local = all(d != expected for d in dests)
    if sources:
        expected = nat.natd_hash(message.spi_i, message.spi_r, sa.remote[0], sa.remote[1])
        sa.nat_remote = all(s != expected for s in sources)


def announces_fragmentation(sa: IkeSa) -> bool:
    """We announce RFC 7383 support unless the peer's config says ``fragmentation: no``."""
    return sa.peer.fragmentation != "no"


def _uses_certificates(peer: PeerConfig) -> bool:
    return peer.auth is not None and "pubkey" in (peer.auth.local_auth, peer.auth.remote_auth)


def initiator_announcements(peer: PeerConfig) -> list[Payload]:
    """IKE_INTERMEDIATE, signature hashes and PPK support, as far as this peer needs them."""
    out: list[Payload] = []
    if any(p.additional_ke for p in peer.ike_proposals):
        out.append(Notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
    if _uses_certificates(peer):
        out.append(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, encode_hash_algorithms()))
    if peer.auth is not None and peer.auth.ppk is not None:
        out.append(Notify(NotifyType.USE_PPK))
    return out


def _record_peer_announcements(sa: IkeSa, message: Message, sent: list[Payload]) -> None:
    """What both sides announced, for the exchanges after IKE_SA_INIT (``sa.handshake``)."""
    ours = {n.notify_type for n in sent if isinstance(n, Notify)}
    theirs = {n.notify_type for n in message.notifies()}
    handshake = sa.handshake
    both = ours & theirs
    handshake.intermediate = NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in both
    handshake.use_ppk = NotifyType.USE_PPK in both
    hashes = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if hashes is not None:
        try:
            handshake.peer_hash_algorithms = decode_hash_algorithms(hashes.data)
        except ValueError as exc:
            raise InvalidSyntax(f"peer {sa.peer_name}: {exc}") from None
    handshake.peer_certreq = peer_certreq(message)


def _plan_additional_exchanges(sa: IkeSa, chosen: ChosenProposal) -> None:
    """RFC 9370 §2.2.2: one IKE_INTERMEDIATE per additional key exchange, IntAuth over them."""
    handshake = sa.handshake
    handshake.pending = list(chosen.additional_exchanges)
    if handshake.pending:
        assert chosen.prf is not None
        handshake.int_auth = IntAuthChain(Prf(chosen.prf))


class IkeSaInit:
    """Initiator side (strongSwan ``ike_init`` ``build_i``/``process_i``)."""

    exchange_type = ExchangeType.IKE_SA_INIT
    name = "IKE_SA_INIT"

    def __init__(self, proposals: tuple[Proposal, ...]) -> None:
        self.proposals = proposals
        self.group: KeAlgorithm = proposals[0].ke[0]  # the group we guess first (§1.2)
        self.cookie: bytes | None = None
        self.key_exchange: keyexchange.KeyExchange | None = None
        self.nonce = b""  # chosen once, kept across COOKIE/INVALID_KE retries (§2.6)
        self.retries = 0
        self.announced: list[Payload] = []

    def build_request(self, sa: IkeSa, now: float) -> list[Payload]:
        if not sa.spi_i:
            sa.spi_i = new_ike_spi(sa.random_bytes)
        sa.spi_r = 0
        if not self.nonce:
            self.nonce = sa.random_bytes(NONCE_LEN)
        if self.key_exchange is None:  # kept across a COOKIE retry, new for a new group
            self.key_exchange = keyexchange.new(self.group)
        payloads: list[Payload] = []
        if self.cookie is not None:
            payloads.append(Notify(NotifyType.COOKIE, self.cookie))  # must come first (§2.6)
        payloads += [
            sa_payload(self.proposals),
            KeyExchange(int(self.group.transform_id), self.key_exchange.public),
            Nonce(self.nonce),
        ]
        payloads += natd_payloads(sa, sa.spi_i, 0)
        if announces_fragmentation(sa):
            payloads.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        self.announced = initiator_announcements(sa.peer)
        payloads += self.announced
        if sa.state is IkeState.CREATED:
            sa.transition(IkeEvent.INIT_SENT, now)
        return payloads

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        cookie = message.notify(NotifyType.COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= MAX_COOKIE_LEN:
                raise InvalidSyntax(
                    f"peer {sa.peer_name} sent a {len(cookie.data)}-octet COOKIE (1..64, §2.6)"
                )
            if self.cookie is not None and hmac.compare_digest(cookie.data, self.cookie):
                # The COOKIE answer to a copy sent before we had the cookie (a retransmission
                # crossed it): our request with this cookie is already on its way, and
                # sending it again would only earn the same answer twice.
                return TaskResult.STALE
            sa.count("cookies_received")
            return self._retry(sa, "COOKIE", lambda: setattr(self, "cookie", cookie.data), now)
        invalid_ke = message.notify(INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            return self._invalid_ke(sa, invalid_ke.data, now)
        error = message.error_notify()
        if error is not None:
            raise NoProposalChosen(
                f"peer {sa.peer_name} refused IKE_SA_INIT with {notify_name(error.notify_type)};"
                f" we offered {format_proposals(self.proposals)}"
            )
        chosen = check_answer(
            message.find(SecurityAssociation), self.proposals, "ike", sa.peer_name, fatal=True
        )
        ke = message.find(KeyExchange)
        nonce = message.find(Nonce)
        if ke is None or nonce is None:
            raise InvalidSyntax(f"IKE_SA_INIT response from {sa.peer_name} lacks KE or Nonce")
        if (
            ke.group != self.group.transform_id
            or chosen.ke is None
            or chosen.ke.transform_id != ke.group
        ):
            raise InvalidSyntax(
                f"IKE_SA_INIT response from {sa.peer_name}: KE group {ke.group} is not the"
                f" one we sent ({self.group.name})"
            )
        _record_peer_announcements(sa, message, self.announced)
        if chosen.additional_exchanges and not sa.handshake.intermediate:
            raise NoProposalChosen(
                f"peer {sa.peer_name} chose additional key exchanges ({chosen}) without"
                " announcing IKE_INTERMEDIATE (RFC 9242), which carries them"
            )
        assert self.key_exchange is not None
        sa.spi_r = message.spi_r
        shared = self.key_exchange.shared_secret(ke.data)
        sa.ike_algorithms = chosen
        sa.keys = keys.derive_ike_keys(chosen, shared, self.nonce, nonce.data, sa.spi_i, sa.spi_r)
        sa.init_request = sa.outstanding.data if sa.outstanding else b""
        sa.init_response = message.raw
        sa.nonce_i, sa.nonce_r = self.nonce, nonce.data
        detect_nat(sa, message, sa.local)
        sa.fragmentation_peer = (
            announces_fragmentation(sa)
            and message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        )
        sa.float_to_natt()
        _plan_additional_exchanges(sa, chosen)
        intermediates = [IkeIntermediate(n, alg) for n, alg in chosen.additional_exchanges]
        sa.tasks[0:0] = [*intermediates, IkeAuth()]
        return TaskResult.DONE

    def _retry(self, sa: IkeSa, why: str, apply: Callable[[], None], now: float) -> TaskResult:
        self.retries += 1
        if self.retries > MAX_INIT_RETRIES:
            raise InvalidSyntax(
                f"peer {sa.peer_name} keeps answering IKE_SA_INIT with {why};"
                f" gave up after {MAX_INIT_RETRIES} attempts"
            )
        apply()
        sa.transition(IkeEvent.INIT_RETRY, now)
        return TaskResult.RETRY

    def _invalid_ke(self, sa: IkeSa, data: bytes, now: float) -> TaskResult:
        """RFC 7296 §1.3: retry with the group the responder asks for, if we offer it."""
        wanted = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
        offered = [g for p in self.proposals for g in p.ke]
        match = next((g for g in offered if g.transform_id == wanted), None)
        if match is None or match == self.group:
            raise NoProposalChosen(
                f"peer {sa.peer_name} wants key exchange group {wanted}"
                f" (INVALID_KE_PAYLOAD), which our IKE proposals"
                f" {format_proposals(self.proposals)} do not allow"
            )

        def switch() -> None:
            self.group = match
            self.key_exchange = None  # the cookie does not cover KE: keep it (§2.6)

        return self._retry(sa, "INVALID_KE_PAYLOAD", switch, now)

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder side (strongSwan ``ike_init`` ``process_r``/``build_r``).

    Raises :class:`NoProposalChosen` naming both offers and the transform type
    without a match, or :class:`InvalidKePayload` carrying the group we want.
    """
    ke = message.find(KeyExchange)
    nonce = message.find(Nonce)
    offered = message.find(SecurityAssociation)
    if ke is None or nonce is None or offered is None:
        raise InvalidSyntax(f"IKE_SA_INIT request from {sa.remote[0]} lacks SA, KE or Nonce")
    intermediate = message.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
    chosen = choose(offered, sa.peer.ike_proposals, "ike", sa.who, additional=intermediate)
    assert chosen.ke is not None  # every IKE proposal has a KE transform (config)
    if ke.group != chosen.ke.transform_id:
        raise InvalidKePayload(
            f"{sa.who} sent a KE payload for group {ke.group}, we selected {chosen.ke.name}",
            group=int(chosen.ke.transform_id),
        )
    if not NONCE_MIN_LEN <= len(nonce.data) <= NONCE_MAX_LEN:
        raise InvalidSyntax(f"{sa.who} sent a {len(nonce.data)}-octet nonce (§3.9)")
    key_exchange = keyexchange.new(chosen.ke)
    try:
        shared = key_exchange.shared_secret(ke.data)
    except ValueError as exc:
        raise InvalidSyntax(f"{sa.who} sent an invalid KE value: {exc}") from None
    my_nonce = sa.random_bytes(NONCE_LEN)
    sa.spi_i = message.spi_i
    sa.spi_r = new_ike_spi(sa.random_bytes)
    sa.ike_algorithms = chosen
    sa.keys = keys.derive_ike_keys(chosen, shared, nonce.data, my_nonce, sa.spi_i, sa.spi_r)
    sa.init_request = message.raw
    sa.nonce_i, sa.nonce_r = nonce.data, my_nonce
    detect_nat(sa, message, sa.local)
    payloads: list[Payload] = [
        chosen_sa_payload(chosen),
        KeyExchange(int(chosen.ke.transform_id), key_exchange.public),
        Nonce(my_nonce),
    ]
    payloads += natd_payloads(sa, sa.spi_i, sa.spi_r)
    wants_fragments = message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    if wants_fragments and announces_fragmentation(sa):
        sa.fragmentation_peer = True
        payloads.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    announced = _responder_announcements(sa, message)
    payloads += announced
    _record_peer_announcements(sa, message, announced)
    _plan_additional_exchanges(sa, chosen)
    sa.transition(IkeEvent.INIT_ANSWERED, now)
    return payloads


def _responder_announcements(sa: IkeSa, message: Message) -> list[Payload]:
    """The answers to the initiator's announcements, for the peers it may turn out to be
    (the candidates until IKE_AUTH names one), and our CERTREQ."""
    candidates = sa.candidates or (sa.peer,)
    auths = auths_of(candidates)
    asked = {n.notify_type for n in message.notifies()}
    out: list[Payload] = []
    if NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in asked:
        out.append(Notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
    if NotifyType.SIGNATURE_HASH_ALGORITHMS in asked:
        out.append(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, encode_hash_algorithms()))
    if NotifyType.USE_PPK in asked and any(a.ppk is not None for a in auths):
        out.append(Notify(NotifyType.USE_PPK))
    hashes = {
        h
        for a in certificate_auths_of(candidates)
        if a.trust is not None
        for h in a.trust.store().certreq_hashes()
    }
    if hashes:
        out += certreq_payload_of(sorted(hashes))
    return out
