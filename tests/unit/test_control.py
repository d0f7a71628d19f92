"""The control protocol's limits: size, depth, shape; refusals are answered and logged."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from ipsecd.daemon import control
from ipsecd.daemon.control import ControlServer, RequestRefused, json_depth_exceeds, parse_request
from tests.unit.loop_support import ticking


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


# -- ipsecctl log: one request, a stream of records ---------------------------------------------


def _follow_scenario(tmp_path, level: str, end_by: str):
    """A follower reads its answer and two records; ``end_by`` the client or the server."""
    import io
    import threading

    from ipsecd.daemon import logs

    got: list = []
    read_two = threading.Event()

    def client(path):
        stream = control.follow(path, {"cmd": "log", "level": level})
        for message in stream:
            got.append(message)
            if len(got) == 3:
                read_two.set()
                if end_by == "client":
                    stream.close()  # closes the socket: the daemon sees EOF
                    return

    async def handler(request):
        return {"ok": True}

    async def scenario():
        logs.configure("info", stream=io.StringIO())
        server = ControlServer(tmp_path / "c.sock", handler)
        await server.start()
        loop = asyncio.get_running_loop()
        reader = loop.run_in_executor(None, client, server.path)
        while not logs._subscribers:
            await asyncio.sleep(0.01)
        log = logs.get_logger(peer="b")
        log.info("below the follower's level")
        log.warning("negotiation failed", reason="AUTHENTICATION_FAILED")
        log.error("cannot bind", address="192.0.2.1:500")
        await loop.run_in_executor(None, read_two.wait, 5)
        if end_by == "server":
            await server.close()
        await asyncio.wait_for(reader, 5)
        for _ in range(100):
            if not logs._subscribers:
                break
            await asyncio.sleep(0.01)
        subscribers = list(logs._subscribers)
        await server.close()
        return subscribers

    try:
        left = asyncio.run(scenario())
    finally:
        import structlog

        structlog.reset_defaults()
    return got, left


def test_log_follower_streams_records_until_the_client_leaves(tmp_path) -> None:
    got, left = _follow_scenario(tmp_path, "warning", "client")
    first, warning, error = got
    assert first == {"ok": True, "following": "warning"}
    assert warning["log"]["event"] == "negotiation failed" and warning["log"]["peer"] == "b"
    assert error["log"] | {"timestamp": None} == {
        "event": "cannot bind",
        "address": "192.0.2.1:500",
        "peer": "b",
        "level": "error",
        "timestamp": None,
    }
    assert left == []  # the subscription ended with the connection


def test_log_followers_are_told_when_the_daemon_stops(tmp_path) -> None:
    got, left = _follow_scenario(tmp_path, "info", "server")
    assert got[0] == {"ok": True, "following": "info"}
    assert [m["log"]["event"] for m in got[1:4]] == [
        "below the follower's level",
        "negotiation failed",
        "cannot bind",
    ]
    assert got[-1] == {"end": "ipsecd is stopping"} and left == []


def test_log_request_with_a_bad_level_is_refused(tmp_path) -> None:
    async def handler(request):
        return {"ok": True}

    async def scenario():
        server = ControlServer(tmp_path / "c.sock", handler)
        await server.start()
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None, _exchange, server.path, b'{"cmd": "log", "level": "loud"}\n'
        )
        await server.close()
        return json.loads(reply)

    reply = asyncio.run(scenario())
    assert reply["ok"] is False and "unknown log level 'loud'" in reply["error"]


def test_close_lets_requests_being_answered_finish(tmp_path) -> None:
    """At shutdown the daemon answers the commands still waiting, then closes the socket:
    those answers and the followers' "end" must still reach the clients."""
    import threading

    from ipsecd.daemon import logs

    followed: list = []
    following = threading.Event()

    def follower(path):
        for message in control.follow(path, {"cmd": "log"}):
            followed.append(message)
            following.set()

    async def scenario():
        gate = asyncio.Event()

        async def handler(request):
            await gate.wait()  # a waiting "up", answered by the shutdown
            return {"ok": False, "error": "ipsecd is stopping"}

        server = ControlServer(tmp_path / "c.sock", handler)
        await server.start()
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(None, _exchange, server.path, b'{"cmd": "up"}\n')
        loop.run_in_executor(None, follower, server.path)
        await loop.run_in_executor(None, following.wait, 5)
        while len(server._busy) < 2:
            await asyncio.sleep(0.01)
        gate.set()
        await server.close()
        assert server._busy == set() and logs._subscribers == []
        return waiting  # the loop ends at once, as the daemon's does

    waiting = asyncio.run(scenario())
    assert json.loads(waiting.result()) == {"ok": False, "error": "ipsecd is stopping"}
    assert followed[-1] == {"end": "ipsecd is stopping"}


def _quick_server(tmp_path, calls, logged=None):
    async def handler(request):
        calls.append(("handler", request["cmd"]))
        return {"ok": True, "waited": request["cmd"]}

    def quick(request):
        calls.append(("quick", request["cmd"]))
        if request["cmd"] == "boom":
            raise RuntimeError("bug")
        if request["cmd"] == "bad":
            raise ValueError("no such peer")
        return {"ok": True, "at_once": request["cmd"]} if request["cmd"] == "up" else None

    server = ControlServer(tmp_path / "c.sock", handler, quick)
    if logged is not None:

        class Log:
            def warning(self, event, **fields):
                logged.append(event)

            def exception(self, event, **fields):
                logged.append(event)

        server.log = Log()
    return server


