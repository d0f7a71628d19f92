"""How ipsecd and strongSwan scale with configured peers and with tunnels coming up at
once (root only).

``bench.py --scale`` runs this; it prints one table and never asserts anything.  Daemons
(``--daemons``): ipsecd, strongSwan 5.9.8 (the machine's charon, ``strongswan``) and
strongSwan 6.1 (``strongswan6``: the Debian root of tests/lab/strongswan6.py, or
``--strongswan-root DIR``; left out when there is none).  charon runs as the namespace
tests run it (tests/lab/strongswan.py: kernel-libipsec, its own /run) with every log
subsystem at level 1 and strongSwan's default retransmission (4 s, base 1.8, 5 tries).

* RSS and start-up with 1/100/1000/10 000 configured peers: one daemon in a namespace of
  its own, every peer a responder with its own remote address and remote_ts.  ipsecd
  (a veth as uplink): from spawning ``python -m ipsecd.cli.ipsecd run`` to the first
  answer on its control socket.  charon (gwB of a topology): from spawning charon to
  ``swanctl --load-all`` of the N connections done (the vici socket is polled every
  10 ms before that).  RSS (``/proc/PID/smaps_rollup``) 2 s later, then the median of 5
  status requests from this process (status latency): ipsecd ``status`` on the control
  socket, charon vici ``list-conns`` (a ``list-conn`` message per connection).
* Handshakes per second with 250 and 1000 tunnels coming up at once: gwB responds for N
  peers (ipsecd: ``remote_address: any``; charon: ``remote_addrs`` %any; told apart by
  their identities) on N addresses of its uplink; gwA has N peers, one gwB address each.
  ipsecd's gwA starts with them (``start: initiate``), so all N IKE_SA_INIT go out at
  start; charon's gwA has them loaded (not started) and this process then sends N vici
  ``initiate`` commands that do not wait for the result.  gwB's per-source half-open
  limit and cookie threshold are raised to N for both (all of them come from gwA's one
  address; charon: ``block_threshold``, ``cookie_threshold``).  N divided by the time
  from the first IKE_SA_INIT out (ipsecd: gwA's "ipsecd running"; charon: its first
  "initiating IKE_SA") to gwA's last CHILD_SA installed (ipsecd: "CHILD_SA installed";
  charon: "CHILD_SA ... established"), from the daemons' logs; CPU per handshake is each
  daemon's utime + stime over the burst (retransmissions included) divided by N.  A burst
  not complete after 40 s + N/20 s (:func:`burst_wait`) is reported as incomplete, with
  how many tunnels came up.  For ipsecd the JSON also has gwA's retransmissions and
  gwB's ``ike_busy_dropped`` (IKE_SA_INITs its inbox dropped unread, under pressure).
  Then both daemons hold N idle tunnels: their CPU over 10 s from 1 s after the last one
  came up (:func:`idle_cpu`; percent of one core) is what N tunnels cost doing nothing.
* Rounds interleave the sizes and the daemons (default 3; the daemons' order reversed in
  every other round); the table shows the median and the range, and ratios ipsecd /
  strongSwan taken within each round.  The load average (1 min) is read before and after
  every measurement; a measurement where it exceeded the number of CPUs is marked ``*``
  (taken under load).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipsecd.cli.sites import add_namespace, delete_namespace, netns_cmd
from ipsecd.daemon.control import request
from tests.lab import strongswan6
from tests.lab.strongswan import HOST, Charon, StrongSwan
from tests.lab.topology import Topology, install_sigterm_handler
from tests.lab.vici import ViciClient, ViciError
from tests.lab.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[1]
PSK = "0x" + "5a" * 32
IKE, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
DAEMONS = ("ipsecd", "strongswan", "strongswan6")
LABELS = {"ipsecd": "ipsecd", "strongswan": "strongSwan 5.9.8", "strongswan6": "strongSwan 6.1"}
_NAMES = itertools.count(1)


def prefix() -> str:
    """A namespace prefix of this run's own (``bh<pid>s<n>``), fresh for every use."""
    return f"bh{os.getpid()}s{next(_NAMES)}"


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
        # From REPO: ``python -m`` puts the working directory first on the path, so a run
        # from another tree would run that tree's ipsecd (a before/after would compare one
        # tree with itself).
        return subprocess.Popen(
            netns_cmd(ns, cmd), stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=REPO
        )


