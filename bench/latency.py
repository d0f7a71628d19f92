#!/usr/bin/env python3
"""Idle round-trip time through each tunnel, measured in alternating rounds.

Root only.  One round brings up each backend in turn on a fresh namespace topology (the
one bench.py uses) and sends ``--pings`` ICMP echoes from hostA to hostB, 20 ms apart;
the figure per backend is the median over rounds of each round's median RTT.  Rounds
alternate the backends so that a slow minute of a shared machine hits all of them.

Besides plain routing, strongSwan and ipsecd, it measures ``bench/forwarder.py``: a bare
Python TUN <-> UDP loop with no crypto and no SA logic.  Its added RTT is what one
Python process per gateway costs on this machine before any IPsec work is done: the
floor under any Python data plane here.  "forwarder-aead" is that loop sealing and
opening each packet with AES-128-GCM from ``cryptography`` (``forwarder.py --aead``): the
floor under a Python data plane built on that library.  The "-wakeup" rows run the
forwarder and ipsecd again with a wake-up every 10 ms while idle (ipsecd:
``gateway.wakeup_interval_ms: 10``), which keeps a virtual machine's process and CPU from
going cold between packets.

    sudo python3 bench/latency.py                     # 3 rounds of 200 pings
    sudo python3 bench/latency.py --rounds 5 --json latency.json
    sudo python3 bench/latency.py --repo /work/main .  # ipsecd of two source trees

With ``--repo`` the ipsecd rows run once per source tree (say, main's and a branch's),
in the same alternating rounds.

Figures are printed (and written with --json), never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ahead of bench/ itself

import tests.lab.daemons as daemons  # noqa: E402
from bench.bench import (  # noqa: E402
    DEFAULT_ESP,
    DEFAULT_IKE,
    BackendUnavailable,
    backend,
    environment,
    log,
)
from tests.lab.topology import (  # noqa: E402
    GW_A_WAN_IP,
    GW_B_WAN_IP,
    HOST_B_IP,
    SITE_A,
    SITE_B,
    Topology,
    install_sigterm_handler,
)

BACKENDS = (
    "plain",
    "forwarder",
    "forwarder-aead",
    "forwarder-wakeup",
    "strongswan",
    "ipsecd",
    "ipsecd-wakeup",
)
LABELS = {
    "plain": "plain routing",
    "forwarder": "bare Python forwarder",
    "forwarder-aead": "forwarder with AES-GCM",
    "forwarder-wakeup": "forwarder, 10 ms wake-ups",
    "strongswan": "strongSwan",
    "ipsecd": "ipsecd",
    "ipsecd-wakeup": "ipsecd, 10 ms wake-ups",
}
WAKEUP_MS = 10  # the "-wakeup" rows: gateway.wakeup_interval_ms, forwarder.py's WAKEUP_MS
FORWARDER = REPO / "bench" / "forwarder.py"
FORWARDER_PORT = "4600"
_TOPOLOGIES = itertools.count(1)  # --prefix: one namespace prefix per round and backend


def start_forwarders(topo: Topology, wakeup_ms: int = 0, aead: bool = False) -> None:
    """bench/forwarder.py in both gateways, each routing the other site into its TUN
    (``aead``: sealing each packet with AES-GCM, forwarder.py's ``--aead``)."""
    sides = (
        (topo.gw_a, GW_A_WAN_IP, GW_B_WAN_IP, SITE_B),
        (topo.gw_b, GW_B_WAN_IP, GW_A_WAN_IP, SITE_A),
    )
    for ns, local, peer, prefix in sides:
        cmd = [sys.executable, str(FORWARDER), *(["--aead"] if aead else [])]
        cmd += ["fwd0", local, peer, FORWARDER_PORT, prefix]
        if wakeup_ms:
            cmd.append(str(wakeup_ms))
        topo.spawn(ns, cmd, log_path=topo.workdir / f"forwarder-{ns}.log")


def one_round(name: str, args: argparse.Namespace, repo: Path = REPO) -> float:
    """Bring ``name`` up on a fresh topology; the median RTT (ms) of ``args.pings`` pings.
    ipsecd runs from source tree ``repo``."""
    daemons.REPO = repo  # IpsecdProcess.start runs the daemon from this tree
    prefix = f"{args.prefix}{next(_TOPOLOGIES)}" if args.prefix else None
    with Topology(prefix=prefix) as topo, contextlib.ExitStack() as stack:
        # ``python -m`` puts the working directory first on sys.path: in a source tree it
        # would run that tree's ipsecd whatever ``repo`` says.
        stack.enter_context(contextlib.chdir(topo.workdir))
        wakeup = WAKEUP_MS if name.endswith("-wakeup") else 0
        if name.startswith("forwarder"):
            start_forwarders(topo, wakeup, aead=name == "forwarder-aead")
        else:
            tunnel_args = argparse.Namespace(
                ike=args.ike,
                esp=args.esp,
                keying="psk",
                gateway_extra={"wakeup_interval_ms": wakeup} if wakeup else None,
            )
            stack.enter_context(backend(name.removesuffix("-wakeup"), topo, tunnel_args))
        if not topo.wait_ping(topo.host_a, HOST_B_IP, 15):
            raise BackendUnavailable(f"{LABELS[name]}: hostA gets no ping reply from hostB")
        topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.02)  # ARP, routes, caches
        stats = topo.ping(topo.host_a, HOST_B_IP, count=args.pings, interval=0.02)
        if not stats.received:
            raise BackendUnavailable(f"{LABELS[name]}: no reply in the measured run")
        return statistics.median(stats.rtts)


