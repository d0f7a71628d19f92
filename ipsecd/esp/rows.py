"""Runs of ESP packets as the rows of one byte array: the data plane's bulk path (numpy).

A TCP super-segment read from TUN becomes some 45 inner packets of one length, sealed
into as many ESP datagrams of one length, which UDP GSO sends from one buffer and UDP
GRO receives into one (:class:`~ipsecd.esp.udp_encap.DatagramRun`).  Stored as rows of
a 2-D array, the per-packet work of RFC 4303 other than the cipher (header, sequence
numbers, IVs and nonces, padding, the trailer checks, the inner addresses) is done for
every row at once by numpy, and the memoryviews handed to the AEAD are made once per
layout and reused (:class:`Workspace`): the one per-packet Python call left is the
AEAD's, driven by ``map``.  The sealed datagrams and the opened rows leave as views of
the workspace they were made in (:class:`LentSpace`), not as copies.

The results are those of :meth:`OutboundEspSa.seal_burst` and
:meth:`InboundEspSa.open_burst` packet for packet (tests/unit/test_esp_rows.py holds
them to it).  Whatever is not a regular run (a replayed or out-of-order sequence
number, a bad ICV, mixed trailers, a CBC transform) is declined (None) or handed to
the one-packet checks, so the general paths keep deciding every odd case.

numpy costs some 13 MB of memory that an idle gateway does not need, so this module is
imported with the first run that needs it (:func:`ipsecd.dataplane.offload.bulk`).
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidTag
from numpy.typing import NDArray

from ipsecd.esp.sa import _PAD_BYTES, SequenceNumberExhausted, trailers
from ipsecd.esp.udp_encap import DatagramRun

if TYPE_CHECKING:
    from ipsecd.esp.sa import InboundEspSa, OutboundEspSa

__all__ = ["PacketRows", "Workspace", "open_rows", "seal_rows"]

Rows = NDArray[np.uint8]
HEADER_IV = 16  # SPI, sequence number, 8-byte explicit IV (RFC 4106 §3, RFC 7634 §2)
ICV = 16
_MASK32 = 0xFFFFFFFF
_PAD = np.frombuffer(_PAD_BYTES, np.uint8)
_MAX_LAYOUTS = 16  # cached view lists per workspace before the cache starts over


class Workspace:
    """A byte buffer reused by every run, with memoryviews of its rows cached per layout.

    ``rows(count, stride)`` is the buffer as ``count`` rows of ``stride`` bytes;
    ``views(stride, start, length)`` the memoryviews of bytes ``start`` to
    ``start + length`` of every row, made once for a layout.  Whatever a run leaves in
    the buffer is dead once its results are copied out: nothing refers to it after.
    """

    def __init__(self, size: int = 1 << 16) -> None:
        self._allocate(size)

    def _allocate(self, size: int) -> None:
        self.array: Rows = np.empty(size, np.uint8)
        self.memory = self.array.data
        self._views: dict[tuple[int, int, int], list[memoryview]] = {}

    def rows(self, count: int, stride: int) -> Rows:
        need = count * stride
        if need > len(self.array):
            self._allocate(max(need, 2 * len(self.array)))
        return self.array[:need].reshape(count, stride)

    def views(self, stride: int, start: int, length: int, count: int) -> list[memoryview]:
        """At least ``count`` views (more if cached), row ``i`` first at index ``i``."""
        key = (stride, start, length)
        views = self._views.get(key)
        if views is None or len(views) < count:
            if len(self._views) >= _MAX_LAYOUTS:
                self._views.clear()
            rows = len(self.array) // stride
            memory = self.memory
            views = [memory[i * stride + start : i * stride + start + length] for i in range(rows)]
            self._views[key] = views
        return views


# One set per process: a run is sealed or opened completely, and its results copied
# out, before the next one starts.
_PACKETS = Workspace()
_NONCES = Workspace(12 * 128)
_AADS = Workspace(12 * 128)


class LentSpace(Workspace):
    """A workspace whose run leaves without a copy: what :meth:`lend` gives is a view of
    its buffer, and the buffer is taken again only once nothing refers to that view or
    to any view made from it (:meth:`free`).

    What a burst seals is sent, and what it opens written, once the whole burst is
    done, so a burst with several runs needs several of these (:func:`_lent_space`);
    the 64 KiB copy per run they save is issue 17's "copies" item.
    """

    def __init__(self, size: int = 1 << 16) -> None:
        super().__init__(size)
        self._out: Rows | None = None

    def free(self) -> bool:
        # ``_out`` is made from a memoryview, so every numpy view made from it refers to
        # it (numpy's base chain stops there) and every memoryview made from those holds
        # them: no other reference to ``_out``, no view of the run left.
        return self._out is None or sys.getrefcount(self._out) <= 2

    def lend(self, length: int) -> Rows:
        out: Rows = np.frombuffer(self.memory[:length], np.uint8)
        self._out = out
        return out


_LENT_SPACES: list[LentSpace] = []  # made as bursts need them (memory), up to _MAX_LENT
_MAX_LENT = 6  # a burst's sealed runs plus a burst's opened runs, with room to spare


def _lent_space() -> LentSpace | None:
    """A workspace no run in flight uses, or None (then :data:`_PACKETS`, and the run is
    copied out)."""
    for space in _LENT_SPACES:
        if space.free():
            return space
    if len(_LENT_SPACES) < _MAX_LENT:
        space = LentSpace()
        _LENT_SPACES.append(space)
        return space
    return None


@dataclass(frozen=True, slots=True)
class PacketRows:
    """Inner packets: the first ``length`` bytes of each row of ``rows``, then ``tail``.

    What :func:`open_rows` delivers for a regular run (one inner length, one next
    header), ready for the TUN writer to merge (``coalesce_rows``) without cutting it
    into packets first.  ``packets()`` gives them one by one.  ``rows`` is usually a
    view of a :class:`LentSpace`, lent until nothing refers to it.
    """

    rows: Rows
    length: int
    tail: bytes | None = None

    def __len__(self) -> int:
        return len(self.rows) + (self.tail is not None)

    def packets(self) -> list[bytes]:
        length = self.length
        out = [row[:length].tobytes() for row in self.rows]
        if self.tail is not None:
            out.append(self.tail)
        return out


def seal_rows(
    sa: OutboundEspSa,
    count: int,
    length: int,
    last_length: int,
    next_header: int,
    write: Callable[[Rows, int], None],
) -> DatagramRun | None:
    """Seal ``count`` packets that ``write(rows, column)`` puts into rows, as one run.

    Every packet is ``length`` bytes long but the last, ``last_length``.  Gives the
    ESP datagrams back to back, of one size but the last (what :meth:`seal_burst`
    gives for the same packets, joined), or None for a transform other than an AEAD.
    Raises :class:`SequenceNumberExhausted` before sealing anything if the run does not
    fit in the remaining sequence space.
    """
    t = sa._t
    aead = t.aead
    if aead is None or count < 2:
        return None
    if sa.seq + count > sa.max_seq:
        raise SequenceNumberExhausted(sa.spi, sa.seq)
    align = t.align
    ptlen = length + 2 + (-(length + 2) % align)  # RFC 4303 §2.4
    last_ptlen = last_length + 2 + (-(last_length + 2) % align)
    stride = HEADER_IV + ptlen + ICV
    full = count - 1
    space = _lent_space()
    work = _PACKETS if space is None else space
    rows = work.rows(count, stride)
    write(rows, HEADER_IV)
    table = trailers(next_header)
    tail = table[ptlen - length - 2]
    rows[:full, HEADER_IV + length : HEADER_IV + ptlen] = np.frombuffer(tail, np.uint8)
    tail = table[last_ptlen - last_length - 2]
    rows[full, HEADER_IV + last_length : HEADER_IV + last_ptlen] = np.frombuffer(tail, np.uint8)
    seq0 = sa.seq
    seqs = np.arange(seq0 + 1, seq0 + count + 1, dtype=np.uint64)
    rows[:, 0:4] = np.frombuffer(sa._spi_bytes, np.uint8)
    rows[:, 4:8].view(">u4")[:, 0] = seqs  # the low 32 bits (RFC 4303 §2.2)
    rows[:, 8:16].view(">u8")[:, 0] = seqs  # IV = the 64-bit counter (RFC 4106 §3.1)
    nonces = _NONCES.rows(count, 12)
    nonces[:, 0:4] = np.frombuffer(aead._salt, np.uint8)
    nonces[:, 4:12] = rows[:, 8:16]
    if t.esn:  # AAD = SPI, high and low half of the sequence number (RFC 4106 §5)
        aads = _AADS.rows(count, 12)
        aads[:, 0:4] = rows[:, 0:4]
        aads[:, 4:8].view(">u4")[:, 0] = seqs >> np.uint64(32)
        aads[:, 8:12] = rows[:, 4:8]
        aad = _AADS.views(12, 0, 12, count)
    else:  # AAD = SPI, sequence number: the packet's first 8 bytes
        aad = work.views(stride, 0, 8, count)
    nonce = _NONCES.views(12, 0, 12, count)
    encrypt_into = aead._aead.encrypt_into
    # In place: each plaintext becomes its ciphertext and is followed by the ICV.
    collections.deque(
        map(
            encrypt_into,
            nonce[:full],
            work.views(stride, HEADER_IV, ptlen, count)[:full],
            aad[:full],
            work.views(stride, HEADER_IV, ptlen + ICV, count)[:full],
        ),
        maxlen=0,
    )
    at = full * stride + HEADER_IV
    memory = work.memory
    encrypt_into(
        nonce[full], memory[at : at + last_ptlen], aad[full], memory[at : at + last_ptlen + ICV]
    )
    sa.seq = seq0 + count
    sa.packets += count
    sa.bytes += full * length + last_length
    end = at + last_ptlen + ICV
    if space is None:  # every sealing workspace still in flight: copied out
        return DatagramRun(_PACKETS.array[:end].tobytes(), stride)
    return DatagramRun(space.lend(end).data, stride)


def open_rows(sa: InboundEspSa, runs: Sequence[DatagramRun]) -> PacketRows | list[bytes] | None:
    """Open runs of datagrams of one size (all but the last run whole) as one run.

    For the regular case only: every SPI ``sa``'s, sequence numbers consecutive and
    right of the replay window, every ICV good (RFC 4303 §3.4.3-3.4.4).  Then the
    window moves once and the inner packets come back as :class:`PacketRows` (one
    length and next header, the inner addresses of the first row checked against
    the selectors for all), or as a list of packets when their trailers or addresses
    differ (checked one by one, as :meth:`open_burst` does).  None, with nothing
    changed, for anything else: the caller opens the datagrams one by one.
    """
    t = sa._t
    aead = t.aead
    size = runs[0].size
    if aead is None or size < sa._min_len:
        return None
    count = sum(len(run) for run in runs)
    space = _lent_space()
    work = _PACKETS if space is None else space
    rows = work.rows(count, size)
    flat = rows.reshape(-1)
    at = 0
    for run in runs:
        n = len(run.data)
        flat[at : at + n] = np.frombuffer(run.data, np.uint8)
        at += n
    full = count - 1
    last = at - full * size
    if count < 2 or last < sa._min_len:
        return None
    head = rows[:, 0:8].view(">u4")  # SPI, low half of the sequence number
    if not (head[:, 0] == sa.spi).all():
        return None
    first = int(head[0, 1])
    seqs = head[:, 1].astype(np.int64)
    if first + full > _MASK32 or not (seqs == np.arange(first, first + count)).all():
        return None
    replay = sa.replay
    seq0 = replay.infer(first)
    if seq0 <= replay.top:  # also rejects 0, and an ESN guess left of the window
        return None
    nonces = _NONCES.rows(count, 12)
    nonces[:, 0:4] = np.frombuffer(aead._salt, np.uint8)
    nonces[:, 4:12] = rows[:, 8:16]
    if t.esn:
        aads = _AADS.rows(count, 12)
        aads[:, 0:4] = rows[:, 0:4]
        aads[:, 4:8].view(">u4")[:, 0] = seq0 >> 32
        aads[:, 8:12] = rows[:, 4:8]
        aad = _AADS.views(12, 0, 12, count)
    else:
        aad = work.views(size, 0, 8, count)
    nonce = _NONCES.views(12, 0, 12, count)
    decrypt_into = aead._aead.decrypt_into
    base = full * size
    ptlen = size - HEADER_IV - ICV
    memory = work.memory
    try:
        # In place: each ciphertext becomes its plaintext (the ICV after it is left).
        collections.deque(
            map(
                decrypt_into,
                nonce[:full],
                work.views(size, HEADER_IV, size - HEADER_IV, count)[:full],
                aad[:full],
                work.views(size, HEADER_IV, ptlen, count)[:full],
            ),
            maxlen=0,
        )
        last_pt = bytearray(last - HEADER_IV - ICV)
        decrypt_into(nonce[full], memory[base + HEADER_IV : base + last], aad[full], last_pt)
    except InvalidTag:
        return None  # the runs' own bytes are untouched: the caller opens them one by one
    # RFC 4303 §3.4.3: every packet is authentic, the window moves past all of them.
    top = seq0 + full
    shift = top - replay.top
    window = (1 << count) - 1
    replay._bitmap = (
        window if shift >= replay.size else (replay._bitmap << shift) | window
    ) & replay._mask
    replay.top = top
    if space is None:  # every workspace still in flight: copied out, _PACKETS is reused
        plain = rows[:full, HEADER_IV : HEADER_IV + ptlen].copy()
    else:  # lent until the rows are written to TUN
        lent = space.lend(count * size).reshape(count, size)
        plain = lent[:full, HEADER_IV : HEADER_IV + ptlen]
    return _deliver(sa, plain, bytes(last_pt))


def _deliver(sa: InboundEspSa, rows: Rows, last: bytes) -> PacketRows | list[bytes]:
    """The trailer and selector checks of authentic plaintexts, ``rows`` of one length
    then ``last``: vectorized where one pad length and next header hold for every row,
    else one by one (:meth:`InboundEspSa._accept`)."""
    full, ptlen = rows.shape
    pad = int(rows[0, ptlen - 2])
    next_header = int(rows[0, ptlen - 1])
    length = ptlen - 2 - pad
    regular = (
        next_header in (4, 41)
        and length >= (20 if next_header == 4 else 40)
        and (rows[:, ptlen - 2 :] == rows[0, ptlen - 2 :]).all()
        and (rows[:, length : ptlen - 2] == _PAD[:pad]).all()
    )
    if regular:
        key = slice(12, 20) if next_header == 4 else slice(8, 40)
        first = rows[0]
        regular = bool(
            (rows[:, 0] >> 4 == (4 if next_header == 4 else 6)).all()
            and (
                next_header == 41
                or (first[0] & 0x0F) * 4 <= length
                and (rows[:, 0] == first[0]).all()
            )
            and (rows[:, key] == first[key]).all()
        )
    if not regular:
        out: list[bytes] = []
        passed: bytes | None = None
        for plaintext in [*(row.tobytes() for row in rows), last]:
            passed = sa._accept(plaintext, out, passed, None)
        return out
    allowed = True
    passed = None
    if sa.src_selectors or sa.dst_selectors:  # one check for all: one pair of addresses
        verdict = sa._selectors_allow(rows[0, :length].tobytes(), next_header)
        if verdict is None:
            passed = rows[0, key].tobytes()
        else:
            sa.drops[verdict] += full
            allowed = False
    tail: list[bytes] = []
    sa._accept(last, tail, passed, None)
    if not allowed:
        return tail
    sa.packets += full
    sa.bytes += full * length
    return PacketRows(rows, length, tail[0] if tail else None)
