"""ipsecctl formats the daemon's status document; colours only on a TTY."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipsecd.cli import ipsecctl
from ipsecd.cli.ipsecctl import Style, format_status

STATUS = {
    "tun": "ipsec0",
    "mtu": 1438,
    "uptime_seconds": 42.0,
    "listen": ["192.0.2.1:4500", "192.0.2.1:500"],
    "peers": [
        {
            "name": "site-b",
            "mode": "ike",
            "state": "established",
            "up": True,
            "remote": "192.0.2.2:500",
            "local": "192.0.2.1",
            "local_ts": "10.1.0.0/24",
            "remote_ts": "10.2.0.0/24",
            "ike": {
                "local_spi": "00112233aabbccdd",
                "remote_spi": "8899aabbccddeeff",
                "algorithm": "aes256gcm16-prfsha256-x25519",
                "role": "initiator",
                "local": "192.0.2.1:4500",
                "remote": "192.0.2.2:4500",
                "nat_local": True,
                "dpd": "idle",
                "dpd_delay": 30,
                "last_seen_seconds": 4.2,
                "nat_remote": False,
            },
            "children": [
                {
                    "spi_in": "c0ffee01",
                    "spi_out": "c0ffee02",
                    "algorithm": "aes256gcm16",
                    "local_ts": "10.1.0.0/24",
                    "remote_ts": "10.2.0.0/24",
                    "established_seconds": 12.0,
                    "packets_in": 10,
                    "bytes_in": 2048,
                    "packets_out": 11,
                    "bytes_out": 4096,
                    "drops": {"replay": 2},
                    "rekey_in_seconds": 300.0,
                }
            ],
            "last_error": None,
        },
        {
            "name": "site-c",
            "mode": "ike",
            "state": "connecting",
            "up": False,
            "remote": "192.0.2.3:500",
            "local": "192.0.2.1",
            "local_ts": "10.1.0.0/24",
            "remote_ts": "10.3.0.0/24",
            "ike": None,
            "children": [],
            "last_error": "AUTHENTICATION_FAILED: peer site-c rejected our authentication",
        },
    ],
    "drops": {"no_sa": 3},
}


def test_plain_text_is_aligned_and_complete() -> None:
    text = format_status(STATUS, Style(False))
    assert "\033[" not in text
    assert "peer site-b: established  192.0.2.1 <-> 192.0.2.2:500" in text
    assert "00112233aabbccdd_local 8899aabbccddeeff_remote" in text
    assert "we are behind a NAT" in text
    assert "  dpd:       idle, peer last heard 4s ago (liveness check after 30s of silence)" in text
    assert "child c0ffee01_in c0ffee02_out  aes256gcm16  established 12s ago, rekey in 300s" in text
    assert "    in:        2.0 KiB, 10 packets" in text
    assert "    drops:     replay 2" in text
    assert "last error: AUTHENTICATION_FAILED" in text
    assert text.rstrip().endswith("drops: no_sa 3")


def test_colour_only_on_a_tty() -> None:
    assert "\033[32mestablished\033[0m" in format_status(STATUS, Style(True))


def test_json_output_and_unreachable_socket(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(ipsecctl, "request", lambda path, payload: {"ok": True, "status": STATUS})
    assert ipsecctl.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    monkeypatch.undo()
    assert ipsecctl.main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    assert "cannot reach ipsecd" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["up", "b"], ["down", "b"], ["reload"], ["log-level", "debug"]])
def test_commands_send_requests(monkeypatch, cmd) -> None:
    sent = []
    monkeypatch.setattr(
        ipsecctl, "request", lambda path, payload: sent.append(payload) or {"ok": True}
    )
    assert ipsecctl.main(cmd) == 0
    assert sent[0]["cmd"] == cmd[0]


def test_gateway_line_shows_half_open_sas_and_cookies() -> None:
    status = dict(STATUS)
    status["ike_dos"] = {
        "half_open": 12,
        "cookies_required": True,
        "cookie_threshold": 10,
        "half_open_per_source": 5,
        "half_open_limit": 1000,
    }
    status["ike_counters"] = {"cookies_sent": 4000, "cookies_invalid": 2, "retransmits": 1}
    text = format_status(status, Style(False))
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
def test_on_demand_peer_state_is_shown(state, shown) -> None:
    peer = dict(STATUS["peers"][1], on_demand={"state": state, "queued": 3})
    text = format_status(dict(STATUS, peers=[peer]), Style(False))
    assert f"\n  on demand:  {shown}\n" in text


@pytest.mark.parametrize(
    ("argv", "payload"),
    [
        (["rekey", "b"], {"cmd": "rekey", "peer": "b"}),
        (["rekey", "b", "--ike"], {"cmd": "rekey", "peer": "b", "ike": True}),
    ],
)
def test_rekey_child_sas_or_the_ike_sa(monkeypatch, argv, payload) -> None:
    sent = []
    monkeypatch.setattr(ipsecctl, "request", lambda path, p: sent.append(p) or {"ok": True})
    assert ipsecctl.main(argv) == 0
    assert sent == [payload]


# -- failures: one line on stderr and an exit code, never a traceback -------------------------


def _serve_once(path, reply: bytes):
    """A fake daemon on ``path`` that answers one request with ``reply`` and closes."""
    import socket
    import threading

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("reply", "code", "words"),
    [
        (b"", 5, "empty reply"),
        (b"not json\n", 5, "reply is not JSON"),
        (b"[1, 2]\n", 5, "reply is a JSON list, not an object"),
        (b'{"status": {}}\n', 5, "no 'ok' field"),
        (b'{"ok": true}\n', 5, "no status object"),
        (b'{"ok": true, "status": {"peers": []}}\n', 5, "status not understood (missing 'tun')"),
        (b'{"ok": true, "status": {"tun": 1, "mtu": 2, "listen": 3}}\n', 5, "TypeError"),
        (b'{"ok": false, "error": "no peer\\nnamed x"}\n', 1, "ipsecctl: no peer named x"),
        (b"[" * 5000 + b"]" * 5000 + b"\n", 5, "reply is not JSON"),
    ],
)
def test_bad_replies_are_one_line(tmp_path, capsys, reply, code, words) -> None:
    path = tmp_path / "fake.sock"
    thread = _serve_once(path, reply)
    assert ipsecctl.main(["--socket", str(path), "status"]) == code
    thread.join(5)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_no_daemon_and_stale_socket(tmp_path, capsys) -> None:
    import socket

    assert ipsecctl.main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    assert "no such socket" in capsys.readouterr().err
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()  # the file stays, nobody listens
    assert ipsecctl.main(["--socket", str(tmp_path / "stale.sock"), "status"]) == 3
    assert "connection refused" in capsys.readouterr().err


def test_permission_denied(monkeypatch, capsys) -> None:
    def denied(path, payload):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ipsecctl, "request", denied)
    assert ipsecctl.main(["status"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "permission denied" in err


def test_broken_pipe_is_quiet(tmp_path) -> None:
    """``ipsecctl status | head -1``: no traceback, no 'Exception ignored' at exit."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        from ipsecd.cli import ipsecctl
        status = {STATUS!r}
        status["peers"] = status["peers"] * 2000
        ipsecctl.request = lambda path, payload: {{"ok": True, "status": status}}
        raise SystemExit(ipsecctl.main(["status"]))
        """
    )
    (tmp_path / "run.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run(
        f"{sys.executable} {tmp_path / 'run.py'} | head -1; echo rc=${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.stdout.splitlines()[0].startswith("ipsecd")
    assert proc.stdout.splitlines()[-1] == "rc=141"
    assert proc.stderr == ""


def test_status_shows_additional_key_exchanges_and_authentication() -> None:
    peer = dict(STATUS["peers"][0])
    peer["ike"] = dict(
        peer["ike"],
        algorithm="aes256gcm16-prfsha384-x25519-ke1_mlkem768",
        additional_ke=["ke1_mlkem768"],
        auth={
            "local": "pubkey (ECDSA P-256, ecdsa-with-SHA256)",
            "remote": "pubkey (Ed25519)",
            "local_id": "192.0.2.1",
            "remote_id": "C=CH, O=Org, CN=gw-b",
            "remote_certificate": "C=CH, O=Org, CN=gw-b",
            "ppk": True,
        },
    )
    text = format_status(dict(STATUS, peers=[peer]), Style(False))
    assert "aes256gcm16-prfsha384-x25519-ke1_mlkem768  initiator" in text
    assert (
        "auth:      pubkey (ECDSA P-256, ecdsa-with-SHA256) as 192.0.2.1; peer pubkey (Ed25519)"
        " as C=CH, O=Org, CN=gw-b (certificate C=CH, O=Org, CN=gw-b); PPK" in text
    )
