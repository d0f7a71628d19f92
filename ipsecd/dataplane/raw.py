"""Raw IP sockets for ESP (protocol 50) and AH (51) directly over IP (RFC 7296 §2.23).

One socket per (local address, protocol), bound to the address, so it sees only the
packets for that address; it sends what the core built as whole IP packets
(``IP_HDRINCL`` / ``IPV6_HDRINCL``: AH's ICV covers the header, so the kernel must not
write one of its own).  The kernel here has no ESP or AH of its own (no XFRM crypto):
without a raw socket it answers these packets with ICMP "protocol unreachable" (IPv4)
or "parameter problem" (IPv6); with one bound, the packets are ours and it stays quiet.

Receiving: an IPv4 raw socket delivers the whole packet, header included.  An IPv6 raw
socket delivers what follows the IPv6 header (RFC 3542 §3): the packet is rebuilt from
the source address, the destination (``IPV6_PKTINFO``) and the hop limit
(``IPV6_HOPLIMIT``) with :func:`ipsecd.dataplane.rawip.reconstruct_ipv6`, which is exact
for packets without extension headers in front of ESP/AH; we chose that over an
``AF_PACKET`` socket, which would see every frame of every interface.

Sockets carry ``gateway.fwmark`` so their packets skip ``gateway.route_table``, where a
transport-mode peer's address is routed into the tunnel.
"""

from __future__ import annotations

import socket
import struct

from ipsecd.dataplane.rawip import reconstruct_ipv6
from ipsecd.oserrors import OSErrorAt

__all__ = ["RawSocket"]

IPV6_HDRINCL = getattr(socket, "IPV6_HDRINCL", 36)  # include/uapi/linux/in6.h, Linux >= 4.5
SO_MARK = getattr(socket, "SO_MARK", 36)
BUFFER_BYTES = 8 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_PKTINFO6 = struct.Struct("16sI")  # struct in6_pktinfo
_HOPLIMIT = struct.Struct("i")
_ANCILLARY = socket.CMSG_SPACE(_PKTINFO6.size) + socket.CMSG_SPACE(_HOPLIMIT.size)
NAMES = {50: "ESP", 51: "AH"}


class RawSocket:
    """A bound, non-blocking raw socket for ESP or AH on one local address."""

    def __init__(self, address: str, protocol: int, mark: int | None = None) -> None:
        """Open and bind; an OSError names the address and protocol."""
        self.family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.address = address
        self.protocol = protocol
        self.local = (address, protocol)
        where = f"{NAMES.get(protocol, protocol)} (IP protocol {protocol}) on {address}"
        try:
            self.sock = socket.socket(self.family, socket.SOCK_RAW, protocol)
        except OSError as exc:
            raise OSErrorAt(f"cannot open a raw socket for {where}", exc) from exc
        try:
            if self.family == socket.AF_INET:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            if mark is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
            self.sock.bind((address, 0))
        except OSError as exc:
            self.sock.close()
            raise OSErrorAt(f"cannot bind a raw socket for {where}", exc) from exc
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.send_errors = 0
        self._packed = socket.inet_pton(self.family, address)

    def recv_batch(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` whole IP packets (IPv6 ones rebuilt); never blocks."""
        if self.family == socket.AF_INET:
            return self._recv_ipv4(limit)
        return self._recv_ipv6(limit)

    def _recv_ipv4(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        recv = self.sock.recv
        for _ in range(limit):
            try:
                out.append(recv(65535))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
        return out

    def _recv_ipv6(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        recvmsg = self.sock.recvmsg
        for _ in range(limit):
            try:
                data, ancillary, _flags, addr = recvmsg(65535, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            destination, hop_limit = self._packed, 0
            for level, kind, cdata in ancillary:
                if level != socket.IPPROTO_IPV6:
                    continue
                if kind == socket.IPV6_PKTINFO and len(cdata) >= _PKTINFO6.size:
                    destination = _PKTINFO6.unpack_from(cdata)[0]
                elif kind == socket.IPV6_HOPLIMIT and len(cdata) >= _HOPLIMIT.size:
                    hop_limit = _HOPLIMIT.unpack_from(cdata)[0]
            source = socket.inet_pton(socket.AF_INET6, addr[0].split("%")[0])
            try:
                out.append(reconstruct_ipv6(data, source, destination, self.protocol, hop_limit))
            except ValueError:
                continue
        return out

    def send_batch(self, packets: list[bytes], remote: str) -> None:
        """Send whole IP packets to ``remote``; a failure is counted, never raised."""
        sendto = self.sock.sendto
        destination = (remote, 0)
        for packet in packets:
            try:
                sendto(packet, destination)
            except OSError:
                self.send_errors += 1

    def close(self) -> None:
        self.sock.close()
