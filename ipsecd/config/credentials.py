"""Credentials for certificate authentication and PPK: files -> typed objects, or ConfigError.

* ``private_key``: read with the PSK file rules (below), then parsed by
  :func:`ipsecd.pki.certs.load_private_key` (RSA >= 2048, ECDSA, Ed25519).
* ``certificate``: our certificate, optionally followed by intermediate CA
  certificates in the same PEM file; it must hold the private key's public key.
* ``cacerts`` / ``crls``: a :class:`ipsecd.pki.TrustStore`.
* ``ppk_file``: an RFC 8784 post-quantum preshared key.

Secret files follow the PSK file rules (:func:`ipsecd.config.secretfiles.read_secret_file`:
a regular file, mode 0600 or stricter, at most 64 KiB), and the content is
written as strongSwan writes secrets: ``0x...`` hex (spaces and colons
allowed), ``0s...`` base64, anything else the stripped text itself.

RFC 8784 §3 asks for a PPK with at least 256 bits of entropy; a key shorter
than 16 bytes cannot give post-quantum protection (Grover halves its
strength) and is refused.  No message here contains file content.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ipsecd.config.fields import At
from ipsecd.config.secretfiles import read_secret_file, wipe
from ipsecd.pki.errors import PkiError

if TYPE_CHECKING:  # imported by the functions that load them: a PSK config needs none
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

    from ipsecd.pki.certs import SigningKey
    from ipsecd.pki.trust import TrustStore

__all__ = [
    "MIN_PPK_BYTES",
    "read_ppk_file",
    "decode_ppk",
    "read_private_key_file",
    "read_certificate_file",
    "load_trust_store",
]

MIN_PPK_BYTES = 16


def decode_ppk(data: bytes, path: Path, at: At) -> bytes:
    """PPK file content -> key bytes, or a ConfigError naming the file and the problem."""
    s = data.strip()
    if not s:
        raise at.error(f"ppk file {path} is empty")
    if s[:2].lower() == b"0x":
        try:
            ppk = binascii.unhexlify(re.sub(rb"[\s:]", b"", s[2:]))
        except (binascii.Error, ValueError):
            raise at.error(f"ppk file {path} starts with 0x but the rest is not hex") from None
    elif s[:2] == b"0s":
        try:
            ppk = base64.b64decode(s[2:], validate=True)
        except (binascii.Error, ValueError):
            raise at.error(f"ppk file {path} starts with 0s but the rest is not base64") from None
    else:
        ppk = s
    if len(ppk) < MIN_PPK_BYTES:
        raise at.error(
            f"ppk file {path} holds a {len(ppk)}-byte key; a post-quantum preshared key needs"
            f" at least {MIN_PPK_BYTES} bytes (RFC 8784 asks for 256 bits of entropy:"
            " e.g. 0x followed by 64 hex digits from 'head -c32 /dev/urandom | xxd -p -c64')"
        )
    return ppk


def read_ppk_file(path: Path, at: At, owners: frozenset[int] | None = None) -> bytes:
    """Read and decode a PPK file after the PSK file permission checks (``owners``: who
    may own it, as for PSK files); the file's buffer is wiped once decoded."""
    raw = read_secret_file(path, "ppk", at, owners)
    try:
        return decode_ppk(bytes(raw), path, at)
    finally:
        wipe(raw)


def read_private_key_file(path: Path, at: At, owners: frozenset[int] | None = None) -> SigningKey:
    """Our private key: PSK file permission rules, then PEM/DER parsing (no passphrase);
    the file's buffer is wiped once parsed."""
    from ipsecd.pki.certs import load_private_key

    raw = read_secret_file(path, "private key", at, owners)
    try:
        return load_private_key(bytes(raw), f"private key file {path}")
    except PkiError as exc:
        raise at.error(str(exc)) from None
    finally:
        wipe(raw)


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_certificate_file(
    path: Path, at: At, key: SigningKey | None = None
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Our certificate and the intermediates after it in the file; checked against ``key``."""
    from ipsecd.pki.certs import describe, load_certificate_file

    try:
        certs = load_certificate_file(path)
    except PkiError as exc:
        raise at.error(str(exc)) from None
    own, chain = certs[0], certs[1:]
    if key is not None and _spki(own.public_key()) != _spki(key.public_key()):
        raise at.error(
            f"{describe(own)} in {path} does not belong to the configured private_key"
            " (their public keys differ)"
        )
    return own, chain


def load_trust_store(cacerts: Sequence[Path], crls: Sequence[Path], at: At) -> TrustStore:
    """Trust anchors (files or directories) and CRL files -> TrustStore, or ConfigError."""
    from ipsecd.pki.trust import TrustStore

    try:
        return TrustStore.from_paths(cacerts, crls)
    except PkiError as exc:
        raise at.error(str(exc)) from None
