"""Signature authentication: the AUTH payload data for certificates (RFC 7296 §2.15, RFC 7427).

Methods:

* 14, Digital Signature (RFC 7427 §3): AUTH data = one octet ASN.1 length |
  AlgorithmIdentifier (DER) | signature.  RSA PKCS#1 v1.5 with SHA-256/384/512,
  RSASSA-PSS (SHA-256/384/512, MGF1 with the same hash, salt = hash length),
  ECDSA with SHA-256/384/512 (signature DER ``ECDSA-Sig-Value``), Ed25519
  (RFC 8420, "Identity" hash: the signed octets themselves).
* 1, RSA Digital Signature (RFC 7296 §3.8): PKCS#1 v1.5 with SHA-1.  Verified;
  produced only with ``allow_sha1=True`` (for peers without RFC 7427).
* 9/10/11, ECDSA with SHA-256 on P-256 / SHA-384 on P-384 / SHA-512 on P-521
  (RFC 4754): signature r | s, fixed length.

SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4, notify 16431) carries 2-octet hash
ids; a peer that sent it accepts method 14 with one of those hashes.  Its codec is
:mod:`ipsecd.ike.hash_algorithms` (every IKE_SA_INIT has it; this module loads with a
certificate), re-exported here.

The signed octets are RFC 7296 §2.15's followed by RFC 9242's IntAuth when
IKE_INTERMEDIATE exchanges took place: :func:`ipsecd.ike.auth.signed_octets`, the
same octets PSK authentication MACs, re-exported here as :func:`signed_octets`.
With PPK (RFC 8784) pass the mixed keys, or the unmixed ones for NO_PPK_AUTH.

API::

    encode_hash_algorithms(algs) -> bytes / decode_hash_algorithms(data) -> tuple[int, ...]
    sign(octets, key, peer_hash_algorithms, rsa_pss=False, allow_sha1=False) -> SignedAuth
    verify(octets, auth_method, auth_data, certificate, accept_sha1=True) -> VerifiedAuth
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ipsecd.ike.auth import signed_octets  # RFC 7296 §2.15 | IntAuth, shared with PSK
from ipsecd.ike.constants import AuthMethod
from ipsecd.ike.hash_algorithms import (  # the notify's codec, re-exported
    SUPPORTED_HASHES,
    HashAlgorithm,
    decode_hash_algorithms,
    encode_hash_algorithms,
)

if TYPE_CHECKING:  # certificates are only passed in: cryptography.x509 costs 2 MB (issue 17)
    from cryptography import x509

__all__ = [
    "HashAlgorithm",
    "SUPPORTED_HASHES",
    "SignatureAuthError",
    "SignedAuth",
    "VerifiedAuth",
    "encode_hash_algorithms",
    "decode_hash_algorithms",
    "signed_octets",
    "sign",
    "verify",
    "ALGORITHM_IDENTIFIERS",
]


_HASH_CLASSES: dict[
    HashAlgorithm, type[hashes.SHA1 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]
] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_HASH_LEN = {HashAlgorithm.SHA2_256: 32, HashAlgorithm.SHA2_384: 48, HashAlgorithm.SHA2_512: 64}


class SignatureAuthError(ValueError):
    """A signature that cannot be made or does not verify; the message says why in plain words.

    The IKE layer answers AUTHENTICATION_FAILED.
    """


@dataclass(frozen=True)
class SignedAuth:
    """AUTH payload contents we send."""

    method: int
    data: bytes
    algorithm: str  # for logs: "ecdsa-with-SHA256", "RSASSA-PSS SHA-384", ...


@dataclass(frozen=True)
class VerifiedAuth:
    """A peer's AUTH that verified, and with what."""

    method: int
    algorithm: str
    weak: bool = False  # SHA-1: log a warning


# --- DER for AlgorithmIdentifiers (RFC 7427 Appendix A) -------------------------------


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


def _oid(dotted_hex: str) -> bytes:
    return _tlv(0x06, bytes.fromhex(dotted_hex))


_NULL = b"\x05\x00"
_OID_RSA_PSS = "2a864886f70d01010a"  # 1.2.840.113549.1.1.10
_OID_MGF1 = "2a864886f70d010108"  # 1.2.840.113549.1.1.8
_OID_HASH = {
    HashAlgorithm.SHA2_256: "608648016503040201",
    HashAlgorithm.SHA2_384: "608648016503040202",
    HashAlgorithm.SHA2_512: "608648016503040203",
}


