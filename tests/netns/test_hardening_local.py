"""Local hardening against running daemons (issue 12 items 5, 6 and 9).

- A second daemon on the same config, on the same UDP ports, on the same control
  socket or on a device name that is taken exits non-zero with one line, while
  the first keeps 100 % of its pings.
- After start the daemon runs as ``nobody`` with CapEff = CAP_NET_ADMIN only, is not
  dumpable, may not write a core file, and root's ``ipsecctl status`` still works.
- A reload whose file gives two peers overlapping ``remote_ts`` is refused in one line
  naming both peers and lines; the running config and its tunnel stay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.lab.daemons import REPO, IpsecdProcess, site_specs, start_psk_pair
from tests.lab.topology import HOST_A_IP, HOST_B_IP, Topology, netns_cmd

CAP_NET_ADMIN_ONLY = "0000000000001000"
PINGS = 200  # 10 s at 50 ms: the whole series of refused starts happens inside it


def _pair(topo: Topology) -> tuple[IpsecdProcess, IpsecdProcess]:
    a, b = site_specs(topo)
    a.gateway_extra = {"user": "nobody"}  # the harness keeps root for reload tests
    a.log_level = "info"
    b.log_level = "info"
    gw_a, gw_b = start_psk_pair(topo, a, b)
    gw_a.wait_up()
    assert topo.wait_ping(topo.host_a, HOST_B_IP)
    return gw_a, gw_b


def _second_daemon(
    topo: Topology, first: IpsecdProcess, name: str, **gateway: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``ipsecd run`` on ``first``'s config with ``gateway`` keys changed."""
    config = yaml.safe_load(first.config.read_text())
    config["gateway"].update(gateway)
    path = topo.workdir / f"second-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        netns_cmd(
            first.spec.ns, [sys.executable, "-m", "ipsecd.cli.ipsecd", "run", "-c", str(path)]
        ),
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _status_fields(pid: int | str) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: " ".join(v.split()) for k, v in (line.split(":", 1) for line in text.splitlines())}


def test_second_instance_is_refused_and_the_first_keeps_its_pings(topology: Topology) -> None:
    topo = topology
    gw_a, _ = _pair(topo)
    pings: dict[str, Any] = {}
    pinger = threading.Thread(
        target=lambda: pings.update(stats=topo.ping(topo.host_a, HOST_B_IP, count=PINGS))
    )
    pinger.start()
    other_socket = str(topo.socket_path("second.sock"))
    attempts = {
        "same config": _second_daemon(topo, gw_a, "same"),
        "same ports": _second_daemon(
            topo, gw_a, "ports", tun="ipsecz", control_socket=other_socket
        ),
        "same control socket": _second_daemon(
            topo, gw_a, "socket", tun="ipsecz", port=14500, ike_port=1500
        ),
        "device taken": _second_daemon(
            topo, gw_a, "device", tun="lan", port=14500, ike_port=1500, control_socket=other_socket
        ),
    }
    pinger.join()
    expected = {
        "same config": "already runs tun ipseca in this network namespace",
        "same ports": f"UDP {topo.gw_a_wan_ip}:500 is already in use by another process",
        "same control socket": "another ipsecd answers on the control socket",
        "device taken": "network device lan exists and is not a TUN device",
    }
    for what, proc in attempts.items():
        lines = proc.stderr.splitlines()
        print(f"{what}: exit {proc.returncode}: {proc.stderr.strip()}")
        assert proc.returncode != 0, what
        assert len(lines) == 1 and lines[0].startswith("ipsecd: refusing to start: "), proc.stderr
        assert expected[what] in lines[0], lines[0]
    stats = pings["stats"]
    print(f"first daemon: {stats.received}/{stats.transmitted} pings while 4 starts were refused")
    assert stats.received == stats.transmitted == PINGS
    assert gw_a.peer_status()["up"]
    assert gw_a.proc is not None and gw_a.proc.poll() is None


