"""Config-side loading of certificate credentials: key file permissions, key/cert match, CAs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ipsecd.config.credentials import (
    load_trust_store,
    read_certificate_file,
    read_private_key_file,
)
from ipsecd.config.errors import ConfigError
from ipsecd.config.fields import At
from tests.unit.pki_support import ca, gateway, intermediate

AT = At("ipsecd.yaml", "peers[0].auth", 12)
PEM = serialization.Encoding.PEM


def _key_bytes(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_private_key_file_permissions(tmp_path: Path) -> None:
    gw = gateway(ca())
    p = tmp_path / "gw.key"
    p.write_bytes(_key_bytes(gw.key))
    os.chmod(p, 0o600)
    assert read_private_key_file(p, AT).public_key() == gw.key.public_key()
    os.chmod(p, 0o640)
    with pytest.raises(ConfigError, match="private key file .* readable by group/others"):
        read_private_key_file(p, AT)
    p.write_bytes(b"not a key")
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match="not a readable private key") as exc:
        read_private_key_file(p, AT)
    assert exc.value.line == 12


def test_certificate_file_with_chain_and_key_check(tmp_path: Path) -> None:
    root = ca()
    sub = intermediate(root)
    gw = gateway(sub)
    p = tmp_path / "gw.pem"
    p.write_bytes(gw.cert.public_bytes(PEM) + sub.cert.public_bytes(PEM))
    own, chain = read_certificate_file(p, AT, gw.key)
    assert own == gw.cert and chain == [sub.cert]
    with pytest.raises(ConfigError, match="does not belong to the configured private_key"):
        read_certificate_file(p, AT, gateway(root).key)
    with pytest.raises(ConfigError, match="cannot read certificate file"):
        read_certificate_file(tmp_path / "missing.pem", AT)


def test_trust_store_errors_become_config_errors(tmp_path: Path) -> None:
    root = ca()
    (tmp_path / "ca.pem").write_bytes(root.cert.public_bytes(PEM))
    assert load_trust_store([tmp_path / "ca.pem"], [], AT).anchors == [root.cert]
    with pytest.raises(ConfigError, match="CA certificate path .* does not exist"):
        load_trust_store([tmp_path / "nope"], [], AT)
