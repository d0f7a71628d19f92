"""Key schedule of additional key exchanges, IKE_INTERMEDIATE authentication and PPK.

RFC 9370 §2.2.2, after the n-th additional key exchange in IKE_INTERMEDIATE
(Ni, Nr, SPIi, SPIr from IKE_SA_INIT; SK(n) the n-th shared secret)::

    SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)
    {SK_d(n) | SK_ai(n) | SK_ar(n) | SK_ei(n) | SK_er(n) | SK_pi(n) | SK_pr(n)}
                = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)

This is RFC 7296 §2.18's rekey formula with SK(n) in the place of g^ir, so it
reuses :func:`ipsecd.ike.keys.rekey_skeyseed` and ``derive_from_skeyseed``.
RFC 9370 §2.2.4, CREATE_CHILD_SA with IKE_FOLLOWUP_KE (SK(0) the KE payload's
secret of the CREATE_CHILD_SA exchange, Ni/Nr its nonces; RFC 7296's formulas with
the additional secrets after the nonces, so that n = 0 is RFC 7296 unchanged)::

    SKEYSEED (IKE SA rekey) = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))
    KEYMAT (CHILD SA)       = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))

(Checked against strongSwan 6.1 in tests/netns/test_certs_pq.py: rekeys of the IKE SA
and of CHILD_SAs with ML-KEM follow-ups carry traffic both ways.)

RFC 9242 §3.3.2, authenticating the IKE_INTERMEDIATE messages in IKE_AUTH::

    IntAuth_i1 = prf(SK_pi1,              IntAuth_i1A [| IntAuth_i1P])
    IntAuth_iN = prf(SK_piN, IntAuth_iN-1 | IntAuth_iNA [| IntAuth_iNP])
    (IntAuth_rN likewise with SK_pr and the responder's messages)
    IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID
    InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI | IntAuth
    ResponderSignedOctets = RealMessage2 | NonceIData | MACedIDForR | IntAuth

A is the message from the IKE header to the end of the Encrypted payload's
generic header (no IV), with the header's Length and the Encrypted payload's
Payload Length set as if the message carried the inner payloads in clear
(Length = len(A) + len(P), Payload Length = 4 + len(P)); P is the inner
payloads, without IV, padding, Pad Length and ICV.  A fragmented message
counts as the reassembled, unfragmented message.  SK_p[ir]N are the keys in
force when message N was sent, i.e. before the additional exchange it carries
updates them (the same keys that protect it).

RFC 8784 §3, PPK mixed into the keys of the IKE SA before IKE_AUTH::

    SK_d'  = prf+(PPK, SK_d)
    SK_pi' = prf+(PPK, SK_pi)
    SK_pr' = prf+(PPK, SK_pr)

each as long as the key it replaces.  With NO_PPK_AUTH, the fallback AUTH is
computed with the unmixed SK_pi/SK_pr (``PpkKeys.without_ppk``).

Everything here is a pure function of bytes; the exchanges decide when to call it.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from ipsecd.crypto.prf import Prf
from ipsecd.ike.keys import (
    IkeKeys,
    derive_from_skeyseed,
    rekey_skeyseed,
)
from ipsecd.ike.proposal_codec import ChosenProposal

__all__ = [
    "IKE_HEADER_LEN",
    "additional_skeyseed",
    "derive_after_additional_ke",
    "rekey_skeyseed_with_additional",
    "derive_rekeyed_ike_keys_with_additional",
    "child_keymat_with_additional",
    "int_auth_octets",
    "int_auth_prefix_of_fragmented",
    "IntAuthChain",
    "PpkIdType",
    "PpkIdentity",
    "PpkKeys",
    "mix_ppk",
    "NOTIFY_PPK_IDENTITY",
    "NOTIFY_NO_PPK_AUTH",
    "same_ppk_id",
]

IKE_HEADER_LEN = 28  # RFC 7296 §3.1
_GENERIC_HEADER_LEN = 4  # RFC 7296 §3.2

# RFC 8784 §7 (IANA "IKEv2 Notify Message Types - Status Types"); USE_PPK = 16435 is in
# ike.constants already.
NOTIFY_PPK_IDENTITY = 16436
NOTIFY_NO_PPK_AUTH = 16437


def _need(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or not value:
        raise ValueError(f"{what} must be non-empty bytes")
    return bytes(value)


# --- RFC 9370 §2.2.2: IKE_INTERMEDIATE ---------------------------------------------


def additional_skeyseed(keys: IkeKeys, shared_n: bytes, nonce_i: bytes, nonce_r: bytes) -> bytes:
    """SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) (RFC 9370 §2.2.2)."""
    return rekey_skeyseed(
        keys.prf,
        keys.sk_d,
        _need(shared_n, "SK(n)"),
        _need(nonce_i, "Ni"),
        _need(nonce_r, "Nr"),
    )


def derive_after_additional_ke(
    keys: IkeKeys,
    shared_n: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: int | bytes,
    spi_r: int | bytes,
) -> IkeKeys:
    """The keys of generation n from generation n-1 and SK(n) (RFC 9370 §2.2.2).

    Ni/Nr and SPIi/SPIr are those of IKE_SA_INIT; the algorithms stay the same.
    """
    seed = additional_skeyseed(keys, shared_n, nonce_i, nonce_r)
    return derive_from_skeyseed(
        keys.prf, keys.encr, keys.integ, seed, nonce_i, nonce_r, spi_i, spi_r
    )


# --- RFC 9370 §2.2.4: CREATE_CHILD_SA + IKE_FOLLOWUP_KE ----------------------------


def _seed_input(shared: Sequence[bytes], nonce_i: bytes, nonce_r: bytes) -> bytes:
    """SK(0) | Ni | Nr | SK(1) | ... | SK(n)."""
    if not shared:
        raise ValueError("at least SK(0), the CREATE_CHILD_SA key exchange, is needed")
    secrets = [_need(s, f"SK({i})") for i, s in enumerate(shared)]
    return secrets[0] + nonce_i + nonce_r + b"".join(secrets[1:])


def rekey_skeyseed_with_additional(
    old: IkeKeys, shared: Sequence[bytes], nonce_i: bytes, nonce_r: bytes
) -> bytes:
    """SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 §2.2.4)."""
    return Prf(old.prf).prf(old.sk_d, _seed_input(shared, nonce_i, nonce_r))


def derive_rekeyed_ike_keys_with_additional(
    old: IkeKeys,
    chosen: ChosenProposal,
    shared: Sequence[bytes],
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: int | bytes,
    spi_r: int | bytes,
) -> IkeKeys:
    """Keys of the IKE SA that replaces ``old`` after the rekey and its follow-up exchanges
    (RFC 9370 §2.2.4), with the algorithms of ``chosen``; ``nonce_i``/``spi_i`` belong to
    the rekey exchange's initiator.  With SK(0) alone this is RFC 7296 §2.18."""
    if chosen.prf is None or chosen.encryption is None:
        raise ValueError("IKE proposal without a PRF or a cipher")
    seed = rekey_skeyseed_with_additional(old, shared, nonce_i, nonce_r)
    integ = chosen.integrity if not chosen.encryption.aead else None
    return derive_from_skeyseed(
        chosen.prf, chosen.encryption, integ, seed, nonce_i, nonce_r, spi_i, spi_r
    )


