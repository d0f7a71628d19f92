"""Trust anchors and CRLs; CERTREQ hashes (RFC 7296 §3.7).

A :class:`TrustStore` holds the CA certificates an operator trusts (a file
or a directory of PEM/DER files) and the CRLs configured for revocation.
CERTREQ names trust anchors by the SHA-1 hash of their SubjectPublicKeyInfo
(the DER of the whole SPKI element, RFC 7296 §3.7), 20 bytes each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ipsecd.pki.certs import describe, load_certificates, load_crls
from ipsecd.pki.errors import PkiError

__all__ = ["TrustStore", "spki_sha1", "CERTREQ_HASH_LEN"]

CERTREQ_HASH_LEN = 20  # SHA-1


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the certificate's DER SubjectPublicKeyInfo (RFC 7296 §3.7 CA hash)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # cryptography's SHA-1, not hashlib's: the daemon does without the stdlib's OpenSSL
    # (ipsecd.daemon.lazyimports), and a config with certificates imports this module.
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki)
    return digest.finalize()


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


@dataclass
class TrustStore:
    """Trust anchors and CRLs for validating peers' certificates."""

    anchors: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)

    @classmethod
    def from_paths(
        cls, cacerts: Sequence[Path | str], crls: Sequence[Path | str] = ()
    ) -> TrustStore:
        """Load anchors from files or directories (every file in them) and CRL files.

        Raises PkiError naming the file; an anchor that is not a CA is refused here,
        so the mistake shows at config load, not at the first handshake.
        """
        store = cls()
        for entry in cacerts:
            path = Path(entry)
            if not path.exists():
                raise PkiError(f"CA certificate path {path} does not exist")
            files = _files(path)
            if not files:
                raise PkiError(f"CA certificate directory {path} holds no files")
            for f in files:
                try:
                    data = f.read_bytes()
                except OSError as exc:
                    raise PkiError(f"cannot read CA certificate file {f}: {exc.strerror}") from None
                store.add_anchors(load_certificates(data, f"CA certificate file {f}"), str(f))
        for entry in crls:
            for f in _files(Path(entry)):
                try:
                    data = f.read_bytes()
                except OSError as exc:
                    raise PkiError(f"cannot read CRL file {f}: {exc.strerror}") from None
                store.crls.extend(load_crls(data, f"CRL file {f}"))
        return store

    def add_anchors(self, certs: Iterable[x509.Certificate], source: str = "") -> None:
        for cert in certs:
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
                is_ca = bc.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                where = f" in {source}" if source else ""
                raise PkiError(
                    f"{describe(cert)}{where} is not a CA certificate (no basicConstraints"
                    " CA:TRUE); list CA certificates as trust anchors, not gateway certificates"
                )
            if cert not in self.anchors:
                self.anchors.append(cert)

    def certreq_hashes(self) -> list[bytes]:
        """The CA hashes we send in CERTREQ, one per anchor (RFC 7296 §3.7)."""
        return list(dict.fromkeys(spki_sha1(a) for a in self.anchors))

    def anchors_for(self, hashes: Iterable[bytes]) -> list[x509.Certificate]:
        """Our anchors whose key a peer's CERTREQ named (unknown hashes are ignored)."""
        wanted = set(hashes)
        return [a for a in self.anchors if spki_sha1(a) in wanted]

    def crls_for(self, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs issued by ``issuer`` whose signature checks out."""
        out = []
        for crl in self.crls:
            if crl.issuer != issuer.subject:
                continue
            try:
                if crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    out.append(crl)
            except (TypeError, ValueError):
                continue
        return out
