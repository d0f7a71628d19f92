"""Dynamic peers on the sans-I/O IKE layer: a DNS name resolved by an injected resolver,
``remote_address: any`` learned from the authenticated IKE_AUTH, and the address
following the peer on authenticated input only (RFC 7296 §2.23; strongSwan without MOBIKE).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ipsecd.config.schema import IpAddress
from ipsecd.ike import events as ev
from ipsecd.ike import message as codec
from ipsecd.ike.constants import ExchangeType
from tests.unit.ike_pair_support import (
    A_IP,
    B_IP,
    NAT_PUBLIC_IP,
    IkePair,
    behind_nat,
    messages,
    side_a,
    side_b,
)

NAME = "gw-b.example.org"
OTHER_PUBLIC_IP = "203.0.113.9"  # the NAT's second uplink


class FakeResolver:
    """An injected resolver: answers from a table the test changes, records the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def __call__(self, name: str, version: int) -> Sequence[IpAddress]:
        self.asked.append((name, version))
        return [ipaddress.ip_address(a) for a in self.answers.get(name, [])]


def dns_pair(tmp_path, resolver: FakeResolver) -> IkePair:
    a = side_a(remote_address=NAME, remote_id=B_IP, retry_interval="30s")
    return IkePair(tmp_path, a, side_b(), resolve=resolver)


def test_a_dns_name_is_resolved_at_start_and_the_address_shown(tmp_path):
    resolver = FakeResolver({NAME: [B_IP]})
    pair = dns_pair(tmp_path, resolver)
    assert resolver.asked == [(NAME, 4)]  # in the IP version of local_address
    assert pair.status("a")["state"] == "established"
    assert pair.status("a")["resolved"] == B_IP
    assert pair.status("a")["remote"] == f"{B_IP}:4500"
    (init,) = messages(pair, "a", ExchangeType.IKE_SA_INIT)
    assert init.dst == (B_IP, 500)


def test_a_name_that_does_not_resolve_is_reported_and_retried(tmp_path):
    resolver = FakeResolver({})
    pair = dns_pair(tmp_path, resolver)
    (failed,) = pair.of_type("a", ev.NegotiationFailed)
    assert failed.reason == (
        f"cannot resolve {NAME} to an IPv4 address (local_address {A_IP} is IPv4)"
    )
    assert pair.status("a")["state"] == "connecting" and pair.a.counters["dns_failures"] == 1
    assert messages(pair, "a") == []
    resolver.answers[NAME] = [B_IP]  # the record appears
    pair.advance(31)
    assert len(resolver.asked) == 2  # asked again on the retry
    assert pair.status("a")["state"] == "established"


def test_each_retry_resolves_again_and_follows_a_new_address(tmp_path):
    """The peer moved to another address: the next attempt goes there."""
    resolver = FakeResolver({NAME: ["192.0.2.99"]})  # stale: nobody there
    pair = dns_pair(tmp_path, resolver)
    pair.advance(130)  # the IKE_SA_INIT to the stale address times out
    assert pair.status("a")["state"] == "connecting"
    resolver.answers[NAME] = [B_IP]
    pair.advance(60)
    assert pair.status("a")["state"] == "established"
    assert pair.status("a")["resolved"] == B_IP
    assert {m.dst[0] for m in messages(pair, "a", ExchangeType.IKE_SA_INIT)} == {
        "192.0.2.99",
        B_IP,
    }


def test_the_dns_peer_is_recognised_when_it_initiates(tmp_path):
    """b's peer is a DNS name: b's IKE_SA_INIT to a, and a taking it for that peer."""
    resolver = FakeResolver({"gw-a.example.org": [A_IP]})
    b = side_b(remote_address="gw-a.example.org", remote_id=A_IP, start="initiate")
    pair = IkePair(tmp_path, side_a(start="respond"), b, start=False, resolve=None)
    pair.b.resolve = resolver
    pair.b.start(pair.now)
    pair.pump()
    assert pair.status("a")["state"] == "established"
    assert pair.status("b")["resolved"] == A_IP


# ---- remote_address: any -----------------------------------------------------------------


def any_pair(tmp_path, **b_overrides) -> IkePair:
    """b answers a peer of any address, known by its ID; a is behind a NAT."""
    b = side_b(remote_address="any", remote_id="@site-a.example.org", start=None, **b_overrides)
    return behind_nat(tmp_path, side_a(local_id="@site-a.example.org"), b)


