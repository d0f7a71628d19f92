"""The daemon core with transport-mode and AH peers: routes, raw sockets, the wire.

Gateway A is a real :class:`DaemonCore` facing side ``b``'s IkeManager
(:class:`CoreRig`); the CHILD_SA is negotiated for real, and what the core then asks
the shell to do (routes, raw packets, the MTU) is checked with plain calls.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ipsecd.ah.sa import InboundAhSa
from ipsecd.config import load_config
from ipsecd.daemon.core import DaemonCore, RouteChange
from ipsecd.esp.sa import OutboundEspSa
from ipsecd.esp.transport import split_for_transport
from tests.lab.packets import ipv4
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import A_IP, B_IP, side_a, side_b
from tests.unit.test_daemon_core import manual_config

HOST_A, HOST_B = (f"{A_IP}/32",), (f"{B_IP}/32",)


def rig(tmp_path: Path, **kw: object) -> CoreRig:
    a = side_a(local_ts=HOST_A, remote_ts=HOST_B, mode="transport", **kw)
    b = side_b(local_ts=HOST_B, remote_ts=HOST_A, mode="transport", **kw)
    return CoreRig(tmp_path, a, b)


def b_child(r: CoreRig):  # type: ignore[no-untyped-def]
    return r.pair.established("b")[-1].child if r.pair.established("b") else None


def test_transport_peer_is_routed_in_its_own_table_from_its_address(tmp_path: Path) -> None:
    r = rig(tmp_path, protocol="ah", esp=("sha256",), encap="auto")
    (route,) = r.core.routes_to_change()
    assert route == RouteChange(ipaddress.ip_network(f"{B_IP}/32"), True, 4500, A_IP)
    assert r.core.raw_endpoints() == [(A_IP, 50), (A_IP, 51)]
    assert r.core.needs_raw()


def test_ah_transport_from_tun_leaves_as_a_raw_packet(tmp_path: Path) -> None:
    r = rig(tmp_path, protocol="ah", esp=("sha256",), encap="auto")
    (sa,) = r.core.sad
    assert (sa.mode, sa.protocol, sa.encap) == ("transport", "ah", False)
    packet = ipv4(A_IP, B_IP, b"x" * 40, proto=17)
    r.from_tun([packet])
    ((local, protocol, remote, (wire,)),) = r.core.raw_to_send()
    assert (local, protocol, remote) == (A_IP, 51, B_IP)
    assert r.esp_sent == []  # nothing in UDP
    child = b_child(r)
    inbound = InboundAhSa(child.spi_in, child.integ, child.integ_key_in, esn=child.esn)
    assert inbound.decapsulate_transport(wire)[20:] == packet[20:]


def test_raw_packets_from_the_peer_reach_tun(tmp_path: Path) -> None:
    r = rig(tmp_path, encap="auto")
    (sa,) = r.core.sad
    assert (sa.protocol, sa.encap) == ("esp", False)
    child = b_child(r)  # the peer seals with its outbound keys, transport mode, protocol 50
    out = OutboundEspSa(child.spi_out, child.encr, None, child.encr_key_out)
    packet = ipv4(B_IP, A_IP, b"hello from b", proto=17)
    front, next_header, payload = split_for_transport(packet)
    wire = front.build(50, out.encapsulate(payload, next_header))
    r.core.from_raw([wire], 50, r.now)
    assert r.core.packets_to_tun() == [packet]
    r.core.from_raw([wire], 50, r.now)  # a replay
    assert r.core.packets_to_tun() == []
    r.core.from_raw([wire], 51, r.now)  # on the AH socket: no AH header in it
    assert r.core.packets_to_tun() == []


def test_ah_mtu_and_mismatch_in_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = rig(tmp_path, protocol="ah", esp=("sha512",), encap="auto")
    assert r.core.mtu() == 1500 - 20 - 44  # AH-SHA-512 in tunnel mode: the worst case
    doc = r.core.status(r.now, wall=1.7e9, tun=None, listen=[], dataplane=_dataplane())
    (status,) = doc.peers
    (child,) = status.children
    assert (child.algorithm, child.mode, child.encap) == ("ah-sha512", "transport", "ip")


def test_manual_peer_with_encap_auto_sends_directly_over_ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = manual_config(tmp_path)
    path.write_text(path.read_text().replace("    manual:", "    encap: auto\n    manual:"))
    core = DaemonCore(load_config(path), 0.0)
    core.from_tun([ipv4("10.1.0.9", "10.2.0.9")], 1.0)
    assert core.datagrams_to_send() == []
    ((local, protocol, remote, (wire,)),) = core.raw_to_send()
    assert (local, protocol, remote) == (A_IP, 50, B_IP)
    assert wire[9] == 50 and wire[:1] == b"\x45"


def _dataplane():  # type: ignore[no-untyped-def]
    from ipsecd.daemon.status import DataplaneStatus

    return DataplaneStatus()
