"""Several CHILD_SAs per peer and dynamic peers, end to end in namespaces (issue 15).

Two subnet pairs behind the gateways (10.1.0.0/24 <-> 10.2.0.0/24, the default sites, and
10.1.1.0/24 <-> 10.2.1.0/24 added here), one child each: ipsecd <-> ipsecd and
ipsecd <-> strongSwan 5.9.8 in both roles, ping and TCP through both.  A responder with
``remote_address: any`` follows its initiator to another address (the NAT in front of it
switches to a second uplink address).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.lab.daemons import GatewaySpec, IpsecdProcess, site_specs, start_psk_pair
from tests.lab.strongswan import Charon, StrongSwan, site_to_site
from tests.lab.topology import (
    GW_A_LAN_IP,
    GW_B_LAN_IP,
    HOST_A_IP,
    HOST_B_IP,
    SITE_A,
    SITE_B,
    Topology,
)
from tests.lab.wait import wait_until

SITE_A2, SITE_B2 = "10.1.1.0/24", "10.2.1.0/24"
HOST_A2_IP, HOST_B2_IP = "10.1.1.2", "10.2.1.2"
GW_A2_IP, GW_B2_IP = "10.1.1.1", "10.2.1.1"
PSK = "interop-test-psk-0123456789"
SECOND_UPLINK_IP = "192.0.2.4"  # the NAT's other address on the internet link


def add_second_subnets(topo: Topology) -> None:
    """10.1.1.0/24 beside site A and 10.2.1.0/24 beside site B, on the same LAN links; the
    hosts reach the other second subnet from their second address."""
    for ns, iface, address in (
        (topo.gw_a, topo.LAN_IFACE, f"{GW_A2_IP}/24"),
        (topo.host_a, topo.HOST_IFACE, f"{HOST_A2_IP}/24"),
        (topo.gw_b, topo.LAN_IFACE, f"{GW_B2_IP}/24"),
        (topo.host_b, topo.HOST_IFACE, f"{HOST_B2_IP}/24"),
    ):
        topo.run(ns, "ip", "addr", "add", address, "dev", iface)
    topo.run(topo.host_a, "ip", "route", "add", SITE_B2, "via", GW_A_LAN_IP, "src", HOST_A2_IP)
    topo.run(topo.host_b, "ip", "route", "add", SITE_A2, "via", GW_B_LAN_IP, "src", HOST_B2_IP)


def children(spec: GatewaySpec, start: str | None) -> list[dict[str, Any]]:
    """lan (the default sites) and dmz (the second subnets) from ``spec``'s side."""
    a_side = spec.name == "a"
    pairs = {
        "lan": (SITE_A, SITE_B) if a_side else (SITE_B, SITE_A),
        "dmz": (SITE_A2, SITE_B2) if a_side else (SITE_B2, SITE_A2),
    }
    out = []
    for name, (local, remote) in pairs.items():
        child: dict[str, Any] = {"name": name, "local_ts": [local], "remote_ts": [remote]}
        child["esp"] = {"proposals": spec.esp_proposals}
        if start is not None:
            child["start"] = start
        out.append(child)
    return out


def with_children(spec: GatewaySpec, start: str | None) -> GatewaySpec:
    spec.peer_extra = {**spec.peer_extra, "children": children(spec, start)}
    return spec


def both_subnets_pass(topo: Topology) -> None:
    for src, src_ns, dst_ns, dst in (
        (HOST_A_IP, topo.host_a, topo.host_b, HOST_B_IP),
        (HOST_A2_IP, topo.host_a, topo.host_b, HOST_B2_IP),
    ):
        assert topo.wait_ping(src_ns, dst, timeout=10), f"{src} -> {dst}"
        stats = topo.ping(src_ns, dst, count=10)
        assert stats.loss == 0.0, (src, dst, stats)
        there = topo.tcp_transfer(src_ns, dst_ns, dst, 2 * 1024 * 1024)
        back = topo.tcp_transfer(dst_ns, src_ns, src, 2 * 1024 * 1024)
        assert there.ok and back.ok, (src, dst, there, back)


