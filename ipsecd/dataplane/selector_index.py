"""Selector pairs indexed by destination prefix: a lookup that does not grow with the pairs.

A packet's SA (or trap) is the best-ranked selector pair whose source and destination
ranges hold the packet's addresses.  Scanning every pair costs a 10 000-peer gateway
10 000 comparisons for each new flow; here each destination range is cut into the
CIDR blocks that tile it (a prefix is one block, an arbitrary range at most two per
bit) and filed under (version, prefix length, network).  A lookup asks one dict per
prefix length in use (a handful in practice) and walks each bucket, sorted by rank,
only as far as the first pair whose source range matches; the best of those wins.
Install and remove cost a bisection per block.  Sans-I/O and generic in the value.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
Rank = tuple[int, ...]  # unique per pair: the lower, the better
# (rank, source start, source end, value): a bucket's entries, sorted by rank.
_Entry = tuple[Rank, int, int, T]

BITS = {4: 32, 6: 128}


def cidr_blocks(start: int, end: int, bits: int) -> Iterator[tuple[int, int]]:
    """The (prefix length, network >> host bits) blocks that tile ``start..end``, largest
    aligned block first from the low end: at most two per bit (RFC 4632's aggregation
    in reverse)."""
    while start <= end:
        size = (start & -start) if start else 1 << bits  # the alignment of start
        while size > end - start + 1:
            size >>= 1
        host = size.bit_length() - 1
        yield bits - host, start >> host
        start += size


class SelectorIndex(Generic[T]):
    """Values filed under (version, source range, destination range) with a rank."""

    def __init__(self) -> None:
        # (version, prefix length, network) -> entries sorted by rank
        self._buckets: dict[tuple[int, int, int], list[_Entry[T]]] = {}
        # version -> {prefix length: blocks filed with it}, to know which lengths to ask
        self._lengths: dict[int, dict[int, int]] = {4: {}, 6: {}}
        self._order: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        self._keys: dict[tuple[Hashable, Rank], list[tuple[int, int, int]]] = {}

    def add(
        self, version: int, src: tuple[int, int], dst: tuple[int, int], rank: Rank, value: T
    ) -> None:
        """File ``value`` for the pair ``src`` -> ``dst`` (inclusive ranges) at ``rank``."""
        entry: _Entry[T] = (rank, src[0], src[1], value)
        keys = []
        lengths = self._lengths[version]
        for length, network in cidr_blocks(dst[0], dst[1], BITS[version]):
            key = (version, length, network)
            insort(self._buckets.setdefault(key, []), entry, key=lambda e: e[0])
            keys.append(key)
            if length not in lengths:
                lengths[length] = 0
                self._order[version] = tuple(sorted(lengths, reverse=True))
            lengths[length] += 1
        self._keys[(id(value), rank)] = keys

    def remove(self, rank: Rank, value: T) -> None:
        """Take out what :meth:`add` filed for ``value`` at ``rank``."""
        keys = self._keys.pop((id(value), rank), [])
        for key in keys:
            version, length, _ = key
            bucket = self._buckets[key]
            del bucket[bisect_left(bucket, rank, key=lambda e: e[0])]
            if not bucket:
                del self._buckets[key]
            lengths = self._lengths[version]
            lengths[length] -= 1
            if not lengths[length]:
                del lengths[length]
                self._order[version] = tuple(sorted(lengths, reverse=True))

    def lookup(self, version: int, src: int, dst: int) -> T | None:
        """The best-ranked value whose pair holds ``src`` -> ``dst``, or None."""
        buckets = self._buckets
        bits = BITS.get(version, 0)
        best: _Entry[T] | None = None
        for length in self._order.get(version, ()):
            bucket = buckets.get((version, length, dst >> (bits - length)))
            if bucket is None:
                continue
            for entry in bucket:
                if best is not None and entry[0] >= best[0]:
                    break
                if entry[1] <= src <= entry[2]:
                    best = entry
                    break
        return None if best is None else best[3]

    def __len__(self) -> int:
        return len(self._keys)
