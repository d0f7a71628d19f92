"""DoS resistance of the IKE responder (RFC 7296 §2.6), with the fake clock.

COOKIE challenges above ``cookie_threshold`` half-open SAs (stateless, no
Diffie-Hellman), secret rotation, the per-source and global half-open limits,
expiry, the request-bytes check before a cached answer is resent, replays of
an IKE_SA_INIT after establishment, and the no-amplification rule.
"""

from __future__ import annotations

import os

import pytest

from ipsecd.crypto import keyexchange
from ipsecd.ike import halfopen
from ipsecd.ike import payloads as pl
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.cookies import COOKIE_LEN, CookieCheck, CookieSecrets
from ipsecd.ike.halfopen import AMPLIFICATION_FACTOR, amplifies, cookie_answer
from ipsecd.ike.message import parse_message
from tests.unit.ike_pair_support import A_IP, B_IP, IkePair, side_a, side_b

IKE_SA_INIT = ExchangeType.IKE_SA_INIT
N_COOKIE = 16390
HALF_OPEN_TIMEOUT = 30.0


def forged(init: bytes) -> bytes:
    """The same request with another initiator SPI (a different, valid IKE_SA_INIT)."""
    return os.urandom(8) + init[8:]


def first_request(tmp_path, **b_settings) -> tuple[IkePair, bytes]:
    """A pair whose initiator ``a`` has built (not sent) its IKE_SA_INIT request."""
    pair = IkePair(tmp_path, b=side_b(**b_settings), start=False)
    pair.a.start(pair.now)
    (init,) = pair.a.datagrams_to_send()
    return pair, init.data


def to_b(pair: IkePair, data: bytes, src: str = A_IP) -> list[bytes]:
    """Hand one datagram to ``b`` from ``src`` and return what ``b`` answers."""
    pair.b.receive_datagram(data, (B_IP, 500), (src, 500), pair.now)
    return [d.data for d in pair.b.datagrams_to_send()]


def notifies(data: bytes) -> list[pl.Notify]:
    return [p for p in parse_message(data).payloads if isinstance(p, pl.Notify)]


def cookie_of(answer: bytes) -> bytes:
    (notify,) = notifies(answer)
    assert notify.notify_type == N_COOKIE
    return bytes(notify.data)


def with_cookie(request: bytes, cookie: bytes) -> bytes:
    """``request`` with N(COOKIE) as its first payload (RFC 7296 §2.6)."""
    from ipsecd.ike import message as codec

    msg = parse_message(request)
    payloads = (pl.Notify(N_COOKIE, cookie), *msg.payloads)
    return codec.encode(
        codec.Message(msg.spi_i, 0, IKE_SA_INIT, 0, initiator=True, payloads=payloads)
    )


def init_request(n: int, *extra: pl.Payload, spi_i: int = 99) -> bytes:
    """A well-formed IKE_SA_INIT request (SA, KE, Ni) whose nonce says ``n``."""
    from ipsecd.crypto.proposals import parse_proposal
    from ipsecd.ike import message as codec
    from ipsecd.ike.proposal_codec import sa_payload

    proposal = parse_proposal("aes256gcm16-prfsha256-x25519", "ike")
    payloads = (
        sa_payload((proposal,)),
        pl.KeyExchange(31, bytes(32)),
        pl.Nonce(n.to_bytes(32, "big")),
        *extra,
    )
    return codec.encode(codec.Message(spi_i, 0, IKE_SA_INIT, 0, initiator=True, payloads=payloads))


def init_requests(pair: IkePair, sender: str) -> list[bytes]:
    return [s.data for s in pair.sent_by(sender, keepalive=False) if s.data[18] == IKE_SA_INIT]


@pytest.fixture
def dh_count(monkeypatch) -> list[int]:
    """How many Diffie-Hellman key pairs were made (keyexchange.new calls)."""
    calls = [0]
    real = keyexchange.new

    def counting(group):
        calls[0] += 1
        return real(group)

    monkeypatch.setattr(keyexchange, "new", counting)
    return calls


# ---- cookies (ipsecd.ike.cookies) ---------------------------------------------------


