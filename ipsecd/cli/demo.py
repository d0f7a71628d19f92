"""``ipsecd demo``: two sites in network namespaces joined by an ipsecd tunnel.

Builds hostA — gwA ══ internet ══ gwB — hostB (:mod:`ipsecd.cli.sites`), writes both
gateways' configs with a freshly generated pre-shared key (``--auth cert``: a CA and
one certificate per gateway made by ``ipsecd pki``, :mod:`ipsecd.cli.pki`, in the
work directory; ``--pq``: the hybrid proposal x25519 + ML-KEM-768), starts two daemons (gwA
initiates), pings hostB from hostA through the tunnel, prints ``ipsecctl status`` of both
gateways and tears everything down.  With ``--keep`` it stays up until SIGINT (Ctrl-C) or
SIGTERM.  Either signal, at any point, stops both daemons and deletes every namespace
before the demo exits.  Needs root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ipsecd.cli import sites
from ipsecd.cli.ipsecctl import Style, format_status
from ipsecd.daemon.control import request

IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"
PQ_IKE_PROPOSAL = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"  # RFC 9370 hybrid
ESP_PROPOSAL = "aes256gcm16"
CA_DN = "C=CH, O=ipsecd demo, CN=ipsecd demo CA"
START_TIMEOUT = 10.0  # a daemon answers on its control socket
UP_TIMEOUT = 20.0  # the tunnel is up
PINGS = 5


class DemoFailed(Exception):
    """Something the operator should read: the message says what went wrong, in words."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; unwinds to the teardown (not an ``Exception``, so no
    handler on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _poll(ready: Callable[[], bool], timeout: float) -> bool:
    """True once ``ready()`` is; False if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class Gateway:
    """One ipsecd daemon in a gateway namespace, with its config, log and control socket."""

    def __init__(self, label: str, ns: str, workdir: Path) -> None:
        self.label, self.ns = label, ns
        self.config = workdir / f"{label}.yaml"
        self.socket = workdir / f"{label}.sock"
        self.log = workdir / f"{label}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(
        self,
        local: tuple[str, str],
        remote: tuple[str, str, str],
        auth: str,
        ike_proposal: str = IKE_PROPOSAL,
    ) -> None:
        """``local``: (WAN address, site); ``remote``: (peer name, WAN address, site);
        ``auth``: the ``auth:`` section as a YAML flow mapping."""
        (wan, site), (peer, peer_wan, peer_site) = local, remote
        lan_ip = sites.GW_A_LAN_IP if site == sites.SITE_A else sites.GW_B_LAN_IP
        start = "initiate" if self.label == "gwA" else "respond"
        self.config.write_text(
            f"# ipsecd demo: {self.label} in namespace {self.ns}\n"
            "log:\n  level: info\n"
            "gateway:\n"
            "  tun: ipsec0\n"
            f"  listen: [{wan}]\n"
            f"  addresses: [{lan_ip}/32]\n"
            f"  control_socket: {self.socket}\n"
            "peers:\n"
            f"  - name: {peer}\n"
            f"    remote_address: {peer_wan}\n"
            f"    start: {start}\n"
            f"    local_ts: [{site}]\n"
            f"    remote_ts: [{peer_site}]\n"
            f"    ike: {{proposals: [{ike_proposal}]}}\n"
            f"    esp: {{proposals: [{ESP_PROPOSAL}]}}\n"
            f"    auth: {auth}\n"
        )

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                sites.netns_cmd(
                    self.ns,
                    [sys.executable, "-m", "ipsecd.cli.ipsecd", "run", "-c", str(self.config)],
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops us in order
            )

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def status(self) -> dict[str, Any] | None:
        """The daemon's status, or None while it does not answer."""
        try:
            response = request(self.socket, {"cmd": "status"}, timeout=5)
        except (OSError, ValueError):
            return None
        return response.get("status") if response.get("ok") else None

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty)"

    def wait_ready(self) -> None:
        if not _poll(lambda: self.exited() or self.status() is not None, START_TIMEOUT):
            raise DemoFailed(
                f"ipsecd on {self.label} did not answer on {self.socket} within"
                f" {START_TIMEOUT:.0f} s; the end of its log ({self.log}):\n{self.log_tail()}"
            )
        if self.exited():
            assert self.proc is not None
            raise DemoFailed(
                f"ipsecd on {self.label} stopped with exit code {self.proc.returncode} right"
                f" after starting; the end of its log ({self.log}):\n{self.log_tail()}"
            )

    def peer(self) -> dict[str, Any]:
        status = self.status()
        return status["peers"][0] if status and status.get("peers") else {}

    def stop(self) -> None:
        """SIGTERM (the daemon removes its TUN device, routes and socket), then SIGKILL."""
        if self.proc is not None:
            sites.kill_process_group(self.proc, grace=5.0)


