"""The lifecycle tables (ipsecd.ike.lifecycle): every state ends, every deadline is enforced.

Includes the lock-out by undecodable IKE_SA_INIT requests (issue 12, item 1): a request
that does not decode creates no state, and only responder SAs that answered count as
half-open.
"""

from __future__ import annotations

import os
import struct

import pytest

from ipsecd.ike import events as ev
from ipsecd.ike.constants import ExchangeType, HeaderFlag, PayloadType
from ipsecd.ike.exchanges import rekey
from ipsecd.ike.lifecycle import (
    CHILD_TRANSITIONS,
    IKE_TRANSITIONS,
    ChildEvent,
    ChildState,
    IkeEvent,
    IkeState,
    IllegalTransition,
    RetransmitPolicy,
    child_deadline,
    ike_deadline,
)
from ipsecd.ike.sa import IkeSa, SaContext
from ipsecd.ike.scheduler import TimerHeap
from tests.unit.ike_pair_support import A_IP, B_IP, IkePair, side_a, side_b

POLICY = RetransmitPolicy()
STEADY = {IkeState.ESTABLISHED, ChildState.INSTALLED}
FINAL = {IkeState.DELETED, ChildState.DELETED}


# ---- the tables -----------------------------------------------------------------------


def test_ike_table_reads_like_rfc_7296():
    assert IKE_TRANSITIONS[(IkeState.CREATED, IkeEvent.INIT_SENT)] is IkeState.INIT_SENT
    assert IKE_TRANSITIONS[(IkeState.CREATED, IkeEvent.INIT_ANSWERED)] is IkeState.HALF_OPEN
    assert IKE_TRANSITIONS[(IkeState.HALF_OPEN, IkeEvent.AUTH_DONE)] is IkeState.ESTABLISHED
    assert IKE_TRANSITIONS[(IkeState.AUTH_SENT, IkeEvent.AUTH_DONE)] is IkeState.ESTABLISHED
    assert (IkeState.INIT_SENT, IkeEvent.AUTH_DONE) not in IKE_TRANSITIONS
    for state in IkeState:  # every state can end
        for event in (IkeEvent.FAILED, IkeEvent.TIMEOUT, IkeEvent.DELETED):
            assert IKE_TRANSITIONS[(state, event)] is IkeState.DELETED
    assert not [key for key, target in IKE_TRANSITIONS.items() if key[0] is IkeState.DELETED
                and target is not IkeState.DELETED]  # fmt: skip


def test_child_table_every_state_ends():
    for state in ChildState:
        assert CHILD_TRANSITIONS[(state, ChildEvent.TIMEOUT)] is ChildState.DELETED
    assert CHILD_TRANSITIONS[(ChildState.INSTALLED, ChildEvent.REKEY_STARTED)] is (
        ChildState.REKEYING
    )


@pytest.mark.parametrize("state", list(IkeState) + list(ChildState))
def test_every_state_has_a_deadline_unless_steady_or_final(state):
    deadline = (
        ike_deadline(state, POLICY)
        if isinstance(state, IkeState)
        else child_deadline(state, POLICY)
    )
    if state in STEADY or state in FINAL:
        assert deadline is None
    else:
        assert deadline is not None and deadline > 0
        # Never before the retransmission schedule has had its say (RFC 7296 §2.1).
        if state is not IkeState.HALF_OPEN:
            assert deadline > POLICY.give_up_after()


def test_illegal_transition_is_a_bug_and_names_the_sa(tmp_path):
    pair = IkePair(tmp_path)
    sa = pair.a.ike_sa("b")
    assert sa is not None
    with pytest.raises(IllegalTransition, match="'init_sent' from established"):
        sa.transition(IkeEvent.INIT_SENT, pair.now)


# ---- issue 12 item 1: undecodable IKE_SA_INIT creates no state --------------------------


def truncated_init() -> bytes:
    """28 bytes: a header announcing an SA payload, and nothing after it."""
    return struct.pack(
        "!QQBBBBII",
        int.from_bytes(os.urandom(8), "big") | 1,
        0,
        PayloadType.SA,
        0x20,
        ExchangeType.IKE_SA_INIT,
        HeaderFlag.INITIATOR,
        0,
        28,
    )


def test_undecodable_init_requests_never_lock_out_the_peer(tmp_path):
    pair = IkePair(tmp_path, start=False)
    for _ in range(5):  # from the peer's own address: its half_open_per_source slots
        pair.b.receive_datagram(truncated_init(), (B_IP, 500), (A_IP, 500), pair.now)
    for n in range(1000):  # and from anywhere: enough to switch cookies on, were they counted
        pair.b.receive_datagram(truncated_init(), (B_IP, 500), (f"10.9.{n // 250}.{n % 250}", 500),
                                pair.now)  # fmt: skip
    assert pair.b.datagrams_to_send() == []  # nothing answered
    assert pair.b.sas == {} and len(pair.b.half_open) == 0
    assert pair.b.half_open.per_source(A_IP) == 0
    assert not pair.b.half_open.cookies_required
    assert pair.b.counters["malformed"] == 1005
    assert pair.b.get_timer() is None  # nothing left to expire
    assert pair.status("b")["state"] == "down"
    pair.a.start(pair.now)
    pair.pump()
    assert pair.status("a")["state"] == pair.status("b")["state"] == "established"


