"""Certificates, hybrid post-quantum key exchange and PPK between two in-memory ipsecd.

Two IkeManagers through :class:`~tests.unit.ike_pair_support.IkePair`: certificate
authentication (RFC 7296 §3.6-3.8, RFC 7427) with each key type, refusals (revoked,
expired, wrong identity, untrusted) explained on both sides, IKE_INTERMEDIATE with
ML-KEM-768/1024 (RFC 9242, RFC 9370) fragmented where large, and PPK (RFC 8784).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ipsecd.ike import events as ev
from ipsecd.ike import payloads as pl
from ipsecd.ike.constants import ExchangeType, NotifyType, PayloadType
from ipsecd.ike.errors import NO_PROPOSAL_CHOSEN
from ipsecd.pki.issue import make_crl
from tests.unit.ike_pair_support import (
    A_IP,
    B_IP,
    DropFirst,
    IkePair,
    esp_roundtrip,
    ipv4_packet,
    messages,
    notify_types,
    side_a,
    side_b,
)
from tests.unit.pki_support import NOW, Issued, ca, gateway, write_credentials, write_ppk

HYBRID_768 = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
HYBRID_1024 = "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024"


def clock():  # certificate validity is checked against this wall clock
    return NOW


def gw_a(root: Issued, key_type: str = "ecdsa-p256", **kw) -> Issued:
    return gateway(root, (A_IP, "gw-a.example"), "C=CH, O=Test, CN=gw-a.example", key_type, **kw)


def gw_b(root: Issued, key_type: str = "ecdsa-p256", **kw) -> Issued:
    return gateway(root, (B_IP, "gw-b.example"), "C=CH, O=Test, CN=gw-b.example", key_type, **kw)


def cert_pair(
    tmp_path: Path,
    a_cert: Issued,
    b_cert: Issued,
    *,
    root: Issued | None = None,
    a_crls=(),
    b_crls=(),
    a_extra: tuple[str, ...] = (),
    b_extra: tuple[str, ...] = (),
    a_kwargs: dict | None = None,
    b_kwargs: dict | None = None,
    start: bool = True,
) -> IkePair:
    root = root or ca()
    a_lines = write_credentials(tmp_path / "ca", "a", a_cert, (root,), a_crls) + a_extra
    b_lines = write_credentials(tmp_path / "cb", "b", b_cert, (root,), b_crls) + b_extra
    a = side_a(use_psk=False, auth_lines=a_lines, **(a_kwargs or {}))
    b = side_b(use_psk=False, auth_lines=b_lines, **(b_kwargs or {}))
    return IkePair(tmp_path, a, b, wall_clock=clock, start=start)


def failures(pair: IkePair, side: str) -> list[str]:
    return [e.reason for e in pair.of_type(side, ev.NegotiationFailed)]


def source_failures(pair: IkePair, side: str) -> list[str]:
    """A responder's refusals before the initiator authenticated: the source address's,
    never the configured peer's (issue 12): no NegotiationFailed, no last_error."""
    assert failures(pair, side) == []
    assert pair.status(side)["last_error"] is None
    refused = pair.of_type(side, ev.UnauthenticatedFailure)
    assert all(e.source[0] == A_IP for e in refused)
    return [e.reason for e in refused]


def assert_tunnel(pair: IkePair) -> None:
    (a_child,) = pair.established("a")
    (b_child,) = pair.established("b")
    there, back = ipv4_packet("10.1.0.5", "10.2.0.9"), ipv4_packet("10.2.0.9", "10.1.0.5")
    assert esp_roundtrip(a_child.child, b_child.child, there) == there
    assert esp_roundtrip(b_child.child, a_child.child, back) == back


