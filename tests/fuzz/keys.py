"""Real key sets for the fuzz targets, so fuzzed plaintext gets past the ICV.

An IKE SA key set is derived the way an IKE SA derives it (RFC 7296 §2.14:
prf+ over a fixed SKEYSEED, nonces and SPIs), one per transform family the
daemon negotiates (AES-GCM, ChaCha20-Poly1305, AES-CBC + HMAC-SHA2).  ESP SAs
use fixed keying material of the right length (RFC 4303; RFC 4106 §8.1 salt).

Sealing here is deterministic (the IV comes from the caller, not os.urandom),
so a fuzz input always produces the same datagram and a crash reproduces.
"""

from __future__ import annotations

import struct

from ipsecd.crypto.ciphers import Aead, CbcCipher, Hmac
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY, PRF, EncrAlgorithm, IntegAlgorithm
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.ike.keys import IkeKeys, derive_from_skeyseed
from ipsecd.ike.sk import SkKeys
from ipsecd.selectors import TrafficSelector

SPI_I = 0x0102030405060708
SPI_R = 0x1112131415161718
NONCE_I = bytes(range(32))
NONCE_R = bytes(range(32, 64))

# (encryption, integrity, prf) as an IKE proposal names them.
IKE_SUITES: tuple[tuple[str, str | None, str], ...] = (
    ("aes256gcm16", None, "prfsha256"),
    ("aes128", "sha256", "prfsha256"),
    ("chacha20poly1305", None, "prfsha384"),
    ("aes256", "sha384", "prfsha512"),
)


def _ike_keys(encr: str, integ: str | None, prf: str) -> IkeKeys:
    return derive_from_skeyseed(
        PRF[prf],
        ENCRYPTION[encr],
        INTEGRITY[integ] if integ else None,
        b"fuzz SKEYSEED " + encr.encode(),
        NONCE_I,
        NONCE_R,
        SPI_I,
        SPI_R,
    )


IKE_KEYSETS: tuple[IkeKeys, ...] = tuple(_ike_keys(*suite) for suite in IKE_SUITES)


def seal_sk(keys: SkKeys, prefix: bytes, plaintext: bytes, iv_seed: int = 0) -> bytes:
    """``IV | ciphertext | ICV`` like :func:`ipsecd.ike.sk.seal`, with a fixed IV.

    ``plaintext`` must already be padded (a block multiple for CBC).
    """
    iv = bytes((iv_seed + i) & 0xFF for i in range(keys.iv_len))
    if keys.encr.aead:
        return iv + Aead(keys.encr, keys.encr_key).seal(iv, plaintext, prefix)
    assert keys.integ is not None
    ciphertext = CbcCipher(keys.encr, keys.encr_key).encrypt(iv, plaintext)
    return iv + ciphertext + Hmac(keys.integ, keys.integ_key).compute(prefix, iv, ciphertext)


def ike_header(exchange: int, flags: int, message_id: int, next_payload: int, length: int) -> bytes:
    """The 28-byte IKE header (RFC 7296 §3.1) of the harness's IKE SA."""
    return struct.pack(
        "!QQBBBBII", SPI_I, SPI_R, next_payload, 0x20, exchange, flags, message_id, length
    )


# ---- ESP ---------------------------------------------------------------------------

ESP_SPI = 0xC0FFEE01
ESP_SUITES: tuple[tuple[str, str | None], ...] = (
    ("aes128gcm16", None),
    ("chacha20poly1305", None),
    ("aes128", "sha256"),
    ("aes256gcm16", None),
)
# What the SA's traffic selectors allow when a target asks for them (RFC 4301 §5.2).
ESP_SRC_TS = (TrafficSelector.from_prefix("10.2.0.0/24"), TrafficSelector.from_prefix("fd02::/64"))
ESP_DST_TS = (TrafficSelector.from_prefix("10.1.0.0/24"), TrafficSelector.from_prefix("fd01::/64"))


def esp_algorithms(suite: int) -> tuple[EncrAlgorithm, IntegAlgorithm | None, bytes, bytes]:
    encr_name, integ_name = ESP_SUITES[suite % len(ESP_SUITES)]
    encr = ENCRYPTION[encr_name]
    integ = INTEGRITY[integ_name] if integ_name else None
    encr_key = bytes((0x40 + i) & 0xFF for i in range(encr.keymat_len))
    integ_key = bytes((0x80 + i) & 0xFF for i in range(integ.key_len)) if integ else b""
    return encr, integ, encr_key, integ_key


def inbound_esp(suite: int, esn: bool, selectors: bool) -> InboundEspSa:
    encr, integ, encr_key, integ_key = esp_algorithms(suite)
    return InboundEspSa(
        ESP_SPI,
        encr,
        integ,
        encr_key,
        integ_key,
        esn=esn,
        src_selectors=ESP_SRC_TS if selectors else (),
        dst_selectors=ESP_DST_TS if selectors else (),
    )


def outbound_esp(suite: int, esn: bool) -> OutboundEspSa:
    encr, integ, encr_key, integ_key = esp_algorithms(suite)
    return OutboundEspSa(ESP_SPI, encr, integ, encr_key, integ_key, esn=esn)


def seal_esp(suite: int, esn: bool, seq: int, plaintext: bytes) -> bytes:
    """An ESP packet (RFC 4303 §2) carrying ``plaintext`` as given: the caller chose
    the padding, pad length and next header, so the receiver's trailer checks see
    whatever the fuzzer wrote.  For CBC the plaintext is cut to whole blocks."""
    encr, integ, encr_key, integ_key = esp_algorithms(suite)
    header = struct.pack("!II", ESP_SPI, seq & 0xFFFFFFFF)
    if encr.aead:
        iv = struct.pack("!Q", seq)
        aad = struct.pack("!III", ESP_SPI, seq >> 32, seq & 0xFFFFFFFF) if esn else header
        return header + iv + Aead(encr, encr_key).seal(iv, plaintext, aad)
    assert integ is not None
    plaintext = plaintext[: len(plaintext) - len(plaintext) % 16]
    iv = struct.pack("!QQ", seq, ~seq & 0xFFFFFFFFFFFFFFFF)
    ciphertext = CbcCipher(encr, encr_key).encrypt(iv, plaintext)
    extra = (struct.pack("!I", seq >> 32),) if esn else ()
    icv = Hmac(integ, integ_key).compute(header, iv, ciphertext, *extra)
    return header + iv + ciphertext + icv
