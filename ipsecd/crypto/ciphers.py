"""Symmetric ciphers for ESP and the IKE SK payload, built on ``cryptography``.

Three small classes, each keyed once and reused for every packet of an SA:

* :class:`Aead` — AES-GCM with a 16-byte ICV (RFC 4106 for ESP, RFC 5282 for
  IKEv2) and ChaCha20-Poly1305 (RFC 7634).  The keying material is the cipher
  key followed by a 4-byte salt; the 12-byte nonce is ``salt || explicit IV(8)``
  (RFC 4106 §4, RFC 7634 §2).
* :class:`CbcCipher` — AES-CBC with an explicit 16-byte IV (RFC 3602).  No
  padding is done here: the caller pads (RFC 4303 §2.4 / RFC 7296 §3.14).
* :class:`Hmac` — HMAC-SHA2 truncated to the ICV length (RFC 4868 §2.1.1).
"""

from __future__ import annotations

import hmac as _stdlib_hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsecd.crypto.registry import EncrAlgorithm, EncrId, IntegAlgorithm

__all__ = ["Aead", "CbcCipher", "Hmac", "AEAD_TAG_LEN", "AEAD_IV_LEN", "AEAD_SALT_LEN", "Buffer"]

# What the ciphers read from: the data plane hands them slices of received
# datagrams as memoryviews instead of copying them into bytes.
Buffer = bytes | bytearray | memoryview

AEAD_TAG_LEN = 16  # RFC 4106 §6 (ICV 16 octets), RFC 7634 §2
AEAD_IV_LEN = 8  # explicit IV carried in each packet (RFC 4106 §3.1, RFC 7634 §2)
AEAD_SALT_LEN = 4  # implicit nonce part taken from the keying material (RFC 4106 §8.1)
CBC_BLOCK = 16

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}


class Aead:
    """AES-GCM-16 (RFC 4106 §4, RFC 5282 §4) or ChaCha20-Poly1305 (RFC 7634 §2).

    ``keymat`` is ``key || salt`` with a 4-byte salt (RFC 4106 §8.1, RFC 7634 §2).
    The caller supplies an 8-byte explicit IV that never repeats for this key;
    ESP uses the 64-bit sequence number (RFC 4106 §3.1).
    """

    __slots__ = ("alg", "_aead", "_salt")

    def __init__(self, alg: EncrAlgorithm, keymat: bytes) -> None:
        if not alg.aead:
            raise ValueError(f"{alg.name} is not an AEAD algorithm")
        if len(keymat) != alg.keymat_len:
            raise ValueError(
                f"{alg.name}: keying material is {len(keymat)} bytes, expected {alg.keymat_len}"
            )
        key = bytes(keymat[: alg.key_len])
        self.alg = alg
        self._salt = bytes(keymat[alg.key_len :])
        if alg.transform_id == EncrId.ENCR_CHACHA20_POLY1305:
            self._aead: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(key)
        elif alg.transform_id == EncrId.ENCR_AES_GCM_16:
            self._aead = AESGCM(key)
        else:
            raise ValueError(f"{alg.name}: unsupported AEAD transform {alg.transform_id!r}")

    def nonce(self, iv: bytes) -> bytes:
        """The 12-byte nonce ``salt || iv`` (RFC 4106 §4, RFC 7634 §2)."""
        if len(iv) != AEAD_IV_LEN:
            raise ValueError(f"AEAD explicit IV must be {AEAD_IV_LEN} bytes, got {len(iv)}")
        return self._salt + iv

    def seal(self, iv: bytes, plaintext: Buffer, aad: Buffer) -> bytes:
        """Encrypt and authenticate; returns ``ciphertext || 16-byte tag``."""
        return self._aead.encrypt(self.nonce(iv), plaintext, aad)

    def open(self, iv: bytes, data: Buffer, aad: Buffer) -> bytes:
        """Verify and decrypt ``ciphertext || tag``.

        Raises ``cryptography.exceptions.InvalidTag`` on a bad tag (also when
        ``data`` is shorter than the tag).
        """
        return self._aead.decrypt(self.nonce(iv), data, aad)


class CbcCipher:
    """AES-CBC with an explicit IV (RFC 3602 §2); the caller pads to 16 bytes."""

    __slots__ = ("alg", "_algorithm")

    def __init__(self, alg: EncrAlgorithm, key: bytes) -> None:
        if alg.aead or alg.transform_id != EncrId.ENCR_AES_CBC:
            raise ValueError(f"{alg.name} is not AES-CBC")
        if len(key) != alg.key_len:
            raise ValueError(f"{alg.name}: key is {len(key)} bytes, expected {alg.key_len}")
        self.alg = alg
        self._algorithm = algorithms.AES(bytes(key))

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` (a multiple of 16 bytes) under ``iv`` (16 bytes)."""
        if len(plaintext) % CBC_BLOCK:
            raise ValueError(f"AES-CBC plaintext length {len(plaintext)} is not a multiple of 16")
        enc = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        return enc.update(plaintext) + enc.finalize()

    def decrypt(self, iv: bytes, ciphertext: Buffer) -> bytes:
        """Decrypt ``ciphertext`` (a multiple of 16 bytes) under ``iv`` (16 bytes)."""
        if len(ciphertext) % CBC_BLOCK:
            raise ValueError(f"AES-CBC ciphertext length {len(ciphertext)} is not a multiple of 16")
        dec = Cipher(self._algorithm, modes.CBC(iv)).decryptor()
        return dec.update(ciphertext) + dec.finalize()


class Hmac:
    """HMAC-SHA-256-128 / SHA-384-192 / SHA-512-256 (RFC 4868 §2.1.1, §2.7).

    The keyed HMAC state is built once; each call copies it, so the key
    schedule (ipad/opad) is not redone per packet.
    """

    __slots__ = ("alg", "_base", "_icv_len")

    def __init__(self, alg: IntegAlgorithm, key: bytes) -> None:
        try:
            hash_cls = _HASHES[alg.hash_name]
        except KeyError:
            raise ValueError(f"{alg.name}: unsupported hash {alg.hash_name}") from None
        if len(key) != alg.key_len:
            raise ValueError(f"{alg.name}: key is {len(key)} bytes, expected {alg.key_len}")
        self.alg = alg
        self._icv_len = alg.icv_len
        self._base = _crypto_hmac.HMAC(bytes(key), hash_cls())

    def compute(self, *chunks: Buffer) -> bytes:
        """HMAC over the concatenation of ``chunks``, truncated to ``alg.icv_len`` bytes."""
        h = self._base.copy()
        for chunk in chunks:
            h.update(chunk)
        return h.finalize()[: self._icv_len]

    def verify(self, icv: Buffer, *chunks: Buffer) -> bool:
        """Constant-time check of a received truncated ICV (RFC 4868 §2.1.1)."""
        return _stdlib_hmac.compare_digest(self.compute(*chunks), icv)
