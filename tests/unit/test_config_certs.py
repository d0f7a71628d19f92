"""Config for certificates, PPK and post-quantum proposals: what loads, and every refusal
at its file:line in plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsecd.config import ConfigError
from ipsecd.config.effective import effective_yaml
from ipsecd.config.schema import Identity
from tests.unit.pki_support import ca, gateway, pem, write_credentials
from tests.unit.test_config_support import BASE, parse, write_secret_files

AUTH_LINE = "    auth:\n      psk_file: b.psk\n"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_secret_files(tmp_path)
    return tmp_path


def with_auth(*lines: str) -> str:
    """BASE with its auth: section replaced by ``lines`` (the first at line 9)."""
    return BASE.replace(AUTH_LINE, "    auth:\n" + "".join(f"      {x}\n" for x in lines))


def refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return [str(e) for e in exc.value.all]


def creds(tmp_path: Path, **kw: object) -> tuple[str, ...]:
    root = ca()
    own = gateway(root, ("192.0.2.1", "gw-a.example"), "C=CH, O=Test, CN=gw-a", **kw)
    return write_credentials(tmp_path / "creds", "a", own, (root,))


def test_certificates_both_ways(in_tmp: Path) -> None:
    config = parse(with_auth(*creds(in_tmp)))
    auth = config.peers[0].auth
    assert auth is not None
    assert (auth.local_auth, auth.remote_auth) == ("pubkey", "pubkey")  # from certificate:
    assert auth.psk == b"" and auth.psk_file is None
    assert auth.credential is not None and auth.trust is not None
    assert auth.local_id == Identity("IPV4_ADDR", "192.0.2.1")  # the address is in the cert
    assert len(auth.trust.anchors) == 1 and auth.trust.store().certreq_hashes()
    shown = effective_yaml(config)
    assert "local_auth: pubkey" in shown and "cacerts:" in shown and "psk_file" not in shown
    assert effective_yaml(parse(shown)) == shown


def test_default_local_id_is_the_subject_dn_without_the_address(in_tmp: Path) -> None:
    root = ca()
    own = gateway(root, ("gw-a.example",), "C=CH, O=Test, CN=gw-a")
    config = parse(with_auth(*write_credentials(in_tmp / "c", "a", own, (root,))))
    local_id = config.peers[0].auth.local_id
    assert local_id.type == "DER_ASN1_DN" and str(local_id) == "C=CH, O=Test, CN=gw-a"
    assert local_id.data == own.cert.subject.public_bytes()  # sent as the certificate says


def test_dn_identities(in_tmp: Path) -> None:
    text = with_auth(
        *creds(in_tmp),
        "local_id: 'C=CH, O=Test, CN=gw-a'",
        "remote_id: 'C=CH, O=Test, CN=gw-b'",
    )
    auth = parse(text).peers[0].auth
    assert auth.remote_id.type == "DER_ASN1_DN" and auth.remote_id.id_type == 9
    assert str(auth.remote_id) == "C=CH, O=Test, CN=gw-b"
    (message,) = refused(with_auth("psk_file: b.psk", "remote_id: 'C=CH, XX=1'"))
    assert message.startswith("t.yaml:10: peers[0].auth.remote_id: distinguished name")


def test_mixed_psk_and_certificate(in_tmp: Path) -> None:
    lines = creds(in_tmp)
    ca_line = next(x for x in lines if x.startswith("cacerts"))
    auth = parse(with_auth("psk_file: b.psk", "remote_auth: pubkey", ca_line)).peers[0].auth
    assert (auth.local_auth, auth.remote_auth) == ("psk", "pubkey") and auth.psk
    cert_lines = [x for x in lines if not x.startswith("cacerts")]
    auth = parse(with_auth(*cert_lines, "remote_auth: psk", "psk_file: b.psk")).peers[0].auth
    assert (auth.local_auth, auth.remote_auth) == ("pubkey", "psk")


def test_unused_and_missing_credentials_are_refused(in_tmp: Path) -> None:
    lines = creds(in_tmp)
    errors = refused(with_auth(*lines, "psk_file: b.psk"))
    assert errors == [
        "t.yaml:12: peers[0].auth.psk_file: psk_file is not used: local_auth is pubkey and"
        " remote_auth is pubkey; set local_auth or remote_auth to psk, or remove it"
    ]
    cacerts = next(x for x in lines if x.startswith("cacerts"))
    errors = refused(with_auth("psk_file: b.psk", cacerts, "crls: [x.crl]"))
    assert [e.split(": ", 2)[1] for e in errors] == ["peers[0].auth.cacerts", "peers[0].auth.crls"]
    assert "set remote_auth to pubkey to check the peer's certificate" in errors[0]
    (error,) = refused(with_auth("local_auth: pubkey", "psk_file: b.psk", "remote_auth: psk"))
    assert (
        error
        == (
            "t.yaml:8: peers[0].auth: local_auth pubkey (we sign with a certificate) needs"
            " certificate"
        )
        or "needs certificate" in error
    )
    errors = refused(with_auth("remote_auth: pubkey", "psk_file: b.psk"))
    assert errors == [
        "t.yaml:8: peers[0].auth: remote_auth pubkey (the peer's certificate is checked"
        " against them) needs cacerts"
    ]


def test_credential_files_checked(in_tmp: Path) -> None:
    lines = list(creds(in_tmp))
    key_file = Path(lines[1].split(": ", 1)[1])
    key_file.chmod(0o644)
    (error,) = refused(with_auth(*lines))
    assert error.startswith("t.yaml:10: peers[0].auth.private_key: private key file")
    assert "readable by group/others (mode 0644); chmod 600 it" in error
    key_file.chmod(0o600)
    other = creds(in_tmp / "other", key_type="ed25519")
    (error,) = refused(with_auth(lines[0], other[1], lines[2]))
    assert "does not belong to the configured private_key" in error and "CN=gw-a" in error
    gw_as_ca = in_tmp / "not-a-ca.pem"
    gw_as_ca.write_bytes(Path(lines[0].split(": ", 1)[1]).read_bytes())
    (error,) = refused(with_auth(lines[0], lines[1], f"cacerts: [{gw_as_ca}]"))
    assert "is not a CA certificate" in error and error.startswith("t.yaml:11:")


def test_rsa_pss_needs_an_rsa_key_and_local_id_the_certificate(in_tmp: Path) -> None:
    lines = creds(in_tmp)
    (error,) = refused(with_auth(*lines, "rsa_pss: true"))
    assert error.startswith("t.yaml:12: peers[0].auth.rsa_pss: rsa_pss applies to RSA keys")
    assert "ECDSA P-256" in error
    (error,) = refused(with_auth(*lines, "local_id: '@elsewhere.example'"))
    assert error.startswith("t.yaml:12: peers[0].auth.local_id: local_id 'elsewhere.example'")
    assert "(it contains: '192.0.2.1', 'gw-a.example', 'C=CH, O=Test, CN=gw-a')" in error
    rsa = creds(in_tmp / "rsa", key_type="rsa-3072")
    assert parse(with_auth(*rsa, "rsa_pss: true")).peers[0].auth.rsa_pss


def test_ppk_keys(in_tmp: Path) -> None:
    (in_tmp / "site.ppk").write_text("0x" + "ab" * 32 + "\n")
    (in_tmp / "site.ppk").chmod(0o600)
    auth = (
        parse(
            with_auth(
                "psk_file: b.psk", "ppk_id: site-ppk", "ppk_file: site.ppk", "ppk_required: true"
            )
        )
        .peers[0]
        .auth
    )
    assert auth.ppk is not None and auth.ppk.ppk_id == b"site-ppk" and auth.ppk.required
    assert auth.ppk.ppk == bytes([0xAB]) * 32
    shown = effective_yaml(parse(with_auth("psk_file: b.psk", "ppk_id: x", "ppk_file: site.ppk")))
    assert "ppk_id: x" in shown and "abab" not in shown
    assert refused(with_auth("psk_file: b.psk", "ppk_id: x")) == [
        "t.yaml:10: peers[0].auth.ppk_id: ppk_id needs ppk_file, the key itself (RFC 8784)"
    ]
    assert refused(with_auth("psk_file: b.psk", "ppk_file: site.ppk")) == [
        "t.yaml:10: peers[0].auth.ppk_file: ppk_file needs ppk_id, the name both peers use"
    ]
    assert refused(with_auth("psk_file: b.psk", "ppk_required: true")) == [
        "t.yaml:10: peers[0].auth.ppk_required: ppk_required needs ppk_id and ppk_file"
    ]


def test_post_quantum_proposals(in_tmp: Path) -> None:
    text = BASE.replace(
        "    auth:",
        "    ike:\n      proposals: [aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none]\n"
        "    esp:\n      proposals: [aes256gcm16-x25519-ke1_mlkem1024]\n    auth:",
    )
    peer = parse(text).peers[0]
    assert [a.name for a in peer.ike_proposals[0].additional_ke[0]] == ["mlkem768", "none"]
    assert peer.esp_proposals[0].additional_ke[0][0].name == "mlkem1024"
    (error,) = refused(text.replace("ke1_mlkem768-ke1_none", "ke1_mlkem512"))
    assert error.startswith("t.yaml:9: peers[0].ike.proposals[0]: 'ke1_mlkem512'")
    assert "implements ML-KEM-768 and ML-KEM-1024" in error
    (error,) = refused(
        text.replace("aes256gcm16-x25519-ke1_mlkem1024", "aes256gcm16-ke1_mlkem1024")
    )
    assert "additional key exchanges (keN_) follow a key exchange" in error


def test_pem_helper_roundtrip() -> None:
    assert pem(ca().cert).startswith(b"-----BEGIN CERTIFICATE-----")
