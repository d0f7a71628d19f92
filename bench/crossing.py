#!/usr/bin/env python3
"""Where an idle ping's time goes: each gateway crossing, from kernel time stamps.

Root only.  For each backend (the bare forwarder of bench/forwarder.py, the same with
AES-GCM (``--aead``), ipsecd of one or more source trees) it builds a fresh namespace
topology, sends ``--pings`` echoes from hostA to hostB 20 ms apart, twice.  The first run
gives the ping RTT and each gateway's CPU time per ping (/proc/PID/schedstat).  The second
captures, with nanosecond kernel time stamps, the LAN, TUN and WAN interfaces of both
gateways (tcpdump's own wake-ups slow everything a little): a crossing is the time from a
packet appearing on one interface to its counterpart leaving the other, encrypting (TUN ->
WAN) and decrypting (WAN -> TUN) at gwA and gwB.  Medians over the pings, per round;
rounds alternate the backends.

    sudo python3 bench/crossing.py                               # forwarders and ipsecd
    sudo python3 bench/crossing.py --rounds 3 --repo /work/main .   # two trees, interleaved

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ahead of bench/ itself

import tests.lab.daemons as daemons  # noqa: E402
from bench.bench import DEFAULT_ESP, DEFAULT_IKE, backend  # noqa: E402
from bench.latency import start_forwarders  # noqa: E402
from tests.lab.topology import (  # noqa: E402
    GW_A_WAN_IP,
    HOST_A_IP,
    HOST_B_IP,
    LAN_IFACE,
    WAN_IFACE,
    Topology,
    install_sigterm_handler,
    netns_cmd,
)

# The twelve events of one ping, in the order they happen: (gateway, interface, sender).
# "tun" is the tunnel device, whatever its name; the sender tells the direction.
CHAIN = (
    ("a", "lan", HOST_A_IP),  # request from hostA
    ("a", "tun", HOST_A_IP),  # routed into gwA's TUN
    ("a", "wan", GW_A_WAN_IP),  # sealed, leaves gwA
    ("b", "wan", GW_A_WAN_IP),  # arrives at gwB
    ("b", "tun", HOST_A_IP),  # opened, written to gwB's TUN
    ("b", "lan", HOST_A_IP),  # forwarded to hostB
    ("b", "lan", HOST_B_IP),  # the reply
    ("b", "tun", HOST_B_IP),
    ("b", "wan", "!" + GW_A_WAN_IP),
    ("a", "wan", "!" + GW_A_WAN_IP),
    ("a", "tun", HOST_B_IP),
    ("a", "lan", HOST_B_IP),
)
SPANS = {  # name: (first event, last event) in CHAIN
    "gwA seal": (1, 2),
    "gwB open": (3, 4),
    "gwB seal": (7, 8),
    "gwA open": (9, 10),
    "wire+hostB": (2, 9),
    "total": (0, 11),
}
KERNEL_SPANS = {"gwA lan->tun": (0, 1), "gwB tun->lan": (4, 5)}
_TOPOLOGIES = itertools.count(1)


def tun_name(ns: str) -> str:
    """The one TUN device in ``ns`` (the forwarder's or the daemon's)."""
    out = subprocess.run(
        netns_cmd(ns, ["ip", "-o", "link", "show", "type", "tun"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split(":")[1].strip().split("@")[0]


def gateway_cpu_ns(ns: str) -> int:
    """CPU time (ns, /proc/PID/schedstat) of the Python processes in ``ns``: the gateway."""
    pids = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=True
    ).stdout.split()
    total = 0
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("python"):
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except OSError:
            pass  # gone meanwhile
    return total


def start_tcpdump(ns: str, iface: str, bpf: str, path: Path) -> subprocess.Popen[bytes]:
    cmd = ["tcpdump", "-i", iface, "-nn", "-tt", "--time-stamp-precision=nano", "-l"]
    with path.open("wb") as fh:
        return subprocess.Popen(netns_cmd(ns, [*cmd, bpf]), stdout=fh, stderr=subprocess.DEVNULL)


def events(path: Path, gw: str, role: str) -> list[tuple[float, str, str, str]]:
    """(time, gateway, role, sender address) per captured line."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] != "IP":
            continue
        src = parts[2]
        if role == "wan":
            src = src.rsplit(".", 1)[0]  # address.port
        out.append((float(parts[0]), gw, role, src))
    return out


def matches(event: tuple[float, str, str, str], want: tuple[str, str, str]) -> bool:
    gw, role, sender = want
    if event[1] != gw or event[2] != role:
        return False
    return event[3] != sender[1:] if sender.startswith("!") else event[3] == sender


