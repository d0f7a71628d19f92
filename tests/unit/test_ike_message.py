"""Messages: header, payload chains, critical bit, SK protection (RFC 7296 §3.1, §3.2, §3.14)."""

from __future__ import annotations

import os
import struct

import pytest

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.ike import message as codec
from ipsecd.ike.constants import ExchangeType, NotifyType, PayloadType
from ipsecd.ike.errors import UnsupportedCriticalPayload
from ipsecd.ike.message import (
    IntegrityCheckFailed,
    MalformedMessage,
    Message,
    decode,
    decrypt,
    encode,
    parse_header,
    parse_message,
)
from ipsecd.ike.payloads import (
    Delete,
    Encrypted,
    EncryptedFragment,
    IdentificationInitiator,
    Nonce,
    Notify,
    RawPayload,
    VendorId,
)
from ipsecd.ike.sk import SkKeys

SPI_I, SPI_R = 0xA1A2A3A4A5A6A7A8, 0xB1B2B3B4B5B6B7B8


def test_header_wire_layout() -> None:
    data = Message(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, 0, initiator=True).encode()
    assert data.hex() == ("a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b800202208000000000000001c")
    h = parse_header(data)
    assert (h.spi_i, h.spi_r, h.exchange_type, h.message_id, h.length) == (SPI_I, SPI_R, 34, 0, 28)
    assert h.initiator and not h.response and not h.version_flag
    assert (h.major_version, h.minor_version) == (2, 0)


def test_flags() -> None:
    msg = Message(
        1, 2, ExchangeType.INFORMATIONAL, 5, initiator=False, response=True, version_flag=True
    )
    data = msg.encode()
    assert data[19] == 0x30
    parsed = parse_message(data)
    assert parsed.response and not parsed.initiator and parsed.version_flag
    assert parsed.exchange_type is ExchangeType.INFORMATIONAL


def test_header_errors() -> None:
    data = Message(1, 2, 34, 0, payloads=[VendorId(b"x")]).encode()
    with pytest.raises(MalformedMessage, match="shorter"):
        parse_header(data[:27])
    with pytest.raises(MalformedMessage, match="length"):
        parse_header(data + b"\0")
    with pytest.raises(MalformedMessage, match="length"):
        parse_header(data[:-1])
    ikev1 = data[:17] + b"\x10" + data[18:]
    assert parse_header(ikev1).major_version == 1  # caller may answer INVALID_MAJOR_VERSION
    with pytest.raises(MalformedMessage, match="major version"):
        parse_message(ikev1)
    assert parse_message(data[:17] + b"\x21" + data[18:]).payloads  # minor version ignored


def test_unknown_exchange_type_kept() -> None:
    assert parse_message(Message(1, 2, 99, 0).encode()).exchange_type == 99


def test_unknown_noncritical_payload_skipped_and_kept() -> None:
    msg = Message(1, 2, 34, 0, payloads=[RawPayload(222, b"abc"), Nonce(b"n" * 16)])
    parsed = parse_message(msg.encode())
    assert parsed.unsupported_critical is None
    assert parsed.payloads == (RawPayload(222, b"abc"), Nonce(b"n" * 16))
    assert parsed.find(Nonce) == Nonce(b"n" * 16)


def test_unknown_critical_payload_reported() -> None:
    msg = Message(1, 2, 34, 0, payloads=[Nonce(b"n" * 16), RawPayload(222, b"abc", critical=True)])
    data = msg.encode()
    assert data[28 + 4 + 16 + 1] & 0x80  # critical bit on the wire
    parsed = parse_message(data)
    assert parsed.unsupported_critical == 222
    with pytest.raises(UnsupportedCriticalPayload) as info:
        decode(data)
    assert info.value.payload_type == 222
    assert isinstance(info.value, MalformedMessage)


def test_known_payload_with_critical_bit_is_fine() -> None:
    data = bytearray(Message(1, 2, 34, 0, payloads=[Nonce(b"n" * 16)]).encode())
    data[29] |= 0x80  # critical bit on a payload we understand: ignored (§2.5)
    assert parse_message(bytes(data)).unsupported_critical is None
    data2 = bytearray(Message(1, 2, 34, 0, payloads=[RawPayload(47, b"cp", True)]).encode())
    assert parse_message(bytes(data2)).unsupported_critical is None  # CP is known, kept raw


def test_trailing_bytes_after_chain_rejected() -> None:
    data = Message(1, 2, 34, 0, payloads=[Nonce(b"n" * 16)]).encode() + b"\0\0\0\0"
    data = data[:24] + struct.pack("!I", len(data)) + data[28:]
    with pytest.raises(MalformedMessage, match="after the last payload"):
        parse_message(data)


def test_payload_length_overrun_rejected() -> None:
    data = bytearray(Message(1, 2, 34, 0, payloads=[Nonce(b"n" * 16)]).encode())
    data[30:32] = (200).to_bytes(2, "big")
    with pytest.raises(MalformedMessage, match="does not fit"):
        parse_message(bytes(data))
    data[30:32] = (3).to_bytes(2, "big")
    with pytest.raises(MalformedMessage):
        parse_message(bytes(data))


