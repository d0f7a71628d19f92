"""The status document (version 1) against docs/status.schema.json, from a real DaemonCore.

The core faces a real IKE peer (:class:`CoreRig`, fake clock and network) and goes
through the states an operator sees — connecting, established, a CHILD_SA rekey, an
IKE SA rekey, a CHILD_SA deleted by the peer, a manual peer — and every document it
reports must validate against the schema, count monotonically per peer, and list
each CHILD_SA once.  The schema's fixed lists must be the code's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ipsecd.config import load_config
from ipsecd.daemon.core import DaemonCore, child_sa
from ipsecd.daemon.status import (
    DAEMON_EVENTS,
    DROP_REASONS,
    IKE_EVENTS,
    PEER_STATES,
    DataplaneStatus,
)
from ipsecd.ike.lifecycle import LIVE_STATES, IkeState
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import A_IP, B_IP, ipv4_packet, side_a, side_b
from tests.unit.status_docs import CONNS, STATUS
from tests.unit.test_daemon_core import manual_config

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "status.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
WALL = 1_714_564_800.0  # 2024-05-01T12:00:00Z at the rig's start


def validate(doc: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    return doc


def status(r: CoreRig) -> dict[str, Any]:
    """The document as the control socket sends it (through JSON, like ipsecctl reads it)."""
    doc = r.core.status(
        r.now,
        wall=WALL,
        tun="ipsec0",
        listen=[(A_IP, 4500), (A_IP, 500)],
        dataplane=DataplaneStatus(),
    ).to_dict()
    return validate(json.loads(json.dumps(doc)))


def peer(r: CoreRig) -> dict[str, Any]:
    (only,) = status(r)["peers"]
    return only


def from_b(r: CoreRig, count: int) -> None:
    """``count`` ESP packets from b to a, sealed with b's newest outbound keys."""
    child = r.pair.established("b")[-1].child
    outbound = child_sa("a", child, (B_IP, 4500), r.now).outbound  # as b installs it
    inner = ipv4_packet("10.2.0.5", "10.1.0.5")
    datagrams = [(outbound.encapsulate(inner, 4), (B_IP, 4500)) for _ in range(count)]
    r.core.from_udp(datagrams, (A_IP, 4500), r.now)
    assert len(r.core.packets_to_tun()) == count


def totals(doc: dict[str, Any]) -> list[int]:
    """Every counter of a document: per peer, per daemon, per IKE layer."""
    values = [*doc["drops"].values(), *doc["counters"].values(), *doc["ike_counters"].values()]
    for p in doc["peers"]:
        values += [*p["transfer"].values(), *p["drops"].values(), p["handshake_failures"]]
    return values


# -- the schema is the code's --------------------------------------------------------------------
def test_schema_is_valid_and_its_fixed_lists_are_the_codes() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    props = SCHEMA["properties"]
    assert props["counters"]["required"] == list(DAEMON_EVENTS)
    assert props["ike_counters"]["required"] == list(IKE_EVENTS)
    assert SCHEMA["$defs"]["drops"]["required"] == list(DROP_REASONS)
    assert SCHEMA["$defs"]["peer"]["properties"]["state"]["enum"] == list(PEER_STATES)
    assert props["version"]["const"] == 1
    defs = SCHEMA["$defs"]
    assert defs["ike_sa"]["properties"]["state"]["enum"] == [s.value for s in IkeState]
    live = {s.value for s in LIVE_STATES}  # the CHILD_SA states the data plane holds
    assert set(defs["child"]["properties"]["state"]["enum"]) == live


def test_the_formatting_fixtures_follow_the_schema() -> None:
    validate(STATUS)
    assert STATUS["peers"][0]["state"] in PEER_STATES


def test_every_field_of_the_model_is_in_the_schema_and_back(tmp_path: Path) -> None:
    """additionalProperties is false and every property is required, at every level:
    the model cannot grow a field the schema does not document, nor lose one."""

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, where
                assert sorted(node["required"]) == sorted(node["properties"]), where
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for n, value in enumerate(node):
                walk(value, f"{where}/{n}")

    walk(SCHEMA, "#")


