"""PacketSelector: packet readers called straight from epoll, the loop's work untouched."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from ipsecd.daemon.eventloop import PacketSelector

Pairs = list[tuple[socket.socket, socket.socket]]


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    made = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for a, _ in made:
        a.setblocking(False)
    yield made
    for a, b in made:
        a.close()
        b.close()


def reader(sock: socket.socket, got: list[bytes], moved_only: bool = True) -> Callable[[], bool]:
    def read() -> bool:
        got.append(sock.recv(100))
        return moved_only

    return read


def test_direct_reader_runs_inside_select_and_polls_on(pairs: Pairs) -> None:
    (fast, fast_peer), (other, other_peer) = pairs
    sel = PacketSelector()
    got: list[bytes] = []
    sel.register(fast, selectors.EVENT_READ, "fast")
    sel.register(other, selectors.EVENT_READ, "other")
    sel.direct(fast.fileno(), reader(fast, got))
    fast_peer.send(b"1")
    t0 = time.monotonic()
    assert sel.select(0.05) == []  # read the packet, polled on until the timeout
    assert got == [b"1"] and time.monotonic() - t0 >= 0.045
    fast_peer.send(b"2")
    other_peer.send(b"x")
    ready = sel.select(1.0)
    assert [(key.data, mask) for key, mask in ready] == [("other", selectors.EVENT_READ)]
    assert got == [b"1", b"2"]  # only the other descriptor went back to the loop
    sel.close()


def test_a_reader_that_left_work_hands_back_at_once(pairs: Pairs) -> None:
    (fast, fast_peer), _ = pairs
    sel = PacketSelector()
    got: list[bytes] = []
    sel.register(fast, selectors.EVENT_READ, None)
    sel.direct(fast.fileno(), reader(fast, got, moved_only=False))
    fast_peer.send(b"1")
    t0 = time.monotonic()
    assert sel.select(5.0) == [] and got == [b"1"]
    assert time.monotonic() - t0 < 1.0
    sel.close()


def test_a_failing_reader_is_reported_and_hands_back(pairs: Pairs) -> None:
    (fast, fast_peer), _ = pairs
    sel = PacketSelector()
    errors: list[BaseException] = []
    sel.on_error = errors.append

    def broken() -> bool:
        fast.recv(100)
        raise ValueError("boom")

    sel.register(fast, selectors.EVENT_READ, None)
    sel.direct(fast.fileno(), broken)
    fast_peer.send(b"1")
    assert sel.select(5.0) == []
    assert [str(e) for e in errors] == ["boom"]
    sel.close()


def test_unregister_forgets_the_reader_and_modify_keeps_it(pairs: Pairs) -> None:
    (fast, fast_peer), _ = pairs
    sel = PacketSelector()
    got: list[bytes] = []
    sel.register(fast, selectors.EVENT_READ, "a")
    sel.direct(fast.fileno(), reader(fast, got))
    sel.modify(fast, selectors.EVENT_READ, "b")
    fast_peer.send(b"1")
    assert sel.select(0.01) == [] and got == [b"1"]
    assert sel.get_key(fast.fileno()).data == "b"
    sel.unregister(fast)
    sel.register(fast, selectors.EVENT_READ, "c")
    fast_peer.send(b"2")
    ready = sel.select(1.0)
    assert [key.data for key, _ in ready] == ["c"] and got == [b"1"]
    with pytest.raises(KeyError):
        sel.register(fast, selectors.EVENT_READ)
    sel.close()


def test_the_loop_runs_timers_and_callbacks_around_direct_readers(pairs: Pairs) -> None:
    """An asyncio loop on the selector: readers, timers and a reader that schedules work."""
    (fast, fast_peer), _ = pairs
    selector = PacketSelector()
    loop = asyncio.SelectorEventLoop(selector)
    got: list[bytes] = []
    events: list[str] = []

    def on_read() -> bool:
        data = fast.recv(100)
        got.append(data)
        if data == b"work":  # as the daemon's _flush: work for the loop, at once
            loop.call_soon(events.append, "scheduled")
            return False
        return True

    async def main() -> None:
        loop.add_reader(fast.fileno(), on_read)
        selector.direct(fast.fileno(), on_read)
        loop.call_later(0.05, events.append, "timer")
        for data in (b"1", b"2", b"work"):
            fast_peer.send(data)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        loop.remove_reader(fast.fileno())
        fast_peer.send(b"unread")
        await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == [b"1", b"2", b"work"]
    assert events == ["scheduled", "timer"]
