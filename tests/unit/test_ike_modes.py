"""Transport mode and AH in IKEv2, through two real IkeManagers (tests/unit/ike_pair_support).

* USE_TRANSPORT_MODE (RFC 7296 §1.3.1) is sent per the child's ``mode`` and answered
  only when both sides want transport; the disagreements fail with both modes named.
* AH is negotiated as protocol 2 (integrity, ESN; no ENCR), its keys are integrity keys
  only, rekeyed and deleted as AH, and refused when a NAT is detected (RFC 4302 cannot
  cross one).
* ``encap: auto`` sends real NAT_DETECTION hashes: without a NAT the CHILD_SA travels
  directly over IP (``ChildSaParams.encap`` False).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ipsecd.ah.sa import InboundAhSa, OutboundAhSa
from ipsecd.config import PeerConfig
from ipsecd.ike import events as ev
from ipsecd.ike import payloads as pl
from ipsecd.ike.constants import ExchangeType, NotifyType, ProtocolId
from ipsecd.selectors import TrafficSelector
from tests.unit.ike_pair_support import (
    A_IP,
    B_IP,
    NAT_PUBLIC_IP,
    Child,
    IkePair,
    esp_roundtrip,
    ipv4_packet,
    side_a,
    side_b,
)

HOSTS_A = (f"{A_IP}/32",)
HOSTS_B = (f"{B_IP}/32",)


def transport(**kw: object) -> tuple[dict[str, object], dict[str, object]]:
    """Overrides for both sides: host-to-host selectors, transport mode, ``kw`` on both."""
    a = dict(local_ts=HOSTS_A, remote_ts=HOSTS_B, mode="transport", **kw)
    b = dict(local_ts=HOSTS_B, remote_ts=HOSTS_A, mode="transport", **kw)
    return a, b


def ah(**kw: object) -> dict[str, object]:
    return dict(protocol="ah", esp=("sha256",), encap="auto", **kw)


def pair_of(tmp_path, a: dict[str, object], b: dict[str, object], **kw) -> IkePair:
    return IkePair(tmp_path, side_a(**a), side_b(**b), **kw)


def child(pair: IkePair, side: str) -> ev.ChildSaParams:
    (established,) = pair.established(side)
    return established.child


def failures(pair: IkePair, side: str) -> list[str]:
    return [e.reason for e in pair.of_type(side, ev.NegotiationFailed)]


def notifies(pair: IkePair, exchange: int, response: bool) -> list[int]:
    out = []
    for m in pair.cleartext:
        if m.exchange_type == exchange and m.response == response:
            out += [p.notify_type for p in m.payloads if isinstance(p, pl.Notify)]
    return out


def ah_roundtrip(sender: ev.ChildSaParams, receiver: ev.ChildSaParams) -> bytes | None:
    """Transport-mode AH from the sender's outbound keys to the receiver's inbound ones."""
    assert sender.integ is not None and receiver.integ is not None
    out = OutboundAhSa(sender.spi_out, sender.integ, sender.integ_key_out, sender.esn)
    inbound = InboundAhSa(receiver.spi_in, receiver.integ, receiver.integ_key_in, receiver.esn)
    packet = ipv4_packet(A_IP, B_IP)
    return inbound.decapsulate_transport(out.encapsulate_transport(packet))


# ---- transport mode ------------------------------------------------------------------


def test_transport_mode_is_asked_for_and_answered(tmp_path):
    a, b = transport()
    pair = IkePair(tmp_path, side_a(**a), side_b(**b), start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    assert NotifyType.USE_TRANSPORT_MODE in notifies(pair, ExchangeType.IKE_AUTH, False)
    assert NotifyType.USE_TRANSPORT_MODE in notifies(pair, ExchangeType.IKE_AUTH, True)
    ca, cb = child(pair, "a"), child(pair, "b")
    assert (ca.mode, cb.mode) == ("transport", "transport")
    assert (ca.protocol, ca.encap) == ("esp", True)  # encap: always (the default)
    assert esp_roundtrip(ca, cb, ipv4_packet(A_IP, B_IP)) is not None
    assert pair.status("a")["children"][0]["mode"] == "transport"


def test_tunnel_mode_sends_no_notify(tmp_path):
    pair = IkePair(tmp_path, start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    assert NotifyType.USE_TRANSPORT_MODE not in notifies(pair, ExchangeType.IKE_AUTH, False)
    assert child(pair, "a").mode == child(pair, "b").mode == "tunnel"


def test_we_want_transport_peer_answers_tunnel_fails_with_both_modes(tmp_path):
    a, _ = transport()
    b = dict(local_ts=HOSTS_B, remote_ts=HOSTS_A)  # tunnel mode, same selectors
    pair = pair_of(tmp_path, a, b)
    # b answered in tunnel mode, as RFC 7296 §1.3.1 lets it; a refuses and deletes.
    (reason,) = failures(pair, "a")
    assert reason == (
        "CHILD_SA b with peer b failed: peer b answered the CHILD_SA in tunnel mode (no"
        " USE_TRANSPORT_MODE in its response, RFC 7296 §1.3.1), but esp.mode is transport"
        " here; configure transport mode on the peer too, or mode: tunnel here"
    )
    assert pair.established("a") == []
    assert pair.a.sas == {} and pair.b.sas == {}  # the IKE SA went with it (no childless SA)


def test_peer_asks_tunnel_we_are_transport_refuses(tmp_path):
    _, b = transport()
    a = dict(local_ts=HOSTS_A, remote_ts=HOSTS_B)  # tunnel
    pair = pair_of(tmp_path, a, b)
    (reason_b,) = failures(pair, "b")
    assert "peer a asked for a tunnel-mode CHILD_SA (no USE_TRANSPORT_MODE" in reason_b
    assert "but esp.mode is transport here" in reason_b
    (reason_a,) = failures(pair, "a")
    assert "peer refused the CHILD_SA with NO_PROPOSAL_CHOSEN" in reason_a
    assert "in tunnel mode" in reason_a
    assert pair.established("a") == pair.established("b") == []


def test_create_child_sa_in_transport_mode_and_its_rekey(tmp_path):
    a, b = transport()
    pair = pair_of(tmp_path, a, b)
    pair.record_cleartext()
    first = child(pair, "a")
    pair.a.rekey("b", pair.now)
    pair.pump()
    assert NotifyType.USE_TRANSPORT_MODE in notifies(pair, ExchangeType.CREATE_CHILD_SA, False)
    assert NotifyType.USE_TRANSPORT_MODE in notifies(pair, ExchangeType.CREATE_CHILD_SA, True)
    new_a, new_b = pair.established("a")[-1].child, pair.established("b")[-1].child
    assert new_a.spi_in != first.spi_in
    assert new_a.mode == new_b.mode == "transport"


def test_create_child_sa_mode_mismatch_deletes_the_peers_sa(tmp_path):
    a, b = transport()
    pair = pair_of(tmp_path, a, b)
    # b's operator switches to tunnel mode; a asks for a new transport CHILD_SA.
    peer = pair.b.config.peers[0]
    tunnel_peer = with_child(peer, mode="tunnel")
    pair.b.peers[peer.name] = tunnel_peer
    for sa in pair.b.sas.values():
        sa.peer = tunnel_peer
    pair.a.create_child("b", pair.now)
    pair.pump()
    reason = failures(pair, "a")[-1]
    assert "answered the CHILD_SA in tunnel mode" in reason
    assert len(pair.established("a")) == 1  # the first one stays
    # b installed the tunnel-mode child and got a Delete for it.
    assert len(pair.established("b")) == 2
    (deleted,) = pair.of_type("b", ev.ChildSaDeleted)
    assert deleted.spi_in == pair.established("b")[-1].child.spi_in
    assert pair.status("a")["state"] == "established"


# ---- AH -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_ah_is_negotiated_with_integrity_keys_only(tmp_path, mode: str):
    if mode == "transport":
        a, b = transport(**ah())
    else:
        a, b = ah(), ah()
    pair = IkePair(tmp_path, side_a(**a), side_b(**b), start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    ca, cb = child(pair, "a"), child(pair, "b")
    assert (ca.protocol, ca.mode, ca.encap) == ("ah", mode, False)  # no NAT: raw IP
    assert ca.encr is None and ca.encr_key_in == ca.encr_key_out == b""
    assert ca.integ is not None and ca.integ.name == "sha256" and len(ca.integ_key_in) == 32
    assert (ca.integ_key_in, ca.integ_key_out) == (cb.integ_key_out, cb.integ_key_in)
    assert ah_roundtrip(ca, cb) == ipv4_packet(A_IP, B_IP)
    assert ah_roundtrip(cb, ca) == ipv4_packet(A_IP, B_IP)
    sas = [
        p
        for m in pair.cleartext
        if m.exchange_type == ExchangeType.IKE_AUTH
        for p in m.payloads
        if isinstance(p, pl.SecurityAssociation)
    ]
    assert {p.protocol_id for sa in sas for p in sa.proposals} == {ProtocolId.AH}
    assert pair.status("b")["children"][0]["algorithm"] == "ah-sha256"


def test_ah_rekey_and_delete_name_protocol_ah(tmp_path):
    pair = pair_of(tmp_path, ah(), ah())
    pair.record_cleartext()
    first_a = child(pair, "a")
    pair.a.rekey("b", pair.now)
    pair.pump()
    rekeys = [
        p
        for m in pair.cleartext
        for p in m.payloads
        if isinstance(p, pl.Notify) and p.notify_type == NotifyType.REKEY_SA
    ]
    assert [r.protocol_id for r in rekeys] == [ProtocolId.AH]
    deletes = [p for m in pair.cleartext for p in m.payloads if isinstance(p, pl.Delete)]
    assert deletes and all(d.protocol_id == ProtocolId.AH for d in deletes)
    assert [e.spi_in for e in pair.of_type("a", ev.ChildSaDeleted)] == [first_a.spi_in]
    assert pair.established("a")[-1].child.protocol == "ah"


def test_ah_offered_to_an_esp_peer_is_refused_in_words(tmp_path):
    pair = pair_of(tmp_path, ah(), dict(encap="auto"))
    (reason,) = failures(pair, "b")
    assert "no ESP proposal chosen with peer a: peer offered AH, we are configured for ESP" in (
        reason
    )


def test_ah_is_refused_behind_a_nat(tmp_path):
    b = side_b(remote_address=NAT_PUBLIC_IP, remote_id=A_IP, **ah())
    pair = IkePair(tmp_path, side_a(**ah()), b, start=False)
    pair.net.nat = {(A_IP, 500): (NAT_PUBLIC_IP, 40500), (A_IP, 4500): (NAT_PUBLIC_IP, 40501)}
    pair.a.start(pair.now)
    pair.pump()
    (reason,) = failures(pair, "a")
    assert reason.startswith(
        "AH cannot cross a NAT, and IKE detected one in front of us (RFC 7296 §2.23"
    )
    assert "use protocol: esp with this peer" in reason
    assert pair.established("a") == pair.established("b") == []


def test_ah_child_first_behind_a_nat_fails_alone_and_the_esp_child_comes_up(tmp_path):
    """The first configured child is AH, the second ESP, and IKE finds a NAT: IKE_AUTH
    carries the ESP child, the AH one fails by itself, named; the IKE SA stays."""
    a = side_a(
        encap="auto",
        children=(
            Child("mgmt", ("10.1.9.0/24",), ("10.2.9.0/24",), protocol="ah", esp=("sha256",)),
            Child("lan", ("10.1.0.0/24",), ("10.2.0.0/24",)),
        ),
    )
    b = side_b(
        remote_address=NAT_PUBLIC_IP,
        remote_id=A_IP,
        encap="auto",
        children=(
            Child(
                "mgmt", ("10.2.9.0/24",), ("10.1.9.0/24",), "respond", ("sha256",), protocol="ah"
            ),
            Child("lan", ("10.2.0.0/24",), ("10.1.0.0/24",), "respond"),
        ),
    )
    pair = IkePair(tmp_path, a, b, start=False)
    pair.net.nat = {(A_IP, 500): (NAT_PUBLIC_IP, 40500), (A_IP, 4500): (NAT_PUBLIC_IP, 40501)}
    pair.a.start(pair.now)
    pair.pump()
    assert [e.child.name for e in pair.established("a")] == ["lan"]
    assert [e.child.protocol for e in pair.established("b")] == ["esp"]
    (failed,) = pair.of_type("a", ev.NegotiationFailed)
    assert failed.child == "mgmt" and failed.reason.startswith("AH cannot cross a NAT"), failed
    assert len(pair.a.sas) == len(pair.b.sas) == 1
    assert pair.status("a")["state"] == "established"


def test_responder_refuses_ah_when_the_initiator_forces_udp(tmp_path):
    """A peer that fakes its NAT-D source hash (encap = yes) cannot get AH from us."""
    a = side_a(**ah())
    pair = IkePair(tmp_path, a, side_b(**ah()), start=False)
    # a fakes the hash as encap: always would (a itself allows AH: it detects no NAT).
    peer = pair.a.config.peers[0]
    forcing = dataclasses.replace(peer, encap="always")
    pair.a.peers[peer.name] = forcing
    pair.a.start(pair.now)
    pair.pump()
    (reason,) = failures(pair, "b")
    assert "AH cannot cross a NAT, and IKE detected one in front of peer a" in reason


# ---- encap ----------------------------------------------------------------------------


def test_encap_auto_without_nat_goes_directly_over_ip(tmp_path):
    pair = pair_of(tmp_path, dict(encap="auto"), dict(encap="auto"))
    assert child(pair, "a").encap is False and child(pair, "b").encap is False
    (ike_a,) = pair.of_type("a", ev.IkeSaEstablished)
    assert (ike_a.nat_local, ike_a.nat_remote) == (False, False)


def test_encap_auto_facing_a_forcing_peer_uses_udp(tmp_path):
    pair = pair_of(tmp_path, dict(encap="auto"), {})
    assert child(pair, "a").encap is True  # b fakes its NAT-D hash (encap: always)
    assert child(pair, "b").encap is True  # and encapsulates whatever a says


def test_encap_auto_behind_a_nat_uses_udp(tmp_path):
    b = side_b(remote_address=NAT_PUBLIC_IP, remote_id=A_IP, encap="auto")
    pair = IkePair(tmp_path, side_a(encap="auto"), b, start=False)
    pair.net.nat = {(A_IP, 500): (NAT_PUBLIC_IP, 40500), (A_IP, 4500): (NAT_PUBLIC_IP, 40501)}
    pair.a.start(pair.now)
    pair.pump()
    assert child(pair, "a").encap is True and child(pair, "b").encap is True


def with_child(peer: PeerConfig, **changes: Any) -> PeerConfig:
    """``peer`` with fields of its (first) child replaced."""
    first, *rest = peer.children
    return dataclasses.replace(peer, children=(dataclasses.replace(first, **changes), *rest))


def transport_behind_a_nat(tmp_path, **a_changes: Any) -> IkePair:
    """``a`` behind a NAT names its own address; ``b`` knows only the NAT's.  ``a_changes``
    replace fields of a's child config (what a peer that is not ipsecd may send)."""
    a = side_a(local_ts=HOSTS_A, remote_ts=HOSTS_B, mode="transport")
    b = side_b(
        remote_address=NAT_PUBLIC_IP,
        remote_id=A_IP,
        local_ts=HOSTS_B,
        remote_ts=(f"{NAT_PUBLIC_IP}/32",),
        mode="transport",
    )
    pair = IkePair(tmp_path, a, b, start=False)
    pair.net.nat = {(A_IP, 500): (NAT_PUBLIC_IP, 40500), (A_IP, 4500): (NAT_PUBLIC_IP, 40501)}
    peer = pair.a.config.peers[0]
    pair.a.peers[peer.name] = with_child(peer, **a_changes)
    pair.a.start(pair.now)
    pair.pump()
    return pair