def test_any_learns_the_address_from_the_authenticated_ike_auth(tmp_path):
    pair = any_pair(tmp_path)
    status = pair.status("b")
    assert status["state"] == "established" and status["role"] == "responder"
    assert status["remote"] == f"{NAT_PUBLIC_IP}:40501"
    (child,) = pair.dataplane["b"].inbound.values()
    assert child.remote == (NAT_PUBLIC_IP, 40501)  # ESP goes where the peer is


def test_any_is_told_apart_by_its_identity(tmp_path):
    """Two responder-only peers: the one whose remote_id the initiator presents."""
    other = side_b(
        name="c",
        remote_address="any",
        remote_id="@site-c.example.org",
        start=None,
        remote_ts=("10.3.0.0/24",),
    )
    for presented, expected in (("@site-c.example.org", "c"), ("@site-a.example.org", "a")):
        b = side_b(
            remote_address="any", remote_id="@site-a.example.org", start=None, extra_peers=(other,)
        )
        a = side_a(local_id=presented, remote_ts=("10.2.0.0/24",))
        pair = IkePair(tmp_path / expected, a, b)
        (established,) = pair.of_type("b", ev.IkeSaEstablished)
        assert established.peer == expected


def test_any_never_initiates(tmp_path):
    pair = any_pair(tmp_path, dpd_action="restart")
    try:
        pair.b.initiate("a", pair.now)
    except ValueError as exc:
        assert "remote_address any" in str(exc)
    else:
        raise AssertionError("initiating an any peer must be refused")
    # A dead any-peer is not restarted by us: it comes back to us.
    pair.net.drop = lambda sent: True
    pair.advance(300)
    assert pair.b.counters.get("dpd_restart") == 1
    inits = messages(pair, "b", ExchangeType.IKE_SA_INIT)
    assert [m for m in inits if not codec.parse_header(m.data).response] == []


def test_any_follows_a_nat_rebinding_on_an_authenticated_message(tmp_path):
    pair = any_pair(tmp_path)
    pair.net.nat[(A_IP, 4500)] = (OTHER_PUBLIC_IP, 41000)  # the NAT's other uplink
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    (moved,) = pair.of_type("b", ev.PeerAddressChanged)
    assert moved.remote == (OTHER_PUBLIC_IP, 41000)
    assert pair.status("b")["remote"] == f"{OTHER_PUBLIC_IP}:41000"


def test_unauthenticated_input_never_moves_an_any_peer(tmp_path):
    pair = any_pair(tmp_path)
    (auth,) = messages(pair, "a", ExchangeType.IKE_AUTH)
    forged = bytearray(auth.data)
    forged[-1] ^= 1
    pair.inject("b", bytes(forged), src=(OTHER_PUBLIC_IP, 50000))
    assert pair.of_type("b", ev.PeerAddressChanged) == []
    assert pair.status("b")["remote"] == f"{NAT_PUBLIC_IP}:40501"


# ---- authentic ESP from a new endpoint (the data plane verified it) --------------------------


def test_authentic_esp_moves_a_peer_behind_a_nat(tmp_path):
    pair = any_pair(tmp_path)
    (child,) = pair.dataplane["b"].inbound.values()
    pair.b.peer_moved("a", child.spi_in, (OTHER_PUBLIC_IP, 41000), pair.now)
    pair.pump()
    (moved,) = pair.of_type("b", ev.PeerAddressChanged)
    assert moved.remote == (OTHER_PUBLIC_IP, 41000)
    assert pair.b.ike_sa("a").remote == (OTHER_PUBLIC_IP, 41000)


def test_esp_does_not_move_a_peer_known_not_to_be_behind_a_nat(tmp_path):
    pair = IkePair(tmp_path)
    # ipsecd forces UDP encapsulation with a fake NAT hash (as strongSwan's encap=yes), so
    # its peers look NATed; a peer whose hashes matched is not moved by ESP.
    pair.b.ike_sa("a").nat_remote = False
    (child,) = pair.dataplane["b"].inbound.values()
    pair.b.peer_moved("a", child.spi_in, (OTHER_PUBLIC_IP, 41000), pair.now)
    pair.pump()
    assert pair.of_type("b", ev.PeerAddressChanged) == []
    assert pair.b.ike_sa("a").remote == (A_IP, 4500)
