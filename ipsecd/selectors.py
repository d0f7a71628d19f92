"""Traffic selectors (RFC 7296 §3.13.1, RFC 4301 §4.4.1).

A selector is an address range, an IP protocol (0 = any) and a port range, as
carried in TSi/TSr payloads.  The config writes prefixes (``10.1.0.0/24``);
IKE narrows them to ranges; the data plane matches packets against them with
plain integer comparisons, which is why addresses are kept as ints.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

TS_IPV4_ADDR_RANGE = 7
TS_IPV6_ADDR_RANGE = 8


@dataclass(frozen=True, order=True, slots=True)
class TrafficSelector:
    """An inclusive address range with protocol and port range."""

    version: int  # 4 or 6
    start: int
    end: int
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_prefix(cls, text: str, protocol: int = 0) -> TrafficSelector:
        """Build from ``10.1.0.0/24`` or ``2001:db8::/64``; raises ValueError if not a prefix."""
        net = ipaddress.ip_network(text, strict=False)
        return cls(net.version, int(net.network_address), int(net.broadcast_address), protocol)

    @classmethod
    def from_range(cls, first: str, last: str, protocol: int = 0) -> TrafficSelector:
        a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
        if a.version != b.version:
            raise ValueError(f"range {first}-{last} mixes IPv4 and IPv6")
        return cls(a.version, int(a), int(b), protocol)

    @property
    def ts_type(self) -> int:
        return TS_IPV4_ADDR_RANGE if self.version == 4 else TS_IPV6_ADDR_RANGE

    @property
    def addr_len(self) -> int:
        return 4 if self.version == 4 else 16

    def first_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return (
            ipaddress.ip_address(self.start)
            if self.version == 4
            else ipaddress.IPv6Address(self.start)
        )

    def last_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return (
            ipaddress.ip_address(self.end) if self.version == 4 else ipaddress.IPv6Address(self.end)
        )

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The smallest list of prefixes covering the range (for routes)."""
        return list(ipaddress.summarize_address_range(self.first_address(), self.last_address()))

    def contains_address(self, version: int, addr: int) -> bool:
        return version == self.version and self.start <= addr <= self.end

    def contains(self, other: TrafficSelector) -> bool:
        return (
            self.version == other.version
            and self.start <= other.start
            and other.end <= self.end
            and (self.protocol == 0 or self.protocol == other.protocol)
            and self.start_port <= other.start_port
            and other.end_port <= self.end_port
        )

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The selector both sides allow (RFC 7296 §2.9 narrowing), or None."""
        if self.version != other.version:
            return None
        start, end = max(self.start, other.start), min(self.end, other.end)
        if start > end:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        protocol = self.protocol or other.protocol
        sport, eport = (
            max(self.start_port, other.start_port),
            min(self.end_port, other.end_port),
        )
        if sport > eport:
            return None
        return TrafficSelector(self.version, start, end, protocol, sport, eport)

    def __str__(self) -> str:
        return _text(self)

    def prefix_length(self) -> int | None:
        """The prefix length if the address range is one prefix (the usual case), else None."""
        size = self.end - self.start + 1
        if size <= 0 or size & (size - 1) or self.start & (size - 1):
            return None
        return (32 if self.version == 4 else 128) - (size.bit_length() - 1)

    def _format(self) -> str:
        # One prefix is written from the integers (summarising the range costs ten times
        # as much, and the status prints every configured selector of every peer); any
        # other range as first..last, also one that ends before it starts (a peer may send
        # it: it selects nothing, narrowing refuses it, the log line naming it must print).
        length = self.prefix_length()
        first = self.first_address()
        addr = f"{first}/{length}" if length is not None else f"{first}..{self.last_address()}"
        if self.protocol == 0 and self.start_port == 0 and self.end_port == 65535:
            return addr
        ports = (
            ""
            if self.start_port == 0 and self.end_port == 65535
            else f"/{self.start_port}"
            if self.start_port == self.end_port
            else f"/{self.start_port}-{self.end_port}"
        )
        return f"{addr}[{self.protocol}{ports}]"


@functools.lru_cache(maxsize=16384)
def _text(ts: TrafficSelector) -> str:
    """``str(ts)``, remembered: the status prints every peer's selectors on every request,
    and summarising a range into prefixes is most of a peer's status otherwise."""
    return ts._format()


def format_selectors(selectors: tuple[TrafficSelector, ...] | list[TrafficSelector]) -> str:
    return ", ".join(str(s) for s in selectors) or "(none)"


def uncovered(
    wanted: tuple[TrafficSelector, ...], got: tuple[TrafficSelector, ...]
) -> tuple[TrafficSelector, ...]:
    """The address ranges of ``wanted`` that no selector of ``got`` covers.

    What a narrowed CHILD_SA (RFC 7296 §2.9) leaves without SA.  A selector of ``got``
    limited to one protocol or port range covers none of its addresses for all traffic,
    so it takes nothing away.  Ranges of the result are whole-protocol selectors.
    """
    full = sorted(
        (g.version, g.start, g.end)
        for g in got
        if g.protocol == 0 and g.start_port == 0 and g.end_port == 65535 and g.start <= g.end
    )
    out: list[TrafficSelector] = []
    for w in wanted:
        start = w.start
        for version, lo, hi in full:
            if version != w.version or hi < start or lo > w.end:
                continue
            if lo > start:
                out.append(TrafficSelector(w.version, start, lo - 1))
            start = hi + 1
            if start > w.end:
                break
        if start <= w.end:
            out.append(TrafficSelector(w.version, start, w.end))
    return tuple(out)


def format_prefixes(selectors: tuple[TrafficSelector, ...]) -> str:
    """Address ranges as the prefixes that make them up: ``10.2.2.0/23, 10.2.4.0/22``."""
    return ", ".join(str(n) for s in selectors for n in s.networks()) or "(none)"
