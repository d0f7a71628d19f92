"""On-demand tunnels (``start: trap``) in namespaces.

gwA's peer is ``start: trap``: after start no IKE is sent and no tunnel is up; the
first pings from hostA bring the tunnel up, and they are delivered (queued while
IKE runs, not lost).  After the peer deletes the tunnel, the next ping brings it
up again.  The same against strongSwan as the responder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.lab.daemons import IpsecdProcess, site_specs, start_psk_pair
from tests.lab.strongswan import Charon, StrongSwan, site_to_site
from tests.lab.topology import HOST_B_IP, Topology
from tests.lab.wait import wait_until

IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
PSK = "trap-test-psk-0123456789abcdef"


QUIET = 2.0  # seconds a trap peer is watched for anything it should not send


def _wait_peer(daemon: IpsecdProcess, what: str, until: Callable[[dict[str, Any]], object]) -> None:
    wait_until(daemon.peer_status, 15, what=what, until=until, context=daemon.log_text)


def test_trap_peer_comes_up_on_first_packet(topology: Topology) -> None:
    topo = topology
    a, b = site_specs(topo)
    a.start = "trap"
    with topo.start_capture(topo.gw_b, topo.WAN_IFACE, "udp") as cap:
        gw_a, gw_b = start_psk_pair(topo, a, b)
        time.sleep(QUIET)  # an observation window, not a wait: nothing may go out
    assert cap.packets() == [], "a trap peer sent something before any traffic"
    peer = gw_a.peer_status()
    assert not peer["up"] and peer["children"] == [] and peer["state"] == "down", peer
    assert peer["on_demand"] == {"state": "idle", "queued": 0}, peer

    stats = topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.05, wait=5.0)
    assert stats.received == 5, (stats, gw_a.log_text())  # the first pings were queued
    peer = gw_a.peer_status()
    assert peer["up"] and peer["state"] == "established", peer
    assert len(peer["children"]) == 1 and peer["on_demand"]["state"] == "up", peer
    assert peer["ike"]["role"] == "initiator", peer
    counters = gw_a.status()["counters"]
    assert counters["trap_triggers"] == 1, counters
    assert counters.get("trap_queue_sent", 0) >= 1, counters
    assert gw_a.status()["drops"].get("no_sa", 0) == 0

    # The peer deletes the tunnel; the next packet brings it up again.
    assert gw_b.control({"cmd": "down", "peer": "a"})["ok"]
    _wait_peer(gw_a, "the tunnel deleted on gwA", lambda peer: not peer["up"])
    _wait_peer(gw_a, "the trap re-armed", lambda peer: peer["on_demand"]["state"] == "idle")
    stats = topo.ping(topo.host_a, HOST_B_IP, count=3, interval=0.05, wait=5.0)
    assert stats.received == 3, (stats, gw_a.log_text())
    assert gw_a.peer_status()["up"]
    assert gw_a.status()["counters"]["trap_triggers"] == 2


@pytest.mark.strongswan
def test_trap_peer_with_strongswan_responder(topology: Topology, strongswan: StrongSwan) -> None:
    topo = topology
    _, conn_b = site_to_site(topo, psk=PSK, ike_proposals=IKE, esp_proposals=ESP)
    charon = Charon(topo, topo.gw_b, swan=strongswan).start()
    charon.load(conn_b)
    a, b = site_specs(topo)
    a.start = "trap"
    a.ike_proposals, a.esp_proposals = [IKE], [ESP]
    gw_a, _ = start_psk_pair(topo, a, b, psk_a=PSK, start=False)
    gw_a.start()
    time.sleep(QUIET)  # an observation window, not a wait: nothing may come up
    assert charon.child_sas() == [] and not gw_a.peer_status()["up"]
    stats = topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.05, wait=5.0)
    assert stats.received == 5, (stats, gw_a.log_text(), charon.tail())
    charon.wait_for_child_sa(timeout=5)
    assert gw_a.peer_status()["on_demand"]["state"] == "up"
