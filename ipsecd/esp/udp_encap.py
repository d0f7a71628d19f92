"""UDP encapsulation of ESP and IKE on port 4500 (RFC 3948 §2).

One UDP port carries three things, told apart by their first bytes:

* a NAT-keepalive: exactly one byte 0xFF (RFC 3948 §2.3);
* an IKE message: the 4-byte non-ESP marker (all zero) then the IKE header
  (RFC 3948 §2.2, RFC 7296 §2.23);
* an ESP packet: a non-zero SPI then the sequence number (RFC 3948 §2.1).

Anything else is malformed.  ``classify`` is sans-I/O and never raises.  This module
is the one place that knows these rules: the packet processor demultiplexes with
``classify``, the daemon frames outgoing IKE with ``frame_ike``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

NAT_T_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3
IKE_HEADER_LEN = 28  # RFC 7296 §3.1
ESP_HEADER_LEN = 8  # SPI + sequence number, RFC 4303 §2


Buffer = bytes | memoryview  # a received datagram; GRO hands out memoryviews


@dataclass(frozen=True, slots=True)
class DatagramRun:
    """Datagrams of ``size`` bytes back to back in ``data``, the last one maybe shorter.

    What one UDP GSO send takes (``UDP_SEGMENT``: the kernel cuts ``data`` every
    ``size`` bytes) and one UDP GRO receive returns; the bulk path seals and opens a
    run of ESP packets as one buffer.  ``len()`` is the number of datagrams.
    """

    data: Buffer
    size: int

    def __len__(self) -> int:
        return -(-len(self.data) // self.size)

    def __bytes__(self) -> bytes:
        """The datagrams back to back, as one buffer (what GSO sends)."""
        return bytes(self.data)

    def datagrams(self) -> list[memoryview]:
        """Each datagram as a view into ``data`` (no copy)."""
        view = memoryview(self.data)
        size = self.size
        return [view[i : i + size] for i in range(0, len(view), size)]


class DatagramKind(StrEnum):
    """What a datagram on the NAT-T port carries (compares equal to its string)."""

    ESP = "esp"
    IKE = "ike"
    KEEPALIVE = "keepalive"
    MALFORMED = "malformed"


def classify(datagram: Buffer) -> tuple[DatagramKind, Buffer]:
    """Demultiplex one UDP/4500 payload (RFC 3948 §2.2).

    Returns ``(kind, payload)``: for ``esp`` the whole datagram (the ESP packet
    starts at the SPI), for ``ike`` the IKE message without the non-ESP marker
    (a slice of the same type as ``datagram``), for ``keepalive`` and
    ``malformed`` an empty payload.
    """
    n = len(datagram)
    if n >= ESP_HEADER_LEN:
        if datagram[:4] != NON_ESP_MARKER:  # ESP, the common case, is tested first
            return _ESP, datagram
        if n >= 4 + IKE_HEADER_LEN:
            return _IKE, datagram[4:]
    elif datagram == NAT_KEEPALIVE:
        return _KEEPALIVE, b""
    return _MALFORMED, b""


_ESP, _IKE = DatagramKind.ESP, DatagramKind.IKE
_KEEPALIVE, _MALFORMED = DatagramKind.KEEPALIVE, DatagramKind.MALFORMED


def frame_ike(message: bytes) -> bytes:
    """Prefix an IKE message with the non-ESP marker for port 4500 (RFC 3948 §2.2)."""
    return NON_ESP_MARKER + message


def frame(data: bytes, marker: bool, keepalive: bool = False) -> bytes:
    """The UDP payload for an outgoing IKE datagram: with the non-ESP marker when
    ``marker`` (IKE on the NAT-T port), raw otherwise (IKE on port 500); for a
    NAT-keepalive the single 0xFF octet, which never carries the marker (RFC 3948 §2.3)."""
    if keepalive:
        return NAT_KEEPALIVE
    return frame_ike(data) if marker else data
