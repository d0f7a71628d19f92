"""Several children and dynamic peers in the daemon core: routing by child, status and
log per child (uncovered prefixes), traps per child, reload of one child, DNS through the
injected resolver, ``ipsecctl up`` of an ``any`` peer, ESP that moves a NATed peer."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from ipsecd.config import load_config
from ipsecd.config.schema import IpAddress
from ipsecd.daemon.core import RouteChange, child_sa, trap_key
from ipsecd.daemon.status import DataplaneStatus, PeerStatus
from ipsecd.dataplane.trap import TrapState
from ipsecd.ike import events as ev
from tests.lab.packets import ipv4
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import B_IP, Child, side_a, side_b

WALL = 1_714_564_800.0  # the wall clock at the rig's start (status timestamps)
LAN = Child("lan", ("10.1.0.0/24",), ("10.2.0.0/24",))
DMZ = Child("dmz", ("10.1.1.0/24",), ("10.2.1.0/24",), esp=("aes128gcm16",))
B_LAN = Child("lan", ("10.2.0.0/24",), ("10.1.0.0/24",), start="respond")
B_DMZ = Child("dmz", ("10.2.1.0/24",), ("10.1.1.0/24",), start="respond", esp=("aes128gcm16",))


def rig(tmp_path: Path, a: tuple[Child, ...] = (LAN, DMZ), **core: Any) -> CoreRig:
    return CoreRig(tmp_path, side_a(children=a), side_b(children=(B_LAN, B_DMZ)), **core)


def peer_status(r: CoreRig) -> PeerStatus:
    status = r.core.status(r.now, wall=WALL, tun="t0", listen=[], dataplane=DataplaneStatus())
    (peer,) = status.peers
    return peer


def spi_of(data: bytes) -> int:
    return int(struct.unpack("!I", data[:4])[0])


def spis_by_child(r: CoreRig) -> dict[str, int]:
    return {sa.name: sa.outbound.spi for sa in r.core.sad}


def test_traffic_goes_to_the_child_whose_selectors_match(tmp_path):
    r = rig(tmp_path)
    spis = spis_by_child(r)
    assert set(spis) == {"lan", "dmz"}
    r.from_tun([ipv4("10.1.0.5", "10.2.0.7"), ipv4("10.1.1.5", "10.2.1.7")])
    assert [spi_of(d) for d, _ in r.esp_sent] == [spis["lan"], spis["dmz"]]
    r.from_tun([ipv4("10.1.0.5", "10.2.1.7")])  # lan's source to dmz's remote: no child
    assert len(r.esp_sent) == 2 and r.core.processor.drops["no_sa"] == 1


def test_status_per_child(tmp_path):
    r = rig(tmp_path)
    peer = peer_status(r)
    assert [(c.name, c.start, c.up) for c in peer.configured_children] == [
        ("lan", "initiate", True),
        ("dmz", "initiate", True),
    ]
    assert sorted(c.name for c in peer.children) == ["dmz", "lan"]
    assert peer.configured_children[1].remote_ts == ("10.2.1.0/24",)
    assert peer.configured_children[1].uncovered_remote_ts == ()
    doc = r.core.status(
        r.now, wall=WALL, tun=None, listen=[], dataplane=DataplaneStatus()
    ).to_dict()
    assert doc["peers"][0]["configured_children"][0]["name"] == "lan"
    assert doc["peers"][0]["configured_children"][0]["on_demand"] is None
    conns = r.core.conns().to_dict()["peers"][0]
    assert [c["name"] for c in conns["children"]] == ["lan", "dmz"]
    assert conns["children"][1]["esp_proposals"] == ["aes128gcm16"]


def test_a_narrowed_child_is_reported_in_status_and_log(tmp_path):
    wide = Child("lan", ("10.1.0.0/24",), ("10.2.0.0/24", "10.2.4.0/24"))  # b: 10.2.0.0/24
    with capture_logs() as logs:
        r = rig(tmp_path, a=(wide, DMZ))
    (warning,) = [e for e in logs if e["event"] == "CHILD_SA narrowed: traffic left without SA"]
    assert warning["child"] == "lan" and warning["uncovered_remote_ts"] == "10.2.4.0/24"
    assert warning["uncovered_local_ts"] == "(none)" and warning["log_level"] == "warning"
    lan = peer_status(r).configured_children[0]
    assert lan.up and lan.uncovered_remote_ts == ("10.2.4.0/24",) and lan.uncovered_local_ts == ()
    assert r.ike.counters["child_sa_narrowed"] == 1


def test_a_trap_child_comes_up_on_its_own_traffic_on_the_ike_sa(tmp_path):
    trap_dmz = Child("dmz", DMZ.local_ts, DMZ.remote_ts, start="trap", esp=DMZ.esp)
    r = rig(tmp_path, a=(LAN, trap_dmz))
    assert set(spis_by_child(r)) == {"lan"}
    key = trap_key("b", "dmz")
    assert r.core.trap.state(key) is TrapState.IDLE and r.core.trap.state("b/lan") is None
    ike = r.ike.ike_sa("b")
    r.from_tun([ipv4("10.1.1.5", "10.2.1.7")])
    assert set(spis_by_child(r)) == {"lan", "dmz"} and r.ike.ike_sa("b") is ike
    assert r.core.trap.state(key) is TrapState.UP
    assert spi_of(r.esp_sent[-1][0]) == spis_by_child(r)["dmz"]  # the queued packet went
    dmz_status = peer_status(r).configured_children[1]
    assert dmz_status.on_demand is not None and dmz_status.on_demand.state == "up"


def test_reload_removes_one_child_and_adds_another_keeping_the_rest(tmp_path, monkeypatch):
    web, b_web = (
        Child("web", ("10.1.2.0/24",), ("10.2.2.0/24",)),
        Child("web", ("10.2.2.0/24",), ("10.1.2.0/24",), start="respond"),
    )
    r = CoreRig(tmp_path, side_a(children=(LAN, DMZ)), side_b(children=(B_LAN, B_DMZ, b_web)))
    ike, lan = r.ike.ike_sa("b"), spis_by_child(r)["lan"]
    path = r.core.config.path
    path.write_text(side_a(children=(LAN, web)).yaml(path.with_suffix(".psk")))
    r.core.routes_to_change()
    result = r.core.reload(load_config(path), r.now)
    r.pump()
    assert result["plan"]["updated"] == ["b"]
    assert result["plan"]["children"]["b"] == {
        "added": ["web"],
        "changed": [],
        "removed": ["dmz"],
        "unchanged": ["lan"],
    }
    assert r.ike.ike_sa("b") is ike and spis_by_child(r)["lan"] == lan
    assert set(spis_by_child(r)) == {"lan", "web"}
    changes = r.core.routes_to_change()
    net = ipaddress.ip_network
    assert RouteChange(net("10.2.1.0/24"), add=False) in changes
    assert RouteChange(net("10.2.2.0/24"), add=True) in changes
    assert RouteChange(net("10.2.0.0/24"), add=False) not in changes  # lan's route stays


# ---- dynamic peers -------------------------------------------------------------------------


class Resolver:
    def __init__(self, answers: dict[str, Sequence[str]] | None = None, error: bool = False):
        self.answers = answers or {}
        self.error = error

    def __call__(self, name: str, version: int) -> list[IpAddress]:
        if self.error:
            raise OSError(-2, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.answers.get(name, ())]


def test_the_core_resolves_through_the_injected_resolver_and_shows_the_address(tmp_path):
    a = side_a(remote_address="gw-b.example.org", remote_id=B_IP)
    r = CoreRig(tmp_path, a, side_b(), resolver=Resolver({"gw-b.example.org": [B_IP]}))
    peer = peer_status(r)
    assert peer.up and peer.remote == f"{B_IP}:4500" and peer.remote_host == "gw-b.example.org"
    r.core.control("down", "b", r.now)
    r.pump()
    assert peer_status(r).remote == f"{B_IP}:500"  # the address the name resolved to


def test_a_failed_lookup_is_logged_and_shown(tmp_path):
    a = side_a(remote_address="gw-b.example.org", remote_id=B_IP)
    with capture_logs() as logs:
        r = CoreRig(tmp_path, a, side_b(), resolver=Resolver(error=True))
    (failed,) = [e for e in logs if e["event"] == "DNS lookup failed"]
    assert failed["error"] == "Name or service not known"
    peer = peer_status(r)
    assert not peer.up and peer.remote is None and peer.remote_host == "gw-b.example.org"
    assert (
        peer.last_error
        == "cannot resolve gw-b.example.org to an IPv4 address (local_address 192.0.2.1 is IPv4)"
    )


def test_up_of_an_any_peer_says_why_not(tmp_path):
    a = side_a(remote_address="any", remote_id=B_IP, start=None)
    r = CoreRig(tmp_path, a, side_b(start="respond"))
    answer = r.core.control("up", "b", r.now)
    assert answer == {
        "ok": False,
        "error": "peer 'b' has remote_address any: ipsecd learns its address when it connects"
        " and cannot initiate it",
    }
    assert peer_status(r).remote is None and peer_status(r).remote_host == "any"


def test_authentic_esp_from_a_new_endpoint_moves_the_natted_peer(tmp_path):
    r = rig(tmp_path)
    (params,) = [e.child for _, e in r.pair.events["b"] if isinstance(e, ev.ChildSaEstablished)][:1]
    sender = child_sa("a", params, (B_IP, 4500), r.now).outbound  # as b sends
    esp = sender.encapsulate(ipv4("10.2.0.7", "10.1.0.5"), 4)
    local = (str(r.core.config.peers[0].local_address), 4500)
    r.core.from_udp([(esp, ("203.0.113.9", 41000))], local, r.now)
    assert r.core.counters["esp_from_new_address"] == 1
    assert r.ike.ike_sa("b").remote == ("203.0.113.9", 41000)
    assert {sa.remote for sa in r.core.sad} == {("203.0.113.9", 41000)}


def test_close_action_trap_of_one_child_arms_only_its_trap(tmp_path):
    dmz = Child("dmz", DMZ.local_ts, DMZ.remote_ts, esp=DMZ.esp, close_action="trap")
    r = rig(tmp_path, a=(LAN, dmz))
    spis = spis_by_child(r)
    (b_dmz,) = [c for c in r.b.ike_sa("a").children.values() if c.name == "dmz"]
    r.b.delete_child("a", b_dmz.spi_in, r.now)
    r.pump()
    assert spis_by_child(r) == {"lan": spis["lan"]}
    assert r.core.trap.state(trap_key("b", "dmz")) is TrapState.IDLE
    assert r.core.trap.state(trap_key("b", "lan")) is None
    r.from_tun([ipv4("10.1.1.5", "10.2.1.7")])  # its next packet brings it back
    assert set(spis_by_child(r)) == {"lan", "dmz"}
