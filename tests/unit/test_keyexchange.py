"""Key exchanges: RFC 5903 §8 ECP vectors, RFC 7748 §6.1 X25519, RFC 3526 MODP, bad input."""

from __future__ import annotations

import pytest

import ipsecd.crypto.keyexchange as keyexchange
from ipsecd.crypto.keyexchange import (
    MODP_PRIMES,
    KeyExchange,
    KeyExchangeError,
    PreparedKeyPairs,
    new,
)
from ipsecd.crypto.registry import KEY_EXCHANGE, KeId

# RFC 5903 §8.1 (256-bit random ECP group) and §8.2 (384-bit): i, g^i, g^r, g^ir x.
RFC5903 = {
    "ecp256": {
        "i": "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        "gi": "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C37725811805271A046"
        "1CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        "gr": "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF6356FBF3CA"
        "366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        "gir": "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    },
    "ecp384": {
        "i": "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B5380"
        "41E649EE3FAEF896783AB194",
        "gi": "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808"
        "ACB4BDB4C88732AEE95F41AA9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA0"
        "24181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        "gr": "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A"
        "0336DEF96FDA41D0774A3571DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD"
        "5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        "gir": "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D6031355"
        "69B9E9D09CF5D4A270F59746",
    },
}


@pytest.mark.parametrize("group", sorted(RFC5903))
def test_rfc5903_vectors(group: str) -> None:
    v = {k: bytes.fromhex(x) for k, x in RFC5903[group].items()}
    kex = KeyExchange.from_private_value(KEY_EXCHANGE[group], int.from_bytes(v["i"], "big"))
    assert kex.public_bytes == v["gi"]  # x | y, no 0x04 (RFC 5903 §7)
    assert kex.compute(v["gr"]) == v["gir"]  # x coordinate only (RFC 5903 §9)


def test_rfc7748_x25519_vector() -> None:
    alice_priv = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_priv = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    alice = KeyExchange.from_private_value(KEY_EXCHANGE["x25519"], alice_priv)
    bob = KeyExchange.from_private_value(KEY_EXCHANGE["x25519"], bob_priv)
    assert alice.public_bytes == alice_pub and bob.public_bytes == bob_pub
    assert alice.compute(bob_pub) == shared == bob.compute(alice_pub)


@pytest.mark.parametrize("name", sorted(KEY_EXCHANGE))
def test_round_trip_every_group(name: str) -> None:
    alg = KEY_EXCHANGE[name]
    a, b = new(alg), new(alg)
    assert len(a.public_bytes) == alg.public_len == len(a.public)
    assert a.group == alg.transform_id
    assert a.compute(b.public_bytes) == b.shared_secret(a.public_bytes)
    assert new(alg).public_bytes != a.public_bytes  # fresh randomness each time


@pytest.mark.parametrize("name", ["modp2048", "modp3072", "modp4096"])
def test_modp_primes_are_rfc3526(name: str) -> None:
    alg = KEY_EXCHANGE[name]
    p = MODP_PRIMES[alg.transform_id]
    bits = alg.public_len * 8
    assert p.bit_length() == bits
    # RFC 3526: top and bottom 64 bits are all ones, pi-derived middle starts C90FDAA2...
    assert p >> (bits - 64) == 2**64 - 1 and p & (2**64 - 1) == 2**64 - 1
    assert format(p, "X")[16:24] == "C90FDAA2"
    assert pow(2, p - 1, p) == 1  # Fermat check: p is (probably) prime
    q = (p - 1) // 2
    assert pow(3, q - 1, q) == 1  # and a safe prime


def test_modp_known_tail_of_group14() -> None:
    assert format(MODP_PRIMES[KeId.MODP_2048], "X").endswith("15728E5A8AACAA68FFFFFFFFFFFFFFFF")


def test_modp_shared_secret_padded_to_modulus() -> None:
    alg = KEY_EXCHANGE["modp2048"]
    a = new(alg)
    # Peer value 2 = g^1: shared secret = our public value, which can have leading zeros.
    shared = a.compute((2).to_bytes(256, "big"))
    assert len(shared) == 256 and shared == a.public_bytes


@pytest.mark.parametrize("name", ["modp2048", "modp3072", "modp4096"])
def test_modp_rejects_degenerate_values(name: str) -> None:
    alg = KEY_EXCHANGE[name]
    p = MODP_PRIMES[alg.transform_id]
    kex = new(alg)
    for y in (0, 1, p - 1, p, 2 ** (8 * alg.public_len) - 1):
        with pytest.raises(KeyExchangeError):
            kex.compute(y.to_bytes(alg.public_len, "big"))


@pytest.mark.parametrize("name", sorted(KEY_EXCHANGE))
def test_wrong_length_rejected(name: str) -> None:
    alg = KEY_EXCHANGE[name]
    kex = new(alg)
    good = new(alg).public_bytes
    for bad in (b"", good[:-1], good + b"\0", b"\x04" + good):
        with pytest.raises(KeyExchangeError, match=alg.name):
            kex.compute(bad)
    with pytest.raises(KeyExchangeError):
        kex.compute("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ecp256", "ecp384"])
def test_ecp_point_not_on_curve_rejected(name: str) -> None:
    alg = KEY_EXCHANGE[name]
    kex = new(alg)
    good = bytearray(new(alg).public_bytes)
    good[-1] ^= 1  # y changed: no longer on the curve
    with pytest.raises(KeyExchangeError, match="not a point"):
        kex.compute(bytes(good))
    with pytest.raises(KeyExchangeError):
        kex.compute(bytes(alg.public_len))  # (0, 0) is not on the curve
    with pytest.raises(KeyExchangeError):
        kex.compute(b"\xff" * alg.public_len)  # coordinates >= p


def test_x25519_low_order_point_rejected() -> None:
    kex = new(KEY_EXCHANGE["x25519"])
    for point in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(KeyExchangeError):
            kex.compute(point)


def test_key_exchange_error_is_value_error() -> None:
    assert issubclass(KeyExchangeError, ValueError)


def test_prepared_key_pairs_are_handed_out_once() -> None:
    """A key pair made ahead leaves the pool when taken; without one, take makes one."""
    x25519, ecp256 = KEY_EXCHANGE["x25519"], KEY_EXCHANGE["ecp256"]
    pool = PreparedKeyPairs()
    pool.want((x25519, ecp256))
    assert pool.missing() and pool.ready == ()
    pool.prepare()
    assert not pool.missing() and set(pool.ready) == {x25519, ecp256}
    prepared = pool.ready
    first = pool.take(x25519)
    assert pool.missing() and pool.ready == (ecp256,)
    second = pool.take(x25519)  # none ready: made on the spot
    pool.prepare()
    third = pool.take(x25519)
    assert len({first.public, second.public, third.public}) == 3
    assert first.alg == second.alg == third.alg == x25519
    assert third.compute(first.public) == first.compute(third.public)
    pool.want((x25519,))  # ecp256 no longer configured: its pair goes
    assert pool.ready == () and prepared


def test_new_takes_from_the_module_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = PreparedKeyPairs()
    monkeypatch.setattr(keyexchange, "PREPARED", pool)
    x25519 = KEY_EXCHANGE["x25519"]
    pool.want((x25519,))
    pool.prepare()
    assert new(x25519).alg == x25519 and pool.missing()
