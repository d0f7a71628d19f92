"""IKE fragmentation (RFC 7383) through two real IKE SAs with a fake clock.

The pair harness (``ike_pair_support``) runs both IkeManagers; fragments are built
with the real SA keys and handed to the receiving manager the way the shell does,
so every check goes through header dispatch, message ids, the per-fragment ICV and
reassembly.  Hostile fragments (out of order, duplicated, overlapping, missing,
oversized, wrong totals, forged) must be counted and dropped, never raise.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from ipsecd.config import ConfigError
from ipsecd.ike import fragments
from ipsecd.ike import payloads as pl
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.exchanges import RESPONDERS, auth, informational, sa_init
from ipsecd.ike.message import Message
from tests.unit.ike_pair_support import (
    IkePair,
    Sent,
    build_config,
    esp_roundtrip,
    ipv4_packet,
    messages,
    notify_types,
    side_a,
    side_b,
)

IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = (
    ExchangeType.IKE_SA_INIT,
    ExchangeType.IKE_AUTH,
    ExchangeType.INFORMATIONAL,
)
FRAGMENTATION_SUPPORTED = 16430
SKF = 53
CBC = ("aes128-sha256-ecp256", "aes128-sha256")
AEAD = ("aes256gcm16-prfsha256-x25519", "aes256gcm16")


def is_fragment(s: Sent) -> bool:
    return s.data[16] == SKF


def counter(pair: IkePair, side: str, name: str) -> int:
    return pair.mgr(side).counters.get(name, 0)


def assert_tunnel_works(pair: IkePair) -> None:
    (a_event,) = pair.established("a")
    (b_event,) = pair.established("b")
    there = ipv4_packet("10.1.0.5", "10.2.0.7")
    back = ipv4_packet("10.2.0.7", "10.1.0.5", b"and back")
    assert esp_roundtrip(a_event.child, b_event.child, there) == there
    assert esp_roundtrip(b_event.child, a_event.child, back) == back
    assert pair.status("a")["state"] == pair.status("b")["state"] == "established"


def fragments_of(pair: IkePair, sender: str, message_id: int, payloads: list[Any], size: int):
    """A request from ``sender``'s IKE SA, split with its real keys into ``size``-byte pieces."""
    sa = pair.mgr(sender).ike_sa(pair.peer_of(sender))
    assert sa is not None
    msg = Message(
        spi_i=sa.spi_i,
        spi_r=sa.spi_r,
        exchange_type=INFORMATIONAL,
        message_id=message_id,
        initiator=sa.initiator,
        response=False,
        payloads=payloads,
    )
    return fragments.fragment(msg, sa.keys.sk_keys(sa.initiator), size)


