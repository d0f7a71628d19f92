#!/usr/bin/env python3
"""Benchmark: plain routing vs strongSwan (kernel-libipsec) vs ipsecd, side by side.

Root only.  For each backend a fresh namespace topology (tests/netns/topology.py) is built:
hostA — gwA ══ internet ══ gwB — hostB; the figures are taken between hostA and hostB:

* iperf3 TCP throughput, 1 and 4 streams (``--seconds``, default 10),
* idle ping RTT (min / avg), and the RTT added over plain routing,
* handshake time, median of ``--handshakes`` (strongSwan: ``swanctl --initiate`` to
  CHILD_SA up, plus charon's own log time; ipsecd: control-socket ``up`` to status "up"),
* CPU seconds of the two gateway daemons during the iperf3 runs (/proc/PID/stat
  utime+stime before/after) and CPU seconds per GB carried.

ipsecd runs as ``python -m ipsecd.cli.ipsecd run --config FILE`` in each gateway
namespace; configs are generated unless ``--ipsecd-config-a/-b`` are given.  If it does
not come up (no tunnel within ``--ipsecd-timeout``) its column says why and the rest goes on.

    sudo python3 bench/bench.py                       # everything, 10 s per iperf3 run
    sudo python3 bench/bench.py --only plain strongswan --seconds 5 --json out.json

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ipsecd.lab.topology import (  # noqa: E402
    GW_A_LAN_IP,
    GW_B_LAN_IP,
    HOST_B_IP,
    SITE_A,
    SITE_B,
    IperfResult,
    Topology,
    install_sigterm_handler,
    process_cpu_seconds,
)
from ipsecd.lab.strongswan import start_pair  # noqa: E402

BACKENDS = ("plain", "strongswan", "ipsecd")
LABELS = {"plain": "plain", "strongswan": "strongSwan", "ipsecd": "ipsecd"}


class BackendUnavailable(RuntimeError):
    """The backend could not be brought up; the message says why."""


class Tunnel(Protocol):
    """What the bench needs from a running backend on a topology."""

    def pids(self) -> list[int]:
        """Daemon processes whose CPU time counts (empty for plain routing)."""
        ...

    def handshake(self) -> tuple[float, float | None]:
        """Tear the tunnel down and bring it up again: (wall seconds, daemon-side seconds)."""
        ...


# --- backends --------------------------------------------------------------------------


class PlainRouting:
    """Static routes between the sites; no daemon."""

    def __init__(self, topo: Topology) -> None:
        topo.add_plain_routes()

    def pids(self) -> list[int]:
        return []

    def handshake(self) -> tuple[float, float | None]:
        raise BackendUnavailable("no handshake in plain routing")


class StrongSwanTunnel:
    """charon ↔ charon with kernel-libipsec; gwA initiates."""

    def __init__(self, topo: Topology, ike: str, esp: str) -> None:
        self.a, self.b = start_pair(topo, ike_proposals=ike, esp_proposals=esp)
        self.a.initiate()
        if not topo.wait_ping(topo.host_a, HOST_B_IP, timeout=10):
            raise BackendUnavailable("strongSwan tunnel up but hostA cannot ping hostB")

    def pids(self) -> list[int]:
        return [self.a.pid, self.b.pid]

    def handshake(self) -> tuple[float, float | None]:
        self.a.terminate()
        wait_until(lambda: not self.b.list_sas(), 5)
        timing = self.a.initiate()
        return timing.wall_seconds, timing.log_seconds


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def ipsecd_configs(
    topo: Topology, ike: str, esp: str, directory: Path
) -> tuple[tuple[Path, Path], tuple[str, str]]:
    """Write site-to-site PSK configs for gwA (initiator) and gwB (responder).

    Returns the two config paths and the peer name each side uses for the other.
    """
    import yaml  # a dependency of ipsecd itself

    psk = directory / "bench.psk"
    psk.write_text(secrets.token_hex(32) + "\n")
    psk.chmod(0o600)
    paths = []
    sides = (
        ("a", topo.gw_a_wan_ip, topo.gw_b_wan_ip, GW_A_LAN_IP, SITE_A, SITE_B, "initiate", "b"),
        ("b", topo.gw_b_wan_ip, topo.gw_a_public_ip, GW_B_LAN_IP, SITE_B, SITE_A, "respond", "a"),
    )
    for name, listen, remote, lan_ip, local_ts, remote_ts, start, peer in sides:
        config = {
            "log": {"level": "info"},
            "gateway": {
                "tun": f"ipsecd{name}",
                "addresses": [f"{lan_ip}/32"],
                "listen": [listen],
                "control_socket": str(directory / f"ipsecd-{name}.sock"),
            },
            "peers": [
                {
                    "name": peer,
                    "remote_address": remote,
                    "start": start,
                    "local_ts": [local_ts],
                    "remote_ts": [remote_ts],
                    "ike": {"proposals": [ike]},
                    "esp": {"proposals": [esp]},
                    "auth": {"psk_file": str(psk)},
                }
            ],
        }
        path = directory / f"ipsecd-{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        paths.append(path)
    return (paths[0], paths[1]), ("b", "a")


class IpsecdTunnel:
    """Two ipsecd daemons started from config files; gwA's is the initiator.

    The control socket path is read from each config (``gateway.control_socket``); the
    handshake is timed as control ``down`` + ``up`` on gwA until its status says up.
    """

    def __init__(
        self,
        topo: Topology,
        config_a: Path,
        config_b: Path,
        peer_a: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        import yaml

        self.topo = topo
        self.procs = []
        self.sockets: list[Path | None] = []
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.logs = []
        for ns, config in ((topo.gw_b, config_b), (topo.gw_a, config_a)):  # responder first
            data = yaml.safe_load(config.read_text()) or {}
            sock = (data.get("gateway") or {}).get("control_socket")
            self.sockets.append(Path(sock) if sock else None)
            if ns == topo.gw_a and peer_a is None:
                peers = data.get("peers") or [{}]
                peer_a = peers[0].get("name")
            log = topo.log_path(f"ipsecd-{Path(config).stem}.log")
            self.logs.append(log)
            cmd = [sys.executable, "-m", "ipsecd.cli.ipsecd", "run", "--config", str(config)]
            proc = topo.spawn(ns, cmd, log, env=env)
            self.procs.append(proc)
            time.sleep(0.2)
        self.peer_a = peer_a
        up = wait_until(self._pings_or_dies, timeout, step=0.0)
        if not up:
            raise BackendUnavailable(self._why(f"no tunnel within {timeout:.0f}s"))

    def _pings_or_dies(self) -> bool:
        if any(p.poll() is not None for p in self.procs):
            raise BackendUnavailable(self._why("a daemon exited"))
        return self.topo.ping(self.topo.host_a, HOST_B_IP, count=1, wait=0.3).received == 1

    def _why(self, what: str) -> str:
        tails = []
        for log in self.logs:
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            tails.append(f"{log.name}: {lines[-1] if lines else '(empty)'}")
        return f"{what}; " + "; ".join(tails)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _control(self, payload: dict[str, Any]) -> dict[str, Any]:
        from ipsecd.daemon.control import request

        sock = self.sockets[1]
        if sock is None:
            raise BackendUnavailable("gwA config names no control_socket")
        return request(sock, payload)

    def _a_up(self) -> bool:
        status = self._control({"cmd": "status"}).get("status", {})
        return any(p.get("up") for p in status.get("peers", []))

    def handshake(self) -> tuple[float, float | None]:
        try:
            self._control({"cmd": "down", "peer": self.peer_a})
            wait_until(lambda: not self._a_up(), 5)
            t0 = time.monotonic()
            self._control({"cmd": "up", "peer": self.peer_a})
            if not wait_until(self._a_up, 10, step=0.0005):
                raise BackendUnavailable("ipsecd did not come back up after control 'up'")
            return time.monotonic() - t0, None
        except (OSError, KeyError, ImportError) as exc:
            raise BackendUnavailable(f"ipsecd control socket: {exc}") from exc


# --- measuring -------------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    """Everything measured for one backend (None: not measured / not applicable)."""

    backend: str
    error: str | None = None
    gbps: dict[int, float] = dataclasses.field(default_factory=dict)  # streams -> Gbit/s
    retransmits: dict[int, int] = dataclasses.field(default_factory=dict)
    gbytes: dict[int, float] = dataclasses.field(default_factory=dict)  # carried per run
    cpu_seconds: dict[int, float] = dataclasses.field(default_factory=dict)  # daemons, per run
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    added_rtt_ms: float | None = None  # rtt_avg_ms minus plain routing's
    handshake_ms: float | None = None
    handshake_daemon_ms: float | None = None
    handshakes: list[float] = dataclasses.field(default_factory=list)

    def cpu_per_gb(self, streams: int) -> float | None:
        """Daemon CPU seconds per GB carried in the ``streams`` run."""
        gb, cpu = self.gbytes.get(streams), self.cpu_seconds.get(streams)
        if not gb or cpu is None or self.backend == "plain":
            return None
        return cpu / gb


def cpu_total(pids: list[int]) -> float:
    """Sum of CPU seconds of ``pids`` (0 for those gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(pid)
    return total


def measure(topo: Topology, tunnel: Tunnel, figures: Figures, args: argparse.Namespace) -> Figures:
    """Run the ping, iperf3 and handshake measurements on a topology with a live tunnel."""
    topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.02)  # warm up ARP, PMTU state
    ping = topo.ping(topo.host_a, HOST_B_IP, count=args.pings, interval=0.02)
    figures.rtt_min_ms, figures.rtt_avg_ms = ping.rtt_min, ping.rtt_avg
    for streams in args.streams:
        before = cpu_total(tunnel.pids())
        res: IperfResult = topo.iperf3(
            topo.host_a, topo.host_b, HOST_B_IP, seconds=args.seconds, streams=streams
        )
        figures.cpu_seconds[streams] = cpu_total(tunnel.pids()) - before
        figures.gbps[streams] = res.gbits_per_second
        figures.retransmits[streams] = res.retransmits
        figures.gbytes[streams] = float(res.raw["end"]["sum_received"]["bytes"]) / 1e9  # type: ignore[index]
        log(
            f"  {LABELS[figures.backend]}: {streams} stream(s) {res.gbits_per_second:.3f} Gbit/s, "
            f"{res.retransmits} retransmits, daemon CPU {figures.cpu_seconds[streams]:.2f} s"
        )
    if figures.backend != "plain" and args.handshakes > 0:
        walls, daemon = [], []
        for _ in range(args.handshakes):
            wall, inner = tunnel.handshake()
            walls.append(wall)
            if inner is not None:
                daemon.append(inner)
        figures.handshakes = walls
        figures.handshake_ms = statistics.median(walls) * 1000
        figures.handshake_daemon_ms = statistics.median(daemon) * 1000 if daemon else None
    return figures


