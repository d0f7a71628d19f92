"""Rekeying between two in-memory IkeManagers (RFC 7296 §1.3.2, §1.3.3, §2.8, §2.8.1, §2.18).

The IkePair (real configs) keeps a data-plane model per side that follows the events
the way ``daemon/ike_glue.py`` and ``dataplane/sad.py`` do (inbound by SPI, newest
active outbound sends) and, after every single datagram, checks make-before-break:
the SPI each side sends with is an inbound SA on the other side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ipsecd.crypto import keyexchange
from ipsecd.crypto.proposals import parse_proposal
from ipsecd.ike import events as ev
from ipsecd.ike.child import ChildSa
from ipsecd.ike.lifecycle import ChildState, IkeState
from ipsecd.ike.manager import IkeManager, seq_rekey_threshold
from tests.unit.ike_pair_support import IkePair, side_a, side_b

Side = dict[str, object]
NO_REKEY: Side = {"esp_rekey_time": "0"}
NO_IKE_REKEY: Side = {"ike_rekey_time": "0"}


def esp_lifetime(rekey: int, life: int, rand: int) -> Side:
    """ESP lifetimes of one side (RFC 7296 §2.8): soft ``rekey``, hard ``life``, jitter."""
    return {"esp_rekey_time": f"{rekey}s", "esp_life_time": f"{life}s", "esp_rand_time": f"{rand}s"}


def ike(rekey: int, rand: int) -> Side:
    return {"ike_rekey_time": f"{rekey}s", "ike_rand_time": f"{rand}s"}


class ScriptedNonces:
    """The managers' randomness: scripted 32-octet nonces while any are left, else urandom."""

    def __init__(self) -> None:
        self.nonces: Iterator[bytes] = iter(())

    def __call__(self, n: int) -> bytes:
        scripted = next(self.nonces, None) if n == 32 else None
        return scripted if scripted is not None else os.urandom(n)


def rekey_pair(
    tmp_path: Path,
    child_a: Side = NO_REKEY,
    child_b: Side = NO_REKEY,
    ike_a: Side = NO_IKE_REKEY,
    ike_b: Side = NO_IKE_REKEY,
    esp: str = "aes256gcm16",
    random_bytes: ScriptedNonces | None = None,
) -> IkePair:
    """An established IkePair with these lifetimes, checking make-before-break."""
    common: Side = {"esp": (esp,), "retransmit_tries": 3, "retry_interval": "5s"}
    pair = IkePair(
        tmp_path,
        side_a(**common, **child_a, **ike_a),
        side_b(**common, **child_b, **ike_b),
        random_bytes=random_bytes,
    )
    assert pair.dataplane["a"].inbound and pair.dataplane["b"].inbound
    pair.check_make_before_break = True
    return pair


def children(mgr: IkeManager) -> list[ChildSa]:
    sa = mgr.ike_sa(mgr.config.peers[0].name)
    assert sa is not None
    return list(sa.children.values())


def counter(mgr: IkeManager, name: str) -> int:
    return mgr.counters.get(name, 0)


def exchange_crosswise(pair: IkePair) -> None:
    """Both sides have a request queued: deliver both requests before any response."""
    out_a, out_b = pair.a.datagrams_to_send(), pair.b.datagrams_to_send()
    assert len(out_a) == 1 and len(out_b) == 1
    pair.b.receive_datagram(out_a[0].data, out_a[0].remote, out_a[0].local, pair.now)
    pair.a.receive_datagram(out_b[0].data, out_b[0].remote, out_b[0].local, pair.now)
    pair._drain_events()
    pair._check_make_before_break()
    pair.pump()


def assert_one_pair(pair: IkePair) -> None:
    ca, cb = children(pair.a), children(pair.b)
    assert len(ca) == 1 and len(cb) == 1, (ca, cb)
    assert ca[0].state is ChildState.INSTALLED and cb[0].state is ChildState.INSTALLED
    assert (ca[0].spi_in, ca[0].spi_out) == (cb[0].spi_out, cb[0].spi_in)
    dp_a, dp_b = pair.dataplane["a"], pair.dataplane["b"]
    assert set(dp_a.inbound) == {ca[0].spi_in}
    assert set(dp_b.inbound) == {cb[0].spi_in}
    assert dp_a.sending_spi() == cb[0].spi_in
    assert dp_b.sending_spi() == ca[0].spi_in


