"""Regressions for what the fuzz targets found, each with the smallest input that did it.

See README.md ("Findings") for how each was found and fixed.
"""

from __future__ import annotations

import struct

import pytest

from ipsecd.config import ConfigError, parse_config
from ipsecd.ike.constants import PayloadType, ProtocolId
from ipsecd.ike.message import MalformedMessage, parse_inner_chain
from ipsecd.ike.payloads import Delete, TrafficSelectorsInitiator
from ipsecd.selectors import TrafficSelector, format_selectors
from tests.fuzz import targets


def test_inverted_selector_range_prints() -> None:
    """A TSi whose range ends before it starts decoded, then broke the log line naming it
    (ipaddress.summarize_address_range: ValueError); found by ike_payload and ike_sk."""
    body = struct.pack("!B3x", 1) + struct.pack("!BBHHH", 7, 0, 16, 0, 65535)
    body += bytes([10, 0, 0, 9, 10, 0, 0, 1])
    (tsi,), _ = parse_inner_chain(struct.pack("!BBH", 0, 0, 4 + len(body)) + body, PayloadType.TSi)
    assert isinstance(tsi, TrafficSelectorsInitiator)
    assert format_selectors(tsi.selectors) == "10.0.0.9..10.0.0.1"
    assert str(TrafficSelector(6, 5, 1, 6, 80, 80)) == "::5..::1[6/80]"
    targets.ike_payload(bytes([targets._PAYLOAD_CLASSES.index(TrafficSelectorsInitiator)]) + body)


@pytest.mark.parametrize("text", ["gateway:\n  listen: [192.0.2.1]\x01\n", "a: '\ud800'\n"])
def test_yaml_control_character_is_a_config_error(text: str, tmp_path) -> None:
    """PyYAML's reader refuses it in the loader's constructor, which ran outside the
    try that turns YAML errors into ConfigError; found by the config target."""
    with pytest.raises(ConfigError, match=r"x\.yaml:\d: character #x[0-9a-f]{4} is not allowed"):
        parse_config(text, tmp_path / "x.yaml")


@pytest.mark.parametrize(
    ("protocol", "spi_size", "count"),
    [(ProtocolId.ESP, 8, 1), (ProtocolId.ESP, 2, 2), (ProtocolId.IKE, 4, 1), (ProtocolId.AH, 0, 0)],
)
def test_delete_spi_size_must_fit_the_protocol(protocol: int, spi_size: int, count: int) -> None:
    """RFC 7296 §3.11: SPI size MUST be 0 for IKE, 4 for AH/ESP.  Any other size decoded
    into SPIs that re-encoded differently (ike_sk's round trip found it)."""
    body = struct.pack("!BBH", protocol, spi_size, count) + bytes(spi_size * count)
    with pytest.raises(MalformedMessage, match="SPI size"):
        Delete.decode_body(body)


def test_delete_spi_sizes_the_rfc_allows() -> None:
    assert Delete.decode_body(struct.pack("!BBH", 1, 0, 0)) == Delete(ProtocolId.IKE)
    esp = Delete.decode_body(struct.pack("!BBHII", 3, 4, 2, 7, 8))
    assert esp == Delete(ProtocolId.ESP, (7, 8))


def test_deeply_nested_control_request_is_refused() -> None:
    """Issue 12 item 8 (fixed by the hardening branch, parse_request's depth limit): a
    request nested 5000 deep raised RecursionError out of the connection handler."""
    writer = targets._LOOP.run_until_complete(targets._serve(b"[" * 5000 + b"\n"))
    assert writer.data.startswith(b'{"ok": false, "error": "refused: request nests JSON deeper')


@pytest.mark.parametrize("bad", ["    remote_port: nope\n", "    manual:\n      spi_in: nope\n"])
def test_unreadable_peer_key_beside_the_cross_checks_is_a_config_error(bad: str) -> None:
    """The checks across peers (unique endpoints and SPIs, merged from main) read a
    peer's remote_port / spi_in with [] after that key had failed: KeyError instead
    of the ConfigError naming the key; found by the config target's second run."""
    text = (
        "gateway:\n  listen: [192.0.2.1]\npeers:\n  - name: a\n    remote_address: 192.0.2.2\n"
        + bad
        + "    local_ts: [10.1.0.0/24]\n    remote_ts: [10.2.0.0/24]\n"
        + "    auth:\n      psk_file: site.psk\n"
    )
    with pytest.raises(ConfigError):
        parse_config(text, targets._config_files())


def test_peer_without_a_name_whose_endpoint_another_peer_reuses_is_a_config_error() -> None:
    """The "also used by peer NAME" message read the first peer's name with [] although
    that peer's `name:` was misspelt (so absent): KeyError instead of the ConfigError;
    found by the config target (a helper's run on 2026-12-02)."""
    peer = "    remote_address: 192.0.2.2\n    auth:\n      psk_file: site.psk\n"
    text = (
        "gateway:\n  listen: [192.0.2.1]\npeers:\n"
        + "  - njme: a\n" + peer + "  - name: b\n" + peer
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"also used by another peer \(peers\[0\], line 4\)"):
        parse_config(text, targets._config_files())
