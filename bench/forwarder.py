#!/usr/bin/env python3
"""A bare TUN <-> UDP forwarder: no crypto, no SAs, no checks.  Not a VPN.

The least work a Python data plane can do per packet: one epoll wake-up, one read, one
send.  bench/latency.py runs it between the gateways to show the round-trip time that
Python alone adds on a machine, so the idle-RTT figures of ipsecd and strongSwan can be
read against it.  Each inner packet travels as the payload of one UDP datagram.

    forwarder.py TUN_NAME LOCAL_IP PEER_IP PORT REMOTE_PREFIX [WAKEUP_MS]

With WAKEUP_MS the loop also wakes every WAKEUP_MS milliseconds with nothing to do, as
ipsecd does with ``gateway.wakeup_interval_ms``: the same floor for a process kept warm.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

import pytun

BUFSIZE = 65535


def main(argv: list[str]) -> int:
    """Open the TUN device and the socket, route ``REMOTE_PREFIX`` in, forward forever."""
    name, local, peer, port, prefix = argv[:5]
    timeout = float(argv[5]) / 1000 if len(argv) > 5 else -1  # -1: sleep until a packet
    tun = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    subprocess.run(["ip", "link", "set", name, "up", "mtu", "1400"], check=True)
    subprocess.run(["ip", "route", "replace", prefix, "dev", name], check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local, int(port)))
    sock.setblocking(False)
    fd, sfd, dst = tun.fileno(), sock.fileno(), (peer, int(port))
    os.set_blocking(fd, False)
    poller = select.epoll()
    poller.register(fd, select.EPOLLIN)
    poller.register(sfd, select.EPOLLIN)
    read, write, recv, sendto = os.read, os.write, sock.recv, sock.sendto
    print("ready", flush=True)
    while True:
        for ready, _ in poller.poll(timeout):
            try:
                if ready == fd:
                    sendto(read(fd, BUFSIZE), dst)
                else:
                    write(fd, recv(BUFSIZE))
            except (BlockingIOError, OSError):
                pass  # a lost packet is fine for a latency probe


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
