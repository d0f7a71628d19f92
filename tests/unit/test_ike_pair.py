"""Two in-memory IkeManagers talking through a fake network with a fake clock (RFC 7296).

Everything the daemon shell sees is asserted: events, ``status()``, counters, the
datagrams on the wire, and the derived keys (recomputed from the wire nonces and
SK_d, and used for real ESP packets).  The helper lives in ``ike_pair_support``.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from ipsecd.crypto.prf import Prf
from ipsecd.ike import events as ev
from ipsecd.ike import message as codec
from ipsecd.ike import payloads as pl
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.errors import (
    AUTHENTICATION_FAILED,
    INVALID_KE_PAYLOAD,
    NO_PROPOSAL_CHOSEN,
    TS_UNACCEPTABLE,
    UNSUPPORTED_CRITICAL_PAYLOAD,
)
from ipsecd.ike.exchanges.auth import auth_value
from ipsecd.ike.message import decode, parse_message
from ipsecd.selectors import TrafficSelector
from tests.unit.ike_pair_support import (
    A_IP,
    B_IP,
    NAT_PUBLIC_IP,
    NET_A,
    NET_B,
    DropFirst,
    IkePair,
    Sent,
    behind_nat,
    build_config,
    esp_roundtrip,
    ipv4_packet,
    messages,
    notify_types,
    side_a,
    side_b,
)

IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL = (
    ExchangeType.IKE_SA_INIT,
    ExchangeType.IKE_AUTH,
    ExchangeType.CREATE_CHILD_SA,
    ExchangeType.INFORMATIONAL,
)


def ts(*prefixes: str) -> tuple[TrafficSelector, ...]:
    return tuple(TrafficSelector.from_prefix(p) for p in prefixes)


def inner_payloads(pair: IkePair, receiver: str, data: bytes) -> list[object]:
    """Decrypt a protected message with the receiver's IKE SA keys."""

    sa = pair.mgr(receiver).ike_sa(pair.peer_of(receiver))
    assert sa is not None and sa.keys is not None
    msg = decode(data, keys=sa.keys, sender_is_initiator=not sa.initiator)
    return list(msg.payloads)


def assert_child_pair(pair: IkePair, a_child: ev.ChildSaParams, b_child: ev.ChildSaParams):
    """Mirrored SPIs, keys and selectors, and keys that actually carry ESP both ways."""
    assert a_child.spi_in == b_child.spi_out and a_child.spi_out == b_child.spi_in
    assert a_child.spi_in != a_child.spi_out
    assert (a_child.encr, a_child.integ, a_child.esn) == (b_child.encr, b_child.integ, b_child.esn)
    assert a_child.encr_key_out == b_child.encr_key_in
    assert a_child.integ_key_out == b_child.integ_key_in
    assert a_child.encr_key_in == b_child.encr_key_out
    assert a_child.integ_key_in == b_child.integ_key_out
    assert a_child.encr_key_in != a_child.encr_key_out  # one key per direction
    assert len(a_child.encr_key_in) == a_child.encr.keymat_len
    integ_len = a_child.integ.key_len if a_child.integ else 0
    assert len(a_child.integ_key_in) == len(a_child.integ_key_out) == integ_len
    assert a_child.local_ts == b_child.remote_ts and a_child.remote_ts == b_child.local_ts
    assert a_child.remote == (B_IP, 4500)
    assert b_child.remote == pair.b.ike_sa(pair.peer_of("b")).remote
    inner = ipv4_packet("10.1.0.5", "10.2.0.7")
    back = ipv4_packet("10.2.0.7", "10.1.0.5", b"and back")
    assert esp_roundtrip(a_child, b_child, inner) == inner
    assert esp_roundtrip(b_child, a_child, back) == back
    # A packet sealed with the wrong direction's key does not open.
    wrong = replace(b_child, spi_in=a_child.spi_out, encr_key_in=a_child.encr_key_in)
    assert esp_roundtrip(a_child, wrong, inner) is None


def only_child(pair: IkePair, side: str) -> ev.ChildSaParams:
    (event,) = pair.established(side)
    assert event.outbound_active
    return event.child


def assert_failed_cleanly(pair: IkePair, side: str) -> None:
    """No CHILD_SA was announced and status() shows no half-installed IKE SA/CHILD_SA."""
    assert pair.established(side) == []
    entry = pair.status(side)
    assert entry["state"] in ("down", "connecting"), entry
    assert "children" not in entry
    assert pair.mgr(side).sas == {} and pair.mgr(side).half_open == {}


# ---- 1. establishment for each proposal pair --------------------------------------

PROPOSAL_PAIRS = [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16", "aes256gcm16", None, False),
    ("aes128-sha256-ecp256", "aes128-sha256", "aes128", "sha256", False),
    ("aes256-sha384-modp2048", "aes128gcm16", "aes128gcm16", None, False),
    ("aes256gcm16-prfsha256-x25519", "aes128gcm16-esn", "aes128gcm16", None, True),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305", "chacha20poly1305", None, False),
]


