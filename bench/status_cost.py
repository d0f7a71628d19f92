#!/usr/bin/env python3
"""What one status answer costs the daemon with many configured peers, in one process.

No root, no network: bench/scale.py's responder configuration with ``--peers`` peers is
loaded into a :class:`~ipsecd.daemon.core.DaemonCore` (no SA up, as an idle responder
waits), everything built so far is frozen out of the collector's sight as the daemon does
after start-up, and the status is built, turned into the dicts the control socket sends
and encoded as JSON, ``--rounds`` times: the median and range in milliseconds, with the
cyclic collector running as usual and held off as the daemon holds it
(:mod:`ipsecd.daemon.gcpause`), all in one piece; then the longest stretch of the answer
as the daemon builds and encodes it, ``STATUS_STEP`` peers at a time with its sockets read
between the steps: how long packets may wait for it.

    python3 bench/status_cost.py [--peers 10000] [--rounds 5] [--scrape]

``--scrape`` also serves the metrics of that status on a loopback port and scrapes them
once the old way (the status and its text in one piece) and once the daemon's way
(``status_steps``, the text rendered in a worker thread), printing the longest stretch in
which a 1 ms timer of the event loop could not run: what packets wait for a scrape.

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
from ipsecd.daemon.control import _line_pieces  # noqa: E402
from ipsecd.daemon.core import STATUS_STEP, DaemonCore  # noqa: E402
from ipsecd.daemon.gcpause import collector_paused  # noqa: E402
from ipsecd.daemon.status import DaemonStatus, DataplaneStatus, document_steps  # noqa: E402


def one_answer(core: DaemonCore) -> int:
    """Build, convert and encode one status; its size in bytes."""
    now = time.monotonic()
    status = core.status(
        now, wall=time.time(), tun="ipsecs", listen=[], dataplane=DataplaneStatus.of(None, [])
    )
    return len(json.dumps({"ok": True, "status": status.to_dict()}))


def longest_step(core: DaemonCore) -> float:
    """Milliseconds of the longest stretch of the answer as the daemon builds it: STATUS_STEP
    peers at a time (status_steps, document_steps), then the JSON line in pieces
    (control._line_pieces)."""
    longest, start = 0.0, time.perf_counter()
    now = time.monotonic()
    devices = DataplaneStatus.of(None, [])
    status = None
    for step in core.status_steps(now, wall=time.time(), tun="t", listen=[], dataplane=devices):
        longest, start = max(longest, time.perf_counter() - start), time.perf_counter()
        status = step
    assert status is not None
    document = None
    for part in document_steps(status, STATUS_STEP):
        longest, start = max(longest, time.perf_counter() - start), time.perf_counter()
        document = part
    for _ in _line_pieces({"ok": True, "status": document}):
        longest, start = max(longest, time.perf_counter() - start), time.perf_counter()
    return longest * 1e3


async def _scrape_gap(core: DaemonCore, stepwise: bool) -> tuple[float, float]:
    """Milliseconds of one scrape and of the event loop's longest gap meanwhile."""
    import asyncio
    import socket

    from ipsecd.daemon.metrics import MetricsServer

    devices = {"tun": "t", "listen": [], "dataplane": DataplaneStatus.of(None, [])}

    def whole() -> DaemonStatus:
        return core.status(time.monotonic(), wall=time.time(), **devices)  # type: ignore[arg-type]

    async def steps() -> DaemonStatus:
        for step in core.status_steps(time.monotonic(), wall=time.time(), **devices):  # type: ignore[arg-type]
            if step is not None:
                return step
            await asyncio.sleep(0)
        raise AssertionError("no status")

    def scrape(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            while sock.recv(1 << 20):
                pass

    server = MetricsServer("127.0.0.1", 0, whole, steps if stepwise else None)
    await server.start()
    [(_, port)] = server.addresses
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await asyncio.to_thread(scrape, port)
    took = time.perf_counter() - start
    done.set()
    await task
    await server.close()
    return took * 1e3, max(gaps) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scrape", action="store_true", help="also time a metrics scrape")
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
    with collector_paused():
        steps = [longest_step(core) for _ in range(args.rounds)]
    for label, values in times.items():
        print(
            f"{label:<20} {statistics.median(values):8.1f} ms"
            f"  ({min(values):.1f}-{max(values):.1f})"
        )
    print(
        f"{'longest step':<20} {statistics.median(steps):8.1f} ms"
        f"  ({min(steps):.1f}-{max(steps):.1f})  in steps of {STATUS_STEP} peers"
    )
    if args.scrape:
        import asyncio

        import structlog

        structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet
        for label, stepwise in (("scrape, one piece", False), ("scrape, stepwise", True)):
            took, gap = asyncio.run(_scrape_gap(core, stepwise))
            print(f"{label:<20} {took:8.1f} ms, the loop's longest gap {gap:.1f} ms")
    print(f"\n{args.peers} peers, {size} bytes of JSON, {args.rounds} rounds alternated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