def test_find_helpers() -> None:
    msg = Message(
        1,
        2,
        37,
        3,
        payloads=[
            Notify(NotifyType.INITIAL_CONTACT),
            Notify(NotifyType.COOKIE, b"c"),
            Delete(3, (5,)),
        ],
    )
    assert [n.notify_type for n in msg.notifies()] == [16384, 16390]
    assert msg.notifies(NotifyType.COOKIE)[0].data == b"c"
    assert msg.find_all(Delete) == [Delete(3, (5,))]
    assert msg.find(Nonce) is None


# ---- SK -----------------------------------------------------------------------------

CIPHERS = [
    ("aes128", "sha256"),
    ("aes128", "sha384"),
    ("aes128", "sha512"),
    ("aes256", "sha256"),
    ("aes256", "sha384"),
    ("aes256", "sha512"),
    ("aes128gcm16", None),
    ("aes256gcm16", None),
    ("chacha20poly1305", None),
]


def sk_keys(encr: str, integ: str | None) -> SkKeys:
    e = ENCRYPTION[encr]
    i = INTEGRITY[integ] if integ else None
    return SkKeys(e, i, os.urandom(e.keymat_len), os.urandom(i.key_len) if i else b"")


class BothDirections:
    """Stands in for IkeKeys: sk_keys(sender_is_initiator)."""

    def __init__(self, encr: str, integ: str | None) -> None:
        self.i, self.r = sk_keys(encr, integ), sk_keys(encr, integ)

    def sk_keys(self, sender_is_initiator: bool) -> SkKeys:
        return self.i if sender_is_initiator else self.r


INNER = [
    IdentificationInitiator(2, b"left.example"),
    Notify(NotifyType.INITIAL_CONTACT),
    Nonce(b"n" * 33),
]


@pytest.mark.parametrize(("encr", "integ"), CIPHERS)
@pytest.mark.parametrize("inner_len", [0, 1, 15, 16, 17, 100])
def test_sk_round_trip(encr: str, integ: str | None, inner_len: int) -> None:
    keys = sk_keys(encr, integ)
    payloads = [VendorId(b"v" * inner_len)] if inner_len else []
    msg = Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, initiator=True, payloads=payloads)
    data = msg.encode(keys)
    parsed = parse_message(data)
    assert len(parsed.payloads) == 1 and isinstance(parsed.payloads[0], Encrypted)
    assert parse_header(data).next_payload == PayloadType.SK
    opened = decrypt(parsed, keys)
    assert opened.payloads == msg.payloads and opened.encrypted
    assert decode(data, keys) == opened
    if keys.encr.aead:
        assert len(parsed.payloads[0].data) == 8 + inner_len + 4 * bool(inner_len) + 1 + 16
    else:
        assert (len(parsed.payloads[0].data) - 16 - keys.integ.icv_len) % 16 == 0


@pytest.mark.parametrize(("encr", "integ"), CIPHERS)
def test_sk_uses_direction_keys(encr: str, integ: str | None) -> None:
    keys = BothDirections(encr, integ)
    req = Message(SPI_I, SPI_R, 35, 1, initiator=True, payloads=INNER)
    resp = Message(SPI_I, SPI_R, 35, 1, initiator=False, response=True, payloads=INNER)
    d_req, d_resp = encode(req, keys), encode(resp, keys)
    assert decode(d_req, keys, sender_is_initiator=True).payloads == tuple(INNER)
    assert decode(d_resp, keys).payloads == tuple(INNER)  # from the I flag
    with pytest.raises(IntegrityCheckFailed):
        decode(d_req, keys, sender_is_initiator=False)
    with pytest.raises(IntegrityCheckFailed):
        decode(d_resp, keys, sender_is_initiator=True)


@pytest.mark.parametrize(("encr", "integ"), CIPHERS)
def test_sk_tampering_any_byte_rejected(encr: str, integ: str | None) -> None:
    keys = sk_keys(encr, integ)
    data = Message(SPI_I, SPI_R, 35, 1, initiator=True, payloads=INNER).encode(keys)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(MalformedMessage):  # IntegrityCheckFailed or a parse error
            decode(bytes(bad), keys)


@pytest.mark.parametrize(("encr", "integ"), CIPHERS)
def test_sk_icv_covers_header(encr: str, integ: str | None) -> None:
    keys = sk_keys(encr, integ)
    data = bytearray(Message(SPI_I, SPI_R, 35, 1, initiator=True, payloads=INNER).encode(keys))
    data[20:24] = (2).to_bytes(4, "big")  # message id changed
    with pytest.raises(IntegrityCheckFailed):
        decode(bytes(data), keys)


