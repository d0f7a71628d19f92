"""Dead peer detection, INITIAL_CONTACT and INVALID_IKE_SPI (RFC 7296 §2.4, §2.21.4).

Two IkeManagers over the in-memory network with a fake clock (``ike_pair_support``).
A daemon restart is a fresh IkeManager on the same address and config.
"""

from __future__ import annotations

import os
import struct

import pytest

from ipsecd.ike import events as ev
from ipsecd.ike import payloads as pl
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import parse_message
from ipsecd.ike.sa import IkeSa
from tests.unit.ike_pair_support import (
    A_IP,
    B_IP,
    DropFirst,
    IkePair,
    Sent,
    assert_one_working_pair,
    build_config,
    ike_sas,
    installed_spis,
    side_a,
    side_b,
)

IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = 34, 35, 37
INITIAL_CONTACT, INVALID_IKE_SPI = 16384, 4
FAST = {"retransmit_timeout": 0.5, "retransmit_tries": 2}  # dead after 0.5 + 1 + 2 = 3.5 s


def is_response(sent: Sent) -> bool:
    return bool(sent.data[19] & 0x20)


def informational(pair: IkePair, sender: str, *, response: bool = False) -> list[Sent]:
    return [
        s
        for s in pair.sent_by(sender, keepalive=False)
        if s.data[18] == INFORMATIONAL and is_response(s) == response
    ]


def of_exchange(pair: IkePair, sender: str, exchange: int) -> list[Sent]:
    return [s for s in pair.sent_by(sender, keepalive=False) if s.data[18] == exchange]


def restart(pair: IkePair, side: str) -> IkeManager:
    """The daemon on ``side`` is killed and started again: same config, no state."""
    config, address = (pair.a_config, A_IP) if side == "a" else (pair.b_config, B_IP)
    mgr = IkeManager(config, pair.now)
    pair.managers[side] = mgr
    pair.addresses[address] = mgr
    setattr(pair, side, mgr)
    pair.events[side] = []  # the new process starts with an empty data plane
    return mgr


def pair_with(tmp_path, a_extra=None, b_extra=None, **kwargs) -> IkePair:
    return IkePair(
        tmp_path, side_a(**FAST, **(a_extra or {})), side_b(**FAST, **(b_extra or {})), **kwargs
    )


# ---- liveness checks ----------------------------------------------------------------


def test_idle_peer_gets_a_liveness_check_after_dpd_delay(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "10s"}, {"dpd_delay": "60s"})
    pair.advance(9.9)
    assert informational(pair, "a") == []
    pair.advance(0.2)
    (check,) = informational(pair, "a")
    assert check.at == pytest.approx(1010.0)
    # An empty INFORMATIONAL (§2.4): the SK payload holds nothing.
    sa = pair.a.ike_sa("b")
    from ipsecd.ike.message import decode

    assert decode(check.data, keys=sa.keys, sender_is_initiator=True).payloads == ()
    (answer,) = informational(pair, "b", response=True)
    assert answer.delivered
    assert pair.a.counters["dpd_checks_sent"] == 1
    # Answered: the SA stays, the next check comes dpd_delay after the answer.
    assert pair.status("a")["state"] == "established"
    assert pair.status("a")["dpd"] == "idle" and pair.status("a")["dpd_delay"] == 10
    pair.advance(10)
    assert len(informational(pair, "a")) == 2
    assert pair.of_type("a", ev.ChildSaDeleted) == [] and pair.of_type("a", ev.IkeSaDeleted) == []
    # b heard a's checks, so it never needed one of its own.
    assert informational(pair, "b") == []


def test_inbound_esp_postpones_the_liveness_check(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "5s"}, {"dpd_delay": "60s"})
    (child,) = pair.established("a")
    for n in range(1, 21):  # the shell reports growing inbound counters every second
        pair.advance(1)
        pair.a.child_usage("b", child.child.spi_in, 100 * n, n, pair.now, packets_in=n)
    assert informational(pair, "a") == []
    pair.advance(4.9)  # the ESP stops: dpd_delay after the last inbound packet
    assert informational(pair, "a") == []
    pair.advance(0.2)
    assert len(informational(pair, "a")) == 1


