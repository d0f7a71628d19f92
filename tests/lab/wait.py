"""Waiting for a condition in tests: one poll loop instead of hand-rolled ones and fixed sleeps.

    peer = wait_until(gw_a.peer_status, 15, what="gwA's tunnel up", until=lambda p: p["up"])

On time-out :class:`WaitTimeout` (an ``AssertionError``, so pytest reports a failure) says
what was awaited, for how long, and the last value seen (or the last error raised while
probing, when every probe failed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_REPR_LIMIT = 2000


class WaitTimeout(AssertionError):
    """:func:`wait_until` ran out of time."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + " ..."


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    *,
    until: Callable[[T], object] = bool,
    step: float = 0.05,
    ignore: tuple[type[Exception], ...] = (),
    context: Callable[[], object] | None = None,
) -> T:
    """Call ``probe`` every ``step`` seconds until ``until(value)`` is true; return the value.

    ``probe`` runs at least once, and once more at the deadline.  Exceptions of the types
    in ``ignore`` count as "not yet" (a control socket not listening yet, say).  On
    time-out raises :class:`WaitTimeout` with ``what``, the last value (or ignored error)
    and, if given, ``context()`` (a daemon's log, say).
    """
    deadline = time.monotonic() + timeout
    last: object = "(never probed)"
    while True:
        try:
            value = probe()
        except ignore as exc:
            last = exc
        else:
            if until(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(step, deadline - time.monotonic())))
    message = f"waited {timeout:g} s for {what}; last seen: {_shown(last)}"
    if context is not None:
        message += f"\n{context()}"
    raise WaitTimeout(message)
