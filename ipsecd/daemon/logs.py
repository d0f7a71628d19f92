"""Logging with structlog: key=value on a terminal, JSON lines otherwise (journald).

The level can change at run time (``ipsecctl log-level``).  A last processor
redacts any field whose name suggests key material, as a safety net: the code
never passes secrets to a logger in the first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_WORDS = ("psk", "secret", "key_in", "key_out", "keymat", "password")
_state: dict[str, Any] = {"format": "auto", "level": "info", "stream": None}


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    for k in list(event):
        if any(w in k.lower() for w in _SECRET_WORDS):
            event[k] = "<redacted>"
    return event


def _filter_level(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Drop events below the current level; read at every call so set_level reaches
    loggers bound before the change."""
    if LEVELS.get(method, logging.INFO) < LEVELS[_state["level"]]:
        raise structlog.DropEvent
    return event


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """(Re)configure structlog; ``fmt`` is auto, console or json."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    stream = stream or _state["stream"] or sys.stderr
    _state.update(format=fmt, level=level, stream=stream)
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
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    configure(level, _state["format"], _state["stream"])


def get_logger(**bind: Any) -> Any:
    return structlog.get_logger("ipsecd").bind(**bind)