def test_cookie_valid_only_for_its_nonce_address_and_spi():
    secrets = CookieSecrets(0.0)
    nonce = os.urandom(32)
    cookie = secrets.make(nonce, A_IP, 0x1122, 1.0)
    assert len(cookie) == COOKIE_LEN <= 64
    assert secrets.check(cookie, nonce, A_IP, 0x1122, 2.0) is CookieCheck.VALID
    assert secrets.check(cookie, os.urandom(32), A_IP, 0x1122, 2.0) is CookieCheck.INVALID
    assert secrets.check(cookie, nonce, "192.0.2.9", 0x1122, 2.0) is CookieCheck.INVALID
    assert secrets.check(cookie, nonce, A_IP, 0x1123, 2.0) is CookieCheck.INVALID
    flipped = cookie[:-1] + bytes([cookie[-1] ^ 1])
    assert secrets.check(flipped, nonce, A_IP, 0x1122, 2.0) is CookieCheck.INVALID
    assert secrets.check(cookie[:-1], nonce, A_IP, 0x1122, 2.0) is CookieCheck.INVALID
    assert secrets.check(b"", nonce, A_IP, 0x1122, 2.0) is CookieCheck.INVALID
    # Another gateway's secret makes other cookies.
    assert CookieSecrets(0.0).make(nonce, A_IP, 0x1122, 1.0) != cookie


def test_cookie_secret_rotates_and_the_previous_one_is_accepted_for_one_lifetime():
    secrets = CookieSecrets(0.0, lifetime=100.0)
    nonce = os.urandom(16)
    old = secrets.make(nonce, A_IP, 7, 10.0)
    first_version = secrets.version
    assert secrets.check(old, nonce, A_IP, 7, 99.0) is CookieCheck.VALID
    # Rotation at 100 s: the old cookie is from the previous secret, still good.
    assert secrets.check(old, nonce, A_IP, 7, 150.0) is CookieCheck.VALID
    assert secrets.version != first_version
    new = secrets.make(nonce, A_IP, 7, 150.0)
    assert new != old and new[4:] != old[4:]
    # Second rotation at 200 s: the first secret is gone.
    assert secrets.check(old, nonce, A_IP, 7, 201.0) is CookieCheck.STALE
    assert secrets.check(new, nonce, A_IP, 7, 201.0) is CookieCheck.VALID
    # Idle for more than two lifetimes: nothing made before is accepted any more.
    assert secrets.check(new, nonce, A_IP, 7, 1000.0) is CookieCheck.STALE


# ---- the threshold ---------------------------------------------------------------------


def test_cookies_switch_on_at_the_threshold_without_state_or_diffie_hellman(tmp_path, dh_count):
    pair, init = first_request(tmp_path, cookie_threshold=3)
    b = pair.b
    for n in range(3):  # below the threshold: full answers, half-open SAs
        assert not b.half_open.cookies_required
        (answer,) = to_b(pair, forged(init), src=f"203.0.113.{n + 1}")
        assert any(isinstance(p, pl.KeyExchange) for p in parse_message(answer).payloads)
    assert len(b.half_open) == 3 and b.half_open.cookies_required
    sas, made = dict(b.sas), dh_count[0]
    for n in range(50):
        request = forged(init)
        (answer,) = to_b(pair, request, src=f"203.0.113.{n + 10}")
        assert len(cookie_of(answer)) == COOKIE_LEN
        assert parse_message(answer).spi_i == parse_message(request).spi_i
        assert parse_message(answer).spi_r == 0 and parse_message(answer).response
        assert len(answer) < len(request)  # a COOKIE answer never amplifies
    assert b.sas == sas and dh_count[0] == made  # no state kept, no DH computed
    assert b.counters["cookies_sent"] == 50
    assert b.half_open.status() == {
        "half_open": 3,
        "cookies_required": True,
        "cookie_threshold": 3,
        "half_open_per_source": 5,
        "half_open_limit": 1000,
    }


def test_legitimate_initiator_gets_its_sa_with_a_cookie(tmp_path):
    pair = IkePair(tmp_path, b=side_b(cookie_threshold=0))
    assert pair.status("a")["state"] == pair.status("b")["state"] == "established"
    first, second = init_requests(pair, "a")
    assert N_COOKIE not in [n.notify_type for n in notifies(first)]
    assert notifies(second)[0].notify_type == N_COOKIE  # the COOKIE comes first (§2.6)
    assert parse_message(second).payloads[0] == notifies(second)[0]
    # Same nonce and KE value in the retry; only the cookie was added.
    assert parse_message(first).find(pl.Nonce) == parse_message(second).find(pl.Nonce)
    assert parse_message(first).find(pl.KeyExchange) == parse_message(second).find(pl.KeyExchange)
    assert pair.b.counters["cookies_sent"] == 1 and pair.b.counters["cookies_valid"] == 1
    assert "cookies_invalid" not in pair.b.counters
    assert pair.a.counters["cookies_received"] == 1
    assert len(pair.b.half_open) == 0


