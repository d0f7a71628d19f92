"""Anti-replay window (RFC 4303 §3.4.3, Appendix A) and its use by InboundEspSa."""

from __future__ import annotations

import os
import random

import pytest

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.esp.replay import DEFAULT_REPLAY_WINDOW, ReplayWindow
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa

W = DEFAULT_REPLAY_WINDOW


def accept(win: ReplayWindow, seq_low: int) -> int | None:
    """check() then update() as the SA does once the ICV verified."""
    seq = win.check(seq_low)
    if seq is not None:
        win.update(seq)
    return seq


def test_default_and_minimum_size() -> None:
    assert W == 1024
    assert ReplayWindow().size == 1024
    assert ReplayWindow(4096).size == 4096
    with pytest.raises(ValueError):
        ReplayWindow(64)


def test_zero_is_never_valid() -> None:
    win = ReplayWindow()
    assert win.check(0) is None
    win_esn = ReplayWindow(esn=True)
    assert win_esn.check(0) is None


def test_in_order_and_duplicates() -> None:
    win = ReplayWindow()
    for s in range(1, 2000):
        assert accept(win, s) == s
    for s in range(1999 - W + 1, 2000):
        assert win.check(s) is None  # duplicates
    assert win.top == 1999


def test_reordering_within_window_accepted_once() -> None:
    win = ReplayWindow()
    seqs = list(range(1, 3001))
    rnd = random.Random(7)
    # Shuffle in blocks smaller than the window: every packet stays in the window.
    out: list[int] = []
    for i in range(0, len(seqs), 500):
        block = seqs[i : i + 500]
        rnd.shuffle(block)
        out += block
    for s in out:
        assert accept(win, s) == s
    for s in out[-500:]:
        assert win.check(s) is None


def test_left_of_window_rejected_edge_exact() -> None:
    win = ReplayWindow()
    accept(win, 5000)
    assert win.check(5000 - W) is None  # just left of the window
    assert win.check(5000 - W + 1) == 5000 - W + 1  # leftmost slot, unseen
    assert accept(win, 5000 - W + 1) is not None
    assert win.check(5000 - W + 1) is None


def test_big_jump_clears_bitmap() -> None:
    win = ReplayWindow()
    accept(win, 10)
    accept(win, 10 + 10 * W)
    assert win.check(10) is None
    assert win.check(10 + 10 * W - 1) is not None


def test_check_does_not_change_state() -> None:
    win = ReplayWindow()
    accept(win, 100)
    for s in (101, 5000, 99, 2**31):
        assert win.check(s) == s
    assert win.top == 100
    assert win.check(101) == 101


def test_esn_inference_case_a_and_b() -> None:
    """RFC 4303 Appendix A2.2: both window placements, both outcomes each."""
    win = ReplayWindow(esn=True)
    # Case A: window inside one sub-space (Tl >= W-1).
    win.update((3 << 32) | 5000)
    assert win.infer(4000) == (3 << 32) | 4000  # inside window
    assert win.infer(6000) == (3 << 32) | 6000  # ahead
    assert win.infer(100) == (4 << 32) | 100  # below window bottom: next sub-space
    # Case B: window spans two sub-spaces (Tl < W-1).
    win2 = ReplayWindow(esn=True)
    win2.update((3 << 32) | 10)
    assert win2.infer(0xFFFFFFF0) == (2 << 32) | 0xFFFFFFF0  # left part, previous sub-space
    assert win2.infer(5) == (3 << 32) | 5
    assert win2.infer(70000) == (3 << 32) | 70000
    # First sub-space: no previous one, so such a number is rejected.
    fresh = ReplayWindow(esn=True)
    assert fresh.infer(0xFFFFFFF0) < 0
    assert fresh.check(0xFFFFFFF0) is None
    assert fresh.check(1) == 1