def next_request_id(pair: IkePair, receiver: str) -> int:
    sa = pair.mgr(receiver).ike_sa(pair.peer_of(receiver))
    assert sa is not None
    return sa.expected_request_id


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Payloads of every INFORMATIONAL request a responder processed."""
    record: list[list[Any]] = []
    original = informational.respond

    def spy(sa: Any, message: Any, now: float) -> list[Any]:
        record.append(list(message.payloads))
        return original(sa, message, now)

    monkeypatch.setitem(RESPONDERS, ExchangeType.INFORMATIONAL, spy)
    return record


def notify(n: int, size: int = 40) -> pl.Notify:
    """A status notify (ignored by the responder) carrying ``size`` bytes tagged ``n``."""
    return pl.Notify(notify_type=40000 + n % 1000, data=bytes([n % 256]) * size)


# ---- negotiation (RFC 7383 §2.3) ---------------------------------------------------


def test_both_sides_announce_fragmentation_in_ike_sa_init(tmp_path):
    pair = IkePair(tmp_path)
    (request,) = messages(pair, "a", IKE_SA_INIT)
    (response,) = messages(pair, "b", IKE_SA_INIT)
    assert FRAGMENTATION_SUPPORTED in notify_types(request.data)
    assert FRAGMENTATION_SUPPORTED in notify_types(response.data)
    assert pair.a.ike_sa("b").fragmentation_active and pair.b.ike_sa("a").fragmentation_active
    assert pair.status("a")["fragmentation"] is pair.status("b")["fragmentation"] is True


@pytest.mark.parametrize("side", ["a", "b"])
def test_fragmentation_no_is_not_announced_and_nothing_is_fragmented(tmp_path, side):
    small = {"fragment_size": 128}
    a = side_a(**small, **({"fragmentation": "no"} if side == "a" else {}))
    b = side_b(**small, **({"fragmentation": "no"} if side == "b" else {}))
    pair = IkePair(tmp_path, a, b)
    (request,) = messages(pair, "a", IKE_SA_INIT)
    (response,) = messages(pair, "b", IKE_SA_INIT)
    # The responder answers with the notify only if the request carried it.
    assert FRAGMENTATION_SUPPORTED not in notify_types(response.data)
    assert (FRAGMENTATION_SUPPORTED in notify_types(request.data)) == (side == "b")
    assert not any(is_fragment(s) for s in pair.net.log)
    assert counter(pair, "a", "fragments_sent") == counter(pair, "b", "fragments_sent") == 0
    assert pair.status("a")["fragmentation"] is pair.status("b")["fragmentation"] is False
    assert_tunnel_works(pair)


def test_accept_announces_but_never_sends_fragments(tmp_path):
    pair = IkePair(
        tmp_path,
        side_a(fragment_size=128, fragmentation="accept"),
        side_b(fragment_size=128),
    )
    (request,) = messages(pair, "a", IKE_SA_INIT)
    assert FRAGMENTATION_SUPPORTED in notify_types(request.data)
    assert [is_fragment(s) for s in messages(pair, "a", IKE_AUTH)] == [False]
    b_auth = messages(pair, "b", IKE_AUTH)
    assert len(b_auth) > 1 and all(is_fragment(s) for s in b_auth)
    assert counter(pair, "a", "fragmented_messages_received") == 1
    assert_tunnel_works(pair)


# ---- sending and reassembling real exchanges -----------------------------------------


@pytest.mark.parametrize(("ike", "esp"), [AEAD, CBC], ids=["aead", "cbc"])
@pytest.mark.parametrize("size", [128, 150, 180])
def test_ike_auth_fragmented_both_ways(tmp_path, ike, esp, size):
    pair = IkePair(
        tmp_path,
        side_a(ike=(ike,), esp=(esp,), gateway_fragment_size=size),
        side_b(ike=(ike,), esp=(esp,), fragment_size=size),
    )
    for side in ("a", "b"):
        datagrams = messages(pair, side, IKE_AUTH)
        assert len(datagrams) >= 2 and all(is_fragment(s) for s in datagrams)
        # The whole UDP payload (IKE on port 4500: 4-byte non-ESP marker) fits.
        assert all(len(s.data) + 4 <= size for s in datagrams)
        numbers = [struct.unpack_from("!HH", s.data, 32) for s in datagrams]
        assert numbers == [(n, len(datagrams)) for n in range(1, len(datagrams) + 1)]
        # Only the first fragment names the first inner payload (RFC 7383 §2.5).
        assert datagrams[0].data[28] != 0 and all(s.data[28] == 0 for s in datagrams[1:])
        assert counter(pair, side, "fragmented_messages_sent") == 1
        assert counter(pair, side, "fragmented_messages_received") == 1
    assert_tunnel_works(pair)


def test_twenty_kilobyte_ike_auth_both_directions(tmp_path, monkeypatch):
    """IKE_AUTH request and response each carry a 20 KB CERT payload (default 1280)."""
    cert = bytes(range(256)) * 80  # 20480 bytes
    received: dict[str, list[Any]] = {}

    class BigAuth(auth.IkeAuth):
        def build_request(self, sa: Any, now: float) -> list[Any]:
            return [pl.Certificate(4, cert), *super().build_request(sa, now)]

        def process_response(self, sa: Any, message: Any, now: float) -> Any:
            received["a"] = list(message.payloads)
            return super().process_response(sa, message, now)

    original_respond = auth.respond

    def big_respond(sa: Any, message: Any, now: float) -> list[Any]:
        received["b"] = list(message.payloads)
        return [pl.Certificate(4, cert[::-1]), *original_respond(sa, message, now)]

    monkeypatch.setattr(sa_init, "IkeAuth", BigAuth)
    monkeypatch.setitem(RESPONDERS, ExchangeType.IKE_AUTH, big_respond)
    pair = IkePair(tmp_path)
    for side, expected in (("b", cert), ("a", cert[::-1])):
        certs = [p for p in received[side] if isinstance(p, pl.Certificate)]
        assert [c.data for c in certs] == [expected]
    for side in ("a", "b"):
        datagrams = messages(pair, side, IKE_AUTH)
        assert len(datagrams) == 17 and all(len(s.data) + 4 <= 1280 for s in datagrams)
    assert counter(pair, "a", "fragments_received") == counter(pair, "b", "fragments_received")
    assert counter(pair, "b", "fragments_received") == 17
    assert_tunnel_works(pair)


def test_lost_fragment_retransmits_the_same_fragments(tmp_path):
    dropped: list[bytes] = []

    def drop_second_once(s: Sent) -> bool:
        if s.sender == "a" and is_fragment(s) and s.data[33] == 2 and not dropped:
            dropped.append(s.data)
            return True
        return False

    a, b = side_a(fragment_size=150), side_b(fragment_size=150)
    pair = IkePair(tmp_path, a, b, start=False)
    pair.net.drop = drop_second_once
    pair.a.start(pair.now)
    pair.pump()
    first = [s.data for s in messages(pair, "a", IKE_AUTH)]
    assert pair.status("a")["state"] == "auth-sent"
    assert counter(pair, "b", "fragments_received") == len(first) - 1
    pair.advance(0.6)  # RFC 7296 §2.1 retransmission: every fragment again, unchanged
    again = [s.data for s in messages(pair, "a", IKE_AUTH)][len(first) :]
    assert again == first
    assert counter(pair, "b", "fragment_duplicates") == len(first) - 1
    assert_tunnel_works(pair)


def test_retransmitted_fragmented_request_answered_once_on_fragment_one(tmp_path):
    """The response is lost; the responder resends it for fragment 1 only (RFC 7383 §2.6.1)."""
    lost: list[bytes] = []
    blocked = [True]

    def drop_first_response(s: Sent) -> bool:
        if blocked[0] and s.sender == "b" and s.data[18] == IKE_AUTH:
            lost.append(s.data)
            return True
        return False

    pair = IkePair(tmp_path, side_a(fragment_size=150), side_b(fragment_size=150), start=False)
    pair.net.drop = drop_first_response
    pair.a.start(pair.now)
    pair.pump()
    responses = len(messages(pair, "b", IKE_AUTH))
    requests = len(messages(pair, "a", IKE_AUTH))
    assert responses >= 2 and requests >= 2
    blocked[0] = False
    pair.advance(0.6)
    assert counter(pair, "b", "retransmit_answered") == 1
    assert counter(pair, "b", "retransmit_fragment_ignored") == requests - 1
    # The cached fragments, byte for byte.
    assert [s.data for s in messages(pair, "b", IKE_AUTH)][responses:] == lost[:responses]
    assert_tunnel_works(pair)
    # A forged copy of fragment 1 of that request gets no answer (no amplification).
    first = next(s.data for s in messages(pair, "a", IKE_AUTH) if s.data[33] == 1)
    forged = first[:-1] + bytes([first[-1] ^ 1])
    before = len(messages(pair, "b"))
    pair.inject("b", forged)
    assert len(messages(pair, "b")) == before
    assert counter(pair, "b", "retransmit_fragment_forged") == 1
    pair.inject("b", first)
    assert len(messages(pair, "b")) == before + responses


def test_fragmentation_survives_ike_rekey(tmp_path):
    pair = IkePair(tmp_path, side_a(fragment_size=150), side_b(fragment_size=150))
    pair.a.rekey_ike("b", pair.now)
    pair.pump()
    new = pair.a.ike_sa("b")
    assert new.fragmentation_active and new.context.gateway_fragment_size is None
    assert pair.b.ike_sa("a").fragmentation_active
    before = counter(pair, "b", "fragmented_messages_received")
    pair.a.check_liveness("b", pair.now)  # an empty request: small, not fragmented
    pair.a.create_child("b", pair.now)  # CREATE_CHILD_SA: larger than 150 bytes
    pair.pump()
    assert counter(pair, "b", "fragmented_messages_received") > before
    assert len(pair.a.ike_sa("b").children) == 2


# ---- hostile and broken fragments (RFC 7383 §2.6.2) ------------------------------------


def deliver(pair: IkePair, receiver: str, datagrams: list[bytes]) -> None:
    for data in datagrams:
        pair.inject(receiver, data)


def test_out_of_order_fragments_reassemble(tmp_path, seen):
    pair = IkePair(tmp_path)
    payloads = [notify(n) for n in range(30)]
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), payloads, 300)
    assert len(frags) >= 4
    deliver(pair, "b", frags[::-1])
    assert seen == [payloads]
    assert counter(pair, "b", "fragmented_messages_received") == 1
    assert pair.b.counters.get("internal_error", 0) == 0


def test_duplicates_ignored_and_overlapping_content_cannot_replace(tmp_path, seen):
    pair = IkePair(tmp_path)
    mid = next_request_id(pair, "b")
    genuine = [notify(n) for n in range(20)]
    other = [notify(n + 500) for n in range(20)]  # same lengths, other bytes
    frags = fragments_of(pair, "a", mid, genuine, 300)
    rival = fragments_of(pair, "a", mid, other, 300)
    assert len(frags) == len(rival) >= 3
    deliver(pair, "b", [frags[0], frags[0], rival[1], frags[1]])
    deliver(pair, "b", frags[2:])
    # Fragment 2 of the rival set came first and was authentic: it is kept, so the
    # reassembled message mixes both; the later genuine fragment 2 is a duplicate.
    assert counter(pair, "b", "fragment_duplicates") == 2
    assert len(seen) == 1 and len(seen[0]) == len(genuine)
    assert seen[0] not in (genuine, other)  # the first authentic arrival of each number wins
    deliver(pair, "b", frags)  # the whole set again: a retransmission, answered from cache
    assert len(seen) == 1


def test_missing_fragment_delivers_nothing_and_times_out(tmp_path, seen):
    # No liveness checks (dead peer detection) while the clock jumps past the timeout.
    pair = IkePair(tmp_path, side_a(dpd_delay=0), side_b(dpd_delay=0))
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), [notify(n) for n in range(20)], 300)
    responses = len(messages(pair, "b", INFORMATIONAL))
    deliver(pair, "b", frags[:1] + frags[2:])
    assert seen == [] and len(messages(pair, "b", INFORMATIONAL)) == responses
    reassembler = pair.b.ike_sa("a").reassembler
    assert reassembler is not None and reassembler.buffered > 0
    pair.advance(fragments.REASSEMBLY_TIMEOUT + 5)
    pair.b.handle_timer(pair.now)
    assert reassembler.buffered == 0
    assert counter(pair, "b", "fragment_reassembly_timeouts") == 1
    deliver(pair, "b", frags)  # the peer's retransmission completes a fresh set
    assert len(seen) == 1


def test_oversized_reassembly_is_dropped(tmp_path, seen):
    pair = IkePair(tmp_path)
    big = [pl.Certificate(4, bytes([n]) * 30000) for n in range(3)]  # 90 KB > 64 KB
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), big, 1500)
    assert len(frags) <= fragments.MAX_FRAGMENTS
    deliver(pair, "b", frags)
    assert seen == []
    assert counter(pair, "b", "fragment_oversized") == 1
    assert pair.b.ike_sa("a").reassembler.buffered < fragments.MAX_REASSEMBLED
    assert pair.b.counters.get("internal_error", 0) == 0


def test_too_many_fragments_dropped_before_crypto(tmp_path, seen):
    pair = IkePair(tmp_path)
    payloads = [notify(n, 60) for n in range(100)]
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), payloads, 128)
    assert len(frags) > fragments.MAX_FRAGMENTS
    deliver(pair, "b", frags)
    assert seen == []
    assert counter(pair, "b", "fragment_too_many") == len(frags)
    assert counter(pair, "b", "fragments_received") == 0


def renumber(data: bytes, number: int, total: int) -> bytes:
    """Rewrite Fragment Number / Total Fragments (this breaks the ICV, on purpose)."""
    return data[:32] + struct.pack("!HH", number, total) + data[36:]


def test_bad_numbers_and_forged_fragments_counted(tmp_path, seen):
    pair = IkePair(tmp_path)
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), [notify(n) for n in range(20)], 300)
    total = len(frags)
    forged = bytearray(frags[1])
    forged[-20] ^= 0x01
    deliver(
        pair,
        "b",
        [
            renumber(frags[0], 0, total),  # fragment 0
            renumber(frags[0], total + 1, total),  # number beyond the total
            renumber(frags[0], 1, 0),  # total 0
            bytes(forged),  # bad ICV
            renumber(frags[1], 3, total),  # numbers fine, but not what was authenticated
            frags[0][:-1],  # truncated: lengths disagree
            frags[0][:30],  # shorter than header + SKF header
        ],
    )
    assert counter(pair, "b", "fragment_out_of_range") == 3
    assert counter(pair, "b", "fragment_bad_icv") == 2
    assert counter(pair, "b", "malformed") + counter(pair, "b", "fragment_malformed") == 2
    assert counter(pair, "b", "fragments_received") == 0 and seen == []
    deliver(pair, "b", frags)  # the genuine set still goes through
    assert len(seen) == 1
    assert pair.b.counters.get("internal_error", 0) == 0


def test_total_greater_restarts_smaller_is_dropped(tmp_path, seen):
    pair = IkePair(tmp_path)
    mid = next_request_id(pair, "b")
    payloads = [notify(n) for n in range(20)]
    coarse = fragments_of(pair, "a", mid, payloads, 400)
    fine = fragments_of(pair, "a", mid, payloads, 250)
    assert len(fine) > len(coarse) >= 2
    deliver(pair, "b", coarse[:1])
    deliver(pair, "b", fine[:1])  # the sender re-fragmented smaller: start over
    assert counter(pair, "b", "fragment_sets_restarted") == 1
    deliver(pair, "b", coarse[1:])  # fewer fragments than the set being built: dropped
    assert counter(pair, "b", "fragment_total_mismatch") == len(coarse) - 1
    assert seen == []
    deliver(pair, "b", fine[1:])
    assert seen == [payloads]


def test_fragments_of_a_wrong_message_id_are_dropped(tmp_path, seen):
    pair = IkePair(tmp_path)
    mid = next_request_id(pair, "b")
    frags = fragments_of(pair, "a", mid + 5, [notify(n) for n in range(20)], 300)
    deliver(pair, "b", frags)
    assert seen == [] and counter(pair, "b", "invalid_message_id") == len(frags)
    assert counter(pair, "b", "fragments_received") == 0


def test_fragment_for_unknown_spi_and_garbage(tmp_path):
    pair = IkePair(tmp_path)
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), [notify(1)], 128)
    wrong_spi = bytes(8) + b"\x01" * 8 + frags[0][16:]
    pair.inject("b", wrong_spi)
    header = frags[0][:28]
    for junk in (header, header + b"\x00" * 3, header + bytes(8), frags[0] + b"x"):
        pair.inject("b", junk)
    assert pair.b.counters.get("internal_error", 0) == 0
    assert counter(pair, "b", "fragments_received") == 0
    assert pair.status("b")["state"] == "established"


# ---- config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "mode"), [("yes", "yes"), ("no", "no"), ("accept", "accept"), ("true", "yes")]
)
def test_fragmentation_config_values(tmp_path, written, mode):
    config = build_config(side_a(fragmentation=written), tmp_path, "a")
    assert config.peers[0].fragmentation == mode
    assert config.gateway.fragment_size is None and config.peers[0].fragment_size is None


def test_fragmentation_force_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="IKEv1 only"):
        build_config(side_a(fragmentation="force"), tmp_path, "a")


@pytest.mark.parametrize("size", [127, 65536, "big"])
def test_fragment_size_out_of_range(tmp_path, size):
    with pytest.raises(ConfigError, match="fragment_size"):
        build_config(side_a(gateway_fragment_size=size), tmp_path, "a")


def test_default_fragment_size_by_family(tmp_path):
    pair = IkePair(tmp_path)
    assert pair.a.ike_sa("b").fragment_size == 1280
    assert fragments.default_fragment_size("2001:db8::1") == 1232
    sized = IkePair(tmp_path / "2", side_a(gateway_fragment_size=900), side_b(fragment_size=700))
    assert sized.a.ike_sa("b").fragment_size == 900
    assert sized.b.ike_sa("a").fragment_size == 700


def test_partial_sets_share_one_memory_budget(tmp_path, seen):
    pair = IkePair(tmp_path)
    budget = pair.b.reassembly_budget
    assert pair.b.ike_sa("a").context.reassembly_budget is budget
    budget.limit = 1500
    payloads = [notify(n, 60) for n in range(40)]  # about 2.7 KB
    frags = fragments_of(pair, "a", next_request_id(pair, "b"), payloads, 300)
    deliver(pair, "b", frags[:-1])  # incomplete, and more than the budget
    assert 0 < budget.used <= budget.limit
    assert counter(pair, "b", "fragment_memory_limit") > 0
    assert seen == []
    pair.a.terminate("b", pair.now)  # the IKE SA goes away: its memory comes back
    pair.pump()
    assert pair.b.ike_sa("a") is None and budget.used == 0


def test_budget_returns_to_zero_after_every_outcome(tmp_path, seen):
    pair = IkePair(tmp_path)
    budget = pair.b.reassembly_budget
    mid = next_request_id(pair, "b")
    payloads = [notify(n) for n in range(20)]
    coarse = fragments_of(pair, "a", mid, payloads, 400)
    fine = fragments_of(pair, "a", mid, payloads, 250)
    deliver(pair, "b", coarse[:1] + fine[:1] + fine[:1])  # restart, duplicate
    assert budget.used > 0
    deliver(pair, "b", fine[1:])  # complete
    assert seen == [payloads] and budget.used == 0
    frags = fragments_of(pair, "a", mid + 1, payloads, 300)
    deliver(pair, "b", frags[:1])
    pair.advance(fragments.REASSEMBLY_TIMEOUT + 5)
    pair.b.handle_timer(pair.now)
    assert budget.used == 0
