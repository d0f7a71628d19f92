#!/usr/bin/env python3
"""What one status answer costs the daemon with many configured peers, in one process.

No root, no network: bench/scale.py's responder configuration with ``--peers`` peers is
loaded into a :class:`~ipsecd.daemon.core.DaemonCore` (no SA up, as an idle responder
waits), everything built so far is frozen out of the collector's sight as the daemon does
after start-up, and the status is built, turned into the dicts the control socket sends
and encoded as JSON, ``--rounds`` times: the median and range in milliseconds, with the
cyclic collector running as usual and held off as the daemon now holds it
(:mod:`ipsecd.daemon.gcpause`).  The daemon moves no packet while it does this.

    python3 bench/status_cost.py [--peers 10000] [--rounds 5]

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import responder_config  # noqa: E402
from ipsecd.config.loader import parse_config  # noqa: E402
from ipsecd.daemon.core import DaemonCore  # noqa: E402
from ipsecd.daemon.gcpause import collector_paused  # noqa: E402
from ipsecd.daemon.status import DataplaneStatus  # noqa: E402


def one_answer(core: DaemonCore) -> int:
    """Build, convert and encode one status; its size in bytes."""
    now = time.monotonic()
    status = core.status(
        now, wall=time.time(), tun="ipsecs", listen=[], dataplane=DataplaneStatus.of(None, [])
    )
    return len(json.dumps({"ok": True, "status": status.to_dict()}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if args.peers < 1 or args.rounds < 1:
        ap.error("--peers and --rounds must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        psk = Path(tmp) / "psk"
        psk.write_text("0123456789abcdef0123456789abcdef\n")
        psk.chmod(0o600)
        text = responder_config(args.peers, Path(tmp), ["192.0.2.2"], False)
        core = DaemonCore(parse_config(text, Path(tmp) / "ipsecd.yaml"), time.monotonic())
    gc.collect()
    gc.freeze()
    size = one_answer(core)  # warm: caches, first-use imports
    times: dict[str, list[float]] = {"collector running": [], "collector held off": []}
    for _ in range(args.rounds):
        for label, times_ in times.items():
            start = time.perf_counter()
            if label == "collector held off":
                with collector_paused():
                    one_answer(core)
            else:
                one_answer(core)
            times_.append((time.perf_counter() - start) * 1e3)
    for label, values in times.items():
        print(
            f"{label:<20} {statistics.median(values):8.1f} ms"
            f"  ({min(values):.1f}-{max(values):.1f})"
        )
    print(f"\n{args.peers} peers, {size} bytes of JSON, {args.rounds} rounds alternated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
