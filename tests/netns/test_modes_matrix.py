"""ipsecd <-> ipsecd in every mode: {tunnel, transport} x {ESP, AH} x {IPv4, IPv6 outer} x
{UDP-encapsulated, directly over IP}, where the combination exists (AH never in UDP).

Each case builds its own topology, brings the CHILD_SA up and passes ping and a
checksummed TCP transfer both ways: between the hosts behind the gateways in tunnel
mode (inner family = outer family), between the gateways themselves in transport mode.
A capture on gwB's uplink shows what the wire carried: ESP or AH directly over IP
(protocol 50/51) or ESP in UDP/4500, nothing else, and no ICMP "protocol unreachable"
or "parameter problem" from a kernel that has no ESP/AH of its own.

One more case mixes the modes on one peer: a tunnel-mode child for the sites and a
transport-mode child for the gateways, side by side on one IKE SA (``children:``).

Run with ``-n 4``: the 12 cases take about 75 s of wall time on the 2-core CI machine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.lab.daemons import GatewaySpec, IpsecdProcess, start_psk_pair
from tests.lab.topology import ADDRESSING, GW_B_WAN_IP, Topology
from tests.lab.wait import wait_until

scapy_all = pytest.importorskip("scapy.all")

# (mode, protocol, encap): every valid combination.
KINDS = [
    ("tunnel", "esp", "always"),
    ("tunnel", "esp", "auto"),
    ("tunnel", "ah", "auto"),
    ("transport", "esp", "always"),
    ("transport", "esp", "auto"),
    ("transport", "ah", "auto"),
]
TRANSFER = 2 * 1024 * 1024


def specs(topo: Topology, family: int, mode: str, protocol: str, encap: str) -> list[GatewaySpec]:
    x = ADDRESSING[family]
    host = 32 if family == 4 else 128
    out = []
    for name, ns, me, peer, mine, theirs in (
        ("a", topo.gw_a, x.gw_a_wan, x.gw_b_wan, x.site_a, x.site_b),
        ("b", topo.gw_b, x.gw_b_wan, x.gw_a_wan, x.site_b, x.site_a),
    ):
        if mode == "transport":
            mine, theirs = f"{me}/{host}", f"{peer}/{host}"
        spec = GatewaySpec(name, ns, me, peer, [mine], [theirs])
        spec.start = "initiate" if name == "a" else "respond"
        spec.peer_extra = {"encap": encap}
        spec.child_extra = {"mode": mode, "protocol": protocol}
        if protocol == "ah":
            spec.child_extra["ah_proposals"] = ["sha256"]
        out.append(spec)
    return out


def wire(pcap: Path) -> Counter[str]:
    """What a capture holds: esp, ah, esp-in-udp, ike, keepalive, icmp-refused,
    icmpv6-info, other."""
    seen: Counter[str] = Counter()
    for frame in scapy_all.rdpcap(str(pcap)):
        ip = frame.getlayer("IP") or frame.getlayer("IPv6")
        if ip is None:
            continue
        proto = ip.proto if ip.version == 4 else ip.nh
        if ip.version == 6 and str(ip.dst).startswith("ff02:"):
            # Link-local multicast: neighbour discovery, and MLD reports (ICMPv6 behind a
            # hop-by-hop header) the kernel sends now and then once forwarding is on.
            seen["icmpv6-info"] += 1
        elif proto == 50:
            seen["esp"] += 1
        elif proto == 51:
            seen["ah"] += 1
        elif proto == 17:
            udp = ip.payload
            body = bytes(udp.payload)
            if udp.dport == 500 or udp.sport == 500 or body[:4] == b"\0\0\0\0":
                seen["ike"] += 1
            elif len(body) == 1:
                seen["keepalive"] += 1
            else:
                seen["esp-in-udp"] += 1
        elif proto == 1 and ip.payload.type == 3:
            seen["icmp-refused"] += 1  # destination unreachable (protocol, port)
        elif proto == 58 and ip.payload.type in (1, 4):
            seen["icmp-refused"] += 1  # destination unreachable, parameter problem
        elif proto == 58 and ip.payload.type >= 128:
            seen["icmpv6-info"] += 1  # neighbour discovery between the gateways
        else:
            seen["other"] += 1
    return seen


def traffic(topo: Topology, family: int, mode: str) -> None:
    x = ADDRESSING[family]
    if mode == "transport":
        (a_ns, a_ip), (b_ns, b_ip) = (topo.gw_a, x.gw_a_wan), (topo.gw_b, x.gw_b_wan)
    else:
        (a_ns, a_ip), (b_ns, b_ip) = (topo.host_a, x.host_a), (topo.host_b, x.host_b)
    assert topo.wait_ping(a_ns, b_ip, timeout=10)
    if family == 4:
        assert topo.ping(a_ns, b_ip, count=10).loss == 0.0
    else:
        assert topo.ping6(a_ns, b_ip, count=10) == 10
    there = topo.tcp_transfer(a_ns, b_ns, b_ip, TRANSFER, timeout=30)
    back = topo.tcp_transfer(b_ns, a_ns, a_ip, TRANSFER, timeout=30)
    assert there.ok and back.ok, (there, back)


def child(daemon: IpsecdProcess) -> dict[str, object]:
    (only,) = daemon.peer_status()["children"]
    return only


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("mode", "protocol", "encap"), KINDS)
def test_mode_matrix(tmp_path: Path, family: int, mode: str, protocol: str, encap: str) -> None:
    with Topology(workdir=tmp_path / "topo", ipv6=family == 6) as topo:
        a, b = specs(topo, family, mode, protocol, encap)
        gw_a, gw_b = start_psk_pair(topo, a, b)
        gw_a.wait_up()
        gw_b.wait_up()
        for daemon in (gw_a, gw_b):
            sa = child(daemon)
            assert sa["mode"] == mode and sa["encap"] == ("udp" if encap == "always" else "ip")
            assert str(sa["algorithm"]).startswith("ah-" if protocol == "ah" else "aes")
        with topo.start_capture(topo.gw_b, topo.WAN_IFACE) as cap:
            traffic(topo, family, mode)
        seen = wire(cap.path)
        carried = "esp-in-udp" if encap == "always" else protocol
        assert seen[carried] > 100, seen  # (UDP GSO: one captured frame may be many)
        wrong = {"esp", "ah", "esp-in-udp", "icmp-refused", "other"} - {carried}
        assert not any(seen[k] for k in wrong), seen
        for daemon in (gw_a, gw_b):
            sa = child(daemon)
            assert not any(sa["drops"].values()), sa  # every reason listed, all 0
            assert int(sa["packets_in"]) > TRANSFER // 1500, sa
            drops = {k for k, v in daemon.status()["drops"].items() if v}
            assert drops <= {"ipv6_link_local"}, daemon.status()


@pytest.mark.parametrize("protocol", ["esp", "ah"])
def test_transport_across_a_nat(tmp_path: Path, protocol: str) -> None:
    """gwA behind a masquerading NAT, transport mode with ``encap: auto``: ESP falls back
    to UDP (each side installs the endpoints it sees, checksums fixed, RFC 7296 §2.23.1,
    RFC 3948 §3.1.2) and passes ping and TCP both ways, gwB reaching gwA at the NAT's
    address; AH is refused, in words, on the side that asked for it."""
    with Topology(workdir=tmp_path / "topo", nat=True) as topo:
        a = GatewaySpec(
            "a", topo.gw_a, topo.gw_a_wan_ip, GW_B_WAN_IP,
            [f"{topo.gw_a_wan_ip}/32"], [f"{GW_B_WAN_IP}/32"],
        )  # fmt: skip
        b = GatewaySpec(
            "b", topo.gw_b, GW_B_WAN_IP, topo.gw_a_public_ip,
            [f"{GW_B_WAN_IP}/32"], [f"{topo.gw_a_public_ip}/32"],
            start="respond", remote_id=topo.gw_a_wan_ip,
        )  # fmt: skip
        for spec in (a, b):
            spec.peer_extra = {"encap": "auto"}
            spec.child_extra = {"mode": "transport", "protocol": protocol}
        gw_a, gw_b = start_psk_pair(topo, a, b)
        if protocol == "ah":
            error = _wait_last_error(gw_a, "AH cannot cross a NAT")
            assert "IKE detected one in front of us" in error, error
            assert not gw_a.peer_status()["children"] and not gw_b.peer_status()["children"]
            return
        gw_a.wait_up()
        gw_b.wait_up()
        assert child(gw_a)["encap"] == child(gw_b)["encap"] == "udp"
        assert topo.wait_ping(topo.gw_a, GW_B_WAN_IP, timeout=10)
        assert topo.ping(topo.gw_b, topo.gw_a_public_ip, count=5).loss == 0.0
        there = topo.tcp_transfer(topo.gw_a, topo.gw_b, GW_B_WAN_IP, TRANSFER, timeout=30)
        back = topo.tcp_transfer(
            topo.gw_b, topo.gw_a, topo.gw_a_public_ip, TRANSFER, 30, bind_ip=topo.gw_a_wan_ip
        )
        assert there.ok and back.ok


def _wait_last_error(daemon: IpsecdProcess, needle: str) -> str:
    found: str = wait_until(
        lambda: daemon.peer_status().get("last_error") or "",
        20,
        what=f"{needle!r} in last_error on {daemon.spec.name}",
        until=lambda last: needle in last,
        context=daemon.log_text,
    )
    return found


def test_tunnel_and_transport_children_of_one_peer(tmp_path: Path) -> None:
    """One peer, two children: the sites in tunnel mode and the gateways themselves in
    transport mode (``encap: auto``: both directly over IP), on one IKE SA; the first
    comes up in IKE_AUTH, the second by CREATE_CHILD_SA, and both carry ping and TCP."""
    with Topology(workdir=tmp_path / "topo") as topo:
        x = ADDRESSING[4]
        specs = []
        for name, ns, me, peer, mine, theirs in (
            ("a", topo.gw_a, x.gw_a_wan, x.gw_b_wan, x.site_a, x.site_b),
            ("b", topo.gw_b, x.gw_b_wan, x.gw_a_wan, x.site_b, x.site_a),
        ):
            spec = GatewaySpec(name, ns, me, peer, [mine], [theirs])
            start = {"start": "initiate" if name == "a" else "respond"}
            spec.peer_extra = {
                "encap": "auto",
                "children": [
                    {"name": "lan", "local_ts": [mine], "remote_ts": [theirs], **start},
                    {
                        "name": "hosts",
                        "local_ts": [f"{me}/32"],
                        "remote_ts": [f"{peer}/32"],
                        "esp": {"mode": "transport"},
                        **start,
                    },
                ],
            }
            specs.append(spec)
        gw_a, gw_b = start_psk_pair(topo, *specs)
        for daemon in (gw_a, gw_b):
            wait_until(
                lambda d=daemon: {c["name"] for c in d.peer_status()["children"]},
                20,
                what=f"children lan and hosts up on {daemon.spec.name}",
                until=lambda names: names >= {"lan", "hosts"},
                context=daemon.log_text,
            )
        traffic(topo, 4, "tunnel")
        traffic(topo, 4, "transport")
        for daemon in (gw_a, gw_b):
            peer = daemon.peer_status()
            assert peer["ike_sas"] == 1, peer
            by_name = {c["name"]: c for c in peer["children"]}
            assert (by_name["lan"]["mode"], by_name["hosts"]["mode"]) == ("tunnel", "transport")
            for sa in by_name.values():
                assert sa["encap"] == "ip" and int(sa["packets_in"]) > TRANSFER // 1500, sa
                assert not any(sa["drops"].values()), sa
