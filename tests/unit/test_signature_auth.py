"""Signature AUTH (RFC 7427 method 14, RFC 7296 method 1, RFC 4754 methods 9/10/11)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ipsecd.crypto.registry import ENCRYPTION, PRF
from ipsecd.ike import auth
from ipsecd.ike.constants import AuthMethod, IdType
from ipsecd.ike.keys import derive_from_skeyseed
from ipsecd.ike.signature_auth import (
    ALGORITHM_IDENTIFIERS,
    SUPPORTED_HASHES,
    HashAlgorithm,
    SignatureAuthError,
    decode_hash_algorithms,
    encode_hash_algorithms,
    sign,
    signed_octets,
    verify,
)
from ipsecd.pki.issue import generate_key
from tests.unit.pki_support import ca, gateway

OCTETS = b"RealMessage1 | NonceRData | MACedIDForI" * 3
ALL = tuple(SUPPORTED_HASHES)

# RFC 7427 Appendix A (and RFC 8420 §2 for Ed25519): the AlgorithmIdentifier DER.
RFC7427_IDENTIFIERS = {
    "sha1WithRSAEncryption": "300d06092a864886f70d0101050500",
    "sha256WithRSAEncryption": "300d06092a864886f70d01010b0500",
    "sha384WithRSAEncryption": "300d06092a864886f70d01010c0500",
    "sha512WithRSAEncryption": "300d06092a864886f70d01010d0500",
    "ecdsa-with-SHA256": "300a06082a8648ce3d040302",
    "ecdsa-with-SHA384": "300a06082a8648ce3d040303",
    "ecdsa-with-SHA512": "300a06082a8648ce3d040304",
    "Ed25519": "300506032b6570",
}


def test_algorithm_identifiers_are_rfc7427s() -> None:
    by_name = {a.name: der.hex() for der, a in ALGORITHM_IDENTIFIERS.items() if "PSS" not in a.name}
    assert by_name == RFC7427_IDENTIFIERS
    pss256 = [der for der, a in ALGORITHM_IDENTIFIERS.items() if a.name == "RSASSA-PSS SHA-256"]
    # With NULL hash parameters (what we send) and without (RFC 4055 §2.1: accept both).
    assert [d.hex() for d in pss256] == [
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f7"
        "0d010108300d06096086480165030402010500a203020120",
        "303d06092a864886f70d01010a3030a00d300b0609608648016503040201a11a301806092a864886f70d01"
        "0108300b0609608648016503040201a203020120",
    ]


def test_hash_algorithms_notify() -> None:
    assert encode_hash_algorithms() == bytes.fromhex("0002000300040005")
    assert decode_hash_algorithms(bytes.fromhex("000100020063")) == (
        HashAlgorithm.SHA1,
        HashAlgorithm.SHA2_256,
        99,
    )
    assert decode_hash_algorithms(b"") == ()
    with pytest.raises(ValueError, match="3 bytes is not a list of 2-byte ids"):
        decode_hash_algorithms(b"\x00\x02\x00")


def test_ed25519_known_answer_rfc8032() -> None:
    # RFC 8032 §7.1 TEST 1: empty message.
    key = ed25519.Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    out = sign(b"", key, [HashAlgorithm.IDENTITY])
    assert out.method == AuthMethod.DIGITAL_SIGNATURE == 14
    assert out.data[:8] == bytes.fromhex("07300506032b6570")
    assert out.data[8:] == bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert verify(b"", 14, out.data, key.public_key()).algorithm == "Ed25519"


@pytest.mark.parametrize(
    ("key_type", "peer", "rsa_pss", "algorithm"),
    [
        ("ed25519", ALL, False, "Ed25519"),
        ("ecdsa-p256", ALL, False, "ecdsa-with-SHA256"),
        ("ecdsa-p384", ALL, False, "ecdsa-with-SHA384"),
        ("ecdsa-p384", (HashAlgorithm.SHA2_512,), False, "ecdsa-with-SHA512"),
        ("rsa-3072", ALL, False, "sha256WithRSAEncryption"),
        ("rsa-3072", (HashAlgorithm.SHA2_384,), False, "sha384WithRSAEncryption"),
        ("rsa-3072", ALL, True, "RSASSA-PSS SHA-256"),
        ("rsa-3072", (HashAlgorithm.SHA2_512, 99), True, "RSASSA-PSS SHA-512"),
    ],
)
def test_method14_round_trip(
    key_type: str, peer: tuple[int, ...], rsa_pss: bool, algorithm: str
) -> None:
    root = ca()
    gw = gateway(root, key_type=key_type)
    out = sign(OCTETS, gw.key, peer, rsa_pss=rsa_pss)
    assert out.method == 14 and out.algorithm == algorithm
    got = verify(OCTETS, out.method, out.data, gw.cert)
    assert got.algorithm == algorithm and not got.weak
    with pytest.raises(SignatureAuthError, match="does not verify with the key of its certificate"):
        verify(OCTETS + b"x", out.method, out.data, gw.cert)
    other = gateway(root, key_type=key_type)
    with pytest.raises(SignatureAuthError, match="does not verify"):
        verify(OCTETS, out.method, out.data, other.cert)


def test_method14_rsa_pkcs1_is_the_plain_signature() -> None:
    key = generate_key("rsa-3072")
    assert isinstance(key, rsa.RSAPrivateKey)
    out = sign(OCTETS, key, [HashAlgorithm.SHA2_256])
    ident = bytes.fromhex(RFC7427_IDENTIFIERS["sha256WithRSAEncryption"])
    expected = key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA256())  # deterministic
    assert out.data == bytes([len(ident)]) + ident + expected


def test_method14_ecdsa_is_der() -> None:
    key = generate_key("ecdsa-p256")
    out = sign(OCTETS, key, ALL)
    r, s = decode_dss_signature(out.data[13:])
    assert r > 0 and s > 0


def test_peer_hash_list_refusals() -> None:
    with pytest.raises(SignatureAuthError, match="Ed25519, which needs the 'Identity' hash"):
        sign(OCTETS, generate_key("ed25519"), [HashAlgorithm.SHA2_256])
    with pytest.raises(SignatureAuthError, match=r"\(SHA1\) has none of the hashes we sign with"):
        sign(OCTETS, generate_key("ecdsa-p256"), [HashAlgorithm.SHA1])


@pytest.mark.parametrize(
    ("key_type", "method", "length"),
    [("ecdsa-p256", 9, 64), ("ecdsa-p384", 10, 96)],
)
def test_classic_ecdsa_methods(key_type: str, method: int, length: int) -> None:
    gw = gateway(ca(), key_type=key_type)
    out = sign(OCTETS, gw.key, None)  # no SIGNATURE_HASH_ALGORITHMS from the peer
    assert out.method == method and len(out.data) == length
    assert verify(OCTETS, method, out.data, gw.cert).method == method
    with pytest.raises(SignatureAuthError, match=f"is {length - 1} bytes, expected {length}"):
        verify(OCTETS, method, out.data[:-1], gw.cert)
    wrong = 10 if method == 9 else 9
    with pytest.raises(SignatureAuthError, match=f"method {wrong} .* certificate key is ECDSA"):
        verify(OCTETS, wrong, out.data, gw.cert)


def test_classic_p521() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    out = sign(OCTETS, key, None)
    assert out.method == AuthMethod.ECDSA_SHA512_P521 and len(out.data) == 132
    verify(OCTETS, out.method, out.data, key.public_key())


def test_rsa_sha1_method1() -> None:
    gw = gateway(ca("rsa-3072"), key_type="rsa-3072")
    with pytest.raises(SignatureAuthError, match="method 1, RSA with SHA-1, which is refused"):
        sign(OCTETS, gw.key, None)
    out = sign(OCTETS, gw.key, None, allow_sha1=True)
    assert out.method == 1
    got = verify(OCTETS, 1, out.data, gw.cert)
    assert got.weak and got.algorithm == "RSA PKCS#1 v1.5 SHA-1"
    with pytest.raises(SignatureAuthError, match="configuration refuses"):
        verify(OCTETS, 1, out.data, gw.cert, accept_sha1=False)
    # Method 14 with sha1WithRSAEncryption: verified (weak) unless refused.
    assert isinstance(gw.key, rsa.RSAPrivateKey)
    ident = bytes.fromhex(RFC7427_IDENTIFIERS["sha1WithRSAEncryption"])
    data = bytes([len(ident)]) + ident + gw.key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    assert verify(OCTETS, 14, data, gw.cert).weak
    with pytest.raises(SignatureAuthError, match="SHA-1 is refused"):
        verify(OCTETS, 14, data, gw.cert, accept_sha1=False)


def test_no_classic_method_for_ed25519() -> None:
    with pytest.raises(SignatureAuthError, match="ed25519 key has no classic"):
        sign(OCTETS, generate_key("ed25519"), None)


def test_verify_refusals_in_plain_words() -> None:
    ecdsa_gw = gateway(ca(), key_type="ecdsa-p256")
    rsa_gw = gateway(ca(), key_type="rsa-3072")
    out = sign(OCTETS, ecdsa_gw.key, ALL)
    with pytest.raises(
        SignatureAuthError, match="signed with ecdsa-with-SHA256 but its certificate"
    ):
        verify(OCTETS, 14, out.data, rsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="method 1 .* certificate key is ECDSA"):
        verify(OCTETS, 1, b"x" * 64, ecdsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="truncated"):
        verify(OCTETS, 14, b"\x20abc", ecdsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="truncated"):
        verify(OCTETS, 14, b"", ecdsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="AlgorithmIdentifier ipsecd does not support"):
        verify(OCTETS, 14, b"\x03\x30\x01\x00sig", ecdsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="not a DER ECDSA-Sig-Value"):
        verify(OCTETS, 14, out.data[:13] + b"\x00" * 64, ecdsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="method 2 \\(SHARED_KEY_MIC\\)"):
        verify(OCTETS, 2, b"mac", ecdsa_gw.cert)
    with pytest.raises(SignatureAuthError, match="method 200, which is not"):
        verify(OCTETS, 200, b"", ecdsa_gw.cert)


def test_signed_octets_reuses_rfc7296_octets() -> None:
    keys = derive_from_skeyseed(
        PRF["prfsha256"], ENCRYPTION["aes256gcm16"], None, b"s" * 32, b"n" * 32, b"m" * 32, 1, 2
    )
    msg, nonce, idd = b"IKE_SA_INIT request", b"Nr" * 16, bytes([10, 0, 0, 1])
    base = auth.signed_octets(keys, True, msg, nonce, IdType.ID_IPV4_ADDR, idd)
    assert signed_octets(keys, True, msg, nonce, IdType.ID_IPV4_ADDR, idd) == base
    int_auth = b"I" * 32 + b"R" * 32 + b"\x00\x00\x00\x02"
    got = signed_octets(keys, True, msg, nonce, IdType.ID_IPV4_ADDR, idd, int_auth)
    assert got == base + int_auth
    # Written out (RFC 7296 §2.15): message | peer nonce | prf(SK_pi, IDi').
    import hmac

    maced = hmac.new(keys.sk_pi, bytes([1, 0, 0, 0]) + idd, hashlib.sha256).digest()
    assert base == msg + nonce + maced


def test_strongswan61_certificate_auth_known_answers() -> None:
    """AUTH payloads of two strongSwan 6.1.0 charons using certificates made by ``ipsecd pki``.

    strongSwan accepted our certificates (Ed25519 and ECDSA P-256 under an ECDSA P-384 CA,
    FQDN and DN identities) with x25519 + ML-KEM-768; we reproduce its Ed25519 AUTH payload
    byte for byte (Ed25519 is deterministic) and verify its ECDSA one.
    """
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    from ipsecd.pki import TrustStore, validate_chain
    from ipsecd.pki.certs import load_certificates, load_private_key
    from ipsecd.pki.identity import IkeIdentity, match_identity

    data = json.loads((Path(__file__).parent / "data" / "strongswan61_cert_auth.json").read_text())
    ca, a, b = (load_certificates(data[k].encode())[0] for k in ("ca_crt", "a_crt", "b_crt"))
    when = datetime(2026, 12, 2, tzinfo=UTC)
    for cert in (a, b):
        validate_chain(cert, [], TrustStore([ca]), when)
    assert match_identity(a, IkeIdentity.from_text("gw-a.example"))
    assert match_identity(b, IkeIdentity.from_text("C=CH, O=ipsecd interop, CN=gw-b"))
    a_octets, b_octets = bytes.fromhex(data["a_octets"]), bytes.fromhex(data["b_octets"])
    a_auth, b_auth = bytes.fromhex(data["a_auth_data"]), bytes.fromhex(data["b_auth_data"])
    key = load_private_key(data["a_key"].encode())
    ours = sign(a_octets, key, ALL)  # strongSwan announced sha256 sha384 sha512 identity
    assert (ours.method, ours.data) == (data["a_auth_method"], a_auth)
    assert verify(a_octets, 14, a_auth, a).algorithm == "Ed25519"
    assert verify(b_octets, data["b_auth_method"], b_auth, b).algorithm == "ecdsa-with-SHA256"
    with pytest.raises(SignatureAuthError):
        verify(a_octets, 14, b_auth, b)


def test_strongswan61_rsa_pss_auth() -> None:
    """strongSwan 6.1.0 with ``rsa_pss = yes`` and an RSA-3072 certificate from ``ipsecd pki``:
    its AUTH carries exactly the RSASSA-PSS AlgorithmIdentifier we send, and verifies."""
    import json
    from pathlib import Path

    from ipsecd.pki.certs import load_certificates

    data = json.loads((Path(__file__).parent / "data" / "strongswan61_cert_auth.json").read_text())
    cert = load_certificates(data["b_rsa_crt"].encode())[0]
    octets, auth_data = bytes.fromhex(data["b_rsa_octets"]), bytes.fromhex(data["b_rsa_auth_data"])
    got = verify(octets, data["b_rsa_auth_method"], auth_data, cert)
    assert got.algorithm == "RSASSA-PSS SHA-256"
    ours = sign(octets, generate_key("rsa-3072"), ALL, rsa_pss=True)
    assert ours.data[: 1 + ours.data[0]] == auth_data[: 1 + auth_data[0]]
