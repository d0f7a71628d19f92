#!/usr/bin/env python3
"""CPU time of one IKE handshake in ipsecd's sans-I/O core, both ends, real crypto.

Two :class:`~ipsecd.ike.manager.IkeManager` instances (initiator and responder) exchange
IKE_SA_INIT, the IKE_INTERMEDIATE of each additional key exchange, and IKE_AUTH through the
in-memory network of ``tests/unit/ike_pair_support.py`` (no sockets, a fake clock), until
both have the CHILD_SA.  The configs are parsed once; each handshake gets two fresh
managers.  Process CPU time only, so the figure is what the handshake costs in Python and in
the crypto library, without the shell's I/O, the scheduler or the other end's wake-ups.

    python3 bench/handshake_cpu.py                                   # x25519+ML-KEM-768
    python3 bench/handshake_cpu.py --ike aes256gcm16-prfsha384-x25519 -n 300
    python3 bench/handshake_cpu.py --profile 30                      # cProfile, top 30

No root needed.  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ipsecd.ike import events as ev  # noqa: E402
from ipsecd.ike.manager import IkeManager  # noqa: E402
from tests.unit.ike_pair_support import A_IP, B_IP, IkePair, Network, side_a, side_b  # noqa: E402

DEFAULT_IKE = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"


def handshake(pair: IkePair) -> None:
    """One handshake on fresh managers of ``pair``'s configs."""
    pair.a = IkeManager(pair.a_config, pair.now)
    pair.b = IkeManager(pair.b_config, pair.now)
    pair.managers = {"a": pair.a, "b": pair.b}
    pair.addresses = {A_IP: pair.a, B_IP: pair.b}
    pair.net = Network()
    pair.events = {"a": [], "b": []}
    pair.event_log = []
    pair.a.start(pair.now)
    pair.pump()
    for side in "ab":
        if not pair.of_type(side, ev.ChildSaEstablished):
            raise SystemExit(f"side {side}: no CHILD_SA: {pair.events[side][-3:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ike", default=DEFAULT_IKE, help=f"IKE proposal (default {DEFAULT_IKE})")
    ap.add_argument("--esp", default="aes256gcm16", help="ESP proposal (default aes256gcm16)")
    ap.add_argument("-n", type=int, default=200, help="handshakes timed (default 200)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of -n/rounds (default 5)")
    ap.add_argument("--profile", type=int, metavar="N", help="cProfile instead; print top N")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"ike": (args.ike,), "esp": (args.esp,)}
        pair = IkePair(Path(tmp), side_a(**sides), side_b(**sides), start=False)
        for _ in range(5):  # warm up: imports, caches
            handshake(pair)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.n):
                handshake(pair)
            prof.disable()
            stats = pstats.Stats(prof).sort_stats("tottime")
            stats.print_stats(args.profile)
            return 0
        per_round = max(1, args.n // args.rounds)
        rounds = []
        for _ in range(args.rounds):
            t0 = time.process_time()
            for _ in range(per_round):
                handshake(pair)
            rounds.append((time.process_time() - t0) * 1000 / per_round)
    print(
        f"{args.ike}: {statistics.median(rounds):.2f} ms CPU per handshake, both ends"
        f" (median of {args.rounds} rounds of {per_round}; rounds "
        f"{min(rounds):.2f}-{max(rounds):.2f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
