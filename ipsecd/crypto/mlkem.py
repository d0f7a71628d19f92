"""ML-KEM key exchange for IKEv2 (FIPS 203; draft-ietf-ipsecme-ikev2-mlkem; RFC 9370).

A KEM is not symmetric like Diffie-Hellman: the initiator generates a key pair
and sends the encapsulation key; the responder encapsulates to it and sends the
ciphertext; both end with the same 32-byte shared secret::

    i = MlKemInitiator(ML_KEM["mlkem768"])     # i.public_bytes: ek, 1184 bytes
    r = MlKemResponder(ML_KEM["mlkem768"], i.public_bytes)
                                                # r.public_bytes: ct, 1088 bytes
    i.compute(r.public_bytes) == r.shared_secret_bytes

Both objects have the attributes of :class:`ipsecd.crypto.keyexchange.KeyExchange`
(``alg``, ``group``, ``public_bytes``/``public``, ``compute(peer_data)``), so an
exchange can hold either; ``MlKemResponder.compute`` accepts only the
encapsulation key it was built from.

Lengths are checked exactly (ML-KEM-768: ek 1184, ct 1088; ML-KEM-1024: ek 1568,
ct 1568) and so is the encapsulation key's modulus check (FIPS 203 §7.2, done by
OpenSSL); a failure raises :class:`KeyExchangeError`, which the IKE layer maps to
INVALID_SYNTAX (draft-ietf-ipsecme-ikev2-mlkem §3: a malformed key exchange
payload).  ML-KEM-512 is not offered: the ``cryptography`` package has no
ML-KEM-512 (see ``registry.ML_KEM_UNAVAILABLE``).

``start(alg)`` / ``respond(alg, peer_data)`` give the same two roles for every
key exchange method, classic or KEM, for the RFC 9370 exchanges.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import cryptography

from ipsecd.crypto.keyexchange import KeyExchange, KeyExchangeError
from ipsecd.crypto.registry import KeAlgorithm, KeId

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import mlkem

    _PrivateKey = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey

__all__ = [
    "unavailable_reason",
    "MlKemSizes",
    "ML_KEM_SIZES",
    "MlKemInitiator",
    "MlKemResponder",
    "InitiatorKe",
    "start",
    "respond",
]


@dataclass(frozen=True)
class MlKemSizes:
    """FIPS 203 Table 3 sizes in bytes."""

    encapsulation_key: int
    ciphertext: int
    shared_secret: int = 32


ML_KEM_SIZES: dict[int, MlKemSizes] = {
    KeId.ML_KEM_768: MlKemSizes(1184, 1088),
    KeId.ML_KEM_1024: MlKemSizes(1568, 1568),
}

_MODULE = "cryptography.hazmat.primitives.asymmetric.mlkem"


@cache
def _backend() -> Any:
    """cryptography's ML-KEM module, imported when first needed: an older cryptography
    (the declared minimum has none) still runs every configuration without ML-KEM."""
    try:
        return importlib.import_module(_MODULE)
    except ImportError:
        return None


def unavailable_reason() -> str | None:
    """Why ML-KEM cannot be used with this installation, or None when it can."""
    if _backend() is not None:
        return None
    return (
        f"ML-KEM needs a cryptography package with ML-KEM support; the installed"
        f" cryptography {cryptography.__version__} has none (pip install -U cryptography)"
    )


def _classes(alg: KeAlgorithm) -> tuple[Any, Any]:
    """(private key class, public key class) of ``alg``."""
    backend = _backend()
    if backend is None:
        raise KeyExchangeError(f"{alg.name}: {unavailable_reason()}")
    if alg.transform_id == KeId.ML_KEM_768:
        return backend.MLKEM768PrivateKey, backend.MLKEM768PublicKey
    return backend.MLKEM1024PrivateKey, backend.MLKEM1024PublicKey


def _sizes(alg: KeAlgorithm) -> MlKemSizes:
    if alg.kind != "mlkem" or alg.transform_id not in ML_KEM_SIZES:
        raise ValueError(f"{alg.name} is not an ML-KEM method this build supports")
    return ML_KEM_SIZES[alg.transform_id]


def _check_len(alg: KeAlgorithm, data: bytes, expected: int, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise KeyExchangeError(f"{alg.name}: peer {what} is not bytes")
    data = bytes(data)
    if len(data) != expected:
        raise KeyExchangeError(f"{alg.name}: peer {what} is {len(data)} bytes, expected {expected}")
    return data


class MlKemInitiator:
    """The side that sends the encapsulation key and decapsulates (FIPS 203 ML-KEM.Decaps)."""

    __slots__ = ("alg", "_private", "public_bytes")

    def __init__(self, alg: KeAlgorithm, seed: bytes | None = None) -> None:
        """A fresh key pair; ``seed`` (64 bytes d|z, FIPS 203 §6.1) for known-answer tests."""
        _sizes(alg)
        cls, _ = _classes(alg)
        self.alg = alg
        self._private: _PrivateKey = cls.generate() if seed is None else cls.from_seed_bytes(seed)
        self.public_bytes: bytes = self._private.public_key().public_bytes_raw()

    @property
    def group(self) -> int:
        """The KE payload's Key Exchange Method number (IANA transform id)."""
        return int(self.alg.transform_id)

    @property
    def public(self) -> bytes:
        return self.public_bytes

    def compute(self, peer_ciphertext: bytes) -> bytes:
        """The shared secret from the responder's ciphertext; raises KeyExchangeError."""
        ct = _check_len(self.alg, peer_ciphertext, _sizes(self.alg).ciphertext, "ciphertext")
        try:
            return self._private.decapsulate(ct)
        except ValueError as exc:  # length is checked above; ML-KEM decaps itself never fails
            raise KeyExchangeError(f"{self.alg.name}: {exc}") from None

    shared_secret = compute

    def __repr__(self) -> str:
        return f"MlKemInitiator({self.alg.name}, ek={self.public_bytes[:8].hex()}...)"