def failures(pair: IkePair) -> list[ev.Event]:
    return [e for _, e in pair.event_log if isinstance(e, ev.NegotiationFailed)]


def _keys_match(pair: IkePair) -> None:
    """The surviving pair's keys are mirror images (same KEYMAT on both sides)."""
    (ca,), (cb,) = children(pair.a), children(pair.b)
    a, b = pair.dataplane["a"].inbound[ca.spi_in], pair.dataplane["b"].inbound[cb.spi_in]
    assert a.encr_key_out == b.encr_key_in and a.encr_key_in == b.encr_key_out


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("esp", ["aes256gcm16", "aes128-sha256-x25519", "aes128gcm16-ecp256"])
def test_child_rekey_by_either_side(tmp_path: Path, initiator: str, esp: str) -> None:
    pair = rekey_pair(tmp_path, esp=esp)
    (old_a,) = children(pair.a)
    mgr = pair.a if initiator == "a" else pair.b
    mgr.rekey(mgr.config.peers[0].name, pair.now)
    pair.pump()
    assert_one_pair(pair)
    _keys_match(pair)
    (new_a,) = children(pair.a)
    assert new_a.spi_in != old_a.spi_in
    assert counter(pair.a, "child_sa_rekeyed") == 1
    assert counter(pair.b, "child_sa_rekeyed") == 1
    kinds = [(side, type(e).__name__) for side, e in pair.event_log]
    assert kinds.count(("a", "ChildSaEstablished")) == 2
    assert kinds.count(("a", "ChildSaDeleted")) == 1
    assert kinds.count(("b", "ChildSaDeleted")) == 1
    # Both sides' data planes keep the old inbound SA a few seconds (late packets).
    assert all(e.rekeyed for side in "ab" for e in pair.of_type(side, ev.ChildSaDeleted))
    responder = "b" if initiator == "a" else "a"
    # The rekey responder started sending on the new SA only when the old one was deleted.
    assert (responder, "ChildSaOutboundActivated") in kinds
    assert not failures(pair)


def test_pfs_rekey_uses_a_fresh_key_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    calls = []
    real = keyexchange.new

    def spy(group):
        calls.append(group.name)
        return real(group)

    pair = rekey_pair(tmp_path, esp="aes128-sha256-ecp256")
    monkeypatch.setattr(keyexchange, "new", spy)
    pair.a.rekey("b", pair.now)
    pair.pump()
    assert_one_pair(pair)
    assert calls == ["ecp256", "ecp256"]  # KEi and KEr of the CREATE_CHILD_SA


def test_time_based_rekeys_keep_one_pair_and_never_break(tmp_path: Path) -> None:
    lifetime = esp_lifetime(10, 11, 2)
    pair = rekey_pair(tmp_path, lifetime, lifetime)
    pair.advance(100)
    assert_one_pair(pair)
    rekeys = counter(pair.a, "child_sa_rekeyed")
    assert rekeys >= 9, rekeys
    assert counter(pair.b, "child_sa_rekeyed") == rekeys
    assert counter(pair.a, "child_sa_expired") == 0
    assert pair.dataplane["a"].installed - pair.dataplane["a"].removed == 1


def test_jitter_comes_from_rand_time(tmp_path: Path) -> None:
    lifetime = esp_lifetime(100, 110, 30)
    starts = set()
    for _ in range(5):
        pair = rekey_pair(tmp_path, lifetime, NO_REKEY)
        (child,) = children(pair.a)
        assert pair.now + 70 <= child.rekey_at <= pair.now + 100
        assert child.expire_at == pytest.approx(pair.now + 110)
        starts.add(round(child.rekey_at - pair.now, 3))
    assert len(starts) > 1


def test_simultaneous_rekey_requests_cross(tmp_path: Path) -> None:
    """Both requests are on the wire before either response (§2.8.1): one pair remains."""
    for _ in range(8):  # nonces are random: both outcomes of the comparison happen
        pair = rekey_pair(tmp_path)
        pair.a.rekey("b", pair.now)
        pair.b.rekey("a", pair.now)
        exchange_crosswise(pair)
        assert_one_pair(pair)
        _keys_match(pair)
        assert counter(pair.a, "child_rekey_collisions") == 1
        assert counter(pair.b, "child_rekey_collisions") == 1
        assert pair.dataplane["a"].installed - pair.dataplane["a"].removed == 1
        assert pair.dataplane["b"].installed - pair.dataplane["b"].removed == 1
        assert not failures(pair)


