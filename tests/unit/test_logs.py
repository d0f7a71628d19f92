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


# -- priorities for journald (sd-daemon(3) "<N>" prefixes) ---------------------------------


def test_journal_lines_carry_their_syslog_priority() -> None:
    stream = io.StringIO()
    logs.configure("debug", fmt="json", stream=stream, journal=True)
    log = logs.get_logger(peer="b")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("x")
    lines = stream.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    records = [json.loads(line[3:]) for line in lines]  # the JSON follows the prefix intact
    assert [r["event"] for r in records] == ["d", "i", "w", "e", "x"]
    assert "RuntimeError: boom" in records[-1]["exception"]


def test_console_lines_in_the_journal_are_prefixed_line_by_line() -> None:
    stream = io.StringIO()
    logs.configure("info", fmt="console", stream=stream, journal=True)
    try:
        raise ValueError("multi")
    except ValueError:
        logs.get_logger().exception("failed")
    lines = stream.getvalue().rstrip("\n").splitlines()
    assert len(lines) > 1 and all(line.startswith("<3>") for line in lines)


def test_no_prefix_off_the_journal() -> None:
    stream = io.StringIO()
    logs.configure("info", fmt="json", stream=stream)
    logs.get_logger().warning("w")
    assert stream.getvalue().startswith("{")


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path, monkeypatch) -> None:
    import os

    with open(tmp_path / "journal", "w") as ours, open(tmp_path / "other", "w") as other:
        st = os.fstat(ours.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.journal_stream(ours)
        assert not logs.journal_stream(other)  # inherited variable, another stream
        assert not logs.journal_stream(io.StringIO())
        logs.configure("info", fmt="json", stream=ours)
        logs.get_logger().warning("w")
        ours.flush()
        assert (tmp_path / "journal").read_text().startswith('<4>{"event": "w"')
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logs.journal_stream(ours)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.journal_stream(ours)


def test_set_level_keeps_the_journal_prefix() -> None:
    stream = io.StringIO()
    logs.configure("info", fmt="json", stream=stream, journal=True)
    logs.set_level("debug")
    logs.get_logger().debug("d")
    assert stream.getvalue().startswith("<7>")


def test_exception_is_not_dropped_at_level_error() -> None:
    stream = io.StringIO()
    logs.configure("error", stream=stream)
    logs.get_logger().exception("kept")
    assert [r["event"] for r in _json_lines(stream)] == ["kept"]


# -- followers (ipsecctl log) -----------------------------------------------------------------


@pytest.fixture
def followers() -> Iterator[list[logs.LogSubscriber]]:
    made: list[logs.LogSubscriber] = []
    yield made
    for subscriber in made:
        logs.unsubscribe(subscriber)
    assert logs._subscribers == []


def test_follower_gets_redacted_records_at_its_level(followers) -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    woken = []
    follower = logs.subscribe("warning", lambda: woken.append(1))
    followers.append(follower)
    log = logs.get_logger(peer="b")
    log.info("not for the follower")
    log.warning("negotiation failed", reason="x", psk="secret")
    records, dropped = follower.take()
    assert dropped == 0 and len(woken) == 1
    (record,) = records
    assert record["event"] == "negotiation failed" and record["peer"] == "b"
    assert record["level"] == "warning" and record["timestamp"].endswith("Z")
    assert record["psk"] == "<redacted>"
    assert follower.take() == ([], 0)
    assert len(_json_lines(stream)) == 2  # the daemon's own output is unchanged


def test_follower_below_the_daemons_level_sees_what_the_stream_does_not(followers) -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    follower = logs.subscribe("debug")
    followers.append(follower)
    logs.get_logger().debug("trace")
    assert [r["event"] for r in follower.take()[0]] == ["trace"]
    assert stream.getvalue() == ""
    logs.unsubscribe(follower)
    logs.get_logger().debug("nobody wants it")
    assert follower.take() == ([], 0) and stream.getvalue() == ""


def test_a_slow_follower_loses_the_oldest_records_and_counts_them(followers) -> None:
    logs.configure("info", stream=io.StringIO())
    follower = logs.subscribe("info", limit=3)
    followers.append(follower)
    for n in range(10):
        logs.get_logger().info("n", n=n)
    records, dropped = follower.take()
    assert [r["n"] for r in records] == [7, 8, 9] and dropped == 7


def test_followers_are_limited(followers) -> None:
    logs.configure("info", stream=io.StringIO())
    for _ in range(logs.MAX_SUBSCRIBERS):
        followers.append(logs.subscribe())
    with pytest.raises(logs.TooManySubscribers, match="already 8 log followers"):
        logs.subscribe()
    with pytest.raises(ValueError, match="unknown log level"):
        logs.subscribe("verbose")
