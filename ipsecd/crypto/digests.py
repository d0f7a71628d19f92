"""SHA-256 and SHA-1 of a few bytes, through cryptography's OpenSSL.

The daemon hashes every IKE request it answers (retransmission and replay checks, RFC
7296 §2.1) and the NAT detection data of each IKE_SA_INIT (§2.23).  It runs without the
stdlib's ``_hashlib`` (``ipsecd.daemon.lazyimports``: 3.5 MB of a second libcrypto), where
``hashlib``'s built-in SHA-256 takes 4.7 µs for a 1200-byte message against 1.4 µs here,
on a path an IKE flood exercises.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

_SHA256 = hashes.SHA256()
_SHA1 = hashes.SHA1()


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of ``data`` (32 bytes)."""
    digest = hashes.Hash(_SHA256)
    digest.update(data)
    return digest.finalize()


def sha1(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-1 of ``data`` (20 bytes): protocol fields that RFC 7296 defines with it."""
    digest = hashes.Hash(_SHA1)
    digest.update(data)
    return digest.finalize()
