"""A status answer is built with the cyclic collector held off (ipsecd.daemon.gcpause)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from ipsecd.daemon.gcpause import collector_paused
from tests.unit.test_app_control import daemon


def test_the_collector_is_off_inside_and_restored_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a broken status")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_status_command_is_answered_with_the_collector_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(tmp_path)
    seen: list[bool] = []
    real = d.core._peer_status

    def peer_status(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(d.core, "_peer_status", peer_status)
    response = asyncio.run(d.handle_request({"cmd": "status"}))
    assert response["ok"] and response["status"]["peers"]
    assert seen == [False] and gc.isenabled()
