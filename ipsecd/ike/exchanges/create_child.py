"""CREATE_CHILD_SA for additional CHILD_SAs (RFC 7296 §1.3.1), optional PFS.

strongSwan's ``child_create`` task outside IKE_AUTH::

    HDR, SK {SA, Ni, [KEi], TSi, TSr}  -->
                                   <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}

KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) (§2.17).  A failed CREATE_CHILD_SA
does not harm the IKE SA (§1.3): only the exchange fails.

Rekeying a CHILD_SA (§1.3.3) is a CREATE_CHILD_SA with N(REKEY_SA): the
initiator task is :class:`~ipsecd.ike.exchanges.rekey.RekeyChildSa`, the
responder steps (:func:`child_to_rekey`, :func:`responded_to_rekey`) are here.
Rekeying the IKE SA (§1.3.2) is answered by :mod:`ipsecd.ike.exchanges.rekey`;
:mod:`ipsecd.ike.exchanges` dispatches on the SA payload's protocol.
"""

from __future__ import annotations

from ipsecd.crypto import keyexchange
from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import KeAlgorithm
from ipsecd.ike.child import ChildSa, check_narrowed_as_initiator, new_child_spi
from ipsecd.ike.constants import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.errors import (
    INVALID_KE_PAYLOAD,
    ChildSaNotFound,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    ProtocolError,
    TemporaryFailure,
    notify_name,
)
from ipsecd.ike.events import NegotiationFailed
from ipsecd.ike.exchanges.auth import negotiated_child, respond_child
from ipsecd.ike.lifecycle import ChildEvent, ChildState
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import (
    KeyExchange,
    Nonce,
    Payload,
    SecurityAssociation,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
)
from ipsecd.ike.proposal_codec import check_answer, choose, format_proposals, sa_payload
from ipsecd.ike.sa import IkeSa, TaskResult
from ipsecd.selectors import TrafficSelector, format_selectors

NONCE_LEN = 32
Selectors = tuple[TrafficSelector, ...]