def test_sk_wrong_key_and_truncation() -> None:
    keys = sk_keys("aes256gcm16", None)
    data = Message(1, 2, 37, 0, True, payloads=INNER).encode(keys)
    with pytest.raises(IntegrityCheckFailed):
        decode(data, sk_keys("aes256gcm16", None))
    with pytest.raises(MalformedMessage):
        decode(data[:-1], keys)
    cbc = sk_keys("aes128", "sha256")
    short = Message(1, 2, 37, 0, True).encode(cbc)
    cut = short[:-16]
    cut = cut[:24] + struct.pack("!I", len(cut)) + cut[28:]
    cut = cut[:30] + struct.pack("!H", len(cut) - 28) + cut[32:]
    with pytest.raises(MalformedMessage):
        decode(cut, cbc)


def test_empty_informational_round_trip() -> None:
    keys = sk_keys("chacha20poly1305", None)
    data = Message(1, 2, ExchangeType.INFORMATIONAL, 9, True).encode(keys)
    assert decode(data, keys).payloads == ()


def test_bad_padding_length_rejected() -> None:
    """A valid ICV around a pad length longer than the plaintext is still malformed."""
    keys = sk_keys("aes128", "sha256")
    from ipsecd.crypto.ciphers import CbcCipher, Hmac

    plaintext = bytes(15) + b"\xff"  # pad length 255 > 15
    iv = os.urandom(16)
    ct = CbcCipher(keys.encr, keys.encr_key).encrypt(iv, plaintext)
    sk_len = 4 + 16 + len(ct) + 16
    header = bytes.fromhex("00000000000000010000000000000002") + bytes([46, 0x20, 37, 0x08])
    header += (0).to_bytes(4, "big") + (28 + sk_len).to_bytes(4, "big")
    prefix = header + bytes([0, 0]) + sk_len.to_bytes(2, "big")
    icv = Hmac(keys.integ, keys.integ_key).compute(prefix, iv, ct)
    with pytest.raises(MalformedMessage, match="pad length"):
        decode(prefix + iv + ct + icv, keys)


def test_inner_critical_payload_found_after_decryption() -> None:
    keys = sk_keys("aes128gcm16", None)
    data = Message(1, 2, 35, 1, True, payloads=[RawPayload(250, b"x", critical=True)]).encode(keys)
    assert decrypt(parse_message(data), keys).unsupported_critical == 250
    with pytest.raises(UnsupportedCriticalPayload):
        decode(data, keys)


def test_sk_must_be_last_and_not_nested() -> None:
    keys = sk_keys("aes128gcm16", None)
    data = Message(1, 2, 35, 1, True, payloads=[Nonce(b"n" * 16)]).encode(keys)
    # Append a payload after SK: SK is not last any more.
    extra = bytes([0, 0, 0, 5, 0x41])
    body = bytearray(data + extra)
    sk_len = int.from_bytes(data[30:32], "big")
    body[24:28] = len(body).to_bytes(4, "big")
    with pytest.raises(MalformedMessage, match="not the last"):
        parse_message(bytes(body[: 28 + sk_len]) + extra)
    # SK inside SK.
    with pytest.raises(MalformedMessage, match="inside an SK"):
        codec._parse_chain(bytes([0, 0, 0, 44]) + b"x" * 40, 0, PayloadType.SK, inner=True)


def test_decrypt_without_sk_rejected() -> None:
    plain = Message(1, 2, 35, 1, True, payloads=[Nonce(b"n" * 16)]).encode()
    with pytest.raises(MalformedMessage, match="not protected"):
        decode(plain, sk_keys("aes128gcm16", None))


def test_skf_header_parsed() -> None:
    body = (2).to_bytes(2, "big") + (3).to_bytes(2, "big") + b"\xaa" * 40
    data = bytes.fromhex("00000000000000010000000000000002") + bytes([53, 0x20, 35, 0x08])
    data += (1).to_bytes(4, "big") + (28 + 4 + len(body)).to_bytes(4, "big")
    data += bytes([0, 0]) + (4 + len(body)).to_bytes(2, "big") + body
    parsed = parse_message(data)
    frag = parsed.payloads[0]
    assert isinstance(frag, EncryptedFragment)
    assert (frag.fragment_number, frag.total_fragments, frag.data) == (2, 3, b"\xaa" * 40)
    with pytest.raises(MalformedMessage, match="fragment"):
        decrypt(parsed, sk_keys("aes128gcm16", None))
    bad = data[:32] + (4).to_bytes(2, "big") + data[34:]  # fragment 4 of 3
    with pytest.raises(MalformedMessage, match="SKF"):
        parse_message(bad)


def test_sk_keys_validation() -> None:
    with pytest.raises(ValueError):
        SkKeys(ENCRYPTION["aes128"], None, bytes(16))
    with pytest.raises(ValueError):
        SkKeys(ENCRYPTION["aes128gcm16"], INTEGRITY["sha256"], bytes(20), bytes(32))
    with pytest.raises(ValueError):
        SkKeys(ENCRYPTION["aes128gcm16"], None, bytes(16))  # salt missing
    assert "encr_key" not in repr(SkKeys(ENCRYPTION["aes128gcm16"], None, bytes(20)))
