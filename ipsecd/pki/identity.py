"""IKE identities of a certificate and matching them (RFC 7296 §3.5, RFC 4945 §3.1, §5.1.2).

A certificate stands for the identities in its subjectAltName — IP addresses
(ID_IPV4_ADDR / ID_IPV6_ADDR), DNS names (ID_FQDN), e-mail addresses
(ID_RFC822_ADDR) — and for its subject DN (ID_DER_ASN1_DN).  The peer's IDi/IDr
must be one of them (RFC 4945 §3.1: an ID not backed by the certificate is
refused), and must be the identity configured as ``remote_id``.

This layer sits below ``ike`` and does not import it; the ID type numbers
below are IANA's (the same values as ``ipsecd.ike.constants.IdType``).

DN text is written as strongSwan writes it, most significant RDN first:
``C=CH, O=strongSwan, CN=moon.strongswan.org`` (``E=`` is emailAddress).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipsecd.pki.errors import CertificateError, PkiError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.x509.oid import ObjectIdentifier

# cryptography.x509 (and this package's certs module, which needs it) is imported by the
# functions that parse DNs and certificates, not here: IKE IDs of other types, which a PSK
# gateway uses, do without its 2 MB (issue 17).

__all__ = [
    "ID_IPV4_ADDR",
    "ID_FQDN",
    "ID_RFC822_ADDR",
    "ID_IPV6_ADDR",
    "ID_DER_ASN1_DN",
    "IkeIdentity",
    "identities_of",
    "match_identity",
    "same_identity",
    "check_identity",
    "parse_dn",
    "default_identity",
]

ID_IPV4_ADDR = 1
ID_FQDN = 2
ID_RFC822_ADDR = 3
ID_IPV6_ADDR = 5
ID_DER_ASN1_DN = 9

_TYPE_NAMES = {
    ID_IPV4_ADDR: "ID_IPV4_ADDR",
    ID_FQDN: "ID_FQDN",
    ID_RFC822_ADDR: "ID_RFC822_ADDR",
    ID_IPV6_ADDR: "ID_IPV6_ADDR",
    ID_DER_ASN1_DN: "ID_DER_ASN1_DN",
}


@functools.cache
def _dn_names() -> dict[str, ObjectIdentifier]:
    """strongSwan's attribute names that RFC 4514 spells differently."""
    from cryptography.x509.oid import NameOID

    return {
        "E": NameOID.EMAIL_ADDRESS,
        "EMAIL": NameOID.EMAIL_ADDRESS,
        "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
        "SN": NameOID.SURNAME,
        "SERIALNUMBER": NameOID.SERIAL_NUMBER,
        "G": NameOID.GIVEN_NAME,
        "GN": NameOID.GIVEN_NAME,
        "T": NameOID.TITLE,
    }


def parse_dn(text: str) -> x509.Name:
    """``C=CH, O=Org, CN=gw`` (strongSwan order, most significant first) -> x509.Name.

    Commas inside values are escaped as in RFC 4514 (``O=Foo\\, Inc``).
    """
    from cryptography import x509

    parts = [p.strip() for p in re.split(r"(?<!\\),", text)]
    if not parts or any(not p or "=" not in p for p in parts):
        raise PkiError(f"distinguished name {text!r} is not of the form 'C=CH, O=Org, CN=name'")
    normalized = []
    for part in parts:
        key, value = part.split("=", 1)
        normalized.append(f"{key.strip()}={value.strip()}")
    try:
        name = x509.Name.from_rfc4514_string(",".join(reversed(normalized)), _dn_names())
    except ValueError:
        raise PkiError(
            f"distinguished name {text!r} does not parse (attribute names:"
            " C, ST, L, O, OU, CN, E, DC, UID, SN, serialNumber)"
        ) from None
    return name


