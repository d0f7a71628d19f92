"""NAT detection (RFC 7296 §2.23).

NAT_DETECTION_SOURCE_IP / _DESTINATION_IP notify data is
``SHA-1(SPIi | SPIr | IP address | port)`` with the 8-byte SPIs (SPIr is zero
in the IKE_SA_INIT request), the address in network order (4 or 16 bytes) and
the 2-byte port.  If none of the received SOURCE hashes matches the address
the packet came from, the peer is behind a NAT; if the DESTINATION hash does
not match our own address, we are.

API::

    natd_hash(spi_i, spi_r, ip, port) -> bytes
    hash_matches(received, spi_i, spi_r, ip, port) -> bool
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Iterable

from ipsecd.crypto.digests import sha1

__all__ = ["natd_hash", "hash_matches"]

Ip = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


def _packed(ip: Ip) -> bytes:
    if isinstance(ip, bytes):
        if len(ip) not in (4, 16):
            raise ValueError(f"packed address of {len(ip)} bytes")
        return ip
    if isinstance(ip, str):
        return packed_address(ip)
    return ip.packed


@functools.lru_cache(maxsize=1024)
def packed_address(text: str) -> bytes:
    """The 4 or 16 bytes of an address given as text: a gateway's few addresses are parsed
    again for every NAT detection hash (RFC 7296 §2.23) otherwise."""
    return ipaddress.ip_address(text).packed


def _spi(spi: int | bytes) -> bytes:
    return spi if isinstance(spi, bytes) else spi.to_bytes(8, "big")


def natd_hash(spi_i: int | bytes, spi_r: int | bytes, ip: Ip, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port), the 20-byte NAT_DETECTION_* data (§2.23)."""
    return sha1(_spi(spi_i) + _spi(spi_r) + _packed(ip) + port.to_bytes(2, "big"))


def hash_matches(
    received: Iterable[bytes], spi_i: int | bytes, spi_r: int | bytes, ip: Ip, port: int
) -> bool:
    """True when one of the received NAT-D hashes is the hash of (ip, port): no NAT there."""
    expected = natd_hash(spi_i, spi_r, ip, port)
    return any(hmac.compare_digest(expected, bytes(h)) for h in received)
