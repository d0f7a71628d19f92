#!/usr/bin/env python3
"""Benchmark: plain routing vs strongSwan (charon + kernel-libipsec) vs ipsecd, one table.

Root only.  For each backend a fresh namespace topology (tests.lab.topology) is built,
hostA — gwA ══ internet ══ gwB — hostB, and measured between hostA and hostB; the
daemons are started by the same code the namespace tests use (tests.lab.daemons for
ipsecd, tests.lab.strongswan for charon).  What each column means is in bench/README.md.

    sudo python3 bench/bench.py                                # everything, 10 s per run
    sudo python3 bench/bench.py --seconds 5 --json out.json --plot out.png
    sudo python3 bench/bench.py --only ipsecd --keying manual

Figures are printed (and written with --json / --plot), never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ahead of bench/ itself, where this file would shadow the package

from bench.figures import (  # noqa: E402
    BACKENDS,
    LABELS,
    range_table,
    ratio_ranges,
    ratios,
    table,
)
from bench.plot import iperf_series, write_plot  # noqa: E402
from tests.lab import daemons  # noqa: E402
from tests.lab.daemons import site_specs, start_manual_pair, start_psk_pair  # noqa: E402
from tests.lab.strongswan import (  # noqa: E402
    Charon,
    StrongSwan,
    StrongSwanError,
    start_pair,
)
from tests.lab.topology import (  # noqa: E402
    HOST_B_IP,
    PingStats,
    Topology,
    install_sigterm_handler,
    process_tree_cpu_seconds,
)

STREAMS = (1, 4)
LOAD_STREAMS = 4  # the run the under-load ping rides along with
DEFAULT_IKE = "aes128gcm16-prfsha256-x25519"
DEFAULT_ESP = "aes128gcm16"
#: The TUN MTU both daemons use: charon's kernel-libipsec sets its TUN to 1400 and has no
#: setting for it (5.9.8 and 6.1), so ipsecd gets ``gateway.mtu: 1400`` (its ``auto``
#: would be larger) and both carry the same TCP segments (bench/README.md).
TUN_MTU = 1400
#: charon's log level for the bench (every subsystem): the tests' ike/cfg/knl/chd at 2
#: cost charon time per message that the handshake figure would count.
CHARON_LOG_LEVEL = 1
_TOPOLOGIES = itertools.count(1)


def topology(prefix: str | None = None) -> Topology:
    """A fresh topology whose namespaces are ``bh<pid>x<n>-*`` (``--prefix P``:
    ``P<n>-*``): this run's own, so two runs (or a run and the tests) never share a name."""
    n = next(_TOPOLOGIES)
    return Topology(prefix=f"{prefix}{n}" if prefix else f"bh{os.getpid()}x{n}")


class BackendUnavailable(RuntimeError):
    """The backend could not be brought up or broke; the message says why."""


class Tunnel(Protocol):
    """What the bench needs from a running backend on a topology."""

    def pids(self) -> list[int]:
        """Daemon processes whose CPU time counts, gwA's then gwB's (empty for plain
        routing)."""
        ...

    def handshake(self) -> tuple[float, float | None] | None:
        """Tear down, bring up again: (seconds to the first CHILD_SA installed, the
        daemon's own log time or None); None when there is no handshake to time."""
        ...


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# --- backends --------------------------------------------------------------------------


class PlainRouting:
    """Static routes between the sites; no daemon, no handshake."""

    def __init__(self, topo: Topology) -> None:
        topo.add_plain_routes()

    def pids(self) -> list[int]:
        return []

    def handshake(self) -> None:
        return None


