"""IKE fragmentation (RFC 7383) with strongSwan, in namespaces, both roles.

charon's ``charon.fragment_size`` and our ``fragment_size`` are set so small that
IKE_AUTH is fragmented in both directions.  A capture on gwB's uplink proves that
SKF messages (payload 53) really travelled each way, ipsecd's counters that it sent
and reassembled fragments; then the tunnel carries ping.
"""

from __future__ import annotations

import pytest

from tests.lab.daemons import IpsecdProcess, site_specs, start_psk_pair
from tests.lab.strongswan import Charon, StrongSwan, site_to_site
from tests.lab.topology import HOST_B_IP, Topology

IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
PSK = "fragmentation-test-psk-0123456789"
OUR_FRAGMENT_SIZE = 150  # UDP payload; our IKE_AUTH messages are about 200 bytes
CHARON_FRAGMENT_SIZE = 180  # IP datagram; charon's IKE_AUTH response is about 225 bytes
SKF = 53


def _start(
    topo: Topology, strongswan: StrongSwan, ipsecd_side: str
) -> tuple[IpsecdProcess, Charon]:
    conn_a, conn_b = site_to_site(topo, psk=PSK, ike_proposals=IKE, esp_proposals=ESP)
    a, b = site_specs(topo)
    for spec in (a, b):
        spec.ike_proposals, spec.esp_proposals = [IKE], [ESP]
        spec.peer_extra = {"fragmentation": "yes"}
        spec.gateway_extra = {"fragment_size": OUR_FRAGMENT_SIZE}
    charon_ns, conn = (topo.gw_b, conn_b) if ipsecd_side == "a" else (topo.gw_a, conn_a)
    charon = Charon(topo, charon_ns, fragment_size=CHARON_FRAGMENT_SIZE, swan=strongswan).start()
    charon.load(conn)
    pair = start_psk_pair(topo, a, b, psk_a=PSK, psk_b=PSK, start=False)
    ours = pair[0] if ipsecd_side == "a" else pair[1]
    return ours, charon


@pytest.mark.strongswan
@pytest.mark.parametrize("ipsecd_side", ["a", "b"], ids=["ipsecd-initiates", "charon-initiates"])
def test_fragmented_ike_auth_with_strongswan(
    topology: Topology, strongswan: StrongSwan, ipsecd_side: str
) -> None:
    topo = topology
    ours, charon = _start(topo, strongswan, ipsecd_side)
    ours_ip = topo.gw_a_wan_ip if ipsecd_side == "a" else topo.gw_b_wan_ip
    with topo.start_capture(topo.gw_b, topo.WAN_IFACE, "udp port 4500") as cap:
        ours.start()
        if ipsecd_side == "b":
            charon.initiate(timeout=15)
        ours.wait_up(timeout=20)
        charon.wait_for_child_sa(timeout=10)
    ike = [p for p in cap.packets() if p.proto == 17 and p.payload[:4] == b"\0\0\0\0"]
    fragments = [p for p in ike if len(p.payload) >= 4 + 28 and p.payload[4 + 16] == SKF]
    from_us = [p for p in fragments if p.src == ours_ip]
    from_charon = [p for p in fragments if p.src != ours_ip]
    assert len(from_us) >= 2 and len(from_charon) >= 2, [(p.src, len(p.payload)) for p in ike]
    assert all(len(p.payload) <= OUR_FRAGMENT_SIZE for p in from_us)
    assert all(len(p.payload) + 28 <= CHARON_FRAGMENT_SIZE for p in from_charon)
    counters = ours.status()["ike_counters"]
    assert counters.get("fragmented_messages_sent", 0) >= 1, counters
    assert counters.get("fragmented_messages_received", 0) >= 1, counters
    bad = ("fragment_bad_icv", "fragment_malformed", "fragment_reassembled_malformed")
    assert not any(counters.get(k) for k in bad), counters
    assert topo.wait_ping(topo.host_a, HOST_B_IP, timeout=10)
    stats = topo.ping(topo.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0, stats


def test_fragmented_ike_auth_ipsecd_to_ipsecd(topology: Topology) -> None:
    topo = topology
    a, b = site_specs(topo)
    for spec in (a, b):
        spec.gateway_extra = {"fragment_size": OUR_FRAGMENT_SIZE}
    with topo.start_capture(topo.gw_b, topo.WAN_IFACE, "udp port 4500") as cap:
        gw_a, gw_b = start_psk_pair(topo, a, b)
        gw_a.wait_up(timeout=20)
        gw_b.wait_up(timeout=20)
    ike = [p for p in cap.packets() if p.proto == 17 and p.payload[:4] == b"\0\0\0\0"]
    fragments = [p for p in ike if len(p.payload) >= 4 + 28 and p.payload[4 + 16] == SKF]
    for gw, ip in ((gw_a, topo.gw_a_wan_ip), (gw_b, topo.gw_b_wan_ip)):
        mine = [p for p in fragments if p.src == ip]
        assert len(mine) >= 2 and all(len(p.payload) <= OUR_FRAGMENT_SIZE for p in mine)
        counters = gw.status()["ike_counters"]
        assert counters.get("fragmented_messages_received", 0) >= 1, counters
        assert gw.peer_status()["ike"]["fragmentation"] is True
    stats = topo.ping(topo.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0, stats