class Demo:
    """The namespaces, the two gateways and the work directory of one demo run."""

    def __init__(self, auth: str = "psk", pq: bool = False) -> None:
        self.auth, self.pq = auth, pq
        prefix = f"ipsdemo{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.host_a, self.gw_a_ns = f"{prefix}-hostA", f"{prefix}-gwA"
        self.gw_b_ns, self.host_b = f"{prefix}-gwB", f"{prefix}-hostB"
        self.namespaces = [self.host_a, self.gw_a_ns, self.gw_b_ns, self.host_b]
        self.created: list[str] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="ipsecd-demo-"))
        self.gw_a = Gateway("gwA", self.gw_a_ns, self.workdir)
        self.gw_b = Gateway("gwB", self.gw_b_ns, self.workdir)

    def build(self) -> None:
        for ns in self.namespaces:
            self.created.append(ns)  # first: a signal may land while `ip netns add` runs
            sites.add_namespace(ns)
        sites.wire_sites(self.host_a, self.gw_a_ns, self.gw_b_ns, self.host_b)

    def configure(self) -> None:
        ike = PQ_IKE_PROPOSAL if self.pq else IKE_PROPOSAL
        if self.auth == "cert":
            auth_a, auth_b = self._certificates()
        else:
            psk = self.workdir / "psk"
            psk.write_text("0x" + secrets.token_hex(32) + "\n")
            psk.chmod(0o600)
            auth_a = auth_b = f"{{psk_file: {psk}}}"
        self.gw_a.write_config(
            (sites.GW_A_WAN_IP, sites.SITE_A), ("gwB", sites.GW_B_WAN_IP, sites.SITE_B), auth_a, ike
        )
        self.gw_b.write_config(
            (sites.GW_B_WAN_IP, sites.SITE_B), ("gwA", sites.GW_A_WAN_IP, sites.SITE_A), auth_b, ike
        )

    def _certificates(self) -> tuple[str, str]:
        """A CA and a certificate per gateway (its WAN address as subjectAltName, so the
        default identities fit), made with ``ipsecd pki``; the two ``auth:`` sections."""
        from ipsecd.cli.pki import main as pki

        w = self.workdir
        ca_cert, ca_key = w / "ca.pem", w / "ca.key"
        if pki(["ca", "--dn", CA_DN, "--key-out", str(ca_key), "--cert-out", str(ca_cert)]):
            raise DemoFailed(f"ipsecd pki ca could not make the demo CA in {w}")
        auths = []
        for label, wan in (("gwA", sites.GW_A_WAN_IP), ("gwB", sites.GW_B_WAN_IP)):
            cert, key = w / f"{label}.pem", w / f"{label}.key"
            if pki(
                [
                    *("issue", "--ca-cert", str(ca_cert), "--ca-key", str(ca_key)),
                    *("--dn", f"C=CH, O=ipsecd demo, CN={label}", "--san", wan),
                    *("--key-out", str(key), "--cert-out", str(cert)),
                ]
            ):
                raise DemoFailed(f"ipsecd pki issue could not make {label}'s certificate")
            auths.append(f"{{certificate: {cert}, private_key: {key}, cacerts: [{ca_cert}]}}")
        return auths[0], auths[1]

    def teardown(self, keep_workdir: bool) -> None:
        """Stop the daemons, delete the namespaces; each step runs whatever the last did."""
        for gateway in (self.gw_a, self.gw_b):
            with contextlib.suppress(Exception):
                gateway.stop()
        for ns in reversed(self.created):
            with contextlib.suppress(Exception):
                sites.delete_namespace(ns)
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _bring_up(demo: Demo, style: Style) -> sites.PingStats:
    demo.build()
    print(f"built namespaces {', '.join(demo.namespaces)}")
    demo.configure()
    demo.gw_b.start()  # the responder first, so the initiator's first try lands
    demo.gw_a.start()
    for gateway in (demo.gw_b, demo.gw_a):
        gateway.wait_ready()
    print("started ipsecd on gwA (initiator) and gwB (responder); negotiating IKEv2 ...")
    print(f"configs, logs and control sockets in {demo.workdir}:")
    for gateway in (demo.gw_a, demo.gw_b):
        print(f"  {gateway.label}: ipsecctl -s {gateway.socket} status")
    started = time.monotonic()
    if not _poll(lambda: bool(demo.gw_a.peer().get("up")) or demo.gw_a.exited(), UP_TIMEOUT):
        error = demo.gw_a.peer().get("last_error") or demo.gw_b.peer().get("last_error")
        raise DemoFailed(
            f"the tunnel did not come up within {UP_TIMEOUT:.0f} s"
            + (f": {error}" if error else f"; the end of gwA's log:\n{demo.gw_a.log_tail()}")
        )
    if demo.gw_a.exited():
        raise DemoFailed(f"ipsecd on gwA stopped; the end of its log:\n{demo.gw_a.log_tail()}")
    print(style.good(f"tunnel up after {1000 * (time.monotonic() - started):.0f} ms"))
    # The first packets may wait for ARP on the LANs: settle with single pings first.
    _poll(lambda: sites.ping(demo.host_a, sites.HOST_B_IP, count=1, wait=0.5).received > 0, 5)
    return sites.ping(demo.host_a, sites.HOST_B_IP, count=PINGS)