def _pss_identifier(h: HashAlgorithm, with_null: bool) -> bytes:
    hash_id = _tlv(0x30, _oid(_OID_HASH[h]) + (_NULL if with_null else b""))
    params = (
        _tlv(0xA0, hash_id)
        + _tlv(0xA1, _tlv(0x30, _oid(_OID_MGF1) + hash_id))
        + _tlv(0xA2, _tlv(0x02, bytes([_HASH_LEN[h]])))
    )
    return _tlv(0x30, _oid(_OID_RSA_PSS) + _tlv(0x30, params))


@dataclass(frozen=True)
class _Alg:
    name: str
    key: str  # "rsa", "rsa-pss", "ecdsa", "ed25519"
    hash: HashAlgorithm


# The AlgorithmIdentifiers we send (first of each) and accept.
ALGORITHM_IDENTIFIERS: dict[bytes, _Alg] = {
    bytes.fromhex("300d06092a864886f70d0101050500"): _Alg(
        "sha1WithRSAEncryption", "rsa", HashAlgorithm.SHA1
    ),
    bytes.fromhex("300d06092a864886f70d01010b0500"): _Alg(
        "sha256WithRSAEncryption", "rsa", HashAlgorithm.SHA2_256
    ),
    bytes.fromhex("300d06092a864886f70d01010c0500"): _Alg(
        "sha384WithRSAEncryption", "rsa", HashAlgorithm.SHA2_384
    ),
    bytes.fromhex("300d06092a864886f70d01010d0500"): _Alg(
        "sha512WithRSAEncryption", "rsa", HashAlgorithm.SHA2_512
    ),
    bytes.fromhex("300a06082a8648ce3d040302"): _Alg(
        "ecdsa-with-SHA256", "ecdsa", HashAlgorithm.SHA2_256
    ),
    bytes.fromhex("300a06082a8648ce3d040303"): _Alg(
        "ecdsa-with-SHA384", "ecdsa", HashAlgorithm.SHA2_384
    ),
    bytes.fromhex("300a06082a8648ce3d040304"): _Alg(
        "ecdsa-with-SHA512", "ecdsa", HashAlgorithm.SHA2_512
    ),
    bytes.fromhex("300506032b6570"): _Alg("Ed25519", "ed25519", HashAlgorithm.IDENTITY),
}
for _h in _HASH_LEN:
    for _null in (True, False):
        ALGORITHM_IDENTIFIERS[_pss_identifier(_h, _null)] = _Alg(
            f"RSASSA-PSS SHA-{_HASH_LEN[_h] * 8}", "rsa-pss", _h
        )


def _identifier_for(key: str, h: HashAlgorithm) -> bytes:
    if key == "rsa-pss":
        return _pss_identifier(h, with_null=True)
    return next(der for der, a in ALGORITHM_IDENTIFIERS.items() if a.key == key and a.hash == h)


# --- signing ------------------------------------------------------------------------


def _key_kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    raise SignatureAuthError(f"{type(key).__name__} keys cannot authenticate IKE")


_CLASSIC_ECDSA = {  # RFC 4754: curve -> (method, hash)
    "secp256r1": (AuthMethod.ECDSA_SHA256_P256, HashAlgorithm.SHA2_256),
    "secp384r1": (AuthMethod.ECDSA_SHA384_P384, HashAlgorithm.SHA2_384),
    "secp521r1": (AuthMethod.ECDSA_SHA512_P521, HashAlgorithm.SHA2_512),
}


def _ecdsa_hash_preference(curve: str) -> list[HashAlgorithm]:
    own = _CLASSIC_ECDSA[curve][1]
    return [own] + [h for h in _HASH_LEN if h != own]