def wire_wan(ns: str) -> None:
    """Give namespace ``ns`` its uplink: veth ``wan`` at 192.0.2.2/24, up, and ``lo`` up."""
    for cmd in (
        ["link", "add", "wan", "type", "veth", "peer", "name", "wanp"],
        ["addr", "add", "192.0.2.2/24", "dev", "wan"],
        ["link", "set", "wan", "up"],
        ["link", "set", "lo", "up"],
    ):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)


def wait_for_control(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the daemon answers on its control socket (its end of start-up); its log's
    end in the error if it exits or takes 300 s."""
    t0 = time.monotonic()
    while True:
        try:
            request(sock, {"cmd": "status"})
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError(log.read_text()[-2000:]) from None
            time.sleep(0.01)


def status_ms(sock: Path) -> float:
    """Median of 5 ``status`` requests, in milliseconds."""
    latencies = []
    for _ in range(5):
        t = time.monotonic()
        request(sock, {"cmd": "status"}, timeout=120)
        latencies.append(time.monotonic() - t)
    return statistics.median(latencies) * 1e3


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_idle(n: int, workdir: Path) -> dict[str, Any]:
    """Start-up time, idle RSS and status latency of one daemon with ``n`` peers."""
    ns = f"{prefix()}-idle"
    add_namespace(ns)
    proc = None
    try:
        wire_wan(ns)
        config = workdir / f"idle-{n}.yaml"
        config.write_text(responder_config(n, workdir, ["192.0.2.2"], any_peer=False))
        before = loadavg()
        t0 = time.monotonic()
        proc = _daemon(ns, config, workdir / f"idle-{n}.log")
        sock = workdir / "ctl.sock"
        wait_for_control(sock, proc, workdir / f"idle-{n}.log")
        start_s = time.monotonic() - t0
        time.sleep(2)
        rollup = Path(f"/proc/{proc.pid}/smaps_rollup").read_text().split()
        rss_mb = int(rollup[rollup.index("Rss:") + 1]) / 1024
        return {
            "peers": n,
            "start_s": start_s,
            "rss_mb": rss_mb,
            "status_ms": status_ms(sock),
            "load": [before, loadavg()],
        }
    finally:
        if proc is not None:
            stop_daemon(proc)
        delete_namespace(ns)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Seconds of idle CPU measured after a burst is up (``idle_cpu_*``), from 1 s after the
#: last CHILD_SA: both daemons hold ``n`` tunnels and no traffic (timers, usage checks).
IDLE_WINDOW = 10.0


def idle_cpu(cpu: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """Percent of one core each daemon used over :data:`IDLE_WINDOW` seconds, its tunnels
    up and idle (``cpu``: both daemons' CPU seconds so far)."""
    time.sleep(1.0)
    a0, b0 = cpu()
    time.sleep(IDLE_WINDOW)
    a1, b1 = cpu()
    return 100 * (a1 - a0) / IDLE_WINDOW, 100 * (b1 - b0) / IDLE_WINDOW


def burst_wait(n: int) -> float:
    """How long a burst of ``n`` tunnels may take before it counts as incomplete (both
    daemons need well under half of it on an idle machine)."""
    return 40 + n / 20


def _stamps(log: Path, what: str, prefix: bool = False) -> list[float]:
    """Time stamps of the JSON log lines whose event is ``what`` (or starts with it)."""
    out = []
    needle = f'"event": "{what}' if prefix else f'"{what}"'
    for line in log.read_text(errors="replace").splitlines():
        if needle in line:
            stamp = json.loads(line)["timestamp"]
            out.append(datetime.datetime.fromisoformat(stamp).timestamp())
    return out


def measure_handshakes(n: int) -> dict[str, Any]:
    """Handshakes per second with ``n`` tunnels coming up at once."""
    with Topology(prefix=prefix()) as topo:
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
                burst_wait(n),
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
                retransmits=len(_stamps(a_log, "retransmit", prefix=True)),
            )
            result["idle_cpu_initiator"], result["idle_cpu_responder"] = idle_cpu(
                lambda: (cpu_seconds(a.pid), cpu_seconds(b.pid))
            )
        try:  # why a burst is slow: what gwB dropped unread (its IKE inbox's time share)
            status = request(work / "ctl-b.sock", {"cmd": "status"}, timeout=60)["status"]
            ike = status["ike_counters"]
            result["responder_dropped"] = {
                k: ike.get(k, 0)
                for k in ("ike_busy_dropped", "half_open_source_dropped", "cookies_sent")
            }
        except (OSError, KeyError, TypeError):
            pass
        stop_daemon(a)
        stop_daemon(b)
        if os.environ.get("SCALE_KEEP_LOGS"):  # for reading what happened
            keep = Path(os.environ["SCALE_KEEP_LOGS"])
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("a.log", "b.log"):
                (keep / f"{n}-{name}").write_bytes((work / name).read_bytes())
        return result


# --- strongSwan --------------------------------------------------------------------------

#: strongSwan's own retransmission defaults (strongswan.conf(5)); the tests use shorter.
SWAN_RETRANSMIT: dict[str, Any] = {
    "retransmit_tries": 5,
    "retransmit_timeout": 4.0,
    "retransmit_base": 1.8,
}
_STAMP = re.compile(r"^(\d+\.\d+) ", re.M)


def swan_conn(
    name: str, local_addr: str, remote_addr: str, ids: tuple[str, str], ts: tuple[str, str]
) -> str:
    """One swanctl.conf connection with one child ``net`` (tunnel mode, ESP in UDP as
    kernel-libipsec always does), PSK authentication, never given up on."""
    return (
        f"  {name} {{\n    version = 2\n    local_addrs = {local_addr}\n"
        f"    remote_addrs = {remote_addr}\n    proposals = {IKE}\n    encap = yes\n"
        "    mobike = no\n    keyingtries = 0\n"
        f"    local {{\n      auth = psk\n      id = {ids[0]}\n    }}\n"
        f"    remote {{\n      auth = psk\n      id = {ids[1]}\n    }}\n"
        f"    children {{\n      net {{\n        local_ts = {ts[0]}\n"
        f"        remote_ts = {ts[1]}\n        esp_proposals = {ESP}\n"
        "        mode = tunnel\n        start_action = none\n      }\n    }\n  }\n"
    )


def swan_conf(conns: list[str]) -> str:
    """swanctl.conf with ``conns`` and one PSK for every identity (as ipsecd's psk_file)."""
    secret = PSK  # "0x…": swanctl reads it as hex
    return (
        "connections {\n" + "".join(conns) + "}\n"
        f"secrets {{\n  ike-all {{\n    secret = {secret}\n  }}\n}}\n"
    )


def _ts(net: int, i: int) -> str:
    return f"10.{net}.{i // 250}.{i % 250}/32"


def _start_charon(charon: Charon, timeout: float = 300) -> None:
    """Spawn ``charon`` (as :meth:`Charon.start` does) and poll its vici socket every
    10 ms from this process until it answers."""
    charon.proc = charon.topo.spawn(
        charon.ns, charon.charon_argv(), charon.dir / "charon.stdout", charon.env
    )
    t0 = time.monotonic()
    while True:
        try:
            with ViciClient(charon.socket, timeout=5) as vici:
                vici.command("version")
            return
        except (OSError, ViciError):
            if charon.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"charon did not start\n{charon.tail()}") from None
            time.sleep(0.01)


