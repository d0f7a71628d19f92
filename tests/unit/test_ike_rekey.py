"""Rekeying between two in-memory IkeManagers (RFC 7296 §1.3.2, §1.3.3, §2.8, §2.8.1, §2.18).

A fake data plane follows the events of each side the way ``daemon/ike_glue.py``
and ``dataplane/sad.py`` do (inbound by SPI, newest active outbound sends) and,
after every single datagram, checks make-before-break: the SPI each side sends
with is an inbound SA on the other side.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ipsecd.config.schema import (
    AuthConfig,
    ChildLifetime,
    Config,
    GatewayConfig,
    Identity,
    IkeLifetime,
    LogConfig,
    PeerConfig,
)
from ipsecd.crypto import keyexchange
from ipsecd.crypto.proposals import parse_proposal
from ipsecd.ike import events as ev
from ipsecd.ike.child import ChildState
from ipsecd.ike.manager import IkeManager, seq_rekey_threshold
from ipsecd.ike.sa import IkeState, RetransmitPolicy
from ipsecd.selectors import TrafficSelector

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
NET_A, NET_B = "10.1.0.0/24", "10.2.0.0/24"
NO_REKEY = ChildLifetime(rekey_time=0, life_time=0, rand_time=0)
NO_IKE_REKEY = IkeLifetime(rekey_time=0, rand_time=0)


def peer(
    name: str,
    local: str,
    remote: str,
    local_ts: str,
    remote_ts: str,
    start: str,
    esp: str = "aes256gcm16",
    ike: str = "aes256gcm16-prfsha256-x25519",
    child_lifetime: ChildLifetime = NO_REKEY,
    ike_lifetime: IkeLifetime = NO_IKE_REKEY,
) -> PeerConfig:
    return PeerConfig(
        name=name,
        remote_address=ipaddress.ip_address(remote),
        remote_port=500,
        local_address=ipaddress.ip_address(local),
        start=start,
        local_ts=(TrafficSelector.from_prefix(local_ts),),
        remote_ts=(TrafficSelector.from_prefix(remote_ts),),
        ike_proposals=(parse_proposal(ike, "ike"),),
        esp_proposals=(parse_proposal(esp, "esp"),),
        auth=AuthConfig(
            psk=b"rekey-test-psk",
            psk_file=Path("/dev/null"),
            local_id=Identity.parse(local),
            remote_id=Identity.parse(remote),
        ),
        manual=None,
        ike_lifetime=ike_lifetime,
        child_lifetime=child_lifetime,
    )


def config(p: PeerConfig) -> Config:
    gateway = GatewayConfig(
        tun="ipsec0",
        mtu=None,
        addresses=(),
        listen=(p.local_address,),
        port=4500,
        ike_port=500,
        control_socket=Path("/run/ipsecd/control"),
        metrics=None,
    )
    return Config(path=Path("/dev/null"), log=LogConfig(), gateway=gateway, peers=(p,))


class FakeDataPlane:
    """What sad.py keeps: inbound SAs by SPI, outbound SAs newest first."""

    def __init__(self) -> None:
        self.inbound: dict[int, ev.ChildSaParams] = {}
        self.outbound: list[int] = []  # spi_in of SAs sending, newest first
        self.installed = 0
        self.removed = 0

    def apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.ChildSaEstablished):
            self.inbound[event.child.spi_in] = event.child
            self.installed += 1
            if event.outbound_active:
                self.outbound.insert(0, event.child.spi_in)
        elif isinstance(event, ev.ChildSaOutboundActivated):
            assert event.spi_in in self.inbound
            self.outbound.insert(0, event.spi_in)
        elif isinstance(event, ev.ChildSaDeleted):
            self.inbound.pop(event.spi_in, None)
            self.outbound = [s for s in self.outbound if s != event.spi_in]
            self.removed += 1

    def sending_spi(self) -> int | None:
        """The outbound SPI packets go out with right now."""
        return self.inbound[self.outbound[0]].spi_out if self.outbound else None


class ScriptedNonces:
    """The managers' randomness: scripted 32-octet nonces while any are left, else urandom."""

    def __init__(self) -> None:
        self.nonces: Iterator[bytes] = iter(())

    def __call__(self, n: int) -> bytes:
        scripted = next(self.nonces, None) if n == 32 else None
        return scripted if scripted is not None else os.urandom(n)


