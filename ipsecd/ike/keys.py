"""IKE SA and CHILD SA key derivation (RFC 7296 §2.13, §2.14, §2.17, §2.18).

::

    SKEYSEED = prf(Ni | Nr, g^ir)                                        §2.14
    {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
             = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
    SKEYSEED (rekey) = prf_old(SK_d (old), g^ir (new) | Ni | Nr)         §2.18
    KEYMAT = prf+(SK_d, Ni | Nr)  or  prf+(SK_d, g^ir (new) | Ni | Nr)   §2.17

Nonces are the Nonce payload bodies, SPIs the 8-byte IKE SPIs (for a rekey:
the new ones, from the CREATE_CHILD_SA SA payloads).  SK_d, SK_pi and SK_pr
are as long as the PRF's preferred key, SK_a as the integrity key, SK_e as the
cipher key plus salt for AEADs (RFC 5282 §7).

API::

    skeyseed(prf_alg, nonce_i, nonce_r, shared) -> bytes
    rekey_skeyseed(old_prf_alg, old_sk_d, shared, nonce_i, nonce_r) -> bytes
    derive_from_skeyseed(prf, encr, integ, skeyseed, nonce_i, nonce_r, spi_i, spi_r) -> IkeKeys
    derive_ike_keys(chosen, shared, nonce_i, nonce_r, spi_i, spi_r) -> IkeKeys
    derive_rekeyed_ike_keys(old, chosen, shared, nonce_i, nonce_r, spi_i, spi_r) -> IkeKeys
    child_keymat(keys, shared | None, nonce_i, nonce_r, length) -> bytes

``chosen`` is anything with ``prf``, ``encryption`` and ``integrity``
attributes (a :class:`ipsecd.ike.proposal_codec.ChosenProposal`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecd.crypto.prf import Prf
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm, PrfAlgorithm
from ipsecd.ike.proposal_codec import ChosenProposal
from ipsecd.ike.sk import SkKeys

__all__ = [
    "IkeKeys",
    "skeyseed",
    "rekey_skeyseed",
    "derive_from_skeyseed",
    "derive_ike_keys",
    "derive_rekeyed_ike_keys",
    "child_keymat",
]


def _spi_bytes(spi: int | bytes) -> bytes:
    if isinstance(spi, bytes):
        if len(spi) != 8:
            raise ValueError(f"IKE SPI must be 8 bytes, not {len(spi)}")
        return spi
    return spi.to_bytes(8, "big")


@dataclass(frozen=True)
class IkeKeys:
    """The seven keys of an IKE SA and the algorithms they belong to (RFC 7296 §2.14)."""

    prf: PrfAlgorithm
    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)

    def sk_keys(self, sender_is_initiator: bool) -> SkKeys:
        """SK payload keys for messages sent by the original initiator (SK_ei/SK_ai) or not."""
        if sender_is_initiator:
            return SkKeys(self.encr, self.integ, self.sk_ei, self.sk_ai)
        return SkKeys(self.encr, self.integ, self.sk_er, self.sk_ar)

    @property
    def prf_fn(self) -> Prf:
        return Prf(self.prf)


def skeyseed(prf_alg: PrfAlgorithm, nonce_i: bytes, nonce_r: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14)."""
    return Prf(prf_alg).prf(nonce_i + nonce_r, shared)


def rekey_skeyseed(
    old_prf_alg: PrfAlgorithm, old_sk_d: bytes, shared: bytes, nonce_i: bytes, nonce_r: bytes
) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the OLD SA's PRF (§2.18)."""
    return Prf(old_prf_alg).prf(old_sk_d, shared + nonce_i + nonce_r)


def derive_from_skeyseed(
    prf_alg: PrfAlgorithm,
    encr: EncrAlgorithm,
    integ: IntegAlgorithm | None,
    seed: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: int | bytes,
    spi_r: int | bytes,
) -> IkeKeys:
    """Split prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) into the seven SK_* keys (§2.14)."""
    prf = Prf(prf_alg)
    d_len = prf.key_len
    a_len = integ.key_len if integ is not None and not encr.aead else 0
    e_len = encr.keymat_len
    total = 3 * d_len + 2 * a_len + 2 * e_len
    stream = prf.prf_plus(seed, nonce_i + nonce_r + _spi_bytes(spi_i) + _spi_bytes(spi_r), total)
    parts = []
    pos = 0
    for n in (d_len, a_len, a_len, e_len, e_len, d_len, d_len):
        parts.append(stream[pos : pos + n])
        pos += n
    return IkeKeys(prf_alg, encr, integ if not encr.aead else None, *parts)


def _algs(chosen: ChosenProposal) -> tuple[PrfAlgorithm, EncrAlgorithm, IntegAlgorithm | None]:
    if chosen.prf is None:
        raise ValueError("IKE proposal without a PRF")
    return chosen.prf, chosen.encryption, chosen.integrity


def derive_ike_keys(
    chosen: ChosenProposal,
    shared: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: int | bytes,
    spi_r: int | bytes,
) -> IkeKeys:
    """All keys of a new IKE SA from IKE_SA_INIT (RFC 7296 §2.14)."""
    prf, encr, integ = _algs(chosen)
    seed = skeyseed(prf, nonce_i, nonce_r, shared)
    return derive_from_skeyseed(prf, encr, integ, seed, nonce_i, nonce_r, spi_i, spi_r)


def derive_rekeyed_ike_keys(
    old: IkeKeys,
    chosen: ChosenProposal,
    shared: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: int | bytes,
    spi_r: int | bytes,
) -> IkeKeys:
    """Keys of the IKE SA that replaces ``old`` via CREATE_CHILD_SA (RFC 7296 §2.18).

    ``nonce_i``/``spi_i`` are those of the rekey exchange's initiator (who
    need not be the original initiator of ``old``).
    """
    prf, encr, integ = _algs(chosen)
    seed = rekey_skeyseed(old.prf, old.sk_d, shared, nonce_i, nonce_r)
    return derive_from_skeyseed(prf, encr, integ, seed, nonce_i, nonce_r, spi_i, spi_r)


def child_keymat(
    keys: IkeKeys, shared: bytes | None, nonce_i: bytes, nonce_r: bytes, length: int
) -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17).

    ``shared`` is the CREATE_CHILD_SA key exchange result when PFS was used,
    else None (or empty).  The caller splits KEYMAT (encr i->r, integ i->r,
    encr r->i, integ r->i).
    """
    seed = (shared or b"") + nonce_i + nonce_r
    return Prf(keys.prf).prf_plus(keys.sk_d, seed, length)