def test_simultaneous_rekey_nonce_rule_is_exact(tmp_path: Path) -> None:
    """The SA of the exchange holding the lowest nonce is the redundant one (octet order)."""
    nonces = ScriptedNonces()
    pair = rekey_pair(tmp_path, random_bytes=nonces)
    nonces.nonces = iter([b"\x05" * 32, b"\x01" + b"\xff" * 31, b"\x09" * 32, b"\x07" * 32])
    pair.a.rekey("b", pair.now)  # Ni(A) = 05..
    pair.b.rekey("a", pair.now)  # Ni(B) = 01ff.. : the lowest -> B's exchange is redundant
    exchange_crosswise(pair)  # B answers A with Nr 09.., A answers B with Nr 07..
    assert_one_pair(pair)
    (survivor,) = children(pair.a)
    created_by_a = [
        e.child.spi_in
        for side, e in pair.event_log
        if side == "a" and isinstance(e, ev.ChildSaEstablished) and e.outbound_active
    ]
    assert survivor.spi_in == created_by_a[-1]  # A initiated the surviving exchange


def test_rekey_of_a_replaced_sa_gets_temporary_failure(tmp_path: Path) -> None:
    """A's request arrives after B finished its own rekey: refused, no duplicate."""
    pair = rekey_pair(tmp_path)
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
    pair.advance(5)
    assert_one_pair(pair)
    assert counter(pair.b, "child_sa_rekeyed") == 1


def test_simultaneous_time_rekeys_without_jitter(tmp_path: Path) -> None:
    lifetime = esp_lifetime(5, 6, 0)
    pair = rekey_pair(tmp_path, lifetime, lifetime)
    pair.advance(60)
    assert_one_pair(pair)
    assert counter(pair.a, "child_sa_rekeyed") >= 10


def test_hard_lifetime_deletes_when_rekey_is_impossible(tmp_path: Path) -> None:
    lifetime = esp_lifetime(10, 12, 0)
    pair = rekey_pair(tmp_path, lifetime, NO_REKEY, esp="aes256gcm16")
    # B stops accepting anything but deletes: make the rekey fail with NO_PROPOSAL_CHOSEN.
    b_peer = pair.b.peers["a"]
    (child,) = b_peer.children
    weaker = replace(child, esp_proposals=(parse_proposal("aes128-sha256", "esp"),))
    pair.b.peers["a"] = replace(b_peer, children=(weaker,))
    sa_b = pair.b.ike_sa("a")
    sa_b.peer = pair.b.peers["a"]
    pair.check_make_before_break = False  # a plain Delete, no make-before-break
    pair.advance(13)
    assert counter(pair.a, "child_sa_expired") == 1
    assert children(pair.a) == [] and children(pair.b) == []
    assert not pair.dataplane["a"].inbound and not pair.dataplane["b"].inbound


def stall(pair: IkePair, seconds: float) -> None:
    """The event loop stalled for ``seconds``: no timer fired meanwhile; then every one
    that is due fires at once, as the daemon's loop does when it wakes up."""
    pair.now += seconds
    for mgr in pair.managers.values():
        mgr.handle_timer(pair.now)
    pair.pump()
    pair.advance(0)  # and whatever that made due at once


def test_stalled_loop_past_soft_and_hard_lifetime_rekeys(tmp_path: Path) -> None:
    """After a stall both the soft (rekey_time) and the hard (life_time) lifetime of the
    CHILD_SA are past: the rekey comes first, and replaces it without a gap, instead of
    a Delete that leaves no CHILD_SA (test_child_rekey_with_strongswan under load)."""
    lifetime = esp_lifetime(10, 11, 0)
    pair = rekey_pair(tmp_path, lifetime, NO_REKEY)
    (old,) = children(pair.a)
    stall(pair, 15)
    assert_one_pair(pair)
    (new,) = children(pair.a)
    assert new.spi_in != old.spi_in
    assert counter(pair.a, "child_sa_rekeyed") == 1
    assert counter(pair.a, "child_sa_expired") == 0
    assert new.expire_at == pair.now + 11 and new.rekey_at == pair.now + 10
    pair.advance(30)  # and the lifetimes go on from the new CHILD_SA
    assert_one_pair(pair)
    assert counter(pair.a, "child_sa_rekeyed") == 4
    assert counter(pair.a, "child_sa_expired") == 0


