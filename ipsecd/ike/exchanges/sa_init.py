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

NAT-T (§2.23): ESP only ever travels UDP-encapsulated in this daemon, so
both roles always send a NAT_DETECTION_SOURCE_IP that cannot match (a random
hash, as strongSwan does with ``encap = yes``): the peer then believes a NAT
is present and encapsulates too.  The real detection result is still
computed from the peer's hashes and reported as ``nat_local`` /
``nat_remote``; IKE floats to port 4500 after this exchange in every case.
"""

from __future__ import annotations

import os
from typing import Any

from ipsecd.ike.errors import (
    INVALID_KE_PAYLOAD,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    notify_name,
)
from ipsecd.ike.exchanges import base
from ipsecd.ike.sa import IkeSa, IkeState, TaskResult

NONCE_LEN = 32  # at least half the PRF key size, >= 16 octets (RFC 7296 §2.10)
MAX_INIT_RETRIES = 5  # COOKIE + INVALID_KE_PAYLOAD round trips before giving up
MAX_COOKIE_LEN = 64  # RFC 7296 §2.6


def new_spi() -> int:
    """A random, non-zero 8-octet IKE SPI (RFC 7296 §2.6)."""
    while True:
        spi = int.from_bytes(os.urandom(8), "big")
        if spi:
            return spi


def natd_payloads(sa: IkeSa, spi_i: int, spi_r: int) -> list[Any]:
    """Our NAT_DETECTION_* notifies; the source hash is deliberately faked (module doc)."""
    fake_source = os.urandom(20)
    real_destination = base.natd_hash(spi_i, spi_r, sa.remote)
    return [
        base.p_notify(base.N_NAT_DETECTION_SOURCE_IP, fake_source),
        base.p_notify(base.N_NAT_DETECTION_DESTINATION_IP, real_destination),
    ]


def detect_nat(sa: IkeSa, message: base.Incoming, local: tuple[str, int]) -> None:
    """Real NAT detection from the peer's hashes (RFC 7296 §2.23).

    ``nat_local``: the peer saw a destination that is not our address/port,
    so a NAT sits in front of us.  ``nat_remote``: none of the peer's source
    hashes is the address we received from (this is also True when the peer
    fakes its hash to force encapsulation, like we do).
    """
    sources = base.find_notifies(message, base.N_NAT_DETECTION_SOURCE_IP)
    dests = base.find_notifies(message, base.N_NAT_DETECTION_DESTINATION_IP)
    if not sources and not dests:
        return
    if dests:
        # The hashes use the SPIs of the message that carried them (SPIr = 0 in a request).
        expected = base.natd_hash(message.spi_i, message.spi_r, local)
        sa.nat_local = all(d != expected for d in dests)
    if sources:
        expected = base.natd_hash(message.spi_i, message.spi_r, sa.remote)
        sa.nat_remote = all(s != expected for s in sources)


def announces_fragmentation(sa: IkeSa) -> bool:
    """We announce RFC 7383 support unless the peer's config says ``fragmentation: no``."""
    return getattr(sa.peer, "fragmentation", "yes") != "no"


