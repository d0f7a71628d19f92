"""Config proposals <-> SA payloads and responder selection (RFC 7296 §2.7, §3.3)."""

from __future__ import annotations

import pytest

from ipsecd.crypto.proposals import parse_proposal
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY, KEY_EXCHANGE, PRF, TransformType
from ipsecd.ike.constants import ProtocolId
from ipsecd.ike.message import Message, parse_message
from ipsecd.ike.payloads import SaProposal, Transform, TransformAttribute
from ipsecd.ike.proposal_codec import (
    ChosenProposal,
    chosen_sa_payload,
    describe,
    explain_no_match,
    sa_payload,
    select,
    to_proposal,
)


def ike(text: str):
    return parse_proposal(text, "ike")


def esp(text: str):
    return parse_proposal(text, "esp")


def offered(*proposals, spi: bytes = b""):
    """What the peer's SA payload looks like after a trip over the wire."""
    sa = sa_payload(proposals, spi)
    parsed = parse_message(Message(1, 0, 34, 0, True, payloads=[sa]).encode())
    return parsed.payloads[0].proposals


def test_ike_sa_payload_layout() -> None:
    sa = sa_payload(
        (ike("aes128-aes256-sha256-prfsha384-x25519-ecp256"), ike("aes256gcm16-prfsha256-modp2048"))
    )
    p1, p2 = sa.proposals
    assert (p1.number, p1.protocol_id, p1.spi) == (1, ProtocolId.IKE, b"")
    assert [(t.transform_type, t.transform_id, t.key_length) for t in p1.transforms] == [
        (1, 12, 128),
        (1, 12, 256),
        (2, 6, None),
        (3, 12, None),
        (4, 31, None),
        (4, 19, None),
    ]
    assert p2.number == 2
    assert [t.transform_type for t in p2.transforms] == [1, 2, 4]  # AEAD: no INTEG


def test_chacha_has_no_key_length_attribute() -> None:
    (p,) = sa_payload((ike("chacha20poly1305-prfsha256-x25519"),)).proposals
    assert p.transforms[0] == Transform(1, 28, None)


def test_esp_sa_payload_spi_esn_and_pfs() -> None:
    (p,) = sa_payload((esp("aes128gcm16"),), spi=b"\xc0\x00\x00\x01").proposals
    assert (p.protocol_id, p.spi) == (ProtocolId.ESP, b"\xc0\x00\x00\x01")
    assert [(t.transform_type, t.transform_id) for t in p.transforms] == [(1, 20), (5, 0)]
    (p,) = sa_payload((esp("aes256-sha256-ecp256-esn-noesn"),), spi=b"1234").proposals
    types = [(t.transform_type, t.transform_id) for t in p.transforms]
    assert types == [(1, 12), (3, 12), (4, 19), (5, 1), (5, 0)]


def test_ike_rekey_spi() -> None:
    (p,) = sa_payload((ike("aes128gcm16-prfsha256-x25519"),), spi=b"\x01" * 8).proposals
    assert p.spi == b"\x01" * 8


def test_select_prefers_our_order_by_default() -> None:
    ours = (ike("aes256gcm16-prfsha384-x25519"), ike("aes128-sha256-ecp256"))
    theirs = offered(ike("aes128-sha256-ecp256"), ike("aes256gcm16-prfsha384-x25519"))
    chosen = select(theirs, ours, "ike")
    assert chosen is not None
    assert str(chosen) == "aes256gcm16-prfsha384-x25519" and chosen.number == 2
    chosen = select(theirs, ours, "ike", prefer="theirs")
    assert str(chosen) == "aes128-sha256-prfsha256-ecp256" and chosen.number == 1


def test_select_orders_alternatives_within_a_type() -> None:
    ours = (ike("aes256-aes128-sha384-sha256-prfsha384-prfsha256-ecp384-ecp256"),)
    theirs = offered(ike("aes128-aes256-sha256-sha384-prfsha256-prfsha384-ecp256-ecp384"))
    mine = select(theirs, ours, "ike")
    assert (mine.encryption.name, mine.integrity.name, mine.prf.name, mine.ke.name) == (
        "aes256",
        "sha384",
        "prfsha384",
        "ecp384",
    )
    yours = select(theirs, ours, "ike", prefer="theirs")
    assert (yours.encryption.name, yours.integrity.name, yours.prf.name, yours.ke.name) == (
        "aes128",
        "sha256",
        "prfsha256",
        "ecp256",
    )