def test_transport_across_a_nat_installs_the_endpoints_each_side_sees(tmp_path):
    """RFC 7296 §2.23.1: each SA covers the two IKE endpoints as that side sees them, and
    checksums get fixed."""
    pair = transport_behind_a_nat(tmp_path)
    ca, cb = child(pair, "a"), child(pair, "b")
    assert [str(t) for t in (*ca.local_ts, *ca.remote_ts)] == [f"{A_IP}/32", f"{B_IP}/32"]
    assert [str(t) for t in (*cb.local_ts, *cb.remote_ts)] == [
        f"{B_IP}/32",
        f"{NAT_PUBLIC_IP}/32",
    ]
    assert ca.nat and cb.nat and ca.mode == cb.mode == "transport"


def test_transport_across_a_nat_still_takes_one_host_a_side(tmp_path):
    pair = transport_behind_a_nat(tmp_path, local_ts=(TrafficSelector.from_prefix("192.0.2.0/24"),))
    (reason,) = failures(pair, "b")
    assert "transport mode takes one address on each side" in reason


# ---- children of one peer in different modes ------------------------------------------


def mixed_children(side: str) -> tuple[Child, ...]:
    """A tunnel-mode ESP child for the sites and a transport-mode AH child for the gateways."""
    sites = ("10.1.0.0/24", "10.2.0.0/24")
    hosts = (f"{A_IP}/32", f"{B_IP}/32")
    mine, theirs = (0, 1) if side == "a" else (1, 0)
    return (
        Child("lan", (sites[mine],), (sites[theirs],), start="respond" if side == "b" else None),
        Child(
            "hosts",
            (hosts[mine],),
            (hosts[theirs],),
            start="respond" if side == "b" else None,
            esp=("sha256",),
            mode="transport",
            protocol="ah",
        ),
    )


