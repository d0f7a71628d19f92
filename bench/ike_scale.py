"""How the cost of one IKE handshake grows with the number of established IKE SAs.

Two in-process IkeManagers (sans-I/O, fake clock, no sockets) with N+1 peers each
(FQDN identities, one shared PSK): N peers are brought up first, then one handshake
(IKE_SA_INIT + IKE_AUTH with the first CHILD_SA, both sides' processing) is timed for
the last peer, and deleted again.  The time is the CPU time of this process
(``time.process_time``), so other load on the machine does not count.  After every
datagram both managers are asked for their timer, as the daemon's loop does.  Rounds
interleave the sizes; the medians are printed.  Never asserted anywhere (bench/README.md).

    python3 bench/ike_scale.py                       # N = 0, 250, 1000; 15 rounds
    python3 bench/ike_scale.py --sizes 0 250 --rounds 30
    python3 bench/ike_scale.py --daemon              # DaemonCore both sides: up and down
    python3 bench/ike_scale.py --daemon --profile /tmp/ike.prof   # cProfile the largest N
    python3 bench/ike_scale.py --sad --sizes 250 1000   # the SA database alone
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ipsecd.config import parse_config
from ipsecd.crypto.registry import ENCRYPTION
from ipsecd.daemon import logs
from ipsecd.daemon.core import DaemonCore
from ipsecd.dataplane.sad import InstalledChildSa, SaDatabase
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.ike.manager import IkeManager
from ipsecd.selectors import TrafficSelector

PSK = "0x" + "5a" * 32


def address(side: str, i: int) -> str:
    """Peer i's address on ``side``: every peer has its own pair of endpoints."""
    return f"100.{64 if side == 'a' else 96}.{i // 250}.{i % 250 + 1}"


def subnet(side: str, i: int) -> str:
    """Peer i's protected network on ``side``: disjoint for every peer (the config
    refuses two peers claiming the same traffic)."""
    return f"10.{(16 if side == 'a' else 32) + i // 250}.{i % 250}.0/24"


def config_text(n: int, psk_file: Path, initiator: bool) -> str:
    me, other = ("a", "b") if initiator else ("b", "a")
    lines = [
        "gateway:",
        f"  listen: [{', '.join(address(me, i) for i in range(n))}]",
        "peers:",
    ]
    for i in range(n):
        local, remote = (f"a{i}.example", f"b{i}.example")
        if not initiator:
            local, remote = remote, local
        lines += [
            f"  - name: p{i}",
            f"    local_address: {address(me, i)}",
            f"    remote_address: {address(other, i)}",
            f"    start: {'initiate' if initiator else 'respond'}",
            f"    local_ts: [{subnet(me, i)}]",
            f"    remote_ts: [{subnet(other, i)}]",
            "    ike:",
            "      proposals: [aes256gcm16-prfsha256-x25519]",
            "    esp:",
            "      proposals: [aes256gcm16]",
            "    auth:",
            f"      psk_file: {psk_file}",
            f"      local_id: '@{local}'",
            f"      remote_id: '@{remote}'",
        ]
    return "\n".join(lines) + "\n"