def test_key_length_distinguishes_aes128_and_aes256() -> None:
    theirs = offered(ike("aes128-sha256-x25519"))
    assert select(theirs, (ike("aes256-sha256-x25519"),), "ike") is None
    assert "no match for ENCR: offered aes128, we accept aes256" in explain_no_match(
        theirs, (ike("aes256-sha256-x25519"),), "ike"
    )


def test_no_match_explains_ke() -> None:
    theirs = offered(ike("aes256gcm16-prfsha384-ecp256"))
    ours = (ike("aes256gcm16-prfsha384-x25519"),)
    assert select(theirs, ours, "ike") is None
    assert explain_no_match(theirs, ours, "ike") == (
        "no match for KE: offered ecp256, we accept x25519"
    )


def test_no_match_explains_each_type() -> None:
    assert explain_no_match(
        offered(ike("aes128-sha512-x25519")), (ike("aes128-sha256-prfsha512-x25519"),), "ike"
    ).startswith("no match for INTEG: offered sha512, we accept sha256")
    assert explain_no_match(
        offered(ike("aes128gcm16-prfsha512-x25519")), (ike("aes128gcm16-prfsha256-x25519"),), "ike"
    ).startswith("no match for PRF: offered prfsha512, we accept prfsha256")
    assert (
        explain_no_match(
            offered(esp("aes128-sha256-esn"), spi=b"1234"), (esp("aes128-sha256"),), "esp"
        )
        == "no match for ESN: offered esn, we accept noesn"
    )
    assert "no ESP proposal" in explain_no_match(
        offered(ike("aes128-sha256-x25519")), (esp("aes128-sha256"),), "esp"
    )
    # Every type overlaps somewhere, but no single proposal works.
    mixed = explain_no_match(
        offered(ike("aes128-sha256-x25519"), ike("aes256-sha384-ecp256")),
        (ike("aes128-sha384-ecp256"),),
        "ike",
    )
    assert mixed.startswith("no single proposal matches")
    assert "aes128-sha256-prfsha256-x25519" in mixed


def test_esp_selection_spi_and_esn() -> None:
    theirs = offered(esp("aes256gcm16-aes128gcm16-esn-noesn"), spi=b"\xca\xfe\x00\x01")
    chosen = select(theirs, (esp("aes128gcm16-esn"),), "esp")
    assert chosen is not None and chosen.spi == b"\xca\xfe\x00\x01"
    assert chosen.encryption == ENCRYPTION["aes128gcm16"] and chosen.esn is True
    assert chosen.integrity is None and chosen.prf is None and chosen.ke is None
    assert select(theirs, (esp("aes128gcm16"),), "esp").esn is False


def test_esp_without_esn_transform_means_noesn() -> None:
    p = SaProposal(1, 3, b"1234", (Transform(1, 20, 128),))
    assert select([p], (esp("aes128gcm16"),), "esp").esn is False
    assert select([p], (esp("aes128gcm16-esn"),), "esp") is None


def test_pfs_rules() -> None:
    with_ke = offered(esp("aes128-sha256-modp2048"), spi=b"1234")
    assert select(with_ke, (esp("aes128-sha256"),), "esp") is None  # peer insists on PFS
    assert select(with_ke, (esp("aes128-sha256"),), "esp", ignore_ke=True) is not None  # IKE_AUTH
    chosen = select(with_ke, (esp("aes128-sha256-x25519-modp2048"),), "esp")
    assert chosen.ke == KEY_EXCHANGE["modp2048"]
    without = offered(esp("aes128-sha256"), spi=b"1234")
    assert select(without, (esp("aes128-sha256-modp2048"),), "esp") is None  # we insist
    optional = SaProposal(
        1, 3, b"1234", (Transform(1, 12, 128), Transform(3, 12), Transform(4, 14), Transform(4, 0))
    )
    assert select([optional], (esp("aes128-sha256"),), "esp").ke is None  # NONE offered


def test_unknown_attribute_or_transform_type() -> None:
    attr = SaProposal(
        1,
        1,
        b"",
        (Transform(1, 20, 128, (TransformAttribute(99, 1),)), Transform(2, 5), Transform(4, 31)),
    )
    assert select([attr], (ike("aes128gcm16-prfsha256-x25519"),), "ike") is None
    assert "(+attrs)" in describe(attr)
    addke = SaProposal(
        1, 1, b"", (Transform(1, 20, 128), Transform(2, 5), Transform(4, 31), Transform(6, 35))
    )
    assert select([addke], (ike("aes128gcm16-prfsha256-x25519"),), "ike") is None
    optional = SaProposal(1, 1, b"", addke.transforms + (Transform(6, 0),))
    assert select([optional], (ike("aes128gcm16-prfsha256-x25519"),), "ike") is not None


