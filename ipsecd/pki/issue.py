"""Making a small CA, gateway certificates and CRLs (for ``ipsecd pki``; no I/O here).

Profiles follow what strongSwan's ``pki`` produces and RFC 4945 §5 asks for:

* CA: basicConstraints CA:TRUE (critical), keyUsage keyCertSign + cRLSign
  (critical), subjectKeyIdentifier.
* Gateway: basicConstraints CA:FALSE, keyUsage digitalSignature (critical),
  extendedKeyUsage serverAuth + clientAuth + ipsecIKE, subjectAltName with the
  given IP addresses, DNS names and e-mail addresses, authority/subject key ids.

Signatures: Ed25519 (pure), ECDSA with SHA-256 (P-256) or SHA-384 (P-384),
RSA PKCS#1 v1.5 with SHA-256, or RSA-PSS with SHA-256 (``rsa_pss=True``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ipsecd.pki.certs import SigningKey
from ipsecd.pki.errors import PkiError
from ipsecd.pki.identity import parse_dn

__all__ = ["KEY_TYPES", "generate_key", "make_ca", "issue_certificate", "make_crl", "parse_san"]

KEY_TYPES = ("ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-3072", "rsa-4096")
ID_KP_IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")

SanValue = ipaddress.IPv4Address | ipaddress.IPv6Address | str


def generate_key(key_type: str) -> SigningKey:
    """A fresh private key of one of :data:`KEY_TYPES`."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-3072", "rsa-4096"):
        return rsa.generate_private_key(65537, int(key_type[4:]))
    raise PkiError(f"unknown key type {key_type!r} (known: {', '.join(KEY_TYPES)})")


def _sign_args(
    key: SigningKey, rsa_pss: bool
) -> tuple[hashes.SHA256 | hashes.SHA384 | None, padding.PSS | padding.PKCS1v15 | None]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None, None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return (hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()), None
    if rsa_pss:
        return hashes.SHA256(), padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    return hashes.SHA256(), padding.PKCS1v15()


def parse_san(text: str) -> x509.GeneralName:
    """``192.0.2.1`` / ``2001:db8::1`` -> IP, ``user@host`` -> e-mail, else a DNS name."""
    text = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "@" in text:
        return x509.RFC822Name(text)
    if not text or any(c.isspace() for c in text):
        raise PkiError(f"subjectAltName {text!r} is neither an IP address, e-mail nor DNS name")
    return x509.DNSName(text)


def _name(dn: str | x509.Name) -> x509.Name:
    return parse_dn(dn) if isinstance(dn, str) else dn


def make_ca(
    key: SigningKey,
    dn: str | x509.Name,
    now: datetime,
    days: int = 3650,
    serial: int | None = None,
    rsa_pss: bool = False,
) -> x509.Certificate:
    """A self-signed CA certificate for ``key``."""
    name = _name(dn)
    algorithm, pad = _sign_args(key, rsa_pss)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, algorithm, rsa_padding=pad)


def issue_certificate(
    ca_key: SigningKey,
    ca_cert: x509.Certificate,
    public_key: object,
    dn: str | x509.Name | None,
    sans: Sequence[str],
    now: datetime,
    days: int = 1095,
    serial: int | None = None,
    rsa_pss: bool = False,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """A gateway certificate for ``public_key``, signed by the CA.

    ``dn`` defaults to ``CN=<first SAN>``; at least a DN or one SAN is needed.
    """
    general = [parse_san(s) for s in sans]
    if dn is None:
        if not sans:
            raise PkiError("a gateway certificate needs a DN or at least one subjectAltName")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0].strip())])
    else:
        name = _name(dn)
    algorithm, pad = _sign_args(ca_key, rsa_pss)
    if not isinstance(
        public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    ):
        raise PkiError(f"cannot certify a {type(public_key).__name__}")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_IPSEC_IKE]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return builder.sign(ca_key, algorithm, rsa_padding=pad)


def make_crl(
    ca_key: SigningKey,
    ca_cert: x509.Certificate,
    revoked: Sequence[int],
    now: datetime,
    days: int = 30,
    crl_number: int = 1,
    revoked_at: datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL from the CA revoking ``revoked`` serial numbers at ``revoked_at`` (default now)."""
    algorithm, pad = _sign_args(ca_key, False)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial in dict.fromkeys(revoked):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(revoked_at or now)
            .build()
        )
    return builder.sign(ca_key, algorithm, rsa_padding=pad)
