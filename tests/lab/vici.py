"""A minimal client of charon's vici protocol (strongSwan's control socket), for commands.

Why: ``swanctl`` is a process per command, and its start-up (several ms) would count in a
timed handshake while ipsecd's control socket is spoken to from the calling process.  With
this client both daemons are driven the same way: a request over a unix socket from the
bench, the answer back on the same connection.

Wire format (strongSwan's ``src/libcharon/plugins/vici/README.md``): a packet is a 32-bit
big-endian length, a type byte, for named types a 1-byte length and the name, then the
message: elements ``SECTION_START name``, ``SECTION_END``, ``KEY_VALUE name len16 value``,
``LIST_START name``, ``LIST_ITEM len16 value``, ``LIST_END``.  Command requests, and
for commands that stream their answer (``list-conns``) a registration for that event
while the command runs; other event packets are skipped.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN = 0, 1, 2
EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT_UNKNOWN = 3, 4, 5, 6
EVENT = 7
SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = range(1, 7)


class ViciError(RuntimeError):
    """charon refused the command, or the answer was not a vici response."""


def _name(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"vici name too long: {text!r}")
    return bytes([len(raw)]) + raw


def _value(value: object) -> bytes:
    raw = str(value).encode()
    if len(raw) > 0xFFFF:
        raise ValueError("vici value too long")
    return struct.pack("!H", len(raw)) + raw


def encode_message(items: dict[str, Any]) -> bytes:
    """Encode a dict (values: str/int, list of those, or nested dict) as a vici message."""
    out = bytearray()
    for key, value in items.items():
        if isinstance(value, dict):
            out += bytes([SECTION_START]) + _name(key) + encode_message(value)
            out += bytes([SECTION_END])
        elif isinstance(value, list | tuple):
            out += bytes([LIST_START]) + _name(key)
            for item in value:
                out += bytes([LIST_ITEM]) + _value(item)
            out += bytes([LIST_END])
        else:
            out += bytes([KEY_VALUE]) + _name(key) + _value(value)
    return bytes(out)


def decode_message(data: bytes) -> dict[str, Any]:
    """Decode a vici message into nested dicts (values str, lists of str); lengths checked."""
    root: dict[str, Any] = {}
    stack = [root]
    current_list: list[str] | None = None
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise ViciError("truncated vici message")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    def name() -> str:
        return take(take(1)[0]).decode(errors="replace")

    def value() -> str:
        return take(struct.unpack("!H", take(2))[0]).decode(errors="replace")

    while pos < len(data):
        kind = take(1)[0]
        if kind == SECTION_START:
            section: dict[str, Any] = {}
            stack[-1][name()] = section
            stack.append(section)
        elif kind == SECTION_END:
            if len(stack) == 1:
                raise ViciError("unbalanced vici section end")
            stack.pop()
        elif kind == KEY_VALUE:
            key = name()
            stack[-1][key] = value()
        elif kind == LIST_START:
            current_list = []
            stack[-1][name()] = current_list
        elif kind == LIST_ITEM:
            if current_list is None:
                raise ViciError("vici list item outside a list")
            current_list.append(value())
        elif kind == LIST_END:
            current_list = None
        else:
            raise ViciError(f"unknown vici element type {kind}")
    return root


class ViciClient:
    """One connection to a charon's vici socket; ``command()`` sends a request and waits."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ViciClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ViciError("vici connection closed")
            buf += chunk
        return bytes(buf)

    def _send(self, packet: bytes) -> None:
        self.sock.sendall(struct.pack("!I", len(packet)) + packet)

    def _receive(self) -> bytes:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        packet = self._recv_exact(length)
        if not packet:
            raise ViciError("empty vici packet")
        return packet

    def _request(self, cmd: str, args: dict[str, Any]) -> None:
        body = bytes([CMD_REQUEST]) + _name(cmd)
        self._send(body + encode_message({k.replace("_", "-"): v for k, v in args.items()}))

    @staticmethod
    def _response(cmd: str, packet: bytes) -> dict[str, Any]:
        if packet[0] == CMD_UNKNOWN:
            raise ViciError(f"charon does not know the vici command {cmd!r}")
        if packet[0] != CMD_RESPONSE:
            raise ViciError(f"unexpected vici packet type {packet[0]}")
        response = decode_message(packet[1:])
        if response.get("success", "yes") != "yes":
            raise ViciError(f"vici {cmd}: {response.get('errmsg', response)}")
        return response

    def command(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Run ``cmd`` with ``args`` (``-`` for ``_`` in names); raises unless it succeeded."""
        self._request(cmd, args)
        while True:
            packet = self._receive()
            if packet[0] == EVENT:  # not registered for any, but skip one if it comes
                continue
            return self._response(cmd, packet)

    def _registration(self, kind: int, event: str) -> None:
        self._send(bytes([kind]) + _name(event))
        packet = self._receive()
        if packet[0] != EVENT_CONFIRM:
            raise ViciError(f"charon did not confirm (un)registering for {event!r}")

    def stream(self, cmd: str, event: str, **args: Any) -> list[dict[str, Any]]:
        """Run a command that answers with ``event`` messages before its response
        (``list-conns`` sends a ``list-conn`` per connection); returns those messages.
        Registered for ``event`` only while the command runs."""
        self._registration(EVENT_REGISTER, event)
        try:
            self._request(cmd, args)
            found: list[dict[str, Any]] = []
            while True:
                packet = self._receive()
                if packet[0] != EVENT:
                    self._response(cmd, packet)
                    return found
                size = packet[1]
                if packet[2 : 2 + size].decode() == event:
                    found.append(decode_message(packet[2 + size :]))
        finally:
            self._registration(EVENT_UNREGISTER, event)
