"""IPv6 with strongSwan 5.9.8 (charon, kernel-libipsec), both roles: IPv6 outer and inner
(6-in-6), IPv4 sites over an IPv6 internet (4-in-6), IPv6 sites over IPv4 (6-in-4), and one
CHILD_SA carrying both families at once.

Each case builds hostA — gwA ══ internet ══ gwB — hostB with both address families
(``Topology(ipv6=True)``), runs ipsecd on one gateway and charon on the other, brings the
tunnel up from either side and passes ping (ICMP or ICMPv6) and a checksummed TCP
transfer each way between the hosts.  kernel-libipsec carries ESP in UDP only, so
ipsecd keeps ``encap: always``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.daemons import GatewaySpec, IpsecdProcess, start_psk_pair
from tests.lab.strongswan import Charon, SwanConnection
from tests.lab.topology import ADDRESSING, Topology

PSK = "ipv6-interop-psk-0123456789abcdef"
IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes128gcm16"
WAN = {v: (x.gw_a_wan, x.gw_b_wan) for v, x in ADDRESSING.items()}
SITES = {v: (x.site_a, x.site_b) for v, x in ADDRESSING.items()}
HOSTS = {v: (x.host_a, x.host_b) for v, x in ADDRESSING.items()}
TRANSFER = 2 * 1024 * 1024

# (outer family, inner families): 6-in-6, 4-in-6, 6-in-4, and both inside one CHILD_SA.
CASES = [(6, (6,)), (6, (4,)), (4, (6,)), (6, (4, 6))]
CASE_IDS = ["6in6", "4in6", "6in4", "4and6in6"]


def start(
    topo: Topology, outer: int, inner: tuple[int, ...], ipsecd_side: str, encap: str = "always"
) -> tuple[IpsecdProcess, Charon]:
    """ipsecd on ``ipsecd_side`` ("a" initiates to charon, "b" answers charon's initiation),
    charon on the other gateway, both configured for the same selectors.  ``encap`` is
    ipsecd's; charon's ``encap`` is ``yes`` for ``always``, ``no`` for ``auto``."""
    wan_a, wan_b = WAN[outer]
    sites_a = [SITES[v][0] for v in inner]
    sites_b = [SITES[v][1] for v in inner]
    a = GatewaySpec("a", topo.gw_a, wan_a, wan_b, sites_a, sites_b, start="initiate")
    b = GatewaySpec("b", topo.gw_b, wan_b, wan_a, sites_b, sites_a, start="respond")
    for spec in (a, b):
        spec.ike_proposals, spec.esp_proposals = [IKE], [ESP]
        spec.peer_extra = {"encap": encap}
    if ipsecd_side == "a":
        charon_ns, local, remote, local_ts, remote_ts = topo.gw_b, wan_b, wan_a, sites_b, sites_a
    else:
        charon_ns, local, remote, local_ts, remote_ts = topo.gw_a, wan_a, wan_b, sites_a, sites_b
    charon = Charon(topo, charon_ns).start()
    charon.load(
        SwanConnection(
            local_addr=local,
            remote_addr=remote,
            local_ts=", ".join(local_ts),
            remote_ts=", ".join(remote_ts),
            psk=PSK,
            ike_proposals=IKE,
            esp_proposals=ESP,
            encap=encap == "always",
        )
    )
    ipsecd_a, ipsecd_b = start_psk_pair(topo, a, b, psk_a=PSK, psk_b=PSK, start=False)
    ours = ipsecd_a if ipsecd_side == "a" else ipsecd_b
    ours.start()
    return ours, charon


def traffic(topo: Topology, families: tuple[int, ...]) -> None:
    for family in families:
        host_a, host_b = HOSTS[family]
        assert topo.wait_ping(topo.host_a, host_b, timeout=15), family
        if family == 4:
            assert topo.ping(topo.host_a, host_b, count=10).loss == 0.0
        else:
            assert topo.ping6(topo.host_a, host_b, count=10) == 10
            assert topo.ping6(topo.host_b, host_a, count=5) == 5
        there = topo.tcp_transfer(topo.host_a, topo.host_b, host_b, TRANSFER, timeout=30)
        back = topo.tcp_transfer(topo.host_b, topo.host_a, host_a, TRANSFER, timeout=30)
        assert there.ok and back.ok, (family, there, back)


@pytest.mark.strongswan
@pytest.mark.parametrize(("outer", "inner"), CASES, ids=CASE_IDS)
def test_ipsecd_initiates_to_strongswan(tmp_path: Path, outer: int, inner: tuple[int, ...]) -> None:
    with Topology(workdir=tmp_path / "topo", ipv6=True) as topo:
        ours, charon = start(topo, outer, inner, "a")
        peer = ours.wait_up(timeout=20)
        kid = charon.wait_for_child_sa()
        (mine,) = peer["children"]
        assert int(str(kid["spi-in"]), 16) == int(mine["spi_out"], 16)
        # The endpoint in use: charon's address, on the NAT-T port IKE floated to.
        assert peer["remote"] == (f"[{WAN[outer][1]}]:4500" if outer == 6 else f"{WAN[4][1]}:4500")
        traffic(topo, inner)


@pytest.mark.strongswan
@pytest.mark.parametrize(("outer", "inner"), CASES, ids=CASE_IDS)
def test_strongswan_initiates_to_ipsecd(tmp_path: Path, outer: int, inner: tuple[int, ...]) -> None:
    with Topology(workdir=tmp_path / "topo", ipv6=True) as topo:
        ours, charon = start(topo, outer, inner, "b")
        charon.initiate(timeout=20)
        peer = ours.wait_up(timeout=20)
        (mine,) = peer["children"]
        assert sorted(mine["local_ts"]) == sorted(SITES[v][1] for v in inner)
        traffic(topo, inner)


@pytest.mark.strongswan
def test_encap_auto_towards_libipsec_carries_esp_in_udp(tmp_path: Path) -> None:
    """kernel-libipsec cannot send ESP directly over IP, and charon forces UDP
    encapsulation for it even with ``encap = no``: an ``encap: auto`` ipsecd detects
    that (RFC 7296 §2.23) and carries ESP in UDP too, over IPv6."""
    with Topology(workdir=tmp_path / "topo", ipv6=True) as topo:
        ours, _ = start(topo, 6, (6,), "a", encap="auto")
        (child,) = ours.wait_up(timeout=20)["children"]
        assert child["encap"] == "udp"
        traffic(topo, (6,))
