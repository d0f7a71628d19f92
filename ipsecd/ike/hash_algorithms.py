"""SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4, notify 16431): the hashes a side accepts.

Every IKE_SA_INIT carries it, whatever the peer authenticates with; the signatures
themselves (:mod:`ipsecd.ike.signature_auth`, with cryptography's RSA, ECDSA and Ed25519)
are needed only with certificates, and load with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class HashAlgorithm(IntEnum):
    """IANA "IKEv2 Hash Algorithms" (RFC 7427 §4, RFC 8420)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


# What we announce in SIGNATURE_HASH_ALGORITHMS.
SUPPORTED_HASHES: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)


def encode_hash_algorithms(algs: Iterable[int] = SUPPORTED_HASHES) -> bytes:
    """Notification data: 2 octets per hash algorithm."""
    return b"".join(int(a).to_bytes(2, "big") for a in algs)


def decode_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """The peer's list (unknown ids kept as ints); ValueError if the length is odd."""
    data = bytes(data)
    if len(data) % 2:
        raise ValueError(
            f"SIGNATURE_HASH_ALGORITHMS data of {len(data)} bytes is not a list of 2-byte ids"
        )
    out: list[int] = []
    for i in range(0, len(data), 2):
        value = int.from_bytes(data[i : i + 2], "big")
        try:
            out.append(HashAlgorithm(value))
        except ValueError:
            out.append(value)
    return tuple(out)
