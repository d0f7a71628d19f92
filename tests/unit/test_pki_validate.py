"""Chain building and validation: every refusal names the certificate and says why."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ipsecd.pki import CertificateError, PkiError, TrustStore, validate_chain
from ipsecd.pki.certs import (
    describe,
    fingerprint_sha256,
    key_description,
    load_certificates,
    load_crls,
    load_private_key,
)
from ipsecd.pki.issue import generate_key, issue_certificate, make_ca, make_crl
from ipsecd.pki.trust import spki_sha1
from tests.unit.pki_support import NOW, ca, gateway, intermediate

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-3072"])
@pytest.mark.parametrize("rsa_pss", [False, True])
def test_valid_chain_every_key_type(key_type: str, rsa_pss: bool) -> None:
    root = ca(key_type)
    gw = gateway(root, key_type=key_type, rsa_pss=rsa_pss)
    chain = validate_chain(gw.cert, [], TrustStore([root.cert]), NOW)
    assert chain.end_entity == gw.cert and chain.anchor == root.cert


def test_chain_through_intermediate_in_any_order() -> None:
    root = ca()
    sub = intermediate(root)
    gw = gateway(sub)
    other = gateway(root, dn="CN=unrelated")
    store = TrustStore([root.cert])
    chain = validate_chain(gw.cert, [other.cert, sub.cert], store, NOW)
    assert chain.certificates == (gw.cert, sub.cert, root.cert)
    with pytest.raises(CertificateError, match="not issued by a trusted CA") as exc:
        validate_chain(gw.cert, [], store, NOW)
    assert exc.value.reason == "untrusted"
    assert "'C=CH, O=Test, CN=Test Sub CA'" in str(exc.value)


def test_expired_and_not_yet_valid_name_the_certificate() -> None:
    root = ca()
    old = gateway(root, start=NOW - timedelta(days=400), days=365)
    with pytest.raises(CertificateError) as exc:
        validate_chain(old.cert, [], TrustStore([root.cert]), NOW)
    msg = str(exc.value)
    assert exc.value.reason == "expired"
    assert "peer certificate 'C=CH, O=Test, CN=gw-a.example'" in msg
    assert "issuer 'C=CH, O=Test, CN=Test Root CA'" in msg
    assert "expired on 2026-04-27 12:00:00 UTC" in msg
    future = gateway(root, start=NOW + timedelta(days=2))
    with pytest.raises(CertificateError, match="not valid yet: it starts on 2026-06-03") as exc:
        validate_chain(future.cert, [], TrustStore([root.cert]), NOW)
    assert exc.value.reason == "not-yet-valid"
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_chain(future.cert, [], TrustStore([root.cert]), NOW.replace(tzinfo=None))


def test_untrusted_issuer() -> None:
    gw = gateway(ca("ed25519", "CN=Other CA"))
    with pytest.raises(CertificateError, match="no trust anchor or intermediate .*'CN=Other CA'"):
        validate_chain(gw.cert, [], TrustStore([ca().cert]), NOW)
    with pytest.raises(CertificateError, match="no trust anchors configured"):
        validate_chain(gw.cert, [], TrustStore(), NOW)


def test_bad_signature_same_name_other_key() -> None:
    root = ca()
    impostor_key = generate_key("ecdsa-p256")
    impostor = make_ca(impostor_key, "C=CH, O=Test, CN=Test Root CA", NOW)
    forged = issue_certificate(
        impostor_key, impostor, generate_key("ed25519").public_key(), "CN=forged", [], NOW
    )
    # The forged AKI points to the impostor's key: strip by trusting only the real root.
    store = TrustStore([root.cert])
    with pytest.raises(CertificateError) as exc:
        validate_chain(forged, [], store, NOW)
    assert exc.value.reason in ("bad-signature", "untrusted")
    # Without key identifiers the name matches and the signature check must catch it.
    no_aki = _without_extensions(forged, impostor_key, impostor, x509.AuthorityKeyIdentifier)
    with pytest.raises(CertificateError, match="bad signature by 'C=CH, O=Test, CN=Test Root CA'"):
        validate_chain(no_aki, [], store, NOW)


def _without_extensions(cert, key, issuer, drop):  # type: ignore[no-untyped-def]
    from ipsecd.pki.issue import _sign_args

    b = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(issuer.subject)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, drop):
            b = b.add_extension(ext.value, ext.critical)
    algorithm, pad = _sign_args(key, False)
    return b.sign(key, algorithm, rsa_padding=pad)


def test_revoked_with_crl_date() -> None:
    root = ca()
    gw = gateway(root, serial=0x1234)
    crl = make_crl(root.key, root.cert, [0x1234, 99], NOW, revoked_at=NOW - timedelta(days=3))
    store = TrustStore([root.cert], [crl])
    with pytest.raises(CertificateError) as exc:
        validate_chain(gw.cert, [], store, NOW)
    msg = str(exc.value)
    assert exc.value.reason == "revoked"
    assert "was revoked on 2026-05-29 12:00:00 UTC" in msg
    assert "per the CRL of 'C=CH, O=Test, CN=Test Root CA' issued 2026-06-01 12:00:00 UTC" in msg
    # A CRL signed by another key with the same issuer name is ignored.
    fake_key = generate_key("ecdsa-p256")
    fake = make_crl(fake_key, root.cert, [0x1234], NOW)
    validate_chain(gw.cert, [], TrustStore([root.cert], [fake]), NOW)
    ok = gateway(root, serial=0x999)
    validate_chain(ok.cert, [], store, NOW)


def test_revoked_intermediate() -> None:
    root = ca()
    sub = intermediate(root)
    gw = gateway(sub)
    crl = make_crl(root.key, root.cert, [sub.cert.serial_number], NOW)
    with pytest.raises(CertificateError, match="intermediate certificate 'C=CH, O=Test, CN=Test"):
        validate_chain(gw.cert, [sub.cert], TrustStore([root.cert], [crl]), NOW)


def test_ca_false_issuer_refused() -> None:
    root = ca()
    gw = gateway(root)
    victim = issue_certificate(
        gw.key, gw.cert, generate_key("ed25519").public_key(), "CN=victim", [], NOW
    )
    with pytest.raises(CertificateError) as exc:
        validate_chain(victim, [gw.cert], TrustStore([root.cert]), NOW)
    assert exc.value.reason == "not-a-ca"
    assert "intermediate CA certificate 'C=CH, O=Test, CN=gw-a.example'" in str(exc.value)
    assert "is not a CA (basicConstraints CA:FALSE or absent)" in str(exc.value)


def _gateway_with(root, **exts):  # type: ignore[no-untyped-def]
    from ipsecd.pki.issue import _sign_args

    key = generate_key("ecdsa-p256")
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=odd"))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    for value, critical in exts.values():
        b = b.add_extension(value, critical)
    algorithm, pad = _sign_args(root.key, False)
    return b.sign(root.key, algorithm, rsa_padding=pad)


def _ku(**flags: bool) -> x509.KeyUsage:
    names = [
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    ]  # fmt: skip
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def test_key_usage_and_eku() -> None:
    root = ca()
    store = TrustStore([root.cert])
    enc_only = _gateway_with(root, ku=(_ku(key_encipherment=True), True))
    with pytest.raises(CertificateError, match="may not sign: its keyUsage lacks digitalSignature"):
        validate_chain(enc_only, [], store, NOW)
    code = _gateway_with(
        root, eku=(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), False)
    )
    with pytest.raises(
        CertificateError, match=r"not for IKE: its extendedKeyUsage \(codeSigning\)"
    ):
        validate_chain(code, [], store, NOW)
    # No keyUsage, no EKU, no SAN, DN only: accepted (strongSwan's pki makes such certificates).
    plain = _gateway_with(root)
    validate_chain(plain, [], store, NOW)
    ike = _gateway_with(
        root, eku=(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")]), False)
    )
    validate_chain(ike, [], store, NOW)


def test_unknown_critical_extension() -> None:
    root = ca()
    odd = _gateway_with(
        root, x=(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00"), True)
    )
    with pytest.raises(CertificateError, match="critical extension .* \\(1.2.3.4.5\\)"):
        validate_chain(odd, [], TrustStore([root.cert]), NOW)


def test_issuer_without_keycertsign_and_path_length() -> None:
    root_key = generate_key("ecdsa-p256")
    from ipsecd.pki.issue import _sign_args

    name = x509.Name.from_rfc4514_string("CN=Limited CA")
    algorithm, pad = _sign_args(root_key, False)
    limited = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(_ku(crl_sign=True), True)
        .sign(root_key, algorithm, rsa_padding=pad)
    )
    from tests.unit.pki_support import Issued

    root = Issued(root_key, limited)
    gw = gateway(root)
    with pytest.raises(CertificateError, match="may not sign certificates: .* lacks keyCertSign"):
        validate_chain(gw.cert, [], TrustStore([limited]), NOW)


def test_path_length_constraint() -> None:
    root_key = generate_key("ecdsa-p256")
    from ipsecd.pki.issue import _sign_args
    from tests.unit.pki_support import Issued

    name = x509.Name.from_rfc4514_string("CN=Pathlen0 CA")
    algorithm, pad = _sign_args(root_key, False)
    root_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=20))
        .not_valid_after(NOW + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .sign(root_key, algorithm, rsa_padding=pad)
    )
    root = Issued(root_key, root_cert)
    sub = intermediate(root)
    gw = gateway(sub)
    with pytest.raises(CertificateError, match=r"allows 0 intermediate CA\(s\) below it"):
        validate_chain(gw.cert, [sub.cert], TrustStore([root_cert]), NOW)


def test_expired_anchor() -> None:
    root = ca()
    gw = gateway(root, days=5000)  # outlives its CA (the CA does not forbid it)
    with pytest.raises(CertificateError, match="trust anchor certificate .* expired on"):
        validate_chain(gw.cert, [], TrustStore([root.cert]), NOW + timedelta(days=3700))


def test_trust_store_from_files_and_directory(tmp_path: Path) -> None:
    root, other = ca(), ca("ed25519", "CN=Other CA")
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "root.pem").write_bytes(root.cert.public_bytes(PEM))
    (tmp_path / "cas" / "other.der").write_bytes(other.cert.public_bytes(DER))
    (tmp_path / "bundle.pem").write_bytes(
        root.cert.public_bytes(PEM) + other.cert.public_bytes(PEM)
    )
    crl = make_crl(root.key, root.cert, [5], NOW)
    (tmp_path / "root.crl").write_bytes(crl.public_bytes(DER))
    store = TrustStore.from_paths([tmp_path / "cas"], [tmp_path / "root.crl"])
    assert {c.subject for c in store.anchors} == {root.cert.subject, other.cert.subject}
    assert len(store.crls) == 1 and store.crls_for(root.cert) == store.crls
    assert store.crls_for(other.cert) == []
    assert len(TrustStore.from_paths([tmp_path / "bundle.pem"]).anchors) == 2
    with pytest.raises(PkiError, match="does not exist"):
        TrustStore.from_paths([tmp_path / "nope"])
    gw = gateway(root)
    (tmp_path / "gw.pem").write_bytes(gw.cert.public_bytes(PEM))
    with pytest.raises(PkiError, match="is not a CA certificate .* not gateway certificates"):
        TrustStore.from_paths([tmp_path / "gw.pem"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkiError, match="holds no files"):
        TrustStore.from_paths([tmp_path / "empty"])


def test_certreq_hashes() -> None:
    root, other = ca(), ca("ed25519", "CN=Other CA")
    store = TrustStore([root.cert, other.cert])
    spki = root.cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib

    assert spki_sha1(root.cert) == hashlib.sha1(spki).digest()
    assert store.certreq_hashes() == [spki_sha1(root.cert), spki_sha1(other.cert)]
    assert store.anchors_for([spki_sha1(other.cert), b"\x00" * 20]) == [other.cert]


def test_loading_and_describing() -> None:
    root = ca()
    pem = root.cert.public_bytes(PEM)
    assert load_certificates(pem * 2) == [root.cert, root.cert]
    assert load_certificates(root.cert.public_bytes(DER)) == [root.cert]
    with pytest.raises(PkiError, match="neither PEM nor DER"):
        load_certificates(b"garbage", "peer.crt")
    with pytest.raises(PkiError, match="without a CERTIFICATE block"):
        load_certificates(b"-----BEGIN PRIVATE KEY-----\n", "x")
    crl = make_crl(root.key, root.cert, [1], NOW)
    assert len(load_crls(crl.public_bytes(PEM) * 2)) == 2
    assert load_crls(crl.public_bytes(DER))[0].issuer == root.cert.subject
    with pytest.raises(PkiError, match="neither PEM nor DER CRL"):
        load_crls(b"junk")
    assert describe(root.cert).startswith("certificate 'C=CH, O=Test, CN=Test Root CA'")
    assert len(fingerprint_sha256(root.cert)) == 32 * 3 - 1
    assert key_description(root.cert.public_key()) == "ECDSA P-256"


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p384", "rsa-3072"])
def test_private_keys(key_type: str) -> None:
    key = generate_key(key_type)
    pkcs8 = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert key_description(load_private_key(pkcs8)) == key_description(key)
    der = key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert key_description(load_private_key(der)) == key_description(key)


def test_private_key_refusals() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

    nf = serialization.NoEncryption()
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(PkiError, match="RSA key of 1024 bits"):
        load_private_key(small.private_bytes(PEM, serialization.PrivateFormat.PKCS8, nf))
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(PkiError, match="curve secp256k1 is not usable"):
        load_private_key(k1.private_bytes(PEM, serialization.PrivateFormat.PKCS8, nf))
    xk = x25519.X25519PrivateKey.generate()
    with pytest.raises(PkiError, match="X25519 keys are not supported"):
        load_private_key(xk.private_bytes(PEM, serialization.PrivateFormat.PKCS8, nf))
    with pytest.raises(PkiError, match="not a readable private key"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    enc = generate_key("ed25519").private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(PkiError, match="encrypted"):
        load_private_key(enc, "gw.key")
    assert key_description(load_private_key(enc, "gw.key", b"pw")) == "Ed25519"
