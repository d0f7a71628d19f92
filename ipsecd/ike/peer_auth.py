"""One side's authentication in IKE_AUTH: a pre-shared key or a certificate signature.

strongSwan's ``psk_authenticator`` and ``pubkey_authenticator`` in one module; the
IKE_AUTH exchange (:mod:`ipsecd.ike.exchanges.auth`) decides when to call what:

* :func:`auth_octets` — <Initiator/ResponderSignedOctets> of RFC 7296 §2.15 with
  RFC 9242's IntAuth, with the keys in force (PPK-mixed or not, RFC 8784);
* :func:`our_auth` — our AUTH payload: PSK (method 2) or a signature with our
  certificate's key (RFC 7427 method 14, or the classic 1/9/10/11 for a peer that
  sent no SIGNATURE_HASH_ALGORITHMS);
* :func:`cert_payloads` / :func:`certreq_payload` — CERT (ours and the chain after it,
  RFC 7296 §3.6) and CERTREQ (our trust anchors' key hashes, §3.7);
* :func:`verify_peer` — the peer's AUTH: the PSK MAC, or its certificate path to our
  anchors (validity, key usage, revocation), its identity (RFC 4945 §3.1, our
  ``remote_id``) and its signature.  Every refusal is an
  :class:`~ipsecd.ike.errors.AuthenticationFailed` whose text names the certificate
  (subject, issuer, dates) and says what is wrong in plain words;
* :func:`refusal_hint` — what to check when the peer refused *us*.

Pure functions of the SA, the config and the message; nothing is sent from here.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipsecd.config.schema import AuthConfig, Identity, TrustConfig
from ipsecd.ike.auth import psk_auth, signed_octets
from ipsecd.ike.constants import AuthMethod
from ipsecd.ike.errors import AuthenticationFailed
from ipsecd.ike.keys import IkeKeys
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Payload,
    format_identity,
)
from ipsecd.ike.sa import IkeSa
from ipsecd.pki.errors import CertificateError, PkiError
from ipsecd.pki.identity import IkeIdentity, check_identity, same_identity

# The certificate half (pki.certs, .payloads, .validate) needs cryptography.x509, 2 MB of
# an idle daemon (issue 17), and signature_auth cryptography's RSA, ECDSA and Ed25519:
# the functions that handle certificates import them, so a PSK-only gateway never does.
if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "PeerAuthenticated",
    "auth_octets",
    "psk_auth_value",
    "our_auth",
    "cert_payloads",
    "certreq_payload",
    "certreq_payload_of",
    "peer_certreq",
    "verify_peer",
    "same_id",
    "refusal_hint",
]

IdPair = tuple[int, bytes]  # (ID type, identification data) as in the ID payload


@dataclass(frozen=True)
class PeerAuthenticated:
    """The peer's AUTH verified: how (for status and logs), and its certificate subject."""

    method: str
    certificate: str = ""


def _role(of_initiator: bool) -> str:
    return "initiator" if of_initiator else "responder"


def _signed_parts(sa: IkeSa, of_initiator: bool) -> tuple[bytes, bytes]:
    """That side's IKE_SA_INIT message and the other side's nonce (RFC 7296 §2.15)."""
    if of_initiator:
        return sa.init_request, sa.nonce_r
    return sa.init_response, sa.nonce_i


def auth_octets(
    sa: IkeSa, keys: IkeKeys, of_initiator: bool, identity: IdPair, int_auth: bytes
) -> bytes:
    """The octets the initiator's (or responder's) AUTH covers (RFC 7296 §2.15)."""
    return signed_octets(keys, of_initiator, *_signed_parts(sa, of_initiator), *identity, int_auth)


def psk_auth_value(
    sa: IkeSa, keys: IkeKeys, psk: bytes, of_initiator: bool, identity: IdPair, int_auth: bytes
) -> bytes:
    """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15)."""
    message, nonce = _signed_parts(sa, of_initiator)
    return psk_auth(keys, psk, of_initiator, message, nonce, *identity, int_auth)


def _identity(ident: Identity) -> IdPair:
    return ident.id_type, ident.data


def same_id(configured: Identity, received: IdPair) -> bool:
    """The received ID is the configured one (DNs compared by attribute, names by case)."""
    return same_identity(configured.ike_identity, IkeIdentity(*received))


