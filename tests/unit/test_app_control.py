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
