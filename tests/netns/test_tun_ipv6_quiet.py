"""Issue 14 item 4: an idle gateway counts no ``no_sa`` drops from the kernel's own IPv6.

Before: the TUN device got a link-local address and the kernel sent router solicitations
from it into the device, 2-4 per 30 s, each counted as ``no_sa`` ("no tunnel up").  Now
the device has no link-local address (``addr_gen_mode none``), so there are no
solicitations; what the kernel still sends on its own (MLD reports from ``::`` when IPv6
forwarding is on) is counted apart as ``ipv6_link_local``.

The topology disables IPv6 in its namespaces; gwA turns it back on here, with the router
solicitation interval forced down to 1 s so that the idle window would see several.
"""

from __future__ import annotations

import time

import pytest

from tests.lab.daemons import start_manual_pair
from tests.lab.topology import HOST_B_IP, Topology, run

IDLE_SECONDS = 10.0  # about 9 solicitations at the forced 1 s interval without the fix


@pytest.mark.parametrize("ipv6_forwarding", [0, 1], ids=["host", "ipv6-router"])
def test_idle_gateway_has_no_no_sa_drops(topology: Topology, ipv6_forwarding: int) -> None:
    ns = topology.gw_a
    for key in ("all", "default"):
        run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
        run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.forwarding={ipv6_forwarding}")
    run(ns, "sysctl", "-qw", "net.ipv6.conf.default.router_solicitation_interval=1")
    run(ns, "sysctl", "-qw", "net.ipv6.conf.default.router_solicitation_max_interval=1")
    gw_a, _ = start_manual_pair(topology)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10), gw_a.log_text()
    time.sleep(IDLE_SECONDS)

    tun = gw_a.status()["tun"]
    addresses = run(ns, "ip", "-6", "addr", "show", "dev", tun).stdout
    assert "fe80:" not in addresses, addresses
    assert "addrgenmode none" in run(ns, "ip", "-d", "link", "show", "dev", tun).stdout
    drops = gw_a.status()["drops"]
    assert drops.get("no_sa", 0) == 0, drops
    print(f"gwA drops after {IDLE_SECONDS:.0f} s idle, IPv6 forwarding {ipv6_forwarding}:", drops)
