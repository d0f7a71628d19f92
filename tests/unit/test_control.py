"""The control protocol's limits: size, depth, shape; refusals are answered and logged."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from ipsecd.daemon import control
from ipsecd.daemon.control import ControlServer, RequestRefused, json_depth_exceeds, parse_request


def test_depth_scan_skips_strings() -> None:
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[["}', 2)
    assert json_depth_exceeds(b'{"a": [[1]]}', 2)
    assert not json_depth_exceeds(b'{"a": [[1]]}', 3)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "larger than 65536 bytes"),
        (b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "deeper than 16 levels"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "must be a JSON object"),
    ],
)
def test_parse_request_refuses(line, reason) -> None:
    with pytest.raises(RequestRefused, match=reason):
        parse_request(line)


def _exchange(path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_server_answers_refusals_logs_them_and_keeps_serving(tmp_path, monkeypatch) -> None:
    logged = []

    class Log:
        def warning(self, event, **fields):
            logged.append((event, fields))

        def exception(self, event, **fields):
            logged.append((event, fields))

    async def handler(request):
        if request["cmd"] == "boom":
            raise RuntimeError("bug")
        return {"ok": True, "echo": request["cmd"]}

    async def scenario():
        server = ControlServer(tmp_path / "c.sock", handler)
        server.log = Log()
        await server.start()
        loop = asyncio.get_running_loop()
        path = server.path
        deep = b'{"cmd":' + b"[" * 50_000 + b"\n"
        replies = [
            await loop.run_in_executor(None, _exchange, path, deep),
            await loop.run_in_executor(None, _exchange, path, b"x" * 100_000 + b"\n"),
            await loop.run_in_executor(None, _exchange, path, b'{"cmd":' + b"[" * 40 + b"\n"),
            await loop.run_in_executor(None, _exchange, path, b'{"cmd": "boom"}\n'),
            await loop.run_in_executor(None, _exchange, path, b'{"cmd": "status"}\n'),
        ]
        await server.close()
        return [json.loads(r) for r in replies]

    deep_50000, too_big, too_deep, bug, fine = asyncio.run(scenario())
    assert too_big == {"ok": False, "error": "refused: request larger than 65536 bytes"}
    assert too_deep == {"ok": False, "error": "refused: request nests JSON deeper than 16 levels"}
    assert deep_50000 == too_deep  # no RecursionError: the depth is scanned first
    assert bug == {"ok": False, "error": "internal error: RuntimeError"}
    assert fine == {"ok": True, "echo": "status"}
    assert [event for event, _ in logged] == [
        "control request refused",
        "control request refused",
        "control request refused",
        "control request failed",
    ]


def test_client_reads_at_most_max_reply(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(control, "MAX_REPLY", 10)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "s.sock"))
    server.listen(1)
    import threading

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(100)
            conn.sendall(b'{"ok": true, "x": "' + b"a" * 100 + b'"}\n')

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(control.ControlReplyError, match="larger than 10 bytes"):
        control.request(tmp_path / "s.sock", {"cmd": "status"})
    server.close()
