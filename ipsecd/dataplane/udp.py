"""UDP sockets for IKE (port 500) and ESP-in-UDP / NAT-T (port 4500, RFC 3948).

One non-blocking socket per (local address, port).  Batch-shaped like the TUN
device.  Receive buffers are raised with SO_RCVBUFFORCE where we are root:
strongSwan's libipsec loses packets at the default 208 KiB buffer, and inside
a namespace net.core.rmem_max cannot be raised.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

Address = tuple[str, int]

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
BUFFER_BYTES = 8 * 1024 * 1024


class UdpSocket:
    """A bound, non-blocking UDP socket."""

    def __init__(self, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for force, plain in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind((address, port))
        self.sock.setblocking(False)
        self.local: Address = (address, port)
        self.fd = self.sock.fileno()
        self.send_errors = 0

    def recv_batch(self, limit: int = 64, bufsize: int = 65535) -> list[tuple[bytes, Address]]:
        """Receive up to ``limit`` datagrams that are ready; never blocks."""
        out: list[tuple[bytes, Address]] = []
        recvfrom = self.sock.recvfrom
        for _ in range(limit):
            try:
                data, addr = recvfrom(bufsize)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                continue
            out.append((data, (addr[0], addr[1])))
        return out

    def send(self, data: bytes, remote: Address) -> None:
        try:
            self.sock.sendto(data, remote)
        except OSError:
            self.send_errors += 1

    def send_batch(self, datagrams: Iterable[bytes], remote: Address) -> None:
        sendto = self.sock.sendto
        for data in datagrams:
            try:
                sendto(data, remote)
            except OSError:
                self.send_errors += 1

    def close(self) -> None:
        self.sock.close()