def swan_idle(n: int, swan: StrongSwan) -> dict[str, Any]:
    """charon with ``n`` configured connections: start-up to ``--load-all`` done, RSS."""
    with Topology(prefix=prefix()) as topo:
        conns = [
            swan_conn(
                f"p{i}",
                topo.gw_b_wan_ip,
                _addr(64, i),
                ("@b.example", f"@a{i}.example"),
                (_ts(200, i), _ts(100, i)),
            )
            for i in range(n)
        ]
        charon = Charon(topo, topo.gw_b, swan=swan, log_level=1, **SWAN_RETRANSMIT)
        text = swan_conf(conns)
        before = loadavg()
        t0 = time.monotonic()
        _start_charon(charon)
        charon.load_conf(text, timeout=300)
        start_s = time.monotonic() - t0
        time.sleep(2)
        rollup = Path(f"/proc/{charon.pid}/smaps_rollup").read_text().split()
        rss_mb = int(rollup[rollup.index("Rss:") + 1]) / 1024
        latencies = []
        for _ in range(5):  # as ipsecd's status: every configured peer, from this process
            t = time.monotonic()
            with ViciClient(charon.socket, timeout=120) as vici:
                loaded = len(vici.stream("list-conns", "list-conn"))
            latencies.append(time.monotonic() - t)
        if loaded != n:
            raise RuntimeError(f"{swan}: {loaded} of {n} connections loaded")
        charon.stop()
        return {
            "peers": n,
            "start_s": start_s,
            "rss_mb": rss_mb,
            "status_ms": statistics.median(latencies) * 1e3,
            "load": [before, loadavg()],
        }


