"""Issue 14 item 4: the kernel's own link-scoped IPv6 on the TUN device is not a ``no_sa``.

Router solicitations from the device's link-local address and MLD reports from ``::``
say nothing about a tunnel being down; they are counted as ``ipv6_link_local`` and never
offered to an on-demand (trap) tunnel.  (The TUN device normally has no link-local
address at all: ``TunDevice.configure`` sets ``addr_gen_mode none``, see
tests/netns/test_tun_ipv6_quiet.py.)
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import SaDatabase
from ipsecd.esp.counters import DropReason


def ipv6_packet(src: str, dst: str, next_header: int = 58, payload: bytes = b"\x85" + 7 * b"\0"):
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, 255)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("fe80::c894:9a98:b65:a608", "ff02::2"),  # router solicitation (measured on a TUN)
        ("::", "ff02::16"),  # MLDv2 report before any address (addr_gen_mode none)
        ("2001:db8::1", "fe80::1"),  # to a link-local address
        ("2001:db8::1", "ff01::1"),  # interface-local multicast
    ],
)
def test_link_scoped_ipv6_is_counted_apart_and_never_trapped(src: str, dst: str) -> None:
    processor = PacketProcessor(SaDatabase())
    offered: list[bytes] = []
    processor.no_sa = lambda packet, *_: offered.append(packet) or True
    assert processor.from_tun([ipv6_packet(src, dst)]) == {}
    assert processor.drops[DropReason.IPV6_LINK_LOCAL] == 1
    assert processor.drops[DropReason.NO_SA] == 0
    assert offered == []


def test_global_ipv6_without_sa_is_still_no_sa() -> None:
    processor = PacketProcessor(SaDatabase())
    for dst in ("2001:db8:2::5", "ff05::2", "ff0e::1"):  # site/global-scope multicast too
        processor.from_tun([ipv6_packet("2001:db8:1::1", dst)])
    assert processor.drops[DropReason.NO_SA] == 3
    assert processor.drops[DropReason.IPV6_LINK_LOCAL] == 0