def our_auth(
    sa: IkeSa, auth: AuthConfig, keys: IkeKeys, of_initiator: bool, int_auth: bytes
) -> tuple[Authentication, str]:
    """Our AUTH payload and how it was made ("psk", "pubkey (ECDSA P-256, ecdsa-with-SHA256)").

    Raises :class:`AuthenticationFailed` when our key cannot sign for this peer (an
    Ed25519 key and a peer without RFC 7427, say).
    """
    me = _identity(auth.local_id)
    if auth.local_auth == "psk":
        value = psk_auth_value(sa, keys, auth.psk, of_initiator, me, int_auth)
        return Authentication(AuthMethod.SHARED_KEY_MIC, value), "psk"
    from ipsecd.ike.signature_auth import SignatureAuthError, sign  # pubkey (the top)
    from ipsecd.pki.certs import describe, key_description  # pubkey: X.509 (see the top)

    credential = auth.credential
    assert credential is not None  # local_auth pubkey: the loader required one
    octets = auth_octets(sa, keys, of_initiator, me, int_auth)
    try:
        signed = sign(
            octets,
            credential.private_key,
            sa.handshake.peer_hash_algorithms,
            rsa_pss=auth.rsa_pss,
        )
    except SignatureAuthError as exc:
        raise AuthenticationFailed(
            f"cannot authenticate to peer {sa.peer_name} with our"
            f" {describe(credential.certificate)}: {exc}"
        ) from None
    return Authentication(signed.method, signed.data), _pubkey_how(
        key_description(credential.private_key), signed.algorithm
    )


def _pubkey_how(key: str, algorithm: str) -> str:
    """``pubkey (ECDSA P-256, ecdsa-with-SHA256)``; ``pubkey (Ed25519)``."""
    return f"pubkey ({key})" if key == algorithm else f"pubkey ({key}, {algorithm})"


def cert_payloads(auth: AuthConfig) -> list[Payload]:
    """CERT payloads (RFC 7296 §3.6): our certificate first, then the CA certificates that
    followed it in its file (the peer builds the path from them)."""
    credential = auth.credential
    if auth.local_auth != "pubkey" or credential is None:
        return []
    from cryptography.hazmat.primitives.serialization import Encoding  # X.509 (the top)

    from ipsecd.pki.payloads import CERT_X509_SIGNATURE  # X.509 (see the top)

    return [
        Certificate(CERT_X509_SIGNATURE, cert.public_bytes(Encoding.DER))
        for cert in (credential.certificate, *credential.chain)
    ]


def certreq_payload(trust: TrustConfig | None) -> list[Payload]:
    """CERTREQ (RFC 7296 §3.7) naming our trust anchors by their key's SHA-1, if any."""
    return certreq_payload_of(trust.store().certreq_hashes()) if trust is not None else []


def certreq_payload_of(hashes: Iterable[bytes]) -> list[Payload]:
    """CERTREQ with these CA key hashes (none: no payload)."""
    from ipsecd.pki.payloads import certreq_data  # X.509 (see the top)

    data = certreq_data(hashes)
    return [CertificateRequest(data[0], data[1:])] if len(data) > 1 else []


def peer_certreq(message: Message) -> tuple[bytes, ...] | None:
    """The CA hashes of the peer's CERTREQ payloads; None when it sent none."""
    requests = message.find_all(CertificateRequest)
    if not requests:
        return None
    from ipsecd.pki.payloads import decode_certreq_payload  # X.509 (see the top)

    hashes: list[bytes] = []
    for req in requests:
        try:
            hashes += decode_certreq_payload(bytes([req.encoding]) + req.data)
        except PkiError:
            continue  # another encoding, or malformed: no hint, nothing more (§3.7)
    return tuple(hashes)


def _peer_certificates(
    sa: IkeSa, message: Message, of_initiator: bool, their_id: str
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    from ipsecd.pki.payloads import UnsupportedCertEncoding, decode_cert_payload  # X.509

    decoded: list[x509.Certificate] = []
    for payload in message.find_all(Certificate):
        try:
            decoded.append(decode_cert_payload(bytes([payload.encoding]) + payload.data))
        except UnsupportedCertEncoding:
            continue  # RFC 7296 §3.6: an encoding we do not use is no error by itself
        except PkiError as exc:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} ({_role(of_initiator)}, {their_id}): {exc}"
            ) from None
    if not decoded:
        raise AuthenticationFailed(
            f"peer {sa.peer_name} ({_role(of_initiator)}, {their_id}) sent no X.509"
            " certificate (CERT payload), and remote_auth is pubkey: ipsecd checks the"
            " certificate the peer sends (strongSwan: send_cert = always, or ifasked: our"
            " CERTREQ asks for it)"
        )
    return decoded[0], decoded[1:]


