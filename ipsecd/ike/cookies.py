"""COOKIE challenges for IKE_SA_INIT (RFC 7296 §2.6).

Under load the responder answers an IKE_SA_INIT without a valid cookie with
nothing but ``N(COOKIE)``: no state is kept and no Diffie-Hellman is
computed, so a flood with forged source addresses costs one hash per packet.
Only an initiator that receives the answer (its address is real) can send
the request again with the cookie and get an IKE SA.

The cookie is the RFC's ``<VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)``
in keyed form: a 4-octet secret version followed by
HMAC-SHA-256(secret, Ni | IPi | SPIi).  The KE payload is not covered
(§2.6 says SHOULD NOT), so an initiator may keep the cookie when it retries
with another group after INVALID_KE_PAYLOAD.  Secrets come from
``os.urandom`` and are replaced every :data:`SECRET_LIFETIME` seconds; a
cookie made with the previous secret is still accepted until the next
rotation, so a cookie stays valid for at least one lifetime.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

SECRET_LIFETIME = 120.0  # seconds between secret rotations
SECRET_LEN = 32
VERSION_LEN = 4
COOKIE_LEN = VERSION_LEN + 32  # within the 1..64 octets of RFC 7296 §2.6


class CookieCheck(Enum):
    """What :meth:`CookieSecrets.check` found."""

    VALID = "valid"
    INVALID = "invalid"  # wrong length or hash: forged or for another request
    STALE = "stale"  # made with a secret that is no longer kept


class CookieSecrets:
    """The current and the previous cookie secret, rotated by the clock."""

    def __init__(
        self,
        now: float,
        *,
        lifetime: float = SECRET_LIFETIME,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.lifetime = lifetime
        self._random = random
        self.version = int.from_bytes(random(VERSION_LEN), "big")
        self.secret = random(SECRET_LEN)
        self.previous: tuple[int, bytes] | None = None
        self.rotated_at = now

    def rotate(self, now: float) -> None:
        """A new secret now; the current one becomes the previous one."""
        self.previous = (self.version, self.secret)
        self.version = (self.version + 1) % 2 ** (8 * VERSION_LEN)
        self.secret = self._random(SECRET_LEN)
        self.rotated_at = now

    def _rotate_if_due(self, now: float) -> None:
        """Rotate on a fixed schedule, every ``lifetime`` seconds from the start."""
        periods = int((now - self.rotated_at) // self.lifetime)
        if periods < 1:
            return
        self.rotate(self.rotated_at + periods * self.lifetime)
        if periods >= 2:  # the secret that became "previous" is itself too old
            self.previous = None

    def make(self, nonce_i: bytes, address: str, spi_i: int, now: float) -> bytes:
        """The cookie for this initiator (nonce, source address, SPIi)."""
        self._rotate_if_due(now)
        return struct.pack("!I", self.version) + _digest(self.secret, nonce_i, address, spi_i)

    def check(
        self, cookie: bytes, nonce_i: bytes, address: str, spi_i: int, now: float
    ) -> CookieCheck:
        """Compare in constant time against the cookie we would have made."""
        self._rotate_if_due(now)
        if len(cookie) != COOKIE_LEN:
            return CookieCheck.INVALID
        (version,) = struct.unpack("!I", cookie[:VERSION_LEN])
        secrets = [(self.version, self.secret)]
        if self.previous is not None:
            secrets.append(self.previous)
        for known, secret in secrets:
            if known == version:
                expected = _digest(secret, nonce_i, address, spi_i)
                if hmac.compare_digest(expected, cookie[VERSION_LEN:]):
                    return CookieCheck.VALID
                return CookieCheck.INVALID
        return CookieCheck.STALE


def _digest(secret: bytes, nonce_i: bytes, address: str, spi_i: int) -> bytes:
    mac = crypto_hmac.HMAC(secret, hashes.SHA256())
    mac.update(nonce_i)
    mac.update(_packed(address))
    mac.update(spi_i.to_bytes(8, "big"))
    return mac.finalize()


def _packed(address: str) -> bytes:
    try:
        return ipaddress.ip_address(address).packed
    except ValueError:
        return address.encode("utf-8", "replace")
