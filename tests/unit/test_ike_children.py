"""Several CHILD_SAs per peer, both roles (RFC 7296 §1.3.1, §2.9), on the sans-I/O IKE layer.

Side ``a`` initiates: its first child goes into IKE_AUTH, the others follow with
CREATE_CHILD_SA; side ``b`` answers each one with the child its selectors fit, that
child's proposals and lifetimes.  Narrowing that leaves traffic uncovered is reported.
"""

from __future__ import annotations

from pathlib import Path

from ipsecd.config import Config
from ipsecd.ike import events as ev
from ipsecd.ike.constants import ExchangeType
from ipsecd.selectors import TrafficSelector, format_prefixes
from tests.unit.ike_pair_support import (
    Child,
    IkePair,
    Side,
    build_config,
    esp_roundtrip,
    ipv4_packet,
    messages,
    side_a,
    side_b,
)

LAN_A, LAN_B = ("10.1.0.0/24",), ("10.2.0.0/24",)
DMZ_A, DMZ_B = ("10.1.1.0/24",), ("10.2.1.0/24",)


def a_children(*, dmz_start: str = "initiate", lan_start: str = "initiate") -> tuple[Child, ...]:
    return (
        Child("lan", LAN_A, LAN_B, start=lan_start),
        Child("dmz", DMZ_A, DMZ_B, start=dmz_start, esp=("aes128gcm16",)),
    )


def b_children() -> tuple[Child, ...]:
    return (
        Child("lan", LAN_B, LAN_A, start="respond"),
        Child("dmz", DMZ_B, DMZ_A, start="respond", esp=("aes128gcm16",)),
    )


def pair_of(tmp_path: Path, a: tuple[Child, ...], b: tuple[Child, ...], **kw) -> IkePair:
    return IkePair(tmp_path, side_a(children=a, **kw), side_b(children=b))


def installed(pair: IkePair, side: str) -> dict[str, ev.ChildSaParams]:
    """The installed CHILD_SAs of ``side`` by configured child name."""
    return {p.name: p for p in pair.dataplane[side].inbound.values()}


def ts(*prefixes: str) -> tuple[TrafficSelector, ...]:
    return tuple(TrafficSelector.from_prefix(p) for p in prefixes)


def test_two_children_first_in_ike_auth_the_other_with_create_child_sa(tmp_path):
    pair = pair_of(tmp_path, a_children(), b_children())
    a, b = installed(pair, "a"), installed(pair, "b")
    assert set(a) == set(b) == {"lan", "dmz"}
    # One IKE_AUTH, one CREATE_CHILD_SA, on one IKE SA.
    assert len(messages(pair, "a", ExchangeType.IKE_AUTH)) == 1
    assert len(messages(pair, "a", ExchangeType.CREATE_CHILD_SA)) == 1
    assert len(pair.a.sas) == len(pair.b.sas) == 1
    assert (a["lan"].local_ts, a["lan"].remote_ts) == (ts(*LAN_A), ts(*LAN_B))
    assert (a["dmz"].local_ts, a["dmz"].remote_ts) == (ts(*DMZ_A), ts(*DMZ_B))
    assert (b["dmz"].local_ts, b["dmz"].remote_ts) == (ts(*DMZ_B), ts(*DMZ_A))
    # Each child with its own proposals, and keys that work both ways.
    assert a["lan"].encr.name == "aes256gcm16" and a["dmz"].encr.name == "aes128gcm16"
    for name, (src, dst) in {
        "lan": ("10.1.0.5", "10.2.0.7"),
        "dmz": ("10.1.1.5", "10.2.1.7"),
    }.items():
        inner, back = ipv4_packet(src, dst), ipv4_packet(dst, src)
        assert esp_roundtrip(a[name], b[name], inner) == inner
        assert esp_roundtrip(b[name], a[name], back) == back
    status = pair.status("a")
    assert sorted(c["name"] for c in status["children"]) == ["dmz", "lan"]


def test_the_responder_picks_the_child_the_selectors_fit_not_the_first(tmp_path):
    """Only a's dmz initiates: b answers with its dmz config (proposals, selectors)."""
    pair = pair_of(tmp_path, a_children(lan_start="respond"), b_children())
    assert set(installed(pair, "a")) == set(installed(pair, "b")) == {"dmz"}
    assert installed(pair, "b")["dmz"].encr.name == "aes128gcm16"
    assert messages(pair, "a", ExchangeType.CREATE_CHILD_SA) == []


