"""The policy rule that keeps ipsecd's own packets out of its transport-mode routes.

Transport mode protects the gateway's own packets to the peer, so the peer's address is
routed into the TUN device; ipsecd's IKE and ESP/AH to that same address must still
leave on the real interface.  As strongSwan does with ``kernel-libipsec`` and
``socket-default.fwmark``, those routes live in a table of their own
(``gateway.route_table``) and one rule per address family consults it for every packet
but the marked ones::

    ip rule add not fwmark FWMARK lookup ROUTE_TABLE priority 4500

ipsecd's UDP and raw sockets carry ``gateway.fwmark`` (SO_MARK).  The rule is added
before the first route into the table, replacing one a crashed run left behind, and
removed at exit.
"""

from __future__ import annotations

import contextlib
import socket

from ipsecd.dataplane.rtnl import AsyncIPRoute

__all__ = ["RULE_PRIORITY", "BypassRule"]

RULE_PRIORITY = 4500  # before the main table (32766)
FIB_RULE_INVERT = 0x2  # include/uapi/linux/fib_rules.h: "not"


class BypassRule:
    """``not fwmark MARK lookup TABLE``, per IP version, while ipsecd runs."""

    def __init__(self, mark: int, table: int) -> None:
        self.mark = mark
        self.table = table
        self.versions: set[int] = set()
        self._ipr: AsyncIPRoute | None = None

    def _rule(self, version: int) -> dict[str, int]:
        return {
            "table": self.table,
            "priority": RULE_PRIORITY,
            "fwmark": self.mark,
            "fwmask": 0xFFFFFFFF,
            "flags": FIB_RULE_INVERT,
            "family": socket.AF_INET if version == 4 else socket.AF_INET6,
        }

    async def ensure(self, version: int) -> None:
        """The rule for IPv``version`` is in place (added once, a stale copy replaced)."""
        if version in self.versions:
            return
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
        rule = self._rule(version)
        with contextlib.suppress(Exception):  # no stale rule: nothing to delete
            await self._ipr.rule("del", **rule)
        await self._ipr.rule("add", **rule)
        self.versions.add(version)

    async def close(self) -> None:
        """Remove the rules this object added."""
        if self._ipr is None:
            return
        for version in sorted(self.versions):
            with contextlib.suppress(Exception):
                await self._ipr.rule("del", **self._rule(version))
        self.versions.clear()
        self._ipr.close()
        self._ipr = None
