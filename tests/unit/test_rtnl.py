"""ipsecd.dataplane.rtnl: the messages it hands pyroute2's netlink socket, byte for byte.

The expected bytes are the kernel's structures (rtnetlink.h, if_link.h, fib_rules.h) with
the attributes in the order sent.  That pyroute2's ``AsyncIPRoute`` and this module leave
the kernel in the same state for the daemon's calls was checked in namespaces
(bench/README.md, "Memory round 2"); tests/netns run them for real.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from ipsecd.dataplane import rtnl


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + bytes(-length % 4)


def _sent(monkeypatch: pytest.MonkeyPatch, call: Any) -> list[tuple[int, int, bytes]]:
    """(type, flags, body) of each message the call sends, encoded by pyroute2."""
    sent: list[tuple[int, int, bytes]] = []

    async def request(self: rtnl.AsyncIPRoute, msg: Any, kind: int, flags: int) -> None:
        msg["header"]["type"] = kind
        msg["header"]["flags"] = flags
        msg.encode()
        sent.append((kind, flags, bytes(msg.data[16:])))

    monkeypatch.setattr(rtnl.AsyncIPRoute, "_request", request)
    ipr = rtnl.AsyncIPRoute()
    try:
        asyncio.run(call(ipr))
    finally:
        ipr.close()
    return sent


def test_route_replace_in_a_table_with_a_source(monkeypatch: pytest.MonkeyPatch) -> None:
    async def call(ipr: rtnl.AsyncIPRoute) -> None:
        await ipr.route(
            "replace", dst="10.8.0.0", dst_len=16, oif=7, family=2, table=4242, prefsrc="10.9.0.1"
        )

    ((kind, flags, body),) = _sent(monkeypatch, call)
    assert (kind, flags) == (24, 0x400 | 0x100)  # RTM_NEWROUTE, create | replace
    # AF_INET, /16, table 252 (RT_TABLE_COMPAT: 4242 > 255), static, universe, unicast
    assert body == bytes([2, 16, 0, 0, 252, 4, 0, 1, 0, 0, 0, 0]) + b"".join(
        (
            _attr(15, struct.pack("=I", 4242)),  # RTA_TABLE
            _attr(1, bytes([10, 8, 0, 0])),  # RTA_DST
            _attr(4, struct.pack("=I", 7)),  # RTA_OIF
            _attr(7, bytes([10, 9, 0, 1])),  # RTA_PREFSRC
        )
    )


def test_route_delete_matches_any_scope_protocol_and_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def call(ipr: rtnl.AsyncIPRoute) -> None:
        await ipr.route("del", dst="fd03::", dst_len=64, oif=3, family=10)

    ((kind, flags, body),) = _sent(monkeypatch, call)
    assert (kind, flags) == (25, 0)  # RTM_DELROUTE
    assert body[:12] == bytes([10, 64, 0, 0, 254, 0, 255, 0, 0, 0, 0, 0])


def test_link_down_mtu_and_no_ipv6_link_local(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}

    async def call(ipr: rtnl.AsyncIPRoute) -> None:
        await ipr.link("set", index=5, state="down")
        await ipr.link("set", index=5, mtu=1400)
        await ipr.link("set", index=5, IFLA_AF_SPEC=spec)

    down, mtu, gen_mode = _sent(monkeypatch, call)
    assert down == (16, 0, struct.pack("=BxHiII", 0, 0, 5, 0, 1))  # flags 0, change IFF_UP
    assert mtu[2] == struct.pack("=BxHiII", 0, 0, 5, 0, 0) + _attr(4, struct.pack("=I", 1400))
    inet6 = _attr(8, b"\x01")  # IFLA_INET6_ADDR_GEN_MODE: none
    assert gen_mode[2][16:] == _attr(26, _attr(socket.AF_INET6, inet6))  # IFLA_AF_SPEC


def test_address_and_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    async def call(ipr: rtnl.AsyncIPRoute) -> None:
        await ipr.addr("replace", index=2, address="10.9.0.1", prefixlen=24)
        await ipr.rule(  # flags 2: FIB_RULE_INVERT ("not fwmark")
            "add", table=4242, priority=4500, fwmark=66, fwmask=0xFFFFFFFF, flags=2, family=10
        )

    address, rule = _sent(monkeypatch, call)
    assert address == (
        20,  # RTM_NEWADDR
        0x400 | 0x100,
        struct.pack("=BBBBI", 2, 24, 0, 0, 2)  # AF_INET /24 on link 2
        + _attr(2, bytes([10, 9, 0, 1]))  # IFA_LOCAL
        + _attr(1, bytes([10, 9, 0, 1])),  # IFA_ADDRESS
    )
    assert rule[:2] == (32, 0x400 | 0x200)  # RTM_NEWRULE, create | exclusive
    assert rule[2] == bytes([10, 0, 0, 0, 252, 0, 0, 1]) + struct.pack("=I", 2) + b"".join(
        (
            _attr(15, struct.pack("=I", 4242)),  # FRA_TABLE
            _attr(6, struct.pack("=I", 4500)),  # FRA_PRIORITY
            _attr(10, struct.pack("=I", 66)),  # FRA_FWMARK
            _attr(16, struct.pack("=I", 0xFFFFFFFF)),  # FRA_FWMASK
        )
    )


def test_calls_it_does_not_know_are_refused() -> None:
    ipr = rtnl.AsyncIPRoute()
    try:
        with pytest.raises(NotImplementedError):
            asyncio.run(
                ipr.route("replace", dst="10.7.0.0", dst_len=16, oif=2, family=2, gateway="x")
            )
        with pytest.raises(NotImplementedError):
            asyncio.run(ipr.link("add", index=2, kind="dummy"))
    finally:
        ipr.close()


def test_answers_are_parsed_as_the_four_message_classes() -> None:
    """pyroute2's socket refuses a second ``marshal`` quietly; without ours a dump's
    messages would have no fields (connected_routes: KeyError 'index')."""
    ipr = rtnl.AsyncIPRoute()
    try:
        marshal = ipr._sock.marshal
        assert isinstance(marshal, rtnl._Marshal)
        assert marshal.msg_map[16] is rtnl.ifinfmsg and marshal.msg_map[24] is rtnl.rtmsg
    finally:
        ipr.close()