class StrongSwanTunnel:
    """charon ↔ charon with kernel-libipsec (tests.lab.strongswan); gwA initiates.

    A handshake is ``swanctl --terminate``, both sides seen without SAs, then vici
    ``initiate`` from this process, which charon answers once the CHILD_SA is up.
    """

    def __init__(self, topo: Topology, ike: str, esp: str, root: Path | None = None) -> None:
        try:
            if root is None:
                self.a, self.b = start_pair(
                    topo, log_level=CHARON_LOG_LEVEL, ike_proposals=ike, esp_proposals=esp
                )
            else:  # another installation, e.g. strongSwan 6.1 with ML-KEM (--strongswan-root)
                self.a, self.b = start_pair_in(topo, root, ike, esp)
            self.a.initiate(via="vici")
        except StrongSwanError as exc:
            raise BackendUnavailable(str(exc)) from exc

    def pids(self) -> list[int]:
        return [self.a.pid, self.b.pid]

    def handshake(self) -> tuple[float, float | None]:
        self.a.terminate()
        if not wait_until(lambda: not self.a.list_sas() and not self.b.list_sas(), 10):
            raise BackendUnavailable("strongSwan SAs still there after terminate")
        timing = self.a.initiate(via="vici")
        return timing.wall_seconds, timing.log_seconds


def start_pair_in(topo: Topology, root: Path, ike: str, esp: str) -> tuple[Charon, Charon]:
    """charon ↔ charon of the strongSwan installed in ``root`` (``--strongswan-root``)."""
    swan = StrongSwan(root.name, root)
    pair = start_pair(
        topo, swan=swan, log_level=CHARON_LOG_LEVEL, ike_proposals=ike, esp_proposals=esp
    )
    log(f"strongSwan {swan.version} from {root}")
    return pair


class IpsecdTunnel:
    """ipsecd ↔ ipsecd started by tests.lab.daemons (IKEv2/PSK or manual keys); gwA
    initiates.

    A handshake is control ``down``, both sides seen without CHILD_SA, then control ``up``
    (what ``ipsecctl up`` sends); it ends at the time stamp of gwA's ``CHILD_SA installed``
    log line (the log file is watched, so the daemon is not polled while it works).
    """

    def __init__(
        self,
        topo: Topology,
        ike: str,
        esp: str,
        keying: str,
        gateway_extra: dict[str, Any] | None = None,
    ) -> None:
        specs = site_specs(topo)
        for spec in specs:
            spec.ike_proposals, spec.esp_proposals, spec.log_level = [ike], [esp], "info"
            spec.gateway_extra = {"mtu": TUN_MTU, **(gateway_extra or {})}
        self.keying = keying
        try:
            if keying == "manual":
                self.a, self.b = start_manual_pair(topo, algorithm=esp, specs=specs)
            else:
                self.a, self.b = start_psk_pair(topo, *specs)
            self.a.wait_up(30)
            self.peer = str(self.a.peer_status()["name"])
        except (RuntimeError, AssertionError, OSError) as exc:
            raise BackendUnavailable(str(exc)[-2000:]) from exc

    def pids(self) -> list[int]:
        return [p.proc.pid for p in (self.a, self.b) if p.proc is not None]

    def _up(self, daemon: Any) -> bool:
        return bool(daemon.peer_status()["up"])

    def handshake(self) -> tuple[float, float | None] | None:
        if self.keying == "manual":
            return None
        self.a.control({"cmd": "down", "peer": self.peer})
        if not wait_until(lambda: not self._up(self.a) and not self._up(self.b), 10):
            raise BackendUnavailable("ipsecd CHILD_SAs still there after control 'down'")
        mark = self.a.log.stat().st_size
        t0 = time.time()
        response = self.a.control({"cmd": "up", "peer": self.peer})
        if not response.get("ok"):
            raise BackendUnavailable(f"ipsecd control 'up': {response}")
        stamp: list[float] = []
        if not wait_until(lambda: self._installed_at(mark, stamp), 10, step=0.0005):
            raise BackendUnavailable(f"ipsecd: no CHILD_SA installed after 'up'\n{self._tail()}")
        return stamp[0] - t0, None

    def _installed_at(self, offset: int, out: list[float]) -> bool:
        """True once gwA logged "CHILD_SA installed" after ``offset``; its time into ``out``."""
        with self.a.log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            if '"CHILD_SA installed"' not in line:
                continue
            try:
                stamp = json.loads(line)["timestamp"]
                out.append(datetime.datetime.fromisoformat(stamp).timestamp())
            except (ValueError, KeyError, TypeError):
                out.append(time.time())  # a line we cannot read: when we saw it
            return True
        return False

    def _tail(self) -> str:
        return "\n".join(self.a.log_text().splitlines()[-10:])


