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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ipsecd.daemon import logs

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024  # bytes per request line
MAX_DEPTH = 16  # nesting of JSON arrays and objects in a request (ours use 1)
MAX_REPLY = 64 * 1024 * 1024  # what the client reads at most (a status of many peers)


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
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self.log = logs.get_logger()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST + 1
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

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
                    writer.write(json.dumps(response).encode() + b"\n")
                    await writer.drain()
                    return  # the rest of the line is still unread: end the connection
                if not line:
                    return
                response = await self._answer(line)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = parse_request(line)
        except RequestRefused as exc:
            return self._refuse(str(exc))
        try:
            return await self.handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not end the control socket or the daemon
            self.log.exception("control request failed", cmd=str(request.get("cmd"))[:40])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # After the privilege drop the socket's directory may not be ours to change.
        with contextlib.suppress(OSError):
            self.path.unlink()


def request(path: str | Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Blocking client used by ipsecctl and tests.

    Raises OSError when the daemon cannot be reached and ``ControlReplyError``
    when its reply is empty, not JSON, or not a JSON object.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
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
    buf = b"".join(chunks)
    if not buf.strip():
        raise ControlReplyError("empty reply (the daemon closed the connection)")
    try:
        reply = json.loads(buf)
    except (ValueError, RecursionError):
        raise ControlReplyError("reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlReplyError(f"reply is a JSON {type(reply).__name__}, not an object")
    return reply