def test_cookie_retry_combined_with_invalid_ke(tmp_path):
    # a guesses x25519 first; b accepts only ecp256: COOKIE, then INVALID_KE_PAYLOAD, and
    # the final request still carries the (KE-independent) cookie: one round trip saved.
    a = side_a(ike=("aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256"))
    b = side_b(ike=("aes128-sha256-ecp256",), cookie_threshold=0)
    pair = IkePair(tmp_path, a=a, b=b)
    assert pair.status("a")["state"] == "established"
    requests = init_requests(pair, "a")
    assert len(requests) == 3
    groups = [parse_message(r).find(pl.KeyExchange).group for r in requests]
    assert groups == [31, 31, 19]
    assert [N_COOKIE in [n.notify_type for n in notifies(r)] for r in requests] == [
        False,
        True,
        True,
    ]
    assert pair.b.counters["cookies_sent"] == 1 and pair.b.counters["cookies_valid"] == 2
    assert pair.b.counters["invalid_ke_sent"] == 1


def test_only_a_request_with_its_cookie_first_is_verified_on_arrival():
    """The inbox's verified share (carries_valid_cookie) looks at the first payload only,
    where RFC 7296 §2.6 puts N(COOKIE): the rest of a flood costs no scan and no HMAC.
    A request with the cookie elsewhere is still admitted when it is handled."""
    from ipsecd.ike.halfopen import ACCEPT, DosLimits, HalfOpenTable

    table = HalfOpenTable(DosLimits(cookie_threshold=0), {}, 0.0)
    request = init_request(7)
    cookie = table.cookies.make((7).to_bytes(32, "big"), A_IP, 99, 1.0)
    assert table.carries_valid_cookie(with_cookie(request, cookie), 99, A_IP, 1.0)
    assert not table.carries_valid_cookie(request, 99, A_IP, 1.0)
    assert not table.carries_valid_cookie(request[:35], 99, A_IP, 1.0)  # truncated
    assert not table.carries_valid_cookie(with_cookie(request, bytes(COOKIE_LEN)), 99, A_IP, 1.0)
    assert not table.carries_valid_cookie(with_cookie(request, cookie), 99, "192.0.2.9", 1.0)
    last = init_request(7, pl.Notify(N_COOKIE, cookie))  # after SA, KE and Ni
    assert not table.carries_valid_cookie(last, 99, A_IP, 1.0)
    assert table.admit(last, 99, 0, A_IP, 1.0) is ACCEPT
    assert table.counters["cookies_valid"] == 1


# ---- invalid and stale cookies ------------------------------------------------------


def test_invalid_cookie_is_counted_and_answered_with_a_fresh_one(tmp_path, dh_count):
    pair, init = first_request(tmp_path, cookie_threshold=0)
    cookie = cookie_of(to_b(pair, init)[0])
    made = dh_count[0]
    bad = bytes([cookie[0]]) + cookie[1:-1] + bytes([cookie[-1] ^ 0x80])
    for wrong in (bad, b"x", os.urandom(64)):
        (answer,) = to_b(pair, with_cookie(init, wrong))
        assert cookie_of(answer) == cookie  # the right one for this request
    assert pair.b.counters["cookies_invalid"] == 3
    assert pair.b.sas == {} and len(pair.b.half_open) == 0 and dh_count[0] == made
    # The cookie of another request (another SPIi) does not fit either.
    (answer,) = to_b(pair, with_cookie(forged(init), cookie))
    assert pair.b.counters["cookies_invalid"] == 4
    # The right cookie opens the door.
    (answer,) = to_b(pair, with_cookie(init, cookie))
    assert any(isinstance(p, pl.KeyExchange) for p in parse_message(answer).payloads)
    assert pair.b.counters["cookies_valid"] == 1 and len(pair.b.half_open) == 1


