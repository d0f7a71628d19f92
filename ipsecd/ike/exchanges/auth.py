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

import os
from typing import Any

from ipsecd.ike.child import (
    ChildSa,
    check_narrowed_as_initiator,
    child_params,
    narrow_as_responder,
)
from ipsecd.ike.errors import (
    AUTHENTICATION_FAILED,
    AuthenticationFailed,
    InvalidSyntax,
    ProtocolError,
    notify_name,
)
from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished, NegotiationFailed
from ipsecd.ike.exchanges import base
from ipsecd.ike.sa import IkeSa, TaskResult


def new_child_spi(sa: IkeSa) -> int:
    """A random inbound ESP SPI, unused on this IKE SA, never 0..255 (RFC 4303 §2.1)."""
    while True:
        spi = int.from_bytes(os.urandom(4), "big")
        if spi > 255 and spi not in sa.children:
            return spi


def established(sa: IkeSa, now: float) -> None:
    sa.transition("auth_done")
    sa.established_at = now
    sa.last_error = None
    sa.check_duplicates = True  # crossing initiations leave one IKE SA (ike/dpd.py)
    sa.events.append(
        IkeSaEstablished(
            sa.peer_name,
            sa.local_spi,
            sa.remote_spi,
            sa.local,
            sa.remote,
            sa.nat_local,
            sa.nat_remote,
        )
    )


def install_child(sa: IkeSa, child: ChildSa) -> None:
    """The child is fully negotiated: record it and tell the shell (no half-installed SA)."""
    child.transition("established")
    sa.children[child.spi_in] = child
    assert child.params is not None
    sa.events.append(ChildSaEstablished(sa.peer_name, child.params, child.outbound_active))


def describe_id(identity: Any) -> str:
    return base.format_identity(identity.id_type, identity.data)


