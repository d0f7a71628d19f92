"""Flood a responder with IKE_SA_INIT requests from forged source addresses (a test tool).

Run inside a namespace that routes to the target::

    python3 tests/netns/ike_flood.py --target 192.0.2.2 --sources 203.0.113.0/24 \\
        --rate 500 --seconds 10

Every request is a well-formed IKE_SA_INIT (RFC 7296 §1.2: SA, KE for X25519, Ni,
NAT-D) with its own random SPIi, nonce and KE value, sent from UDP port 500 of a random
address of ``--sources`` through a raw socket (IP_HDRINCL).  Answers go to the forged
addresses, so the flooder never sees them and never returns a COOKIE.  Prints one line,
``sent N``, at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import socket
import time

from ipsecd.crypto.proposals import parse_proposal
from ipsecd.ike import message as codec
from ipsecd.ike import payloads as pl
from ipsecd.ike import proposal_codec
from tests.lab.packets import ipv4, udp

NONCE_MARK = b"N" * 32
KE_MARK = b"K" * 32


def template() -> bytes:
    """One request with placeholder SPIi, nonce and KE value (patched per packet)."""
    proposal = parse_proposal("aes256gcm16-prfsha256-x25519", "ike")
    payloads = [
        proposal_codec.sa_payload((proposal,)),
        pl.KeyExchange(31, KE_MARK),
        pl.Nonce(NONCE_MARK),
        pl.Notify(16388, os.urandom(20)),
        pl.Notify(16389, os.urandom(20)),
    ]
    msg = codec.Message(1, 0, 34, 0, initiator=True, payloads=payloads)
    return codec.encode(msg)


def packets(count: int, sources: ipaddress.IPv4Network, target: str, port: int) -> list[bytes]:
    """``count`` IPv4/UDP datagrams carrying distinct requests."""
    base = template()
    nonce_at, ke_at = base.index(NONCE_MARK), base.index(KE_MARK)
    hosts = [int(h) for h in sources.hosts()]
    out = []
    for _ in range(count):
        ike = bytearray(base)
        ike[0:8] = os.urandom(8)
        ike[nonce_at : nonce_at + 32] = os.urandom(32)
        ike[ke_at : ke_at + 32] = os.urandom(32)
        src = random.choice(hosts)
        out.append(ipv4(src, target, udp(500, port, bytes(ike))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=500)
    parser.add_argument("--sources", default="203.0.113.0/24")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    total = int(args.rate * args.seconds)
    batch = packets(min(total, 50_000), ipaddress.IPv4Network(args.sources), args.target, args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    start = time.monotonic()
    sent = 0
    while sent < total:
        # Pace: never ahead of the schedule, in slices of 10 ms.
        due = int((time.monotonic() - start) * args.rate) + 1
        while sent < min(due, total):
            sock.sendto(batch[sent % len(batch)], (args.target, 0))
            sent += 1
        time.sleep(0.01)
    print(f"sent {sent}", flush=True)


if __name__ == "__main__":
    main()