class CreateChildSa:
    """Initiator side: one additional CHILD_SA (strongSwan ``child_create`` build_i/process_i)."""

    exchange_type = ExchangeType.CREATE_CHILD_SA
    name = "CREATE_CHILD_SA"

    def __init__(
        self,
        local_ts: Selectors,
        remote_ts: Selectors,
        proposals: tuple[Proposal, ...],
        group: KeAlgorithm | None = None,
        attempts: int = 0,
    ) -> None:
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.proposals = proposals
        pfs_groups = [g for p in proposals for g in p.ke]
        self.group = group if group is not None else (pfs_groups[0] if pfs_groups else None)
        self.attempts = attempts
        self.nonce = b""
        self.key_exchange: keyexchange.KeyExchange | None = None
        self.spi_in = 0
        self.nonce_r = b""
        self.error_type: int | None = None  # error notify the peer answered with

    def extra_payloads(self, sa: IkeSa) -> list[Payload]:
        """Hook for subclasses (N(REKEY_SA) for a rekey, §1.3.3)."""
        return []

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None:
        self.spi_in = new_child_spi(sa.random_bytes, sa.children)
        if not self.nonce:
            self.nonce = sa.random_bytes(NONCE_LEN)
        payloads = self.extra_payloads(sa)
        payloads += [
            sa_payload(self.proposals, spi=self.spi_in.to_bytes(4, "big")),
            Nonce(self.nonce),
        ]
        if self.group is not None:
            self.key_exchange = keyexchange.new(self.group)
            payloads.append(KeyExchange(int(self.group.transform_id), self.key_exchange.public))
        payloads += [
            TrafficSelectorsInitiator(self.local_ts),
            TrafficSelectorsResponder(self.remote_ts),
        ]
        return payloads

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        child = self.negotiated_child(sa, message, now)
        if child is not None:
            self.install(sa, child, now)
        return TaskResult.DONE

    def install(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        """Hook for subclasses (a rekey decides about the old CHILD_SA here)."""
        sa.install_child(child, now)

    def negotiated_child(self, sa: IkeSa, message: Message, now: float) -> ChildSa | None:
        """The CHILD_SA of the response, or None when the exchange is retried (INVALID_KE)."""
        invalid_ke = message.notify(INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            self._retry_with_group(sa, invalid_ke.data)
            return None
        error = message.error_notify()
        if error is not None:
            self.error_type = error.notify_type
            raise ProtocolError(
                f"peer {sa.peer_name} refused CREATE_CHILD_SA with"
                f" {notify_name(error.notify_type)}; we proposed ESP"
                f" {format_proposals(self.proposals)},"
                f" TSi={format_selectors(self.local_ts)} TSr={format_selectors(self.remote_ts)}",
                fatal=False,
            )
        chosen = check_answer(
            message.find(SecurityAssociation), self.proposals, "esp", sa.peer_name, fatal=False
        )
        nonce_r = message.find(Nonce)
        tsi = message.find(TrafficSelectorsInitiator)
        tsr = message.find(TrafficSelectorsResponder)
        if nonce_r is None or tsi is None or tsr is None:
            raise InvalidSyntax("CREATE_CHILD_SA response lacks Nr, TSi or TSr", fatal=False)
        shared = b""
        if self.group is not None:
            ke = message.find(KeyExchange)
            if ke is None or ke.group != self.group.transform_id:
                raise InvalidSyntax(
                    f"CREATE_CHILD_SA response from {sa.peer_name} lacks KE for"
                    f" {self.group.name} (PFS)",
                    fatal=False,
                )
            assert self.key_exchange is not None
            shared = self.key_exchange.shared_secret(ke.data)
        check_narrowed_as_initiator(
            self.local_ts, self.remote_ts, tsi.selectors, tsr.selectors, sa.peer_name
        )
        self.nonce_r = nonce_r.data
        return negotiated_child(
            sa,
            chosen,
            self.spi_in,
            exchange_initiator=True,
            shared=shared,
            nonces=(self.nonce, nonce_r.data),
            local_ts=tsi.selectors,
            remote_ts=tsr.selectors,
            now=now,
        )

    def _retry_with_group(self, sa: IkeSa, data: bytes) -> None:
        """RFC 7296 §1.3: INVALID_KE_PAYLOAD ends this exchange; retry in a new one."""
        wanted = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
        match = next((g for p in self.proposals for g in p.ke if g.transform_id == wanted), None)
        if match is None or self.attempts >= 2:
            raise NoProposalChosen(
                f"peer {sa.peer_name} wants PFS group {wanted} for the CHILD_SA, which our"
                f" ESP proposals {format_proposals(self.proposals)} do not allow",
                fatal=False,
            )
        sa.tasks.insert(0, self.retry_task(match))

    def retry_task(self, group: KeAlgorithm) -> CreateChildSa:
        return CreateChildSa(
            self.local_ts, self.remote_ts, self.proposals, group, self.attempts + 1
        )

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        # The IKE SA stays; only this CHILD_SA was not created (RFC 7296 §1.3).
        sa.last_error = reason
        sa.events.append(NegotiationFailed(sa.peer_name, reason))

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


# ---- responder ------------------------------------------------------------------------


def mark_rekeyed(sa: IkeSa, child: ChildSa, now: float) -> None:
    """The child is replaced; it keeps decrypting until its Delete (RFC 7296 §2.8)."""
    sa.child_transition(child, ChildEvent.REKEYED, now)
    child.was_rekeyed = True
    child.rekey_at = None


def child_to_rekey(sa: IkeSa, message: Message) -> ChildSa | None:
    """Responder: the CHILD_SA a request's N(REKEY_SA) names, None if it is no rekey."""
    rekey = message.notify(NotifyType.REKEY_SA)
    if rekey is None or rekey.protocol_id != ProtocolId.ESP:
        return None
    spi = int.from_bytes(rekey.spi, "big") if rekey.spi else 0
    # The SPI is the peer's inbound SPI: our outbound one (§1.3.3).
    old = next((c for c in sa.children.values() if c.spi_out == spi), None)
    if old is None:
        raise ChildSaNotFound(
            f"peer {sa.peer_name} asked to rekey CHILD_SA {spi:08x}, which we do not have",
            fatal=False,
        )
    if old.state not in (ChildState.INSTALLED, ChildState.REKEYING):
        raise TemporaryFailure(
            f"peer {sa.peer_name} asked to rekey CHILD_SA {old.spi_in:08x}/{spi:08x},"
            f" which is already {old.state.value}",
            fatal=False,
        )
    return old


def responded_to_rekey(
    sa: IkeSa, old: ChildSa, child: ChildSa, nonce_i: bytes, nonce_r: bytes, now: float
) -> None:
    """Responder: ``child`` replaces ``old``; we keep sending on ``old`` until it is deleted."""
    child.replaces = old.spi_in
    child.outbound_active = False
    if old.state is ChildState.REKEYING:
        # Our own rekey of it is outstanding: decide by the nonces when it ends (§2.8.1).
        old.peer_rekey = (child.spi_in, min(nonce_i, nonce_r))
    else:
        mark_rekeyed(sa, old, now)


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder side (strongSwan ``child_create`` process_r/build_r), rekeys included.

    Errors are non-fatal: the IKE SA survives a refused CHILD_SA (§1.3).
    """
    old = child_to_rekey(sa, message)
    nonce_i = message.find(Nonce)
    offered = message.find(SecurityAssociation)
    if nonce_i is None or offered is None:
        raise InvalidSyntax("CREATE_CHILD_SA request lacks SA or Ni", fatal=False)
    proposals = sa.peer.esp_proposals
    try:
        chosen = choose(offered, proposals, "esp", sa.peer_name)
    except ProtocolError as exc:
        raise exc.non_fatal() from None
    ke = message.find(KeyExchange)
    shared = b""
    ke_payload = None
    group = chosen.ke
    if group is not None:
        if ke is None or ke.group != group.transform_id:
            raise InvalidKePayload(
                f"peer {sa.peer_name} sent KE for group {ke.group if ke else 'none'},"
                f" we selected PFS group {group.name}",
                group=int(group.transform_id),
            ).non_fatal()
        key_exchange = keyexchange.new(group)
        try:
            shared = key_exchange.shared_secret(ke.data)
        except ValueError as exc:
            raise InvalidSyntax(f"invalid KE value: {exc}", fatal=False) from None
        ke_payload = KeyExchange(int(group.transform_id), key_exchange.public)
    nonce_r = sa.random_bytes(NONCE_LEN)
    try:
        child, payloads = respond_child(
            sa, message, proposals, nonce_i.data, nonce_r, shared, now, ke_payload=ke_payload
        )
    except ProtocolError as exc:
        raise exc.non_fatal() from None
    if old is not None:
        responded_to_rekey(sa, old, child, nonce_i.data, nonce_r, now)
    sa.install_child(child, now)
    # Nr goes after SA (RFC 7296 §1.3.1 order: SA, Nr, [KEr], TSi, TSr).
    return [payloads[0], Nonce(nonce_r), *payloads[1:]]
