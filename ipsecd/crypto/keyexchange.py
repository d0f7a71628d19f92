"""Key exchange methods for IKEv2 (RFC 7296 §1.2/§3.4, RFC 3526, RFC 5903, RFC 8031).

``new(alg)`` makes a fresh ephemeral key pair for a :class:`KeAlgorithm`::

    kex = new(KEY_EXCHANGE["x25519"])
    kex.public_bytes        # the KE payload data (also ``kex.public``)
    kex.compute(peer_data)  # the shared secret g^ir (also ``kex.shared_secret``)

Wire formats and shared secrets:

* MODP 2048/3072/4096 (RFC 3526 groups 14/15/16, generator 2): public value
  and g^ir are big-endian, zero-padded to the length of the prime
  (RFC 7296 §3.4, §2.14).  Peer values must satisfy 1 < y < p-1.
* ECP 256/384 (RFC 5903 §7): public value is x | y (no 0x04 prefix), each
  padded to the field size; the point must be on the curve.  The shared secret
  is the x coordinate only (RFC 5903 §9, as updated by errata 9).
* Curve25519 (RFC 8031 §2): 32-byte u-coordinate; an all-zero shared secret
  (a low-order peer point) is rejected (RFC 8031 §2.3).

**Key pairs made ahead.**  Making a key pair is a tenth of a handshake's CPU time on a
daemon woken from idle (bench/README.md, "First handshake round 2"), and nothing in it
depends on the peer.  :data:`PREPARED` holds at most one key pair per method, made by
:meth:`PreparedKeyPairs.prepare` when the daemon has nothing else to do; ``new`` hands it
out (once: it leaves the pool) or makes one on the spot.  Libreswan's pluto did the same
with its crypto helpers.

Bad peer input raises :class:`KeyExchangeError` (a ValueError) naming the
group and the problem.  Private values come from ``cryptography`` (OpenSSL's
CSPRNG).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519

from ipsecd.crypto.registry import KeAlgorithm, KeId

__all__ = ["KeyExchange", "KeyExchangeError", "new", "MODP_PRIMES", "PREPARED", "PreparedKeyPairs"]


class KeyExchangeError(ValueError):
    """A peer's KE data that is not a valid public value for the group."""


# RFC 3526 §3, §4, §5: p = 2^N - 2^(N-64) - 1 + 2^64 * ( [2^(N-130) pi] + offset ), g = 2.
MODP_2048_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)

MODP_3072_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)

MODP_4096_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)

MODP_PRIMES: dict[int, int] = {
    KeId.MODP_2048: MODP_2048_PRIME,
    KeId.MODP_3072: MODP_3072_PRIME,
    KeId.MODP_4096: MODP_4096_PRIME,
}
MODP_GENERATOR = 2

_CURVES: dict[int, ec.EllipticCurve] = {
    KeId.ECP_256: ec.SECP256R1(),
    KeId.ECP_384: ec.SECP384R1(),
}

_DH_PARAMS: dict[int, dh.DHParameters] = {}


def _dh_parameters(group: int) -> dh.DHParameters:
    params = _DH_PARAMS.get(group)
    if params is None:
        params = dh.DHParameterNumbers(MODP_PRIMES[group], MODP_GENERATOR).parameters()
        _DH_PARAMS[group] = params
    return params