def test_refused_init_request_is_answered_but_not_half_open(tmp_path):
    """Only a responder SA that sent its IKE_SA_INIT answer is half-open (RFC 7296 §2.6)."""
    pair = IkePair(tmp_path, side_a(ike=("aes128-sha256-modp2048",)), start=False)
    pair.a.start(pair.now)
    (init,) = pair.a.datagrams_to_send()
    pair.b.receive_datagram(init.data, init.remote, init.local, pair.now)
    (answer,) = pair.b.datagrams_to_send()  # NO_PROPOSAL_CHOSEN
    assert answer.data[18] == ExchangeType.IKE_SA_INIT
    assert pair.b.sas == {} and len(pair.b.half_open) == 0
    assert pair.b.half_open.per_source(A_IP) == 0


# ---- deadlines --------------------------------------------------------------------------


def test_half_open_deadline_expires_the_responder_sa(tmp_path):
    pair = IkePair(tmp_path, start=False)
    pair.net.drop = lambda sent: sent.sender == "b"  # a never sees the answer
    pair.a.start(pair.now)
    pair.pump()
    (sa,) = pair.b.sas.values()
    assert sa.state is IkeState.HALF_OPEN
    assert sa.deadline == pytest.approx(pair.now + POLICY.half_open_timeout)
    assert pair.b.get_timer() == sa.deadline
    pair.now = sa.deadline
    pair.b.handle_timer(pair.now)
    assert pair.b.sas == {} and len(pair.b.half_open) == 0
    assert pair.b.counters["half_open_expired"] == 1
    assert pair.b.get_timer() is None


def _stuck(pair: IkePair, side: str) -> IkeSa:
    """The side's SA with its exchange lost to a bug: no retransmission will end it."""
    mgr = pair.mgr(side)
    (sa,) = mgr.sas.values()
    sa.outstanding = None
    mgr.scheduler.reschedule(sa)
    return sa


@pytest.mark.parametrize("lost", [ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH])
def test_initiator_states_end_at_their_deadline(tmp_path, lost):
    pair = IkePair(tmp_path, start=False)
    pair.net.drop = lambda sent: sent.data[18] == lost
    pair.a.start(pair.now)
    pair.pump()
    entered = pair.now
    sa = _stuck(pair, "a")
    expected = IkeState.INIT_SENT if lost == ExchangeType.IKE_SA_INIT else IkeState.AUTH_SENT
    assert sa.state is expected
    assert sa.deadline == pytest.approx(entered + POLICY.exchange_deadline)
    assert pair.a.get_timer() == sa.deadline
    pair.now = sa.deadline
    pair.a.handle_timer(pair.now)
    assert not sa.alive and pair.a.sas == {}
    assert pair.a.counters["ike_sa_deadline_expired"] == 1
    (failed,) = [e for _, e in pair.events["a"] if isinstance(e, ev.NegotiationFailed)] or [
        pair.a.next_event()
    ]
    assert f"stayed {expected.value} too long" in failed.reason
    assert pair.a.peer_state["b"].retry_at is not None  # start: initiate tries again


def test_deleting_ends_at_its_deadline(tmp_path):
    pair = IkePair(tmp_path)
    pair.net.drop = lambda sent: True
    pair.a.terminate("b", pair.now)
    pair.pump()
    sa = _stuck(pair, "a")
    assert sa.state is IkeState.DELETING
    assert sa.deadline == pytest.approx(pair.now + POLICY.exchange_deadline)
    pair.now = sa.deadline
    pair.a.handle_timer(pair.now)
    pair._drain_events()
    assert pair.a.sas == {}
    deleted = [e for _, e in pair.events["a"] if isinstance(e, ev.IkeSaDeleted)]
    assert deleted and "never confirmed our Delete" in deleted[-1].reason


@pytest.mark.parametrize("state", [ChildState.REKEYING, ChildState.DELETING])
def test_child_deadline_while_waiting_for_an_exchange(tmp_path, state):
    pair = IkePair(tmp_path)
    pair.net.drop = lambda sent: True
    (spi,) = pair.a.ike_sa("b").children
    if state is ChildState.REKEYING:
        pair.a.rekey("b", pair.now)
    else:
        pair.a.delete_child("b", spi, pair.now)
    pair.pump()
    sa = _stuck(pair, "a")
    (child,) = sa.children.values()
    assert child.state is state
    assert child.deadline == pytest.approx(pair.now + POLICY.exchange_deadline)
    pair.now = child.deadline
    pair.a.handle_timer(pair.now)
    pair._drain_events()
    assert sa.children == {} and pair.a.counters["child_sa_deadline_expired"] == 1
    assert [e for _, e in pair.events["a"] if isinstance(e, ev.ChildSaDeleted)]