def summary(rounds: dict[str, list[float]]) -> dict[str, dict[str, float | None]]:
    """Per backend: median RTT, RTT added over plain routing, added relative to strongSwan."""
    rtt = {name: statistics.median(v) for name, v in rounds.items() if v}
    base = rtt.get("plain")
    added = {name: (v - base if base is not None else None) for name, v in rtt.items()}
    swan = added.get("strongswan")
    out: dict[str, dict[str, float | None]] = {}
    for name, value in rtt.items():
        a = added[name] if name != "plain" else None
        ratio = a / swan if a is not None and swan else None
        out[name] = {"rtt_ms": value, "added_ms": a, "added_vs_strongswan": ratio}
    return out


def runs(args: argparse.Namespace) -> list[tuple[str, str, Path]]:
    """(row key, backend, source tree) of one round, in order: the ipsecd rows once per
    ``--repo`` tree (keyed ``ipsecd@TREE`` when there are several)."""
    out = []
    for name in BACKENDS:
        if name not in args.only:
            continue
        if not name.startswith("ipsecd") or len(args.repo) == 1:
            out.append((name, name, args.repo[0]))
            continue
        out += [(f"{name}@{repo}", name, repo) for repo in args.repo]
    return out


def label(key: str) -> str:
    """A row's label: the backend's, with the source tree if there are several."""
    name, _, repo = key.partition("@")
    return f"{LABELS[name]} ({repo})" if repo else LABELS[name]


def table(figures: dict[str, dict[str, float | None]], rounds: dict[str, list[float]]) -> str:
    """The printed table: one row per backend (and source tree), in BACKENDS' order."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    head = ("backend", "RTT ms", "added ms", "added/strongSwan", "round medians ms")
    rows = [head]
    for name in sorted(rounds, key=lambda key: BACKENDS.index(key.partition("@")[0])):
        if name not in figures:
            continue
        f = figures[name]
        per_round = " ".join(f"{v:.3f}" for v in rounds[name])
        rows.append(
            (
                label(name),
                cell(f["rtt_ms"], 3),
                cell(f["added_ms"], 3),
                cell(f["added_vs_strongswan"], 2),
                per_round,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all backends (default 3)")
    ap.add_argument("--pings", type=int, default=200, help="pings per round, 20 ms apart")
    ap.add_argument(
        "--only", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="backends to run"
    )
    ap.add_argument("--esp", default=DEFAULT_ESP, help=f"ESP proposal (default {DEFAULT_ESP})")
    ap.add_argument("--ike", default=DEFAULT_IKE, help=f"IKE proposal (default {DEFAULT_IKE})")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    ap.add_argument(
        "--repo", type=Path, nargs="+", default=[REPO], help="ipsecd source trees (default: this)"
    )
    ap.add_argument("--prefix", help="namespace name prefix (default: the topology's own)")
    args = ap.parse_args(argv)
    args.repo = [r.resolve() for r in args.repo]
    if args.rounds < 1 or args.pings < 1:
        ap.error("--rounds and --pings must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write JSON if asked."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("latency.py needs root (network namespaces)", file=sys.stderr)
        return 2
    install_sigterm_handler()
    order = runs(args)
    rounds: dict[str, list[float]] = {key: [] for key, _, _ in order}
    errors: dict[str, str] = {}
    for number in range(1, args.rounds + 1):
        for key, name, repo in order:
            if key in errors:
                continue
            try:
                rounds[key].append(one_round(name, args, repo))
                log(f"round {number}: {label(key)} median {rounds[key][-1]:.3f} ms")
            except (BackendUnavailable, RuntimeError, OSError) as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
                log(f"round {number}: {label(key)} failed: {errors[key]}")
    figures = summary(rounds)
    print(table(figures, rounds))
    print(
        f"\nidle ping hostA -> hostB, {args.pings} pings 20 ms apart per round, "
        f"{args.rounds} round(s); RTT: median of the round medians; ESP {args.esp}"
    )
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, error in errors.items():
        print(f"{label(name)}: not measured: {error}")
    if args.json:
        doc: dict[str, Any] = {
            "schema": 1,
            "meta": environment(),
            "params": {
                "rounds": args.rounds,
                "pings": args.pings,
                "esp": args.esp,
                "ike": args.ike,
                "repos": [str(r) for r in args.repo],
            },
            "figures": figures,
            "round_medians_ms": rounds,
            "errors": errors,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
