"""``ipsecd pki``, and certificates cross-checked with strongSwan's ``pki`` both ways.

The strongSwan checks need ``pki`` (Debian package strongswan-pki); they skip on a
developer machine without it and fail under CI=true, where it must be installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ipsecd.cli.ipsecd import main as ipsecd_main
from ipsecd.cli.pki import main as pki_main
from ipsecd.ike.signature_auth import ALGORITHM_IDENTIFIERS, sign, verify
from ipsecd.pki import CertificateError, TrustStore, validate_chain
from ipsecd.pki.certs import load_certificate_file, load_private_key
from ipsecd.pki.identity import IkeIdentity, match_identity

SWAN_PKI = shutil.which("pki")


def strongswan_pki() -> str:
    if SWAN_PKI is None:
        if os.environ.get("CI"):
            pytest.fail("strongSwan's pki is required under CI (apt-get install strongswan-pki)")
        pytest.skip("strongSwan's pki is not installed (apt-get install strongswan-pki)")
    return SWAN_PKI


def swan(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [strongswan_pki(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if ok and proc.returncode != 0:
        raise AssertionError(f"pki {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc


def make_ca(tmp: Path, key_type: str = "ed25519", extra: tuple[str, ...] = ()) -> None:
    assert (
        pki_main(
            [
                "ca",
                "--dn",
                "C=CH, O=ipsecd test, CN=Test CA",
                "--type",
                key_type,
                "--key-out",
                str(tmp / "ca.key"),
                "--cert-out",
                str(tmp / "ca.crt"),
                *extra,
            ]
        )
        == 0
    )


def issue(tmp: Path, name: str, key_type: str, *sans: str, extra: tuple[str, ...] = ()) -> int:
    san_args = [a for s in sans for a in ("--san", s)]
    return pki_main(
        [
            "issue",
            "--ca-cert",
            str(tmp / "ca.crt"),
            "--ca-key",
            str(tmp / "ca.key"),
            *san_args,
            "--type",
            key_type,
            "--key-out",
            str(tmp / f"{name}.key"),
            "--cert-out",
            str(tmp / f"{name}.crt"),
            *extra,
        ]
    )


def test_ca_issue_show_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_ca(tmp_path, "ecdsa-p256")
    assert issue(tmp_path, "gw", "ed25519", "192.0.2.1", "gw-a.example", "admin@example") == 0
    for key in ("ca.key", "gw.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    gw = load_certificate_file(tmp_path / "gw.crt")[0]
    ca = load_certificate_file(tmp_path / "ca.crt")[0]
    chain = validate_chain(gw, [], TrustStore([ca]), datetime.now(UTC))
    assert chain.anchor == ca
    for text in ("192.0.2.1", "gw-a.example", "admin@example", "CN=192.0.2.1"):
        assert match_identity(gw, IkeIdentity.from_text(text))
    capsys.readouterr()
    assert pki_main(["show", str(tmp_path / "gw.crt")]) == 0
    out = capsys.readouterr().out
    assert "subject:     CN=192.0.2.1" in out
    assert "issuer:      C=CH, O=ipsecd test, CN=Test CA" in out
    assert "altNames:    192.0.2.1, gw-a.example, admin@example" in out
    assert "key:         Ed25519" in out and "(valid)" in out
    assert "extKeyUsage: serverAuth, clientAuth, ipsecIKE" in out
    assert "SHA-256:     " in out
    serial = hex(gw.serial_number)
    assert pki_main(
        ["crl", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key", str(tmp_path / "ca.key"),
         "--revoke", serial, "--out", str(tmp_path / "ca.crl")]
    ) == 0  # fmt: skip
    store = TrustStore.from_paths([tmp_path / "ca.crt"], [tmp_path / "ca.crl"])
    with pytest.raises(CertificateError, match="was revoked on"):
        validate_chain(gw, [], store, datetime.now(UTC) + timedelta(seconds=1))
    capsys.readouterr()
    assert pki_main(["show", str(tmp_path / "ca.crl")]) == 0
    assert "revoked:     " in capsys.readouterr().out


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_ca(tmp_path)
    with pytest.raises(AssertionError):
        make_ca(tmp_path)  # exists: not overwritten
    assert "exists; not overwriting it (use --force)" in capsys.readouterr().err
    make_ca(tmp_path, extra=("--force",))
    assert issue(tmp_path, "gw", "ed25519") == 1
    assert "give the gateway's identities with --san" in capsys.readouterr().err
    assert pki_main(["issue", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key",
                     str(tmp_path / "nope.key"), "--san", "x", "--cert-out", "y"]) == 1  # fmt: skip
    assert "cannot read CA key" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    make_ca(other)
    assert pki_main(["issue", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key",
                     str(other / "ca.key"), "--san", "x", "--cert-out", "y"]) == 1  # fmt: skip
    assert "does not belong to certificate 'C=CH, O=ipsecd test" in capsys.readouterr().err
    assert pki_main(["crl", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key",
                     str(tmp_path / "ca.key"), "--revoke", "zz", "--out", "c"]) == 1  # fmt: skip
    assert "serial 'zz' is not a number" in capsys.readouterr().err


def test_wired_into_ipsecd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_ca(tmp_path)
    assert ipsecd_main(["pki", "show", str(tmp_path / "ca.crt")]) == 0
    assert "CA:          yes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        ipsecd_main(["pki", "--help"])
    assert exc.value.code == 0
    assert "{ca,issue,show,crl}" in capsys.readouterr().out


# --- strongSwan's pki checks our certificates -----------------------------------------


@pytest.mark.parametrize(
    ("ca_type", "gw_type", "extra"),
    [
        ("ed25519", "ed25519", ()),
        ("ecdsa-p256", "ecdsa-p256", ()),
        ("ecdsa-p384", "ecdsa-p256", ()),
        ("rsa-3072", "rsa-3072", ()),
        ("rsa-3072", "ecdsa-p256", ("--rsa-pss",)),
    ],
)
def test_strongswan_verifies_ours(
    tmp_path: Path, ca_type: str, gw_type: str, extra: tuple[str, ...]
) -> None:
    strongswan_pki()
    make_ca(tmp_path, ca_type, extra)
    assert issue(tmp_path, "gw", gw_type, "192.0.2.1", "gw-a.example", extra=extra) == 0
    out = swan("--verify", "--in", str(tmp_path / "gw.crt"), "--cacert", str(tmp_path / "ca.crt"))
    assert "certificate trusted" in out.stdout + out.stderr
    printed = swan("--print", "--in", str(tmp_path / "gw.crt")).stdout
    assert 'subject:  "CN=192.0.2.1"' in printed
    assert 'issuer:   "C=CH, O=ipsecd test, CN=Test CA"' in printed
    assert "altNames:  192.0.2.1, gw-a.example" in printed
    assert "flags:     serverAuth clientAuth" in printed
    # A certificate from another CA with the same name is refused by strongSwan too.
    other = tmp_path / "other"
    other.mkdir()
    make_ca(other, ca_type, extra)
    bad = swan(
        "--verify", "--in", str(tmp_path / "gw.crt"), "--cacert", str(other / "ca.crt"), ok=False
    )
    assert bad.returncode != 0


def test_strongswan_sees_our_crl(tmp_path: Path) -> None:
    strongswan_pki()
    make_ca(tmp_path, "ecdsa-p256")
    assert issue(tmp_path, "gw", "ecdsa-p256", "gw-a.example") == 0
    gw = load_certificate_file(tmp_path / "gw.crt")[0]
    assert pki_main(["crl", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key",
                     str(tmp_path / "ca.key"), "--revoke", str(gw.serial_number),
                     "--out", str(tmp_path / "ca.crl")]) == 0  # fmt: skip
    printed = swan("--print", "--type", "crl", "--in", str(tmp_path / "ca.crl")).stdout
    assert "1 revoked certificate" in printed
    serial_hex = f"{gw.serial_number:x}"
    serial_hex = serial_hex.zfill(len(serial_hex) + len(serial_hex) % 2)
    assert ":".join(serial_hex[i : i + 2] for i in range(0, len(serial_hex), 2)) in printed
    out = swan("--verify", "--in", str(tmp_path / "gw.crt"), "--cacert", str(tmp_path / "ca.crt"),
               "--crl", str(tmp_path / "ca.crl"), ok=False)  # fmt: skip
    assert out.returncode != 0 and "revoked" in (out.stdout + out.stderr)


# --- our validator checks strongSwan's certificates ----------------------------------


def swan_ca(tmp: Path, key_type: str, extra: tuple[str, ...] = ()) -> None:
    key = swan("--gen", "--type", key_type, *(("--size", "3072") if key_type == "rsa" else ()),
               "--outform", "pem")  # fmt: skip
    (tmp / "swanca.key").write_text(key.stdout)
    cert = subprocess.run(
        [strongswan_pki(), "--self", "--ca", "--in", str(tmp / "swanca.key"), "--type", key_type,
         "--dn", "C=CH, O=strongSwan, CN=strongSwan Root CA", "--outform", "pem", *extra],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (tmp / "swanca.crt").write_text(cert.stdout)


def swan_issue(
    tmp: Path, name: str, key_type: str, ca_type: str, sans: tuple[str, ...], *extra: str
) -> None:
    key = swan("--gen", "--type", key_type, *(("--size", "3072") if key_type == "rsa" else ()),
               "--outform", "pem")  # fmt: skip
    (tmp / f"{name}.key").write_text(key.stdout)
    pub = subprocess.run([strongswan_pki(), "--pub", "--in", str(tmp / f"{name}.key"), "--type",
                          "priv"], capture_output=True, check=True)  # fmt: skip
    cmd = [strongswan_pki(), "--issue", "--cacert", str(tmp / "swanca.crt"), "--cakey",
           str(tmp / "swanca.key"), "--type", "pub", "--dn", f"C=CH, O=strongSwan, CN={name}",
           "--flag", "serverAuth", "--outform", "pem", *extra]  # fmt: skip
    for s in sans:
        cmd += ["--san", s]
    cert = subprocess.run(cmd, input=pub.stdout, capture_output=True, check=True)
    (tmp / f"{name}.crt").write_bytes(cert.stdout)


@pytest.mark.parametrize(
    ("key_type", "extra", "algorithm"),
    [
        ("ed25519", (), "Ed25519"),
        ("ecdsa", (), "ecdsa-with-SHA256"),
        ("rsa", ("--rsa-padding", "pss"), "RSASSA-PSS SHA-256"),
        ("rsa", (), "sha256WithRSAEncryption"),
    ],
)
def test_we_verify_strongswans(
    tmp_path: Path, key_type: str, extra: tuple[str, ...], algorithm: str
) -> None:
    strongswan_pki()
    swan_ca(tmp_path, key_type, extra)
    swan_issue(tmp_path, "moon", key_type, key_type, ("moon.strongswan.org", "192.0.2.10"), *extra)
    cert = load_certificate_file(tmp_path / "moon.crt")[0]
    ca = load_certificate_file(tmp_path / "swanca.crt")[0]
    validate_chain(cert, [], TrustStore([ca]), datetime.now(UTC))
    assert match_identity(cert, IkeIdentity.from_text("moon.strongswan.org"))
    assert match_identity(cert, IkeIdentity.from_text("192.0.2.10"))
    assert match_identity(cert, IkeIdentity.from_text("C=CH, O=strongSwan, CN=moon"))
    # Signature AUTH with strongSwan's key (as charon would load it) verifies with its certificate.
    key = load_private_key((tmp_path / "moon.key").read_bytes())
    signed = sign(b"octets", key, (2, 3, 4, 5), rsa_pss=bool(extra))
    verify(b"octets", signed.method, signed.data, cert)
    if extra:
        # strongSwan's own RSA-PSS AlgorithmIdentifier (its certificate's signatureAlgorithm)
        # is one we accept in AUTH payloads: the same encoder builds both in strongSwan.
        ident = _signature_algorithm_der(cert)
        assert ALGORITHM_IDENTIFIERS[ident].name == algorithm


def _signature_algorithm_der(cert: x509.Certificate) -> bytes:
    """The DER AlgorithmIdentifier following tbsCertificate in a Certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)

    def header(pos: int) -> tuple[int, int]:
        first = der[pos + 1]
        if first < 0x80:
            return pos + 2, first
        n = first & 0x7F
        return pos + 2 + n, int.from_bytes(der[pos + 2 : pos + 2 + n], "big")

    body, _ = header(0)
    tbs_start, tbs_len = header(body)
    alg = tbs_start + tbs_len
    alg_body, alg_len = header(alg)
    return der[alg : alg_body + alg_len]


