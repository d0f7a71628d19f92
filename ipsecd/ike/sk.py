"""The Encrypted (SK) payload: padding, encryption and the ICV (RFC 7296 §3.14, RFC 5282).

One direction of protection is an :class:`SkKeys` (cipher + integrity algorithm and
their keys: SK_ei/SK_ai for what the original initiator sends, SK_er/SK_ar for
the responder, §2.14).  :mod:`ipsecd.ike.message` calls :func:`seal` and
:func:`open_sk` with the message bytes around the SK payload:

* CBC + HMAC (§3.14): ``IV(16) | AES-CBC(payloads | padding | pad length) | ICV``,
  the ICV being the truncated HMAC over the whole message from the IKE header
  to the end of the ciphertext.
* AEAD (RFC 5282 §3, §5.1): ``IV(8) | ciphertext | tag(16)``; the AAD is the IKE
  header, any payloads before SK, and the SK generic payload header — i.e. the
  same ``prefix`` bytes.

The receiver verifies the ICV (constant time) before decrypting anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from ipsecd.crypto.ciphers import Aead, CbcCipher, Hmac
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.ike.errors import MalformedMessage

__all__ = ["SkKeys", "IntegrityCheckFailed", "seal", "open_sk", "body_length", "pad"]


class IntegrityCheckFailed(MalformedMessage):
    """The SK payload's ICV or AEAD tag does not verify (§2.21.1: drop, do not answer)."""


@dataclass(frozen=True)
class SkKeys:
    """Keys for one direction of SK payloads (RFC 7296 §2.14).

    ``encr_key`` is SK_e (for an AEAD: key || 4-byte salt, RFC 5282 §7);
    ``integ`` and ``integ_key`` (SK_a) are None/empty for an AEAD.
    """

    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    encr_key: bytes = field(repr=False)
    integ_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if len(self.encr_key) != self.encr.keymat_len:
            raise ValueError(f"{self.encr.name}: SK_e must be {self.encr.keymat_len} bytes")
        if self.encr.aead:
            if self.integ is not None:
                raise ValueError(f"{self.encr.name} is an AEAD; no integrity algorithm")
        elif self.integ is None or len(self.integ_key) != self.integ.key_len:
            raise ValueError(f"{self.encr.name} needs an integrity algorithm and its SK_a")

    @property
    def iv_len(self) -> int:
        return self.encr.iv_size

    @property
    def icv_len(self) -> int:
        if self.encr.aead or self.integ is None:  # __post_init__: integ is set iff not AEAD
            return self.encr.icv_size
        return self.integ.icv_len

    @property
    def block_size(self) -> int:
        """Padding unit: the cipher block for CBC; 1 for AEADs (RFC 5282 §3: no alignment)."""
        return 1 if self.encr.aead else self.encr.block_size


def pad(keys: SkKeys, inner: bytes) -> bytes:
    """``inner | padding | pad length`` with the minimum padding (RFC 7296 §3.14)."""
    pad_len = (-(len(inner) + 1)) % keys.block_size
    return inner + bytes(pad_len) + bytes([pad_len])


def body_length(keys: SkKeys, plaintext_len: int) -> int:
    """Bytes after the SK generic header for a padded plaintext of this length."""
    return keys.iv_len + plaintext_len + keys.icv_len


def seal(keys: SkKeys, prefix: bytes, plaintext: bytes) -> bytes:
    """Encrypt a padded plaintext; returns the SK body ``IV | ciphertext | ICV``.

    ``prefix`` is the message from the IKE header up to and including the SK
    generic payload header, with the final lengths already filled in.
    """
    iv = os.urandom(keys.iv_len)
    if keys.encr.aead:
        return iv + Aead(keys.encr, keys.encr_key).seal(iv, plaintext, prefix)
    ciphertext = CbcCipher(keys.encr, keys.encr_key).encrypt(iv, plaintext)
    assert keys.integ is not None
    icv = Hmac(keys.integ, keys.integ_key).compute(prefix, iv, ciphertext)
    return iv + ciphertext + icv


def open_sk(keys: SkKeys, prefix: bytes, body: bytes) -> bytes:
    """Verify and decrypt an SK body; returns the inner payload chain (padding removed).

    Raises :class:`IntegrityCheckFailed` when the ICV/tag is wrong and
    :class:`MalformedMessage` when lengths or padding do not fit.
    """
    iv_len, icv_len = keys.iv_len, keys.icv_len
    ct_len = len(body) - iv_len - icv_len
    if ct_len < 1 or ct_len % keys.block_size:
        raise MalformedMessage(
            f"SK payload of {len(body)} bytes does not fit {keys.encr.name}"
            f" (IV {iv_len}, ICV {icv_len}, block {keys.block_size})"
        )
    iv = body[:iv_len]
    if keys.encr.aead:
        try:
            plaintext = Aead(keys.encr, keys.encr_key).open(iv, body[iv_len:], prefix)
        except InvalidTag:
            raise IntegrityCheckFailed("SK payload: AEAD tag does not verify") from None
    else:
        assert keys.integ is not None
        ciphertext = body[iv_len : iv_len + ct_len]
        icv = body[iv_len + ct_len :]
        if not Hmac(keys.integ, keys.integ_key).verify(icv, prefix, iv, ciphertext):
            raise IntegrityCheckFailed("SK payload: ICV does not verify")
        plaintext = CbcCipher(keys.encr, keys.encr_key).decrypt(iv, ciphertext)
    pad_len = plaintext[-1]
    if pad_len + 1 > len(plaintext):
        raise MalformedMessage(f"SK payload: pad length {pad_len} exceeds the plaintext")
    return plaintext[: len(plaintext) - pad_len - 1]
