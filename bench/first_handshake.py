#!/usr/bin/env python3
"""The first handshake after start, against a later one, in network namespaces (root).

For each start: gwB (responder) and gwA (``start: respond``, so nothing happens before
the command) are started as the netns tests start them, at log level info; the first
``up`` is timed as ``bench/bench.py`` times a handshake (control ``up`` on gwA to the
time stamp of gwA's ``CHILD_SA installed``), then ``down`` and a second ``up``.  Both
daemons' CPU time over each ``up`` (every thread, from ``/proc/PID/task/*/schedstat``,
0.03 s after the install) says what the wall time hides on a loaded machine.  Each
``--repo`` is a source tree (PYTHONPATH of the daemons); starts interleave the trees.
Figures are printed, never asserted (bench/README.md).

    sudo python3 bench/first_handshake.py --starts 12
    sudo python3 bench/first_handshake.py --repo /src/before --repo /src/after
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tests.lab.daemons as daemons  # noqa: E402
from tests.lab.daemons import IpsecdProcess, site_specs, start_psk_pair  # noqa: E402
from tests.lab.topology import Topology  # noqa: E402
from tests.lab.wait import wait_until  # noqa: E402

FIGURES = ("first ms", "later ms", "first CPU ms", "later CPU ms", "spawn->running ms")


def stamp(log: Path, offset: int, event: str) -> float | None:
    """The time stamp of the first ``event`` record after ``offset`` in a JSON log."""
    with log.open("rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    return datetime.datetime.fromisoformat(
                        json.loads(line)["timestamp"]
                    ).timestamp()
                except (ValueError, KeyError):
                    return None
    return None


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def timed_up(a: IpsecdProcess, b: IpsecdProcess) -> tuple[float, float]:
    """Control ``up`` on gwA: (seconds to gwA's CHILD_SA installed, CPU of both daemons)."""
    pids = [p.proc.pid for p in (a, b) if p.proc is not None]
    time.sleep(0.05)  # the command meets both daemons idle, as after start
    mark = a.log.stat().st_size
    cpu = sum(cpu_seconds(p) for p in pids)
    t0 = time.time()
    response = a.control({"cmd": "up", "peer": "b"})
    if not response.get("ok"):
        raise SystemExit(f"control up: {response}")
    installed = wait_until(
        lambda: stamp(a.log, mark, "CHILD_SA installed"), 10, "CHILD_SA installed", step=0.0005
    )
    time.sleep(0.03)
    return installed - t0, sum(cpu_seconds(p) for p in pids) - cpu


def one_start(topo: Topology, repo: Path) -> tuple[float, ...]:
    daemons.REPO = repo  # the daemons' PYTHONPATH
    a_spec, b_spec = site_specs(topo)
    a_spec.start = "respond"
    for spec in (a_spec, b_spec):
        spec.log_level = "info"
    a, b = start_psk_pair(topo, a_spec, b_spec, start=False)
    try:
        b.start()
        spawned = time.time()
        a.start()
        running = stamp(a.log, 0, "ipsecd running") or float("nan")
        first, first_cpu = timed_up(a, b)
        a.control({"cmd": "down", "peer": "b"})
        wait_until(lambda: not a.peer_status()["up"] and not b.peer_status()["up"], 10, "down")
        later, later_cpu = timed_up(a, b)
        return first, later, first_cpu, later_cpu, running - spawned
    finally:
        a.stop()
        b.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, action="append", help="source tree (default: this one)")
    ap.add_argument("--starts", type=int, default=10, help="starts per tree (default 10)")
    ap.add_argument("--prefix", default=f"fh{os.getpid() % 10000}", help="namespace prefix")
    args = ap.parse_args(argv)
    repos = args.repo or [REPO]
    runs: dict[Path, list[tuple[float, ...]]] = {r: [] for r in repos}
    with Topology(prefix=args.prefix) as topo:
        # ``python -m`` puts the working directory first on sys.path: in a source tree it
        # would run that tree's ipsecd whatever --repo says.
        os.chdir(topo.workdir)
        for _ in range(args.starts):
            for repo in repos:
                runs[repo].append(one_start(topo, repo))
    print(f"load average {os.getloadavg()[0]:.2f}; median (min-max) of {args.starts} starts")
    for repo, rows in runs.items():
        print(repo)
        for k, name in enumerate(FIGURES):
            ms = [row[k] * 1e3 for row in rows]
            print(f"  {name:>18} {statistics.median(ms):8.2f} ({min(ms):.2f}-{max(ms):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
