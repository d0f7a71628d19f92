"""Rekeying with CREATE_CHILD_SA: CHILD_SAs (RFC 7296 §1.3.3, §2.8) and the IKE SA (§1.3.2, §2.18).

strongSwan's ``child_rekey`` and ``ike_rekey`` tasks::

    HDR, SK {N(REKEY_SA), SA, Ni, [KEi], TSi, TSr}  -->        (CHILD_SA)
                              <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}
    HDR, SK {SA, Ni, KEi}  -->                                  (IKE SA)
                              <--  HDR, SK {SA, Nr, KEr}

CHILD_SA, make-before-break (§2.8):

* the initiator installs the new pair when the response arrives (its new
  outbound SA takes over at once: the responder already has the inbound
  one), then deletes the old pair with an INFORMATIONAL exchange; the old
  inbound SA keeps decrypting until that Delete is answered;
* the responder installs the new inbound SA with its response but keeps
  sending on the old SA until the old one is deleted (the initiator may not
  have processed the response yet), like strongSwan;
* simultaneous rekeys of one CHILD_SA (§2.8.1): each side answers the other's
  request; of the two new SAs, the one created by the exchange holding the
  lowest of the four nonces is redundant: nobody sends on it and its creator
  (the initiator of that exchange) deletes it; the initiator of the
  surviving exchange deletes the old SA.  A rekey request for an SA that is
  already replaced gets TEMPORARY_FAILURE (§2.25), one for an unknown SA
  CHILD_SA_NOT_FOUND.

IKE SA (§2.18): keys from SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
with the new SPIs; the initiator of the rekey is the original initiator of
the new IKE SA, message ids restart at 0, every CHILD_SA moves over, and the
rekey initiator deletes the old IKE SA.  Simultaneous IKE SA rekeys (§2.8.2):
each side answers the other's request; once both exchanges are done, the new
IKE SA of the exchange holding the lowest of the four nonces is redundant and
deleted by its initiator, the CHILD_SAs move to the other new SA, and the
initiator of that surviving exchange deletes the old IKE SA.  Any other
request while an exchange or a CHILD_SA operation is in flight is refused
with TEMPORARY_FAILURE and retried after a random pause (strongSwan does the
same for half-open CHILD_SAs).
"""

from __future__ import annotations

from ipsecd.crypto import keyexchange
from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import KeAlgorithm
from ipsecd.ike import keys
from ipsecd.ike.child import ChildSa
from ipsecd.ike.constants import ExchangeType, NotifyType, ProtocolId
from ipsecd.ike.errors import (
    CHILD_SA_NOT_FOUND,
    INVALID_KE_PAYLOAD,
    TEMPORARY_FAILURE,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    ProtocolError,
    TemporaryFailure,
    notify_name,
)
from ipsecd.ike.events import NegotiationFailed
from ipsecd.ike.exchanges.create_child import NONCE_LEN, CreateChildSa, mark_rekeyed
from ipsecd.ike.exchanges.informational import DeleteChildSa, DeleteIkeSa
from ipsecd.ike.lifecycle import ChildEvent, ChildState, IkeState
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import KeyExchange, Nonce, Notify, Payload, SecurityAssociation
from ipsecd.ike.proposal_codec import (
    check_answer,
    choose,
    chosen_sa_payload,
    format_proposals,
    sa_payload,
)
from ipsecd.ike.sa import IkeSa, RandomBytes, Successor, TaskResult, new_ike_spi
from ipsecd.selectors import TrafficSelector

#: Errors that only mean "not now" during a rekey: retried quietly, not reported.
QUIET_ERRORS = (TEMPORARY_FAILURE, CHILD_SA_NOT_FOUND)


def random_unit(random_bytes: RandomBytes) -> float:
    """A uniform value in [0, 1) (jitter for lifetimes and retries)."""
    return int.from_bytes(random_bytes(4), "big") / 2**32


def retry_delay(random_bytes: RandomBytes) -> float:
    """Pause before retrying a refused rekey: 1..3 s at random, so colliding sides diverge."""
    return 1.0 + 2.0 * random_unit(random_bytes)