@contextlib.contextmanager
def backend(name: str, topo: Topology, args: argparse.Namespace) -> Iterator[Tunnel]:
    """Bring up backend ``name`` on ``topo``."""
    if name == "plain":
        yield PlainRouting(topo)
    elif name == "strongswan":
        yield StrongSwanTunnel(topo, args.ike, args.esp)
    elif name == "ipsecd":
        if args.ipsecd_config_a and args.ipsecd_config_b:
            paths, peer = (args.ipsecd_config_a, args.ipsecd_config_b), None
        else:
            paths, peers = ipsecd_configs(topo, args.ike, args.esp, topo.workdir)
            peer = peers[0]
        yield IpsecdTunnel(topo, paths[0], paths[1], peer, args.ipsecd_timeout)
    else:
        raise ValueError(name)


def run_backend(name: str, args: argparse.Namespace) -> Figures:
    """Build a fresh topology, bring ``name`` up, measure, tear everything down."""
    figures = Figures(name)
    log(f"{LABELS[name]} ...")
    with Topology() as topo:
        try:
            with backend(name, topo, args) as tunnel:
                measure(topo, tunnel, figures, args)
        except BackendUnavailable as exc:
            figures.error = str(exc)
            log(f"  {LABELS[name]} skipped: {exc}")
    return figures