@contextlib.contextmanager
def backend(name: str, topo: Topology, args: argparse.Namespace) -> Iterator[Tunnel]:
    """Bring up backend ``name`` on ``topo`` (torn down with the topology)."""
    if name == "plain":
        yield PlainRouting(topo)
    elif name == "strongswan":
        yield StrongSwanTunnel(topo, args.ike, args.esp, getattr(args, "strongswan_root", None))
    elif name == "ipsecd":
        extra = getattr(args, "gateway_extra", None)
        yield IpsecdTunnel(topo, args.ike, args.esp, args.keying, extra)
    else:
        raise ValueError(name)


# --- measuring -------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One iperf3 run."""

    streams: int
    gbps: float
    retransmits: int
    bytes: int  # received by the server
    cpu_seconds: float  # daemons (process trees), over the run
    series: list[tuple[float, float]]  # (s, Gbit/s) per iperf3 interval
    reverse: bool = False  # hostB -> hostA (iperf3 -R): gwB encrypts, gwA decrypts
    cpu_gateways: list[float] = dataclasses.field(default_factory=list)  # gwA, gwB

    def cpu_roles(self) -> tuple[float, float]:
        """(CPU seconds of the gateway that encrypted the data, of the one that decrypted
        it); each also handles the TCP ACKs the other way."""
        if len(self.cpu_gateways) != 2:
            return 0.0, 0.0
        a, b = self.cpu_gateways
        return (b, a) if self.reverse else (a, b)


@dataclasses.dataclass
class Result:
    """Everything measured for one backend."""

    backend: str
    error: str | None = None
    idle: dict[str, float] | None = None
    load: dict[str, float] | None = None
    runs: dict[int, Run] = dataclasses.field(default_factory=dict)  # hostA -> hostB
    reverse_runs: dict[int, Run] = dataclasses.field(default_factory=dict)  # hostB -> hostA
    tun_mtu: dict[str, int] = dataclasses.field(default_factory=dict)  # "gwA ipsec0": 1400
    handshakes_ms: list[float] = dataclasses.field(default_factory=list)
    handshakes_log_ms: list[float] = dataclasses.field(default_factory=list)
    has_daemons: bool = False
    round: int = 1
    loadavg: list[float] | None = None  # os.getloadavg() at the end of this measurement


def ping_summary(stats: PingStats) -> dict[str, float]:
    """The RTT figures of a ping run (ms), for the JSON details."""
    rtts = stats.rtts
    return {
        "sent": stats.transmitted,
        "received": stats.received,
        "min": min(rtts) if rtts else float("nan"),
        "avg": stats.rtt_avg,
        "median": statistics.median(rtts) if rtts else float("nan"),
        "max": max(rtts) if rtts else float("nan"),
    }


def cpu_total(pids: list[int]) -> float:
    """CPU seconds of the process trees of ``pids`` (0 for those gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_tree_cpu_seconds(pid)
    return total


def iperf_run(
    topo: Topology, tunnel: Tunnel, streams: int, seconds: float, reverse: bool = False
) -> Run:
    """iperf3 hostA -> hostB (``reverse``: hostB -> hostA, ``iperf3 -R``: the client on
    hostA receives), with each daemon's CPU time before and after."""
    pids = tunnel.pids()
    before = [cpu_total([pid]) for pid in pids]
    res = topo.iperf3(
        topo.host_a,
        topo.host_b,
        HOST_B_IP,
        seconds=seconds,
        streams=streams,
        extra=("-R",) if reverse else (),
    )
    cpu = [cpu_total([pid]) - b for pid, b in zip(pids, before, strict=True)]
    end = res.raw["end"]
    assert isinstance(end, dict)
    return Run(
        streams=streams,
        gbps=res.gbits_per_second,
        retransmits=res.retransmits,
        bytes=int(end["sum_received"]["bytes"]),
        cpu_seconds=sum(cpu),
        series=iperf_series(res.raw),
        reverse=reverse,
        cpu_gateways=cpu,
    )


