"""Sanity of the namespace harness itself: routing, traffic helpers, teardown, isolation."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from tests.lab.topology import (
    GW_A_NAT_IP,
    GW_B_WAN_IP,
    HOST_A_IP,
    HOST_B_IP,
    NAT_OUTSIDE_IP,
    Topology,
    list_namespaces,
)


def test_gateways_have_no_route_to_the_other_site(topology: Topology) -> None:
    assert topology.ping(topology.gw_a, GW_B_WAN_IP, count=2).received == 2
    stats = topology.ping(topology.host_a, HOST_B_IP, count=2, wait=0.3)
    assert stats.received == 0, "sites must not reach each other without a tunnel"


def test_plain_routed_ping_and_tcp(topology: Topology) -> None:
    topology.add_plain_routes()
    stats = topology.ping(topology.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0
    assert 0 < stats.rtt_min <= stats.rtt_avg <= stats.rtt_max
    result = topology.tcp_transfer(topology.host_a, topology.host_b, HOST_B_IP, 4_000_000)
    assert result.ok, result
    back = topology.tcp_transfer(topology.host_b, topology.host_a, HOST_A_IP, 1_000_000)
    assert back.ok, back


def test_capture_sees_only_the_traffic_made(topology: Topology) -> None:
    topology.add_plain_routes()
    topology.wait_ping(topology.host_a, HOST_B_IP)  # ARP settled
    with topology.start_capture(topology.gw_b, "wan", "udp or icmp") as cap:
        topology.ping(topology.host_a, HOST_B_IP, count=3)
    pkts = cap.packets()
    assert cap.path.exists()
    assert [(p.src, p.dst, p.proto) for p in pkts] == [
        (HOST_A_IP, HOST_B_IP, 1),
        (HOST_B_IP, HOST_A_IP, 1),
    ] * 3


def test_iperf3_plain(topology: Topology) -> None:
    topology.add_plain_routes()
    result = topology.iperf3(topology.host_a, topology.host_b, HOST_B_IP, seconds=1, streams=2)
    assert result.gbits_per_second > 0.1
    assert result.streams == 2


def test_loss_helper(topology: Topology) -> None:
    topology.set_loss(100)
    assert topology.ping(topology.gw_a, GW_B_WAN_IP, count=3, wait=0.3).received == 0
    topology.set_loss(0)
    assert topology.ping(topology.gw_a, GW_B_WAN_IP, count=3).received == 3


def test_nat_masquerades_gw_a(nat_topology: Topology) -> None:
    topo = nat_topology
    assert topo.nat is not None
    assert topo.gw_a_wan_ip == GW_A_NAT_IP and topo.gw_a_public_ip == NAT_OUTSIDE_IP
    with topo.start_capture(topo.gw_b, "wan", "icmp") as cap:
        assert topo.ping(topo.gw_a, GW_B_WAN_IP, count=2).received == 2
    assert {p.src for p in cap.packets() if p.dst == GW_B_WAN_IP} == {NAT_OUTSIDE_IP}


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    topo = Topology(workdir=tmp_path)
    with pytest.raises(KeyboardInterrupt), topo:
        proc = topo.spawn(topo.gw_a, ["sleep", "600"])
        assert set(topo.namespaces) <= set(list_namespaces())
        raise KeyboardInterrupt
    assert proc.poll() is not None
    assert not [ns for ns in list_namespaces() if ns.startswith(topo.prefix)]


def test_two_topologies_do_not_collide() -> None:
    errors: list[BaseException] = []
    topos: list[Topology] = []

    def one() -> None:
        try:
            with Topology() as topo:
                topos.append(topo)
                topo.add_plain_routes()
                assert topo.ping(topo.host_a, HOST_B_IP, count=3).received == 3
                assert topo.tcp_transfer(topo.host_a, topo.host_b, HOST_B_IP, 500_000).ok
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len({t.prefix for t in topos}) == 2
    left = set(list_namespaces())
    assert not [ns for t in topos for ns in t.namespaces if ns in left]


def test_nat_random_ports_remaps_4500(tmp_path: Path) -> None:
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{GW_A_NAT_IP}', 4500)); s.sendto(b'x', ('{GW_B_WAN_IP}', 9999))"
    )
    with Topology(nat=True, nat_random_ports=True, workdir=tmp_path) as topo:
        with topo.start_capture(topo.gw_b, "wan", "udp port 9999") as cap:
            topo.run(topo.gw_a, sys.executable, "-c", send)
        (pkt,) = cap.packets()
    assert pkt.src == NAT_OUTSIDE_IP and pkt.sport != 4500
