"""The Vagrant provisioning, run for real on a namespace stand-in for the two VMs.

Same script (vagrant/provision.sh), same templates, same addresses as the
Vagrantfile; only package installation and systemd are skipped, and the daemon
is started by the test instead of by systemd.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.lab.daemons import REPO, GatewaySpec, IpsecdProcess
from tests.lab.topology import (
    GW_A_LAN_IP,
    GW_A_WAN_IP,
    GW_B_LAN_IP,
    GW_B_WAN_IP,
    HOST_B_IP,
    Topology,
    run,
)

SCRAPE = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9810/metrics').read().decode())"


def _provision(root: Path, role: str, psk_source: Path, addresses: list[str]) -> Path:
    env = dict(
        os.environ,
        IPSECD_NO_INSTALL="1",
        IPSECD_NO_SYSTEMD="1",
        IPSECD_PSK_SOURCE=str(psk_source),
        PYTHONPATH=str(REPO),
    )
    subprocess.run(
        ["bash", str(REPO / "vagrant" / "provision.sh"), "--root", str(root), *addresses, role],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    config = root / "etc" / "ipsecd" / "ipsecd.yaml"
    assert config.exists()
    return config


def test_provisioned_gateways_bring_the_tunnel_up(topology: Topology, tmp_path: Path) -> None:
    psk_source = tmp_path / "shared.psk"
    daemons = []
    # The stand-in's addresses are the topology's: the Vagrantfile passes its own the same way.
    for role, ns, wan, peer, site in (
        ("right", topology.gw_b, GW_B_WAN_IP, GW_A_WAN_IP, GW_B_LAN_IP),
        ("left", topology.gw_a, GW_A_WAN_IP, GW_B_WAN_IP, GW_A_LAN_IP),
    ):
        root = Path(topology.socket_path(role))  # short path: the control socket lives below
        addresses = ["--wan", wan, "--peer-wan", peer, "--site-addr", site]
        config = _provision(root, role, psk_source, addresses)
        assert oct(psk_source.stat().st_mode & 0o777) == "0o600"
        check = subprocess.run(
            [sys.executable, "-m", "ipsecd.cli.ipsecd", "check", str(config)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert check.returncode == 0, check.stderr
        spec = GatewaySpec(role, ns, wan, peer, [], [])
        socket = root / "run" / "ipsecd" / "ipsecd.sock"
        daemons.append(IpsecdProcess(topology, spec, config, socket).start())
    right, left = daemons
    peer = left.wait_up()
    assert peer["name"] == "right" and peer["state"] == "established"
    stats = topology.ping(topology.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0
    metrics = run(topology.gw_a, sys.executable, "-c", SCRAPE).stdout
    assert 'ipsecd_tunnel_up{peer="right"} 1' in metrics
    assert "ipsecd_peer_packets_total" in metrics
