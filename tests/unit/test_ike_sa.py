"""IKE SA core: state table, retransmission schedule (RFC 7296 §2.1), retry, cached answers.

The codec is replaced by a stand-in at the single seam (``exchanges/base``), so
these tests exercise only the state machine and its timing with a fake clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from ipsecd.crypto.proposals import parse_proposal
from ipsecd.ike import events as ev
from ipsecd.ike.exchanges import base
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.sa import IKE_TRANSITIONS, IkeSa, IkeState, IllegalTransition, RetransmitPolicy
from ipsecd.selectors import TrafficSelector


@dataclass
class _Ke:
    public: bytes = b"P" * 32

    def shared_secret(self, peer: bytes) -> bytes:
        return b"S" * 32


@pytest.fixture
def fake_codec(monkeypatch):
    monkeypatch.setattr(base, "new_key_exchange", lambda group: _Ke())
    monkeypatch.setattr(
        base, "natd_hash", lambda i, r, a: hashlib.sha1(f"{i}{r}{a}".encode()).digest()
    )
    for name in ("p_sa_ike", "p_ke", "p_nonce", "p_notify"):
        monkeypatch.setattr(base, name, lambda *a, _n=name, **k: (_n, a))
    monkeypatch.setattr(
        base,
        "encode",
        lambda sa, exchange, mid, response, payloads: (
            f"{sa.spi_i}/{exchange}/{mid}/{response}/{len(payloads)}".encode()
        ),
    )


def peer(name="east", start="initiate", remote="192.0.2.2"):
    return SimpleNamespace(
        name=name,
        remote_address=remote,
        remote_port=500,
        local_address="192.0.2.1",
        start=start,
        local_ts=(TrafficSelector.from_prefix("10.1.0.0/24"),),
        remote_ts=(TrafficSelector.from_prefix("10.2.0.0/24"),),
        ike_proposals=(parse_proposal("aes256gcm16-prfsha256-x25519", "ike"),),
        esp_proposals=(parse_proposal("aes256gcm16", "esp"),),
        auth=SimpleNamespace(psk=b"secret", local_id=None, remote_id=None),
        manual=None,
    )


def config(*peers):
    return SimpleNamespace(gateway=SimpleNamespace(port=4500, ike_port=500), peers=peers)


def test_state_table_is_explicit():
    assert IKE_TRANSITIONS[(IkeState.CREATED, "init_sent")] is IkeState.INIT_SENT
    assert IKE_TRANSITIONS[(IkeState.HALF_OPEN, "auth_done")] is IkeState.ESTABLISHED
    for state in IkeState:
        assert IKE_TRANSITIONS[(state, "failed")] is IkeState.DELETED
    sa = IkeSa(peer(), True, ("a", 500), ("b", 500), 4500, RetransmitPolicy(), 0.0)
    with pytest.raises(IllegalTransition):
        sa.transition("auth_done")


def test_default_policy_gives_up_after_about_two_minutes():
    policy = RetransmitPolicy()
    assert policy.give_up_after() == pytest.approx(127.5)


def test_peer_not_answering_schedule_gives_up_and_retries(fake_codec):
    policy = RetransmitPolicy(initial=0.5, factor=2.0, max_retransmits=3, retry_pause=10.0)
    mgr = IkeManager(config(peer()), 0.0, policy=policy)
    mgr.start(0.0)
    sent = mgr.datagrams_to_send()
    assert len(sent) == 1
    first = sent[0]
    assert first.local == ("192.0.2.1", 500) and first.remote == ("192.0.2.2", 500)
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
    assert "no response from 192.0.2.2:500 after 3 retransmits" in event.reason
    assert mgr.status()[0]["state"] == "connecting"
    assert mgr.status()[0]["last_error"] == event.reason
    # After the pause a new connection attempt starts with a fresh SPI.
    assert mgr.get_timer() == pytest.approx(17.5)
    mgr.handle_timer(17.5)
    again = mgr.datagrams_to_send()
    assert len(again) == 1 and again[0].data != first.data
    assert mgr.counters["retransmits"] == 3
    assert mgr.counters["connection_retries"] == 1


def test_responder_only_peer_is_not_initiated(fake_codec):
    mgr = IkeManager(config(peer(start="respond")), 0.0)
    mgr.start(0.0)
    assert mgr.datagrams_to_send() == []
    assert mgr.get_timer() is None
    assert mgr.status()[0]["state"] == "down"


def test_terminate_stops_retrying(fake_codec):
    policy = RetransmitPolicy(max_retransmits=0, retry_pause=5.0)
    mgr = IkeManager(config(peer()), 0.0, policy=policy)
    mgr.start(0.0)
    mgr.handle_timer(0.5)
    assert mgr.get_timer() == pytest.approx(5.5)
    mgr.terminate("east", 1.0)
    assert mgr.get_timer() is None


def test_garbage_is_counted_never_raised(fake_codec):
    mgr = IkeManager(config(peer()), 0.0)
    for junk in (b"", b"\x00", b"\xff" * 27, bytes(200)):
        mgr.receive_datagram(junk, ("192.0.2.1", 500), ("192.0.2.2", 500), 1.0)
    assert sum(mgr.counters.values()) == 4
    assert mgr.next_event() is None
    assert mgr.datagrams_to_send() == []


def test_manual_peers_are_ignored(fake_codec):
    manual = peer(name="static")
    manual.manual = object()
    mgr = IkeManager(config(peer(), manual), 0.0)
    assert [s["peer"] for s in mgr.status()] == ["east"]


def test_responder_answers_retransmitted_request_from_cache(monkeypatch, fake_codec):
    calls = []

    def handler(sa, message, now):
        calls.append(message.message_id)
        return []

    monkeypatch.setattr(base, "responder_for", lambda exchange: handler)
    monkeypatch.setattr(
        base,
        "decode",
        lambda sa, data, header: base.Incoming(
            header.spi_i, header.spi_r, header.exchange, header.message_id, False, [], data
        ),
    )
    sa = IkeSa(
        peer(),
        False,
        ("192.0.2.1", 4500),
        ("192.0.2.2", 4500),
        4500,
        RetransmitPolicy(),
        0.0,
        spi_i=1,
        spi_r=2,
        state=IkeState.ESTABLISHED,
    )
    sa.expected_request_id = 2

    def request(mid):
        return base.Header(1, 2, base.INFORMATIONAL, mid, True, False)

    sa.receive(b"req2", request(2), sa.local, sa.remote, 1.0)
    first = list(sa.outgoing)
    assert len(first) == 1 and first[0].marker is True  # IKE on 4500 carries the marker
    sa.outgoing.clear()
    sa.receive(b"req2", request(2), sa.local, sa.remote, 2.0)  # retransmission
    assert [d.data for d in sa.outgoing] == [first[0].data]
    assert calls == [2]  # processed once
    assert sa.counters["retransmit_answered"] == 1
    sa.outgoing.clear()
    sa.receive(b"old", request(0), sa.local, sa.remote, 3.0)  # replayed old id
    sa.receive(b"future", request(7), sa.local, sa.remote, 3.0)
    assert sa.outgoing == [] and calls == [2]
    assert sa.counters["invalid_message_id"] == 2
