"""The daemon's rtnetlink requests through pyroute2's netlink socket and messages.

The daemon sets its TUN device's state, MTU, IPv6 address generation and addresses, adds
and removes routes through it and one policy rule (``bypass.py``), and reads links,
addresses and routes once at start-up (``preflight.py``).  pyroute2's ``AsyncIPRoute`` and
``IPRoute`` do that, but importing them loads ``pyroute2.iproute``: 126 modules (every tc
qdisc and link kind, every request filter, ``unittest.mock``, ``argparse``), 5.1 MB of
an idle daemon (issue 17; bench/README.md, "Memory round 2").  The pieces they are built
on, the asyncio netlink socket (``pyroute2.netlink.nlsocket``) and the four message
classes used here, are 2.4 MB: pyroute2 still encodes and decodes every message and
raises its ``NetlinkError``; this module only says which message to send.

:class:`AsyncIPRoute` answers the calls ``tun.py`` and ``bypass.py`` make with the names
and keywords of pyroute2's (the same messages: checked in namespaces against pyroute2's
``AsyncIPRoute``, bench/README.md), so their import lines alone changed; anything else
raises ``NotImplementedError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from pyroute2.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket
from pyroute2.netlink.rtnl import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
)
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

__all__ = ["AsyncIPRoute", "NetlinkError", "dump"]

IFF_UP = 0x1  # include/uapi/linux/if.h
RT_TABLE_COMPAT, RT_TABLE_MAIN = 252, 254  # include/uapi/linux/rtnetlink.h
RTPROT_STATIC = 4  # what pyroute2's route() sends
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNSPEC, RTN_UNICAST = 0, 1
FR_ACT_TO_TBL = 1  # include/uapi/linux/fib_rules.h


class _Marshal(Marshal):  # type: ignore[misc]  # pyroute2 has no types
    """Answers parsed as the four message classes the daemon sends (pyroute2's
    ``MarshalRtnl`` knows them all, and imports every tc module for it)."""

    msg_map = {
        RTM_NEWLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_NEWROUTE: rtmsg,
        RTM_NEWRULE: fibmsg,
    }


class _RouteSocket(AsyncNetlinkSocket):  # type: ignore[misc]  # pyroute2 has no types
    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE)
        # pyroute2's own way to change it (the attribute refuses a second value; 0.9.1,
        # the lowest version we allow, has no marshal_class to set instead)
        self.set_marshal(_Marshal())


def _short_table(table: int) -> int:
    """The header's 8-bit table: RT_TABLE_COMPAT when RTA_TABLE holds a larger one."""
    return table if table < 256 else RT_TABLE_COMPAT


class AsyncIPRoute:
    """The subset of pyroute2's ``AsyncIPRoute`` that ``tun.py`` and ``bypass.py`` call."""

    def __init__(self) -> None:
        self._sock = _RouteSocket()

    def close(self) -> None:
        self._sock.close()

    async def _request(self, msg: Any, kind: int, flags: int) -> None:
        """Send with NLM_F_ACK and wait for the answer; pyroute2 raises NetlinkError."""
        answers = await self._sock.nlm_request(
            msg, msg_type=kind, msg_flags=NLM_F_REQUEST | NLM_F_ACK | flags
        )
        async for _ in answers:
            pass

    async def dump(self, msg: Any, kind: int) -> list[Any]:
        answers = await self._sock.nlm_request(
            msg, msg_type=kind, msg_flags=NLM_F_REQUEST | NLM_F_DUMP
        )
        return [answer async for answer in answers]

    async def link_lookup(self, *, ifname: str) -> list[int]:
        try:
            return [socket.if_nametoindex(ifname)]
        except OSError:
            return []

    async def link(self, command: str, *, index: int, **kwargs: Any) -> None:
        if command != "set" or not set(kwargs) <= {"state", "mtu", "IFLA_AF_SPEC"}:
            raise NotImplementedError(f"link {command} {sorted(kwargs)}")
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        if "state" in kwargs:
            msg["flags"] = IFF_UP if kwargs["state"] == "up" else 0
            msg["change"] = IFF_UP
        msg["attrs"] = [
            (name, kwargs[key])
            for key, name in (("mtu", "IFLA_MTU"), ("IFLA_AF_SPEC", "IFLA_AF_SPEC"))
            if key in kwargs
        ]
        await self._request(msg, RTM_NEWLINK, 0)

    async def addr(self, command: str, *, index: int, address: str, prefixlen: int) -> None:
        if command != "replace":
            raise NotImplementedError(f"addr {command}")
        msg = ifaddrmsg()
        version = ipaddress.ip_address(address).version
        msg["family"] = socket.AF_INET if version == 4 else socket.AF_INET6
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        await self._request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)

    async def route(
        self, command: str, *, dst: str, dst_len: int, oif: int, family: int, **kwargs: Any
    ) -> None:
        table = RT_TABLE_MAIN if kwargs.get("table") is None else int(kwargs["table"])
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst_len
        msg["table"] = _short_table(table)
        attrs: list[tuple[str, Any]] = [("RTA_TABLE", table), ("RTA_DST", dst), ("RTA_OIF", oif)]
        if command == "replace" and set(kwargs) <= {"table", "prefsrc"}:
            msg["proto"], msg["scope"], msg["type"] = RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST
            if kwargs.get("prefsrc") is not None:
                attrs.append(("RTA_PREFSRC", kwargs["prefsrc"]))
            msg["attrs"] = attrs
            await self._request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)
        elif command == "del" and set(kwargs) <= {"table"}:
            # whatever its protocol, scope and type (iproute2's `ip route del`)
            msg["proto"], msg["scope"], msg["type"] = 0, RT_SCOPE_NOWHERE, RTN_UNSPEC
            msg["attrs"] = attrs
            await self._request(msg, RTM_DELROUTE, 0)
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
        msg = fibmsg()
        msg["family"] = family
        msg["table"] = _short_table(table)
        msg["action"] = FR_ACT_TO_TBL
        msg["flags"] = flags
        msg["attrs"] = [
            ("FRA_TABLE", table),
            ("FRA_PRIORITY", priority),
            ("FRA_FWMARK", fwmark),
            ("FRA_FWMASK", fwmask),
        ]
        if command == "add":
            await self._request(msg, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL)
        else:
            await self._request(msg, RTM_DELRULE, 0)


def dump() -> tuple[list[Any], list[Any], list[Any]]:
    """Every link, address and route (pyroute2 messages: ``msg["index"]``,
    ``msg.get("IFLA_IFNAME")``), for the start-up checks; before the daemon's event
    loop runs.  Raises pyroute2's NetlinkError or OSError."""

    async def read() -> tuple[list[Any], list[Any], list[Any]]:
        ipr = AsyncIPRoute()
        try:
            links = await ipr.dump(ifinfmsg(), RTM_GETLINK)
            addresses = await ipr.dump(ifaddrmsg(), RTM_GETADDR)
            every_family = rtmsg()
            every_family["family"] = 255  # as pyroute2's get_routes(): AF_UNSPEC gives IPv4
            routes = await ipr.dump(every_family, RTM_GETROUTE)
            return links, addresses, routes
        finally:
            ipr.close()

    return asyncio.run(read())
