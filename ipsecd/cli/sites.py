"""Two sites in Linux network namespaces, as ``ipsecd demo`` builds them (root only).

::

    hostA ---- gwA ====== internet 192.0.2.0/24 ====== gwB ---- hostB
    10.1.0.2   10.1.0.1 | 192.0.2.1      192.0.2.2 | 10.2.0.1   10.2.0.2

Needs only ``ip`` (iproute2) and ``sysctl``.  Interfaces are created directly inside
their namespaces (never in the root namespace), so their short fixed names (``eth0``,
``lan``, ``wan``) cannot collide with anything; namespace names carry a unique prefix.
The gateways forward but have no route to the other site: the tunnel adds it.

The namespace test topology (``tests/lab/topology.py``) is built from the same pieces
and adds what only tests need (a NAT, packet loss, captures, throughput runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

SITE_A = "10.1.0.0/24"
SITE_B = "10.2.0.0/24"
INTERNET = "192.0.2.0/24"

HOST_A_IP = "10.1.0.2"
GW_A_LAN_IP = "10.1.0.1"
GW_A_WAN_IP = "192.0.2.1"
GW_B_WAN_IP = "192.0.2.2"
GW_B_LAN_IP = "10.2.0.1"
HOST_B_IP = "10.2.0.2"

HOST_IFACE = "eth0"
LAN_IFACE = "lan"
WAN_IFACE = "wan"

DEFAULT_TIMEOUT = 30.0


class CommandError(RuntimeError):
    """A command in a namespace failed; the message carries its output."""

    def __init__(self, ns: str | None, cmd: Sequence[str], returncode: int, out: str, err: str):
        self.ns, self.cmd, self.returncode = ns, list(cmd), returncode
        self.stdout, self.stderr = out, err
        where = f"in netns {ns}" if ns else "in the root namespace"
        super().__init__(
            f"{' '.join(cmd)!r} {where} exited {returncode}\n"
            f"--- stdout ---\n{out.strip()}\n--- stderr ---\n{err.strip()}"
        )


def netns_cmd(ns: str | None, cmd: Sequence[str]) -> list[str]:
    """The argv that runs ``cmd`` inside namespace ``ns`` (``None``: the root namespace)."""
    return list(cmd) if ns is None else ["ip", "netns", "exec", ns, *cmd]


def run(
    ns: str | None,
    *cmd: str,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in namespace ``ns`` and return its result (text stdout/stderr).

    Raises :class:`CommandError` (with both outputs) if ``check`` and the exit code is not
    0, and ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the child is killed).
    """
    argv = netns_cmd(ns, cmd)
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and res.returncode != 0:
        raise CommandError(ns, argv, res.returncode, res.stdout, res.stderr)
    return res


