"""Known-answer tests for ipsecd.crypto.ciphers (RFC 3602, RFC 4868, GCM spec, RFC 8439)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from ipsecd.crypto.ciphers import Aead, CbcCipher, Hmac
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY


def hx(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 3602 §4, cases #1-#4 (AES-128-CBC, no padding).
RFC3602_CASES = [
    (
        "06a9214036b8a15b512e03d534120006",
        "3dafba429d9eb430b422da802c9fac41",
        b"Single block msg",
        "e353779c1079aeb82708942dbe77181a",
    ),
    (
        "c286696d887c9aa0611bbb3e2025a45a",
        "562e17996d093d28ddb3ba695a2e6f58",
        bytes(range(32)),
        "d296cd94c2cccf8a3a863028b5e1dc0a 7586602d253cfff91b8266bea6d61ab1",
    ),
    (
        "6c3ea0477630ce21a2ce334aa746c2cd",
        "c782dc4c098c66cbd9cd27d825682c81",
        b"This is a 48-byte message (exactly 3 AES blocks)",
        "d0a02b3836451753d493665d33f0e886 2dea54cdb293abc7506939276772f8d5"
        "021c19216bad525c8579695d83ba2684",
    ),
    (
        "56e47a38c5598974bc46903dba290349",
        "8ce82eefbea0da3c44699ed7db51b7d9",
        bytes(range(0xA0, 0xE0)),
        "c30e32ffedc0774e6aff6af0869f71aa 0f3af07a9a31a9c684db207eb0ef8e4e"
        "35907aa632c3ffdf868bb7b29d3d46ad 83ce9f9a102ee99d49a53e87f4c3da55",
    ),
]


@pytest.mark.parametrize(("key", "iv", "plaintext", "ciphertext"), RFC3602_CASES)
def test_aes_cbc_rfc3602(key: str, iv: str, plaintext: bytes, ciphertext: str) -> None:
    cbc = CbcCipher(ENCRYPTION["aes128"], hx(key))
    assert cbc.encrypt(hx(iv), plaintext) == hx(ciphertext)
    assert cbc.decrypt(hx(iv), hx(ciphertext)) == plaintext


def test_aes_cbc_rejects_partial_block_and_bad_key() -> None:
    cbc = CbcCipher(ENCRYPTION["aes256"], bytes(32))
    with pytest.raises(ValueError):
        cbc.encrypt(bytes(16), b"x" * 15)
    with pytest.raises(ValueError):
        cbc.decrypt(bytes(16), b"x" * 17)
    with pytest.raises(ValueError):
        CbcCipher(ENCRYPTION["aes256"], bytes(16))
    with pytest.raises(ValueError):
        CbcCipher(ENCRYPTION["aes128gcm16"], bytes(16))


# RFC 4868 §2.7.2 AUTH256-1 / AUTH384-1 / AUTH512-1 (key = 0x0b * key_len, "Hi There"),
# and AUTH256-2 (key = "Jefe" * 8).
RFC4868_CASES = [
    (
        "sha256",
        b"\x0b" * 32,
        b"Hi There",
        "198a607eb44bfbc69903a0f1cf2bbdc5 ba0aa3f3d9ae3c1c7a3b1696a0b68cf7",
    ),
    (
        "sha256",
        b"Jefe" * 8,
        b"what do ya want for nothing?",
        "167f928588c5cc2eef8e3093caa0e87c 9ff566a14794aa61648d81621a2a40c6",
    ),
    (
        "sha384",
        b"\x0b" * 48,
        b"Hi There",
        "b6a8d5636f5c6a7224f9977dcf7ee6c7 fb6d0c48cbdee9737a959796489bddbc"
        "4c5df61d5b3297b4fb68dab9f1b582c2",
    ),
    (
        "sha512",
        b"\x0b" * 64,
        b"Hi There",
        "637edc6e01dce7e6742a99451aae82df 23da3e92439e590e43e761b33e910fb8"
        "ac2878ebd5803f6f0b61dbce5e251ff8 789a4722c1be65aea45fd464e89f8f5b",
    ),
]


@pytest.mark.parametrize(("name", "key", "data", "full_mac"), RFC4868_CASES)
def test_hmac_truncated_rfc4868(name: str, key: bytes, data: bytes, full_mac: str) -> None:
    alg = INTEGRITY[name]
    mac = Hmac(alg, key)
    expected = hx(full_mac)[: alg.icv_len]
    assert len(expected) == {"sha256": 16, "sha384": 24, "sha512": 32}[name]
    assert mac.compute(data) == expected
    # Chunks are concatenated.
    assert mac.compute(data[:3], data[3:]) == expected
    assert mac.verify(expected, data)
    assert not mac.verify(bytes(len(expected)), data)
    assert not mac.verify(expected[:-1], data)
    # The keyed state is reused, not consumed.
    assert mac.compute(data) == expected


def test_hmac_rejects_wrong_key_length() -> None:
    with pytest.raises(ValueError):
        Hmac(INTEGRITY["sha256"], bytes(31))


# GCM spec (McGrew & Viega) test case 4: AES-128, 96-bit IV cafebabe facedbaddecaf888,
# used here as RFC 4106 salt (cafebabe) || explicit IV (facedbaddecaf888).
GCM_TC4 = {
    "key": "feffe9928665731c6d6a8f9467308308",
    "salt": "cafebabe",
    "iv": "facedbaddecaf888",
    "aad": "feedfacedeadbeeffeedfacedeadbeefabaddad2",
    "pt": "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b39",
    "ct": "42831ec2217774244b7221b784d0d49c e3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa05 1ba30b396a0aac973d58e091",
    "tag": "5bc94fbc3221a5db94fae95ae7121a47",
}

# RFC 8439 §2.8.2 AEAD_CHACHA20_POLY1305; nonce 07000000 || 4041424344454647 maps to
# RFC 7634 salt || IV.
CHACHA_8439 = {
    "key": "808182838485868788898a8b8c8d8e8f 909192939495969798999a9b9c9d9e9f",
    "salt": "07000000",
    "iv": "4041424344454647",
    "aad": "50515253c0c1c2c3c4c5c6c7",
    "pt": b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it.".hex(),
    "ct": "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b 6116",
    "tag": "1ae10b594f09e26a7e902ecbd0600691",
}


@pytest.mark.parametrize(
    ("alg_name", "vec"), [("aes128gcm16", GCM_TC4), ("chacha20poly1305", CHACHA_8439)]
)
def test_aead_known_answer(alg_name: str, vec: dict[str, str]) -> None:
    aead = Aead(ENCRYPTION[alg_name], hx(vec["key"]) + hx(vec["salt"]))
    sealed = aead.seal(hx(vec["iv"]), hx(vec["pt"]), hx(vec["aad"]))
    assert sealed == hx(vec["ct"]) + hx(vec["tag"])
    assert aead.open(hx(vec["iv"]), sealed, hx(vec["aad"])) == hx(vec["pt"])
    tampered = bytearray(sealed)
    tampered[0] ^= 1
    with pytest.raises(InvalidTag):
        aead.open(hx(vec["iv"]), bytes(tampered), hx(vec["aad"]))
    with pytest.raises(InvalidTag):
        aead.open(hx(vec["iv"]), sealed, hx(vec["aad"]) + b"x")
    with pytest.raises(InvalidTag):
        aead.open(hx(vec["iv"]), sealed[:10], hx(vec["aad"]))


def test_aead_argument_checks() -> None:
    with pytest.raises(ValueError):
        Aead(ENCRYPTION["aes256gcm16"], bytes(32))  # salt missing
    with pytest.raises(ValueError):
        Aead(ENCRYPTION["aes128"], bytes(20))
    aead = Aead(ENCRYPTION["aes256gcm16"], bytes(36))
    with pytest.raises(ValueError):
        aead.seal(bytes(12), b"", b"")