class Pair:
    """Two managers wired back to back with a fake clock."""

    def __init__(
        self,
        lifetime_a: ChildLifetime = NO_REKEY,
        lifetime_b: ChildLifetime = NO_REKEY,
        ike_a: IkeLifetime = NO_IKE_REKEY,
        ike_b: IkeLifetime = NO_IKE_REKEY,
        esp: str = "aes256gcm16",
    ) -> None:
        self.now = 1000.0
        policy = RetransmitPolicy(initial=0.5, max_retransmits=3, retry_pause=5.0)
        pa = peer("b", A_IP, B_IP, NET_A, NET_B, "initiate", esp, child_lifetime=lifetime_a,
                  ike_lifetime=ike_a)  # fmt: skip
        pb = peer("a", B_IP, A_IP, NET_B, NET_A, "respond", esp, child_lifetime=lifetime_b,
                  ike_lifetime=ike_b)  # fmt: skip
        self.random = ScriptedNonces()
        self.a = IkeManager(config(pa), self.now, policy=policy, random_bytes=self.random)
        self.b = IkeManager(config(pb), self.now, policy=policy, random_bytes=self.random)
        self.dp = {id(self.a): FakeDataPlane(), id(self.b): FakeDataPlane()}
        self.events: list[tuple[str, ev.Event]] = []
        self.checking = False

    @property
    def dp_a(self) -> FakeDataPlane:
        return self.dp[id(self.a)]

    @property
    def dp_b(self) -> FakeDataPlane:
        return self.dp[id(self.b)]

    def _drain_events(self) -> None:
        for name, mgr in (("a", self.a), ("b", self.b)):
            while (event := mgr.next_event()) is not None:
                self.events.append((name, event))
                self.dp[id(mgr)].apply(event)

    def check_make_before_break(self) -> None:
        if not self.checking:
            return  # IKE_AUTH: the responder installs before the initiator, as everywhere
        for sender, receiver in ((self.dp_a, self.dp_b), (self.dp_b, self.dp_a)):
            spi = sender.sending_spi()
            if spi is not None:
                assert spi in receiver.inbound, "ESP would hit an unknown SPI"

    def pump(self, limit: int = 200) -> None:
        """Deliver datagrams one at a time until both sides are quiet."""
        self._drain_events()
        for _ in range(limit):
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                for d in src.datagrams_to_send():
                    moved = True
                    dst.receive_datagram(d.data, d.remote, d.local, self.now)
                    self._drain_events()
                    self.check_make_before_break()
            if not moved:
                return
        raise AssertionError("datagrams kept flowing")

    def exchange_crosswise(self) -> None:
        """Both sides have a request queued: deliver both requests before any response."""
        out_a, out_b = self.a.datagrams_to_send(), self.b.datagrams_to_send()
        assert len(out_a) == 1 and len(out_b) == 1
        self.b.receive_datagram(out_a[0].data, out_a[0].remote, out_a[0].local, self.now)
        self.a.receive_datagram(out_b[0].data, out_b[0].remote, out_b[0].local, self.now)
        self._drain_events()
        self.check_make_before_break()
        self.pump()

    def up(self) -> None:
        self.a.start(self.now)
        self.pump()
        assert self.dp_a.inbound and self.dp_b.inbound
        self.checking = True

    def run(self, seconds: float) -> None:
        """Advance the clock, firing timers and delivering everything in between."""
        end = self.now + seconds
        while True:
            times = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            nxt = min(times) if times else None
            if nxt is None or nxt > end:
                self.now = end
                return
            self.now = max(self.now, nxt)
            for mgr in (self.a, self.b):
                when = mgr.get_timer()
                if when is not None and when <= self.now:
                    mgr.handle_timer(self.now)
            self.pump()

    def children(self, mgr: IkeManager) -> list:
        sa = mgr.ike_sa(mgr.config.peers[0].name)
        assert sa is not None
        return list(sa.children.values())

    def counter(self, mgr: IkeManager, name: str) -> int:
        return mgr.counters.get(name, 0)

    def assert_one_pair(self) -> None:
        ca, cb = self.children(self.a), self.children(self.b)
        assert len(ca) == 1 and len(cb) == 1, (ca, cb)
        assert ca[0].state is ChildState.INSTALLED and cb[0].state is ChildState.INSTALLED
        assert (ca[0].spi_in, ca[0].spi_out) == (cb[0].spi_out, cb[0].spi_in)
        assert set(self.dp_a.inbound) == {ca[0].spi_in}
        assert set(self.dp_b.inbound) == {cb[0].spi_in}
        assert self.dp_a.sending_spi() == cb[0].spi_in
        assert self.dp_b.sending_spi() == ca[0].spi_in


