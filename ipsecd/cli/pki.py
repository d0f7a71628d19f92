"""``ipsecd pki``: a small CA for gateways — make a CA, issue certificates, show, revoke.

::

    ipsecd pki ca    --dn "C=CH, O=Example, CN=Example VPN CA" --key-out ca.key --cert-out ca.crt
    ipsecd pki issue --ca-cert ca.crt --ca-key ca.key --san 192.0.2.1 --san gw-a.example \\
                     --key-out gw-a.key --cert-out gw-a.crt
    ipsecd pki show  gw-a.crt
    ipsecd pki crl   --ca-cert ca.crt --ca-key ca.key --revoke 0x1a2b --out ca.crl

Key types: ed25519 (default), ecdsa-p256, ecdsa-p384, rsa-3072, rsa-4096.
Keys are written PKCS#8 PEM with mode 0600, certificates and CRLs PEM; an
existing output file is never overwritten (``--force`` to allow it).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ipsecd.pki.certs import (
    SigningKey,
    describe,
    fingerprint_sha256,
    key_description,
    load_certificate_file,
    load_crls,
    load_private_key,
    name_text,
)
from ipsecd.pki.errors import PkiError
from ipsecd.pki.issue import KEY_TYPES, generate_key, issue_certificate, make_ca, make_crl
from ipsecd.pki.validate import ACCEPTED_EKUS

PEM = serialization.Encoding.PEM


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise PkiError(f"{path} exists; not overwriting it (use --force)") from None
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # also when --force reuses a file with a wider mode
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_key(path: Path, key: SigningKey, force: bool) -> None:
    pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600, force)


def _load_ca(cert_path: str, key_path: str) -> tuple[x509.Certificate, SigningKey]:
    cert = load_certificate_file(cert_path)[0]
    try:
        data = Path(key_path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read CA key {key_path}: {exc.strerror}") from None
    key = load_private_key(data, f"CA key {key_path}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise PkiError(f"CA key {key_path} does not belong to {describe(cert)}")
    return cert, key


def _serial(text: str) -> int:
    t = text.strip().lower()
    try:
        if t.startswith("0x"):
            return int(t[2:], 16)
        if ":" in t:
            return int(t.replace(":", ""), 16)
        return int(t)
    except ValueError:
        raise PkiError(f"serial {text!r} is not a number (decimal, 0x-hex or aa:bb:cc)") from None


def _serial_text(serial: int) -> str:
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def _cmd_ca(a: argparse.Namespace, now: datetime) -> int:
    key = generate_key(a.type)
    cert = make_ca(key, a.dn, now, a.days, rsa_pss=a.rsa_pss)
    _write_key(Path(a.key_out), key, a.force)
    _write(Path(a.cert_out), cert.public_bytes(PEM), 0o644, a.force)
    print(f"made CA {describe(cert)}, {key_description(key)} key in {a.key_out} (mode 0600)")
    return 0


def _cmd_issue(a: argparse.Namespace, now: datetime) -> int:
    ca_cert, ca_key = _load_ca(a.ca_cert, a.ca_key)
    if a.key:
        key = load_private_key(Path(a.key).read_bytes(), f"key {a.key}")
    else:
        key = generate_key(a.type)
    if not a.san and not a.dn:
        raise PkiError("give the gateway's identities with --san (and/or a --dn)")
    cert = issue_certificate(
        ca_key, ca_cert, key.public_key(), a.dn, a.san, now, a.days, rsa_pss=a.rsa_pss
    )
    if not a.key:
        if not a.key_out:
            raise PkiError(
                "--key-out is needed for the new key (or pass an existing one with --key)"
            )
        _write_key(Path(a.key_out), key, a.force)
    _write(Path(a.cert_out), cert.public_bytes(PEM), 0o644, a.force)
    print(f"issued {describe(cert)}, serial {_serial_text(cert.serial_number)}")
    return 0


def _cmd_crl(a: argparse.Namespace, now: datetime) -> int:
    ca_cert, ca_key = _load_ca(a.ca_cert, a.ca_key)
    serials = [_serial(s) for s in a.revoke]
    crl = make_crl(ca_key, ca_cert, serials, now, a.days, a.number)
    _write(Path(a.out), crl.public_bytes(PEM), 0o644, a.force)
    print(f"CRL of '{name_text(ca_cert.subject)}' revoking {len(serials)} serial(s) in {a.out}")
    return 0


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def show_certificate(cert: x509.Certificate, now: datetime) -> str:
    """The lines ``ipsecd pki show`` prints for one certificate."""
    lines = [
        f"subject:     {name_text(cert.subject)}",
        f"issuer:      {name_text(cert.issuer)}",
        f"serial:      {_serial_text(cert.serial_number)}",
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v.value) for v in san]
    except x509.ExtensionNotFound:
        names = []
    lines.append(f"altNames:    {', '.join(names) if names else '(none)'}")
    state = (
        "expired"
        if now > cert.not_valid_after_utc
        else "not valid yet"
        if now < cert.not_valid_before_utc
        else "valid"
    )
    lines += [
        f"validity:    {_when(cert.not_valid_before_utc)} to {_when(cert.not_valid_after_utc)}"
        f" ({state})",
        f"key:         {key_description(cert.public_key())}",
    ]
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        lines.append(f"CA:          {'yes' if bc.ca else 'no'}")
    except x509.ExtensionNotFound:
        lines.append("CA:          no (no basicConstraints)")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        lines.append(
            "extKeyUsage: "
            + ", ".join(ACCEPTED_EKUS.get(o, getattr(o, "_name", o.dotted_string)) for o in eku)
        )
    except x509.ExtensionNotFound:
        pass
    lines.append(f"SHA-256:     {fingerprint_sha256(cert)}")
    return "\n".join(lines)


def _cmd_show(a: argparse.Namespace, now: datetime) -> int:
    first = True
    for path in a.files:
        data = Path(path).read_bytes()
        if b"X509 CRL" in data:
            for crl in load_crls(data, path):
                print(("" if first else "\n") + f"CRL of:      {name_text(crl.issuer)}")
                print(f"updated:     {_when(crl.last_update_utc)}")
                if crl.next_update_utc:
                    print(f"next update: {_when(crl.next_update_utc)}")
                for entry in crl:
                    print(
                        f"revoked:     {_serial_text(entry.serial_number)}"
                        f" on {_when(entry.revocation_date_utc)}"
                    )
                first = False
            continue
        for cert in load_certificate_file(path):
            print(("" if first else "\n") + show_certificate(cert, now))
            first = False
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipsecd pki", description="a small CA for gateways")
    sub = parser.add_subparsers(dest="pki_command", required=True)

    def common(p: argparse.ArgumentParser, days: int) -> None:
        p.add_argument("--type", choices=KEY_TYPES, default="ed25519", help="key type")
        p.add_argument("--days", type=int, default=days, help=f"validity (default {days})")
        p.add_argument("--rsa-pss", action="store_true", help="RSA CA: sign with RSA-PSS")
        p.add_argument("--force", action="store_true", help="overwrite existing files")

    ca = sub.add_parser("ca", help="make a self-signed CA")
    ca.add_argument("--dn", required=True, help='e.g. "C=CH, O=Example, CN=Example VPN CA"')
    ca.add_argument("--key-out", required=True)
    ca.add_argument("--cert-out", required=True)
    common(ca, 3650)

    issue = sub.add_parser("issue", help="issue a gateway certificate")
    issue.add_argument("--ca-cert", required=True)
    issue.add_argument("--ca-key", required=True)
    issue.add_argument("--dn", help="subject DN (default: CN=<first --san>)")
    issue.add_argument(
        "--san", action="append", default=[], help="IP address, DNS name or e-mail (repeatable)"
    )
    issue.add_argument("--key", help="certify this existing private key instead of a new one")
    issue.add_argument("--key-out")
    issue.add_argument("--cert-out", required=True)
    common(issue, 1095)

    show = sub.add_parser("show", help="show certificates or CRLs (PEM or DER)")
    show.add_argument("files", nargs="+")

    crl = sub.add_parser("crl", help="make a CRL revoking serial numbers")
    crl.add_argument("--ca-cert", required=True)
    crl.add_argument("--ca-key", required=True)
    crl.add_argument("--revoke", action="append", default=[], help="serial (repeatable)")
    crl.add_argument("--days", type=int, default=30, help="next update in days (default 30)")
    crl.add_argument("--number", type=int, default=1, help="CRL number (increase each time)")
    crl.add_argument("--out", required=True)
    crl.add_argument("--force", action="store_true")
    return parser


def main(argv: list[str] | None = None, now: datetime | None = None) -> int:
    args = build_parser().parse_args(argv)
    now = now or datetime.now(UTC)
    commands = {"ca": _cmd_ca, "issue": _cmd_issue, "show": _cmd_show, "crl": _cmd_crl}
    try:
        return commands[args.pki_command](args, now)
    except PkiError as exc:
        print(f"ipsecd pki: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ipsecd pki: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
