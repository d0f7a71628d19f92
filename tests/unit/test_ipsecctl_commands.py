"""ipsecctl up|down|rekey print the outcome, reload the plan in words, log follows the log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ipsecd.cli import ipsecctl
from ipsecd.cli.control_text import format_outcome, format_plan, format_record

IKE_SA = {
    "local_spi": "2961d1f6505c3869",
    "remote_spi": "a6d839ec48d93d9b",
    "algorithm": "aes256gcm16-prfsha256-x25519",
    "local": "192.0.2.1:4500",
    "remote": "192.0.2.2:4500",
}
CHILD_SA = {
    "spi_in": "fa3cb21e",
    "spi_out": "c5d5f243",
    "algorithm": "aes256gcm16",
    "local_ts": "10.1.0.0/24",
    "remote_ts": "10.2.0.0/24",
}
UP = {
    "ok": True,
    "outcome": "up",
    "command": "up",
    "peer": "b",
    "seconds": 0.12,
    "ike_sa": IKE_SA,
    "child_sas": [CHILD_SA],
}
AUTH_FAILED = (
    "peer b rejected our authentication: AUTHENTICATION_FAILED (we are 192.0.2.1;"
    " check the PSK and the identity the peer expects)"
)


def failure(outcome: str, command: str, seconds: float, error: str) -> dict[str, Any]:
    """The daemon's answer to a command that failed or saw no outcome in time."""
    return {
        "ok": False,
        "outcome": outcome,
        "command": command,
        "peer": "b",
        "seconds": seconds,
        "error": error,
    }


