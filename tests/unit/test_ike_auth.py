"""PSK AUTH (RFC 7296 §2.15) and NAT detection hashes (§2.23), computed independently."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest

from ipsecd.crypto.registry import ENCRYPTION, PRF
from ipsecd.ike import auth, keys, nat
from ipsecd.ike.constants import IdType
from ipsecd.ike.proposal_codec import ChosenProposal

NI, NR = b"\x11" * 32, b"\x22" * 32
INIT_REQ, INIT_RESP = b"request-bytes" * 20, b"response-bytes" * 20
PSK = b"correct horse battery staple"


def _keys(prf: str = "prfsha256") -> keys.IkeKeys:
    chosen = ChosenProposal("ike", 1, b"", ENCRYPTION["aes128gcm16"], None, PRF[prf], None)
    return keys.derive_ike_keys(chosen, b"\x33" * 32, NI, NR, 1, 2)


@pytest.mark.parametrize("prf", sorted(PRF))
def test_initiator_and_responder_auth(prf: str) -> None:
    k = _keys(prf)
    h = getattr(hashlib, PRF[prf].hash_name.lower())
    id_i = b"\x02\x00\x00\x00" + b"left.example"  # IDi' = type FQDN, 3 reserved, data
    id_r = b"\x01\x00\x00\x00" + bytes([192, 0, 2, 1])
    pad = hmac.new(PSK, b"Key Pad for IKEv2", h).digest()
    expect_i = hmac.new(pad, INIT_REQ + NR + hmac.new(k.sk_pi, id_i, h).digest(), h).digest()
    expect_r = hmac.new(pad, INIT_RESP + NI + hmac.new(k.sk_pr, id_r, h).digest(), h).digest()
    got_i = auth.psk_auth(k, PSK, True, INIT_REQ, NR, IdType.ID_FQDN, b"left.example")
    got_r = auth.psk_auth(k, PSK, False, INIT_RESP, NI, IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))
    assert got_i == expect_i and got_r == expect_r
    assert got_i != got_r


def test_verify_is_exact() -> None:
    k = _keys()
    value = auth.psk_auth(k, PSK, True, INIT_REQ, NR, IdType.ID_FQDN, b"a")
    assert auth.verify_psk_auth(k, PSK, True, INIT_REQ, NR, IdType.ID_FQDN, b"a", value)
    assert auth.verify_psk_auth(k, PSK.decode(), True, INIT_REQ, NR, IdType.ID_FQDN, b"a", value)
    for wrong in (
        dict(psk=b"other"),
        dict(of_initiator=False),
        dict(message=INIT_REQ + b"x"),
        dict(peer_nonce=NI),
        dict(id_type=IdType.ID_RFC822_ADDR),
        dict(id_data=b"b"),
    ):
        args = dict(
            keys=k,
            psk=PSK,
            of_initiator=True,
            message=INIT_REQ,
            peer_nonce=NR,
            id_type=IdType.ID_FQDN,
            id_data=b"a",
        )
        args.update(wrong)
        assert not auth.verify_psk_auth(received=value, **args)  # type: ignore[arg-type]
    assert not auth.verify_psk_auth(k, PSK, True, INIT_REQ, NR, IdType.ID_FQDN, b"a", value[:-1])
    assert not auth.verify_psk_auth(k, PSK, True, INIT_REQ, NR, IdType.ID_FQDN, b"a", b"")


def test_key_pad_constant() -> None:
    assert auth.KEY_PAD == b"Key Pad for IKEv2" and len(auth.KEY_PAD) == 17


@pytest.mark.parametrize(
    ("ip", "port"), [("192.0.2.1", 500), ("198.51.100.7", 4500), ("2001:db8::1", 4500)]
)
def test_natd_hash(ip: str, port: int) -> None:
    spi_i, spi_r = 0x0123456789ABCDEF, 0
    expected = hashlib.sha1(
        spi_i.to_bytes(8, "big")
        + bytes(8)
        + ipaddress.ip_address(ip).packed
        + port.to_bytes(2, "big")
    ).digest()
    assert nat.natd_hash(spi_i, spi_r, ip, port) == expected
    assert nat.natd_hash(spi_i.to_bytes(8, "big"), bytes(8), ipaddress.ip_address(ip), port) == (
        expected
    )
    assert len(expected) == 20
    assert nat.hash_matches([b"x" * 20, expected], spi_i, spi_r, ip, port)
    assert not nat.hash_matches([b"x" * 20], spi_i, spi_r, ip, port)
    assert not nat.hash_matches([], spi_i, spi_r, ip, port)
    assert nat.natd_hash(spi_i, spi_r, ip, port + 1) != expected
