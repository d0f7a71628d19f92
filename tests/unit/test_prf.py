"""prf / prf+ (RFC 7296 §2.13) and the IKEv2 KDF against NIST CAVP vectors (SP 800-135)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ipsecd.crypto.prf import Prf, PrfPlusTooLong
from ipsecd.crypto.registry import PRF, PrfAlgorithm, PrfId
from ipsecd.ike import keys

# PRF_HMAC_SHA1 (id 2) exists only for the CAVP vectors below.
PRF_SHA1 = PrfAlgorithm("prfsha1", PrfId(5), "SHA1", 20, 20)


def reference_prf_plus(digest: str, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ written straight from RFC 7296 §2.13, independent of ipsecd."""
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = hmac.new(key, t + seed + bytes([n]), getattr(hashlib, digest)).digest()
        out += t
        n += 1
    return out[:length]


@pytest.mark.parametrize("name", sorted(PRF))
@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 64, 100, 200, 1000])
def test_prf_plus_matches_rfc_definition(name: str, length: int) -> None:
    alg = PRF[name]
    key, seed = b"k" * 17, bytes(range(77))
    assert Prf(alg).prf_plus(key, seed, length) == reference_prf_plus(
        alg.hash_name.lower(), key, seed, length
    )


@pytest.mark.parametrize("name", sorted(PRF))
def test_prf_is_full_hmac(name: str) -> None:
    alg = PRF[name]
    digest = getattr(hashlib, alg.hash_name.lower())
    for key in (b"", b"short", b"x" * 200):  # any key length (HMAC pads / hashes it)
        assert Prf(alg).prf(key, b"data") == hmac.new(key, b"data", digest).digest()
        assert len(Prf(alg)(key, b"data")) == alg.output_len


def test_prf_plus_limit_is_255_blocks() -> None:
    prf = Prf(PRF["prfsha256"])
    assert len(prf.prf_plus(b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(PrfPlusTooLong):
        prf.prf_plus(b"k", b"s", 255 * 32 + 1)


def test_prf_plus_known_answer_sha256() -> None:
    # T1 = HMAC-SHA256(key, seed | 0x01): computed once, pinned so refactors cannot drift.
    key, seed = bytes(32), b"seed"
    t1 = hmac.new(key, seed + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(key, t1 + seed + b"\x02", hashlib.sha256).digest()
    assert Prf(PRF["prfsha256"]).prf_plus(key, seed, 48) == (t1 + t2)[:48]


# NIST CAVP "IKEv2 KDF" (SP 800-135 §4.1.2) vector, HMAC-SHA1, as used by
# libreswan's and OpenSSL-FIPS' self tests.
CAVP = {
    "ni": "32b50d5f4a3763f3",
    "nr": "9206a04b26564cb1",
    "gir": "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    "gir_new": "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    "spii": "34c9e7c188868785",
    "spir": "3ff77d760d2b2199",
    "skeyseed": "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    "skeyseed_rekey": "63e81194946ebd05df7df5ebf5d8750056bf1f1d",
    "dkm": "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002"
    "a2a63080e514a062768b76606f9fa5e992204fc5a670bde3f10d6b027113936a"
    "5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119"
    "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435"
    "a7a56cc4",
    "dkm_child": "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c581"
    "1a8e7b5d1cdabd9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee7181"
    "4ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf"
    "285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e66499"
    "4d234cb4",
    "dkm_child_dh": "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d373016"
    "28190e38c66232eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c04000"
    "52f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a"
    "05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054"
    "d56fd74c",
}


def _v(name: str) -> bytes:
    return bytes.fromhex(CAVP[name])


def test_cavp_skeyseed() -> None:
    assert keys.skeyseed(PRF_SHA1, _v("ni"), _v("nr"), _v("gir")) == _v("skeyseed")


def test_cavp_dkm_is_prf_plus_over_nonces_and_spis() -> None:
    seed = _v("ni") + _v("nr") + _v("spii") + _v("spir")
    assert Prf(PRF_SHA1).prf_plus(_v("skeyseed"), seed, 132) == _v("dkm")


def test_cavp_child_sa_dkm_with_and_without_pfs() -> None:
    sk_d = _v("dkm")[:20]
    prf = Prf(PRF_SHA1)
    assert prf.prf_plus(sk_d, _v("ni") + _v("nr"), 132) == _v("dkm_child")
    assert prf.prf_plus(sk_d, _v("gir_new") + _v("ni") + _v("nr"), 132) == _v("dkm_child_dh")


def test_cavp_rekey_skeyseed() -> None:
    sk_d = _v("dkm")[:20]
    got = keys.rekey_skeyseed(PRF_SHA1, sk_d, _v("gir_new"), _v("ni"), _v("nr"))
    assert got == _v("skeyseed_rekey")


def test_cavp_through_key_derivation_api() -> None:
    """derive_from_skeyseed's SK_d and child_keymat reproduce the CAVP DKM values."""
    from ipsecd.crypto.registry import ENCRYPTION

    derived = keys.derive_from_skeyseed(
        PRF_SHA1,
        ENCRYPTION["aes128gcm16"],
        None,
        _v("skeyseed"),
        _v("ni"),
        _v("nr"),
        _v("spii"),
        _v("spir"),
    )
    # AEAD: no SK_a, so the DKM splits into SK_d(20) SK_ei(20) SK_er(20) SK_pi(20) SK_pr(20).
    dkm = _v("dkm")
    assert derived.sk_d == dkm[:20]
    assert derived.sk_ei == dkm[20:40] and derived.sk_er == dkm[40:60]
    assert derived.sk_pi == dkm[60:80] and derived.sk_pr == dkm[80:100]
    assert keys.child_keymat(derived, None, _v("ni"), _v("nr"), 132) == _v("dkm_child")
    assert keys.child_keymat(derived, _v("gir_new"), _v("ni"), _v("nr"), 132) == _v("dkm_child_dh")


def test_digests_known_answers():
    """FIPS 180-2 appendix examples ("abc") for the IKE message and NAT detection hashes."""
    from ipsecd.crypto.digests import sha1, sha256

    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert sha1(b"abc").hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert sha256(memoryview(b"")).hex().startswith("e3b0c442")
