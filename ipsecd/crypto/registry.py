"""Transform registry: IANA transform ids <-> algorithm descriptions.

One table per transform type (RFC 7296 §3.3.2, IANA "IKEv2 Transform Type N
Values").  The names are the strongSwan proposal keywords operators already
know, so a config token maps to exactly one entry here.  Nothing in this module
does crypto; the cipher, PRF and key-exchange modules build objects from these
descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class TransformType(IntEnum):
    """RFC 7296 §3.3.2 transform types."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    KE = 4  # "D-H" in RFC 7296, renamed "Key Exchange Method" by RFC 9370
    ESN = 5
    ADDKE1 = 6  # RFC 9370 §2.2.1: Additional Key Exchange 1..7
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


# RFC 9370 §2.2.1: ADDKEn is transform type 5 + n, n = 1..7.
ADDITIONAL_KE_TYPES: tuple[TransformType, ...] = tuple(TransformType(5 + n) for n in range(1, 8))


class EncrId(IntEnum):
    ENCR_AES_CBC = 12
    ENCR_AES_GCM_16 = 20
    ENCR_CHACHA20_POLY1305 = 28


class PrfId(IntEnum):
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    NONE = 0
    AUTH_HMAC_SHA2_256_128 = 12
    AUTH_HMAC_SHA2_384_192 = 13
    AUTH_HMAC_SHA2_512_256 = 14


class KeId(IntEnum):
    NONE = 0
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    CURVE25519 = 31
    ML_KEM_512 = 35  # draft-ietf-ipsecme-ikev2-mlkem; not offered: see ML_KEM_UNAVAILABLE
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


# Transform attribute type for the key length of variable-length ciphers (RFC 7296 §3.3.5).
ATTR_KEY_LENGTH = 14


@dataclass(frozen=True)
class EncrAlgorithm:
    """An encryption transform, AEAD or not.

    ``key_len`` is the cipher key in bytes; ``salt_len`` the extra bytes of
    keying material an AEAD takes as the implicit nonce part (RFC 4106 §8.1,
    RFC 7634 §2), so ``keymat_len = key_len + salt_len`` bytes come from prf+.
    """

    name: str
    transform_id: EncrId
    key_bits: int
    aead: bool
    block_size: int  # padding unit on the wire (RFC 4303 §2.4)
    iv_size: int  # explicit IV carried in each packet
    icv_size: int  # AEAD tag size (0 for non-AEAD: the INTEG transform supplies it)
    salt_len: int = 0
    key_length_attribute: bool = True  # AES carries a Key Length attribute; ChaCha20 must not

    @property
    def key_len(self) -> int:
        return self.key_bits // 8

    @property
    def keymat_len(self) -> int:
        return self.key_len + self.salt_len


@dataclass(frozen=True)
class IntegAlgorithm:
    """An integrity transform: HMAC with a truncated output (RFC 4868)."""

    name: str
    transform_id: IntegId
    hash_name: str  # name of the cryptography hash class: SHA256, SHA384, SHA512
    key_len: int
    icv_len: int


@dataclass(frozen=True)
class PrfAlgorithm:
    """A pseudo-random function: HMAC with the full hash output (RFC 4868 §2.1.2)."""

    name: str
    transform_id: PrfId
    hash_name: str
    key_len: int  # preferred key size (= output size)
    output_len: int


@dataclass(frozen=True)
class KeAlgorithm:
    """A key exchange method (RFC 7296 §3.3.2 D-H groups, RFC 8031 Curve25519)."""

    name: str
    transform_id: KeId
    kind: str  # "modp", "ecp" or "x25519"
    public_len: int  # bytes of the KE payload's key exchange data


ENCRYPTION: dict[str, EncrAlgorithm] = {
    a.name: a
    for a in (
        EncrAlgorithm("aes128", EncrId.ENCR_AES_CBC, 128, False, 16, 16, 0),
        EncrAlgorithm("aes256", EncrId.ENCR_AES_CBC, 256, False, 16, 16, 0),
        EncrAlgorithm("aes128gcm16", EncrId.ENCR_AES_GCM_16, 128, True, 4, 8, 16, 4),
        EncrAlgorithm("aes256gcm16", EncrId.ENCR_AES_GCM_16, 256, True, 4, 8, 16, 4),
        EncrAlgorithm(
            "chacha20poly1305",
            EncrId.ENCR_CHACHA20_POLY1305,
            256,
            True,
            4,
            8,
            16,
            4,
            key_length_attribute=False,
        ),
    )
}

INTEGRITY: dict[str, IntegAlgorithm] = {
    a.name: a
    for a in (
        IntegAlgorithm("sha256", IntegId.AUTH_HMAC_SHA2_256_128, "SHA256", 32, 16),
        IntegAlgorithm("sha384", IntegId.AUTH_HMAC_SHA2_384_192, "SHA384", 48, 24),
        IntegAlgorithm("sha512", IntegId.AUTH_HMAC_SHA2_512_256, "SHA512", 64, 32),
    )
}

