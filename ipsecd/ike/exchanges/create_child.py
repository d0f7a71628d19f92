"""CREATE_CHILD_SA for additional CHILD_SAs (RFC 7296 §1.3.1), optional PFS.

strongSwan's ``child_create`` task outside IKE_AUTH::

    HDR, SK {SA, Ni, [KEi], TSi, TSr}  -->
                                   <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}

KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) (§2.17).  A failed CREATE_CHILD_SA
does not harm the IKE SA (§1.3): only the exchange fails.

Rekeying (§1.3.3, §1.3.2) is a CREATE_CHILD_SA too; the initiator tasks and
the rekey-specific responder steps live in :mod:`ipsecd.ike.exchanges.rekey`
(``RekeyChildSa`` subclasses :class:`CreateChildSa`), :func:`respond` hands
requests with N(REKEY_SA) or an IKE SA payload to it.
"""

from __future__ import annotations

import os
from typing import Any

from ipsecd.ike.child import ChildSa, check_narrowed_as_initiator, child_params
from ipsecd.ike.errors import (
    INVALID_KE_PAYLOAD,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    ProtocolError,
    notify_name,
)
from ipsecd.ike.events import NegotiationFailed
from ipsecd.ike.exchanges import base
from ipsecd.ike.exchanges.auth import install_child, new_child_spi, respond_child
from ipsecd.ike.sa import IkeSa, TaskResult

NONCE_LEN = 32