def chains(timeline: list[tuple[float, str, str, str]]) -> list[list[float]]:
    """Walk the merged time line: each complete run of CHAIN's twelve events is a ping."""
    done, current = [], []
    for event in timeline:
        if matches(event, CHAIN[len(current)]):
            current.append(event[0])
            if len(current) == len(CHAIN):
                done.append(current)
                current = []
        elif matches(event, CHAIN[0]):
            current = [event[0]]  # an incomplete ping: start over
    return done


def one_round(name: str, repo: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median microseconds per span for backend ``name`` of source tree ``repo``."""
    daemons.REPO = repo  # IpsecdProcess.start runs the daemon from this tree
    prefix = f"{args.prefix}{next(_TOPOLOGIES)}"
    with Topology(prefix=prefix) as topo, contextlib.ExitStack() as stack:
        # ``python -m`` puts the working directory first on sys.path: in a source tree it
        # would run that tree's ipsecd whatever ``repo`` says.
        stack.enter_context(contextlib.chdir(topo.workdir))
        if name.startswith("forwarder"):
            start_forwarders(topo, aead=name == "forwarder-aead")
        else:
            tunnel = argparse.Namespace(
                ike=DEFAULT_IKE, esp=args.esp, keying="psk", gateway_extra=None
            )
            stack.enter_context(backend("ipsecd", topo, tunnel))
        if not topo.wait_ping(topo.host_a, HOST_B_IP, 15):
            raise RuntimeError(f"{name}: no ping reply")
        topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.02)
        # RTT and CPU first, with no capture running (tcpdump wakes up for every packet).
        gateways = (topo.gw_a, topo.gw_b)
        cpu = [gateway_cpu_ns(ns) for ns in gateways]
        stats = topo.ping(topo.host_a, HOST_B_IP, count=args.pings, interval=0.02)
        cpu = [gateway_cpu_ns(ns) - before for ns, before in zip(gateways, cpu, strict=True)]
        caps = []
        for gw, ns in (("a", topo.gw_a), ("b", topo.gw_b)):
            for role, iface, bpf in (
                ("lan", LAN_IFACE, "icmp"),
                ("tun", tun_name(ns), "icmp"),
                ("wan", WAN_IFACE, "udp and greater 100"),
            ):
                path = topo.workdir / f"cap-{gw}-{role}.txt"
                caps.append((gw, role, path, start_tcpdump(ns, iface, bpf, path)))
        time.sleep(1.0)  # tcpdump attached
        topo.ping(topo.host_a, HOST_B_IP, count=args.pings, interval=0.02)
        time.sleep(0.5)
        timeline = []
        for gw, role, path, proc in caps:
            proc.terminate()
            proc.wait(5)
            timeline += events(path, gw, role)
        timeline.sort()
        pings = chains(timeline)
        if len(pings) < args.pings // 2:
            raise RuntimeError(f"{name}: only {len(pings)} complete pings captured")
        out = {"ping RTT": statistics.median(stats.rtts) * 1e3, "pings": float(len(pings))}
        out["gwA CPU/ping"] = cpu[0] / 1e3 / args.pings
        out["gwB CPU/ping"] = cpu[1] / 1e3 / args.pings
        for label, (i, j) in {**SPANS, **KERNEL_SPANS}.items():
            out[label] = statistics.median((p[j] - p[i]) * 1e6 for p in pings)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--esp", default=DEFAULT_ESP)
    ap.add_argument("--repo", type=Path, nargs="+", default=[REPO], help="ipsecd source trees")
    ap.add_argument("--no-forwarder", action="store_true", help="ipsecd only")
    ap.add_argument("--prefix", default=f"cx{os.getpid() % 10000}x", help="namespace prefix")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("crossing.py needs root (network namespaces)", file=sys.stderr)
        return 2
    install_sigterm_handler()
    runs = [] if args.no_forwarder else [("forwarder", REPO), ("forwarder-aead", REPO)]
    runs += [("ipsecd", r.resolve()) for r in args.repo]
    results: dict[str, list[dict[str, float]]] = {}
    for number in range(1, args.rounds + 1):
        for name, repo in runs:
            label = name if name.startswith("forwarder") else f"ipsecd {repo}"
            results.setdefault(label, []).append(one_round(name, repo, args))
            print(f"round {number}: {label}: {results[label][-1]}", file=sys.stderr)
    spans = ["ping RTT", *SPANS, *KERNEL_SPANS, "gwA CPU/ping", "gwB CPU/ping"]
    print(f"{'us (median of round medians) [range]':<38}" + "".join(f"{s:>22}" for s in spans))
    for label, rounds in results.items():
        cells = []
        for span in spans:
            values = [r[span] for r in rounds]
            cells.append(f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]")
        print(f"{label:<38}" + "".join(f"{c:>22}" for c in cells))
    load = os.getloadavg()
    print(f"\n{args.pings} pings 20 ms apart per round, {args.rounds} round(s); load {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