def sign(
    octets: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    peer_hash_algorithms: Iterable[int] | None,
    *,
    rsa_pss: bool = False,
    allow_sha1: bool = False,
) -> SignedAuth:
    """Our AUTH payload for ``octets``.

    ``peer_hash_algorithms`` is the peer's SIGNATURE_HASH_ALGORITHMS list, or
    None if it sent none (then only the classic methods 1, 9, 10, 11 remain).
    """
    kind = _key_kind(key)
    if peer_hash_algorithms is None:
        return _sign_classic(octets, key, kind, allow_sha1)
    peer = set(peer_hash_algorithms)
    if kind == "ed25519":
        if HashAlgorithm.IDENTITY not in peer:
            raise SignatureAuthError(
                "our key is Ed25519, which needs the 'Identity' hash (RFC 8420), and the peer's"
                f" SIGNATURE_HASH_ALGORITHMS ({_names(peer)}) does not include it"
            )
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return _method14(_identifier_for("ed25519", HashAlgorithm.IDENTITY), key.sign(octets))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        prefs = _ecdsa_hash_preference(key.curve.name)
    else:
        prefs = list(_HASH_LEN)
    chosen = next((h for h in prefs if h in peer), None)
    if chosen is None:
        raise SignatureAuthError(
            f"the peer's SIGNATURE_HASH_ALGORITHMS ({_names(peer)}) has none of the hashes we"
            f" sign with ({_names(prefs)})"
        )
    hash_obj = _HASH_CLASSES[chosen]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(octets, ec.ECDSA(hash_obj))  # DER ECDSA-Sig-Value
        return _method14(_identifier_for("ecdsa", chosen), sig)
    assert isinstance(key, rsa.RSAPrivateKey)
    if rsa_pss:
        pss = padding.PSS(padding.MGF1(hash_obj), _HASH_LEN[chosen])
        return _method14(_identifier_for("rsa-pss", chosen), key.sign(octets, pss, hash_obj))
    return _method14(_identifier_for("rsa", chosen), key.sign(octets, padding.PKCS1v15(), hash_obj))


def _method14(identifier: bytes, signature: bytes) -> SignedAuth:
    alg = ALGORITHM_IDENTIFIERS[identifier]
    return SignedAuth(
        AuthMethod.DIGITAL_SIGNATURE, bytes([len(identifier)]) + identifier + signature, alg.name
    )


def _sign_classic(octets: bytes, key: object, kind: str, allow_sha1: bool) -> SignedAuth:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method, h = _CLASSIC_ECDSA[key.curve.name]
        der = key.sign(octets, ec.ECDSA(_HASH_CLASSES[h]()))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return SignedAuth(method, r.to_bytes(size, "big") + s.to_bytes(size, "big"), method.name)
    if isinstance(key, rsa.RSAPrivateKey):
        if not allow_sha1:
            raise SignatureAuthError(
                "the peer sent no SIGNATURE_HASH_ALGORITHMS (RFC 7427), so an RSA key could only"
                " sign with method 1, RSA with SHA-1, which is refused; let the peer support"
                " RFC 7427 or allow SHA-1 signatures for this peer"
            )
        sig = key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
        return SignedAuth(AuthMethod.RSA_DIGITAL_SIGNATURE, sig, "RSA PKCS#1 v1.5 SHA-1")
    raise SignatureAuthError(
        f"the peer sent no SIGNATURE_HASH_ALGORITHMS (RFC 7427), and a {kind} key has no"
        " classic IKEv2 authentication method"
    )


def _names(algs: Iterable[int]) -> str:
    out = []
    for a in algs:
        try:
            out.append(HashAlgorithm(a).name)
        except ValueError:
            out.append(str(a))
    return ", ".join(sorted(out)) or "none"


# --- verification -------------------------------------------------------------------

_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_PUBLIC_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)


