"""Which TUN address keeps traffic working (issue 13), measured: the table in
docs/configuration.md (gateway.addresses) comes from this test.

Site A's LAN interface comes up only after ipsecd started, as at a boot where the LAN is
slow, and gwA carries a global address on ``lo`` (listed before every other interface), as
routers with a loopback address do: the kernel's choice of source address for the
gateway's own packets into the TUN device then shows.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.lab.daemons import site_specs, start_manual_pair
from tests.lab.topology import GW_A_LAN_IP, HOST_A_IP, HOST_B_IP, Topology, run

LOOPBACK = "198.18.0.1/32"  # outside local_ts: a wrong source for the tunnel


def _works(topo: Topology, ns: str, dst: str) -> bool:
    return topo.ping(ns, dst, count=3).received == 3


@pytest.mark.parametrize(
    ("tun_address", "expected"),
    [
        # host to host, gateway to its own LAN, gateway to the remote LAN
        (f"{GW_A_LAN_IP}/32", (True, True, True)),  # the examples in etc/
        (None, (True, True, False)),  # the gateway's packets leave from 198.18.0.1: no_sa
        (f"{GW_A_LAN_IP}/24", (False, False, True)),  # the LAN prefix: the LAN is lost
    ],
    ids=["lan-address-32", "none", "lan-prefix-24"],
)
def test_tun_address_with_the_lan_up_after_ipsecd(
    topology: Topology, tun_address: str | None, expected: tuple[bool, bool, bool]
) -> None:
    gw = topology.gw_a
    run(gw, "ip", "addr", "add", LOOPBACK, "dev", "lo")
    run(gw, "ip", "link", "set", "lan", "down")
    run(gw, "ip", "addr", "flush", "dev", "lan")
    a, b = site_specs(topology)
    gw_a, _ = start_manual_pair(
        topology, specs=(dataclasses.replace(a, tun_address=tun_address), b)
    )
    run(gw, "ip", "addr", "add", f"{GW_A_LAN_IP}/24", "dev", "lan")
    run(gw, "ip", "link", "set", "lan", "up")
    time.sleep(0.5)

    host_to_host = topology.wait_ping(topology.host_a, HOST_B_IP, timeout=5)
    measured = (host_to_host, _works(topology, gw, HOST_A_IP), _works(topology, gw, HOST_B_IP))
    routes = run(gw, "ip", "route", "get", HOST_B_IP).stdout.strip()
    print(f"TUN {tun_address}: {measured}, drops {gw_a.status()['drops']}; {routes}")
    assert measured == expected, (routes, gw_a.status()["drops"])
    if expected[2] is False:
        assert gw_a.status()["drops"].get("no_sa", 0) > 0  # dropped, never sent in the clear
    gw_a.stop()
    assert _works(topology, gw, HOST_A_IP)  # the LAN keeps its address when ipsecd stops