def test_stale_cookie_after_two_rotations_and_the_initiator_recovers(tmp_path):
    pair, init = first_request(tmp_path, cookie_threshold=0)
    secrets = pair.b.half_open.cookies
    cookie = cookie_of(to_b(pair, init)[0])
    secrets.rotate(pair.now)  # previous secret: still accepted
    previous_ok = to_b(pair, with_cookie(init, cookie))
    assert any(isinstance(p, pl.KeyExchange) for p in parse_message(previous_ok[0]).payloads)
    assert pair.b.counters["cookies_valid"] == 1

    pair2, init2 = first_request(tmp_path / "2", cookie_threshold=0)
    secrets2 = pair2.b.half_open.cookies
    cookie2 = cookie_of(to_b(pair2, init2)[0])
    secrets2.rotate(pair2.now)
    secrets2.rotate(pair2.now)
    (answer,) = to_b(pair2, with_cookie(init2, cookie2))
    assert pair2.b.counters["cookies_invalid"] == 1 and pair2.b.counters["cookies_stale"] == 1
    assert cookie_of(answer) != cookie2 and len(pair2.b.half_open) == 0
    # A whole exchange across a rotation: the initiator follows the new cookie.
    pair3 = IkePair(tmp_path / "3", b=side_b(cookie_threshold=0), start=False)
    pair3.a.start(pair3.now)
    (request,) = pair3.a.datagrams_to_send()
    pair3._deliver("a", request)
    (cookie_answer_,) = pair3.b.datagrams_to_send()
    pair3._deliver("b", cookie_answer_)  # a has queued its retry with the cookie
    pair3.b.half_open.cookies.rotate(pair3.now)
    pair3.b.half_open.cookies.rotate(pair3.now)
    pair3.pump()
    assert pair3.status("a")["state"] == "established"
    assert pair3.b.counters["cookies_stale"] == 1 and pair3.b.counters["cookies_sent"] == 2


# ---- limits and expiry --------------------------------------------------------------------


def test_half_open_per_source_limit(tmp_path):
    pair, init = first_request(tmp_path, cookie_threshold=100, half_open_per_source=2)
    assert len(to_b(pair, forged(init), src="198.51.100.9")) == 1
    assert len(to_b(pair, forged(init), src="198.51.100.9")) == 1
    assert to_b(pair, forged(init), src="198.51.100.9") == []  # dropped, nothing sent
    assert pair.b.counters["half_open_source_dropped"] == 1
    assert pair.b.half_open.per_source("198.51.100.9") == 2
    # Other sources are not affected: the real peer still connects.
    pair.a._outgoing.append(_resend(pair))
    pair.pump()
    assert pair.status("a")["state"] == "established"


def _resend(pair: IkePair):
    """a's outstanding IKE_SA_INIT request, as a datagram for the network."""
    from ipsecd.ike.events import OutgoingDatagram

    (sa,) = pair.a.sas.values()
    assert sa.outstanding is not None
    return OutgoingDatagram(sa.outstanding.data, sa.local, sa.remote, marker=False)


def test_global_half_open_limit_drops_everything_beyond_it(tmp_path):
    pair, init = first_request(tmp_path, cookie_threshold=100, half_open_limit=3)
    for n in range(3):
        assert len(to_b(pair, forged(init), src=f"203.0.113.{n + 1}")) == 1
    for n in range(20):
        assert to_b(pair, forged(init), src=f"203.0.113.{n + 50}") == []
    assert pair.b.counters["half_open_dropped"] == 20
    assert len(pair.b.half_open) == 3 and len(pair.b.sas) == 3
    # Even a valid cookie does not pass the global limit.
    pair2, init2 = first_request(tmp_path / "2", cookie_threshold=0, half_open_limit=1)
    cookie = cookie_of(to_b(pair2, init2)[0])
    assert len(to_b(pair2, with_cookie(init2, cookie))) == 1
    assert to_b(pair2, forged(init2), src="203.0.113.7") == []  # no COOKIE either
    assert pair2.b.counters["half_open_dropped"] == 1


def expire(pair: IkePair, seconds: float) -> None:
    """Let ``seconds`` pass on b alone (a's retransmissions stay out of the way)."""
    pair.now += seconds
    pair.b.handle_timer(pair.now)
    pair.b.datagrams_to_send()


