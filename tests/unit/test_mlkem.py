"""ML-KEM key exchange objects, the RFC 9370 registry entries and ``keN_`` proposals."""

from __future__ import annotations

import pytest

from ipsecd.crypto.keyexchange import KeyExchange, KeyExchangeError
from ipsecd.crypto.mlkem import (
    ML_KEM_SIZES,
    MlKemInitiator,
    MlKemResponder,
    respond,
    start,
)
from ipsecd.crypto.proposals import ProposalError, parse_proposal
from ipsecd.crypto.registry import (
    ADDITIONAL_KE_NONE,
    ADDITIONAL_KE_TYPES,
    KEY_EXCHANGE,
    ML_KEM,
    KeId,
    TransformType,
    additional_ke_by_id,
    ke_by_id,
)

SIZES = {"mlkem768": (1184, 1088), "mlkem1024": (1568, 1568)}


def test_iana_numbers() -> None:
    # IANA "Transform Type 4 - Key Exchange Method Transform IDs" and RFC 9370 §2.2.1.
    assert (KeId.ML_KEM_512, KeId.ML_KEM_768, KeId.ML_KEM_1024) == (35, 36, 37)
    assert [int(t) for t in ADDITIONAL_KE_TYPES] == list(range(6, 13))
    assert ADDITIONAL_KE_TYPES[0] is TransformType.ADDKE1
    assert TransformType.ADDKE7 == 12


@pytest.mark.parametrize("name", sorted(ML_KEM))
def test_round_trip_and_sizes(name: str) -> None:
    alg = ML_KEM[name]
    ek_len, ct_len = SIZES[name]
    assert ML_KEM_SIZES[alg.transform_id].encapsulation_key == ek_len == alg.public_len
    i = MlKemInitiator(alg)
    assert len(i.public_bytes) == ek_len and i.public == i.public_bytes
    assert i.group == alg.transform_id
    r = MlKemResponder(alg, i.public_bytes)
    assert len(r.public_bytes) == ct_len
    assert i.compute(r.public_bytes) == r.shared_secret_bytes == r.compute(i.public_bytes)
    assert len(r.shared_secret_bytes) == 32
    assert "..." in repr(i) and "..." in repr(r)


@pytest.mark.parametrize("name", sorted(ML_KEM))
def test_peer_lengths_are_exact(name: str) -> None:
    alg = ML_KEM[name]
    ek_len, ct_len = SIZES[name]
    i = MlKemInitiator(alg)
    for bad in (ek_len - 1, ek_len + 1, 0):
        with pytest.raises(KeyExchangeError, match=f"{bad} bytes, expected {ek_len}"):
            MlKemResponder(alg, bytes(bad))
    for bad in (ct_len - 1, ct_len + 1):
        with pytest.raises(KeyExchangeError, match=f"{bad} bytes, expected {ct_len}"):
            i.compute(bytes(bad))
    with pytest.raises(KeyExchangeError, match="not bytes"):
        i.compute("x" * ct_len)  # type: ignore[arg-type]


def test_encapsulation_key_modulus_check() -> None:
    # FIPS 203 §7.2: coefficients must be < q = 3329; all-0xff encodes 4095.
    with pytest.raises(KeyExchangeError, match="modulus check"):
        MlKemResponder(ML_KEM["mlkem768"], b"\xff" * 1184)


def test_tampered_ciphertext_gives_another_secret() -> None:
    # ML-KEM decapsulation never fails (implicit rejection): the AUTH check catches it.
    alg = ML_KEM["mlkem768"]
    i = MlKemInitiator(alg)
    r = MlKemResponder(alg, i.public_bytes)
    ct = bytearray(r.public_bytes)
    ct[0] ^= 1
    assert i.compute(bytes(ct)) != r.shared_secret_bytes


def test_seeded_key_pair_is_deterministic() -> None:
    alg = ML_KEM["mlkem1024"]
    seed = bytes(range(64))
    assert MlKemInitiator(alg, seed).public_bytes == MlKemInitiator(alg, seed).public_bytes
    assert MlKemInitiator(alg, seed).public_bytes != MlKemInitiator(alg).public_bytes


def test_responder_refuses_other_key() -> None:
    alg = ML_KEM["mlkem768"]
    r = MlKemResponder(alg, MlKemInitiator(alg).public_bytes)
    with pytest.raises(ValueError, match="different encapsulation key"):
        r.compute(MlKemInitiator(alg).public_bytes)


def test_not_an_mlkem_algorithm() -> None:
    with pytest.raises(ValueError, match="not an ML-KEM"):
        MlKemInitiator(KEY_EXCHANGE["x25519"])


@pytest.mark.parametrize("name", ["x25519", "ecp384", "mlkem768", "mlkem1024"])
def test_start_and_respond_cover_every_method(name: str) -> None:
    alg = ML_KEM.get(name) or KEY_EXCHANGE[name]
    i = start(alg)
    assert isinstance(i, MlKemInitiator if alg.kind == "mlkem" else KeyExchange)
    reply, shared = respond(alg, i.public)
    assert i.compute(reply) == shared