def run_demo(keep: bool = False, auth: str = "psk", pq: bool = False) -> int:
    """Run the demo; returns the exit code (0: the tunnel carried every ping).

    ``auth``: ``psk`` or ``cert`` (certificates from a demo CA); ``pq``: the hybrid
    x25519 + ML-KEM-768 proposal (RFC 9370)."""
    if os.geteuid() != 0:
        print("ipsecd demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    style = Style(sys.stdout.isatty())
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    demo: Demo | None = None
    code, failed = 1, True
    try:
        demo = Demo(auth, pq)
        stats = _bring_up(demo, style)
        ok = stats.received == stats.transmitted
        line = (
            f"ping hostA {sites.HOST_A_IP} -> hostB {sites.HOST_B_IP}: {stats.received}/"
            f"{stats.transmitted} received, rtt avg {stats.rtt_avg:.2f} ms"
        )
        print(style.good(line) if ok else style.bad(line))
        for gateway in (demo.gw_a, demo.gw_b):
            print(f"\n{style.bold('== ipsecctl status on ' + gateway.label + ' ==')}")
            print(format_status(gateway.status() or {}, style))
        code, failed = (0 if ok else 1), not ok
        if keep:
            print(
                f"\nrunning; try: ip netns exec {demo.host_a} ping {sites.HOST_B_IP}"
                f"\nCtrl-C or SIGTERM to pid {os.getpid()} tears it down",
                flush=True,
            )
            while True:
                signal.pause()
    except DemoFailed as exc:
        print(style.bad(f"ipsecd demo failed: {exc}"), file=sys.stderr)
    except Interrupted as exc:
        print(f"\n{exc}: tearing down", flush=True)
        if not keep or failed:
            code = 128 + exc.signum
    finally:
        # No second Ctrl-C may cut the teardown short.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        if demo is not None:
            demo.teardown(keep_workdir=failed)
            if failed:
                print(f"logs kept in {demo.workdir}", file=sys.stderr)
        print("tore down both daemons and all namespaces", flush=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code
