"""Flood a responder with hostile IKE datagrams, bounded in count and time (a test tool).

Run inside a test namespace that routes to the target::

    python3 tests/netns/ike_flood.py --target 192.0.2.2 --sources 203.0.113.0/24 \\
        --rate 500 --seconds 10

Kinds of datagram (``--kind``):

``init`` (default)
    a well-formed IKE_SA_INIT (RFC 7296 §1.2: SA, KE for X25519, Ni, NAT-D), each with
    its own random SPIi, nonce and KE value;
``malformed``
    the 28-byte header of issue 12: it announces an SA payload and nothing follows;
``empty``
    an IKE_SA_INIT of ``--size`` bytes made of empty Vendor ID payloads (issue 12's
    64 KB datagram, which took 67 ms to decode in full);
``padded``
    a well-formed IKE_SA_INIT padded to ``--size`` bytes with a Vendor ID;
``replay``
    the IKE message in ``--replay FILE`` (hex), as it is, with ``--truncate N`` cut to
    its first N bytes (header length fixed up).

With ``--sources CIDR`` each datagram leaves from a random address of that network and
UDP port ``--sport`` through a raw socket (IP_HDRINCL: answers go to the forged
addresses, so the flooder never sees them), cut into IP fragments by the flooder when
it does not fit the 1500-byte MTU.  ``--fresh-spi`` gives each replayed copy its own
SPIi.
With ``--sources self`` a plain UDP socket sends from the namespace's own address and
the kernel fragments large datagrams.  ``--marker`` prepends the non-ESP marker (IKE on
port 4500, RFC 3948 §2.2).  ``--rate 0`` sends as fast as one process can.  Prints one
JSON line at the end: ``{"sent": N, "failed": F, "seconds": S, "rate": R, "bytes": B}``
(``failed``: sends the kernel refused, a full buffer say).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import time
from pathlib import Path

from ipsecd.crypto.proposals import parse_proposal
from ipsecd.ike import message as codec
from ipsecd.ike import payloads as pl
from ipsecd.ike import proposal_codec
from tests.lab.packets import internet_checksum, ipv4, udp

NONCE_MARK = b"N" * 32
KE_MARK = b"K" * 32
IKE_SA_INIT = 34
VENDOR_ID = 43
MAX_DISTINCT = 2048  # distinct datagrams built up front; the flood cycles through them


def template(pad: int = 0) -> bytes:
    """One request with placeholder SPIi, nonce and KE value (patched per packet);
    ``pad`` > 0 adds a Vendor ID payload of that many bytes."""
    proposal = parse_proposal("aes256gcm16-prfsha256-x25519", "ike")
    payloads = [
        proposal_codec.sa_payload((proposal,)),
        pl.KeyExchange(31, KE_MARK),
        pl.Nonce(NONCE_MARK),
        pl.Notify(16388, os.urandom(20)),
        pl.Notify(16389, os.urandom(20)),
    ]
    if pad > 0:
        payloads.append(pl.VendorId(bytes(pad)))
    msg = codec.Message(1, 0, IKE_SA_INIT, 0, initiator=True, payloads=payloads)
    return codec.encode(msg)


def well_formed(count: int, size: int = 0) -> list[bytes]:
    """``count`` distinct IKE_SA_INIT requests (padded to ``size`` bytes if given)."""
    bare = template()
    pad = max(0, size - len(bare) - 4) if size else 0
    base = template(pad)
    nonce_at, ke_at = base.index(NONCE_MARK), base.index(KE_MARK)
    out = []
    for _ in range(count):
        ike = bytearray(base)
        ike[0:8] = os.urandom(8)
        ike[nonce_at : nonce_at + 32] = os.urandom(32)
        ike[ke_at : ke_at + 32] = os.urandom(32)
        out.append(bytes(ike))
    return out


def malformed(count: int) -> list[bytes]:
    """Issue 12's lock-out datagram: a header announcing an SA payload, nothing after."""
    header = codec.Header(0, 0, 33, 2, 0, IKE_SA_INIT, 0x08, 0, 28).encode()
    return [os.urandom(8) + header[8:] for _ in range(count)]


def empty_chain(count: int, size: int) -> list[bytes]:
    """IKE_SA_INIT requests of ``size`` bytes of empty Vendor ID payloads."""
    n = (size - 28) // 4
    chain = bytes([VENDOR_ID, 0, 0, 4]) * (n - 1) + bytes([0, 0, 0, 4])
    header = codec.Header(0, 0, VENDOR_ID, 2, 0, IKE_SA_INIT, 0x08, 0, 28 + len(chain)).encode()
    return [os.urandom(8) + header[8:] + chain for _ in range(count)]


