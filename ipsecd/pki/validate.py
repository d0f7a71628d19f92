"""Certificate path building and validation for IKEv2 peers.

Explicit checks with ``cryptography.x509`` primitives rather than
``cryptography.x509.verification``: that API implements the Web PKI profile
(CA/Browser Forum rules: a subjectAltName is required, EKU serverAuth
expected, no CRLs) which refuses ordinary IPsec certificates — DN-only
gateway certificates, certificates with the ipsecIKE EKU — and its errors do
not say which certificate failed and why.  IKE's profile is RFC 4945 §5.

For each certificate of the path, from the peer's certificate to a trust anchor:

* validity: ``not_valid_before <= now <= not_valid_after``;
* signature: verified with the issuer's key (``verify_directly_issued_by``:
  RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519), issuer name matching;
* issuers: basicConstraints CA:TRUE, pathLenConstraint honoured, keyUsage
  (if present) includes keyCertSign;
* the peer's certificate: keyUsage (if present) includes digitalSignature or
  nonRepudiation (RFC 4945 §5.1.3.2); extendedKeyUsage (if present) includes
  one of ipsecIKE, serverAuth, clientAuth, iKEIntermediate or anyExtendedKeyUsage;
* unknown critical extensions are refused (RFC 5280 §4.2);
* revocation: CRLs from the store signed by the issuer; a listed serial is
  refused with the revocation date.  No CRL for an issuer means no revocation
  check (strongSwan's default, ``strictcrlpolicy=no``).

Anchors are trusted as configured: their own validity is checked (an expired
CA is refused) but not their signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ipsecd.pki.certs import describe, name_text
from ipsecd.pki.errors import CertificateError
from ipsecd.pki.trust import TrustStore

__all__ = ["ValidatedChain", "validate_chain", "MAX_PATH_LENGTH", "ACCEPTED_EKUS"]

MAX_PATH_LENGTH = 8  # certificates between the peer's and the anchor, anchor included

ID_KP_IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")  # RFC 4945 §5.1.3.12
ID_KP_IKE_INTERMEDIATE = ObjectIdentifier("1.3.6.1.5.5.8.2.2")  # Windows / strongSwan
ACCEPTED_EKUS: dict[ObjectIdentifier, str] = {
    ID_KP_IPSEC_IKE: "ipsecIKE",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ID_KP_IKE_INTERMEDIATE: "iKEIntermediate",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


@dataclass(frozen=True)
class ValidatedChain:
    """A path that validated: ``certificates[0]`` is the peer's, the last the anchor."""

    certificates: tuple[x509.Certificate, ...]

    @property
    def end_entity(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def anchor(self) -> x509.Certificate:
        return self.certificates[-1]


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_validity(cert: x509.Certificate, now: datetime, role: str) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            "not-yet-valid",
            f"{role} {describe(cert)} is not valid yet: it starts on"
            f" {_when(cert.not_valid_before_utc)}, now is {_when(now)} (check the clocks)",
            cert,
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            "expired",
            f"{role} {describe(cert)} expired on {_when(cert.not_valid_after_utc)}",
            cert,
        )


def _check_critical(cert: x509.Certificate, role: str) -> None:
    for ext in cert.extensions:
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise CertificateError(
                "critical-extension",
                f"{role} {describe(cert)} has a critical extension ipsecd does not"
                f" understand ({ext.oid.dotted_string}); RFC 5280 §4.2 requires refusing it",
                cert,
            )


def _check_end_entity(cert: x509.Certificate) -> None:
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not (ku.digital_signature or ku.content_commitment):
        raise CertificateError(
            "key-usage",
            f"peer {describe(cert)} may not sign: its keyUsage lacks digitalSignature"
            " (RFC 4945 §5.1.3.2)",
            cert,
        )
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and not any(oid in ACCEPTED_EKUS for oid in eku):
        have = ", ".join(getattr(o, "_name", o.dotted_string) for o in eku)
        raise CertificateError(
            "extended-key-usage",
            f"peer {describe(cert)} is not for IKE: its extendedKeyUsage ({have}) has none of "
            + ", ".join(ACCEPTED_EKUS.values()),
            cert,
        )


