"""``ipsecctl status`` and ``ipsecctl conns`` text, from version-1 documents (status_text.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ipsecd.cli import ipsecctl
from ipsecd.cli.status_text import Style, duration, format_conns, format_status, size
from tests.unit.status_docs import CHILD, CONNS, IKE_SA, PEER_B, PEER_C, STATUS


def _with(doc: dict[str, Any], **peer_b: Any) -> dict[str, Any]:
    return dict(doc, peers=[dict(PEER_B, **peer_b), PEER_C])


def test_duration_and_size() -> None:
    assert [duration(s) for s in (0, 4.6, 59, 60, 192, 3600, 7380, 90061)] == [
        "0s", "4s", "59s", "1m", "3m 12s", "1h", "2h 3m", "1d 1h",
    ]  # fmt: skip
    assert [size(n) for n in (0, 420, 2048, 3 * 1024**2, 5 * 1024**4)] == [
        "0 B", "420 B", "2.0 KiB", "3.0 MiB", "5120.0 GiB",
    ]  # fmt: skip


def test_established_peer_like_swanctl_list_sas() -> None:
    text = format_status(STATUS, Style(False))
    assert "\033[" not in text
    lines = text.splitlines()
    assert lines[0] == (
        "ipsecd  tun ipsec0 (mtu 1438), listening on 192.0.2.1:4500, 192.0.2.1:500, up 1h"
    )
    peer = lines[lines.index("peer site-b: established  192.0.2.1 <-> 192.0.2.2:500") + 1 :]
    assert peer[:8] == [
        "  ike sa:     initiator, established 5m ago, rekey in 3h 40m",
        "              aes256gcm16-prfsha256-x25519"
        "  00112233aabbccdd_local 8899aabbccddeeff_remote",
        "              192.0.2.1:4500 <-> 192.0.2.2:4500",
        "  identities: gw-a.example.org <-> 192.0.2.2",
        "  dpd:        idle, peer last heard 4s ago (liveness check after 30s of silence)",
        "  nat:        we are behind a NAT (sending keepalives)",
        "  transfer:   3.0 MiB received (110 packets), 4.0 KiB sent (111 packets)",
        "  drops:      replay 2",
    ]
    assert peer[8:14] == [
        "  child c0ffee01_in c0ffee02_out  aes256gcm16",
        "    selectors: 10.1.0.0/24 === 10.2.0.0/24, 10.3.0.0/24",
        "    age:       established 12s ago, rekey in 5m, expires in 1h 5m",
        "    in:        2.0 KiB, 10 packets, last 3s ago",
        "    out:       4.0 KiB, 11 packets",
        "    drops:     replay 2",
    ]
    assert lines[-1] == "drops outside any SA: no_sa 3"


def test_connecting_peer_shows_retry_failures_and_the_last_error_with_its_age() -> None:
    text = format_status(STATUS, Style(False))
    block = text.split("peer site-c: connecting  192.0.2.1 <-> 192.0.2.3:500\n")[1]
    assert block.splitlines()[:4] == [
        "  retry:      next attempt in 25s",
        "  transfer:   0 B received (0 packets), 0 B sent (0 packets)",
        "  failures:   3 failed negotiations",
        "  last error: AUTHENTICATION_FAILED: peer site-c rejected our authentication (2m ago)",
    ]
    assert "last heard" not in block and "ike sa" not in block


def test_negotiating_ike_sa_has_no_remote_spi_nor_last_heard() -> None:
    ike = dict(
        IKE_SA,
        state="init-sent",
        remote_spi=None,
        algorithm="",
        established_at=None,
        established_seconds=None,
        rekey_at=None,
        rekey_in_seconds=None,
        nat_local=False,
        last_heard_at=None,
        last_heard_seconds=None,
    )
    text = format_status(
        _with(STATUS, state="connecting", up=False, ike=ike, children=[]), Style(False)
    )
    assert "  ike sa:     initiator, init-sent\n" in text
    assert "(negotiating)  00112233aabbccdd_local -_remote" in text
    assert "0000000000000000" not in text
    assert "  dpd:        idle (liveness check after 30s of silence)" in text
    assert "nat:" not in text.split("peer site-c")[0]


def test_nat_lines_only_when_detected() -> None:
    both = dict(IKE_SA, nat_remote=True)
    text = format_status(_with(STATUS, ike=both), Style(False))
    assert (
        "  nat:        we are behind a NAT (sending keepalives); the peer is behind a NAT" in text
    )
    none = dict(IKE_SA, nat_local=False)
    assert "nat:" not in format_status(_with(STATUS, ike=none), Style(False))


def test_rekeyed_child_says_so() -> None:
    old = dict(CHILD, state="rekeyed", rekey_at=None, rekey_in_seconds=None)
    text = format_status(_with(STATUS, children=[CHILD, old]), Style(False))
    assert "  child c0ffee01_in c0ffee02_out  aes256gcm16  rekeyed" in text
    assert "    age:       established 12s ago, expires in 1h 5m" in text


def test_colour_only_on_a_tty() -> None:
    text = format_status(STATUS, Style(True))
    assert "\033[32mestablished\033[0m" in text and "\033[31mconnecting\033[0m" in text


def test_gateway_line_shows_half_open_sas_and_cookies() -> None:
    dos = {
        "half_open": 12,
        "cookies_required": True,
        "cookie_threshold": 10,
        "half_open_per_source": 5,
        "half_open_limit": 1000,
    }
    counters = dict(STATUS["ike_counters"], cookies_sent=4000, cookies_invalid=2)
    text = format_status(dict(STATUS, ike_dos=dos, ike_counters=counters), Style(False))
    assert (
        "ike responder: 12 half-open (at most 5 per source, 1000 in all), cookies on"
        " (from 10 half-open); cookies sent 4000, invalid cookies 2"
    ) in text.splitlines()
    assert "ike responder" not in format_status(STATUS, Style(False))


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        ("idle", "waiting for traffic to remote_ts"),
        ("negotiating", "negotiating, 3 packets queued"),
        ("up", "started by traffic"),
    ],
)
def test_on_demand_peer_state_is_shown(state: str, shown: str) -> None:
    peer = dict(PEER_C, retry_in_seconds=None, on_demand={"state": state, "queued": 3})
    text = format_status(dict(STATUS, peers=[peer]), Style(False))
    assert f"\n  on demand:  {shown}\n" in text


def test_conns_like_swanctl_list_conns() -> None:
    text = format_conns(CONNS, Style(False))
    assert text.splitlines() == [
        "config /etc/ipsecd/ipsecd.yaml",
        "",
        "site-b: IKEv2, start initiate, dpd 30s (restart), fragmentation yes",
        "  local:     192.0.2.1, id gw-a.example.org, psk",
        "  remote:    192.0.2.2:500, id 192.0.2.2, psk",
        "  ike:       aes256gcm16-prfsha256-x25519, aes128-sha256-modp2048",
        "  ike rekey: 4h (minus up to 24m)",
        "  child site-b: tunnel, rekey 1h (minus up to 6m), life 1h 6m",
        "    esp:    aes256gcm16",
        "    local:  10.1.0.0/24",
        "    remote: 10.2.0.0/24",
        "",
        "lab: manual SA (no IKE)",
        "  local:  192.0.2.1",
        "  remote: 192.0.2.9:500",
        "  child lab: tunnel, static SPIs 00001001_in 00001002_out",
        "    esp:    aes128gcm16",
        "    local:  10.1.0.0/24",
        "    remote: 10.9.0.0/24",
    ]


@pytest.mark.parametrize("command", ["status", "conns"])
def test_ipsecctl_prints_text_or_json(monkeypatch, capsys, command: str) -> None:
    doc = STATUS if command == "status" else CONNS
    sent: list[dict[str, Any]] = []

    def request(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        sent.append(payload)
        return {"ok": True, command: doc}

    monkeypatch.setattr(ipsecctl, "request", request)
    assert ipsecctl.main([command]) == 0
    text = capsys.readouterr().out
    assert (
        text == (format_status if command == "status" else format_conns)(doc, Style(False)) + "\n"
    )
    assert ipsecctl.main([command, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert sent == [{"cmd": command}] * 2


def test_conns_reply_without_its_object(monkeypatch, capsys) -> None:
    monkeypatch.setattr(ipsecctl, "request", lambda path, payload: {"ok": True})
    assert ipsecctl.main(["conns"]) == ipsecctl.EXIT_BAD_REPLY
    assert "no conns object" in capsys.readouterr().err