PRF: dict[str, PrfAlgorithm] = {
    a.name: a
    for a in (
        PrfAlgorithm("prfsha256", PrfId.PRF_HMAC_SHA2_256, "SHA256", 32, 32),
        PrfAlgorithm("prfsha384", PrfId.PRF_HMAC_SHA2_384, "SHA384", 48, 48),
        PrfAlgorithm("prfsha512", PrfId.PRF_HMAC_SHA2_512, "SHA512", 64, 64),
    )
}

KEY_EXCHANGE: dict[str, KeAlgorithm] = {
    a.name: a
    for a in (
        KeAlgorithm("modp2048", KeId.MODP_2048, "modp", 256),
        KeAlgorithm("modp3072", KeId.MODP_3072, "modp", 384),
        KeAlgorithm("modp4096", KeId.MODP_4096, "modp", 512),
        KeAlgorithm("ecp256", KeId.ECP_256, "ecp", 64),
        KeAlgorithm("ecp384", KeId.ECP_384, "ecp", 96),
        KeAlgorithm("x25519", KeId.CURVE25519, "x25519", 32),
    )
}

# ML-KEM (FIPS 203) for RFC 9370 additional key exchanges (draft-ietf-ipsecme-ikev2-mlkem).
# ``public_len`` is the initiator's encapsulation key; the responder sends a ciphertext
# whose length ``ipsecd.crypto.mlkem`` checks.  Only as ``keN_`` in proposals for now.
ML_KEM: dict[str, KeAlgorithm] = {
    a.name: a
    for a in (
        KeAlgorithm("mlkem768", KeId.ML_KEM_768, "mlkem", 1184),
        KeAlgorithm("mlkem1024", KeId.ML_KEM_1024, "mlkem", 1568),
    )
}

# Known names we refuse, with the reason an operator reads.
ML_KEM_UNAVAILABLE: dict[str, str] = {
    "mlkem512": "ML-KEM-512 is not available: the cryptography library ipsecd uses implements"
    " ML-KEM-768 and ML-KEM-1024 only (use mlkem768 or mlkem1024)",
}

# RFC 9370 §2.2.1: "NONE" in an ADDKE transform type makes that exchange optional.
ADDITIONAL_KE_NONE = KeAlgorithm("none", KeId.NONE, "none", 0)

# strongSwan spellings that mean the same transform.
ALIASES: dict[str, str] = {
    "aes128gcm128": "aes128gcm16",
    "aes256gcm128": "aes256gcm16",
    "chacha20poly1305": "chacha20poly1305",
    "sha2_256": "sha256",
    "sha2_384": "sha384",
    "sha2_512": "sha512",
    "prfsha2_256": "prfsha256",
    "prfsha2_384": "prfsha384",
    "prfsha2_512": "prfsha512",
    "curve25519": "x25519",
}

# Integrity name -> the PRF strongSwan derives from it when a proposal names no PRF.
PRF_FOR_INTEG: dict[str, str] = {
    "sha256": "prfsha256",
    "sha384": "prfsha384",
    "sha512": "prfsha512",
}


def encr_by_id(transform_id: int, key_bits: int | None) -> EncrAlgorithm | None:
    """Find the encryption algorithm for a received transform (id + Key Length attribute)."""
    for alg in ENCRYPTION.values():
        if alg.transform_id != transform_id:
            continue
        if not alg.key_length_attribute:
            if key_bits is None:
                return alg
            continue
        if key_bits == alg.key_bits:
            return alg
    return None


def integ_by_id(transform_id: int) -> IntegAlgorithm | None:
    return next((a for a in INTEGRITY.values() if a.transform_id == transform_id), None)


def prf_by_id(transform_id: int) -> PrfAlgorithm | None:
    return next((a for a in PRF.values() if a.transform_id == transform_id), None)


def ke_by_id(transform_id: int) -> KeAlgorithm | None:
    return next((a for a in KEY_EXCHANGE.values() if a.transform_id == transform_id), None)


def additional_ke_by_id(transform_id: int) -> KeAlgorithm | None:
    """The algorithm of a received ADDKEn transform: a KE group, ML-KEM or NONE (RFC 9370)."""
    if transform_id == KeId.NONE:
        return ADDITIONAL_KE_NONE
    return ke_by_id(transform_id) or next(
        (a for a in ML_KEM.values() if a.transform_id == transform_id), None
    )


# ---- names of every IANA transform, supported or not (logs, NO_PROPOSAL_CHOSEN) ------------
#
# From the IANA registry "Internet Key Exchange Version 2 (IKEv2) Parameters", Transform
# Types 1-5 (RFC 7296 §3.3.2; type 4 renamed by RFC 9370, type 5 by RFC 9827).  A name is
# strongSwan's proposal keyword where strongSwan has one (what an operator writes in
# swanctl.conf and ipsecd.yaml alike), else the IANA name in lower case without its type
# prefix (ENCR_, PRF_, AUTH_).  ``{bits}`` stands for the Key Length attribute.

