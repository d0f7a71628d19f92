"""The TUN device: the kernel's side of the tunnel.

Opened with python-pytun (``TUNSETIFF`` on /dev/net/tun); pyroute2 (its asyncio API,
since the daemon's event loop is running) sets its addresses, MTU and routes.
Reads and writes are batch-shaped (``read_batch``/``write_batch``), as in
wireguard-go's ``tun.Device``.

With ``offload`` (the default) the device is opened with ``IFF_VNET_HDR`` and
``TUNSETOFFLOAD`` (checksum, TSO4, TSO6): one read returns a TCP super-segment
of up to 64 KiB, which :func:`~ipsecd.dataplane.offload.split_super_segment`
cuts into ordinary packets, and a burst written back is first merged per TCP
flow by :func:`~ipsecd.dataplane.offload.coalesce` so the kernel forwards a
few large packets instead of many small ones.  The rest of the daemon only
ever sees ordinary IP packets.  If the kernel refuses the offloads the
device works as a plain TUN.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Sequence

import pytun

from ipsecd.dataplane.offload import (
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    ToTun,
    TunRead,
    bulk,
    coalesce,
    parse_read,
)
from ipsecd.dataplane.rtnl import AsyncIPRoute, NetlinkError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# include/uapi/linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

# include/uapi/linux/if_link.h: no IPv6 link-local address is generated on the device.
IN6_ADDR_GEN_MODE_NONE = 1

MAX_READ = 65535 + VNET_HDR_LEN
READ_PACKET_LIMIT = 512  # stop a burst once this many packets are split out
# A first read shorter than this ends the burst: interactive traffic saves a system
# call per packet (epoll is level-triggered, so anything queued behind it still wakes us).
SMALL_READ = 512


_IPV6_NO_LINK_LOCAL = {
    "attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]
}


class TunDevice:
    """A layer-3 TUN device without packet information header (IFF_NO_PI)."""

    def __init__(self, name: str, offload: bool = True) -> None:
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
        try:
            device = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:  # python-pytun's error carries (errno, message)
            raise OSError(*exc.args) from exc
        fd = device.fileno()
        if offload:
            # Old kernel: keep the (all-zero) virtio header, lose only the speed-up.
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        # A persistent device of the same name (left by an earlier run or an operator's
        # `ip tuntap add`) is adopted; make it go away with us, as our own would.
        with contextlib.suppress(pytun.Error, OSError):
            device.persist(False)
        self._device = device
        self._io(fd, device.name, offload)
        self._ipr = AsyncIPRoute()
        self.index = 0
        # (prefix, table) -> None: an ordered set, looked up once per route change
        self._routes: dict[tuple[IpNetwork, int | None], None] = {}

    @classmethod
    def on_fd(cls, fd: int, offload: bool = True, name: str = "") -> TunDevice:
        """Packet I/O on a descriptor that is already open, with no device to configure:
        for tests and bench/hotpath.py (a socket pair stands in for /dev/net/tun)."""
        tun = cls.__new__(cls)
        tun._io(fd, name, offload)
        return tun

    def _io(self, fd: int, name: str, offload: bool) -> None:
        """The packet side of the device: descriptor, offloads, counters."""
        self.name = name
        self.fd = fd
        self.offload = offload
        os.set_blocking(fd, False)
        self.write_errors = 0
        self.read_errors = 0  # malformed virtio header / super-segment
        self.super_segments = 0  # reads that carried a TCP super-segment (TSO)
        self.gso_writes = 0  # writes that carried merged TCP segments

    # -- configuration (pyroute2) ---------------------------------------------------------
    async def configure(self, mtu: int, addresses: Iterable[IpInterface]) -> None:
        """Set MTU and addresses, then bring the link up, without an IPv6 link-local address.

        Left to itself the kernel gives the device a link-local address and sends router
        solicitations from it, into the tunnel (issue 14: counted as ``no_sa`` drops on an
        idle gateway).  ``addr_gen_mode none`` -- set over netlink, so it works where
        systemd's ProtectKernelTunables makes /proc/sys read-only -- means no link-local
        address, so no solicitations; routes through the device and addresses configured
        on it work as before.  It must be set while the link is down: an adopted device
        that is up is taken down first, which also drops its link-local address.
        """
        self.index = (await self._ipr.link_lookup(ifname=self.name))[0]
        await self._ipr.link("set", index=self.index, state="down")
        await self._ipr.link("set", index=self.index, mtu=mtu)
        try:
            await self._ipr.link("set", index=self.index, IFLA_AF_SPEC=_IPV6_NO_LINK_LOCAL)
        except NetlinkError as exc:  # no IPv6 here (ipv6.disable=1, or an MTU under 1280)
            if exc.code != errno.EAFNOSUPPORT:
                raise
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

    async def add_route(
        self, network: IpNetwork, table: int | None = None, source: str | None = None
    ) -> None:
        """Route ``network`` into the tunnel (in ``table``, default main; ``source``: the
        preferred source address); replaces an existing route to the same prefix."""
        family = 2 if network.version == 4 else 10
        extra: dict[str, object] = {}
        if table is not None:
            extra["table"] = table
        if source is not None:
            extra["prefsrc"] = source
        await self._ipr.route(
            "replace",
            dst=str(network.network_address),
            dst_len=network.prefixlen,
            oif=self.index,
            family=family,
            **extra,
        )
        self._routes[(network, table)] = None

    async def remove_route(self, network: IpNetwork, table: int | None = None) -> None:
        family = 2 if network.version == 4 else 10
        with contextlib.suppress(Exception):  # already gone (the link went down first)
            await self._ipr.route(
                "del",
                dst=str(network.network_address),
                dst_len=network.prefixlen,
                oif=self.index,
                family=family,
                **({"table": table} if table is not None else {}),
            )
        self._routes.pop((network, table), None)

    @property
    def routes(self) -> list[IpNetwork]:
        return [network for network, _ in self._routes]

    # -- packets -------------------------------------------------------------------------
    def read_batch(self, limit: int = 64, bufsize: int = MAX_READ) -> list[TunRead]:
        """Read up to ``limit`` times; never blocks.

        Ordinary IP packets come back, and TCP super-segments either cut into them or,
        where the bulk path is there to seal it whole (:func:`offload.bulk`), as one
        :class:`TcpSuperSegment`.
        """
        packets: list[TunRead] = []
        read = os.read
        fd = self.fd
        if not self.offload:
            for _ in range(limit):
                try:
                    packets.append(read(fd, bufsize))
                except BlockingIOError:
                    break
            return packets
        count = 0
        for _ in range(limit):
            try:
                data = read(fd, bufsize)
            except BlockingIOError:
                break
            if data[1] == 0 and data[0] == 0:  # no GSO, no checksum to complete
                packets.append(data[VNET_HDR_LEN:])
                if len(data) < SMALL_READ and not count:
                    break  # a lone small packet (a ping, say): no extra read for EAGAIN
                count += 1
                continue
            # A super-segment (GSO type set) is read through a view: no 64 KiB copy.
            packet = memoryview(data)[VNET_HDR_LEN:] if data[1] else data[VNET_HDR_LEN:]
            read_ = parse_read(data[:VNET_HDR_LEN], packet)
            if read_ is None:
                self.read_errors += 1
                continue
            if isinstance(read_, bytes):
                packets.append(read_)
                count += 1
                continue
            self.super_segments += 1
            count += read_.count
            if read_.count > 1 and bulk() is not None:
                packets.append(read_)
            else:
                packets.extend(read_.packets())
            if count >= READ_PACKET_LIMIT:
                break
        return packets

    def write_batch(self, packets: Sequence[ToTun]) -> None:
        """Write packets, in order; a packet the kernel refuses is counted, never raised.

        With offloads, consecutive segments of a TCP flow are merged into GSO writes:
        the bulk path's :class:`PacketRows` in one go (``coalesce_rows``), other
        packets one by one (:func:`coalesce`).
        """
        if not self.offload:
            write = os.write
            fd = self.fd
            for item in packets:
                for packet in [item] if isinstance(item, bytes) else item.packets():
                    try:
                        write(fd, packet)
                    except OSError:
                        self.write_errors += 1
            return
        if len(packets) == 1 and isinstance(packets[0], bytes):  # an idle tunnel's packet
            self._writev([[ZERO_VNET_HDR, packets[0]]])
            return
        pending: list[bytes] = []
        for item in packets:
            if isinstance(item, bytes):
                pending.append(item)
                continue
            if pending:
                self._writev(coalesce(pending))
                pending = []
            fast = bulk()
            writes = None if fast is None else fast.coalesce_rows(item)
            self._writev(coalesce(item.packets()) if writes is None else writes)
        if pending:
            self._writev(coalesce(pending))

    def _writev(self, writes: list[list[bytes | memoryview]]) -> None:
        writev = os.writev
        fd = self.fd
        for buffers in writes:
            if buffers[0] is not ZERO_VNET_HDR:
                self.gso_writes += 1
            try:
                writev(fd, buffers)
            except OSError:
                self.write_errors += 1

    async def close(self) -> None:
        """Remove our routes and the device (closing a non-persistent TUN deletes it)."""
        for network, table in list(self._routes):
            await self.remove_route(network, table)
        try:
            self._device.close()
        finally:
            self._ipr.close()