# ---- certificate authentication ----------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "rsa_pss", "algorithm"),
    [
        ("ecdsa-p256", False, "ecdsa-with-SHA256"),
        ("ecdsa-p384", False, "ecdsa-with-SHA384"),
        ("ed25519", False, "Ed25519"),
        ("rsa-3072", False, "sha256WithRSAEncryption"),
        ("rsa-3072", True, "RSASSA-PSS SHA-256"),
    ],
)
def test_certificate_auth_each_key_type(tmp_path, key_type, rsa_pss, algorithm):
    root = ca()
    extra = ("rsa_pss: true",) if rsa_pss else ()
    pair = cert_pair(
        tmp_path, gw_a(root, key_type), gw_b(root, key_type), a_extra=extra, b_extra=extra
    )
    assert_tunnel(pair)
    for side in ("a", "b"):
        auth = pair.status(side)["auth"]
        assert auth["local"].startswith("pubkey (") and algorithm in auth["local"]
        assert algorithm in auth["remote"]
        assert auth["remote_certificate"].endswith(
            "CN=gw-b.example" if side == "a" else "CN=gw-a.example"
        )
    # The IKE_AUTH request carried our certificate, a CERTREQ and a method-14 AUTH.
    pair.net.log.clear()
    assert pair.status("a")["auth"]["local_id"] == A_IP  # default: the address in the cert
    established = pair.of_type("a", ev.IkeSaEstablished)[0]
    assert "pubkey" in established.auth and A_IP in established.auth


