#!/usr/bin/env python3
"""Ping through the tunnel while an attacker floods the responder with IKE (issue 12).

Root only.  Each row builds a fresh ``Topology(attacker=True)`` (the internet link is a
bridge holding gwA, gwB, an attacker and a bystander), brings ipsecd up on both gateways
with gwB demanding a COOKIE from every IKE_SA_INIT (``cookie_threshold: 0``), starts
``tests/netns/ike_flood.py`` flat out for 15 s in the attacker's namespace and pings
hostA -> hostB every 50 ms meanwhile.  Rows:

* ``baseline``: no flood (the machine's own noise, in the same minutes);
* ``64k``: 64 KB IKE_SA_INITs of empty payloads to UDP 500 (issue 12's datagram);
* ``10k``: well-formed 10 000-byte IKE_SA_INITs (a padding Vendor ID) to UDP 500;
* ``10k4500``: the same to UDP 4500 with the non-ESP marker (the socket ESP shares);
* ``closed``: the 10 KB flood to a closed port of gwB (what the kernel alone costs);
* ``reader``: the 10 KB flood to a bare Python loop in gwB that only reads it.

Rounds alternate the rows, so a slow minute of a shared machine hits all of them.
``--repo DIR`` runs the daemons from another checkout (``git archive REV | tar -x -C DIR``)
for a before/after comparison.  Figures are printed, never asserted::

    sudo python3 bench/ike_flood.py                        # every row, 3 rounds
    sudo python3 bench/ike_flood.py --rows 10k --rounds 1 --repo /tmp/before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ahead of bench/ itself

import tests.lab.daemons as daemons  # noqa: E402
from tests.lab.daemons import site_specs, start_psk_pair  # noqa: E402
from tests.lab.topology import (  # noqa: E402
    HOST_B_IP,
    Topology,
    install_sigterm_handler,
    process_cpu_seconds,
)
from tests.netns.test_ike_hardening import _env, _flood_cmd, _percentile  # noqa: E402

SECONDS = 15
PADDED = ["--kind", "padded", "--size", "10000", "--sources", "self", "--rate", "0"]
ROWS: dict[str, tuple[list[str] | None, str | None]] = {
    "baseline": (None, None),
    "64k": (["--kind", "empty", "--size", "65000", "--sources", "self", "--rate", "0"], None),
    "10k": (PADDED, None),
    "10k4500": ([*PADDED, "--port", "4500", "--marker", "--sport", "4500"], None),
    "closed": ([*PADDED, "--port", "9"], None),
    "reader": ([*PADDED, "--port", "9"], "reader"),
}
COUNTERS = ("oversized", "cookies_sent", "malformed", "ike_busy_dropped", "ike_queue_full")
READER = (
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)\ns.bind(('192.0.2.2', 9))\n"
    "while True: s.recv(65535)"
)


def run_row(row: str) -> dict[str, Any]:
    flood_args, sink = ROWS[row]
    with Topology(attacker=True) as topo, contextlib.chdir(topo.workdir):
        # ``python -m`` puts the working directory first on sys.path: in a source tree it
        # would run that tree's ipsecd whatever ``--repo`` says.
        assert topo.attacker is not None
        a, b = site_specs(topo)
        b.gateway_extra = {"cookie_threshold": 0}
        gw_a, gw_b = start_psk_pair(topo, a, b, start=False)
        gw_b.start()
        gw_a.start()
        gw_a.wait_up(timeout=30)
        assert topo.wait_ping(topo.host_a, HOST_B_IP, timeout=20)
        assert gw_b.proc is not None
        if sink:
            topo.spawn(topo.gw_b, [sys.executable, "-c", READER], topo.log_path("reader.log"))
            time.sleep(0.5)
        cpu = process_cpu_seconds(gw_b.proc.pid)
        flood = None
        log = topo.log_path("flood.log")
        if flood_args:
            args = [*flood_args, "--seconds", str(SECONDS)]
            flood = topo.spawn(topo.attacker, _flood_cmd(topo, *args), log_path=log, env=_env())
            time.sleep(1.0)
        stats = topo.ping(topo.host_a, HOST_B_IP, count=(SECONDS - 2) * 20, interval=0.05)
        result: dict[str, Any] = {}
        if flood is not None:
            flood.wait(SECONDS + 30)
            result = json.loads(log.read_text().strip().splitlines()[-1])
        cpu = process_cpu_seconds(gw_b.proc.pid) - cpu
        try:
            counters = gw_b.status()["ike_counters"]
        except Exception as exc:  # a stalled daemon does not answer its control socket
            counters = {"status": f"no answer ({type(exc).__name__})"}
    rtts = list(stats.rtts)
    return {
        "row": row,
        "sent": result.get("sent"),
        "rate": result.get("rate"),
        "mbit": round(result["bytes"] * 8 / result["seconds"] / 1e6) if result else None,
        "received": stats.received,
        "transmitted": stats.transmitted,
        "p50": round(statistics.median(rtts), 2) if rtts else None,
        "p99": round(_percentile(rtts, 0.99), 2) if rtts else None,
        "max": round(max(rtts), 2) if rtts else None,
        "cpu": round(cpu, 1),
        "load": round(os.getloadavg()[0], 1),
        "counters": {k: counters.get(k, 0) for k in COUNTERS}
        | ({"status": counters["status"]} if "status" in counters else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", help="run the daemons from this checkout instead")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    install_sigterm_handler()  # a killed run still tears its namespaces down
    if args.repo:
        daemons.REPO = Path(args.repo).resolve()
    rows = []
    for n in range(args.rounds):
        for row in args.rows:
            r = run_row(row)
            rows.append(r)
            flood = f"{r['sent']} sent, {r['rate']}/s, {r['mbit']} Mbit/s; " if r["sent"] else ""
            print(
                f"round {n + 1} {row}: {flood}ping {r['received']}/{r['transmitted']},"
                f" p50 {r['p50']} p99 {r['p99']} max {r['max']} ms; gwB CPU {r['cpu']} s;"
                f" load {r['load']}; {r['counters']}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
