"""Run ipsecd daemons inside the test topology's gateway namespaces.

Writes each gateway's YAML config (and PSK / manual key files, mode 0600),
starts ``python -m ipsecd.cli.ipsecd run`` in the namespace, waits for its
control socket, and stops it with SIGTERM so the shutdown path is exercised.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.daemon.control import request
from tests.lab.topology import (
    GW_A_LAN_IP,
    GW_B_LAN_IP,
    SITE_A,
    SITE_B,
    Topology,
)
from tests.lab.wait import wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GatewaySpec:
    """What one gateway's config says; everything a test may vary."""

    name: str  # "a" or "b"
    ns: str
    wan_ip: str
    peer_ip: str
    local_ts: list[str]
    remote_ts: list[str]
    tun_address: str | None = None
    start: str = "initiate"
    ike_proposals: list[str] = field(default_factory=lambda: ["aes256gcm16-prfsha256-x25519"])
    esp_proposals: list[str] = field(default_factory=lambda: ["aes256gcm16"])
    local_id: str | None = None
    remote_id: str | None = None
    peer_extra: dict[str, Any] = field(default_factory=dict)
    gateway_extra: dict[str, Any] = field(default_factory=dict)
    # The auth: section instead of the PSK file (certificates, PPK: tests/netns/test_certs_pq.py).
    auth: dict[str, Any] | None = None
    # More keys of the peer's esp: section (mode, protocol, ah_proposals); with
    # ``protocol: ah`` the ESP ``proposals`` are left out.
    child_extra: dict[str, Any] = field(default_factory=dict)
    log_level: str = "debug"  # the benchmark runs at "info"


def site_specs(topo: Topology) -> tuple[GatewaySpec, GatewaySpec]:
    """The default site-to-site pair: gwA (10.1.0.0/24) <-> gwB (10.2.0.0/24)."""
    a = GatewaySpec(
        "a",
        topo.gw_a,
        topo.gw_a_wan_ip,
        topo.gw_b_wan_ip,
        [SITE_A],
        [SITE_B],
        f"{GW_A_LAN_IP}/32",
    )
    b = GatewaySpec(
        "b",
        topo.gw_b,
        topo.gw_b_wan_ip,
        topo.gw_a_public_ip,
        [SITE_B],
        [SITE_A],
        f"{GW_B_LAN_IP}/32",
        start="respond",
        # Behind the NAT gwA still calls itself by its own (private) address.
        remote_id=topo.gw_a_wan_ip if topo.with_nat else None,
    )
    return a, b


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