@pytest.mark.parametrize(("ike", "esp", "encr", "integ", "esn"), PROPOSAL_PAIRS)
def test_establishment_for_each_proposal_pair(tmp_path, ike, esp, encr, integ, esn):
    pair = IkePair(tmp_path, side_a(ike=(ike,), esp=(esp,)), side_b(ike=(ike,), esp=(esp,)))
    for side in "ab":
        (ike_event,) = pair.of_type(side, ev.IkeSaEstablished)
        assert pair.of_type(side, ev.NegotiationFailed) == []
    a_ike = pair.of_type("a", ev.IkeSaEstablished)[0]
    b_ike = pair.of_type("b", ev.IkeSaEstablished)[0]
    assert (a_ike.local_spi, a_ike.remote_spi) == (b_ike.remote_spi, b_ike.local_spi)
    assert a_ike.local == (A_IP, 4500) and a_ike.remote == (B_IP, 4500)
    assert not a_ike.nat_local and not b_ike.nat_local

    a_child, b_child = only_child(pair, "a"), only_child(pair, "b")
    assert a_child.encr.name == encr
    assert (a_child.integ.name if a_child.integ else None) == integ
    assert a_child.esn is esn
    assert a_child.local_ts == ts(NET_A) and a_child.remote_ts == ts(NET_B)
    assert_child_pair(pair, a_child, b_child)

    # The keys are KEYMAT = prf+(SK_d, Ni | Nr) from the IKE_SA_INIT nonces on the wire,
    # initiator-to-responder keys first (RFC 7296 §2.17).
    sa_a, sa_b = pair.a.ike_sa("b"), pair.b.ike_sa("a")
    assert sa_a.keys == sa_b.keys
    nonces = []
    for sender in "ab":
        (init,) = messages(pair, sender, IKE_SA_INIT)
        (nonce,) = [p.data for p in parse_message(init.data).payloads if isinstance(p, pl.Nonce)]
        nonces.append(nonce)
    integ_len = a_child.integ.key_len if a_child.integ else 0
    length = 2 * (a_child.encr.keymat_len + integ_len)
    keymat = Prf(sa_a.keys.prf).prf_plus(sa_a.keys.sk_d, nonces[0] + nonces[1], length)
    assert keymat == (
        a_child.encr_key_out + a_child.integ_key_out + a_child.encr_key_in + a_child.integ_key_in
    )

    a_status, b_status = pair.status("a"), pair.status("b")
    assert a_status["state"] == b_status["state"] == "established"
    assert (a_status["role"], b_status["role"]) == ("initiator", "responder")
    assert a_status["algorithm"] == b_status["algorithm"]
    assert a_status["local_spi"] == b_status["remote_spi"] == f"{a_ike.local_spi:016x}"
    assert a_status["last_error"] is None and b_status["last_error"] is None
    (a_desc,) = a_status["children"]
    (b_desc,) = b_status["children"]
    assert a_desc["spi_in"] == b_desc["spi_out"] == f"{a_child.spi_in:08x}"
    assert a_desc["state"] == b_desc["state"] == "installed"
    assert (a_desc["local_ts"], a_desc["remote_ts"]) == (NET_A, NET_B)
    assert (b_desc["local_ts"], b_desc["remote_ts"]) == (NET_B, NET_A)
    # Four messages, nothing retransmitted, nothing dropped.
    assert len(pair.net.log) == 4 and all(s.delivered for s in pair.net.log)
    for mgr in (pair.a, pair.b):
        assert not {"retransmits", "malformed", "undecryptable", "internal_error"} & set(
            mgr.counters
        )


def test_ike_sa_init_moves_to_the_natt_port(tmp_path):
    pair = IkePair(tmp_path)
    ports = [(s.sender, s.original_src[1], s.dst[1], s.marker) for s in pair.net.log]
    assert ports == [
        ("a", 500, 500, False),
        ("b", 500, 500, False),
        ("a", 4500, 4500, True),
        ("b", 4500, 4500, True),
    ]
    # NAT detection notifies in both IKE_SA_INIT messages (RFC 7296 §2.23).
    for sender in "ab":
        (init,) = messages(pair, sender, IKE_SA_INIT)
        assert {16388, 16389} <= set(notify_types(init.data))


# ---- 2. INVALID_KE_PAYLOAD ------------------------------------------------------


def test_invalid_ke_payload_retry_with_the_requested_group(tmp_path):
    pair = IkePair(
        tmp_path,
        side_a(ike=("aes128-sha256-x25519", "aes128-sha256-ecp256")),
        side_b(ike=("aes128-sha256-ecp256",)),
    )
    inits = messages(pair, "a", IKE_SA_INIT)
    assert len(inits) == 2  # the guess (x25519) and the retry (ecp256)
    groups = [
        [p.group for p in parse_message(s.data).payloads if isinstance(p, pl.KeyExchange)]
        for s in inits
    ]
    assert groups == [[31], [19]]  # x25519, then ecp256 (RFC 7296 §1.3)
    # Same SPIi and message id 0 for the retry, the refusal names the group it wants.
    assert inits[0].data[:8] == inits[1].data[:8]
    assert parse_message(inits[1].data).message_id == 0
    refusal = messages(pair, "b", IKE_SA_INIT)[0]
    (notify,) = [p for p in parse_message(refusal.data).payloads if isinstance(p, pl.Notify)]
    assert notify.notify_type == INVALID_KE_PAYLOAD and notify.data == (19).to_bytes(2, "big")
    assert pair.b.counters["invalid_ke_sent"] == 1
    assert pair.of_type("a", ev.NegotiationFailed) == pair.of_type("b", ev.NegotiationFailed) == []
    assert_child_pair(pair, only_child(pair, "a"), only_child(pair, "b"))
    assert pair.status("a")["algorithm"] == "aes128-sha256-prfsha256-ecp256"
    assert len(pair.b.sas) == 1  # the stateless refusal left nothing behind


# ---- 3. failures leave nothing half-installed ----------------------------------------


def failure_of(pair: IkePair, side: str) -> str:
    (failed,) = pair.of_type(side, ev.NegotiationFailed)
    assert pair.status(side)["last_error"] == failed.reason
    return failed.reason


def source_failure_of(pair: IkePair, side: str, source: str = A_IP) -> str:
    """A responder's failure before IKE_AUTH verified: the source's, never the peer's
    (issue 12): no NegotiationFailed, no last_error."""
    assert pair.of_type(side, ev.NegotiationFailed) == []
    assert pair.status(side)["last_error"] is None
    (failed,) = pair.of_type(side, ev.UnauthenticatedFailure)
    assert failed.source[0] == source
    assert pair.mgr(side).counters["unauthenticated_failures"] == 1
    return failed.reason


