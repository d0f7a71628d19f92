"""`ipsecd check` and the daemon's start against a real routing table and real sysctls
(issue 13): warnings name the interface and this gateway's own address; IP forwarding is
reported, or set with ``gateway.set_forwarding``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from tests.lab.daemons import REPO, site_specs, start_manual_pair
from tests.lab.topology import HOST_B_IP, Topology, run


def _check(topo: Topology, ns: str, config: str) -> subprocess.CompletedProcess[str]:
    return run(
        ns, "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "ipsecd.cli.ipsecd", "check",
        config, check=False,
    )  # fmt: skip


def _log_lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_check_warns_about_a_connected_network_and_forwarding(topology: Topology) -> None:
    gw = topology.gw_a
    run(gw, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    secret = topology.workdir / "b.psk"
    secret.write_text("0x" + "5a" * 32 + "\n")
    secret.chmod(0o600)
    config = topology.workdir / "swapped.yaml"
    config.write_text(  # local_ts and remote_ts swapped: remote_ts is gwA's own LAN
        "gateway:\n  listen: [192.0.2.1]\n  user: root\npeers:\n  - name: b\n"
        "    remote_address: 192.0.2.2\n    local_ts: [10.2.0.0/24]\n"
        f"    remote_ts: [10.1.0.0/24]\n    auth: {{psk_file: {secret}}}\n"
    )
    result = _check(topology, gw, str(config))
    assert result.returncode == 0, result.stderr  # warnings never fail the check
    assert result.stdout.splitlines()[-1] == f"{config}: OK, 1 peer(s), 2 warnings"
    warnings = result.stderr.splitlines()
    assert warnings[0].startswith(
        f"warning: {config}:8: peers[0].remote_ts[0]: 10.1.0.0/24 overlaps 10.1.0.0/24 on lan"
        " (connected, this gateway's address 10.1.0.1): ipsecd routes remote_ts into the"
        " tunnel, which takes 10.1.0.0/24 away from lan."
    ), result.stderr
    assert warnings[1].startswith("warning: IP forwarding is off (net.ipv4.ip_forward = 0)")


def test_daemon_logs_the_warning_at_start(topology: Topology) -> None:
    run(topology.gw_a, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    a, b = site_specs(topology)
    gw_a, _ = start_manual_pair(
        topology, specs=(dataclasses.replace(a, tun_address="10.1.0.1/24"), b)
    )
    lines = [e for e in _log_lines(gw_a.log_text()) if e.get("level") == "warning"]
    events = [str(e["event"]) for e in lines]
    assert any("10.1.0.1/24 gives the TUN device a route to 10.1.0.0/24" in e for e in events)
    assert any(e.startswith("IP forwarding is off (net.ipv4.ip_forward = 0)") for e in events)


def test_set_forwarding_turns_it_on(topology: Topology) -> None:
    gw = topology.gw_a
    run(gw, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    a, b = site_specs(topology)
    a = dataclasses.replace(a, gateway_extra={"set_forwarding": True})
    gw_a, _ = start_manual_pair(topology, specs=(a, b))
    assert run(gw, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    info = [e for e in _log_lines(gw_a.log_text()) if e.get("level") == "info"]
    assert any(e["event"] == "IP forwarding turned on: net.ipv4.ip_forward = 1"
               " (gateway.set_forwarding)" for e in info)  # fmt: skip
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10), gw_a.log_text()
