"""Certificates for the PKI tests: a CA, an intermediate, gateways, made with ipsecd.pki.issue."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from cryptography import x509

from ipsecd.pki.certs import SigningKey
from ipsecd.pki.issue import generate_key, issue_certificate, make_ca

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Issued:
    key: SigningKey
    cert: x509.Certificate


@cache
def ca(key_type: str = "ecdsa-p256", dn: str = "C=CH, O=Test, CN=Test Root CA") -> Issued:
    key = generate_key(key_type)
    return Issued(key, make_ca(key, dn, NOW - timedelta(days=30)))


def gateway(
    issuer: Issued,
    sans: tuple[str, ...] = ("192.0.2.1", "gw-a.example", "admin@example"),
    dn: str | None = "C=CH, O=Test, CN=gw-a.example",
    key_type: str = "ecdsa-p256",
    days: int = 365,
    start: datetime | None = None,
    serial: int | None = None,
    rsa_pss: bool = False,
) -> Issued:
    key = generate_key(key_type)
    start = start or NOW - timedelta(days=1)
    cert = issue_certificate(
        issuer.key, issuer.cert, key.public_key(), dn, sans, start, days, serial, rsa_pss
    )
    return Issued(key, cert)


def intermediate(issuer: Issued, dn: str = "C=CH, O=Test, CN=Test Sub CA") -> Issued:
    """An intermediate CA: a CA certificate re-signed by ``issuer``."""
    key = generate_key("ecdsa-p256")
    self_signed = make_ca(key, dn, NOW - timedelta(days=10))
    builder = (
        x509.CertificateBuilder()
        .subject_name(self_signed.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(self_signed.not_valid_before_utc)
        .not_valid_after(self_signed.not_valid_after_utc)
    )
    for ext in self_signed.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
    )
    from ipsecd.pki.issue import _sign_args

    algorithm, pad = _sign_args(issuer.key, False)
    return Issued(key, builder.sign(issuer.key, algorithm, rsa_padding=pad))


def pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def write_credentials(
    directory: Path,
    label: str,
    own: Issued | None = None,
    cas: tuple[Issued, ...] = (),
    crls: tuple[x509.CertificateRevocationList, ...] = (),
    chain: tuple[Issued, ...] = (),
) -> tuple[str, ...]:
    """Write ``label``'s certificate (with ``chain`` after it), its key (mode 0600), trust
    anchors and CRLs into ``directory``; returns the ``auth:`` lines naming them."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    directory.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if own is not None:
        cert_file = directory / f"{label}-cert.pem"
        cert_file.write_bytes(pem(own.cert) + b"".join(pem(c.cert) for c in chain))
        key_file = directory / f"{label}-key.pem"
        key_file.write_bytes(
            own.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        os.chmod(key_file, 0o600)
        lines += [f"certificate: {cert_file}", f"private_key: {key_file}"]
    if cas:
        ca_file = directory / f"{label}-cacerts.pem"
        ca_file.write_bytes(b"".join(pem(c.cert) for c in cas))
        lines.append(f"cacerts: [{ca_file}]")
    if crls:
        names = []
        for n, crl in enumerate(crls):
            crl_file = directory / f"{label}-{n}.crl"
            crl_file.write_bytes(crl.public_bytes(Encoding.PEM))
            names.append(str(crl_file))
        lines.append(f"crls: [{', '.join(names)}]")
    return tuple(lines)


def write_ppk(
    directory: Path, label: str, ppk_id: str, key: bytes, required: bool
) -> tuple[str, ...]:
    """A PPK file (mode 0600) and the ``auth:`` lines for it (RFC 8784)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{label}.ppk"
    path.write_text("0x" + key.hex() + "\n")
    os.chmod(path, 0o600)
    return (f"ppk_id: {ppk_id}", f"ppk_file: {path}", f"ppk_required: {str(required).lower()}")