class Setup:
    """Two managers with ``established`` IKE SAs up and one spare peer to time."""

    def __init__(self, directory: Path, established: int) -> None:
        psk_file = directory / "psk"
        psk_file.write_text(PSK + "\n")
        os.chmod(psk_file, 0o600)
        peers = established + 1
        a_yaml = config_text(peers, psk_file, True)
        b_yaml = config_text(peers, psk_file, False)
        self.now = 1000.0
        self.a = IkeManager(parse_config(a_yaml, directory / "a.yaml"), self.now)
        self.b = IkeManager(parse_config(b_yaml, directory / "b.yaml"), self.now)
        self.spare = f"p{established}"
        for i in range(established):
            self.a.initiate(f"p{i}", self.now)
            self.pump()
        up = sum(s["state"] == "established" for s in self.a.status())
        if up != established:
            raise SystemExit(f"only {up} of {established} IKE SAs came up")

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for mgr, other in ((self.a, self.b), (self.b, self.a)):
                for d in mgr.datagrams_to_send():
                    moved = True
                    other.receive_datagram(d.data, d.remote, d.local, self.now)
                    self.a.get_timer()
                    self.b.get_timer()
            for mgr in (self.a, self.b):
                while mgr.next_event() is not None:
                    pass

    def handshake(self) -> float:
        """CPU seconds for one IKE_SA_INIT + IKE_AUTH of the spare peer (then deleted again)."""
        start = time.process_time()
        self.a.initiate(self.spare, self.now)
        self.pump()
        elapsed = time.process_time() - start
        sa = self.a.ike_sa(self.spare)
        if sa is None or sa.state.value != "established":
            raise SystemExit(f"the timed handshake failed: {self.a.status()[-1]}")
        self.a.terminate(self.spare, self.now)
        self.pump()
        return elapsed


class CoreSetup:
    """The same, with both gateways as :class:`DaemonCore` (``--daemon``): the IKE manager
    plus what the daemon's loop does around it (SA database, peer index, ledger, logs at
    info, the status line and the timer after every burst, as :meth:`Daemon._flush`)."""

    def __init__(self, directory: Path, established: int) -> None:
        psk_file = directory / "psk"
        psk_file.write_text(PSK + "\n")
        os.chmod(psk_file, 0o600)
        peers = established + 1
        self.now = 1000.0
        self.a = DaemonCore(
            parse_config(config_text(peers, psk_file, True), directory / "a.yaml"), self.now
        )
        self.b = DaemonCore(
            parse_config(config_text(peers, psk_file, False), directory / "b.yaml"), self.now
        )
        self.spare = f"p{established}"
        for i in range(established):
            self.a.control("up", f"p{i}", self.now)
            self.pump()
        if len(self.a.sad) != established or len(self.b.sad) != established:
            raise SystemExit(f"only {len(self.a.sad)} of {established} CHILD_SAs came up")

    def pump(self) -> None:
        cores = (self.a, self.b)
        moved = True
        while moved:
            moved = False
            for core, other in ((self.a, self.b), (self.b, self.a)):
                for local, remote, datagrams in core.datagrams_to_send():
                    moved = True
                    other.from_udp([(d, local) for d in datagrams], remote, self.now)
                    while other.ike_pending():  # the shell's IKE slices
                        other.run_ike(self.now)
                    for c in cores:  # Daemon._flush after every burst
                        c.status_line()
                        c.get_timer()
                        c.packets_to_tun()
                        c.raw_to_send()

    def handshake(self) -> tuple[float, float]:
        """CPU seconds for ``up`` of the spare peer until both gateways installed its
        CHILD_SA, and for ``down`` until both removed it."""
        start = time.process_time()
        self.a.control("up", self.spare, self.now)
        self.pump()
        up = time.process_time() - start
        if len(self.a.sad) != len(self.b.sad) or not self.a.by_peer.of(self.spare):
            raise SystemExit("the timed handshake failed")
        start = time.process_time()
        self.a.control("down", self.spare, self.now)
        self.pump()
        down = time.process_time() - start
        if self.a.by_peer.of(self.spare) or self.b.by_peer.of(self.spare):
            raise SystemExit("the timed delete failed")
        return up, down


def sad_sas(n: int) -> list[InstalledChildSa]:
    """``n`` CHILD_SAs as the data plane holds them, each for its own pair of subnets."""
    gcm, key = ENCRYPTION["aes128gcm16"], bytes(20)
    out = []
    for i in range(n):
        lts = (TrafficSelector.from_prefix(subnet("a", i)),)
        rts = (TrafficSelector.from_prefix(subnet("b", i)),)
        inbound = InboundEspSa(2 * i + 1, gcm, None, key, b"", src_selectors=rts, dst_selectors=lts)
        outbound = OutboundEspSa(2 * i + 2, gcm, None, key, b"")
        out.append(InstalledChildSa(f"p{i}", inbound, outbound, lts, rts, ("a", 4500), ("b", 4500)))
    return out