def child_keymat_with_additional(
    keys: IkeKeys, shared: Sequence[bytes], nonce_i: bytes, nonce_r: bytes, length: int
) -> bytes:
    """KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 §2.2.4)."""
    return Prf(keys.prf).prf_plus(keys.sk_d, _seed_input(shared, nonce_i, nonce_r), length)


# --- RFC 9242 §3.3.2: IntAuth --------------------------------------------------------


def int_auth_octets(message_prefix: bytes, inner_payloads: bytes) -> bytes:
    """IntAuth_[i/r]*A | IntAuth_[i/r]*P for one IKE_INTERMEDIATE message (RFC 9242 §3.3.2).

    ``message_prefix`` is the message as sent or received, unfragmented, from
    the first byte of the IKE header to the last byte of the Encrypted
    payload's generic header (any unencrypted payloads in between included,
    the IV excluded); ``inner_payloads`` the decrypted inner payloads.  The two
    length fields are rewritten to the values without IV, padding and ICV.
    """
    prefix = bytes(message_prefix)
    if len(prefix) < IKE_HEADER_LEN + _GENERIC_HEADER_LEN:
        raise ValueError(
            f"IntAuth A part is {len(prefix)} bytes; needs at least the IKE header and"
            " the Encrypted payload header (32)"
        )
    inner = bytes(inner_payloads)
    total = len(prefix) + len(inner)
    sk_len = _GENERIC_HEADER_LEN + len(inner)
    if total > 0xFFFFFFFF or sk_len > 0xFFFF:
        raise ValueError("IKE_INTERMEDIATE message too long for its length fields")
    a = bytearray(prefix)
    a[24:28] = total.to_bytes(4, "big")
    a[-2:] = sk_len.to_bytes(2, "big")
    return bytes(a) + inner


_PAYLOAD_SK = 46  # RFC 7296 §3.14
_PAYLOAD_SKF = 53  # RFC 7383 §2.5


def int_auth_prefix_of_fragmented(ike_header: bytes, first_inner_payload: int) -> bytes:
    """The A-part prefix of a message that was sent or received in SKF fragments.

    RFC 9242 §3.3.2 authenticates the message as if it had not been fragmented:
    the IKE header (of any fragment) with Next Payload = SK (46), followed by an
    SK payload header whose Next Payload is the first inner payload's type (the
    first fragment's SKF Next Payload).  Length fields are set by
    :func:`int_auth_octets`.  (Checked against strongSwan 6.1, whose
    ML-KEM-768 IKE_INTERMEDIATE request went out in two fragments.)
    """
    header = bytearray(ike_header)
    if len(header) != IKE_HEADER_LEN:
        raise ValueError(f"IKE header is {len(header)} bytes, not {IKE_HEADER_LEN}")
    if header[16] not in (_PAYLOAD_SK, _PAYLOAD_SKF):
        raise ValueError(
            f"IKE header's Next Payload is {header[16]}; a fragmented message starts with SKF (53)"
        )
    header[16] = _PAYLOAD_SK
    return bytes(header) + bytes([first_inner_payload, 0, 0, 0])


