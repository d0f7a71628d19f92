"""One direction of an AH SA: build and verify AH packets (RFC 4302), sans-I/O.

Unlike ESP, AH covers the IP header it travels in, so both classes work on
whole IP packets::

    tunnel:    new outer IP header | AH | inner IP packet      (next header 4 / 41)
    transport: host's IP header    | AH | TCP, UDP, ...        (next header = upper protocol)

ICV (§3.3.3): HMAC-SHA-256-128 / 384-192 / 512-256 (RFC 4868) over the IP
header with mutable fields zeroed (:mod:`ipsecd.ah.mutable`), the AH header
with the ICV (not its padding) zeroed, everything after AH, and with ESN the
high 32 bits of the sequence number appended but not sent (§3.3.3.2.1).

The shape mirrors :mod:`ipsecd.esp.sa` so the data plane treats both alike:
``seq``/``max_seq``/``packets``/``bytes`` counters, :class:`SequenceNumberExhausted`
instead of wrapping, and an inbound side that never raises on packet input,
counting each drop under one :class:`~ipsecd.esp.counters.DropReason`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ipsecd.ah.header import AH_FIXED, AH_FIXED_LEN, ah_length
from ipsecd.ah.mutable import icv_header
from ipsecd.crypto.ciphers import Hmac
from ipsecd.crypto.registry import IntegAlgorithm
from ipsecd.esp.counters import DropReason, new_drop_counters
from ipsecd.esp.inner import next_header_for
from ipsecd.esp.replay import DEFAULT_REPLAY_WINDOW, ReplayWindow
from ipsecd.esp.sa import MAX_SEQ_32, MAX_SEQ_64, SequenceNumberExhausted
from ipsecd.esp.transport import (
    IPPROTO_AH,
    IpFront,
    TransportFramingError,
    locate_ipsec_header,
    split_for_transport,
)

__all__ = ["AhSequenceNumberExhausted", "InboundAhSa", "OutboundAhSa", "ah_spi"]

_MASK32 = 0xFFFFFFFF
_SEQ_HI = struct.Struct("!I")
_Chunk = bytes | bytearray | memoryview


class AhSequenceNumberExhausted(SequenceNumberExhausted):
    """The outbound AH SA has sent its last sequence number (RFC 4302 §3.3.2).

    A :class:`~ipsecd.esp.sa.SequenceNumberExhausted`, so one handler rekeys both.
    """

    def __init__(self, spi: int, last_seq: int) -> None:
        super().__init__(spi, last_seq)
        self.args = (
            f"AH SA 0x{spi:08x}: sequence number space exhausted at {last_seq}, rekey required",
        )


def ah_spi(packet: bytes) -> int | None:
    """The SPI of the AH header in an IP packet (for the SA lookup), or None."""
    try:
        _, offset = locate_ipsec_header(packet, IPPROTO_AH)
    except TransportFramingError:
        return None
    if offset + AH_FIXED_LEN > len(packet):
        return None
    return int.from_bytes(packet[offset + 4 : offset + 8], "big")


class _Icv:
    """The keyed integrity algorithm and the per-version AH sizes of one SA."""

    __slots__ = ("hmac", "icv_len", "ah_len", "zero_icv")

    def __init__(self, integ: IntegAlgorithm, integ_key: bytes) -> None:
        self.hmac = Hmac(integ, integ_key)
        self.icv_len = integ.icv_len
        self.ah_len = {4: ah_length(integ.icv_len, 4), 6: ah_length(integ.icv_len, 6)}
        self.zero_icv = bytes(integ.icv_len)


class _AhSa:
    """What both directions of an AH SA hold: SPI, integrity algorithm and key, ESN."""

    def __init__(self, spi: int, integ: IntegAlgorithm, integ_key: bytes, esn: bool) -> None:
        if not 0 < spi <= _MASK32:
            raise ValueError(f"SPI {spi:#x} is not a non-zero 32-bit value")
        self.spi = spi
        self.integ = integ
        self.esn = esn
        self._icv = _Icv(integ, integ_key)


class OutboundAhSa(_AhSa):
    """Sending half of an AH SA (RFC 4302 §3.3)."""

    def __init__(
        self, spi: int, integ: IntegAlgorithm, integ_key: bytes, esn: bool = False
    ) -> None:
        super().__init__(spi, integ, integ_key, esn)
        self.seq = 0  # last sequence number sent; the first packet carries 1 (§3.3.2)
        self.max_seq = MAX_SEQ_64 if esn else MAX_SEQ_32
        self.packets = 0
        self.bytes = 0  # payload bytes protected (what follows AH)

    def overhead(self, version: int = 4) -> int:
        """Bytes AH adds to a packet whose (outer) IP version is ``version``."""
        return self._icv.ah_len[version]

    def encapsulate(self, front: IpFront, next_header: int, payload: bytes) -> bytes:
        """The IP packet ``front | AH | payload`` with its ICV (§3.3.3).

        ``front`` is the IP header (and options / extension headers) AH goes
        behind; its next header, lengths and IPv4 checksum are set here.
        Raises :class:`AhSequenceNumberExhausted`,
        :class:`~ipsecd.esp.transport.TransportFramingError` if the packet
        would exceed 65535 bytes or the front is malformed, and
        :class:`~ipsecd.ah.mutable.UnsupportedRoutingHeader`.
        """
        t = self._icv
        ah_len = t.ah_len[front.version]
        seq = self.seq + 1
        if seq > self.max_seq:
            raise AhSequenceNumberExhausted(self.spi, self.seq)
        fixed = AH_FIXED.pack(next_header, ah_len // 4 - 2, 0, self.spi, seq & _MASK32)
        padding = bytes(ah_len - AH_FIXED_LEN - t.icv_len)
        wire = front.build(IPPROTO_AH, b"".join((fixed, t.zero_icv, padding, payload)))
        start = len(front.header)
        built = IpFront(front.version, wire[:start], front.nh_offset)
        chunks: list[_Chunk] = [icv_header(built, sending=True), memoryview(wire)[start:]]
        if self.esn:
            chunks.append(_SEQ_HI.pack(seq >> 32))
        icv = t.hmac.compute(*chunks)
        self.seq = seq
        self.packets += 1
        self.bytes += len(payload)
        at = start + AH_FIXED_LEN
        return b"".join((wire[:at], icv, wire[at + t.icv_len :]))

    def encapsulate_tunnel(self, outer_header: bytes, inner: bytes) -> bytes:
        """Tunnel mode: ``outer_header | AH | inner`` (RFC 4302 §3.1.2).

        ``outer_header`` is the new outer IPv4 header (options allowed) or
        IPv6 header with any extension headers, built by the caller; the next
        header is 4 or 41 from the inner packet's version.
        """
        next_header = next_header_for(inner)
        if next_header is None:
            raise ValueError("inner packet is neither IPv4 nor IPv6")
        return self.encapsulate(IpFront.parse(outer_header), next_header, inner)

    def encapsulate_transport(self, packet: bytes) -> bytes:
        """Transport mode: AH inserted into the host's own packet (RFC 4302 §3.1.1)."""
        front, next_header, payload = split_for_transport(packet)
        return self.encapsulate(front, next_header, payload)


