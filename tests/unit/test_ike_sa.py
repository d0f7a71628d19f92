"""IKE SA core: retransmission schedule (RFC 7296 §2.1), retry, cached answers, bad input.

Real configs (``parse_config``) and the real codec; the peer that never answers
is simply not there.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipsecd.ike import events as ev
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.sa import RetransmitPolicy
from tests.unit.ike_pair_support import (
    A_IP,
    B_IP,
    IkePair,
    build_config,
    side_a,
)


def lonely(tmp_path, **overrides) -> IkeManager:
    """Side a's manager with nobody to answer it."""
    config = build_config(side_a(**overrides), tmp_path, "a")
    return IkeManager(config, 0.0)


def test_default_policy_gives_up_after_about_two_minutes():
    policy = RetransmitPolicy()
    assert policy.give_up_after() == pytest.approx(127.5)


def test_peer_not_answering_schedule_gives_up_and_retries(tmp_path):
    mgr = lonely(tmp_path, retransmit_tries=3, retry_interval="10s")
    mgr.start(0.0)
    sent = mgr.datagrams_to_send()
    assert len(sent) == 1
    first = sent[0]
    assert first.local == (A_IP, 500) and first.remote == (B_IP, 500)
    assert first.marker is False and first.keepalive is False
    times = []
    now = 0.0
    while True:
        when = mgr.get_timer()
        assert when is not None
        now = when
        mgr.handle_timer(now)
        out = mgr.datagrams_to_send()
        if not out:
            break
        assert out[0].data == first.data  # the very same request is retransmitted
        times.append(now)
    assert times == [0.5, 1.5, 3.5]
    assert now == pytest.approx(7.5)  # 0.5 + 1 + 2 + 4
    event = mgr.next_event()
    assert isinstance(event, ev.NegotiationFailed)
    assert f"no response from {B_IP}:500 after 3 retransmits" in event.reason
    assert mgr.status()[0]["state"] == "connecting"
    assert mgr.status()[0]["last_error"] == event.reason
    # After the pause a new connection attempt starts with a fresh SPI.
    assert mgr.get_timer() == pytest.approx(17.5)
    mgr.handle_timer(17.5)
    again = mgr.datagrams_to_send()
    assert len(again) == 1 and again[0].data[:8] != first.data[:8]
    assert mgr.counters["retransmits"] == 3
    assert mgr.counters["connection_retries"] == 1


def test_responder_only_peer_is_not_initiated(tmp_path):
    mgr = lonely(tmp_path, start="respond")
    mgr.start(0.0)
    assert mgr.datagrams_to_send() == []
    assert mgr.get_timer() is None
    assert mgr.status()[0]["state"] == "down"


def test_terminate_stops_retrying(tmp_path):
    mgr = lonely(tmp_path, retransmit_tries=0, retry_interval="5s")
    mgr.start(0.0)
    mgr.handle_timer(0.5)
    assert mgr.get_timer() == pytest.approx(5.5)
    mgr.terminate("b", 1.0)
    assert mgr.get_timer() is None


def test_garbage_is_counted_never_raised(tmp_path):
    mgr = lonely(tmp_path)
    for junk in (b"", b"\x00", b"\xff" * 27, bytes(200)):
        mgr.receive_datagram(junk, (A_IP, 500), (B_IP, 500), 1.0)
    assert sum(mgr.counters.values()) == 4
    assert mgr.next_event() is None
    assert mgr.datagrams_to_send() == []


def test_manual_peers_are_ignored(tmp_path):
    config = build_config(side_a(), tmp_path, "a")
    (peer,) = config.peers
    manual = replace(peer, name="static", manual=object())
    mgr = IkeManager(replace(config, peers=(peer, manual)), 0.0)
    assert [s["peer"] for s in mgr.status()] == ["b"]


def test_responder_answers_retransmitted_request_from_cache(tmp_path):
    pair = IkePair(tmp_path)
    b_sa = pair.b.ike_sa("a")
    assert b_sa is not None
    answered = b_sa.counters.get("retransmit_answered", 0)
    pair.a.check_liveness("b", pair.now)
    (request,) = pair.a.datagrams_to_send()
    assert request.data[18] == ExchangeType.INFORMATIONAL
    expected = b_sa.expected_request_id

    def deliver(data: bytes) -> list[bytes]:
        pair.b.receive_datagram(data, request.remote, request.local, pair.now)
        return [d.data for d in pair.b.datagrams_to_send()]

    first = deliver(request.data)
    assert len(first) == 1 and b_sa.expected_request_id == expected + 1
    assert deliver(request.data) == first  # a retransmission: the cached answer
    assert b_sa.expected_request_id == expected + 1  # processed once
    assert b_sa.counters["retransmit_answered"] == answered + 1
    # An old message id and one from the future are dropped and counted.
    invalid = b_sa.counters.get("invalid_message_id", 0)
    for message_id in (expected - 1, expected + 7):
        forged = request.data[:20] + message_id.to_bytes(4, "big") + request.data[24:]
        assert deliver(forged) == []
    assert b_sa.counters["invalid_message_id"] == invalid + 2
