"""The TUN device: the kernel's side of the tunnel.

Wraps python-pytun for opening the device and pyroute2 (its asyncio API, since
the daemon's event loop is running) for its addresses, MTU and routes.  Reads
and writes are batch-shaped (``read_batch``/``write_batch``) so the packet loop
makes one Python call per burst even while each packet is still one system
call underneath (wireguard-go's ``tun.Device`` shape).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable

import pytun
from pyroute2 import AsyncIPRoute

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class TunDevice:
    """A layer-3 TUN device without packet information header (IFF_NO_PI)."""

    def __init__(self, name: str) -> None:
        self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        # A persistent device of the same name (left by an earlier run or an operator's
        # `ip tuntap add`) is adopted; make it go away with us, as our own would.
        with contextlib.suppress(Exception):
            self._dev.persist(False)
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        os.set_blocking(self.fd, False)
        self._ipr = AsyncIPRoute()
        self.index = 0
        self._routes: list[IpNetwork] = []
        self.write_errors = 0

    # -- configuration (pyroute2) ---------------------------------------------------------
    async def configure(self, mtu: int, addresses: Iterable[IpInterface]) -> None:
        """Set MTU and addresses, then bring the link up."""
        self.index = (await self._ipr.link_lookup(ifname=self.name))[0]
        await self._ipr.link("set", index=self.index, mtu=mtu)
        for iface in addresses:
            await self._ipr.addr(
                "replace",  # an adopted stale device may still carry the address
                index=self.index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
            )
        await self._ipr.link("set", index=self.index, state="up")

    async def set_mtu(self, mtu: int) -> None:
        await self._ipr.link("set", index=self.index, mtu=mtu)

    async def add_route(self, network: IpNetwork) -> None:
        """Route ``network`` into the tunnel; replaces an existing route to the same prefix."""
        family = 2 if network.version == 4 else 10
        await self._ipr.route(
            "replace",
            dst=str(network.network_address),
            dst_len=network.prefixlen,
            oif=self.index,
            family=family,
        )
        if network not in self._routes:
            self._routes.append(network)

    async def remove_route(self, network: IpNetwork) -> None:
        family = 2 if network.version == 4 else 10
        with contextlib.suppress(Exception):  # already gone (the link went down first)
            await self._ipr.route(
                "del",
                dst=str(network.network_address),
                dst_len=network.prefixlen,
                oif=self.index,
                family=family,
            )
        if network in self._routes:
            self._routes.remove(network)

    @property
    def routes(self) -> list[IpNetwork]:
        return list(self._routes)

    # -- packets -------------------------------------------------------------------------
    def read_batch(self, limit: int = 64, bufsize: int = 65535) -> list[bytes]:
        """Read up to ``limit`` packets that are ready; never blocks."""
        packets: list[bytes] = []
        read = os.read
        fd = self.fd
        for _ in range(limit):
            try:
                packets.append(read(fd, bufsize))
            except BlockingIOError:
                break
        return packets

    def write_batch(self, packets: Iterable[bytes]) -> None:
        """Write packets; a packet the kernel refuses is counted, never raised."""
        write = os.write
        fd = self.fd
        for packet in packets:
            try:
                write(fd, packet)
            except OSError:
                self.write_errors += 1

    async def close(self) -> None:
        """Remove our routes and the device (closing a non-persistent TUN deletes it)."""
        for network in list(self._routes):
            await self.remove_route(network)
        try:
            self._dev.close()
        finally:
            self._ipr.close()