def test_outbound_traffic_alone_does_not_postpone_it(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "5s"}, {"dpd_delay": "60s"})
    (child,) = pair.established("a")
    for n in range(1, 6):
        pair.advance(1)
        pair.a.child_usage("b", child.child.spi_in, 100 * n, n, pair.now, packets_in=0)
    pair.advance(0.1)
    assert len(informational(pair, "a")) == 1


def test_dpd_delay_zero_disables_liveness_checks(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": 0}, {"dpd_delay": 0})
    pair.advance(3000)
    assert informational(pair, "a") == [] and informational(pair, "b") == []
    assert pair.status("a")["dpd"] == "off"


def test_no_liveness_check_while_another_request_is_outstanding(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "5s"}, {"dpd_delay": "60s"})
    pair.net.drop = lambda sent: sent.sender == "b"
    pair.a.rekey("b", pair.now)  # its retransmissions check liveness already
    pair.advance(3)
    assert informational(pair, "a") == []


# ---- dead peers: dpd_action ---------------------------------------------------------


def kill_b_answers_and_wait(pair: IkePair) -> None:
    """b's datagrams are lost from now; a's liveness check goes unanswered."""
    pair.net.drop = lambda sent: sent.sender == "b"
    pair.advance(10 + 3.5 + 0.1)


def test_dead_peer_restart_initiates_again_at_once(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "10s"}, {"dpd_delay": "60s"})
    (first,) = pair.established("a")
    kill_b_answers_and_wait(pair)
    (failed,) = pair.of_type("a", ev.NegotiationFailed)
    assert failed.reason.startswith("peer b is dead: no response from")
    assert "liveness check" in failed.reason
    (deleted,) = pair.of_type("a", ev.ChildSaDeleted)
    assert deleted.spi_in == first.child.spi_in
    assert pair.a.counters["dpd_restart"] == 1
    assert pair.status("a")["state"] == "init-sent"  # re-initiated at once
    inits = [s for s in of_exchange(pair, "a", IKE_SA_INIT) if not is_response(s)]
    assert inits[-1].at == pytest.approx(1010.0 + 3.5)
    # The peer answers again: a new IKE SA, with INITIAL_CONTACT, replaces the old one on b.
    pair.net.drop = lambda sent: False
    pair.advance(5)
    assert pair.status("a")["state"] == "established"
    assert len(ike_sas(pair, "a")) == 1 and len(ike_sas(pair, "b")) == 1
    assert pair.b.counters["initial_contact_deleted"] == 1
    assert len(installed_spis(pair, "a")) == 1 and len(installed_spis(pair, "b")) == 1
    (a_spi,) = installed_spis(pair, "a")
    (b_spi,) = installed_spis(pair, "b")
    assert pair.b.ike_sa("a").children[b_spi].spi_out == a_spi


def test_dead_peer_clear_stays_down(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "10s", "dpd_action": "clear"}, {"dpd_delay": 0})
    kill_b_answers_and_wait(pair)
    assert pair.a.counters["dpd_clear"] == 1
    assert pair.of_type("a", ev.PeerDead) == [ev.PeerDead("b", "clear")]
    assert pair.status("a")["state"] == "down"
    assert pair.a.get_timer() is None  # no retry is scheduled
    inits = len(of_exchange(pair, "a", IKE_SA_INIT))
    pair.net.drop = lambda sent: False
    pair.advance(600)
    assert len(of_exchange(pair, "a", IKE_SA_INIT)) == inits
    pair.a.initiate("b", pair.now)  # ipsecctl up brings it back
    pair.pump()
    assert pair.status("a")["state"] == "established"


