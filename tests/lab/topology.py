"""Site-to-site test topology in Linux network namespaces (root only).

The sites, their addresses and the namespace primitives are the demo's
(:mod:`ipsecd.cli.sites`); this module adds what only tests and the benchmark need: a
NAT namespace, packet loss, captures, TCP and iperf3 transfers, stale-namespace cleanup.

Layout (``nat=False``)::

    hostA ---- gwA ====== internet 192.0.2.0/24 ====== gwB ---- hostB
    10.1.0.2   10.1.0.1 | 192.0.2.1      192.0.2.2 | 10.2.0.1   10.2.0.2

With ``attacker=True`` the internet link is a bridge (in namespace ``inet``) that also
holds an attacker (``atk``, 192.0.2.66) and a bystander (``vic``, 192.0.2.99: the third
address a reflection would hit)::

    gwA 192.0.2.1 ──┐                 ┌── 192.0.2.2 gwB
                    └── br0 (inet) ───┤
    atk 192.0.2.66 ─┘                 └── 192.0.2.99 vic

With ``nat=True`` a NAT namespace sits between gwA and the internet::

    hostA -- gwA ==== 198.51.100.0/24 ==== nat ==== 192.0.2.0/24 ==== gwB -- hostB
             198.51.100.2     198.51.100.1 | 192.0.2.3        192.0.2.2

Namespace names are unique per run (``ipd<pid%10000><4 hex>-<role>``), so two runs can
share a machine.  Interfaces are created directly inside their namespaces (never in the
root namespace), so their short fixed names (``eth0``, ``lan``, ``wan``, ``in``, ``out``)
cannot collide either.

The gateways forward (``ip_forward=1``) but have NO route to the other site: the tunnel
daemon under test adds it through its TUN device.  :meth:`Topology.add_plain_routes`
adds static routes for the plain-routing baseline instead.

IPv6 is disabled in every namespace so captures hold only the traffic a test makes
(no router solicitations, no MLD reports) -- unless ``ipv6=True``, which adds a second,
IPv6 addressing of the same links (without NAT)::

    hostA ---- gwA ====== internet 2001:db8::/64 ====== gwB ---- hostB
    fd00:1::2  fd00:1::1 | 2001:db8::1    2001:db8::2 | fd00:2::1  fd00:2::2

with duplicate address detection, router advertisements and solicitations off.

Teardown (:meth:`Topology.close`) kills every spawned process by process group, kills
whatever else still runs in the namespaces, and deletes them.  It runs from ``__exit__``
(also on exceptions and KeyboardInterrupt), from an ``atexit`` hook, and on SIGTERM if
:func:`install_sigterm_handler` was called.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from ipsecd.cli.sites import (
    DEFAULT_TIMEOUT,
    GW_A_LAN_IP,
    GW_A_WAN_IP,
    GW_B_LAN_IP,
    GW_B_WAN_IP,
    HOST_A_IP,
    HOST_B_IP,
    HOST_IFACE,
    INTERNET,
    LAN_IFACE,
    SITE_A,
    SITE_B,
    WAN_IFACE,
    CommandError,
    PingStats,
    add_namespace,
    add_veth,
    delete_namespace,
    kill_process_group,
    list_namespaces,
    netns_cmd,
    ping,
    run,
    wire_sites,
)
from tests.lab.wait import WaitTimeout, wait_until

__all__ = [  # what tests and bench import from here besides the topology itself
    "GW_A_LAN_IP",
    "GW_A_WAN_IP",
    "GW_B_LAN_IP",
    "GW_B_WAN_IP",
    "HOST_A_IP",
    "HOST_B_IP",
    "INTERNET",
    "SITE_A",
    "SITE_B",
    "CommandError",
    "PingStats",
    "kill_process_group",
    "list_namespaces",
    "netns_cmd",
    "run",
]

# --- addresses (the demo's sites, plus the NAT) ------------------------------------------

# IPv6 (``Topology(ipv6=True)``): the internet link and the two sites.
INTERNET6 = "2001:db8::/64"
GW_A_WAN_IP6 = "2001:db8::1"
GW_B_WAN_IP6 = "2001:db8::2"
SITE_A6 = "fd00:1::/64"
SITE_B6 = "fd00:2::/64"
HOST_A_IP6 = "fd00:1::2"
GW_A_LAN_IP6 = "fd00:1::1"
GW_B_LAN_IP6 = "fd00:2::1"
HOST_B_IP6 = "fd00:2::2"


@dataclasses.dataclass(frozen=True)
class Addressing:
    """One address family of the topology: the gateways' uplinks, the sites, the hosts."""

    gw_a_wan: str
    gw_b_wan: str
    site_a: str
    site_b: str
    host_a: str
    host_b: str


