"""ipsecctl: requests, exit codes and failures (the status text: test_status_text.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipsecd.cli import ipsecctl
from tests.unit.status_docs import STATUS


def test_json_output_and_unreachable_socket(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(ipsecctl, "request", lambda path, payload: {"ok": True, "status": STATUS})
    assert ipsecctl.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    monkeypatch.undo()
    assert ipsecctl.main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    assert "cannot reach ipsecd" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cmd",
    [["up", "b", "--no-wait"], ["down", "b", "--no-wait"], ["reload"], ["log-level", "debug"]],
)
def test_commands_send_requests(monkeypatch, cmd) -> None:
    sent = []
    monkeypatch.setattr(
        ipsecctl, "request", lambda path, payload, **_: sent.append(payload) or {"ok": True}
    )
    assert ipsecctl.main(cmd) == 0
    assert sent[0]["cmd"] == cmd[0] and "wait" not in sent[0]


@pytest.mark.parametrize(
    ("argv", "payload"),
    [
        (["rekey", "b", "--no-wait"], {"cmd": "rekey", "peer": "b"}),
        (["rekey", "b", "--ike", "--no-wait"], {"cmd": "rekey", "peer": "b", "ike": True}),
        (["rekey", "b"], {"cmd": "rekey", "peer": "b", "wait": 30.0}),
        (["rekey", "b", "--ike", "--timeout", "5"], {"cmd": "rekey", "peer": "b", "ike": True,
                                                     "wait": 5.0}),
    ],
)  # fmt: skip
def test_rekey_child_sas_or_the_ike_sa(monkeypatch, argv, payload) -> None:
    sent = []
    monkeypatch.setattr(ipsecctl, "request", lambda path, p, **_: sent.append(p) or {"ok": True})
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