@pytest.mark.parametrize("start", ["initiate", "respond"])
def test_dead_peer_hold_waits_for_traffic(tmp_path, start):
    pair = pair_with(
        tmp_path,
        {"dpd_delay": "10s", "dpd_action": "hold", "retry_interval": "5s", "start": start},
        {"dpd_delay": 0, "start": "initiate" if start == "respond" else "respond"},
        start=False,
    )
    (pair.a if start == "initiate" else pair.b).start(pair.now)
    pair.pump()
    assert pair.status("a")["state"] == "established"
    kill_b_answers_and_wait(pair)
    assert pair.a.counters["dpd_hold"] == 1
    # The shell arms the peer's trap on this event (like start: trap).
    assert pair.of_type("a", ev.PeerDead) == [ev.PeerDead("b", "hold")]
    assert pair.status("a")["state"] == "held"
    inits = len(of_exchange(pair, "a", IKE_SA_INIT))
    pair.net.drop = lambda sent: False
    pair.advance(600)
    assert pair.status("a")["state"] == "held"
    assert len(of_exchange(pair, "a", IKE_SA_INIT)) == inits  # nothing without traffic
    pair.a.initiate("b", pair.now, on_demand=True)  # the trap's first packet
    pair.pump()
    assert pair.status("a")["state"] == "established"
    assert len(ike_sas(pair, "a")) == 1
    # Back up, a start: initiate peer is kept up again (retried after a failure); a
    # start: respond peer is not.
    pair.net.drop = lambda sent: True
    pair.advance(10 + 3.5 + 0.1)  # dead again: held again
    assert pair.status("a")["state"] == "held"
    pair.a.initiate("b", pair.now, on_demand=True)
    pair.advance(3.5 + 0.1)  # this attempt fails too
    assert pair.a.peer_state["b"].wanted is (start == "initiate")
    assert (pair.status("a")["state"] == "connecting") is (start == "initiate")


def test_held_peer_that_comes_back_by_itself_is_accepted(tmp_path):
    pair = pair_with(
        tmp_path,
        {"dpd_delay": "10s", "dpd_action": "hold", "start": "respond"},
        {"dpd_delay": 0, "start": "initiate"},
    )
    pair.b.start(pair.now)
    pair.pump()
    assert pair.status("a")["state"] == "established"
    kill_b_answers_and_wait(pair)
    assert pair.status("a")["state"] == "held"
    pair.net.drop = lambda sent: False
    restart(pair, "b").start(pair.now)
    pair.pump()
    assert pair.status("a")["state"] == "established"
    assert len(ike_sas(pair, "a")) == 1


# ---- INITIAL_CONTACT ------------------------------------------------------------------


def notify_types(payloads: list[object]) -> list[int]:
    return [p.notify_type for p in payloads if isinstance(p, pl.Notify)]


def test_first_ike_auth_carries_initial_contact(tmp_path):
    pair = pair_with(tmp_path, start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    (request,) = [c for c in pair.cleartext if c.exchange_type == IKE_AUTH and not c.response]
    assert INITIAL_CONTACT in notify_types(request.payloads)
    (response,) = [c for c in pair.cleartext if c.exchange_type == IKE_AUTH and c.response]
    assert INITIAL_CONTACT not in notify_types(response.payloads)
    assert "initial_contact_deleted" not in pair.b.counters


def test_no_initial_contact_beside_another_ike_sa(tmp_path):
    """Reload of a changed peer: the new IKE SA starts while the old one is being deleted."""
    a2 = side_a(**FAST, esp=("aes128gcm16",))
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST, esp=("aes256gcm16", "aes128gcm16")))
    pair.record_cleartext()
    pair.a.reconfigure(build_config(a2, tmp_path / "a2", "a"), pair.now)
    pair.a.initiate("b", pair.now)
    pair.pump()
    requests = [c for c in pair.cleartext if c.exchange_type == IKE_AUTH and not c.response]
    assert len(requests) == 1
    assert INITIAL_CONTACT not in notify_types(requests[0].payloads)
    assert len(ike_sas(pair, "a")) == 1 and len(ike_sas(pair, "b")) == 1