# -- a negotiated peer through its life ----------------------------------------------------------
def test_connecting_peer_was_never_heard(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    r.drop = True
    r.core.control("down", "b", r.now)
    r.pump()
    r.advance(200)  # the Delete went unanswered (127.5 s of retransmits): the SA is gone
    r.core.control("up", "b", r.now)
    r.pump()
    r.advance(2)
    p = peer(r)
    assert p["state"] == "connecting" and not p["up"] and p["children"] == []
    ike = p["ike"]
    assert ike is not None and ike["state"] == "init-sent"
    assert ike["remote_spi"] is None and ike["local_spi"]
    assert ike["last_heard_at"] is None and ike["last_heard_seconds"] is None
    assert ike["established_at"] is None and ike["algorithm"] == ""


def test_established_peer_one_child_wall_clock_times(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")])
    r.advance(10)
    from_b(r, 3)
    r.advance(4)
    doc = status(r)
    assert doc["version"] == 1
    assert doc["generated_at"] == "2024-05-01T12:00:00Z"
    assert doc["started_at"] == "2024-05-01T11:59:46Z" and doc["uptime_seconds"] == 14.0
    (p,) = doc["peers"]
    assert p["state"] == "established" and p["up"]
    assert p["local_ts"] == ["10.1.0.0/24"] and p["remote_ts"] == ["10.2.0.0/24"]
    ike = p["ike"]
    assert (ike["local_id"], ike["remote_id"]) == (A_IP, B_IP)
    assert ike["established_at"] == "2024-05-01T11:59:46Z" and ike["established_seconds"] == 14.0
    assert ike["last_heard_seconds"] is not None and ike["last_heard_seconds"] <= 14.0
    assert not ike["nat_local"] and not ike["nat_remote"]  # both fake NAT-D: no NAT
    (child,) = p["children"]
    (sa,) = r.core.sad
    assert child["spi_in"] == f"{sa.inbound.spi:08x}" and child["state"] == "installed"
    assert child["local_ts"] == ["10.1.0.0/24"]
    assert child["packets_out"] == 1 and child["packets_in"] == 3
    # Dated by the first look after the packet: the core looks at least once a second.
    assert 13.0 <= child["last_out_seconds"] <= 14.0 and 3.0 <= child["last_in_seconds"] <= 4.0
    assert child["expires_in_seconds"] == 3960.0 - 14.0  # life_time's default
    assert 0 < child["rekey_in_seconds"] < child["expires_in_seconds"]
    assert p["transfer"]["packets_in"] == 3 and p["transfer"]["packets_out"] == 1
    assert all(v == 0 for v in p["drops"].values())
    assert doc["counters"]["wakeups"] == 0 and doc["ike_counters"]["retransmits"] == 0
    assert "ike" not in json.dumps(doc["peers"][0]["children"])  # children: one shape, once


def test_counters_only_grow_across_child_and_ike_rekeys(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")] * 5)
    from_b(r, 4)
    before = status(r)
    old_spi = before["peers"][0]["children"][0]["spi_in"]
    r.core.control("rekey", "b", r.now)
    r.pump()
    r.advance(1)
    after_child = status(r)
    (p,) = after_child["peers"]
    assert [c["spi_in"] for c in p["children"]] != [old_spi]
    assert len({c["spi_in"] for c in p["children"]}) == len(p["children"]) == len(r.core.sad)
    assert p["transfer"] == before["peers"][0]["transfer"]  # the old SA's counts are kept
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")] * 2)
    r.core.control("rekey", "b", r.now, rekey_ike=True)
    r.pump()
    r.advance(1)
    after_ike = status(r)
    assert after_ike["peers"][0]["state"] == "established"
    assert after_ike["peers"][0]["transfer"]["packets_out"] == 7
    assert after_ike["ike_counters"]["ike_sa_rekeyed"] == 1
    assert after_ike["ike_counters"]["child_sa_rekeyed"] == 1
    for earlier, later in ((before, after_child), (after_child, after_ike)):
        assert all(b <= a for b, a in zip(totals(earlier), totals(later), strict=True))


def test_ike_sa_without_child_is_its_own_state(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (sa,) = r.core.sad
    r.b.delete_child("a", sa.outbound.spi, r.now)  # b deletes its inbound SA: our outbound
    r.pump()
    p = peer(r)
    assert p["state"] == "established-no-child" and not p["up"] and p["children"] == []
    assert p["ike"]["state"] == "established"


def test_failed_negotiation_has_a_time_and_a_count(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b(psk="0x" + "66" * 32))
    r.advance(5)
    p = peer(r)
    assert p["state"] in ("connecting", "down")
    assert p["handshake_failures"] >= 1 and "AUTHENTICATION_FAILED" in p["last_error"]
    assert p["last_error_seconds"] == 5.0
    assert status(r)["counters"]["negotiation_failed"] == p["handshake_failures"]


def test_manual_peer_and_conns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    core = DaemonCore(load_config(manual_config(tmp_path)), 100.0)
    doc = core.status(130.0, wall=WALL, tun=None, listen=[], dataplane=DataplaneStatus()).to_dict()
    validate(json.loads(json.dumps(doc)))
    (p,) = doc["peers"]
    assert (p["mode"], p["start"], p["state"], p["up"]) == ("manual", "manual", "manual", True)
    assert p["ike"] is None and p["ike_sas"] == 0 and doc["ike_dos"] is None
    (child,) = p["children"]
    assert child["expires_at"] is None and child["rekey_at"] is None
    assert child["established_at"] == "2024-05-01T11:59:30Z"
    conns = core.conns().to_dict()
    assert set(conns) == set(CONNS) and set(conns["peers"][0]) == set(CONNS["peers"][0])
    assert conns["peers"][0]["child"]["manual_spi_in"] == "00001001"
    assert conns["peers"][0]["child"]["esp_proposals"] == ["aes128gcm16"]


def test_conns_of_a_negotiated_peer(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (p,) = r.core.conns().to_dict()["peers"]
    assert set(p) == set(CONNS["peers"][0]) and set(p["child"]) == set(CONNS["peers"][0]["child"])
    assert p["ike_proposals"] == ["aes256gcm16-prfsha256-x25519"]
    assert p["child"]["esp_proposals"] == ["aes256gcm16"]
    assert (p["local_id"], p["remote_id"], p["auth"]) == (A_IP, B_IP, "psk")
    assert p["child"]["rekey_seconds"] == 3600 and p["ike_rekey_seconds"] == 4 * 3600
