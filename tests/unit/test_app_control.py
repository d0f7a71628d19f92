"""The asyncio shell answers a waiting control command when the core settles it: here by
the deadline, on a real event loop and clock, with the sockets faked (no root)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ipsecd.daemon.app import Daemon, naming, wait_seconds
from ipsecd.daemon.sdnotify import Notifier
from ipsecd.oserrors import OSErrorAt
from tests.unit.ike_pair_support import build_config, side_a


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_batch(self, datagrams: list[bytes], remote: Any) -> None:
        self.sent += datagrams


class FakeSockets(dict):  # type: ignore[type-arg]
    def __missing__(self, local: Any) -> FakeSocket:
        self[local] = FakeSocket()
        return self[local]


def daemon(tmp_path: Path) -> Daemon:
    d = Daemon(build_config(side_a(start="respond"), tmp_path, "a"), Notifier(""))
    d.sockets = FakeSockets()
    return d


def test_a_waiting_up_is_answered_at_its_deadline(tmp_path: Path) -> None:
    d = daemon(tmp_path)

    async def scenario() -> tuple[dict[str, Any], float]:
        d._loop = asyncio.get_running_loop()
        start = time.monotonic()
        response = await d.handle_request({"cmd": "up", "peer": "b", "wait": 0.3})
        return response, time.monotonic() - start

    response, took = asyncio.run(scenario())
    assert response["ok"] is False and response["outcome"] == "timeout", response
    assert 0.25 <= took < 2.0
    sent = sum(len(s.sent) for s in d.sockets.values())
    assert sent >= 1  # the IKE_SA_INIT went out (and its retransmits)
    assert d._waiting == {}


def test_without_wait_the_answer_is_immediate(tmp_path: Path) -> None:
    d = daemon(tmp_path)

    async def scenario() -> dict[str, Any]:
        d._loop = asyncio.get_running_loop()
        return await d.handle_request({"cmd": "up", "peer": "b"})

    assert asyncio.run(scenario()) == {"ok": True}


@pytest.mark.parametrize("value", [0, -1, 3601, "5", True, None, [1]])
def test_wait_must_be_seconds(value: Any) -> None:
    with pytest.raises(ValueError, match="wait must be a number of seconds"):
        wait_seconds(value)
    assert wait_seconds(2) == 2.0


def test_naming_turns_os_and_netlink_errors_into_errors_that_say_where() -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    route = "cannot add the route 10.2.0.0/24 into t0"
    with pytest.raises(OSErrorAt, match=rf"^{route}: \[Errno 17\]"), naming(route):
        raise NetlinkError(17, "File exists")
    tun = "cannot open TUN device t0"
    with pytest.raises(OSError, match=rf"^{tun}: \[Errno 1\]"), naming(tun):
        raise PermissionError(1, "Operation not permitted")
    inner = OSErrorAt("cannot bind UDP 192.0.2.1:500", OSError(99, "x"))
    with pytest.raises(OSErrorAt) as info, naming("outer"):
        raise inner
    assert info.value is inner  # already says where: not wrapped twice


def test_a_flood_pause_filters_new_requests_on_the_natt_ike_socket(
    tmp_path: Path, monkeypatch
) -> None:
    """While new requests are over their share (core.ike_port_pause), the NAT-T port's IKE
    socket drops IKE_SA_INIT requests in the kernel; an established SA's message still
    arrives, and after the pause the requests do again (real sockets on loopback)."""
    import select
    import socket
    import struct

    from ipsecd.dataplane import udp

    def ike(spi_r: int, exchange: int) -> bytes:
        return b"\x00" * 4 + struct.pack("!QQBBBBII", 7, spi_r, 0, 0x20, exchange, 0x08, 0, 28)

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    esp, natt_ike = udp.natt_sockets("127.0.0.1", port, False, None)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d = daemon(tmp_path)
    assert natt_ike is not None
    d.natt_ike_sockets = [natt_ike]
    monkeypatch.setattr(d.core, "ike_port_pause", lambda now: 0.2)

    def arrived() -> list[bytes]:
        got = []
        while select.select([natt_ike.sock], [], [], 0.1)[0]:
            got.append(natt_ike.sock.recv(2048))
        return got

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        d._loop = asyncio.get_running_loop()
        d._pause_ike_port()
        for datagram in (ike(0, 34), ike(0x55, 37)):
            sender.sendto(datagram, ("127.0.0.1", port))
        during = arrived()
        await asyncio.sleep(0.3)  # the pause ends
        sender.sendto(ike(0, 34), ("127.0.0.1", port))
        return during, arrived()

    try:
        during, after = asyncio.run(scenario())
    finally:
        sender.close()
        esp.close()
        natt_ike.close()
    assert during == [ike(0x55, 37)]
    assert after == [ike(0, 34)]
    assert d._ike_port_paused is False
