"""The daemon core without I/O: SAs from IKE events and from manual keys, NAT-T framing,
reload plans, control commands, MTU policy and the status model, driven by plain
calls with a fake TUN, a fake network and a fake clock (:class:`CoreRig`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

import ipsecd.crypto.keyexchange as keyexchange
from ipsecd.config import load_config, parse_config
from ipsecd.crypto.registry import ENCRYPTION, KEY_EXCHANGE
from ipsecd.daemon.core import DaemonCore, RouteChange
from ipsecd.daemon.status import DataplaneStatus
from ipsecd.esp.sa import OutboundEspSa
from ipsecd.esp.udp_encap import NON_ESP_MARKER, frame
from ipsecd.ike.manager import USAGE_INTERVAL
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import A_IP, B_IP, ipv4_packet, side_a, side_b
from tests.unit.test_config_support import KEY_IN, KEY_OUT, write_keys

LOCAL, REMOTE = (A_IP, 4500), (B_IP, 4500)
GATEWAY = f"gateway:\n  listen: [{A_IP}]\n"
MANUAL_PEER = f"""\
  - name: {{name}}
    remote_address: {B_IP}
    local_ts: [10.1.0.0/24]
    remote_ts: [{{remote}}]
    manual:
      algorithm: {{algorithm}}
      spi_in: 0x00001001
      spi_out: 0x00001002
      key_file: b.keys
