"""Payload codec: every RFC 7296 payload round-trips, wire layout is exact, bad bodies fail."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.ike.constants import (
    AuthMethod,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from ipsecd.ike.message import Message, parse_message
from ipsecd.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Delete,
    IdentificationInitiator,
    IdentificationResponder,
    KeyExchange,
    MalformedMessage,
    Nonce,
    Notify,
    RawPayload,
    RawSelector,
    SaProposal,
    SecurityAssociation,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    Transform,
    TransformAttribute,
    VendorId,
    format_identity,
    identity_from_text,
)
from ipsecd.selectors import TrafficSelector


def round_trip(*payloads):
    msg = Message(
        0x1122334455667788,
        0x99AABBCCDDEEFF00,
        ExchangeType.IKE_AUTH,
        7,
        True,
        False,
        list(payloads),
    )
    data = msg.encode()
    parsed = parse_message(data)
    assert parsed == msg
    assert parsed.raw == data
    assert parsed.encode() == data
    return parsed


IKE_SA = SecurityAssociation(
    (
        SaProposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                Transform(1, 12, 256),
                Transform(1, 20, 128),
                Transform(2, 5),
                Transform(3, 12),
                Transform(4, 31),
                Transform(4, 19),
            ),
        ),
        SaProposal(2, ProtocolId.IKE, b"", (Transform(1, 28), Transform(2, 7), Transform(4, 14))),
    )
)


def test_sa_round_trip() -> None:
    round_trip(IKE_SA)


def test_sa_esp_with_spi_and_tlv_attribute() -> None:
    sa = SecurityAssociation(
        (
            SaProposal(
                1,
                ProtocolId.ESP,
                b"\xde\xad\xbe\xef",
                (
                    Transform(1, 12, 128, (TransformAttribute(99, b"tlv-value"),)),
                    Transform(3, 12),
                    Transform(5, 1),
                    Transform(5, 0),
                ),
            ),
        )
    )
    round_trip(sa)


def test_sa_ike_rekey_spi() -> None:
    round_trip(SecurityAssociation((SaProposal(1, 1, b"12345678", (Transform(1, 28),)),)))


def test_sa_wire_layout() -> None:
    body = SecurityAssociation(
        (SaProposal(1, 1, b"", (Transform(1, 12, 128), Transform(4, 31))),)
    ).encode_body()
    assert body.hex() == (
        "0000001c"
        "01010002"  # last proposal, length 28, #1, IKE, SPI size 0, 2 transforms
        "0300000c"
        "0100000c"
        "800e0080"  # more, len 12, ENCR, AES-CBC, Key Length 128 (TV)
        "00000008"
        "0400001f"  # last, len 8, KE, 31
    )


@pytest.mark.parametrize(
    "payload",
    [
        KeyExchange(31, b"\x01" * 32),
        KeyExchange(14, b"\x02" * 256),
        Nonce(b"\x03" * 16),
        Nonce(b"\x04" * 256),
        Authentication(AuthMethod.SHARED_KEY_MIC, b"\x05" * 32),
        Certificate(4, b"\x30\x82der"),
        CertificateRequest(4, b"\x06" * 40),
        VendorId(b"strongSwan"),
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x07" * 20),
        Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x01\x02\x03\x04"),
        Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13"),
        Notify(NotifyType.COOKIE, b"\x08" * 32),
        Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
        Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00\x02\x00\x03"),
        Notify(60000, b"unknown status type kept"),
        Delete(ProtocolId.IKE),
        Delete(ProtocolId.ESP, (0xC1000001, 0xC1000002, 0xFFFFFFFF)),
        RawPayload(PayloadType.CP, b"\x01\x00\x00\x00\x00\x01\x00\x00"),
        RawPayload(PayloadType.EAP, b"\x01\x02\x00\x05\x01"),
        RawPayload(200, b"future payload", critical=False),
    ],
    ids=lambda p: type(p).__name__,
)
def test_simple_payload_round_trip(payload) -> None:
    round_trip(payload)


@pytest.mark.parametrize(
    ("id_type", "data"),
    [
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
        (IdType.ID_IPV6_ADDR, ipaddress.IPv6Address("2001:db8::1").packed),
        (IdType.ID_FQDN, b"vpn.example.org"),
        (IdType.ID_RFC822_ADDR, b"alice@example.org"),
        (IdType.ID_KEY_ID, b"\x00\x01opaque"),
        (IdType.ID_DER_ASN1_DN, b"\x30\x00"),
    ],
)
def test_identification_round_trip(id_type: int, data: bytes) -> None:
    parsed = round_trip(
        IdentificationInitiator(id_type, data), IdentificationResponder(id_type, data)
    )
    i, r = parsed.payloads
    assert isinstance(i, IdentificationInitiator) and isinstance(r, IdentificationResponder)
    assert i.auth_octets == bytes([id_type, 0, 0, 0]) + data


@pytest.mark.parametrize(("id_type", "size"), [(IdType.ID_IPV4_ADDR, 5), (IdType.ID_IPV6_ADDR, 4)])
def test_identification_address_length_checked(id_type: int, size: int) -> None:
    data = Message(1, 2, 35, 1, payloads=[IdentificationInitiator(id_type, b"\0" * size)]).encode()
    with pytest.raises(MalformedMessage, match="IDi"):
        parse_message(data)


def test_identity_text_helpers() -> None:
    assert identity_from_text("192.0.2.1") == (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))
    assert identity_from_text("2001:db8::1")[0] == IdType.ID_IPV6_ADDR
    assert identity_from_text("@gw.example") == (IdType.ID_FQDN, b"gw.example")
    assert identity_from_text("gw.example") == (IdType.ID_FQDN, b"gw.example")
    assert identity_from_text("a@b.example") == (IdType.ID_RFC822_ADDR, b"a@b.example")
    assert identity_from_text("keyid:0a0b") == (IdType.ID_KEY_ID, b"\x0a\x0b")
    for text in ("192.0.2.1", "2001:db8::1", "gw.example", "a@b.example", "keyid:0a0b"):
        assert format_identity(*identity_from_text(text)) == text


TS4 = TrafficSelector.from_prefix("10.1.0.0/16")
TS6 = TrafficSelector.from_prefix("2001:db8:1::/48")
TS_PORTS = TrafficSelector(4, 0x0A000001, 0x0A000001, 6, 443, 443)
TS6_UDP = TrafficSelector(6, 1, 2**128 - 1, 17, 500, 4500)


def test_traffic_selectors_round_trip_v4_v6() -> None:
    parsed = round_trip(
        TrafficSelectorsInitiator((TS4, TS6, TS_PORTS)),
        TrafficSelectorsResponder((TS6_UDP,)),
    )
    assert parsed.payloads[0].selectors == (TS4, TS6, TS_PORTS)
    assert parsed.payloads[1].selectors == (TS6_UDP,)


def test_traffic_selector_wire_layout() -> None:
    body = TrafficSelectorsInitiator((TS_PORTS,)).encode_body()
    assert body.hex() == "010000000706001001bb01bb0a0000010a000001"


def test_unknown_selector_type_kept() -> None:
    round_trip(TrafficSelectorsInitiator((TS4,), (RawSelector(10, 0, b"label-data"),)))


def test_nonce_length_enforced_on_encode_only() -> None:
    with pytest.raises(ValueError):
        Nonce(b"short").encode_body()
    with pytest.raises(ValueError):
        Nonce(b"x" * 257).encode_body()
    # A short nonce still parses, so the exchange can answer INVALID_SYNTAX.
    from ipsecd.ike.message import encode_payload_chain

    chain = bytearray(encode_payload_chain([VendorId(b"12345678")]))
    header = Message(1, 2, 34, 0).encode()
    raw = bytearray(header[:16]) + bytes([PayloadType.NONCE]) + header[17:24]
    raw += (28 + len(chain)).to_bytes(4, "big") + chain
    assert parse_message(bytes(raw)).payloads == (Nonce(b"12345678"),)


def test_all_payload_types_in_one_message() -> None:
    round_trip(
        IKE_SA,
        KeyExchange(19, b"\x01" * 64),
        Nonce(b"\x02" * 32),
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x03" * 20),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, b"\x04" * 20),
        IdentificationInitiator(IdType.ID_FQDN, b"left"),
        Certificate(4, b"cert"),
        CertificateRequest(4, b"\x05" * 20),
        IdentificationResponder(IdType.ID_FQDN, b"right"),
        Authentication(2, b"\x06" * 32),
        TrafficSelectorsInitiator((TS4,)),
        TrafficSelectorsResponder((TS6,)),
        Delete(3, (1,)),
        VendorId(b"vid"),
        RawPayload(PayloadType.CP, b"cfg"),
    )


def test_notify_helpers() -> None:
    assert Notify(NotifyType.NO_PROPOSAL_CHOSEN).is_error
    assert not Notify(NotifyType.INITIAL_CONTACT).is_error
    assert NotifyType.AUTHENTICATION_FAILED.is_error


@pytest.mark.parametrize(
    "body_hex",
    [
        "",  # SA without proposals
        "0200000801010000",  # proposal says more follow, nothing does
        "00000007010100",  # proposal length < 8
        "0000000801010001",  # 1 transform announced, none present
        "0000000c0101000100000004",  # transform length < 8
        "0000001001010001000000080100000100",  # trailing byte inside the proposal
        "0000000801010000ff",  # trailing byte after the last proposal
        "0100000801010000",  # last-substruc value 1 is invalid
        "00000010010100010300000801000001",  # transform says more follow, count says 1
        "0000001001010001000000090100000180",  # attribute truncated
    ],
)
def test_bad_sa_bodies(body_hex: str) -> None:
    with pytest.raises(MalformedMessage):
        SecurityAssociation.decode_body(bytes.fromhex(body_hex))


@pytest.mark.parametrize(
    ("cls", "body_hex"),
    [
        (Delete, "0304000200000001"),  # 2 SPIs announced, 1 present
        (Delete, "01000001"),  # SPI size 0 with a count
        (Notify, "030440000102"),  # SPI size 4, 2 bytes present
        (KeyExchange, "001f00"),
        (Authentication, "0200"),
        (TrafficSelectorsInitiator, "00000000"),  # zero selectors
        (TrafficSelectorsInitiator, "01000000070000100000ffff0a000000"),  # truncated
        (TrafficSelectorsInitiator, "01000000070000140000ffff0a0000000a00000000000000"),
        (TrafficSelectorsInitiator, "02000000070000100000ffff0a0000000a0000ff"),
        (TrafficSelectorsInitiator, "0100000009000003"),  # selector length < 4
        (IdentificationInitiator, "020000"),
        (Certificate, ""),
    ],
)
def test_bad_bodies(cls, body_hex: str) -> None:
    with pytest.raises(MalformedMessage):
        cls.decode_body(bytes.fromhex(body_hex))