def test_restarted_initiator_clears_the_survivor_with_initial_contact(tmp_path):
    pair = pair_with(tmp_path)
    (old_child,) = pair.established("b")
    old_spi = pair.b.ike_sa("a").local_spi
    sent_before = len(pair.sent_by("b"))
    restart(pair, "a").start(pair.now)  # kill -9 and start again
    pair.pump()
    assert pair.b.counters["initial_contact_deleted"] == 1
    (gone,) = pair.of_type("b", ev.IkeSaDeleted)
    assert "restarted (INITIAL_CONTACT)" in gone.reason
    (child_gone,) = pair.of_type("b", ev.ChildSaDeleted)
    assert child_gone.spi_in == old_child.child.spi_in
    # No Delete for the forgotten SA: b only answered IKE_SA_INIT and IKE_AUTH.
    assert [s.data[18] for s in pair.sent_by("b")[sent_before:]] == [IKE_SA_INIT, IKE_AUTH]
    (sa,) = ike_sas(pair, "b")
    assert sa.local_spi != old_spi
    assert len(installed_spis(pair, "b")) == 1 and len(installed_spis(pair, "a")) == 1
    assert pair.status("b")["state"] == pair.status("a")["state"] == "established"


def test_initial_contact_spares_other_peers(tmp_path):
    """Only IKE SAs with the sender's identity go; another peer of b keeps its SA."""
    c_ip = "192.0.2.3"
    c_side = side_a(listen=c_ip, local_ts=("10.3.0.0/24",), psk="0x" + "6b" * 32, **FAST)
    b = side_b(
        **FAST,
        extra_peers=(
            side_b(
                name="c",
                remote_address=c_ip,
                remote_ts=("10.3.0.0/24",),
                psk="0x" + "6b" * 32,
            ),
        ),
    )
    pair = IkePair(tmp_path, side_a(**FAST), b)
    c = pair.add_manager("c", c_ip, build_config(c_side, tmp_path / "c", "c"))
    c.start(pair.now)
    pair.pump()
    assert {sa.peer_name for sa in ike_sas(pair, "b")} == {"a", "c"}
    restart(pair, "a").start(pair.now)
    pair.pump()
    assert pair.b.counters["initial_contact_deleted"] == 1
    assert sorted(sa.peer_name for sa in ike_sas(pair, "b")) == ["a", "c"]
    assert c.status()[0]["state"] == "established"
    assert [e.peer for e in pair.of_type("b", ev.IkeSaDeleted)] == ["a"]


# ---- a restarted responder: INVALID_IKE_SPI and DPD ----------------------------------------


def test_restarted_responder_answers_invalid_ike_spi_and_is_replaced(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "10s"}, {"dpd_delay": "10s"})
    old = pair.a.ike_sa("b")
    restart(pair, "b")  # b forgot everything; it only responds
    pair.advance(10.1)
    (check, *_) = informational(pair, "a")
    (hint,) = informational(pair, "b", response=True)
    msg = parse_message(hint.data)
    # §2.21.4: same SPIs and message id, response, unprotected, just the notify.
    assert (msg.spi_i, msg.spi_r) == (old.spi_i, old.spi_r)
    assert msg.message_id == parse_message(check.data).message_id
    assert msg.response and not msg.initiator
    assert [p.notify_type for p in msg.payloads] == [INVALID_IKE_SPI]
    assert len(hint.data) <= len(check.data)  # never an amplifier
    assert pair.b.counters["invalid_ike_spi_sent"] == 1
    assert pair.a.counters["invalid_ike_spi_received"] == 1
    # The hint leaves the old SA alone but starts a new one (with INITIAL_CONTACT) at
    # once, which replaces it: no waiting for the retransmissions to run out.
    assert pair.a.counters["restart_hints_followed"] == 1
    (sa,) = ike_sas(pair, "a")
    assert sa is not old and sa.established_at == pytest.approx(1010.0)
    (gone,) = pair.of_type("a", ev.IkeSaDeleted)
    assert "replaced after INVALID_IKE_SPI" in gone.reason
    assert "dpd_restart" not in pair.a.counters
    assert pair.status("a")["state"] == pair.status("b")["state"] == "established"
    assert len(ike_sas(pair, "b")) == 1
    assert len(installed_spis(pair, "a")) == 1 and len(installed_spis(pair, "b")) == 1
    assert pair.b.counters.get("initial_contact_deleted", 0) == 0  # b had nothing to drop