def wait_children(daemon: IpsecdProcess, names: set[str], timeout: float = 15.0) -> dict[str, Any]:
    """Wait until a CHILD_SA of each configured child in ``names`` is installed."""
    return wait_until(
        daemon.peer_status,
        timeout,
        what=f"children {sorted(names)} up on {daemon.spec.name}",
        until=lambda peer: {c["name"] for c in peer["children"]} >= names or daemon.exited(),
        context=daemon.log_text,
    )


def test_ipsecd_to_ipsecd_two_children(topology: Topology) -> None:
    add_second_subnets(topology)
    a, b = site_specs(topology)
    gw_a, gw_b = start_psk_pair(topology, with_children(a, None), with_children(b, "respond"))
    peer_a = wait_children(gw_a, {"lan", "dmz"})
    peer_b = wait_children(gw_b, {"lan", "dmz"})
    assert peer_a["ike"]["local_spi"] == peer_b["ike"]["remote_spi"]  # one IKE SA
    assert [(c["name"], c["up"]) for c in peer_a["configured_children"]] == [
        ("lan", True),
        ("dmz", True),
    ]
    both_subnets_pass(topology)
    for peer in (gw_a.peer_status(), gw_b.peer_status()):
        by_name = {c["name"]: c for c in peer["children"]}
        assert by_name["lan"]["packets_out"] > 0 and by_name["dmz"]["packets_out"] > 0, peer


def _with_charon(
    topo: Topology, strongswan: StrongSwan, ipsecd_side: str
) -> tuple[IpsecdProcess, Charon]:
    """ipsecd with two children on one gateway, charon with the same two on the other."""
    add_second_subnets(topo)
    conn_a, conn_b = site_to_site(topo, psk=PSK)
    a, b = site_specs(topo)
    for spec in (a, b):
        spec.esp_proposals = [conn_a.esp_proposals]
    if ipsecd_side == "a":
        charon = Charon(topo, topo.gw_b, swan=strongswan).start()
        charon.load(dataclasses.replace(conn_b, more_children=(("dmz", SITE_B2, SITE_A2),)))
        ours, _ = start_psk_pair(topo, with_children(a, None), b, psk_a=PSK, start=False)
    else:
        charon = Charon(topo, topo.gw_a, swan=strongswan).start()
        charon.load(dataclasses.replace(conn_a, more_children=(("dmz", SITE_A2, SITE_B2),)))
        _, ours = start_psk_pair(topo, a, with_children(b, "respond"), psk_b=PSK, start=False)
    ours.start()
    return ours, charon


def test_ipsecd_initiates_two_children_to_strongswan(
    topology: Topology, strongswan: StrongSwan
) -> None:
    ours, charon = _with_charon(topology, strongswan, "a")
    peer = wait_children(ours, {"lan", "dmz"})
    wait_until(
        lambda: {c.get("name") for c in charon.child_sas()},
        15,
        what="both children installed in charon",
        until=lambda names: {"net", "dmz"} <= names,
    )
    assert {c["name"] for c in peer["configured_children"] if c["up"]} == {"lan", "dmz"}
    both_subnets_pass(topology)


def test_strongswan_initiates_two_children_to_ipsecd(
    topology: Topology, strongswan: StrongSwan
) -> None:
    ours, charon = _with_charon(topology, strongswan, "b")
    charon.initiate(child="net")
    charon.initiate(child="dmz")  # a second CHILD_SA on the same IKE SA
    peer = wait_children(ours, {"lan", "dmz"})
    assert len({c["spi_in"] for c in peer["children"]}) == 2
    assert len(charon.list_sas()) == 1  # one IKE SA carries both
    both_subnets_pass(topology)


# ---- remote_address: any, and an initiator that moves ----------------------------------------


def switch_nat_uplink(topo: Topology, address: str) -> None:
    """The NAT in front of gwA leaves by another public address (a second uplink): new
    mappings use ``address``, and the existing ones are forgotten."""
    assert topo.nat is not None
    topo.run(topo.nat, "ip", "addr", "add", f"{address}/24", "dev", topo.NAT_OUT_IFACE)
    ruleset = (
        "flush table ip ipd_nat\n"
        "table ip ipd_nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{topo.NAT_OUT_IFACE}" snat to {address}\n'
        "  }\n"
        "}\n"
    )
    topo.run(topo.nat, "nft", "-f", "-", input=ruleset)
    flush = "from pyroute2 import Conntrack; Conntrack().flush()"  # the old mappings go
    topo.run(topo.nat, sys.executable, "-c", flush)