def test_quick_answers_then_the_streams(tmp_path) -> None:
    """A whole line the quick handler answers is answered at once, and the connection
    stays open for the next; a request it leaves (None), or several lines at once, go
    to the asyncio handler, which serves the connection from then on."""
    calls: list = []

    def conversation(path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            lines = sock.makefile("rb")
            replies = []
            for request in (b'{"cmd": "up"}\n', b'{"cmd": "up"}\n', b'{"cmd": "status"}\n'):
                sock.sendall(request)
                replies.append(json.loads(lines.readline()))
            sock.sendall(b'{"cmd": "up"}\n{"cmd": "down"}\n')
            replies += [json.loads(lines.readline()), json.loads(lines.readline())]
            return replies

    async def scenario():
        server = _quick_server(tmp_path, calls)
        await server.start()
        loop = asyncio.get_running_loop()
        replies = await loop.run_in_executor(None, conversation, server.path)
        await server.close()
        return replies

    assert asyncio.run(scenario()) == [
        {"ok": True, "at_once": "up"},
        {"ok": True, "at_once": "up"},
        {"ok": True, "waited": "status"},
        {"ok": True, "waited": "up"},
        {"ok": True, "waited": "down"},
    ]
    assert calls == [
        ("quick", "up"),
        ("quick", "up"),
        ("quick", "status"),
        ("handler", "status"),
        ("handler", "up"),
        ("handler", "down"),
    ]


def test_quick_path_refuses_and_reports_as_the_streams_do(tmp_path) -> None:
    calls: list = []
    logged: list = []

    async def scenario():
        server = _quick_server(tmp_path, calls, logged)
        await server.start()
        loop = asyncio.get_running_loop()
        replies = [
            await loop.run_in_executor(None, _exchange, server.path, line)
            for line in (
                b'{"cmd":' + b"[" * 40 + b"\n",
                b'{"cmd": "boom"}\n',
                b'{"cmd": "bad"}\n',
            )
        ]
        await server.close()
        return [json.loads(r) for r in replies]

    too_deep, bug, bad = asyncio.run(scenario())
    assert too_deep == {"ok": False, "error": "refused: request nests JSON deeper than 16 levels"}
    assert bug == {"ok": False, "error": "internal error: RuntimeError"}
    assert bad == {"ok": False, "error": "no such peer"}
    assert logged == ["control request refused", "control request failed"]
    assert calls == [("quick", "boom"), ("quick", "bad")]


def test_close_ends_connections_answered_at_once(tmp_path) -> None:
    def client(path, answered, closed):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b'{"cmd": "up"}\n')
            lines = sock.makefile("rb")
            reply = json.loads(lines.readline())
            answered.set()
            closed.wait(5)
            return reply, lines.readline()

    async def scenario():
        import threading

        answered, closed = threading.Event(), threading.Event()
        server = _quick_server(tmp_path, [])
        await server.start()
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, client, server.path, answered, closed)
        await loop.run_in_executor(None, answered.wait, 5)
        await server.close()
        closed.set()
        return await done, server.path.exists()

    (reply, after), exists = asyncio.run(scenario())
    assert reply == {"ok": True, "at_once": "up"} and after == b"" and not exists


def _status_reply(peers: int) -> dict[str, object]:
    return {
        "ok": True,
        "status": {
            "version": 1,
            "generated_at": "2026-12-02T00:00:00Z",
            "peers": [{"name": f"p{i}", "children": [], "note": 'é"\\'} for i in range(peers)],
            "drops": {"replay": 0},
            "odd": object(),  # what JSON does not know becomes text, as in one piece
        },
    }


@pytest.mark.parametrize("peers", [0, control.PEERS_PER_PIECE, control.PEERS_PER_PIECE + 1, 1000])
def test_a_status_reply_in_pieces_is_the_same_line(peers: int) -> None:
    """A status with many peers is encoded PEERS_PER_PIECE peers at a time; joined, the
    pieces are the one-piece line, byte for byte."""
    reply = _status_reply(peers)
    pieces = list(control._line_pieces(reply))
    assert b"".join(pieces) == control._line(reply)
    assert len(pieces) == 1 if peers <= control.PEERS_PER_PIECE else len(pieces) > 2


def test_the_loop_runs_between_the_pieces_of_a_status_reply() -> None:
    """_send gives the loop a turn between pieces (packets are read then); a short reply
    is written at once."""
    events: list[str] = []

    class Writer:
        def write(self, data: bytes) -> None:
            events.append("write")

        async def drain(self) -> None:
            events.append("drain")

    async def scenario(reply: dict[str, object]) -> None:
        async with ticking(events):
            events.clear()
            await control._send(Writer(), reply)  # type: ignore[arg-type]

    asyncio.run(scenario(_status_reply(1000)))
    assert "tick" in events[events.index("write") : events.index("drain")]
    asyncio.run(scenario({"ok": True}))
    assert events[:2] == ["write", "drain"]
