"""The status model's parts: the ledger (totals across rekeys, last packet times), the clock,
the one-word peer states, NAT detection against forced encapsulation, and the fixed
counter names against what the code counts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ipsecd.config import parse_config
from ipsecd.crypto.registry import ENCRYPTION
from ipsecd.daemon.core import child_sa
from ipsecd.daemon.ledger import Ledger, Transfer
from ipsecd.daemon.status import (
    DAEMON_EVENTS,
    IKE_EVENTS,
    Clock,
    every,
    ike_sa_status,
    nat_remote_detected,
    peer_state,
)
from ipsecd.esp.counters import DropReason
from ipsecd.ike import events as ev
from ipsecd.selectors import TrafficSelector
from tests.unit.ike_pair_support import side_a
from tests.unit.status_docs import IKE_SA
from tests.unit.test_config_support import KEY_IN, KEY_OUT

ROOT = Path(__file__).resolve().parents[2]
NETS = (TrafficSelector.from_prefix("10.1.0.0/24"),), (TrafficSelector.from_prefix("10.2.0.0/24"),)


def installed(peer: str = "b", spi: int = 0x1001, now: float = 0.0) -> Any:
    params = ev.ChildSaParams(
        spi_in=spi,
        spi_out=spi + 1,
        encr=ENCRYPTION["aes128gcm16"],
        integ=None,
        esn=False,
        encr_key_in=KEY_IN,
        integ_key_in=b"",
        encr_key_out=KEY_OUT,
        integ_key_out=b"",
        local_ts=NETS[0],
        remote_ts=NETS[1],
        remote=("192.0.2.2", 4500),
    )
    return child_sa(peer, params, ("192.0.2.1", 4500), now)


def carried(sa: Any, packets_in: int, packets_out: int, nbytes: int = 100) -> None:
    """Pretend ``sa`` opened and sealed packets (its own counters, as the ESP code keeps them)."""
    sa.inbound.packets += packets_in
    sa.inbound.bytes += packets_in * nbytes
    sa.outbound.packets += packets_out
    sa.outbound.bytes += packets_out * nbytes


# -- the ledger -----------------------------------------------------------------------------------
def test_peer_totals_keep_what_retired_sas_carried() -> None:
    ledger = Ledger()
    old = installed()
    ledger.observe([old], 0.0)
    carried(old, 4, 5)
    old.inbound.drops[DropReason.REPLAY] += 2
    new = installed(spi=0x2001)
    carried(new, 1, 0)
    ledger.observe([new], 10.0)  # the rekey: old is gone, its counts stay with the peer
    assert ledger.transfer("b", [new]) == Transfer(5, 500, 5, 500)
    assert ledger.drops("b", [new])["replay"] == 2
    assert set(ledger.drops("b", [new])) == {str(r) for r in DropReason}
    assert ledger.transfer("other", []) == Transfer()


def test_a_retired_sa_counts_what_it_carried_after_the_last_look() -> None:
    ledger = Ledger()
    sa = installed()
    ledger.observe([sa], 0.0)
    carried(sa, 3, 3)  # between the last look and its removal
    ledger.observe([], 5.0)
    assert ledger.transfer("b", []) == Transfer(3, 300, 3, 300)


def test_last_packet_each_way_is_dated_by_the_look_that_saw_it() -> None:
    ledger = Ledger()
    sa = installed()
    ledger.observe([sa], 0.0)
    assert ledger.last_packets(sa) == (None, None)
    carried(sa, 1, 0)
    ledger.observe([sa], 2.0)
    carried(sa, 0, 1)
    ledger.observe([sa], 3.0)
    ledger.observe([sa], 9.0)  # nothing moved: the times stay
    assert ledger.last_packets(sa) == (2.0, 3.0)
    assert ledger.last_packets(installed(spi=0x3001)) == (None, None)


def test_handshake_failures_and_the_last_error_time() -> None:
    ledger = Ledger()
    ledger.event(ev.NegotiationFailed("b", "NO_PROPOSAL_CHOSEN"), 10.0)
    ledger.event(ev.NegotiationFailed("b", "AUTHENTICATION_FAILED"), 12.0)
    ledger.event(ev.IkeSaDeleted("b", "deleted"), 13.0)
    assert ledger.handshake_failures("b") == 2 and ledger.handshake_failures("c") == 0
    error = ledger.last_error("b")
    assert error is not None and (error.message, error.at) == ("AUTHENTICATION_FAILED", 12.0)


# -- times, counters ------------------------------------------------------------------------------
def test_clock_gives_wall_clock_iso_8601_ages_and_delays() -> None:
    clock = Clock(now=500.0, wall=1_714_564_800.0)
    assert clock.iso(500.0) == "2024-05-01T12:00:00Z"
    assert clock.iso(440.0) == "2024-05-01T11:59:00Z"
    assert clock.age(440.0) == 60.0 and clock.age(600.0) == 0.0
    assert clock.until(530.25) == 30.2 and clock.until(400.0) == 0.0


def test_every_counter_is_present_and_unknown_ones_are_kept() -> None:
    counts = every(("a", "b"), {"b": 2, "zz": 1})
    assert counts == {"a": 0, "b": 2, "zz": 1} and list(counts) == ["a", "b", "zz"]


def _counted_names(folder: str) -> set[str]:
    """The literal names the code counts: count("x"), _count("x"), counters["x"] += ..."""
    pattern = re.compile(r'(?:\bcount\(|_count\(|counters\[)"([a-z_]+)"')
    names: set[str] = set()
    for path in (ROOT / "ipsecd" / folder).rglob("*.py"):
        names |= set(pattern.findall(path.read_text()))
    return names


def test_fixed_counter_names_cover_what_the_code_counts() -> None:
    """A counter the code adds must join the contract (status.py and the schema)."""
    ike = _counted_names("ike")
    daemon = _counted_names("daemon") | _counted_names("dataplane")
    assert ike - set(IKE_EVENTS) == set(), "IKE counters missing from IKE_EVENTS"
    assert daemon - set(DAEMON_EVENTS) - set(IKE_EVENTS) == set(), "missing from DAEMON_EVENTS"
    sources = "".join(p.read_text() for p in (ROOT / "ipsecd").rglob("*.py"))
    stale = [n for n in (*IKE_EVENTS, *DAEMON_EVENTS) if f'"{n}"' not in sources]
    # dpd_<action> is counted with an f-string (ike/manager.py).
    assert [n for n in stale if not n.startswith("dpd_")] == [], "names no code counts any more"


# -- one word per state ---------------------------------------------------------------------------
def _peer(tmp_path: Path, **side: Any) -> Any:
    path = tmp_path / "a.yaml"
    (tmp_path / "a.psk").write_text("0x" + "5a" * 32 + "\n")
    (tmp_path / "a.psk").chmod(0o600)
    path.write_text(side_a(**side).yaml(tmp_path / "a.psk"))
    (config_peer,) = parse_config(path.read_text(), path).peers
    return config_peer


# The IKE manager's entry for the IKE SA of status_docs.IKE_SA (times on the core's clock).
ENTRY = {
    "peer": "b",
    **{k: IKE_SA[k] for k in ("state", "role", "local", "remote", "local_spi", "remote_spi")},
    "established_at": 100.0,
    "last_seen": 150.0,
    "nat_remote": True,  # ipsecd always fakes its NAT_DETECTION_SOURCE_IP
}


@pytest.mark.parametrize(
    ("entry", "up", "state"),
    [
        (None, False, "down"),
        ({"peer": "b", "state": "down", "ike_sas": 0}, False, "down"),
        ({"peer": "b", "state": "connecting", "retry_at": 9.0}, False, "connecting"),
        ({"peer": "b", "state": "held"}, False, "held"),
        (
            dict(ENTRY, state="init-sent", remote_spi="0" * 16, established_at=None),
            False,
            "connecting",
        ),
        (dict(ENTRY, state="auth-sent", established_at=None), False, "connecting"),
        (ENTRY, False, "established-no-child"),
        (ENTRY, True, "established"),
        (dict(ENTRY, state="deleting"), True, "deleting"),
        (dict(ENTRY, state="deleted"), False, "down"),
    ],
)
def test_peer_states(tmp_path: Path, entry: Any, up: bool, state: str) -> None:
    peer = _peer(tmp_path)
    clock = Clock(200.0, 0.0)
    ike = ike_sa_status(entry, peer, 4500, clock) if entry is not None else None
    assert peer_state(peer, entry, ike, up) == state


def test_negotiating_sa_has_no_remote_spi_nor_last_heard(tmp_path: Path) -> None:
    entry = dict(ENTRY, state="init-sent", remote_spi="0" * 16, established_at=None)
    ike = ike_sa_status(entry, _peer(tmp_path), 4500, Clock(200.0, 0.0))
    assert ike is not None and ike.remote_spi is None
    assert ike.last_heard_seconds is None and ike.last_heard_at is None
    assert ike.established_seconds is None
    done = ike_sa_status(ENTRY, _peer(tmp_path), 4500, Clock(200.0, 0.0))
    assert done is not None and done.last_heard_seconds == 50.0
    assert (
        ike_sa_status({"peer": "b", "state": "connecting"}, _peer(tmp_path), 4500, Clock(0, 0))
        is None
    )


@pytest.mark.parametrize(
    ("remote", "nat_remote", "detected"),
    [
        ("192.0.2.2:4500", True, False),  # forced encapsulation: hash faked, nothing rewritten
        ("192.0.2.2:500", True, False),
        ("192.0.2.2:61234", True, True),  # the port was rewritten
        ("198.51.100.7:4500", True, True),  # so was the address
        ("198.51.100.7:4500", False, False),  # the hash matched: no NAT, whatever the address
    ],
)
def test_nat_remote_only_with_evidence(
    tmp_path: Path, remote: str, nat_remote: bool, detected: bool
) -> None:
    entry = dict(ENTRY, remote=remote, nat_remote=nat_remote)
    assert nat_remote_detected(entry, _peer(tmp_path), 4500) is detected


def test_ipv6_endpoints_are_written_one_way(tmp_path: Path) -> None:
    """The IKE layer writes ``2001:db8::2:4500``; the status ``[2001:db8::2]:4500``."""
    peer = _peer(tmp_path, remote_address="2001:db8::2", listen="2001:db8::1")
    entry = dict(ENTRY, local="2001:db8::1:4500", remote="2001:db8::2:4500")
    ike = ike_sa_status(entry, peer, 4500, Clock(200.0, 0.0))
    assert ike is not None and (ike.local, ike.remote) == (
        "[2001:db8::1]:4500",
        "[2001:db8::2]:4500",
    )
    assert not nat_remote_detected(entry, peer, 4500)
    assert nat_remote_detected(dict(entry, remote="[2001:db8::9]:4500"), peer, 4500)