def test_reload_with_overlapping_remote_ts_keeps_the_running_config(topology: Topology) -> None:
    topo = topology
    _, gw_b = _pair(topo)  # gw_b keeps root (harness default): it can re-read its files
    config = yaml.safe_load(gw_b.config.read_text())
    second = dict(config["peers"][0], name="c", remote_address="192.0.2.99")
    second["remote_ts"] = ["10.1.0.128/25"]  # inside peer a's 10.1.0.0/24
    config["peers"].append(second)
    gw_b.config.write_text(yaml.safe_dump(config, sort_keys=False))
    ctl = subprocess.run(
        [sys.executable, "-m", "ipsecd.cli.ipsecctl", "--socket", str(gw_b.socket), "reload"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    print(f"reload: exit {ctl.returncode}: {ctl.stderr.strip()}")
    assert ctl.returncode == 1
    assert ctl.stderr.count("\n") == 1
    assert "reload refused, running config kept" in ctl.stderr
    assert "10.1.0.128/25 overlaps 10.1.0.0/24 in remote_ts of peer 'a'" in ctl.stderr
    assert [p["name"] for p in gw_b.status()["peers"]] == ["a"]
    assert topo.ping(topo.host_a, HOST_B_IP, count=20).received == 20


def test_daemon_runs_unprivileged_and_ipsecctl_still_works(topology: Topology) -> None:
    topo = topology
    gw_a, _ = _pair(topo)
    assert gw_a.proc is not None
    pid = gw_a.proc.pid
    nobody = "65534"
    status = _status_fields(pid)
    print(f"daemon pid {pid}: Uid {status['Uid']}, CapEff {status['CapEff']}")
    assert status["Name"].startswith("python")
    assert status["Uid"] == " ".join([nobody] * 4)
    assert status["Groups"] == ""
    for task in Path(f"/proc/{pid}/task").iterdir():  # every thread, not only the main one
        fields = _status_fields(f"{pid}/task/{task.name}")
        assert fields["CapEff"] in (CAP_NET_ADMIN_ONLY, "0000000000000000"), fields
        assert fields["CapPrm"] in (CAP_NET_ADMIN_ONLY, "0000000000000000"), fields
        assert fields["CapBnd"] == CAP_NET_ADMIN_ONLY or fields["CapPrm"] == "0000000000000000"
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == CAP_NET_ADMIN_ONLY
    assert status["CapAmb"] == status["CapInh"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    # Not dumpable: the kernel hands the process's /proc files to root, not to nobody.
    assert os.stat(f"/proc/{pid}/status").st_uid == 0
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert any(
        line.startswith("Max core file size") and line.split()[4:6] == ["0", "0"]
        for line in limits.splitlines()
    ), limits
    ctl = subprocess.run(
        [sys.executable, "-m", "ipsecd.cli.ipsecctl", "--socket", str(gw_a.socket), "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert ctl.returncode == 0, ctl.stderr
    assert "peer b: established" in ctl.stdout
    # Rekeying (new keys, new SAs) and shutdown (routes removed) need no more than that.
    assert gw_a.control({"cmd": "rekey", "peer": "b"})["ok"]
    assert gw_a.control({"cmd": "rekey", "peer": "b", "ike": True})["ok"]
    assert topo.ping(topo.host_a, HOST_B_IP, count=40, interval=0.05).received == 40
    # numpy's bulk path is not imported before the drop; the first bursts load it after.
    assert gw_a.status()["dataplane"]["bulk_path"] == "not-loaded"
    result = topo.tcp_transfer(topo.host_b, topo.host_a, HOST_A_IP, 20 * 1024 * 1024)
    assert result.ok, result
    assert gw_a.status()["dataplane"]["bulk_path"] == "loaded"
    assert gw_a.stop() == 0
    log = gw_a.log_text()
    assert "privileges dropped" in log
    assert "Traceback" not in log and '"level": "error"' not in log, log