def tun_mtus(topo: Topology) -> dict[str, int]:
    """The TUN devices in the gateways and their MTU ("gwA ipsec0": 1400), to show that
    both daemons carry the same packet sizes."""
    found = {}
    for label, ns in (("gwA", topo.gw_a), ("gwB", topo.gw_b)):
        out = topo.run(None, "ip", "-n", ns, "-o", "link", "show", "type", "tun", check=False)
        for m in re.finditer(r"^\d+: ([^:@]+)[^\n]*? mtu (\d+)", out.stdout, re.M):
            found[f"{label} {m.group(1)}"] = int(m.group(2))
    return found


def loaded_ping(topo: Topology, seconds: float, out: list[PingStats]) -> threading.Thread:
    """Ping hostA -> hostB every 50 ms during the middle of an iperf3 run (from 1 s in to
    0.5 s before its end), in a thread; the result lands in ``out``."""
    interval = 0.05
    count = max(5, int((seconds - 1.5) / interval))

    def work() -> None:
        time.sleep(1.0)
        out.append(topo.ping(topo.host_a, HOST_B_IP, count=count, interval=interval))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def measure(topo: Topology, tunnel: Tunnel, result: Result, args: argparse.Namespace) -> None:
    """Idle ping, iperf3 1 and 4 streams (ping alongside the 4-stream run), handshakes."""
    result.has_daemons = bool(tunnel.pids())
    topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.02)  # warm up ARP and routes
    idle = topo.ping(topo.host_a, HOST_B_IP, count=args.pings, interval=0.02)
    if not idle.received:
        raise BackendUnavailable("hostA gets no ping reply from hostB")
    result.idle = ping_summary(idle)
    result.tun_mtu = tun_mtus(topo)
    for reverse in (False, True):
        for streams in STREAMS:
            pinged: list[PingStats] = []
            ride = streams == LOAD_STREAMS and not reverse
            thread = loaded_ping(topo, args.seconds, pinged) if ride else None
            run = iperf_run(topo, tunnel, streams, args.seconds, reverse)
            if thread is not None:
                thread.join(args.seconds + 30)
                result.load = ping_summary(pinged[0]) if pinged and pinged[0].received else None
            (result.reverse_runs if reverse else result.runs)[streams] = run
            log(
                f"  {LABELS[result.backend]}: {streams} stream(s) "
                f"{'B->A' if reverse else 'A->B'} {run.gbps:.3f} Gbit/s, "
                f"{run.retransmits} retransmits, daemon CPU "
                + " + ".join(f"{c:.2f}" for c in run.cpu_gateways)
                + " s"
            )
    for _ in range(args.handshakes):
        timing = tunnel.handshake()
        if timing is None:
            break
        result.handshakes_ms.append(timing[0] * 1000)
        if timing[1] is not None:
            result.handshakes_log_ms.append(timing[1] * 1000)
    if result.handshakes_ms:
        log(f"  {LABELS[result.backend]}: {len(result.handshakes_ms)} handshakes timed")


