"""The anti-replay sliding window (RFC 4303 §3.4.3 and Appendix A).

The receiver keeps the highest authenticated sequence number ``top`` and a
bitmap of which of the ``size`` numbers ending at ``top`` have been seen
(bit *i* set = ``top - i`` received).  The bitmap is a Python int: shifting and
masking a 1024-bit int is cheap and needs no array bookkeeping.

Checking and updating are split on purpose (RFC 4303 §3.4.3): :meth:`check`
runs before the ICV is verified and must not change state, :meth:`update` runs
only once the ICV has verified, so a forged packet with a high sequence number
cannot move the window.

With Extended Sequence Numbers only the low 32 bits travel in the packet; the
receiver infers the high 32 bits from the window position (RFC 4303 Appendix
A2.2) and the ICV, which covers the high half, confirms the guess.
"""

from __future__ import annotations

DEFAULT_REPLAY_WINDOW = 1024
MIN_REPLAY_WINDOW = 1024  # project requirement (RFC 4303 §3.4.3 recommends >= 64)

_MASK32 = 0xFFFFFFFF
_2_32 = 1 << 32


class ReplayWindow:
    """Sliding receive window of ``size`` sequence numbers (RFC 4303 §3.4.3)."""

    __slots__ = ("size", "esn", "top", "_bitmap", "_mask")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW, esn: bool = False) -> None:
        if size < MIN_REPLAY_WINDOW:
            raise ValueError(f"replay window {size} is below the minimum {MIN_REPLAY_WINDOW}")
        self.size = size
        self.esn = esn
        self.top = 0  # highest authenticated sequence number (0 = nothing received yet)
        self._bitmap = 0
        self._mask = (1 << size) - 1

    def infer(self, seq_low: int) -> int:
        """The full sequence number for the 32 bits on the wire (RFC 4303 Appendix A2.2).

        Without ESN this is ``seq_low`` itself.  With ESN, the high half is
        chosen so the number lands in or right of the window; the result is
        negative when it would fall before the first sub-space (never valid).
        """
        if not self.esn:
            return seq_low
        top = self.top
        tl = top & _MASK32
        th = top >> 32
        w = self.size
        if tl >= w - 1:
            # Case A: the window lies within one sub-space.
            seq_high = th if seq_low >= tl - w + 1 else th + 1
        else:
            # Case B: the window spans two sub-spaces.
            seq_high = th - 1 if seq_low >= ((tl - w + 1) & _MASK32) else th
        return (seq_high << 32) | seq_low if seq_high >= 0 else -1

    def check(self, seq_low: int) -> int | None:
        """Full sequence number if the packet may be new, else None. No state change.

        RFC 4303 §3.4.3: reject 0 (never sent; numbering starts at 1), numbers
        left of the window and numbers already marked in the bitmap.
        """
        seq = self.infer(seq_low)
        if seq <= 0:
            return None
        top = self.top
        if seq > top:
            return seq
        offset = top - seq
        if offset >= self.size:
            return None
        if (self._bitmap >> offset) & 1:
            return None
        return seq

    def update(self, seq: int) -> None:
        """Mark an authenticated full sequence number as received (RFC 4303 §3.4.3).

        Call only after the ICV verified and with a number :meth:`check` returned.
        """
        top = self.top
        if seq > top:
            shift = seq - top
            if shift >= self.size:
                self._bitmap = 1
            else:
                self._bitmap = ((self._bitmap << shift) | 1) & self._mask
            self.top = seq
        else:
            self._bitmap |= 1 << (top - seq)

    def seen(self, seq: int) -> bool:
        """True if ``seq`` (full) is marked received or lies left of the window."""
        if seq > self.top:
            return False
        offset = self.top - seq
        return offset >= self.size or bool((self._bitmap >> offset) & 1)
