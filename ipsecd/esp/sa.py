"""One direction of an ESP CHILD SA: build and open ESP packets (RFC 4303), sans-I/O.

Packet layout (RFC 4303 §2)::

    SPI(4) | Sequence Number(4) | IV | ciphertext( payload | padding | pad len | next hdr ) | ICV

Transforms:

* AEAD (AES-GCM-16, RFC 4106; ChaCha20-Poly1305, RFC 7634): 8-byte explicit
  IV = the 64-bit sequence number (RFC 4106 §3.1, RFC 7634 §2: unique per key),
  AAD = SPI || seq (or SPI || seq_hi || seq_lo with ESN, RFC 4106 §5),
  16-byte tag as ICV.
* AES-CBC (RFC 3602) + HMAC-SHA2 (RFC 4868): random 16-byte IV per packet,
  ICV = HMAC over SPI || seq || IV || ciphertext, with seq_hi appended (but not
  sent) under ESN (RFC 4303 §2.2.1, §3.3.2.1).

Both classes take bytes and return bytes; the data plane owns the sockets.
The result is the ESP packet without any UDP header (RFC 3948 adds that).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag

from ipsecd.crypto.ciphers import Aead, CbcCipher, Hmac
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.esp.counters import DropReason, new_drop_counters
from ipsecd.esp.inner import IPPROTO_NONE, inner_addresses, next_header_for
from ipsecd.esp.replay import DEFAULT_REPLAY_WINDOW, ReplayWindow
from ipsecd.selectors import TrafficSelector

__all__ = [
    "ESP_HEADER_LEN",
    "InboundEspSa",
    "OutboundEspSa",
    "SequenceNumberExhausted",
    "MAX_SEQ_32",
    "MAX_SEQ_64",
]

ESP_HEADER_LEN = 8  # SPI + sequence number (RFC 4303 §2)
MAX_SEQ_32 = (1 << 32) - 1  # last number a non-ESN SA may send (RFC 4303 §3.3.3)
MAX_SEQ_64 = (1 << 64) - 1  # last number an ESN SA may send
_MASK32 = 0xFFFFFFFF

_HEADER = struct.Struct("!II")  # SPI, sequence number (low 32 bits)
_AAD_ESN = struct.Struct("!III")  # SPI, seq_hi, seq_lo (RFC 4106 §5)
_SEQ_HI = struct.Struct("!I")
_IV64 = struct.Struct("!Q")

# RFC 4303 §2.4: padding bytes are 1, 2, 3, ... ; at most 255 of them.
_PAD_BYTES = bytes(range(1, 256))
# Padding then pad length, by pad length: what the plaintext must end with before
# the next header byte.
_PAD_TAILS = [_PAD_BYTES[:pad] + bytes((pad,)) for pad in range(256)]
# Padding, pad length and next header, by next header then pad length (the send hot
# path looks them up instead of building them); tunnel mode's 4 and 41 from the start.
_TRAILERS: dict[int, list[bytes]] = {}


def trailers(next_header: int) -> list[bytes]:
    """The ESP trailers (RFC 4303 §2.4-2.6) ending in ``next_header``, by pad length."""
    table = _TRAILERS.get(next_header)
    if table is None:
        table = _TRAILERS[next_header] = [tail + bytes((next_header,)) for tail in _PAD_TAILS]
    return table


trailers(4)
trailers(41)


class SequenceNumberExhausted(Exception):
    """The outbound SA has sent its last sequence number and must be rekeyed.

    RFC 4303 §3.3.3: the sender's counter must not cycle; a new SA is needed
    before 2^32 (or 2^64 with ESN) packets.
    """

    def __init__(self, spi: int, last_seq: int) -> None:
        super().__init__(
            f"ESP SA 0x{spi:08x}: sequence number space exhausted at {last_seq}, rekey required"
        )
        self.spi = spi
        self.last_seq = last_seq


class _Transform:
    """The per-SA cipher objects and sizes shared by both directions."""

    __slots__ = ("aead", "cbc", "hmac", "iv_len", "icv_len", "align", "esn")

    def __init__(
        self,
        encr: EncrAlgorithm,
        integ: IntegAlgorithm | None,
        encr_keymat: bytes,
        integ_key: bytes,
        esn: bool,
    ) -> None:
        self.esn = esn
        self.aead: Aead | None = None
        self.cbc: CbcCipher | None = None
        self.hmac: Hmac | None = None
        if encr.aead:
            if integ is not None:
                raise ValueError(
                    f"{encr.name} is an AEAD transform; it takes no integrity algorithm "
                    f"(got {integ.name}, RFC 4106 §7 / RFC 7634 §4)"
                )
            self.aead = Aead(encr, encr_keymat)
            self.icv_len = encr.icv_size
        else:
            if integ is None:
                raise ValueError(f"{encr.name} needs an integrity algorithm (RFC 4303 §3.2)")
            self.cbc = CbcCipher(encr, encr_keymat)
            self.hmac = Hmac(integ, integ_key)
            self.icv_len = integ.icv_len
        self.iv_len = encr.iv_size
        # RFC 4303 §2.4: pad to the cipher block size, and so that pad length and
        # next header end on a 4-byte boundary.
        self.align = max(encr.block_size, 4)


class OutboundEspSa:
    """Sending half of an ESP SA: sequence numbers, padding, encryption (RFC 4303 §3.3)."""

    def __init__(
        self,
        spi: int,
        encr: EncrAlgorithm,
        integ: IntegAlgorithm | None,
        encr_keymat: bytes,
        integ_key: bytes = b"",
        esn: bool = False,
    ) -> None:
        if not 0 < spi <= _MASK32:
            raise ValueError(f"SPI {spi:#x} is not a non-zero 32-bit value")
        self.spi = spi
        self.encr = encr
        self.integ = integ
        self.esn = esn
        self._t = _Transform(encr, integ, encr_keymat, integ_key, esn)
        self.seq = 0  # last sequence number sent; the first packet carries 1 (RFC 4303 §3.3.3)
        self.max_seq = MAX_SEQ_64 if esn else MAX_SEQ_32
        self.packets = 0
        self.bytes = 0  # inner (plaintext payload) bytes
        self._spi_bytes = spi.to_bytes(4, "big")

    def overhead(self, inner_len: int) -> int:
        """Bytes ESP adds around an inner packet of ``inner_len`` bytes (header..ICV)."""
        t = self._t
        padded = inner_len + 2
        padded += -padded % t.align
        return ESP_HEADER_LEN + t.iv_len + padded - inner_len + t.icv_len

    def _next_seq(self) -> int:
        seq = self.seq + 1
        if seq > self.max_seq:
            raise SequenceNumberExhausted(self.spi, self.seq)
        self.seq = seq
        return seq

    def encapsulate(self, inner: bytes | memoryview, next_header: int) -> bytes:
        """Build one ESP packet (RFC 4303 §3.3) carrying ``inner``.

        ``next_header`` is 4 (IPv4) or 41 (IPv6) in tunnel mode, 59 for a dummy
        packet.  Raises :class:`SequenceNumberExhausted` instead of wrapping.
        """
        t = self._t
        seq = self._next_seq()
        pad_len = -(len(inner) + 2) % t.align
        payload = b"".join((inner, _PAD_BYTES[:pad_len], bytes((pad_len, next_header))))
        header = _HEADER.pack(self.spi, seq & _MASK32)
        aead = t.aead
        if aead is not None:
            # RFC 4106 §3.1 / RFC 7634 §2: the counter is a valid, never-repeating IV.
            iv = _IV64.pack(seq)
            aad = _AAD_ESN.pack(self.spi, seq >> 32, seq & _MASK32) if t.esn else header
            out = header + iv + aead.seal(iv, payload, aad)
        else:
            iv = os.urandom(16)  # RFC 3602 §3: unpredictable IV per packet
            ciphertext = t.cbc.encrypt(iv, payload)  # type: ignore[union-attr]  # not None: a CBC SA
            if t.esn:
                icv = t.hmac.compute(  # type: ignore[union-attr]  # not None: a CBC SA
                    header, iv, ciphertext, _SEQ_HI.pack(seq >> 32)
                )
            else:
                icv = t.hmac.compute(header, iv, ciphertext)  # type: ignore[union-attr]  # not None: a CBC SA
            out = b"".join((header, iv, ciphertext, icv))
        self.packets += 1
        self.bytes += len(inner)
        return out

    def seal_burst(
        self,
        inners: Sequence[bytes | memoryview],
        out: list[bytes],
        next_headers: Sequence[int] | None = None,
    ) -> None:
        """Encapsulate a burst of packets in order, appending to ``out``.

        The data plane's send path: the same packets as :meth:`encapsulate`,
        with the AEAD work inlined.  Tunnel mode (``next_headers`` None): IPv4
        or IPv6 packets, next header 4 or 41 from the version nibble, which the
        caller has checked.  Transport mode (RFC 4303 §3.1.1): ``next_headers``
        gives each payload's upper protocol.  Raises
        :class:`SequenceNumberExhausted` before sending anything if the burst
        does not fit in the remaining sequence space.
        """
        count = len(inners)
        if self.seq + count > self.max_seq:
            raise SequenceNumberExhausted(self.spi, self.seq)
        if next_headers is None:
            next_headers = [41 if inner[0] >> 4 == 6 else 4 for inner in inners]
        t = self._t
        if t.aead is None:
            for inner, nh in zip(inners, next_headers, strict=True):
                out.append(self.encapsulate(inner, nh))
            return
        encrypt = t.aead._aead.encrypt
        salt = t.aead._salt
        esn = t.esn
        align = t.align
        spi = self.spi
        header_pack = _HEADER.pack
        iv_pack = _IV64.pack
        append = out.append
        seq = self.seq
        inner_bytes = 0
        for inner, nh in zip(inners, next_headers, strict=True):
            seq += 1
            n = len(inner)
            trailer = (_TRAILERS.get(nh) or trailers(nh))[-(n + 2) % align]
            header = header_pack(spi, seq & _MASK32)
            iv = iv_pack(seq)
            aad = _AAD_ESN.pack(spi, seq >> 32, seq & _MASK32) if esn else header
            append(header + iv + encrypt(salt + iv, b"".join((inner, trailer)), aad))
            inner_bytes += n
        self.seq = seq
        self.packets += count
        self.bytes += inner_bytes

    def seal_one(self, inner: bytes) -> bytes:
        """One tunnel-mode packet alone (a ping, an ACK): what :meth:`seal_burst` makes of
        a burst of one, in fewer steps.  An idle tunnel's packet meets a process gone cold
        (issue 17), where each step costs many times its warm price."""
        seq = self.seq + 1
        if seq > self.max_seq:
            raise SequenceNumberExhausted(self.spi, self.seq)
        nh = 41 if inner[0] >> 4 == 6 else 4
        t = self._t
        aead = t.aead
        if aead is None:
            return self.encapsulate(inner, nh)
        n = len(inner)
        header = _HEADER.pack(self.spi, seq & _MASK32)
        iv = _IV64.pack(seq)
        aad = _AAD_ESN.pack(self.spi, seq >> 32, seq & _MASK32) if t.esn else header
        sealed = aead._aead.encrypt(aead._salt + iv, inner + _TRAILERS[nh][-(n + 2) % t.align], aad)
        self.seq = seq
        self.packets += 1
        self.bytes += n
        return header + iv + sealed

    def encapsulate_batch(
        self, inners: Sequence[bytes], next_header: int | None = None
    ) -> list[bytes]:
        """Encapsulate a burst of inner packets, in order.

        ``next_header`` None means: take it from each packet's IP version
        (4 → 4, 6 → 41).  Raises :class:`SequenceNumberExhausted` before
        sending anything if the burst does not fit in the remaining sequence
        space, and ValueError for a packet that is not IPv4/IPv6 when
        inferring.
        """
        if self.seq + len(inners) > self.max_seq:
            raise SequenceNumberExhausted(self.spi, self.seq)
        encapsulate = self.encapsulate
        if next_header is not None:
            return [encapsulate(p, next_header) for p in inners]
        out: list[bytes] = []
        for p in inners:
            nh = next_header_for(p)
            if nh is None:
                raise ValueError("inner packet is neither IPv4 nor IPv6")
            out.append(encapsulate(p, nh))
        return out


class InboundEspSa:
    """Receiving half of an ESP SA (RFC 4303 §3.4): never raises on packet input.

    Each dropped packet is counted in :attr:`drops` under one
    :class:`~ipsecd.esp.counters.DropReason`; :meth:`decapsulate` returns None.
    """

    def __init__(
        self,
        spi: int,
        encr: EncrAlgorithm,
        integ: IntegAlgorithm | None,
        encr_keymat: bytes,
        integ_key: bytes = b"",
        esn: bool = False,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        src_selectors: tuple[TrafficSelector, ...] = (),
        dst_selectors: tuple[TrafficSelector, ...] = (),
    ) -> None:
        if not 0 < spi <= _MASK32:
            raise ValueError(f"SPI {spi:#x} is not a non-zero 32-bit value")
        self.spi = spi
        self.encr = encr
        self.integ = integ
        self.esn = esn
        self._t = t = _Transform(encr, integ, encr_keymat, integ_key, esn)
        self.replay = ReplayWindow(replay_window, esn)
        self.src_selectors = tuple(src_selectors)
        self.dst_selectors = tuple(dst_selectors)
        self.drops: dict[DropReason, int] = new_drop_counters()
        self.packets = 0
        self.bytes = 0  # inner bytes delivered
        # Smallest packet that can be valid: header, IV, the shortest padded
        # payload (pad length + next header, padded to the alignment), ICV.
        self._min_len = ESP_HEADER_LEN + t.iv_len + t.align + t.icv_len
        self._ct_start = ESP_HEADER_LEN + t.iv_len
        self._spi_bytes = spi.to_bytes(4, "big")
        # Inner address bytes (source, destination) of the last packet that passed the
        # selectors, kept between bursts: the selectors never change, and an idle
        # tunnel's lone packets then skip the lookup (open_burst).
        self._passed: bytes | None = None

    def decapsulate(self, packet: bytes, transport: bool = False) -> tuple[int, bytes] | None:
        """Open one ESP packet (RFC 4303 §3.4): ``(next_header, inner)`` or None.

        Order of checks: length, SPI, replay window (no state change), ICV,
        then window update (only after the ICV verified, RFC 4303 §3.4.3),
        then padding (RFC 4303 §2.4), dummy packets (next header 59, §2.6)
        and, in tunnel mode, the inner addresses against the selectors (RFC
        4301 §5.2); in ``transport`` mode there is no inner IP header.
        """
        try:
            return self._decapsulate(packet, transport)
        except Exception:  # hostile input must never escape as an exception
            self.drops[DropReason.MALFORMED] += 1
            return None

    def _decapsulate(self, packet: bytes, transport: bool = False) -> tuple[int, bytes] | None:
        drops = self.drops
        n = len(packet)
        if n < ESP_HEADER_LEN:
            drops[DropReason.TOO_SHORT] += 1
            return None
        spi, seq_low = _HEADER.unpack_from(packet, 0)
        if spi != self.spi:
            drops[DropReason.UNKNOWN_SPI] += 1
            return None
        t = self._t
        if n < self._min_len:
            drops[DropReason.TOO_SHORT] += 1
            return None
        replay = self.replay
        seq = replay.check(seq_low)
        if seq is None:
            drops[DropReason.REPLAY] += 1
            return None

        view = memoryview(packet)
        ct_start = self._ct_start
        aead = t.aead
        if aead is not None:
            iv = bytes(view[ESP_HEADER_LEN:ct_start])
            aad = _AAD_ESN.pack(spi, seq >> 32, seq_low) if t.esn else bytes(view[:ESP_HEADER_LEN])
            try:
                plaintext = aead.open(iv, view[ct_start:], aad)
            except InvalidTag:
                drops[DropReason.BAD_ICV] += 1
                return None
            replay.update(seq)
        else:
            icv_start = n - t.icv_len
            icv = view[icv_start:]
            if t.esn:
                ok = t.hmac.verify(  # type: ignore[union-attr]  # not None: a CBC SA
                    icv, view[:icv_start], _SEQ_HI.pack(seq >> 32)
                )
            else:
                ok = t.hmac.verify(icv, view[:icv_start])  # type: ignore[union-attr]  # not None: a CBC SA
            if not ok:
                drops[DropReason.BAD_ICV] += 1
                return None
            replay.update(seq)
            if (icv_start - ct_start) % 16:
                # Authentic but not whole cipher blocks: the peer is broken.
                drops[DropReason.MALFORMED] += 1
                return None
            plaintext = t.cbc.decrypt(  # type: ignore[union-attr]  # not None: a CBC SA
                bytes(view[ESP_HEADER_LEN:ct_start]), view[ct_start:icv_start]
            )

        # RFC 4303 §2.4 / §2.5: pad length and next header end the plaintext.
        plen = len(plaintext)
        if plen < 2:
            drops[DropReason.MALFORMED] += 1
            return None
        pad_len = plaintext[plen - 2]
        next_header = plaintext[plen - 1]
        inner_len = plen - 2 - pad_len
        if inner_len < 0 or plaintext[inner_len : plen - 2] != _PAD_BYTES[:pad_len]:
            drops[DropReason.BAD_PADDING] += 1
            return None
        if next_header == IPPROTO_NONE:
            drops[DropReason.DUMMY] += 1  # RFC 4303 §2.6: discard silently
            return None
        inner = plaintext[:inner_len]
        if not transport and (self.src_selectors or self.dst_selectors):
            verdict = self._selectors_allow(inner, next_header)
            if verdict is not None:
                drops[verdict] += 1
                return None
        self.packets += 1
        self.bytes += inner_len
        return next_header, inner

    def open_burst(
        self,
        packets: Sequence[bytes | memoryview],
        out: list[bytes],
        next_headers: list[int] | None = None,
    ) -> int:
        """Decapsulate a burst for the data plane; inner packets are appended to ``out``.

        The same checks in the same order as :meth:`decapsulate` (length,
        SPI, replay window, ICV, window update only after the ICV verified,
        padding, dummy packets, selectors), with the per-packet work of the
        AEAD transforms inlined: this is the receive path.  Tunnel mode
        (``next_headers`` None): the inner IP addresses are checked against the
        selectors.  Transport mode (RFC 4303 §3.1.1): the next header of each
        payload delivered is appended to ``next_headers`` and there is no inner
        IP header to check.  Returns the number of packets delivered; every
        other packet is counted in :attr:`drops`.  Never raises on packet input.
        """
        t = self._t
        delivered = self.packets
        if t.aead is None:
            for packet in packets:
                result = self.decapsulate(bytes(packet), next_headers is not None)
                if result is not None:
                    out.append(result[1])
                    if next_headers is not None:
                        next_headers.append(result[0])
            return self.packets - delivered
        drops = self.drops
        decrypt = t.aead._aead.decrypt
        salt = t.aead._salt
        esn = t.esn
        replay = self.replay
        infer = replay.infer
        size = replay.size
        mask = replay._mask
        top = replay.top
        bitmap = replay._bitmap
        min_len = self._min_len
        spi_bytes = self._spi_bytes
        accept = self._accept
        passed = self._passed  # inner address bytes that last passed the selectors
        for data in packets:
            try:
                if len(data) < min_len:
                    drops[DropReason.TOO_SHORT] += 1
                    continue
                header = data[:8]
                if header[:4] != spi_bytes:
                    drops[DropReason.UNKNOWN_SPI] += 1
                    continue
                seq_low = int.from_bytes(header[4:], "big")
                seq = infer(seq_low) if esn else seq_low
                if seq <= 0 or (seq <= top and (top - seq >= size or (bitmap >> (top - seq)) & 1)):
                    drops[DropReason.REPLAY] += 1
                    continue
                aad = _AAD_ESN.pack(self.spi, seq >> 32, seq_low) if esn else header
                try:
                    plaintext = decrypt(salt + data[8:16], data[16:], aad)
                except InvalidTag:
                    drops[DropReason.BAD_ICV] += 1
                    continue
                # RFC 4303 §3.4.3: the window moves only for authentic packets.
                if seq > top:
                    shift = seq - top
                    bitmap = 1 if shift >= size else ((bitmap << shift) | 1) & mask
                    top = seq
                else:
                    bitmap |= 1 << (top - seq)
                if esn:  # infer() reads the window
                    replay.top = top
                    replay._bitmap = bitmap
                passed = accept(plaintext, out, passed, next_headers)
            except Exception:  # hostile input must never escape as an exception
                drops[DropReason.MALFORMED] += 1
        replay.top = top
        replay._bitmap = bitmap
        self._passed = passed
        return self.packets - delivered

    def _accept(
        self,
        plaintext: bytes,
        out: list[bytes],
        passed: bytes | None,
        next_headers: list[int] | None,
    ) -> bytes | None:
        """The checks once the ICV verified, for one plaintext (RFC 4303 §2.4-2.6, RFC
        4301 §5.2): padding, dummy packets, the inner addresses against the selectors
        (tunnel mode).  Appends the inner packet to ``out`` (its next header to
        ``next_headers`` in transport mode) or counts the drop.  ``passed`` is the
        address bytes of the last packet that passed the selectors, returned updated:
        the next packet between the same hosts needs no selector lookup."""
        drops = self.drops
        plen = len(plaintext)
        if plen < 2:
            drops[DropReason.MALFORMED] += 1
            return passed
        pad_len = plaintext[-2]
        next_header = plaintext[-1]
        # Padding 1, 2, 3, ... then the pad length itself (RFC 4303 §2.4).
        if not plaintext.endswith(_PAD_TAILS[pad_len], 0, plen - 1):
            drops[DropReason.BAD_PADDING] += 1
            return passed
        if next_header == IPPROTO_NONE:
            drops[DropReason.DUMMY] += 1
            return passed
        inner_len = plen - 2 - pad_len
        inner = plaintext[:inner_len]
        if next_headers is not None:
            next_headers.append(next_header)
        elif self.src_selectors or self.dst_selectors:
            b0 = inner[0] if inner_len else 0
            if next_header == 4 and inner_len >= 20 and b0 >> 4 == 4:
                key: bytes | None = inner[12:20]
            elif next_header == 41 and inner_len >= 40 and b0 >> 4 == 6:
                key = inner[8:40]
            else:
                key = None
            if key is None or key != passed:
                verdict = self._selectors_allow(inner, next_header)
                if verdict is not None:
                    drops[verdict] += 1
                    return passed
                passed = key
        out.append(inner)
        self.packets += 1
        self.bytes += inner_len
        return passed

    def _selectors_allow(self, inner: bytes, next_header: int) -> DropReason | None:
        """None if the inner addresses are inside the SA's selectors (RFC 4301 §5.2)."""
        addrs = inner_addresses(inner, next_header)
        if addrs is None:
            return DropReason.MALFORMED
        version, src, dst = addrs
        if (
            self.src_selectors
            and not any(ts.contains_address(version, src) for ts in self.src_selectors)
        ) or (
            self.dst_selectors
            and not any(ts.contains_address(version, dst) for ts in self.dst_selectors)
        ):
            return DropReason.OUTSIDE_SELECTORS
        return None

    def decapsulate_batch(self, packets: Sequence[bytes]) -> list[tuple[int, bytes] | None]:
        """Decapsulate a burst; one result per packet, None where dropped (and counted)."""
        decapsulate = self.decapsulate
        return [decapsulate(p) for p in packets]
