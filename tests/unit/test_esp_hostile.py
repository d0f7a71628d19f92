"""Hostile input to InboundEspSa.decapsulate: never raises, always counted right.

RFC 4303 §3.4: every check on a received packet fails closed.  Each case here
also proves the SA still works afterwards (a valid packet decapsulates).
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from ipsecd.crypto.ciphers import Aead, CbcCipher, Hmac
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa

TRANSFORMS = [
    ("aes128gcm16", None),
    ("aes256gcm16", None),
    ("chacha20poly1305", None),
    *[(e, i) for e in ("aes128", "aes256") for i in ("sha256", "sha384", "sha512")],
]
SPI = 0x51515151
INNER = (
    bytes.fromhex("450000200000000040110000c0000201c0000202") + b"\x00\x01\x00\x02" + b"abcd" * 2
)


def tid(t: tuple[str, str | None]) -> str:
    return t[0] if t[1] is None else f"{t[0]}-{t[1]}"


class Pair:
    def __init__(self, encr: str, integ: str | None, esn: bool = False) -> None:
        self.encr = ENCRYPTION[encr]
        self.integ = INTEGRITY[integ] if integ else None
        self.esn = esn
        self.keymat = os.urandom(self.encr.keymat_len)
        self.ik = os.urandom(self.integ.key_len) if self.integ else b""
        self.out = OutboundEspSa(SPI, self.encr, self.integ, self.keymat, self.ik, esn)
        self.inb = InboundEspSa(SPI, self.encr, self.integ, self.keymat, self.ik, esn)

    def seal_raw(self, seq: int, plaintext: bytes) -> bytes:
        """Build a packet with a valid ICV around an arbitrary plaintext (test-only)."""
        header = struct.pack("!II", SPI, seq & 0xFFFFFFFF)
        if self.encr.aead:
            iv = seq.to_bytes(8, "big")
            aad = struct.pack("!III", SPI, seq >> 32, seq & 0xFFFFFFFF) if self.esn else header
            return header + iv + Aead(self.encr, self.keymat).seal(iv, plaintext, aad)
        assert self.integ is not None
        iv = os.urandom(16)
        ct = CbcCipher(self.encr, self.keymat).encrypt(iv, plaintext)
        extra = [struct.pack("!I", seq >> 32)] if self.esn else []
        icv = Hmac(self.integ, self.ik).compute(header, iv, ct, *extra)
        return header + iv + ct + icv

    def still_works(self) -> None:
        packet = self.out.encapsulate(INNER, 4)
        assert self.inb.decapsulate(packet) == (4, INNER)

    def drops(self) -> dict[str, int]:
        return {str(k): v for k, v in self.inb.drops.items() if v}


@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_truncated_at_every_length(transform: tuple[str, str | None]) -> None:
    p = Pair(*transform)
    packet = p.out.encapsulate(INNER, 4)
    header_iv = 8 + p.encr.iv_size
    icv = p.encr.icv_size or p.integ.icv_len  # type: ignore[union-attr]
    align = 4 if p.encr.aead else 16
    min_len = header_iv + align + icv
    expected = {"too_short": 0, "bad_icv": 0}
    for n in range(len(packet)):
        assert p.inb.decapsulate(packet[:n]) is None
        expected["too_short" if n < min_len else "bad_icv"] += 1
        assert p.drops() == {k: v for k, v in expected.items() if v}, n
    assert p.inb.replay.top == 0
    assert p.inb.decapsulate(packet) == (4, INNER)  # the untruncated original is fine
    p.still_works()


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_bit_flips_every_position(transform: tuple[str, str | None], esn: bool) -> None:
    p = Pair(*transform, esn)
    p.still_works()  # seq 1 received: window top = 1
    packet = p.out.encapsulate(INNER, 4)  # seq 2
    for bit in range(len(packet) * 8):
        flipped = bytearray(packet)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        before = dict(p.inb.drops)
        assert p.inb.decapsulate(bytes(flipped)) is None, bit
        changed = {r for r in p.inb.drops if p.inb.drops[r] != before[r]}
        if bit < 32:
            assert changed == {DropReason.UNKNOWN_SPI}, bit
        elif bit < 64:
            # A flipped sequence number: ICV failure, or a replay when it lands on 1.
            assert changed <= {DropReason.BAD_ICV, DropReason.REPLAY} and len(changed) == 1
        else:
            assert changed == {DropReason.BAD_ICV}, bit
    assert p.inb.drops[DropReason.MALFORMED] == 0
    assert p.inb.replay.top == 1
    assert p.inb.decapsulate(packet) == (4, INNER)
    p.still_works()


@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_random_bytes(transform: tuple[str, str | None]) -> None:
    p = Pair(*transform)
    rnd = random.Random(1234)
    count = 3000
    for i in range(count):
        data = bytearray(rnd.randbytes(rnd.randrange(0, 160)))
        if i % 2 and len(data) >= 4:
            data[:4] = SPI.to_bytes(4, "big")  # get past the SPI check
        assert p.inb.decapsulate(bytes(data)) is None
    assert sum(p.inb.drops.values()) == count
    assert set(p.drops()) <= {"too_short", "unknown_spi", "bad_icv", "replay"}
    assert p.inb.drops[DropReason.MALFORMED] == 0
    p.still_works()


@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_wrong_spi_and_replay(transform: tuple[str, str | None]) -> None:
    p = Pair(*transform)
    packet = p.out.encapsulate(INNER, 4)
    other = bytearray(packet)
    other[:4] = (SPI + 1).to_bytes(4, "big")
    assert p.inb.decapsulate(bytes(other)) is None
    assert p.inb.decapsulate(packet) == (4, INNER)
    assert p.inb.decapsulate(packet) is None
    assert p.drops() == {"unknown_spi": 1, "replay": 1}
    p.still_works()


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_bad_padding_with_valid_icv(transform: tuple[str, str | None], esn: bool) -> None:
    p = Pair(*transform, esn)
    align = 4 if p.encr.aead else 16

    def padded(pad: bytes, pad_len: int | None = None, nh: int = 4) -> bytes:
        body = INNER + pad + bytes((len(pad) if pad_len is None else pad_len, nh))
        extra = -len(body) % align
        assert extra == 0, "test plaintext must already be aligned"
        return body

    # INNER is 32 bytes; + pad + 2 must be a multiple of 16 (CBC) or 4 (AEAD).
    n = 14 if align == 16 else 2
    good_pad = bytes(range(1, n + 1))
    cases = [
        padded(bytes(n)),  # zero padding instead of 1, 2, 3, ...
        padded(good_pad[:-1] + b"\xff"),  # last pad byte wrong
        padded(b"\x02" + good_pad[1:]),  # first pad byte wrong
        padded(good_pad, pad_len=n + 1),  # pad length eats a byte of the payload
        padded(good_pad, pad_len=255),  # pad length beyond the plaintext
    ]
    seq = 0
    for plaintext in cases:
        seq += 1
        assert p.inb.decapsulate(p.seal_raw(seq, plaintext)) is None
    assert p.drops() == {"bad_padding": len(cases)}
    # Authentic, so the window moved (RFC 4303 §3.4.3): a replay is a replay.
    assert p.inb.decapsulate(p.seal_raw(1, cases[0])) is None
    assert p.inb.drops[DropReason.REPLAY] == 1
    # The raw builder itself is right: correct padding goes through.
    seq += 1
    assert p.inb.decapsulate(p.seal_raw(seq, padded(good_pad))) == (4, INNER)
    p.out.seq = seq
    p.still_works()


@pytest.mark.parametrize("transform", TRANSFORMS[3:], ids=tid)
def test_cbc_partial_block_with_valid_icv_is_malformed(transform: tuple[str, str | None]) -> None:
    p = Pair(*transform)
    good = p.seal_raw(1, INNER + bytes(range(1, 15)) + b"\x0e\x04")
    assert p.integ is not None
    icv_len = p.integ.icv_len
    body = good[: len(good) - icv_len - 4]  # drop 4 ciphertext bytes, re-MAC
    icv = Hmac(p.integ, p.ik).compute(body)
    assert p.inb.decapsulate(body + icv) is None
    assert p.drops() == {"malformed": 1}
    p.out.seq = 1
    p.still_works()


def test_empty_plaintext_aead_is_malformed_not_crash() -> None:
    p = Pair("aes128gcm16", None)
    # 4 bytes of plaintext is the minimum packet; a valid tag over 4 bytes
    # whose pad length claims more than exists -> bad padding.
    assert p.inb.decapsulate(p.seal_raw(1, b"\x05\x04\x04\x04")) is None
    assert p.drops() == {"bad_padding": 1}
    p.out.seq = 1
    p.still_works()