def forge_invalid_spi(pair: IkePair, *, pump: bool = True) -> None:
    """An INVALID_IKE_SPI answer to a's outstanding request, not from b."""
    from ipsecd.ike import message as codec

    sa = pair.a.ike_sa("b")
    assert sa.outstanding is not None
    forged = codec.encode(
        codec.Message(
            spi_i=sa.spi_i,
            spi_r=sa.spi_r,
            exchange_type=INFORMATIONAL,
            initiator=False,
            response=True,
            message_id=sa.outstanding.message_id,
            payloads=(pl.Notify(notify_type=INVALID_IKE_SPI),),
        )
    )
    if pump:
        pair.inject("a", forged)
    else:
        pair.a.receive_datagram(forged, (A_IP, 4500), (B_IP, 4500), pair.now)


def test_forged_invalid_ike_spi_costs_one_new_ike_sa_at_most(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "10s"}, {"dpd_delay": "60s"})
    old = pair.a.ike_sa("b")
    pair.net.drop = lambda sent: sent.sender == "b"  # hold b's answer back a moment
    pair.advance(10.1)
    pair.net.drop = lambda sent: False
    forge_invalid_spi(pair, pump=False)
    forge_invalid_spi(pair)  # a second one starts nothing more
    assert pair.a.counters["restart_hints_followed"] == 1
    pair.advance(5)
    # Both sides moved to the new IKE SA: b dropped the old one on INITIAL_CONTACT.
    (a_sa,) = ike_sas(pair, "a")
    (b_sa,) = ike_sas(pair, "b")
    assert a_sa is not old and a_sa.local_spi == b_sa.remote_spi
    assert pair.b.counters["initial_contact_deleted"] == 1
    assert len(installed_spis(pair, "a")) == 1 and len(installed_spis(pair, "b")) == 1
    assert pair.of_type("a", ev.NegotiationFailed) == []


@pytest.mark.parametrize("action", ["clear", "hold"])
def test_invalid_ike_spi_is_ignored_unless_dpd_action_restart(tmp_path, action):
    pair = pair_with(tmp_path, {"dpd_delay": "10s", "dpd_action": action}, {"dpd_delay": 0})
    old = pair.a.ike_sa("b")
    pair.net.drop = lambda sent: sent.sender == "b"
    pair.advance(10.1)
    forge_invalid_spi(pair)
    assert pair.a.counters["invalid_ike_spi_received"] == 1
    assert "restart_hints_followed" not in pair.a.counters
    assert ike_sas(pair, "a") == [old]


def unknown_request(
    spi_i: int, *, response: bool = False, exchange: int = INFORMATIONAL, sk: int = 32
) -> bytes:
    """An IKE message for IKE SA (spi_i, 1) that no one has, with an ``sk``-byte SK body."""
    flags = 0x08 | (0x20 if response else 0)
    body = struct.pack("!BBH", 0, 0, 4 + sk) + os.urandom(sk) if sk else b""
    first = 46 if sk else 0
    header = struct.pack("!QQBBBBII", spi_i, 1, first, 0x20, exchange, flags, 5, 28 + len(body))
    return header + body