def test_stalled_loop_hard_lifetime_deletes_when_the_rekey_fails(tmp_path: Path) -> None:
    """The same stall, but the peer refuses the rekey: the hard lifetime then deletes."""
    lifetime = esp_lifetime(10, 11, 0)
    pair = rekey_pair(tmp_path, lifetime, NO_REKEY, esp="aes256gcm16")
    b_peer = pair.b.peers["a"]
    (child,) = b_peer.children
    weaker = replace(child, esp_proposals=(parse_proposal("aes128-sha256", "esp"),))
    pair.b.peers["a"] = replace(b_peer, children=(weaker,))
    pair.b.ike_sa("a").peer = pair.b.peers["a"]
    pair.check_make_before_break = False  # a plain Delete, no make-before-break
    stall(pair, 15)
    assert counter(pair.a, "child_sa_rekeyed") == 0
    assert counter(pair.a, "child_sa_expired") == 1
    assert children(pair.a) == [] and children(pair.b) == []
    assert not pair.dataplane["a"].inbound and not pair.dataplane["b"].inbound


def test_volume_and_sequence_limits_start_a_rekey(tmp_path: Path) -> None:
    # close_action none: a does not re-create the CHILD_SA b deletes at the end.
    lifetime = {**NO_REKEY, "esp_rekey_bytes": 1000, "close_action": "none"}
    pair = rekey_pair(tmp_path, lifetime, NO_REKEY)
    (child,) = children(pair.a)
    pair.a.child_usage("b", child.spi_in, 999, 5, pair.now)
    pair.pump()
    assert counter(pair.a, "child_sa_rekeyed") == 0
    pair.a.child_usage("b", child.spi_in, 1000, 6, pair.now)
    pair.pump()
    assert counter(pair.a, "child_sa_rekeyed") == 1
    (child,) = children(pair.a)
    pair.a.child_usage("b", child.spi_in, 0, 0, pair.now, seq_out=seq_rekey_threshold(False))
    pair.pump()
    assert counter(pair.a, "child_sa_rekeyed") == 2
    (child,) = children(pair.b)
    pair.check_make_before_break = False  # a plain Delete, no make-before-break
    pair.b.child_usage("a", child.spi_in, 0, 0, pair.now, seq_out=2**32 - 1)
    pair.pump()
    assert counter(pair.b, "child_sa_sequence_exhausted") == 1
    assert children(pair.b) == []
    assert seq_rekey_threshold(False) < 2**32 - 2**28
    assert seq_rekey_threshold(True) > 2**32


def test_unknown_spi_usage_is_ignored(tmp_path: Path) -> None:
    pair = rekey_pair(tmp_path)
    pair.a.child_usage("b", 0x12345678, 10**12, 10**9, pair.now, seq_out=2**32 - 1)
    pair.pump()
    assert_one_pair(pair)


# ---- IKE SA rekey ------------------------------------------------------------------


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ike_rekey_moves_children(tmp_path: Path, initiator: str) -> None:
    pair = rekey_pair(tmp_path)
    old_a, old_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    children_before = [c.spi_in for c in children(pair.a)]
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
    assert [c.spi_in for c in children(pair.a)] == children_before
    assert counter(pair.a, "ike_sa_rekeyed") == 1
    assert counter(pair.b, "ike_sa_rekeyed") == 1
    assert (
        pair.dataplane["a"].removed == 0 and pair.dataplane["b"].removed == 0
    )  # no CHILD_SA touched
    # The new IKE SA works: a CHILD_SA rekey and a liveness check over it.
    pair.b.rekey("a", pair.now)
    pair.pump()
    assert_one_pair(pair)
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    assert new_a.alive and new_b.alive


def test_periodic_ike_and_child_rekeys_together(tmp_path: Path) -> None:
    esp_life, ike_life = esp_lifetime(7, 8, 1), ike(11, 2)
    pair = rekey_pair(tmp_path, esp_life, esp_life, ike_life, ike_life)
    pair.advance(120)
    assert_one_pair(pair)
    assert counter(pair.a, "ike_sa_rekeyed") >= 8
    assert counter(pair.a, "child_sa_rekeyed") >= 12
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    assert not failures(pair)


