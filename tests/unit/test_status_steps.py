"""A status answer is built a few peers at a time, the loop reading packets between the
steps (DaemonCore.status_steps, status.document_steps, Daemon._status_document)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ipsecd.daemon import core as daemon_core
from ipsecd.daemon.core import DaemonCore
from ipsecd.daemon.status import DataplaneStatus, document_steps
from tests.unit.ike_pair_support import build_config, side_a
from tests.unit.loop_support import ticking
from tests.unit.test_app_control import daemon


def _peers(tmp_path: Path, n: int) -> DaemonCore:
    """A responder with ``n`` peers like side A's one, named p0, p1, ..."""
    config = build_config(side_a(start="respond"), tmp_path, "a")
    peers = tuple(replace(config.peers[0], name=f"p{i}") for i in range(n))
    return DaemonCore(replace(config, peers=peers), time.monotonic())


def test_the_steps_end_with_the_status_of_every_peer(tmp_path: Path) -> None:
    core = _peers(tmp_path, 5)
    now, wall = time.monotonic(), time.time()
    devices = {"tun": "t", "listen": [], "dataplane": DataplaneStatus.of(None, [])}
    steps = list(core.status_steps(now, wall=wall, step=2, **devices))  # type: ignore[arg-type]
    assert steps[:-1] == [None, None]  # after peers 2 and 4
    status = steps[-1]
    assert status is not None
    assert [p.name for p in status.peers] == [f"p{i}" for i in range(5)]
    assert status == core.status(now, wall=wall, **devices)  # type: ignore[arg-type]
    documents = list(document_steps(status, 2))
    assert documents[:-1] == [None, None]
    assert documents[-1] == status.to_dict()
    assert list(documents[-1])[:2] == ["version", "generated_at"]


def test_the_loop_reads_packets_between_the_steps_of_a_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step of the answer gives the loop a turn: a callback waiting to run (a packet
    reader, here a ticker) runs before the answer is done, not after it."""
    monkeypatch.setattr(daemon_core, "STATUS_STEP", 1)
    d = daemon(tmp_path)
    events: list[str] = []
    real = d.core._peer_status

    def peer_status(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(d.core, "_peer_status", peer_status)

    async def scenario() -> dict[str, object]:
        d._loop = asyncio.get_running_loop()
        async with ticking(events):
            response = await d.handle_request({"cmd": "status"})
            events.append("done")
        return response

    response = asyncio.run(scenario())
    assert response["ok"] is True
    first_peer = events.index("peer")
    assert "tick" in events[first_peer : events.index("done")], events
