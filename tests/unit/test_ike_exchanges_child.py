"""CHILD_SA helpers: TS narrowing (RFC 7296 §2.9) and KEYMAT split (§2.17)."""

from __future__ import annotations

import pytest

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.ike.child import (
    ChildAlgorithms,
    ChildSa,
    ChildState,
    check_narrowed_as_initiator,
    child_params,
    keymat_length,
    narrow,
    narrow_as_responder,
    split_keymat,
)
from ipsecd.ike.errors import TS_UNACCEPTABLE, TsUnacceptable
from ipsecd.ike.lifecycle import ChildEvent, IllegalTransition, RetransmitPolicy
from ipsecd.selectors import TrafficSelector as TS

P = TS.from_prefix


def test_narrow_to_config():
    got = narrow((P("10.0.0.0/8"),), (P("10.1.0.0/24"), P("192.168.0.0/16")))
    assert got == (P("10.1.0.0/24"),)


def test_narrow_dedupes_contained():
    got = narrow((P("10.1.0.0/24"), P("10.1.0.0/25")), (P("10.0.0.0/8"),))
    assert got == (P("10.1.0.0/24"),)


def test_responder_narrowing_both_sides():
    tsi, tsr = narrow_as_responder(
        (P("10.1.0.0/16"),), (P("0.0.0.0/0"),), (P("10.2.0.0/24"),), (P("10.1.1.0/24"),), "west"
    )
    assert tsi == (P("10.1.1.0/24"),)
    assert tsr == (P("10.2.0.0/24"),)


def test_responder_disjoint_lists_both_sets():
    with pytest.raises(TsUnacceptable) as info:
        narrow_as_responder(
            (P("10.9.0.0/24"),), (P("10.8.0.0/24"),), (P("10.2.0.0/24"),), (P("10.1.0.0/24"),), "w"
        )
    msg = str(info.value)
    assert info.value.notify_type == TS_UNACCEPTABLE
    for text in ("10.9.0.0/24", "10.8.0.0/24", "10.2.0.0/24", "10.1.0.0/24"):
        assert text in msg


def test_initiator_refuses_widened_answer():
    check_narrowed_as_initiator(
        (P("10.1.0.0/16"),), (P("10.2.0.0/16"),), (P("10.1.1.0/24"),), (P("10.2.0.0/16"),), "x"
    )
    with pytest.raises(TsUnacceptable):
        check_narrowed_as_initiator(
            (P("10.1.0.0/16"),), (P("10.2.0.0/16"),), (P("10.0.0.0/8"),), (P("10.2.0.0/16"),), "x"
        )


def test_split_keymat_order_and_roles():
    algs = ChildAlgorithms(ENCRYPTION["aes128"], INTEGRITY["sha256"], False)
    n = keymat_length(algs)
    assert n == 2 * (16 + 32)
    keymat = bytes(range(n))
    (ei, ai), (er, ar) = split_keymat(keymat, algs)
    assert ei == keymat[:16] and ai == keymat[16:48]
    assert er == keymat[48:64] and ar == keymat[64:96]
    common = dict(algs=algs, keymat=keymat, local_ts=(), remote_ts=(), remote=("192.0.2.1", 4500))
    init = child_params(spi_in=1, spi_out=2, exchange_initiator=True, **common)
    resp = child_params(spi_in=2, spi_out=1, exchange_initiator=False, **common)
    assert init.encr_key_out == ei == resp.encr_key_in
    assert init.integ_key_in == ar == resp.integ_key_out
    assert "encr_key_in" not in repr(init)


def test_split_keymat_aead_includes_salt():
    algs = ChildAlgorithms(ENCRYPTION["aes256gcm16"], None, False)
    assert keymat_length(algs) == 2 * 36
    (ei, ai), _ = split_keymat(bytes(72), algs)
    assert len(ei) == 36 and ai == b""


def test_child_state_table():
    policy = RetransmitPolicy()
    c = ChildSa(spi_in=5)
    c.transition(ChildEvent.ESTABLISHED, 0.0, policy)
    assert c.state is ChildState.INSTALLED and c.deadline is None  # steady: lifetimes
    with pytest.raises(IllegalTransition):
        c.transition(ChildEvent.ESTABLISHED, 0.0, policy)
    c.transition(ChildEvent.REKEY_STARTED, 10.0, policy)
    assert c.deadline == 10.0 + policy.exchange_deadline