def test_registry_lookups() -> None:
    assert additional_ke_by_id(36) is ML_KEM["mlkem768"]
    assert additional_ke_by_id(31) is KEY_EXCHANGE["x25519"]
    assert additional_ke_by_id(0) is ADDITIONAL_KE_NONE
    assert additional_ke_by_id(35) is None  # ML-KEM-512: not available
    assert ke_by_id(36) is None  # never the IKE_SA_INIT KE: existing negotiation unchanged
    assert not set(ML_KEM) & set(KEY_EXCHANGE)


def test_proposal_with_additional_key_exchanges() -> None:
    p = parse_proposal(
        "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_mlkem1024-ke3_none",
        "ike",
    )
    assert [a.name for a in p.ke] == ["x25519"]
    assert [[a.name for a in algs] for algs in p.additional_ke] == [
        ["mlkem768", "mlkem1024"],
        [],
        ["none"],
    ]
    q = parse_proposal("aes256gcm16-x25519-ke1_mlkem768", "esp")
    assert q.additional_ke == ((ML_KEM["mlkem768"],),)
    assert str(parse_proposal("aes256gcm16-prfsha256-ecp256", "ike").additional_ke) == "()"
    p2 = parse_proposal("aes256gcm16-prfsha384-x25519-ke2_ecp384", "ike")
    assert p2.additional_ke == ((), (KEY_EXCHANGE["ecp384"],))


def test_str_of_built_proposal_names_additional_kes() -> None:
    p = parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768", "ike")
    from dataclasses import replace

    assert str(replace(p, text="")) == "aes256gcm16-prfsha384-x25519-ke1_mlkem768"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aes256gcm16-prfsha384-x25519-ke1_mlkem512", "implements ML-KEM-768 and ML-KEM-1024"),
        ("aes256gcm16-prfsha384-x25519-ke1_mlkem512", "ML-KEM-512 is not available"),
        ("aes256gcm16-prfsha384-mlkem768", "only as an additional key exchange"),
        ("aes256gcm16-prfsha384-mlkem512", "ML-KEM-512 is not available"),
        ("aes256gcm16-prfsha384-x25519-ke1_foo", "unknown additional key exchange 'ke1_foo'"),
        ("aes256gcm16-prfsha384-x25519-ke8_mlkem768", "unknown IKE algorithm 'ke8_mlkem768'"),
        ("aes256gcm16-ke1_mlkem768", "additional key exchanges .keN_. follow a key exchange"),
    ],
)
def test_proposal_errors(text: str, message: str) -> None:
    protocol = "esp" if text.count("-") == 1 else "ike"
    with pytest.raises(ProposalError, match=message):
        parse_proposal(text, protocol)


def test_selection_never_drops_a_required_additional_ke() -> None:
    """An offer that requires ADDKE1 is not chosen by a proposal without it (no silent
    PQ downgrade); with ``ke1_none`` offered too, NONE is chosen and nothing is run."""
    from ipsecd.crypto.registry import ADDITIONAL_KE_NONE, TransformType
    from ipsecd.ike.payloads import SaProposal, Transform
    from ipsecd.ike.proposal_codec import proposal_transforms, select

    ours = [parse_proposal("aes256gcm16-prfsha384-x25519", "ike")]
    base = proposal_transforms(ours[0])
    required = SaProposal(1, 1, b"", (*base, Transform(TransformType.ADDKE1, KeId.ML_KEM_768)))
    assert select([required], ours, "ike") is None
    optional = SaProposal(
        1,
        1,
        b"",
        (
            *base,
            Transform(TransformType.ADDKE1, KeId.ML_KEM_768),
            Transform(TransformType.ADDKE1, KeId.NONE),
        ),
    )
    chosen = select([optional], ours, "ike")
    assert chosen is not None and str(chosen) == "aes256gcm16-prfsha384-x25519"
    assert chosen.additional_ke == (ADDITIONAL_KE_NONE,) and not chosen.additional_exchanges
    # The answer names ADDKE1 = NONE (RFC 9370 §2.2.1: one transform of each offered type).
    assert Transform(TransformType.ADDKE1, KeId.NONE) in chosen.transforms()


def test_without_ml_kem_in_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older cryptography (the declared minimum has no ML-KEM): ipsecd still loads, and a
    keN_mlkem proposal is refused at config load saying why."""
    from ipsecd.crypto import mlkem as ours

    monkeypatch.setattr(ours, "_backend", lambda: None)
    assert "has none (pip install -U cryptography)" in (ours.unavailable_reason() or "")
    with pytest.raises(ProposalError, match="ML-KEM needs a cryptography package with ML-KEM"):
        parse_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768", "ike")
    assert parse_proposal("aes256gcm16-prfsha384-x25519-ke1_ecp384", "ike").additional_ke
    with pytest.raises(Exception, match="has none"):
        ours.MlKemInitiator(ML_KEM["mlkem768"])