def verify_peer(
    sa: IkeSa,
    auth: AuthConfig,
    keys: IkeKeys,
    of_initiator: bool,
    identity: IdPair,
    auth_payload: Authentication,
    message: Message,
    int_auth: bytes,
    auth_data: bytes | None = None,
) -> PeerAuthenticated:
    """Check the peer's AUTH payload (``auth_data``: instead of its data, the data of
    N(NO_PPK_AUTH), RFC 8784 §3); raises :class:`AuthenticationFailed` saying why."""
    role = _role(of_initiator)
    their_id = format_identity(*identity)
    data = auth_payload.data if auth_data is None else auth_data
    method = auth_payload.method
    if auth.remote_auth == "psk":
        if method != AuthMethod.SHARED_KEY_MIC:
            raise AuthenticationFailed(
                f"peer {sa.peer_name} ({role}, {their_id}) authenticated with"
                f" {_method_name(method)}, but remote_auth is psk (a pre-shared key)"
            )
        expected = psk_auth_value(sa, keys, auth.psk, of_initiator, identity, int_auth)
        if not hmac.compare_digest(expected, bytes(data)):
            raise AuthenticationFailed(
                f"peer {sa.peer_name} ({role}, {their_id}) sent an AUTH payload that does"
                " not verify with our PSK (pre-shared keys differ)"
            )
        return PeerAuthenticated("psk")
    if method == AuthMethod.SHARED_KEY_MIC:
        raise AuthenticationFailed(
            f"peer {sa.peer_name} ({role}, {their_id}) authenticated with a pre-shared key,"
            " but remote_auth is pubkey (a certificate signature)"
        )
    from ipsecd.ike.signature_auth import SignatureAuthError, verify  # pubkey (the top)
    from ipsecd.pki.certs import describe, key_description, name_text  # X.509 (the top)
    from ipsecd.pki.validate import validate_chain  # X.509 (see the top)

    trust = auth.trust
    assert trust is not None  # remote_auth pubkey: the loader required anchors
    end_entity, intermediates = _peer_certificates(sa, message, of_initiator, their_id)
    try:
        validate_chain(end_entity, intermediates, trust.store(), sa.context.wall_clock())
        check_identity(end_entity, IkeIdentity(*identity), auth.remote_id.ike_identity)
    except CertificateError as exc:
        raise AuthenticationFailed(f"peer {sa.peer_name} ({role}) refused: {exc}") from None
    octets = auth_octets(sa, keys, of_initiator, identity, int_auth)
    try:
        verified = verify(octets, method, data, end_entity)
    except SignatureAuthError as exc:
        raise AuthenticationFailed(
            f"peer {sa.peer_name} ({role}, {their_id}) with {describe(end_entity)}: {exc}"
        ) from None
    how = _pubkey_how(key_description(end_entity.public_key()), verified.algorithm)
    return PeerAuthenticated(
        how + (" [weak: SHA-1]" if verified.weak else ""), name_text(end_entity.subject)
    )


def _method_name(method: int) -> str:
    try:
        return f"AUTH method {method} ({AuthMethod(method).name})"
    except ValueError:
        return f"AUTH method {method}"


def refusal_hint(sa: IkeSa, auth: AuthConfig) -> str:
    """What to check when the peer answered our AUTH with AUTHENTICATION_FAILED."""
    if auth.local_auth == "psk":
        why = f"we are {auth.local_id}; check the PSK and the identity the peer expects"
    else:
        from ipsecd.pki.certs import describe  # X.509 (see the top)

        assert auth.credential is not None
        cert = auth.credential.certificate
        why = f"we are {auth.local_id} with our {describe(cert)}"
        now = sa.context.wall_clock()
        if now > cert.not_valid_after_utc:
            why += f"; it EXPIRED on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S UTC}"
        elif now < cert.not_valid_before_utc:
            why += f"; it is NOT VALID YET (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S UTC})"
        why += (
            "; check that the peer trusts its issuer, has not revoked it and expects this identity"
        )
    if auth.ppk is not None and auth.ppk.required:
        why += f"; and that the peer has PPK '{auth.ppk.ppk_id.decode(errors='replace')}'"
    return why