class IkeSaInit:
    """Initiator side (strongSwan ``ike_init`` ``build_i``/``process_i``)."""

    exchange_type = base.IKE_SA_INIT
    name = "IKE_SA_INIT"

    def __init__(self, proposals: tuple[Any, ...]) -> None:
        self.proposals = proposals
        self.group = proposals[0].ke[0]  # KeAlgorithm we guess first (RFC 7296 §1.2)
        self.cookie: bytes | None = None
        self.key_exchange: Any = None
        self.nonce = os.urandom(NONCE_LEN)
        self.retries = 0

    def build_request(self, sa: IkeSa, now: float) -> list[Any]:
        if not sa.spi_i:
            sa.spi_i = new_spi()
        sa.spi_r = 0
        if self.key_exchange is None:  # kept across a COOKIE retry, new for a new group
            self.key_exchange = base.new_key_exchange(self.group)
        payloads: list[Any] = []
        if self.cookie is not None:
            payloads.append(base.p_notify(base.N_COOKIE, self.cookie))  # must come first (§2.6)
        payloads += [
            base.p_sa_ike(self.proposals),
            base.p_ke(self.group, self.key_exchange.public),
            base.p_nonce(self.nonce),
        ]
        payloads += natd_payloads(sa, sa.spi_i, 0)
        if announces_fragmentation(sa):
            payloads.append(base.p_notify(base.N_IKEV2_FRAGMENTATION_SUPPORTED))
        if sa.state is IkeState.CREATED:
            sa.transition("init_sent")
        return payloads

    def process_response(self, sa: IkeSa, message: base.Incoming, now: float) -> TaskResult:
        cookie = base.find_notify(message, base.N_COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie) <= MAX_COOKIE_LEN:
                raise InvalidSyntax(
                    f"peer {sa.peer_name} sent a {len(cookie)}-octet COOKIE (1..64, §2.6)"
                )
            sa.count("cookies_received")
            return self._retry(sa, "COOKIE", lambda: setattr(self, "cookie", cookie))
        invalid_ke = base.find_notify(message, INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            return self._invalid_ke(sa, invalid_ke)
        error = base.error_notify(message)
        if error is not None:
            kind, _ = error
            raise NoProposalChosen(
                f"peer {sa.peer_name} refused IKE_SA_INIT with {notify_name(kind)};"
                f" we offered {base.format_proposals(self.proposals)}"
            )
        chosen = base.select_ike_response(message, self.proposals, sa.peer_name)
        ke = base.find_ke(message)
        nonce = base.find_nonce(message)
        if ke is None or nonce is None:
            raise InvalidSyntax(f"IKE_SA_INIT response from {sa.peer_name} lacks KE or Nonce")
        group, public = ke
        if group != self.group.transform_id or chosen.ke.transform_id != group:
            raise InvalidSyntax(
                f"IKE_SA_INIT response from {sa.peer_name}: KE group {group} is not the"
                f" one we sent ({self.group.name})"
            )
        sa.spi_r = message.spi_r
        shared = self.key_exchange.shared_secret(public)
        sa.ike_algorithms = chosen
        sa.keys = base.derive_ike_keys(chosen, shared, self.nonce, nonce, sa.spi_i, sa.spi_r)
        sa.exchange_data.update(
            init_request=sa.outstanding.data if sa.outstanding else b"",
            init_response=message.raw,
            nonce_i=self.nonce,
            nonce_r=nonce,
        )
        detect_nat(sa, message, sa.local)
        sa.fragmentation_peer = announces_fragmentation(sa) and (
            base.find_notify(message, base.N_IKEV2_FRAGMENTATION_SUPPORTED) is not None
        )
        sa.float_to_natt()
        from ipsecd.ike.exchanges.auth import IkeAuth

        sa.tasks.insert(0, IkeAuth())
        return TaskResult.DONE

    def _retry(self, sa: IkeSa, why: str, apply: Any) -> TaskResult:
        self.retries += 1
        if self.retries > MAX_INIT_RETRIES:
            raise InvalidSyntax(
                f"peer {sa.peer_name} keeps answering IKE_SA_INIT with {why};"
                f" gave up after {MAX_INIT_RETRIES} attempts"
            )
        apply()
        sa.transition("init_retry")
        return TaskResult.RETRY

    def _invalid_ke(self, sa: IkeSa, data: bytes) -> TaskResult:
        """RFC 7296 §1.3: retry with the group the responder asks for, if we offer it."""
        wanted = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
        offered = [g for p in self.proposals for g in p.ke]
        match = next((g for g in offered if g.transform_id == wanted), None)
        if match is None or match == self.group:
            raise NoProposalChosen(
                f"peer {sa.peer_name} wants key exchange group {wanted}"
                f" (INVALID_KE_PAYLOAD), which our IKE proposals"
                f" {base.format_proposals(self.proposals)} do not allow"
            )

        def switch() -> None:
            self.group = match
            self.key_exchange = None  # the cookie does not cover KE: keep it (§2.6)

        return self._retry(sa, "INVALID_KE_PAYLOAD", switch)

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


def respond(sa: IkeSa, message: base.Incoming, now: float) -> list[Any]:
    """Responder side (strongSwan ``ike_init`` ``process_r``/``build_r``).

    Raises :class:`NoProposalChosen` naming both offers and the transform type
    without a match, or :class:`InvalidKePayload` carrying the group we want.
    """
    ke = base.find_ke(message)
    nonce = base.find_nonce(message)
    if ke is None or nonce is None or not base.has_sa(message):
        raise InvalidSyntax(f"IKE_SA_INIT request from {sa.remote[0]} lacks SA, KE or Nonce")
    proposals = tuple(sa.peer.ike_proposals)
    chosen = base.select_ike_request(message, proposals, sa.peer_name)
    group, public = ke
    if group != chosen.ke.transform_id:
        raise InvalidKePayload(
            f"peer {sa.peer_name} sent a KE payload for group {group},"
            f" we selected {chosen.ke.name}",
            group=int(chosen.ke.transform_id),
        )
    if len(nonce) < 16 or len(nonce) > 256:
        raise InvalidSyntax(f"peer {sa.peer_name} sent a {len(nonce)}-octet nonce (§3.9)")
    key_exchange = base.new_key_exchange(chosen.ke)
    try:
        shared = key_exchange.shared_secret(public)
    except ValueError as exc:
        raise InvalidSyntax(f"peer {sa.peer_name} sent an invalid KE value: {exc}") from None
    my_nonce = os.urandom(NONCE_LEN)
    sa.spi_i = message.spi_i
    sa.spi_r = new_spi()
    sa.ike_algorithms = chosen
    sa.keys = base.derive_ike_keys(chosen, shared, nonce, my_nonce, sa.spi_i, sa.spi_r)
    sa.exchange_data.update(init_request=message.raw, nonce_i=nonce, nonce_r=my_nonce)
    detect_nat(sa, message, sa.local)
    payloads = [
        base.p_sa_ike_chosen(chosen),
        base.p_ke(chosen.ke, key_exchange.public),
        base.p_nonce(my_nonce),
    ]
    payloads += natd_payloads(sa, sa.spi_i, sa.spi_r)
    offered = base.find_notify(message, base.N_IKEV2_FRAGMENTATION_SUPPORTED) is not None
    if offered and announces_fragmentation(sa):
        sa.fragmentation_peer = True
        payloads.append(base.p_notify(base.N_IKEV2_FRAGMENTATION_SUPPORTED))
    sa.transition("init_answered")
    return payloads
