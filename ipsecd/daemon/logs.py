"""Logging with structlog: key=value on a terminal, JSON lines otherwise (journald).

The level can change at run time (``ipsecctl log-level``).  A processor redacts any
field whose name suggests key material, as a safety net: the code never passes
secrets to a logger in the first place.

**Priorities for journald.**  When stderr is the journal stream systemd set up
(``JOURNAL_STREAM`` names its device and inode, sd-daemon(3)), each line starts with
the syslog priority in angle brackets, ``<4>{"event": "negotiation failed", ...}``:
journald strips the prefix and files the line with that priority
(``SyslogLevelPrefix=`` is on by default), so ``journalctl -p warning`` filters
ipsecd's lines and the JSON stays the message.  The prefix was chosen over the
native journal protocol: it needs no socket and no dependency, keeps the lines in
order with anything else written to stderr, and works in every sandbox the unit
allows; structured journal fields would be the native protocol's gain, and the JSON
message carries those already.

**Followers.**  ``ipsecctl log`` follows the log live (swanctl ``--log``): a
:class:`LogSubscriber` gets a copy of each record (redacted, before rendering) in a
bounded queue that drops its oldest record when full and counts the drops; at most
:data:`MAX_SUBSCRIBERS` at once.  A follower may ask for a lower level than the
daemon logs at (``--level debug``): records down to the lowest level asked for are
built, and only the follower sees those below the daemon's level.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The level of each structlog method name (``log.exception`` logs at error).
_METHOD_LEVELS = {
    **LEVELS,
    "warn": logging.WARNING,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}
# syslog(3) priorities, as sd-daemon(3) prefixes want them.
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
MAX_SUBSCRIBERS = 8
SUBSCRIBER_QUEUE = 1000  # records a follower may fall behind before the oldest are dropped
_SECRET_WORDS = ("psk", "secret", "key_in", "key_out", "keymat", "password")
_state: dict[str, Any] = {"format": "auto", "level": "info", "stream": None, "journal": False}


def _method_level(method: str) -> int:
    return _METHOD_LEVELS.get(method, logging.INFO)


class TooManySubscribers(ValueError):
    """Already :data:`MAX_SUBSCRIBERS` followers."""


class LogSubscriber:
    """One follower of the log: records at or above ``level``, at most ``limit`` queued.

    ``wake`` is called after each record is queued (from the thread that logs: the
    event loop's).  :meth:`take` empties the queue and says how many records were
    dropped since the last take.
    """

    def __init__(self, level: str, wake: Callable[[], None], limit: int) -> None:
        self.level = LEVELS[level]
        self.limit = limit
        self.dropped = 0
        self._records: deque[dict[str, Any]] = deque()
        self._wake = wake

    def offer(self, record: dict[str, Any]) -> None:
        if len(self._records) >= self.limit:
            self._records.popleft()
            self.dropped += 1
        self._records.append(record)
        self._wake()

    def take(self) -> tuple[list[dict[str, Any]], int]:
        records, dropped = list(self._records), self.dropped
        self._records.clear()
        self.dropped = 0
        return records, dropped


_subscribers: list[LogSubscriber] = []


def _floor() -> int:
    """The lowest level any record is built for: the daemon's or a follower's."""
    return min([LEVELS[_state["level"]], *(s.level for s in _subscribers)])


def subscribe(
    level: str = "info", wake: Callable[[], None] = lambda: None, limit: int = SUBSCRIBER_QUEUE
) -> LogSubscriber:
    """A new follower; ``ValueError`` for an unknown level, ``TooManySubscribers``."""
    _check_level(level)
    if len(_subscribers) >= MAX_SUBSCRIBERS:
        raise TooManySubscribers(f"already {MAX_SUBSCRIBERS} log followers (ipsecctl log)")
    subscriber = LogSubscriber(level, wake, limit)
    _subscribers.append(subscriber)
    return subscriber


def unsubscribe(subscriber: LogSubscriber) -> None:
    if subscriber in _subscribers:
        _subscribers.remove(subscriber)


@functools.lru_cache(maxsize=1024)
def _secret_field(name: str) -> bool:
    """A field name that suggests key material; remembered, since every record asks for
    each of its fields and the names are the code's few (a tenth of the time unremembered)."""
    lowered = name.lower()
    return any(w in lowered for w in _SECRET_WORDS)


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    for k in [k for k in event if _secret_field(k)]:
        event[k] = "<redacted>"
    return event


def _filter_level(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Drop events no one wants: below the daemon's level and every follower's.  Read at
    every call so set_level reaches loggers bound before the change."""
    if _method_level(method) < _floor():
        raise structlog.DropEvent
    return event


def _broadcast(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Give each follower that wants it a copy (redacted already, not yet rendered)."""
    if _subscribers:
        level = _method_level(method)
        for subscriber in _subscribers:
            if level >= subscriber.level:
                subscriber.offer(dict(event))
    return event


def _output_level(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """What was built for a follower only stops here: the daemon's own level."""
    if _method_level(method) < LEVELS[_state["level"]]:
        raise structlog.DropEvent
    return event


def _priority_prefix(_logger: Any, method: str, line: Any) -> str:
    """``<N>`` before each line (sd-daemon(3)): journald files it with priority N."""
    prefix = f"<{PRIORITY.get(_method_level(method), 6)}>"
    return prefix + str(line).replace("\n", "\n" + prefix)


def journal_stream(stream: Any) -> bool:
    """True if ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM`` holds
    its ``device:inode``; a child that inherited the variable but writes elsewhere is not)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # StringIO: UnsupportedOperation
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")


def configure(
    level: str = "info", fmt: str = "auto", stream: Any = None, journal: bool | None = None
) -> None:
    """(Re)configure structlog; ``fmt`` is auto, console or json; ``journal``: prefix each
    line with its priority (default: when ``stream`` is systemd's journal stream)."""
    _check_level(level)
    stream = stream or _state["stream"] or sys.stderr
    if journal is None:
        journal = journal_stream(stream)
    _state.update(format=fmt, level=level, stream=stream, journal=journal)
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            _filter_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            _broadcast,
            _output_level,
            renderer,
            *([_priority_prefix] if journal else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def current_level() -> str:
    """The level the daemon logs at (``log.level``, ``ipsecctl log-level``)."""
    return str(_state["level"])


def set_level(level: str) -> None:
    _check_level(level)
    configure(level, _state["format"], _state["stream"], _state["journal"])


def get_logger(**bind: Any) -> Any:
    return structlog.get_logger("ipsecd").bind(**bind)


class _Nowhere:
    """A file that keeps nothing."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def nowhere() -> Any:
    """A logger that runs the configured processors (level, renderer) and writes
    nothing, to nobody: the start-up warm-up's (:mod:`ipsecd.daemon.warmup`), so that the first
    real records are not the first rendered, and the throwaway peer is not logged."""
    config = structlog.get_config()
    return structlog.wrap_logger(
        structlog.WriteLogger(_Nowhere()),  # type: ignore[arg-type]  # write and flush only
        processors=[p for p in config["processors"] if p is not _broadcast],  # no followers
        wrapper_class=config["wrapper_class"],
    )