def test_invalid_ike_spi_answers_are_rate_limited(tmp_path):
    pair = pair_with(tmp_path)
    before = len(pair.sent_by("b"))
    for _ in range(50):
        pair.inject("b", unknown_request(int.from_bytes(os.urandom(8), "big") | 1))
    answers = pair.sent_by("b")[before:]
    assert len(answers) == 10
    assert pair.b.counters["invalid_ike_spi_suppressed"] == 40
    assert all(len(s.data) == 36 and s.dst == (A_IP, 4500) for s in answers)
    pair.advance(1)
    pair.inject("b", unknown_request(7))
    assert len(pair.sent_by("b")[before:]) == 11


def test_no_invalid_ike_spi_for_responses_short_or_odd_requests(tmp_path):
    pair = pair_with(tmp_path)
    before = len(pair.sent_by("b"))
    pair.inject("b", unknown_request(9, response=True))
    pair.inject("b", unknown_request(10, sk=0))  # shorter than the answer: no amplifier
    pair.inject("b", unknown_request(11, exchange=IKE_SA_INIT))  # SPIr set: not a new SA
    pair.inject("b", unknown_request(12, exchange=99))
    pair.inject("b", b"\x00" * 3)  # malformed
    assert pair.sent_by("b")[before:] == []
    assert pair.b.counters["unknown_spi"] == 4
    assert pair.b.counters["invalid_ike_spi_suppressed"] == 2
    pair.inject("b", unknown_request(13, exchange=IKE_AUTH))
    (answer,) = pair.sent_by("b")[before:]
    assert parse_message(answer.data).exchange_type == INFORMATIONAL


# ---- crossing initiations -------------------------------------------------------------------


def test_crossing_initiations_leave_one_ike_sa(tmp_path):
    """Both ends start: initiate at the same moment; both delete the same duplicate."""
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST, start="initiate"), start=False)
    pair.a.start(pair.now)
    pair.b.start(pair.now)
    pair.pump()
    assert pair.a.counters["duplicate_ike_sa_deleted"] == 1
    assert pair.b.counters["duplicate_ike_sa_deleted"] == 1
    assert_one_working_pair(pair)
    pair.advance(100)  # and it stays that way: no retries, no further deletes
    assert_one_working_pair(pair)
    assert pair.of_type("a", ev.NegotiationFailed) == pair.of_type("b", ev.NegotiationFailed) == []


def test_both_ends_restart_after_an_outage_and_keep_one_ike_sa(tmp_path):
    pair = pair_with(tmp_path, {"dpd_delay": "10s"}, {"dpd_delay": "10s"})
    pair.net.drop = lambda sent: True  # the link goes down
    pair.advance(20)
    assert pair.a.counters["dpd_restart"] == pair.b.counters["dpd_restart"] == 1
    pair.net.drop = lambda sent: False  # and comes back while both are re-initiating
    pair.advance(30)
    assert_one_working_pair(pair)


def test_dead_trap_peer_is_restarted_once_not_kept_up(tmp_path):
    """start: trap with dpd_action restart: one new attempt, on demand (no retries after)."""
    pair = pair_with(
        tmp_path, {"dpd_delay": "10s", "start": "trap", "retry_interval": "5s"}, {"dpd_delay": 0}
    )
    pair.a.initiate("b", pair.now, on_demand=True)  # the first packet
    pair.pump()
    assert pair.status("a")["state"] == "established"
    kill_b_answers_and_wait(pair)
    assert pair.a.counters["dpd_restart"] == 1
    assert pair.status("a")["state"] == "init-sent"  # restarted at once ...
    pair.advance(3.5 + 0.1)  # ... but that attempt fails: no retry, traffic restarts it
    assert pair.status("a")["state"] == "down"
    assert pair.a.peer_state["b"].wanted is False
    pair.advance(60)
    assert pair.status("a")["state"] == "down"