@dataclass
class IntAuthChain:
    """IntAuth_iN and IntAuth_rN accumulated over the IKE_INTERMEDIATE exchanges.

    Both peers feed every IKE_INTERMEDIATE message, its own and the peer's:
    ``add_initiator_message`` with the SK_pi in force for the initiator's
    message, ``add_responder_message`` with SK_pr for the responder's.
    """

    prf: Prf
    int_auth_i: bytes = b""
    int_auth_r: bytes = b""
    exchanges_i: int = 0
    exchanges_r: int = 0

    def add_initiator_message(self, sk_pi: bytes, message_prefix: bytes, inner: bytes) -> bytes:
        """IntAuth_iN = prf(SK_piN, IntAuth_iN-1 | A | P); returns the new value."""
        self.int_auth_i = self.prf.prf(
            sk_pi, self.int_auth_i + int_auth_octets(message_prefix, inner)
        )
        self.exchanges_i += 1
        return self.int_auth_i

    def add_responder_message(self, sk_pr: bytes, message_prefix: bytes, inner: bytes) -> bytes:
        """IntAuth_rN = prf(SK_prN, IntAuth_rN-1 | A | P); returns the new value."""
        self.int_auth_r = self.prf.prf(
            sk_pr, self.int_auth_r + int_auth_octets(message_prefix, inner)
        )
        self.exchanges_r += 1
        return self.int_auth_r

    def octets(self, ike_auth_message_id: int) -> bytes:
        """IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID, appended to both SignedOctets.

        ``ike_auth_message_id`` is the Message ID of the first IKE_AUTH request.
        Empty when no IKE_INTERMEDIATE exchange took place (RFC 7296 octets unchanged).
        """
        if not self.exchanges_i and not self.exchanges_r:
            return b""
        if self.exchanges_i != self.exchanges_r:
            raise ValueError(
                f"IntAuth over {self.exchanges_i} initiator and {self.exchanges_r}"
                " responder IKE_INTERMEDIATE messages: every request needs its response"
            )
        if not 0 <= ike_auth_message_id <= 0xFFFFFFFF:
            raise ValueError(f"message id {ike_auth_message_id} out of range")
        return self.int_auth_i + self.int_auth_r + ike_auth_message_id.to_bytes(4, "big")


# --- RFC 8784: PPK -------------------------------------------------------------------


class PpkIdType(IntEnum):
    """RFC 8784 §5.1 PPK_ID types."""

    PPK_ID_OPAQUE = 1
    PPK_ID_FIXED = 2


@dataclass(frozen=True)
class PpkIdentity:
    """Notification data of PPK_IDENTITY (RFC 8784 §5.1): PPK_ID type | PPK_ID."""

    ppk_id: bytes
    id_type: PpkIdType = PpkIdType.PPK_ID_FIXED

    def encode(self) -> bytes:
        if not self.ppk_id:
            raise ValueError("empty PPK_ID")
        return bytes([self.id_type]) + self.ppk_id

    @classmethod
    def decode(cls, data: bytes) -> PpkIdentity:
        """Parse PPK_IDENTITY data; ValueError (-> INVALID_SYNTAX) names what is wrong."""
        data = bytes(data)
        if len(data) < 2:
            raise ValueError(f"PPK_IDENTITY data is {len(data)} bytes; needs a type and an id")
        try:
            id_type = PpkIdType(data[0])
        except ValueError:
            raise ValueError(f"PPK_IDENTITY with unknown PPK_ID type {data[0]}") from None
        return cls(data[1:], id_type)


@dataclass(frozen=True)
class PpkKeys:
    """The IKE SA keys after PPK mixing, and the unmixed ones for NO_PPK_AUTH."""

    keys: IkeKeys
    without_ppk: IkeKeys


def mix_ppk(keys: IkeKeys, ppk: bytes) -> PpkKeys:
    """SK_d' = prf+(PPK, SK_d), SK_pi' = prf+(PPK, SK_pi), SK_pr' = prf+(PPK, SK_pr).

    RFC 8784 §3; each new key is as long as the one it replaces.
    """
    ppk = _need(ppk, "PPK")
    prf = Prf(keys.prf)
    mixed = replace(
        keys,
        sk_d=prf.prf_plus(ppk, keys.sk_d, len(keys.sk_d)),
        sk_pi=prf.prf_plus(ppk, keys.sk_pi, len(keys.sk_pi)),
        sk_pr=prf.prf_plus(ppk, keys.sk_pr, len(keys.sk_pr)),
    )
    return PpkKeys(mixed, keys)


def same_ppk_id(a: bytes, b: bytes) -> bool:
    """Constant-time PPK_ID comparison (an id names a secret; don't leak its prefix)."""
    return hmac.compare_digest(bytes(a), bytes(b))
