"""UDP sockets for IKE (port 500) and ESP-in-UDP / NAT-T (port 4500, RFC 3948).

One non-blocking socket per (local address, port).  Batch-shaped like the TUN
device.  Receive buffers are raised with SO_RCVBUFFORCE where we are root:
strongSwan's libipsec loses packets at the default 208 KiB buffer, and inside
a namespace net.core.rmem_max cannot be raised.

Where the kernel allows it (Linux >= 5.0) the socket uses UDP GSO and GRO: a
run of equal-sized ESP datagrams to one peer leaves in one ``sendmsg`` with a
``UDP_SEGMENT`` control message (the kernel cuts it), and ``UDP_GRO`` lets one
``recvmsg`` return a run of datagrams glued together with their size in a
control message.  The framing is done by the pure helpers :func:`gso_runs` and
:func:`split_gro`; a kernel that refuses either is used without it.
"""

from __future__ import annotations

import errno
import mmap
import socket
import struct
from collections.abc import Iterable, Sequence

from ipsecd.addresses import format_address
from ipsecd.dataplane.offload import bulk
from ipsecd.dataplane.sockfilter import steer_non_esp
from ipsecd.esp.udp_encap import DatagramRun
from ipsecd.oserrors import OSErrorAt

Address = tuple[str, int]
Received = bytes | memoryview | DatagramRun  # a datagram, or a GRO run of them

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_MARK = getattr(socket, "SO_MARK", 36)
BUFFER_BYTES = 8 * 1024 * 1024
SOL_UDP = 17
UDP_SEGMENT = 103  # include/uapi/linux/udp.h
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel
GSO_MAX_BYTES = 65000  # stays below the 65507-byte UDP payload limit of IPv4
GRO_BUFFER = 1 << 17
# A first receive this small and not coalesced is taken as the whole burst: the loop's
# level-triggered poll calls again if more is queued (saves a failing receive per ping).
SMALL_RECEIVE = 512
_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size)
# The kernel refused a GSO send for a reason that will not go away: stop using it.
_GSO_FATAL = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


def gso_runs(
    datagrams: Sequence[bytes],
    max_segments: int = GSO_MAX_SEGMENTS,
    max_bytes: int = GSO_MAX_BYTES,
) -> list[tuple[int, list[bytes]]]:
    """Cut a burst into runs that one UDP_SEGMENT send can carry, order kept.

    A run is ``(segment size, datagrams)``: all datagrams of the segment size
    except possibly a shorter last one (what the kernel's UDP GSO produces),
    at most ``max_segments`` of them and ``max_bytes`` in all.
    """
    runs: list[tuple[int, list[bytes]]] = []
    size = 0
    run: list[bytes] = []
    total = 0
    for data in datagrams:
        n = len(data)
        if run and n <= size and len(run) < max_segments and total + n <= max_bytes:
            run.append(data)
            total += n
            if n < size:  # a short one ends the run
                runs.append((size, run))
                run = []
            continue
        if run:
            runs.append((size, run))
        run = [data]
        size = total = n
    if run:
        runs.append((size, run))
    return runs


def split_gro(data: bytes, segment: int) -> list[memoryview]:
    """The datagrams of one UDP_GRO receive: ``segment``-sized pieces, the last maybe shorter.

    Views into ``data`` (immutable, so they stay valid), not copies.
    """
    if segment <= 0 or len(data) <= segment:
        return [memoryview(data)]
    return DatagramRun(data, segment).datagrams()