class IpsecdProcess:
    """One running daemon in one namespace."""

    def __init__(self, topo: Topology, spec: GatewaySpec, config: Path, socket: Path) -> None:
        self.topo = topo
        self.spec = spec
        self.config = config
        self.socket = socket
        self.log = topo.log_path(f"ipsecd-{spec.name}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> IpsecdProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = self.topo.spawn(
            self.spec.ns,
            [sys.executable, "-m", "ipsecd.cli.ipsecd", "run", "--config", str(self.config)],
            log_path=self.log,
            env=env,
        )
        wait_until(
            lambda: "exited" if self.exited() else self.status(),
            wait,
            what=f"ipsecd {self.spec.name} to answer on {self.socket}",
            ignore=(OSError,),
            context=self.log_text,
        )
        if self.exited():
            raise RuntimeError(f"ipsecd {self.spec.name} exited: {self.log_text()}")
        return self

    def exited(self) -> bool:
        """The daemon was started and has ended."""
        return self.proc is not None and self.proc.poll() is not None

    def control(self, payload: dict[str, Any]) -> dict[str, Any]:
        return request(self.socket, payload)

    def status(self) -> dict[str, Any]:
        response = self.control({"cmd": "status"})
        assert response["ok"], response
        return response["status"]

    def peer_status(self) -> dict[str, Any]:
        return self.status()["peers"][0]

    def wait_up(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the (first) peer's tunnel is up; return its status."""
        peer = wait_until(
            self.peer_status,
            timeout,
            what=f"the tunnel on {self.spec.name} to come up",
            until=lambda peer: peer["up"] or self.exited(),
            context=self.log_text,
        )
        if not peer["up"]:
            raise AssertionError(f"ipsecd {self.spec.name} exited: {peer}\n{self.log_text()}")
        return peer

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.topo.stop(self.proc)
            raise AssertionError(f"ipsecd {self.spec.name} ignored SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL (a crash): no Delete goes out, nothing is cleaned up by the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"


def _gateway_section(spec: GatewaySpec, socket: Path) -> dict[str, Any]:
    gateway: dict[str, Any] = {
        "tun": f"ipsec{spec.name}",
        "listen": [spec.wan_ip],
        "control_socket": str(socket),
        # The workdir (config, PSK) is root's 0700: a daemon dropped to nobody could not
        # read it at reload.  tests/netns/test_hardening_local.py runs the drop.
        "user": "root",
    }
    if spec.tun_address:
        gateway["addresses"] = [spec.tun_address]
    gateway.update(spec.gateway_extra)
    return gateway


def write_config(topo: Topology, spec: GatewaySpec, peer: dict[str, Any]) -> tuple[Path, Path]:
    socket = topo.socket_path(f"ipsecd-{spec.name}.sock")
    config = {
        "log": {"level": spec.log_level, "format": "json"},
        "gateway": _gateway_section(spec, socket),
        "peers": [peer],
    }
    path = topo.workdir / f"ipsecd-{spec.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, socket


def esp_section(spec: GatewaySpec) -> dict[str, Any]:
    """The peer's esp: section: the ESP proposals, or none for AH, plus ``child_extra``."""
    section: dict[str, Any] = {}
    if spec.child_extra.get("protocol") != "ah":
        section["proposals"] = spec.esp_proposals
    return {**section, **spec.child_extra}


def start_psk_pair(
    topo: Topology,
    a: GatewaySpec,
    b: GatewaySpec,
    psk_a: str | None = None,
    psk_b: str | None = None,
    start: bool = True,
) -> tuple[IpsecdProcess, IpsecdProcess]:
    """Two IKEv2/PSK daemons; by default A initiates and B responds."""
    # Hex with its 0x prefix: a random text PSK that happened to start with "0x" or "0s"
    # would be read as hex or base64 (strongSwan's convention) and refused.
    psk = "0x" + secrets.token_hex(32)
    daemons = []
    for spec, key in ((a, psk_a or psk), (b, psk_b or psk)):
        psk_file = write_secret(topo.workdir / f"{spec.name}.psk", key + "\n")
        peer = {
            "name": "b" if spec.name == "a" else "a",
            "remote_address": spec.peer_ip,
            "start": spec.start,
            "local_ts": spec.local_ts,
            "remote_ts": spec.remote_ts,
            "ike": {"proposals": spec.ike_proposals},
            "esp": esp_section(spec),
            "auth": dict(spec.auth) if spec.auth is not None else {"psk_file": str(psk_file)},
            **spec.peer_extra,
        }
        if "children" in spec.peer_extra:  # the child keys live in each child then
            for key in ("start", "local_ts", "remote_ts", "esp"):
                del peer[key]
        if spec.local_id:
            peer["auth"]["local_id"] = spec.local_id
        if spec.remote_id:
            peer["auth"]["remote_id"] = spec.remote_id
        config, socket = write_config(topo, spec, peer)
        daemons.append(IpsecdProcess(topo, spec, config, socket))
    if start:
        daemons[1].start()  # the responder first, so the initiator's first try lands
        daemons[0].start()
    return daemons[0], daemons[1]


def start_manual_pair(
    topo: Topology,
    algorithm: str = "aes128gcm16",
    esn: bool = False,
    specs: tuple[GatewaySpec, GatewaySpec] | None = None,
) -> tuple[IpsecdProcess, IpsecdProcess]:
    """Two daemons with static SAs (no IKE), mirrored SPIs and keys (``specs``: default
    :func:`site_specs`)."""
    a, b = specs or site_specs(topo)
    parts = algorithm.split("-")
    encr = ENCRYPTION[parts[0]]
    integ = INTEGRITY[parts[1]] if len(parts) > 1 else None
    size = encr.keymat_len + (integ.key_len if integ else 0)
    key_ab, key_ba = secrets.token_bytes(size).hex(), secrets.token_bytes(size).hex()
    daemons = []
    for spec, spi_in, spi_out, k_in, k_out in (
        (a, 0x2002, 0x1001, key_ba, key_ab),
        (b, 0x1001, 0x2002, key_ab, key_ba),
    ):
        key_file = write_secret(
            topo.workdir / f"{spec.name}.keys", yaml.safe_dump({"in": k_in, "out": k_out})
        )
        peer = {
            "name": "b" if spec.name == "a" else "a",
            "remote_address": spec.peer_ip,
            "local_ts": spec.local_ts,
            "remote_ts": spec.remote_ts,
            "manual": {
                "algorithm": algorithm,
                "esn": esn,
                "spi_in": spi_in,
                "spi_out": spi_out,
                "key_file": str(key_file),
            },
        }
        config, socket = write_config(topo, spec, peer)
        daemons.append(IpsecdProcess(topo, spec, config, socket).start())
    return daemons[0], daemons[1]
