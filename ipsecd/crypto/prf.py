"""The IKEv2 pseudo-random function and prf+ (RFC 7296 §2.13, RFC 4868 §2.1.2).

``Prf(alg).prf(key, data)`` is HMAC with the full hash output (PRF_HMAC_SHA2_*
use any key length: HMAC hashes long keys and zero-pads short ones);
``prf_plus(key, seed, length)`` is the §2.13 expansion::

    prf+ (K,S) = T1 | T2 | T3 | ...
    T1 = prf (K, S | 0x01),  Tn = prf (K, Tn-1 | S | n)

limited to 255 blocks.

HMAC comes from cryptography, as for ESP (:class:`ipsecd.crypto.ciphers.Hmac`): prf+ keys
it once and copies it per block, twice as fast as the stdlib's ``hmac.digest``, and the
daemon then needs no ``_hashlib`` (the system's libcrypto: 3.6 MB resident,
``ipsecd.daemon.lazyimports``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from ipsecd.crypto.registry import PrfAlgorithm

__all__ = ["Prf", "PrfPlusTooLong"]

# SHA1 is not negotiable (not in the registry); it is here for the NIST CAVP IKEv2 KDF
# known-answer vectors, which use PRF_HMAC_SHA1.
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "SHA1": hashes.SHA1(),
    "SHA256": hashes.SHA256(),
    "SHA384": hashes.SHA384(),
    "SHA512": hashes.SHA512(),
}


class PrfPlusTooLong(ValueError):
    """More than 255 prf+ blocks requested (RFC 7296 §2.13)."""


class Prf:
    """A negotiated PRF transform (RFC 7296 §3.3.2 type 2)."""

    __slots__ = ("alg", "_hash")

    def __init__(self, alg: PrfAlgorithm) -> None:
        self.alg = alg
        self._hash = _HASHES[alg.hash_name]

    @property
    def output_len(self) -> int:
        return self.alg.output_len

    @property
    def key_len(self) -> int:
        """Preferred key length, used for SK_d/SK_pi/SK_pr (RFC 7296 §2.14)."""
        return self.alg.key_len

    def prf(self, key: bytes, data: bytes) -> bytes:
        """prf(key, data) = HMAC-SHA2(key, data), full output (RFC 4868 §2.1.2)."""
        mac = HMAC(key, self._hash)
        mac.update(data)
        return mac.finalize()

    __call__ = prf

    def prf_plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+(key, seed) truncated to ``length`` bytes (RFC 7296 §2.13)."""
        if length < 0:
            raise ValueError("negative prf+ length")
        blocks = -(-length // self.output_len)
        if blocks > 255:
            raise PrfPlusTooLong(
                f"prf+ of {length} bytes needs {blocks} blocks of {self.output_len}; max 255"
            )
        keyed = HMAC(key, self._hash)
        out = []
        t = b""
        for n in range(1, blocks + 1):
            mac = keyed.copy()
            mac.update(t + seed + bytes([n]))
            t = mac.finalize()
            out.append(t)
        return b"".join(out)[:length]