def _rekeys_without_delete(monkeypatch):
    """The rekey initiator installs the new pair but never deletes the old one."""

    def install_without_delete(self, sa, child, now):
        old = sa.children[self.old_spi]
        sa.install_child(child, now)
        rekey.mark_rekeyed(sa, old, now)

    monkeypatch.setattr(rekey.RekeyChildSa, "install", install_without_delete)


def test_rekeyed_child_the_peer_never_deletes_is_deleted_by_us(tmp_path, monkeypatch):
    """The rekey initiator (a) installs the new pair but never deletes the old one (RFC
    7296 §2.8 says it must): b, left with a REKEYED pair, deletes it at its deadline."""
    _rekeys_without_delete(monkeypatch)
    pair = IkePair(tmp_path)
    b_sa = pair.b.ike_sa("a")
    (old,) = b_sa.children.values()
    pair.a.rekey("b", pair.now)
    pair.pump()
    assert old.state is ChildState.REKEYED
    assert old.deadline == pytest.approx(pair.now + 2 * POLICY.exchange_deadline)
    pair.advance(2 * POLICY.exchange_deadline)
    assert old.spi_in not in b_sa.children
    assert pair.b.counters["child_sa_rekeyed_not_deleted"] == 1
    (new,) = b_sa.children.values()
    assert new.state is ChildState.INSTALLED and new.outbound_active
    activated = [e for _, e in pair.events["b"] if isinstance(e, ev.ChildSaOutboundActivated)]
    assert [e.spi_in for e in activated] == [new.spi_in]
    assert pair.status("a")["state"] == pair.status("b")["state"] == "established"


def test_responder_sa_is_created_with_a_deadline(tmp_path):
    pair = IkePair(tmp_path, start=False)
    config = pair.b_config.peers[0]
    sa = IkeSa(config, False, (B_IP, 500), (A_IP, 500), SaContext(policy=POLICY), 5.0)
    assert sa.state is IkeState.CREATED
    assert sa.deadline == pytest.approx(5.0 + POLICY.exchange_deadline)
    assert side_b().start == "respond"


# ---- the timer heap ---------------------------------------------------------------------


def test_timer_heap_keeps_one_time_per_key_and_stays_small():
    timers: TimerHeap[int] = TimerHeap()
    for round_ in range(100):
        for key in range(10):
            timers.set(key, 1000.0 + round_ + key)  # every key moves later each round
    assert len(timers) == 10 and timers.next() == 1099.0
    assert len(timers._heap) <= 4 * 10 + 64
    timers.set(3, None)
    assert timers.pop_due(1102.0) == [0, 1, 2]
    assert timers.next() == 1103.0  # key 4 (3 is gone)
    timers.set(9, 500.0)  # earlier than everything
    assert timers.pop_due(600.0) == [9]


def test_timer_heap_gives_at_most_the_limit_and_keeps_the_rest_due():
    timers: TimerHeap[int] = TimerHeap()
    for key in range(5):
        timers.set(key, 10.0 + key)
    assert timers.pop_due(20.0, limit=2) == [0, 1]
    assert timers.next() == 12.0 and len(timers) == 3
    assert timers.pop_due(20.0, limit=10) == [2, 3, 4]


def test_handle_timer_takes_a_slice_of_the_due_sas_and_says_the_rest_are_due(tmp_path, monkeypatch):
    """A thousand DPDs due at once are handled TIMER_SLICE at a time, the shell reading its
    sockets in between: get_timer() stays at or before now until none is left."""
    from ipsecd.ike import manager

    monkeypatch.setattr(manager, "TIMER_SLICE", 2)
    pair = IkePair(tmp_path)
    timers = pair.a.scheduler.timers
    now = pair.now + 1.0
    for key in range(1, 6):  # keys of no SA: popped and skipped, as an SA deleted meanwhile
        timers.set(key, now - key / 100)
    due_before = len(timers)
    pair.a.handle_timer(now)
    assert len(timers) == due_before - 2 and pair.a.get_timer() <= now
    pair.a.handle_timer(now)
    pair.a.handle_timer(now)
    assert all(key not in timers._due for key in range(1, 6))
    assert pair.a.get_timer() > now  # the fake keys were the earliest; the SA's own is later


def test_a_rekeyed_child_gone_with_its_ike_sa_is_not_kept_for_late_packets(tmp_path, monkeypatch):
    """Only a rekey's Delete leaves the old inbound SA a grace (``rekeyed``); when the IKE
    SA ends first, its every CHILD_SA goes at once (RFC 7296 §1.4.1)."""
    _rekeys_without_delete(monkeypatch)
    pair = IkePair(tmp_path)
    (old,) = pair.b.ike_sa("a").children.values()
    pair.a.rekey("b", pair.now)
    pair.pump()
    assert old.state is ChildState.REKEYED
    pair.b.terminate("a", pair.now)
    pair.pump()
    deleted = {e.spi_in: e.rekeyed for _, e in pair.events["b"] if isinstance(e, ev.ChildSaDeleted)}
    assert len(deleted) == 2 and deleted[old.spi_in] is False and not any(deleted.values())
