#!/usr/bin/env python3
"""What a short sleep costs the next operation: the cold penalty of this machine.

An idle tunnel's packet finds its gateway process asleep, and on a virtual machine
every step it then takes costs many times its warm price (issue 17: bench/README.md,
"the floor under a Python data plane").  This measures that penalty apart from any
network or IPsec code: each operation is timed warm (back to back) and right after a
20 ms sleep, the gap between two pings of latency.py.  No root needed, no packets sent.

    python3 bench/cold.py [--samples 41] [--sleep-ms 20]

Prints each operation's median warm and after-sleep time in microseconds.  Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305


def operations() -> dict[str, Callable[[], object]]:
    """The operations timed: AEADs on a ping-sized packet, a hash, plain Python work."""
    aes, chacha = AESGCM(os.urandom(16)), ChaCha20Poly1305(os.urandom(32))
    nonce, aad, packet = os.urandom(12), os.urandom(8), bytes(84)

    def python_loop() -> int:
        total = 0
        for i in range(200):
            total += i
        return total

    return {
        "AES-128-GCM seal, 84 B": lambda: aes.encrypt(nonce, packet, aad),
        "ChaCha20-Poly1305 seal, 84 B": lambda: chacha.encrypt(nonce, packet, aad),
        "SHA-256, 84 B": lambda: hashlib.sha256(packet).digest(),
        "Python loop, 200 additions": python_loop,
        "bytes concatenation, 168 B": lambda: packet + packet,
        "struct.pack, 8 B": lambda: struct.pack(">II", 1, 2),
    }


def measure(op: Callable[[], object], samples: int, sleep: float) -> tuple[float, float]:
    """Median microseconds of ``op`` warm and right after ``sleep`` seconds asleep."""
    clock = time.perf_counter_ns
    for _ in range(100):
        op()
    warm, cold = [], []
    for _ in range(samples):
        start = clock()
        op()
        warm.append(clock() - start)
    for _ in range(samples):
        time.sleep(sleep)
        start = clock()
        op()
        cold.append(clock() - start)
    return statistics.median(warm) / 1e3, statistics.median(cold) / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=41, help="timings per operation and state")
    ap.add_argument("--sleep-ms", type=float, default=20.0, help="the sleep before each cold one")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.sleep_ms <= 0:
        ap.error("--samples must be at least 1 and --sleep-ms above 0")
    print(f"{'operation':<32}{'warm us':>10}{'after sleep us':>16}{'ratio':>8}")
    for name, op in operations().items():
        warm, cold = measure(op, args.samples, args.sleep_ms / 1e3)
        print(f"{name:<32}{warm:>10.2f}{cold:>16.2f}{cold / warm:>8.0f}")
    print(f"\nmedians of {args.samples}; {args.sleep_ms:g} ms asleep before each cold timing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