def test_protocol_mismatch_and_ike_with_esn() -> None:
    theirs = offered(esp("aes128gcm16"), spi=b"1234")
    assert select(theirs, (ike("aes128gcm16-prfsha256-x25519"),), "ike") is None
    esn_in_ike = SaProposal(
        1, 1, b"", (Transform(1, 20, 128), Transform(2, 5), Transform(4, 31), Transform(5, 0))
    )
    assert select([esn_in_ike], (ike("aes128gcm16-prfsha256-x25519"),), "ike") is None
    prf_in_esp = SaProposal(1, 3, b"1234", (Transform(1, 20, 128), Transform(2, 5)))
    assert select([prf_in_esp], (esp("aes128gcm16"),), "esp") is None


def test_aead_with_integ_none_offered() -> None:
    p = SaProposal(
        1, 1, b"", (Transform(1, 20, 256), Transform(2, 6), Transform(3, 0), Transform(4, 31))
    )
    chosen = select([p], (ike("aes256gcm16-prfsha384-x25519"),), "ike")
    assert chosen is not None and chosen.integrity is None


def test_chosen_sa_payload_round_trip_and_initiator_check() -> None:
    ours_i = (ike("aes128-sha256-ecp256"), ike("aes256gcm16-prfsha384-x25519"))
    theirs = offered(*ours_i)
    chosen = select(theirs, (ike("aes256gcm16-prfsha384-x25519"),), "ike")
    answer = chosen_sa_payload(chosen)
    (p,) = answer.proposals
    assert p.number == 2 and p.spi == b""
    assert len({t.transform_type for t in p.transforms}) == len(p.transforms)
    # The initiator checks the answer against what it offered.
    back = parse_message(Message(1, 2, 34, 0, False, True, [answer]).encode()).payloads[0]
    again = select(back.proposals, ours_i, "ike")
    assert again == chosen
    esp_chosen = select(
        offered(esp("aes128-sha256-esn"), spi=b"aaaa"), (esp("aes128-sha256-esn"),), "esp"
    )
    (q,) = chosen_sa_payload(esp_chosen, spi=b"bbbb").proposals
    assert q.spi == b"bbbb"
    assert [(t.transform_type, t.transform_id) for t in q.transforms] == [(1, 12), (3, 12), (5, 1)]


def test_to_proposal_and_describe() -> None:
    (p,) = offered(ike("aes128-aes256-sha256-prfsha384-x25519"))
    conf = to_proposal(p, "ike")
    assert conf.encryption == (ENCRYPTION["aes128"], ENCRYPTION["aes256"])
    assert conf.integrity == (INTEGRITY["sha256"],) and conf.prf == (PRF["prfsha384"],)
    assert str(conf) == "aes128-aes256-sha256-prfsha384-x25519"
    odd = SaProposal(1, 1, b"", (Transform(1, 3), Transform(1, 12, 192), Transform(4, 99)))
    assert describe(odd) == "3des-aes192-KE#99"  # named though unsupported
    assert to_proposal(odd, "ike").encryption == ()


def test_chosen_proposal_helpers() -> None:
    c = ChosenProposal(
        "esp",
        3,
        b"1234",
        ENCRYPTION["aes256"],
        INTEGRITY["sha512"],
        None,
        KEY_EXCHANGE["x25519"],
        True,
    )
    assert str(c) == "aes256-sha512-x25519-esn"
    assert c.to_proposal().esn == (True,)
    assert [t.transform_type for t in c.transforms()] == [
        TransformType.ENCR,
        TransformType.INTEG,
        TransformType.KE,
        TransformType.ESN,
    ]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        sa_payload(())
    with pytest.raises(ValueError):
        select([], (), "ike", prefer="random")


def test_no_match_names_unsupported_transforms() -> None:
    """Issue 14 item 5: a strongSwan default like aes128-sha1-modp1024 reads by name."""
    integ_sha1 = SaProposal(
        1, 1, b"", (Transform(1, 12, 128), Transform(3, 2), Transform(2, 2), Transform(4, 2))
    )
    ours = (ike("aes128-sha256-x25519"),)
    assert explain_no_match([integ_sha1], ours, "ike") == (
        "no match for INTEG: offered sha1, we accept sha256"
    )
    assert describe(integ_sha1) == "aes128-sha1-prfsha1-modp1024"
    only_prf = SaProposal(1, 1, b"", (Transform(1, 20, 256), Transform(2, 4), Transform(4, 31)))
    assert explain_no_match([only_prf], (ike("aes256gcm16-prfsha256-x25519"),), "ike") == (
        "no match for PRF: offered prfaesxcbc, we accept prfsha256"
    )