def _keys_match(pair: Pair) -> None:
    """The surviving pair's keys are mirror images (same KEYMAT on both sides)."""
    (ca,), (cb,) = pair.children(pair.a), pair.children(pair.b)
    a, b = pair.dp_a.inbound[ca.spi_in], pair.dp_b.inbound[cb.spi_in]
    assert a.encr_key_out == b.encr_key_in and a.encr_key_in == b.encr_key_out


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("esp", ["aes256gcm16", "aes128-sha256-x25519", "aes128gcm16-ecp256"])
def test_child_rekey_by_either_side(initiator: str, esp: str) -> None:
    pair = Pair(esp=esp)
    pair.up()
    (old_a,) = pair.children(pair.a)
    mgr = pair.a if initiator == "a" else pair.b
    mgr.rekey(mgr.config.peers[0].name, pair.now)
    pair.pump()
    pair.assert_one_pair()
    _keys_match(pair)
    (new_a,) = pair.children(pair.a)
    assert new_a.spi_in != old_a.spi_in
    assert pair.counter(pair.a, "child_sa_rekeyed") == 1
    assert pair.counter(pair.b, "child_sa_rekeyed") == 1
    kinds = [(side, type(e).__name__) for side, e in pair.events]
    assert kinds.count(("a", "ChildSaEstablished")) == 2
    assert kinds.count(("a", "ChildSaDeleted")) == 1
    assert kinds.count(("b", "ChildSaDeleted")) == 1
    responder = "b" if initiator == "a" else "a"
    # The rekey responder started sending on the new SA only when the old one was deleted.
    assert (responder, "ChildSaOutboundActivated") in kinds
    assert not [e for _, e in pair.events if isinstance(e, ev.NegotiationFailed)]


def test_pfs_rekey_uses_a_fresh_key_exchange(monkeypatch: pytest.MonkeyPatch) -> None:

    calls = []
    real = keyexchange.new

    def spy(group):
        calls.append(group.name)
        return real(group)

    pair = Pair(esp="aes128-sha256-ecp256")
    pair.up()
    monkeypatch.setattr(keyexchange, "new", spy)
    pair.a.rekey("b", pair.now)
    pair.pump()
    pair.assert_one_pair()
    assert calls == ["ecp256", "ecp256"]  # KEi and KEr of the CREATE_CHILD_SA


def test_time_based_rekeys_keep_one_pair_and_never_break() -> None:
    lifetime = ChildLifetime(rekey_time=10, life_time=11, rand_time=2)
    pair = Pair(lifetime, lifetime)
    pair.up()
    pair.run(100)
    pair.assert_one_pair()
    rekeys = pair.counter(pair.a, "child_sa_rekeyed")
    assert rekeys >= 9, rekeys
    assert pair.counter(pair.b, "child_sa_rekeyed") == rekeys
    assert pair.counter(pair.a, "child_sa_expired") == 0
    assert pair.dp_a.installed - pair.dp_a.removed == 1


def test_jitter_comes_from_rand_time() -> None:
    lifetime = ChildLifetime(rekey_time=100, life_time=110, rand_time=30)
    starts = set()
    for _ in range(5):
        pair = Pair(lifetime, NO_REKEY)
        pair.up()
        (child,) = pair.children(pair.a)
        assert pair.now + 70 <= child.rekey_at <= pair.now + 100
        assert child.expire_at == pytest.approx(pair.now + 110)
        starts.add(round(child.rekey_at - pair.now, 3))
    assert len(starts) > 1