class CreateChildSa:
    """Initiator side: one additional CHILD_SA (strongSwan ``child_create`` build_i/process_i)."""

    exchange_type = base.CREATE_CHILD_SA
    name = "CREATE_CHILD_SA"

    def __init__(
        self,
        local_ts: tuple[Any, ...],
        remote_ts: tuple[Any, ...],
        proposals: tuple[Any, ...],
        group: Any = None,
        attempts: int = 0,
    ) -> None:
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.proposals = proposals
        pfs_groups = [g for p in proposals for g in p.ke]
        self.group = group if group is not None else (pfs_groups[0] if pfs_groups else None)
        self.attempts = attempts
        self.nonce = os.urandom(NONCE_LEN)
        self.key_exchange: Any = None
        self.spi_in = 0
        self.nonce_r = b""
        self.error_type: int | None = None  # error notify the peer answered with

    def extra_payloads(self, sa: IkeSa) -> list[Any]:
        """Hook for subclasses (N(REKEY_SA) for a rekey, §1.3.3)."""
        return []

    def build_request(self, sa: IkeSa, now: float) -> list[Any]:
        self.spi_in = new_child_spi(sa)
        payloads = self.extra_payloads(sa)
        payloads += [base.p_sa_esp(self.proposals, self.spi_in), base.p_nonce(self.nonce)]
        if self.group is not None:
            self.key_exchange = base.new_key_exchange(self.group)
            payloads.append(base.p_ke(self.group, self.key_exchange.public))
        payloads += [base.p_ts(True, self.local_ts), base.p_ts(False, self.remote_ts)]
        return payloads

    def process_response(self, sa: IkeSa, message: base.Incoming, now: float) -> TaskResult:
        child = self.negotiated_child(sa, message, now)
        if child is not None:
            self.install(sa, child, now)
        return TaskResult.DONE

    def install(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        """Hook for subclasses (a rekey decides about the old CHILD_SA here)."""
        install_child(sa, child)

    def negotiated_child(self, sa: IkeSa, message: base.Incoming, now: float) -> ChildSa | None:
        """The CHILD_SA of the response, or None when the exchange is retried (INVALID_KE)."""
        invalid_ke = base.find_notify(message, INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            self._retry_with_group(sa, invalid_ke, now)
            return None
        error = base.error_notify(message)
        if error is not None:
            self.error_type = error[0]
            raise ProtocolError(
                f"peer {sa.peer_name} refused CREATE_CHILD_SA with {notify_name(error[0])};"
                f" we proposed ESP {base.format_proposals(self.proposals)},"
                f" TSi={base.format_ts(self.local_ts)} TSr={base.format_ts(self.remote_ts)}",
                fatal=False,
            )
        algs, spi_out = base.select_esp_response(message, self.proposals, sa.peer_name)
        nonce_r = base.find_nonce(message)
        tsi = base.find_ts(message, initiator=True)
        tsr = base.find_ts(message, initiator=False)
        if nonce_r is None or tsi is None or tsr is None:
            raise InvalidSyntax("CREATE_CHILD_SA response lacks Nr, TSi or TSr", fatal=False)
        shared = b""
        if self.group is not None:
            ke = base.find_ke(message)
            if ke is None or ke[0] != self.group.transform_id:
                raise InvalidSyntax(
                    f"CREATE_CHILD_SA response from {sa.peer_name} lacks KE for"
                    f" {self.group.name} (PFS)",
                    fatal=False,
                )
            shared = self.key_exchange.shared_secret(ke[1])
        check_narrowed_as_initiator(self.local_ts, self.remote_ts, tsi, tsr, sa.peer_name)
        keymat = base.child_keymat(sa, algs, shared, self.nonce, nonce_r)
        child = ChildSa(spi_in=self.spi_in, spi_out=spi_out, local_ts=tsi, remote_ts=tsr)
        child.algorithms = algs
        child.created_at = now
        child.params = child_params(
            spi_in=self.spi_in,
            spi_out=spi_out,
            algs=algs,
            keymat=keymat,
            exchange_initiator=True,
            local_ts=tsi,
            remote_ts=tsr,
            remote=sa.remote,
        )
        self.nonce_r = nonce_r
        return child

    def _retry_with_group(self, sa: IkeSa, data: bytes, now: float) -> None:
        """RFC 7296 §1.3: INVALID_KE_PAYLOAD ends this exchange; retry in a new one."""
        wanted = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
        match = next((g for p in self.proposals for g in p.ke if g.transform_id == wanted), None)
        if match is None or self.attempts >= 2:
            raise NoProposalChosen(
                f"peer {sa.peer_name} wants PFS group {wanted} for the CHILD_SA, which our"
                f" ESP proposals {base.format_proposals(self.proposals)} do not allow",
                fatal=False,
            )
        sa.tasks.insert(0, self.retry_task(match))

    def retry_task(self, group: Any) -> CreateChildSa:
        return CreateChildSa(
            self.local_ts, self.remote_ts, self.proposals, group, self.attempts + 1
        )

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        # The IKE SA stays; only this CHILD_SA was not created (RFC 7296 §1.3).
        sa.last_error = reason
        sa.events.append(NegotiationFailed(sa.peer_name, reason))

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: base.Incoming, now: float) -> list[Any]:
    """Responder side (strongSwan ``child_create`` process_r/build_r).

    Errors are non-fatal: the IKE SA survives a refused CHILD_SA (§1.3).
    """
    from ipsecd.ike.exchanges import rekey

    if base.sa_protocol(message) == base.PROTO_IKE:
        return rekey.respond_ike_rekey(sa, message, now)
    old = rekey.child_to_rekey(sa, message)
    nonce_i = base.find_nonce(message)
    if nonce_i is None or not base.has_sa(message):
        raise InvalidSyntax("CREATE_CHILD_SA request lacks SA or Ni", fatal=False)
    proposals = tuple(sa.peer.esp_proposals)
    try:
        _, _, chosen = base.select_esp_request(message, proposals, sa.peer_name)
    except ProtocolError as exc:
        exc.fatal = False
        raise
    ke = base.find_ke(message)
    shared = b""
    ke_payload = None
    group = base.chosen_ke(chosen)
    if group is not None:
        if ke is None or ke[0] != group.transform_id:
            raise InvalidKePayload(
                f"peer {sa.peer_name} sent KE for group {ke[0] if ke else 'none'},"
                f" we selected PFS group {group.name}",
                group=int(group.transform_id),
            ).non_fatal()
        key_exchange = base.new_key_exchange(group)
        try:
            shared = key_exchange.shared_secret(ke[1])
        except ValueError as exc:
            raise InvalidSyntax(f"invalid KE value: {exc}", fatal=False) from None
        ke_payload = base.p_ke(group, key_exchange.public)
    nonce_r = os.urandom(NONCE_LEN)
    try:
        child, payloads = respond_child(
            sa, message, proposals, nonce_i, nonce_r, shared, ke_payload=ke_payload
        )
    except ProtocolError as exc:
        exc.fatal = False
        raise
    child.created_at = now
    if old is not None:
        rekey.responded_to_rekey(sa, old, child, nonce_i, nonce_r)
    install_child(sa, child)
    # Nr goes after SA (RFC 7296 §1.3.1 order: SA, Nr, [KEr], TSi, TSr).
    return [payloads[0], base.p_nonce(nonce_r), *payloads[1:]]