#: By IP version (IPv6: ``Topology(ipv6=True)``).
ADDRESSING = {
    4: Addressing(GW_A_WAN_IP, GW_B_WAN_IP, SITE_A, SITE_B, HOST_A_IP, HOST_B_IP),
    6: Addressing(GW_A_WAN_IP6, GW_B_WAN_IP6, SITE_A6, SITE_B6, HOST_A_IP6, HOST_B_IP6),
}

NAT_INSIDE = "198.51.100.0/24"
GW_A_NAT_IP = "198.51.100.2"  # gwA's uplink address behind the NAT
NAT_INSIDE_IP = "198.51.100.1"
NAT_OUTSIDE_IP = "192.0.2.3"
ATTACKER_IP = "192.0.2.66"  # on the internet link (attacker=True)
VICTIM_IP = "192.0.2.99"  # a third address on the internet link (attacker=True)

_LIVE: weakref.WeakSet[Topology] = weakref.WeakSet()
_OWNERS = Path("/run/ipsecd-netns")  # <prefix> -> owner pid, for cleanup_stale()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and all its live descendants, plus what their reaped children
    used (cutime + cstime), so a daemon that moves packets in worker processes is counted
    whole.  Compare two readings; processes gone by then count 0.
    """
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = sum(int(f) for f in fields[11:15])  # u, s, cu, cs time
    tree: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in times and current not in tree:
            tree.add(current)
            todo.extend(children.get(current, ()))
    return sum(times[p] for p in tree) / os.sysconf("SC_CLK_TCK")


def install_sigterm_handler() -> None:
    """Make SIGTERM raise KeyboardInterrupt so ``with`` blocks and atexit hooks tear down.

    KeyboardInterrupt (not SystemExit) so pytest stops the session instead of counting
    one failed test and going on.  Only installed from the main thread and only if
    SIGTERM still has its default action.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def _raise(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _raise)


def cleanup_stale() -> list[str]:
    """Delete namespaces left by topologies whose process died without teardown (SIGKILL).

    Each live topology records its owner pid in ``/run/ipsecd-netns/<prefix>``; namespaces
    of prefixes whose owner is gone are deleted.  Returns the names deleted.
    """
    deleted: list[str] = []
    if not _OWNERS.is_dir():
        return deleted
    existing = list_namespaces()
    for marker in _OWNERS.iterdir():
        try:
            pid = int(marker.read_text().split()[0])
            os.kill(pid, 0)
            continue  # owner alive
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, OSError):
            continue
        for ns in existing:
            if ns.startswith(marker.name + "-"):
                delete_namespace(ns)
                deleted.append(ns)
        marker.unlink(missing_ok=True)
    return deleted


@atexit.register
def _teardown_all() -> None:
    for topo in list(_LIVE):
        with contextlib.suppress(Exception):
            topo.close()


# --- results ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """Result of :meth:`Topology.tcp_transfer`."""

    nbytes: int
    sent_sha256: str
    received_bytes: int
    received_sha256: str
    seconds: float

    @property
    def ok(self) -> bool:
        """Every byte arrived intact."""
        return self.received_bytes == self.nbytes and self.sent_sha256 == self.received_sha256


@dataclasses.dataclass(frozen=True)
class IperfResult:
    """Result of :meth:`Topology.iperf3` (receiver side figures)."""

    gbits_per_second: float
    retransmits: int
    seconds: float
    streams: int
    raw: dict[str, object] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class CapturedPacket:
    """One IPv4 packet from a capture; ``sport``/``dport`` are 0 for non-TCP/UDP."""

    time: float
    src: str
    dst: str
    proto: int  # IP protocol number: 1 ICMP, 6 TCP, 17 UDP, 50 ESP
    sport: int
    dport: int
    payload: bytes  # transport payload (after the UDP/TCP header), or the IP payload


