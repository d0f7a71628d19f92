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

import os
from typing import Any

from ipsecd.ike.child import ChildSa, ChildState
from ipsecd.ike.errors import (
    CHILD_SA_NOT_FOUND,
    INVALID_KE_PAYLOAD,
    TEMPORARY_FAILURE,
    ChildSaNotFound,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    ProtocolError,
    TemporaryFailure,
    notify_name,
)
from ipsecd.ike.events import IkeSaEstablished, NegotiationFailed
from ipsecd.ike.exchanges import base
from ipsecd.ike.exchanges.auth import install_child
from ipsecd.ike.exchanges.create_child import NONCE_LEN, CreateChildSa
from ipsecd.ike.sa import IkeSa, IkeState, TaskResult

#: Errors that only mean "not now" during a rekey: retried quietly, not reported.
QUIET_ERRORS = (TEMPORARY_FAILURE, CHILD_SA_NOT_FOUND)


def random_unit() -> float:
    """A uniform value in [0, 1) from os.urandom (jitter for lifetimes and retries)."""
    return int.from_bytes(os.urandom(4), "big") / 2**32


def retry_delay() -> float:
    """Pause before retrying a refused rekey: 1..3 s at random, so colliding sides diverge."""
    return 1.0 + 2.0 * random_unit()


def mark_rekeyed(child: ChildSa) -> None:
    """The child is replaced; it keeps decrypting until its Delete (RFC 7296 §2.8)."""
    child.transition("rekeyed")
    child.was_rekeyed = True
    child.rekey_at = None


# ---- CHILD_SA ---------------------------------------------------------------------


