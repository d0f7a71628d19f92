"""The few rtnetlink requests the daemon makes, over a plain ``AF_NETLINK`` socket.

The daemon sets its TUN device's MTU, state, IPv6 address generation and addresses,
adds and removes routes through it, adds and removes one policy rule (``bypass.py``), and
reads the main table's connected routes once at start-up (``preflight.py``).  pyroute2
did this, but importing its ``AsyncIPRoute`` or ``IPRoute`` loads some 190 modules
(every tc qdisc, link kind and request filter, ``unittest.mock``, ``multiprocessing``):
4 MB of an idle daemon's 47 (issue 17; bench/README.md, "Memory round 2").  The
messages are small fixed structures (``include/uapi/linux/rtnetlink.h``,
``if_link.h``, ``if_addr.h``, ``fib_rules.h``), so this module writes them with
:mod:`struct`.

:class:`AsyncIPRoute` keeps the names and keywords of the pyroute2 calls that
``tun.py`` and ``bypass.py`` make, so that swapping it in changed their import lines
only.  Its methods are ``async`` for the same reason; they do not wait on the event
loop: the kernel has handled an rtnetlink request, and queued its answer, when
``send`` returns.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AsyncIPRoute",
    "Link",
    "NetlinkError",
    "Route",
    "Rtnetlink",
]

# include/uapi/linux/netlink.h
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")  # rtattr/nlattr: length, type
NLA_F_NESTED = 0x8000

# include/uapi/linux/rtnetlink.h
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE = 32, 33
RT_TABLE_COMPAT, RT_TABLE_MAIN = 252, 254
RTPROT_STATIC = 4  # what pyroute2 sent (iproute2 sends RTPROT_BOOT)
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNSPEC, RTN_UNICAST = 0, 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
# rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")

# include/uapi/linux/if_link.h, if.h
IFF_UP = 0x1
IFLA_IFNAME, IFLA_MTU, IFLA_AF_SPEC = 3, 4, 26
IFLA_INET6_ADDR_GEN_MODE = 8
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change

# include/uapi/linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL = 1, 2
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index

# include/uapi/linux/fib_rules.h
FR_ACT_TO_TBL = 1
FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 6, 10, 15, 16
# fib_rule_hdr: family, dst_len, src_len, tos, table, 2 reserved, action, flags
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")

_U32 = struct.Struct("=I")
_ALIGN = 4


class NetlinkError(OSError):
    """The kernel refused a request: ``code`` is the errno (``errno`` too)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message or os.strerror(code))
        self.code = code


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface, from an ``RTM_GETLINK`` dump."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class Address:
    """An interface address, from an ``RTM_GETADDR`` dump."""

    index: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Route:
    """A route, from an ``RTM_GETROUTE`` dump (``dst`` None: a default route)."""

    family: int
    table: int
    proto: int
    type: int
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    gateway: str | None
    oif: int | None
    prefsrc: str | None


def _pad(length: int) -> int:
    return (length + _ALIGN - 1) & ~(_ALIGN - 1)


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + bytes(_pad(length) - length)


