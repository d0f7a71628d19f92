"""Config that cannot silently break traffic (issue 13): warnings with FILE:LINE and a fix.

The machine's connected routes are injected; ``ipsecd.daemon.preflight`` reads the real
ones (tests/netns/test_check_warnings.py shows one against a real routing table).
"""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.config.warnings import ConnectedRoute, config_warnings
from tests.unit.test_config_support import BASE, SECOND_PEER, parse, write_secret_files

LAN = ConnectedRoute(ipaddress.ip_network("10.1.0.0/24"), "eth1", ipaddress.ip_address("10.1.0.1"))
WAN = ConnectedRoute(
    ipaddress.ip_network("192.0.2.0/24"), "eth0", ipaddress.ip_address("192.0.2.1")
)
ROUTES = [LAN, WAN]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_secret_files(tmp_path)


def with_tun(*addresses: str) -> str:
    return BASE.replace(
        "  listen: [192.0.2.1]\n", f"  listen: [192.0.2.1]\n  addresses: [{', '.join(addresses)}]\n"
    )


def warnings(text: str, routes=ROUTES) -> list[str]:
    return [str(w) for w in config_warnings(parse(text), routes)]


def test_recommended_configs_warn_nothing() -> None:
    assert warnings(BASE) == []
    assert warnings(with_tun("10.1.0.1/32")) == []  # the examples in etc/
    assert warnings(BASE + SECOND_PEER) == []


def test_lan_prefix_on_the_tun_device() -> None:
    """The issue's example: 10.1.0.1/24 on the TUN duplicates the LAN's connected route."""
    (found,) = warnings(with_tun("10.1.0.1/24"))
    assert found == (
        "t.yaml:3: gateway.addresses[0]: 10.1.0.1/24 gives the TUN device a route to"
        " 10.1.0.0/24, which overlaps local_ts 10.1.0.0/24 of peer 'site-b'; 10.1.0.0/24 on"
        " eth1 (connected, this gateway's address 10.1.0.1): traffic for that network can go"
        " into the tunnel instead (all of it when the LAN interface comes up after ipsecd)."
        "  Write 10.1.0.1/32 (the gateway's LAN address, no route) or leave the address out"
    )


def test_lan_prefix_is_found_without_the_routing_table() -> None:
    """Not root, no netlink: the overlap with local_ts alone is still found."""
    (found,) = warnings(with_tun("10.1.0.1/24"), routes=None)
    assert "overlaps local_ts 10.1.0.0/24 of peer 'site-b':" in found
    assert "eth1" not in found


def test_tun_prefix_over_another_connected_network() -> None:
    prefix, outside = warnings(with_tun("192.0.2.77/24"))
    assert "overlaps 192.0.2.0/24 on eth0 (connected, this gateway's address 192.0.2.1)" in prefix
    assert "192.0.2.77 is in no local_ts of peer 'site-b'" in outside


def test_tun_address_outside_local_ts() -> None:
    found = warnings(with_tun("10.255.0.1/32"))
    assert found == [
        "t.yaml:3: gateway.addresses[0]: 10.255.0.1 is in no local_ts of peer 'site-b': the"
        " gateway's own traffic into the tunnel leaves from this address and no SA covers it"
        " (dropped as no_sa).  Use the gateway's LAN address inside local_ts, as a /32"
    ]


def test_tun_address_of_a_family_without_tunnel_is_left_alone() -> None:
    assert warnings(with_tun('"2001:db8:1::1/128"')) == []  # no IPv6 remote_ts: never used


def test_remote_ts_hijacking_the_lan() -> None:
    """local_ts and remote_ts swapped: the route to remote_ts would take the LAN away."""
    text = BASE.replace("remote_ts: [10.2.0.0/24]", "remote_ts: [10.2.0.0/24, 10.1.0.128/25]")
    (found,) = warnings(text)
    assert found.startswith(
        "t.yaml:7: peers[0].remote_ts[1]: 10.1.0.128/25 overlaps 10.1.0.0/24 on eth1"
        " (connected, this gateway's address 10.1.0.1): ipsecd routes remote_ts into the"
        " tunnel, which takes 10.1.0.128/25 away from eth1.  Are local_ts and remote_ts swapped?"
    )


def test_broader_remote_ts_leaves_the_lan_its_more_specific_route() -> None:
    text = BASE.replace("remote_ts: [10.2.0.0/24]", "remote_ts: [10.0.0.0/8]")
    assert warnings(text) == []


def test_remote_ts_over_the_peer_itself() -> None:
    text = BASE.replace("remote_ts: [10.2.0.0/24]", "remote_ts: [0.0.0.0/0]")
    found = warnings(text, routes=None)
    assert found == [
        "t.yaml:7: peers[0].remote_ts[0]: 0.0.0.0/0 contains 192.0.2.2, the address of peer"
        " 'site-b': ipsecd routes remote_ts into the tunnel, so IKE and ESP to 192.0.2.2 would"
        " go into the tunnel too.  Leave it out of remote_ts (list the networks behind the peer)"
    ]
    # A peer on a connected network keeps its more specific route: no loop.
    assert not any("192.0.2.2, the address" in w for w in warnings(text))


def test_local_ts_over_our_own_public_address() -> None:
    text = BASE.replace("local_ts: [10.1.0.0/24]", "local_ts: [10.1.0.0/24, 192.0.2.0/24]")
    (found,) = warnings(text, routes=None)
    assert found.startswith(
        "t.yaml:6: peers[0].local_ts[1]: 192.0.2.0/24 contains 192.0.2.1, this gateway's own"
        " address (gateway.listen): a peer that routes its remote_ts into its tunnel"
    )


def test_routes_of_our_own_tun_device_are_ignored() -> None:
    """`ipsecd check` on a running gateway sees the TUN's own routes: not a conflict."""
    own = ConnectedRoute(ipaddress.ip_network("10.1.0.0/24"), "ipsec0", None)
    assert warnings(with_tun("10.1.0.1/32"), routes=[own]) == []