def test_each_child_has_its_own_proposals_at_the_responder(tmp_path):
    """b's dmz accepts aes128gcm16 only: a's lan proposal for dmz's selectors fails, the
    IKE SA and the other child stay, and the failure names the child."""
    a = (
        Child("lan", LAN_A, LAN_B),
        Child("dmz", DMZ_A, DMZ_B, esp=("aes256gcm16",)),
    )
    pair = pair_of(tmp_path, a, b_children())
    assert set(installed(pair, "a")) == {"lan"}
    (failed,) = pair.of_type("a", ev.NegotiationFailed)
    assert failed.child == "dmz" and "NO_PROPOSAL_CHOSEN" in failed.reason
    assert pair.status("a")["state"] == "established"


def test_a_failed_first_child_keeps_the_ike_sa_for_the_others(tmp_path):
    a = (
        Child("lan", LAN_A, ("10.9.0.0/24",)),  # b has no such child: TS_UNACCEPTABLE
        Child("dmz", DMZ_A, DMZ_B, esp=("aes128gcm16",)),
    )
    pair = pair_of(tmp_path, a, b_children())
    assert set(installed(pair, "a")) == set(installed(pair, "b")) == {"dmz"}
    assert [e.child for e in pair.of_type("a", ev.NegotiationFailed)] == ["lan"]
    assert pair.status("a")["state"] == "established"


def test_rekey_keeps_each_child_its_name_and_proposals(tmp_path):
    pair = pair_of(tmp_path, a_children(), b_children())
    before = installed(pair, "a")
    pair.a.rekey("b", pair.now)
    pair.pump()
    after = installed(pair, "a")
    assert set(after) == {"lan", "dmz"}
    assert {n: p.spi_in for n, p in after.items()} != {n: p.spi_in for n, p in before.items()}
    assert after["dmz"].encr.name == "aes128gcm16" and after["lan"].encr.name == "aes256gcm16"
    assert len(pair.dataplane["a"].inbound) == len(pair.dataplane["b"].inbound) == 2


def test_child_lifetimes_are_per_child(tmp_path):
    a = (
        Child("lan", LAN_A, LAN_B),
        Child("dmz", DMZ_A, DMZ_B, esp=("aes128gcm16",)),
    )
    pair = IkePair(
        tmp_path,
        side_a(children=a, esp_rekey_time="10m", esp_rand_time="0s"),
        side_b(children=b_children()),
    )
    sa = pair.a.ike_sa("b")
    assert sa is not None
    rekey = {c.name: c.rekey_at for c in sa.children.values()}
    assert rekey["lan"] == rekey["dmz"] == pair.now + 600


def test_narrowing_that_leaves_traffic_uncovered_is_reported(tmp_path):
    a = (Child("lan", ("10.1.0.0/24",), ("10.2.0.0/16",)),)
    b = (Child("lan", ("10.2.0.0/24",), ("10.1.0.0/24",), start="respond"),)
    pair = pair_of(tmp_path, a, b)
    (narrowed,) = pair.of_type("a", ev.ChildSaNarrowed)
    assert narrowed.child == "lan" and narrowed.local_uncovered == ()
    assert format_prefixes(narrowed.remote_uncovered) == (
        "10.2.1.0/24, 10.2.2.0/23, 10.2.4.0/22, 10.2.8.0/21, 10.2.16.0/20, 10.2.32.0/19,"
        " 10.2.64.0/18, 10.2.128.0/17"
    )
    assert pair.a.counters["child_sa_narrowed"] == 1
    assert pair.of_type("b", ev.ChildSaNarrowed) == []  # the responder narrowed, as allowed


def test_an_up_for_an_established_ike_sa_creates_only_the_missing_children(tmp_path):
    pair = pair_of(tmp_path, a_children(dmz_start="trap"), b_children())
    assert set(installed(pair, "a")) == {"lan"}
    pair.a.initiate("b", pair.now, on_demand=True, children=("dmz",))  # its first packet
    pair.pump()
    assert set(installed(pair, "a")) == {"lan", "dmz"}
    pair.a.initiate("b", pair.now, children=("lan", "dmz"))  # nothing missing: no exchange
    assert pair.pump() == 0
    assert len(pair.dataplane["a"].inbound) == 2