def test_delete_answered_with_invalid_ike_spi_ends_at_once(tmp_path):
    """Our Delete reaches a peer that no longer has the IKE SA (it deleted it first, or
    restarted): its INVALID_IKE_SPI ends our deletion instead of two minutes of
    retransmissions (RFC 7296 §1.4.1, §2.21.4)."""
    pair = pair_with(tmp_path, {}, {})
    restart(pair, "b")
    pair.a.terminate("b", pair.now)
    pair.pump()
    assert pair.a.counters["invalid_ike_spi_received"] == 1
    assert ike_sas(pair, "a") == [] and pair.a.get_timer() is None
    deleted = [e for e in pair.of_type("a", ev.IkeSaDeleted)]
    assert deleted and "INVALID_IKE_SPI" in deleted[-1].reason


# ---- a Delete whose answer was lost (RFC 7296 §2.1) ---------------------------------------


def delete_with_lost_answer(pair: IkePair) -> tuple[Sent, IkeSa]:
    """a deletes its IKE SA; b answers and forgets it, the answer is lost once."""
    old = pair.a.ike_sa("b")
    pair.net.drop = drop = DropFirst("b", INFORMATIONAL)
    pair.a.terminate("b", pair.now)
    pair.pump()
    assert len(drop.lost) == 1 and ike_sas(pair, "b") == [] and ike_sas(pair, "a") == [old]
    (delete,) = informational(pair, "a")
    return delete, old


def test_retransmitted_delete_of_a_gone_ike_sa_gets_the_same_answer(tmp_path):
    """charon does not believe an INVALID_IKE_SPI (unauthenticated, §2.21.4) and would
    keep its IKE SA for as long as it retransmits: the lost answer is sent again."""
    pair = pair_with(tmp_path, {}, {})
    _, old = delete_with_lost_answer(pair)
    pair.advance(1.0)  # a's first retransmission (0.5 s), answered from b's closed cache
    assert pair.b.counters["closed_retransmit_answered"] == 1
    assert "invalid_ike_spi_sent" not in pair.b.counters
    answers = informational(pair, "b", response=True)
    assert len(answers) == 2 and answers[0].data == answers[1].data
    assert ike_sas(pair, "a") == [] and "invalid_ike_spi_received" not in pair.a.counters
    gone = pair.of_type("a", ev.IkeSaDeleted)
    assert gone and all("INVALID_IKE_SPI" not in e.reason for e in gone)
    assert not old.alive


def test_closed_answers_go_only_to_the_same_request_a_few_times(tmp_path):
    pair = pair_with(tmp_path, {}, {})
    delete, _ = delete_with_lost_answer(pair)
    sent_before = len(informational(pair, "b", response=True))
    forged = bytearray(delete.data)
    forged[-1] ^= 1  # same SPIs and message ID, other bytes
    pair.inject("b", bytes(forged))
    pair.inject("b", delete.data, src=("203.0.113.9", 4500))  # from elsewhere
    assert pair.b.counters["retransmit_mismatch"] == 1
    assert pair.b.counters["retransmit_wrong_source"] == 1
    for _ in range(6):
        pair.inject("b", delete.data)  # a replay, as often as anyone likes
    assert pair.b.counters["closed_retransmit_answered"] == 4
    assert pair.b.counters["retransmit_rate_limited"] == 2
    answers = informational(pair, "b", response=True)[sent_before:]
    assert len(answers) == 4 and all(len(a.data) <= len(delete.data) for a in answers)
    assert "invalid_ike_spi_sent" not in pair.b.counters


def test_closed_answers_expire(tmp_path):
    pair = pair_with(tmp_path, {}, {})
    pair.a.terminate("b", pair.now)
    pair.pump()
    (delete,) = informational(pair, "a")
    assert len(pair.b.closed) == 1
    pair.now += 61.0
    pair.inject("b", delete.data)  # too late: an unknown SPI like any other
    assert pair.b.counters["invalid_ike_spi_sent"] == 1
    assert "closed_retransmit_answered" not in pair.b.counters and len(pair.b.closed) == 0