def test_simultaneous_rekey_requests_cross() -> None:
    """Both requests are on the wire before either response (§2.8.1): one pair remains."""
    for _ in range(8):  # nonces are random: both outcomes of the comparison happen
        pair = Pair()
        pair.up()
        pair.a.rekey("b", pair.now)
        pair.b.rekey("a", pair.now)
        pair.exchange_crosswise()
        pair.assert_one_pair()
        _keys_match(pair)
        assert pair.counter(pair.a, "child_rekey_collisions") == 1
        assert pair.counter(pair.b, "child_rekey_collisions") == 1
        assert pair.dp_a.installed - pair.dp_a.removed == 1
        assert pair.dp_b.installed - pair.dp_b.removed == 1
        assert not [e for _, e in pair.events if isinstance(e, ev.NegotiationFailed)]


def test_simultaneous_rekey_nonce_rule_is_exact() -> None:
    """The SA of the exchange holding the lowest nonce is the redundant one (octet order)."""
    pair = Pair()
    pair.up()
    pair.random.nonces = iter([b"\x05" * 32, b"\x01" + b"\xff" * 31, b"\x09" * 32, b"\x07" * 32])
    pair.a.rekey("b", pair.now)  # Ni(A) = 05..
    pair.b.rekey("a", pair.now)  # Ni(B) = 01ff.. : the lowest -> B's exchange is redundant
    pair.exchange_crosswise()  # B answers A with Nr 09.., A answers B with Nr 07..
    pair.assert_one_pair()
    (survivor,) = pair.children(pair.a)
    created_by_a = [
        e.child.spi_in
        for side, e in pair.events
        if side == "a" and isinstance(e, ev.ChildSaEstablished) and e.outbound_active
    ]
    assert survivor.spi_in == created_by_a[-1]  # A initiated the surviving exchange


def test_rekey_of_a_replaced_sa_gets_temporary_failure() -> None:
    """A's request arrives after B finished its own rekey: refused, no duplicate."""
    pair = Pair()
    pair.up()
    pair.b.rekey("a", pair.now)
    req_b = pair.b.datagrams_to_send()
    pair.a.rekey("b", pair.now)
    req_a = pair.a.datagrams_to_send()
    # B's request and A's answer first, then A's request (delayed on the wire).
    pair.a.receive_datagram(req_b[0].data, req_b[0].remote, req_b[0].local, pair.now)
    for d in pair.a.datagrams_to_send():
        pair.b.receive_datagram(d.data, d.remote, d.local, pair.now)
    pair.b.receive_datagram(req_a[0].data, req_a[0].remote, req_a[0].local, pair.now)
    pair._drain_events()
    pair.pump()
    pair.run(5)
    pair.assert_one_pair()
    assert pair.counter(pair.b, "child_sa_rekeyed") == 1


def test_simultaneous_time_rekeys_without_jitter() -> None:
    lifetime = ChildLifetime(rekey_time=5, life_time=6, rand_time=0)
    pair = Pair(lifetime, lifetime)
    pair.up()
    pair.run(60)
    pair.assert_one_pair()
    assert pair.counter(pair.a, "child_sa_rekeyed") >= 10


def test_hard_lifetime_deletes_when_rekey_is_impossible() -> None:
    lifetime = ChildLifetime(rekey_time=10, life_time=12, rand_time=0)
    pair = Pair(lifetime, NO_REKEY, esp="aes256gcm16")
    pair.up()
    # B stops accepting anything but deletes: make the rekey fail with NO_PROPOSAL_CHOSEN.
    b_peer = pair.b.peers["a"]
    pair.b.peers["a"] = replace(b_peer, esp_proposals=(parse_proposal("aes128-sha256", "esp"),))
    sa_b = pair.b.ike_sa("a")
    sa_b.peer = pair.b.peers["a"]
    pair.checking = False  # a plain Delete, no make-before-break
    pair.run(13)
    assert pair.counter(pair.a, "child_sa_expired") == 1
    assert pair.children(pair.a) == [] and pair.children(pair.b) == []
    assert not pair.dp_a.inbound and not pair.dp_b.inbound