class RekeyChildSa(CreateChildSa):
    """Initiator: rekey the CHILD_SA with inbound SPI ``old_spi`` (strongSwan ``child_rekey``)."""

    name = "CREATE_CHILD_SA (rekey CHILD_SA)"

    def __init__(
        self,
        old_spi: int,
        local_ts: tuple[Any, ...],
        remote_ts: tuple[Any, ...],
        proposals: tuple[Any, ...],
        group: Any = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(local_ts, remote_ts, proposals, group, attempts)
        self.old_spi = old_spi

    def extra_payloads(self, sa: IkeSa) -> list[Any]:
        # The SPI is the one we expect in inbound packets of the old SA (§1.3.3).
        return [
            base.p_notify(
                base.N_REKEY_SA, protocol=base.PROTO_ESP, spi=self.old_spi.to_bytes(4, "big")
            )
        ]

    def build_request(self, sa: IkeSa, now: float) -> list[Any] | None:  # type: ignore[override]
        old = sa.children.get(self.old_spi)
        if old is None:
            return None
        old.rekey_queued = False
        if old.state is ChildState.INSTALLED:
            old.transition("rekey_started")
        elif not (old.state is ChildState.REKEYING and self.attempts):
            return None  # replaced or being deleted meanwhile: nothing to rekey
        return super().build_request(sa, now)

    def retry_task(self, group: Any) -> CreateChildSa:
        return RekeyChildSa(
            self.old_spi, self.local_ts, self.remote_ts, self.proposals, group, self.attempts + 1
        )

    def install(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        from ipsecd.ike.exchanges.informational import DeleteChildSa

        old = sa.children.get(self.old_spi)
        if old is None or old.state not in (ChildState.REKEYING, ChildState.REKEYED):
            install_child(sa, child)  # the old SA vanished meanwhile: the new one just stands
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
                install_child(sa, child)
                if old.state is ChildState.REKEYING:
                    mark_rekeyed(old)
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
        install_child(sa, child)
        if old.state is ChildState.REKEYING:
            mark_rekeyed(old)
        sa.tasks.insert(0, DeleteChildSa([old.spi_in], "rekeyed"))

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        old = sa.children.get(self.old_spi)
        if old is not None and old.state is ChildState.REKEYING:
            if old.peer_rekey is not None:
                mark_rekeyed(old)  # the peer's rekey stands; it deletes the old SA
            else:
                old.transition("rekey_failed")
                old.rekey_at = now + retry_delay()
        if self.error_type in QUIET_ERRORS:
            sa.count("child_rekey_retries")
            return
        super().failed(sa, reason, now)


def child_to_rekey(sa: IkeSa, message: base.Incoming) -> ChildSa | None:
    """Responder: the CHILD_SA a request's N(REKEY_SA) names, None if it is no rekey."""
    rekey = base.find_rekey_sa(message)
    if rekey is None or rekey[0] != base.PROTO_ESP:
        return None
    spi = rekey[1]  # the peer's inbound SPI: our outbound one (§1.3.3)
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
    sa: IkeSa, old: ChildSa, child: ChildSa, nonce_i: bytes, nonce_r: bytes
) -> None:
    """Responder: ``child`` replaces ``old``; we keep sending on ``old`` until it is deleted."""
    child.replaces = old.spi_in
    child.outbound_active = False
    if old.state is ChildState.REKEYING:
        # Our own rekey of it is outstanding: decide by the nonces when it ends (§2.8.1).
        old.peer_rekey = (child.spi_in, min(nonce_i, nonce_r))
    else:
        mark_rekeyed(old)


# ---- IKE SA -------------------------------------------------------------------------


def successor(
    sa: IkeSa, *, initiator: bool, spi_i: int, spi_r: int, keys: Any, chosen: Any, now: float
) -> IkeSa:
    """The IKE SA replacing ``sa`` (§2.18), established, without children yet."""
    new = IkeSa(
        peer=sa.peer,
        initiator=initiator,
        local=sa.local,
        remote=sa.remote,
        natt_port=sa.natt_port,
        policy=sa.policy,
        created_at=now,
        counters=sa.counters,
    )
    new.spi_i, new.spi_r = spi_i, spi_r
    new.keys = keys
    new.ike_algorithms = chosen
    new.nat_local, new.nat_remote = sa.nat_local, sa.nat_remote
    # Fragmentation (RFC 7383) is negotiated only in IKE_SA_INIT: the new SA keeps it.
    new.fragmentation_peer = sa.fragmentation_peer
    new.gateway_fragment_size = sa.gateway_fragment_size
    new.reassembly_budget = sa.reassembly_budget
    new.last_keepalive = sa.last_keepalive
    new.last_peer_activity = now
    new.established_at = now
    new.transition("rekey_done")
    return new


def adopt(old: IkeSa, new: IkeSa, now: float) -> None:
    """Move every CHILD_SA to ``new`` and hand it to the manager (§2.18)."""
    new.children, old.children = old.children, {}
    old.rekeyed_to = new
    old.rekeyed_at = now
    old.spawned.append(new)
    old.count("ike_sa_rekeyed")
    new.events.append(
        IkeSaEstablished(
            new.peer_name,
            new.local_spi,
            new.remote_spi,
            new.local,
            new.remote,
            new.nat_local,
            new.nat_remote,
        )
    )


def _busy(sa: IkeSa) -> bool:
    return any(c.state is not ChildState.INSTALLED for c in sa.children.values())


class RekeyIkeSa:
    """Initiator: rekey the IKE SA (strongSwan ``ike_rekey`` build_i/process_i)."""

    exchange_type = base.CREATE_CHILD_SA
    name = "CREATE_CHILD_SA (rekey IKE SA)"

    def __init__(self, proposals: tuple[Any, ...], group: Any = None, attempts: int = 0) -> None:
        self.proposals = proposals
        self.group = group if group is not None else proposals[0].ke[0]
        self.attempts = attempts
        self.nonce = os.urandom(NONCE_LEN)
        self.spi = 0
        self.key_exchange: Any = None
        self.error_type: int | None = None

    def build_request(self, sa: IkeSa, now: float) -> list[Any] | None:
        sa.rekey_queued = False
        if sa.state is not IkeState.ESTABLISHED or sa.rekeyed_to is not None:
            return None
        if _busy(sa):  # a CHILD_SA is being rekeyed or deleted: try again shortly
            sa.rekey_at = now + retry_delay()
            return None
        from ipsecd.ike.exchanges.sa_init import new_spi

        self.spi = new_spi()
        self.key_exchange = base.new_key_exchange(self.group)
        return [
            base.p_sa_ike(self.proposals, self.spi),
            base.p_nonce(self.nonce),
            base.p_ke(self.group, self.key_exchange.public),
        ]

    def process_response(self, sa: IkeSa, message: base.Incoming, now: float) -> TaskResult:
        from ipsecd.ike.exchanges.informational import DeleteIkeSa

        invalid_ke = base.find_notify(message, INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            wanted = int.from_bytes(invalid_ke[:2], "big") if len(invalid_ke) >= 2 else -1
            offered = [g for p in self.proposals for g in p.ke]
            match = next((g for g in offered if g.transform_id == wanted), None)
            if match is None or self.attempts >= 2:
                raise NoProposalChosen(
                    f"peer {sa.peer_name} wants key exchange group {wanted} for the IKE rekey,"
                    f" which our IKE proposals {base.format_proposals(self.proposals)}"
                    " do not allow",
                    fatal=False,
                )
            sa.tasks.insert(0, RekeyIkeSa(self.proposals, match, self.attempts + 1))
            return TaskResult.DONE
        error = base.error_notify(message)
        if error is not None:
            self.error_type = error[0]
            raise ProtocolError(
                f"peer {sa.peer_name} refused the IKE SA rekey with {notify_name(error[0])};"
                f" we proposed {base.format_proposals(self.proposals)}",
                fatal=False,
            )
        try:
            chosen = base.select_ike_response(message, self.proposals, sa.peer_name)
        except ProtocolError as exc:
            exc.fatal = False
            raise
        nonce_r = base.find_nonce(message)
        ke = base.find_ke(message)
        if nonce_r is None or ke is None or chosen.ke is None:
            raise InvalidSyntax("IKE rekey response lacks Nr or KE", fatal=False)
        if ke[0] != self.group.transform_id or chosen.ke.transform_id != ke[0]:
            raise InvalidSyntax(
                f"IKE rekey response from {sa.peer_name}: KE group {ke[0]} is not the one"
                f" we sent ({self.group.name})",
                fatal=False,
            )
        try:
            shared = self.key_exchange.shared_secret(ke[1])
        except ValueError as exc:
            raise InvalidSyntax(f"invalid KE value in the IKE rekey: {exc}", fatal=False) from None
        spi_r = int.from_bytes(chosen.spi, "big")
        if not spi_r:
            raise InvalidSyntax("IKE rekey response without the responder's new SPI", fatal=False)
        keys = base.derive_rekeyed_ike_keys(
            sa.keys, chosen, shared, self.nonce, nonce_r, self.spi, spi_r
        )
        new = successor(
            sa, initiator=True, spi_i=self.spi, spi_r=spi_r, keys=keys, chosen=chosen, now=now
        )
        collision, sa.rekey_collision = sa.rekey_collision, None
        if collision is not None and min(self.nonce, nonce_r) < collision[1]:
            # Ours holds the lowest nonce (§2.8.2): redundant, deleted by us, its creator;
            # the peer's new SA survives and the peer deletes the old one.
            survives(sa, collision[0], now)
            new.rekeyed_to = collision[0]
            new.tasks = [DeleteIkeSa("redundant after a simultaneous rekey (RFC 7296 §2.8.2)")]
            sa.spawned.append(new)
            return TaskResult.DONE
        if collision is not None:
            # The peer's new SA is the redundant one: the peer deletes it (or we do,
            # after the grace period of a replaced SA).
            redundant = collision[0]
            redundant.collision_pending = False
            redundant.rekeyed_to, redundant.rekeyed_at = new, now
        adopt(sa, new, now)
        # Whatever was queued runs on the new SA; the old one is deleted (§2.18).
        new.tasks, sa.tasks = sa.tasks, [DeleteIkeSa("rekeyed")]
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        if sa.rekey_collision is not None:
            # The peer's simultaneous rekey went through (§2.8.2): its new SA is the one.
            theirs, sa.rekey_collision = sa.rekey_collision[0], None
            survives(sa, theirs, now)
            sa.count("ike_rekey_retries")
            return
        sa.rekey_at = now + retry_delay()
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


def survives(old: IkeSa, theirs: IkeSa, now: float) -> None:
    """The SA the peer's rekey created replaces ``old`` (the peer deletes ``old``)."""
    theirs.collision_pending = False
    adopt(old, theirs, now)
    theirs.tasks, old.tasks = old.tasks, []


def respond_ike_rekey(sa: IkeSa, message: base.Incoming, now: float) -> list[Any]:
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
    nonce_i = base.find_nonce(message)
    ke = base.find_ke(message)
    if nonce_i is None or ke is None:
        raise InvalidSyntax("IKE rekey request lacks Ni or KE", fatal=False)
    try:
        chosen = base.select_ike_request(message, tuple(sa.peer.ike_proposals), sa.peer_name)
    except ProtocolError as exc:
        exc.fatal = False
        raise
    if chosen.ke is None or ke[0] != chosen.ke.transform_id:
        raise InvalidKePayload(
            f"peer {sa.peer_name} sent KE for group {ke[0]} in the IKE rekey,"
            f" we selected {chosen.ke.name if chosen.ke else 'none'}",
            group=int(chosen.ke.transform_id) if chosen.ke else 0,
        ).non_fatal()
    spi_i = int.from_bytes(chosen.spi, "big")
    if not spi_i:
        raise InvalidSyntax("IKE rekey request without the initiator's new SPI", fatal=False)
    key_exchange = base.new_key_exchange(chosen.ke)
    try:
        shared = key_exchange.shared_secret(ke[1])
    except ValueError as exc:
        raise InvalidSyntax(f"invalid KE value in the IKE rekey: {exc}", fatal=False) from None
    from ipsecd.ike.exchanges.sa_init import new_spi

    nonce_r = os.urandom(NONCE_LEN)
    spi_r = new_spi()
    keys = base.derive_rekeyed_ike_keys(sa.keys, chosen, shared, nonce_i, nonce_r, spi_i, spi_r)
    new = successor(
        sa, initiator=False, spi_i=spi_i, spi_r=spi_r, keys=keys, chosen=chosen, now=now
    )
    if colliding:
        # Our own rekey of this IKE SA is in flight (§2.8.2): the nonce rule decides
        # which new SA survives once it ends.  Known to the manager from now on (the peer
        # may use it first), but not used by us until then.
        sa.rekey_collision = (new, min(nonce_i, nonce_r))
        new.collision_pending = True
        sa.spawned.append(new)
        sa.count("ike_rekey_collisions")
    else:
        sa.after_response = lambda: adopt(sa, new, now)
    return [
        base.p_sa_ike_chosen(chosen, spi_r),
        base.p_nonce(nonce_r),
        base.p_ke(chosen.ke, key_exchange.public),
    ]
