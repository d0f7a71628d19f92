"""IKE identities from certificates (SAN IP/DNS/email, DN) and CERT/CERTREQ payload data."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ipsecd.ike.constants import IdType
from ipsecd.pki import PkiError
from ipsecd.pki.errors import CertificateError
from ipsecd.pki.identity import (
    ID_DER_ASN1_DN,
    ID_FQDN,
    ID_IPV4_ADDR,
    ID_IPV6_ADDR,
    ID_RFC822_ADDR,
    IkeIdentity,
    check_identity,
    default_identity,
    identities_of,
    match_identity,
    parse_dn,
)
from ipsecd.pki.payloads import (
    CERT_X509_SIGNATURE,
    UnsupportedCertEncoding,
    certreq_data,
    decode_cert_payload,
    decode_certreq_payload,
    encode_cert_payload,
)
from ipsecd.pki.trust import TrustStore, spki_sha1
from tests.unit.pki_support import ca, gateway


def test_id_numbers_match_the_ike_layer() -> None:
    assert (ID_IPV4_ADDR, ID_FQDN, ID_RFC822_ADDR, ID_IPV6_ADDR, ID_DER_ASN1_DN) == (
        IdType.ID_IPV4_ADDR,
        IdType.ID_FQDN,
        IdType.ID_RFC822_ADDR,
        IdType.ID_IPV6_ADDR,
        IdType.ID_DER_ASN1_DN,
    )


def test_identities_of_certificate() -> None:
    gw = gateway(ca(), sans=("192.0.2.1", "2001:db8::1", "gw-a.example", "admin@example"))
    ids = identities_of(gw.cert)
    assert ids[:4] == [
        IkeIdentity(ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
        IkeIdentity(ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed),
        IkeIdentity(ID_FQDN, b"gw-a.example"),
        IkeIdentity(ID_RFC822_ADDR, b"admin@example"),
    ]
    assert ids[4] == IkeIdentity(ID_DER_ASN1_DN, gw.cert.subject.public_bytes())
    assert [str(i) for i in ids] == [
        "192.0.2.1",
        "2001:db8::1",
        "gw-a.example",
        "admin@example",
        "C=CH, O=Test, CN=gw-a.example",
    ]


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("192.0.2.1", True),
        ("192.0.2.2", False),
        ("2001:db8::1", True),
        ("gw-a.example", True),
        ("@GW-A.Example", True),
        ("gw-b.example", False),
        ("admin@example", True),
        ("root@example", False),
        ("C=CH, O=Test, CN=gw-a.example", True),
        ("C=CH,O=Test,CN=gw-a.example", True),
        ("CN=gw-a.example, O=Test, C=CH", False),  # RDN order matters
        ("C=CH, O=Test, CN=gw-b.example", False),
    ],
)
def test_match_identity(text: str, matches: bool) -> None:
    gw = gateway(ca(), sans=("192.0.2.1", "2001:db8::1", "gw-a.example", "admin@example"))
    assert match_identity(gw.cert, IkeIdentity.from_text(text)) is matches


def test_dn_match_ignores_string_types() -> None:
    # The peer's DN as PrintableString, ours as UTF8String: the same name.
    gw = gateway(ca(), dn="C=CH, O=Test, CN=gw-a.example")
    printable = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "Test", x509.name._ASN1Type.PrintableString
            ),
            x509.NameAttribute(
                NameOID.COMMON_NAME, "gw-a.example", x509.name._ASN1Type.PrintableString
            ),
        ]
    )
    assert printable.public_bytes() != gw.cert.subject.public_bytes()
    assert match_identity(gw.cert, IkeIdentity.from_dn(printable))


def test_check_identity_messages() -> None:
    gw = gateway(ca(), sans=("192.0.2.1",), dn="CN=gw-a")
    check_identity(gw.cert, IkeIdentity.from_text("192.0.2.1"), None)
    check_identity(gw.cert, IkeIdentity.from_text("CN=gw-a"), IkeIdentity.from_text("CN=gw-a"))
    with pytest.raises(CertificateError) as exc:
        check_identity(gw.cert, IkeIdentity.from_text("gw-a.example"), None)
    assert exc.value.reason == "identity"
    assert str(exc.value) == (
        "peer sent the identity ID_FQDN 'gw-a.example' but its certificate 'CN=gw-a'"
        " (issuer 'C=CH, O=Test, CN=Test Root CA', valid "
        + str(exc.value).split("valid ", 1)[1].split(")")[0]
        + ") does not contain it (the certificate's identities: ID_IPV4_ADDR 192.0.2.1,"
        " ID_DER_ASN1_DN CN=gw-a)"
    )
    with pytest.raises(CertificateError, match="but remote_id is ID_FQDN 'gw-b.example'"):
        check_identity(
            gw.cert, IkeIdentity.from_text("192.0.2.1"), IkeIdentity.from_text("gw-b.example")
        )


def test_default_identity_and_text_forms() -> None:
    gw = gateway(ca(), sans=("gw-a.example",), dn="C=CH, CN=gw-a")
    assert default_identity(gw.cert) == IkeIdentity.from_dn(gw.cert.subject)
    no_dn = gateway(ca(), sans=("gw-x.example",), dn=None)
    assert str(default_identity(no_dn.cert)) == "CN=gw-x.example"
    assert IkeIdentity.from_text("@host") == IkeIdentity(ID_FQDN, b"host")
    assert IkeIdentity.from_text("u@h") == IkeIdentity(ID_RFC822_ADDR, b"u@h")
    assert IkeIdentity(ID_DER_ASN1_DN, b"\x30\x05junk").dn() is None
    assert str(IkeIdentity(ID_DER_ASN1_DN, b"\x30\x05junk")).startswith("DN:")
    assert str(IkeIdentity(11, b"\x01")) == "ID type 11:01"
    with pytest.raises(PkiError, match="identity is empty"):
        IkeIdentity.from_text(" ")


def test_parse_dn() -> None:
    name = parse_dn("C=CH, O=strongSwan, CN=moon.strongswan.org, E=admin@strongswan.org")
    assert [rdn.rfc4514_string() for rdn in name.rdns][:3] == [
        "C=CH",
        "O=strongSwan",
        "CN=moon.strongswan.org",
    ]
    assert name.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == "admin@strongswan.org"
    assert parse_dn(r"O=Foo\, Inc, CN=x").rdns[0].rfc4514_string() == r"O=Foo\, Inc"
    for bad in ("", "CN", "C=CH,,CN=x", "XYZ=1"):
        with pytest.raises(PkiError, match="distinguished name"):
            parse_dn(bad)


def test_cert_payload_round_trip() -> None:
    gw = gateway(ca())
    body = encode_cert_payload(gw.cert)
    assert body[0] == CERT_X509_SIGNATURE == 4
    assert decode_cert_payload(body) == gw.cert
    with pytest.raises(UnsupportedCertEncoding, match="encoding 12; ipsecd supports only 4") as exc:
        decode_cert_payload(b"\x0chttp://example/cert")
    assert exc.value.encoding == 12
    with pytest.raises(PkiError, match="is not a DER certificate"):
        decode_cert_payload(b"\x04\x30\x00")
    with pytest.raises(PkiError, match="without a certificate encoding"):
        decode_cert_payload(b"")


def test_certreq_payload_round_trip() -> None:
    root, other = ca(), ca("ed25519", "CN=Other CA")
    store = TrustStore([root.cert, other.cert])
    body = certreq_data(store.certreq_hashes())
    assert body == b"\x04" + spki_sha1(root.cert) + spki_sha1(other.cert)
    assert decode_certreq_payload(body) == [spki_sha1(root.cert), spki_sha1(other.cert)]
    assert decode_certreq_payload(b"\x04") == []
    with pytest.raises(PkiError, match="21 bytes of CA hashes, not a multiple of 20"):
        decode_certreq_payload(b"\x04" + bytes(21))
    with pytest.raises(UnsupportedCertEncoding):
        decode_certreq_payload(b"\x07" + bytes(20))
    with pytest.raises(PkiError, match="without a certificate encoding"):
        decode_certreq_payload(b"")
    with pytest.raises(ValueError, match="SHA-1 \\(20 bytes\\)"):
        certreq_data([b"short"])
