"""tests.lab.vici: the vici message codec the benchmark drives charon with."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from tests.lab.vici import (
    CMD_REQUEST,
    CMD_RESPONSE,
    CMD_UNKNOWN,
    EVENT,
    EVENT_CONFIRM,
    EVENT_REGISTER,
    EVENT_UNREGISTER,
    ViciClient,
    ViciError,
    decode_message,
    encode_message,
)


def test_round_trip_of_values_lists_and_sections() -> None:
    message = {
        "child": "net",
        "timeout": "10000",
        "proposals": ["aes128gcm16", "aes256gcm16"],
        "gw": {"local": {"auth": "psk"}, "version": "2"},
    }
    assert decode_message(encode_message(message)) == message


def test_known_encoding_of_a_key_value() -> None:
    # KEY_VALUE, name "ike" (len 3), value "gw" (len16 2)
    assert encode_message({"ike": "gw"}) == b"\x03\x03ike\x00\x02gw"


@pytest.mark.parametrize(
    "data",
    [
        b"\x03\x05ik",  # name longer than the message
        b"\x03\x03ike\x00\x09gw",  # value longer than the message
        b"\x02",  # section end without a start
        b"\x05\x00\x01x",  # list item outside a list
        b"\x09",  # unknown element type
    ],
)
def test_malformed_messages_raise_vici_error(data: bytes) -> None:
    with pytest.raises(ViciError):
        decode_message(data)


def _serve(server: socket.socket, packets: list[bytes]) -> None:
    conn, _ = server.accept()
    with conn:
        (length,) = struct.unpack("!I", conn.recv(4))
        while length:
            length -= len(conn.recv(length))
        for packet in packets:
            conn.sendall(struct.pack("!I", len(packet)) + packet)


@pytest.mark.parametrize(
    ("packets", "error"),
    [
        ([bytes([CMD_RESPONSE]) + encode_message({"success": "yes"})], None),
        (
            [
                bytes([EVENT]) + b"\x03log" + encode_message({"msg": "x"}),
                bytes([CMD_RESPONSE]) + encode_message({"success": "yes"}),
            ],
            None,
        ),
        (
            [bytes([CMD_RESPONSE]) + encode_message({"success": "no", "errmsg": "nope"})],
            "nope",
        ),
        ([bytes([CMD_UNKNOWN])], "does not know"),
    ],
)
def test_client_command_answers(tmp_path: Path, packets: list[bytes], error: str | None) -> None:
    path = tmp_path / "vici.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        thread = threading.Thread(target=_serve, args=(server, packets), daemon=True)
        thread.start()
        try:
            with ViciClient(path, timeout=5) as client:
                if error is None:
                    assert client.command("initiate", child="net", ike="gw")["success"] == "yes"
                else:
                    with pytest.raises(ViciError, match=error):
                        client.command("initiate", child="net", ike="gw")
        finally:
            thread.join(5)


def _serve_stream(server: socket.socket, answers: list[list[bytes]], seen: list[bytes]) -> None:
    """For each request received, send the next list of packets."""
    conn, _ = server.accept()
    with conn:
        for packets in answers:
            (length,) = struct.unpack("!I", conn.recv(4))
            data = b""
            while len(data) < length:
                data += conn.recv(length - len(data))
            seen.append(data)
            for packet in packets:
                conn.sendall(struct.pack("!I", len(packet)) + packet)


def test_stream_collects_the_events_of_one_command(tmp_path: Path) -> None:
    path = tmp_path / "vici.sock"
    confirm = [bytes([EVENT_CONFIRM])]
    conn = b"\x09list-conn"
    answers = [
        confirm,  # register list-conn
        [
            bytes([EVENT]) + conn + encode_message({"p0": {"version": "IKEv2"}}),
            bytes([EVENT]) + b"\x03log" + encode_message({"msg": "x"}),  # not ours: skipped
            bytes([EVENT]) + conn + encode_message({"p1": {"version": "IKEv2"}}),
            bytes([CMD_RESPONSE]) + encode_message({}),
        ],
        confirm,  # unregister
    ]
    seen: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        thread = threading.Thread(target=_serve_stream, args=(server, answers, seen))
        thread.start()
        try:
            with ViciClient(path, timeout=5) as client:
                found = client.stream("list-conns", "list-conn")
        finally:
            thread.join(5)
    assert [list(m) for m in found] == [["p0"], ["p1"]]
    assert seen[0] == bytes([EVENT_REGISTER]) + conn
    assert seen[1].startswith(bytes([CMD_REQUEST]) + b"\x0alist-conns")
    assert seen[2] == bytes([EVENT_UNREGISTER]) + conn
