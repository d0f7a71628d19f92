"""ipsecd.dataplane.rtnetlink: the request bytes, the answers' parsing, the error path.

A fake socket records what is sent and answers as the kernel would.  The known answers
were checked against the kernel: the same calls through pyroute2's ``AsyncIPRoute`` and
through this module, in two namespaces, left identical ``ip -d link``, ``ip addr``,
``ip route show table all`` and ``ip rule`` output (bench/README.md, "Memory round 2").
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct

import pytest

from ipsecd.dataplane import rtnetlink
from ipsecd.dataplane.rtnetlink import AsyncIPRoute, NetlinkError, Rtnetlink, attr, attrs


def _message(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


class FakeSocket:
    """Answers each request with ``answers[seq]`` (default: an acknowledgement)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.answers: dict[int, bytes] = {}
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("=I", data, 8)[0]
        ack = _message(rtnetlink.NLMSG_ERROR, seq, struct.pack("=i", 0) + data[:16])
        self.pending.append(self.answers.get(seq, ack))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.pending.pop(0)

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSocket:
    sock = FakeSocket()
    monkeypatch.setattr(rtnetlink, "open_socket", lambda: sock)
    return sock


def test_route_replace_in_a_table_with_a_source(fake: FakeSocket) -> None:
    Rtnetlink().replace_route("10.8.0.0", 16, oif=7, table=4242, prefsrc="10.9.0.1")
    header, body = fake.sent[0][:16], fake.sent[0][16:]
    length, kind, flags, seq, _ = struct.unpack("=IHHII", header)
    assert (length, kind, seq) == (len(fake.sent[0]), rtnetlink.RTM_NEWROUTE, 1)
    assert flags == 0x1 | 0x4 | 0x400 | 0x100  # request, ack, create, replace
    # AF_INET, /16, table 252 (RT_TABLE_COMPAT: 4242 > 255), static, universe, unicast
    assert body[:12] == bytes([2, 16, 0, 0, 252, 4, 0, 1, 0, 0, 0, 0])
    assert dict(attrs(body[12:])) == {
        rtnetlink.RTA_TABLE: struct.pack("=I", 4242),
        rtnetlink.RTA_DST: bytes([10, 8, 0, 0]),
        rtnetlink.RTA_OIF: struct.pack("=I", 7),
        rtnetlink.RTA_PREFSRC: bytes([10, 9, 0, 1]),
    }


def test_route_delete_matches_any_scope_protocol_and_type(fake: FakeSocket) -> None:
    Rtnetlink().delete_route("fd03::", 64, oif=3)
    body = fake.sent[0][16:]
    assert struct.unpack_from("=H", fake.sent[0], 4)[0] == rtnetlink.RTM_DELROUTE
    assert body[:12] == bytes([10, 64, 0, 0, 254, 0, 255, 0, 0, 0, 0, 0])
    assert dict(attrs(body[12:]))[rtnetlink.RTA_DST] == ipaddress.ip_address("fd03::").packed


def test_link_set_down_mtu_and_no_ipv6_link_local(fake: FakeSocket) -> None:
    Rtnetlink().set_link(5, up=False, mtu=1400, ipv6_addr_gen_mode=1)
    body = fake.sent[0][16:]
    assert struct.unpack_from("=BxHiII", body) == (0, 0, 5, 0, 1)  # flags 0, change IFF_UP
    mtu = attr(rtnetlink.IFLA_MTU, struct.pack("=I", 1400))
    nested = attr(rtnetlink.IFLA_INET6_ADDR_GEN_MODE, b"\x01")  # 5 bytes, padded to 8
    spec = attr(rtnetlink.IFLA_AF_SPEC, attr(socket.AF_INET6, nested))
    assert body[16:] == mtu + spec
    assert len(spec) == 4 + 4 + 8


def test_async_calls_as_tun_and_bypass_make_them(fake: FakeSocket) -> None:
    ipr = AsyncIPRoute()

    async def calls() -> None:
        await ipr.link("set", index=2, state="up")
        await ipr.addr("replace", index=2, address="10.9.0.1", prefixlen=24)
        await ipr.route("del", dst="10.7.0.0", dst_len=16, oif=2, family=2, table=200)
        await ipr.rule(  # flags 2: FIB_RULE_INVERT ("not fwmark")
            "add", table=4242, priority=4500, fwmark=66, fwmask=0xFFFFFFFF, flags=2, family=10
        )
        with pytest.raises(NotImplementedError):
            await ipr.route("replace", dst="10.7.0.0", dst_len=16, oif=2, family=2, gateway="x")

    asyncio.run(calls())
    kinds = [struct.unpack_from("=H", m, 4)[0] for m in fake.sent]
    assert kinds == [rtnetlink.RTM_NEWLINK, rtnetlink.RTM_NEWADDR, rtnetlink.RTM_DELROUTE, 32]
    assert struct.unpack_from("=BxHiII", fake.sent[0], 16) == (0, 0, 2, 1, 1)  # up
    address = fake.sent[1][16:]
    assert address[:8] == bytes([2, 24, 0, 0]) + struct.pack("=I", 2)
    rule = fake.sent[3][16:]
    assert rule[:12] == bytes([10, 0, 0, 0, 252, 0, 0, 1]) + struct.pack("=I", 2)
    assert dict(attrs(rule[12:]))[rtnetlink.FRA_FWMARK] == struct.pack("=I", 66)


def test_a_refusal_raises_netlink_error_with_the_errno(fake: FakeSocket) -> None:
    fake.answers[1] = _message(rtnetlink.NLMSG_ERROR, 1, struct.pack("=i", -errno.EEXIST))
    with pytest.raises(NetlinkError) as info:
        Rtnetlink().rule(True, socket.AF_INET, 4242, 4500, 66, 0xFFFFFFFF)
    assert info.value.code == errno.EEXIST
    assert isinstance(info.value, OSError)  # preflight's "no netlink" path catches OSError


def test_route_dump_parsed_and_filtered_by_table(fake: FakeSocket) -> None:
    def route(table: int, dst: bytes | None, oif: int, proto: int) -> bytes:
        body = bytes([2, 24, 0, 0, min(table, 252), proto, 253, 1, 0, 0, 0, 0])
        body += attr(rtnetlink.RTA_TABLE, struct.pack("=I", table))
        if dst is not None:
            body += attr(rtnetlink.RTA_DST, dst)
        body += attr(rtnetlink.RTA_OIF, struct.pack("=I", oif))
        body += attr(rtnetlink.RTA_PREFSRC, bytes([10, 1, 0, 1]))
        return _message(rtnetlink.RTM_NEWROUTE, 1, body, flags=2)

    fake.answers[1] = (
        route(254, bytes([10, 1, 0, 0]), 3, 2)
        + route(255, bytes([10, 1, 0, 1]), 3, 2)  # the local table: filtered out
        + _message(rtnetlink.NLMSG_DONE, 1, struct.pack("=i", 0))
    )
    (found,) = Rtnetlink().routes(table=254)
    assert found == rtnetlink.Route(
        family=2,
        table=254,
        proto=2,
        type=1,
        dst=ipaddress.ip_network("10.1.0.0/24"),
        gateway=None,
        oif=3,
        prefsrc="10.1.0.1",
    )