# --- pcap ------------------------------------------------------------------------------

_LINKTYPE_ETHERNET = 1
_LINKTYPE_RAW = 101
_LINKTYPE_LINUX_SLL = 113


def read_pcap(path: str | os.PathLike[str]) -> list[CapturedPacket]:
    """Parse the IPv4 packets of a classic pcap file (Ethernet, raw IP or Linux SLL)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    offset, packets = 24, []
    while offset + 16 <= len(data):
        ts_s, ts_frac, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ts = ts_s + ts_frac / (1e9 if nano else 1e6)
        if linktype == _LINKTYPE_ETHERNET:
            ethertype, ip = int.from_bytes(frame[12:14], "big"), frame[14:]
            if ethertype == 0x8100:  # one VLAN tag
                ethertype, ip = int.from_bytes(frame[16:18], "big"), frame[18:]
        elif linktype == _LINKTYPE_LINUX_SLL:
            ethertype, ip = int.from_bytes(frame[14:16], "big"), frame[16:]
        elif linktype == _LINKTYPE_RAW:
            ethertype, ip = 0x0800, frame
        else:
            raise ValueError(f"{path}: unsupported pcap link type {linktype}")
        if ethertype != 0x0800 or len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        proto = ip[9]
        body = ip[ihl : max(total, ihl)]
        frag_off = int.from_bytes(ip[6:8], "big") & 0x1FFF
        sport = dport = 0
        if frag_off == 0 and proto == 17 and len(body) >= 8:
            sport, dport = struct.unpack("!HH", body[:4])
            body = body[8:]
        elif frag_off == 0 and proto == 6 and len(body) >= 20:
            sport, dport = struct.unpack("!HH", body[:4])
            body = body[(body[12] >> 4) * 4 :]
        packets.append(
            CapturedPacket(
                ts,
                socket.inet_ntoa(ip[12:16]),
                socket.inet_ntoa(ip[16:20]),
                proto,
                sport,
                dport,
                bytes(body),
            )
        )
    return packets


class Capture:
    """A running ``tcpdump -w`` in a namespace; stop it (or leave the ``with``) to read it."""

    def __init__(self, topo: Topology, ns: str, iface: str, bpf: str, path: Path):
        self.path = path
        self.ns, self.iface, self.bpf = ns, iface, bpf
        self._log = path.with_suffix(".tcpdump.log")
        cmd = ["tcpdump", "-i", iface, "-n", "-s", "0", "-U", "--immediate-mode", "-Z", "root"]
        cmd += ["-w", str(path)]
        cmd += bpf.split() if bpf else []
        self._proc = topo.spawn(ns, cmd, self._log)
        try:
            wait_until(
                lambda: self._log.read_text(errors="replace"),
                10,
                what=f"tcpdump on {ns}/{iface} to listen",
                until=lambda log: "listening on" in log or self._proc.poll() is not None,
                step=0.02,
            )
            if self._proc.poll() is not None:
                raise RuntimeError(f"tcpdump on {ns}/{iface} exited:\n{self._log.read_text()}")
        except BaseException:
            kill_process_group(self._proc)
            raise

    def stop(self) -> list[CapturedPacket]:
        """Stop tcpdump (SIGINT flushes the file) and return the captured IPv4 packets."""
        if self._proc.poll() is None:
            time.sleep(0.1)  # let the last packets reach the socket buffer
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGINT)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                kill_process_group(self._proc)
        return self.packets()

    def packets(self) -> list[CapturedPacket]:
        """The IPv4 packets written so far."""
        return read_pcap(self.path) if self.path.exists() else []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- helper programs run inside namespaces ---------------------------------------------

_SINK_PY = r"""
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(float(sys.argv[2]))
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[2]))
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
c.sendall(b"done"); c.close()
print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
"""

_SOURCE_PY = r"""
import hashlib, json, os, socket, sys, time
dst, port, nbytes, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = socket.create_connection((dst, port), timeout=timeout)
h, left, t0 = hashlib.sha256(), nbytes, time.monotonic()
while left:
    b = os.urandom(min(left, 1 << 20)); h.update(b); c.sendall(b); left -= len(b)