def test_any_responder_follows_its_initiator_to_another_address(nat_topology: Topology) -> None:
    topo = nat_topology
    a, b = site_specs(topo)
    b.peer_ip = "any"  # gwB knows gwA by its ID only (its private address, behind the NAT)
    b.start = "respond"
    gw_a, gw_b = start_psk_pair(topo, a, b)
    gw_a.wait_up()
    peer_b = gw_b.wait_up()
    assert peer_b["remote"].startswith(f"{topo.gw_a_public_ip}:") and peer_b["remote_host"] == "any"
    assert topo.wait_ping(topo.host_a, HOST_B_IP, timeout=10)
    switch_nat_uplink(topo, SECOND_UPLINK_IP)
    # Site A's traffic now reaches gwB from the new address: authentic ESP from a NATed
    # peer moves the tunnel there (and the replies follow).
    assert topo.wait_ping(topo.host_a, HOST_B_IP, timeout=15)
    moved = wait_until(
        gw_b.peer_status,
        10,
        what="gwB to send to the new address",
        until=lambda peer: peer["remote"].startswith(f"{SECOND_UPLINK_IP}:"),
        context=gw_b.log_text,
    )
    assert all(c["remote"].startswith(f"{SECOND_UPLINK_IP}:") for c in moved["children"])
    stats = topo.ping(topo.host_b, HOST_A_IP, count=10)
    assert stats.loss == 0.0, stats
    there = topo.tcp_transfer(topo.host_a, topo.host_b, HOST_B_IP, 2 * 1024 * 1024)
    assert there.ok, there
    assert "peer address changed" in gw_b.log_text()


def test_a_child_strongswan_narrows_is_reported_with_the_uncovered_prefixes(
    topology: Topology, strongswan: StrongSwan
) -> None:
    """The issue's case: one CHILD_SA proposed for both subnet pairs, charon (two children)
    narrows it to its first; ipsecd now says which prefixes have no SA."""
    add_second_subnets(topology)
    conn_a, conn_b = site_to_site(topology, psk=PSK)
    charon = Charon(topology, topology.gw_b, swan=strongswan).start()
    charon.load(dataclasses.replace(conn_b, more_children=(("dmz", SITE_B2, SITE_A2),)))
    a, b = site_specs(topology)
    a.esp_proposals = [conn_a.esp_proposals]
    a.local_ts, a.remote_ts = [SITE_A, SITE_A2], [SITE_B, SITE_B2]
    ours, _ = start_psk_pair(topology, a, b, psk_a=PSK, start=False)
    ours.start()
    ours.wait_up()
    (child,) = ours.peer_status()["configured_children"]
    assert child["uncovered_local_ts"] == [SITE_A2] and child["uncovered_remote_ts"] == [SITE_B2]
    assert "CHILD_SA narrowed: traffic left without SA" in ours.log_text()
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)


# ---- remote_address: a DNS name ---------------------------------------------------------------


@contextlib.contextmanager
def hosts_file(ns: str, lines: str) -> Iterator[None]:
    """``/etc/hosts`` as processes in ``ns`` see it: ``ip netns exec`` bind-mounts
    /etc/netns/NS/hosts over /etc/hosts (ip-netns(8)).  Removed afterwards."""
    root = Path("/etc/netns")
    made_root = not root.exists()
    directory = root / ns
    directory.mkdir(parents=True, exist_ok=False)
    try:
        (directory / "hosts").write_text(lines)
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                root.rmdir()


def test_a_dns_name_is_resolved_by_the_system_and_shown(topology: Topology) -> None:
    a, b = site_specs(topology)
    a.peer_ip = "gw-b.ipsecd.test"
    a.remote_id = topology.gw_b_wan_ip  # gwB calls itself by its address
    with hosts_file(topology.gw_a, f"{topology.gw_b_wan_ip} gw-b.ipsecd.test\n"):
        gw_a, gw_b = start_psk_pair(topology, a, b)
        peer = gw_a.wait_up()
    assert peer["remote"].startswith(f"{topology.gw_b_wan_ip}:")
    assert peer["remote_host"] == "gw-b.ipsecd.test"
    assert "DNS name resolved" in gw_a.log_text()
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)
