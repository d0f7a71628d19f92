"""CERT and CERTREQ payload data (RFC 7296 §3.6, §3.7), X.509 encodings only.

Functions take and return the payload body (encoding octet + data) as bytes,
so the IKE codec stays unaware of X.509 and this layer of the IKE codec:

* CERT, encoding 4 "X.509 Certificate - Signature": the DER certificate.
* CERTREQ, encoding 4: concatenated 20-byte SHA-1 hashes of trusted CAs'
  SubjectPublicKeyInfo.  An empty CERTREQ data ("any CA") is allowed.

Other encodings (12, "Hash and URL of X.509 certificate", and the rest) are
reported as unsupported so the exchange can ignore the payload (RFC 7296 §3.6:
a CERT of an unsupported encoding is not an error by itself).
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ipsecd.pki.errors import PkiError
from ipsecd.pki.trust import CERTREQ_HASH_LEN

__all__ = [
    "CERT_X509_SIGNATURE",
    "UnsupportedCertEncoding",
    "encode_cert_payload",
    "decode_cert_payload",
    "certreq_data",
    "decode_certreq_payload",
]

CERT_X509_SIGNATURE = 4  # RFC 7296 §3.6 Certificate Encoding


class UnsupportedCertEncoding(PkiError):
    """A CERT/CERTREQ payload in an encoding ipsecd does not use; ignore the payload."""

    def __init__(self, encoding: int, what: str) -> None:
        super().__init__(
            f"{what} payload with certificate encoding {encoding}; ipsecd supports only"
            f" {CERT_X509_SIGNATURE} (X.509 Certificate - Signature)"
        )
        self.encoding = encoding


def encode_cert_payload(cert: x509.Certificate) -> bytes:
    """CERT payload body: encoding 4 | DER certificate."""
    return bytes([CERT_X509_SIGNATURE]) + cert.public_bytes(serialization.Encoding.DER)


def decode_cert_payload(body: bytes) -> x509.Certificate:
    """A CERT payload body -> the certificate; PkiError (UnsupportedCertEncoding) otherwise."""
    body = bytes(body)
    if not body:
        raise PkiError("CERT payload without a certificate encoding octet")
    if body[0] != CERT_X509_SIGNATURE:
        raise UnsupportedCertEncoding(body[0], "CERT")
    try:
        return x509.load_der_x509_certificate(body[1:])
    except ValueError:
        raise PkiError(
            f"CERT payload (X.509 signature, {len(body) - 1} bytes) is not a DER certificate"
        ) from None


def certreq_data(hashes: Iterable[bytes]) -> bytes:
    """CERTREQ payload body: encoding 4 | SHA-1(SPKI) of each trusted CA."""
    out = bytearray([CERT_X509_SIGNATURE])
    for h in hashes:
        if len(h) != CERTREQ_HASH_LEN:
            raise ValueError(f"CA hash of {len(h)} bytes; CERTREQ hashes are SHA-1 (20 bytes)")
        out += h
    return bytes(out)


def decode_certreq_payload(body: bytes) -> list[bytes]:
    """A CERTREQ payload body -> the list of CA hashes (possibly empty)."""
    body = bytes(body)
    if not body:
        raise PkiError("CERTREQ payload without a certificate encoding octet")
    if body[0] != CERT_X509_SIGNATURE:
        raise UnsupportedCertEncoding(body[0], "CERTREQ")
    data = body[1:]
    if len(data) % CERTREQ_HASH_LEN:
        raise PkiError(
            f"CERTREQ payload carries {len(data)} bytes of CA hashes, not a multiple of"
            f" {CERTREQ_HASH_LEN} (SHA-1)"
        )
    return [data[i : i + CERTREQ_HASH_LEN] for i in range(0, len(data), CERTREQ_HASH_LEN)]