def test_half_open_sas_expire_and_cookies_switch_off(tmp_path):
    pair, init = first_request(tmp_path, cookie_threshold=2, half_open_per_source=5)
    to_b(pair, forged(init), src="203.0.113.1")
    to_b(pair, forged(init), src="203.0.113.1")
    assert pair.b.half_open.cookies_required
    assert pair.b.half_open.per_source("203.0.113.1") == 2
    expire(pair, HALF_OPEN_TIMEOUT - 1)
    assert len(pair.b.half_open) == 2
    expire(pair, 2)
    assert len(pair.b.half_open) == 0 and pair.b.sas == {}
    assert pair.b.counters["half_open_expired"] == 2
    assert not pair.b.half_open.cookies_required
    assert pair.b.half_open.per_source("203.0.113.1") == 0
    # Without cookies again, a plain request gets a full answer.
    (answer,) = to_b(pair, forged(init), src="203.0.113.1")
    assert any(isinstance(p, pl.KeyExchange) for p in parse_message(answer).payloads)


# ---- retransmissions, mismatches, replays ----------------------------------------------------


def test_retransmit_is_answered_only_for_the_same_request_bytes(tmp_path, dh_count):
    pair, init = first_request(tmp_path)
    (first,) = to_b(pair, init)
    made = dh_count[0]
    assert to_b(pair, init) == [first]  # a true retransmission: the cached answer
    assert pair.b.counters["retransmit_answered"] == 1
    # Same source and SPIi, other bytes (another nonce): not a retransmission, dropped.
    msg = parse_message(init)
    from ipsecd.ike import message as codec

    payloads = [pl.Nonce(os.urandom(32)) if isinstance(p, pl.Nonce) else p for p in msg.payloads]
    other = codec.encode(
        codec.Message(msg.spi_i, 0, IKE_SA_INIT, 0, initiator=True, payloads=payloads)
    )
    assert other != init and other[:8] == init[:8]
    assert to_b(pair, other) == []
    assert pair.b.counters["init_request_mismatch"] == 1
    assert pair.b.counters["retransmit_answered"] == 1 and dh_count[0] == made
    assert len(pair.b.half_open) == 1


def test_replayed_init_after_establishment_leaves_no_state(tmp_path):
    pair = IkePair(tmp_path)
    assert pair.status("b")["state"] == "established"
    (init,) = init_requests(pair, "a")
    sas = dict(pair.b.sas)
    assert to_b(pair, init) == []
    assert pair.b.counters["init_replays"] == 1
    assert pair.b.sas == sas and len(pair.b.half_open) == 0
    # Still remembered much later (but not forever: bounded by time and count).
    pair.advance(600)
    assert to_b(pair, init) == []
    assert pair.b.counters["init_replays"] == 2


def test_replay_memory_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(halfopen, "REPLAY_MEMORY_SIZE", 4)
    table = halfopen.HalfOpenTable(halfopen.DosLimits(), {}, 0.0)

    class FakeSa:
        alive = True

        def __init__(self, spi: int) -> None:
            self.spi_i = self.local_spi = spi

    requests = [init_request(n, spi_i=n + 1) for n in range(10)]
    for n, request in enumerate(requests):
        sa = FakeSa(n + 1)
        table.add(sa, request, "203.0.113.1")
        table.established(sa, float(n))
    assert len(table._replays) == 4
    assert len(table) == 0 and table.per_source("203.0.113.1") == 0
    assert table.admit(requests[9], 10, 0, "203.0.113.1", 10.0).drop
    assert table.admit(requests[0], 1, 0, "203.0.113.1", 10.0).accept  # forgotten
    # ... and by time.
    assert table.admit(requests[9], 10, 0, "203.0.113.1", 10.0 + 3600.0).accept


# ---- amplification ----------------------------------------------------------------------------


def test_amplification_rule():
    assert AMPLIFICATION_FACTOR == 3
    assert not amplifies(100, [b"x" * 300])
    assert amplifies(100, [b"x" * 301])
    assert not amplifies(100, [])
    # The smallest request that can get a COOKIE (header, empty SA, empty KE, 16-octet
    # nonce) still gets an answer within the rule.
    smallest = 28 + 4 + 8 + 20
    assert len(cookie_answer(1, 0, b"c" * COOKIE_LEN)) <= AMPLIFICATION_FACTOR * smallest