def replayed(path: str, truncate: int | None) -> list[bytes]:
    data = bytes.fromhex(Path(path).read_text().strip())
    if truncate:
        cut = bytearray(data[:truncate])
        cut[24:28] = len(cut).to_bytes(4, "big")
        data = bytes(cut)
    return [data]


def fragments(src: int, dst: str, datagram: bytes, ident: int, mtu: int = 1500) -> list[bytes]:
    """An IPv4/UDP datagram as the IP fragments (RFC 791) a raw socket can send."""
    whole = ipv4(src, dst, datagram, ident=ident)
    if len(whole) <= mtu:
        return [whole]
    step = (mtu - 20) // 8 * 8
    out = []
    for offset in range(0, len(datagram), step):
        piece = datagram[offset : offset + step]
        more = offset + step < len(datagram)
        header = bytearray(ipv4(src, dst, piece, ident=ident)[:20])
        header[6:8] = ((0x2000 if more else 0) | offset // 8).to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
        out.append(bytes(header) + piece)
    return out


def build(args: argparse.Namespace) -> list[bytes]:
    count = min(MAX_DISTINCT, args.count or MAX_DISTINCT)
    if args.kind == "init":
        ike = well_formed(count)
    elif args.kind == "padded":
        ike = well_formed(min(count, 64), args.size)
    elif args.kind == "malformed":
        ike = malformed(count)
    elif args.kind == "empty":
        ike = empty_chain(min(count, 64), args.size)
    else:
        ike = replayed(args.replay, args.truncate)
        if args.fresh_spi:
            ike = [os.urandom(8) + ike[0][8:] for _ in range(count)]
    if args.marker:
        ike = [bytes(4) + d for d in ike]
    return ike


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=500)
    parser.add_argument("--sport", type=int, default=500)
    parser.add_argument("--sources", default="203.0.113.0/24", help="CIDR, or 'self'")
    parser.add_argument("--kind", default="init",
                        choices=["init", "malformed", "empty", "padded", "replay"])  # fmt: skip
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--replay", help="file with the hex of one IKE message")
    parser.add_argument("--truncate", type=int, default=None)
    parser.add_argument("--fresh-spi", action="store_true", help="replay: a new SPIi each")
    parser.add_argument("--marker", action="store_true", help="prepend the non-ESP marker")
    parser.add_argument("--rate", type=float, default=500.0, help="per second; 0: flat out")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=0, help="at most this many (0: rate)")
    args = parser.parse_args()
    total = args.count or (int(args.rate * args.seconds) if args.rate else 1 << 62)
    payloads = build(args)
    if args.sources == "self":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", args.sport))
        batch = [[p] for p in payloads]  # the kernel fragments
        destination = (args.target, args.port)
    else:
        hosts = [int(h) for h in ipaddress.IPv4Network(args.sources).hosts()] or [
            int(ipaddress.IPv4Network(args.sources).network_address)
        ]
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        # Distinct sources for up to MAX_DISTINCT datagrams, at most ~16 MB of them.
        length = min(MAX_DISTINCT, max(len(payloads), (16 << 20) // len(payloads[0])))
        cycle = (payloads * (1 + length // len(payloads)))[:length]
        # IP ids from 1: with id 0 the kernel picks one per packet, so the fragments of
        # one datagram would never be reassembled (raw(7), IP_HDRINCL).
        batch = [
            fragments(random.choice(hosts), args.target, udp(args.sport, args.port, p), n + 1)
            for n, p in enumerate(cycle)
        ]
        destination = (args.target, 0)
    start = time.monotonic()
    end = start + args.seconds
    attempts = sent = failed = size = 0
    sendto = sock.sendto
    while attempts < total and time.monotonic() < end:
        if args.rate:  # paced: never ahead of the schedule, in slices of 10 ms
            due = min(int((time.monotonic() - start) * args.rate) + 1, total)
        else:
            due = min(attempts + 256, total)
        while attempts < due:
            packets = batch[attempts % len(batch)]
            attempts += 1
            try:
                for packet in packets:
                    sendto(packet, destination)
            except OSError:  # a full buffer: not (wholly) sent, counted
                failed += 1
                continue
            sent += 1
            size += sum(len(p) for p in packets)
        if args.rate:
            time.sleep(0.01)
    seconds = time.monotonic() - start
    result = {"sent": sent, "failed": failed, "seconds": round(seconds, 3),
              "rate": round(sent / seconds, 1), "bytes": size}  # fmt: skip
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