"""


def manual_config(
    tmp_path: Path,
    *,
    remote: str = "10.2.0.0/24",
    algorithm: str = "aes128gcm16",
    key_len: int = 20,
) -> Path:
    keys = (KEY_IN, KEY_OUT) if key_len == len(KEY_IN) else (bytes(key_len), b"\x01" * key_len)
    write_keys(tmp_path / "b.keys", *keys)
    path = tmp_path / "manual.yaml"
    peer = MANUAL_PEER.format(name="b", remote=remote, algorithm=algorithm)
    path.write_text(GATEWAY + "peers:\n" + peer)
    return path


@pytest.fixture
def manual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DaemonCore:
    monkeypatch.chdir(tmp_path)
    return DaemonCore(load_config(manual_config(tmp_path)), 100.0)


# ---- manual SAs: the same factory as negotiated ones -------------------------------------


def test_manual_sa_carries_both_directions(manual: DaemonCore) -> None:
    (sa,) = manual.sad
    assert (sa.inbound.spi, sa.outbound.spi) == (0x1001, 0x1002)
    assert (sa.local, sa.remote, sa.installed_at) == (LOCAL, REMOTE, 100.0)
    peer = OutboundEspSa(0x1001, ENCRYPTION["aes128gcm16"], None, KEY_IN)
    inner = ipv4_packet("10.2.0.9", "10.1.0.9")
    manual.from_udp([(peer.encapsulate(inner, 4), REMOTE)], LOCAL, 101.0)
    assert manual.packets_to_tun() == [inner]
    manual.from_tun([ipv4_packet("10.1.0.9", "10.2.0.9")] * 2, 102.0)
    ((local, remote, datagrams),) = manual.datagrams_to_send()
    assert (local, remote, len(datagrams)) == (LOCAL, REMOTE, 2)
    assert datagrams[0][:4] == (0x1002).to_bytes(4, "big")
    assert manual.status_line() == "1 of 1 tunnels up"


def test_start_routes_the_remote_selectors(manual: DaemonCore) -> None:
    net = ipaddress.ip_network("10.2.0.0/24")
    assert manual.routes_to_change() == [RouteChange(net, add=True)]
    assert manual.routes_to_change() == []  # drained


def test_udp_side_effects_are_counted(manual: DaemonCore) -> None:
    peer = OutboundEspSa(0x1001, ENCRYPTION["aes128gcm16"], None, KEY_IN)
    esp = peer.encapsulate(ipv4_packet("10.2.0.9", "10.1.0.9"), 4)
    manual.from_udp([(esp, ("203.0.113.5", 4500))], LOCAL, 101.0)
    assert manual.counters["esp_from_new_address"] == 1
    manual.from_udp([(bytes(40), REMOTE)], (A_IP, 500), 101.0)  # IKE port, no IKE peer
    manual.from_udp([(NON_ESP_MARKER + bytes(40), REMOTE)], LOCAL, 101.0)
    assert manual.counters["ike_without_ike_peers"] == 2
    assert manual.processor.keepalives_received == 0
    manual.from_udp([(b"\xff", REMOTE)], LOCAL, 101.0)
    assert manual.processor.keepalives_received == 1


def test_mtu_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gcm = DaemonCore(load_config(manual_config(tmp_path)), 0.0)
    assert gcm.mtu() == 1438  # 1500-20-8-8-8-16, a 4-byte multiple, -2
    cbc = manual_config(tmp_path, algorithm="aes256-sha512", key_len=96)
    assert DaemonCore(load_config(cbc), 0.0).mtu() == 1406
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(cbc.read_text().replace("gateway:\n", "gateway:\n  mtu: 1300\n"))
    assert DaemonCore(load_config(fixed), 0.0).mtu() == 1300


def test_control_needs_an_ike_peer(manual: DaemonCore) -> None:
    assert manual.control("up", "b", 1.0) == {"ok": False, "error": "no IKE peer named 'b'"}


# ---- IKE ---------------------------------------------------------------------------------


def test_negotiated_sa_status_and_framing(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())  # a initiates at start
    assert r.status_a()["state"] == "established"
    (sa,) = r.core.sad
    b_child = r.pair.established("b")[-1].child
    assert (sa.inbound.spi, sa.outbound.spi) == (b_child.spi_out, b_child.spi_in)
    assert sa.remote == REMOTE  # IKE moved to the NAT-T port (RFC 7296 §2.23)
    inner = ipv4_packet("10.1.0.5", "10.2.0.5")
    r.from_tun([inner])
    assert r.decrypted_at_b() == [inner]
    status = r.core.status(
        r.now + 2, wall=0.0, tun="t0", listen=[LOCAL], dataplane=DataplaneStatus()
    )
    (peer,) = status.peers
    assert (peer.state, peer.up, peer.mode) == ("established", True, "ike")
    (child,) = peer.children
    assert child.spi_in == f"{sa.inbound.spi:08x}" and child.packets_out == 1
    assert child.rekey_in_seconds is not None and child.established_seconds == 2.0
    doc = status.to_dict()
    assert doc["listen"] == ["192.0.2.1:4500"] and doc["tun"] == "t0"
    assert doc["peers"][0]["on_demand"] is None
    assert doc["peers"][0]["ike"]["state"] == "established"
    assert doc["counters"]["child_sa_installed"] == 1


def test_down_and_up_through_control(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    assert r.core.control("down", "b", r.now) == {"ok": True}
    r.pump()
    assert len(r.core.sad) == 0 and r.core.status_line() == "0 of 1 tunnels up"
    assert r.core.control("rekey", "b", r.now)["ok"] is False  # no IKE SA to rekey
    assert r.core.control("up", "b", r.now) == {"ok": True}
    r.pump()
    assert len(r.core.sad) == 1


def test_usage_reaches_the_ike_layer_on_timer(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")] * 3)
    r.advance(2)  # the manager's usage interval passed: the core reported on the timer
    (sa,) = r.core.sad
    assert r.ike.ike_sa("b").children[sa.inbound.spi].packets == 3


def test_first_child_sa_of_an_idle_daemon_arms_no_timer_at_once(tmp_path: Path) -> None:
    """Usage is reported every USAGE_INTERVAL while CHILD_SAs exist: the first one after
    a time without any is due an interval after it came, not at once."""
    r = CoreRig(tmp_path, side_a(start="respond"), side_b())
    r.pair.now += 60.0  # idle, no CHILD_SA
    r.core.control("up", "b", r.now)
    r.pump()
    assert len(r.core.by_peer.of("b")) == 1
    timer = r.core.get_timer()
    assert timer is not None and timer >= r.now + USAGE_INTERVAL


def test_shutdown_sends_a_delete(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    sent = len(r.ike_sent)
    r.core.shutdown(r.now)
    r.pump()
    assert len(r.ike_sent) == sent + 1
    assert r.b.status()[0]["state"] != "established"


# ---- reload ------------------------------------------------------------------------------


def test_reload_plan_follows_the_ike_manager_and_manual_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    path = r.core.config.path
    monkeypatch.chdir(path.parent)
    write_keys(path.parent / "b.keys")
    ike_text = r.pair.a_side.yaml(path.with_suffix(".psk"))  # the file the config came from
    # b becomes manual, c (manual) is added.
    manual_text = (
        GATEWAY.replace("gateway:\n", "gateway:\n  retransmit_timeout: 0.5\n")
        + "peers:\n"
        + MANUAL_PEER.format(name="b", remote="10.2.0.0/24", algorithm="aes128gcm16")
        + MANUAL_PEER.format(name="c", remote="10.3.0.0/24", algorithm="aes128gcm16")
        .replace("0x0000100", "0x0000200")
        .replace(B_IP, "192.0.2.3")
    )
    gateway = ike_text.split("peers:")[0]
    path.write_text(gateway + "peers:\n" + manual_text.split("peers:\n")[1])
    r.core.routes_to_change()
    result = r.core.reload(load_config(path), r.now)
    assert result == {
        "ok": True,
        "plan": {
            "added": ["c"],
            "changed": ["b"],
            "updated": [],
            "removed": [],
            "unchanged": [],
            "children": {},
        },
        "config": str(path),
    }
    r.pump()
    assert {sa.inbound.spi for sa in r.core.sad} == {0x1001, 0x2001}
    assert r.core.status_line() == "2 of 2 tunnels up"
    changes = r.core.routes_to_change()
    assert changes[0] == RouteChange(ipaddress.ip_network("10.2.0.0/24"), add=False)
    assert RouteChange(ipaddress.ip_network("10.3.0.0/24"), add=True) in changes
    # Back to IKE: b changes again, c goes away, b is initiated.
    path.write_text(ike_text)
    result = r.core.reload(load_config(path), r.now)
    assert result["plan"] == {
        "added": [],
        "changed": ["b"],
        "updated": [],
        "removed": ["c"],
        "unchanged": [],
        "children": {},
    }
    r.pump()
    assert len(r.core.sad) == 1 and r.status_a()["state"] == "established"
    # Unchanged: nothing happens to the SA.
    (before,) = r.core.sad
    assert r.core.reload(load_config(path), r.now)["plan"]["unchanged"] == ["b"]
    r.pump()
    assert list(r.core.sad) == [before]


def test_reload_refuses_a_new_gateway_section(manual: DaemonCore, tmp_path: Path) -> None:
    path = manual.config.path
    path.write_text(path.read_text().replace("gateway:\n", "gateway:\n  mtu: 1300\n"))
    result = manual.reload(load_config(path), 1.0)
    assert result["ok"] is False and "gateway section changed" in result["error"]
    assert manual.config.gateway.mtu is None


def test_reload_starts_ike_when_the_first_ike_peer_appears(
    manual: DaemonCore, tmp_path: Path
) -> None:
    assert manual.ike is None
    pair_side = side_a(start="respond")
    psk = tmp_path / "c.psk"
    psk.write_text(pair_side.psk + "\n")
    psk.chmod(0o600)
    path = manual.config.path
    extra = pair_side.peer_yaml(psk).replace("name: b", "name: c").replace(B_IP, "192.0.2.3")
    path.write_text(path.read_text() + extra.replace("10.2.0.0/24", "10.4.0.0/24"))
    new = parse_config(path.read_text(), path)
    result = manual.reload(new, 1.0)
    assert result["plan"]["added"] == ["c"] and result["plan"]["unchanged"] == ["b"]
    assert manual.ike is not None and [e["peer"] for e in manual.ike.status()] == ["c"]


def test_random_bytes_is_injectable(manual: DaemonCore) -> None:
    core = DaemonCore(manual.config, 0.0, random_bytes=lambda n: bytes(n))
    assert core.random_bytes(4) == bytes(4)


@pytest.mark.parametrize("cookies", [False, True])
def test_answers_leave_before_their_events_are_applied(tmp_path: Path, cookies: bool) -> None:
    """answer_ike queues the answer with the CHILD_SA not yet installed (the shell sends it
    first); apply_ike installs it."""
    a = side_a(start="respond", cookie_threshold=0 if cookies else None)
    r = CoreRig(tmp_path, a, side_b(start="initiate"))
    r.b.initiate("a", r.now)
    installed_at_answer = []
    step_waiting = []  # the shell's test for processing a message in the turn that read it
    for _ in range(10):
        for d in r.b.datagrams_to_send():
            r.core.from_udp([(frame(d.data, d.marker), d.local)], d.remote, r.now)
        step_waiting.append(r.core.ike_step_waiting(r.now))
        if not r.core.ike_pending():
            break
        ahead = r.core.answer_ike(r.now)  # answers wait ahead of events
        answers = r.core.datagrams_to_send()
        installed_at_answer.append((ahead, len(answers), len(r.core.by_peer.of("b"))))
        r.core.apply_ike(r.now)
        for local, remote, datagrams in answers + r.core.datagrams_to_send():
            for data in datagrams:
                r._sent_by_a(data, local, remote)
    # IKE_SA_INIT (answered with a COOKIE first when cookies are demanded), IKE_AUTH
    init, auth = (False, 1, 0), (True, 1, 0)
    assert installed_at_answer == ([init, init, auth] if cookies else [init, auth])
    # A new request waits for its turn while cookies are demanded (as a flood's); the
    # IKE_AUTH of our half-open SA never does, nor a request to an idle responder.
    assert step_waiting == ([False, False, True, False] if cookies else [True, True, False])
    assert len(r.core.by_peer.of("b")) == 1


def test_key_pairs_made_ahead_for_the_configured_methods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = keyexchange.PreparedKeyPairs()
    monkeypatch.setattr(keyexchange, "PREPARED", pool)
    ike = ("aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha256-x25519-ecp256")
    r = CoreRig(tmp_path, side_a(ike=ike), side_b(ike=ike))
    assert r.core.key_pairs_missing() is False  # nothing wanted yet
    r.core.prepare_key_pairs()
    assert pool.ready == (KEY_EXCHANGE["ecp256"], KEY_EXCHANGE["x25519"])
    r.core.control("down", "b", r.now)
    r.pump()
    r.core.control("up", "b", r.now)  # IKE_SA_INIT takes the ecp256 pair
    assert pool.ready == (KEY_EXCHANGE["x25519"],) and r.core.key_pairs_missing()
    r.pump()
    assert r.status_a()["state"] == "established"
