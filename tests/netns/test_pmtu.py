"""Packets larger than the tunnel carries: ICMP "too big" from ipsecd, or fragments.

Both gateways' TUN devices get ``gateway.mtu: 1500``, more than fits in ESP within the
1500-byte internet link, so the kernel hands ipsecd packets it cannot send whole:

* IPv6: ipsecd answers with ICMPv6 Packet Too Big carrying the MTU the SA carries
  (RFC 4443 §3.2), hostA's kernel learns it (ping6 reports it) and TCP, whose first
  segments are too big, adapts and delivers every byte (RFC 8201);
* IPv4 with DF: "fragmentation needed" with the next-hop MTU (RFC 1191), the same way;
* IPv4 without DF: ipsecd fragments the inner packet before encapsulating it, so big
  pings arrive without the outer packet being fragmented.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.daemons import GatewaySpec, IpsecdProcess, start_psk_pair
from tests.lab.topology import ADDRESSING, Topology, run

V4, V6 = ADDRESSING[4], ADDRESSING[6]

TRANSFER = 2 * 1024 * 1024


def pair(topo: Topology, encap: str) -> tuple[IpsecdProcess, IpsecdProcess]:
    """Tunnel mode with both families inside, IPv6 outside, TUN MTU 1500 on both sides."""
    a = GatewaySpec(
        "a", topo.gw_a, V6.gw_a_wan, V6.gw_b_wan, [V4.site_a, V6.site_a], [V4.site_b, V6.site_b]
    )
    b = GatewaySpec(
        "b", topo.gw_b, V6.gw_b_wan, V6.gw_a_wan, [V4.site_b, V6.site_b], [V4.site_a, V6.site_a],
        start="respond",
    )  # fmt: skip
    for spec in (a, b):
        spec.gateway_extra = {"mtu": 1500}
        spec.peer_extra = {"encap": encap}
    gw_a, gw_b = start_psk_pair(topo, a, b)
    gw_a.wait_up()
    gw_b.wait_up()
    return gw_a, gw_b


def limit(daemon: IpsecdProcess) -> int:
    """How many packets the daemon found too big (and answered with ICMP)."""
    drops = daemon.status()["drops"]
    return int(drops.get("too_big", 0))


@pytest.mark.parametrize("encap", ["always", "auto"])
def test_too_big_reaches_the_inner_sender(tmp_path: Path, encap: str) -> None:
    with Topology(workdir=tmp_path / "topo", ipv6=True) as topo:
        gw_a, _ = pair(topo, encap)
        assert topo.wait_ping(topo.host_a, V6.host_b, timeout=10)
        # IPv6: 1452 bytes of ICMPv6 data make a 1500-byte packet: too big for ESP.
        first = run(topo.host_a, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-M", "do",
                    "-s", "1452", V6.host_b, check=False)  # fmt: skip
        text = first.stdout + first.stderr
        assert "Packet too big" in text or "mtu=" in text, text
        learned = run(topo.host_a, "ip", "-6", "route", "get", V6.host_b).stdout
        assert " mtu " in learned, learned  # the PMTU cache entry ipsecd's message made
        mtu = int(learned.split(" mtu ")[1].split()[0])
        assert 1280 <= mtu < 1500
        assert topo.ping6(topo.host_a, V6.host_b, count=3, size=mtu - 48) == 3
        there = topo.tcp_transfer(topo.host_a, topo.host_b, V6.host_b, TRANSFER, timeout=30)
        back = topo.tcp_transfer(topo.host_b, topo.host_a, V6.host_a, TRANSFER, timeout=30)
        assert there.ok and back.ok
        assert limit(gw_a) >= 1  # (hostB's segments fit: hostA's SYN carried the PMTU)

        # IPv4 with DF: "fragmentation needed" with the next-hop MTU.
        df = run(topo.host_a, "ping", "-4", "-n", "-c", "3", "-i", "0.2", "-M", "do",
                 "-s", "1472", V4.host_b, check=False)  # fmt: skip
        text = df.stdout + df.stderr
        assert "Frag needed" in text or "mtu =" in text or "message too long" in text, text
        got = run(topo.host_a, "ip", "-4", "route", "get", V4.host_b).stdout
        assert " mtu " in got, got
        tcp4 = topo.tcp_transfer(topo.host_a, topo.host_b, V4.host_b, TRANSFER, timeout=30)
        assert tcp4.ok

        # IPv4 without DF: ipsecd fragments the inner packet; every ping comes back.
        big = run(topo.host_a, "ping", "-4", "-n", "-q", "-c", "5", "-i", "0.1", "-M",
                  "dont", "-s", "3000", V4.host_b, check=False)  # fmt: skip
        assert " 5 received" in big.stdout, big.stdout + big.stderr


def test_tun_mtu_by_default_fits_every_family(tmp_path: Path) -> None:
    """Without gateway.mtu the TUN device is small enough for IPv6 outside: no ICMP needed."""
    with Topology(workdir=tmp_path / "topo", ipv6=True) as topo:
        a = GatewaySpec("a", topo.gw_a, V4.gw_a_wan, V4.gw_b_wan, [V6.site_a], [V6.site_b])
        b = GatewaySpec(
            "b", topo.gw_b, V4.gw_b_wan, V4.gw_a_wan, [V6.site_b], [V6.site_a], start="respond"
        )
        gw_a, _ = start_psk_pair(topo, a, b)
        gw_a.wait_up()
        assert gw_a.status()["mtu"] == 1438  # IPv4 outside, AES-GCM: what fits 1500
        assert topo.ping6(topo.host_a, V6.host_b, count=5, size=1438 - 48) == 5
        assert "too_big" not in gw_a.status()["drops"]