def _log_stamps(text: str, pattern: str) -> list[float]:
    """Time stamps (charon's log, epoch seconds) of the lines matching ``pattern``."""
    found = re.compile(pattern)
    return [
        float(m.group(1))
        for line in text.splitlines()
        if found.search(line)
        for m in [_STAMP.match(line)]
        if m
    ]


def swan_handshakes(n: int, swan: StrongSwan) -> dict[str, Any]:
    """Handshakes per second with ``n`` tunnels coming up at once between two charons."""
    with Topology(prefix=prefix()) as topo:
        addresses = [_addr(96, i) for i in range(n)]
        batch = "".join(f"address add {a}/32 dev wan\n" for a in addresses)
        topo.run(topo.gw_b, "ip", "-b", "-", input=batch)
        topo.run(topo.gw_a, "ip", "route", "add", "100.96.0.0/16", "dev", "wan")
        # charon 5.9.8 installs a CHILD_SA's route only with a local address inside its
        # local_ts ("no local address found in traffic selector"): as a site's LAN address.
        for ns, net in ((topo.gw_a, 100), (topo.gw_b, 200)):
            lo = "".join(f"address add {_ts(net, i)} dev lo\n" for i in range(n))
            topo.run(ns, "ip", "-b", "-", input=lo)
        limits = {
            "block_threshold": max(n, 5),
            "cookie_threshold": max(n, 10),
            "cookie_threshold_ip": max(n, 3),
        }
        b = Charon(topo, topo.gw_b, swan=swan, log_level=1, settings=limits, **SWAN_RETRANSMIT)
        a = Charon(topo, topo.gw_a, swan=swan, log_level=1, **SWAN_RETRANSMIT)
        _start_charon(b)
        _start_charon(a)
        b_ids = [("@b.example", f"@a{i}.example") for i in range(n)]
        b.load_conf(
            swan_conf(
                [
                    swan_conn(f"p{i}", "%any", "%any", b_ids[i], (_ts(200, i), _ts(100, i)))
                    for i in range(n)
                ]
            ),
            timeout=300,
        )
        a.load_conf(
            swan_conf(
                [
                    swan_conn(
                        f"p{i}",
                        topo.gw_a_wan_ip,
                        addresses[i],
                        (f"@a{i}.example", "@b.example"),
                        (_ts(100, i), _ts(200, i)),
                    )
                    for i in range(n)
                ]
            ),
            timeout=300,
        )
        before = loadavg()
        a_cpu, b_cpu = a.cpu_seconds(), b.cpu_seconds()
        # timeout -1: charon answers at once and brings the SA up in the background.
        with ViciClient(a.socket, timeout=60) as vici:
            for i in range(n):
                vici.command("initiate", child="net", ike=f"p{i}", timeout=-1)

        child_up = re.compile(r"^(\d+\.\d+) .*?<(p\d+)\|\d+> CHILD_SA \S+ established", re.M)

        def established() -> list[float]:
            """When each connection's first CHILD_SA was established (one per name)."""
            first: dict[str, float] = {}
            for m in child_up.finditer(a.log_text()):
                first.setdefault(m.group(2), float(m.group(1)))
            return list(first.values())

        try:
            done = bool(wait_until(lambda: len(established()) >= n, burst_wait(n), "", step=0.2))
        except WaitTimeout:
            done = False
        a_cpu, b_cpu = a.cpu_seconds() - a_cpu, b.cpu_seconds() - b_cpu
        up = established()
        started = _log_stamps(a.log_text(), r"initiating IKE_SA")
        result: dict[str, Any] = {"tunnels": n, "up": len(up), "load": [before, loadavg()]}
        if done and started:
            elapsed = max(up) - min(started)
            result.update(
                seconds=elapsed,
                per_second=n / elapsed,
                cpu_ms_initiator=a_cpu / n * 1e3,
                cpu_ms_responder=b_cpu / n * 1e3,
                retransmits=len(_log_stamps(a.log_text(), r"retransmit \d+ of request")),
            )
            result["idle_cpu_initiator"], result["idle_cpu_responder"] = idle_cpu(
                lambda: (a.cpu_seconds(), b.cpu_seconds())
            )
        if os.environ.get("SCALE_KEEP_LOGS"):
            keep = Path(os.environ["SCALE_KEEP_LOGS"])
            keep.mkdir(parents=True, exist_ok=True)
            for name, charon in (("a", a), ("b", b)):
                (keep / f"{swan.label}-{n}-{name}.log").write_text(charon.log_text())
        a.stop()
        b.stop()
        return result