def test_we_refuse_strongswans_revoked_and_expired(tmp_path: Path) -> None:
    strongswan_pki()
    swan_ca(tmp_path, "ecdsa")
    swan_issue(tmp_path, "sun", "ecdsa", "ecdsa", ("sun.strongswan.org",))
    swan_issue(tmp_path, "old", "ecdsa", "ecdsa", ("old.strongswan.org",),
               "--not-before", "01.01.20 00:00:00", "--not-after", "01.01.21 00:00:00")  # fmt: skip
    crl = swan("--signcrl", "--cacert", str(tmp_path / "swanca.crt"), "--cakey",
               str(tmp_path / "swanca.key"), "--reason", "key-compromise",
               "--cert", str(tmp_path / "sun.crt"), "--outform", "pem")  # fmt: skip
    (tmp_path / "swan.crl").write_text(crl.stdout)
    ca = load_certificate_file(tmp_path / "swanca.crt")[0]
    store = TrustStore.from_paths([tmp_path / "swanca.crt"], [tmp_path / "swan.crl"])
    sun = load_certificate_file(tmp_path / "sun.crt")[0]
    with pytest.raises(CertificateError) as exc:
        validate_chain(sun, [], store, datetime.now(UTC) + timedelta(seconds=5))
    assert exc.value.reason == "revoked"
    assert "peer certificate 'C=CH, O=strongSwan, CN=sun'" in str(exc.value)
    assert "(reason: keyCompromise)" in str(exc.value)
    assert "per the CRL of 'C=CH, O=strongSwan, CN=strongSwan Root CA'" in str(exc.value)
    old = load_certificate_file(tmp_path / "old.crt")[0]
    with pytest.raises(CertificateError, match="CN=old'.* expired on 2021-01-01") as exc:
        validate_chain(old, [], TrustStore([ca]), datetime.now(UTC))
    assert exc.value.reason == "expired"