def test_volume_and_sequence_limits_start_a_rekey() -> None:
    lifetime = ChildLifetime(rekey_time=0, life_time=0, rand_time=0, rekey_bytes=1000)
    pair = Pair(lifetime, NO_REKEY)
    pair.up()
    (child,) = pair.children(pair.a)
    pair.a.child_usage("b", child.spi_in, 999, 5, pair.now)
    pair.pump()
    assert pair.counter(pair.a, "child_sa_rekeyed") == 0
    pair.a.child_usage("b", child.spi_in, 1000, 6, pair.now)
    pair.pump()
    assert pair.counter(pair.a, "child_sa_rekeyed") == 1
    (child,) = pair.children(pair.a)
    pair.a.child_usage("b", child.spi_in, 0, 0, pair.now, seq_out=seq_rekey_threshold(False))
    pair.pump()
    assert pair.counter(pair.a, "child_sa_rekeyed") == 2
    (child,) = pair.children(pair.b)
    pair.checking = False  # a plain Delete, no make-before-break
    pair.b.child_usage("a", child.spi_in, 0, 0, pair.now, seq_out=2**32 - 1)
    pair.pump()
    assert pair.counter(pair.b, "child_sa_sequence_exhausted") == 1
    assert pair.children(pair.b) == []
    assert seq_rekey_threshold(False) < 2**32 - 2**28
    assert seq_rekey_threshold(True) > 2**32


def test_unknown_spi_usage_is_ignored() -> None:
    pair = Pair()
    pair.up()
    pair.a.child_usage("b", 0x12345678, 10**12, 10**9, pair.now, seq_out=2**32 - 1)
    pair.pump()
    pair.assert_one_pair()


# ---- IKE SA rekey ------------------------------------------------------------------


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ike_rekey_moves_children(initiator: str) -> None:
    pair = Pair()
    pair.up()
    old_a, old_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    children_before = [c.spi_in for c in pair.children(pair.a)]
    mgr = pair.a if initiator == "a" else pair.b
    mgr.rekey_ike(mgr.config.peers[0].name, pair.now)
    pair.pump()
    new_a, new_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    assert new_a is not old_a and new_b is not old_b
    assert new_a.state is IkeState.ESTABLISHED and new_b.state is IkeState.ESTABLISHED
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert new_a.initiator is (initiator == "a") and new_b.initiator is (initiator == "b")
    assert not old_a.alive and not old_b.alive
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    assert [c.spi_in for c in pair.children(pair.a)] == children_before
    assert pair.counter(pair.a, "ike_sa_rekeyed") == 1
    assert pair.counter(pair.b, "ike_sa_rekeyed") == 1
    assert pair.dp_a.removed == 0 and pair.dp_b.removed == 0  # no CHILD_SA touched
    # The new IKE SA works: a CHILD_SA rekey and a liveness check over it.
    pair.b.rekey("a", pair.now)
    pair.pump()
    pair.assert_one_pair()
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    assert new_a.alive and new_b.alive


def test_periodic_ike_and_child_rekeys_together() -> None:
    child = ChildLifetime(rekey_time=7, life_time=8, rand_time=1)
    ike = IkeLifetime(rekey_time=11, rand_time=2)
    pair = Pair(child, child, ike, ike)
    pair.up()
    pair.run(120)
    pair.assert_one_pair()
    assert pair.counter(pair.a, "ike_sa_rekeyed") >= 8
    assert pair.counter(pair.a, "child_sa_rekeyed") >= 12
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    assert not [e for _, e in pair.events if isinstance(e, ev.NegotiationFailed)]


def test_simultaneous_ike_rekey_resolves_to_one_sa() -> None:
    """Both IKE rekey requests cross (§2.8.2): each side answers, the nonce rule keeps one
    new IKE SA, the redundant one and the old one are deleted, the CHILD_SA moves over."""
    for _ in range(8):  # nonces are random: both outcomes of the comparison happen
        pair = Pair()
        pair.up()
        old_a, old_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
        pair.a.rekey_ike("b", pair.now)
        pair.b.rekey_ike("a", pair.now)
        pair.exchange_crosswise()
        assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1, (pair.a.sas, pair.b.sas)
        new_a, new_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
        assert new_a is not old_a and new_b is not old_b
        assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
        assert new_a.initiator != new_b.initiator
        for mgr in (pair.a, pair.b):
            assert pair.counter(mgr, "ike_rekey_collisions") == 1
            assert pair.counter(mgr, "ike_sa_rekeyed") == 1
            assert pair.counter(mgr, "ike_rekey_retries") == 0
        pair.assert_one_pair()
        assert not [e for _, e in pair.events if isinstance(e, ev.NegotiationFailed)]
        pair.run(10)  # the survivor keeps working: a CHILD_SA rekey on it
        pair.a.rekey("b", pair.now)
        pair.pump()
        pair.assert_one_pair()