def swan_installations(names: list[str], root: Path | None) -> dict[str, StrongSwan]:
    """The strongSwan installations to measure: 5.9.8 (the host's), 6.1 (``root``, or the
    cached root of tests/lab/strongswan6.py when it is complete; never built here)."""
    out: dict[str, StrongSwan] = {}
    if "strongswan" in names:
        out["strongswan"] = HOST
    if "strongswan6" in names:
        root = root or strongswan6.ROOT
        if (root / strongswan6.READY).exists() or (root / "usr/lib/ipsec/charon").exists():
            out["strongswan6"] = StrongSwan("6.1", root)
        else:
            print(f"no strongSwan 6.1 root at {root}: that column is left out", file=sys.stderr)
    return out


def _fmt(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _loaded(results: list[dict[str, Any]]) -> str:
    cpus = os.cpu_count() or 1
    return " *" if any(max(r["load"]) > cpus for r in results) else ""


def _ratio_cells(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> str:
    """ipsecd / strongSwan of ``key``, taken within each round (both measured): the
    median and the range."""
    values = [
        a[key] / b[key]
        for a, b in zip(ours, theirs, strict=False)
        if key in a and key in b and b[key]
    ]
    return _fmt(values, "x", 2).replace(" x", "x")


def _incomplete(n: int, rs: list[dict[str, Any]], ok: list[dict[str, Any]]) -> str:
    """What the rounds whose burst did not complete got up."""
    if len(ok) == len(rs):
        return ""
    ups = ", ".join(str(r["up"]) for r in rs if r not in ok)
    return f"  (incomplete rounds: {ups} of {n} up after {burst_wait(n):.0f} s)"


def table(
    idle: dict[str, dict[int, list[dict[str, Any]]]],
    shakes: dict[str, dict[int, list[dict[str, Any]]]],
) -> str:
    """Rows: each size, a line per daemon and a line per ratio ipsecd / strongSwan."""
    swans = [d for d in idle if d != "ipsecd"]
    width = max(len(LABELS[d]) for d in (*idle, *shakes, "ipsecd")) + len("ipsecd/")
    lines = [
        f"{'configured peers':>16}  {'':<{width}}  {'start-up':>22}  {'RSS idle':>22}"
        f"  {'status':>22}",
    ]
    sizes = next(iter(idle.values())).keys() if idle else []
    for n in sizes:
        for d in idle:
            rs = idle[d][n]
            status = _fmt([r["status_ms"] for r in rs if "status_ms" in r], "ms")
            lines.append(
                f"{n:>16}  {LABELS[d]:<{width}}  {_fmt([r['start_s'] for r in rs], 's', 2):>22}"
                f"  {_fmt([r['rss_mb'] for r in rs], 'MB'):>22}  {status:>22}{_loaded(rs)}"
            )
        if "ipsecd" in idle:
            for d in swans:
                label = f"ipsecd/{LABELS[d].split()[-1]}"
                mine, theirs = idle["ipsecd"][n], idle[d][n]
                lines.append(
                    f"{n:>16}  {label:<{width}}  {_ratio_cells(mine, theirs, 'start_s'):>22}"
                    f"  {_ratio_cells(mine, theirs, 'rss_mb'):>22}"
                    f"  {_ratio_cells(mine, theirs, 'status_ms'):>22}"
                )
    lines += [
        "",
        f"{'tunnels at once':>16}  {'':<{width}}  {'handshakes/s':>22}  {'all up after':>22}"
        f"  {'CPU/handshake initiator':>24}  {'CPU/handshake responder':>24}"
        f"  {'retransmits':>16}  {'idle CPU % A / B':>18}",
    ]
    sizes = next(iter(shakes.values())).keys() if shakes else []
    for n in sizes:
        for d in shakes:
            rs = shakes[d][n]
            ok = [r for r in rs if "per_second" in r]
            lines.append(
                f"{n:>16}  {LABELS[d]:<{width}}  {_fmt([r['per_second'] for r in ok], '/s', 0):>22}"
                f"  {_fmt([r['seconds'] for r in ok], 's', 2):>22}"
                f"  {_fmt([r['cpu_ms_initiator'] for r in ok], 'ms', 2):>24}"
                f"  {_fmt([r['cpu_ms_responder'] for r in ok], 'ms', 2):>24}"
                f"  {_fmt([r['retransmits'] for r in ok], '', 0):>16}"
                f"  {_idle_cells(ok):>18}{_loaded(rs)}" + _incomplete(n, rs, ok)
            )
        if "ipsecd" in shakes:
            for d in (d for d in shakes if d != "ipsecd"):
                label = f"ipsecd/{LABELS[d].split()[-1]}"
                mine, theirs = shakes["ipsecd"][n], shakes[d][n]
                lines.append(
                    f"{n:>16}  {label:<{width}}  {_ratio_cells(mine, theirs, 'per_second'):>22}"
                    f"  {_ratio_cells(mine, theirs, 'seconds'):>22}"
                    f"  {_ratio_cells(mine, theirs, 'cpu_ms_initiator'):>24}"
                    f"  {_ratio_cells(mine, theirs, 'cpu_ms_responder'):>24}"
                )
    return "\n".join(lines)


def _idle_cells(ok: list[dict[str, Any]]) -> str:
    """Median idle CPU (percent of a core) of initiator and responder after the burst."""
    a = [r["idle_cpu_initiator"] for r in ok if "idle_cpu_initiator" in r]
    b = [r["idle_cpu_responder"] for r in ok if "idle_cpu_responder" in r]
    if not a or not b:
        return "-"
    return f"{statistics.median(a):.2f} / {statistics.median(b):.2f}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every round: each size, each daemon (order reversed every other round)."""
    swans = swan_installations(args.daemons, args.strongswan_root)
    daemons = [d for d in DAEMONS if d in args.daemons and (d == "ipsecd" or d in swans)]
    idle: dict[str, dict[int, list[dict[str, Any]]]] = {
        d: {n: [] for n in args.peers} for d in daemons
    }
    shakes: dict[str, dict[int, list[dict[str, Any]]]] = {
        d: {n: [] for n in args.tunnels} for d in daemons
    }
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ipsecd-scale-") as tmp:
        work = Path(tmp)
        (work / "psk").write_text(PSK + "\n")
        (work / "psk").chmod(0o600)
        for r in range(args.rounds):
            order = daemons if r % 2 == 0 else daemons[::-1]
            for n in args.peers:
                for d in order:
                    print(f"round {r + 1}: {LABELS[d]} idle, {n} peers", file=sys.stderr)
                    try:
                        res = measure_idle(n, work) if d == "ipsecd" else swan_idle(n, swans[d])
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        errors.append(f"round {r + 1} {LABELS[d]} {n} peers: {exc}"[:2000])
                        print(errors[-1], file=sys.stderr)
                        continue
                    idle[d][n].append(res)
            for n in args.tunnels:
                for d in order:
                    print(f"round {r + 1}: {LABELS[d]}, {n} tunnels at once", file=sys.stderr)
                    try:
                        if d == "ipsecd":
                            res = measure_handshakes(n)
                        else:
                            res = swan_handshakes(n, swans[d])
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        errors.append(f"round {r + 1} {LABELS[d]} {n} tunnels: {exc}"[:2000])
                        print(errors[-1], file=sys.stderr)
                        continue
                    shakes[d][n].append(res)
                    if "per_second" in res:
                        print(f"  {res['per_second']:.0f}/s", file=sys.stderr)
    print(table(idle, shakes))
    loads = [
        x
        for per in (*idle.values(), *shakes.values())
        for rs in per.values()
        for r in rs
        for x in r["load"]
    ]
    versions = {d: swans[d].version for d in swans}
    print(
        f"\nmedian of {args.rounds} interleaved rounds (range); ratios ipsecd/strongSwan "
        "within each round; load average (1 min) "
        + (f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-")
        + f" over the runs on {os.cpu_count()} CPUs; "
        "* = some round taken with the load above the number of CPUs"
        + (
            f"; strongSwan {', '.join(versions.values())} with kernel-libipsec, log level 1, "
            "default retransmission"
            if versions
            else ""
        )
    )
    for n, rs in shakes.get("ipsecd", {}).items():
        dropped = [
            r["responder_dropped"]["ike_busy_dropped"] for r in rs if "responder_dropped" in r
        ]
        if dropped:
            print(
                f"ipsecd, {n} tunnels: IKE_SA_INITs gwB dropped unread (ike_busy_dropped: its "
                f"IKE inbox's time share for new requests, enforced under pressure): "
                + ", ".join(str(d) for d in dropped)
            )
    for error in errors:
        print(f"not measured: {error.splitlines()[0]}")
    return {
        "idle": idle,
        "handshakes": shakes,
        "versions": versions,
        "errors": errors,
        "rounds": args.rounds,
        "loadavg_at_end": list(os.getloadavg()),
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--peers", type=int, nargs="*", default=[1, 100, 1000, 10000])
    ap.add_argument("--tunnels", type=int, nargs="*", default=[250, 1000])
    ap.add_argument(
        "--daemons", nargs="+", choices=DAEMONS, default=list(DAEMONS), help="default: all"
    )
    ap.add_argument(
        "--strongswan-root",
        type=Path,
        metavar="DIR",
        help=f"strongSwan 6.1's Debian root (default {strongswan6.ROOT}, if built)",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    add_arguments(ap)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scale.py: root only", file=sys.stderr)
        return 2
    install_sigterm_handler()
    from bench.bench import environment  # the same machine and versions as bench.py's

    meta = {**environment(), "argv": argv}
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, **result}, indent=1))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
