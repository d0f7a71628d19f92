"""SelectorIndex against a brute-force scan, and the CIDR tiling it files ranges by."""

from __future__ import annotations

import random

import pytest

from ipsecd.dataplane.selector_index import SelectorIndex, cidr_blocks


@pytest.mark.parametrize("bits", [8, 32, 128])
def test_cidr_blocks_tile_the_range_exactly(bits: int) -> None:
    rng = random.Random(bits)
    top = (1 << bits) - 1
    cases = [(0, top), (0, 0), (top, top), (1, top - 1)]
    cases += [tuple(sorted((rng.randint(0, top), rng.randint(0, top)))) for _ in range(300)]
    for start, end in cases:
        at = start
        blocks = list(cidr_blocks(start, end, bits))
        for length, network in blocks:
            host = bits - length
            assert network << host == at  # contiguous, in order, and aligned
            at += 1 << host
        assert at == end + 1
        assert len(blocks) <= 2 * bits


def test_a_prefix_is_one_block() -> None:
    assert list(cidr_blocks(0x0A020000, 0x0A02FFFF, 32)) == [(16, 0x0A02)]
    assert list(cidr_blocks(0, (1 << 32) - 1, 32)) == [(0, 0)]


Pairs = dict[int, tuple[int, int, int, int, int, tuple[int, ...]]]


def brute(pairs: Pairs, v: int, s: int, d: int) -> int | None:
    hits = [
        (rank, key)
        for key, (ver, ls, le, rs, re, rank) in pairs.items()
        if ver == v and ls <= s <= le and rs <= d <= re
    ]
    return min(hits)[1] if hits else None


@pytest.mark.parametrize("seed", range(8))
def test_lookup_is_the_best_ranked_match_through_adds_and_removes(seed: int) -> None:
    """Random ranges (prefixes and arbitrary ranges, v4 and v6) in a small space, so
    that they overlap: every lookup equals the scan of all pairs for the lowest rank."""
    rng = random.Random(seed)
    index: SelectorIndex[int] = SelectorIndex()
    pairs: Pairs = {}

    def some_range(v: int) -> tuple[int, int]:
        base = 0 if v == 4 else 1 << 100  # v6 addresses beyond the v4 space
        if rng.random() < 0.5:
            length = rng.randint(0, 8)
            start = rng.randrange(0, 256, 1 << length)
            return base + start, base + start + (1 << length) - 1
        a, b = sorted((rng.randrange(256), rng.randrange(256)))
        return base + a, base + b

    for step in range(400):
        if pairs and rng.random() < 0.35:
            key = rng.choice(list(pairs))
            *_, rank = pairs.pop(key)
            index.remove(rank, key)
        else:
            v = rng.choice((4, 6))
            (ls, le), (rs, re) = some_range(v), some_range(v)
            rank = (re - rs, le - ls, -step)
            pairs[step] = (v, ls, le, rs, re, rank)
            index.add(v, (ls, le), (rs, re), rank, step)
        assert len(index) == len(pairs)
        for _ in range(10):
            v = rng.choice((4, 6))
            base = 0 if v == 4 else 1 << 100
            s, d = base + rng.randrange(256), base + rng.randrange(256)
            assert index.lookup(v, s, d) == brute(pairs, v, s, d)


def test_removing_everything_leaves_nothing_behind() -> None:
    index: SelectorIndex[str] = SelectorIndex()
    index.add(4, (0, 255), (10, 200), (1,), "a")
    index.add(4, (0, 255), (10, 200), (2,), "b")
    assert index.lookup(4, 5, 100) == "a"
    index.remove((1,), "a")
    assert index.lookup(4, 5, 100) == "b"
    index.remove((2,), "b")
    assert index.lookup(4, 5, 100) is None
    assert not index._buckets and not index._lengths[4] and not index._order[4]


def test_a_selector_prints_as_its_prefix_or_its_range() -> None:
    """str() of a selector: one prefix written from the integers (the status prints every
    configured selector), anything else as the range, as summarising it would say."""
    from ipsecd.selectors import TrafficSelector

    assert str(TrafficSelector.from_prefix("10.200.3.4/32")) == "10.200.3.4/32"
    assert str(TrafficSelector.from_prefix("0.0.0.0/0")) == "0.0.0.0/0"
    assert str(TrafficSelector.from_prefix("2001:db8::/32")) == "2001:db8::/32"
    assert str(TrafficSelector.from_prefix("::/0")) == "::/0"
    assert str(TrafficSelector.from_range("10.0.0.1", "10.0.0.6")) == "10.0.0.1..10.0.0.6"
    assert str(TrafficSelector(4, 10, 9)) == "0.0.0.10..0.0.0.9"  # ends before it starts
    assert TrafficSelector.from_prefix("10.1.0.0/16").prefix_length() == 16
    assert TrafficSelector.from_range("10.0.0.1", "10.0.0.2").prefix_length() is None