def fake_daemon(monkeypatch, response: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    sent: list[tuple[dict[str, Any], Any]] = []

    def request(path, payload, timeout=None):
        sent.append((payload, timeout))
        return response

    monkeypatch.setattr(ipsecctl, "request", request)
    return sent


def test_up_prints_the_sa_summary_on_one_line(monkeypatch, capsys) -> None:
    sent = fake_daemon(monkeypatch, UP)
    assert ipsecctl.main(["up", "b"]) == 0
    assert sent == [({"cmd": "up", "peer": "b", "wait": 30.0}, 35.0)]  # the socket waits longer
    out, err = capsys.readouterr()
    assert out == (
        "peer b up in 0.12 s: IKE SA 2961d1f6505c3869_local a6d839ec48d93d9b_remote"
        " aes256gcm16-prfsha256-x25519 192.0.2.1:4500 <-> 192.0.2.2:4500;"
        " CHILD_SA fa3cb21e_in c5d5f243_out aes256gcm16 10.1.0.0/24 === 10.2.0.0/24\n"
    )
    assert err == ""


def test_up_failure_prints_the_reason_and_exits_1(monkeypatch, capsys) -> None:
    fake_daemon(monkeypatch, failure("failed", "up", 0.05, AUTH_FAILED))
    assert ipsecctl.main(["up", "b"]) == ipsecctl.EXIT_FAILED == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"ipsecctl: up b failed in 0.05 s: {AUTH_FAILED}\n"


def test_no_outcome_in_time_exits_6(monkeypatch, capsys) -> None:
    error = "no outcome within 5 s (peer b is init-sent); ipsecd goes on"
    sent = fake_daemon(monkeypatch, failure("timeout", "rekey-ike", 5.0, error))
    assert ipsecctl.main(["rekey", "b", "--ike", "--timeout", "5"]) == ipsecctl.EXIT_TIMEOUT == 6
    assert sent[0][0]["wait"] == 5.0 and sent[0][1] == 10.0
    err = capsys.readouterr().err
    assert (
        err
        == "ipsecctl: rekey --ike b: no outcome within 5 s (peer b is init-sent); ipsecd goes on\n"
    )


@pytest.mark.parametrize(
    ("response", "line"),
    [
        (dict(UP, outcome="already up", seconds=0), "peer b already up: IKE SA 2961d1f6505c3869"),
        (
            {"ok": True, "outcome": "down", "command": "down", "peer": "b", "seconds": 0.01,
             "reason": "terminated by operator"},
            "peer b down in 0.01 s: terminated by operator",
        ),
        (
            dict(UP, outcome="rekeyed", command="rekey"),
            "peer b rekeyed in 0.12 s: CHILD_SA fa3cb21e_in c5d5f243_out aes256gcm16",
        ),
        (
            dict(UP, outcome="rekeyed", command="rekey-ike", child_sas=[]),
            "peer b IKE SA rekeyed in 0.12 s: IKE SA 2961d1f6505c3869_local",
        ),
        (dict(UP, ike_sa=None), "peer b up in 0.12 s: no IKE SA; CHILD_SA fa3cb21e_in"),
    ],
)  # fmt: skip
def test_outcome_lines(response, line) -> None:
    assert format_outcome(response).startswith(line)


@pytest.mark.parametrize("bad", ["0", "-1", "3601", "soon"])
def test_timeout_must_be_a_sensible_number(capsys, bad) -> None:
    with pytest.raises(SystemExit) as info:
        ipsecctl.main(["up", "b", "--timeout", bad])
    assert info.value.code == ipsecctl.EXIT_USAGE
    assert "--timeout" in capsys.readouterr().err


def test_a_refusal_without_outcome_is_one_line(monkeypatch, capsys) -> None:
    fake_daemon(monkeypatch, {"ok": False, "error": "no IKE peer named 'x'"})
    assert ipsecctl.main(["down", "x"]) == 1
    assert capsys.readouterr().err == "ipsecctl: no IKE peer named 'x'\n"


def test_ctrl_c_while_waiting_exits_130(monkeypatch, capsys) -> None:
    def interrupted(path, payload, timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(ipsecctl, "request", interrupted)
    assert ipsecctl.main(["up", "b"]) == 130
    assert "interrupted; the command goes on in ipsecd" in capsys.readouterr().err


# -- reload ----------------------------------------------------------------------------------

PLAN = {
    "ok": True,
    "plan": {"added": ["c"], "removed": ["x", "y"], "changed": ["b"], "unchanged": ["d"]},
    "config": "/etc/ipsecd/ipsecd.yaml",
}


def test_reload_prints_the_plan_in_words(monkeypatch, capsys) -> None:
    fake_daemon(monkeypatch, PLAN)
    assert ipsecctl.main(["reload"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "reloaded /etc/ipsecd/ipsecd.yaml: 1 added, 1 changed, 2 removed, 1 unchanged",
        "  added:     c  (new: started as configured)",
        "  changed:   b  (SAs replaced with the new settings)",
        "  removed:   x, y  (SAs deleted, the peer told)",
        "  unchanged: d  (SAs kept)",
    ]


def test_reload_without_changes_says_so() -> None:
    plan = {"plan": {"added": [], "removed": [], "changed": [], "unchanged": ["b", "c"]}}
    assert format_plan(plan) == ["reloaded: no peer changed", "  unchanged: b, c  (SAs kept)"]


def test_reload_json_keeps_the_raw_plan(monkeypatch, capsys) -> None:
    fake_daemon(monkeypatch, PLAN)
    assert ipsecctl.main(["reload", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == PLAN["plan"]


def test_a_refused_reload_lists_each_error_with_its_line(monkeypatch, capsys) -> None:
    error = (
        "reload refused, running config kept: /etc/ipsecd/ipsecd.yaml:12: peers[0].esp: x\n"
        "/etc/ipsecd/ipsecd.yaml:20: peers[1].name: 'b' is listed twice"
    )
    fake_daemon(monkeypatch, {"ok": False, "error": error})
    assert ipsecctl.main(["reload"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "ipsecctl: reload refused, running config kept:"
        " /etc/ipsecd/ipsecd.yaml:12: peers[0].esp: x",
        "  /etc/ipsecd/ipsecd.yaml:20: peers[1].name: 'b' is listed twice",
    ]


# -- log ---------------------------------------------------------------------------------------

RECORD = {
    "event": "negotiation failed",
    "peer": "b",
    "reason": AUTH_FAILED,
    "level": "warning",
    "timestamp": "2026-12-01T10:00:00.123456Z",
}


def fake_stream(monkeypatch, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    def follow(path, payload, timeout=10.0) -> Iterator[dict[str, Any]]:
        sent.append(payload)
        yield from messages

    monkeypatch.setattr(ipsecctl, "follow", follow)
    return sent


def test_log_prints_one_line_per_record_until_the_daemon_stops(monkeypatch, capsys) -> None:
    sent = fake_stream(
        monkeypatch,
        [
            {"ok": True, "following": "debug"},
            {"log": RECORD},
            {"dropped": 12},
            {"log": dict(RECORD, event="IKE SA established", level="info", reason=None)},
            {"end": "ipsecd is stopping"},
        ],
    )
    assert ipsecctl.main(["log", "--level", "debug"]) == 0
    assert sent == [{"cmd": "log", "level": "debug"}]
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "2026-12-01T10:00:00.123456Z  warning  negotiation failed"
        f"  peer=b reason={json.dumps(AUTH_FAILED)}",
        "2026-12-01T10:00:00.123456Z  info     IKE SA established  peer=b reason=null",
    ]
    assert err.splitlines() == [
        "ipsecctl: 12 log records dropped (this reader fell behind)",
        "ipsecctl: ipsecd is stopping; end of the log",
    ]


def test_log_json_and_the_daemons_level_by_default(monkeypatch, capsys) -> None:
    sent = fake_stream(monkeypatch, [{"ok": True, "following": "info"}, {"log": RECORD}])
    assert ipsecctl.main(["log", "--json"]) == ipsecctl.EXIT_UNREACHABLE  # then the stream broke
    assert sent == [{"cmd": "log"}]
    out, err = capsys.readouterr()
    assert json.loads(out) == RECORD
    assert "closed the log stream" in err


def test_log_refused_and_ctrl_c(monkeypatch, capsys) -> None:
    fake_stream(monkeypatch, [{"ok": False, "error": "already 8 log followers (ipsecctl log)"}])
    assert ipsecctl.main(["log"]) == 1
    assert "already 8 log followers" in capsys.readouterr().err

    def interrupted(path, payload, timeout=10.0):
        yield {"ok": True, "following": "info"}
        raise KeyboardInterrupt

    monkeypatch.setattr(ipsecctl, "follow", interrupted)
    assert ipsecctl.main(["log"]) == 0  # Ctrl-C is how one stops following
    assert capsys.readouterr().err == ""


def test_log_without_daemon_is_unreachable(tmp_path, capsys) -> None:
    assert ipsecctl.main(["--socket", str(tmp_path / "none.sock"), "log"]) == 3
    assert "no such socket" in capsys.readouterr().err


def test_record_values_with_spaces_are_quoted() -> None:
    line = format_record({"event": "e", "level": "info", "timestamp": "t", "a": "x y",
                          "b": ["1.2.3.4:500", "[::1]:500"], "c": 3, "d": ""})  # fmt: skip
    assert line == 't  info     e  a="x y" b=1.2.3.4:500,[::1]:500 c=3 d=""'