c.shutdown(socket.SHUT_WR)
ack = c.recv(16)
print(json.dumps({"sha256": h.hexdigest(), "seconds": time.monotonic() - t0, "ack": ack.decode()}))
"""


# --- the topology ----------------------------------------------------------------------


class Topology:
    """hostA — gwA ══ internet ══ gwB — hostB in fresh namespaces (optionally gwA behind NAT).

    Use as a context manager (or call :meth:`build` / :meth:`close`).  Attributes after
    construction: ``host_a``, ``gw_a``, ``gw_b``, ``host_b``, ``nat`` (``None`` without NAT)
    are namespace names; ``gw_a_wan_ip`` is gwA's own uplink address, ``gw_a_public_ip``
    the address gwB sees (the NAT's outside address behind NAT); ``workdir`` holds logs.

    ``nat_random_ports``: the NAT maps source ports randomly (``masquerade random``), so
    gwA's UDP/4500 shows up at gwB from another port, as behind many real NATs.

    Interfaces: hosts ``eth0``; gateways ``lan`` (site side) and ``wan`` (uplink); the NAT
    namespace ``in`` (towards gwA) and ``out`` (the internet).
    """

    HOST_IFACE = HOST_IFACE
    LAN_IFACE = LAN_IFACE
    WAN_IFACE = WAN_IFACE
    NAT_IN_IFACE = "in"
    NAT_OUT_IFACE = "out"

    def __init__(
        self,
        nat: bool = False,
        workdir: str | os.PathLike[str] | None = None,
        prefix: str | None = None,
        nat_random_ports: bool = False,
        ipv6: bool = False,
        attacker: bool = False,
    ) -> None:
        if nat and attacker:
            raise ValueError("attacker=True puts hosts on the internet link; not with nat=True")
        self.prefix = prefix or f"ipd{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.with_nat = nat
        self.nat_random_ports = nat_random_ports
        if ipv6 and nat:
            raise ValueError("the IPv6 addressing has no NAT")
        self.ipv6 = ipv6
        self.host_a = f"{self.prefix}-ha"
        self.gw_a = f"{self.prefix}-ga"
        self.gw_b = f"{self.prefix}-gb"
        self.host_b = f"{self.prefix}-hb"
        self.nat: str | None = f"{self.prefix}-nat" if nat else None
        self.inet: str | None = f"{self.prefix}-inet" if attacker else None
        self.attacker: str | None = f"{self.prefix}-atk" if attacker else None
        self.victim: str | None = f"{self.prefix}-vic" if attacker else None
        self.gw_a_wan_ip = GW_A_NAT_IP if nat else GW_A_WAN_IP
        self.gw_a_public_ip = NAT_OUTSIDE_IP if nat else GW_A_WAN_IP
        self.gw_b_wan_ip = GW_B_WAN_IP
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir = Path(tempfile.gettempdir()) / self.prefix  # see socket_path()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._created: list[str] = []
        self._closed = False
        self._lock = threading.Lock()
        self._seq = 0

    # -- names --------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """All namespaces of this topology, hostA first."""
        names = [self.host_a, self.gw_a]
        if self.nat:
            names.append(self.nat)
        names += [ns for ns in (self.inet, self.attacker, self.victim) if ns]
        return [*names, self.gw_b, self.host_b]

    @property
    def internet_ends(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(namespace, interface) at both ends of the 192.0.2.0/24 link."""
        a_side = (self.nat, self.NAT_OUT_IFACE) if self.nat else (self.gw_a, self.WAN_IFACE)
        return a_side, (self.gw_b, self.WAN_IFACE)

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Topology:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(keep_workdir=exc_type is not None)

    def build(self) -> Topology:
        """Create namespaces, links, addresses, routes and sysctls."""
        _LIVE.add(self)
        _OWNERS.mkdir(parents=True, exist_ok=True)
        _OWNERS.joinpath(self.prefix).write_text(f"{os.getpid()}\n")
        try:
            self._build()
        except BaseException:
            self.close(keep_workdir=True)
            raise
        return self

    def _build(self) -> None:
        for ns in self.namespaces:
            self._created.append(ns)  # first: an interrupt may land while `ip netns add` runs
            add_namespace(ns)
        bridged = self.inet is not None
        wire_sites(
            self.host_a, self.gw_a, self.gw_b, self.host_b, direct_wan=not (self.nat or bridged)
        )
        if self.inet is not None:
            self._build_bridge(self.inet)
        if self.ipv6:
            self._wire_ipv6()
        if self.nat:
            add_veth(self.gw_a, "wan", f"{GW_A_NAT_IP}/24", self.nat, "in", f"{NAT_INSIDE_IP}/24")
            add_veth(self.nat, "out", f"{NAT_OUTSIDE_IP}/24", self.gw_b, "wan", f"{GW_B_WAN_IP}/24")
            run(None, "ip", "-n", self.gw_a, "route", "add", "default", "via", NAT_INSIDE_IP)
            # So replies to site A's own internet traffic (masqueraded too) find their way.
            run(None, "ip", "-n", self.nat, "route", "add", SITE_A, "via", GW_A_NAT_IP)
            run(self.nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # "random": map source ports randomly, as many real NATs do (4500 -> other).
            ruleset = (
                "table ip ipd_nat {\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    oifname "{self.NAT_OUT_IFACE}" masquerade'
                f"{' random' if self.nat_random_ports else ''}\n"
                "  }\n"
                "}\n"
            )
            run(self.nat, "nft", "-f", "-", input=ruleset)

    def _wire_ipv6(self) -> None:
        """Turn IPv6 on (no DAD, no RAs, no solicitations) and give the links addresses.

        The settings go on every existing interface too, before IPv6 is enabled: an
        interface keeps the defaults it was created with, and with its own ``accept_dad``
        at 1 its link-local address stayed tentative for a second after start-up, in which
        the host ignored neighbour solicitations (the first pings were lost).
        """
        quiet = ("accept_dad=0", "accept_ra=0", "router_solicitations=0")
        for ns in self.namespaces:
            keys = ["all", "default", *run(ns, "ls", "/proc/sys/net/ipv6/conf").stdout.split()]
            settings = [f"net.ipv6.conf.{key}.{s}" for key in dict.fromkeys(keys) for s in quiet]
            run(ns, "sysctl", "-qw", *settings)
            run(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.all.disable_ipv6=0")  # fmt: skip
        links = (
            (self.host_a, HOST_IFACE, f"{HOST_A_IP6}/64"),
            (self.gw_a, LAN_IFACE, f"{GW_A_LAN_IP6}/64"),
            (self.gw_a, WAN_IFACE, f"{GW_A_WAN_IP6}/64"),
            (self.gw_b, WAN_IFACE, f"{GW_B_WAN_IP6}/64"),
            (self.gw_b, LAN_IFACE, f"{GW_B_LAN_IP6}/64"),
            (self.host_b, HOST_IFACE, f"{HOST_B_IP6}/64"),
        )
        for ns, iface, address in links:
            run(ns, "ip", "-6", "addr", "add", address, "dev", iface, "nodad")
        run(self.host_a, "ip", "-6", "route", "add", "default", "via", GW_A_LAN_IP6)
        run(self.host_b, "ip", "-6", "route", "add", "default", "via", GW_B_LAN_IP6)
        for gw in (self.gw_a, self.gw_b):
            run(gw, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def _build_bridge(self, inet: str) -> None:
        """The internet link as a bridge: gwA, gwB, the attacker and the bystander on it."""
        assert self.attacker is not None and self.victim is not None
        run(None, "ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        ends = (
            (self.gw_a, WAN_IFACE, f"{GW_A_WAN_IP}/24", "port-a"),
            (self.gw_b, WAN_IFACE, f"{GW_B_WAN_IP}/24", "port-b"),
            (self.attacker, "eth0", f"{ATTACKER_IP}/24", "port-atk"),
            (self.victim, "eth0", f"{VICTIM_IP}/24", "port-vic"),
        )
        for ns, ifname, address, port in ends:
            run(None, "ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name",
                port, "netns", inet)  # fmt: skip
            run(None, "ip", "-n", ns, "addr", "add", address, "dev", ifname)
            run(None, "ip", "-n", ns, "link", "set", ifname, "up")
            run(None, "ip", "-n", inet, "link", "set", "dev", port, "master", "br0", "up")
        run(None, "ip", "-n", inet, "link", "set", "dev", "br0", "up")
        for ns in (self.attacker, self.victim):
            run(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")

    def close(self, keep_workdir: bool = False) -> None:
        """Kill spawned processes and everything left in the namespaces; delete them.

        Idempotent and safe to call from any failure path.  A KeyboardInterrupt (Ctrl-C,
        or SIGTERM via :func:`install_sigterm_handler`) arriving meanwhile does not cut the
        teardown short: it is re-raised once everything is gone.  The work directory is
        removed only if this object created it and ``keep_workdir`` is false.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _LIVE.discard(self)
        interrupted: BaseException | None = None

        def step(fn: object, *args: object) -> None:
            nonlocal interrupted
            try:
                fn(*args)  # type: ignore[operator]
            except KeyboardInterrupt as exc:
                interrupted = interrupted or exc
            except Exception:  # noqa: BLE001 - teardown goes on whatever fails
                pass

        for proc in reversed(self._procs):
            step(kill_process_group, proc, 2.0)
        for ns in reversed(self._created):
            step(delete_namespace, ns)
        step(self._delete_strays)
        step(_OWNERS.joinpath(self.prefix).unlink, True)
        step(shutil.rmtree, self.rundir, True)
        if self._own_workdir and not keep_workdir:
            step(shutil.rmtree, self.workdir, True)
        elif keep_workdir:
            print(f"topology {self.prefix}: logs kept in {self.workdir}", file=sys.stderr)
        if interrupted is not None:
            raise interrupted

    def _delete_strays(self) -> None:
        for ns in list_namespaces():
            if ns.startswith(self.prefix + "-"):
                delete_namespace(ns)

    def socket_path(self, name: str) -> Path:
        """A short path for a unix socket (``sun_path`` holds only 107 bytes, and pytest's
        ``tmp_path`` alone can use most of them): ``/tmp/<prefix>/<name>``, removed at
        teardown."""
        self.rundir.mkdir(mode=0o700, exist_ok=True)
        path = self.rundir / name
        if len(str(path).encode()) > 107:
            raise ValueError(f"socket path too long: {path}")
        return path

    # -- processes ----------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        """A fresh file name in the work directory (``name`` made unique)."""
        with self._lock:
            self._seq += 1
            return self.workdir / f"{self._seq:03d}-{name}"

    def run(
        self,
        ns: str | None,
        *cmd: str,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """:func:`run` (module level), for convenience."""
        return run(ns, *cmd, check=check, timeout=timeout, input=input)

    def spawn(
        self,
        ns: str | None,
        cmd: Sequence[str],
        log_path: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns`` in its own process group; stdout+stderr go to ``log_path``.

        With ``stdout_pipe`` stdout is a pipe (stderr still goes to the log).  The process
        is killed (whole group) at teardown unless it ended before.
        """
        log = Path(log_path) if log_path else self.log_path(Path(cmd[0]).name + ".log")
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                netns_cmd(ns, cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else fh,
                stderr=fh,
                start_new_session=True,
                env=env,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> int | None:
        """Kill ``proc``'s process group now; return its exit code."""
        kill_process_group(proc, grace)
        return proc.returncode

    # -- configuration helpers ----------------------------------------------------------

    def add_plain_routes(self) -> None:
        """Static routes between the sites over the internet link (plain-routing baseline).

        Not available behind the NAT (site A's addresses would be masqueraded one way only).
        """
        if self.nat:
            raise RuntimeError("plain routes make no sense through the NAT namespace")
        run(None, "ip", "-n", self.gw_a, "route", "add", SITE_B, "via", GW_B_WAN_IP)
        run(None, "ip", "-n", self.gw_b, "route", "add", SITE_A, "via", GW_A_WAN_IP)

    def remove_plain_routes(self) -> None:
        """Undo :meth:`add_plain_routes`."""
        run(None, "ip", "-n", self.gw_a, "route", "del", SITE_B, check=False)
        run(None, "ip", "-n", self.gw_b, "route", "del", SITE_A, check=False)

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of packets on the internet link, each direction independently.

        nftables ``numgen random mod 100 < N drop`` on the ingress hook of both ends of the
        192.0.2.0/24 link; ``percent=0`` removes the rule.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be 0..100, got {percent}")
        for ns, iface in self.internet_ends:
            run(ns, "nft", "delete", "table", "netdev", "ipd_loss", check=False)
            if percent:
                # 100 % is a plain drop: nft rejects "< 100" for a mod-100 value.
                rule = "drop" if percent == 100 else f"numgen random mod 100 < {percent} drop"
                ruleset = (
                    "table netdev ipd_loss {\n"
                    "  chain ingress {\n"
                    f'    type filter hook ingress device "{iface}" priority 0; policy accept;\n'
                    f"    {rule}\n"
                    "  }\n"
                    "}\n"
                )
                run(ns, "nft", "-f", "-", input=ruleset)

    # -- traffic ------------------------------------------------------------------------

    def ping(
        self,
        src_ns: str,
        dst_ip: str,
        count: int = 5,
        interval: float = 0.05,
        wait: float = 1.0,
    ) -> PingStats:
        """:func:`ipsecd.cli.sites.ping`: ICMP echo from ``src_ns``; never raises on loss."""
        return ping(src_ns, dst_ip, count, interval, wait)

    def ping6(
        self, src_ns: str, dst_ip: str, count: int = 5, interval: float = 0.05, size: int = 56
    ) -> int:
        """ICMPv6 echo from ``src_ns`` with iputils' ping; the number of replies.

        With more than one echo a deadline (``-w``) bounds the wait instead of ``-W``:
        once any reply came, iputils waits only two round trips after the last echo, and a
        reply a few milliseconds late on a loaded machine counted as lost (a CI failure
        of test_pmtu, 2 of 3)."""
        wait = ["-w", str(math.ceil(count * interval) + 2)] if count > 1 else ["-W", "1"]
        res = run(
            src_ns,
            "ping", "-6", "-n", "-q", "-c", str(count), "-i", str(interval), *wait,
            "-s", str(size), dst_ip,
            check=False,
            timeout=count * interval + 20,
        )  # fmt: skip
        for line in res.stdout.splitlines():
            if " received" in line:
                return int(line.split(",")[1].split()[0])
        return 0

    def wait_ping(self, src_ns: str, dst_ip: str, timeout: float = 10.0) -> bool:
        """Ping once per attempt until a reply comes back or ``timeout`` passes."""
        if ":" in dst_ip:

            def one() -> int:
                return self.ping6(src_ns, dst_ip, count=1)
        else:

            def one() -> int:
                return self.ping(src_ns, dst_ip, count=1, wait=0.5).received

        try:
            wait_until(
                one,
                timeout,
                what=f"a ping reply from {dst_ip} in {src_ns}",
                step=0.0,
            )
        except WaitTimeout:
            return False
        return True

    def tcp_transfer(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        nbytes: int,
        timeout: float = 60.0,
        bind_ip: str | None = None,
    ) -> TransferResult:
        """Send ``nbytes`` random bytes over TCP from ``src_ns`` to ``dst_ip`` in ``dst_ns``.

        The receiver listens on ``bind_ip`` (default ``dst_ip``; another address where
        a NAT stands between).  Both ends hash what they saw (SHA-256); compare with
        ``result.ok``.  Raises ``RuntimeError`` with the helper's log if either end fails.
        """
        log = self.log_path("tcp-sink.log")
        sink = self.spawn(
            dst_ns,
            [sys.executable, "-c", _SINK_PY, bind_ip or dst_ip, str(timeout)],
            log,
            stdout_pipe=True,
        )
        try:
            assert sink.stdout is not None
            port_line = sink.stdout.readline().decode().strip()
            if not port_line.isdigit():
                sink.wait(5)
                raise RuntimeError(f"tcp sink in {dst_ns} failed: {log.read_text()}")
            try:
                src = run(
                    src_ns,
                    sys.executable,
                    "-c",
                    _SOURCE_PY,
                    dst_ip,
                    port_line,
                    str(nbytes),
                    str(timeout),
                    timeout=timeout + 10,
                )
            except (CommandError, subprocess.TimeoutExpired) as exc:
                raise RuntimeError(f"tcp source in {src_ns} failed: {exc}") from exc
            out, _ = sink.communicate(timeout=timeout)
            recv = json.loads(out.decode().strip().splitlines()[-1])
            sent = json.loads(src.stdout)
        finally:
            kill_process_group(sink, grace=1.0)
        return TransferResult(
            nbytes=nbytes,
            sent_sha256=sent["sha256"],
            received_bytes=int(recv["bytes"]),
            received_sha256=recv["sha256"],
            seconds=float(sent["seconds"]),
        )

    def iperf3(
        self,
        client_ns: str,
        server_ns: str,
        server_ip: str,
        seconds: float = 10.0,
        streams: int = 1,
        extra: Sequence[str] = (),
    ) -> IperfResult:
        """TCP throughput from ``client_ns`` to an iperf3 server on ``server_ip``.

        Returns the receiver's bit rate in Gbit/s and the sender's TCP retransmits.
        """
        port = 20000 + secrets.randbelow(20000)
        log = self.log_path("iperf3-server.log")
        server = self.spawn(
            server_ns, ["iperf3", "-s", "-1", "-B", server_ip, "-p", str(port)], log
        )
        try:
            wait_until(
                lambda: (
                    server.poll() is not None or f":{port}" in run(server_ns, "ss", "-ltnH").stdout
                ),
                10,
                what=f"iperf3 server in {server_ns} to listen on port {port}",
                context=lambda: log.read_text(),
            )
            if server.poll() is not None:
                raise RuntimeError(f"iperf3 server in {server_ns} failed: {log.read_text()}")
            res = run(
                client_ns,
                "iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds),
                "-P", str(streams), "--json", *extra,
                check=False,
                timeout=seconds + 30,
            )  # fmt: skip
            try:
                data = json.loads(res.stdout)
            except json.JSONDecodeError as exc:
                raise RuntimeError(f"iperf3 client: {res.stdout}\n{res.stderr}") from exc
            if "error" in data:
                raise RuntimeError(f"iperf3 client in {client_ns}: {data['error']}")
        finally:
            kill_process_group(server, grace=1.0)
        end = data["end"]
        received = end["sum_received"]
        return IperfResult(
            gbits_per_second=received["bits_per_second"] / 1e9,
            retransmits=int(end.get("sum_sent", {}).get("retransmits", 0)),
            seconds=float(received["seconds"]),
            streams=streams,
            raw=data,
        )

    def start_capture(
        self, ns: str, iface: str, bpf: str = "", path: str | os.PathLike[str] | None = None
    ) -> Capture:
        """Start ``tcpdump -w`` on ``ns``/``iface`` (BPF filter ``bpf``); returns when live."""
        pcap = Path(path) if path else self.log_path(f"{iface}.pcap")
        pcap.parent.mkdir(parents=True, exist_ok=True)
        return Capture(self, ns, iface, bpf, pcap)

    def capture(
        self,
        ns: str,
        iface: str,
        bpf: str = "",
        seconds: float = 1.0,
        path: str | os.PathLike[str] | None = None,
    ) -> list[CapturedPacket]:
        """Capture for ``seconds`` and return the IPv4 packets (the pcap stays in ``path``)."""
        cap = self.start_capture(ns, iface, bpf, path)
        time.sleep(seconds)
        return cap.stop()


@contextlib.contextmanager
def topology(
    nat: bool = False, workdir: str | os.PathLike[str] | None = None
) -> Iterator[Topology]:
    """``with topology() as t:`` — build a :class:`Topology`, always tear it down."""
    topo = Topology(nat=nat, workdir=workdir)
    with topo:
        yield topo