class UdpSocket:
    """A bound, non-blocking UDP socket."""

    def __init__(
        self,
        address: str,
        port: int,
        offload: bool = True,
        mark: int | None = None,
        *,
        reuseport: bool = False,
    ) -> None:
        """Open and bind; an OSError names the endpoint (``cannot bind UDP ADDR:PORT: ...``).

        ``mark``: SO_MARK, so ipsecd's own packets skip the routing table of transport-mode
        peers (``gateway.fwmark``).  ``reuseport``: SO_REUSEPORT, for :func:`natt_sockets`
        only.
        """
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        where = format_address(address, port)
        try:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise OSErrorAt(f"cannot open a UDP socket for {where}", exc) from exc
        # No SO_REUSEADDR: with it a second daemon could bind the same ports and take
        # half of the peers' datagrams (issue 12); UDP has no TIME_WAIT to wait out.
        try:
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
            if mark is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            if reuseport:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind((address, port))
        except OSError as exc:
            self.sock.close()
            raise OSErrorAt(f"cannot bind UDP {where}", exc) from exc
        self.sock.setblocking(False)
        self.local: Address = (address, port)
        self.fd = self.sock.fileno()
        self.send_errors = 0
        self.gso = offload
        self.gro = False
        self.gso_sends = 0  # sendmsg calls that carried several datagrams
        self.gro_receives = 0  # receives that returned several datagrams
        if offload:
            try:
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        # The GRO receive's buffer (the plain path uses recvfrom): an anonymous mapping,
        # whose pages become resident as datagrams reach them; a bytearray is zeroed, so
        # all of it would be resident from the start, idle or not.
        self._rview = memoryview(mmap.mmap(-1, GRO_BUFFER)) if self.gro else None

    def recv_batch(self, limit: int = 64, bufsize: int = 65535) -> list[tuple[Received, Address]]:
        """Receive up to ``limit`` times; never blocks.

        A GRO receive of several datagrams comes back as one :class:`DatagramRun`
        where the bulk path is there to open it whole (:func:`offload.bulk`), else
        as its datagrams.  Only a GRO run asks for the bulk path: importing it (numpy)
        on the first IKE message over the NAT-T port cost the first handshake after
        start some 40-60 ms at each end.
        """
        view = self._rview
        if view is None:  # no GRO
            return self._recv_plain(limit, bufsize)
        out: list[tuple[Received, Address]] = []
        whole: bool | None = None  # the bulk path is there (asked at the first GRO run)
        recvmsg_into = self.sock.recvmsg_into
        buffers = [view]
        for _ in range(limit):
            try:
                n, ancdata, _flags, addr = recvmsg_into(buffers, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                continue
            remote = (addr[0], addr[1])
            segment = 0
            for level, kind, cdata in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(cdata)[0]
            if segment and n > segment:
                self.gro_receives += 1
                if whole is None:
                    whole = bulk() is not None
                if whole:
                    out.append((DatagramRun(bytes(view[:n]), segment), remote))
                else:
                    out.extend([(d, remote) for d in split_gro(bytes(view[:n]), segment)])
            else:
                out.append((bytes(view[:n]), remote))
                if n < SMALL_RECEIVE and len(out) == 1:
                    break  # a lone small datagram (a ping, say): no extra receive for EAGAIN
        return out

    def _recv_plain(self, limit: int, bufsize: int) -> list[tuple[Received, Address]]:
        out: list[tuple[Received, Address]] = []
        recvfrom = self.sock.recvfrom
        for _ in range(limit):
            try:
                data, addr = recvfrom(bufsize)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            out.append((data, (addr[0], addr[1])))
        return out

    def send(self, data: bytes, remote: Address) -> None:
        try:
            self.sock.sendto(data, remote)
        except OSError:
            self.send_errors += 1

    def send_batch(self, datagrams: Sequence[bytes | DatagramRun], remote: Address) -> None:
        """Send a burst to one peer, in order: runs of equal-sized datagrams as one GSO
        send each, a :class:`DatagramRun` (the bulk path's) in as few as the kernel takes."""
        plain: list[bytes] = []
        for data in datagrams:
            if isinstance(data, DatagramRun):
                if plain:
                    self._send_plain(plain, remote)
                    plain = []
                self._send_run(data, remote)
            else:
                plain.append(data)
        if plain:
            self._send_plain(plain, remote)

    def _send_run(self, run: DatagramRun, remote: Address) -> None:
        """One UDP_SEGMENT send per slice of ``run`` the kernel takes at once (at most
        GSO_MAX_SEGMENTS datagrams and GSO_MAX_BYTES), the slices of equal length so that
        the receiver's GRO runs are too."""
        size = run.size
        if not self.gso:
            self._send_each(run.datagrams(), remote)
            return
        count = len(run)
        most = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
        sends = -(-count // most)
        step = -(-count // sends) * size
        view = memoryview(run.data)
        segment = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))]
        sendmsg = self.sock.sendmsg
        for at in range(0, len(view), step):
            part = view[at : at + step]
            try:
                sendmsg([part], segment, 0, remote)
                self.gso_sends += len(part) > size
            except OSError as exc:
                if exc.errno in _GSO_FATAL:
                    self.gso = False
                    self._send_each(DatagramRun(part, size).datagrams(), remote)
                else:  # buffer full and the like: the run is lost, as a plain send's would be
                    self.send_errors += -(-len(part) // size)

    def _send_plain(self, datagrams: Sequence[bytes], remote: Address) -> None:
        if not self.gso or len(datagrams) < 2:
            self._send_each(datagrams, remote)
            return
        sendmsg = self.sock.sendmsg
        for size, run in gso_runs(datagrams):
            if len(run) == 1:
                self._send_each(run, remote)
                continue
            try:
                sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, remote)
                self.gso_sends += 1
            except OSError as exc:
                if exc.errno in _GSO_FATAL:
                    self.gso = False
                    self._send_each(run, remote)
                else:  # buffer full and the like: the run is lost, as a plain send's would be
                    self.send_errors += len(run)

    def _send_each(self, datagrams: Iterable[bytes | memoryview], remote: Address) -> None:
        sendto = self.sock.sendto
        for data in datagrams:
            try:
                sendto(data, remote)
            except OSError:
                self.send_errors += 1

    def close(self) -> None:
        self.sock.close()


def natt_sockets(
    address: str, port: int, offload: bool, mark: int | None
) -> tuple[UdpSocket, UdpSocket | None]:
    """The NAT-T port (RFC 3948) as two sockets: ESP and keepalives to the first, IKE (the
    non-ESP marker) to the second, sorted by the kernel (:func:`steer_non_esp`).

    One socket held both: a flood of IKE datagrams (cookies demanded or not, each must be
    read to be dropped) queued ESP behind megabytes of it, and an idle tunnel's ping
    waited 25-55 ms in that queue.  With its own queue, ESP waits one loop turn at most.
    The port is bound once without SO_REUSEPORT first, so that a port another process
    holds fails as it always did (a second ipsecd may not take half of the peers'
    datagrams, issue 12) and ours cannot join someone else's group.  Where the kernel
    refuses any of it, one socket (None for the second), as before.
    """
    UdpSocket(address, port, offload=False, mark=mark).close()  # raises if taken
    esp = UdpSocket(address, port, offload, mark, reuseport=True)
    ike: UdpSocket | None = None
    try:
        ike = UdpSocket(address, port, offload, mark, reuseport=True)
        steer_non_esp(esp.sock)
    except OSError:
        if ike is not None:
            ike.close()
        return esp, None
    return esp, ike
