"""UDP/4500 demultiplexing (RFC 3948 §2.2, §2.3)."""

from __future__ import annotations

import pytest

from ipsecd.esp.udp_encap import (
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    DatagramKind,
    classify,
    frame,
    frame_ike,
)

IKE_MSG = bytes(range(28)) + b"payload"


def test_keepalive() -> None:
    assert NAT_KEEPALIVE == b"\xff"
    assert classify(b"\xff") == (DatagramKind.KEEPALIVE, b"")
    assert classify(b"\xff")[0] == "keepalive"


def test_ike_with_marker() -> None:
    assert bytes(4) == NON_ESP_MARKER
    kind, payload = classify(frame_ike(IKE_MSG))
    assert kind == DatagramKind.IKE == "ike"
    assert payload == IKE_MSG


def test_esp() -> None:
    esp = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x01" + bytes(40)
    kind, payload = classify(esp)
    assert kind == "esp" and payload == esp
    assert classify(b"\x01" + bytes(7)) == (DatagramKind.ESP, b"\x01" + bytes(7))


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"\xfe",
        b"\xff\xff",
        b"\x00\x00",
        b"\x00\x00\x00",
        NON_ESP_MARKER,  # marker with nothing after it
        NON_ESP_MARKER + bytes(27),  # shorter than an IKE header
        b"\x00\x00\x00\x01",  # an SPI but no sequence number
        b"\x12\x34\x56\x78\x00\x00\x00",
    ],
)
def test_malformed(datagram: bytes) -> None:
    assert classify(datagram) == (DatagramKind.MALFORMED, b"")


def test_matches_scapy_framing() -> None:
    """scapy's own NAT-T layers, serialized, classify as the same kinds."""
    pytest.importorskip("scapy.layers.ipsec")
    from scapy.layers.inet import UDP
    from scapy.layers.ipsec import ESP, NON_ESP
    from scapy.layers.ipsec import NAT_KEEPALIVE as ScapyKeepalive
    from scapy.packet import Raw

    def payload(layer: object) -> bytes:
        return bytes((UDP(sport=4500, dport=4500) / layer).payload)  # type: ignore[operator]

    assert classify(payload(ScapyKeepalive()))[0] == DatagramKind.KEEPALIVE
    assert classify(payload(NON_ESP() / Raw(IKE_MSG))) == (DatagramKind.IKE, IKE_MSG)
    esp = payload(ESP(spi=0x1234, seq=9, data=bytes(32)))
    assert classify(esp) == (DatagramKind.ESP, esp)


def test_frame_writes_marker_and_keepalive_once():
    """IKE on port 4500 gets the non-ESP marker, port 500 none, a keepalive is 0xFF alone."""
    assert frame(b"IKE", True) == NON_ESP_MARKER + b"IKE"
    assert frame(b"IKE", False) == b"IKE"
    assert frame(b"", False, keepalive=True) == NAT_KEEPALIVE == b"\xff"
    assert classify(frame(b"", False, keepalive=True))[0] == "keepalive"