@pytest.mark.parametrize("first", ["lan", "hosts"])
def test_tunnel_and_transport_children_of_one_peer(tmp_path, first: str):
    """The first child in IKE_AUTH, the other by CREATE_CHILD_SA, each in its own mode and
    protocol, as both sides' children say (USE_TRANSPORT_MODE only with the transport one)."""
    a_children, b_children = mixed_children("a"), mixed_children("b")
    if first == "hosts":
        a_children = a_children[::-1]
    a = side_a(children=a_children, encap="auto")
    b = side_b(children=b_children, encap="auto")
    pair = IkePair(tmp_path, a, b)
    for side in ("a", "b"):
        got = {e.child.name: e.child for e in pair.established(side)}
        assert set(got) == {"lan", "hosts"}
        assert (got["lan"].mode, got["lan"].protocol) == ("tunnel", "esp")
        assert (got["hosts"].mode, got["hosts"].protocol) == ("transport", "ah")
        assert not got["hosts"].encap and not got["lan"].encap  # no NAT: directly over IP
    ca = {e.child.name: e.child for e in pair.established("a")}
    cb = {e.child.name: e.child for e in pair.established("b")}
    assert ah_roundtrip(ca["hosts"], cb["hosts"]) is not None
    inner = ipv4_packet("10.1.0.5", "10.2.0.5")
    assert esp_roundtrip(ca["lan"], cb["lan"], inner) == inner
    assert failures(pair, "a") == failures(pair, "b") == []