def test_certificate_payloads_on_the_wire(tmp_path):
    root = ca()
    pair = cert_pair(tmp_path, gw_a(root), gw_b(root), start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    init_response = messages(pair, "b", ExchangeType.IKE_SA_INIT)[0].data
    assert NotifyType.SIGNATURE_HASH_ALGORITHMS in notify_types(init_response)
    request = next(
        c for c in pair.cleartext if c.exchange_type == ExchangeType.IKE_AUTH and not c.response
    )
    types = [type(p).__name__ for p in request.payloads]
    assert types[:3] == ["IdentificationInitiator", "Certificate", "CertificateRequest"]
    auth = next(p for p in request.payloads if isinstance(p, pl.Authentication))
    assert auth.method == 14  # RFC 7427 digital signature
    response = next(
        c for c in pair.cleartext if c.exchange_type == ExchangeType.IKE_AUTH and c.response
    )
    assert any(isinstance(p, pl.Certificate) for p in response.payloads)


def test_dn_identities_and_a_chain_through_an_intermediate(tmp_path):
    from tests.unit.pki_support import intermediate

    root = ca()
    sub = intermediate(root)
    a_cert = gw_a(sub)
    b_cert = gw_b(root)
    a_lines = write_credentials(tmp_path / "ca", "a", a_cert, (root,), chain=(sub,))
    b_lines = write_credentials(tmp_path / "cb", "b", b_cert, (root,))
    a = side_a(
        use_psk=False,
        auth_lines=(*a_lines, "local_id: 'C=CH, O=Test, CN=gw-a.example'"),
        remote_id="C=CH, O=Test, CN=gw-b.example",
    )
    b = side_b(
        use_psk=False,
        auth_lines=(*b_lines, "local_id: 'C=CH, O=Test, CN=gw-b.example'"),
        remote_id="C=CH, O=Test, CN=gw-a.example",
    )
    pair = IkePair(tmp_path, a, b, wall_clock=clock)
    assert_tunnel(pair)
    assert pair.status("b")["auth"]["remote_id"] == "C=CH, O=Test, CN=gw-a.example"


def test_mixed_auth_psk_one_way_certificate_the_other(tmp_path):
    root = ca()
    a_lines = write_credentials(tmp_path / "ca", "a", None, (root,))
    b_lines = write_credentials(tmp_path / "cb", "b", gw_b(root), ())
    a = side_a(auth_lines=(*a_lines, "local_auth: psk", "remote_auth: pubkey"))
    b = side_b(auth_lines=(*b_lines, "local_auth: pubkey", "remote_auth: psk"))
    pair = IkePair(tmp_path, a, b, wall_clock=clock)
    assert_tunnel(pair)
    assert pair.status("a")["auth"]["local"] == "psk"
    assert pair.status("a")["auth"]["remote"].startswith("pubkey")
    assert pair.status("b")["auth"]["remote"] == "psk"


def test_revoked_initiator_certificate_refused_with_reasons_on_both_sides(tmp_path):
    root = ca()
    a_cert = gw_a(root, serial=4242)
    crl = make_crl(root.key, root.cert, [4242], NOW - timedelta(hours=1))
    pair = cert_pair(tmp_path, a_cert, gw_b(root), b_crls=(crl,))
    assert not pair.established("a") and not pair.established("b")
    (b_reason,) = source_failures(pair, "b")
    assert "AUTHENTICATION_FAILED" in b_reason and "was revoked on" in b_reason
    assert "CN=gw-a.example" in b_reason and "per the CRL of 'C=CH, O=Test, CN=Test Root CA'" in (
        b_reason
    )
    (a_reason,) = failures(pair, "a")
    assert "peer b rejected our authentication: AUTHENTICATION_FAILED" in a_reason
    assert "certificate 'C=CH, O=Test, CN=gw-a.example'" in a_reason
    assert "has not revoked it" in a_reason
    auth_responses = messages(pair, "b", ExchangeType.IKE_AUTH)
    assert auth_responses  # the refusal went out as AUTHENTICATION_FAILED (encrypted)


def test_revoked_responder_certificate_refused_by_the_initiator(tmp_path):
    root = ca()
    b_cert = gw_b(root, serial=777)
    crl = make_crl(root.key, root.cert, [777], NOW - timedelta(hours=2))
    pair = cert_pair(tmp_path, gw_a(root), b_cert, a_crls=(crl,))
    (a_reason,) = failures(pair, "a")
    assert "peer b (responder) refused" in a_reason and "was revoked on" in a_reason
    assert "CN=gw-b.example" in a_reason
    # The initiator told the responder (RFC 7296 §2.21.2), which says why it was dropped.
    b_reasons = failures(pair, "b")
    assert any("peer a rejected our authentication (AUTHENTICATION_FAILED)" in r for r in b_reasons)
    assert any("certificate 'C=CH, O=Test, CN=gw-b.example'" in r for r in b_reasons)
    assert not pair.b.sas or all(not s.alive for s in pair.b.sas.values())


def test_expired_certificate_refused_and_the_owner_told_it_expired(tmp_path):
    root = ca()
    expired = gw_a(root, days=10, start=NOW - timedelta(days=40))
    pair = cert_pair(tmp_path, expired, gw_b(root))
    (b_reason,) = source_failures(pair, "b")
    assert "peer a (initiator) refused: peer certificate 'C=CH, O=Test, CN=gw-a.example'" in (
        b_reason
    )
    assert "expired on" in b_reason
    (a_reason,) = failures(pair, "a")
    assert "it EXPIRED on" in a_reason


def test_untrusted_issuer_and_wrong_identity_are_explained(tmp_path):
    root = ca()
    other_root = ca("ecdsa-p384", "C=CH, O=Other, CN=Other Root CA")
    pair = cert_pair(tmp_path, gw_a(other_root), gw_b(root), root=root)
    (b_reason,) = source_failures(pair, "b")
    assert "is not issued by a trusted CA" in b_reason and "Other Root CA" in b_reason

    # A certificate that does not contain the identity the initiator claims.
    a = gw_a(root)
    lines = write_credentials(tmp_path / "x", "a", a, (root,))
    with pytest.raises(Exception, match="local_id 'other.example' is not in our certificate"):
        side = side_a(use_psk=False, auth_lines=(*lines, "local_id: '@other.example'"))
        IkePair(tmp_path / "y", side, side_b(), wall_clock=clock)


def test_remote_id_must_match_the_certificate_identity(tmp_path):
    root = ca()
    pair = cert_pair(
        tmp_path,
        gw_a(root),
        gw_b(root),
        a_kwargs={"remote_id": "@gw-b.example"},
        b_kwargs={"local_id": "@gw-b.example"},
    )
    assert_tunnel(pair)  # gw-b.example is a SAN of b's certificate: fine
    pair2 = cert_pair(
        tmp_path / "2",
        gw_a(root),
        gw_b(root),
        b_kwargs={"local_id": "@gw-b.example"},  # b sends this identity; a expects the address
    )
    (a_reason,) = failures(pair2, "a")
    assert "identified as gw-b.example, but remote_id is 192.0.2.2" in a_reason


# ---- hybrid post-quantum key exchange (RFC 9242, RFC 9370) -------------------------------


@pytest.mark.parametrize(("proposal", "fragmented"), [(HYBRID_768, False), (HYBRID_1024, True)])
def test_hybrid_ml_kem_through_ike_intermediate(tmp_path, proposal, fragmented):
    pair = IkePair(
        tmp_path,
        side_a(ike=(proposal,), gateway_fragment_size=1280 if fragmented else 1500),
        side_b(ike=(proposal,), gateway_fragment_size=1280 if fragmented else 1500),
        start=False,
    )
    pair.a.start(pair.now)
    pair.pump()
    assert_tunnel(pair)
    kind = proposal.rsplit("-", 1)[-1]
    for side in ("a", "b"):
        status = pair.status(side)
        assert status["algorithm"] == proposal
        assert status["additional_ke"] == [kind]
    # IKE_SA_INIT announced IKE_INTERMEDIATE; one IKE_INTERMEDIATE exchange followed.
    init = messages(pair, "a", ExchangeType.IKE_SA_INIT)[0].data
    assert NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in notify_types(init)
    requests = messages(pair, "a", ExchangeType.IKE_INTERMEDIATE)
    if fragmented:  # a 1568-byte ML-KEM-1024 key does not fit 1280 bytes: RFC 7383 fragments
        assert len(requests) >= 2 and all(r.data[28] == 0 or r.data[16] == 53 for r in requests)
        assert all(r.data[16] == PayloadType.SKF for r in requests)
    else:
        assert len(requests) == 1
    assert [m.data[16] for m in messages(pair, "a", ExchangeType.IKE_AUTH)][0] == PayloadType.SK
    # Both ends derived the same keys after the additional exchange.
    a_sa, b_sa = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    assert a_sa.keys == b_sa.keys
    assert pair.of_type("a", ev.IkeSaEstablished)[0].algorithm == proposal


def test_two_additional_key_exchanges(tmp_path):
    proposal = "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_ecp384"
    pair = IkePair(tmp_path, side_a(ike=(proposal,)), side_b(ike=(proposal,)))
    assert_tunnel(pair)
    assert pair.status("a")["additional_ke"] == ["ke1_mlkem768", "ke2_ecp384"]
    assert len(messages(pair, "a", ExchangeType.IKE_INTERMEDIATE)) == 2
    auth_request = messages(pair, "a", ExchangeType.IKE_AUTH)[0].data
    assert int.from_bytes(auth_request[20:24], "big") == 3  # IKE_SA_INIT 0, INTERMEDIATE 1, 2


def test_optional_ml_kem_with_a_classic_peer(tmp_path):
    pair = IkePair(
        tmp_path,
        side_a(ike=(HYBRID_768 + "-ke1_none",)),
        side_b(ike=("aes256gcm16-prfsha384-x25519",)),
    )
    assert_tunnel(pair)
    assert pair.status("a")["algorithm"] == "aes256gcm16-prfsha384-x25519"
    assert pair.status("a")["additional_ke"] == []
    assert not messages(pair, "a", ExchangeType.IKE_INTERMEDIATE)


def test_we_require_ml_kem_the_peer_offers_none(tmp_path):
    pair = IkePair(
        tmp_path,
        side_a(ike=("aes256gcm16-prfsha384-x25519",)),
        side_b(ike=(HYBRID_768,)),
    )
    (b_reason,) = source_failures(pair, "b")
    assert "NO_PROPOSAL_CHOSEN" in b_reason
    assert (
        "we require the post-quantum additional key exchange mlkem768 (RFC 9370), the peer"
        " offers none" in b_reason
    )
    (a_reason,) = failures(pair, "a")
    assert "refused IKE_SA_INIT with NO_PROPOSAL_CHOSEN" in a_reason
    # The other way round: the initiator requires it.
    pair2 = IkePair(
        tmp_path / "2",
        side_a(ike=(HYBRID_768,)),
        side_b(ike=("aes256gcm16-prfsha384-x25519",)),
    )
    (b2,) = source_failures(pair2, "b")
    assert "the peer requires the additional key exchange mlkem768 (RFC 9370), we offer none" in b2
    (a2,) = failures(pair2, "a")
    assert "refused IKE_SA_INIT with NO_PROPOSAL_CHOSEN" in a2 and "ke1_mlkem768" in a2
    answer = messages(pair2, "b", ExchangeType.IKE_SA_INIT)[0].data
    assert notify_types(answer) == [NO_PROPOSAL_CHOSEN]


def test_lost_intermediate_response_is_answered_again_from_the_cache(tmp_path):
    """A retransmitted (fragmented) IKE_INTERMEDIATE request still authenticates at the
    responder after it switched to the next keys (RFC 7383 §2.6.1, RFC 9370 §2.2.2)."""
    drop = DropFirst("b", ExchangeType.IKE_INTERMEDIATE)
    pair = IkePair(
        tmp_path,
        side_a(ike=(HYBRID_1024,), gateway_fragment_size=1280),
        side_b(ike=(HYBRID_1024,), gateway_fragment_size=1280),
        start=False,
    )
    pair.net.drop = drop
    pair.a.start(pair.now)
    pair.pump()
    assert not pair.established("a")
    pair.advance(1.0)  # the initiator retransmits its fragments
    assert drop.lost and pair.b.counters.get("retransmit_answered", 0) >= 1
    assert_tunnel(pair)


# ---- PPK (RFC 8784) ------------------------------------------------------------------


PPK = bytes(range(32))


def ppk_pair(tmp_path, a_ppk, b_ppk, proposal=HYBRID_768) -> IkePair:
    a_lines = write_ppk(tmp_path / "pa", "a", *a_ppk) if a_ppk else ()
    b_lines = write_ppk(tmp_path / "pb", "b", *b_ppk) if b_ppk else ()
    return IkePair(
        tmp_path,
        side_a(ike=(proposal,), auth_lines=a_lines),
        side_b(ike=(proposal,), auth_lines=b_lines),
    )


def test_ppk_required_on_both_sides(tmp_path):
    pair = ppk_pair(tmp_path, ("site-ppk", PPK, True), ("site-ppk", PPK, True))
    assert_tunnel(pair)
    assert pair.status("a")["auth"]["ppk"] and pair.status("b")["auth"]["ppk"]
    assert "PPK" in pair.of_type("b", ev.IkeSaEstablished)[0].auth


def test_ppk_optional_and_the_responder_has_none(tmp_path):
    pair = ppk_pair(tmp_path, ("site-ppk", PPK, False), None)
    assert_tunnel(pair)  # NO_PPK_AUTH let the responder verify without the PPK
    assert not pair.status("a")["auth"]["ppk"] and not pair.status("b")["auth"]["ppk"]


def test_ppk_optional_responder_has_another_ppk(tmp_path):
    pair = ppk_pair(tmp_path, ("site-ppk", PPK, False), ("other-ppk", PPK, False))
    assert_tunnel(pair)
    assert not pair.status("a")["auth"]["ppk"]


def test_ppk_required_by_the_responder_initiator_has_none(tmp_path):
    pair = ppk_pair(tmp_path, None, ("site-ppk", PPK, True))
    (b_reason,) = source_failures(pair, "b")
    assert "did not announce USE_PPK (RFC 8784) and ppk_required is set" in b_reason
    assert any("rejected our authentication" in r for r in failures(pair, "a"))


def test_ppk_required_by_the_initiator_responder_has_another(tmp_path):
    pair = ppk_pair(tmp_path, ("site-ppk", PPK, True), ("other-ppk", PPK, False))
    (b_reason,) = source_failures(pair, "b")
    assert "authenticated with PPK 'site-ppk', which we do not have" in b_reason
    (a_reason,) = failures(pair, "a")
    assert "AUTHENTICATION_FAILED" in a_reason and "PPK 'site-ppk'" in a_reason


def test_ppk_with_different_keys_fails_authentication(tmp_path):
    pair = ppk_pair(tmp_path, ("site-ppk", PPK, True), ("site-ppk", bytes(32), True))
    (b_reason,) = source_failures(pair, "b")
    assert "does not verify with our PSK" in b_reason


def test_ppk_with_certificates(tmp_path):
    root = ca()
    pair = cert_pair(
        tmp_path,
        gw_a(root),
        gw_b(root),
        a_extra=write_ppk(tmp_path / "pa", "a", "site-ppk", PPK, True),
        b_extra=write_ppk(tmp_path / "pb", "b", "site-ppk", PPK, True),
        a_kwargs={"ike": (HYBRID_1024,)},
        b_kwargs={"ike": (HYBRID_1024,)},
    )
    assert_tunnel(pair)
    assert pair.status("b")["auth"]["ppk"] and pair.status("b")["additional_ke"] == [
        "ke1_mlkem1024"
    ]


# ---- rekeys with additional key exchanges (IKE_FOLLOWUP_KE, RFC 9370 §2.2.4) -------------

PFS_HYBRID = "aes256gcm16-x25519-ke1_mlkem768"


def live_children(pair: IkePair, side: str) -> list[ev.ChildSaParams]:
    return list(pair.dataplane[side].inbound.values())


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_child_sa_rekey_with_ml_kem_follow_up(tmp_path, initiator):
    pair = IkePair(
        tmp_path,
        side_a(ike=(HYBRID_768,), esp=(PFS_HYBRID,)),
        side_b(ike=(HYBRID_768,), esp=(PFS_HYBRID,)),
    )
    pair.check_make_before_break = True
    (first_a,) = pair.established("a")
    pair.mgr(initiator).rekey(pair.peer_of(initiator), pair.now)
    pair.pump()
    followups = messages(pair, initiator, ExchangeType.IKE_FOLLOWUP_KE)
    assert len(followups) == 1  # one additional key exchange, one IKE_FOLLOWUP_KE request
    assert len(pair.established("a")) == 2 and len(pair.established("b")) == 2
    (a_new,) = live_children(pair, "a")
    (b_new,) = live_children(pair, "b")
    assert a_new.spi_in != first_a.child.spi_in
    there, back = ipv4_packet("10.1.0.5", "10.2.0.9"), ipv4_packet("10.2.0.9", "10.1.0.5")
    assert esp_roundtrip(a_new, b_new, there) == there
    assert esp_roundtrip(b_new, a_new, back) == back
    assert not failures(pair, "a") and not failures(pair, "b")


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ike_sa_rekey_with_ml_kem_follow_up(tmp_path, initiator):
    proposal = HYBRID_768 + "-ke2_mlkem1024"
    pair = IkePair(
        tmp_path,
        side_a(ike=(proposal,), gateway_fragment_size=1280),
        side_b(ike=(proposal,), gateway_fragment_size=1280),
    )
    old_a = pair.a.ike_sa("b")
    pair.mgr(initiator).rekey_ike(pair.peer_of(initiator), pair.now)
    pair.pump()
    assert len(messages(pair, initiator, ExchangeType.IKE_FOLLOWUP_KE)) >= 2  # two, fragmented
    new_a, new_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    assert new_a is not old_a and new_a.keys == new_b.keys
    assert pair.status("a")["additional_ke"] == ["ke1_mlkem768", "ke2_mlkem1024"]
    assert pair.status("a")["auth"]["local"] == "psk"  # carried over from IKE_AUTH
    # The new IKE SA works: a CHILD_SA rekey over it.
    pair.a.rekey("b", pair.now)
    pair.pump()
    assert len(live_children(pair, "a")) == 1 and not failures(pair, "a")


def test_follow_up_for_nothing_is_state_not_found(tmp_path):
    from ipsecd.crypto.registry import ML_KEM
    from ipsecd.ike.exchanges.followup import FollowupKe
    from ipsecd.ike.handshake import PendingFollowup

    pair = IkePair(tmp_path)
    sa = pair.a.ike_sa("b")
    abandoned: list[str] = []
    state = PendingFollowup(
        "test", b"bogus-link", [(1, ML_KEM["mlkem768"])], [b"x" * 32], pair.now,
        complete=lambda joined, when: None, abandon=lambda reason, when: abandoned.append(reason),
    )  # fmt: skip
    sa.queue(FollowupKe(state), pair.now)
    pair.a._collect(sa, pair.now)
    pair.pump()
    (reason,) = abandoned
    assert "refused IKE_FOLLOWUP_KE (ke1_mlkem768, test) with STATE_NOT_FOUND" in reason
    assert pair.b.counters.get("unknown_exchange", 0) == 0
    assert pair.a.ike_sa("b").state.value == "established"  # only the exchange failed


# ---- classic signature methods (RFC 7296 §3.8, RFC 4754) for peers without RFC 7427 ----------


@pytest.mark.parametrize(
    ("key_type", "method", "refusal"),
    [
        ("ecdsa-p256", 9, None),
        ("ecdsa-p384", 10, None),
        ("ed25519", None, "no classic IKEv2 authentication method"),
        ("rsa-3072", None, "RSA with SHA-1, which is refused"),
    ],
)
def test_signing_for_a_peer_without_signature_hash_algorithms(tmp_path, key_type, method, refusal):
    """A peer that sent no SIGNATURE_HASH_ALGORITHMS gets method 9/10 for ECDSA, and a
    plain-words refusal where no classic method fits (Ed25519; RSA would need SHA-1)."""
    from ipsecd.ike.errors import AuthenticationFailed
    from ipsecd.ike.message import Message
    from ipsecd.ike.peer_auth import cert_payloads, our_auth, verify_peer

    root = ca()
    pair = cert_pair(tmp_path, gw_a(root, key_type), gw_b(root, key_type))
    a_sa, b_sa = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    a_auth, b_auth = a_sa.peer.auth, b_sa.peer.auth
    a_sa.handshake.peer_hash_algorithms = None  # as if b had not announced RFC 7427
    if refusal is not None:
        with pytest.raises(AuthenticationFailed, match=refusal):
            our_auth(a_sa, a_auth, a_sa.keys, True, b"")
        return
    payload, how = our_auth(a_sa, a_auth, a_sa.keys, True, b"")
    assert payload.method == method and "ECDSA" in how
    carrying = Message(0, 0, ExchangeType.IKE_AUTH, 1, payloads=cert_payloads(a_auth))
    identity = (a_auth.local_id.id_type, a_auth.local_id.data)
    verified = verify_peer(b_sa, b_auth, b_sa.keys, True, identity, payload, carrying, b"")
    assert verified.method.startswith("pubkey (ECDSA") and verified.certificate.endswith(
        "gw-a.example"
    )


def test_stray_ike_intermediate_on_an_established_sa_is_refused_not_fatal(tmp_path):
    from ipsecd.crypto.mlkem import MlKemInitiator
    from ipsecd.crypto.registry import ML_KEM

    pair = IkePair(tmp_path, side_a(ike=(HYBRID_768,)), side_b(ike=(HYBRID_768,)))
    a_sa = pair.a.ike_sa("b")
    kem = MlKemInitiator(ML_KEM["mlkem768"])
    (datagram,) = a_sa.encode(
        ExchangeType.IKE_INTERMEDIATE,
        a_sa.next_request_id,
        False,
        [pl.KeyExchange(int(ML_KEM["mlkem768"].transform_id), kem.public)],
    )
    pair.inject("b", datagram)
    assert pair.b.ike_sa("a").state.value == "established"
    assert any("no additional key exchange (RFC 9370) is pending" in r for r in failures(pair, "b"))
