"""``ipsecctl up|down|rekey`` wait for their outcome: DaemonCore.control_wait with a fake
network and a fake clock (:class:`CoreRig`); the outcome table is ipsecd.daemon.outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ipsecd.daemon.outcomes import MAX_WAITERS, Outcomes
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import A_IP, B_IP, side_a, side_b


def answer(r: CoreRig, ticket: int) -> dict[str, Any]:
    """The one answer the core gave, for ``ticket``."""
    ((got, response),) = r.core.control_answers()
    assert got == ticket
    return response


def up(r: CoreRig, timeout: float = 30.0, peer: str = "b") -> dict[str, Any]:
    ticket = r.core.control_wait("up", peer, r.now, timeout=timeout)
    r.pump()
    return answer(r, ticket)


def responder_rig(tmp_path: Path, **b: Any) -> CoreRig:
    """Gateway A does not initiate at start: ``ipsecctl up`` does."""
    return CoreRig(tmp_path, side_a(start="respond"), side_b(**b))


def test_up_waits_for_the_child_sa_and_summarises_both_sas(tmp_path: Path) -> None:
    r = responder_rig(tmp_path)
    ticket = r.core.control_wait("up", "b", r.now, timeout=30)
    assert r.core.control_answers() == []  # the IKE_SA_INIT is only on its way
    r.pump()
    response = answer(r, ticket)
    (sa,) = r.core.sad
    ike = r.status_a()
    assert response == {
        "ok": True,
        "outcome": "up",
        "command": "up",
        "peer": "b",
        "seconds": 0.0,
        "ike_sa": {
            "local_spi": ike["local_spi"],
            "remote_spi": ike["remote_spi"],
            "algorithm": "aes256gcm16-prfsha256-x25519",
            "local": f"{A_IP}:4500",  # moved to the NAT-T port (RFC 7296 §2.23)
            "remote": f"{B_IP}:4500",
        },
        "child_sas": [
            {
                "spi_in": f"{sa.inbound.spi:08x}",
                "spi_out": f"{sa.outbound.spi:08x}",
                "algorithm": "aes256gcm16",
                "local_ts": "10.1.0.0/24",
                "remote_ts": "10.2.0.0/24",
            }
        ],
    }
    assert r.core.get_timer() == r.ike.get_timer()  # no deadline left behind


def test_up_with_a_wrong_psk_fails_with_the_explanation(tmp_path: Path) -> None:
    r = responder_rig(tmp_path, psk="0x" + "77" * 32)
    response = up(r)
    assert response["ok"] is False and response["outcome"] == "failed"
    assert "peer b rejected our authentication: AUTHENTICATION_FAILED" in response["error"]
    assert "check the PSK" in response["error"]
    assert r.core.last_error["b"] == response["error"]  # the same words as the log and status


def test_up_without_a_common_proposal_fails_with_both_offers(tmp_path: Path) -> None:
    r = responder_rig(tmp_path, ike=("aes128-sha256-ecp256",))
    response = up(r)
    assert response["outcome"] == "failed" and "NO_PROPOSAL_CHOSEN" in response["error"]


def test_up_times_out_on_the_cores_clock_and_says_where_the_peer_stands(tmp_path) -> None:
    r = responder_rig(tmp_path)
    r.drop = True  # the peer never answers
    ticket = r.core.control_wait("up", "b", r.now, timeout=5)
    start = r.now
    r.pump()
    assert r.core.get_timer() is not None and r.core.get_timer() <= start + 5
    r.advance(4.9)
    assert r.core.control_answers() == []
    r.advance(0.2)
    response = answer(r, ticket)
    assert response["ok"] is False and response["outcome"] == "timeout"
    assert response["seconds"] == pytest.approx(5.0, abs=0.01)
    assert response["error"].startswith("no outcome within 5 s (peer b is init-sent)")
    assert "ipsecd goes on" in response["error"]


def test_up_of_a_tunnel_that_is_up_answers_at_once(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())  # a initiates at start
    sent = len(r.ike_sent)
    ticket = r.core.control_wait("up", "b", r.now, timeout=30)
    response = answer(r, ticket)
    assert response["ok"] and response["outcome"] == "already up"
    assert response["ike_sa"]["local_spi"] == r.status_a()["local_spi"]
    assert len(response["child_sas"]) == 1
    r.pump()
    assert len(r.ike_sent) == sent  # nothing negotiated


def test_up_of_an_ike_sa_without_child_sa_creates_one(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (sa,) = r.core.sad
    r.b.delete_child("a", sa.outbound.spi, r.now)  # the peer keeps the IKE SA only
    r.pump()
    assert len(r.core.sad) == 0 and r.status_a()["state"] == "established"
    response = up(r)
    assert response["outcome"] == "up" and len(r.core.sad) == 1
    assert response["child_sas"][0]["spi_in"] == f"{next(iter(r.core.sad)).inbound.spi:08x}"


def test_down_waits_for_the_delete_to_be_answered(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    ticket = r.core.control_wait("down", "b", r.now, timeout=30)
    assert r.core.control_answers() == []  # the Delete is on its way
    r.pump()
    response = answer(r, ticket)
    assert response["ok"] and response["outcome"] == "down"
    assert response["reason"] and len(r.core.sad) == 0


def test_down_with_nothing_to_delete_answers_at_once(tmp_path: Path) -> None:
    r = responder_rig(tmp_path)
    ticket = r.core.control_wait("down", "b", r.now, timeout=30)
    assert answer(r, ticket)["outcome"] == "down"
    r.drop = True
    r.core.control("up", "b", r.now)  # negotiating: nothing established to delete either
    ticket = r.core.control_wait("down", "b", r.now, timeout=30)
    assert answer(r, ticket)["outcome"] == "down"


def test_rekey_answers_with_the_new_child_sa(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (old,) = r.core.sad
    ticket = r.core.control_wait("rekey", "b", r.now, timeout=30)
    r.pump()
    response = answer(r, ticket)
    assert response["ok"] and (response["outcome"], response["command"]) == ("rekeyed", "rekey")
    (child,) = response["child_sas"]
    (new,) = r.core.sad
    assert child["spi_in"] == f"{new.inbound.spi:08x}" != f"{old.inbound.spi:08x}"


def test_rekey_ike_answers_with_the_new_ike_sa(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    old_spi = r.status_a()["local_spi"]
    ticket = r.core.control_wait("rekey", "b", r.now, timeout=30, rekey_ike=True)
    r.pump()
    response = answer(r, ticket)
    assert response["ok"] and response["command"] == "rekey-ike"
    assert response["ike_sa"]["local_spi"] == r.status_a()["local_spi"] != old_spi
    assert response["ike_sa"]["algorithm"] == "aes256gcm16-prfsha256-x25519"


def test_refusals_are_answered_at_once(tmp_path: Path) -> None:
    r = responder_rig(tmp_path)
    ticket = r.core.control_wait("rekey", "b", r.now, timeout=30)
    response = answer(r, ticket)
    assert response["ok"] is False and "no established IKE SA" in response["error"]
    ticket = r.core.control_wait("up", "nobody", r.now, timeout=30)
    response = answer(r, ticket)
    assert (response["ok"], response["error"]) == (False, "no IKE peer named 'nobody'")
    assert r.core.get_timer() is None  # nothing waits


def test_rekey_without_child_sa_is_refused(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (sa,) = r.core.sad
    r.b.delete_child("a", sa.outbound.spi, r.now)
    r.pump()
    assert r.core.control("rekey", "b", r.now) == {
        "ok": False,
        "error": "peer 'b' has no CHILD_SA to rekey",
    }


def test_shutdown_answers_every_waiting_command(tmp_path: Path) -> None:
    r = responder_rig(tmp_path)
    r.drop = True
    ticket = r.core.control_wait("up", "b", r.now, timeout=30)
    r.core.shutdown(r.now)
    response = answer(r, ticket)
    assert response["ok"] is False and response["error"] == "ipsecd is stopping"


def test_no_more_than_max_waiters() -> None:
    outcomes = Outcomes()
    for _ in range(MAX_WAITERS):
        assert outcomes.wait(outcomes.ticket(), "up", "b", 0.0, 10.0) is not None
    ticket = outcomes.ticket()
    assert outcomes.wait(ticket, "up", "b", 0.0, 10.0) is None
    assert outcomes.answers() == [(ticket, {"ok": False, "error": "64 commands already wait"})]
    assert outcomes.deadline() == 10.0


def test_a_waiter_is_answered_once() -> None:
    outcomes = Outcomes()
    waiter = outcomes.wait(outcomes.ticket(), "rekey-ike", "b", 0.0, 10.0)
    assert waiter is not None
    outcomes.failed("b", "first", 1.0)
    outcomes.failed("b", "second", 2.0)
    outcomes.fail(waiter, "failed", "third", 3.0)
    outcomes.expire(20.0, lambda peer: "down")
    ((_, response),) = outcomes.answers()
    assert response["error"] == "first" and response["seconds"] == 1.0
    assert outcomes.deadline() is None


def test_only_the_last_ike_sa_of_a_peer_settles_a_command() -> None:
    outcomes = Outcomes()
    outcomes.wait(1, "down", "b", 0.0, 10.0)
    outcomes.wait(2, "up", "c", 0.0, 10.0)
    outcomes.wait(3, "up", "c", 0.0, 10.0)
    outcomes.failed("b", "no response", 1.0)
    outcomes.ike_deleted("b", "rekeyed", False, 1.0)  # another IKE SA of b is still there
    outcomes.ike_deleted("c", "duplicate IKE SA (both ends initiated)", False, 1.0)
    assert outcomes.answers() == []
    outcomes.ike_deleted("b", "deleted by peer", True, 2.0)
    ((ticket, response),) = outcomes.answers()
    assert ticket == 1 and response["reason"] == "deleted by peer"
    assert outcomes.waiting("c") and not outcomes.waiting("b")


def test_up_during_a_rekey_is_already_up_and_adds_no_child_sa(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    r.drop = True
    assert r.core.control("rekey", "b", r.now) == {"ok": True}  # outstanding: no answer
    r.pump()
    assert [c["state"] for c in r.status_a()["children"]] == ["rekeying"]
    ticket = r.core.control_wait("up", "b", r.now, timeout=30)
    assert answer(r, ticket)["outcome"] == "already up"
    r.drop = False
    r.advance(5)  # the rekey's retransmission gets through
    assert len(r.core.sad) == 1 and len(r.status_a()["children"]) == 1
