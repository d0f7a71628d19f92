"""Errors of the PKI layer: every message names the certificate in plain words."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


class PkiError(ValueError):
    """A PKI input that cannot be used (bad file, bad payload, unusable key)."""


class CertificateError(PkiError):
    """A certificate that does not validate; ``reason`` is a short machine-readable tag.

    Reasons: ``expired``, ``not-yet-valid``, ``untrusted``, ``bad-signature``,
    ``revoked``, ``key-usage``, ``extended-key-usage``, ``not-a-ca``,
    ``path-length``, ``critical-extension``, ``identity``.
    """

    def __init__(self, reason: str, message: str, certificate: x509.Certificate | None = None):
        super().__init__(message)
        self.reason = reason
        self.certificate = certificate