def run_backend(name: str, args: argparse.Namespace, round_no: int = 1) -> Result:
    """Build a fresh topology, bring ``name`` up, measure, tear everything down."""
    result = Result(name, round=round_no)
    log(f"{LABELS[name]} (round {round_no}) ...")
    with topology(getattr(args, "prefix", None)) as topo, contextlib.ExitStack() as stack:
        # ``python -m`` puts the working directory first on sys.path: from a source tree
        # it would run that tree's ipsecd whatever ``--repo`` says.
        stack.enter_context(contextlib.chdir(topo.workdir))
        try:
            with backend(name, topo, args) as tunnel:
                measure(topo, tunnel, result, args)
        except (BackendUnavailable, RuntimeError, OSError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            log(f"  {LABELS[name]} failed: {result.error}")
    result.loadavg = list(os.getloadavg())
    return result


def run_rounds(order: list[str], args: argparse.Namespace) -> list[dict[str, Result]]:
    """``args.rounds`` rounds, each measuring every backend once, interleaved: round 1 in
    ``order``, round 2 reversed, and so on, so no backend always runs first or right after
    another's teardown, and a change in the machine's load hits every backend alike."""
    rounds = []
    for r in range(args.rounds):
        names = order if r % 2 == 0 else order[::-1]
        done = {name: run_backend(name, args, r + 1) for name in names}
        rounds.append({name: done[name] for name in order})
    return rounds


def figures_of(results: dict[str, Result]) -> dict[str, dict[str, float | None]]:
    """The table's figures per backend (None: not measured or not applicable)."""
    plain = results.get("plain")
    plain_rtt = plain.idle["avg"] if plain and plain.idle and not plain.error else None
    out: dict[str, dict[str, float | None]] = {}
    for name, res in results.items():
        ok = res.error is None
        runs = res.runs if ok else {}
        rev = res.reverse_runs if ok else {}
        every = [*runs.values(), *rev.values()]
        gb = sum(r.bytes for r in every) / 1e9
        cpu = sum(r.cpu_seconds for r in every)
        enc = sum(r.cpu_roles()[0] for r in every)
        dec = sum(r.cpu_roles()[1] for r in every)
        per_gb = ok and res.has_daemons and gb
        rtt = res.idle["avg"] if ok and res.idle else None
        out[name] = {
            "tcp1_gbps": runs[1].gbps if 1 in runs else None,
            "tcp4_gbps": runs[4].gbps if 4 in runs else None,
            "tcp1_rev_gbps": rev[1].gbps if 1 in rev else None,
            "tcp4_rev_gbps": rev[4].gbps if 4 in rev else None,
            "rtt_idle_ms": rtt,
            "rtt_added_ms": rtt - plain_rtt
            if rtt is not None and plain_rtt is not None and name != "plain"
            else None,
            "rtt_load_ms": res.load["avg"] if ok and res.load else None,
            "handshake_ms": statistics.median(res.handshakes_ms)
            if ok and res.handshakes_ms
            else None,
            "cpu_s_per_gb": cpu / gb if per_gb else None,
            "cpu_enc_s_per_gb": enc / gb if per_gb else None,
            "cpu_dec_s_per_gb": dec / gb if per_gb else None,
        }
    return out


def median_figures(
    per_round: list[dict[str, dict[str, float | None]]],
) -> dict[str, dict[str, float | None]]:
    """The median of each figure over the rounds that measured it (None: none did)."""
    out: dict[str, dict[str, float | None]] = {}
    for name in per_round[0]:
        out[name] = {}
        for key in per_round[0][name]:
            values = [v for r in per_round if (v := r[name][key]) is not None]
            out[name][key] = statistics.median(values) if values else None
    return out


def figure_ranges(
    per_round: list[dict[str, dict[str, float | None]]],
) -> dict[str, dict[str, list[float] | None]]:
    """[lowest, highest] of each figure over the rounds (None: no round measured it)."""
    out: dict[str, dict[str, list[float] | None]] = {}
    for name in per_round[0]:
        out[name] = {}
        for key in per_round[0][name]:
            values = [v for r in per_round if (v := r[name][key]) is not None]
            out[name][key] = [min(values), max(values)] if values else None
    return out


# --- environment, output ---------------------------------------------------------------


def log(msg: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def _output(*cmd: str) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout + res.stderr


def environment() -> dict[str, Any]:
    """Date, machine and versions, for the JSON (figures mean little without them)."""
    import cryptography

    import ipsecd

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    swan = re.search(r"strongSwan (\S+)", _output("swanctl", "--version"))
    commit = _output("git", "-C", str(daemons.REPO), "rev-parse", "--short", "HEAD").strip()
    try:
        from importlib.metadata import version

        ipsecd_version = version("ipsecd")
    except Exception:  # not installed: the source tree alone
        ipsecd_version = getattr(ipsecd, "__version__", "unknown")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "versions": {
            "ipsecd": f"{ipsecd_version} ({commit})" if commit else ipsecd_version,
            "strongswan": swan.group(1) if swan else None,
            "cryptography": cryptography.__version__,
            "python": platform.python_version(),
        },
    }


def short_error(text: str, limit: int = 300) -> str:
    """The first line of an error and up to two lines that say what failed (the full text
    goes to stderr and the JSON)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [
        line
        for line in lines[1:]
        if re.search(r"failed|not recognized|error|refus", line, re.I)
        and "opening directory" not in line
    ]
    short = "; ".join(lines[:1] + telling[:2])
    return short if len(short) <= limit else short[: limit - 3] + "..."


def notes(rounds: list[dict[str, Result]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """What the table was measured with, the machine's load, and what went wrong."""
    before = ", ".join(f"{x:.2f}" for x in meta["loadavg_at_start"])
    during = sorted(r.loadavg[0] for rnd in rounds for r in rnd.values() if r.loadavg)
    lines = [
        f"iperf3 TCP hostA -> hostB and hostB -> hostA (rev: iperf3 -R), {args.seconds:g} s "
        f"per run; RTT load: ping during the {LOAD_STREAMS}-stream A->B run; handshake: "
        f"median of {args.handshakes}"
        + (" (none for ipsecd with manual keys)" if args.keying == "manual" else "")
        + f"; figures: median of {len(rounds)} interleaved round(s)",
        f"ESP {args.esp}, IKE {args.ike}, ipsecd keying {args.keying}; "
        f"{meta['nproc']} CPUs ({meta['cpu_model']})",
        f"load average (1, 5, 15 min) before: {before}; 1-min during (after each backend): "
        + (f"{during[0]:.2f}-{during[-1]:.2f}" if during else "-"),
        "CPU: daemon CPU s per GB received over all four runs; encr: the gateway on the "
        "sending side (encrypts the data, decrypts the ACKs), decr: the other; charon "
        f"logs at level {CHARON_LOG_LEVEL}",
    ]
    mtus = sorted(
        {
            f"{LABELS[n]} {k} {v}"
            for rnd in rounds
            for n, r in rnd.items()
            for k, v in r.tun_mtu.items()
        }
    )
    if mtus:
        lines.append("TUN MTU: " + ", ".join(mtus))
    log_ms = [
        ms for rnd in rounds if "strongswan" in rnd for ms in rnd["strongswan"].handshakes_log_ms
    ]
    if log_ms:
        lines.append(
            f"strongSwan handshake in charon's log (ms resolution): median "
            f"{statistics.median(log_ms):.1f} ms"
        )
    for rnd in rounds:
        for name, res in rnd.items():
            tag = f"{LABELS[name]} (round {res.round})"
            if res.error:
                lines.append(f"{tag}: not measured: {short_error(res.error)}")
            retr = ", ".join(
                f"{s} str. {'B->A' if r.reverse else 'A->B'} {r.retransmits}"
                for r in (*res.runs.values(), *res.reverse_runs.values())
                for s in (r.streams,)
                if r.retransmits
            )
            if retr:
                lines.append(f"{tag} TCP retransmits: {retr}")
    return "\n".join(lines)


def details(res: Result) -> dict[str, Any]:
    """Everything measured for one backend in one round, for the JSON."""
    return {
        "round": res.round,
        "error": res.error,
        "loadavg": res.loadavg,
        "ping_idle_ms": res.idle,
        "ping_load_ms": res.load,
        "iperf3": {str(s): dataclasses.asdict(r) for s, r in res.runs.items()},
        "iperf3_reverse": {str(s): dataclasses.asdict(r) for s, r in res.reverse_runs.items()},
        "tun_mtu": res.tun_mtu,
        "handshakes_ms": res.handshakes_ms,
        "handshakes_daemon_log_ms": res.handshakes_log_ms,
    }


def to_json(
    rounds: list[dict[str, Result]], args: argparse.Namespace, meta: dict[str, Any]
) -> dict[str, Any]:
    """All figures (medians over the rounds, their ranges, each round's), the details
    behind them, and the environment."""
    per_round = [figures_of(rnd) for rnd in rounds]
    figures = median_figures(per_round)
    last = rounds[-1]
    return {
        "schema": 1,
        "meta": meta,
        "params": {
            "seconds": args.seconds,
            "only": args.only,
            "ike": args.ike,
            "esp": args.esp,
            "keying": args.keying,
            "handshakes": args.handshakes,
            "pings": args.pings,
            "rounds": args.rounds,
            "repo": str(daemons.REPO),
            "tun_mtu_ipsecd": TUN_MTU,
            "charon_log_level": CHARON_LOG_LEVEL,
        },
        "figures": figures,
        "ratios": ratios(figures),
        "ranges": figure_ranges(per_round),
        "rounds": [{"figures": f, "ratios": ratios(f)} for f in per_round],
        # The last round's details under the old key; every round's in "round_details".
        "details": {name: details(res) for name, res in last.items()},
        "round_details": [{name: details(res) for name, res in rnd.items()} for rnd in rounds],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (every option is described in bench/README.md)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per iperf3 run (default 10)")
    ap.add_argument(
        "--only", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="backends to run"
    )
    ap.add_argument("--esp", default=DEFAULT_ESP, help=f"ESP proposal (default {DEFAULT_ESP})")
    ap.add_argument("--ike", default=DEFAULT_IKE, help=f"IKE proposal (default {DEFAULT_IKE})")
    ap.add_argument(
        "--keying",
        choices=("psk", "manual"),
        default="psk",
        help="ipsecd: IKEv2 with a PSK (default) or static SAs (no handshake)",
    )
    ap.add_argument("--handshakes", type=int, default=20, help="handshakes to time (default 20)")
    ap.add_argument(
        "--strongswan-root",
        type=Path,
        metavar="DIR",
        help="run charon from the strongSwan installed in this root (e.g. 6.1 for ML-KEM)",
    )
    ap.add_argument("--pings", type=int, default=50, help="idle pings, 20 ms apart (default 50)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds, each measuring every backend once (default 3)",
    )
    ap.add_argument(
        "--repo",
        type=Path,
        metavar="TREE",
        help="run ipsecd from this source tree (default: this one): a before/after",
    )
    ap.add_argument("--prefix", help="namespace name prefix (default bh<pid>x)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write all figures as JSON")
    ap.add_argument("--plot", type=Path, metavar="FILE.png", help="throughput over time (PNG)")
    args = ap.parse_args(argv)
    if args.seconds < 2:
        ap.error("--seconds must be at least 2")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON / plot if asked."""
    argv = sys.argv[1:] if argv is None else argv
    if "--scale" in argv:  # the scale mode: bench/scale.py, its own options
        from bench import scale

        return scale.main([a for a in argv if a != "--scale"])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py needs root (network namespaces)", file=sys.stderr)
        return 2
    install_sigterm_handler()
    if args.repo is not None:
        daemons.REPO = args.repo.resolve()  # IpsecdProcess.start runs the daemon from it
    meta = environment()
    if args.strongswan_root is not None:  # swanctl --version above is the host's own
        meta["versions"]["strongswan"] = StrongSwan("root", args.strongswan_root).version
    order = [n for n in BACKENDS if n in args.only]
    if "plain" not in order:
        log("note: without 'plain' there is no RTT added nor ratio to plain")
    rounds = run_rounds(order, args)
    per_round = [figures_of(rnd) for rnd in rounds]
    print(table(median_figures(per_round)))
    if len(rounds) > 1:
        print()
        print(f"lowest-highest of the {len(rounds)} rounds")
        print(range_table(figure_ranges(per_round), ratio_ranges(per_round)))
    print()
    print(notes(rounds, args, meta))
    if args.json:
        args.json.write_text(json.dumps(to_json(rounds, args, meta), indent=2) + "\n")
        log(f"figures written to {args.json}")
    if args.plot:  # the last round's series
        last = rounds[-1]
        series = {n: {s: r.series for s, r in res.runs.items()} for n, res in last.items()}
        title = f"ESP {args.esp}, {meta['nproc']} CPUs, {meta['date']}"
        write_plot(series, args.plot, title=title)
        log(f"plot written to {args.plot}")
    return 1 if any(res.error for rnd in rounds for res in rnd.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