# --- output ----------------------------------------------------------------------------


def log(msg: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number, or '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """a / b as '0.03x', or '-'."""
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(results: dict[str, Figures], args: argparse.Namespace) -> str:
    """One plain-text table, backends side by side with ratios."""
    plain, swan, ipsecd = (results.get(n) for n in BACKENDS)

    def get(fig: Figures | None, fn: Callable[[Figures], float | None]) -> float | None:
        return None if fig is None or fig.error else fn(fig)

    def daemon_cpu(streams: int) -> Callable[[Figures], float | None]:
        return lambda f: None if f.backend == "plain" else f.cpu_seconds.get(streams)

    def gbps(streams: int) -> Callable[[Figures], float | None]:
        return lambda f: f.gbps.get(streams)

    def per_gb(streams: int) -> Callable[[Figures], float | None]:
        return lambda f: f.cpu_per_gb(streams)

    rows: list[tuple[str, Callable[[Figures], float | None], int]] = [
        (f"TCP {s} stream{'s' if s > 1 else ''} Gbit/s", gbps(s), 3) for s in args.streams
    ]
    rows += [
        ("RTT idle min ms", lambda f: f.rtt_min_ms, 3),
        ("RTT idle avg ms", lambda f: f.rtt_avg_ms, 3),
        ("added RTT avg ms", lambda f: f.added_rtt_ms, 3),
        ("handshake median ms", lambda f: f.handshake_ms, 1),
        ("  daemon-side (log) ms", lambda f: f.handshake_daemon_ms, 1),
    ]
    for s in args.streams:
        rows.append((f"daemon CPU s ({s} str.)", daemon_cpu(s), 2))
        rows.append((f"CPU s per GB ({s} str.)", per_gb(s), 2))

    head = ["", "plain", "strongSwan", "ipsecd", "sSwan/plain", "ipsecd/sSwan", "ipsecd/plain"]
    lines = [head]
    for label, fn, digits in rows:
        p, w, i = get(plain, fn), get(swan, fn), get(ipsecd, fn)
        lines.append(
            [
                label,
                fmt(p, digits),
                fmt(w, digits),
                fmt(i, digits),
                ratio(w, p),
                ratio(i, w),
                ratio(i, p),
            ]
        )
    widths = [max(len(r[c]) for r in lines) for c in range(len(head))]
    out = []
    for n, row in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(widths[0]) if c == 0 else cell.rjust(widths[c])
                for c, cell in enumerate(row)
            )
        )
        if n == 0:
            out.append("-" * len(out[0]))
    notes = [
        f"iperf3 TCP hostA -> hostB, {args.seconds:g} s per run; ESP {args.esp}, IKE {args.ike}; "
        f"{os.cpu_count()} CPUs",
    ]
    for name, fig in results.items():
        if fig.error:
            notes.append(f"{LABELS[name]}: not measured: {fig.error}")
        elif fig.retransmits:
            retr = ", ".join(f"{s} str. {r}" for s, r in fig.retransmits.items())
            notes.append(f"{LABELS[name]} TCP retransmits: {retr}")
    return "\n".join(out + [""] + notes)