class KeyExchange:
    """One ephemeral key pair of a key exchange method (RFC 7296 §1.2)."""

    __slots__ = ("alg", "_private", "public_bytes")

    def __init__(self, alg: KeAlgorithm, private: object | None = None) -> None:
        """Generate a fresh key pair, or wrap ``private`` (a cryptography private key)."""
        self.alg = alg
        kind = alg.kind
        if kind == "modp":
            key = private or _dh_parameters(alg.transform_id).generate_private_key()
            assert isinstance(key, dh.DHPrivateKey)
            y = key.public_key().public_numbers().y
            self.public_bytes = y.to_bytes(alg.public_len, "big")
        elif kind == "ecp":
            key = private or ec.generate_private_key(_CURVES[alg.transform_id])
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            # RFC 5903 §7: x | y, each as long as the field (no X9.62 0x04 octet).  From
            # the numbers: cryptography's serialization package (its SSH key format with
            # RSA, DSA and Ed25519) is not needed by a gateway without certificates.
            point = key.public_key().public_numbers()
            size = (key.curve.key_size + 7) // 8
            self.public_bytes = point.x.to_bytes(size, "big") + point.y.to_bytes(size, "big")
        elif kind == "x25519":
            key = private or x25519.X25519PrivateKey.generate()
            assert isinstance(key, x25519.X25519PrivateKey)
            self.public_bytes = key.public_key().public_bytes_raw()
        else:
            raise ValueError(f"unsupported key exchange kind {kind!r}")
        self._private = key

    @classmethod
    def from_private_value(cls, alg: KeAlgorithm, value: int | bytes) -> KeyExchange:
        """A key pair with a given private value (known-answer tests only).

        MODP/ECP take the private exponent/scalar as an int; X25519 takes the
        32-byte private key.
        """
        if alg.kind == "modp":
            assert isinstance(value, int)
            p = MODP_PRIMES[alg.transform_id]
            pn = dh.DHParameterNumbers(p, MODP_GENERATOR)
            public = dh.DHPublicNumbers(pow(MODP_GENERATOR, value, p), pn)
            return cls(alg, dh.DHPrivateNumbers(value, public).private_key())
        if alg.kind == "ecp":
            assert isinstance(value, int)
            return cls(alg, ec.derive_private_key(value, _CURVES[alg.transform_id]))
        assert isinstance(value, bytes)
        return cls(alg, x25519.X25519PrivateKey.from_private_bytes(value))

    @property
    def group(self) -> int:
        """The KE payload's group number (IANA transform id)."""
        return int(self.alg.transform_id)

    @property
    def public(self) -> bytes:
        return self.public_bytes

    def compute(self, peer_public: bytes) -> bytes:
        """The shared secret g^ir with the peer's KE data; raises KeyExchangeError."""
        alg = self.alg
        if not isinstance(peer_public, bytes | bytearray | memoryview):
            raise KeyExchangeError(f"{alg.name}: peer public value is not bytes")
        peer_public = bytes(peer_public)
        if len(peer_public) != alg.public_len:
            raise KeyExchangeError(
                f"{alg.name}: peer public value is {len(peer_public)} bytes,"
                f" expected {alg.public_len}"
            )
        if alg.kind == "modp":
            return self._compute_modp(peer_public)
        if alg.kind == "ecp":
            return self._compute_ecp(peer_public)
        return self._compute_x25519(peer_public)

    shared_secret = compute

    def _compute_modp(self, data: bytes) -> bytes:
        p = MODP_PRIMES[self.alg.transform_id]
        y = int.from_bytes(data, "big")
        if not 1 < y < p - 1:
            raise KeyExchangeError(f"{self.alg.name}: peer public value outside 1 < y < p-1")
        params = _dh_parameters(self.alg.transform_id)
        try:
            peer = dh.DHPublicNumbers(y, params.parameter_numbers()).public_key()
            assert isinstance(self._private, dh.DHPrivateKey)
            shared = self._private.exchange(peer)
        except ValueError as exc:
            raise KeyExchangeError(f"{self.alg.name}: invalid peer public value: {exc}") from None
        return shared.rjust(self.alg.public_len, b"\0")  # §2.14: padded to the modulus length

    def _compute_ecp(self, data: bytes) -> bytes:
        curve = _CURVES[self.alg.transform_id]
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + data)
            assert isinstance(self._private, ec.EllipticCurvePrivateKey)
            return self._private.exchange(ec.ECDH(), peer)
        except ValueError:
            raise KeyExchangeError(
                f"{self.alg.name}: peer public value is not a point on the curve"
            ) from None

    def _compute_x25519(self, data: bytes) -> bytes:
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(data)
            assert isinstance(self._private, x25519.X25519PrivateKey)
            shared = self._private.exchange(peer)
        except ValueError:
            raise KeyExchangeError(f"{self.alg.name}: peer public value is of low order") from None
        if shared == bytes(32):  # RFC 8031 §2.3
            raise KeyExchangeError(f"{self.alg.name}: all-zero shared secret")
        return shared

    def __repr__(self) -> str:
        return f"KeyExchange({self.alg.name}, public={self.public_bytes[:8].hex()}...)"


class PreparedKeyPairs:
    """Key pairs made ahead, at most one per method, each handed out once (module doc)."""

    def __init__(self) -> None:
        self._ready: dict[KeAlgorithm, KeyExchange] = {}
        self._wanted: tuple[KeAlgorithm, ...] = ()

    def want(self, algs: tuple[KeAlgorithm, ...]) -> None:
        """The methods to keep a key pair ready for; pairs of any other are dropped."""
        self._wanted = algs
        for alg in [a for a in self._ready if a not in algs]:
            del self._ready[alg]

    @property
    def ready(self) -> tuple[KeAlgorithm, ...]:
        """The methods with a key pair ready."""
        return tuple(self._ready)

    def missing(self) -> bool:
        """A wanted method has no key pair ready (one was handed out)."""
        return len(self._ready) < len(self._wanted)

    def prepare(self) -> None:
        """Make the missing key pairs (the caller's idle time)."""
        for alg in self._wanted:
            if alg not in self._ready:
                self._ready[alg] = KeyExchange(alg)

    def take(self, alg: KeAlgorithm) -> KeyExchange:
        """The key pair made ahead for ``alg`` (it leaves the pool), or a new one."""
        ready = self._ready.pop(alg, None)
        return ready if ready is not None else KeyExchange(alg)


PREPARED = PreparedKeyPairs()


def new(alg: KeAlgorithm) -> KeyExchange:
    """A fresh ephemeral key pair for ``alg``: made ahead (:data:`PREPARED`) or now."""
    return PREPARED.take(alg)