@pytest.mark.parametrize(
    "proposal", ["aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256", "aes256-sha384-modp2048"]
)
def test_init_answer_is_not_much_larger_than_the_request(tmp_path, proposal):
    pair = IkePair(tmp_path, a=side_a(ike=(proposal,)), b=side_b(ike=(proposal,)))
    (request,) = init_requests(pair, "a")
    (answer,) = init_requests(pair, "b")
    assert len(answer) <= AMPLIFICATION_FACTOR * len(request)
    assert len(answer) <= len(request) + 100  # in practice about the same size


def test_answer_that_would_amplify_is_not_sent_and_leaves_no_sa(tmp_path, monkeypatch):
    pair, init = first_request(tmp_path)
    monkeypatch.setattr(halfopen, "AMPLIFICATION_FACTOR", 0.5)  # the usual answer amplifies now
    assert to_b(pair, forged(init)) == []
    assert pair.b.counters["amplification_refused"] == 1
    assert pair.b.sas == {} and len(pair.b.half_open) == 0


def test_tiny_request_gets_no_cookie(tmp_path, monkeypatch):
    pair, init = first_request(tmp_path, cookie_threshold=0)
    monkeypatch.setattr(halfopen, "AMPLIFICATION_FACTOR", 0.1)
    assert to_b(pair, init) == []
    assert pair.b.counters["amplification_refused"] == 1
    assert "cookies_sent" not in pair.b.counters


def test_malformed_request_under_cookies_is_dropped_silently(tmp_path):
    pair, init = first_request(tmp_path, cookie_threshold=0)
    msg = parse_message(init)
    from ipsecd.ike import message as codec

    no_nonce = codec.encode(
        codec.Message(
            msg.spi_i,
            0,
            IKE_SA_INIT,
            0,
            initiator=True,
            payloads=[p for p in msg.payloads if not isinstance(p, pl.Nonce)],
        )
    )
    assert to_b(pair, no_nonce) == []
    assert to_b(pair, init[:40]) == []
    assert "cookies_sent" not in pair.b.counters
    assert "internal_error" not in pair.b.counters


def test_cookies_stay_on_for_a_calm_down_period(tmp_path):
    pair, init = first_request(tmp_path, cookie_threshold=1)
    to_b(pair, forged(init), src="203.0.113.1")  # the one half-open SA: cookies on
    expire(pair, 25)
    (answer,) = to_b(pair, forged(init), src="203.0.113.2")
    assert cookie_of(answer)  # demanded at 25 s: on until 35 s
    expire(pair, 6)  # 31 s: the half-open SA expired
    assert len(pair.b.half_open) == 0
    (answer,) = to_b(pair, forged(init), src="203.0.113.3")
    assert cookie_of(answer) and pair.b.half_open.cookies_required
    assert pair.b.half_open.status(pair.now)["cookies_required"]
    expire(pair, halfopen.COOKIE_CALMDOWN)
    # The status follows the clock: off once the calm-down is over, before any request.
    assert pair.b.half_open.status(pair.now)["cookies_required"] is False
    (answer,) = to_b(pair, forged(init), src="203.0.113.4")
    assert any(isinstance(p, pl.KeyExchange) for p in parse_message(answer).payloads)


# ---- configuration ----------------------------------------------------------------------------


def test_gateway_keys_reach_the_table(tmp_path):
    from ipsecd.config import ConfigError
    from tests.unit.ike_pair_support import build_config

    config = build_config(
        side_b(cookie_threshold=0, half_open_per_source=2, half_open_limit=50), tmp_path, "b"
    )
    assert halfopen.DosLimits.from_gateway(config.gateway) == halfopen.DosLimits(0, 2, 50)
    defaults = build_config(side_b(), tmp_path, "d").gateway
    assert halfopen.DosLimits.from_gateway(defaults) == halfopen.DosLimits(10, 5, 1000)
    with pytest.raises(ConfigError, match="half_open_per_source"):
        build_config(side_b(half_open_per_source=0), tmp_path, "e")


# ---- forged half-open SAs never block a peer ------------------------------------------------


def test_forged_half_open_sas_do_not_block_initiating_or_status(tmp_path):
    """Forged requests from other addresses are attributed to a peer only as a guess: the
    peer still initiates, and its status does not show the forged SA."""
    pair, init = first_request(tmp_path, cookie_threshold=100)
    pair.a.sas.clear()  # a stays quiet; b initiates to a
    for n in range(3):
        to_b(pair, forged(init), src=f"203.0.113.{n + 1}")
    to_b(pair, forged(init))  # one even from a's own address (spoofed)
    assert len(pair.b.half_open) == 4
    assert pair.status("b")["state"] == "half-open"  # the one from a's address, as before
    assert pair.status("b")["remote"].startswith(A_IP)
    pair.b.initiate("a", pair.now)
    pair.pump()
    assert pair.status("b")["state"] == "established"
    assert pair.status("b")["role"] == "initiator"