def test_esn_window_shifts_across_2_32() -> None:
    win = ReplayWindow(esn=True)
    start = (1 << 32) - 600
    win.update(start - 1)  # as after earlier traffic
    for s in range(start, start + 1200):
        assert accept(win, s & 0xFFFFFFFF) == s
    assert win.top == start + 1199
    assert win.top >> 32 == 1
    # Numbers just before the wrap are still in the window but already seen.
    assert win.check(0xFFFFFFFF) is None
    assert win.check(0xFFFFFF00) is None
    # One more than top in the new sub-space is new.
    assert win.check((start + 1200) & 0xFFFFFFFF) == start + 1200
    # Reordered across the boundary: skip some, receive them late.
    win2 = ReplayWindow(esn=True)
    win2.update((1 << 32) - 10)
    assert accept(win2, 5) == (1 << 32) + 5  # after the wrap first
    assert accept(win2, 0xFFFFFFFC) == (1 << 32) - 4  # late, before the wrap
    assert win2.check(0xFFFFFFFC) is None
    assert win2.top == (1 << 32) + 5


def test_no_esn_has_no_wrap() -> None:
    win = ReplayWindow(esn=False)
    accept(win, 0xFFFFFFFF)
    assert win.check(1) is None  # far left of the window, not "the next sub-space"


# --- window integrated with the ICV check --------------------------------------------


def make_pair(esn: bool, aead: bool = True) -> tuple[OutboundEspSa, InboundEspSa]:
    encr = ENCRYPTION["aes128gcm16" if aead else "aes128"]
    integ = None if aead else INTEGRITY["sha256"]
    keymat = os.urandom(encr.keymat_len)
    ik = os.urandom(32) if integ else b""
    return (
        OutboundEspSa(0x1001, encr, integ, keymat, ik, esn),
        InboundEspSa(0x1001, encr, integ, keymat, ik, esn),
    )


INNER = (
    bytes.fromhex("4500001c0000000040010000c0a80001c0a80002") + b"\x08\x00\x00\x00\x00\x00\x00\x00"
)


@pytest.mark.parametrize("aead", [True, False])
@pytest.mark.parametrize("esn", [False, True])
def test_forged_high_sequence_does_not_advance_window(esn: bool, aead: bool) -> None:
    out, inb = make_pair(esn, aead)
    first = out.encapsulate(INNER, 4)
    assert inb.decapsulate(first) is not None
    # An attacker takes a valid packet, rewrites the sequence number far ahead.
    forged = bytearray(out.encapsulate(INNER, 4))
    forged[4:8] = (0x7FFFFFFF).to_bytes(4, "big")
    assert inb.decapsulate(bytes(forged)) is None
    assert inb.drops["bad_icv"] == 1
    assert inb.replay.top == 1  # unchanged
    # Packets far below the forged number still get through.
    for _ in range(3):
        assert inb.decapsulate(out.encapsulate(INNER, 4)) is not None
    assert inb.replay.top == 5  # seq 2 (forged copy) never delivered


def test_sa_reorder_duplicate_and_old() -> None:
    out, inb = make_pair(esn=False)
    pkts = [out.encapsulate(INNER, 4) for _ in range(W + 10)]
    assert inb.decapsulate(pkts[-1]) is not None  # seq W+10 first
    assert inb.decapsulate(pkts[20]) is not None  # seq 21: in window
    assert inb.decapsulate(pkts[20]) is None  # duplicate
    assert inb.decapsulate(pkts[5]) is None  # seq 6 <= W+10-W: left of window
    assert inb.drops["replay"] == 2
    assert inb.packets == 2


def test_sa_esn_across_2_32() -> None:
    out, inb = make_pair(esn=True, aead=False)
    out.seq = (1 << 32) - 3
    inb.replay.update((1 << 32) - 3)
    pkts = [out.encapsulate(INNER, 4) for _ in range(6)]
    order = [2, 0, 1, 5, 3, 4]
    for i in order:
        assert inb.decapsulate(pkts[i]) == (4, INNER), inb.drops
    assert inb.replay.top == (1 << 32) + 3
    for p in pkts:
        assert inb.decapsulate(p) is None
    assert inb.drops["replay"] == 6
