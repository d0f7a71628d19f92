"""Hostile input: the parser raises MalformedMessage and nothing else (RFC 7296 §2.21.1).

Random bytes, every truncation (with and without a fixed-up length field),
every single-bit flip of valid messages, random payload bodies for every
payload class, and authenticated-but-garbage SK contents.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct

import pytest

from ipsecd.crypto.proposals import parse_proposal
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.ike import sk as sk_mod
from ipsecd.ike.constants import IdType, NotifyType, PayloadType
from ipsecd.ike.message import MalformedMessage, Message, decode, parse_message
from ipsecd.ike.payloads import (
    PAYLOAD_CLASSES,
    Authentication,
    Certificate,
    CertificateRequest,
    Delete,
    IdentificationInitiator,
    IdentificationResponder,
    KeyExchange,
    Nonce,
    Notify,
    RawPayload,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    VendorId,
)
from ipsecd.ike.proposal_codec import sa_payload
from ipsecd.ike.sk import SkKeys
from ipsecd.selectors import TrafficSelector

RNG_SEED = 7296


def _sa_init() -> bytes:
    return Message(
        0x1111111111111111,
        0,
        34,
        0,
        True,
        payloads=[
            sa_payload(
                (
                    parse_proposal("aes256gcm16-aes128gcm16-prfsha256-x25519-ecp256", "ike"),
                    parse_proposal("aes128-aes256-sha256-sha384-modp2048", "ike"),
                )
            ),
            KeyExchange(31, os.urandom(32)),
            Nonce(os.urandom(32)),
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, os.urandom(20)),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, os.urandom(20)),
            Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
            Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, bytes.fromhex("0002000300040005")),
            VendorId(b"strongSwan-ish"),
            CertificateRequest(4, os.urandom(20)),
        ],
    ).encode()


def _ike_auth_payloads() -> list:
    return [
        IdentificationInitiator(IdType.ID_FQDN, b"left.example"),
        IdentificationResponder(IdType.ID_IPV6_ADDR, bytes(16)),
        Certificate(4, b"\x30\x03\x02\x01\x01"),
        Authentication(2, os.urandom(32)),
        Notify(NotifyType.INITIAL_CONTACT),
        Notify(NotifyType.USE_TRANSPORT_MODE),
        sa_payload((parse_proposal("aes128-sha256-esn-noesn", "esp"),), b"\x01\x02\x03\x04"),
        TrafficSelectorsInitiator(
            (TrafficSelector.from_prefix("10.0.0.0/8"), TrafficSelector.from_prefix("fd00::/8"))
        ),
        TrafficSelectorsResponder((TrafficSelector(4, 1, 2, 6, 80, 443),)),
        Delete(3, (1, 2)),
        RawPayload(PayloadType.CP, b"\x01\x00\x00\x00\x00\x01\x00\x00"),
    ]


def _only_malformed(fn, data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        fn(data)


def _with_length(data: bytes) -> bytes:
    """Fix the header length field so the parser gets past the first check."""
    if len(data) < 28:
        return data
    return data[:24] + struct.pack("!I", len(data)) + data[28:]


def test_random_bytes() -> None:
    rng = random.Random(RNG_SEED)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 400))
        _only_malformed(parse_message, data)
        _only_malformed(parse_message, _with_length(data))
        # A plausible IKEv2 header in front of random payloads.
        header = rng.randbytes(16) + bytes([rng.choice([33, 34, 40, 41, 46, 53, 0, 200]), 0x20])
        _only_malformed(parse_message, _with_length(header + rng.randbytes(10) + data))


@pytest.mark.parametrize("fixup", [False, True])
def test_every_truncation(fixup: bool) -> None:
    keys = SkKeys(ENCRYPTION["aes128"], INTEGRITY["sha256"], bytes(16), bytes(32))
    for data in (_sa_init(), Message(1, 2, 35, 1, True, payloads=_ike_auth_payloads()).encode()):
        for n in range(len(data)):
            cut = _with_length(data[:n]) if fixup else data[:n]
            _only_malformed(parse_message, cut)
            _only_malformed(lambda d: decode(d, keys), cut)


def test_every_bit_flip_of_clear_messages() -> None:
    for data in (_sa_init(), Message(1, 2, 35, 1, True, payloads=_ike_auth_payloads()).encode()):
        for pos in range(len(data)):
            for bit in range(8):
                bad = bytearray(data)
                bad[pos] ^= 1 << bit
                _only_malformed(parse_message, bytes(bad))


@pytest.mark.parametrize(
    ("encr", "integ"), [("aes256", "sha384"), ("aes128gcm16", None), ("chacha20poly1305", None)]
)
def test_bit_flips_and_truncations_of_encrypted(encr: str, integ: str | None) -> None:
    e, i = ENCRYPTION[encr], INTEGRITY[integ] if integ else None
    keys = SkKeys(e, i, os.urandom(e.keymat_len), os.urandom(i.key_len) if i else b"")
    data = Message(1, 2, 35, 1, True, payloads=_ike_auth_payloads()).encode(keys)
    assert decode(data, keys).payloads
    for pos in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(MalformedMessage):
                decode(bytes(bad), keys)
    for n in range(len(data)):
        with pytest.raises(MalformedMessage):
            decode(_with_length(data[:n]), keys)


def test_authenticated_garbage_inside_sk() -> None:
    """The peer has the keys but sends nonsense: still only MalformedMessage."""
    rng = random.Random(RNG_SEED + 1)
    e = ENCRYPTION["aes128gcm16"]
    keys = SkKeys(e, None, os.urandom(e.keymat_len))
    for _ in range(1500):
        inner = rng.randbytes(rng.randrange(0, 120))
        first = rng.choice([0, 33, 34, 35, 39, 40, 41, 42, 44, 46, 47, 53, 222])
        plaintext = sk_mod.pad(keys, inner) if rng.random() < 0.8 else rng.randbytes(1) + inner
        sk_len = 4 + sk_mod.body_length(keys, len(plaintext))
        header = struct.pack("!QQBBBBII", 1, 2, 46, 0x20, 35, 0x08, 1, 28 + sk_len)
        prefix = header + struct.pack("!BBH", first, rng.choice([0, 0x80]), sk_len)
        data = prefix + sk_mod.seal(keys, prefix, plaintext)
        _only_malformed(lambda d: decode(d, keys), data)


@pytest.mark.parametrize("cls", list(PAYLOAD_CLASSES.values()), ids=lambda c: c.__name__)
def test_random_payload_bodies(cls) -> None:
    rng = random.Random(RNG_SEED + cls.TYPE)
    for _ in range(2000):
        body = rng.randbytes(rng.randrange(0, 64))
        with contextlib.suppress(MalformedMessage):
            cls.decode_body(body)


def test_structured_sa_mutations() -> None:
    """Random edits to the length and count fields of a valid SA payload."""
    rng = random.Random(RNG_SEED + 2)
    body = bytearray(
        sa_payload(
            (parse_proposal("aes128-aes256-sha256-prfsha256-ecp256-x25519", "ike"),)
        ).encode_body()
    )
    for _ in range(5000):
        bad = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            bad[rng.randrange(len(bad))] = rng.choice(
                [0, 1, 2, 3, 8, 0x80, 0xFF, rng.randrange(256)]
            )
        if rng.random() < 0.3:
            bad = bad[: rng.randrange(len(bad))]
        with contextlib.suppress(MalformedMessage):
            PAYLOAD_CLASSES[PayloadType.SA].decode_body(bytes(bad))