def _check_issuer(issuer: x509.Certificate, below: int, role: str) -> None:
    bc = _ext(issuer, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise CertificateError(
            "not-a-ca",
            f"{role} {describe(issuer)} issued a certificate but is not a CA"
            " (basicConstraints CA:FALSE or absent)",
            issuer,
        )
    if bc.path_length is not None and below > bc.path_length:
        raise CertificateError(
            "path-length",
            f"{role} {describe(issuer)} allows {bc.path_length} intermediate CA(s) below it"
            f" (pathLenConstraint), the path has {below}",
            issuer,
        )
    ku = _ext(issuer, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise CertificateError(
            "key-usage",
            f"{role} {describe(issuer)} may not sign certificates: its keyUsage lacks keyCertSign",
            issuer,
        )


def _check_signature(cert: x509.Certificate, issuer: x509.Certificate, role: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        detail = "the signature does not verify" if isinstance(exc, InvalidSignature) else str(exc)
        raise CertificateError(
            "bad-signature",
            f"{role} {describe(cert)} has a bad signature by '{name_text(issuer.subject)}':"
            f" {detail}",
            cert,
        ) from None


def _check_revocation(
    cert: x509.Certificate, issuer: x509.Certificate, store: TrustStore, role: str
) -> None:
    for crl in store.crls_for(issuer):
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            reason = ""
            try:
                r = entry.extensions.get_extension_for_class(x509.CRLReason).value
                reason = f" (reason: {r.reason.value})"
            except x509.ExtensionNotFound:
                pass
            raise CertificateError(
                "revoked",
                f"{role} {describe(cert)} was revoked on {_when(entry.revocation_date_utc)}"
                f"{reason}, per the CRL of '{name_text(crl.issuer)}' issued"
                f" {_when(crl.last_update_utc)}",
                cert,
            )


def _issuer_candidates(
    cert: x509.Certificate, pool: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    out = [c for c in pool if c.subject == cert.issuer]
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    if isinstance(aki, x509.AuthorityKeyIdentifier) and aki.key_identifier:

        def ski_matches(c: x509.Certificate) -> bool:
            ski = _ext(c, x509.SubjectKeyIdentifier)
            return not isinstance(ski, x509.SubjectKeyIdentifier) or (
                ski.digest == aki.key_identifier
            )

        out = [c for c in out if ski_matches(c)]
    return out


def validate_chain(
    end_entity: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    store: TrustStore,
    now: datetime,
) -> ValidatedChain:
    """Build and check a path from ``end_entity`` to an anchor of ``store`` at ``now``.

    ``intermediates`` are the other certificates the peer sent (CERT payloads),
    in any order; extra ones are ignored.  Raises :class:`CertificateError`
    with the first problem on the most promising path.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    _check_validity(end_entity, now, "peer")
    _check_critical(end_entity, "peer")
    _check_end_entity(end_entity)
    failures: list[CertificateError] = []
    path = _extend([end_entity], intermediates, store, now, failures)
    if path is not None:
        return ValidatedChain(tuple(path))
    if failures:
        raise failures[0]
    top = end_entity
    raise CertificateError(
        "untrusted",
        f"peer {describe(top)} is not issued by a trusted CA: no trust anchor or"
        f" intermediate certificate has the subject '{name_text(top.issuer)}'"
        + (
            f" (anchors: {', '.join(repr(name_text(a.subject)) for a in store.anchors)})"
            if store.anchors
            else " (no trust anchors configured)"
        ),
        top,
    )


def _extend(
    path: list[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    store: TrustStore,
    now: datetime,
    failures: list[CertificateError],
) -> list[x509.Certificate] | None:
    """Depth-first path search; the first failure on each branch goes into ``failures``."""
    cert = path[-1]
    below = len(path) - 1  # CA certificates already between this issuer and the peer's
    for anchor in _issuer_candidates(cert, store.anchors):
        try:
            _check_signature(cert, anchor, "peer" if below == 0 else "intermediate")
            _check_issuer(anchor, below, "trust anchor")
            _check_validity(anchor, now, "trust anchor")
            _check_revocation(cert, anchor, store, "peer" if below == 0 else "intermediate")
        except CertificateError as exc:
            failures.append(exc)
            continue
        return [*path, anchor]
    if len(path) >= MAX_PATH_LENGTH:
        return None
    for ca in _issuer_candidates(cert, intermediates):
        if ca in path:
            continue
        try:
            _check_signature(cert, ca, "peer" if below == 0 else "intermediate")
            _check_issuer(ca, below, "intermediate CA")
            _check_validity(ca, now, "intermediate CA")
            _check_critical(ca, "intermediate CA")
            _check_revocation(cert, ca, store, "peer" if below == 0 else "intermediate")
        except CertificateError as exc:
            failures.append(exc)
            continue
        found = _extend([*path, ca], intermediates, store, now, failures)
        if found is not None:
            return found
    if len(path) > 1 and not failures:
        failures.append(
            CertificateError(
                "untrusted",
                f"intermediate CA {describe(cert)} is not issued by a trusted CA: no trust anchor"
                f" has the subject '{name_text(cert.issuer)}'",
                cert,
            )
        )
    return None