def is_ike_rekey(message: Message) -> bool:
    """A CREATE_CHILD_SA whose SA payload proposes an IKE SA (RFC 7296 §1.3.2)."""
    offered = message.find(SecurityAssociation)
    return (
        offered is not None
        and bool(offered.proposals)
        and offered.proposals[0].protocol_id == ProtocolId.IKE
    )


# ---- CHILD_SA ---------------------------------------------------------------------


class RekeyChildSa(CreateChildSa):
    """Initiator: rekey the CHILD_SA with inbound SPI ``old_spi`` (strongSwan ``child_rekey``)."""

    name = "CREATE_CHILD_SA (rekey CHILD_SA)"

    def __init__(
        self,
        old_spi: int,
        local_ts: tuple[TrafficSelector, ...],
        remote_ts: tuple[TrafficSelector, ...],
        proposals: tuple[Proposal, ...],
        group: KeAlgorithm | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(local_ts, remote_ts, proposals, group, attempts)
        self.old_spi = old_spi

    def extra_payloads(self, sa: IkeSa) -> list[Payload]:
        # The SPI is the one we expect in inbound packets of the old SA (§1.3.3).
        return [
            Notify(
                NotifyType.REKEY_SA, protocol_id=ProtocolId.ESP, spi=self.old_spi.to_bytes(4, "big")
            )
        ]

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None:
        old = sa.children.get(self.old_spi)
        if old is None:
            return None
        old.rekey_queued = False
        if old.state is ChildState.INSTALLED:
            sa.child_transition(old, ChildEvent.REKEY_STARTED, now)
        elif not (old.state is ChildState.REKEYING and self.attempts):
            return None  # replaced or being deleted meanwhile: nothing to rekey
        return super().build_request(sa, now)

    def retry_task(self, group: KeAlgorithm) -> CreateChildSa:
        return RekeyChildSa(
            self.old_spi, self.local_ts, self.remote_ts, self.proposals, group, self.attempts + 1
        )

    def install(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        old = sa.children.get(self.old_spi)
        if old is None or old.state not in (ChildState.REKEYING, ChildState.REKEYED):
            sa.install_child(child, now)  # the old SA vanished meanwhile: the new one stands
            return
        child.replaces = old.spi_in
        collision = old.peer_rekey
        if collision is not None:
            sa.count("child_rekey_collisions")
            their_spi, their_lowest = collision
            if min(self.nonce, self.nonce_r) < their_lowest:
                # Ours holds the lowest nonce: redundant, never sent on; we delete it and
                # the peer, whose SA survives, deletes the old one (§2.8.1).
                child.redundant = True
                child.outbound_active = False
                sa.install_child(child, now)
                if old.state is ChildState.REKEYING:
                    mark_rekeyed(sa, old, now)
                sa.tasks.insert(
                    0,
                    DeleteChildSa(
                        [child.spi_in], "redundant after a simultaneous rekey (RFC 7296 §2.8.1)"
                    ),
                )
                return
            theirs = sa.children.get(their_spi)
            if theirs is not None:
                theirs.redundant = True  # the peer deletes it; we never send on it
        sa.install_child(child, now)
        if old.state is ChildState.REKEYING:
            mark_rekeyed(sa, old, now)
        sa.tasks.insert(0, DeleteChildSa([old.spi_in], "rekeyed"))

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        old = sa.children.get(self.old_spi)
        if old is not None and old.state is ChildState.REKEYING:
            if old.peer_rekey is not None:
                mark_rekeyed(sa, old, now)  # the peer's rekey stands; it deletes the old SA
            else:
                sa.child_transition(old, ChildEvent.REKEY_FAILED, now)
                old.rekey_at = now + retry_delay(sa.random_bytes)
        if self.error_type in QUIET_ERRORS:
            sa.count("child_rekey_retries")
            return
        super().failed(sa, reason, now)


# ---- IKE SA -------------------------------------------------------------------------


def _busy(sa: IkeSa) -> bool:
    return any(c.state is not ChildState.INSTALLED for c in sa.children.values())


class RekeyIkeSa:
    """Initiator: rekey the IKE SA (strongSwan ``ike_rekey`` build_i/process_i)."""

    exchange_type = ExchangeType.CREATE_CHILD_SA
    name = "CREATE_CHILD_SA (rekey IKE SA)"

    def __init__(
        self, proposals: tuple[Proposal, ...], group: KeAlgorithm | None = None, attempts: int = 0
    ) -> None:
        self.proposals = proposals
        self.group: KeAlgorithm = group if group is not None else proposals[0].ke[0]
        self.attempts = attempts
        self.nonce = b""
        self.spi = 0
        self.key_exchange: keyexchange.KeyExchange | None = None
        self.error_type: int | None = None

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None:
        sa.rekey_queued = False
        if sa.state is not IkeState.ESTABLISHED or sa.rekeyed_to is not None:
            return None
        if _busy(sa):  # a CHILD_SA is being rekeyed or deleted: try again shortly
            sa.rekey_at = now + retry_delay(sa.random_bytes)
            return None
        self.spi = new_ike_spi(sa.random_bytes)
        self.nonce = sa.random_bytes(NONCE_LEN)
        self.key_exchange = keyexchange.new(self.group)
        return [
            sa_payload(self.proposals, spi=self.spi.to_bytes(8, "big")),
            Nonce(self.nonce),
            KeyExchange(int(self.group.transform_id), self.key_exchange.public),
        ]

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        invalid_ke = message.notify(INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            data = invalid_ke.data
            wanted = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
            offered = [g for p in self.proposals for g in p.ke]
            match = next((g for g in offered if g.transform_id == wanted), None)
            if match is None or self.attempts >= 2:
                raise NoProposalChosen(
                    f"peer {sa.peer_name} wants key exchange group {wanted} for the IKE rekey,"
                    f" which our IKE proposals {format_proposals(self.proposals)}"
                    " do not allow",
                    fatal=False,
                )
            sa.tasks.insert(0, RekeyIkeSa(self.proposals, match, self.attempts + 1))
            return TaskResult.DONE
        error = message.error_notify()
        if error is not None:
            self.error_type = error.notify_type
            raise ProtocolError(
                f"peer {sa.peer_name} refused the IKE SA rekey with"
                f" {notify_name(error.notify_type)};"
                f" we proposed {format_proposals(self.proposals)}",
                fatal=False,
            )
        chosen = check_answer(
            message.find(SecurityAssociation), self.proposals, "ike", sa.peer_name, fatal=False
        )
        nonce_r = message.find(Nonce)
        ke = message.find(KeyExchange)
        if nonce_r is None or ke is None or chosen.ke is None:
            raise InvalidSyntax("IKE rekey response lacks Nr or KE", fatal=False)
        if ke.group != self.group.transform_id or chosen.ke.transform_id != ke.group:
            raise InvalidSyntax(
                f"IKE rekey response from {sa.peer_name}: KE group {ke.group} is not the one"
                f" we sent ({self.group.name})",
                fatal=False,
            )
        assert self.key_exchange is not None and sa.keys is not None
        try:
            shared = self.key_exchange.shared_secret(ke.data)
        except ValueError as exc:
            raise InvalidSyntax(f"invalid KE value in the IKE rekey: {exc}", fatal=False) from None
        spi_r = int.from_bytes(chosen.spi, "big")
        if not spi_r:
            raise InvalidSyntax("IKE rekey response without the responder's new SPI", fatal=False)
        new_keys = keys.derive_rekeyed_ike_keys(
            sa.keys, chosen, shared, self.nonce, nonce_r.data, self.spi, spi_r
        )
        new = sa.successor(
            initiator=True, spi_i=self.spi, spi_r=spi_r, keys=new_keys, chosen=chosen, now=now
        )
        collision, sa.rekey_collision = sa.rekey_collision, None
        if collision is not None and min(self.nonce, nonce_r.data) < collision[1]:
            # Ours holds the lowest nonce (§2.8.2): redundant, deleted by us, its creator;
            # the peer's new SA survives and the peer deletes the old one.
            sa.yield_to(collision[0], now)
            new.rekeyed_to = collision[0]
            new.tasks = [DeleteIkeSa("redundant after a simultaneous rekey (RFC 7296 §2.8.2)")]
            sa.signals.append(Successor(new))
            return TaskResult.DONE
        if collision is not None:
            # The peer's new SA is the redundant one: the peer deletes it (or we do,
            # after the grace period of a replaced SA).
            redundant = collision[0]
            redundant.collision_pending = False
            redundant.rekeyed_to, redundant.rekeyed_at = new, now
        sa.adopt_successor(new, now)
        # Whatever was queued runs on the new SA; the old one is deleted (§2.18).
        new.tasks, sa.tasks = sa.tasks, [DeleteIkeSa("rekeyed")]
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        if sa.rekey_collision is not None:
            # The peer's simultaneous rekey went through (§2.8.2): its new SA is the one.
            theirs, sa.rekey_collision = sa.rekey_collision[0], None
            sa.yield_to(theirs, now)
            sa.count("ike_rekey_retries")
            return
        sa.rekey_at = now + retry_delay(sa.random_bytes)
        if self.error_type in QUIET_ERRORS:
            sa.count("ike_rekey_retries")
            return
        sa.last_error = reason
        sa.events.append(NegotiationFailed(sa.peer_name, reason))

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        if sa.rekey_collision is not None:
            self.failed(sa, reason, now)
            return
        sa.fail(reason, now)


def respond_ike_rekey(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder of an IKE SA rekey (strongSwan ``ike_rekey`` process_r/build_r)."""
    if sa.rekeyed_to is not None or sa.state is not IkeState.ESTABLISHED:
        raise TemporaryFailure(f"IKE SA with {sa.peer_name} is already rekeyed", fatal=False)
    own = sa.outstanding.task if sa.outstanding is not None else None
    colliding = isinstance(own, RekeyIkeSa) and sa.rekey_collision is None
    if (own is not None and not colliding) or _busy(sa):
        raise TemporaryFailure(
            f"peer {sa.peer_name} asked to rekey the IKE SA while another exchange or a"
            " CHILD_SA operation is in progress",
            fatal=False,
        )
    nonce_i = message.find(Nonce)
    ke = message.find(KeyExchange)
    if nonce_i is None or ke is None:
        raise InvalidSyntax("IKE rekey request lacks Ni or KE", fatal=False)
    try:
        chosen = choose(
            message.find(SecurityAssociation), sa.peer.ike_proposals, "ike", sa.peer_name
        )
    except ProtocolError as exc:
        raise exc.non_fatal() from None
    if chosen.ke is None or ke.group != chosen.ke.transform_id:
        raise InvalidKePayload(
            f"peer {sa.peer_name} sent KE for group {ke.group} in the IKE rekey,"
            f" we selected {chosen.ke.name if chosen.ke else 'none'}",
            group=int(chosen.ke.transform_id) if chosen.ke else 0,
        ).non_fatal()
    spi_i = int.from_bytes(chosen.spi, "big")
    if not spi_i:
        raise InvalidSyntax("IKE rekey request without the initiator's new SPI", fatal=False)
    key_exchange = keyexchange.new(chosen.ke)
    try:
        shared = key_exchange.shared_secret(ke.data)
    except ValueError as exc:
        raise InvalidSyntax(f"invalid KE value in the IKE rekey: {exc}", fatal=False) from None
    assert sa.keys is not None
    nonce_r = sa.random_bytes(NONCE_LEN)
    spi_r = new_ike_spi(sa.random_bytes)
    new_keys = keys.derive_rekeyed_ike_keys(
        sa.keys, chosen, shared, nonce_i.data, nonce_r, spi_i, spi_r
    )
    new = sa.successor(
        initiator=False, spi_i=spi_i, spi_r=spi_r, keys=new_keys, chosen=chosen, now=now
    )
    if colliding:
        # Our own rekey of this IKE SA is in flight (§2.8.2): the nonce rule decides
        # which new SA survives once it ends.  Known to the manager from now on (the peer
        # may use it first), but not used by us until then.
        sa.rekey_collision = (new, min(nonce_i.data, nonce_r))
        new.collision_pending = True
        sa.signals.append(Successor(new))
        sa.count("ike_rekey_collisions")
    else:
        sa.after_response = lambda: sa.adopt_successor(new, now)
    return [
        chosen_sa_payload(chosen, spi=spi_r.to_bytes(8, "big")),
        Nonce(nonce_r),
        KeyExchange(int(chosen.ke.transform_id), key_exchange.public),
    ]
