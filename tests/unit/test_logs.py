"""ipsecd.daemon.logs: JSON lines off a TTY, key=value on one, run-time levels, redaction.

structlog is configured globally, so every test reconfigures it on its own
stream and the fixture puts structlog and the module state back afterwards.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from ipsecd.daemon import logs


class TtyStream(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = dict(logs._state)
    yield
    logs._state.clear()
    logs._state.update(saved)
    structlog.reset_defaults()


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    log = logs.get_logger(peer="site-b")
    log.info("CHILD_SA installed", spi_in="c0000001")
    log.warning("negotiation failed", reason="no proposal chosen")
    records = _json_lines(stream)
    assert len(records) == 2
    first, second = records
    assert first["event"] == "CHILD_SA installed"
    assert first["level"] == "info"
    assert first["peer"] == "site-b"
    assert first["spi_in"] == "c0000001"
    assert first["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert second["level"] == "warning"
    assert second["reason"] == "no proposal chosen"


def test_json_format_forced_on_a_tty() -> None:
    stream = TtyStream()
    logs.configure("info", fmt="json", stream=stream)
    logs.get_logger().info("hello", n=1)
    [record] = _json_lines(stream)
    assert record["event"] == "hello" and record["n"] == 1


def test_console_format_on_a_tty() -> None:
    stream = TtyStream()
    logs.configure("info", stream=stream)
    logs.get_logger().info("hello", peer="site-b")
    text = stream.getvalue()
    assert "hello" in text and "peer" in text and "site-b" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_console_format_forced_off_a_tty() -> None:
    stream = io.StringIO()
    logs.configure("info", fmt="console", stream=stream)
    logs.get_logger().info("hello", peer="site-b")
    line = stream.getvalue().splitlines()[0]
    assert "hello" in line and "peer=site-b" in line
    assert "\033[" not in line  # no colours off a terminal


def test_level_from_configure_filters() -> None:
    stream = io.StringIO()
    logs.configure("warning", stream=stream)
    log = logs.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [r["event"] for r in _json_lines(stream)] == ["w", "e"]


def test_set_level_changes_filtering_for_new_loggers() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    logs.get_logger().debug("hidden")
    logs.set_level("debug")
    logs.get_logger().debug("shown")
    logs.set_level("error")
    logs.get_logger().warning("hidden too")
    logs.get_logger().error("shown too")
    assert [r["event"] for r in _json_lines(stream)] == ["shown", "shown too"]
    # set_level keeps the stream and format chosen by configure.
    assert logs._state["stream"] is stream
    assert logs._state["level"] == "error"


def test_set_level_reaches_loggers_obtained_earlier() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    log = logs.get_logger(peer="site-b")
    logs.set_level("debug")
    log.debug("shown")
    assert [r["event"] for r in _json_lines(stream)] == ["shown"]


@pytest.mark.parametrize("level", ["verbose", "INFO", "", "critical"])
def test_unknown_level_raises_value_error(level: str) -> None:
    logs.configure("info", stream=io.StringIO())
    with pytest.raises(ValueError, match="unknown log level") as excinfo:
        logs.set_level(level)
    assert "debug" in str(excinfo.value)  # names the accepted levels
    assert logs._state["level"] == "info"  # unchanged


@pytest.mark.parametrize(
    "field",
    ["psk", "PSK", "psk_file", "secret", "shared_secret", "encr_key_in", "integ_key_out",
     "key_in", "key_out", "keymat", "encr_keymat", "password"],
)  # fmt: skip
def test_redact_processor(field: str) -> None:
    event = {"event": "x", field: "0123456789abcdef", "peer": "site-b", "spi_in": "c0000001"}
    out = logs._redact(None, "info", event)
    assert out[field] == "<redacted>"
    assert out["peer"] == "site-b" and out["spi_in"] == "c0000001" and out["event"] == "x"


def test_no_secret_reaches_the_stream() -> None:
    stream = io.StringIO()
    logs.configure("debug", stream=stream)
    secret = "c2VjcmV0LXBzay1kby1ub3QtbG9n"
    log = logs.get_logger(psk=secret)
    log.debug("keys derived", keymat=secret, encr_key_in=secret, integ_key_out=secret)
    log.info("auth", shared_secret=secret, spi_in="c0000001")
    assert secret not in stream.getvalue()
    records = _json_lines(stream)
    assert records[0]["psk"] == "<redacted>" and records[0]["keymat"] == "<redacted>"
    assert records[1]["spi_in"] == "c0000001"