def test_reload_adds_and_removes_one_child_leaving_the_ike_sa_and_the_other(tmp_path):
    pair = pair_of(tmp_path, a_children(), b_children())
    ike = pair.a.ike_sa("b")
    assert ike is not None
    lan = installed(pair, "a")["lan"].spi_in
    web_a = Child("web", ("10.1.2.0/24",), ("10.2.2.0/24",))
    web_b = Child("web", ("10.2.2.0/24",), ("10.1.2.0/24",), start="respond")
    pair.b.reconfigure(_config(tmp_path, side_b(children=(*b_children(), web_b)), "b"), pair.now)
    new_a = _config(tmp_path, side_a(children=(a_children()[0], web_a)), "a")
    plan = pair.a.reconfigure(new_a, pair.now)
    assert plan["updated"] == ["b"] and plan["changed"] == []
    assert plan["children"] == {
        "b": {"added": ["web"], "changed": [], "removed": ["dmz"], "unchanged": ["lan"]}
    }
    pair.a.initiate("b", pair.now, children=("web",))  # what the daemon core does
    pair.pump()
    assert pair.a.ike_sa("b") is ike  # the same IKE SA
    assert set(installed(pair, "a")) == set(installed(pair, "b")) == {"lan", "web"}
    assert installed(pair, "a")["lan"].spi_in == lan  # untouched
    deleted = pair.of_type("a", ev.ChildSaDeleted)
    assert [d.name for d in deleted] == ["dmz"]


def _config(tmp_path: Path, side: Side, label: str) -> Config:
    """A side's config rewritten where IkePair wrote it (same PSK file, same auth)."""
    return build_config(side, tmp_path / label, label)


def test_reload_changing_a_child_replaces_it_on_the_same_ike_sa(tmp_path):
    pair = pair_of(tmp_path, a_children(), b_children())
    ike = pair.a.ike_sa("b")
    before = installed(pair, "a")
    lan, dmz = a_children()
    faster = Child("dmz", dmz.local_ts, dmz.remote_ts, esp=("aes128gcm16", "aes256gcm16"))
    plan = pair.a.reconfigure(_config(tmp_path, side_a(children=(lan, faster)), "a"), pair.now)
    assert plan["children"]["b"]["changed"] == ["dmz"]
    pair.a.initiate("b", pair.now, children=("dmz",))  # queued behind the Delete
    pair.pump()
    after = installed(pair, "a")
    assert pair.a.ike_sa("b") is ike and set(after) == {"lan", "dmz"}
    assert after["lan"].spi_in == before["lan"].spi_in
    assert after["dmz"].spi_in != before["dmz"].spi_in


def test_close_action_is_per_child(tmp_path):
    """b deletes one CHILD_SA of each of a's children: lan (close_action start) is created
    again, dmz (none) stays down; the IKE SA and lan's peer are untouched."""
    lan, dmz = a_children()
    dmz = Child(dmz.name, dmz.local_ts, dmz.remote_ts, esp=dmz.esp, close_action="none")
    pair = pair_of(tmp_path, (lan, dmz), b_children())
    ike = pair.a.ike_sa("b")
    before = installed(pair, "a")
    b_sa = pair.b.ike_sa("a")
    assert b_sa is not None
    for child in list(b_sa.children.values()):
        pair.b.delete_child("a", child.spi_in, pair.now)
        pair.pump()
    after = installed(pair, "a")
    assert set(after) == {"lan"} and after["lan"].spi_in != before["lan"].spi_in
    assert pair.a.ike_sa("b") is ike
    closed = sorted((c.what, c.child, c.action) for c in pair.of_type("a", ev.PeerClosed))
    assert closed == [("child-sa", "dmz", "none"), ("child-sa", "lan", "start")]
    assert "(child " in pair.status("a")["last_event"]["message"]


def test_the_ike_sa_close_action_follows_the_children(tmp_path):
    lan, dmz = a_children()
    trap_only = (
        Child(lan.name, lan.local_ts, lan.remote_ts, close_action="trap"),
        Child(dmz.name, dmz.local_ts, dmz.remote_ts, esp=dmz.esp, close_action="none"),
    )
    config = _config(tmp_path, side_a(children=trap_only), "x")
    (peer,) = config.peers
    assert peer.close_action == "trap"
    config = _config(tmp_path, side_a(children=a_children()), "y")
    assert config.peers[0].close_action == "start"  # initiate children: start
