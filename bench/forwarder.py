#!/usr/bin/env python3
"""A bare TUN <-> UDP forwarder: no crypto, no SAs, no checks.  Not a VPN.

The least work a Python data plane can do per packet: one epoll wake-up, one read, one
send.  bench/latency.py runs it between the gateways to show the round-trip time that
Python alone adds on a machine, so the idle-RTT figures of ipsecd and strongSwan can be
read against it.  Each inner packet travels as the payload of one UDP datagram.

    forwarder.py [--aead] TUN_NAME LOCAL_IP PEER_IP PORT REMOTE_PREFIX [WAKEUP_MS]

With WAKEUP_MS the loop also wakes every WAKEUP_MS milliseconds with nothing to do, as
ipsecd does with ``gateway.wakeup_interval_ms``: the same floor for a process kept warm.
With ``--aead`` each packet is also sealed with AES-128-GCM from ``cryptography`` before
it is sent (a counter as nonce, ``encrypt_into`` a buffer made once) and opened after it
is received, as ESP's AEADs are: the least cipher work a Python data plane built on that
library does per packet, still with no SA, no replay window, no checks.  Both
forwarders use the same fixed key: this is a probe, not a tunnel.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from typing import NoReturn

import pytun

BUFSIZE = 65535


def main(argv: list[str]) -> int:
    """Open the TUN device and the socket, route ``REMOTE_PREFIX`` in, forward forever."""
    aead = "--aead" in argv
    argv = [a for a in argv if a != "--aead"]
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
    if aead:
        forward_sealed(poller, fd, sock, dst, timeout)  # never returns
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


def forward_sealed(
    poller: select.epoll, fd: int, sock: socket.socket, dst: tuple[str, int], timeout: float
) -> NoReturn:
    """The loop of ``--aead``: 12-byte nonce, ciphertext and tag in each datagram."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(bytes(range(16)))  # a probe's fixed key (module docstring)
    encrypt_into, decrypt_into = cipher.encrypt_into, cipher.decrypt_into
    inner, outer = bytearray(BUFSIZE), bytearray(BUFSIZE + 28)
    inner_view, outer_view = memoryview(inner), memoryview(outer)
    read_into, write, recv_into, sendto = os.readv, os.write, sock.recv_into, sock.sendto
    counter = 0
    print("ready", flush=True)
    while True:
        for ready, _ in poller.poll(timeout):
            try:
                if ready == fd:
                    n = read_into(fd, [inner_view])
                    counter += 1
                    outer_view[:12] = counter.to_bytes(12, "big")
                    encrypt_into(outer_view[:12], inner_view[:n], None, outer_view[12 : 28 + n])
                    sendto(outer_view[: 28 + n], dst)
                else:
                    n = recv_into(outer_view)
                    decrypt_into(outer_view[:12], outer_view[12:n], None, inner_view[: n - 28])
                    write(fd, inner_view[: n - 28])
            except (OSError, ValueError, InvalidTag):
                pass  # a lost or mangled packet is fine for a latency probe


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