def test_simultaneous_ike_rekey_nonce_rule_is_exact() -> None:
    """The new IKE SA of the exchange holding the lowest nonce is the redundant one."""
    pair = Pair()
    pair.up()
    pair.random.nonces = iter([b"\x05" * 32, b"\x01" + b"\xff" * 31, b"\x09" * 32, b"\x07" * 32])
    old = pair.a.ike_sa("b")
    pair.a.rekey_ike("b", pair.now)  # Ni(A) = 05..
    pair.b.rekey_ike("a", pair.now)  # Ni(B) = 01ff.. : the lowest -> B's exchange is redundant
    pair.exchange_crosswise()  # B answers A with Nr 09.., A answers B with Nr 07..
    survivor = pair.a.ike_sa("b")
    assert survivor is not old and pair.counter(pair.a, "ike_rekey_collisions") == 1
    assert survivor.initiator  # A initiated the surviving exchange
    assert not pair.b.ike_sa("a").initiator
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    pair.assert_one_pair()


def test_peer_deletes_old_ike_sa_before_our_rekey_answer() -> None:
    """The peer won the collision and deleted the old IKE SA; its answer to our request
    was lost: its new SA still takes the CHILD_SA, nothing goes down."""
    pair = Pair()
    pair.up()
    # Ni(A) holds the lowest nonce: A's exchange is redundant, B's survives.
    pair.random.nonces = iter([b"\x01" + b"\xff" * 31, b"\x05" * 32, b"\x09" * 32, b"\x07" * 32])
    pair.a.rekey_ike("b", pair.now)
    pair.b.rekey_ike("a", pair.now)
    req_a, req_b = pair.a.datagrams_to_send(), pair.b.datagrams_to_send()
    pair.b.receive_datagram(req_a[0].data, req_a[0].remote, req_a[0].local, pair.now)
    pair.a.receive_datagram(req_b[0].data, req_b[0].remote, req_b[0].local, pair.now)
    answer_to_a = pair.b.datagrams_to_send()  # lost
    assert len(answer_to_a) == 1
    for d in pair.a.datagrams_to_send():  # A's answer reaches B: B's exchange is done
        pair.b.receive_datagram(d.data, d.remote, d.local, pair.now)
    pair._drain_events()
    b_sa = pair.b.ike_sa("a")
    assert b_sa.initiator  # B's own exchange survived
    pair.pump()  # B deletes the old IKE SA (and A's redundant one never came to be at A)
    pair.run(30)
    pair.assert_one_pair()
    assert (pair.a.ike_sa("b").spi_i, pair.a.ike_sa("b").spi_r) == (b_sa.spi_i, b_sa.spi_r)
    assert not [e for _, e in pair.events if isinstance(e, ev.NegotiationFailed)]


def test_ike_sa_gone_before_a_collision_is_decided_leaves_no_stray_sa() -> None:
    """A's old IKE SA dies while the SA it created for B's crossing rekey is still
    undecided: that SA is not left behind (deleted like any replaced SA)."""
    pair = Pair()
    pair.up()
    old = pair.a.ike_sa("b")
    pair.a.rekey_ike("b", pair.now)
    pair.b.rekey_ike("a", pair.now)
    pair.a.datagrams_to_send()  # A's request is lost
    (req_b,) = pair.b.datagrams_to_send()
    pair.a.receive_datagram(req_b.data, req_b.remote, req_b.local, pair.now)
    assert old.rekey_collision is not None
    pending = old.rekey_collision[0]
    assert pending.collision_pending and pending.local_spi in pair.a.sas
    pair.checking = False  # A loses its CHILD_SA with the old IKE SA: B's ESP has no home
    old.fail("test: the old IKE SA is gone", pair.now)
    pair.a._collect(old, pair.now)  # what the manager does after every step of an SA
    assert not pending.collision_pending and pending.rekeyed_to is old
    pair.run(60)  # past the grace period of a replaced IKE SA
    assert pending.local_spi not in pair.a.sas or not pending.alive
