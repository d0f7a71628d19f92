"""The Vagrant provisioning, run for real on a namespace stand-in for the two VMs.

Same script (vagrant/provision.sh), same templates, same addresses as the
Vagrantfile; only package installation and systemd are skipped, and the daemon
is started by the test instead of by systemd.  Both ways the Vagrantfile offers:
the shared PSK, and certificates (IPSECD_AUTH=cert) from one CA made by
vagrant/make-ca.sh, each gateway issuing its own with ``ipsecd pki``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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


def _provision(root: Path, role: str, shared: Path, auth: str, addresses: list[str]) -> Path:
    """provision.sh ROLE under ``root``; ``shared``: the PSK file or the CA directory both
    gateways use (what the Vagrantfile makes on the host)."""
    env = dict(
        os.environ,
        IPSECD_NO_INSTALL="1",
        IPSECD_NO_SYSTEMD="1",
        IPSECD_AUTH=auth,
        PYTHONPATH=str(REPO),
        # `ipsecd` (and the Python make-ca.sh looks for) from the interpreter running the tests
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        PYTHON=sys.executable,
    )
    env["IPSECD_PSK_SOURCE" if auth == "psk" else "IPSECD_CA_DIR"] = str(shared)
    res = subprocess.run(
        ["bash", str(REPO / "vagrant" / "provision.sh"), "--root", str(root), *addresses, role],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    config = root / "etc" / "ipsecd" / "ipsecd.yaml"
    assert config.exists()
    return config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_credentials(auth: str, shared: Path, root: Path, role: str) -> None:
    """Keys never readable by group or others, each gateway's certificate from the one CA."""
    etc = root / "etc" / "ipsecd"
    if auth == "psk":
        assert _mode(shared) == 0o600 and _mode(etc / "psk.secret") == 0o600
        return
    assert _mode(shared) == 0o700 and _mode(shared / "ca.key") == 0o600
    assert _mode(etc / "private") == 0o700 and _mode(etc / "private" / f"{role}.key") == 0o600
    assert (etc / "cacerts" / "ca.pem").read_bytes() == (shared / "ca.pem").read_bytes()
    config = (etc / "ipsecd.yaml").read_text()
    assert f"certificate: {etc}/certs/{role}.pem" in config and "psk_file" not in config


@pytest.mark.parametrize("auth", ["psk", "cert"])
def test_provisioned_gateways_bring_the_tunnel_up(
    topology: Topology, tmp_path: Path, auth: str
) -> None:
    shared = tmp_path / ("shared.psk" if auth == "psk" else "pki")
    daemons = []
    # The stand-in's addresses are the topology's: the Vagrantfile passes its own the same way.
    for role, ns, wan, peer, site in (
        ("right", topology.gw_b, GW_B_WAN_IP, GW_A_WAN_IP, GW_B_LAN_IP),
        ("left", topology.gw_a, GW_A_WAN_IP, GW_B_WAN_IP, GW_A_LAN_IP),
    ):
        root = Path(topology.socket_path(role))  # short path: the control socket lives below
        addresses = ["--wan", wan, "--peer-wan", peer, "--site-addr", site]
        config = _provision(root, role, shared, auth, addresses)
        _check_credentials(auth, shared, root, role)
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
    method = "psk" if auth == "psk" else "pubkey"
    ike_auth = peer["ike"]["auth"]
    assert ike_auth["local"].startswith(method) and ike_auth["remote"].startswith(method)
    if auth == "cert":
        assert "CN=right" in ike_auth["remote_certificate"]
    stats = topology.ping(topology.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0
    metrics = run(topology.gw_a, sys.executable, "-c", SCRAPE).stdout
    assert 'ipsecd_tunnel_up{peer="right"} 1' in metrics
    assert "ipsecd_peer_packets_total" in metrics
