"""The event loop's selector: packet readers called straight from ``epoll`` (issue 17).

asyncio turns each ready descriptor into a handle on its ready queue and runs it on the
next pass of the loop: some ten Python calls around every read, besides the reader
itself.  An idle tunnel's packet meets a process gone cold, where each of them costs
many times its warm price: a bare TUN <-> UDP forwarder on asyncio spent 55-90 us more
CPU per ping and gateway than the same loop on bare ``epoll`` (bench/README.md, "Idle
latency round").

:class:`PacketSelector` is an epoll selector like :class:`selectors.EpollSelector`,
except for the descriptors given to :meth:`PacketSelector.direct` (TUN and the ESP
sockets): their reader is called as soon as ``epoll`` says they are readable, and while
the readers only moved packets (they return True) the selector polls again for what is
left of the loop's timeout instead of returning.  A reader that did more (it ran the IKE
layer, armed a timer, queued a callback: it returns False), any other ready descriptor
(the control socket, a signal) or the end of the timeout hands control back to the loop
at once, so timers, IKE slices and control commands run as before.
"""

from __future__ import annotations

import contextlib
import math
import select
import selectors
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

# A packet reader: True if it only moved packets (nothing for the loop to do after it).
Reader = Callable[[], bool]


def _report(exc: BaseException) -> None:
    raise exc


def _fd(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
    if fd < 0:
        raise ValueError(f"invalid file descriptor {fd}")
    return fd


class PacketSelector(selectors.BaseSelector):
    """An epoll selector that calls the data plane's readers itself (module docstring).

    Written out (some forty lines) rather than built on :class:`selectors.EpollSelector`,
    whose epoll object and key table are private.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._direct: dict[int, Reader] = {}
        # Where a reader's exception goes (the loop's exception handler, set by the
        # daemon); asyncio would log it and go on, so must the selector.
        self.on_error: Callable[[BaseException], None] = _report

    def direct(self, fd: int, reader: Reader) -> None:
        """Call ``reader`` from :meth:`select` when ``fd`` (registered with the loop's
        ``add_reader``) is readable; :meth:`unregister` forgets it."""
        self._direct[fd] = reader

    # -- the selectors.BaseSelector interface ------------------------------------------------
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        mask = (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
            select.EPOLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._epoll.register(fd, mask)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        key = self._keys.pop(fd)  # KeyError if not registered, as the interface says
        self._direct.pop(fd, None)
        with contextlib.suppress(OSError):  # closed already: epoll forgot it by itself
            self._epoll.unregister(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        reader = self._direct.get(_fd(fileobj))
        key = super().modify(fileobj, events, data)  # unregister, register
        if reader is not None and events & selectors.EVENT_READ:
            self._direct[key.fd] = reader
        return key

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[_fd(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return MappingProxyType(self._keys)

    def close(self) -> None:
        self._epoll.close()
        self._keys.clear()
        self._direct.clear()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        direct = self._direct
        keys = self._keys
        end = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        wait = -1.0 if timeout is None else _ms(timeout)
        poll = self._epoll.poll
        while True:
            try:
                events = poll(wait, max(len(keys), 1))
            except InterruptedError:
                return []
            ready: list[tuple[selectors.SelectorKey, int]] = []
            moved_only = bool(events)
            for fd, event in events:
                reader = direct.get(fd)
                if reader is not None:
                    try:
                        if not reader():
                            moved_only = False
                    except Exception as exc:  # as asyncio does for a callback: report, go on
                        moved_only = False
                        self.on_error(exc)
                    continue
                key = keys.get(fd)
                if key is not None:
                    mask = 0
                    if event & ~select.EPOLLIN:
                        mask |= selectors.EVENT_WRITE
                    if event & ~select.EPOLLOUT:
                        mask |= selectors.EVENT_READ
                    ready.append((key, mask & key.events))
            if ready or not moved_only:
                return ready
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return ready
                wait = _ms(left)


def _ms(timeout: float) -> float:
    """epoll_wait's timeout: whole milliseconds, rounded up (as EpollSelector does)."""
    return 0.0 if timeout <= 0 else math.ceil(timeout * 1e3) * 1e-3
