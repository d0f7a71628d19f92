"""Loading certificates, CRLs and private keys (PEM or DER), and describing certificates."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from ipsecd.pki.errors import PkiError

__all__ = [
    "SigningKey",
    "load_certificates",
    "load_certificate_file",
    "load_crls",
    "load_private_key",
    "describe",
    "name_text",
    "key_description",
    "fingerprint_sha256",
]

# The key types IKE signature authentication uses (RFC 7427): RSA, ECDSA, Ed25519.
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_DN_SHORT_NAMES = {NameOID.EMAIL_ADDRESS: "E", NameOID.SERIAL_NUMBER: "serialNumber"}
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_CRL = b"-----BEGIN X509 CRL-----"


def load_certificates(data: bytes, source: str = "certificate data") -> list[x509.Certificate]:
    """All certificates in ``data``: one DER certificate, or any number of PEM blocks."""
    data = bytes(data)
    if b"-----BEGIN" in data:
        if _PEM_CERT not in data:
            raise PkiError(f"{source}: PEM data without a CERTIFICATE block")
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise PkiError(f"{source}: not a valid PEM certificate ({exc})") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise PkiError(f"{source}: neither PEM nor DER X.509 certificate data") from None


def load_certificate_file(path: Path | str) -> list[x509.Certificate]:
    """Certificates of a PEM or DER file; PkiError names the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read certificate file {path}: {exc.strerror}") from None
    return load_certificates(data, f"certificate file {path}")


def load_crls(data: bytes, source: str = "CRL data") -> list[x509.CertificateRevocationList]:
    """All CRLs in ``data`` (PEM blocks or one DER CRL)."""
    data = bytes(data)
    if b"-----BEGIN" in data:
        blocks = data.split(_PEM_CRL)[1:]
        if not blocks:
            raise PkiError(f"{source}: PEM data without an X509 CRL block")
        out = []
        for block in blocks:
            pem = _PEM_CRL + block.split(b"-----END X509 CRL-----")[0] + b"-----END X509 CRL-----\n"
            try:
                out.append(x509.load_pem_x509_crl(pem))
            except ValueError as exc:
                raise PkiError(f"{source}: not a valid PEM CRL ({exc})") from None
        return out
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise PkiError(f"{source}: neither PEM nor DER CRL data") from None


def load_private_key(
    data: bytes, source: str = "private key", password: bytes | None = None
) -> SigningKey:
    """An RSA, ECDSA (P-256/P-384/P-521) or Ed25519 private key, PEM or DER (PKCS#8/PKCS#1/SEC1).

    The caller reads the file with the secret-file permission checks
    (``ipsecd.config.credentials.read_private_key_file``).
    """
    data = bytes(data)
    key: PrivateKeyTypes
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except TypeError as exc:  # password needed or not expected
        raise PkiError(f"{source}: {exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"{source}: not a readable private key (PEM or DER)") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise PkiError(f"{source}: ECDSA curve {key.curve.name} is not usable in IKEv2")
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PkiError(
            f"{source}: {type(key).__name__.removesuffix('PrivateKey')} keys are not supported;"
            " use RSA, ECDSA or Ed25519"
        )
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise PkiError(f"{source}: RSA key of {key.key_size} bits; at least 2048 are needed")
    return key


def name_text(name: x509.Name) -> str:
    """A DN as strongSwan prints it: most significant RDN first (``C=CH, O=Org, CN=gw``)."""
    if not name.rdns:
        return "(empty DN)"
    return ", ".join(rdn.rfc4514_string(_DN_SHORT_NAMES) for rdn in name.rdns)


def key_description(key: object) -> str:
    """``RSA-3072``, ``ECDSA P-256``, ``Ed25519`` for a public or private key."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curve.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    return type(key).__name__


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, colon-separated hex (``openssl x509 -fingerprint``)."""
    digest = cert.fingerprint(hashes.SHA256()).hex()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def describe(cert: x509.Certificate) -> str:
    """Subject, issuer and validity in one line, for error messages and logs."""
    return (
        f"certificate '{name_text(cert.subject)}' (issuer '{name_text(cert.issuer)}',"
        f" valid {_when(cert.not_valid_before_utc)} to {_when(cert.not_valid_after_utc)})"
    )