class MlKemResponder:
    """The side that encapsulates to the initiator's key (FIPS 203 ML-KEM.Encaps)."""

    __slots__ = ("alg", "peer_public", "public_bytes", "_shared")

    def __init__(self, alg: KeAlgorithm, peer_encapsulation_key: bytes) -> None:
        sizes = _sizes(alg)
        ek = _check_len(alg, peer_encapsulation_key, sizes.encapsulation_key, "encapsulation key")
        try:
            public = _classes(alg)[1].from_public_bytes(ek)
            shared, ct = public.encapsulate()
        except ValueError:  # FIPS 203 §7.2 modulus check
            raise KeyExchangeError(
                f"{alg.name}: peer encapsulation key fails the FIPS 203 modulus check"
            ) from None
        self.alg = alg
        self.peer_public: bytes = ek
        self.public_bytes: bytes = ct
        self._shared: bytes = shared

    @property
    def group(self) -> int:
        return int(self.alg.transform_id)

    @property
    def public(self) -> bytes:
        return self.public_bytes

    @property
    def shared_secret_bytes(self) -> bytes:
        return self._shared

    def compute(self, peer_public: bytes) -> bytes:
        """The shared secret; ``peer_public`` must be the encapsulation key given at creation."""
        if bytes(peer_public) != self.peer_public:
            raise ValueError(f"{self.alg.name}: responder built for a different encapsulation key")
        return self._shared

    shared_secret = compute

    def __repr__(self) -> str:
        return f"MlKemResponder({self.alg.name}, ct={self.public_bytes[:8].hex()}...)"


class InitiatorKe(Protocol):
    """What the initiator of any key exchange holds between request and response."""

    @property
    def group(self) -> int: ...

    @property
    def public(self) -> bytes: ...

    def compute(self, peer_public: bytes) -> bytes: ...


def start(alg: KeAlgorithm) -> InitiatorKe:
    """Initiator: a fresh key pair whose ``public`` goes into the KE payload."""
    if alg.kind == "mlkem":
        return MlKemInitiator(alg)
    return KeyExchange(alg)


def respond(alg: KeAlgorithm, peer_data: bytes) -> tuple[bytes, bytes]:
    """Responder: (our KE payload data, shared secret) for the initiator's KE data.

    Raises :class:`KeyExchangeError` for malformed peer data.
    """
    if alg.kind == "mlkem":
        r = MlKemResponder(alg, peer_data)
        return r.public_bytes, r.shared_secret_bytes
    kex = KeyExchange(alg)
    return kex.public_bytes, kex.compute(peer_data)