LOOKUPS = 2000  # new flows looked up per round, each missing the flow cache


def sad_round(sas: list[InstalledChildSa]) -> tuple[float, float, float]:
    """CPU seconds to install ``sas`` one by one into an empty SaDatabase, then per
    outbound lookup of a new flow (a cache miss) to the first SA's subnet (the oldest
    of equally specific pairs: last in line for a scan), then to remove them."""
    sad = SaDatabase()
    start = time.process_time()
    for sa in sas:
        sad.install(sa)
    installed = time.process_time()
    if sas:
        first = sas[0]
        src, dst = first.local_ts[0].start, first.remote_ts[0].start
        for i in range(LOOKUPS):
            if sad.lookup_outbound(4, src + 1 + i % 250, dst + 1 + i // 250) is not first:
                raise SystemExit("the lookup found the wrong SA")
    looked_up = time.process_time()
    for sa in sas:
        sad.remove(sa.inbound.spi)
    return installed - start, (looked_up - installed) / LOOKUPS, time.process_time() - looked_up


def _row(label: str, n: int, times: list[float], base: float) -> str:
    median = statistics.median(times)
    return (
        f"{n:>12} {label:>5} {median * 1e3:>10.2f} {min(times) * 1e3:>8.2f}"
        f" {max(times) * 1e3:>8.2f} {100 * (median / base - 1):>+8.1f}%"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 250, 1000])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--daemon", action="store_true", help="both gateways as DaemonCore (up and down timed)"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the timed rounds of the largest size to FILE"
    )
    parser.add_argument(
        "--sad",
        action="store_true",
        help="the SA database alone: install N SAs one by one, look up new flows, remove them",
    )
    args = parser.parse_args(argv)
    if args.sad:
        return sad_main(args.sizes, args.rounds)
    if args.daemon:
        logs.configure("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115 - kept open
    kind = CoreSetup if args.daemon else Setup
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        setups: dict[int, Setup | CoreSetup] = {}
        for n in args.sizes:
            directory = Path(tmp) / str(n)
            directory.mkdir()
            t0 = time.perf_counter()
            setups[n] = kind(directory, n)
            print(f"set up {n} SAs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        up: dict[int, list[float]] = {n: [] for n in args.sizes}
        down: dict[int, list[float]] = {n: [] for n in args.sizes}
        profiled = max(args.sizes)
        for _ in range(args.rounds):
            for n in args.sizes:
                if profiler is not None and n == profiled:
                    profiler.enable()
                result = setups[n].handshake()
                if profiler is not None and n == profiled:
                    profiler.disable()
                if isinstance(result, tuple):
                    up[n].append(result[0])
                    down[n].append(result[1])
                else:
                    up[n].append(result)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    print(
        f"{'established':>12} {'':>5} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'vs first':>9}"
    )
    for label, times in (("up", up), ("down", down)):
        if not times[args.sizes[0]]:
            continue
        base = statistics.median(times[args.sizes[0]])
        for n in args.sizes:
            print(_row(label, n, times[n], base))
    return 0


def sad_main(sizes: list[int], rounds: int) -> int:
    sets = {n: sad_sas(n) for n in sizes}
    times: dict[int, list[tuple[float, float, float]]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            times[n].append(sad_round(sets[n]))
    print(
        f"{'SAs':>6} {'install all ms':>15} {'lookup us':>16} {'remove all ms':>16}"
        "  (median, min-max)"
    )
    for n in sizes:
        ins = [t[0] * 1e3 for t in times[n]]
        look = [t[1] * 1e6 for t in times[n]]
        rem = [t[2] * 1e3 for t in times[n]]
        print(
            f"{n:>6} {statistics.median(ins):>7.2f} ({min(ins):.2f}-{max(ins):.2f})"
            f" {statistics.median(look):>6.2f} ({min(look):.2f}-{max(look):.2f})"
            f" {statistics.median(rem):>6.2f} ({min(rem):.2f}-{max(rem):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
