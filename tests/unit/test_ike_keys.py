"""IKE SA / CHILD SA key derivation (RFC 7296 §2.14, §2.17, §2.18), checked independently."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY, PRF
from ipsecd.ike import keys
from ipsecd.ike.proposal_codec import ChosenProposal

NI = bytes(range(32))
NR = bytes(range(100, 132))
SHARED = bytes.fromhex("aa" * 32)
SPI_I, SPI_R = 0x0102030405060708, 0x1112131415161718


def _prf(digest: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, getattr(hashlib, digest)).digest()


def _prf_plus(digest: str, key: bytes, seed: bytes, n: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = _prf(digest, key, t + seed + bytes([i]))
        out += t
        i += 1
    return out[:n]


def chosen(encr: str, integ: str | None, prf: str) -> ChosenProposal:
    return ChosenProposal(
        "ike",
        1,
        b"",
        ENCRYPTION[encr],
        INTEGRITY[integ] if integ else None,
        PRF[prf],
        None,
    )


COMBOS = [
    ("aes128", "sha256", "prfsha256"),
    ("aes256", "sha512", "prfsha384"),
    ("aes256", "sha384", "prfsha512"),
    ("aes128gcm16", None, "prfsha256"),
    ("aes256gcm16", None, "prfsha384"),
    ("chacha20poly1305", None, "prfsha512"),
]


@pytest.mark.parametrize(("encr", "integ", "prf"), COMBOS)
def test_ike_keys_match_rfc_7296_2_14(encr: str, integ: str | None, prf: str) -> None:
    digest = PRF[prf].hash_name.lower()
    d_len = PRF[prf].key_len
    a_len = INTEGRITY[integ].key_len if integ else 0
    e_len = ENCRYPTION[encr].keymat_len
    seed = _prf(digest, NI + NR, SHARED)
    stream = _prf_plus(
        digest,
        seed,
        NI + NR + SPI_I.to_bytes(8, "big") + SPI_R.to_bytes(8, "big"),
        3 * d_len + 2 * a_len + 2 * e_len,
    )
    k = keys.derive_ike_keys(chosen(encr, integ, prf), SHARED, NI, NR, SPI_I, SPI_R)
    assert k.sk_d + k.sk_ai + k.sk_ar + k.sk_ei + k.sk_er + k.sk_pi + k.sk_pr == stream
    assert [len(x) for x in (k.sk_d, k.sk_ai, k.sk_ar, k.sk_ei, k.sk_er, k.sk_pi, k.sk_pr)] == [
        d_len,
        a_len,
        a_len,
        e_len,
        e_len,
        d_len,
        d_len,
    ]
    assert keys.skeyseed(PRF[prf], NI, NR, SHARED) == seed
    # Byte-string SPIs give the same result.
    k2 = keys.derive_ike_keys(
        chosen(encr, integ, prf), SHARED, NI, NR, SPI_I.to_bytes(8, "big"), SPI_R.to_bytes(8, "big")
    )
    assert k2 == k


def test_pinned_known_answer_sha256() -> None:
    """A fixed vector (aes128-sha256-prfsha256) so later refactors cannot drift silently."""
    k = keys.derive_ike_keys(chosen("aes128", "sha256", "prfsha256"), SHARED, NI, NR, SPI_I, SPI_R)
    seed = hmac.new(NI + NR, SHARED, hashlib.sha256).digest()
    t1 = hmac.new(
        seed, NI + NR + bytes.fromhex("01020304050607081112131415161718") + b"\1", hashlib.sha256
    ).digest()
    assert k.sk_d == t1


def test_keys_never_in_repr() -> None:
    k = keys.derive_ike_keys(chosen("aes128", "sha256", "prfsha256"), SHARED, NI, NR, SPI_I, SPI_R)
    text = repr(k)
    for secret in (k.sk_d, k.sk_ei, k.sk_ai, k.sk_pi):
        assert secret.hex() not in text and repr(secret) not in text


def test_sk_keys_per_direction() -> None:
    k = keys.derive_ike_keys(chosen("aes128", "sha256", "prfsha256"), SHARED, NI, NR, SPI_I, SPI_R)
    i, r = k.sk_keys(True), k.sk_keys(False)
    assert (i.encr_key, i.integ_key) == (k.sk_ei, k.sk_ai)
    assert (r.encr_key, r.integ_key) == (k.sk_er, k.sk_ar)
    g = keys.derive_ike_keys(chosen("aes256gcm16", None, "prfsha256"), SHARED, NI, NR, 1, 2)
    assert g.sk_keys(True).integ is None and g.sk_ai == b""


def test_rekey_uses_old_prf_and_new_spis() -> None:
    old = keys.derive_ike_keys(chosen("aes128", "sha256", "prfsha512"), SHARED, NI, NR, 1, 2)
    new_shared, ni2, nr2 = b"\x55" * 48, b"\x01" * 16, b"\x02" * 16
    new = keys.derive_rekeyed_ike_keys(
        old, chosen("aes256gcm16", None, "prfsha256"), new_shared, ni2, nr2, 3, 4
    )
    seed = hmac.new(old.sk_d, new_shared + ni2 + nr2, hashlib.sha512).digest()  # old PRF
    expected = keys.derive_from_skeyseed(
        PRF["prfsha256"], ENCRYPTION["aes256gcm16"], None, seed, ni2, nr2, 3, 4
    )
    assert new == expected
    assert new.prf == PRF["prfsha256"] and len(new.sk_d) == 32


def test_child_keymat_with_and_without_pfs() -> None:
    k = keys.derive_ike_keys(chosen("aes128", "sha256", "prfsha384"), SHARED, NI, NR, 1, 2)
    plain = keys.child_keymat(k, None, NI, NR, 96)
    assert plain == _prf_plus("sha384", k.sk_d, NI + NR, 96)
    assert keys.child_keymat(k, b"", NI, NR, 96) == plain
    pfs = keys.child_keymat(k, b"\x77" * 32, NI, NR, 96)
    assert pfs == _prf_plus("sha384", k.sk_d, b"\x77" * 32 + NI + NR, 96)
    assert pfs != plain


def test_bad_spi_length_rejected() -> None:
    with pytest.raises(ValueError):
        keys.derive_ike_keys(chosen("aes128", "sha256", "prfsha256"), SHARED, NI, NR, b"123", 2)