def test_simultaneous_ike_rekey_resolves_to_one_sa(tmp_path: Path) -> None:
    """Both IKE rekey requests cross (§2.8.2): each side answers, the nonce rule keeps one
    new IKE SA, the redundant one and the old one are deleted, the CHILD_SA moves over."""
    for _ in range(8):  # nonces are random: both outcomes of the comparison happen
        pair = rekey_pair(tmp_path)
        old_a, old_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
        pair.a.rekey_ike("b", pair.now)
        pair.b.rekey_ike("a", pair.now)
        exchange_crosswise(pair)
        assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1, (pair.a.sas, pair.b.sas)
        new_a, new_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
        assert new_a is not old_a and new_b is not old_b
        assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
        assert new_a.initiator != new_b.initiator
        for mgr in (pair.a, pair.b):
            assert counter(mgr, "ike_rekey_collisions") == 1
            assert counter(mgr, "ike_sa_rekeyed") == 1
            assert counter(mgr, "ike_rekey_retries") == 0
        assert_one_pair(pair)
        assert not failures(pair)
        pair.advance(10)  # the survivor keeps working: a CHILD_SA rekey on it
        pair.a.rekey("b", pair.now)
        pair.pump()
        assert_one_pair(pair)


def test_simultaneous_ike_rekey_nonce_rule_is_exact(tmp_path: Path) -> None:
    """The new IKE SA of the exchange holding the lowest nonce is the redundant one."""
    nonces = ScriptedNonces()
    pair = rekey_pair(tmp_path, random_bytes=nonces)
    nonces.nonces = iter([b"\x05" * 32, b"\x01" + b"\xff" * 31, b"\x09" * 32, b"\x07" * 32])
    old = pair.a.ike_sa("b")
    pair.a.rekey_ike("b", pair.now)  # Ni(A) = 05..
    pair.b.rekey_ike("a", pair.now)  # Ni(B) = 01ff.. : the lowest -> B's exchange is redundant
    exchange_crosswise(pair)  # B answers A with Nr 09.., A answers B with Nr 07..
    survivor = pair.a.ike_sa("b")
    assert survivor is not old and counter(pair.a, "ike_rekey_collisions") == 1
    assert survivor.initiator  # A initiated the surviving exchange
    assert not pair.b.ike_sa("a").initiator
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    assert_one_pair(pair)


def test_peer_deletes_old_ike_sa_before_our_rekey_answer(tmp_path: Path) -> None:
    """The peer won the collision and deleted the old IKE SA; its answer to our request
    was lost: its new SA still takes the CHILD_SA, nothing goes down."""
    nonces = ScriptedNonces()
    pair = rekey_pair(tmp_path, random_bytes=nonces)
    # Ni(A) holds the lowest nonce: A's exchange is redundant, B's survives.
    nonces.nonces = iter([b"\x01" + b"\xff" * 31, b"\x05" * 32, b"\x09" * 32, b"\x07" * 32])
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
    pair.advance(30)
    assert_one_pair(pair)
    assert (pair.a.ike_sa("b").spi_i, pair.a.ike_sa("b").spi_r) == (b_sa.spi_i, b_sa.spi_r)
    assert not failures(pair)


def test_ike_sa_gone_before_a_collision_is_decided_leaves_no_stray_sa(tmp_path: Path) -> None:
    """A's old IKE SA dies while the SA it created for B's crossing rekey is still
    undecided: that SA is not left behind (deleted like any replaced SA)."""
    pair = rekey_pair(tmp_path)
    old = pair.a.ike_sa("b")
    pair.a.rekey_ike("b", pair.now)
    pair.b.rekey_ike("a", pair.now)
    pair.a.datagrams_to_send()  # A's request is lost
    (req_b,) = pair.b.datagrams_to_send()
    pair.a.receive_datagram(req_b.data, req_b.remote, req_b.local, pair.now)
    assert old.rekey_collision is not None
    pending = old.rekey_collision[0]
    assert pending.collision_pending and pending.local_spi in pair.a.sas
    pair.check_make_before_break = (
        False  # A loses its CHILD_SA with the old IKE SA: B's ESP has no home
    )
    old.fail("test: the old IKE SA is gone", pair.now)
    pair.a._collect(old, pair.now)  # what the manager does after every step of an SA
    assert not pending.collision_pending and pending.rekeyed_to is old
    pair.advance(60)  # past the grace period of a replaced IKE SA
    assert pending.local_spi not in pair.a.sas or not pending.alive
