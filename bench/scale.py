"""How ipsecd scales with configured peers and with tunnels coming up at once (root only).

``bench.py --scale`` runs this; it prints one table and never asserts anything.

* RSS and start-up with 1/100/1000/10 000 configured peers: one daemon in a namespace of
  its own (a veth as uplink), every peer a responder with its own remote address and
  remote_ts.  Start-up: from spawning ``python -m ipsecd.cli.ipsecd run`` to the first
  answer on its control socket.  RSS (``/proc/PID/smaps_rollup``) 2 s later, then the
  median of 5 ``status`` requests on the control socket (status latency).
* Handshakes per second with 250 and 1000 tunnels coming up at once: gwB responds for N
  peers (``remote_address: any``, told apart by their identities) on N addresses of its
  uplink; gwA starts with N peers (``start: initiate``, one gwB address each), so all N
  IKE_SA_INIT go out at start.  gwB's per-source half-open limit and cookie threshold are
  raised to N (all of them come from gwA's one address).  N divided by the time from
  gwA's "ipsecd running" to its last "CHILD_SA installed" log line.
* Rounds interleave the sizes (default 3); the table shows the median and the range.
  The load average (1 min) is read before and after every measurement; a measurement
  where it exceeded the number of CPUs is marked ``*`` (taken under load).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ipsecd.cli.sites import add_namespace, delete_namespace, netns_cmd
from ipsecd.daemon.control import request
from tests.lab.topology import Topology
from tests.lab.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[1]
PSK = "0x" + "5a" * 32
IKE, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _addr(net: int, i: int) -> str:
    return f"100.{net}.{i // 250}.{i % 250 + 1}"


def _peer(lines: list[str], **fields: str) -> None:
    first = True
    for key, value in fields.items():
        lines.append(f"  {'- ' if first else '  '}{key}: {value}")
        first = False


def responder_config(n: int, workdir: Path, listen: list[str], any_peer: bool) -> str:
    psk = workdir / "psk"
    lines = [
        "log: {level: info, format: json}",
        "gateway:",
        "  tun: ipsecs",
        f"  listen: [{', '.join(listen)}]",
        f"  control_socket: {workdir}/ctl.sock",
        # All N initiations come from gwA's one address: the DoS limits (5 half-open SAs
        # per source, cookies from 10, as strongSwan's defaults) would pace them.
        f"  half_open_per_source: {max(n, 5)}",
        f"  cookie_threshold: {max(n, 10)}",
        "  user: root",
        "peers:",
    ]
    for i in range(n):
        _peer(
            lines,
            name=f"p{i}",
            remote_address="any" if any_peer else _addr(64, i),
            start="respond",
            local_ts=f"[10.200.{i // 250}.{i % 250}/32]",
            remote_ts=f"[10.100.{i // 250}.{i % 250}/32]",
            ike=f"{{proposals: [{IKE}]}}",
            esp=f"{{proposals: [{ESP}]}}",
            auth=f"{{psk_file: {psk}, local_id: '@b.example', remote_id: '@a{i}.example'}}",
        )
    return "\n".join(lines) + "\n"


def initiator_config(n: int, workdir: Path, listen: str) -> str:
    psk = workdir / "psk"
    lines = [
        "log: {level: info, format: json}",
        "gateway:",
        "  tun: ipsecs",
        f"  listen: [{listen}]",
        f"  control_socket: {workdir}/ctl-a.sock",
        "  user: root",
        "peers:",
    ]
    for i in range(n):
        _peer(
            lines,
            name=f"p{i}",
            remote_address=_addr(96, i),
            start="initiate",
            local_ts=f"[10.100.{i // 250}.{i % 250}/32]",
            remote_ts=f"[10.200.{i // 250}.{i % 250}/32]",
            ike=f"{{proposals: [{IKE}]}}",
            esp=f"{{proposals: [{ESP}]}}",
            auth=f"{{psk_file: {psk}, local_id: '@a{i}.example', remote_id: '@b.example'}}",
        )
    return "\n".join(lines) + "\n"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _daemon(ns: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ipsecd.cli.ipsecd", "run", "--config", str(config)]
    profile = os.environ.get("SCALE_PROFILE")  # a directory: cProfile each daemon into it
    if profile:
        out = Path(profile) / f"{log.stem}-{time.time():.0f}.prof"
        cmd[1:2] = ["-m", "cProfile", "-o", str(out), "-m"]
    with open(log, "wb") as fh:
        return subprocess.Popen(netns_cmd(ns, cmd), stdout=fh, stderr=subprocess.STDOUT, env=_env())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_idle(n: int, workdir: Path) -> dict[str, Any]:
    """Start-up time, idle RSS and status latency of one daemon with ``n`` peers."""
    ns = f"ipdscale{os.getpid() % 10000}"
    add_namespace(ns)
    proc = None
    try:
        for cmd in (
            ["link", "add", "wan", "type", "veth", "peer", "name", "wanp"],
            ["addr", "add", "192.0.2.2/24", "dev", "wan"],
            ["link", "set", "wan", "up"],
            ["link", "set", "lo", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        config = workdir / f"idle-{n}.yaml"
        config.write_text(responder_config(n, workdir, ["192.0.2.2"], any_peer=False))
        before = loadavg()
        t0 = time.monotonic()
        proc = _daemon(ns, config, workdir / f"idle-{n}.log")
        sock = workdir / "ctl.sock"
        while True:
            try:
                request(sock, {"cmd": "status"})
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError((workdir / f"idle-{n}.log").read_text()[-2000:]) from None
                time.sleep(0.01)
        start_s = time.monotonic() - t0
        time.sleep(2)
        rollup = Path(f"/proc/{proc.pid}/smaps_rollup").read_text().split()
        rss_mb = int(rollup[rollup.index("Rss:") + 1]) / 1024
        latencies = []
        for _ in range(5):
            t = time.monotonic()
            request(sock, {"cmd": "status"}, timeout=120)
            latencies.append(time.monotonic() - t)
        return {
            "peers": n,
            "start_s": start_s,
            "rss_mb": rss_mb,
            "status_ms": statistics.median(latencies) * 1e3,
            "load": [before, loadavg()],
        }
    finally:
        if proc is not None:
            _stop(proc)
        delete_namespace(ns)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stamps(log: Path, what: str) -> list[float]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{what}"' in line:
            stamp = json.loads(line)["timestamp"]
            out.append(datetime.datetime.fromisoformat(stamp).timestamp())
    return out


def measure_handshakes(n: int) -> dict[str, Any]:
    """Handshakes per second with ``n`` tunnels coming up at once."""
    with Topology() as topo:
        work = topo.workdir
        psk = work / "psk"
        psk.write_text(PSK + "\n")
        psk.chmod(0o600)
        addresses = [_addr(96, i) for i in range(n)]
        batch = "".join(f"address add {a}/32 dev wan\n" for a in addresses)
        topo.run(topo.gw_b, "ip", "-b", "-", input=batch)
        topo.run(topo.gw_a, "ip", "route", "add", "100.96.0.0/16", "dev", "wan")
        topo.run(topo.gw_b, "ip", "route", "add", "100.64.0.0/16", "dev", "wan")
        b_conf, a_conf = work / "b.yaml", work / "a.yaml"
        b_conf.write_text(responder_config(n, work, addresses, any_peer=True))
        a_conf.write_text(initiator_config(n, work, topo.gw_a_wan_ip))
        b_conf.write_text(b_conf.read_text().replace("ctl.sock", "ctl-b.sock"))
        before = loadavg()
        b = _daemon(topo.gw_b, b_conf, work / "b.log")
        topo._procs.append(b)
        wait_until(
            lambda: request(work / "ctl-b.sock", {"cmd": "status"}),
            120,
            "gwB's control socket",
            ignore=(OSError,),
        )
        b_cpu = cpu_seconds(b.pid)
        a_log = work / "a.log"
        a = _daemon(topo.gw_a, a_conf, a_log)
        topo._procs.append(a)
        # The initiator's CPU from "ipsecd running" on: its start-up is not a handshake.
        wait_until(lambda: "ipsecd running" in a_log.read_text(errors="replace"), 120, "gwA")
        a_cpu = cpu_seconds(a.pid)
        try:
            done = wait_until(
                lambda: len(_stamps(a_log, "CHILD_SA installed")) >= n,
                120 + n / 10,
                f"{n} CHILD_SAs on gwA",
                step=0.2,
            )
        except WaitTimeout:
            done = False
        a_cpu, b_cpu = cpu_seconds(a.pid) - a_cpu, cpu_seconds(b.pid) - b_cpu
        up = _stamps(a_log, "CHILD_SA installed")
        running = _stamps(a_log, "ipsecd running")
        result: dict[str, Any] = {"tunnels": n, "up": len(up), "load": [before, loadavg()]}
        if done and running:
            elapsed = max(up) - running[0]
            result.update(
                seconds=elapsed,
                per_second=n / elapsed,
                # CPU per handshake of each daemon: robust where the wall clock is not
                # (other processes on the cores); includes the retransmissions it handled.
                cpu_ms_initiator=a_cpu / n * 1e3,
                cpu_ms_responder=b_cpu / n * 1e3,
            )
        _stop(a)
        _stop(b)
        if os.environ.get("SCALE_KEEP_LOGS"):  # for reading what happened
            keep = Path(os.environ["SCALE_KEEP_LOGS"])
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("a.log", "b.log"):
                (keep / f"{n}-{name}").write_bytes((work / name).read_bytes())
        return result


def _fmt(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _loaded(results: list[dict[str, Any]]) -> str:
    cpus = os.cpu_count() or 1
    return " *" if any(max(r["load"]) > cpus for r in results) else ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    idle: dict[int, list[dict[str, Any]]] = {n: [] for n in args.peers}
    shakes: dict[int, list[dict[str, Any]]] = {n: [] for n in args.tunnels}
    with tempfile.TemporaryDirectory(prefix="ipsecd-scale-") as tmp:
        work = Path(tmp)
        (work / "psk").write_text(PSK + "\n")
        (work / "psk").chmod(0o600)
        for r in range(args.rounds):
            for n in args.peers:
                print(f"round {r + 1}: idle daemon, {n} peers", file=sys.stderr)
                idle[n].append(measure_idle(n, work))
            for n in args.tunnels:
                print(f"round {r + 1}: {n} tunnels at once", file=sys.stderr)
                shakes[n].append(measure_handshakes(n))
    lines = [
        f"{'configured peers':>16}  {'start-up':>22}  {'RSS idle':>22}  {'status':>22}",
    ]
    for n, rs in idle.items():
        lines.append(
            f"{n:>16}  {_fmt([r['start_s'] for r in rs], 's', 2):>22}"
            f"  {_fmt([r['rss_mb'] for r in rs], 'MB'):>22}"
            f"  {_fmt([r['status_ms'] for r in rs], 'ms'):>22}{_loaded(rs)}"
        )
    lines += [
        "",
        f"{'tunnels at once':>16}  {'handshakes/s':>22}  {'all up after':>22}"
        f"  {'CPU/handshake initiator':>24}  {'CPU/handshake responder':>24}",
    ]
    for n, rs in shakes.items():
        ok = [r for r in rs if "per_second" in r]
        lines.append(
            f"{n:>16}  {_fmt([r['per_second'] for r in ok], '/s', 0):>22}"
            f"  {_fmt([r['seconds'] for r in ok], 's', 2):>22}"
            f"  {_fmt([r['cpu_ms_initiator'] for r in ok], 'ms', 2):>24}"
            f"  {_fmt([r['cpu_ms_responder'] for r in ok], 'ms', 2):>24}{_loaded(rs)}"
            + ("" if len(ok) == len(rs) else f"  ({len(rs) - len(ok)} rounds incomplete)")
        )
    print("\n".join(lines))
    loads = [x for rs in (*idle.values(), *shakes.values()) for r in rs for x in r["load"]]
    print(
        f"\nmedian of {args.rounds} interleaved rounds (range); load average (1 min) "
        f"{min(loads):.2f}-{max(loads):.2f} over the runs on {os.cpu_count()} CPUs; "
        "* = some round taken with the load above the number of CPUs"
    )
    return {"idle": idle, "handshakes": shakes}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--peers", type=int, nargs="*", default=[1, 100, 1000, 10000])
    ap.add_argument("--tunnels", type=int, nargs="*", default=[250, 1000])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    add_arguments(ap)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scale.py: root only", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
