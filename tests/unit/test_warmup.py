"""The start-up warm-up (ipsecd.daemon.warmup): a whole handshake and a first packet
between two throwaway daemon cores, silent, for the configured proposals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ipsecd.config import Config, parse_config
from ipsecd.daemon import logs, warmup
from ipsecd.daemon.warmup import warm_up
from tests.unit.test_logs import _restore_logging  # noqa: F401 (autouse: each test's own logging)


def configured(tmp_path: Path, ike: str, esp: str) -> Config:
    """A gateway whose one peer offers ``ike`` and ``esp`` (what the warm-up copies)."""
    psk = tmp_path / "psk"
    psk.write_text("0x" + "11" * 32 + "\n")
    psk.chmod(0o600)
    text = f"""\
gateway:
  listen: [198.51.100.1]
peers:
  - name: site
    remote_address: 198.51.100.2
    local_ts: [10.7.0.0/24]
    remote_ts: [10.8.0.0/24]
    auth: {{psk_file: {psk}}}
    ike: {{proposals: [{ike}]}}
    esp: {{proposals: [{esp}]}}
"""
    return parse_config(text, tmp_path / "ipsecd.yaml")


@pytest.mark.parametrize(
    ("ike", "esp"),
    [
        ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
        ("aes128-sha256-prfsha256-ecp256", "aes128-sha256"),
        ("aes256gcm16-prfsha384-x25519-ke1_mlkem768", "aes256gcm16"),
    ],
)
def test_the_configured_proposals_complete_a_handshake_and_a_first_packet(
    tmp_path: Path, ike: str, esp: str
) -> None:
    took = warm_up(configured(tmp_path, ike, esp))
    assert took is not None and took > 0


def test_a_packet_that_does_not_arrive_fails_the_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first packet is part of it: one outside the selectors finds no CHILD_SA."""
    outside = bytearray(warmup._INNER)
    outside[17] = 9  # to 10.9.0.1: no CHILD_SA (the IPv4 checksum is not looked at)
    monkeypatch.setattr(warmup, "_INNER", bytes(outside))
    assert warm_up(configured(tmp_path, "aes256gcm16-prfsha256-x25519", "aes256gcm16")) is None


def test_the_warm_up_logs_nothing_and_tells_no_follower(tmp_path: Path) -> None:
    """Its records go through the configured processors and are dropped: neither the
    log nor an ``ipsecctl log`` follower sees the throwaway peer."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    follower = logs.subscribe("debug")
    try:
        assert warm_up(configured(tmp_path, "aes256gcm16-prfsha256-x25519", "aes256gcm16"))
        assert follower.take() == ([], 0)
    finally:
        logs.unsubscribe(follower)
    assert stream.getvalue() == ""
    logs.get_logger().info("after the warm-up")
    assert '"after the warm-up"' in stream.getvalue()