def test_forged_half_open_sa_does_not_stop_retries(tmp_path):
    from ipsecd.ike import events as ev

    a = side_a(retransmit_tries=1, retry_interval="10s")
    pair = IkePair(tmp_path, a=a, start=False)
    pair.net.drop = lambda sent: True  # b is unreachable for now
    pair.a.start(pair.now)
    init = pair.a._outgoing[0].data  # a's IKE_SA_INIT, not sent yet
    # A forged request "from b" reaches a meanwhile and stays half-open there.
    pair.a.receive_datagram(forged(init), (A_IP, 500), ("203.0.113.9", 500), pair.now)
    pair.a.datagrams_to_send()
    pair.advance(2)  # a gives up (0.5 + 1 s) ...
    assert pair.of_type("a", ev.NegotiationFailed)
    assert pair.a.peer_state["b"].retry_at is not None  # ... and still plans a retry
    pair.net.drop = lambda sent: False
    pair.advance(15)
    assert pair.status("a")["state"] == "established"


def test_a_second_cookie_answer_for_a_retransmitted_request_is_not_acted_on(tmp_path):
    # The initiator retransmitted its first IKE_SA_INIT before the COOKIE answer came, so
    # two COOKIE answers arrive; the request with the cookie went out after the first.
    # The second must not send it again (a second copy earned the same answer twice and,
    # with a slow responder, crossed its IKE_SA_INIT response).
    pair, init = first_request(tmp_path, cookie_threshold=0)
    first, second = to_b(pair, init) + to_b(pair, init)
    assert cookie_of(first) == cookie_of(second)
    pair.a.receive_datagram(first, (A_IP, 500), (B_IP, 500), pair.now)
    (retry,) = pair.a.datagrams_to_send()
    assert notifies(retry.data)[0].notify_type == N_COOKIE
    pair.a.receive_datagram(second, (A_IP, 500), (B_IP, 500), pair.now)
    assert pair.a.datagrams_to_send() == []
    assert pair.a.counters["cookies_received"] == 1
    # The retry is answered and the handshake completes as usual.
    pair.b.receive_datagram(retry.data, (B_IP, 500), (A_IP, 500), pair.now)
    for answer in pair.b.datagrams_to_send():
        pair.a.receive_datagram(answer.data, (A_IP, 500), (B_IP, 500), pair.now)
    pair.pump()
    assert pair.status("a")["state"] == pair.status("b")["state"] == "established"


def test_only_an_idle_responder_takes_a_new_request_in_the_readers_turn(tmp_path):
    """The shell processes a lone message at once (DaemonCore.ike_step_waiting) only if it
    is a handshake's next step, or a new request to a responder with nothing half-open: a
    burst of new requests waits for its share of the time (ike/inbox.py)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from ipsecd.ike.manager import IkeManager

    pair = IkePair(tmp_path, side_a(), side_b())
    b = IkeManager(pair.b_config, pair.now)

    def request(n: int) -> bytes:
        from ipsecd.crypto.proposals import parse_proposal
        from ipsecd.ike import message as codec
        from ipsecd.ike.proposal_codec import sa_payload

        public = X25519PrivateKey.generate().public_key().public_bytes_raw()
        proposal = parse_proposal("aes256gcm16-prfsha256-x25519", "ike")
        payloads = (sa_payload((proposal,)), pl.KeyExchange(31, public), pl.Nonce(bytes(32)))
        return codec.encode(codec.Message(n, 0, IKE_SA_INIT, 0, initiator=True, payloads=payloads))

    b.enqueue_datagram(request(1), (B_IP, 500), (A_IP, 500), pair.now)
    assert b.next_step_waiting(pair.now)  # idle: the first handshake is not held back
    b.process_queued(pair.now)
    assert len(b.half_open) == 1
    b.enqueue_datagram(request(2), (B_IP, 500), (A_IP, 500), pair.now)
    assert not b.next_step_waiting(pair.now)  # one half-open already: a burst's turn