class IkeAuth:
    """Initiator side: authenticate with the PSK and ask for the first CHILD_SA."""

    exchange_type = base.IKE_AUTH
    name = "IKE_AUTH"

    def __init__(self) -> None:
        self.child_spi = 0
        self.local_ts: tuple[Any, ...] = ()
        self.remote_ts: tuple[Any, ...] = ()
        self.esp_proposals: tuple[Any, ...] = ()

    def build_request(self, sa: IkeSa, now: float) -> list[Any]:
        peer = sa.peer
        auth = peer.auth
        self.child_spi = new_child_spi(sa)
        self.local_ts = tuple(peer.local_ts)
        self.remote_ts = tuple(peer.remote_ts)
        self.esp_proposals = base.without_ke(tuple(peer.esp_proposals))  # no KE in IKE_AUTH
        id_payload = base.p_id(True, auth.local_id.id_type, auth.local_id.data)
        auth_data = base.psk_auth(sa, auth.psk, True, auth.local_id.id_type, auth.local_id.data)
        sa.transition("auth_sent")
        # RFC 7296 §2.4: "we have no other IKE SA with you; forget any you still hold".
        contact = [base.p_notify(base.N_INITIAL_CONTACT)] if sa.send_initial_contact else []
        return [
            id_payload,
            *contact,
            base.p_auth(auth_data),
            base.p_sa_esp(self.esp_proposals, self.child_spi),
            base.p_ts(True, self.local_ts),
            base.p_ts(False, self.remote_ts),
        ]

    def process_response(self, sa: IkeSa, message: base.Incoming, now: float) -> TaskResult:
        peer = sa.peer
        auth = peer.auth
        if base.find_notify(message, AUTHENTICATION_FAILED) is not None:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} rejected our authentication: AUTHENTICATION_FAILED"
                f" (we are {describe_id(auth.local_id)}; check the PSK and the identity the"
                " peer expects)"
            )
        ident = base.find_id(message, initiator=False)
        auth_payload = base.find_auth(message)
        if ident is None or auth_payload is None:
            error = base.error_notify(message)
            if error is not None:
                raise ProtocolError(
                    f"peer {sa.peer_name} refused IKE_AUTH with {notify_name(error[0])}"
                )
            raise InvalidSyntax(f"IKE_AUTH response from {sa.peer_name} lacks IDr or AUTH")
        try:
            self._verify_responder(sa, ident, auth_payload)
        except AuthenticationFailed:
            # Our keys are valid and the peer thinks the SA is up: tell it (RFC 7296 §2.21.2).
            sa.send_one_way_informational([base.p_notify(AUTHENTICATION_FAILED)])
            raise
        established(sa, now)
        sa.initial_contact_received = base.find_notify(message, base.N_INITIAL_CONTACT) is not None
        try:
            child = self._child(sa, message)
        except ProtocolError as exc:
            # No IKE SA without its first CHILD_SA: report and delete (RFC 7296 §1.4.1).
            reason = f"CHILD_SA with peer {sa.peer_name} failed: {exc.reason}"
            sa.last_error = reason
            sa.events.append(NegotiationFailed(sa.peer_name, reason))
            from ipsecd.ike.exchanges.informational import DeleteIkeSa

            sa.tasks.insert(0, DeleteIkeSa(reason))
            return TaskResult.DONE
        install_child(sa, child)
        return TaskResult.DONE

    def _verify_responder(
        self, sa: IkeSa, ident: tuple[int, bytes], auth_payload: tuple[int, bytes]
    ) -> None:
        auth = sa.peer.auth
        id_type, id_data = ident
        if (id_type, id_data) != (auth.remote_id.id_type, auth.remote_id.data):
            raise AuthenticationFailed(
                f"peer {sa.peer_name} (responder) identified as"
                f" {base.format_identity(id_type, id_data)}, but remote_id is"
                f" {describe_id(auth.remote_id)}"
            )
        method, data = auth_payload
        expected = base.psk_auth(sa, auth.psk, False, id_type, id_data)
        if method != base.AUTH_PSK or not base.constant_time_eq(data, expected):
            raise AuthenticationFailed(
                f"peer {sa.peer_name} (responder, {describe_id(auth.remote_id)}) sent an AUTH"
                " payload that does not verify with our PSK (pre-shared keys differ)"
            )

    def _child(self, sa: IkeSa, message: base.Incoming) -> ChildSa:
        error = base.error_notify(message)
        if error is not None:
            kind, _ = error
            raise ProtocolError(
                f"peer refused the CHILD_SA with {notify_name(kind)}; we proposed"
                f" ESP {base.format_proposals(self.esp_proposals)},"
                f" TSi={base.format_ts(self.local_ts)} TSr={base.format_ts(self.remote_ts)}"
            )
        algs, spi_out = base.select_esp_response(message, self.esp_proposals, sa.peer_name)
        tsi = base.find_ts(message, initiator=True)
        tsr = base.find_ts(message, initiator=False)
        if tsi is None or tsr is None:
            raise InvalidSyntax("IKE_AUTH response lacks TSi/TSr")
        check_narrowed_as_initiator(self.local_ts, self.remote_ts, tsi, tsr, sa.peer_name)
        nonce_i, nonce_r = sa.exchange_data["nonce_i"], sa.exchange_data["nonce_r"]
        keymat = base.child_keymat(sa, algs, b"", nonce_i, nonce_r)
        child = ChildSa(spi_in=self.child_spi, spi_out=spi_out, local_ts=tsi, remote_ts=tsr)
        child.algorithms = algs
        child.params = child_params(
            spi_in=self.child_spi,
            spi_out=spi_out,
            algs=algs,
            keymat=keymat,
            exchange_initiator=True,
            local_ts=tsi,
            remote_ts=tsr,
            remote=sa.remote,
        )
        return child

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: base.Incoming, now: float) -> list[Any]:
    """Responder side: find the peer by its ID, verify AUTH, then the first CHILD_SA."""
    ident = base.find_id(message, initiator=True)
    auth_payload = base.find_auth(message)
    if ident is None or auth_payload is None:
        raise InvalidSyntax(f"IKE_AUTH request from {sa.remote[0]} lacks IDi or AUTH")
    id_type, id_data = ident
    their_id = base.format_identity(id_type, id_data)
    candidates = sa.candidates or (sa.peer,)
    peer = next(
        (
            p
            for p in candidates
            if (p.auth.remote_id.id_type, p.auth.remote_id.data) == (id_type, id_data)
        ),
        None,
    )
    if peer is None:
        expected = ", ".join(f"{p.name}: {describe_id(p.auth.remote_id)}" for p in candidates)
        raise AuthenticationFailed(
            f"initiator at {sa.remote[0]} identified as {their_id}, which matches no"
            f" configured remote_id ({expected})"
        )
    sa.peer = peer
    method, data = auth_payload
    expected_auth = base.psk_auth(sa, peer.auth.psk, True, id_type, id_data)
    if method != base.AUTH_PSK or not base.constant_time_eq(data, expected_auth):
        raise AuthenticationFailed(
            f"peer {peer.name} (initiator, {their_id}) sent an AUTH payload that does not"
            " verify with our PSK (pre-shared keys differ)"
        )
    local_id = peer.auth.local_id
    response: list[Any] = [
        base.p_id(False, local_id.id_type, local_id.data),
        base.p_auth(base.psk_auth(sa, peer.auth.psk, False, local_id.id_type, local_id.data)),
    ]
    established(sa, now)
    sa.initial_contact_received = base.find_notify(message, base.N_INITIAL_CONTACT) is not None
    try:
        child, child_payloads = respond_child(
            sa,
            message,
            base.without_ke(tuple(peer.esp_proposals)),
            sa.exchange_data["nonce_i"],
            sa.exchange_data["nonce_r"],
            b"",
        )
    except ProtocolError as exc:
        reason = f"CHILD_SA with peer {peer.name} refused: {exc.reason}"
        sa.last_error = reason
        sa.events.append(NegotiationFailed(peer.name, reason))
        return response + [base.p_notify(exc.notify_type, exc.notify_data)]
    install_child(sa, child)
    return response + child_payloads