def to_json(results: dict[str, Figures], args: argparse.Namespace) -> dict[str, Any]:
    """The figures as a JSON-able dict."""
    return {
        "params": {
            "seconds": args.seconds,
            "streams": args.streams,
            "ike": args.ike,
            "esp": args.esp,
            "handshakes": args.handshakes,
            "cpus": os.cpu_count(),
        },
        "results": {
            name: {
                **dataclasses.asdict(fig),
                "cpu_per_gb": {s: fig.cpu_per_gb(s) for s in args.streams},
            }
            for name, fig in results.items()
        },
    }


def plot(results: dict[str, Figures], args: argparse.Namespace, out: Path) -> None:
    """Bar chart of throughput per backend (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("--plot: matplotlib is not installed; no plot written")
        return
    names = [n for n in BACKENDS if n in results and not results[n].error]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(args.streams))
    for k, s in enumerate(args.streams):
        xs = [j + k * width for j in range(len(names))]
        ax.bar(xs, [results[n].gbps.get(s, 0) for n in names], width, label=f"{s} stream(s)")
    ax.set_xticks([j + width * (len(args.streams) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels([LABELS[n] for n in names])
    ax.set_ylabel("Gbit/s")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per iperf3 run (default 10)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="default: 1 4")
    ap.add_argument("--pings", type=int, default=50, help="idle pings per backend (default 50)")
    ap.add_argument("--handshakes", type=int, default=10, help="handshakes to time (default 10)")
    ap.add_argument("--ike", default="aes256gcm16-prfsha256-x25519", help="IKE proposal")
    ap.add_argument("--esp", default="aes128gcm16", help="ESP proposal (default aes128gcm16)")
    ap.add_argument("--only", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--ipsecd-config-a", type=Path, help="gwA's config (default: generated)")
    ap.add_argument("--ipsecd-config-b", type=Path, help="gwB's config (default: generated)")
    ap.add_argument("--ipsecd-timeout", type=float, default=20.0, help="seconds to come up")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    ap.add_argument("--plot", type=Path, metavar="OUT.png", help="bar chart (matplotlib)")
    args = ap.parse_args(argv)
    if bool(args.ipsecd_config_a) != bool(args.ipsecd_config_b):
        ap.error("give both --ipsecd-config-a and --ipsecd-config-b, or neither")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py needs root (network namespaces)", file=sys.stderr)
        return 2
    install_sigterm_handler()
    results: dict[str, Figures] = {}
    order = [n for n in BACKENDS if n in args.only]
    if "plain" not in order and any(n != "plain" for n in order):
        log("note: without 'plain' there is no added-RTT or ratio to plain")
    for name in order:
        results[name] = run_backend(name, args)
    plain = results.get("plain")
    for fig in results.values():
        if fig.backend != "plain" and plain and plain.rtt_avg_ms and fig.rtt_avg_ms:
            fig.added_rtt_ms = fig.rtt_avg_ms - plain.rtt_avg_ms
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, args), indent=2) + "\n")
        log(f"figures written to {args.json}")
    if args.plot:
        plot(results, args, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