def attrs(data: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """The (type, value) pairs of a run of attributes (the nested flag cleared)."""
    view = memoryview(data)
    offset = 0
    while offset + _ATTR.size <= len(view):
        length, kind = _ATTR.unpack_from(view, offset)
        if length < _ATTR.size:
            break
        yield kind & ~NLA_F_NESTED, bytes(view[offset + _ATTR.size : offset + length])
        offset += _pad(length)


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _family(text: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(text).version == 4 else socket.AF_INET6


def open_socket() -> socket.socket:
    """A bound ``NETLINK_ROUTE`` socket (the kernel picks the port id)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.bind((0, 0))
    return sock


class Rtnetlink:
    """One ``NETLINK_ROUTE`` socket; each request waits for the kernel's answer."""

    def __init__(self) -> None:
        self._sock = open_socket()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        header = _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def _answers(self, seq: int) -> Iterator[tuple[int, memoryview]]:
        """The (type, body) of each message answering request ``seq``, up to its end;
        raises :class:`NetlinkError` for an error answer."""
        while True:
            data = memoryview(self._sock.recv(1 << 16))
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, got_seq, _port = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EBADMSG, "truncated netlink message")
                body = data[offset + _HEADER.size : offset + length]
                offset += _pad(length)
                if got_seq != seq:
                    continue  # an answer to an earlier request that was given up on
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body)
                    if code:
                        raise NetlinkError(-code)
                    return  # the acknowledgement
                if kind == NLMSG_DONE:
                    return
                yield kind, body

    def request(self, kind: int, flags: int, body: bytes) -> None:
        """Send one request with ``NLM_F_ACK``; raises :class:`NetlinkError` if refused."""
        for _ in self._answers(self._send(kind, flags | NLM_F_ACK, body)):
            pass

    def dump(self, kind: int, body: bytes) -> Iterator[memoryview]:
        """The bodies of an ``NLM_F_DUMP`` answer."""
        for _, message in self._answers(self._send(kind, NLM_F_DUMP, body)):
            yield message

    # -- requests ----------------------------------------------------------------------------
    def set_link(
        self,
        index: int,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        ipv6_addr_gen_mode: int | None = None,
    ) -> None:
        """Change link ``index``: state, MTU, IPv6 address generation (``ip link set``)."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)
        if mtu is not None:
            body += attr(IFLA_MTU, _U32.pack(mtu))
        if ipv6_addr_gen_mode is not None:
            inet6 = attr(IFLA_INET6_ADDR_GEN_MODE, bytes([ipv6_addr_gen_mode]))
            body += attr(IFLA_AF_SPEC, attr(socket.AF_INET6, inet6))
        self.request(RTM_NEWLINK, 0, body)

    def replace_address(self, index: int, address: str, prefixlen: int) -> None:
        """``ip address replace ADDRESS/PREFIXLEN dev INDEX``."""
        packed = _ip(address)
        body = _IFADDRMSG.pack(_family(address), prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)

    def _route(
        self, dst: str, dst_len: int, oif: int, table: int, prefsrc: str | None, delete: bool
    ) -> bytes:
        scope, proto, kind = (
            (RT_SCOPE_NOWHERE, 0, RTN_UNSPEC)  # delete: whatever scope, protocol and type
            if delete
            else (RT_SCOPE_UNIVERSE, RTPROT_STATIC, RTN_UNICAST)
        )
        short_table = table if table < 256 else RT_TABLE_COMPAT
        body = _RTMSG.pack(_family(dst), dst_len, 0, 0, short_table, proto, scope, kind, 0)
        body += attr(RTA_TABLE, _U32.pack(table)) + attr(RTA_DST, _ip(dst))
        body += attr(RTA_OIF, _U32.pack(oif))
        if prefsrc is not None:
            body += attr(RTA_PREFSRC, _ip(prefsrc))
        return body

    def replace_route(
        self,
        dst: str,
        dst_len: int,
        oif: int,
        table: int = RT_TABLE_MAIN,
        prefsrc: str | None = None,
    ) -> None:
        """``ip route replace DST/DST_LEN dev OIF [table TABLE] [src PREFSRC]``."""
        body = self._route(dst, dst_len, oif, table, prefsrc, delete=False)
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)

    def delete_route(self, dst: str, dst_len: int, oif: int, table: int = RT_TABLE_MAIN) -> None:
        """``ip route del DST/DST_LEN dev OIF [table TABLE]``."""
        self.request(RTM_DELROUTE, 0, self._route(dst, dst_len, oif, table, None, delete=True))

    def rule(
        self,
        add: bool,
        family: int,
        table: int,
        priority: int,
        fwmark: int,
        fwmask: int,
        flags: int = 0,
    ) -> None:
        """``ip rule add|del [not] fwmark MARK/MASK lookup TABLE priority PRIORITY``."""
        short_table = table if table < 256 else RT_TABLE_COMPAT
        body = _FIB_RULE_HDR.pack(family, 0, 0, 0, short_table, 0, 0, FR_ACT_TO_TBL, flags)
        body += attr(FRA_TABLE, _U32.pack(table)) + attr(FRA_PRIORITY, _U32.pack(priority))
        body += attr(FRA_FWMARK, _U32.pack(fwmark)) + attr(FRA_FWMASK, _U32.pack(fwmask))
        if add:
            self.request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, body)
        else:
            self.request(RTM_DELRULE, 0, body)

    # -- dumps -------------------------------------------------------------------------------
    def links(self) -> list[Link]:
        found = []
        for body in self.dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            _family_, _type, index, _flags, _change = _IFINFOMSG.unpack_from(body)
            for kind, value in attrs(body[_IFINFOMSG.size :]):
                if kind == IFLA_IFNAME:
                    found.append(Link(index, value.rstrip(b"\0").decode(errors="replace")))
        return found

    def addresses(self) -> list[Address]:
        found = []
        for body in self.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            _family_, _prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
            for kind, value in attrs(body[_IFADDRMSG.size :]):
                if kind == IFA_ADDRESS:
                    found.append(Address(index, ipaddress.ip_address(value)))
        return found

    def routes(self, table: int | None = None) -> list[Route]:
        """The routes of every family (of ``table`` only, if given)."""
        found = []
        request = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        for body in self.dump(RTM_GETROUTE, request):
            family, dst_len, _src_len, _tos, short_table, proto, _scope, kind, _flags = (
                _RTMSG.unpack_from(body)
            )
            fields: dict[int, bytes] = dict(attrs(body[_RTMSG.size :]))
            route_table = _U32.unpack(fields[RTA_TABLE])[0] if RTA_TABLE in fields else short_table
            if table is not None and route_table != table:
                continue
            dst = fields.get(RTA_DST)
            gateway, prefsrc, oif = (
                fields.get(RTA_GATEWAY),
                fields.get(RTA_PREFSRC),
                fields.get(RTA_OIF),
            )
            found.append(
                Route(
                    family=family,
                    table=route_table,
                    proto=proto,
                    type=kind,
                    dst=None
                    if dst is None
                    else ipaddress.ip_network((ipaddress.ip_address(dst), dst_len)),
                    gateway=None if gateway is None else str(ipaddress.ip_address(gateway)),
                    oif=None if oif is None else _U32.unpack(oif)[0],
                    prefsrc=None if prefsrc is None else str(ipaddress.ip_address(prefsrc)),
                )
            )
        return found


def _table(kwargs: dict[str, Any]) -> int:
    table = kwargs.get("table")
    return RT_TABLE_MAIN if table is None else int(table)


class AsyncIPRoute:
    """The subset of pyroute2's ``AsyncIPRoute`` that ``tun.py`` and ``bypass.py`` call,
    with the same names and keywords; anything else raises ``NotImplementedError``."""

    def __init__(self) -> None:
        self._rtnl = Rtnetlink()

    def close(self) -> None:
        self._rtnl.close()

    async def link_lookup(self, *, ifname: str) -> list[int]:
        try:
            return [socket.if_nametoindex(ifname)]
        except OSError:
            return []

    async def link(self, command: str, *, index: int, **kwargs: Any) -> None:
        if command != "set" or not set(kwargs) <= {"state", "mtu", "IFLA_AF_SPEC"}:
            raise NotImplementedError(f"link {command} {sorted(kwargs)}")
        mode = None
        if "IFLA_AF_SPEC" in kwargs:  # {"attrs": [["AF_INET6", {"attrs": [[NAME, MODE]]}]]}
            ((family, inet6),) = kwargs["IFLA_AF_SPEC"]["attrs"]
            ((name, mode),) = inet6["attrs"]
            if (family, name) != ("AF_INET6", "IFLA_INET6_ADDR_GEN_MODE"):
                raise NotImplementedError(f"IFLA_AF_SPEC {family} {name}")
        state = kwargs.get("state")
        self._rtnl.set_link(
            index,
            up=None if state is None else state == "up",
            mtu=kwargs.get("mtu"),
            ipv6_addr_gen_mode=mode,
        )

    async def addr(self, command: str, *, index: int, address: str, prefixlen: int) -> None:
        if command != "replace":
            raise NotImplementedError(f"addr {command}")
        self._rtnl.replace_address(index, address, prefixlen)

    async def route(
        self, command: str, *, dst: str, dst_len: int, oif: int, family: int, **kwargs: Any
    ) -> None:
        if command == "replace" and set(kwargs) <= {"table", "prefsrc"}:
            self._rtnl.replace_route(dst, dst_len, oif, _table(kwargs), kwargs.get("prefsrc"))
        elif command == "del" and set(kwargs) <= {"table"}:
            self._rtnl.delete_route(dst, dst_len, oif, _table(kwargs))
        else:
            raise NotImplementedError(f"route {command} {sorted(kwargs)}")

    async def rule(
        self,
        command: str,
        *,
        table: int,
        priority: int,
        fwmark: int,
        fwmask: int,
        flags: int,
        family: int,
    ) -> None:
        if command not in ("add", "del"):
            raise NotImplementedError(f"rule {command}")
        self._rtnl.rule(command == "add", family, table, priority, fwmark, fwmask, flags)