def list_namespaces() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    out = run(None, "ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_process_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # The leader may be gone while group members live on: SIGKILL the group regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)


def add_namespace(ns: str) -> None:
    """Create ``ns`` with IPv6 off (no router solicitations or MLD reports) and lo up."""
    run(None, "ip", "netns", "add", ns)
    for key in ("all", "default"):
        run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    run(None, "ip", "-n", ns, "link", "set", "lo", "up")


def delete_namespace(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns``, then delete it (retried while it is busy)."""
    pids = run(None, "ip", "netns", "pids", ns, check=False, timeout=10).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(20):
        if run(None, "ip", "netns", "del", ns, check=False, timeout=10).returncode == 0:
            return
        if ns not in list_namespaces():
            return
        time.sleep(0.1)  # a process killed above may not have released the namespace yet


def add_veth(ns1: str, if1: str, ip1: str, ns2: str, if2: str, ip2: str) -> None:
    """A veth pair from ``ns1``/``if1`` (address ``ip1``) to ``ns2``/``if2``, both up."""
    run(None, "ip", "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2,
        "netns", ns2)  # fmt: skip
    for ns, ifname, ip in ((ns1, if1, ip1), (ns2, if2, ip2)):
        run(None, "ip", "-n", ns, "addr", "add", ip, "dev", ifname)
        run(None, "ip", "-n", ns, "link", "set", ifname, "up")


def wire_sites(host_a: str, gw_a: str, gw_b: str, host_b: str, direct_wan: bool = True) -> None:
    """Links, addresses, routes and sysctls of the two sites in existing namespaces.

    ``direct_wan``: also join gwA and gwB by one veth (the internet link); without it the
    caller connects the gateways' ``wan`` side itself.
    """
    add_veth(host_a, HOST_IFACE, f"{HOST_A_IP}/24", gw_a, LAN_IFACE, f"{GW_A_LAN_IP}/24")
    add_veth(gw_b, LAN_IFACE, f"{GW_B_LAN_IP}/24", host_b, HOST_IFACE, f"{HOST_B_IP}/24")
    if direct_wan:
        add_veth(gw_a, WAN_IFACE, f"{GW_A_WAN_IP}/24", gw_b, WAN_IFACE, f"{GW_B_WAN_IP}/24")
    run(None, "ip", "-n", host_a, "route", "add", "default", "via", GW_A_LAN_IP)
    run(None, "ip", "-n", host_b, "route", "add", "default", "via", GW_B_LAN_IP)
    for gw in (gw_a, gw_b):
        run(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for key in ("all", "default"):
            run(gw, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")


# --- ping ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PingStats:
    """Result of :func:`ping`; RTTs in milliseconds (``nan`` when none came back)."""

    transmitted: int
    received: int
    rtt_min: float
    rtt_avg: float
    rtt_max: float
    rtts: tuple[float, ...]

    @property
    def loss(self) -> float:
        """Lost fraction, 0.0 .. 1.0."""
        return 1.0 - self.received / self.transmitted if self.transmitted else 1.0


_PING_PY = r"""
import json, os, select, socket, struct, sys, time
dst, count, interval, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
sent, rtts, pending = 0, [], {}
payload = bytes(range(56))
next_send = time.monotonic()
end = None
while True:
    now = time.monotonic()
    if sent < count and now >= next_send:
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, sent)
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, sent) + payload
        pending[sent] = time.perf_counter()
        s.sendto(pkt, (dst, 0)); sent += 1; next_send = now + interval
        if sent == count: end = now + wait
    if end is not None and (now >= end or not pending): break
    timeout = max(0.0, min(next_send if sent < count else end, end or next_send) - now)
    r, _, _ = select.select([s], [], [], timeout)
    if r:
        data, addr = s.recvfrom(65535)
        t = time.perf_counter()
        ihl = (data[0] & 15) * 4
        typ, _c, _k, i, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and i == ident and addr[0] == dst and seq in pending:
            rtts.append((t - pending.pop(seq)) * 1000.0)
print(json.dumps({"transmitted": sent, "rtts": rtts}))
"""


def ping(
    src_ns: str, dst_ip: str, count: int = 5, interval: float = 0.05, wait: float = 1.0
) -> PingStats:
    """ICMP echo from ``src_ns`` to ``dst_ip`` (a raw-socket pinger; no iputils needed).

    ``wait`` is how long to wait for replies after the last request.  Never raises on
    loss: look at ``.loss``.
    """
    res = run(
        src_ns,
        sys.executable, "-c", _PING_PY, dst_ip, str(count), str(interval), str(wait),
        timeout=count * interval + wait + 20,
    )  # fmt: skip
    data = json.loads(res.stdout)
    rtts = tuple(float(r) for r in data["rtts"])
    nan = float("nan")
    return PingStats(
        transmitted=int(data["transmitted"]),
        received=len(rtts),
        rtt_min=min(rtts) if rtts else nan,
        rtt_avg=sum(rtts) / len(rtts) if rtts else nan,
        rtt_max=max(rtts) if rtts else nan,
        rtts=rtts,
    )
