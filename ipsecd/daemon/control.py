"""The control socket: one JSON request per line, one JSON response per line.

A UNIX stream socket, mode 0600, created by root before the daemon drops its
privileges (``ipsecd.daemon.privilege``): only root talks to the daemon, and the
listening socket keeps working after the drop.  Requests are
``{"cmd": "status"}``, ``{"cmd": "up", "peer": "b"}`` and so on; responses are
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  ``ipsecctl`` only
formats what comes back (wireguard-go's uapi shape).

A request is at most ``MAX_REQUEST`` bytes and nests JSON at most ``MAX_DEPTH``
levels: both are checked before ``json.loads`` runs, so a 50 000-deep request
costs one linear scan and never a RecursionError.  Every refusal is logged.

``up``, ``down`` and ``rekey`` with ``"wait": SECONDS`` are answered once their outcome
is known, at most SECONDS later: ``{"ok": true, "outcome": "up", "ike_sa": {...},
"child_sas": [...]}`` or ``{"ok": false, "outcome": "failed", "error": "..."}`` (or
``"timeout"``); see :mod:`ipsecd.daemon.outcomes`.  Without ``wait`` they are answered
as soon as the request is sent.

**A request answered at once.**  Most requests are one line sent right after the
connect, and most answers need no waiting (``up`` without ``wait``): the daemon accepts
the connection itself, and when the whole line is there already and the daemon's
``quick`` handler answers it, replies in the same turn of the event loop.  asyncio's
streams took five turns of the loop from the connection to the request (0.3-0.4 ms of
a cold daemon's CPU before an ``up`` sends IKE_SA_INIT: bench/README.md, "First
handshake round 2").  Anything else (a line not complete yet, a second line, a request
that waits, ``log``) goes on through asyncio's streams as before.

One request streams: ``{"cmd": "log", "level": "debug"}`` (``ipsecctl log``; without
a level, the daemon's own) is answered with ``{"ok": true, "following": "debug"}``
and then one line per log record, ``{"log": {...}}`` (``{"dropped": N}`` when the
client fell more than ``logs.SUBSCRIBER_QUEUE`` records behind), until the client
closes the connection or the daemon stops (``{"end": "..."}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from ipsecd.daemon import logs

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# The answer of a request that needs no waiting, or None (then ``Handler`` answers it).
QuickHandler = Callable[[dict[str, Any]], dict[str, Any] | None]
MAX_REQUEST = 64 * 1024  # bytes per request line
MAX_DEPTH = 16  # nesting of JSON arrays and objects in a request (ours use 1)
MAX_REPLY = 64 * 1024 * 1024  # what the client reads at most (a status of many peers)
PEERS_PER_PIECE = 256  # a status reply's peers encoded at a time (_line_pieces)


class RequestRefused(ValueError):
    """A request the control protocol does not accept (too large, too deep, not JSON)."""


class ControlReplyError(ValueError):
    """The daemon's reply is empty, not JSON or not a JSON object (client side)."""


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """True if ``data`` nests arrays/objects more than ``limit`` deep (strings skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line -> its JSON object; ``RequestRefused`` says why not."""
    if len(line) > MAX_REQUEST:
        raise RequestRefused(f"request larger than {MAX_REQUEST} bytes")
    if json_depth_exceeds(line, MAX_DEPTH):
        raise RequestRefused(f"request nests JSON deeper than {MAX_DEPTH} levels")
    try:
        request = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RequestRefused(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise RequestRefused("request must be a JSON object")
    return request


class ControlServer:
    def __init__(self, path: Path, handler: Handler, quick: QuickHandler | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.quick = quick
        self.log = logs.get_logger()
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answered: set[socket.socket] = set()  # waiting for a request, or the end
        self._streams: set[asyncio.Task[None]] = set()  # connections on asyncio's streams
        self._followers: set[asyncio.Event] = set()  # the wake-ups of ``log`` connections
        self._busy: set[asyncio.Task[None]] = set()  # connections answering a request
        self._closing = False

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            listener.listen(100)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(100):  # as asyncio's server: at most its backlog per turn
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, say: the connection waits in the backlog
                self.log.warning("cannot accept a control connection", error=str(exc))
                return
            conn.setblocking(False)
            self._serve(conn)

    def _wait(self, conn: socket.socket) -> None:
        """Call :meth:`_serve` again when ``conn`` is readable."""
        assert self._loop is not None
        self._answered.add(conn)
        self._loop.add_reader(conn.fileno(), self._readable, conn)

    def _readable(self, conn: socket.socket) -> None:
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())
        self._answered.discard(conn)
        self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        """Answer a request at once if it came whole and needs no waiting; wait for one if
        nothing came yet; else hand the connection to asyncio's streams with what was read
        of it (a partial line, several lines, a request that waits)."""
        try:
            data = conn.recv(MAX_REQUEST + 1)
        except (BlockingIOError, InterruptedError):
            self._wait(conn)
            return
        except OSError:
            data = b""
        if not data:  # the client is done
            conn.close()
            return
        line, newline, rest = data.partition(b"\n")
        response = self._answer_now(line) if newline and not rest and not self._closing else None
        if response is None:
            self._stream(conn, data, b"")
            return
        reply = _line(response)
        try:
            sent = conn.send(reply)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            conn.close()
            return
        if sent < len(reply):
            self._stream(conn, b"", reply[sent:])
        else:
            self._wait(conn)  # for the client's next request or its end

    def _answer_now(self, line: bytes) -> dict[str, Any] | None:
        """The answer to ``line`` if the quick handler gives one (or the line is refused)."""
        if self.quick is None:
            return None
        try:
            request = parse_request(line)
        except RequestRefused as exc:
            return self._refuse(str(exc))
        if request.get("cmd") == "log":
            return None
        try:
            return self.quick(request)
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not end the control socket or the daemon
            return self._failed(request, exc)

    def _stream(self, conn: socket.socket, pending: bytes, unsent: bytes) -> None:
        """Serve ``conn`` through asyncio's streams from here on: ``pending`` was read of
        it already, ``unsent`` is the rest of an answer."""
        task = asyncio.ensure_future(self._streamed(conn, pending, unsent))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _streamed(self, conn: socket.socket, pending: bytes, unsent: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_REQUEST + 1)
        if pending:
            reader.feed_data(pending)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if unsent:
            writer.write(unsent)
        await self._client(reader, writer)

    def _refuse(self, reason: str) -> dict[str, Any]:
        self.log.warning("control request refused", reason=reason, socket=str(self.path))
        return {"ok": False, "error": f"refused: {reason}"}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):  # no newline within the limit
                    response = self._refuse(f"request larger than {MAX_REQUEST} bytes")
                    await _send(writer, response)
                    return  # the rest of the line is still unread: end the connection
                if not line:
                    return
                try:
                    request = parse_request(line)
                except RequestRefused as exc:
                    await _send(writer, self._refuse(str(exc)))
                    continue
                task = asyncio.current_task()
                assert task is not None
                self._busy.add(task)  # close() lets it finish its answer
                try:
                    if request.get("cmd") == "log":
                        await self._follow(request, reader, writer)
                        return
                    await _send(writer, await self._answer(request))
                finally:
                    self._busy.discard(task)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not end the control socket or the daemon
            return self._failed(request, exc)

    def _failed(self, request: dict[str, Any], exc: Exception) -> dict[str, Any]:
        self.log.exception("control request failed", cmd=str(request.get("cmd"))[:40])
        return {"ok": False, "error": f"internal error: {type(exc).__name__}"}

    async def _follow(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """``ipsecctl log``: stream log records until the client closes or the daemon stops.

        The records wait in the subscriber's bounded queue while ``drain`` waits for a
        slow client; the oldest are dropped there (and counted), never the daemon held up.
        """
        wake = asyncio.Event()
        level = str(request.get("level") or logs.current_level())
        try:
            subscriber = logs.subscribe(level, wake.set)
        except ValueError as exc:  # unknown level, too many followers
            await _send(writer, {"ok": False, "error": str(exc)})
            return
        self._followers.add(wake)
        closed = asyncio.ensure_future(reader.read(1))  # EOF (or any byte): the client is done
        try:
            await _send(writer, {"ok": True, "following": level})
            while not closed.done() and not self._closing:
                woken = asyncio.ensure_future(wake.wait())
                await asyncio.wait({closed, woken}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                wake.clear()
                records, dropped = subscriber.take()
                for record in records:
                    writer.write(_line({"log": record}))
                if dropped:
                    writer.write(_line({"dropped": dropped}))
                if self._closing:
                    writer.write(_line({"end": "ipsecd is stopping"}))
                await writer.drain()
        finally:
            logs.unsubscribe(subscriber)
            self._followers.discard(wake)
            closed.cancel()

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening; followers are told the daemon stops, and requests being answered
        (a command whose waiter the daemon has just answered) get ``grace`` seconds to
        finish writing."""
        self._closing = True
        for wake in self._followers:
            wake.set()  # each follower says "end" and returns
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=grace)
        if self._listener is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for conn in self._answered:
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
            conn.close()
        self._answered.clear()
        # After the privilege drop the socket's directory may not be ours to change.
        with contextlib.suppress(OSError):
            self.path.unlink()


def _line(message: dict[str, Any]) -> bytes:
    """One reply line; values JSON does not know (a log field's object) become text."""
    return _encode(message) + b"\n"


def _line_pieces(message: dict[str, Any]) -> Iterator[bytes]:
    """:func:`_line` in pieces: a status document's ``peers`` :data:`PEERS_PER_PIECE` at a
    time (the JSON of 10 000 peers is 0.16 s of encoding in one piece, the loop held), the
    same bytes joined; any other message in one piece."""
    status = message.get("status")
    peers = status.get("peers") if isinstance(status, dict) else None
    if not isinstance(peers, list) or len(peers) <= PEERS_PER_PIECE:  # (None: no status)
        yield _line(message)
        return

    yield from _object_pieces(
        message, "status", lambda doc: _object_pieces(doc, "peers", _peers_pieces)
    )
    yield b"\n"


def _encode(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()


def _object_pieces(
    obj: dict[str, Any], key: str, pieces: Callable[[Any], Iterator[bytes]]
) -> Iterator[bytes]:
    """A JSON object as :func:`json.dumps` writes it, the value under ``key`` in
    ``pieces``."""
    yield b"{"
    for number, (name, value) in enumerate(obj.items()):
        yield (b", " if number else b"") + _encode(name) + b": "
        yield from pieces(value) if name == key else (_encode(value),)
    yield b"}"


def _peers_pieces(peers: list[Any]) -> Iterator[bytes]:
    for at in range(0, len(peers), PEERS_PER_PIECE):
        chunk = _encode(peers[at : at + PEERS_PER_PIECE])[1:-1]  # without [ ]
        yield (b"[" if at == 0 else b", ") + chunk
    yield b"]"


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    for number, piece in enumerate(_line_pieces(message)):
        if number:
            await asyncio.sleep(0)  # the loop's turn: packets are read between pieces
        writer.write(piece)
    await writer.drain()


def _connect(path: str | Path, payload: dict[str, Any], timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
    except BaseException:
        sock.close()
        raise
    return sock


def _reply(buf: bytes) -> dict[str, Any]:
    if not buf.strip():
        raise ControlReplyError("empty reply (the daemon closed the connection)")
    try:
        reply = json.loads(buf)
    except (ValueError, RecursionError):
        raise ControlReplyError("reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlReplyError(f"reply is a JSON {type(reply).__name__}, not an object")
    return reply


def request(path: str | Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Blocking client used by ipsecctl and tests.

    ``timeout`` bounds each wait for the daemon (connect, each read): a command that
    waits for its outcome needs its own wait plus a margin here.  Raises OSError when
    the daemon cannot be reached and ``ControlReplyError`` when its reply is empty, not
    JSON, or not a JSON object.
    """
    with _connect(path, payload, timeout) as sock:
        chunks: list[bytes] = []
        size = 0
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:
                raise ControlReplyError(f"reply larger than {MAX_REPLY} bytes")
    return _reply(b"".join(chunks))


def follow(
    path: str | Path, payload: dict[str, Any], timeout: float = 10.0
) -> Iterator[dict[str, Any]]:
    """Blocking client of the streaming request (``log``): the answer, then each line the
    daemon sends, until it closes the connection.  The answer must come within
    ``timeout``; the lines after it may take as long as they take."""
    with _connect(path, payload, timeout) as sock, sock.makefile("rb") as lines:
        while True:
            line = lines.readline(MAX_REPLY + 1)
            if not line:
                return
            if len(line) > MAX_REPLY:
                raise ControlReplyError(f"reply larger than {MAX_REPLY} bytes")
            yield _reply(line)
            sock.settimeout(None)