@dataclass(frozen=True)
class IkeIdentity:
    """An IKE ID: type (IANA number) and the ID payload's identification data."""

    id_type: int
    data: bytes

    @classmethod
    def from_text(cls, text: str) -> IkeIdentity:
        """strongSwan rules: IP literal, ``@fqdn``, ``user@host``, a DN (has ``=``), else FQDN."""
        text = text.strip()
        if not text:
            raise PkiError("identity is empty")
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(ID_IPV4_ADDR if addr.version == 4 else ID_IPV6_ADDR, addr.packed)
        if "=" in text:
            return cls.from_dn(parse_dn(text))
        if text.startswith("@"):
            return cls(ID_FQDN, text[1:].encode())
        if "@" in text:
            return cls(ID_RFC822_ADDR, text.encode())
        return cls(ID_FQDN, text.encode())

    @classmethod
    def from_dn(cls, name: x509.Name) -> IkeIdentity:
        return cls(ID_DER_ASN1_DN, name.public_bytes())

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.id_type, f"ID type {self.id_type}")

    def dn(self) -> x509.Name | None:
        """The parsed DN of an ID_DER_ASN1_DN identity (None if the DER does not parse)."""
        if self.id_type != ID_DER_ASN1_DN:
            return None
        try:
            return _der_name(self.data)
        except ValueError:
            return None

    def __str__(self) -> str:
        if self.id_type in (ID_IPV4_ADDR, ID_IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                pass
        if self.id_type in (ID_FQDN, ID_RFC822_ADDR):
            return self.data.decode("utf-8", "replace")
        if self.id_type == ID_DER_ASN1_DN:
            from ipsecd.pki.certs import name_text

            name = self.dn()
            return name_text(name) if name is not None else f"DN:{self.data.hex()}"
        return f"{self.type_name}:{self.data.hex()}"


# An Ed25519 SubjectPublicKeyInfo, any key: only its shape matters below.
_DUMMY_SPKI = bytes.fromhex(
    "302a300506032b65700321005ce3eaea3f4dafa202ad342b9faf2b25cf06f4cceb18c4b06bf78237a10c0a9d"
)


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_name(der: bytes) -> x509.Name:
    """Parse a DER Name with cryptography's own parser.

    cryptography has no public loader for a bare Name, so the Name is placed as
    the subject of a minimal, unsigned PKCS#10 request (RFC 2986 §4.1) whose
    parsing never checks the signature; ``ValueError`` if it is not one Name.
    """
    from cryptography import x509

    if len(der) > 0xFFFF:
        raise ValueError("DN too long")
    info = _tlv(0x30, b"\x02\x01\x00" + der + _DUMMY_SPKI + b"\xa0\x00")
    request = _tlv(0x30, info + _tlv(0x30, b"\x06\x03\x2b\x65\x70") + _tlv(0x03, bytes(65)))
    subject = x509.load_der_x509_csr(request).subject
    if subject.public_bytes() != der:  # trailing bytes or a non-canonical encoding
        raise ValueError("not a single DER Name")
    return subject


def identities_of(cert: x509.Certificate) -> list[IkeIdentity]:
    """Every IKE identity the certificate backs: its SANs, then its subject DN."""
    from cryptography import x509

    out: list[IkeIdentity] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for ip in san.get_values_for_type(x509.IPAddress):
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
                out.append(
                    IkeIdentity(ID_IPV4_ADDR if ip.version == 4 else ID_IPV6_ADDR, ip.packed)
                )
        out += [IkeIdentity(ID_FQDN, d.encode()) for d in san.get_values_for_type(x509.DNSName)]
        out += [
            IkeIdentity(ID_RFC822_ADDR, e.encode())
            for e in san.get_values_for_type(x509.RFC822Name)
        ]
    if cert.subject.rdns:
        out.append(IkeIdentity.from_dn(cert.subject))
    return out


def same_identity(a: IkeIdentity, b: IkeIdentity) -> bool:
    """The same IKE identity: DNs by attribute, DNS names and e-mail case-insensitively."""
    if a.id_type != b.id_type:
        return False
    if a.id_type in (ID_FQDN, ID_RFC822_ADDR):  # DNS names and mail domains: case-insensitive
        return a.data.lower() == b.data.lower()
    if a.id_type == ID_DER_ASN1_DN:
        if a.data == b.data:
            return True
        da, db = a.dn(), b.dn()
        return da is not None and db is not None and da == db  # same attributes, any string type
    return a.data == b.data


def match_identity(cert: x509.Certificate, identity: IkeIdentity) -> bool:
    """Whether ``identity`` (the peer's IDi/IDr, or a configured id) is backed by ``cert``."""
    return any(same_identity(identity, own) for own in identities_of(cert))


def check_identity(
    cert: x509.Certificate, peer_id: IkeIdentity, expected: IkeIdentity | None
) -> None:
    """Refuse a peer whose ID is not in its certificate, or is not the configured remote_id.

    Raises :class:`CertificateError` (reason ``identity``) saying which is the case.
    """
    from ipsecd.pki.certs import describe

    if not match_identity(cert, peer_id):
        have = ", ".join(f"{i.type_name} {i}" for i in identities_of(cert)) or "none"
        raise CertificateError(
            "identity",
            f"peer sent the identity {peer_id.type_name} '{peer_id}' but its {describe(cert)}"
            f" does not contain it (the certificate's identities: {have})",
            cert,
        )
    if expected is not None and not same_identity(expected, peer_id):
        raise CertificateError(
            "identity",
            f"peer authenticated as {peer_id.type_name} '{peer_id}' with {describe(cert)},"
            f" but remote_id is {expected.type_name} '{expected}'",
            cert,
        )


def default_identity(cert: x509.Certificate) -> IkeIdentity:
    """The ID we send when none is configured: the subject DN (strongSwan's default)."""
    if cert.subject.rdns:
        return IkeIdentity.from_dn(cert.subject)
    ids = identities_of(cert)
    if not ids:
        from ipsecd.pki.certs import describe

        raise PkiError(f"{describe(cert)} has neither a subject DN nor a subjectAltName")
    return ids[0]
