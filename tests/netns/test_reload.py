"""Live reload (SIGHUP / ``ipsecctl reload``) with a tunnel up, in namespaces."""

from __future__ import annotations

import signal
import threading

import yaml

from tests.lab.daemons import IpsecdProcess, site_specs, start_psk_pair
from tests.lab.topology import HOST_B_IP, Topology, run
from tests.lab.wait import wait_until


def _edit(daemon: IpsecdProcess, change) -> None:
    config = yaml.safe_load(daemon.config.read_text())
    change(config)
    daemon.config.write_text(yaml.safe_dump(config, sort_keys=False))


def _child_spis(daemon: IpsecdProcess) -> list[str]:
    return [c["spi_in"] for c in daemon.peer_status()["children"]]


def _up(topology: Topology) -> tuple[IpsecdProcess, IpsecdProcess]:
    a, b = site_specs(topology)
    gw_a, gw_b = start_psk_pair(topology, a, b)
    gw_a.wait_up()
    gw_b.wait_up()
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)
    return gw_a, gw_b


def test_bad_file_is_refused_and_running_config_kept(topology: Topology) -> None:
    gw_a, _ = _up(topology)
    spis = _child_spis(gw_a)
    good = gw_a.config.read_text()
    gw_a.config.write_text(
        good.replace("remote_ts:\n  - 10.2.0.0/24", "remote_ts:\n  - 10.2.0.0/33")
    )
    response = gw_a.control({"cmd": "reload"})
    assert not response["ok"]
    assert "running config kept" in response["error"]
    assert f"{gw_a.config}:" in response["error"] and "remote_ts[0]" in response["error"]
    assert _child_spis(gw_a) == spis
    assert topology.ping(topology.host_a, HOST_B_IP, count=5).loss == 0.0


def test_unchanged_peer_keeps_its_sas_and_loses_no_packet(topology: Topology) -> None:
    gw_a, _ = _up(topology)
    spis = _child_spis(gw_a)
    _edit(gw_a, lambda c: c["log"].update(level="info"))  # only the log level changes
    result: dict = {}
    pinger = threading.Thread(
        target=lambda: result.update(
            stats=topology.ping(topology.host_a, HOST_B_IP, count=100, interval=0.01)
        )
    )
    before = gw_a.peer_status()["children"][0]["packets_in"]
    pinger.start()
    wait_until(  # the reload lands while the pings flow
        lambda: gw_a.peer_status()["children"][0]["packets_in"],
        10,
        what="the pings to flow through gwA",
        until=lambda packets: packets > before,
        step=0.01,
    )
    response = gw_a.control({"cmd": "reload"})
    gw_a.proc.send_signal(signal.SIGHUP)  # the other way in
    pinger.join()
    assert response["ok"], response
    assert response["plan"]["unchanged"] == ["b"] and response["plan"]["changed"] == []
    assert result["stats"].loss == 0.0, result["stats"]
    assert _child_spis(gw_a) == spis


def test_changed_peer_is_renegotiated(topology: Topology) -> None:
    gw_a, gw_b = _up(topology)
    spis = _child_spis(gw_a)
    _edit(gw_a, lambda c: c["peers"][0].update(dpd_delay=20))  # an IKE SA setting
    response = gw_a.control({"cmd": "reload"})
    assert response["ok"] and response["plan"]["changed"] == ["b"], response
    wait_until(
        lambda: (_child_spis(gw_a), gw_a.peer_status()["up"]),
        15,
        what="gwA up again with new CHILD_SAs",
        until=lambda seen: seen[0] and seen[0] != spis and seen[1],
        context=gw_a.log_text,
    )
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)


def test_changed_child_is_replaced_on_the_same_ike_sa(topology: Topology) -> None:
    """ESP proposals belong to the (shorthand) child: the IKE SA stays, the CHILD_SA is
    deleted and negotiated again with the new proposals."""
    gw_a, gw_b = _up(topology)
    spis, ike = _child_spis(gw_a), gw_a.peer_status()["ike"]["local_spi"]
    _edit(gw_a, lambda c: c["peers"][0]["esp"].update(proposals=["aes128gcm16", "aes256gcm16"]))
    response = gw_a.control({"cmd": "reload"})
    assert response["ok"] and response["plan"]["updated"] == ["b"], response
    assert response["plan"]["children"]["b"]["changed"] == ["b"]
    peer = wait_until(
        gw_a.peer_status,
        15,
        what="gwA with a new CHILD_SA",
        until=lambda peer: [c["spi_in"] for c in peer["children"]] not in ([], spis),
        context=gw_a.log_text,
    )
    assert peer["ike"]["local_spi"] == ike
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)


def test_removed_peer_gets_a_delete_and_added_peer_starts(topology: Topology) -> None:
    gw_a, gw_b = _up(topology)

    def swap(config: dict) -> None:
        peer = config["peers"][0]
        config["peers"] = [
            {
                **peer,
                "name": "other",
                "remote_address": "192.0.2.77",
                "start": "respond",
                "remote_ts": ["10.77.0.0/24"],
            }
        ]

    _edit(gw_a, swap)
    response = gw_a.control({"cmd": "reload"})
    assert response["ok"], response
    assert response["plan"]["removed"] == ["b"] and response["plan"]["added"] == ["other"]
    wait_until(
        lambda: gw_b.peer_status()["children"],
        10,
        what="gwB to get the Delete (no CHILD_SA left)",
        until=lambda children: children == [],
    )
    routes = run(topology.gw_a, "ip", "route").stdout
    assert "10.2.0.0/24" not in routes and "10.77.0.0/24 dev ipseca" in routes
    assert [p["name"] for p in gw_a.status()["peers"]] == ["other"]