TRANSFORM_TYPE_NAMES: dict[int, str] = {
    TransformType.ENCR: "ENCR",
    TransformType.PRF: "PRF",
    TransformType.INTEG: "INTEG",
    TransformType.KE: "KE",
    TransformType.ESN: "ESN",
    **{t: f"ADDKE{t - 5}" for t in ADDITIONAL_KE_TYPES},
    13: "KWA",  # Key Wrap Algorithm (G-IKEv2)
    14: "GCAUTH",  # Group Controller Authentication Method (G-IKEv2)
}

ENCR_NAMES: dict[int, str] = {
    1: "des_iv64",
    2: "des",
    3: "3des",
    4: "rc5",
    5: "idea",
    6: "cast128",
    7: "blowfish{bits}",
    8: "3idea",
    9: "des_iv32",
    11: "null",
    12: "aes{bits}",
    13: "aes{bits}ctr",
    14: "aes{bits}ccm8",
    15: "aes{bits}ccm12",
    16: "aes{bits}ccm16",
    18: "aes{bits}gcm8",
    19: "aes{bits}gcm12",
    20: "aes{bits}gcm16",
    21: "aes{bits}gmac",
    23: "camellia{bits}",
    24: "camellia{bits}ctr",
    25: "camellia{bits}ccm8",
    26: "camellia{bits}ccm12",
    27: "camellia{bits}ccm16",
    28: "chacha20poly1305",
    29: "aes_ccm_8_iiv",
    30: "aes_gcm_16_iiv",
    31: "chacha20_poly1305_iiv",
    32: "kuznyechik_mgm_ktree",
    33: "magma_mgm_ktree",
    34: "kuznyechik_mgm_mac_ktree",
    35: "magma_mgm_mac_ktree",
}

PRF_NAMES: dict[int, str] = {
    1: "prfmd5",
    2: "prfsha1",
    3: "hmac_tiger",
    4: "prfaesxcbc",
    5: "prfsha256",
    6: "prfsha384",
    7: "prfsha512",
    8: "prfaescmac",
    9: "hmac_streebog_512",
}

INTEG_NAMES: dict[int, str] = {
    0: "none",
    1: "md5",
    2: "sha1",
    3: "des_mac",
    4: "kpdk_md5",
    5: "aesxcbc",
    6: "md5_128",
    7: "sha1_160",
    8: "aescmac",
    9: "aes_128_gmac",
    10: "aes_192_gmac",
    11: "aes_256_gmac",
    12: "sha256",
    13: "sha384",
    14: "sha512",
}

KE_NAMES: dict[int, str] = {
    0: "none",
    1: "modp768",
    2: "modp1024",
    5: "modp1536",
    14: "modp2048",
    15: "modp3072",
    16: "modp4096",
    17: "modp6144",
    18: "modp8192",
    19: "ecp256",
    20: "ecp384",
    21: "ecp521",
    22: "modp1024s160",
    23: "modp2048s224",
    24: "modp2048s256",
    25: "ecp192",
    26: "ecp224",
    27: "ecp224bp",
    28: "ecp256bp",
    29: "ecp384bp",
    30: "ecp512bp",
    31: "x25519",
    32: "x448",
    33: "gost3410_2012_256",
    34: "gost3410_2012_512",
    35: "mlkem512",
    36: "mlkem768",
    37: "mlkem1024",
}

ESN_NAMES: dict[int, str] = {0: "noesn", 1: "esn"}

_NAMES_BY_TYPE: dict[int, dict[int, str]] = {
    TransformType.ENCR: ENCR_NAMES,
    TransformType.PRF: PRF_NAMES,
    TransformType.INTEG: INTEG_NAMES,
    TransformType.KE: KE_NAMES,
    TransformType.ESN: ESN_NAMES,
    **{t: KE_NAMES for t in ADDITIONAL_KE_TYPES},  # RFC 9370 §2.2.1: the KE registry
}


def transform_name(transform_type: int, transform_id: int, key_bits: int | None = None) -> str:
    """The name of any received transform, supported or not: ``sha1``, ``aes192ccm16``.

    ``key_bits`` is the Key Length attribute (RFC 7296 §3.3.5).  A cipher that needs one
    but came without shows ``(no key length)``; a Key Length on a cipher that takes none
    is appended as ``/bits``.  Ids IANA has not assigned keep the form ``ENCR#1024``.
    """
    template = _NAMES_BY_TYPE.get(transform_type, {}).get(transform_id)
    if template is None:
        label = TRANSFORM_TYPE_NAMES.get(transform_type, f"TYPE{transform_type}")
        return f"{label}#{transform_id}" + (f"/{key_bits}" if key_bits is not None else "")
    if "{bits}" in template:
        if key_bits is None:
            return template.format(bits="") + "(no key length)"
        return template.format(bits=key_bits)
    return template + (f"/{key_bits}" if key_bits is not None else "")
