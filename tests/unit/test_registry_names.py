"""Every IANA transform has a name in messages (issue 14 item 5), supported or not."""

from __future__ import annotations

import pytest

from ipsecd.crypto.registry import (
    ENCRYPTION,
    INTEGRITY,
    KEY_EXCHANGE,
    ML_KEM,
    PRF,
    TransformType,
    transform_name,
)


def test_supported_algorithms_keep_their_config_names() -> None:
    """The name a received transform gets is the keyword that configures it."""
    for encr in ENCRYPTION.values():
        bits = encr.key_bits if encr.key_length_attribute else None
        assert transform_name(TransformType.ENCR, encr.transform_id, bits) == encr.name
    for integ in INTEGRITY.values():
        assert transform_name(TransformType.INTEG, integ.transform_id) == integ.name
    for prf in PRF.values():
        assert transform_name(TransformType.PRF, prf.transform_id) == prf.name
    for ke in (*KEY_EXCHANGE.values(), *ML_KEM.values()):
        assert transform_name(TransformType.KE, ke.transform_id) == ke.name
        assert transform_name(TransformType.ADDKE1, ke.transform_id) == ke.name


@pytest.mark.parametrize(
    ("ttype", "tid", "bits", "name"),
    [
        # strongSwan keywords where strongSwan has one ...
        (TransformType.ENCR, 3, None, "3des"),
        (TransformType.ENCR, 12, 192, "aes192"),
        (TransformType.ENCR, 13, 256, "aes256ctr"),
        (TransformType.ENCR, 16, 128, "aes128ccm16"),
        (TransformType.ENCR, 18, 256, "aes256gcm8"),
        (TransformType.ENCR, 21, 128, "aes128gmac"),
        (TransformType.ENCR, 23, 256, "camellia256"),
        (TransformType.ENCR, 7, 128, "blowfish128"),
        (TransformType.ENCR, 11, None, "null"),
        (TransformType.INTEG, 1, None, "md5"),
        (TransformType.INTEG, 2, None, "sha1"),
        (TransformType.INTEG, 5, None, "aesxcbc"),
        (TransformType.INTEG, 0, None, "none"),
        (TransformType.PRF, 2, None, "prfsha1"),
        (TransformType.PRF, 8, None, "prfaescmac"),
        (TransformType.KE, 2, None, "modp1024"),
        (TransformType.KE, 21, None, "ecp521"),
        (TransformType.KE, 28, None, "ecp256bp"),
        (TransformType.KE, 32, None, "x448"),
        (TransformType.KE, 35, None, "mlkem512"),
        (TransformType.KE, 0, None, "none"),
        (TransformType.ESN, 0, None, "noesn"),
        (TransformType.ESN, 1, None, "esn"),
        # ... else the IANA name without its prefix
        (TransformType.ENCR, 1, None, "des_iv64"),
        (TransformType.ENCR, 32, None, "kuznyechik_mgm_ktree"),
        (TransformType.INTEG, 3, None, "des_mac"),
        (TransformType.INTEG, 9, None, "aes_128_gmac"),
        (TransformType.PRF, 3, None, "hmac_tiger"),
        (TransformType.PRF, 9, None, "hmac_streebog_512"),
        (TransformType.KE, 33, None, "gost3410_2012_256"),
        # malformed or unassigned: still says what arrived
        (TransformType.ENCR, 12, None, "aes(no key length)"),
        (TransformType.ENCR, 28, 256, "chacha20poly1305/256"),
        (TransformType.ENCR, 36, None, "ENCR#36"),
        (TransformType.ENCR, 1024, 128, "ENCR#1024/128"),
        (TransformType.KE, 3, None, "KE#3"),
        (TransformType.ESN, 2, None, "ESN#2"),
        (TransformType.ADDKE3, 36, None, "mlkem768"),
        (99, 1, None, "TYPE99#1"),
    ],
)
def test_transform_names(ttype: int, tid: int, bits: int | None, name: str) -> None:
    assert transform_name(ttype, tid, bits) == name