class InboundAhSa(_AhSa):
    """Receiving half of an AH SA (RFC 4302 §3.4): never raises on packet input.

    Each dropped packet is counted in :attr:`drops` under one
    :class:`~ipsecd.esp.counters.DropReason` and the call returns None.
    """

    def __init__(
        self,
        spi: int,
        integ: IntegAlgorithm,
        integ_key: bytes,
        esn: bool = False,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        super().__init__(spi, integ, integ_key, esn)
        self.replay = ReplayWindow(replay_window, esn)
        self.drops: dict[DropReason, int] = new_drop_counters()
        self.packets = 0
        self.bytes = 0  # payload bytes delivered (what followed AH)

    def open(self, packet: bytes) -> tuple[IpFront, int, bytes] | None:
        """Verify one AH packet: ``(front, next_header, payload)`` or None.

        ``front`` is the IP header (and what preceded AH) as received,
        ``payload`` what followed AH.  Order of checks (§3.4): whole datagram
        (fragments dropped, §3.4.1) and strict lengths, SPI, payload length
        for this SA's ICV and IP version, replay window (no state change),
        ICV in constant time, then the window update (only after the ICV
        verified, §3.4.3).
        """
        try:
            return self._open(packet)
        except Exception:  # hostile input must never escape as an exception
            self.drops[DropReason.MALFORMED] += 1
            return None

    def decapsulate(self, packet: bytes) -> tuple[int, bytes] | None:
        """Tunnel mode: ``(next_header, inner)`` like :meth:`InboundEspSa.decapsulate`."""
        opened = self.open(packet)
        return None if opened is None else (opened[1], opened[2])

    def decapsulate_batch(self, packets: Sequence[bytes]) -> list[tuple[int, bytes] | None]:
        """Tunnel mode, a burst: one result per packet, None where dropped (and counted)."""
        decapsulate = self.decapsulate
        return [decapsulate(p) for p in packets]

    def decapsulate_transport(self, packet: bytes) -> bytes | None:
        """Transport mode: the IP packet without AH (next header and lengths restored)."""
        opened = self.open(packet)
        if opened is None:
            return None
        front, next_header, payload = opened
        return front.build(next_header, payload)

    def _open(self, packet: bytes) -> tuple[IpFront, int, bytes] | None:
        drops = self.drops
        try:
            front, offset = locate_ipsec_header(packet, IPPROTO_AH)
        except TransportFramingError as exc:
            drops[exc.reason] += 1
            return None
        n = len(packet)
        if offset + AH_FIXED_LEN > n:
            drops[DropReason.TOO_SHORT] += 1
            return None
        next_header, payload_len, _, spi, seq_low = AH_FIXED.unpack_from(packet, offset)
        if spi != self.spi:
            drops[DropReason.UNKNOWN_SPI] += 1
            return None
        t = self._icv
        ah_len = t.ah_len[front.version]
        if (payload_len + 2) * 4 != ah_len:
            drops[DropReason.MALFORMED] += 1  # not this SA's ICV size and alignment
            return None
        end = offset + ah_len
        if end > n:
            drops[DropReason.TOO_SHORT] += 1
            return None
        seq = self.replay.check(seq_low)
        if seq is None:
            drops[DropReason.REPLAY] += 1
            return None
        try:
            zeroed = icv_header(front, sending=False)
        except TransportFramingError:
            drops[DropReason.MALFORMED] += 1
            return None
        view = memoryview(packet)
        icv_at = offset + AH_FIXED_LEN
        chunks: list[_Chunk] = [zeroed, view[offset:icv_at], t.zero_icv, view[icv_at + t.icv_len :]]
        if self.esn:
            chunks.append(_SEQ_HI.pack(seq >> 32))
        if not t.hmac.verify(view[icv_at : icv_at + t.icv_len], *chunks):
            drops[DropReason.BAD_ICV] += 1
            return None
        self.replay.update(seq)  # §3.4.3: the window moves only for authentic packets
        payload = packet[end:]
        self.packets += 1
        self.bytes += len(payload)
        return front, next_header, payload