def test_wrong_psk_detected_by_the_responder(tmp_path):
    pair = IkePair(tmp_path, side_a(), side_b(psk="0x" + "66" * 32), start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    for side in "ab":
        assert_failed_cleanly(pair, side)
        assert pair.of_type(side, ev.IkeSaEstablished) == []
    b_reason = source_failure_of(pair, "b")
    assert "192.0.2.1" in b_reason and "does not verify with our PSK" in b_reason
    a_reason = failure_of(pair, "a")
    assert "AUTHENTICATION_FAILED" in a_reason and "192.0.2.1" in a_reason
    # The refusal is protected with the (valid) IKE SA keys: one AUTHENTICATION_FAILED.
    (answer,) = [m for m in pair.cleartext if m.sender == "b" and m.exchange_type == IKE_AUTH]
    assert [(p.notify_type, p.data) for p in answer.payloads] == [(AUTHENTICATION_FAILED, b"")]
    assert pair.status("a")["state"] == "connecting"  # start: initiate retries later
    assert pair.status("b")["state"] == "down"


def _resign_auth(pair: IkePair, psk: bytes):
    """A tamper hook: the responder's IKE_AUTH answer carries AUTH made with ``psk``."""

    def tamper(sent: Sent) -> bytes:
        if sent.sender != "b" or sent.data[18] != IKE_AUTH:
            return sent.data
        sa = pair.b.ike_sa("a")
        msg = codec.decode(sent.data, keys=sa.keys, sender_is_initiator=False)
        me = sa.peer.auth.local_id
        forged = auth_value(sa, psk, False, me.id_type, me.data)
        payloads = [
            pl.Authentication(method=2, data=forged) if isinstance(p, pl.Authentication) else p
            for p in msg.payloads
        ]
        return codec.encode(replace(msg, payloads=tuple(payloads)), keys=sa.keys,
                            sender_is_initiator=False)  # fmt: skip

    return tamper


def test_wrong_psk_detected_by_the_initiator(tmp_path):
    pair = IkePair(tmp_path, start=False)
    pair.net.tamper = _resign_auth(pair, b"not the shared key")
    pair.a.start(pair.now)
    pair.pump()
    assert_failed_cleanly(pair, "a")
    assert pair.of_type("a", ev.IkeSaEstablished) == []
    a_reason = failure_of(pair, "a")
    assert "192.0.2.2" in a_reason and "does not verify with our PSK" in a_reason
    # The responder believed the SA was up; the initiator's AUTHENTICATION_FAILED
    # (RFC 7296 §2.21.2) tears it and its CHILD_SA down again.
    (b_child,) = pair.established("b")
    (deleted,) = pair.of_type("b", ev.ChildSaDeleted)
    assert (deleted.spi_in, deleted.spi_out) == (b_child.child.spi_in, b_child.child.spi_out)
    assert len(pair.of_type("b", ev.IkeSaDeleted)) == 1
    b_reason = failure_of(pair, "b")
    assert "AUTHENTICATION_FAILED" in b_reason and "192.0.2.2" in b_reason
    assert pair.status("b")["state"] == "down" and pair.b.sas == {}


def test_initiator_identity_unknown_to_the_responder(tmp_path):
    pair = IkePair(tmp_path, side_a(local_id="@a.example.org"), side_b())
    for side in "ab":
        assert_failed_cleanly(pair, side)
    b_reason = source_failure_of(pair, "b")
    assert "a.example.org" in b_reason and "192.0.2.1" in b_reason
    assert "AUTHENTICATION_FAILED" in failure_of(pair, "a")


def test_responder_identity_not_the_expected_one(tmp_path):
    pair = IkePair(tmp_path, side_a(), side_b(local_id="@b.example.org"))
    assert_failed_cleanly(pair, "a")
    a_reason = failure_of(pair, "a")
    assert "b.example.org" in a_reason and "192.0.2.2" in a_reason
    assert pair.of_type("a", ev.IkeSaEstablished) == []
    assert pair.b.sas == {} and pair.status("b")["state"] == "down"
    assert len(pair.of_type("b", ev.ChildSaDeleted)) == len(pair.established("b"))


def test_no_common_ike_proposal(tmp_path):
    pair = IkePair(
        tmp_path,
        side_a(ike=("aes128-sha256-x25519", "aes256gcm16-prfsha384-ecp384")),
        side_b(ike=("aes128-sha256-modp2048",)),
    )
    for side in "ab":
        assert_failed_cleanly(pair, side)
        assert pair.of_type(side, ev.IkeSaEstablished) == []
    b_reason = source_failure_of(pair, "b")
    offers = ("aes128-sha256-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384")
    for text in (*offers, "aes128-sha256-modp2048"):
        assert text in b_reason
    assert "no match for KE" in b_reason
    a_reason = failure_of(pair, "a")
    assert "NO_PROPOSAL_CHOSEN" in a_reason and "aes128-sha256-x25519" in a_reason
    assert notify_types(messages(pair, "b", IKE_SA_INIT)[0].data) == [NO_PROPOSAL_CHOSEN]
    assert len(pair.net.log) == 2


def test_no_common_esp_proposal(tmp_path):
    pair = IkePair(tmp_path, side_a(esp=("aes256gcm16",)), side_b(esp=("aes128-sha256",)))
    for side in "ab":
        assert_failed_cleanly(pair, side)
        # The IKE SA authenticated, but never stands without its first CHILD_SA.
        assert len(pair.of_type(side, ev.IkeSaDeleted)) == len(
            pair.of_type(side, ev.IkeSaEstablished)
        )
    b_reason = failure_of(pair, "b")
    assert "aes256gcm16" in b_reason and "aes128-sha256" in b_reason
    assert "no match for ENCR" in b_reason
    a_reason = failure_of(pair, "a")
    assert "NO_PROPOSAL_CHOSEN" in a_reason and "aes256gcm16" in a_reason


def test_disjoint_traffic_selectors(tmp_path):
    pair = IkePair(tmp_path, side_a(), side_b(remote_ts=("10.9.0.0/24",)), start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    for side in "ab":
        assert_failed_cleanly(pair, side)
    b_reason = failure_of(pair, "b")
    assert "TS" in b_reason
    for text in (NET_A, NET_B, "10.9.0.0/24"):
        assert text in b_reason
    a_reason = failure_of(pair, "a")
    assert "TS_UNACCEPTABLE" in a_reason and NET_A in a_reason and NET_B in a_reason
    # IKE_AUTH answered with N(TS_UNACCEPTABLE) instead of SAr2/TSi/TSr (RFC 7296 §1.2).
    (answer,) = [m for m in pair.cleartext if m.sender == "b" and m.exchange_type == IKE_AUTH]
    assert [type(p).__name__ for p in answer.payloads] == [
        "IdentificationResponder",
        "Authentication",
        "Notify",
    ]
    assert answer.payloads[-1].notify_type == TS_UNACCEPTABLE


def test_responder_narrows_traffic_selectors(tmp_path):
    pair = IkePair(
        tmp_path,
        side_a(local_ts=("10.1.0.0/16",), remote_ts=("10.2.0.0/16",)),
        side_b(local_ts=(NET_B,), remote_ts=(NET_A,)),
    )
    a_child, b_child = only_child(pair, "a"), only_child(pair, "b")
    assert a_child.local_ts == ts(NET_A) and a_child.remote_ts == ts(NET_B)
    assert b_child.local_ts == ts(NET_B) and b_child.remote_ts == ts(NET_A)
    assert_child_pair(pair, a_child, b_child)
    (a_desc,) = pair.status("a")["children"]
    assert (a_desc["local_ts"], a_desc["remote_ts"]) == (NET_A, NET_B)


# ---- 4. a peer that does not answer ---------------------------------------------------


@pytest.mark.parametrize(("timeout", "tries"), [(0.5, 3), (0.25, 5)])
def test_peer_not_answering_retransmits_gives_up_and_retries(tmp_path, timeout, tries):
    a = side_a(retransmit_timeout=timeout, retransmit_tries=tries, retry_interval="10s")
    pair = IkePair(tmp_path, a, side_b(), start=False)
    pair.net.drop = lambda sent: True  # b never hears anything
    start = pair.now
    pair.a.start(start)
    pair.pump()
    pair.advance(60)
    inits = messages(pair, "a", IKE_SA_INIT)
    # RFC 7296 §2.1: the same request, resent after timeout, 2*timeout, 4*timeout, ...
    first_attempt = [s for s in inits if s.data[:8] == inits[0].data[:8]]
    gaps = [round(s.at - start, 6) for s in first_attempt]
    expected = [0.0]
    for n in range(tries):
        expected.append(expected[-1] + timeout * 2**n)
    assert gaps == expected
    assert len({s.data for s in first_attempt}) == 1  # byte-identical retransmissions
    give_up = expected[-1] + timeout * 2**tries
    # Each retransmission is reported with its number and the next timeout (issue 13).
    retransmits = [(at, e) for at, e in pair.events["a"] if isinstance(e, ev.IkeRetransmit)]
    assert [(e.number, e.limit, e.exchange, e.message_id) for _, e in retransmits[:tries]] == [
        (n, tries, "IKE_SA_INIT", 0) for n in range(1, tries + 1)
    ]
    assert [e.next_timeout for _, e in retransmits[:tries]] == [
        timeout * 2**n for n in range(1, tries + 1)
    ]
    at, event = next((at, e) for at, e in pair.events["a"] if not isinstance(e, ev.IkeRetransmit))
    assert isinstance(event, ev.NegotiationFailed) and at == pytest.approx(start + give_up)
    assert event.reason.startswith(f"no response from {B_IP}:500 after {tries} retransmits")
    assert "IKE_SA_INIT" in event.reason
    # retry_interval later the peer is initiated again, with a fresh SPI.
    second = [s for s in inits if s.data[:8] != inits[0].data[:8]]
    assert second[0].at == pytest.approx(start + give_up + 10)
    assert pair.a.counters["connection_retries"] >= 1
    assert pair.a.counters["retransmits"] >= tries
    assert pair.established("a") == [] and pair.of_type("a", ev.IkeSaEstablished) == []


def test_status_while_waiting_to_retry(tmp_path):
    a = side_a(retransmit_timeout=0.5, retransmit_tries=2, retry_interval="10s")
    pair = IkePair(tmp_path, a, side_b(), start=False)
    pair.net.drop = lambda sent: True
    pair.a.start(pair.now)
    pair.pump()
    assert pair.status("a")["state"] == "init-sent"
    pair.advance(3.5)  # 0.5 + 1 + 2: given up
    entry = pair.status("a")
    assert entry["state"] == "connecting" and entry["retry_at"] == pytest.approx(pair.now + 10)
    assert entry["last_error"].startswith("no response from")
    assert pair.a.sas == {}
    pair.net.drop = lambda sent: False  # the peer is back: the retry succeeds
    pair.advance(10)
    assert pair.status("a")["state"] == "established"
    assert pair.status("a")["last_error"] is None
    assert_child_pair(pair, only_child(pair, "a"), only_child(pair, "b"))


def test_peer_dies_after_establishment(tmp_path):
    a = side_a(retransmit_timeout=0.5, retransmit_tries=2)
    pair = IkePair(tmp_path, a, side_b())
    (child,) = pair.established("a")
    pair.net.drop = lambda sent: sent.sender == "b"  # b's answers are lost from now on
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    pair.advance(3.5)
    reason = failure_of(pair, "a")
    assert reason.startswith("peer b is dead: no response from")
    (deleted,) = pair.of_type("a", ev.ChildSaDeleted)
    assert deleted.spi_in == child.child.spi_in
    assert len(pair.of_type("a", ev.IkeSaDeleted)) == 1
    # dpd_action restart (the default): the new IKE_SA_INIT is out at once.
    assert pair.status("a")["state"] == "init-sent"


# ---- 5. a lost response is answered from the responder's cache -------------------------


@pytest.mark.parametrize("lost", [IKE_SA_INIT, IKE_AUTH])
def test_lost_response_answered_from_cache(tmp_path, lost):
    pair = IkePair(tmp_path, start=False)
    pair.net.drop = DropFirst("b", lost)
    pair.a.start(pair.now)
    pair.pump()
    assert pair.established("a") == []
    pair.advance(0.5)  # the initiator's first retransmission
    requests = messages(pair, "a", lost)
    answers = messages(pair, "b", lost)
    assert len(requests) == 2 and requests[0].data == requests[1].data
    assert len(answers) == 2 and answers[0].data == answers[1].data  # identical bytes
    assert pair.b.counters["retransmit_answered"] == 1
    assert pair.a.counters["retransmits"] == 1
    # Processed once: one IKE SA, one CHILD_SA on the responder.
    assert len(pair.b.sas) == 1
    assert len(pair.of_type("b", ev.IkeSaEstablished)) == 1
    assert_child_pair(pair, only_child(pair, "a"), only_child(pair, "b"))


def test_lost_informational_response_answered_from_cache(tmp_path):
    pair = IkePair(tmp_path)
    (b_child,) = pair.established("b")
    pair.net.drop = DropFirst("b", INFORMATIONAL)
    pair.a.delete_child("b", only_child(pair, "a").spi_in, pair.now)
    pair.pump()
    assert len(pair.of_type("b", ev.ChildSaDeleted)) == 1
    assert pair.of_type("a", ev.ChildSaDeleted) == []  # still waiting for the answer
    pair.advance(0.5)
    assert len(pair.of_type("b", ev.ChildSaDeleted)) == 1  # not processed twice
    assert len(pair.of_type("a", ev.ChildSaDeleted)) == 1
    assert pair.b.counters["retransmit_answered"] == 1
    (first, second) = messages(pair, "b", INFORMATIONAL)
    assert first.data == second.data


# ---- 6. CREATE_CHILD_SA for an extra CHILD_SA ----------------------------------------


@pytest.mark.parametrize("pfs", [False, True], ids=["no-pfs", "pfs-x25519"])
def test_create_child_sa(tmp_path, pfs):
    esp = ("aes256gcm16-x25519",) if pfs else ("aes256gcm16",)
    pair = IkePair(tmp_path, side_a(esp=esp), side_b(esp=esp))
    first_a, first_b = only_child(pair, "a"), only_child(pair, "b")
    pair.record_cleartext()
    pair.a.create_child("b", pair.now)
    pair.pump()
    (_, extra_a) = [e.child for e in pair.established("a")]
    (_, extra_b) = [e.child for e in pair.established("b")]
    assert_child_pair(pair, extra_a, extra_b)
    assert {extra_a.spi_in, extra_a.spi_out}.isdisjoint({first_a.spi_in, first_a.spi_out})
    for old, new in ((first_a, extra_a), (first_b, extra_b)):
        assert new.encr_key_in not in (old.encr_key_in, old.encr_key_out)
        assert new.encr_key_out not in (old.encr_key_in, old.encr_key_out)
    # The first CHILD_SA is untouched and still works.
    assert_child_pair(pair, first_a, first_b)
    request, response = [m for m in pair.cleartext if m.exchange_type == CREATE_CHILD_SA]
    assert (request.sender, response.sender) == ("a", "b")
    kes = [[p for p in m.payloads if isinstance(p, pl.KeyExchange)] for m in (request, response)]
    nonce_i, nonce_r = (
        next(p.data for p in m.payloads if isinstance(p, pl.Nonce)) for m in (request, response)
    )
    keys = pair.a.ike_sa("b").keys
    keymat_without_ke = Prf(keys.prf).prf_plus(keys.sk_d, nonce_i + nonce_r, 2 * 36)
    ours = extra_a.encr_key_out + extra_a.encr_key_in
    if pfs:
        assert [[k.group for k in ke] for ke in kes] == [[31], [31]]  # x25519 both ways
        assert ours != keymat_without_ke  # g^ir (new) went into KEYMAT (RFC 7296 §2.17)
    else:
        assert kes == [[], []]
        assert ours == keymat_without_ke
    for side in "ab":
        assert len(pair.status(side)["children"]) == 2
        assert pair.of_type(side, ev.NegotiationFailed) == []


def test_create_child_sa_with_narrower_selectors(tmp_path):
    pair = IkePair(tmp_path)
    pair.a.create_child("b", pair.now, local_ts=ts("10.1.0.0/25"), remote_ts=ts("10.2.0.7/32"))
    pair.pump()
    (_, extra_a) = [e.child for e in pair.established("a")]
    (_, extra_b) = [e.child for e in pair.established("b")]
    assert extra_a.local_ts == ts("10.1.0.0/25") and extra_a.remote_ts == ts("10.2.0.7/32")
    assert extra_b.local_ts == ts("10.2.0.7/32") and extra_b.remote_ts == ts("10.1.0.0/25")


def test_create_child_sa_refused_keeps_the_ike_sa(tmp_path):
    pair = IkePair(tmp_path)
    pair.a.create_child("b", pair.now, remote_ts=ts("10.99.0.0/24"))
    pair.pump()
    assert len(pair.established("a")) == len(pair.established("b")) == 1
    reason = failure_of(pair, "a")
    assert "TS_UNACCEPTABLE" in reason and "10.99.0.0/24" in reason
    assert "10.99.0.0/24" in failure_of(pair, "b")
    for side in "ab":
        assert pair.status(side)["state"] == "established"
        assert len(pair.status(side)["children"]) == 1
        assert pair.of_type(side, ev.IkeSaDeleted) == []


# ---- 7. INFORMATIONAL: Delete and liveness -----------------------------------------------


def test_delete_child(tmp_path):
    pair = IkePair(tmp_path)
    pair.a.create_child("b", pair.now)
    pair.pump()
    (first_a, extra_a) = [e.child for e in pair.established("a")]
    pair.a.delete_child("b", extra_a.spi_in, pair.now)
    pair.pump()
    (deleted_a,) = pair.of_type("a", ev.ChildSaDeleted)
    (deleted_b,) = pair.of_type("b", ev.ChildSaDeleted)
    assert (deleted_a.spi_in, deleted_a.spi_out) == (extra_a.spi_in, extra_a.spi_out)
    assert (deleted_b.spi_in, deleted_b.spi_out) == (extra_a.spi_out, extra_a.spi_in)
    for side in "ab":
        (left,) = pair.status(side)["children"]
        assert pair.status(side)["state"] == "established"
        assert pair.of_type(side, ev.IkeSaDeleted) == []
    assert left["spi_out"] == f"{first_a.spi_in:08x}"  # b's view of the first child


def test_responder_deletes_a_child(tmp_path):
    """With close_action none the IKE SA stays without a CHILD_SA (the other actions:
    test_ike_reauth.py)."""
    pair = IkePair(tmp_path, side_a(close_action="none"))
    b_child = only_child(pair, "b")
    pair.b.delete_child("a", b_child.spi_in, pair.now)
    pair.pump()
    for side in "ab":
        (deleted,) = pair.of_type(side, ev.ChildSaDeleted)
        assert deleted.spi_in in (b_child.spi_in, b_child.spi_out)
        assert pair.status(side)["children"] == []
        assert pair.status(side)["state"] == "established"


def test_terminate_deletes_ike_sa_and_children_on_both_sides(tmp_path):
    pair = IkePair(tmp_path)
    pair.a.create_child("b", pair.now)
    pair.pump()
    pair.a.terminate("b", pair.now)
    pair.pump()
    for side in "ab":
        children = {e.child.spi_in for e in pair.established(side)}
        assert {e.spi_in for e in pair.of_type(side, ev.ChildSaDeleted)} == children
        assert len(pair.of_type(side, ev.IkeSaDeleted)) == 1
        assert pair.status(side)["state"] == "down"
        assert pair.mgr(side).sas == {}
    # The initiator's operator asked for it: no retry is scheduled.
    assert pair.a.get_timer() is None
    pair.advance(120)
    assert len(messages(pair, "a", IKE_SA_INIT)) == 1


def test_responder_terminates(tmp_path):
    pair = IkePair(tmp_path)
    pair.b.terminate("a", pair.now)
    pair.pump()
    for side in "ab":
        assert len(pair.of_type(side, ev.IkeSaDeleted)) == 1
        assert len(pair.of_type(side, ev.ChildSaDeleted)) == 1
        assert pair.mgr(side).sas == {}


def test_liveness_check_answered(tmp_path):
    pair = IkePair(tmp_path)
    pair.record_cleartext()
    before = dict(pair.b.counters)
    pair.advance(5)
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    request, response = [m for m in pair.cleartext if m.exchange_type == INFORMATIONAL]
    assert (request.sender, request.response, request.payloads) == ("a", False, [])
    assert (response.sender, response.response, response.payloads) == ("b", True, [])
    assert request.message_id == response.message_id == 2
    assert pair.a.ike_sa("b").last_peer_activity == pair.now
    assert pair.b.counters == before
    assert pair.a.ike_sa("b").outstanding is None
    pair.b.check_liveness("a", pair.now)  # the responder asks too, with its own ids
    pair.pump()
    (_, _, request_b, response_b) = [m for m in pair.cleartext if m.exchange_type == INFORMATIONAL]
    assert (request_b.sender, request_b.message_id, response_b.message_id) == ("b", 0, 0)
    for side in "ab":
        assert pair.status(side)["state"] == "established"
        assert pair.of_type(side, ev.NegotiationFailed) == []


def test_shutdown_sends_a_delete_for_every_ike_sa(tmp_path):
    pair = IkePair(tmp_path)
    pair.record_cleartext()
    pair.a.shutdown(pair.now)
    pair.pump()
    deletes = [
        p
        for m in pair.cleartext
        if m.sender == "a" and not m.response
        for p in m.payloads
        if isinstance(p, pl.Delete)
    ]
    assert [(d.protocol_id, d.spis) for d in deletes] == [(1, ())]
    assert len(pair.of_type("b", ev.IkeSaDeleted)) == 1
    assert pair.b.sas == {} and pair.a.sas == {}


def test_shutdown_of_the_responder(tmp_path):
    pair = IkePair(tmp_path)
    pair.b.shutdown(pair.now)
    pair.pump()
    assert len(pair.of_type("a", ev.IkeSaDeleted)) == 1
    assert pair.a.sas == {} and pair.b.sas == {}


# ---- 8. NAT traversal (RFC 7296 §2.23, RFC 3948) ----------------------------------------


def nat_pair(tmp_path, **kwargs) -> IkePair:
    """``a`` behind a NAT: its 500/4500 appear as NAT_PUBLIC_IP:40500/40501 to ``b``."""
    return behind_nat(
        tmp_path, side_a(), side_b(remote_address=NAT_PUBLIC_IP, remote_id=A_IP), **kwargs
    )


def test_nat_detected_on_the_natted_side(tmp_path):
    pair = nat_pair(tmp_path)
    (a_ike,) = pair.of_type("a", ev.IkeSaEstablished)
    (b_ike,) = pair.of_type("b", ev.IkeSaEstablished)
    assert a_ike.nat_local is True
    assert b_ike.nat_local is False and b_ike.nat_remote is True
    assert b_ike.remote == (NAT_PUBLIC_IP, 40501)
    assert pair.status("a")["nat_local"] is True and pair.status("b")["nat_local"] is False
    a_child, b_child = only_child(pair, "a"), only_child(pair, "b")
    assert b_child.remote == (NAT_PUBLIC_IP, 40501)
    assert_child_pair(pair, a_child, b_child)


def test_nat_keepalives_from_the_natted_side_only(tmp_path):
    pair = nat_pair(tmp_path)
    established = pair.now
    pair.advance(65)
    keepalives = pair.sent_by("a", keepalive=True)
    assert [round(k.at - established, 6) for k in keepalives] == [20.0, 40.0, 60.0]
    for k in keepalives:
        assert k.data == b"" and not k.marker  # the framing adds the 0xFF octet
        assert k.original_src == (A_IP, 4500) and k.dst == (B_IP, 4500)
    assert pair.sent_by("b", keepalive=True) == []
    assert pair.a.counters["nat_keepalives"] == 3
    assert "nat_keepalives" not in pair.b.counters


def test_no_keepalives_without_nat(tmp_path):
    pair = IkePair(tmp_path)
    pair.advance(65)
    assert pair.sent_by("a", keepalive=True) == pair.sent_by("b", keepalive=True) == []


def test_keepalive_interval_is_configurable(tmp_path):
    pair = nat_pair(tmp_path, keepalive_interval=5.0)
    pair.advance(16)
    assert len(pair.sent_by("a", keepalive=True)) == 3


def test_nat_rebinding_moves_the_responder(tmp_path):
    pair = nat_pair(tmp_path)
    pair.advance(25)  # a keepalive, but no liveness check yet (dpd_delay 30 s)
    # The NAT forgets the mapping and picks a new port for a's 4500.
    pair.net.nat[(A_IP, 4500)] = (NAT_PUBLIC_IP, 41000)
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    (moved,) = pair.of_type("b", ev.PeerAddressChanged)
    assert moved.peer == "a"
    assert moved.local == (B_IP, 4500) and moved.remote == (NAT_PUBLIC_IP, 41000)
    assert pair.of_type("a", ev.PeerAddressChanged) == []
    (answer,) = messages(pair, "b", INFORMATIONAL)
    assert answer.dst == (NAT_PUBLIC_IP, 41000) and answer.delivered
    assert pair.status("b")["remote"] == f"{NAT_PUBLIC_IP}:41000"
    # Requests the responder starts itself go to the new port as well.
    pair.b.check_liveness("a", pair.now)
    pair.pump()
    request = messages(pair, "b", INFORMATIONAL)[-1]
    assert request.dst == (NAT_PUBLIC_IP, 41000) and request.delivered
    assert pair.a.ike_sa("b").outstanding is None and pair.b.ike_sa("a").outstanding is None
    assert pair.of_type("b", ev.NegotiationFailed) == []


def test_unauthenticated_message_from_a_new_port_does_not_move_the_sa(tmp_path):
    pair = nat_pair(tmp_path)
    (auth,) = messages(pair, "a", IKE_AUTH)
    forged = bytearray(auth.data)
    forged[-1] ^= 1
    pair.inject("b", bytes(forged), src=(NAT_PUBLIC_IP, 50000))
    assert pair.of_type("b", ev.PeerAddressChanged) == []
    assert pair.status("b")["remote"] == f"{NAT_PUBLIC_IP}:40501"


# ---- 9. hostile input ----------------------------------------------------------------------

ODD_COUNTERS = (
    "malformed",
    "undecryptable",
    "unknown_spi",
    "invalid_message_id",
    "unexpected_response",
    "unknown_peer",
    "unsupported_critical_payload",
    "unknown_exchange",
    # A mangled copy of the peer's last request: not the request answered (issue 12).
    "retransmit_mismatch",
    "retransmit_rate_limited",
)


def odd_input(mgr) -> int:
    return sum(mgr.counters.get(name, 0) for name in ODD_COUNTERS)


def mutations(data: bytes) -> list[bytes]:
    """Truncations, bit flips, garbage of every kind, derived from one real message."""
    out = [b"", b"\x00", bytes(27), bytes(28), b"\xff" * 64, os_random(200)]
    out += [data[:n] for n in (1, 8, 16, 27, 28, 29, 32, len(data) // 2, len(data) - 1)]
    out += [data + b"\x00", data + os_random(16)]
    for bit in range(0, len(data) * 8, 7):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append(bytes(flipped))
    bad_length = bytearray(data)
    bad_length[24:28] = (len(data) + 100).to_bytes(4, "big")
    out.append(bytes(bad_length))
    return out


def os_random(n: int) -> bytes:
    return os.urandom(n)


def still_works(pair: IkePair) -> None:
    """Both directions of the IKE SA still run exchanges, and new CHILD_SAs come up."""
    before_a, before_b = len(pair.established("a")), len(pair.established("b"))
    pair.a.check_liveness("b", pair.now)
    pair.pump()
    pair.b.check_liveness("a", pair.now)
    pair.pump()
    pair.a.create_child("b", pair.now)
    pair.pump()
    assert len(pair.established("a")) == before_a + 1
    assert len(pair.established("b")) == before_b + 1
    assert_child_pair(pair, pair.established("a")[-1].child, pair.established("b")[-1].child)
    for side in "ab":
        sa = pair.mgr(side).ike_sa(pair.peer_of(side))
        assert sa.outstanding is None and pair.status(side)["state"] == "established"
        assert pair.of_type(side, ev.IkeSaDeleted) == []


@pytest.mark.parametrize("target", ["a", "b"])
def test_hostile_input_after_establishment(tmp_path, target):
    pair = IkePair(tmp_path)
    pair.a.create_child("b", pair.now)  # a real protected request and response to mangle
    pair.pump()
    # Mangled IKE_SA_INIT requests may still parse and start a new responder SA (a
    # legitimate new attempt); every mangled protected message must be counted.
    samples = [s.data for s in pair.net.log]
    for sample in samples[:2]:
        for data in mutations(sample):
            pair.inject(target, data)
    for sample in samples[2:]:
        for data in mutations(sample):
            before = odd_input(pair.mgr(target)) + pair.mgr(target).counters.get(
                "retransmit_answered", 0
            )
            pair.inject(target, data)  # must not raise
            after = odd_input(pair.mgr(target)) + pair.mgr(target).counters.get(
                "retransmit_answered", 0
            )
            assert after == before + 1, (data.hex(), pair.mgr(target).counters)
    assert "internal_error" not in pair.mgr(target).counters
    still_works(pair)


def test_hostile_input_during_the_handshake(tmp_path):
    # Parser robustness: limits high enough that the noise from a's address does not
    # block a's genuine request (the limits have their own tests in test_ike_dos).
    pair = IkePair(
        tmp_path,
        b=side_b(cookie_threshold=10_000, half_open_per_source=10_000),
        start=False,
    )
    pair.a.start(pair.now)
    init = pair.a.datagrams_to_send()[0]
    for data in mutations(init.data):
        if len(data) >= 8:  # another initiator's SPI: the genuine request must not be
            data = os_random(8) + data[8:]  # mistaken for a retransmission of these
        pair.b.receive_datagram(data, (B_IP, 500), (A_IP, 500), pair.now)
        pair.b.datagrams_to_send()
    assert "internal_error" not in pair.b.counters
    pair.a._outgoing.append(init)  # the real request goes out after the noise
    pair.pump()
    assert "internal_error" not in pair.a.counters
    for side in "ab":
        assert pair.status(side)["state"] == "established", pair.status(side)
    assert_child_pair(pair, only_child(pair, "a"), only_child(pair, "b"))


def protected_request(pair: IkePair, payloads: list[object], exchange: int = INFORMATIONAL):
    """A request from ``a`` with the next message id, protected with a's keys."""

    sa = pair.a.ike_sa("b")
    msg = codec.Message(
        spi_i=sa.spi_i,
        spi_r=sa.spi_r,
        exchange_type=exchange,
        initiator=True,
        response=False,
        message_id=sa.next_request_id,
        payloads=payloads,
    )
    sa.next_request_id += 1
    return codec.encode(msg, keys=sa.keys, sender_is_initiator=True)


def test_unknown_critical_payload_inside_sk(tmp_path):
    pair = IkePair(tmp_path)
    pair.record_cleartext()
    data = protected_request(pair, [pl.RawPayload(200, b"hello", critical=True)])
    pair.inject("b", data)
    assert pair.b.counters["unsupported_critical_payload"] == 1
    (answer,) = [m for m in pair.cleartext if m.sender == "b"]
    assert answer.response and answer.exchange_type == INFORMATIONAL
    (notify,) = answer.payloads
    assert notify.notify_type == UNSUPPORTED_CRITICAL_PAYLOAD and notify.data == bytes([200])
    # A non-critical unknown payload is ignored (RFC 7296 §2.5): an ordinary empty answer.
    data = protected_request(pair, [pl.RawPayload(201, b"skip me", critical=False)])
    pair.inject("b", data)
    assert pair.b.counters["unsupported_critical_payload"] == 1
    assert [m.payloads for m in pair.cleartext if m.sender == "b"][-1] == []
    still_works(pair)


def test_unknown_critical_payload_in_ike_sa_init(tmp_path):

    pair = IkePair(tmp_path, start=False)
    pair.a.start(pair.now)
    (init,) = pair.a.datagrams_to_send()
    msg = codec.parse_message(init.data)
    hostile = codec.encode(
        replace(msg, payloads=(*msg.payloads, pl.RawPayload(200, b"x", critical=True)))
    )
    pair.b.receive_datagram(hostile, (B_IP, 500), (A_IP, 500), pair.now)
    (answer,) = pair.b.datagrams_to_send()
    reply = parse_message(answer.data)
    assert reply.response and reply.spi_i == msg.spi_i and reply.spi_r == 0
    assert [(p.notify_type, p.data) for p in reply.payloads] == [
        (UNSUPPORTED_CRITICAL_PAYLOAD, bytes([200]))
    ]
    assert pair.b.counters["unsupported_critical_payload"] == 1
    # Refused statelessly: nothing half-open stays behind (RFC 7296 §2.6).
    assert pair.b.sas == {} and pair.b.half_open == {}
    assert pair.status("b")["state"] == "down"


def test_shutdown_deletes_every_ike_sa_of_a_daemon_with_two_peers(tmp_path):
    c_ip, net_c = "192.0.2.3", "10.3.0.0/24"
    to_c = side_a(name="c", remote_address=c_ip, remote_ts=(net_c,))
    pair = IkePair(tmp_path, side_a(extra_peers=(to_c,)), side_b(), start=False)
    c_side = side_b(listen=c_ip, local_ts=(net_c,))
    pair.add_manager("c", c_ip, build_config(c_side, tmp_path / "c", "c"))
    pair.a.start(pair.now)
    pair.pump()
    assert {e["peer"]: e["state"] for e in pair.a.status()} == {
        "b": "established",
        "c": "established",
    }
    pair.record_cleartext()
    pair.a.shutdown(pair.now)
    pair.pump()
    deletes = [
        (m.sender, [(p.protocol_id, p.spis) for p in m.payloads if isinstance(p, pl.Delete)])
        for m in pair.cleartext
        if not m.response
    ]
    assert deletes == [("a", [(1, ())]), ("a", [(1, ())])]
    for side in ("b", "c"):
        assert len(pair.of_type(side, ev.IkeSaDeleted)) == 1
        assert len(pair.of_type(side, ev.ChildSaDeleted)) == 1
        assert pair.mgr(side).sas == {}
    assert len(pair.of_type("a", ev.IkeSaDeleted)) == 2
    assert pair.a.sas == {} and pair.a.get_timer() is None
    assert {e["peer"]: e["state"] for e in pair.a.status()} == {"b": "down", "c": "down"}


def test_one_peers_status_entry_is_its_entry_of_the_whole_status(tmp_path):
    """``peer_status`` (asked per event of a waiting command) gives what ``status()`` says
    of that peer alone, at any ``now``; None for a name that is no IKE peer."""
    c_ip, net_c = "192.0.2.3", "10.3.0.0/24"
    to_c = side_a(name="c", remote_address=c_ip, remote_ts=(net_c,))
    pair = IkePair(tmp_path, side_a(extra_peers=(to_c,)), side_b(), start=False)
    pair.a.initiate("b", pair.now)
    pair.pump()
    for now in (None, pair.now + 5):
        entries = {e["peer"]: e for e in pair.a.status(now)}
        assert entries["b"]["state"] == "established" and entries["c"]["state"] == "down"
        for name in ("b", "c"):
            assert pair.a.peer_status(name, now) == entries[name]
    assert pair.a.peer_status("nobody") is None