def verify(
    octets: bytes,
    auth_method: int,
    auth_data: bytes,
    certificate: x509.Certificate | _PublicKey,
    *,
    accept_sha1: bool = True,
) -> VerifiedAuth:
    """Check the peer's AUTH payload against ``octets`` with the key of ``certificate``.

    Raises :class:`SignatureAuthError` saying what did not fit: the method, the
    algorithm against the certificate's key type, or the signature itself.
    """
    public = certificate if isinstance(certificate, _PUBLIC_KEYS) else certificate.public_key()
    if not isinstance(
        public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    ):
        raise SignatureAuthError(
            f"the peer's certificate holds a {type(public).__name__}, which cannot sign IKE AUTH"
        )
    kind = _key_kind(public)
    data = bytes(auth_data)
    try:
        if auth_method == AuthMethod.DIGITAL_SIGNATURE:
            return _verify14(octets, data, public, kind, accept_sha1)
        if auth_method == AuthMethod.RSA_DIGITAL_SIGNATURE:
            if not isinstance(public, rsa.RSAPublicKey):
                raise SignatureAuthError(
                    f"peer used method 1 (RSA signature) but its certificate key is {_kd(public)}"
                )
            if not accept_sha1:
                raise SignatureAuthError(
                    "peer signed with method 1 (RSA with SHA-1), which this peer's configuration"
                    " refuses"
                )
            public.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
            return VerifiedAuth(auth_method, "RSA PKCS#1 v1.5 SHA-1", weak=True)
        classic: dict[int, tuple[str, HashAlgorithm]] = {
            int(m): (curve, h) for curve, (m, h) in _CLASSIC_ECDSA.items()
        }
        if auth_method in classic:
            curve, h = classic[auth_method]
            method_name = AuthMethod(auth_method).name
            if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != curve:
                raise SignatureAuthError(
                    f"peer used method {auth_method} ({method_name}) but its certificate key is"
                    f" {_kd(public)}"
                )
            size = (public.curve.key_size + 7) // 8
            if len(data) != 2 * size:
                raise SignatureAuthError(
                    f"peer's {method_name} signature is {len(data)} bytes, expected {2 * size}"
                    " (r | s, RFC 4754)"
                )
            der = encode_dss_signature(
                int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big")
            )
            public.verify(der, octets, ec.ECDSA(_HASH_CLASSES[h]()))
            return VerifiedAuth(auth_method, method_name)
    except InvalidSignature:
        raise SignatureAuthError(
            f"peer's AUTH signature (method {auth_method}) does not verify with the key of its"
            " certificate: wrong key, or the signed IKE_SA_INIT/ID data differ"
        ) from None
    try:
        name = AuthMethod(auth_method).name
    except ValueError:
        name = ""
    raise SignatureAuthError(
        f"peer used authentication method {auth_method}{f' ({name})' if name else ''}, which is"
        " not a certificate signature method ipsecd accepts (1, 9, 10, 11, 14)"
    )


def _kd(public: object) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA-{public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ECDSA {public.curve.name}"
    return "Ed25519"


def _verify14(
    octets: bytes, data: bytes, public: _PublicKey, kind: str, accept_sha1: bool
) -> VerifiedAuth:
    if not data or len(data) < 1 + data[0]:
        raise SignatureAuthError("peer's Digital Signature AUTH data is truncated (RFC 7427 §3)")
    identifier, signature = data[1 : 1 + data[0]], data[1 + data[0] :]
    alg = ALGORITHM_IDENTIFIERS.get(identifier)
    if alg is None:
        raise SignatureAuthError(
            "peer signed with an AlgorithmIdentifier ipsecd does not support"
            f" ({identifier.hex()}); supported: "
            + ", ".join(dict.fromkeys(a.name for a in ALGORITHM_IDENTIFIERS.values()))
        )
    if alg.hash == HashAlgorithm.SHA1 and not accept_sha1:
        raise SignatureAuthError(f"peer signed with {alg.name}; SHA-1 is refused for this peer")
    wanted = "rsa" if alg.key == "rsa-pss" else alg.key
    if wanted != kind:
        raise SignatureAuthError(
            f"peer signed with {alg.name} but its certificate key is {_kd(public)}"
        )
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, octets)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        try:
            decode_dss_signature(signature)
        except ValueError:
            raise SignatureAuthError(
                f"peer's {alg.name} signature is not a DER ECDSA-Sig-Value (RFC 7427 §3)"
            ) from None
        public.verify(signature, octets, ec.ECDSA(_HASH_CLASSES[alg.hash]()))
    else:
        hash_obj = _HASH_CLASSES[alg.hash]()
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(hash_obj), _HASH_LEN[alg.hash])
            if alg.key == "rsa-pss"
            else padding.PKCS1v15()
        )
        public.verify(signature, octets, pad, hash_obj)
    return VerifiedAuth(AuthMethod.DIGITAL_SIGNATURE, alg.name, weak=alg.hash == HashAlgorithm.SHA1)