def respond_child(
    sa: IkeSa,
    message: base.Incoming,
    proposals: tuple[Any, ...],
    nonce_i: bytes,
    nonce_r: bytes,
    shared_secret: bytes,
    ke_payload: Any = None,
) -> tuple[ChildSa, list[Any]]:
    """Negotiate a CHILD_SA as responder: SA selection, TS narrowing, keys.

    Shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 §1.3).  Raises a
    :class:`ProtocolError` (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE) whose text
    names both sides' offers.
    """
    peer = sa.peer
    algs, spi_out, chosen = base.select_esp_request(message, proposals, peer.name)
    tsi = base.find_ts(message, initiator=True)
    tsr = base.find_ts(message, initiator=False)
    if tsi is None or tsr is None:
        raise InvalidSyntax(f"peer {peer.name} proposed a CHILD_SA without TSi/TSr")
    new_tsi, new_tsr = narrow_as_responder(
        tsi, tsr, tuple(peer.local_ts), tuple(peer.remote_ts), peer.name
    )
    spi_in = new_child_spi(sa)
    keymat = base.child_keymat(sa, algs, shared_secret, nonce_i, nonce_r)
    child = ChildSa(spi_in=spi_in, spi_out=spi_out, local_ts=new_tsr, remote_ts=new_tsi)
    child.algorithms = algs
    child.params = child_params(
        spi_in=spi_in,
        spi_out=spi_out,
        algs=algs,
        keymat=keymat,
        exchange_initiator=False,
        local_ts=new_tsr,
        remote_ts=new_tsi,
        remote=sa.remote,
    )
    payloads: list[Any] = [base.p_sa_esp_chosen(chosen, spi_in)]
    if ke_payload is not None:
        payloads.append(ke_payload)
    payloads += [base.p_ts(True, new_tsi), base.p_ts(False, new_tsr)]
    return child, payloads
