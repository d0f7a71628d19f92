"""OutboundEspSa / InboundEspSa behaviour (RFC 4303 §2-§3, RFC 4106, RFC 7634)."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsecd.crypto.ciphers import CbcCipher
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY, EncrAlgorithm, IntegAlgorithm
from ipsecd.esp.counters import NON_ERROR_REASONS, DropReason, new_drop_counters
from ipsecd.esp.inner import inner_addresses, next_header_for
from ipsecd.esp.sa import (
    MAX_SEQ_32,
    MAX_SEQ_64,
    InboundEspSa,
    OutboundEspSa,
    SequenceNumberExhausted,
)
from ipsecd.selectors import TrafficSelector
from tests.lab.packets import ipv4, ipv6

TRANSFORMS = [
    ("aes128gcm16", None),
    ("aes256gcm16", None),
    ("chacha20poly1305", None),
    *[(e, i) for e in ("aes128", "aes256") for i in ("sha256", "sha384", "sha512")],
]
SPI = 0x0A0B0C0D


def tid(t: tuple[str, str | None]) -> str:
    return t[0] if t[1] is None else f"{t[0]}-{t[1]}"


class Keys:
    def __init__(self, encr: str, integ: str | None, esn: bool = False) -> None:
        self.encr: EncrAlgorithm = ENCRYPTION[encr]
        self.integ: IntegAlgorithm | None = INTEGRITY[integ] if integ else None
        self.esn = esn
        self.keymat = os.urandom(self.encr.keymat_len)
        self.ik = os.urandom(self.integ.key_len) if self.integ else b""

    def out(self) -> OutboundEspSa:
        return OutboundEspSa(SPI, self.encr, self.integ, self.keymat, self.ik, self.esn)

    def inb(self, **kw: object) -> InboundEspSa:
        return InboundEspSa(SPI, self.encr, self.integ, self.keymat, self.ik, self.esn, **kw)  # type: ignore[arg-type]

    def plaintext(self, packet: bytes) -> bytes:
        """Decrypt with the raw primitives (no ICV check for CBC) to look inside."""
        e = self.encr
        if e.aead:
            key, salt = self.keymat[: e.key_len], self.keymat[e.key_len :]
            aead = ChaCha20Poly1305(key) if e.name == "chacha20poly1305" else AESGCM(key)
            seq_low = int.from_bytes(packet[4:8], "big")
            seq = int.from_bytes(packet[8:16], "big")
            aad = struct.pack("!III", SPI, seq >> 32, seq_low) if self.esn else packet[:8]
            return aead.decrypt(salt + packet[8:16], packet[16:], aad)
        assert self.integ is not None
        cbc = CbcCipher(e, self.keymat)
        return cbc.decrypt(packet[8:24], packet[24 : len(packet) - self.integ.icv_len])


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_round_trip_all_lengths(transform: tuple[str, str | None], esn: bool) -> None:
    k = Keys(*transform, esn)
    out, inb = k.out(), k.inb()
    align = 16 if not k.encr.aead else 4
    for n in range(0, 70):
        inner = ipv4("10.0.0.1", "10.0.0.2", os.urandom(n))
        packet = out.encapsulate(inner, 4)
        assert len(packet) == len(inner) + out.overhead(len(inner))
        assert len(packet) % 4 == 0  # RFC 4303 §2.4: ICV starts 4-byte aligned
        pt = k.plaintext(packet)
        assert len(pt) % align == 0
        pad_len = pt[-2]
        assert pad_len < align
        assert pt[-1] == 4
        assert pt[len(inner) : len(inner) + pad_len] == bytes(range(1, pad_len + 1))
        assert inb.decapsulate(packet) == (4, inner)
    v6 = ipv6(1, 2, b"hello")
    assert inb.decapsulate(out.encapsulate(v6, 41)) == (41, v6)
    assert out.packets == inb.packets == 71
    assert out.bytes == inb.bytes
    assert sum(inb.drops.values()) == 0


@pytest.mark.parametrize("transform", TRANSFORMS, ids=tid)
def test_sequence_numbers_start_at_one_and_iv_never_repeats(
    transform: tuple[str, str | None],
) -> None:
    k = Keys(*transform)
    out = k.out()
    ivs = set()
    for expected in range(1, 201):
        p = out.encapsulate(b"\x45" + bytes(19), 4)
        assert int.from_bytes(p[:4], "big") == SPI
        assert int.from_bytes(p[4:8], "big") == expected
        iv = p[8 : 8 + k.encr.iv_size]
        if k.encr.aead:
            assert iv == expected.to_bytes(8, "big")  # RFC 4106 §3.1 counter IV
        ivs.add(iv)
    assert len(ivs) == 200


@pytest.mark.parametrize("transform", [TRANSFORMS[0], TRANSFORMS[3]], ids=tid)
def test_sequence_number_exhaustion_32(transform: tuple[str, str | None]) -> None:
    k = Keys(*transform)
    out, inb = k.out(), k.inb()
    out.seq = MAX_SEQ_32 - 1
    inb.replay.update(MAX_SEQ_32 - 1)
    last = out.encapsulate(b"\x45" + bytes(19), 4)
    assert int.from_bytes(last[4:8], "big") == MAX_SEQ_32
    assert inb.decapsulate(last) is not None
    with pytest.raises(SequenceNumberExhausted) as err:
        out.encapsulate(b"\x45" + bytes(19), 4)
    assert err.value.spi == SPI and err.value.last_seq == MAX_SEQ_32
    assert not isinstance(err.value, ValueError)
    assert out.seq == MAX_SEQ_32  # no wrap to 0
    with pytest.raises(SequenceNumberExhausted):
        out.encapsulate(b"\x45" + bytes(19), 4)
    assert out.packets == 1


@pytest.mark.parametrize("transform", [TRANSFORMS[2], TRANSFORMS[4]], ids=tid)
def test_sequence_number_exhaustion_esn(transform: tuple[str, str | None]) -> None:
    k = Keys(*transform, esn=True)
    out, inb = k.out(), k.inb()
    # 2^32 is no limit with ESN.
    out.seq = MAX_SEQ_32
    p = out.encapsulate(b"\x45" + bytes(19), 4)
    assert int.from_bytes(p[4:8], "big") == 0  # low half wraps, high half is 1
    inb.replay.update(MAX_SEQ_32)
    assert inb.decapsulate(p) is not None
    out.seq = MAX_SEQ_64 - 1
    out.encapsulate(b"\x45" + bytes(19), 4)
    with pytest.raises(SequenceNumberExhausted):
        out.encapsulate(b"\x45" + bytes(19), 4)
    assert out.seq == MAX_SEQ_64


def test_batch_exhaustion_raises_before_sending() -> None:
    k = Keys("aes128gcm16", None)
    out = k.out()
    out.seq = MAX_SEQ_32 - 2
    with pytest.raises(SequenceNumberExhausted):
        out.encapsulate_batch([b"\x45" + bytes(19)] * 3)
    assert out.seq == MAX_SEQ_32 - 2 and out.packets == 0
    assert len(out.encapsulate_batch([b"\x45" + bytes(19)] * 2)) == 2


def test_batches() -> None:
    k = Keys("chacha20poly1305", None)
    out, inb = k.out(), k.inb()
    inners = [ipv4("10.0.0.1", "10.0.0.2", bytes([i]) * i) for i in range(10)]
    inners.append(ipv6(5, 6, b"v6"))
    packets = out.encapsulate_batch(inners)  # next header from the version nibble
    results = inb.decapsulate_batch([*packets, packets[0], b"junk"])
    assert results[:-2] == [(4, p) for p in inners[:-1]] + [(41, inners[-1])]
    assert results[-2:] == [None, None]
    assert inb.drops[DropReason.REPLAY] == 1 and inb.drops[DropReason.TOO_SHORT] == 1
    with pytest.raises(ValueError):
        out.encapsulate_batch([b"\x00" * 20])
    explicit = out.encapsulate_batch([b"\x00" * 20], next_header=4)
    assert inb.decapsulate(explicit[0]) == (4, b"\x00" * 20)


@pytest.mark.parametrize("transform", [TRANSFORMS[1], TRANSFORMS[5]], ids=tid)
def test_dummy_packet_dropped_silently(transform: tuple[str, str | None]) -> None:
    k = Keys(*transform)
    out, inb = k.out(), k.inb()
    assert inb.decapsulate(out.encapsulate(os.urandom(40), 59)) is None
    assert inb.drops[DropReason.DUMMY] == 1
    assert DropReason.DUMMY in NON_ERROR_REASONS
    errors = sum(v for r, v in inb.drops.items() if r not in NON_ERROR_REASONS)
    assert errors == 0
    assert inb.packets == 0
    inner = ipv4("1.2.3.4", "5.6.7.8")
    assert inb.decapsulate(out.encapsulate(inner, 4)) == (4, inner)


def test_selectors() -> None:
    k = Keys("aes256gcm16", None)
    out = k.out()
    inb = k.inb(
        src_selectors=(
            TrafficSelector.from_prefix("10.2.0.0/16"),
            TrafficSelector.from_prefix("fd00:2::/64"),
        ),
        dst_selectors=(
            TrafficSelector.from_prefix("10.1.0.0/16"),
            TrafficSelector.from_prefix("fd00:1::/64"),
        ),
    )
    ok = ipv4("10.2.3.4", "10.1.0.9", b"data")
    assert inb.decapsulate(out.encapsulate(ok, 4)) == (4, ok)
    for bad in (ipv4("10.3.0.1", "10.1.0.9"), ipv4("10.2.0.1", "10.9.0.9")):
        assert inb.decapsulate(out.encapsulate(bad, 4)) is None
    assert inb.drops[DropReason.OUTSIDE_SELECTORS] == 2
    src6 = (0xFD000002 << 96) | 7
    dst6 = (0xFD000001 << 96) | 8
    assert inb.decapsulate(out.encapsulate(ipv6(src6, dst6), 41)) is not None
    assert inb.decapsulate(out.encapsulate(ipv6(src6, src6), 41)) is None
    assert inb.drops[DropReason.OUTSIDE_SELECTORS] == 3
    # Next header and version nibble disagree, or truncated inner header.
    assert inb.decapsulate(out.encapsulate(ok, 41)) is None
    assert inb.decapsulate(out.encapsulate(ok[:19], 4)) is None
    assert inb.decapsulate(out.encapsulate(ok, 6)) is None  # not an IP tunnel payload
    assert inb.drops[DropReason.MALFORMED] == 3
    # Only one side configured.
    only_dst = k.inb(dst_selectors=(TrafficSelector.from_prefix("10.1.0.0/16"),))
    out2 = k.out()
    assert only_dst.decapsulate(out2.encapsulate(ipv4("8.8.8.8", "10.1.1.1"), 4)) is not None
    assert only_dst.decapsulate(out2.encapsulate(ipv4("8.8.8.8", "10.5.1.1"), 4)) is None


def test_constructor_validation() -> None:
    gcm, cbc, sha = ENCRYPTION["aes128gcm16"], ENCRYPTION["aes128"], INTEGRITY["sha256"]
    with pytest.raises(ValueError):
        OutboundEspSa(SPI, gcm, sha, bytes(20), bytes(32))  # AEAD + integrity
    with pytest.raises(ValueError):
        InboundEspSa(SPI, cbc, None, bytes(16))  # CBC without integrity
    with pytest.raises(ValueError):
        OutboundEspSa(0, gcm, None, bytes(20))
    with pytest.raises(ValueError):
        InboundEspSa(1 << 32, gcm, None, bytes(20))
    with pytest.raises(ValueError):
        OutboundEspSa(SPI, gcm, None, bytes(16))  # salt missing
    with pytest.raises(ValueError):
        InboundEspSa(SPI, cbc, sha, bytes(16), bytes(16))  # short HMAC key
    with pytest.raises(ValueError):
        InboundEspSa(SPI, gcm, None, bytes(20), replay_window=32)


def test_overhead_values() -> None:
    gcm = OutboundEspSa(SPI, ENCRYPTION["aes128gcm16"], None, bytes(20))
    # 8 header + 8 IV + (100+2 -> 104) + 16 tag - 100
    assert gcm.overhead(100) == 8 + 8 + 4 + 16
    cbc = OutboundEspSa(SPI, ENCRYPTION["aes256"], INTEGRITY["sha512"], bytes(32), bytes(64))
    # 8 header + 16 IV + (100+2 -> 112) + 32 ICV - 100
    assert cbc.overhead(100) == 8 + 16 + 12 + 32


def test_counters_and_reasons() -> None:
    counters = new_drop_counters()
    assert set(counters) == set(DropReason) and not any(counters.values())
    assert DropReason.BAD_ICV == "bad_icv"
    for name in ("BAD_ICV", "REPLAY", "TOO_SHORT", "BAD_PADDING", "UNKNOWN_SPI"):
        assert hasattr(DropReason, name)
    assert {"OUTSIDE_SELECTORS", "NO_SA", "MALFORMED", "DUMMY"} <= set(DropReason.__members__)


def test_inner_parsing() -> None:
    v4 = ipv4("192.0.2.1", "198.51.100.7")
    assert inner_addresses(v4, 4) == (4, 0xC0000201, 0xC6336407)
    assert inner_addresses(v4, 41) is None
    assert inner_addresses(v4[:19], 4) is None
    assert inner_addresses(b"\x44" + v4[1:], 4) is None  # IHL 4 < 5
    assert inner_addresses(b"\x46" + v4[1:], 4) is None  # IHL 6 but only 20 bytes
    v6 = ipv6(1 << 127, 3)
    assert inner_addresses(v6, 41) == (6, 1 << 127, 3)
    assert inner_addresses(v6[:39], 41) is None
    assert inner_addresses(v6, 4) is None
    assert inner_addresses(b"", 4) is None
    assert next_header_for(v4) == 4 and next_header_for(v6) == 41
    assert next_header_for(b"") is None and next_header_for(b"\x10") is None
